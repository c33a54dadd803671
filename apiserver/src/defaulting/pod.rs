//! Pod defaults: `SetDefaults_PodSpec`/`_Container`/`_Probe`/volume sources, plus what the
//! admission chain fills on a pod (priority, service account, default tolerations) and the
//! initial status (phase Pending, QoS class).

use serde_json::{Value, json};

use super::default;

/// Defaults of a whole pod.
pub fn defaults(pod: &mut Value) {
    spec_defaults(&mut pod["spec"]);
    let spec = &mut pod["spec"];
    // Admission: Priority, ServiceAccount, DefaultTolerationSeconds.
    default(spec, "priority", json!(0));
    default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    default(spec, "serviceAccountName", json!("default"));
    let sa = spec["serviceAccountName"].clone();
    default(spec, "serviceAccount", sa);
    let tolerations = spec["tolerations"].as_array().cloned().unwrap_or_default();
    let mut added = tolerations.clone();
    for taint in ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"] {
        let present = tolerations.iter().any(|t| {
            (t["key"] == taint || (t["key"].is_null() && t["operator"] == "Exists"))
                && (t["effect"].is_null() || t["effect"] == "NoExecute")
        });
        if !present {
            added.push(json!({"key": taint, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
        }
    }
    spec["tolerations"] = Value::Array(added);

    let qos = qos_class(&pod["spec"]);
    let status = &mut pod["status"];
    default(status, "phase", json!("Pending"));
    status["qosClass"] = json!(qos);
}

/// Defaults of a pod spec, also applied to the pod templates of workloads.
pub fn spec_defaults(spec: &mut Value) {
    default(spec, "restartPolicy", json!("Always"));
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "schedulerName", json!("default-scheduler"));
    default(spec, "securityContext", json!({}));
    default(spec, "enableServiceLinks", json!(true));
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        if let Some(containers) = spec[list].as_array_mut() {
            for c in containers {
                container_defaults(c);
            }
        }
    }
    if let Some(volumes) = spec["volumes"].as_array_mut() {
        for v in volumes {
            volume_defaults(v);
        }
    }
}

