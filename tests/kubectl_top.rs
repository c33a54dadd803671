//! `kubectl top` against a real server: the `metrics.k8s.io` group in discovery, pod and node
//! usage measured from the containers' cgroups and the node's root cgroup, metrics-server's
//! answers for pods without usage.

mod common;

use std::time::Duration;

use common::{TestImages, TestServer, table_row};

/// Pods must start, then be measured twice (every 10 s): generous for a loaded machine.
const METRICS_TIMEOUT: Duration = Duration::from_secs(180);

/// `250m` → 250, `1` → 1000.
fn millicores(cell: &str) -> u64 {
    match cell.strip_suffix('m') {
        Some(m) => m.parse().unwrap_or_else(|_| panic!("CPU cell {cell:?}")),
        None => cell.parse::<u64>().unwrap_or_else(|_| panic!("CPU cell {cell:?}")) * 1000,
    }
}

/// `20Mi` → 20 (kubectl prints memory in Mi).
fn mebibytes(cell: &str) -> u64 {
    cell.strip_suffix("Mi").and_then(|m| m.parse().ok()).unwrap_or_else(|| panic!("memory cell {cell:?}"))
}

fn stderr_of(server: &TestServer, args: &[&str]) -> String {
    let out = server.kubectl(args);
    assert!(!out.status.success(), "kubectl {} should fail: {}", args.join(" "), String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

#[test]
fn kubectl_top_shows_pod_container_and_node_usage_from_cgroups() {
    let server = TestServer::start();
    let images = TestImages::start();
    let image = images.busybox();
    // A busy loop held to 200m by its CPU limit, a shell holding 20 MiB in a variable, and a pod
    // that never runs (its node selector matches no node).
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: spinner\n  labels:\n    app: spinner\nspec:\n  \
         terminationGracePeriodSeconds: 2\n  containers:\n  - name: spin\n    image: {image}\n    command: [\"sh\", \
         \"-c\", \"trap 'exit 0' TERM; while :; do :; done\"]\n    resources:\n      limits:\n        cpu: 200m\n\
         ---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: holder\n  labels:\n    app: holder\nspec:\n  \
         terminationGracePeriodSeconds: 2\n  containers:\n  - name: hold\n    image: {image}\n    command: [\"sh\", \
         \"-c\", \"trap 'exit 0' TERM; x=`head -c 20971520 /dev/zero | tr '\\\\0' a`; echo held; while :; do sleep \
         1; done\"]\n  - name: idle\n    image: {image}\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; while :; \
         do sleep 1; done\"]\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: nowhere\nspec:\n  nodeSelector:\n    \
         skiff.test/none: \"true\"\n  containers:\n  - name: app\n    image: {image}\n"
    );
    server.apply(&manifest);
    server.wait_for("the holder to fill its variable", METRICS_TIMEOUT, || {
        let out = server.kubectl(&["logs", "holder", "-c", "hold"]);
        (String::from_utf8_lossy(&out.stdout).trim() == "held").then_some(())
    });

    // Discovery: the group kubectl top looks for.
    let versions = server.kubectl_ok(&["api-versions"]);
    assert!(versions.lines().any(|l| l == "metrics.k8s.io/v1beta1"), "{versions}");

    // Per container, once both pods have been measured twice.
    let containers = server.wait_for("usage of both pods", METRICS_TIMEOUT, || {
        let out = server.kubectl(&["top", "pod", "--containers"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let rows: Vec<Vec<String>> = text.lines().map(|l| l.split_whitespace().map(String::from).collect()).collect();
        let has = |pod: &str| rows.iter().any(|r| r.first().map(String::as_str) == Some(pod));
        (out.status.success() && has("spinner") && has("holder")).then_some(rows)
    });
    eprintln!("kubectl top pod --containers:\n{containers:?}");
    assert_eq!(containers[0], ["POD", "NAME", "CPU(cores)", "MEMORY(bytes)"]);
    let row = |pod: &str, container: &str| {
        containers
            .iter()
            .find(|r| r[0] == pod && r[1] == container)
            .unwrap_or_else(|| panic!("no {pod}/{container} in {containers:?}"))
            .clone()
    };
    let spin = row("spinner", "spin");
    let cpu = millicores(&spin[2]);
    assert!(cpu > 50 && cpu <= 260, "the busy loop uses up to its 200m limit: {spin:?}");
    let hold = row("holder", "hold");
    assert!(mebibytes(&hold[3]) > 15, "the holder's 20 MiB are in its working set: {hold:?}");
    let idle = row("holder", "idle");
    assert!(millicores(&idle[2]) < 50, "a sleeping container uses next to no CPU: {idle:?}");
    assert!(!containers.iter().any(|r| r[0] == "nowhere"), "a pod that never ran has no usage");

    // Per pod (the sum of its containers), by label, across namespaces.
    let pods = server.kubectl_ok(&["top", "pod"]);
    assert_eq!(
        pods.lines().next().map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["NAME", "CPU(cores)", "MEMORY(bytes)"])
    );
    let holder = table_row(&pods, "holder").unwrap_or_else(|| panic!("{pods}"));
    assert!(mebibytes(&holder[2]) > 15, "{holder:?}");
    let selected = server.kubectl_ok(&["top", "pod", "-l", "app=spinner"]);
    assert!(table_row(&selected, "spinner").is_some() && table_row(&selected, "holder").is_none(), "{selected}");
    let all = server.kubectl_ok(&["top", "pod", "-A"]);
    let header: Vec<&str> = all.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["NAMESPACE", "NAME", "CPU(cores)", "MEMORY(bytes)"]);
    assert!(all.lines().any(|l| l.split_whitespace().take(2).eq(["default", "spinner"])), "{all}");
    let raw = server.kubectl_ok(&["get", "--raw", "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/spinner"]);
    let object: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        (object["kind"].as_str(), object["metadata"]["labels"]["app"].as_str()),
        (Some("PodMetrics"), Some("spinner"))
    );
    assert!(object["window"].as_str().is_some_and(|w| w.ends_with('s')), "{object}");

    // kubectl get prints metrics-server's Table.
    let printed = server.kubectl_ok(&["get", "pods.metrics.k8s.io", "spinner"]);
    let header: Vec<&str> = printed.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["NAME", "CPU", "MEMORY", "WINDOW"], "{printed}");
    assert!(table_row(&printed, "spinner").is_some_and(|r| r[1].ends_with('m') || r[1].ends_with('n')), "{printed}");

    // The node: usage and its share of allocatable.
    let node = server.wait_for("usage of the node", METRICS_TIMEOUT, || {
        let out = server.kubectl(&["top", "node"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        out.status.success().then(|| table_row(&text, server.node_name())).flatten().map(|row| (text, row))
    });
    let (text, row) = node;
    eprintln!("kubectl top node:\n{text}");
    let header: Vec<&str> = text.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["NAME", "CPU(cores)", "CPU(%)", "MEMORY(bytes)", "MEMORY(%)"]);
    assert!(millicores(&row[1]) >= 50, "the node runs at least the busy loop: {row:?}");
    assert!(mebibytes(&row[3]) > 15, "{row:?}");
    assert!(row[2].ends_with('%') && row[4].ends_with('%'), "{row:?}");

    // metrics-server's answers for what has no usage, and a read-only API.
    assert_eq!(
        stderr_of(&server, &["top", "pod", "nonexistent"]),
        "Error from server (NotFound): pods \"nonexistent\" not found"
    );
    assert_eq!(
        stderr_of(&server, &["top", "pod", "nowhere"]),
        "Error from server (NotFound): podmetrics.metrics.k8s.io \"default/nowhere\" not found"
    );
    let body = server.dir().join("podmetrics.json");
    std::fs::write(&body, "{}").unwrap();
    let refused = stderr_of(
        &server,
        &["create", "--raw", "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods", "-f", body.to_str().unwrap()],
    );
    assert!(refused.contains("MethodNotAllowed") || refused.contains("does not allow this method"), "{refused}");

    server.kubectl_ok(&["delete", "pod", "spinner", "holder", "nowhere", "--timeout", "90s"]);
    drop(images);
    server.finish();
}
