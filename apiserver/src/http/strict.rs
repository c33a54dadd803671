//! `fieldValidation`: finding the fields of a request body that Kubernetes does not know.
//!
//! k8s-openapi silently drops unknown fields when it decodes, so an object is decoded into its
//! typed form and encoded again; every non-null field of the raw JSON that did not survive the
//! round trip is unknown. Paths are spelled as Kubernetes spells them: `spec.containers[0].foo`.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use skiff_api::k8s::api::{apps, batch, coordination, core, discovery, storage};
use skiff_api::{ApiError, ResourceKind};

/// The `fieldValidation` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn parse(value: Option<&str>) -> Result<Self, ApiError> {
        match value {
            // Kubernetes' default when the client does not say.
            None | Some("") | Some("Warn") => Ok(Self::Warn),
            Some("Ignore") => Ok(Self::Ignore),
            Some("Strict") => Ok(Self::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation: Unsupported value: \"{other}\": supported values: \"Ignore\", \"Strict\", \"Warn\""
            ))),
        }
    }
}

fn round_trip<K: DeserializeOwned + Serialize>(raw: &Value) -> Option<Value> {
    let typed: K = serde_json::from_value(raw.clone()).ok()?;
    serde_json::to_value(typed).ok()
}

/// `raw` as its k8s-openapi type would keep it, or `None` when it does not decode (the registry
/// reports malformed objects itself).
fn typed_form(res: &ResourceKind, raw: &Value) -> Option<Value> {
    match (res.group, res.kind) {
        ("", "Namespace") => round_trip::<core::v1::Namespace>(raw),
        ("", "Pod") => round_trip::<core::v1::Pod>(raw),
        ("", "Node") => round_trip::<core::v1::Node>(raw),
        ("", "Service") => round_trip::<core::v1::Service>(raw),
        ("", "Endpoints") => round_trip::<core::v1::Endpoints>(raw),
        ("", "ConfigMap") => round_trip::<core::v1::ConfigMap>(raw),
        ("", "Secret") => round_trip::<core::v1::Secret>(raw),
        ("", "ServiceAccount") => round_trip::<core::v1::ServiceAccount>(raw),
        ("", "Event") => round_trip::<core::v1::Event>(raw),
        ("", "PersistentVolumeClaim") => round_trip::<core::v1::PersistentVolumeClaim>(raw),
        ("", "PersistentVolume") => round_trip::<core::v1::PersistentVolume>(raw),
        ("apps", "Deployment") => round_trip::<apps::v1::Deployment>(raw),
        ("apps", "ReplicaSet") => round_trip::<apps::v1::ReplicaSet>(raw),
        ("apps", "DaemonSet") => round_trip::<apps::v1::DaemonSet>(raw),
        ("apps", "StatefulSet") => round_trip::<apps::v1::StatefulSet>(raw),
        ("batch", "Job") => round_trip::<batch::v1::Job>(raw),
        ("batch", "CronJob") => round_trip::<batch::v1::CronJob>(raw),
        ("discovery.k8s.io", "EndpointSlice") => round_trip::<discovery::v1::EndpointSlice>(raw),
        ("coordination.k8s.io", "Lease") => round_trip::<coordination::v1::Lease>(raw),
        ("storage.k8s.io", "StorageClass") => round_trip::<storage::v1::StorageClass>(raw),
        _ => None,
    }
}

fn walk(raw: &Value, kept: &Value, path: &str, out: &mut Vec<String>) {
    match (raw, kept) {
        (Value::Object(raw), Value::Object(kept)) => {
            for (key, value) in raw {
                let here = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                match kept.get(key) {
                    Some(k) => walk(value, k, &here, out),
                    None if !value.is_null() => out.push(here),
                    None => {}
                }
            }
        }
        (Value::Array(raw), Value::Array(kept)) => {
            for (i, (r, k)) in raw.iter().zip(kept).enumerate() {
                walk(r, k, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// The unknown fields of `raw`, an object of kind `res`. Empty when the object does not decode.
pub(crate) fn unknown_fields(res: &ResourceKind, raw: &Value) -> Vec<String> {
    let Some(kept) = typed_form(res, raw) else { return Vec::new() };
    let mut out = Vec::new();
    walk(raw, &kept, "", &mut out);
    out
}

/// Applies the validation level: an error under Strict, warnings under Warn.
pub(crate) fn check(res: &ResourceKind, raw: &Value, level: FieldValidation) -> Result<Vec<String>, ApiError> {
    if level == FieldValidation::Ignore {
        return Ok(Vec::new());
    }
    let unknown = unknown_fields(res, raw);
    let messages: Vec<String> = unknown.iter().map(|f| format!("unknown field \"{f}\"")).collect();
    if level == FieldValidation::Strict && !messages.is_empty() {
        return Err(ApiError::bad_request(format!("strict decoding error: {}", messages.join(", "))));
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployments() -> &'static ResourceKind {
        ResourceKind::by_plural("apps", "v1", "deployments").unwrap()
    }

    fn deployment(extra_spec: Value) -> Value {
        let mut d = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "creationTimestamp": null, "labels": {"any.key/x": "y"}},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "app", "image": "nginx", "resources": {}}]}}}});
        for (k, v) in extra_spec.as_object().unwrap() {
            d["spec"][k] = v.clone();
        }
        d
    }

    #[test]
    fn a_known_object_has_no_unknown_fields() {
        assert!(unknown_fields(deployments(), &deployment(json!({"replicas": 2, "strategy": {}}))).is_empty());
    }

    #[test]
    fn unknown_fields_are_named_by_their_path() {
        let mut d = deployment(json!({"foo": 1}));
        d["spec"]["template"]["spec"]["containers"][0]["imagePullPolice"] = json!("Always");
        assert_eq!(
            unknown_fields(deployments(), &d),
            vec!["spec.foo".to_string(), "spec.template.spec.containers[0].imagePullPolice".to_string()]
        );
    }

    #[test]
    fn strict_rejects_unknown_fields_as_kubernetes_words_it() {
        let err = check(deployments(), &deployment(json!({"foo": 1})), FieldValidation::Strict).unwrap_err();
        assert_eq!(err.code, 400);
        assert_eq!(err.message, "strict decoding error: unknown field \"spec.foo\"");
        let warnings = check(deployments(), &deployment(json!({"foo": 1})), FieldValidation::Warn).unwrap();
        assert_eq!(warnings, vec!["unknown field \"spec.foo\"".to_string()]);
        assert!(check(deployments(), &deployment(json!({"foo": 1})), FieldValidation::Ignore).unwrap().is_empty());
    }
}
