//! Validation, per kind, with Kubernetes' field paths and messages (`details.causes`).
//!
//! [`precheck`] runs on the raw body before it is decoded as its `k8s-openapi` type, for the
//! fields that type requires (so a missing container name is a 422 like in Kubernetes, not a
//! decoding 400). [`validate`] runs on the decoded and defaulted object; [`validate_update`]
//! adds the rules that compare with the stored object.

mod configmap;
mod event;
mod metadata;
mod names;
mod namespace;
mod node;
mod pod;
mod secret;
mod service;
mod volumes;
mod workloads;

use serde_json::Value;
use skiff_api::{Cause, ResourceKind};

pub fn precheck(res: &ResourceKind, raw: &Value) -> Vec<Cause> {
    match (res.group, res.kind) {
        ("", "Pod") => pod::precheck_spec(&raw["spec"], "spec"),
        ("apps", "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet") | ("batch", "Job") => {
            workloads::precheck_template(&raw["spec"]["template"], "spec.template")
        }
        ("batch", "CronJob") => workloads::precheck_template(
            &raw["spec"]["jobTemplate"]["spec"]["template"],
            "spec.jobTemplate.spec.template",
        ),
        _ => Vec::new(),
    }
}

pub fn validate(res: &ResourceKind, object: &Value) -> Vec<Cause> {
    let mut causes = metadata::validate(res, object);
    causes.extend(match (res.group, res.kind) {
        ("", "Pod") => pod::validate(object),
        ("", "Namespace") => namespace::validate(object),
        ("", "Node") => node::validate(object),
        ("", "ConfigMap") => configmap::validate(object),
        ("", "Secret") => secret::validate(object),
        ("", "Service") => service::validate(object),
        ("", "Event") => event::validate(object),
        ("", "PersistentVolumeClaim") => volumes::validate_claim(object),
        ("", "PersistentVolume") => volumes::validate_volume(object),
        ("apps", "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet") => workloads::validate_apps(res, object),
        ("batch", "Job") => workloads::validate_job(object),
        ("batch", "CronJob") => workloads::validate_cron_job(object),
        _ => Vec::new(),
    });
    causes
}

pub fn validate_update(res: &ResourceKind, object: &Value, old: &Value) -> Vec<Cause> {
    let mut causes = metadata::validate_update(object, old);
    causes.extend(match (res.group, res.kind) {
        ("", "Pod") => pod::validate_update(object, old),
        ("", "ConfigMap") => configmap::validate_immutable(object, old, &["data", "binaryData"]),
        ("", "PersistentVolumeClaim") => volumes::validate_claim_update(object, old),
        ("", "Secret") => {
            let mut causes = configmap::validate_immutable(object, old, &["data"]);
            if object["type"] != old["type"] {
                causes.push(Cause::invalid(
                    "type",
                    quoted(object["type"].as_str().unwrap_or_default()),
                    "field is immutable",
                ));
            }
            causes
        }
        ("apps", "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet") => {
            workloads::validate_apps_update(object, old)
        }
        ("batch", "Job") => workloads::validate_job_update(object, old),
        _ => Vec::new(),
    });
    causes
}

/// A quoted string as Kubernetes prints invalid values.
pub(crate) fn quoted(s: &str) -> String {
    format!("{s:?}")
}

pub(crate) fn cause(reason: &str, field: impl Into<String>, message: impl Into<String>) -> Cause {
    Cause { reason: reason.into(), field: field.into(), message: message.into() }
}

pub(crate) fn duplicate(field: impl Into<String>, value: &str) -> Cause {
    cause("FieldValueDuplicate", field, format!("Duplicate value: {}", quoted(value)))
}

pub(crate) fn not_found(field: impl Into<String>, value: &str) -> Cause {
    cause("FieldValueNotFound", field, format!("Not found: {}", quoted(value)))
}

/// Each message of a name validator as one Invalid cause.
pub(crate) fn name_causes(field: &str, value: &str, errs: Vec<String>) -> Vec<Cause> {
    errs.into_iter().map(|e| Cause::invalid(field, quoted(value), e)).collect()
}
