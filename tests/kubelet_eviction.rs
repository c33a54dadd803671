//! The kubelet's eviction manager end to end: the real kubectl against a real `skiff server`.
//! A pod that outgrows its emptyDir `sizeLimit` (or its containers' `ephemeral-storage` limit)
//! is evicted as Kubernetes does it: Failed, reason `Evicted`, Kubernetes' message, an
//! `Evicted` event, its containers killed, the object kept. The node reports the three
//! pressure conditions computed from this machine.

mod common;

use std::time::Duration;

use common::{TestImages, TestServer, table_row};
use serde_json::Value;

/// The manager looks every 10 s; the pod needs to start and write first.
const EVICT_TIMEOUT: Duration = Duration::from_secs(90);

fn wait_evicted(server: &TestServer, name: &str) -> Value {
    server.wait_for(&format!("pod {name} to be Failed/Evicted with its containers stopped"), EVICT_TIMEOUT, || {
        let pod = server.get_json("pod", name);
        let stopped = pod["status"]["containerStatuses"]
            .as_array()
            .is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c["state"]["terminated"].is_object()));
        (pod["status"]["phase"] == "Failed" && pod["status"]["reason"] == "Evicted" && stopped).then_some(pod)
    })
}

fn wait_event(server: &TestServer, name: &str, reason: &str) -> Value {
    server.wait_for(&format!("a {reason} event about {name}"), EVICT_TIMEOUT, || {
        server.events_about(name).into_iter().find(|e| e["reason"] == reason)
    })
}

#[test]
fn pods_outgrowing_their_local_storage_limits_are_evicted_and_kept_as_failed() {
    let server = TestServer::start();
    let images = TestImages::start();
    let write = "dd if=/dev/zero of=$0 bs=1M count=3 && sync && trap 'exit 0' TERM; while true; do sleep 1; done";
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: scratch\nspec:\n  containers:\n  - name: main\n    image: {img}\n    \
         command: [\"sh\", \"-c\", {write:?}, \"/scratch/fill\"]\n    volumeMounts:\n    - name: scratch\n      \
         mountPath: /scratch\n  volumes:\n  - name: scratch\n    emptyDir:\n      sizeLimit: 1Mi\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata:\n  name: layer\nspec:\n  containers:\n  - name: main\n    image: {img}\n    \
         command: [\"sh\", \"-c\", {write:?}, \"/fill\"]\n    resources:\n      limits:\n        ephemeral-storage: 1Mi\n",
        img = images.busybox(),
    );
    server.apply(&manifest);

    let pod = wait_evicted(&server, "scratch");
    let message = "Usage of EmptyDir volume \"scratch\" exceeds the limit \"1Mi\". ";
    assert_eq!(pod["status"]["message"], message, "{}", pod["status"]);
    let event = wait_event(&server, "scratch", "Evicted");
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["message"], message);
    assert_eq!(event["source"]["component"], "kubelet");

    // The writable layer counts against the containers' limit; with one container the pod's
    // total limit is crossed first, as on Kubernetes.
    let pod = wait_evicted(&server, "layer");
    let message = "Pod ephemeral local storage usage exceeds the total limit of containers 1Mi. ";
    assert_eq!(pod["status"]["message"], message, "{}", pod["status"]);
    assert_eq!(wait_event(&server, "layer", "Evicted")["message"], message);

    // The objects stay. kubectl's STATUS column prefers a terminated container's reason to the
    // pod's (kubernetes#105467): the containers were killed, so it says `Error`, as for pods
    // evicted on Kubernetes whose container statuses were written; `describe` shows `Evicted`.
    let table = server.kubectl_ok(&["get", "pods"]);
    for name in ["scratch", "layer"] {
        let row = table_row(&table, name).unwrap_or_else(|| panic!("{name} not listed:\n{table}"));
        assert_eq!(row[1], "0/1", "{table}");
        assert_eq!(row[2], "Error", "{table}");
        let reason = server.kubectl_ok(&["get", "pod", name, "-o", "jsonpath={.status.reason}"]);
        assert_eq!(reason, "Evicted");
    }
    let uid = server.get_json("pod", "scratch")["metadata"]["uid"].as_str().unwrap().to_string();
    let volume = server.data_dir().join("kubelet/pods").join(&uid).join("volumes/kubernetes.io~empty-dir/scratch");
    server.wait_for("the evicted pod's emptyDir to be removed", EVICT_TIMEOUT, || (!volume.exists()).then_some(()));
    let described = server.kubectl_ok(&["describe", "pod", "scratch"]);
    let reason = described.lines().find(|l| l.starts_with("Reason:")).unwrap_or_default();
    assert!(reason.ends_with("Evicted"), "{described}");

    server.kubectl_ok(&["delete", "pods", "--all", "--timeout", "90s"]);
    server.finish();
}

#[test]
fn a_healthy_node_reports_no_memory_disk_or_pid_pressure() {
    let server = TestServer::start();
    let node = server.node_name().to_string();
    let wanted = [
        ("MemoryPressure", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        ("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
    ];
    let json = server.get_json("node", &node);
    let conditions = json["status"]["conditions"].as_array().cloned().unwrap_or_default();
    for (type_, reason, message) in wanted {
        let c = conditions.iter().find(|c| c["type"] == type_).unwrap_or_else(|| panic!("no {type_}: {conditions:?}"));
        assert_eq!((c["status"].as_str(), c["reason"].as_str()), (Some("False"), Some(reason)), "{c}");
        assert_eq!(c["message"], message);
        assert!(c["lastTransitionTime"].is_string() && c["lastHeartbeatTime"].is_string(), "{c}");
    }
    let taints = json["spec"]["taints"].as_array().cloned().unwrap_or_default();
    assert!(!taints.iter().any(|t| t["key"].as_str().is_some_and(|k| k.ends_with("-pressure"))), "{taints:?}");

    let described = server.kubectl_ok(&["describe", "node", &node]);
    for (type_, reason, _) in wanted {
        let line = described
            .lines()
            .find(|l| l.trim_start().starts_with(type_))
            .unwrap_or_else(|| panic!("no {type_} line:\n{described}"));
        assert!(line.contains("False") && line.contains(reason), "{line}");
    }
    // The eviction manager's first look is recorded as the kubelet does.
    for reason in ["NodeHasSufficientMemory", "NodeHasNoDiskPressure", "NodeHasSufficientPID"] {
        let event = wait_event(&server, &node, reason);
        assert_eq!(event["message"], format!("Node {node} status is now: {reason}"));
    }
    server.finish();
}
