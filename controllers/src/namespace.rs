//! The namespace controller: empties a terminating namespace (every namespaced object in it is
//! deleted), then removes the `kubernetes` finalizer so the namespace itself goes. It also
//! keeps a `default` ServiceAccount in every active namespace, as Kubernetes' ServiceAccount
//! controller does.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::json;
use skiff_api::{
    Api, ApiClient, ApiError, DeleteOptions, Informer, InformerEvent, ListOptions, ObjectKey, RESOURCES, ResourceKind,
    Store, WorkQueue,
};
use tokio_util::sync::CancellationToken;

use crate::controller::{self, Action, Reconciler};

pub struct NamespaceController {
    client: Arc<dyn ApiClient>,
    namespaces: Store<Namespace>,
}

/// Events are deleted last, so the deletions above them can still be reported.
fn deletion_order() -> impl Iterator<Item = &'static ResourceKind> {
    let namespaced = || RESOURCES.iter().filter(|r| r.namespaced());
    namespaced().filter(|r| r.kind != "Event").chain(namespaced().filter(|r| r.kind == "Event"))
}

impl NamespaceController {
    pub async fn run(client: Arc<dyn ApiClient>, shutdown: CancellationToken) {
        let (namespaces, mut events, _n) =
            Informer::<Namespace>::new(client.clone(), None, ListOptions::default()).spawn();
        let (_accounts, mut sa_events, _s) =
            Informer::<ServiceAccount>::new(client.clone(), None, ListOptions::fields("metadata.name=default")).spawn();
        let this = Arc::new(Self { client, namespaces });
        let queue = WorkQueue::<ObjectKey>::new();
        let triggers = {
            let queue = queue.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        Some(event) = events.recv() => if let InformerEvent::Applied(ns) = event {
                            queue.add(ObjectKey::of(ns.as_ref()));
                        },
                        // A deleted default ServiceAccount comes back.
                        Some(event) = sa_events.recv() => if let InformerEvent::Deleted(sa) = event {
                            if let Some(ns) = sa.metadata.namespace.as_deref() {
                                queue.add(ObjectKey::cluster(ns));
                            }
                        },
                        else => break,
                    }
                }
            })
        };
        controller::run(this, queue, 1, shutdown).await;
        triggers.abort();
    }

    async fn ensure_default_service_account(&self, ns: &str) -> Result<(), ApiError> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), ns);
        if api.get_opt("default").await?.is_some() {
            return Ok(());
        }
        let sa = ServiceAccount {
            metadata: ObjectMeta { name: Some("default".into()), namespace: Some(ns.into()), ..Default::default() },
            ..Default::default()
        };
        match api.create(&sa).await {
            Ok(_) => Ok(()),
            // Already there, or the namespace started terminating meanwhile.
            Err(e) if e.is_already_exists() || e.code == 403 || e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Deletes what is left in `ns`; true once nothing is.
    async fn empty(&self, ns: &str) -> Result<bool, ApiError> {
        let mut empty = true;
        for res in deletion_order() {
            let list = self.client.list(res, Some(ns), &ListOptions::default()).await?;
            for object in list.items {
                empty = false;
                if !object["metadata"]["deletionTimestamp"].is_null() {
                    continue;
                }
                let name = object["metadata"]["name"].as_str().unwrap_or_default();
                let opts = DeleteOptions { propagation_policy: Some("Background".into()), ..Default::default() };
                match self.client.delete(res, Some(ns), name, &opts).await {
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(empty)
    }
}

#[async_trait::async_trait]
impl Reconciler for NamespaceController {
    const NAME: &'static str = "namespace";
    type Key = ObjectKey;

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, ApiError> {
        let Some(ns) = self.namespaces.get(key) else { return Ok(Action::AwaitChange) };
        if ns.metadata.deletion_timestamp.is_none() {
            self.ensure_default_service_account(&key.name).await?;
            return Ok(Action::AwaitChange);
        }
        if !self.empty(&key.name).await? {
            // Pods leave gracefully; look again shortly rather than watch every kind.
            return Ok(Action::RequeueAfter(Duration::from_secs(1)));
        }
        let res = ResourceKind::of::<Namespace>();
        let mut finalized = serde_json::to_value(ns.as_ref()).map_err(|e| ApiError::internal(e.to_string()))?;
        finalized["spec"] = json!({"finalizers": []});
        match self.client.update(res, None, &key.name, Some("finalize"), finalized).await {
            Ok(_) => Ok(Action::AwaitChange),
            Err(e) if e.is_not_found() => Ok(Action::AwaitChange),
            Err(e) => Err(e),
        }
    }
}
