//! What controllers ask of pods: active, ready, available, owned by whom, and which to delete
//! first (Kubernetes' `controller_utils.go`).

use std::cmp::Ordering;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

/// The controlling owner reference (`controller: true`) of an object, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references.iter().flatten().find(|r| r.controller == Some(true))
}

/// A pod that counts towards a controller's replicas: not finished and not being deleted.
pub fn is_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded") | Some("Failed")) && pod.metadata.deletion_timestamp.is_none()
}

fn ready_since(pod: &Pod) -> Option<jiff::Timestamp> {
    let conditions = pod.status.as_ref()?.conditions.as_ref()?;
    let ready = conditions.iter().find(|c| c.type_ == "Ready" && c.status == "True")?;
    Some(ready.last_transition_time.as_ref().map(|t| t.0).unwrap_or(jiff::Timestamp::UNIX_EPOCH))
}

pub fn is_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// Ready for at least `min_ready_seconds` at `now`.
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: jiff::Timestamp) -> bool {
    match ready_since(pod) {
        Some(since) => min_ready_seconds <= 0 || since.as_second() + i64::from(min_ready_seconds) <= now.as_second(),
        None => false,
    }
}

fn phase_rank(pod: &Pod) -> u8 {
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") => 0,
        Some("Running") => 2,
        _ => 1,
    }
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, |cs| cs.iter().map(|c| c.restart_count).max().unwrap_or(0))
}

/// Orders pods so the ones to delete first come first: unscheduled before scheduled, pending
/// before running, not ready before ready, ready for less time first, more restarts first,
/// newer first (Kubernetes' `ActivePods` ordering).
pub fn deletion_order(a: &Pod, b: &Pod) -> Ordering {
    let scheduled = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some_and(|n| !n.is_empty());
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    scheduled(a)
        .cmp(&scheduled(b))
        .then(phase_rank(a).cmp(&phase_rank(b)))
        .then(is_ready(a).cmp(&is_ready(b)))
        .then_with(|| ready_since(b).cmp(&ready_since(a)))
        .then(restarts(b).cmp(&restarts(a)))
        .then_with(|| created(b).cmp(&created(a)))
}

#[cfg(test)]
pub(crate) mod fixtures {
    use k8s_openapi::api::core::v1::{Pod, PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    /// A pod in `phase`, scheduled or not, Ready since `ready_at` (seconds since the epoch).
    pub fn pod(name: &str, phase: &str, scheduled: bool, ready_at: Option<i64>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                creation_timestamp: Some(Time(jiff::Timestamp::from_second(1_000).unwrap())),
                ..Default::default()
            },
            spec: Some(PodSpec { node_name: scheduled.then(|| "node".to_string()), ..Default::default() }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: ready_at.map(|at| {
                    vec![PodCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        last_transition_time: Some(Time(jiff::Timestamp::from_second(at).unwrap())),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::pod;
    use super::*;

    #[test]
    fn least_valuable_pods_sort_first_for_deletion() {
        let mut pods = vec![
            pod("ready-long", "Running", true, Some(100)),
            pod("unscheduled", "Pending", false, None),
            pod("ready-short", "Running", true, Some(500)),
            pod("running-not-ready", "Running", true, None),
            pod("pending", "Pending", true, None),
        ];
        pods.sort_by(deletion_order);
        let names: Vec<_> = pods.iter().map(|p| p.metadata.name.clone().unwrap()).collect();
        assert_eq!(names, ["unscheduled", "pending", "running-not-ready", "ready-short", "ready-long"]);
    }

    #[test]
    fn available_needs_min_ready_seconds_of_readiness() {
        let p = pod("a", "Running", true, Some(100));
        let now = jiff::Timestamp::from_second(105).unwrap();
        assert!(is_available(&p, 0, now));
        assert!(is_available(&p, 5, now));
        assert!(!is_available(&p, 6, now));
        assert!(!is_available(&pod("b", "Running", true, None), 0, now));
    }

    #[test]
    fn finished_and_terminating_pods_are_not_active() {
        assert!(is_active(&pod("a", "Running", true, None)));
        assert!(!is_active(&pod("b", "Succeeded", true, None)));
        let mut c = pod("c", "Running", true, None);
        c.metadata.deletion_timestamp = c.metadata.creation_timestamp.clone();
        assert!(!is_active(&c));
    }
}
