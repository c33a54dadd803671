//! The root CA publisher (kube-controller-manager's `root-ca-cert-publisher`): ConfigMap
//! `kube-root-ca.crt` in every namespace, holding the CA that signs the API server's certificate
//! under key `ca.crt`. Pods' `kube-api-access-*` volumes project it, so in-cluster clients can
//! verify `https://kubernetes.default.svc`. A changed or deleted ConfigMap is put back.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use skiff_api::{Api, ApiClient, ApiError, Informer, InformerEvent, ListOptions, ObjectKey, Store, WorkQueue};
use tokio_util::sync::CancellationToken;

use crate::controller::{self, Action, Reconciler};

pub const CONFIG_MAP: &str = "kube-root-ca.crt";
pub const KEY: &str = "ca.crt";
const DESCRIPTION_ANNOTATION: &str = "kubernetes.io/description";
const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal \
                           endpoints such as the internal service IP or kubernetes.default.svc. No other usage is \
                           guaranteed across distributions of Kubernetes clusters.";

pub struct RootCaPublisher {
    client: Arc<dyn ApiClient>,
    ca_pem: String,
    namespaces: Store<Namespace>,
    config_maps: Store<ConfigMap>,
}

/// What the ConfigMap must hold, or `None` when `current` already does.
pub fn desired(current: Option<&ConfigMap>, ns: &str, ca_pem: &str) -> Option<ConfigMap> {
    let data = BTreeMap::from([(KEY.to_string(), ca_pem.to_string())]);
    match current {
        Some(cm) if cm.data.as_ref() == Some(&data) && cm.binary_data.as_ref().is_none_or(|b| b.is_empty()) => None,
        Some(cm) => {
            let mut updated = cm.clone();
            updated.data = Some(data);
            updated.binary_data = None;
            Some(updated)
        }
        None => Some(ConfigMap {
            metadata: ObjectMeta {
                name: Some(CONFIG_MAP.into()),
                namespace: Some(ns.into()),
                annotations: Some(BTreeMap::from([(DESCRIPTION_ANNOTATION.into(), DESCRIPTION.into())])),
                ..Default::default()
            },
            data: Some(data),
            ..Default::default()
        }),
    }
}

impl RootCaPublisher {
    pub async fn run(client: Arc<dyn ApiClient>, ca_pem: String, shutdown: CancellationToken) {
        let (namespaces, mut ns_events, _n) =
            Informer::<Namespace>::new(client.clone(), None, ListOptions::default()).spawn();
        let selector = ListOptions::fields(format!("metadata.name={CONFIG_MAP}"));
        let (config_maps, mut cm_events, _c) = Informer::<ConfigMap>::new(client.clone(), None, selector).spawn();
        let this = Arc::new(Self { client, ca_pem, namespaces, config_maps });
        let queue = WorkQueue::<ObjectKey>::new();
        let triggers = {
            let queue = queue.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        Some(event) = ns_events.recv() => if let InformerEvent::Applied(ns) = event {
                            queue.add(ObjectKey::of(ns.as_ref()));
                        },
                        Some(event) = cm_events.recv() => match event {
                            InformerEvent::Applied(cm) | InformerEvent::Deleted(cm) => {
                                if let Some(ns) = cm.metadata.namespace.as_deref() {
                                    queue.add(ObjectKey::cluster(ns));
                                }
                            }
                            InformerEvent::Synced => {}
                        },
                        else => break,
                    }
                }
            })
        };
        controller::run(this, queue, 1, shutdown).await;
        triggers.abort();
    }
}

#[async_trait::async_trait]
impl Reconciler for RootCaPublisher {
    const NAME: &'static str = "root-ca-cert-publisher";
    type Key = ObjectKey;

    /// `key` names a namespace.
    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, ApiError> {
        let Some(ns) = self.namespaces.get(key) else { return Ok(Action::AwaitChange) };
        if ns.metadata.deletion_timestamp.is_some() {
            return Ok(Action::AwaitChange);
        }
        let current = self.config_maps.get(&ObjectKey::namespaced(&key.name, CONFIG_MAP));
        let Some(want) = desired(current.as_deref(), &key.name, &self.ca_pem) else { return Ok(Action::AwaitChange) };
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &key.name);
        let result = match current {
            None => api.create(&want).await.map(drop),
            Some(_) => api.replace(CONFIG_MAP, &want).await.map(drop),
        };
        match result {
            Ok(()) => Ok(Action::AwaitChange),
            // The namespace started terminating: nothing more to publish there.
            Err(e) if e.code == 403 => Ok(Action::AwaitChange),
            // The store was behind (made or removed meanwhile): its event brings us back.
            Err(e) if e.is_already_exists() || e.is_not_found() => Ok(Action::AwaitChange),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    #[test]
    fn a_missing_config_map_is_made_with_the_ca_and_the_upstream_description() {
        let cm = desired(None, "ns1", CA).unwrap();
        assert_eq!(cm.metadata.name.as_deref(), Some("kube-root-ca.crt"));
        assert_eq!(cm.metadata.namespace.as_deref(), Some("ns1"));
        assert_eq!(cm.data.unwrap()["ca.crt"], CA);
        assert!(cm.metadata.annotations.unwrap()["kubernetes.io/description"].contains("kubernetes.default.svc"));
    }

    #[test]
    fn an_edited_config_map_is_put_back_and_a_correct_one_left_alone() {
        let good = desired(None, "ns1", CA).unwrap();
        assert_eq!(desired(Some(&good), "ns1", CA), None);
        let mut edited = good.clone();
        edited.data.as_mut().unwrap().insert("extra".into(), "x".into());
        edited.metadata.labels = Some(BTreeMap::from([("keep".into(), "me".into())]));
        let fixed = desired(Some(&edited), "ns1", CA).unwrap();
        assert_eq!(fixed.data, good.data);
        assert_eq!(fixed.metadata.labels, edited.metadata.labels, "other metadata is kept");
    }
}
