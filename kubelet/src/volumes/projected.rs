//! The payloads of the API-data volumes: configMap, secret, downwardAPI and projected (with
//! service account tokens from [`super::token`]), built as
//! Kubernetes' `MakePayload`s (items pick keys and paths, `mode` over `defaultMode`, `optional`
//! tolerates a missing object or key), for the atomic writer to lay out.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, DownwardAPIVolumeFile, KeyToPath, Pod, Secret};

use super::atomic_writer::FileProjection;

/// The mode of files without `mode` or `defaultMode`.
pub const DEFAULT_MODE: i32 = 0o644;

pub type Payload = BTreeMap<String, FileProjection>;

fn config_map_entries(cm: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut all: BTreeMap<String, Vec<u8>> =
        cm.data.iter().flatten().map(|(k, v)| (k.clone(), v.as_bytes().to_vec())).collect();
    all.extend(cm.binary_data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())));
    all
}

fn secret_entries(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut all: BTreeMap<String, Vec<u8>> =
        secret.string_data.iter().flatten().map(|(k, v)| (k.clone(), v.as_bytes().to_vec())).collect();
    all.extend(secret.data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())));
    all
}

/// Files from a key → bytes map: every key at its own name without `items`, else the listed
/// keys at their paths. `missing_key` words the error for a key that is not there.
fn key_payload(
    entries: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: i32,
    optional: bool,
    missing_key: impl Fn(&str) -> String,
) -> Result<Payload, String> {
    let mut payload = Payload::new();
    let file = |data: &Vec<u8>, mode: Option<i32>| FileProjection {
        data: data.clone(),
        mode: mode.unwrap_or(default_mode) as u32 & 0o7777,
    };
    match items.filter(|i| !i.is_empty()) {
        None => {
            for (k, v) in entries {
                payload.insert(k.clone(), file(v, None));
            }
        }
        Some(items) => {
            for item in items {
                match entries.get(&item.key) {
                    Some(v) => {
                        payload.insert(item.path.clone(), file(v, item.mode));
                    }
                    None if optional => {}
                    None => return Err(missing_key(&item.key)),
                }
            }
        }
    }
    Ok(payload)
}

pub fn config_map_payload(
    cm: Option<&ConfigMap>,
    name: &str,
    items: Option<&Vec<KeyToPath>>,
    default_mode: i32,
    optional: bool,
) -> Result<Payload, String> {
    match cm {
        None if optional => Ok(Payload::new()),
        None => Err(format!("configmap \"{name}\" not found")),
        Some(cm) => key_payload(&config_map_entries(cm), items, default_mode, optional, |k| {
            format!("configmap references non-existent config key: {k}")
        }),
    }
}

pub fn secret_payload(
    secret: Option<&Secret>,
    name: &str,
    items: Option<&Vec<KeyToPath>>,
    default_mode: i32,
    optional: bool,
) -> Result<Payload, String> {
    match secret {
        None if optional => Ok(Payload::new()),
        None => Err(format!("secret \"{name}\" not found")),
        Some(s) => key_payload(&secret_entries(s), items, default_mode, optional, |k| {
            format!("references non-existent secret key: {k}")
        }),
    }
}

/// A `serviceAccountToken` projection: the token at `path`, with the volume's default mode.
pub fn token_payload(path: &str, token: String, default_mode: i32) -> Payload {
    let mode = default_mode as u32 & 0o7777;
    Payload::from([(path.to_string(), FileProjection { data: token.into_bytes(), mode })])
}

