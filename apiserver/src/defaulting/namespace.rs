//! Namespace defaults: the `kubernetes` finalizer, phase Active, and the
//! `kubernetes.io/metadata.name` label every namespace carries.

use serde_json::{Value, json};

use super::default;

pub fn defaults(ns: &mut Value) {
    let name = ns["metadata"]["name"].clone();
    if name.is_string() {
        let labels = &mut ns["metadata"]["labels"];
        if !labels.is_object() {
            *labels = json!({});
        }
        labels["kubernetes.io/metadata.name"] = name;
    }
    if ns["metadata"]["deletionTimestamp"].is_null() {
        default(&mut ns["spec"], "finalizers", json!(["kubernetes"]));
        default(&mut ns["status"], "phase", json!("Active"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_namespace_is_active_with_its_name_label_and_finalizer() {
        let mut ns = json!({"metadata": {"name": "team"}});
        defaults(&mut ns);
        assert_eq!(ns["metadata"]["labels"]["kubernetes.io/metadata.name"], "team");
        assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
        assert_eq!(ns["status"]["phase"], "Active");
    }
}
