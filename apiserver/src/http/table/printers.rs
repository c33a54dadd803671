//! Per-kind columns and cells, as Kubernetes' `pkg/printers/internalversion` prints them. The
//! server always fills the wide (priority 1) cells; kubectl shows them only with `-o wide`.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use serde_json::{Value, json};

use super::age::{human_duration, since};

/// One column: name, type, format, priority, description.
pub(crate) struct Column(pub &'static str, pub &'static str, pub &'static str, pub u8, pub &'static str);

const NAME: Column = Column("Name", "string", "name", 0, "Name must be unique within a namespace.");
const AGE: Column = Column(
    "Age",
    "string",
    "",
    0,
    "CreationTimestamp is a timestamp representing the server time when this object was created.",
);
const CONTAINERS: Column = Column("Containers", "string", "", 1, "Names of each container in the template.");
const IMAGES: Column = Column("Images", "string", "", 1, "Images referenced by each container in the template.");
const SELECTOR: Column = Column("Selector", "string", "", 1, "Label selector for pods.");

/// What a printer makes of one object: its cells and the row's conditions.
pub(crate) struct Row {
    pub cells: Vec<Value>,
    pub conditions: Option<Value>,
}

impl From<Vec<Value>> for Row {
    fn from(cells: Vec<Value>) -> Self {
        Row { cells, conditions: None }
    }
}

pub(crate) type Printer = fn(&Value, Timestamp) -> Row;

