//! The Deployment controller: rolls a Deployment's template out through ReplicaSets
//! (RollingUpdate with maxSurge/maxUnavailable, or Recreate), keeps revision history for
//! `kubectl rollout history/undo`, and reports the status `kubectl rollout status` reads.

mod history;
mod rollout;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector as K8sSelector, ObjectMeta, Time};
use serde_json::json;
use skiff_api::{
    Api, ApiClient, ApiError, DeleteOptions, Informer, InformerEvent, LabelSelector, ListOptions, ObjectKey,
    ObjectReference, PatchKind, Recorder, Store, WorkQueue,
};
use tokio_util::sync::CancellationToken;

use crate::controller::{self, Action, Reconciler};
use crate::pods::{controller_of, is_active};
pub use history::{CHANGE_CAUSE, REVISION, TEMPLATE_HASH, template_hash};
use history::{DESIRED_REPLICAS, MAX_REPLICAS, revision, same_template};
pub use rollout::scaled_value;
use rollout::{
    desired, desired_annotation, is_scaling_event, new_rs_replicas, old_rs_scale_down, proportional_sizes,
    spec_replicas, surge_and_unavailable,
};

pub struct DeploymentController {
    client: Arc<dyn ApiClient>,
    deployments: Store<Deployment>,
    replicasets: Store<ReplicaSet>,
    pods: Store<Pod>,
    recorder: Recorder,
}

fn owner_key(meta: &ObjectMeta, kind: &str) -> Option<ObjectKey> {
    let owner = controller_of(meta).filter(|o| o.kind == kind)?;
    Some(ObjectKey::new(meta.namespace.as_deref(), &owner.name))
}

