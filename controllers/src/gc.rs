//! The garbage collector: deletes objects all of whose owners (by `ownerReferences` uid) are
//! gone, which is how deleting a Deployment removes its ReplicaSets and their pods
//! (background cascading deletion).
//!
//! Foreground deletion: an owner the API server holds under the `foregroundDeletion` finalizer
//! (deleted with `propagationPolicy: Foreground`) has its dependents deleted here, and loses the
//! finalizer (so it goes) once none of them blocks it with `blockOwnerDeletion` any more.
//!
//! Dependents are the kinds controllers create (pods, ReplicaSets, Jobs); an owner's deletion
//! enqueues its dependents, and a dependent seen with references is checked once on sight, so
//! nothing is missed across a restart.

use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use skiff_api::{
    ApiClient, ApiError, DeleteOptions, Informer, InformerEvent, ListOptions, ObjectKey, ResourceKind, Store, WorkQueue,
};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use crate::controller::{self, Action, Reconciler};

/// One object that may have to go: which kind, and which object.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Dependent {
    pub res: &'static ResourceKind,
    pub key: ObjectKey,
}

impl fmt::Display for Dependent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.res.plural, self.key)
    }
}

pub struct GarbageCollector {
    client: Arc<dyn ApiClient>,
    pods: Store<Pod>,
    replicasets: Store<ReplicaSet>,
    jobs: Store<Job>,
}

fn has_owners(meta: &ObjectMeta) -> bool {
    meta.owner_references.as_ref().is_some_and(|r| !r.is_empty())
}

/// The finalizer the API server sets on an owner deleted in the foreground.
const FOREGROUND: &str = "foregroundDeletion";

fn in_foreground_deletion(meta: &ObjectMeta) -> bool {
    meta.deletion_timestamp.is_some() && meta.finalizers.iter().flatten().any(|f| f == FOREGROUND)
}

/// The owners an object names, as keys to check.
fn owners_of(meta: &ObjectMeta) -> Vec<Dependent> {
    let mut out = Vec::new();
    for r in meta.owner_references.iter().flatten() {
        let Some(res) = ResourceKind::by_kind(&r.api_version, &r.kind) else { continue };
        let namespace = if res.namespaced() { meta.namespace.clone() } else { None };
        out.push(Dependent { res, key: ObjectKey { namespace, name: r.name.clone() } });
    }
    out
}

fn dependent<K: k8s_openapi::Resource + k8s_openapi::Metadata<Ty = ObjectMeta>>(object: &K) -> Dependent {
    Dependent { res: ResourceKind::of::<K>(), key: ObjectKey::of(object) }
}

impl GarbageCollector {
    pub async fn run(client: Arc<dyn ApiClient>, shutdown: CancellationToken) {
        let all = ListOptions::default;
        let (pods, pod_events, _p) = Informer::<Pod>::new(client.clone(), None, all()).spawn();
        let (replicasets, rs_events, _r) = Informer::<ReplicaSet>::new(client.clone(), None, all()).spawn();
        let (jobs, job_events, _j) = Informer::<Job>::new(client.clone(), None, all()).spawn();
        let (_deployments, d_events, _d) = Informer::<Deployment>::new(client.clone(), None, all()).spawn();
        let (_cronjobs, cj_events, _c) = Informer::<CronJob>::new(client.clone(), None, all()).spawn();
        let (_daemonsets, ds_events, _ds) = Informer::<DaemonSet>::new(client.clone(), None, all()).spawn();
        let (_statefulsets, sts_events, _sts) = Informer::<StatefulSet>::new(client.clone(), None, all()).spawn();
        let this = Arc::new(Self { client, pods, replicasets, jobs });
        let queue = WorkQueue::<Dependent>::new();
        let tasks = [
            tokio::spawn(Self::forward(this.clone(), queue.clone(), pod_events)),
            tokio::spawn(Self::forward(this.clone(), queue.clone(), rs_events)),
            tokio::spawn(Self::forward(this.clone(), queue.clone(), job_events)),
            tokio::spawn(Self::forward(this.clone(), queue.clone(), d_events)),
            tokio::spawn(Self::forward(this.clone(), queue.clone(), cj_events)),
            tokio::spawn(Self::forward(this.clone(), queue.clone(), ds_events)),
            tokio::spawn(Self::forward(this.clone(), queue.clone(), sts_events)),
        ];
        controller::run(this, queue, 1, shutdown).await;
        for task in tasks {
            task.abort();
        }
    }