/// The columns and printer of a kind, or the `NAME AGE` fallback.
pub(crate) fn printer_for(group: &str, kind: &str) -> (&'static [Column], Printer) {
    match (group, kind) {
        ("", "Pod") => (POD_COLUMNS, print_pod),
        ("", "Namespace") => (NAMESPACE_COLUMNS, print_namespace),
        ("", "Node") => (NODE_COLUMNS, print_node),
        ("", "Service") => (SERVICE_COLUMNS, print_service),
        ("", "ConfigMap") => (CONFIGMAP_COLUMNS, print_configmap),
        ("", "Secret") => (SECRET_COLUMNS, print_secret),
        ("", "Event") => (EVENT_COLUMNS, print_event),
        ("apps", "Deployment") => (DEPLOYMENT_COLUMNS, print_deployment),
        ("apps", "ReplicaSet") => (REPLICASET_COLUMNS, print_replicaset),
        ("batch", "Job") => (JOB_COLUMNS, print_job),
        ("batch", "CronJob") => (CRONJOB_COLUMNS, print_cronjob),
        ("apps", "DaemonSet") => (DAEMONSET_COLUMNS, print_daemonset),
        ("apps", "StatefulSet") => (STATEFULSET_COLUMNS, print_statefulset),
        ("", "Endpoints") => (ENDPOINTS_COLUMNS, print_endpoints),
        ("", "ServiceAccount") => (SERVICEACCOUNT_COLUMNS, print_serviceaccount),
        ("", "PersistentVolumeClaim") => (PVC_COLUMNS, print_pvc),
        ("", "PersistentVolume") => (PV_COLUMNS, print_pv),
        ("storage.k8s.io", "StorageClass") => (STORAGECLASS_COLUMNS, print_storageclass),
        ("coordination.k8s.io", "Lease") => (LEASE_COLUMNS, print_lease),
        ("discovery.k8s.io", "EndpointSlice") => (ENDPOINTSLICE_COLUMNS, print_endpointslice),
        _ => (DEFAULT_COLUMNS, print_default),
    }
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn arr(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn or_none(v: &str) -> String {
    if v.is_empty() { "<none>".into() } else { v.to_string() }
}

fn name(obj: &Value) -> Value {
    obj["metadata"]["name"].clone()
}

fn age(obj: &Value, now: Timestamp) -> Value {
    json!(since(obj["metadata"]["creationTimestamp"].as_str(), now))
}

const DEFAULT_COLUMNS: &[Column] = &[NAME, AGE];

fn print_default(obj: &Value, now: Timestamp) -> Row {
    vec![name(obj), age(obj, now)].into()
}

// ---- Pods ----

const POD_COLUMNS: &[Column] = &[
    NAME,
    Column("Ready", "string", "", 0, "The aggregate readiness state of this pod for accepting traffic."),
    Column("Status", "string", "", 0, "The aggregate status of the containers in this pod."),
    Column(
        "Restarts",
        "string",
        "",
        0,
        "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
    ),
    AGE,
    Column("IP", "string", "", 1, "IP address allocated to the pod. Routable at least within the cluster."),
    Column("Node", "string", "", 1, "NodeName indicates in which node this pod is scheduled."),
    Column(
        "Nominated Node",
        "string",
        "",
        1,
        "nominatedNodeName is set only when this pod preempts other pods on the node.",
    ),
    Column(
        "Readiness Gates",
        "string",
        "",
        1,
        "If specified, all readiness gates will be evaluated for pod readiness.",
    ),
];

fn has_true_condition(conditions: &Value, kind: &str) -> bool {
    arr(conditions).iter().any(|c| c["type"] == kind && c["status"] == "True")
}

/// Latest of two optional RFC 3339 timestamps.
fn later(a: Option<Timestamp>, b: &Value) -> Option<Timestamp> {
    let b = b.as_str().and_then(|t| t.parse::<Timestamp>().ok());
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// READY, STATUS and RESTARTS of a pod, computed as kubectl's `printPod` does: the phase, then
/// the status reason, then the first unfinished init container, then the waiting or terminated
/// reason of the containers (the first container wins, as it is looked at last), and
/// `Terminating` once the pod carries a deletionTimestamp.
pub(crate) fn pod_status(pod: &Value, now: Timestamp) -> (String, String, String) {
    let spec = &pod["spec"];
    let status = &pod["status"];
    let phase = s(&status["phase"]);
    let mut reason = if s(&status["reason"]).is_empty() { phase.to_string() } else { s(&status["reason"]).to_string() };
    if arr(&status["conditions"]).iter().any(|c| c["type"] == "PodScheduled" && c["reason"] == "SchedulingGated") {
        reason = "SchedulingGated".into();
    }

    let init_specs = arr(&spec["initContainers"]);
    let restartable = |name: &Value| init_specs.iter().any(|c| c["name"] == *name && c["restartPolicy"] == "Always");
    let total = arr(&spec["containers"]).len() + init_specs.iter().filter(|c| c["restartPolicy"] == "Always").count();
    let mut ready = 0;
    let mut restarts = 0;
    let mut sidecar_restarts = 0;
    let mut last_restart = None;
    let mut last_sidecar_restart = None;
    let init_statuses = arr(&status["initContainerStatuses"]);
    let mut initializing = false;
    for (i, c) in init_statuses.iter().enumerate() {
        restarts += int(&c["restartCount"]);
        let finished = &c["lastState"]["terminated"]["finishedAt"];
        last_restart = later(last_restart, finished);
        if restartable(&c["name"]) {
            sidecar_restarts += int(&c["restartCount"]);
            last_sidecar_restart = later(last_sidecar_restart, finished);
        }
        let terminated = &c["state"]["terminated"];
        let waiting = &c["state"]["waiting"];
        if terminated.is_object() && int(&terminated["exitCode"]) == 0 {
            continue;
        }
        if restartable(&c["name"]) && c["started"] == true {
            if c["ready"] == true {
                ready += 1;
            }
            continue;
        }
        if terminated.is_object() {
            reason = if !s(&terminated["reason"]).is_empty() {
                format!("Init:{}", s(&terminated["reason"]))
            } else if int(&terminated["signal"]) != 0 {
                format!("Init:Signal:{}", int(&terminated["signal"]))
            } else {
                format!("Init:ExitCode:{}", int(&terminated["exitCode"]))
            };
        } else if waiting.is_object() && !s(&waiting["reason"]).is_empty() && s(&waiting["reason"]) != "PodInitializing"
        {
            reason = format!("Init:{}", s(&waiting["reason"]));
        } else {
            reason = format!("Init:{i}/{}", init_specs.len());
        }
        initializing = true;
        break;
    }

    if !initializing || has_true_condition(&status["conditions"], "Initialized") {
        restarts = sidecar_restarts;
        last_restart = last_sidecar_restart;
        let mut has_running = false;
        for c in arr(&status["containerStatuses"]).iter().rev() {
            restarts += int(&c["restartCount"]);
            last_restart = later(last_restart, &c["lastState"]["terminated"]["finishedAt"]);
            let waiting = &c["state"]["waiting"];
            let terminated = &c["state"]["terminated"];
            if waiting.is_object() && !s(&waiting["reason"]).is_empty() {
                reason = s(&waiting["reason"]).to_string();
            } else if terminated.is_object() && !s(&terminated["reason"]).is_empty() {
                reason = s(&terminated["reason"]).to_string();
            } else if terminated.is_object() {
                reason = if int(&terminated["signal"]) != 0 {
                    format!("Signal:{}", int(&terminated["signal"]))
                } else {
                    format!("ExitCode:{}", int(&terminated["exitCode"]))
                };
            } else if c["ready"] == true && c["state"]["running"].is_object() {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            reason = if has_true_condition(&status["conditions"], "Ready") { "Running" } else { "NotReady" }.into();
        }
    }

    let deleting = pod["metadata"]["deletionTimestamp"].is_string();
    if deleting && s(&status["reason"]) == "NodeLost" {
        reason = "Unknown".into();
    } else if deleting && phase != "Succeeded" && phase != "Failed" {
        reason = "Terminating".into();
    }

    let restarts = match last_restart {
        Some(at) if restarts != 0 => format!("{restarts} ({} ago)", human_duration(now.duration_since(at).as_secs())),
        _ => restarts.to_string(),
    };
    (format!("{ready}/{total}"), reason, restarts)
}

fn print_pod(pod: &Value, now: Timestamp) -> Row {
    let (ready, reason, restarts) = pod_status(pod, now);
    let spec = &pod["spec"];
    let status = &pod["status"];
    let ip = arr(&status["podIPs"]).first().map(|p| s(&p["ip"])).unwrap_or("");
    let gates = arr(&spec["readinessGates"]);
    let readiness_gates = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let satisfied = gates
            .iter()
            .filter(|g| {
                arr(&status["conditions"])
                    .iter()
                    .find(|c| c["type"] == g["conditionType"])
                    .is_some_and(|c| c["status"] == "True")
            })
            .count();
        format!("{satisfied}/{}", gates.len())
    };
    let conditions = match s(&status["phase"]) {
        "Succeeded" => Some(
            json!([{"type": "Completed", "status": "True", "reason": "Succeeded", "message": "The pod has completed successfully."}]),
        ),
        "Failed" => {
            Some(json!([{"type": "Completed", "status": "True", "reason": "Failed", "message": "The pod failed."}]))
        }
        _ => None,
    };
    Row {
        cells: vec![
            name(pod),
            json!(ready),
            json!(reason),
            json!(restarts),
            age(pod, now),
            json!(or_none(ip)),
            json!(or_none(s(&spec["nodeName"]))),
            json!(or_none(s(&status["nominatedNodeName"]))),
            json!(readiness_gates),
        ],
        conditions,
    }
}

// ---- Namespaces, nodes ----

const NAMESPACE_COLUMNS: &[Column] = &[NAME, Column("Status", "string", "", 0, "The status of the namespace"), AGE];

fn print_namespace(ns: &Value, now: Timestamp) -> Row {
    vec![name(ns), ns["status"]["phase"].clone(), age(ns, now)].into()
}

const NODE_COLUMNS: &[Column] = &[
    NAME,
    Column("Status", "string", "", 0, "The status of the node"),
    Column("Roles", "string", "", 0, "The roles of the node"),
    AGE,
    Column("Version", "string", "", 0, "Kubelet Version reported by the node."),
    Column(
        "Internal-IP",
        "string",
        "",
        1,
        "List of addresses reachable to the node. Queried from cloud provider, if available.",
    ),
    Column(
        "External-IP",
        "string",
        "",
        1,
        "List of addresses reachable to the node. Queried from cloud provider, if available.",
    ),
    Column(
        "OS-Image",
        "string",
        "",
        1,
        "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).",
    ),
    Column(
        "Kernel-Version",
        "string",
        "",
        1,
        "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).",
    ),
    Column(
        "Container-Runtime",
        "string",
        "",
        1,
        "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2).",
    ),
];

fn node_roles(node: &Value) -> String {
    let mut roles = BTreeSet::new();
    if let Some(labels) = node["metadata"]["labels"].as_object() {
        for (key, value) in labels {
            if let Some(role) = key.strip_prefix("node-role.kubernetes.io/") {
                if !role.is_empty() {
                    roles.insert(role.to_string());
                }
            } else if key == "kubernetes.io/role" && !s(value).is_empty() {
                roles.insert(s(value).to_string());
            }
        }
    }
    or_none(&roles.into_iter().collect::<Vec<_>>().join(","))
}

fn node_address(node: &Value, kind: &str) -> String {
    arr(&node["status"]["addresses"])
        .iter()
        .find(|a| a["type"] == kind)
        .map(|a| s(&a["address"]).to_string())
        .unwrap_or_else(|| "<none>".into())
}

fn print_node(node: &Value, now: Timestamp) -> Row {
    let mut status: Vec<String> = arr(&node["status"]["conditions"])
        .iter()
        .find(|c| c["type"] == "Ready")
        .map(|c| if c["status"] == "True" { "Ready".into() } else { "NotReady".into() })
        .into_iter()
        .collect();
    if status.is_empty() {
        status.push("Unknown".into());
    }
    if node["spec"]["unschedulable"] == true {
        status.push("SchedulingDisabled".into());
    }
    let info = &node["status"]["nodeInfo"];
    let or_unknown = |v: &Value| if s(v).is_empty() { "<unknown>".to_string() } else { s(v).to_string() };
    vec![
        name(node),
        json!(status.join(",")),
        json!(node_roles(node)),
        age(node, now),
        json!(s(&info["kubeletVersion"])),
        json!(node_address(node, "InternalIP")),
        json!(node_address(node, "ExternalIP")),
        json!(or_unknown(&info["osImage"])),
        json!(or_unknown(&info["kernelVersion"])),
        json!(or_unknown(&info["containerRuntimeVersion"])),
    ]
    .into()
}

// ---- Services, config ----

const SERVICE_COLUMNS: &[Column] = &[
    NAME,
    Column("Type", "string", "", 0, "type determines how the Service is exposed."),
    Column(
        "Cluster-IP",
        "string",
        "",
        0,
        "clusterIP is the IP address of the service and is usually assigned randomly.",
    ),
    Column(
        "External-IP",
        "string",
        "",
        0,
        "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service.",
    ),
    Column("Port(s)", "string", "", 0, "The list of ports that are exposed by this service."),
    AGE,
    Column(
        "Selector",
        "string",
        "",
        1,
        "Route service traffic to pods with label keys and values matching this selector.",
    ),
];

fn format_labels(map: &Value) -> String {
    let pairs: BTreeMap<&String, &str> =
        map.as_object().map(|m| m.iter().map(|(k, v)| (k, s(v))).collect()).unwrap_or_default();
    or_none(&pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))
}

fn service_external_ip(svc: &Value) -> String {
    let external: Vec<&str> = arr(&svc["spec"]["externalIPs"]).iter().map(s).collect();
    match s(&svc["spec"]["type"]) {
        "ClusterIP" | "NodePort" | "" => or_none(&external.join(",")),
        "LoadBalancer" => {
            let mut ips: Vec<&str> = arr(&svc["status"]["loadBalancer"]["ingress"])
                .iter()
                .map(|i| if s(&i["ip"]).is_empty() { s(&i["hostname"]) } else { s(&i["ip"]) })
                .filter(|v| !v.is_empty())
                .collect();
            ips.extend(external);
            if ips.is_empty() { "<pending>".into() } else { ips.join(",") }
        }
        "ExternalName" => s(&svc["spec"]["externalName"]).to_string(),
        _ => "<unknown>".into(),
    }
}

fn print_service(svc: &Value, now: Timestamp) -> Row {
    let spec = &svc["spec"];
    let cluster_ip = arr(&spec["clusterIPs"]).first().map(s).or(spec["clusterIP"].as_str()).unwrap_or("");
    let ports = arr(&spec["ports"])
        .iter()
        .map(|p| {
            let protocol = if s(&p["protocol"]).is_empty() { "TCP" } else { s(&p["protocol"]) };
            match int(&p["nodePort"]) {
                0 => format!("{}/{protocol}", int(&p["port"])),
                node_port => format!("{}:{node_port}/{protocol}", int(&p["port"])),
            }
        })
        .collect::<Vec<_>>()
        .join(",");
    vec![
        name(svc),
        json!(s(&spec["type"])),
        json!(or_none(cluster_ip)),
        json!(service_external_ip(svc)),
        json!(or_none(&ports)),
        age(svc, now),
        json!(format_labels(&spec["selector"])),
    ]
    .into()
}

fn map_len(v: &Value) -> usize {
    v.as_object().map(|m| m.len()).unwrap_or(0)
}

const CONFIGMAP_COLUMNS: &[Column] =
    &[NAME, Column("Data", "string", "", 0, "Data contains the configuration data."), AGE];

fn print_configmap(cm: &Value, now: Timestamp) -> Row {
    vec![name(cm), json!(map_len(&cm["data"]) + map_len(&cm["binaryData"])), age(cm, now)].into()
}

const SECRET_COLUMNS: &[Column] = &[
    NAME,
    Column("Type", "string", "", 0, "Used to facilitate programmatic handling of secret data."),
    Column("Data", "string", "", 0, "Data contains the secret data."),
    AGE,
];

fn print_secret(secret: &Value, now: Timestamp) -> Row {
    let kind = if s(&secret["type"]).is_empty() { "Opaque" } else { s(&secret["type"]) };
    vec![name(secret), json!(kind), json!(map_len(&secret["data"])), age(secret, now)].into()
}

// ---- Events ----

const EVENT_COLUMNS: &[Column] = &[
    Column("Last Seen", "string", "", 0, "The time at which the most recent occurrence of this event was recorded."),
    Column("Type", "string", "", 0, "Type of this event (Normal, Warning), new types could be added in the future"),
    Column(
        "Reason",
        "string",
        "",
        0,
        "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
    ),
    Column("Object", "string", "", 0, "The object that this event is about."),
    Column(
        "Subobject",
        "string",
        "",
        1,
        "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement.",
    ),
    Column(
        "Source",
        "string",
        "",
        1,
        "The component reporting this event. Should be a short machine understandable string.",
    ),
    Column("Message", "string", "", 0, "A human-readable description of the status of this operation."),
    Column("First Seen", "string", "", 1, "The time at which the event was first recorded."),
    Column("Count", "string", "", 1, "The number of times this event has occurred."),
    Column("Name", "string", "name", 1, "Name must be unique within a namespace."),
];

fn print_event(ev: &Value, now: Timestamp) -> Row {
    let nonempty = |v: &Value| v.as_str().filter(|t| !t.is_empty()).map(String::from);
    let first = nonempty(&ev["firstTimestamp"]).or_else(|| nonempty(&ev["eventTime"]));
    let first_seen = since(first.as_deref(), now);
    let mut last_seen = match nonempty(&ev["lastTimestamp"]) {
        Some(t) => since(Some(&t), now),
        None => first_seen.clone(),
    };
    let mut count = int(&ev["count"]);
    if ev["series"].is_object() {
        last_seen = since(ev["series"]["lastObservedTime"].as_str(), now);
        count = int(&ev["series"]["count"]);
    } else if count == 0 {
        count = 1;
    }
    let involved = &ev["involvedObject"];
    let target = if s(&involved["name"]).is_empty() {
        s(&involved["kind"]).to_lowercase()
    } else {
        format!("{}/{}", s(&involved["kind"]).to_lowercase(), s(&involved["name"]))
    };
    let component =
        nonempty(&ev["source"]["component"]).or_else(|| nonempty(&ev["reportingComponent"])).unwrap_or_default();
    let instance = nonempty(&ev["source"]["host"]).or_else(|| nonempty(&ev["reportingInstance"])).unwrap_or_default();
    let source = if instance.is_empty() { component } else { format!("{component}, {instance}") };
    vec![
        json!(last_seen),
        json!(s(&ev["type"])),
        json!(s(&ev["reason"])),
        json!(target),
        json!(s(&involved["fieldPath"])),
        json!(source),
        json!(s(&ev["message"]).trim()),
        json!(first_seen),
        json!(count),
        name(ev),
    ]
    .into()
}

// ---- Workloads ----

fn containers_and_images(pod_spec: &Value) -> (Value, Value) {
    let containers = arr(&pod_spec["containers"]);
    let names = containers.iter().map(|c| s(&c["name"])).collect::<Vec<_>>().join(",");
    let images = containers.iter().map(|c| s(&c["image"])).collect::<Vec<_>>().join(",");
    (json!(names), json!(images))
}

/// `metav1.FormatLabelSelector`: `app=web,tier in (a,b),!legacy`, or `<none>`.
pub(crate) fn format_label_selector(selector: &Value) -> String {
    if !selector.is_object() {
        return "<none>".into();
    }
    let mut parts: Vec<String> = Vec::new();
    if let Some(labels) = selector["matchLabels"].as_object() {
        let sorted: BTreeMap<&String, &Value> = labels.iter().collect();
        parts.extend(sorted.into_iter().map(|(k, v)| format!("{k}={}", s(v))));
    }
    for expr in arr(&selector["matchExpressions"]) {
        let key = s(&expr["key"]);
        let values = arr(&expr["values"]).iter().map(s).collect::<Vec<_>>().join(",");
        parts.push(match s(&expr["operator"]) {
            "In" => format!("{key} in ({values})"),
            "NotIn" => format!("{key} notin ({values})"),
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            other => format!("{key} {other} ({values})"),
        });
    }
    if parts.is_empty() { "<none>".into() } else { parts.join(",") }
}

const DEPLOYMENT_COLUMNS: &[Column] = &[
    NAME,
    Column("Ready", "string", "", 0, "Number of the pod with ready state"),
    Column(
        "Up-to-date",
        "integer",
        "",
        0,
        "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
    ),
    Column(
        "Available",
        "integer",
        "",
        0,
        "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
    ),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

fn replicas(spec: &Value) -> i64 {
    spec["replicas"].as_i64().unwrap_or(1)
}

fn print_deployment(d: &Value, now: Timestamp) -> Row {
    let (names, images) = containers_and_images(&d["spec"]["template"]["spec"]);
    let status = &d["status"];
    vec![
        name(d),
        json!(format!("{}/{}", int(&status["readyReplicas"]), replicas(&d["spec"]))),
        json!(int(&status["updatedReplicas"])),
        json!(int(&status["availableReplicas"])),
        age(d, now),
        names,
        images,
        json!(format_label_selector(&d["spec"]["selector"])),
    ]
    .into()
}

const REPLICASET_COLUMNS: &[Column] = &[
    NAME,
    Column("Desired", "integer", "", 0, "Replicas is the number of desired replicas."),
    Column("Current", "integer", "", 0, "Replicas is the most recently observed number of replicas."),
    Column("Ready", "integer", "", 0, "The number of ready replicas for this replica set."),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

fn print_replicaset(rs: &Value, now: Timestamp) -> Row {
    let (names, images) = containers_and_images(&rs["spec"]["template"]["spec"]);
    let status = &rs["status"];
    vec![
        name(rs),
        json!(replicas(&rs["spec"])),
        json!(int(&status["replicas"])),
        json!(int(&status["readyReplicas"])),
        age(rs, now),
        names,
        images,
        json!(format_label_selector(&rs["spec"]["selector"])),
    ]
    .into()
}

const JOB_COLUMNS: &[Column] = &[
    NAME,
    Column("Status", "string", "", 0, "Status of the job."),
    Column(
        "Completions",
        "string",
        "",
        0,
        "The desired number of successfully finished pods the job should be run with.",
    ),
    Column("Duration", "string", "", 0, "Time required to complete the job."),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

fn print_job(job: &Value, now: Timestamp) -> Row {
    let spec = &job["spec"];
    let status = &job["status"];
    let succeeded = int(&status["succeeded"]);
    let completions = match spec["completions"].as_i64() {
        Some(c) => format!("{succeeded}/{c}"),
        None => match spec["parallelism"].as_i64().unwrap_or(0) {
            p if p > 1 => format!("{succeeded}/1 of {p}"),
            _ => format!("{succeeded}/1"),
        },
    };
    let time = |v: &Value| v.as_str().and_then(|t| t.parse::<Timestamp>().ok());
    let duration = match (time(&status["startTime"]), time(&status["completionTime"])) {
        (None, _) => String::new(),
        (Some(start), None) => human_duration(now.duration_since(start).as_secs()),
        (Some(start), Some(end)) => human_duration(end.duration_since(start).as_secs()),
    };
    let conditions = &status["conditions"];
    let job_status = if has_true_condition(conditions, "Complete") {
        "Complete"
    } else if has_true_condition(conditions, "Failed") {
        "Failed"
    } else if job["metadata"]["deletionTimestamp"].is_string() {
        "Terminating"
    } else if has_true_condition(conditions, "Suspended") {
        "Suspended"
    } else if has_true_condition(conditions, "FailureTarget") {
        "FailureTarget"
    } else if has_true_condition(conditions, "SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    };
    let (names, images) = containers_and_images(&spec["template"]["spec"]);
    vec![
        name(job),
        json!(job_status),
        json!(completions),
        json!(duration),
        age(job, now),
        names,
        images,
        json!(format_label_selector(&spec["selector"])),
    ]
    .into()
}

const CRONJOB_COLUMNS: &[Column] = &[
    NAME,
    Column("Schedule", "string", "", 0, "The schedule in Cron format, see https://en.wikipedia.org/wiki/Cron."),
    Column(
        "Timezone",
        "string",
        "",
        0,
        "The time zone name for the given schedule, see https://en.wikipedia.org/wiki/List_of_tz_database_time_zones.",
    ),
    Column(
        "Suspend",
        "boolean",
        "",
        0,
        "This flag tells the controller to suspend subsequent executions, it does not apply to already started executions.",
    ),
    Column("Active", "integer", "", 0, "A list of pointers to currently running jobs."),
    Column("Last Schedule", "string", "", 0, "Information when was the last time the job was successfully scheduled."),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

fn print_cronjob(cj: &Value, now: Timestamp) -> Row {
    let spec = &cj["spec"];
    let suspend = match spec["suspend"].as_bool() {
        Some(true) => "True",
        Some(false) => "False",
        None => "<unset>",
    };
    let last = match cj["status"]["lastScheduleTime"].as_str() {
        Some(t) => since(Some(t), now),
        None => "<none>".into(),
    };
    let job_spec = &spec["jobTemplate"]["spec"];
    let (names, images) = containers_and_images(&job_spec["template"]["spec"]);
    vec![
        name(cj),
        json!(s(&spec["schedule"])),
        json!(or_none(s(&spec["timeZone"]))),
        json!(suspend),
        json!(arr(&cj["status"]["active"]).len()),
        json!(last),
        age(cj, now),
        names,
        images,
        json!(format_label_selector(&job_spec["selector"])),
    ]
    .into()
}

// ---- More workloads, networking and storage ----

const DAEMONSET_COLUMNS: &[Column] = &[
    NAME,
    Column("Desired", "integer", "", 0, "The total number of nodes that should be running the daemon pod."),
    Column(
        "Current",
        "integer",
        "",
        0,
        "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod.",
    ),
    Column(
        "Ready",
        "integer",
        "",
        0,
        "numberReady is the number of nodes that should be running the daemon pod and have one or more of the daemon pod running with a Ready Condition.",
    ),
    Column("Up-to-date", "integer", "", 0, "The total number of nodes that are running updated daemon pod"),
    Column(
        "Available",
        "integer",
        "",
        0,
        "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available (ready for at least spec.minReadySeconds)",
    ),
    Column(
        "Node Selector",
        "string",
        "",
        0,
        "NodeSelector is a selector which must be true for the pod to fit on a node.",
    ),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

fn print_daemonset(ds: &Value, now: Timestamp) -> Row {
    let status = &ds["status"];
    let pod_spec = &ds["spec"]["template"]["spec"];
    let (names, images) = containers_and_images(pod_spec);
    vec![
        name(ds),
        json!(int(&status["desiredNumberScheduled"])),
        json!(int(&status["currentNumberScheduled"])),
        json!(int(&status["numberReady"])),
        json!(int(&status["updatedNumberScheduled"])),
        json!(int(&status["numberAvailable"])),
        json!(format_labels(&pod_spec["nodeSelector"])),
        age(ds, now),
        names,
        images,
        json!(format_label_selector(&ds["spec"]["selector"])),
    ]
    .into()
}

const STATEFULSET_COLUMNS: &[Column] =
    &[NAME, Column("Ready", "string", "", 0, "Number of the pod with ready state"), AGE, CONTAINERS, IMAGES];

fn print_statefulset(sts: &Value, now: Timestamp) -> Row {
    let (names, images) = containers_and_images(&sts["spec"]["template"]["spec"]);
    let ready = format!("{}/{}", int(&sts["status"]["readyReplicas"]), replicas(&sts["spec"]));
    vec![name(sts), json!(ready), age(sts, now), names, images].into()
}

/// The first three endpoints, then how many more (kubectl's `formatEndpoints`).
fn first_three(list: Vec<String>, count: usize, none: &str) -> String {
    if count == 0 {
        return none.into();
    }
    let shown = list.into_iter().take(3).collect::<Vec<_>>().join(",");
    if count > 3 { format!("{shown} + {} more...", count - 3) } else { shown }
}

const ENDPOINTS_COLUMNS: &[Column] = &[NAME, Column("Endpoints", "string", "", 0, "Endpoints of the service"), AGE];

fn print_endpoints(ep: &Value, now: Timestamp) -> Row {
    let mut list = Vec::new();
    for subset in arr(&ep["subsets"]) {
        let addresses = arr(&subset["addresses"]);
        let ports = arr(&subset["ports"]);
        if ports.is_empty() {
            list.extend(addresses.iter().map(|a| s(&a["ip"]).to_string()));
        } else {
            for port in ports {
                for a in addresses {
                    let ip = s(&a["ip"]);
                    let ip = if ip.contains(':') { format!("[{ip}]") } else { ip.to_string() };
                    list.push(format!("{ip}:{}", int(&port["port"])));
                }
            }
        }
    }
    let count = list.len();
    vec![name(ep), json!(first_three(list, count, "<none>")), age(ep, now)].into()
}

const SERVICEACCOUNT_COLUMNS: &[Column] = &[
    NAME,
    Column(
        "Secrets",
        "string",
        "",
        0,
        "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use.",
    ),
    AGE,
];

fn print_serviceaccount(sa: &Value, now: Timestamp) -> Row {
    vec![name(sa), json!(arr(&sa["secrets"]).len()), age(sa, now)].into()
}

fn access_modes(modes: &Value) -> String {
    let mut short: Vec<&str> = Vec::new();
    for (mode, abbreviation) in
        [("ReadWriteOnce", "RWO"), ("ReadOnlyMany", "ROX"), ("ReadWriteMany", "RWX"), ("ReadWriteOncePod", "RWOP")]
    {
        if arr(modes).iter().any(|m| m == mode) {
            short.push(abbreviation);
        }
    }
    short.join(",")
}

fn or_unset(v: &Value) -> String {
    if s(v).is_empty() { "<unset>".into() } else { s(v).to_string() }
}

const PVC_COLUMNS: &[Column] = &[
    NAME,
    Column("Status", "string", "", 0, "phase represents the current phase of PersistentVolumeClaim."),
    Column(
        "Volume",
        "string",
        "",
        0,
        "volumeName is the binding reference to the PersistentVolume backing this claim.",
    ),
    Column("Capacity", "string", "", 0, "capacity represents the actual resources of the underlying volume."),
    Column("Access Modes", "string", "", 0, "accessModes contains the desired access modes the volume should have."),
    Column("StorageClass", "string", "", 0, "storageClassName is the name of the StorageClass required by the claim."),
    Column(
        "VolumeAttributesClass",
        "string",
        "",
        0,
        "volumeAttributesClassName may be used to set the VolumeAttributesClass used by this claim.",
    ),
    AGE,
    Column("VolumeMode", "string", "", 1, "volumeMode defines what type of volume is required by the claim."),
];

fn print_pvc(pvc: &Value, now: Timestamp) -> Row {
    let spec = &pvc["spec"];
    let status = &pvc["status"];
    let phase = if pvc["metadata"]["deletionTimestamp"].is_string() { "Terminating" } else { s(&status["phase"]) };
    let bound = !s(&spec["volumeName"]).is_empty();
    let capacity = if bound { s(&status["capacity"]["storage"]) } else { "" };
    let modes = if bound { access_modes(&status["accessModes"]) } else { String::new() };
    vec![
        name(pvc),
        json!(phase),
        json!(s(&spec["volumeName"])),
        json!(capacity),
        json!(modes),
        json!(s(&spec["storageClassName"])),
        json!(or_unset(&spec["volumeAttributesClassName"])),
        age(pvc, now),
        json!(if s(&spec["volumeMode"]).is_empty() { "<unset>" } else { s(&spec["volumeMode"]) }),
    ]
    .into()
}

const PV_COLUMNS: &[Column] = &[
    NAME,
    Column(
        "Capacity",
        "string",
        "",
        0,
        "capacity is the description of the persistent volume's resources and capacity.",
    ),
    Column("Access Modes", "string", "", 0, "accessModes contains all ways the volume can be mounted."),
    Column(
        "Reclaim Policy",
        "string",
        "",
        0,
        "persistentVolumeReclaimPolicy defines what happens to a persistent volume when released from its claim.",
    ),
    Column(
        "Status",
        "string",
        "",
        0,
        "phase indicates if a volume is available, bound to a claim, or released by a claim.",
    ),
    Column(
        "Claim",
        "string",
        "",
        0,
        "claimRef is part of a bi-directional binding between PersistentVolume and PersistentVolumeClaim.",
    ),
    Column(
        "StorageClass",
        "string",
        "",
        0,
        "storageClassName is the name of StorageClass to which this persistent volume belongs.",
    ),
    Column(
        "VolumeAttributesClass",
        "string",
        "",
        0,
        "Name of VolumeAttributesClass to which this persistent volume belongs.",
    ),
    Column(
        "Reason",
        "string",
        "",
        0,
        "reason is a brief CamelCase string that describes any failure and is meant for machine parsing and tidy display in the CLI.",
    ),
    AGE,
    Column(
        "VolumeMode",
        "string",
        "",
        1,
        "volumeMode defines if a volume is intended to be used with a formatted filesystem or to remain in raw block state.",
    ),
];

fn print_pv(pv: &Value, now: Timestamp) -> Row {
    let spec = &pv["spec"];
    let claim = &spec["claimRef"];
    let claim =
        if claim.is_object() { format!("{}/{}", s(&claim["namespace"]), s(&claim["name"])) } else { String::new() };
    let phase = if pv["metadata"]["deletionTimestamp"].is_string() { "Terminating" } else { s(&pv["status"]["phase"]) };
    vec![
        name(pv),
        json!(s(&spec["capacity"]["storage"])),
        json!(access_modes(&spec["accessModes"])),
        json!(s(&spec["persistentVolumeReclaimPolicy"])),
        json!(phase),
        json!(claim),
        json!(s(&spec["storageClassName"])),
        json!(or_unset(&spec["volumeAttributesClassName"])),
        json!(s(&pv["status"]["reason"])),
        age(pv, now),
        json!(if s(&spec["volumeMode"]).is_empty() { "<unset>" } else { s(&spec["volumeMode"]) }),
    ]
    .into()
}

const STORAGECLASS_COLUMNS: &[Column] = &[
    NAME,
    Column("Provisioner", "string", "", 0, "provisioner indicates the type of the provisioner."),
    Column(
        "ReclaimPolicy",
        "string",
        "",
        0,
        "reclaimPolicy controls the reclaimPolicy for dynamically provisioned PersistentVolumes of this storage class.",
    ),
    Column(
        "VolumeBindingMode",
        "string",
        "",
        0,
        "volumeBindingMode indicates how PersistentVolumeClaims should be provisioned and bound.",
    ),
    Column(
        "AllowVolumeExpansion",
        "string",
        "",
        0,
        "allowVolumeExpansion shows whether the storage class allow volume expand.",
    ),
    AGE,
];

fn print_storageclass(sc: &Value, now: Timestamp) -> Row {
    let annotations = &sc["metadata"]["annotations"];
    let default = ["storageclass.kubernetes.io/is-default-class", "storageclass.beta.kubernetes.io/is-default-class"]
        .iter()
        .any(|k| annotations[*k] == "true");
    let shown = if default {
        format!("{} (default)", s(&sc["metadata"]["name"]))
    } else {
        s(&sc["metadata"]["name"]).to_string()
    };
    let or = |v: &Value, d: &'static str| if s(v).is_empty() { d.to_string() } else { s(v).to_string() };
    vec![
        json!(shown),
        json!(s(&sc["provisioner"])),
        json!(or(&sc["reclaimPolicy"], "Delete")),
        json!(or(&sc["volumeBindingMode"], "Immediate")),
        json!(sc["allowVolumeExpansion"].as_bool().unwrap_or(false)),
        age(sc, now),
    ]
    .into()
}

const LEASE_COLUMNS: &[Column] = &[NAME, Column("Holder", "string", "", 0, "The holder of the lease"), AGE];

fn print_lease(lease: &Value, now: Timestamp) -> Row {
    vec![name(lease), json!(s(&lease["spec"]["holderIdentity"])), age(lease, now)].into()
}

const ENDPOINTSLICE_COLUMNS: &[Column] = &[
    NAME,
    Column("AddressType", "string", "", 0, "addressType specifies the type of address carried by this EndpointSlice."),
    Column(
        "Ports",
        "string",
        "",
        0,
        "ports specifies the list of network ports exposed by each endpoint in this slice.",
    ),
    Column("Endpoints", "string", "", 0, "endpoints is a list of unique endpoints in this slice."),
    AGE,
];

fn print_endpointslice(slice: &Value, now: Timestamp) -> Row {
    let ports: Vec<String> = arr(&slice["ports"])
        .iter()
        .map(|p| p["port"].as_i64().map(|n| n.to_string()).unwrap_or_else(|| "<unset>".into()))
        .collect();
    let ports = if ports.is_empty() { "<unset>".to_string() } else { ports.join(",") };
    let addresses: Vec<String> =
        arr(&slice["endpoints"]).iter().flat_map(|e| arr(&e["addresses"]).iter().map(|a| s(a).to_string())).collect();
    let count = addresses.len();
    vec![
        name(slice),
        json!(s(&slice["addressType"])),
        json!(ports),
        json!(first_three(addresses, count, "<unset>")),
        age(slice, now),
    ]
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2026-01-01T12:00:00Z".parse().unwrap()
    }

    fn pod(status: Value) -> Value {
        json!({
            "metadata": {"name": "web", "creationTimestamp": "2026-01-01T11:50:00Z"},
            "spec": {"containers": [{"name": "app"}]},
            "status": status,
        })
    }

    fn status_of(pod: &Value) -> String {
        pod_status(pod, now()).1
    }

    #[test]
    fn pod_status_column_follows_kubectl_print_pod() {
        assert_eq!(status_of(&pod(json!({"phase": "Pending"}))), "Pending");
        let creating = pod(json!({"phase": "Pending", "containerStatuses": [
            {"name": "app", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}]}));
        assert_eq!(status_of(&creating), "ContainerCreating");
        let pull = pod(json!({"phase": "Pending", "containerStatuses": [
            {"name": "app", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ErrImagePull", "message": "x"}}}]}));
        assert_eq!(status_of(&pull), "ErrImagePull");
        let running = pod(
            json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}], "containerStatuses": [
            {"name": "app", "ready": true, "restartCount": 0, "state": {"running": {"startedAt": "2026-01-01T11:51:00Z"}}}]}),
        );
        assert_eq!(pod_status(&running, now()), ("1/1".into(), "Running".into(), "0".into()));
        let completed = pod(json!({"phase": "Succeeded", "containerStatuses": [
            {"name": "app", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}));
        assert_eq!(status_of(&completed), "Completed");
        let failed = pod(json!({"phase": "Failed", "containerStatuses": [
            {"name": "app", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}]}));
        assert_eq!(status_of(&failed), "Error");
        let no_reason = pod(json!({"phase": "Failed", "containerStatuses": [
            {"name": "app", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 3}}}]}));
        assert_eq!(status_of(&no_reason), "ExitCode:3");
    }

    #[test]
    fn crash_looping_pod_shows_the_restart_count_and_when_it_last_restarted() {
        let crash = pod(json!({"phase": "Running", "containerStatuses": [
            {"name": "app", "ready": false, "restartCount": 4,
             "state": {"waiting": {"reason": "CrashLoopBackOff"}},
             "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2026-01-01T11:59:55Z"}}}]}));
        assert_eq!(pod_status(&crash, now()), ("0/1".into(), "CrashLoopBackOff".into(), "4 (5s ago)".into()));
    }

    #[test]
    fn deletion_timestamp_makes_a_running_pod_terminating_but_not_a_finished_one() {
        let mut running = pod(json!({"phase": "Running", "containerStatuses": [
            {"name": "app", "ready": true, "restartCount": 0, "state": {"running": {}}}]}));
        running["metadata"]["deletionTimestamp"] = json!("2026-01-01T11:59:00Z");
        assert_eq!(status_of(&running), "Terminating");
        let mut done = pod(json!({"phase": "Succeeded", "containerStatuses": [
            {"name": "app", "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}));
        done["metadata"]["deletionTimestamp"] = json!("2026-01-01T11:59:00Z");
        assert_eq!(status_of(&done), "Completed");
    }

    #[test]
    fn init_containers_report_progress_and_failures() {
        let mut p = pod(json!({"phase": "Pending", "initContainerStatuses": [
            {"name": "setup", "restartCount": 0, "state": {"running": {}}}]}));
        p["spec"]["initContainers"] = json!([{"name": "setup"}, {"name": "migrate"}]);
        assert_eq!(status_of(&p), "Init:0/2");
        p["status"]["initContainerStatuses"] = json!([
            {"name": "setup", "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
            {"name": "migrate", "restartCount": 2, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]);
        assert_eq!(status_of(&p), "Init:CrashLoopBackOff");
        p["status"]["initContainerStatuses"][1]["state"] = json!({"terminated": {"exitCode": 2}});
        assert_eq!(status_of(&p), "Init:ExitCode:2");
    }

    #[test]
    fn the_first_container_reason_wins_because_it_is_looked_at_last() {
        let mut p = pod(json!({"phase": "Pending", "containerStatuses": [
            {"name": "a", "restartCount": 0, "state": {"waiting": {"reason": "ImagePullBackOff"}}},
            {"name": "b", "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}]}));
        p["spec"]["containers"] = json!([{"name": "a"}, {"name": "b"}]);
        assert_eq!(pod_status(&p, now()), ("0/2".into(), "ImagePullBackOff".into(), "0".into()));
    }

    #[test]
    fn pod_row_has_wide_cells_with_none_placeholders() {
        let row = print_pod(&pod(json!({"phase": "Pending"})), now());
        assert_eq!(row.cells.len(), POD_COLUMNS.len());
        assert_eq!(row.cells[4], "10m");
        assert_eq!(row.cells[5], "<none>");
        assert_eq!(row.cells[8], "<none>");
    }

    #[test]
    fn service_row_prints_ports_and_selector_like_kubectl() {
        let svc = json!({"metadata": {"name": "web", "creationTimestamp": "2026-01-01T10:00:00Z"},
            "spec": {"type": "NodePort", "clusterIP": "10.43.0.5", "clusterIPs": ["10.43.0.5"],
                     "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}],
                     "selector": {"tier": "web", "app": "x"}}});
        let row = print_service(&svc, now());
        assert_eq!(
            row.cells,
            vec![
                json!("web"),
                json!("NodePort"),
                json!("10.43.0.5"),
                json!("<none>"),
                json!("80:30080/TCP,53/UDP"),
                json!("120m"),
                json!("app=x,tier=web")
            ]
        );
    }

    #[test]
    fn node_row_shows_readiness_roles_and_addresses() {
        let node = json!({"metadata": {"name": "n1", "creationTimestamp": "2026-01-01T11:00:00Z",
                "labels": {"node-role.kubernetes.io/control-plane": "", "node-role.kubernetes.io/master": "true"}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                       "addresses": [{"type": "InternalIP", "address": "192.168.1.2"}],
                       "nodeInfo": {"kubeletVersion": "v1.33.0+skiff"}}});
        let row = print_node(&node, now());
        assert_eq!(row.cells[1], "Ready,SchedulingDisabled");
        assert_eq!(row.cells[2], "control-plane,master");
        assert_eq!(row.cells[5], "192.168.1.2");
        assert_eq!(row.cells[6], "<none>");
        assert_eq!(row.cells[7], "<unknown>");
    }

    #[test]
    fn event_row_names_the_involved_object() {
        let ev = json!({"metadata": {"name": "web.1"}, "type": "Normal", "reason": "Scheduled",
            "involvedObject": {"kind": "Pod", "name": "web"}, "message": "assigned\n",
            "firstTimestamp": "2026-01-01T11:59:00Z", "lastTimestamp": "2026-01-01T11:59:30Z", "count": 2,
            "source": {"component": "default-scheduler"}});
        let row = print_event(&ev, now());
        assert_eq!(&row.cells[..4], &[json!("30s"), json!("Normal"), json!("Scheduled"), json!("pod/web")]);
        assert_eq!(row.cells[6], "assigned");
        assert_eq!(row.cells[7], "60s");
        assert_eq!(row.cells[8], 2);
    }

    #[test]
    fn workload_rows_count_replicas_and_format_selectors() {
        let d = json!({"metadata": {"name": "web", "creationTimestamp": "2026-01-01T11:00:00Z"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]},
                "template": {"spec": {"containers": [{"name": "app", "image": "nginx:1.27"}, {"name": "log", "image": "busybox"}]}}},
            "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}});
        let row = print_deployment(&d, now());
        assert_eq!(row.cells[1..4], [json!("2/3"), json!(3), json!(2)]);
        assert_eq!(row.cells[5..], [json!("app,log"), json!("nginx:1.27,busybox"), json!("app=web,tier in (a,b)")]);
        let job = json!({"metadata": {"name": "pi"}, "spec": {"completions": 1},
            "status": {"succeeded": 1, "startTime": "2026-01-01T11:00:00Z", "completionTime": "2026-01-01T11:00:42Z",
                       "conditions": [{"type": "Complete", "status": "True"}]}});
        let row = print_job(&job, now());
        assert_eq!(row.cells[1..4], [json!("Complete"), json!("1/1"), json!("42s")]);
    }

    #[test]
    fn endpoints_show_three_addresses_then_a_count() {
        let ep = json!({"metadata": {"name": "web"}, "subsets": [{
            "addresses": [{"ip": "10.42.0.1"}, {"ip": "10.42.0.2"}, {"ip": "10.42.0.3"}, {"ip": "10.42.0.4"}],
            "ports": [{"port": 80}]}]});
        let row = print_endpoints(&ep, now());
        assert_eq!(row.cells[1], "10.42.0.1:80,10.42.0.2:80,10.42.0.3:80 + 1 more...");
        let empty = print_endpoints(&json!({"metadata": {"name": "x"}}), now());
        assert_eq!(empty.cells[1], "<none>");
    }

    #[test]
    fn storage_rows_abbreviate_access_modes_and_mark_the_default_class() {
        let pvc = json!({"metadata": {"name": "data"}, "spec": {"volumeName": "pv-1", "storageClassName": "local-path"},
            "status": {"phase": "Bound", "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce", "ReadWriteOncePod"]}});
        let row = print_pvc(&pvc, now());
        assert_eq!(
            row.cells[1..7],
            [json!("Bound"), json!("pv-1"), json!("1Gi"), json!("RWO,RWOP"), json!("local-path"), json!("<unset>")]
        );
        let sc = json!({"metadata": {"name": "local-path", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": "rancher.io/local-path", "volumeBindingMode": "WaitForFirstConsumer"});
        let row = print_storageclass(&sc, now());
        assert_eq!(
            row.cells[..5],
            [
                json!("local-path (default)"),
                json!("rancher.io/local-path"),
                json!("Delete"),
                json!("WaitForFirstConsumer"),
                json!(false)
            ]
        );
    }

    #[test]
    fn daemonset_and_statefulset_rows_count_pods() {
        let ds = json!({"metadata": {"name": "agent"}, "spec": {"template": {"spec": {"nodeSelector": {"os": "linux"}, "containers": []}}},
            "status": {"desiredNumberScheduled": 1, "currentNumberScheduled": 1, "numberReady": 1, "updatedNumberScheduled": 1, "numberAvailable": 0}});
        let row = print_daemonset(&ds, now());
        assert_eq!(row.cells[1..7], [json!(1), json!(1), json!(1), json!(1), json!(0), json!("os=linux")]);
        let sts = json!({"metadata": {"name": "db"}, "spec": {"replicas": 3}, "status": {"readyReplicas": 2}});
        assert_eq!(print_statefulset(&sts, now()).cells[1], "2/3");
    }
}
