//! `metrics.k8s.io/v1beta1`, served in process as metrics-server serves it behind the
//! aggregator: `PodMetrics` and `NodeMetrics`, read-only, for `kubectl top`.
//!
//! The objects are joined as metrics-server joins them: the Pods (or Nodes) come from the API,
//! filtered by the request's selectors and sorted by namespace and name; each is given the usage
//! the kubelet last measured ([`ResourceMetrics`]), and one without usage is left out. A GET of a
//! pod that does not exist answers the pod's own NotFound; of one without usage, the
//! `podmetrics.metrics.k8s.io "ns/name" not found` of metrics-server.
//!
//! ```text
//! /apis/metrics.k8s.io/v1beta1/pods                              PodMetricsList, all namespaces
//! /apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods[/{name}]     PodMetricsList / PodMetrics
//! /apis/metrics.k8s.io/v1beta1/nodes[/{name}]                    NodeMetricsList / NodeMetrics
//! ```

use std::time::{Duration, SystemTime};

use hyper::header::HeaderMap;
use hyper::{Response, StatusCode};
use serde_json::{Value, json};
use skiff_api::{ApiError, ListOptions, NodeUsage, PodUsage, ResourceKind, Scope, StatusReason};

use super::State;
use super::query::Query;
use super::reply::{self, Body};
use super::route::not_found;
use super::table::{Include, TableRequest};

pub(crate) const GROUP: &str = "metrics.k8s.io";
pub(crate) const VERSION: &str = "v1beta1";
const API_VERSION: &str = "metrics.k8s.io/v1beta1";

const READ_ONLY: &[&str] = &["get", "list"];

/// The resources of the group, for discovery (never stored, so not in `skiff_api::RESOURCES`:
/// the namespace and garbage collectors would try to list and delete them).
pub(crate) static RESOURCES: &[ResourceKind] = &[
    ResourceKind {
        group: GROUP,
        version: VERSION,
        kind: "NodeMetrics",
        plural: "nodes",
        singular: "",
        scope: Scope::Cluster,
        short_names: &[],
        categories: &[],
        verbs: READ_ONLY,
        subresources: &[],
    },
    ResourceKind {
        group: GROUP,
        version: VERSION,
        kind: "PodMetrics",
        plural: "pods",
        singular: "",
        scope: Scope::Namespaced,
        short_names: &[],
        categories: &[],
        verbs: READ_ONLY,
        subresources: &[],
    },
];

/// What a metrics path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// Pods in one namespace, or all of them.
    Pods {
        namespace: Option<String>,
        name: Option<String>,
    },
    Nodes {
        name: Option<String>,
    },
}

/// The path after `/apis/metrics.k8s.io/v1beta1/`.
pub(crate) fn parse(rest: &[&str]) -> Result<Target, ApiError> {
    let name = |n: Option<&&str>| n.map(|n| n.to_string());
    match rest {
        ["pods"] => Ok(Target::Pods { namespace: None, name: None }),
        ["namespaces", ns, "pods", tail @ ..] if tail.len() <= 1 => {
            Ok(Target::Pods { namespace: Some(ns.to_string()), name: name(tail.first()) })
        }
        ["nodes", tail @ ..] if tail.len() <= 1 => Ok(Target::Nodes { name: name(tail.first()) }),
        _ => Err(not_found()),
    }
}

fn core(plural: &str) -> &'static ResourceKind {
    ResourceKind::by_plural("", "v1", plural).expect("pods and nodes are in skiff_api::RESOURCES")
}

/// metrics-server's NotFound for an object that exists but has no usage yet.
fn no_metrics(resource: &str, name: &str) -> ApiError {
    let mut err = ApiError::new(404, StatusReason::NotFound, format!("{resource}.{GROUP} \"{name}\" not found"));
    err.name = Some(name.to_string());
    err.group = Some(GROUP.to_string());
    err.kind = Some(resource.to_string());
    err
}

