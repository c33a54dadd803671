//! The kubelet's events: the shared recorder (which folds repeats into `count`) with the
//! kubelet's source, and references to a pod or to one of its containers.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use skiff_api::{ApiClient, EventSource, ObjectReference, Recorder};

/// A recorder reporting as `kubelet` on `node`.
pub fn recorder(client: Arc<dyn ApiClient>, node: &str) -> Recorder {
    Recorder::new(
        client,
        EventSource {
            component: "kubelet".to_string(),
            host: Some(node.to_string()),
            reporting_instance: node.to_string(),
        },
    )
}

pub fn pod_ref(pod: &Pod) -> ObjectReference {
    ObjectReference::of(pod)
}

/// A container's events point at `spec.containers{NAME}` (`spec.initContainers{NAME}` for an
/// init container), as `kubectl describe` expects.
pub fn container_ref(pod: &Pod, container: &str) -> ObjectReference {
    let init = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .is_some_and(|inits| inits.iter().any(|c| c.name == container));
    let list = if init { "initContainers" } else { "containers" };
    ObjectReference::of(pod).with_field_path(format!("spec.{list}{{{container}}}"))
}

/// A duration as Go prints `time.Duration`, truncated to milliseconds (`523ms`, `1.2s`, `1m2.5s`),
/// for the `Pulled` message.
pub fn go_duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = |ms: u128| {
        let s = format!("{}.{:03}", ms / 1000, ms % 1000);
        s.trim_end_matches('0').trim_end_matches('.').to_string() + "s"
    };
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    match (h, m) {
        (0, 0) => secs(rest),
        (0, m) => format!("{m}m{}", secs(rest)),
        (h, m) => format!("{h}h{m}m{}", secs(rest)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_print_like_go() {
        let cases = [
            (Duration::from_micros(523_400), "523ms"),
            (Duration::from_millis(1200), "1.2s"),
            (Duration::from_millis(2000), "2s"),
            (Duration::from_millis(62_500), "1m2.5s"),
            (Duration::from_millis(3_600_000), "1h0m0s"),
            (Duration::from_micros(10), "0s"),
        ];
        for (d, want) in cases {
            assert_eq!(go_duration(d), want, "{d:?}");
        }
    }

    #[test]
    fn container_events_carry_the_field_path() {
        let pod: Pod =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "p", "namespace": "default", "uid": "u"}}))
                .unwrap();
        let r = container_ref(&pod, "app");
        assert_eq!(r.field_path.as_deref(), Some("spec.containers{app}"));
        assert_eq!((r.kind.as_str(), r.uid.as_str()), ("Pod", "u"));
        let with_init: Pod = serde_json::from_value(serde_json::json!({"metadata": {"name": "p"},
            "spec": {"initContainers": [{"name": "setup"}], "containers": [{"name": "app"}]}}))
        .unwrap();
        assert_eq!(container_ref(&with_init, "setup").field_path.as_deref(), Some("spec.initContainers{setup}"));
    }
}
