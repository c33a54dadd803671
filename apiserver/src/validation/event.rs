//! Event rules (core/v1): an event about a namespaced object lives in that object's namespace.

use serde_json::Value;
use skiff_api::Cause;

use super::quoted;

pub fn validate(event: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let ns = event["metadata"]["namespace"].as_str().unwrap_or_default();
    if let Some(involved) = event["involvedObject"]["namespace"].as_str().filter(|s| !s.is_empty())
        && involved != ns
    {
        causes.push(Cause::invalid("involvedObject.namespace", quoted(involved), "does not match event.namespace"));
    }
    causes
}
