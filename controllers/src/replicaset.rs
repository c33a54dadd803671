//! The ReplicaSet controller: keeps `spec.replicas` pods of the template running, adopting
//! orphans that match the selector and releasing owned pods that no longer do.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::json;
use skiff_api::{
    Api, ApiClient, ApiError, DeleteOptions, Informer, InformerEvent, LabelSelector, ListOptions, ObjectKey,
    ObjectReference, PatchKind, Recorder, Store, WorkQueue,
};
use tokio_util::sync::CancellationToken;

use crate::controller::{self, Action, Reconciler};
use crate::expectations::Expectations;
use crate::pods::{controller_of, deletion_order, is_active, is_available, is_ready};

/// Most pods created or deleted in one reconcile (Kubernetes' `burstReplicas`).
const BURST: usize = 500;

pub struct ReplicaSetController {
    client: Arc<dyn ApiClient>,
    replicasets: Store<ReplicaSet>,
    pods: Store<Pod>,
    expectations: Expectations,
    recorder: Recorder,
}

/// What `manage` decided for one ReplicaSet.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    Create(usize),
    /// Names of the pods to delete, least valuable first.
    Delete(Vec<String>),
    Nothing,
}

/// Pure: how to move from the `active` owned pods to `replicas`.
pub fn plan(replicas: i32, mut active: Vec<&Pod>) -> Plan {
    let diff = active.len() as i64 - i64::from(replicas.max(0));
    if diff < 0 {
        Plan::Create((-diff as usize).min(BURST))
    } else if diff > 0 {
        active.sort_by(|a, b| deletion_order(a, b));
        Plan::Delete(active.iter().take((diff as usize).min(BURST)).filter_map(|p| p.metadata.name.clone()).collect())
    } else {
        Plan::Nothing
    }
}

/// Pure: the status the pods give, as the ReplicaSet controller computes it.
pub fn compute_status(rs: &ReplicaSet, owned: &[&Pod], now: jiff::Timestamp) -> ReplicaSetStatus {
    let spec = rs.spec.as_ref();
    let min_ready = spec.and_then(|s| s.min_ready_seconds).unwrap_or(0);
    let template_labels = spec
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let active: Vec<&&Pod> = owned.iter().filter(|p| is_active(p)).collect();
    let count = |f: &dyn Fn(&Pod) -> bool| active.iter().filter(|p| f(p)).count() as i32;
    let previous = rs.status.clone().unwrap_or_default();
    ReplicaSetStatus {
        replicas: active.len() as i32,
        fully_labeled_replicas: Some(count(&|p| {
            let labels = p.metadata.labels.clone().unwrap_or_default();
            template_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
        })),
        ready_replicas: Some(count(&|p| is_ready(p))),
        available_replicas: Some(count(&|p| is_available(p, min_ready, now))),
        observed_generation: rs.metadata.generation,
        conditions: previous.conditions,
        terminating_replicas: None,
    }
}

