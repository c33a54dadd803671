//! Workload rules (apps/v1, batch/v1): selectors that match their templates, replica counts,
//! restart policies, the template's pod spec, and immutable selectors.

use serde_json::Value;
use skiff_api::{Cause, LabelSelector, ResourceKind};

use super::pod::{precheck_spec, validate_spec};

pub fn precheck_template(template: &Value, path: &str) -> Vec<Cause> {
    if template.is_null() {
        return vec![Cause::required(path.to_string())];
    }
    precheck_spec(&template["spec"], &format!("{path}.spec"))
}

/// The Go `%#v` of a `map[string]string`, as Kubernetes prints template labels.
fn go_map(labels: &Value) -> String {
    let pairs: Vec<String> = labels
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k:?}:{:?}", v.as_str().unwrap_or_default()))
        .collect();
    format!("map[string]string{{{}}}", pairs.join(", "))
}

fn selector_and_template(spec: &Value, path: &str, selector_required: bool) -> Vec<Cause> {
    let mut causes = Vec::new();
    let selector = &spec["selector"];
    let empty = selector["matchLabels"].as_object().is_none_or(|m| m.is_empty())
        && selector["matchExpressions"].as_array().is_none_or(|m| m.is_empty());
    if selector_required && (selector.is_null() || empty) {
        causes.push(Cause::required(format!("{path}.selector")));
    } else if !selector.is_null() {
        let typed = serde_json::from_value(selector.clone());
        match typed.map_err(|e| e.to_string()).and_then(|s| LabelSelector::from_k8s(&s).map_err(|e| e.to_string())) {
            Ok(sel) => {
                let labels = &spec["template"]["metadata"]["labels"];
                let template = serde_json::json!({"metadata": {"labels": labels}});
                if !empty && !sel.matches_object(&template) {
                    causes.push(Cause::invalid(
                        format!("{path}.template.metadata.labels"),
                        go_map(labels),
                        "`selector` does not match template `labels`",
                    ));
                }
            }
            Err(e) => causes.push(Cause::invalid(format!("{path}.selector"), "selector", e)),
        }
    }
    causes
}

fn non_negative(spec: &Value, field: &str, path: &str) -> Option<Cause> {
    let n = spec[field].as_i64()?;
    (n < 0).then(|| Cause::invalid(format!("{path}.{field}"), n, "must be greater than or equal to 0"))
}

pub fn validate_apps(res: &ResourceKind, object: &Value) -> Vec<Cause> {
    let spec = &object["spec"];
    let mut causes = selector_and_template(spec, "spec", true);
    for field in ["replicas", "minReadySeconds", "revisionHistoryLimit"] {
        causes.extend(non_negative(spec, field, "spec"));
    }
    if spec["template"].is_object() {
        causes.extend(validate_spec(&spec["template"]["spec"], "spec.template.spec"));
        let restart = spec["template"]["spec"]["restartPolicy"].as_str().unwrap_or_default();
        if restart != "Always" {
            causes.push(Cause::not_supported("spec.template.spec.restartPolicy", restart, &["Always"]));
        }
    }
    if res.kind == "Deployment"
        && let (Some(deadline), Some(ready)) =
            (spec["progressDeadlineSeconds"].as_i64(), spec["minReadySeconds"].as_i64())
        && deadline <= ready
    {
        causes.push(Cause::invalid("spec.progressDeadlineSeconds", deadline, "must be greater than minReadySeconds"));
    }
    causes
}

pub fn validate_apps_update(object: &Value, old: &Value) -> Vec<Cause> {
    immutable_selector(object, old)
}

fn immutable_selector(object: &Value, old: &Value) -> Vec<Cause> {
    if object["spec"]["selector"] != old["spec"]["selector"] {
        return vec![Cause::invalid(
            "spec.selector",
            format!("v1.LabelSelector{}", object["spec"]["selector"]),
            "field is immutable",
        )];
    }
    Vec::new()
}

fn validate_job_spec(spec: &Value, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    for field in ["parallelism", "completions", "backoffLimit", "activeDeadlineSeconds"] {
        causes.extend(non_negative(spec, field, path));
    }
    if spec["template"].is_object() {
        let tpath = format!("{path}.template.spec");
        causes.extend(validate_spec(&spec["template"]["spec"], &tpath));
        let restart = spec["template"]["spec"]["restartPolicy"].as_str().unwrap_or_default();
        if !matches!(restart, "OnFailure" | "Never") {
            causes.push(Cause::not_supported(format!("{tpath}.restartPolicy"), restart, &["OnFailure", "Never"]));
        }
    }
    causes
}

pub fn validate_job(job: &Value) -> Vec<Cause> {
    let spec = &job["spec"];
    let mut causes = validate_job_spec(spec, "spec");
    causes.extend(selector_and_template(spec, "spec", false));
    causes
}

pub fn validate_job_update(job: &Value, old: &Value) -> Vec<Cause> {
    let mut causes = immutable_selector(job, old);
    if job["spec"]["template"] != old["spec"]["template"] {
        causes.push(Cause::invalid("spec.template", "core.PodTemplateSpec{...}", "field is immutable"));
    }
    causes
}

pub fn validate_cron_job(cj: &Value) -> Vec<Cause> {
    let spec = &cj["spec"];
    let mut causes = Vec::new();
    if spec["schedule"].as_str().is_none_or(|s| s.trim().is_empty()) {
        causes.push(Cause::required("spec.schedule"));
    }
    let policy = spec["concurrencyPolicy"].as_str().unwrap_or_default();
    if !matches!(policy, "Allow" | "Forbid" | "Replace") {
        causes.push(Cause::not_supported("spec.concurrencyPolicy", policy, &["Allow", "Forbid", "Replace"]));
    }
    causes.extend(validate_job_spec(&spec["jobTemplate"]["spec"], "spec.jobTemplate.spec"));
    causes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployments() -> &'static ResourceKind {
        ResourceKind::by_plural("apps", "v1", "deployments").unwrap()
    }

    #[test]
    fn a_selector_that_misses_the_template_is_invalid() {
        let mut d = json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "a", "image": "x"}]}}}});
        crate::defaulting::apply(deployments(), &mut d);
        let causes = validate_apps(deployments(), &d);
        assert_eq!(causes.len(), 1, "{causes:?}");
        assert_eq!(causes[0].field, "spec.template.metadata.labels");
        assert_eq!(
            causes[0].message,
            "Invalid value: map[string]string{\"app\":\"db\"}: `selector` does not match template `labels`"
        );
    }

    #[test]
    fn a_deployment_needs_a_selector() {
        let mut d = json!({"metadata": {"name": "d"}, "spec": {
            "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "a", "image": "x"}]}}}});
        crate::defaulting::apply(deployments(), &mut d);
        assert_eq!(validate_apps(deployments(), &d)[0].field, "spec.selector");
    }
}
