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