pub(crate) fn pod_from_template(rs: &ReplicaSet) -> Pod {
    let template = rs.spec.as_ref().and_then(|s| s.template.clone()).unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    let name = rs.metadata.name.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}-")),
            namespace: rs.metadata.namespace.clone(),
            labels: meta.labels,
            annotations: meta.annotations,
            owner_references: Some(vec![controller::controller_reference(rs)]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

impl ReplicaSetController {
    /// Starts the informers and the reconcile workers; returns when `shutdown` fires.
    pub async fn run(client: Arc<dyn ApiClient>, shutdown: CancellationToken) {
        let (replicasets, mut rs_events, _rs_informer) =
            Informer::<ReplicaSet>::new(client.clone(), None, ListOptions::default()).spawn();
        let (pods, mut pod_events, _pod_informer) =
            Informer::<Pod>::new(client.clone(), None, ListOptions::default()).spawn();
        let recorder = controller::recorder(client.clone(), "replicaset-controller");
        let this = Arc::new(Self { client, replicasets, pods, expectations: Expectations::default(), recorder });
        let queue = WorkQueue::<ObjectKey>::new();

        let triggers = {
            let (this, queue) = (this.clone(), queue.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        Some(event) = rs_events.recv() => match event {
                            InformerEvent::Applied(rs) | InformerEvent::Deleted(rs) => queue.add(ObjectKey::of(rs.as_ref())),
                            InformerEvent::Synced => {}
                        },
                        Some(event) = pod_events.recv() => match event {
                            InformerEvent::Applied(pod) | InformerEvent::Deleted(pod) => {
                                for key in this.owners_of(&pod) {
                                    queue.add(key);
                                }
                            }
                            InformerEvent::Synced => {}
                        },
                        else => break,
                    }
                }
            })
        };
        controller::run(this, queue, 2, shutdown).await;
        triggers.abort();
    }

    /// The ReplicaSets a pod event concerns: its controller, or (an orphan) every ReplicaSet
    /// of its namespace whose selector matches it.
    fn owners_of(&self, pod: &Pod) -> Vec<ObjectKey> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        if let Some(owner) = controller_of(&pod.metadata) {
            return if owner.kind == "ReplicaSet" { vec![ObjectKey::namespaced(ns, &owner.name)] } else { vec![] };
        }
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        self.replicasets
            .list()
            .into_iter()
            .filter(|rs| rs.metadata.namespace.as_deref() == Some(ns))
            .filter(|rs| selector_of(rs).is_some_and(|s| !s.is_empty() && s.matches(&labels)))
            .map(|rs| ObjectKey::of(rs.as_ref()))
            .collect()
    }

    fn pod_api(&self, ns: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// Adopts matching orphans and releases owned pods that stopped matching; returns the pods
    /// this ReplicaSet controls afterwards.
    async fn claim_pods(&self, rs: &ReplicaSet, selector: &LabelSelector) -> Result<Vec<Arc<Pod>>, ApiError> {
        let ns = rs.metadata.namespace.as_deref().unwrap_or_default();
        let uid = rs.metadata.uid.as_deref().unwrap_or_default();
        let mut owned = Vec::new();
        for pod in self.pods.list().into_iter().filter(|p| p.metadata.namespace.as_deref() == Some(ns)) {
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            let name = pod.metadata.name.as_deref().unwrap_or_default();
            let matches = selector.matches(&labels);
            match controller_of(&pod.metadata) {
                Some(owner) if owner.uid == uid => {
                    if matches {
                        owned.push(pod);
                    } else {
                        let refs: Vec<_> =
                            pod.metadata.owner_references.iter().flatten().filter(|r| r.uid != uid).collect();
                        self.pod_api(ns)
                            .patch(name, PatchKind::Merge, json!({"metadata": {"ownerReferences": refs}}))
                            .await?;
                    }
                }
                None if matches && is_active(&pod) && rs.metadata.deletion_timestamp.is_none() => {
                    let mut refs = pod.metadata.owner_references.clone().unwrap_or_default();
                    refs.push(pod_from_template(rs).metadata.owner_references.unwrap_or_default().remove(0));
                    let patch = json!({"metadata": {"ownerReferences": refs}});
                    match self.pod_api(ns).patch(name, PatchKind::Merge, patch).await {
                        Ok(adopted) => owned.push(Arc::new(adopted)),
                        Err(e) if e.is_not_found() => {}
                        Err(e) => return Err(e),
                    }
                }
                _ => {}
            }
        }
        Ok(owned)
    }

    /// Creates or deletes pods towards `replicas`; returns the names of the pods it deleted.
    async fn manage(&self, key: &ObjectKey, rs: &ReplicaSet, owned: &[Arc<Pod>]) -> Result<Vec<String>, ApiError> {
        let replicas = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let active: Vec<&Pod> = owned.iter().map(|p| p.as_ref()).filter(|p| is_active(p)).collect();
        let ns = rs.metadata.namespace.as_deref().unwrap_or_default();
        let reference = ObjectReference::of(rs);
        let mut deleted = Vec::new();
        match plan(replicas, active.clone()) {
            Plan::Nothing => {}
            Plan::Create(n) => {
                // Slow start (Kubernetes' slowStartBatch): 1, 2, 4, … so a broken template
                // fails once instead of n times.
                let template = pod_from_template(rs);
                let api = self.pod_api(ns);
                let (mut left, mut batch) = (n, 1usize);
                while left > 0 {
                    let size = batch.min(left);
                    let results = join_all((0..size).map(|_| api.create(&template))).await;
                    let mut failure = None;
                    for result in results {
                        match result {
                            Ok(pod) => {
                                self.expectations.created(key, &pod);
                                let name = pod.metadata.name.clone().unwrap_or_default();
                                self.recorder
                                    .normal(&reference, "SuccessfulCreate", &format!("Created pod: {name}"))
                                    .await;
                            }
                            Err(e) => failure = Some(e),
                        }
                    }
                    if let Some(e) = failure {
                        self.recorder.warning(&reference, "FailedCreate", &format!("Error creating: {e}")).await;
                        return Err(e);
                    }
                    left -= size;
                    batch *= 2;
                }
            }
            Plan::Delete(names) => {
                let victims: Vec<&Pod> =
                    active.into_iter().filter(|p| names.contains(p.metadata.name.as_ref().unwrap())).collect();
                let results = join_all(victims.iter().map(|p| async move {
                    let name = p.metadata.name.as_deref().unwrap_or_default();
                    (p, self.pod_api(ns).delete(name, &DeleteOptions::default()).await)
                }))
                .await;
                for (pod, result) in results {
                    let name = pod.metadata.name.as_deref().unwrap_or_default();
                    match result {
                        Ok(_) => {
                            deleted.push(name.to_string());
                            self.expectations.deleted(key, pod);
                            self.recorder.normal(&reference, "SuccessfulDelete", &format!("Deleted pod: {name}")).await;
                        }
                        Err(e) if e.is_not_found() => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(deleted)
    }
}

fn selector_of(rs: &ReplicaSet) -> Option<LabelSelector> {
    rs.spec.as_ref().and_then(|s| LabelSelector::from_k8s(&s.selector).ok())
}

#[async_trait::async_trait]
impl Reconciler for ReplicaSetController {
    const NAME: &'static str = "replicaset";
    type Key = ObjectKey;

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, ApiError> {
        let Some(rs) = self.replicasets.get(key) else {
            self.expectations.forget(key);
            return Ok(Action::AwaitChange);
        };
        let Some(selector) = selector_of(&rs) else { return Ok(Action::AwaitChange) };
        let owned = self.claim_pods(&rs, &selector).await?;
        let mut deleted = Vec::new();
        if self.expectations.satisfied(key, &self.pods) && rs.metadata.deletion_timestamp.is_none() {
            deleted = self.manage(key, &rs, &owned).await?;
        }
        let now = jiff::Timestamp::now();
        // Pods deleted just now no longer count, though the cache has not seen it yet.
        let owned_refs: Vec<&Pod> = owned
            .iter()
            .map(|p| p.as_ref())
            .filter(|p| !p.metadata.name.as_ref().is_some_and(|n| deleted.contains(n)))
            .collect();
        let status = compute_status(&rs, &owned_refs, now);
        if rs.status.as_ref() != Some(&status) {
            let mut updated = (*rs).clone();
            updated.status = Some(status.clone());
            let api: Api<ReplicaSet> =
                Api::namespaced(self.client.clone(), key.namespace.as_deref().unwrap_or_default());
            api.replace_status(&key.name, &updated).await?;
        }
        // Pods that are ready but not yet available become available with time alone.
        let min_ready = rs.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0);
        if min_ready > 0 && status.ready_replicas != status.available_replicas {
            return Ok(Action::RequeueAfter(Duration::from_secs(min_ready as u64)));
        }
        Ok(Action::AwaitChange)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::fixtures::pod;

    #[test]
    fn scale_up_creates_the_missing_pods() {
        let a = pod("a", "Running", true, Some(1));
        assert_eq!(plan(3, vec![&a]), Plan::Create(2));
        assert_eq!(plan(1, vec![&a]), Plan::Nothing);
    }

    #[test]
    fn scale_down_deletes_the_least_valuable_pods_first() {
        let ready = pod("ready", "Running", true, Some(1));
        let pending = pod("pending", "Pending", true, None);
        let unscheduled = pod("unscheduled", "Pending", false, None);
        assert_eq!(
            plan(1, vec![&ready, &pending, &unscheduled]),
            Plan::Delete(vec!["unscheduled".into(), "pending".into()])
        );
    }

    #[test]
    fn status_counts_ready_and_available_active_pods() {
        let rs = ReplicaSet {
            metadata: ObjectMeta { generation: Some(4), ..Default::default() },
            spec: Some(k8s_openapi::api::apps::v1::ReplicaSetSpec {
                min_ready_seconds: Some(10),
                ..Default::default()
            }),
            status: None,
        };
        let old = pod("old", "Running", true, Some(100));
        let fresh = pod("fresh", "Running", true, Some(195));
        let starting = pod("starting", "Pending", true, None);
        let done = pod("done", "Succeeded", true, None);
        let status = compute_status(&rs, &[&old, &fresh, &starting, &done], jiff::Timestamp::from_second(200).unwrap());
        assert_eq!(status.replicas, 3);
        assert_eq!(status.ready_replicas, Some(2));
        assert_eq!(status.available_replicas, Some(1));
        assert_eq!(status.observed_generation, Some(4));
    }
}
