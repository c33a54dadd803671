//! The scheduler's predicates, pure: does a pod fit a node, given the pods already on it?
//! Reasons and the summary message are spelled as kube-scheduler spells them, because
//! `kubectl describe pod` shows them to the user.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeSelectorRequirement, Pod, Taint, Toleration};
use skiff_api::ParsedQuantity;

/// What a pod asks for, or what a node offers, in the units the scheduler compares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    pub pods: i64,
}

fn quantity(
    map: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
    key: &str,
    milli: bool,
) -> i64 {
    map.and_then(|m| m.get(key))
        .and_then(|q| ParsedQuantity::parse(&q.0).ok())
        .map(|q| if milli { q.milli_value() } else { q.value() })
        .unwrap_or(0)
}

/// The pod's requests (a container with limits but no requests requests its limits, as API
/// defaulting makes it). Init containers run one at a time, so they count by their maximum.
pub fn pod_requests(pod: &Pod) -> Resources {
    let Some(spec) = &pod.spec else { return Resources { pods: 1, ..Default::default() } };
    let container = |c: &k8s_openapi::api::core::v1::Container| {
        let res = c.resources.as_ref();
        let get = |key: &str, milli: bool| {
            let req = quantity(res.and_then(|r| r.requests.as_ref()), key, milli);
            if req != 0 { req } else { quantity(res.and_then(|r| r.limits.as_ref()), key, milli) }
        };
        Resources {
            milli_cpu: get("cpu", true),
            memory: get("memory", false),
            ephemeral_storage: get("ephemeral-storage", false),
            pods: 0,
        }
    };
    let mut sum = Resources { pods: 1, ..Default::default() };
    for c in &spec.containers {
        let r = container(c);
        sum.milli_cpu += r.milli_cpu;
        sum.memory += r.memory;
        sum.ephemeral_storage += r.ephemeral_storage;
    }
    for c in spec.init_containers.iter().flatten() {
        let r = container(c);
        sum.milli_cpu = sum.milli_cpu.max(r.milli_cpu);
        sum.memory = sum.memory.max(r.memory);
        sum.ephemeral_storage = sum.ephemeral_storage.max(r.ephemeral_storage);
    }
    let overhead = spec.overhead.as_ref();
    sum.milli_cpu += quantity(overhead, "cpu", true);
    sum.memory += quantity(overhead, "memory", false);
    sum
}

/// The node's allocatable resources (capacity when allocatable is not reported).
pub fn allocatable(node: &Node) -> Resources {
    let status = node.status.as_ref();
    let map = status.and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()));
    Resources {
        milli_cpu: quantity(map, "cpu", true),
        memory: quantity(map, "memory", false),
        ephemeral_storage: quantity(map, "ephemeral-storage", false),
        pods: quantity(map, "pods", false),
    }
}

/// True for pods that hold resources on their node: bound, not finished.
pub fn holds_resources(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded" | "Failed"))
}

/// Why one node was rejected. The `Display` form is the phrase kube-scheduler counts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    Unschedulable,
    NotReady,
    SelectorMismatch,
    UntoleratedTaint { key: String, value: String },
    Insufficient(&'static str),
    TooManyPods,
    PortsInUse,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unschedulable => f.write_str("node(s) were unschedulable"),
            Self::NotReady => f.write_str("node(s) had untolerated taint {node.kubernetes.io/not-ready: }"),
            Self::SelectorMismatch => f.write_str("node(s) didn't match Pod's node affinity/selector"),
            Self::UntoleratedTaint { key, value } => write!(f, "node(s) had untolerated taint {{{key}: {value}}}"),
            Self::Insufficient(resource) => write!(f, "Insufficient {resource}"),
            Self::TooManyPods => f.write_str("Too many pods"),
            Self::PortsInUse => f.write_str("node(s) didn't have free ports for the requested pod ports"),
        }
    }
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

fn requirement_matches(req: &NodeSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let value = labels.get(&req.key);
    let values = req.values.as_deref().unwrap_or_default();
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) =
                (value.and_then(|v| v.parse::<i64>().ok()), values.first().and_then(|b| b.parse::<i64>().ok()))
            else {
                return false;
            };
            if req.operator == "Gt" { v > bound } else { v < bound }
        }
        _ => false,
    }
}