/// A label or annotation map as the downward API writes it: sorted `key="value"` lines.
fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.iter()
        .flat_map(|m| m.iter())
        .map(|(k, v)| format!("{k}={}", serde_json::Value::String(v.clone())))
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn downward_api_payload(pod: &Pod, items: &[DownwardAPIVolumeFile], default_mode: i32) -> Result<Payload, String> {
    let mut payload = Payload::new();
    for item in items {
        let value = if let Some(f) = &item.field_ref {
            match f.field_path.as_str() {
                "metadata.labels" => format_map(pod.metadata.labels.as_ref()),
                "metadata.annotations" => format_map(pod.metadata.annotations.as_ref()),
                path => crate::env::field_ref(pod, path, "", "").map_err(|e| e.0)?,
            }
        } else if let Some(r) = &item.resource_field_ref {
            let container = pod
                .spec
                .iter()
                .flat_map(|s| s.containers.iter().chain(s.init_containers.iter().flatten()))
                .find(|c| Some(&c.name) == r.container_name.as_ref())
                .ok_or_else(|| format!("container {:?} not found for resourceFieldRef", r.container_name))?;
            crate::env::resource_field_ref(container, r).map_err(|e| e.0)?
        } else {
            continue;
        };
        let mode = item.mode.unwrap_or(default_mode) as u32 & 0o7777;
        payload.insert(item.path.clone(), FileProjection { data: value.into_bytes(), mode });
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cm() -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": "c"}, "data": {"a": "1", "b": "2"},
            "binaryData": {"bin": "AAE="}}))
        .unwrap()
    }

    #[test]
    fn all_keys_without_items_and_chosen_paths_with_them() {
        let all = config_map_payload(Some(&cm()), "c", None, DEFAULT_MODE, false).unwrap();
        assert_eq!(all.keys().collect::<Vec<_>>(), ["a", "b", "bin"]);
        assert_eq!(all["bin"].data, vec![0, 1]);
        assert_eq!(all["a"].mode, 0o644);
        let items: Vec<KeyToPath> = serde_json::from_value(
            json!([{"key": "a", "path": "dir/x.conf", "mode": 0o400}, {"key": "b", "path": "y"}]),
        )
        .unwrap();
        let some = config_map_payload(Some(&cm()), "c", Some(&items), 0o600, false).unwrap();
        assert_eq!(some.keys().collect::<Vec<_>>(), ["dir/x.conf", "y"]);
        assert_eq!((some["dir/x.conf"].mode, some["y"].mode), (0o400, 0o600));
    }

    #[test]
    fn missing_objects_and_keys_fail_unless_optional() {
        assert_eq!(config_map_payload(None, "c", None, 0o644, false).unwrap_err(), "configmap \"c\" not found");
        assert!(config_map_payload(None, "c", None, 0o644, true).unwrap().is_empty());
        assert_eq!(secret_payload(None, "s", None, 0o644, false).unwrap_err(), "secret \"s\" not found");
        let items: Vec<KeyToPath> = serde_json::from_value(json!([{"key": "nope", "path": "p"}])).unwrap();
        assert_eq!(
            config_map_payload(Some(&cm()), "c", Some(&items), 0o644, false).unwrap_err(),
            "configmap references non-existent config key: nope"
        );
        assert!(config_map_payload(Some(&cm()), "c", Some(&items), 0o644, true).unwrap().is_empty());
    }

    #[test]
    fn downward_api_writes_fields_and_quoted_maps() {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "ns",
            "labels": {"b": "2", "a": "x\"y"}}, "spec": {"containers": [{"name": "c",
            "resources": {"limits": {"memory": "64Mi"}}}]}}))
        .unwrap();
        let items: Vec<DownwardAPIVolumeFile> = serde_json::from_value(json!([
            {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "mem", "resourceFieldRef": {"containerName": "c", "resource": "limits.memory", "divisor": "1Mi"}}
        ]))
        .unwrap();
        let p = downward_api_payload(&pod, &items, 0o644).unwrap();
        assert_eq!(p["name"].data, b"p");
        assert_eq!(String::from_utf8_lossy(&p["labels"].data), "a=\"x\\\"y\"\nb=\"2\"");
        assert_eq!(p["mem"].data, b"64");
    }
}
