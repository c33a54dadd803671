//! Secret defaults: type Opaque.

use serde_json::{Value, json};

use super::default;

pub fn defaults(secret: &mut Value) {
    if secret["type"].as_str().is_none_or(str::is_empty) {
        secret["type"] = Value::Null;
        default(secret, "type", json!("Opaque"));
    }
}