/// `spec.nodeSelector` and required node affinity (terms ORed, expressions ANDed).
pub fn selector_matches(pod: &Pod, node: &Node) -> bool {
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let Some(spec) = &pod.spec else { return true };
    let selector_ok = spec.node_selector.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| na.required_during_scheduling_ignored_during_execution.as_ref());
    let affinity_ok = required.is_none_or(|sel| {
        sel.node_selector_terms.iter().any(|term| {
            let exprs = term.match_expressions.as_deref().unwrap_or_default();
            let fields = term.match_fields.as_deref().unwrap_or_default();
            let name = BTreeMap::from([("metadata.name".to_string(), node.metadata.name.clone().unwrap_or_default())]);
            (!exprs.is_empty() || !fields.is_empty())
                && exprs.iter().all(|r| requirement_matches(r, labels))
                && fields.iter().all(|r| requirement_matches(r, &name))
        })
    });
    selector_ok && affinity_ok
}

fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref().filter(|e| !e.is_empty()) {
        if effect != taint.effect {
            return false;
        }
    }
    let key = toleration.key.as_deref().unwrap_or_default();
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => key.is_empty() || key == taint.key,
        _ => {
            key == taint.key
                && toleration.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default()
        }
    }
}

pub fn untolerated_taint<'a>(pod: &Pod, node: &'a Node) -> Option<&'a Taint> {
    let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.as_deref()).unwrap_or_default();
    node.spec.as_ref().and_then(|s| s.taints.as_deref()).unwrap_or_default().iter().find(|taint| {
        matches!(taint.effect.as_str(), "NoSchedule" | "NoExecute") && !tolerations.iter().any(|t| tolerates(t, taint))
    })
}

/// The host ports a pod claims: (hostIP, protocol, port); an empty hostIP means all addresses.
fn host_ports(pod: &Pod) -> Vec<(String, String, i32)> {
    let Some(spec) = &pod.spec else { return Vec::new() };
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|p| *p > 0)?;
            let ip = p.host_ip.clone().filter(|ip| ip != "0.0.0.0").unwrap_or_default();
            Some((ip, p.protocol.clone().unwrap_or_else(|| "TCP".into()), port))
        })
        .collect()
}

fn ports_conflict(pod: &Pod, others: &[&Pod]) -> bool {
    let wanted = host_ports(pod);
    if wanted.is_empty() {
        return false;
    }
    others.iter().filter(|p| holds_resources(p)).flat_map(|p| host_ports(p)).any(|(ip, proto, port)| {
        wanted.iter().any(|(wip, wproto, wport)| {
            *wport == port && *wproto == proto && (wip.is_empty() || ip.is_empty() || *wip == ip)
        })
    })
}

/// Every reason `node` cannot take `pod`, given the pods already bound there (empty: it fits).
pub fn check_node(pod: &Pod, node: &Node, pods_on_node: &[&Pod]) -> Vec<Reason> {
    let mut reasons = Vec::new();
    if node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false) {
        reasons.push(Reason::Unschedulable);
    }
    if !node_ready(node) {
        reasons.push(Reason::NotReady);
    }
    if !selector_matches(pod, node) {
        reasons.push(Reason::SelectorMismatch);
    }
    if let Some(taint) = untolerated_taint(pod, node) {
        reasons
            .push(Reason::UntoleratedTaint { key: taint.key.clone(), value: taint.value.clone().unwrap_or_default() });
    }
    if ports_conflict(pod, pods_on_node) {
        reasons.push(Reason::PortsInUse);
    }
    let free = allocatable(node);
    let mut used = Resources::default();
    for p in pods_on_node.iter().filter(|p| holds_resources(p)) {
        let r = pod_requests(p);
        used.milli_cpu += r.milli_cpu;
        used.memory += r.memory;
        used.ephemeral_storage += r.ephemeral_storage;
        used.pods += 1;
    }
    let want = pod_requests(pod);
    if used.pods + 1 > free.pods {
        reasons.push(Reason::TooManyPods);
    }
    if want.milli_cpu > 0 && used.milli_cpu + want.milli_cpu > free.milli_cpu {
        reasons.push(Reason::Insufficient("cpu"));
    }
    if want.memory > 0 && used.memory + want.memory > free.memory {
        reasons.push(Reason::Insufficient("memory"));
    }
    if want.ephemeral_storage > 0 && used.ephemeral_storage + want.ephemeral_storage > free.ephemeral_storage {
        reasons.push(Reason::Insufficient("ephemeral-storage"));
    }
    reasons
}