    /// Turns one informer's events into dependents to check: the object itself when it has
    /// owners, and on its deletion everything that names it as an owner.
    async fn forward<K>(this: Arc<Self>, queue: WorkQueue<Dependent>, mut events: UnboundedReceiver<InformerEvent<K>>)
    where
        K: k8s_openapi::Resource + k8s_openapi::Metadata<Ty = ObjectMeta> + DeserializeOwned + Send + Sync + 'static,
    {
        while let Some(event) = events.recv().await {
            match event {
                InformerEvent::Applied(object) => {
                    if has_owners(object.metadata()) || in_foreground_deletion(object.metadata()) {
                        queue.add(dependent(object.as_ref()))
                    }
                }
                InformerEvent::Deleted(object) => {
                    if let Some(uid) = object.metadata().uid.as_deref() {
                        for d in this.dependents_of(uid) {
                            queue.add(d);
                        }
                    }
                    // An owner waiting in foreground deletion may have lost its last blocker.
                    for d in owners_of(object.metadata()) {
                        queue.add(d);
                    }
                }
                InformerEvent::Synced => {}
            }
        }
    }

    fn dependents_of(&self, uid: &str) -> Vec<Dependent> {
        let owned_by = |meta: &ObjectMeta| meta.owner_references.iter().flatten().any(|r| r.uid == uid);
        let pods = self.pods.list().into_iter().filter(|p| owned_by(&p.metadata)).map(|p| dependent(p.as_ref()));
        let sets = self.replicasets.list().into_iter().filter(|r| owned_by(&r.metadata)).map(|r| dependent(r.as_ref()));
        let jobs = self.jobs.list().into_iter().filter(|j| owned_by(&j.metadata)).map(|j| dependent(j.as_ref()));
        pods.chain(sets).chain(jobs).collect()
    }

