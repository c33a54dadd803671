//! Streaming through the kubelet with the real kubectl: `kubectl cp` (tar over exec) both ways,
//! and `kubectl logs` options (container choice, tail, timestamps).

mod common;

use std::fs;
use std::time::Duration;

use common::{TestImages, TestServer};

const RUN_TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn kubectl_cp_copies_files_both_ways_and_logs_pick_containers_and_tails() {
    let server = TestServer::start();
    let images = TestImages::start();
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: box\nspec:\n  terminationGracePeriodSeconds: 5\n  containers:\n  \
         - name: main\n    image: {image}\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; mkdir -p /data; echo \
         made-inside > /data/inside.txt; for i in 1 2 3 4 5; do echo line $i; done; while true; do sleep 1; \
         done\"]\n  - name: side\n    image: {image}\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; echo from the \
         sidecar; while true; do sleep 1; done\"]\n",
        image = images.busybox()
    );
    server.apply(&manifest);
    server.wait_for("box to run with both containers ready", RUN_TIMEOUT, || {
        let ready = server.kubectl_ok(&["get", "pod", "box", "-o", "jsonpath={.status.containerStatuses[*].ready}"]);
        (ready == "true true").then_some(())
    });

    // Local → pod.
    let local = server.dir().join("cp");
    fs::create_dir_all(&local).unwrap();
    let upload = local.join("upload.txt");
    fs::write(&upload, "sent from the host\nsecond line\n").unwrap();
    server.kubectl_ok(&["cp", upload.to_str().unwrap(), "box:/data/upload.txt", "-c", "main"]);
    assert_eq!(
        server.kubectl_ok(&["exec", "box", "-c", "main", "--", "cat", "/data/upload.txt"]),
        "sent from the host\nsecond line\n"
    );

    // Pod → local, a file and a directory.
    let download = local.join("download.txt");
    server.kubectl_ok(&["cp", "box:/data/inside.txt", download.to_str().unwrap(), "-c", "main"]);
    assert_eq!(fs::read_to_string(&download).unwrap(), "made-inside\n");
    let tree = local.join("tree");
    server.kubectl_ok(&["cp", "box:/data", tree.to_str().unwrap(), "-c", "main"]);
    assert_eq!(fs::read_to_string(tree.join("inside.txt")).unwrap(), "made-inside\n");
    assert_eq!(fs::read_to_string(tree.join("upload.txt")).unwrap(), "sent from the host\nsecond line\n");

    // Logs: by container, the last lines, with timestamps.
    server.wait_for("main's five lines", RUN_TIMEOUT, || {
        (server.kubectl_ok(&["logs", "box", "-c", "main"]).lines().count() == 5).then_some(())
    });
    assert_eq!(server.kubectl_ok(&["logs", "box", "-c", "side"]), "from the sidecar\n");
    assert_eq!(server.kubectl_ok(&["logs", "box", "-c", "main", "--tail", "2"]), "line 4\nline 5\n");
    let stamped = server.kubectl_ok(&["logs", "box", "-c", "main", "--timestamps", "--tail", "1"]);
    let (stamp, line) = stamped.trim_end().split_once(' ').unwrap_or_else(|| panic!("{stamped:?}"));
    assert_eq!(line, "line 5");
    assert!(stamp.len() >= 20 && stamp.contains('T') && stamp.ends_with('Z'), "RFC 3339 timestamp: {stamp:?}");
    server.kubectl_ok(&["delete", "pod", "box", "--timeout", "90s"]);
    drop(images);
    server.finish();
}