impl DeploymentController {
    pub async fn run(client: Arc<dyn ApiClient>, shutdown: CancellationToken) {
        let all = ListOptions::default;
        let (deployments, mut d_events, _d) = Informer::<Deployment>::new(client.clone(), None, all()).spawn();
        let (replicasets, mut rs_events, _rs) = Informer::<ReplicaSet>::new(client.clone(), None, all()).spawn();
        let (pods, mut pod_events, _p) = Informer::<Pod>::new(client.clone(), None, all()).spawn();
        let recorder = controller::recorder(client.clone(), "deployment-controller");
        let this = Arc::new(Self { client, deployments, replicasets, pods, recorder });
        let queue = WorkQueue::<ObjectKey>::new();
        let triggers = {
            let (this, queue) = (this.clone(), queue.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        Some(event) = d_events.recv() => if let InformerEvent::Applied(d) | InformerEvent::Deleted(d) = event {
                            queue.add(ObjectKey::of(d.as_ref()));
                        },
                        Some(event) = rs_events.recv() => if let InformerEvent::Applied(rs) | InformerEvent::Deleted(rs) = event {
                            if let Some(key) = owner_key(&rs.metadata, "Deployment") {
                                queue.add(key);
                            }
                        },
                        // Recreate waits for old pods to be gone; pods reach their Deployment
                        // through their ReplicaSet.
                        Some(event) = pod_events.recv() => if let InformerEvent::Deleted(pod) = event {
                            let rs = owner_key(&pod.metadata, "ReplicaSet").and_then(|k| this.replicasets.get(&k));
                            if let Some(key) = rs.and_then(|rs| owner_key(&rs.metadata, "Deployment")) {
                                queue.add(key);
                            }
                        },
                        else => break,
                    }
                }
            })
        };
        controller::run(this, queue, 2, shutdown).await;
        triggers.abort();
    }

    fn rs_api(&self, ns: &str) -> Api<ReplicaSet> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// The ReplicaSets this Deployment controls, adopting matching orphans.
    async fn claim_replicasets(&self, d: &Deployment, selector: &LabelSelector) -> Result<Vec<ReplicaSet>, ApiError> {
        let ns = d.metadata.namespace.as_deref().unwrap_or_default();
        let uid = d.metadata.uid.as_deref().unwrap_or_default();
        let mut owned = Vec::new();
        for rs in self.replicasets.list().into_iter().filter(|rs| rs.metadata.namespace.as_deref() == Some(ns)) {
            let labels = rs.metadata.labels.clone().unwrap_or_default();
            match controller_of(&rs.metadata) {
                Some(owner) if owner.uid == uid => owned.push((*rs).clone()),
                None if selector.matches(&labels) && d.metadata.deletion_timestamp.is_none() => {
                    let mut refs = rs.metadata.owner_references.clone().unwrap_or_default();
                    refs.push(controller::controller_reference(d));
                    let name = rs.metadata.name.as_deref().unwrap_or_default();
                    let patch = json!({"metadata": {"ownerReferences": refs}});
                    owned.push(self.rs_api(ns).patch(name, PatchKind::Merge, patch).await?);
                }
                _ => {}
            }
        }
        Ok(owned)
    }

    async fn scale(&self, d: &Deployment, rs: &ReplicaSet, to: i32) -> Result<ReplicaSet, ApiError> {
        let from = spec_replicas(rs);
        let name = rs.metadata.name.as_deref().unwrap_or_default();
        let ns = rs.metadata.namespace.as_deref().unwrap_or_default();
        let (surge, _) = surge_and_unavailable(d);
        let patch = json!({
            "metadata": {"annotations": {
                DESIRED_REPLICAS: desired(d).to_string(),
                MAX_REPLICAS: (desired(d) + surge).to_string(),
            }},
            "spec": {"replicas": to},
        });
        let scaled = self.rs_api(ns).patch(name, PatchKind::Merge, patch).await?;
        if from != to {
            let direction = if to > from { "up" } else { "down" };
            let message = format!("Scaled {direction} replica set {name} to {to} from {from}");
            self.recorder.normal(&ObjectReference::of(d), "ScalingReplicaSet", &message).await;
        }
        Ok(scaled)
    }

    async fn create_new_replicaset(
        &self,
        d: &Deployment,
        replicas: i32,
        revision: i64,
    ) -> Result<ReplicaSet, ApiError> {
        let spec = d.spec.clone().unwrap_or_default();
        let ns = d.metadata.namespace.clone().unwrap_or_default();
        let collision = d.status.as_ref().and_then(|s| s.collision_count);
        let hash = template_hash(&spec.template, collision);
        let mut template = spec.template.clone();
        let meta = template.metadata.get_or_insert_with(Default::default);
        meta.labels.get_or_insert_with(BTreeMap::new).insert(TEMPLATE_HASH.into(), hash.clone());
        let labels = meta.labels.clone();
        let mut selector: K8sSelector = spec.selector.clone();
        selector.match_labels.get_or_insert_with(BTreeMap::new).insert(TEMPLATE_HASH.into(), hash.clone());
        let (surge, _) = surge_and_unavailable(d);
        let mut annotations = BTreeMap::from([
            (REVISION.to_string(), revision.to_string()),
            (DESIRED_REPLICAS.to_string(), desired(d).to_string()),
            (MAX_REPLICAS.to_string(), (desired(d) + surge).to_string()),
        ]);
        if let Some(cause) = d.metadata.annotations.as_ref().and_then(|a| a.get(CHANGE_CAUSE)) {
            annotations.insert(CHANGE_CAUSE.into(), cause.clone());
        }
        let name = format!("{}-{hash}", d.metadata.name.as_deref().unwrap_or_default());
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                labels,
                annotations: Some(annotations),
                owner_references: Some(vec![controller::controller_reference(d)]),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                min_ready_seconds: spec.min_ready_seconds,
                selector,
                template: Some(template),
            }),
            status: None,
        };
        let created = match self.rs_api(&ns).create(&rs).await {
            Ok(created) => created,
            // Our cache had not seen the ReplicaSet a previous reconcile created: take it if
            // it is ours with this template, as Kubernetes does before counting a collision.
            Err(e) if e.is_already_exists() => {
                let existing = self.rs_api(&ns).get(&name).await?;
                let ours = controller_of(&existing.metadata).is_some_and(|o| Some(&o.uid) == d.metadata.uid.as_ref());
                let same = existing
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .is_some_and(|t| same_template(t, &spec.template));
                if ours && same {
                    return Ok(existing);
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let reference = ObjectReference::of(d);
        self.recorder
            .normal(&reference, "ScalingReplicaSet", &format!("Scaled up replica set {name} to {replicas} from 0"))
            .await;
        Ok(created)
    }

    /// Brings the new ReplicaSet's revision annotation (and change-cause) up to date: a
    /// rollback turns an old ReplicaSet into the new one under the next revision number.
    async fn stamp_revision(&self, d: &Deployment, rs: ReplicaSet, next: i64) -> Result<ReplicaSet, ApiError> {
        let cause = d.metadata.annotations.as_ref().and_then(|a| a.get(CHANGE_CAUSE)).cloned();
        let current_cause = rs.metadata.annotations.as_ref().and_then(|a| a.get(CHANGE_CAUSE)).cloned();
        if revision(&rs) >= next && cause == current_cause {
            return Ok(rs);
        }
        let mut annotations = serde_json::Map::new();
        if revision(&rs) < next {
            annotations.insert(REVISION.into(), json!(next.to_string()));
        }
        if cause != current_cause {
            annotations.insert(CHANGE_CAUSE.into(), json!(cause));
        }
        let ns = rs.metadata.namespace.as_deref().unwrap_or_default();
        let name = rs.metadata.name.as_deref().unwrap_or_default();
        self.rs_api(ns).patch(name, PatchKind::Merge, json!({"metadata": {"annotations": annotations}})).await
    }

    /// Deletes fully scaled-down old ReplicaSets beyond `revisionHistoryLimit`, oldest first.
    async fn cleanup_history(&self, d: &Deployment, old: &[ReplicaSet]) -> Result<(), ApiError> {
        let limit = d.spec.as_ref().and_then(|s| s.revision_history_limit).unwrap_or(10).max(0) as usize;
        let mut idle: Vec<&ReplicaSet> = old
            .iter()
            .filter(|rs| spec_replicas(rs) == 0 && rs.status.as_ref().is_none_or(|s| s.replicas == 0))
            .filter(|rs| rs.metadata.deletion_timestamp.is_none())
            .collect();
        if idle.len() <= limit {
            return Ok(());
        }
        idle.sort_by_key(|rs| revision(rs));
        for rs in &idle[..idle.len() - limit] {
            let ns = rs.metadata.namespace.as_deref().unwrap_or_default();
            match self
                .rs_api(ns)
                .delete(rs.metadata.name.as_deref().unwrap_or_default(), &DeleteOptions::default())
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// True while pods of the old ReplicaSets still run (Recreate waits for them).
    fn old_pods_running(&self, old: &[ReplicaSet]) -> bool {
        let uids: Vec<&str> = old.iter().filter_map(|rs| rs.metadata.uid.as_deref()).collect();
        self.pods.list().iter().any(|p| {
            is_active(p) || p.metadata.deletion_timestamp.is_some()
        } && controller_of(&p.metadata).is_some_and(|o| uids.contains(&o.uid.as_str())))
    }

    /// Sizes the ReplicaSets for a changed `spec.replicas` without rolling out (also while
    /// paused, so `kubectl scale` works on a paused Deployment): one active set takes all; several
    /// (mid-rollout) share the change in proportion. Returns the new ReplicaSet afterwards.
    async fn scale_to_spec(
        &self,
        d: &Deployment,
        new_rs: Option<ReplicaSet>,
        old: &[ReplicaSet],
    ) -> Result<Option<ReplicaSet>, ApiError> {
        let mut active: Vec<&ReplicaSet> = old.iter().chain(new_rs.iter()).filter(|rs| spec_replicas(rs) > 0).collect();
        let recreate =
            d.spec.as_ref().and_then(|s| s.strategy.as_ref()).and_then(|s| s.type_.as_deref()) == Some("Recreate");
        let mut scaled_new = None;
        if active.len() <= 1 || recreate {
            // The active set, else the newest one.
            let target = active.last().copied().or(new_rs.as_ref()).or(old.last());
            if let Some(rs) = target
                && (spec_replicas(rs) != desired(d) || desired_annotation(rs) != Some(desired(d)))
            {
                let scaled = self.scale(d, rs, desired(d)).await?;
                if new_rs.as_ref().is_some_and(|n| n.metadata.uid == rs.metadata.uid) {
                    scaled_new = Some(scaled);
                }
            }
        } else {
            // Largest first; on ties the newer one grows first.
            active.sort_by(|a, b| spec_replicas(b).cmp(&spec_replicas(a)).then_with(|| revision(b).cmp(&revision(a))));
            for (rs, size) in active.iter().zip(proportional_sizes(d, &active)) {
                if size != spec_replicas(rs) || desired_annotation(rs) != Some(desired(d)) {
                    let scaled = self.scale(d, rs, size).await?;
                    if new_rs.as_ref().is_some_and(|n| n.metadata.uid == rs.metadata.uid) {
                        scaled_new = Some(scaled);
                    }
                }
            }
        }
        Ok(scaled_new.or(new_rs))
    }

    /// One step of the rollout. Returns the new ReplicaSet as it stands afterwards.
    async fn rollout(
        &self,
        d: &Deployment,
        new_rs: Option<ReplicaSet>,
        old: &[ReplicaSet],
        next_revision: i64,
    ) -> Result<Option<ReplicaSet>, ApiError> {
        let recreate =
            d.spec.as_ref().and_then(|s| s.strategy.as_ref()).and_then(|s| s.type_.as_deref()) == Some("Recreate");
        if recreate {
            let mut scaled_down = false;
            for rs in old.iter().filter(|rs| spec_replicas(rs) > 0) {
                self.scale(d, rs, 0).await?;
                scaled_down = true;
            }
            if scaled_down || self.old_pods_running(old) {
                return Ok(new_rs);
            }
            return Ok(Some(match new_rs {
                None => self.create_new_replicaset(d, desired(d), next_revision).await?,
                Some(rs) if spec_replicas(&rs) != desired(d) => self.scale(d, &rs, desired(d)).await?,
                Some(rs) => rs,
            }));
        }
        let new_rs = match new_rs {
            Some(rs) => rs,
            None => {
                let phantom = ReplicaSet {
                    spec: Some(ReplicaSetSpec { replicas: Some(0), ..Default::default() }),
                    ..Default::default()
                };
                let all: Vec<&ReplicaSet> = old.iter().chain([&phantom]).collect();
                let replicas = new_rs_replicas(d, &all, &phantom);
                return Ok(Some(self.create_new_replicaset(d, replicas, next_revision).await?));
            }
        };
        let all: Vec<&ReplicaSet> = old.iter().chain([&new_rs]).collect();
        let target = new_rs_replicas(d, &all, &new_rs);
        if target != spec_replicas(&new_rs) {
            return Ok(Some(self.scale(d, &new_rs, target).await?));
        }
        // Availability read from a ReplicaSet whose controller has not caught up with its last
        // scale may still count pods that are going away: wait for it.
        let settled =
            |rs: &ReplicaSet| rs.status.as_ref().and_then(|s| s.observed_generation) >= rs.metadata.generation;
        if !settled(&new_rs) || !old.iter().all(settled) {
            return Ok(Some(new_rs));
        }
        let old_refs: Vec<&ReplicaSet> = old.iter().collect();
        for (rs, cut) in old.iter().zip(old_rs_scale_down(d, &old_refs, &new_rs)) {
            if cut > 0 {
                self.scale(d, rs, spec_replicas(rs) - cut).await?;
            }
        }
        Ok(Some(new_rs))
    }
}

fn set_condition(status: &mut DeploymentStatus, type_: &str, state: &str, reason: &str, message: String, now: &Time) {
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c)
            if c.status == state && c.reason.as_deref() == Some(reason) && c.message.as_deref() == Some(&message) => {}
        Some(c) => {
            if c.status != state {
                c.last_transition_time = Some(now.clone());
            }
            c.status = state.into();
            c.reason = Some(reason.into());
            c.message = Some(message);
            c.last_update_time = Some(now.clone());
        }
        None => conditions.push(DeploymentCondition {
            type_: type_.into(),
            status: state.into(),
            reason: Some(reason.into()),
            message: Some(message),
            last_transition_time: Some(now.clone()),
            last_update_time: Some(now.clone()),
        }),
    }
}

/// Pure: the Deployment's status from its ReplicaSets (`calculateStatus` and
/// `syncRolloutStatus`), carrying conditions over from `d.status`.
pub fn compute_status(
    d: &Deployment,
    all: &[&ReplicaSet],
    new_rs: Option<&ReplicaSet>,
    now: jiff::Timestamp,
) -> DeploymentStatus {
    let sum = |f: &dyn Fn(&ReplicaSet) -> i32| all.iter().map(|rs| f(rs)).sum::<i32>();
    let status_of = |rs: &ReplicaSet| rs.status.clone().unwrap_or_default();
    let previous = d.status.clone().unwrap_or_default();
    let replicas = desired(d);
    let available = sum(&|rs| status_of(rs).available_replicas.unwrap_or(0));
    let mut status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(sum(&|rs| status_of(rs).replicas)),
        updated_replicas: Some(new_rs.map_or(0, |rs| status_of(rs).replicas)),
        ready_replicas: Some(sum(&|rs| status_of(rs).ready_replicas.unwrap_or(0))),
        available_replicas: Some(available),
        unavailable_replicas: Some((replicas - available).max(0)),
        conditions: previous.conditions.clone(),
        collision_count: previous.collision_count,
        terminating_replicas: None,
    };
    let now_time = Time(now);
    let (_, max_unavailable) = surge_and_unavailable(d);
    if available >= replicas - max_unavailable {
        set_condition(
            &mut status,
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
            &now_time,
        );
    } else {
        set_condition(
            &mut status,
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
            &now_time,
        );
    }
    let paused = d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
    let rs_name = new_rs.and_then(|rs| rs.metadata.name.clone()).unwrap_or_default();
    let complete = status.updated_replicas == Some(replicas)
        && status.replicas == Some(replicas)
        && available == replicas
        && new_rs.is_some();
    let progressed = [status.replicas, status.updated_replicas, status.ready_replicas, status.available_replicas]
        != [previous.replicas, previous.updated_replicas, previous.ready_replicas, previous.available_replicas];
    let progressing = status.conditions.iter().flatten().find(|c| c.type_ == "Progressing").cloned();
    if paused {
        set_condition(
            &mut status,
            "Progressing",
            "Unknown",
            "DeploymentPaused",
            "Deployment is paused".into(),
            &now_time,
        );
    } else if complete {
        set_condition(
            &mut status,
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
            &now_time,
        );
    } else if progressing.is_none()
        || progressed
        || progressing.as_ref().and_then(|c| c.reason.as_deref()) == Some("DeploymentPaused")
    {
        let message = format!("ReplicaSet \"{rs_name}\" is progressing.");
        set_condition(&mut status, "Progressing", "True", "ReplicaSetUpdated", message, &now_time);
        // Progress moves the deadline even when the condition text is unchanged.
        if let Some(c) = status.conditions.iter_mut().flatten().find(|c| c.type_ == "Progressing") {
            c.last_update_time = Some(now_time.clone());
        }
    } else if let (Some(deadline), Some(cond)) =
        (d.spec.as_ref().and_then(|s| s.progress_deadline_seconds), progressing)
    {
        let since = cond.last_update_time.map_or(now, |t| t.0);
        if cond.status == "True" && since.as_second() + i64::from(deadline) <= now.as_second() {
            set_condition(
                &mut status,
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
                &now_time,
            );
        }
    }
    status
}

