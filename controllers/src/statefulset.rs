//! The StatefulSet controller: pods with stable names `<set>-<ordinal>` and stable storage
//! (a PersistentVolumeClaim per claim template and ordinal, kept across pod restarts), created
//! in order and each only once the ones before it are Running and Ready (OrderedReady) or all
//! at once (Parallel); scaled down from the highest ordinal; updated from the highest ordinal
//! down to `partition`, one pod at a time (RollingUpdate), or left alone (OnDelete).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use skiff_api::{
    Api, ApiClient, ApiError, DeleteOptions, Informer, ListOptions, ObjectKey, ObjectReference, Recorder, Store,
    WorkQueue,
};
use tokio_util::sync::CancellationToken;

use crate::controller::{self, Action, Reconciler};
use crate::daemonset::REVISION_HASH;
use crate::deployment::template_hash;
use crate::pods::{controller_of, is_available, is_ready};

pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

pub struct StatefulSetController {
    client: Arc<dyn ApiClient>,
    sets: Store<StatefulSet>,
    pods: Store<Pod>,
    recorder: Recorder,
}

/// The ordinal of `<set>-<n>`, for pods of set `set`.
fn ordinal(set: &str, pod: &str) -> Option<i32> {
    pod.strip_prefix(set)?.strip_prefix('-')?.parse().ok()
}

fn terminal(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

fn revision_of(pod: &Pod) -> Option<&str> {
    pod.metadata.labels.as_ref()?.get(REVISION_HASH).map(String::as_str)
}

/// The claim of template `claim` for pod `<set>-<n>`: `<claim>-<set>-<n>`.
pub fn claim_name(claim: &str, set: &str, ordinal: i32) -> String {
    format!("{claim}-{set}-{ordinal}")
}

fn pod_for(sts: &StatefulSet, ordinal: i32, revision: &str) -> Pod {
    let set = sts.metadata.name.clone().unwrap_or_default();
    let spec = sts.spec.clone().unwrap_or_default();
    let template = spec.template;
    let meta = template.metadata.unwrap_or_default();
    let name = format!("{set}-{ordinal}");
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    labels.insert(REVISION_HASH.into(), revision.into());
    let mut pod_spec = template.spec.unwrap_or_default();
    pod_spec.hostname = Some(name.clone());
    if !spec.service_name.as_deref().unwrap_or_default().is_empty() {
        pod_spec.subdomain = spec.service_name.clone();
    }
    for claim in spec.volume_claim_templates.iter().flatten() {
        let claim_template = claim.metadata.name.clone().unwrap_or_default();
        let volumes = pod_spec.volumes.get_or_insert_with(Vec::new);
        volumes.retain(|v| v.name != claim_template);
        volumes.push(Volume {
            name: claim_template.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(&claim_template, &set, ordinal),
                read_only: None,
            }),
            ..Default::default()
        });
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: sts.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: meta.annotations,
            owner_references: Some(vec![controller::controller_reference(sts)]),
            ..Default::default()
        },
        spec: Some(pod_spec),
        status: None,
    }
}

impl StatefulSetController {
    pub async fn run(client: Arc<dyn ApiClient>, shutdown: CancellationToken) {
        let all = ListOptions::default;
        let (sets, set_events, _s) = Informer::<StatefulSet>::new(client.clone(), None, all()).spawn();
        let (pods, pod_events, _p) = Informer::<Pod>::new(client.clone(), None, all()).spawn();
        let recorder = controller::recorder(client.clone(), "statefulset-controller");
        let this = Arc::new(Self { client, sets, pods, recorder });
        let queue = WorkQueue::<ObjectKey>::new();
        let triggers = [
            controller::queue_objects(queue.clone(), set_events),
            controller::queue_owners(queue.clone(), pod_events, "StatefulSet"),
        ];
        controller::run(this, queue, 1, shutdown).await;
        triggers.iter().for_each(|t| t.abort());
    }

