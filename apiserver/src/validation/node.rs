//! Node rules: taints need a key and a known effect.

use serde_json::Value;
use skiff_api::Cause;

use super::{name_causes, names};

pub fn validate(node: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    for (i, taint) in node["spec"]["taints"].as_array().into_iter().flatten().enumerate() {
        let field = format!("spec.taints[{i}]");
        let key = taint["key"].as_str().unwrap_or_default();
        causes.extend(name_causes(&format!("{field}.key"), key, names::qualified_name(key)));
        let effect = taint["effect"].as_str().unwrap_or_default();
        if effect.is_empty() {
            causes.push(Cause::required(format!("{field}.effect")));
        } else if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
            causes.push(Cause::not_supported(
                format!("{field}.effect"),
                effect,
                &["NoExecute", "NoSchedule", "PreferNoSchedule"],
            ));
        }
    }
    causes
}
