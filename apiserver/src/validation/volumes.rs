//! PersistentVolumeClaim and PersistentVolume rules: access modes and sizes, and a claim's
//! spec fixed after creation except its requests and the volume it binds to.

use serde_json::{Value, json};
use skiff_api::Cause;

use super::cause;

const ACCESS_MODES: [&str; 4] = ["ReadOnlyMany", "ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod"];

fn access_modes(spec: &Value) -> Vec<Cause> {
    let modes = spec["accessModes"].as_array().cloned().unwrap_or_default();
    let mut causes = Vec::new();
    if modes.is_empty() {
        causes.push(cause(
            "FieldValueRequired",
            "spec.accessModes",
            "Required value: at least 1 access mode is required",
        ));
    }
    for m in &modes {
        let m = m.as_str().unwrap_or_default();
        if !ACCESS_MODES.contains(&m) {
            causes.push(Cause::not_supported("spec.accessModes", m, &ACCESS_MODES));
        }
    }
    causes
}

pub fn validate_claim(pvc: &Value) -> Vec<Cause> {
    let spec = &pvc["spec"];
    let mut causes = access_modes(spec);
    if spec["resources"]["requests"]["storage"].is_null() {
        causes.push(Cause::required("spec.resources[storage]"));
    }
    causes
}

pub fn validate_claim_update(pvc: &Value, old: &Value) -> Vec<Cause> {
    let mut allowed = old["spec"].clone();
    allowed["resources"]["requests"] = pvc["spec"]["resources"]["requests"].clone();
    if old["spec"]["volumeName"].as_str().is_none_or(str::is_empty) {
        allowed["volumeName"] = pvc["spec"]["volumeName"].clone();
    }
    if let Some(m) = allowed.as_object_mut() {
        m.retain(|_, v| !v.is_null());
    }
    let new_spec: Value = match pvc["spec"].as_object() {
        Some(m) => Value::Object(m.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), v.clone())).collect()),
        None => json!({}),
    };
    if new_spec != allowed {
        return vec![Cause::forbidden(
            "spec",
            "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
        )];
    }
    Vec::new()
}

pub fn validate_volume(pv: &Value) -> Vec<Cause> {
    let spec = &pv["spec"];
    let mut causes = access_modes(spec);
    if spec["capacity"]["storage"].is_null() {
        causes.push(Cause::required("spec.capacity[storage]"));
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim() -> Value {
        json!({"spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}, "volumeMode": "Filesystem"}})
    }

    #[test]
    fn a_claim_needs_access_modes_and_a_size() {
        assert!(validate_claim(&claim()).is_empty());
        let fields: Vec<_> = validate_claim(&json!({"spec": {}})).into_iter().map(|c| c.field).collect();
        assert_eq!(fields, ["spec.accessModes", "spec.resources[storage]"]);
    }

    #[test]
    fn a_claim_may_grow_and_bind_but_not_change_otherwise() {
        let old = claim();
        let mut grown = old.clone();
        grown["spec"]["resources"]["requests"]["storage"] = json!("2Gi");
        grown["spec"]["volumeName"] = json!("pv-1");
        assert!(validate_claim_update(&grown, &old).is_empty());
        let mut changed = old.clone();
        changed["spec"]["accessModes"] = json!(["ReadWriteMany"]);
        assert_eq!(validate_claim_update(&changed, &old)[0].field, "spec");
        let mut rebound = grown.clone();
        rebound["spec"]["volumeName"] = json!("pv-2");
        assert_eq!(validate_claim_update(&rebound, &grown).len(), 1);
    }
}
