//! Kubernetes' defaults, per kind (`SetDefaults_*` and the admission plugins that fill fields
//! on create). Each function is idempotent: it runs on every create and update.

mod namespace;
mod pod;
pub mod quantity;
mod secret;
mod service;
mod workloads;

use serde_json::{Value, json};
use skiff_api::ResourceKind;

pub fn apply(res: &ResourceKind, object: &mut Value) {
    if !matches!(res.kind, "ConfigMap" | "Secret" | "Event") {
        quantity::canonicalize(object);
    }
    match (res.group, res.kind) {
        ("", "Pod") => pod::defaults(object),
        ("", "Namespace") => namespace::defaults(object),
        ("", "Service") => service::defaults(object),
        ("", "Secret") => secret::defaults(object),
        ("", "PersistentVolumeClaim") => workloads::persistent_volume_claim(object),
        ("", "PersistentVolume") => workloads::persistent_volume(object),
        ("apps", "Deployment") => workloads::deployment(object),
        ("apps", "ReplicaSet") => workloads::replica_set(object),
        ("apps", "DaemonSet") => workloads::daemon_set(object),
        ("apps", "StatefulSet") => workloads::stateful_set(object),
        ("batch", "Job") => workloads::job(object),
        ("batch", "CronJob") => workloads::cron_job(object),
        _ => {}
    }
    // Indexing a JSON map to look at a field inserts it as null when it is missing; null means
    // absent in Kubernetes, and clients must not see `env: null` that nobody wrote.
    remove_nulls(object);
}

/// Drops every null map entry, recursively (null means absent in Kubernetes' JSON).
pub(crate) fn remove_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(remove_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(remove_nulls),
        _ => {}
    }
}

/// Sets `object[field]` when it is absent or null. `object` becomes a map if it is not one.
pub(crate) fn default(object: &mut Value, field: &str, value: Value) {
    if !object.is_object() {
        *object = json!({});
    }
    let slot = &mut object[field];
    if slot.is_null() {
        *slot = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaulting_leaves_no_null_fields_behind() {
        let pods = ResourceKind::by_plural("", "v1", "pods").unwrap();
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "busybox"}]}});
        apply(pods, &mut pod);
        let text = pod.to_string();
        assert!(!text.contains("null"), "{text}");
        assert_eq!(pod["spec"]["restartPolicy"], "Always");
    }
}
