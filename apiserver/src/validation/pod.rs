//! Pod rules: containers, ports, volumes, policies, and what an update may change.

use std::collections::HashSet;

use serde_json::{Value, json};
use skiff_api::Cause;

use super::{duplicate, name_causes, names, not_found, quoted};

const CONTAINER_LISTS: [&str; 3] = ["initContainers", "containers", "ephemeralContainers"];

/// The fields `k8s-openapi` requires, checked before decoding so they give 422s.
pub fn precheck_spec(spec: &Value, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    match &spec["containers"] {
        Value::Null | Value::Array(_) if spec["containers"].as_array().is_none_or(Vec::is_empty) => {
            causes.push(Cause::required(format!("{path}.containers")))
        }
        // A value of the wrong type is the decoder's to refuse, with a 400 as in Kubernetes.
        _ => {}
    }
    for list in CONTAINER_LISTS {
        for (i, c) in spec[list].as_array().into_iter().flatten().enumerate() {
            if c["name"].as_str().is_none_or(str::is_empty) {
                causes.push(Cause::required(format!("{path}.{list}[{i}].name")));
            }
            for (j, p) in c["ports"].as_array().into_iter().flatten().enumerate() {
                if p["containerPort"].is_null() {
                    causes.push(Cause::required(format!("{path}.{list}[{i}].ports[{j}].containerPort")));
                }
            }
            for (j, e) in c["env"].as_array().into_iter().flatten().enumerate() {
                if e["name"].as_str().is_none_or(str::is_empty) {
                    causes.push(Cause::required(format!("{path}.{list}[{i}].env[{j}].name")));
                }
            }
        }
    }
    for (i, v) in spec["volumes"].as_array().into_iter().flatten().enumerate() {
        if v["name"].as_str().is_none_or(str::is_empty) {
            causes.push(Cause::required(format!("{path}.volumes[{i}].name")));
        }
    }
    causes
}

pub fn validate(pod: &Value) -> Vec<Cause> {
    validate_spec(&pod["spec"], "spec")
}

/// Rules of a pod spec, also used for the templates of workloads (`path` is the field path).
pub fn validate_spec(spec: &Value, path: &str) -> Vec<Cause> {
    let mut causes = precheck_spec(spec, path);
    let restart = spec["restartPolicy"].as_str().unwrap_or_default();
    if !matches!(restart, "Always" | "OnFailure" | "Never") {
        causes.push(Cause::not_supported(format!("{path}.restartPolicy"), restart, &["Always", "OnFailure", "Never"]));
    }
    let dns = spec["dnsPolicy"].as_str().unwrap_or_default();
    if !matches!(dns, "ClusterFirstWithHostNet" | "ClusterFirst" | "Default" | "None") {
        causes.push(Cause::not_supported(
            format!("{path}.dnsPolicy"),
            dns,
            &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
        ));
    }
    if let Some(g) = spec["terminationGracePeriodSeconds"].as_i64()
        && g < 0
    {
        causes.push(Cause::invalid(
            format!("{path}.terminationGracePeriodSeconds"),
            g,
            "must be greater than or equal to 0",
        ));
    }

    let mut volumes = HashSet::new();
    for (i, v) in spec["volumes"].as_array().into_iter().flatten().enumerate() {
        let Some(name) = v["name"].as_str().filter(|n| !n.is_empty()) else { continue };
        let field = format!("{path}.volumes[{i}].name");
        causes.extend(name_causes(&field, name, names::dns1123_label(name)));
        if !volumes.insert(name.to_string()) {
            causes.push(duplicate(field, name));
        }
    }

    let mut container_names = HashSet::new();
    for list in CONTAINER_LISTS {
        for (i, c) in spec[list].as_array().into_iter().flatten().enumerate() {
            let field = format!("{path}.{list}[{i}]");
            if let Some(name) = c["name"].as_str().filter(|n| !n.is_empty()) {
                causes.extend(name_causes(&format!("{field}.name"), name, names::dns1123_label(name)));
                if !container_names.insert(name.to_string()) {
                    causes.push(duplicate(format!("{field}.name"), name));
                }
            }
            if c["image"].as_str().is_none_or(|s| s.trim().is_empty()) {
                causes.push(Cause::required(format!("{field}.image")));
            }
            causes.extend(validate_container(c, &field, &volumes));
            // Only an init container may set its own restart policy, and only to make it a
            // sidecar (KEP-753), as Kubernetes 1.33 validates it.
            if let Some(policy) = c.get("restartPolicy").filter(|p| !p.is_null()) {
                let policy = policy.as_str().unwrap_or_default();
                if list == "initContainers" {
                    if policy != "Always" {
                        causes.push(Cause::not_supported(format!("{field}.restartPolicy"), policy, &["Always"]));
                    }
                } else {
                    causes.push(Cause::forbidden(
                        format!("{field}.restartPolicy"),
                        "may not be set for non-init containers",
                    ));
                }
            }
        }
    }
    causes
}