    /// Creates the claims of one ordinal that do not exist yet. They are never deleted here:
    /// stable storage outlives its pod (retention policy Retain, Kubernetes' default).
    async fn ensure_claims(&self, sts: &StatefulSet, ordinal: i32) -> Result<(), ApiError> {
        let ns = sts.metadata.namespace.as_deref().unwrap_or_default();
        let set = sts.metadata.name.as_deref().unwrap_or_default();
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
        let selector_labels = sts.spec.as_ref().and_then(|s| s.selector.match_labels.clone());
        for template in sts.spec.as_ref().and_then(|s| s.volume_claim_templates.clone()).into_iter().flatten() {
            let name = claim_name(template.metadata.name.as_deref().unwrap_or_default(), set, ordinal);
            if api.get_opt(&name).await?.is_some() {
                continue;
            }
            let mut labels = template.metadata.labels.clone().unwrap_or_default();
            labels.extend(selector_labels.clone().unwrap_or_default());
            let claim = PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(ns.into()),
                    labels: Some(labels),
                    annotations: template.metadata.annotations.clone(),
                    ..Default::default()
                },
                spec: template.spec.clone(),
                status: None,
            };
            match api.create(&claim).await {
                Ok(_) => {
                    let message = format!("create Claim {name} Pod {set}-{ordinal} in StatefulSet {set} success");
                    self.recorder.normal(&ObjectReference::of(sts), "SuccessfulCreate", &message).await;
                }
                Err(e) if e.is_already_exists() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn delete_pod(&self, sts: &StatefulSet, pod: &Pod) -> Result<(), ApiError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), pod.metadata.namespace.as_deref().unwrap_or_default());
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        match api.delete(name, &DeleteOptions::default()).await {
            Ok(_) => {
                let set = sts.metadata.name.as_deref().unwrap_or_default();
                let message = format!("delete Pod {name} in StatefulSet {set} successful");
                self.recorder.normal(&ObjectReference::of(sts), "SuccessfulDelete", &message).await;
                Ok(())
            }
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// One step towards the spec; returns after any change, since the next event brings the
    /// controller back (pods move one at a time unless the policy is Parallel).
    async fn step(&self, sts: &StatefulSet, pods: &BTreeMap<i32, Arc<Pod>>, revision: &str) -> Result<(), ApiError> {
        let spec = sts.spec.clone().unwrap_or_default();
        let replicas = spec.replicas.unwrap_or(1);
        let parallel = spec.pod_management_policy.as_deref() == Some("Parallel");
        let ns = sts.metadata.namespace.as_deref().unwrap_or_default();
        let set = sts.metadata.name.as_deref().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        for ordinal in 0..replicas {
            match pods.get(&ordinal) {
                None => {
                    self.ensure_claims(sts, ordinal).await?;
                    match api.create(&pod_for(sts, ordinal, revision)).await {
                        Ok(_) => {
                            let message = format!("create Pod {set}-{ordinal} in StatefulSet {set} successful");
                            self.recorder.normal(&ObjectReference::of(sts), "SuccessfulCreate", &message).await;
                        }
                        // The old pod of this ordinal is still terminating.
                        Err(e) if e.is_already_exists() => return Ok(()),
                        Err(e) => return Err(e),
                    }
                    if !parallel {
                        return Ok(());
                    }
                }
                Some(pod) if terminal(pod) && pod.metadata.deletion_timestamp.is_none() => {
                    self.delete_pod(sts, pod).await?;
                    if !parallel {
                        return Ok(());
                    }
                }
                Some(pod) if !parallel && !(is_ready(pod) && pod.metadata.deletion_timestamp.is_none()) => {
                    return Ok(());
                }
                Some(_) => {}
            }
        }
        // Scale down from the highest ordinal.
        let mut extra: Vec<&Arc<Pod>> =
            pods.range(replicas..).map(|(_, p)| p).filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
        extra.reverse();
        if !extra.is_empty() {
            for pod in extra.iter().take(if parallel { extra.len() } else { 1 }) {
                self.delete_pod(sts, pod).await?;
            }
            return Ok(());
        }
        // Rolling update from the highest ordinal down to the partition, one at a time.
        let strategy = spec.update_strategy.clone().unwrap_or_default();
        if strategy.type_.as_deref().unwrap_or("RollingUpdate") == "RollingUpdate" {
            let partition = strategy.rolling_update.and_then(|r| r.partition).unwrap_or(0);
            let all_ready = pods.range(..replicas).all(|(_, p)| is_ready(p) && p.metadata.deletion_timestamp.is_none());
            if all_ready {
                let outdated =
                    pods.range(partition..replicas).rev().map(|(_, p)| p).find(|p| revision_of(p) != Some(revision));
                if let Some(pod) = outdated {
                    self.delete_pod(sts, pod).await?;
                }
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Reconciler for StatefulSetController {
    const NAME: &'static str = "statefulset";
    type Key = ObjectKey;

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, ApiError> {
        let Some(sts) = self.sets.get(key) else { return Ok(Action::AwaitChange) };
        if sts.metadata.deletion_timestamp.is_some() {
            return Ok(Action::AwaitChange);
        }
        let spec = sts.spec.clone().unwrap_or_default();
        let uid = sts.metadata.uid.clone().unwrap_or_default();
        let revision = format!(
            "{}-{}",
            key.name,
            template_hash(&spec.template, sts.status.as_ref().and_then(|s| s.collision_count))
        );
        let pods: BTreeMap<i32, Arc<Pod>> = self
            .pods
            .list()
            .into_iter()
            .filter(|p| {
                p.metadata.namespace == key.namespace && controller_of(&p.metadata).is_some_and(|o| o.uid == uid)
            })
            .filter_map(|p| Some((ordinal(&key.name, p.metadata.name.as_deref()?)?, p)))
            .collect();
        self.step(&sts, &pods, &revision).await?;

        let replicas = spec.replicas.unwrap_or(1);
        let live: Vec<&Arc<Pod>> =
            pods.values().filter(|p| p.metadata.deletion_timestamp.is_none() && !terminal(p)).collect();
        let now = jiff::Timestamp::now();
        let count = |f: &dyn Fn(&Pod) -> bool| live.iter().filter(|p| f(p)).count() as i32;
        let updated = count(&|p| revision_of(p) == Some(revision.as_str()));
        let previous = sts.status.clone().unwrap_or_default();
        let current_revision = if updated == replicas && live.len() as i32 == replicas {
            revision.clone()
        } else {
            previous.current_revision.clone().unwrap_or_else(|| revision.clone())
        };
        let status = StatefulSetStatus {
            replicas: live.len() as i32,
            ready_replicas: Some(count(&|p| is_ready(p))),
            available_replicas: Some(count(&|p| is_available(p, spec.min_ready_seconds.unwrap_or(0), now))),
            current_replicas: Some(count(&|p| revision_of(p) == Some(current_revision.as_str()))),
            updated_replicas: Some(updated),
            current_revision: Some(current_revision),
            update_revision: Some(revision),
            observed_generation: sts.metadata.generation,
            collision_count: previous.collision_count,
            conditions: previous.conditions.clone(),
        };
        if sts.status.as_ref() != Some(&status) {
            let mut updated = (*sts).clone();
            updated.status = Some(status);
            let api: Api<StatefulSet> =
                Api::namespaced(self.client.clone(), key.namespace.as_deref().unwrap_or_default());
            api.replace_status(&key.name, &updated).await?;
        }
        Ok(Action::AwaitChange)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_come_from_the_stable_names() {
        assert_eq!(ordinal("web", "web-0"), Some(0));
        assert_eq!(ordinal("web", "web-12"), Some(12));
        assert_eq!(ordinal("web", "webx-1"), None);
        assert_eq!(ordinal("web", "web-db-1"), None);
        assert_eq!(claim_name("data", "db", 2), "data-db-2");
    }
}