    /// Whether the owner a reference names still exists with that uid.
    async fn owner_exists(
        &self,
        namespace: Option<&str>,
        api_version: &str,
        kind: &str,
        name: &str,
        uid: &str,
    ) -> Result<bool, ApiError> {
        // An owner of a kind Skiff does not serve cannot be checked: keep the dependent.
        let Some(res) = ResourceKind::by_kind(api_version, kind) else { return Ok(true) };
        let namespace = if res.namespaced() { namespace } else { None };
        match self.client.get(res, namespace, name).await {
            Ok(owner) => Ok(owner["metadata"]["uid"].as_str() == Some(uid)),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl GarbageCollector {
    /// One pass of foreground deletion for `owner`: deletes its dependents (in the foreground
    /// too, so grandchildren go first), and drops the finalizer once no dependent left blocks.
    async fn delete_in_foreground(&self, d: &Dependent, owner: &serde_json::Value) -> Result<Action, ApiError> {
        let Some(owner_uid) = owner["metadata"]["uid"].as_str() else { return Ok(Action::AwaitChange) };
        let ns = d.key.namespace.as_deref();
        let mut blocking = 0;
        // Any kind may name an owner, so this looks at every namespaced kind (the owner's
        // namespace, or everywhere for a cluster-scoped owner), not only the informers' caches.
        for res in skiff_api::RESOURCES.iter().filter(|r| r.namespaced()) {
            let list = self.client.list(res, ns, &ListOptions::default()).await?;
            for item in list.items {
                let refs = item["metadata"]["ownerReferences"].as_array().cloned().unwrap_or_default();
                let Some(r) = refs.iter().find(|r| r["uid"] == owner_uid) else { continue };
                if r["blockOwnerDeletion"] == true {
                    blocking += 1;
                }
                if !item["metadata"]["deletionTimestamp"].is_null() {
                    continue;
                }
                let name = item["metadata"]["name"].as_str().unwrap_or_default();
                let opts = DeleteOptions {
                    propagation_policy: Some("Foreground".into()),
                    precondition_uid: item["metadata"]["uid"].as_str().map(String::from),
                    ..Default::default()
                };
                tracing::info!(owner = %d, dependent = %format!("{} {name}", res.plural), "foreground deletion");
                match self.client.delete(res, item["metadata"]["namespace"].as_str(), name, &opts).await {
                    Ok(_) => {}
                    Err(e) if e.is_not_found() || e.is_conflict() => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if blocking > 0 {
            // Dependents' deletions requeue the owner; the timer covers kinds no informer sees.
            return Ok(Action::RequeueAfter(std::time::Duration::from_secs(2)));
        }
        let rest: Vec<serde_json::Value> = owner["metadata"]["finalizers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| *f != FOREGROUND)
            .cloned()
            .collect();
        // The test guards against dropping a finalizer another writer added meanwhile.
        let patch = serde_json::json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": owner["metadata"]["resourceVersion"]},
            {"op": "replace", "path": "/metadata/finalizers", "value": rest},
        ]);
        tracing::info!(owner = %d, "no dependent blocks any more, removing the foregroundDeletion finalizer");
        match self.client.patch(d.res, ns, &d.key.name, None, skiff_api::PatchKind::Json, patch).await {
            Ok(_) => Ok(Action::AwaitChange),
            Err(e) if e.is_not_found() => Ok(Action::AwaitChange),
            // Changed since it was read: look again.
            Err(e) if e.code == 422 || e.is_conflict() => {
                Ok(Action::RequeueAfter(std::time::Duration::from_millis(200)))
            }
            Err(e) => Err(e),
        }
    }
}

#[async_trait::async_trait]
impl Reconciler for GarbageCollector {
    const NAME: &'static str = "garbage-collector";
    type Key = Dependent;

    async fn reconcile(&self, d: &Dependent) -> Result<Action, ApiError> {
        let ns = d.key.namespace.as_deref();
        let object = match self.client.get(d.res, ns, &d.key.name).await {
            Ok(object) => object,
            Err(e) if e.is_not_found() => return Ok(Action::AwaitChange),
            Err(e) => return Err(e),
        };
        let held = object["metadata"]["finalizers"].as_array().is_some_and(|f| f.iter().any(|f| f == FOREGROUND));
        if held && !object["metadata"]["deletionTimestamp"].is_null() {
            return self.delete_in_foreground(d, &object).await;
        }
        let refs = object["metadata"]["ownerReferences"].as_array().cloned().unwrap_or_default();
        if refs.is_empty() || !object["metadata"]["deletionTimestamp"].is_null() {
            return Ok(Action::AwaitChange);
        }
        for r in &refs {
            let field = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            if self.owner_exists(ns, &field("apiVersion"), &field("kind"), &field("name"), &field("uid")).await? {
                return Ok(Action::AwaitChange);
            }
        }
        let opts = DeleteOptions {
            propagation_policy: Some("Background".into()),
            precondition_uid: object["metadata"]["uid"].as_str().map(String::from),
            ..Default::default()
        };
        tracing::info!(dependent = %d, "all owners are gone, deleting");
        match self.client.delete(d.res, ns, &d.key.name, &opts).await {
            Ok(_) => Ok(Action::AwaitChange),
            Err(e) if e.is_not_found() || e.is_conflict() => Ok(Action::AwaitChange),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};

    use super::*;

    fn owner_ref(api_version: &str, kind: &str, name: &str) -> OwnerReference {
        OwnerReference {
            api_version: api_version.into(),
            kind: kind.into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            ..Default::default()
        }
    }

    #[test]
    fn only_a_deleting_object_with_the_foreground_finalizer_is_in_foreground_deletion() {
        let mut meta = ObjectMeta { finalizers: Some(vec![FOREGROUND.into()]), ..Default::default() };
        assert!(!in_foreground_deletion(&meta), "not deleting yet");
        meta.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
        assert!(in_foreground_deletion(&meta));
        meta.finalizers = Some(vec!["example.com/other".into()]);
        assert!(!in_foreground_deletion(&meta));
    }

    #[test]
    fn a_deleted_dependent_names_its_owners_to_look_at_again() {
        let meta = ObjectMeta {
            namespace: Some("team".into()),
            owner_references: Some(vec![
                owner_ref("apps/v1", "ReplicaSet", "web-1"),
                owner_ref("v1", "Node", "n1"),
                owner_ref("example.com/v1", "Widget", "w"),
            ]),
            ..Default::default()
        };
        let owners: Vec<String> = owners_of(&meta).iter().map(ToString::to_string).collect();
        // A namespaced owner is in the dependent's namespace, a cluster-scoped one in none; a
        // kind Skiff does not serve is skipped.
        assert_eq!(owners.len(), 2, "{owners:?}");
        assert!(owners[0].starts_with("replicasets") && owners[0].contains("team") && owners[0].contains("web-1"));
        assert!(owners[1].starts_with("nodes") && !owners[1].contains("team"), "{owners:?}");
    }
}