#[async_trait::async_trait]
impl Reconciler for DeploymentController {
    const NAME: &'static str = "deployment";
    type Key = ObjectKey;

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, ApiError> {
        let Some(d) = self.deployments.get(key) else { return Ok(Action::AwaitChange) };
        if d.metadata.deletion_timestamp.is_some() {
            return Ok(Action::AwaitChange);
        }
        let spec = d.spec.clone().unwrap_or_default();
        let selector = match LabelSelector::from_k8s(&spec.selector) {
            Ok(s) if !s.is_empty() => s,
            _ => return Ok(Action::AwaitChange),
        };
        let mut owned = self.claim_replicasets(&d, &selector).await?;
        owned.sort_by_key(|rs| (rs.metadata.creation_timestamp.as_ref().map(|t| t.0), revision(rs)));
        let (mut new_rs, old): (Vec<ReplicaSet>, Vec<ReplicaSet>) = owned.into_iter().partition(|rs| {
            rs.spec.as_ref().and_then(|s| s.template.as_ref()).is_some_and(|t| same_template(t, &spec.template))
        });
        let new_rs = new_rs.pop();
        let next_revision = old.iter().map(revision).max().unwrap_or(0) + 1;
        let paused = spec.paused.unwrap_or(false);

        let new_rs = match new_rs {
            Some(rs) => Some(self.stamp_revision(&d, rs, next_revision).await?),
            None => None,
        };
        let active: Vec<&ReplicaSet> = old.iter().chain(new_rs.iter()).filter(|rs| spec_replicas(rs) > 0).collect();
        let new_rs = if paused || is_scaling_event(&d, &active) {
            self.scale_to_spec(&d, new_rs, &old).await?
        } else {
            self.rollout(&d, new_rs, &old, next_revision).await?
        };

        if let Some(rs) = &new_rs {
            let rev = revision(rs).to_string();
            if d.metadata.annotations.as_ref().and_then(|a| a.get(REVISION)) != Some(&rev) {
                let api: Api<Deployment> =
                    Api::namespaced(self.client.clone(), key.namespace.as_deref().unwrap_or_default());
                api.patch(&key.name, PatchKind::Merge, json!({"metadata": {"annotations": {REVISION: rev}}})).await?;
            }
        }
        self.cleanup_history(&d, &old).await?;

        // Status from the freshest view of each ReplicaSet we know.
        let latest = |rs: &ReplicaSet| {
            self.replicasets.get(&ObjectKey::of(rs)).map(|c| (*c).clone()).unwrap_or_else(|| rs.clone())
        };
        let all: Vec<ReplicaSet> = old.iter().chain(new_rs.iter()).map(latest).collect();
        let new_ref = new_rs.as_ref().and_then(|n| all.iter().find(|rs| rs.metadata.uid == n.metadata.uid));
        let refs: Vec<&ReplicaSet> = all.iter().collect();
        let status = compute_status(&d, &refs, new_ref, jiff::Timestamp::now());
        if d.status.as_ref() != Some(&status) {
            let mut updated = (*d).clone();
            updated.status = Some(status.clone());
            let api: Api<Deployment> =
                Api::namespaced(self.client.clone(), key.namespace.as_deref().unwrap_or_default());
            api.replace_status(&key.name, &updated).await?;
        }
        // Come back when the progress deadline would pass, to report it.
        let progressing = status.conditions.iter().flatten().find(|c| c.type_ == "Progressing");
        if let (Some(deadline), Some(c)) = (spec.progress_deadline_seconds, progressing) {
            if c.reason.as_deref() == Some("ReplicaSetUpdated") || c.reason.as_deref() == Some("NewReplicaSetCreated") {
                return Ok(Action::RequeueAfter(Duration::from_secs(deadline.max(1) as u64)));
            }
        }
        Ok(Action::AwaitChange)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, ReplicaSetStatus};

