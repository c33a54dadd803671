//! Defaults of the workload kinds (apps/v1, batch/v1) and volumes claims: their own fields
//! and the pod defaults of their templates.

use serde_json::{Value, json};

use super::default;
use super::pod::spec_defaults;

fn template(template: &mut Value) {
    if template.is_object() {
        spec_defaults(&mut template["spec"]);
    }
}

pub fn deployment(d: &mut Value) {
    let spec = &mut d["spec"];
    default(spec, "replicas", json!(1));
    default(spec, "strategy", json!({"type": "RollingUpdate"}));
    if spec["strategy"]["type"].is_null() {
        spec["strategy"]["type"] = json!("RollingUpdate");
    }
    if spec["strategy"]["type"] == "RollingUpdate" {
        let ru = &mut spec["strategy"]["rollingUpdate"];
        default(ru, "maxUnavailable", json!("25%"));
        default(ru, "maxSurge", json!("25%"));
    }
    default(spec, "revisionHistoryLimit", json!(10));
    default(spec, "progressDeadlineSeconds", json!(600));
    template(&mut spec["template"]);
}

pub fn replica_set(rs: &mut Value) {
    default(&mut rs["spec"], "replicas", json!(1));
    template(&mut rs["spec"]["template"]);
}

pub fn daemon_set(ds: &mut Value) {
    let spec = &mut ds["spec"];
    default(spec, "updateStrategy", json!({"type": "RollingUpdate"}));
    if spec["updateStrategy"]["type"] == "RollingUpdate" {
        let ru = &mut spec["updateStrategy"]["rollingUpdate"];
        default(ru, "maxUnavailable", json!(1));
        default(ru, "maxSurge", json!(0));
    }
    default(spec, "revisionHistoryLimit", json!(10));
    template(&mut spec["template"]);
}

pub fn stateful_set(sts: &mut Value) {
    let spec = &mut sts["spec"];
    default(spec, "replicas", json!(1));
    default(spec, "podManagementPolicy", json!("OrderedReady"));
    default(spec, "updateStrategy", json!({"type": "RollingUpdate"}));
    if spec["updateStrategy"]["type"] == "RollingUpdate" {
        default(&mut spec["updateStrategy"]["rollingUpdate"], "partition", json!(0));
    }
    default(spec, "revisionHistoryLimit", json!(10));
    default(spec, "persistentVolumeClaimRetentionPolicy", json!({"whenDeleted": "Retain", "whenScaled": "Retain"}));
    template(&mut spec["template"]);
}

/// Job defaults, and the generated selector Kubernetes gives a Job without `manualSelector`:
/// its pods carry the Job's uid and name as labels.
pub fn job(j: &mut Value) {
    let uid = j["metadata"]["uid"].as_str().unwrap_or_default().to_string();
    let name = j["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let spec = &mut j["spec"];
    job_spec(spec);
    if spec["manualSelector"] != true && spec["selector"].is_null() && !uid.is_empty() {
        spec["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
        let labels = &mut spec["template"]["metadata"]["labels"];
        if !labels.is_object() {
            *labels = json!({});
        }
        for (k, v) in [
            ("batch.kubernetes.io/controller-uid", &uid),
            ("batch.kubernetes.io/job-name", &name),
            ("controller-uid", &uid),
            ("job-name", &name),
        ] {
            default(labels, k, json!(v));
        }
    }
}

fn job_spec(spec: &mut Value) {
    if spec["completions"].is_null() && spec["parallelism"].is_null() {
        spec["completions"] = json!(1);
    }
    default(spec, "parallelism", json!(1));
    default(spec, "backoffLimit", json!(6));
    default(spec, "completionMode", json!("NonIndexed"));
    default(spec, "suspend", json!(false));
    default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    template(&mut spec["template"]);
}

pub fn cron_job(cj: &mut Value) {
    let spec = &mut cj["spec"];
    default(spec, "concurrencyPolicy", json!("Allow"));
    default(spec, "suspend", json!(false));
    default(spec, "successfulJobsHistoryLimit", json!(3));
    default(spec, "failedJobsHistoryLimit", json!(1));
    if spec["jobTemplate"]["spec"].is_object() {
        job_spec(&mut spec["jobTemplate"]["spec"]);
    }
}

pub fn persistent_volume_claim(pvc: &mut Value) {
    default(&mut pvc["spec"], "volumeMode", json!("Filesystem"));
    default(&mut pvc["status"], "phase", json!("Pending"));
}

pub fn persistent_volume(pv: &mut Value) {
    default(&mut pv["spec"], "persistentVolumeReclaimPolicy", json!("Retain"));
    default(&mut pv["spec"], "volumeMode", json!("Filesystem"));
    default(&mut pv["status"], "phase", json!("Pending"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deployment_gets_rolling_update_and_template_defaults() {
        let mut d = json!({"spec": {"selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "a", "image": "nginx:1.27"}]}}}});
        deployment(&mut d);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"], json!({"maxUnavailable": "25%", "maxSurge": "25%"}));
        assert_eq!(d["spec"]["progressDeadlineSeconds"], 600);
        assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");
        assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"], "IfNotPresent");
        // Templates are not pods: no status, no admission defaults.
        assert!(d["spec"]["template"]["status"].is_null());
        assert!(d["spec"]["template"]["spec"]["priority"].is_null());
    }

    #[test]
    fn a_job_gets_a_selector_on_its_uid() {
        let mut j = json!({"metadata": {"name": "pi", "uid": "u-1"},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "a", "image": "perl"}]}}}});
        job(&mut j);
        assert_eq!(j["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"], "u-1");
        assert_eq!(j["spec"]["template"]["metadata"]["labels"]["job-name"], "pi");
        assert_eq!(j["spec"]["completions"], 1);
        assert_eq!(j["spec"]["parallelism"], 1);
        assert_eq!(j["spec"]["backoffLimit"], 6);
    }
}
