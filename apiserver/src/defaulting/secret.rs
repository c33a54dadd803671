//! Secret defaults: type Opaque, and `stringData` folded into `data` (base64) as the API
//! server's conversion does, so `stringData` is never stored.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::default;

pub fn defaults(secret: &mut Value) {
    if secret["type"].as_str().is_none_or(str::is_empty) {
        secret["type"] = Value::Null;
        default(secret, "type", json!("Opaque"));
    }
    let Some(string_data) = secret.as_object_mut().and_then(|m| m.remove("stringData")) else { return };
    if let Some(pairs) = string_data.as_object()
        && !pairs.is_empty()
    {
        if !secret["data"].is_object() {
            secret["data"] = json!({});
        }
        for (k, v) in pairs {
            secret["data"][k] = json!(STANDARD.encode(v.as_str().unwrap_or_default()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_data_is_folded_into_data() {
        let mut s = json!({"data": {"a": "YQ=="}, "stringData": {"b": "hello"}});
        defaults(&mut s);
        assert_eq!(s, json!({"type": "Opaque", "data": {"a": "YQ==", "b": "aGVsbG8="}}));
    }
}