fn validate_container(c: &Value, field: &str, volumes: &HashSet<String>) -> Vec<Cause> {
    let mut causes = Vec::new();
    let mut port_names = HashSet::new();
    for (j, p) in c["ports"].as_array().into_iter().flatten().enumerate() {
        let pf = format!("{field}.ports[{j}]");
        if let Some(n) = p["containerPort"].as_i64()
            && !(1..=65535).contains(&n)
        {
            causes.push(Cause::invalid(format!("{pf}.containerPort"), n, "must be between 1 and 65535, inclusive"));
        }
        if let Some(n) = p["hostPort"].as_i64()
            && !(0..=65535).contains(&n)
        {
            causes.push(Cause::invalid(format!("{pf}.hostPort"), n, "must be between 1 and 65535, inclusive"));
        }
        let proto = p["protocol"].as_str().unwrap_or("TCP");
        if !matches!(proto, "TCP" | "UDP" | "SCTP") {
            causes.push(Cause::not_supported(format!("{pf}.protocol"), proto, &["SCTP", "TCP", "UDP"]));
        }
        if let Some(name) = p["name"].as_str().filter(|n| !n.is_empty()) {
            let label_ok = names::dns1123_label(name).is_empty() && !name.contains("--");
            if name.len() > 15 || !label_ok || !name.bytes().any(|b| b.is_ascii_lowercase()) {
                causes.push(Cause::invalid(
                    format!("{pf}.name"),
                    quoted(name),
                    "must be no more than 15 characters and contain only lower case letters, digits and '-', with at least one letter",
                ));
            }
            if !port_names.insert(name.to_string()) {
                causes.push(duplicate(format!("{pf}.name"), name));
            }
        }
    }
    for (j, m) in c["volumeMounts"].as_array().into_iter().flatten().enumerate() {
        let mf = format!("{field}.volumeMounts[{j}]");
        let name = m["name"].as_str().unwrap_or_default();
        if name.is_empty() {
            causes.push(Cause::required(format!("{mf}.name")));
        } else if !volumes.contains(name) {
            causes.push(not_found(format!("{mf}.name"), name));
        }
        if m["mountPath"].as_str().is_none_or(str::is_empty) {
            causes.push(Cause::required(format!("{mf}.mountPath")));
        }
    }
    let policy = c["imagePullPolicy"].as_str().unwrap_or_default();
    if !matches!(policy, "Always" | "IfNotPresent" | "Never") {
        causes.push(Cause::not_supported(
            format!("{field}.imagePullPolicy"),
            policy,
            &["Always", "IfNotPresent", "Never"],
        ));
    }
    let requests = &c["resources"]["requests"];
    let limits = &c["resources"]["limits"];
    for (kind, map) in [("requests", requests), ("limits", limits)] {
        for (r, q) in map.as_object().into_iter().flatten() {
            let text = q.as_str().map(String::from).unwrap_or_else(|| q.to_string());
            if !is_quantity(&text) {
                causes.push(Cause::invalid(
                    format!("{field}.resources.{kind}[{r}]"),
                    quoted(&text),
                    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
                ));
            }
        }
    }
    for (r, q) in requests.as_object().into_iter().flatten() {
        if let (Some(req), Some(lim)) = (quantity(q), limits.get(r).and_then(quantity))
            && req > lim
        {
            causes.push(Cause::invalid(
                format!("{field}.resources.requests"),
                quoted(q.as_str().unwrap_or_default()),
                format!("must be less than or equal to {r} limit of {}", limits[r].as_str().unwrap_or_default()),
            ));
        }
    }
    causes
}

