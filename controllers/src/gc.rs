//! The garbage collector: deletes objects all of whose owners (by `ownerReferences` uid) are
//! gone, which is how deleting a Deployment removes its ReplicaSets and their pods
//! (background cascading deletion).
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
                InformerEvent::Applied(object) if has_owners(object.metadata()) => {
                    queue.add(dependent(object.as_ref()))
                }
                InformerEvent::Deleted(object) => {
                    if let Some(uid) = object.metadata().uid.as_deref() {
                        for d in this.dependents_of(uid) {
                            queue.add(d);
                        }
                    }
                }
                _ => {}
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