/// GET of a metrics path (the router answers other methods with 405).
pub(crate) async fn handle(
    state: &State,
    query: Option<&str>,
    headers: &HeaderMap,
    target: Target,
) -> Result<Response<Body>, ApiError> {
    let query = Query::parse(query);
    if query.bool("watch")? {
        return Err(ApiError::method_not_allowed("the server does not allow this method on the requested resource"));
    }
    let Some(metrics) = state.streams.get().and_then(|node| node.resource_metrics()) else {
        return Err(ApiError::new(
            503,
            StatusReason::ServiceUnavailable,
            "the server is currently unable to handle the request",
        ));
    };
    let opts = ListOptions {
        label_selector: query.string("labelSelector"),
        field_selector: query.string("fieldSelector"),
        ..ListOptions::default()
    };
    let now = SystemTime::now();
    let body = match target {
        Target::Pods { namespace, name: Some(name) } => {
            let ns = namespace.unwrap_or_default();
            let pod = state.api.get(core("pods"), Some(&ns), &name).await?;
            pod_metrics(&[pod], &metrics.pods(), now)
                .pop()
                .ok_or_else(|| no_metrics("podmetrics", &format!("{ns}/{name}")))?
        }
        Target::Pods { namespace, name: None } => {
            let mut pods = state.api.list(core("pods"), namespace.as_deref(), &opts).await?.items;
            pods.sort_by(|a, b| key(a).cmp(&key(b)));
            list("PodMetricsList", pod_metrics(&pods, &metrics.pods(), now))
        }
        Target::Nodes { name: Some(name) } => {
            let node = state.api.get(core("nodes"), None, &name).await?;
            node_metrics(&[node], metrics.node().as_ref(), now).pop().ok_or_else(|| no_metrics("nodemetrics", &name))?
        }
        Target::Nodes { name: None } => {
            let mut nodes = state.api.list(core("nodes"), None, &opts).await?.items;
            nodes.sort_by(|a, b| key(a).cmp(&key(b)));
            list("NodeMetricsList", node_metrics(&nodes, metrics.node().as_ref(), now))
        }
    };
    if let Some(request) = TableRequest::from_request(headers, query.get("includeObject"))? {
        return Ok(reply::json_for(StatusCode::OK, &table(request, body), headers));
    }
    Ok(reply::json_for(StatusCode::OK, &body, headers))
}

/// metrics-server's Table: the name, the summed usage (`cpu`, `memory`) and the window.
fn table(request: TableRequest, body: Value) -> Value {
    let items = match body.get("items") {
        Some(Value::Array(items)) => items.clone(),
        _ => vec![body],
    };
    let rows = items
        .into_iter()
        .map(|mut item| {
            let usage: Vec<&Value> = match item["containers"].as_array() {
                Some(containers) => containers.iter().map(|c| &c["usage"]).collect(),
                None => vec![&item["usage"]],
            };
            let total = |resource: &str, parse: fn(&str) -> Option<u128>| -> u128 {
                usage.iter().filter_map(|u| u[resource].as_str().and_then(parse)).sum()
            };
            let (nanocores, bytes) = (total("cpu", parse_nanocores), total("memory", parse_bytes));
            let cells = json!([
                item["metadata"]["name"],
                cpu(u64::try_from(nanocores).unwrap_or(u64::MAX)),
                memory(u64::try_from(bytes).unwrap_or(u64::MAX)),
                item["window"],
            ]);
            let mut row = json!({"cells": cells});
            match request.include {
                Include::None => {}
                Include::Metadata => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": request.api_version,
                        "metadata": item["metadata"].take(),
                    });
                }
                Include::Object => row["object"] = item,
            }
            row
        })
        .collect::<Vec<_>>();
    let column = |name: &str, format: &str, description: &str| json!({"name": name, "type": "string", "format": format, "description": description, "priority": 0});
    json!({
        "kind": "Table",
        "apiVersion": request.api_version,
        "metadata": {},
        "columnDefinitions": [
            column("Name", "name", "Name of the resource"),
            column("cpu", "quantity", ""),
            column("memory", "quantity", ""),
            column("Window", "duration", ""),
        ],
        "rows": rows,
    })
}

/// The quantities this module writes, read back for the Table's sums.
fn parse_nanocores(q: &str) -> Option<u128> {
    skiff_api::ParsedQuantity::parse(q).ok()?.scaled_ceil(9).and_then(|n| u128::try_from(n).ok())
}

