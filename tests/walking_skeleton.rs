//! The walking skeleton, end to end: the real kubectl against a real `skiff server` running real
//! containers. A pod is applied, runs to completion, shows its logs and is deleted; the store
//! survives `kill -9`; bad input is refused the way Kubernetes refuses it; a missing image leaves
//! the pod waiting while the server keeps serving. Every test ends by checking that nothing of it
//! is left on the machine (processes, mounts, cgroups).

mod common;

use std::time::Duration;

use common::{TestImages, TestServer};

const HELLO: &str = include_str!("../examples/hello-pod.yaml");
/// The example pulls `busybox:1.36` from Docker Hub; tests pull the same manifest's pod from a
/// registry on loopback.
const EXAMPLE_IMAGE: &str = "image: busybox:1.36";
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

fn hello_manifest(images: &TestImages) -> String {
    assert!(HELLO.contains(EXAMPLE_IMAGE), "examples/hello-pod.yaml names {EXAMPLE_IMAGE}");
    HELLO.replace(EXAMPLE_IMAGE, &format!("image: {}", images.busybox()))
}

/// The columns of the row for `name` in `kubectl get pods` output, if it has one.
fn pod_row(table: &str, name: &str) -> Option<Vec<String>> {
    table
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .find(|cols| cols.first().map(String::as_str) == Some(name))
}

fn apply(server: &TestServer, manifest: &str) -> String {
    let out = server.kubectl_stdin(&["apply", "-f", "-"], manifest);
    assert!(
        out.status.success(),
        "kubectl apply failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn wait_completed(server: &TestServer, name: &str) -> Vec<String> {
    server.wait_for(&format!("pod {name} to show 0/1 Completed 0 in kubectl get pods"), RUN_TIMEOUT, || {
        let table = server.kubectl_ok(&["get", "pods"]);
        pod_row(&table, name).filter(|cols| cols.len() >= 4 && cols[1..4] == ["0/1", "Completed", "0"])
    })
}

fn delete_and_wait_gone(server: &TestServer, name: &str) {
    let out = server.kubectl_ok(&["delete", "pod", name]);
    assert_eq!(out.trim(), format!("pod \"{name}\" deleted"));
    let gone = server.kubectl(&["get", "pod", name]);
    assert!(!gone.status.success(), "pod {name} is still there after kubectl delete returned");
    assert_eq!(
        String::from_utf8_lossy(&gone.stderr).trim(),
        format!("Error from server (NotFound): pods \"{name}\" not found")
    );
}

#[test]
fn hello_pod_completes_shows_its_logs_and_is_deleted() {
    let server = TestServer::start();
    let images = TestImages::start();

    assert_eq!(apply(&server, &hello_manifest(&images)).trim(), "pod/hello created");
    let row = wait_completed(&server, "hello");
    assert_eq!(row[..4], ["hello", "0/1", "Completed", "0"], "kubectl get pods row: {row:?}");

    let wide = server.kubectl_ok(&["get", "pods", "-o", "wide"]);
    let header: Vec<&str> = wide.lines().next().unwrap_or("").split_whitespace().collect();
    let node_column = header.iter().position(|c| *c == "NODE").unwrap_or_else(|| panic!("no NODE column:\n{wide}"));
    let row = pod_row(&wide, "hello").unwrap_or_else(|| panic!("no hello row:\n{wide}"));
    assert_eq!(row[node_column], server.node_name(), "NODE column of\n{wide}");

    let logs = server.kubectl_ok(&["logs", "hello"]);
    assert_eq!(logs, "Hello from Skiff!\nI ran as hello\n");

    delete_and_wait_gone(&server, "hello");
    drop(images);
    server.finish();
}

#[test]
fn a_pod_survives_kill_9_of_the_server_right_after_apply() {
    let mut server = TestServer::start();
    let images = TestImages::start();

    assert_eq!(apply(&server, &hello_manifest(&images)).trim(), "pod/hello created");
    server.kill9();
    server.restart();

    let name = server.kubectl_ok(&["get", "pod", "hello", "-o", "jsonpath={.metadata.name}"]);
    assert_eq!(name, "hello", "the pod is in the store after kill -9 and restart");
    // The restarted node carries on with it (running it, or adopting the container it started).
    wait_completed(&server, "hello");
    assert_eq!(server.kubectl_ok(&["logs", "hello"]), "Hello from Skiff!\nI ran as hello\n");

    delete_and_wait_gone(&server, "hello");
    drop(images);
    server.finish();
}

#[test]
fn a_pod_without_containers_is_refused_with_422_naming_spec_containers() {
    let server = TestServer::start();
    let manifest = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: empty\nspec:\n  containers: []\n";

    let out = server.kubectl_stdin(&["apply", "-f", "-"], manifest);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "kubectl exits 1; stderr: {stderr}");
    assert!(stderr.contains("The Pod \"empty\" is invalid"), "422 Invalid as kubectl prints it: {stderr}");
    assert!(stderr.contains("spec.containers: Required value"), "the cause names spec.containers: {stderr}");

    let get = server.kubectl(&["get", "pod", "empty"]);
    assert!(!get.status.success(), "a refused pod is not stored");
    server.finish();
}

