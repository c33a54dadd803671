//! ConfigMap rules: valid keys, no key in both `data` and `binaryData`, at most 1 MiB.

use serde_json::Value;
use skiff_api::Cause;

use super::{cause, duplicate, name_causes, names};

const MAX_SIZE: usize = 1024 * 1024;

pub fn validate(cm: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let mut size = 0;
    let data = cm["data"].as_object();
    for (k, v) in data.into_iter().flatten() {
        causes.extend(name_causes("data", k, names::config_key(k)));
        size += v.as_str().map_or(0, str::len);
    }
    for (k, v) in cm["binaryData"].as_object().into_iter().flatten() {
        causes.extend(name_causes("binaryData", k, names::config_key(k)));
        if data.is_some_and(|d| d.contains_key(k)) {
            causes.push(duplicate("data", k));
        }
        size += v.as_str().map_or(0, |s| s.len() * 3 / 4);
    }
    if size > MAX_SIZE {
        causes.push(cause("FieldValueTooLong", "", format!("Too long: must have at most {MAX_SIZE} bytes")));
    }
    causes
}

/// An object marked `immutable: true` keeps its data (and stays immutable).
pub fn validate_immutable(object: &Value, old: &Value, fields: &[&str]) -> Vec<Cause> {
    let mut causes = Vec::new();
    if old["immutable"] != true {
        return causes;
    }
    if object["immutable"] != true {
        causes.push(Cause::forbidden("immutable", "field is immutable when `immutable` is set"));
    }
    for field in fields {
        if object[*field] != old[*field] {
            causes.push(Cause::forbidden(*field, "field is immutable when `immutable` is set"));
        }
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_must_be_config_keys() {
        assert!(validate(&json!({"data": {"app.conf": "x"}})).is_empty());
        let causes = validate(&json!({"data": {"a/b": "x"}}));
        assert_eq!(causes[0].field, "data");
        assert!(causes[0].message.starts_with("Invalid value: \"a/b\": a valid config key"));
    }
}