    fn d(replicas: i32) -> Deployment {
        Deployment {
            metadata: ObjectMeta { generation: Some(2), ..Default::default() },
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                progress_deadline_seconds: Some(600),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn rs(name: &str, replicas: i32, available: i32) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            spec: Some(ReplicaSetSpec { replicas: Some(replicas), ..Default::default() }),
            status: Some(ReplicaSetStatus {
                replicas,
                ready_replicas: Some(available),
                available_replicas: Some(available),
                ..Default::default()
            }),
        }
    }

    fn condition<'a>(s: &'a DeploymentStatus, t: &str) -> &'a DeploymentCondition {
        s.conditions.iter().flatten().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn finished_rollout_reports_new_replicaset_available() {
        let new = rs("web-abc", 3, 3);
        let status = compute_status(&d(3), &[&new], Some(&new), jiff::Timestamp::from_second(100).unwrap());
        assert_eq!(status.updated_replicas, Some(3));
        assert_eq!(condition(&status, "Available").reason.as_deref(), Some("MinimumReplicasAvailable"));
        assert_eq!(condition(&status, "Progressing").reason.as_deref(), Some("NewReplicaSetAvailable"));
    }

    #[test]
    fn rollout_without_progress_past_the_deadline_is_exceeded() {
        let old = rs("web-old", 3, 3);
        let new = rs("web-new", 1, 0);
        let mut dep = d(3);
        let start = jiff::Timestamp::from_second(100).unwrap();
        dep.status = Some(compute_status(&dep, &[&old, &new], Some(&new), start));
        assert_eq!(condition(dep.status.as_ref().unwrap(), "Progressing").reason.as_deref(), Some("ReplicaSetUpdated"));
        let later = compute_status(&dep, &[&old, &new], Some(&new), jiff::Timestamp::from_second(701).unwrap());
        let progressing = condition(&later, "Progressing");
        assert_eq!(
            (progressing.status.as_str(), progressing.reason.as_deref()),
            ("False", Some("ProgressDeadlineExceeded"))
        );
    }
}
