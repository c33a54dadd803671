//! Small helpers over untyped objects: metadata access, system fields, the typed round trip.

use rand::Rng;
use serde_json::{Map, Value, json};
use skiff_api::k8s::api::{apps, batch, coordination, core, discovery, storage};
use skiff_api::{ApiError, ResourceKind};

/// Now, as Kubernetes writes `metav1.Time` (RFC 3339, whole seconds, UTC).
pub fn now() -> String {
    timestamp(jiff::Timestamp::now())
}

pub fn timestamp(ts: jiff::Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A random (version 4) UUID, as Kubernetes gives every object.
pub fn uuid_v4() -> String {
    let mut b: [u8; 16] = rand::rng().random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// The five-character suffix of `generateName`, from apiserver's alphabet (no vowels, no
/// look-alikes, so no words and no confusion).
pub fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

/// `metadata` as a mutable map, created if absent.
pub fn meta_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object.is_object() {
        *object = json!({});
    }
    let m = object.as_object_mut().expect("object was just made an object");
    let meta = m.entry("metadata").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    meta.as_object_mut().expect("metadata was just made an object")
}

pub fn str_field<'a>(object: &'a Value, pointer: &str) -> Option<&'a str> {
    object.pointer(pointer).and_then(Value::as_str).filter(|s| !s.is_empty())
}

pub fn name(object: &Value) -> Option<&str> {
    str_field(object, "/metadata/name")
}

pub fn namespace(object: &Value) -> Option<&str> {
    str_field(object, "/metadata/namespace")
}

pub fn resource_version(object: &Value) -> Option<&str> {
    str_field(object, "/metadata/resourceVersion")
}

pub fn uid(object: &Value) -> Option<&str> {
    str_field(object, "/metadata/uid")
}

pub fn is_deleting(object: &Value) -> bool {
    str_field(object, "/metadata/deletionTimestamp").is_some()
}

pub fn finalizers(object: &Value) -> Vec<String> {
    object["metadata"]["finalizers"]
        .as_array()
        .map(|f| f.iter().filter_map(|v| v.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

/// Sets or removes (for `Value::Null`) a top-level field.
pub fn set_or_remove(object: &mut Value, field: &str, value: Value) {
    if let Some(m) = object.as_object_mut() {
        if value.is_null() {
            m.remove(field);
        } else {
            m.insert(field.to_string(), value);
        }
    }
}

/// Whether the kind keeps `status` apart from the main resource (a `status` subresource).
pub fn has_status_subresource(res: &ResourceKind) -> bool {
    res.subresource("status").is_some()
}

/// Whether `metadata.generation` tracks spec changes for this kind.
pub fn tracks_generation(res: &ResourceKind) -> bool {
    has_status_subresource(res)
        && !matches!(res.kind, "Namespace" | "Node" | "PersistentVolume" | "PersistentVolumeClaim")
}

/// Checks `apiVersion`/`kind` against the URL's resource and fills them in when absent.
pub fn check_type(res: &ResourceKind, object: &mut Value) -> Result<(), ApiError> {
    if !object.is_object() {
        return Err(ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: the body is not a JSON object",
            res.kind, res.version, res.kind
        )));
    }
    let api_version = res.api_version();
    let given_kind = object["kind"].as_str().filter(|s| !s.is_empty()).map(String::from);
    let given_version = object["apiVersion"].as_str().filter(|s| !s.is_empty()).map(String::from);
    if let Some(kind) = given_kind
        && kind != res.kind
    {
        return Err(ApiError::bad_request(format!(
            "{kind} in version \"{}\" cannot be handled as a {}: the object kind does not match the resource",
            given_version.as_deref().unwrap_or(res.version),
            res.kind
        )));
    }
    if let Some(v) = given_version
        && v != api_version
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({v}) does not match the expected API version ({api_version})"
        )));
    }
    object["kind"] = json!(res.kind);
    object["apiVersion"] = json!(api_version);
    Ok(())
}

