//! Pure rollout arithmetic of the Deployment controller (Kubernetes' `deployment/util` and
//! `rolling.go`): surge and unavailability bounds, how far to scale the new ReplicaSet up and
//! the old ones down.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

pub fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

pub fn available(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0)
}

pub fn desired(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

/// An int-or-percent against `total`, rounding up or down as Kubernetes does.
pub fn scaled_value(value: Option<&IntOrString>, total: i32, round_up: bool, default_percent: i32) -> i32 {
    match value {
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => {
            let percent = s.trim_end_matches('%').parse::<i64>().unwrap_or(i64::from(default_percent));
            let product = percent * i64::from(total);
            (if round_up { (product + 99) / 100 } else { product / 100 }) as i32
        }
        None => {
            let product = i64::from(default_percent) * i64::from(total);
            (if round_up { (product + 99) / 100 } else { product / 100 }) as i32
        }
    }
}

/// (maxSurge, maxUnavailable) of a RollingUpdate deployment; both zero becomes unavailable 1.
pub fn surge_and_unavailable(d: &Deployment) -> (i32, i32) {
    let replicas = desired(d);
    let rolling = d.spec.as_ref().and_then(|s| s.strategy.as_ref()).and_then(|s| s.rolling_update.as_ref());
    let surge = scaled_value(rolling.and_then(|r| r.max_surge.as_ref()), replicas, true, 25);
    let unavailable = scaled_value(rolling.and_then(|r| r.max_unavailable.as_ref()), replicas, false, 25);
    if surge == 0 && unavailable == 0 { (0, 1) } else { (surge, unavailable.min(replicas)) }
}

/// The replicas the new ReplicaSet should have now (`NewRSNewReplicas`).
pub fn new_rs_replicas(d: &Deployment, all: &[&ReplicaSet], new_rs: &ReplicaSet) -> i32 {
    let replicas = desired(d);
    let current_new = spec_replicas(new_rs);
    let (surge, _) = surge_and_unavailable(d);
    let total: i32 = all.iter().map(|rs| spec_replicas(rs)).sum();
    let max_total = replicas + surge;
    if total >= max_total {
        return current_new.min(replicas);
    }
    let scale_up = (max_total - total).min(replicas - current_new);
    current_new + scale_up.max(0)
}

/// How many replicas to take off each old ReplicaSet (oldest first), given the new one
/// (`reconcileOldReplicaSets`: first the unhealthy ones, then by availability).
pub fn old_rs_scale_down(d: &Deployment, old: &[&ReplicaSet], new_rs: &ReplicaSet) -> Vec<i32> {
    let replicas = desired(d);
    let (_, max_unavailable) = surge_and_unavailable(d);
    let min_available = replicas - max_unavailable;
    let mut cuts = vec![0; old.len()];
    if old.iter().all(|rs| spec_replicas(rs) == 0) {
        return cuts;
    }
    let all_pods: i32 = old.iter().map(|rs| spec_replicas(rs)).sum::<i32>() + spec_replicas(new_rs);
    let new_unavailable = (spec_replicas(new_rs) - available(new_rs)).max(0);
    let mut budget = all_pods - min_available - new_unavailable;
    if budget <= 0 {
        return cuts;
    }
    // Pods that are not available cost no availability to remove.
    for (i, rs) in old.iter().enumerate() {
        if budget <= 0 {
            break;
        }
        let unhealthy = (spec_replicas(rs) - available(rs)).max(0);
        let cut = unhealthy.min(budget);
        cuts[i] += cut;
        budget -= cut;
    }
    let available_pods: i32 = old.iter().map(|rs| available(rs)).sum::<i32>() + available(new_rs);
    let mut by_availability = available_pods - min_available;
    for (i, rs) in old.iter().enumerate() {
        if by_availability <= 0 {
            break;
        }
        let left = spec_replicas(rs) - cuts[i];
        let cut = left.min(by_availability);
        cuts[i] += cut;
        by_availability -= cut;
    }
    cuts
}

/// The `deployment.kubernetes.io/desired-replicas` a ReplicaSet was last scaled for.
pub fn desired_annotation(rs: &ReplicaSet) -> Option<i32> {
    rs.metadata.annotations.as_ref()?.get(super::history::DESIRED_REPLICAS)?.parse().ok()
}

fn max_annotation(rs: &ReplicaSet) -> Option<i32> {
    rs.metadata.annotations.as_ref()?.get(super::history::MAX_REPLICAS)?.parse().ok()
}

/// Whether `spec.replicas` changed since the active ReplicaSets were last sized for it
/// (Kubernetes' `isScalingEvent`).
pub fn is_scaling_event(d: &Deployment, active: &[&ReplicaSet]) -> bool {
    active.iter().any(|rs| desired_annotation(rs).is_some_and(|want| want != desired(d)))
}

/// New sizes for the active ReplicaSets of a rolling Deployment whose replicas changed in the
/// middle of a rollout: the change is spread in proportion to each set's share, the rest goes
/// to the largest (Kubernetes' proportional scaling). `active` lists the largest first.
pub fn proportional_sizes(d: &Deployment, active: &[&ReplicaSet]) -> Vec<i32> {
    let replicas = desired(d);
    let (surge, _) = surge_and_unavailable(d);
    let allowed = if replicas > 0 { replicas + surge } else { 0 };
    let current: i32 = active.iter().map(|rs| spec_replicas(rs)).sum();
    let mut sizes: Vec<i32> = active.iter().map(|rs| spec_replicas(rs)).collect();
    let to_add = allowed - current;
    if to_add == 0 || active.is_empty() {
        return sizes;
    }
    let mut added = 0;
    for (i, rs) in active.iter().enumerate() {
        if added == to_add {
            break;
        }
        let fraction = if replicas == 0 {
            -sizes[i]
        } else {
            let annotated = max_annotation(rs).unwrap_or(current).max(1);
            (f64::from(sizes[i]) * f64::from(allowed) / f64::from(annotated)).round() as i32 - sizes[i]
        };
        let left = to_add - added;
        let step = if to_add > 0 { fraction.min(left) } else { fraction.max(left) };
        sizes[i] += step;
        added += step;
    }
    sizes[0] += to_add - added;
    sizes.into_iter().map(|s| s.max(0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{
        DeploymentSpec, DeploymentStrategy, ReplicaSetSpec, ReplicaSetStatus, RollingUpdateDeployment,
    };

    fn deployment(replicas: i32, surge: IntOrString, unavailable: IntOrString) -> Deployment {
        Deployment {
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                strategy: Some(DeploymentStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDeployment {
                        max_surge: Some(surge),
                        max_unavailable: Some(unavailable),
                    }),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn rs(replicas: i32, available: i32) -> ReplicaSet {
        ReplicaSet {
            spec: Some(ReplicaSetSpec { replicas: Some(replicas), ..Default::default() }),
            status: Some(ReplicaSetStatus { replicas, available_replicas: Some(available), ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn percentages_round_surge_up_and_unavailable_down() {
        let d = deployment(3, IntOrString::String("25%".into()), IntOrString::String("25%".into()));
        assert_eq!(surge_and_unavailable(&d), (1, 0));
        let d = deployment(10, IntOrString::String("25%".into()), IntOrString::String("25%".into()));
        assert_eq!(surge_and_unavailable(&d), (3, 2));
    }

    #[test]
    fn zero_surge_and_zero_unavailable_allows_one_unavailable() {
        let d = deployment(3, IntOrString::Int(0), IntOrString::Int(0));
        assert_eq!(surge_and_unavailable(&d), (0, 1));
    }

    #[test]
    fn with_max_unavailable_zero_the_new_rs_grows_by_the_surge_only() {
        let d = deployment(3, IntOrString::Int(1), IntOrString::Int(0));
        let old = rs(3, 3);
        let new = rs(0, 0);
        assert_eq!(new_rs_replicas(&d, &[&old, &new], &new), 1);
        // Nothing may go from the old set until the new pod is available.
        assert_eq!(old_rs_scale_down(&d, &[&old], &rs(1, 0)), vec![0]);
        assert_eq!(old_rs_scale_down(&d, &[&old], &rs(1, 1)), vec![1]);
    }

    #[test]
    fn unhealthy_old_pods_are_removed_first() {
        let d = deployment(3, IntOrString::Int(1), IntOrString::Int(0));
        // Old set has 3 wanted but only 1 available: 2 can go without losing availability…
        // …but only as far as the budget allows: 4 pods - 3 min available - 1 unavailable new = 0.
        assert_eq!(old_rs_scale_down(&d, &[&rs(3, 1)], &rs(1, 0)), vec![0]);
        assert_eq!(old_rs_scale_down(&d, &[&rs(3, 1)], &rs(1, 1)), vec![1]);
    }

    fn annotated(mut rs: ReplicaSet, desired: i32, max: i32) -> ReplicaSet {
        rs.metadata.annotations = Some(
            [
                ("deployment.kubernetes.io/desired-replicas".to_string(), desired.to_string()),
                ("deployment.kubernetes.io/max-replicas".to_string(), max.to_string()),
            ]
            .into(),
        );
        rs
    }

    #[test]
    fn scaling_mid_rollout_spreads_the_change_in_proportion() {
        // 10 replicas with surge 3 (25%): old 8 + new 5 = 13 = max. Scale to 20 (surge 5): 25.
        let old = annotated(rs(8, 8), 10, 13);
        let new = annotated(rs(5, 0), 10, 13);
        let d = deployment(20, IntOrString::String("25%".into()), IntOrString::String("25%".into()));
        assert!(is_scaling_event(&d, &[&old, &new]));
        let sizes = proportional_sizes(&d, &[&old, &new]);
        assert_eq!(sizes.iter().sum::<i32>(), 25);
        assert_eq!(sizes, vec![15, 10]);
        // Back down to 10: both shrink in proportion.
        let old = annotated(rs(15, 15), 20, 25);
        let new = annotated(rs(10, 0), 20, 25);
        let d = deployment(10, IntOrString::String("25%".into()), IntOrString::String("25%".into()));
        assert_eq!(proportional_sizes(&d, &[&old, &new]), vec![8, 5]);
    }
}