fn parse_bytes(q: &str) -> Option<u128> {
    skiff_api::ParsedQuantity::parse(q).ok()?.scaled_ceil(0).and_then(|n| u128::try_from(n).ok())
}

fn key(object: &Value) -> (&str, &str) {
    let meta = &object["metadata"];
    (meta["namespace"].as_str().unwrap_or(""), meta["name"].as_str().unwrap_or(""))
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"kind": kind, "apiVersion": API_VERSION, "metadata": {}, "items": items})
}

fn metadata(object: &Value, now: SystemTime) -> Value {
    let mut meta = json!({"name": object["metadata"]["name"], "creationTimestamp": timestamp(now)});
    if let Some(ns) = object["metadata"]["namespace"].as_str() {
        meta["namespace"] = json!(ns);
    }
    if let Some(labels) = object["metadata"]["labels"].as_object().filter(|l| !l.is_empty()) {
        meta["labels"] = Value::Object(labels.clone());
    }
    meta
}

/// `PodMetrics` of the pods that have usage (the same pod by name and UID: a pod deleted and
/// made again is not given its predecessor's numbers).
fn pod_metrics(pods: &[Value], usage: &[PodUsage], now: SystemTime) -> Vec<Value> {
    pods.iter()
        .filter_map(|pod| {
            let (ns, name) = key(pod);
            let uid = pod["metadata"]["uid"].as_str().unwrap_or("");
            let u = usage.iter().find(|u| u.namespace == ns && u.name == name && u.uid == uid)?;
            let containers = u
                .containers
                .iter()
                .map(|c| {
                    json!({"name": c.name, "usage": {"cpu": cpu(c.cpu_nanocores), "memory": memory(c.memory_bytes)}})
                })
                .collect::<Vec<_>>();
            Some(json!({
                "kind": "PodMetrics",
                "apiVersion": API_VERSION,
                "metadata": metadata(pod, now),
                "timestamp": timestamp(u.timestamp),
                "window": go_duration(u.window),
                "containers": containers,
            }))
        })
        .collect()
}

fn node_metrics(nodes: &[Value], usage: Option<&NodeUsage>, now: SystemTime) -> Vec<Value> {
    nodes
        .iter()
        .filter_map(|node| {
            let u = usage.filter(|u| Some(u.name.as_str()) == node["metadata"]["name"].as_str())?;
            Some(json!({
                "kind": "NodeMetrics",
                "apiVersion": API_VERSION,
                "metadata": metadata(node, now),
                "timestamp": timestamp(u.timestamp),
                "window": go_duration(u.window),
                "usage": {"cpu": cpu(u.cpu_nanocores), "memory": memory(u.memory_bytes)},
            }))
        })
        .collect()
}

/// RFC 3339 in whole seconds, as `metav1.Time` marshals.
fn timestamp(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    jiff::Timestamp::from_second(secs as i64).map(|t| t.to_string()).unwrap_or_default()
}

/// A duration as Go's `time.Duration.String()` writes it (`metav1.Duration`'s JSON form):
/// `10.004s`, `1m0.5s`, `250ms`, `0s`.
fn go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < 1_000_000_000 {
        let (unit, size) = match nanos {
            n if n < 1_000 => return format!("{n}ns"),
            n if n < 1_000_000 => ("µs", 1_000),
            _ => ("ms", 1_000_000),
        };
        return format!("{}{unit}", fraction(nanos / size, nanos % size, size));
    }
    let (h, m) = (nanos / 3_600_000_000_000, nanos / 60_000_000_000 % 60);
    let s = fraction(nanos / 1_000_000_000 % 60, nanos % 1_000_000_000, 1_000_000_000);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, m) => format!("{m}m{s}s"),
        (h, m) => format!("{h}h{m}m{s}s"),
    }
}