/// Decodes the object as its `k8s-openapi` type and encodes it again, so what is stored has
/// the exact shape of the Kubernetes type. A body that does not decode is a 400.
pub fn normalize(res: &ResourceKind, object: Value) -> Result<Value, ApiError> {
    macro_rules! round_trip {
        ($t:ty) => {{
            let typed: $t = serde_json::from_value(object).map_err(|e| {
                ApiError::bad_request(format!(
                    "{} in version \"{}\" cannot be handled as a {}: {e}",
                    res.kind, res.version, res.kind
                ))
            })?;
            serde_json::to_value(&typed).map_err(|e| ApiError::internal(format!("encoding {}: {e}", res.kind)))
        }};
    }
    match (res.group, res.kind) {
        ("", "Namespace") => round_trip!(core::v1::Namespace),
        ("", "Pod") => round_trip!(core::v1::Pod),
        ("", "Node") => round_trip!(core::v1::Node),
        ("", "Service") => round_trip!(core::v1::Service),
        ("", "Endpoints") => round_trip!(core::v1::Endpoints),
        ("", "ConfigMap") => round_trip!(core::v1::ConfigMap),
        ("", "Secret") => round_trip!(core::v1::Secret),
        ("", "ServiceAccount") => round_trip!(core::v1::ServiceAccount),
        ("", "Event") => round_trip!(core::v1::Event),
        ("", "PersistentVolumeClaim") => round_trip!(core::v1::PersistentVolumeClaim),
        ("", "PersistentVolume") => round_trip!(core::v1::PersistentVolume),
        ("apps", "Deployment") => round_trip!(apps::v1::Deployment),
        ("apps", "ReplicaSet") => round_trip!(apps::v1::ReplicaSet),
        ("apps", "DaemonSet") => round_trip!(apps::v1::DaemonSet),
        ("apps", "StatefulSet") => round_trip!(apps::v1::StatefulSet),
        ("batch", "Job") => round_trip!(batch::v1::Job),
        ("batch", "CronJob") => round_trip!(batch::v1::CronJob),
        ("discovery.k8s.io", "EndpointSlice") => round_trip!(discovery::v1::EndpointSlice),
        ("coordination.k8s.io", "Lease") => round_trip!(coordination::v1::Lease),
        ("storage.k8s.io", "StorageClass") => round_trip!(storage::v1::StorageClass),
        _ => Ok(object),
    }
}

/// `a=b,c in (d,e)`: a `metav1.LabelSelector` in its string form, as a Scale's status shows it.
pub fn selector_string(selector: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(labels) = selector["matchLabels"].as_object() {
        for (k, v) in labels {
            parts.push(format!("{k}={}", v.as_str().unwrap_or_default()));
        }
    }
    for expr in selector["matchExpressions"].as_array().into_iter().flatten() {
        let key = expr["key"].as_str().unwrap_or_default();
        let values = expr["values"]
            .as_array()
            .map(|v| v.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","))
            .unwrap_or_default();
        match expr["operator"].as_str().unwrap_or_default() {
            "In" => parts.push(format!("{key} in ({values})")),
            "NotIn" => parts.push(format!("{key} notin ({values})")),
            "Exists" => parts.push(key.to_string()),
            "DoesNotExist" => parts.push(format!("!{key}")),
            _ => {}
        }
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_have_the_version_4_shape() {
        let u = uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(u, uuid_v4());
    }

    #[test]
    fn timestamps_are_whole_second_rfc3339() {
        let ts: jiff::Timestamp = "2024-05-06T07:08:09.123Z".parse().unwrap();
        assert_eq!(timestamp(ts), "2024-05-06T07:08:09Z");
    }

    #[test]
    fn a_body_of_the_wrong_shape_is_a_400_naming_the_kind() {
        let pods = ResourceKind::by_plural("", "v1", "pods").unwrap();
        let err = normalize(pods, json!({"apiVersion": "v1", "kind": "Pod", "spec": {"containers": "x"}})).unwrap_err();
        assert_eq!(err.code, 400);
        assert!(err.message.starts_with("Pod in version \"v1\" cannot be handled as a Pod:"), "{}", err.message);
    }

    #[test]
    fn scale_selectors_print_like_kubernetes() {
        let sel = json!({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]});
        assert_eq!(selector_string(&sel), "app=web,tier in (a,b)");
    }
}