#[test]
fn a_missing_image_leaves_the_pod_waiting_while_the_server_keeps_serving() {
    let server = TestServer::start();
    let images = TestImages::start();
    let manifest = hello_manifest(&images).replace(&images.busybox(), &images.missing());

    assert_eq!(apply(&server, &manifest).trim(), "pod/hello created");
    let reason =
        server.wait_for("the pod's container to wait with ErrImagePull or ImagePullBackOff", RUN_TIMEOUT, || {
            let reason = server.kubectl_ok(&[
                "get",
                "pod",
                "hello",
                "-o",
                "jsonpath={.status.containerStatuses[0].state.waiting.reason}",
            ]);
            ["ErrImagePull", "ImagePullBackOff"].contains(&reason.as_str()).then_some(reason)
        });
    let table = server.kubectl_ok(&["get", "pods"]);
    let row = pod_row(&table, "hello").unwrap_or_else(|| panic!("no hello row:\n{table}"));
    assert!(
        row[2] == "ErrImagePull" || row[2] == "ImagePullBackOff",
        "STATUS shows the pull failure ({reason} in the status):\n{table}"
    );
    assert_eq!(row[1], "0/1");

    let namespaces = server.kubectl_ok(&["get", "ns"]);
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(pod_row(&namespaces, ns).is_some(), "namespace {ns} listed while a pull fails:\n{namespaces}");
    }

    delete_and_wait_gone(&server, "hello");
    drop(images);
    server.finish();
}

#[test]
fn pod_rows_are_found_by_name_only() {
    let table = "NAME READY STATUS RESTARTS AGE\nhello-2 1/1 Running 0 3s\nhello 0/1 Completed 0 5s\n";
    assert_eq!(pod_row(table, "hello").unwrap()[..3], ["hello", "0/1", "Completed"]);
    assert!(pod_row(table, "NAME").is_none(), "the header is not a row");
    assert!(pod_row(table, "hell").is_none());
}

#[test]
fn a_running_container_outlives_a_server_restart_and_is_adopted() {
    let mut server = TestServer::start();
    let images = TestImages::start();
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: sleeper\nspec:\n  containers:\n  - name: sleeper\n    image: {}\n    command: [\"sleep\", \"3600\"]\n",
        images.busybox()
    );
    apply(&server, &manifest);
    let container_status = |server: &TestServer| {
        server.kubectl_ok(&[
            "get",
            "pod",
            "sleeper",
            "-o",
            "jsonpath={.status.phase} {.status.containerStatuses[0].restartCount} {.status.containerStatuses[0].containerID}",
        ])
    };
    let before = server.wait_for("pod sleeper to run", RUN_TIMEOUT, || {
        let status = container_status(&server);
        (status.starts_with("Running 0 skiff://")).then_some(status)
    });

    let sleep_pid = server
        .leftovers(false)
        .processes
        .into_iter()
        .find(|(_, cmdline)| cmdline == "sleep 3600")
        .map(|(pid, _)| pid)
        .expect("the container's sleep process is in the test's cgroups");
    let node = server.node_name().to_string();
    let lease = ["get", "lease", "-n", "kube-node-lease", &node, "-o", "jsonpath={.spec.renewTime}"];
    let renewed_before = server.kubectl_ok(&lease);

    let stopped = server.stop().expect("the server was running");
    assert!(stopped.success(), "SIGTERM with a pod running stops the server with exit 0, not {stopped}");
    server.restart();
    // A renewed Lease shows the new server's kubelet is up and has looked at its pods.
    server.wait_for("the restarted kubelet to renew its Lease", RUN_TIMEOUT, || {
        (server.kubectl_ok(&lease) != renewed_before).then_some(())
    });

    // The same container (same ID, same process, no restart) runs under the new server.
    assert_eq!(container_status(&server), before);
    let cmdline = std::fs::read(format!("/proc/{sleep_pid}/cmdline")).unwrap_or_default();
    assert_eq!(cmdline, b"sleep\x003600\x00", "the container's process {sleep_pid} lives on");
    let table = server.kubectl_ok(&["get", "pods"]);
    let row = pod_row(&table, "sleeper").unwrap_or_else(|| panic!("no sleeper row:\n{table}"));
    assert_eq!(row[1..4], ["1/1", "Running", "0"], "{table}");

    // `sleep` as PID 1 ignores SIGTERM: a short grace period keeps the test short.
    server.kubectl_ok(&["delete", "pod", "sleeper", "--grace-period=1"]);
    assert!(!server.kubectl(&["get", "pod", "sleeper"]).status.success(), "the pod is gone");
    drop(images);
    server.finish();
}

#[test]
fn pods_interrupted_by_kill_9_at_any_point_of_their_start_run_exactly_once() {
    let mut server = TestServer::start();
    let images = TestImages::start();
    // Each pod is applied, then the server is killed a little later each time: before the
    // kubelet saw it, during the pull, during the container's start, while it runs.
    let delays_ms = [0u64, 300, 800, 1500];
    for (i, delay) in delays_ms.iter().enumerate() {
        let manifest = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: once-{i}\nspec:\n  restartPolicy: Never\n  containers:\n  - name: once\n    image: {}\n    command: [\"sh\", \"-c\", \"echo start; sleep 2; echo done\"]\n",
            images.busybox()
        );
        apply(&server, &manifest);
        std::thread::sleep(Duration::from_millis(*delay));
        server.kill9();
        server.restart();
    }
    for i in 0..delays_ms.len() {
        let name = format!("once-{i}");
        wait_completed(&server, &name);
        // One run: a container started twice would have printed `start` twice.
        assert_eq!(server.kubectl_ok(&["logs", &name]), "start\ndone\n", "logs of {name}");
        delete_and_wait_gone(&server, &name);
    }
    drop(images);
    server.finish();
}