fn quantity(q: &Value) -> Option<i128> {
    crate::defaulting::quantity::parse(q.as_str()?).map(|(n, _)| n)
}

/// The syntax Kubernetes accepts: `^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$`.
fn is_quantity(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    if number.is_empty() {
        return false;
    }
    let letters = suffix.find(|c: char| !"eEinumkKMGTP".contains(c)).unwrap_or(suffix.len());
    let rest = &suffix[letters..];
    let rest = rest.strip_prefix(['+', '-']).unwrap_or(rest);
    rest.bytes().all(|b| b.is_ascii_digit())
}

const UPDATE_FORBIDDEN: &str = "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

/// A pod's spec is fixed once created, except images, activeDeadlineSeconds and added
/// tolerations (the node is set through `pods/binding`, never by an update).
pub fn validate_update(pod: &Value, old: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let new_spec = &pod["spec"];
    let mut allowed = old["spec"].clone();
    for list in ["containers", "initContainers"] {
        if let (Some(a), Some(n)) = (allowed[list].as_array_mut(), new_spec[list].as_array())
            && a.len() == n.len()
        {
            for (a, n) in a.iter_mut().zip(n) {
                a["image"] = n["image"].clone();
            }
        }
    }
    allowed["activeDeadlineSeconds"] = new_spec["activeDeadlineSeconds"].clone();
    if allowed["activeDeadlineSeconds"].is_null()
        && let Some(m) = allowed.as_object_mut()
    {
        m.remove("activeDeadlineSeconds");
    }
    let old_tolerations = old["spec"]["tolerations"].as_array().cloned().unwrap_or_default();
    let new_tolerations = new_spec["tolerations"].as_array().cloned().unwrap_or_default();
    if old_tolerations.iter().all(|t| new_tolerations.contains(t)) {
        allowed["tolerations"] = json!(new_tolerations);
    }
    if let Some(new_gates) = new_spec["schedulingGates"].as_array() {
        // Gates may only be removed.
        let old_gates = old["spec"]["schedulingGates"].as_array().cloned().unwrap_or_default();
        if new_gates.iter().all(|g| old_gates.contains(g)) {
            allowed["schedulingGates"] = new_spec["schedulingGates"].clone();
        }
    } else if let Some(m) = allowed.as_object_mut() {
        m.remove("schedulingGates");
    }
    // Looking into `allowed` above inserted nulls for absent lists; absent and null are equal.
    crate::defaulting::remove_nulls(&mut allowed);
    if *new_spec != allowed {
        causes.push(Cause::forbidden("spec", UPDATE_FORBIDDEN));
    }
    if let Some(a) = new_spec["activeDeadlineSeconds"].as_i64()
        && a <= 0
    {
        causes.push(Cause::invalid("spec.activeDeadlineSeconds", a, "must be greater than or equal to 1"));
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: Value) -> Value {
        let mut p = json!({"metadata": {"name": "p"}, "spec": spec});
        crate::defaulting::apply(skiff_api::ResourceKind::by_plural("", "v1", "pods").unwrap(), &mut p);
        p
    }

    #[test]
    fn a_pod_without_containers_is_refused_like_kubernetes() {
        let causes = precheck_spec(&json!({}), "spec");
        assert_eq!(causes, vec![Cause::required("spec.containers")]);
        assert_eq!(causes[0].message, "Required value");
    }

    #[test]
    fn container_names_must_be_unique_labels_and_images_present() {
        let p = pod(json!({"containers": [{"name": "a", "image": "x"}, {"name": "a"}, {"name": "B_", "image": "y"}]}));
        let fields: Vec<_> = validate(&p).into_iter().map(|c| (c.field, c.reason)).collect();
        assert!(fields.contains(&("spec.containers[1].name".into(), "FieldValueDuplicate".into())), "{fields:?}");
        assert!(fields.contains(&("spec.containers[1].image".into(), "FieldValueRequired".into())), "{fields:?}");
        assert!(fields.contains(&("spec.containers[2].name".into(), "FieldValueInvalid".into())), "{fields:?}");
    }

    #[test]
    fn restart_policy_must_be_supported() {
        let p = pod(json!({"restartPolicy": "Sometimes", "containers": [{"name": "a", "image": "x"}]}));
        let causes = validate(&p);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "spec.restartPolicy");
        assert_eq!(
            causes[0].message,
            "Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\""
        );
    }

    #[test]
    fn only_init_containers_may_restart_always_as_sidecars() {
        let sidecar = pod(json!({"initContainers": [{"name": "side", "image": "x", "restartPolicy": "Always"}],
                                 "containers": [{"name": "a", "image": "x"}]}));
        assert!(validate(&sidecar).is_empty(), "{:?}", validate(&sidecar));
        let p = pod(json!({"initContainers": [{"name": "side", "image": "x", "restartPolicy": "Never"}],
                           "containers": [{"name": "a", "image": "x", "restartPolicy": "Always"}]}));
        let causes = validate(&p);
        let got: Vec<(&str, &str)> = causes.iter().map(|c| (c.field.as_str(), c.message.as_str())).collect();
        assert_eq!(
            got,
            [
                ("spec.initContainers[0].restartPolicy", "Unsupported value: \"Never\": supported values: \"Always\""),
                ("spec.containers[0].restartPolicy", "Forbidden: may not be set for non-init containers"),
            ]
        );
    }

    #[test]
    fn volume_mounts_must_name_a_volume() {
        let p = pod(
            json!({"containers": [{"name": "a", "image": "x", "volumeMounts": [{"name": "data", "mountPath": "/d"}]}]}),
        );
        let causes = validate(&p);
        assert_eq!(causes[0].field, "spec.containers[0].volumeMounts[0].name");
        assert_eq!(causes[0].message, "Not found: \"data\"");
    }

    #[test]
    fn only_images_deadlines_and_added_tolerations_may_change() {
        let old = pod(json!({"containers": [{"name": "a", "image": "x:1"}]}));
        let mut new = old.clone();
        new["spec"]["containers"][0]["image"] = json!("x:2");
        new["spec"]["activeDeadlineSeconds"] = json!(30);
        new["spec"]["tolerations"].as_array_mut().unwrap().push(json!({"key": "k", "operator": "Exists"}));
        assert!(validate_update(&new, &old).is_empty());
        let mut bad = old.clone();
        bad["spec"]["restartPolicy"] = json!("Never");
        let causes = validate_update(&bad, &old);
        assert_eq!(causes[0].field, "spec");
        assert!(causes[0].message.starts_with("Forbidden: pod updates may not change fields other than"));
        let mut moved = old.clone();
        moved["spec"]["nodeName"] = json!("n1");
        assert_eq!(validate_update(&moved, &old).len(), 1);
    }

    #[test]
    fn malformed_quantities_and_requests_above_limits_are_invalid() {
        let p = pod(json!({"containers": [{"name": "a", "image": "x", "resources": {"requests": {"cpu": "lots"}}}]}));
        let causes = validate(&p);
        assert_eq!(causes[0].field, "spec.containers[0].resources.requests[cpu]");
        let p = pod(json!({"containers": [{"name": "a", "image": "x",
            "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1500m"}}}]}));
        let causes = validate(&p);
        assert_eq!(causes[0].message, "Invalid value: \"2\": must be less than or equal to cpu limit of 1500m");
        assert!(is_quantity("1e3") && is_quantity("-0.5Gi") && !is_quantity("Gi") && !is_quantity("1 Gi"));
    }
}