fn container_defaults(c: &mut Value) {
    default(c, "terminationMessagePath", json!("/dev/termination-log"));
    default(c, "terminationMessagePolicy", json!("File"));
    let policy = image_pull_policy(c["image"].as_str().unwrap_or_default());
    default(c, "imagePullPolicy", json!(policy));
    default(c, "resources", json!({}));
    // A limit without a request requests the limit.
    let limits = c["resources"]["limits"].as_object().cloned().unwrap_or_default();
    if !limits.is_empty() {
        let requests = &mut c["resources"]["requests"];
        if !requests.is_object() {
            *requests = json!({});
        }
        for (k, v) in limits {
            default(requests, &k, v);
        }
    }
    if let Some(ports) = c["ports"].as_array_mut() {
        for p in ports {
            default(p, "protocol", json!("TCP"));
        }
    }
    if let Some(env) = c["env"].as_array_mut() {
        for e in env {
            if e["valueFrom"]["fieldRef"].is_object() {
                default(&mut e["valueFrom"]["fieldRef"], "apiVersion", json!("v1"));
            }
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if c[probe].is_object() {
            let p = &mut c[probe];
            default(p, "timeoutSeconds", json!(1));
            default(p, "periodSeconds", json!(10));
            default(p, "successThreshold", json!(1));
            default(p, "failureThreshold", json!(3));
            if p["httpGet"].is_object() {
                default(&mut p["httpGet"], "scheme", json!("HTTP"));
                default(&mut p["httpGet"], "path", json!("/"));
            }
        }
    }
}

fn volume_defaults(v: &mut Value) {
    for source in ["configMap", "secret", "downwardAPI", "projected"] {
        if v[source].is_object() {
            default(&mut v[source], "defaultMode", json!(420));
        }
    }
    if v["hostPath"].is_object() {
        default(&mut v["hostPath"], "type", json!(""));
    }
}

/// `Always` for `:latest` or an untagged image, `IfNotPresent` for any other tag or a digest.
pub fn image_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

/// A quantity in nano-units (numbers were made strings by canonicalization).
fn quantity(q: &Value) -> Option<i128> {
    match q {
        Value::String(s) => super::quantity::parse(s).map(|(n, _)| n),
        Value::Number(n) => super::quantity::parse(&n.to_string()).map(|(n, _)| n),
        _ => None,
    }
}

/// The QoS class of a pod spec, as `qos.GetPodQOS` computes it from cpu and memory.
pub fn qos_class(spec: &Value) -> &'static str {
    let containers = ["initContainers", "containers"]
        .iter()
        .flat_map(|l| spec[*l].as_array().cloned().unwrap_or_default())
        .collect::<Vec<_>>();
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let requests = &c["resources"]["requests"];
        let limits = &c["resources"]["limits"];
        for r in ["cpu", "memory"] {
            let req = requests.get(r).and_then(quantity).filter(|q| *q != 0);
            let lim = limits.get(r).and_then(quantity).filter(|q| *q != 0);
            if req.is_some() || lim.is_some() {
                any = true;
            }
            // Requests were defaulted from limits, so a missing request means a missing limit.
            match (req, lim) {
                (Some(a), Some(b)) if a == b => {}
                _ => guaranteed = false,
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policy_follows_the_tag() {
        for (image, want) in [
            ("nginx", "Always"),
            ("nginx:latest", "Always"),
            ("nginx:1.27", "IfNotPresent"),
            ("localhost:5000/app", "Always"),
            ("localhost:5000/app:v1", "IfNotPresent"),
            ("busybox@sha256:abcd", "IfNotPresent"),
        ] {
            assert_eq!(image_pull_policy(image), want, "{image}");
        }
    }

    #[test]
    fn a_minimal_pod_gets_kubernetes_defaults() {
        let mut pod =
            json!({"spec": {"containers": [{"name": "app", "image": "nginx", "ports": [{"containerPort": 80}]}]}});
        defaults(&mut pod);
        let spec = &pod["spec"];
        assert_eq!(spec["restartPolicy"], "Always");
        assert_eq!(spec["dnsPolicy"], "ClusterFirst");
        assert_eq!(spec["terminationGracePeriodSeconds"], 30);
        assert_eq!(spec["schedulerName"], "default-scheduler");
        assert_eq!(spec["securityContext"], json!({}));
        assert_eq!(spec["enableServiceLinks"], true);
        assert_eq!(spec["priority"], 0);
        let c = &spec["containers"][0];
        assert_eq!(c["terminationMessagePath"], "/dev/termination-log");
        assert_eq!(c["terminationMessagePolicy"], "File");
        assert_eq!(c["imagePullPolicy"], "Always");
        assert_eq!(c["ports"][0]["protocol"], "TCP");
        assert_eq!(pod["status"]["phase"], "Pending");
        assert_eq!(pod["status"]["qosClass"], "BestEffort");
        assert_eq!(spec["tolerations"].as_array().unwrap().len(), 2);
        // Idempotent.
        let again = pod.clone();
        defaults(&mut pod);
        assert_eq!(pod, again);
    }

    #[test]
    fn qos_class_follows_requests_and_limits() {
        let with = |resources: Value| {
            let mut pod = json!({"spec": {"containers": [{"name": "a", "image": "x", "resources": resources}]}});
            defaults(&mut pod);
            pod["status"]["qosClass"].as_str().unwrap().to_string()
        };
        assert_eq!(with(json!({})), "BestEffort");
        assert_eq!(with(json!({"requests": {"cpu": "100m"}})), "Burstable");
        assert_eq!(with(json!({"limits": {"cpu": "1", "memory": "1Gi"}})), "Guaranteed");
        assert_eq!(with(json!({"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1000m"}})), "Guaranteed");
        assert_eq!(with(json!({"limits": {"cpu": "1"}})), "Burstable");
    }

    #[test]
    fn limits_are_copied_to_missing_requests() {
        let mut pod =
            json!({"spec": {"containers": [{"name": "a", "image": "x", "resources": {"limits": {"memory": "64Mi"}}}]}});
        defaults(&mut pod);
        assert_eq!(pod["spec"]["containers"][0]["resources"]["requests"]["memory"], "64Mi");
    }
}