/// `whole.part` with the part's trailing zeros dropped (and no dot for none).
fn fraction(whole: u128, part: u128, size: u128) -> String {
    if part == 0 {
        return whole.to_string();
    }
    let width = size.ilog10() as usize;
    let digits = format!("{part:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// Nanocores as a canonical decimal quantity (`250m`, `1`, `12345n`), as `resource.Quantity`
/// writes a value of scale -9.
fn cpu(nanocores: u64) -> String {
    decimal(u128::from(nanocores), -9)
}

/// Bytes as a canonical binary quantity (`20Mi`, `1025`), as `resource.Quantity` writes
/// BinarySI; below 1Ki it is written as a decimal, as Kubernetes does.
fn memory(bytes: u64) -> String {
    if bytes < 1024 {
        return decimal(u128::from(bytes), 0);
    }
    let (mut value, mut suffix) = (bytes, 0);
    while value.is_multiple_of(1024) && suffix < 6 {
        value /= 1024;
        suffix += 1;
    }
    format!("{value}{}", ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][suffix])
}

/// `value × 10^exponent` with the largest exponent that is a multiple of 3 and keeps it whole.
fn decimal(mut value: u128, mut exponent: i32) -> String {
    if value == 0 {
        return "0".into();
    }
    while value.is_multiple_of(1000) && exponent < 18 {
        value /= 1000;
        exponent += 3;
    }
    let suffix = match exponent {
        -9 => "n",
        -6 => "u",
        -3 => "m",
        0 => "",
        3 => "k",
        6 => "M",
        9 => "G",
        12 => "T",
        15 => "P",
        _ => "E",
    };
    format!("{value}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_paths_are_pods_in_a_namespace_or_all_and_nodes() {
        assert_eq!(parse(&["pods"]).unwrap(), Target::Pods { namespace: None, name: None });
        assert_eq!(
            parse(&["namespaces", "team", "pods", "web"]).unwrap(),
            Target::Pods { namespace: Some("team".into()), name: Some("web".into()) }
        );
        assert_eq!(parse(&["nodes", "n1"]).unwrap(), Target::Nodes { name: Some("n1".into()) });
        for bad in [&["pods", "web"][..], &["namespaces", "team", "nodes"], &["nodes", "n1", "status"], &[]] {
            assert_eq!(parse(bad).unwrap_err().code, 404, "{bad:?}");
        }
    }

    #[test]
    fn the_group_is_routed_here_and_listed_in_discovery() {
        use super::super::route::{Route, parse as route};
        assert_eq!(
            route("/apis/metrics.k8s.io/v1beta1/namespaces/default/pods").unwrap(),
            Route::Metrics(Target::Pods { namespace: Some("default".into()), name: None })
        );
        assert_eq!(
            route("/apis/metrics.k8s.io/v1beta1").unwrap(),
            Route::ResourceList { group: GROUP.into(), version: VERSION.into() }
        );
        assert_eq!(route("/apis/metrics.k8s.io/v1/pods").unwrap_err().code, 404);
        let list = super::super::discovery::resource_list_value(GROUP, VERSION).unwrap();
        assert_eq!(list["groupVersion"], "metrics.k8s.io/v1beta1");
        let resources: Vec<_> = list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["name"].as_str().unwrap(), r["kind"].as_str().unwrap(), r["namespaced"].as_bool().unwrap()))
            .collect();
        assert_eq!(resources, [("nodes", "NodeMetrics", false), ("pods", "PodMetrics", true)]);
        assert_eq!(list["resources"][1]["verbs"], json!(["get", "list"]));
    }

    #[test]
    fn quantities_are_written_in_canonical_form() {
        assert_eq!(cpu(0), "0");
        assert_eq!(cpu(250_000_000), "250m");
        assert_eq!(cpu(1_000_000_000), "1");
        assert_eq!(cpu(1_500_000_000), "1500m");
        assert_eq!(cpu(123_456_789), "123456789n");
        assert_eq!(cpu(2_000), "2u");
        assert_eq!(memory(20 << 20), "20Mi");
        assert_eq!(memory(4096 * 3), "12Ki");
        assert_eq!(memory(1025), "1025");
        assert_eq!(memory(1000), "1k");
        assert_eq!(memory(512), "512");
    }

    #[test]
    fn windows_are_written_as_go_durations() {
        assert_eq!(go_duration(Duration::from_secs(10)), "10s");
        assert_eq!(go_duration(Duration::from_millis(10_004)), "10.004s");
        assert_eq!(go_duration(Duration::from_millis(60_500)), "1m0.5s");
        assert_eq!(go_duration(Duration::from_secs(3_661)), "1h1m1s");
        assert_eq!(go_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(go_duration(Duration::from_micros(1_500)), "1.5ms");
        assert_eq!(go_duration(Duration::from_nanos(42)), "42ns");
        assert_eq!(go_duration(Duration::ZERO), "0s");
    }

    fn pod(ns: &str, name: &str, uid: &str) -> Value {
        json!({"metadata": {"namespace": ns, "name": name, "uid": uid, "labels": {"app": name}}})
    }

    fn usage(ns: &str, name: &str, uid: &str) -> PodUsage {
        PodUsage {
            namespace: ns.into(),
            name: name.into(),
            uid: uid.into(),
            timestamp: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            window: Duration::from_millis(10_020),
            containers: vec![skiff_api::ContainerUsage {
                name: "app".into(),
                cpu_nanocores: 200_000_000,
                memory_bytes: 16 << 20,
            }],
        }
    }

    #[test]
    fn pods_are_given_their_own_usage_and_left_out_without_it() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_005);
        let pods = [pod("a", "web", "u1"), pod("a", "idle", "u2"), pod("b", "web", "u3")];
        // b/web's usage belongs to an earlier pod of that name.
        let items = pod_metrics(&pods, &[usage("a", "web", "u1"), usage("b", "web", "old")], now);
        assert_eq!(items.len(), 1);
        assert_eq!(
            items[0],
            json!({
                "kind": "PodMetrics",
                "apiVersion": "metrics.k8s.io/v1beta1",
                "metadata": {"name": "web", "namespace": "a", "labels": {"app": "web"},
                             "creationTimestamp": "2023-11-14T22:13:25Z"},
                "timestamp": "2023-11-14T22:13:20Z",
                "window": "10.02s",
                "containers": [{"name": "app", "usage": {"cpu": "200m", "memory": "16Mi"}}],
            })
        );
    }

    #[test]
    fn a_pod_without_usage_is_metrics_servers_not_found() {
        let status = no_metrics("podmetrics", "default/web").to_status();
        assert_eq!(status["message"], "podmetrics.metrics.k8s.io \"default/web\" not found");
        assert_eq!(status["reason"], "NotFound");
        assert_eq!(status["details"], json!({"name": "default/web", "group": "metrics.k8s.io", "kind": "podmetrics"}));
    }

    #[test]
    fn the_table_sums_a_pods_containers_as_metrics_server_prints_it() {
        let mut two = usage("a", "web", "u1");
        two.containers.push(skiff_api::ContainerUsage {
            name: "side".into(),
            cpu_nanocores: 3_000_000,
            memory_bytes: 1 << 20,
        });
        let now = SystemTime::UNIX_EPOCH;
        let body = list("PodMetricsList", pod_metrics(&[pod("a", "web", "u1")], &[two], now));
        let request = TableRequest { api_version: "meta.k8s.io/v1", include: Include::Metadata };
        let t = table(request, body);
        let columns: Vec<&str> =
            t["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(columns, ["Name", "cpu", "memory", "Window"]);
        assert_eq!(t["rows"][0]["cells"], json!(["web", "203m", "17Mi", "10.02s"]));
        assert_eq!(t["rows"][0]["object"]["metadata"]["namespace"], "a");
    }

    #[test]
    fn nodes_are_matched_by_name() {
        let now = SystemTime::UNIX_EPOCH;
        let u = NodeUsage {
            name: "n1".into(),
            timestamp: now,
            window: Duration::from_secs(10),
            cpu_nanocores: 1_234_567,
            memory_bytes: 3 << 30,
        };
        let nodes = [json!({"metadata": {"name": "n1"}}), json!({"metadata": {"name": "n2"}})];
        let items = node_metrics(&nodes, Some(&u), now);
        assert_eq!(items.len(), 1);
        assert_eq!(items[0]["usage"], json!({"cpu": "1234567n", "memory": "3Gi"}));
        assert!(items[0]["metadata"].get("namespace").is_none());
    }
}
