//! `metadata` rules every kind shares: name format, labels, annotations, finalizers.

use serde_json::Value;
use skiff_api::{Cause, ResourceKind};

use super::{cause, name_causes, names, quoted};

const ANNOTATIONS_MAX: usize = 256 * 1024;

pub fn validate(res: &ResourceKind, object: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let meta = &object["metadata"];
    match meta["name"].as_str().filter(|n| !n.is_empty()) {
        None => causes.push(cause(
            "FieldValueRequired",
            "metadata.name",
            "Required value: name or generateName is required",
        )),
        Some(name) => {
            let errs = match (res.group, res.kind) {
                ("", "Namespace") => names::dns1123_label(name),
                ("", "Service") => names::dns1035_label(name),
                _ => names::dns1123_subdomain(name),
            };
            causes.extend(name_causes("metadata.name", name, errs));
        }
    }
    if let Some(labels) = meta["labels"].as_object() {
        for (k, v) in labels {
            causes.extend(name_causes("metadata.labels", k, names::qualified_name(k)));
            let v = v.as_str().unwrap_or_default();
            causes.extend(name_causes("metadata.labels", v, names::label_value(v)));
        }
    }
    if let Some(annotations) = meta["annotations"].as_object() {
        let mut total = 0;
        for (k, v) in annotations {
            causes.extend(name_causes("metadata.annotations", k, names::qualified_name(&k.to_lowercase())));
            total += k.len() + v.as_str().map_or(0, str::len);
        }
        if total > ANNOTATIONS_MAX {
            causes.push(cause(
                "FieldValueTooLong",
                "metadata.annotations",
                format!("Too long: must have at most {ANNOTATIONS_MAX} bytes"),
            ));
        }
    }
    for (i, f) in meta["finalizers"].as_array().into_iter().flatten().enumerate() {
        let f = f.as_str().unwrap_or_default();
        causes.extend(name_causes(&format!("metadata.finalizers[{i}]"), f, names::qualified_name(f)));
    }
    causes
}

pub fn validate_update(object: &Value, old: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    if !old["metadata"]["deletionTimestamp"].is_null() {
        let before: Vec<&Value> = old["metadata"]["finalizers"].as_array().into_iter().flatten().collect();
        let added: Vec<String> = object["metadata"]["finalizers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| !before.contains(f))
            .filter_map(|f| f.as_str().map(quoted))
            .collect();
        if !added.is_empty() {
            causes.push(Cause::forbidden(
                "metadata.finalizers",
                format!(
                    "no new finalizers can be added if the object is being deleted, found new finalizers []string{{{}}}",
                    added.join(", ")
                ),
            ));
        }
    }
    causes
}
