//! Namespace rules (the name itself is checked as a DNS-1123 label in `metadata`).

use serde_json::Value;
use skiff_api::Cause;

use super::{name_causes, names};

pub fn validate(ns: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    for (i, f) in ns["spec"]["finalizers"].as_array().into_iter().flatten().enumerate() {
        let f = f.as_str().unwrap_or_default();
        causes.extend(name_causes(&format!("spec.finalizers[{i}]"), f, names::qualified_name(f)));
    }
    causes
}