/// The outcome of one scheduling attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Bind(String),
    /// The FailedScheduling message, as `0/1 nodes are available: 1 Insufficient memory.`
    Unschedulable(String),
}

/// Picks the node for `pod`: of those that fit, the one with the most free memory (a simple
/// LeastAllocated), ties broken by name. `pods` are all bound pods, on any node.
pub fn schedule(pod: &Pod, nodes: &[&Node], pods: &[&Pod]) -> Decision {
    if nodes.is_empty() {
        return Decision::Unschedulable("no nodes available to schedule pods".to_string());
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut best: Option<(i64, &str)> = None;
    for node in nodes {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        let on_node: Vec<&Pod> = pods
            .iter()
            .copied()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name))
            .collect();
        let reasons = check_node(pod, node, &on_node);
        if reasons.is_empty() {
            let used: i64 = on_node.iter().filter(|p| holds_resources(p)).map(|p| pod_requests(p).memory).sum();
            let free = allocatable(node).memory - used;
            if best.is_none_or(|(f, n)| free > f || (free == f && name < n)) {
                best = Some((free, name));
            }
        } else {
            for r in reasons {
                *counts.entry(r.to_string()).or_default() += 1;
            }
        }
    }
    if let Some((_, name)) = best {
        return Decision::Bind(name.to_string());
    }
    let reasons = counts.iter().map(|(r, n)| format!("{n} {r}")).collect::<Vec<_>>().join(", ");
    Decision::Unschedulable(format!("0/{} nodes are available: {reasons}.", nodes.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, cpu: &str, memory: &str, ready: bool) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "disk": "ssd"}},
            "status": {
                "allocatable": {"cpu": cpu, "memory": memory, "pods": "3", "ephemeral-storage": "10Gi"},
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]
            }
        }))
        .unwrap()
    }

    fn pod(name: &str, cpu: &str, memory: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "busybox",
                "resources": {"requests": {"cpu": cpu, "memory": memory}}}]}
        }))
        .unwrap()
    }

    fn bound(mut p: Pod, node: &str) -> Pod {
        p.spec.as_mut().unwrap().node_name = Some(node.into());
        p
    }

    #[test]
    fn pod_that_fits_is_bound_to_the_node() {
        let n = node("n1", "2", "1Gi", true);
        assert_eq!(schedule(&pod("p", "100m", "64Mi"), &[&n], &[]), Decision::Bind("n1".into()));
    }

    #[test]
    fn requests_of_bound_pods_count_against_allocatable() {
        let n = node("n1", "2", "1Gi", true);
        let a = bound(pod("a", "1", "900Mi"), "n1");
        assert_eq!(
            schedule(&pod("p", "100m", "200Mi"), &[&n], &[&a]),
            Decision::Unschedulable("0/1 nodes are available: 1 Insufficient memory.".into())
        );
        let mut done = a.clone();
        done.status = Some(serde_json::from_value(json!({"phase": "Succeeded"})).unwrap());
        assert_eq!(schedule(&pod("p", "100m", "200Mi"), &[&n], &[&done]), Decision::Bind("n1".into()));
    }

    #[test]
    fn every_failed_resource_is_counted_in_the_message() {
        let n = node("n1", "1", "1Gi", true);
        assert_eq!(
            schedule(&pod("p", "2", "2Gi"), &[&n], &[]),
            Decision::Unschedulable("0/1 nodes are available: 1 Insufficient cpu, 1 Insufficient memory.".into())
        );
    }

    #[test]
    fn limits_without_requests_count_as_requests() {
        let p: Pod = serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "resources": {"limits": {"memory": "128Mi", "cpu": "500m"}}},
            {"name": "b", "resources": {"requests": {"memory": "1G"}}}]}}))
        .unwrap();
        assert_eq!(
            pod_requests(&p),
            Resources { milli_cpu: 500, memory: 134_217_728 + 1_000_000_000, ephemeral_storage: 0, pods: 1 }
        );
    }

    #[test]
    fn node_selector_and_affinity_must_match_labels() {
        let n = node("n1", "2", "1Gi", true);
        let mut p = pod("p", "0", "0");
        p.spec.as_mut().unwrap().node_selector = Some(BTreeMap::from([("disk".into(), "hdd".into())]));
        assert_eq!(
            schedule(&p, &[&n], &[]),
            Decision::Unschedulable(
                "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.".into()
            )
        );
        p.spec.as_mut().unwrap().node_selector = Some(BTreeMap::from([("disk".into(), "ssd".into())]));
        assert!(selector_matches(&p, &n));
        let affinity = |op: &str, values: &[&str]| -> Pod {
            serde_json::from_value(
                json!({"metadata": {"name": "p"}, "spec": {"containers": [], "affinity": {"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "disk", "operator": op, "values": values}]}]}}}}}),
            )
            .unwrap()
        };
        assert!(selector_matches(&affinity("In", &["ssd", "nvme"]), &n));
        assert!(!selector_matches(&affinity("NotIn", &["ssd"]), &n));
        assert!(selector_matches(&affinity("Exists", &[]), &n));
        assert!(!selector_matches(&affinity("DoesNotExist", &[]), &n));
    }

    #[test]
    fn not_ready_nodes_and_untolerated_taints_reject_pods() {
        let n = node("n1", "2", "1Gi", false);
        assert_eq!(
            schedule(&pod("p", "0", "0"), &[&n], &[]),
            Decision::Unschedulable(
                "0/1 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }.".into()
            )
        );
        let mut tainted = node("n1", "2", "1Gi", true);
        tainted.spec = Some(
            serde_json::from_value(json!({"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}))
                .unwrap(),
        );
        let mut p = pod("p", "0", "0");
        assert_eq!(
            check_node(&p, &tainted, &[]),
            [Reason::UntoleratedTaint { key: "dedicated".into(), value: "db".into() }]
        );
        p.spec.as_mut().unwrap().tolerations = Some(vec![
            serde_json::from_value(json!({"key": "dedicated", "operator": "Equal", "value": "db"})).unwrap(),
        ]);
        assert!(check_node(&p, &tainted, &[]).is_empty());
    }

    #[test]
    fn pod_count_is_limited_by_allocatable_pods() {
        let n = node("n1", "2", "1Gi", true);
        let others: Vec<Pod> = (0..3).map(|i| bound(pod(&format!("o{i}"), "0", "0"), "n1")).collect();
        let refs: Vec<&Pod> = others.iter().collect();
        assert_eq!(
            schedule(&pod("p", "0", "0"), &[&n], &refs),
            Decision::Unschedulable("0/1 nodes are available: 1 Too many pods.".into())
        );
    }

    #[test]
    fn a_host_port_in_use_on_the_node_rejects_the_pod() {
        let n = node("n1", "2", "1Gi", true);
        let with_port = |name: &str, port: i32, ip: Option<&str>| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"nodeName": "n1", "containers": [
                {"name": "c", "ports": [{"containerPort": 80, "hostPort": port, "hostIP": ip}]}]}}))
            .unwrap()
        };
        let taken = with_port("a", 8080, None);
        assert_eq!(
            schedule(&with_port("p", 8080, Some("127.0.0.1")), &[&n], &[&taken]),
            Decision::Unschedulable(
                "0/1 nodes are available: 1 node(s) didn't have free ports for the requested pod ports.".into()
            )
        );
        assert_eq!(schedule(&with_port("p", 8081, None), &[&n], &[&taken]), Decision::Bind("n1".into()));
        let on_other_ip = with_port("b", 9090, Some("10.0.0.1"));
        assert_eq!(
            schedule(&with_port("p", 9090, Some("10.0.0.2")), &[&n], &[&on_other_ip]),
            Decision::Bind("n1".into())
        );
    }

    #[test]
    fn no_nodes_at_all_is_reported_as_such() {
        assert_eq!(
            schedule(&pod("p", "0", "0"), &[], &[]),
            Decision::Unschedulable("no nodes available to schedule pods".into())
        );
    }
}
