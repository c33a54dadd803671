//! Native sidecars (KEP-753: an init container with `restartPolicy: Always`), seen with the real
//! kubectl against a real `skiff server`: started in init order and kept running beside the app
//! container (READY 2/2), restarted when it exits, stopped after the app containers at deletion,
//! and stopped by the kubelet once a Job's app container has completed.

mod common;

use std::time::Duration;

use common::{TestImages, TestServer, table_row};
use serde_json::Value;

const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// A shell that records `name` in /out/order when it gets SIGTERM, and runs `first` (the trap
/// is set before, so a SIGTERM is never lost: PID 1 ignores signals it has no handler for).
fn traps(name: &str, first: &str) -> String {
    format!("trap 'echo {name} >> /out/order; exit 0' TERM; {first} while true; do sleep 1; done")
}

fn sidecar_pod(image: &str, host: &std::path::Path) -> String {
    // The sidecar is slow to get ready; the app container fails if started before that.
    // The file is made anew by each run, so readiness waits for this run's trap to be set.
    let side = traps("side", "rm -f /shared/side; sleep 2; echo side > /shared/side;");
    let app = traps("app", "cat /shared/side || exit 1;");
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: web
spec:
  terminationGracePeriodSeconds: 20
  initContainers:
  - name: side
    image: {image}
    restartPolicy: Always
    command: ["sh", "-c", "{side}"]
    startupProbe: {{exec: {{command: [cat, /shared/side]}}, periodSeconds: 1, failureThreshold: 30}}
    readinessProbe: {{exec: {{command: [cat, /shared/side]}}, periodSeconds: 1}}
    volumeMounts: [{{name: shared, mountPath: /shared}}, {{name: out, mountPath: /out}}]
  containers:
  - name: app
    image: {image}
    command: ["sh", "-c", "{app}"]
    volumeMounts: [{{name: shared, mountPath: /shared}}, {{name: out, mountPath: /out}}]
  volumes:
  - name: shared
    emptyDir: {{}}
  - name: out
    hostPath:
      path: {host}
      type: DirectoryOrCreate
"#,
        host = host.display()
    )
}

fn side_status(server: &TestServer, pod: &str) -> Value {
    server.get_json("pod", pod)["status"]["initContainerStatuses"][0].clone()
}

fn condition(status: &Value, type_: &str) -> String {
    let conditions = status["conditions"].as_array().cloned().unwrap_or_default();
    conditions
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| c["status"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

#[test]
fn a_sidecar_runs_beside_the_app_is_restarted_and_stops_after_it() {
    let server = TestServer::start();
    let images = TestImages::start();
    let host = server.dir().join("sidecar-out");
    server.apply(&sidecar_pod(&images.busybox(), &host));

    // The app container reads the file the sidecar writes: it starts only once the sidecar's
    // startup probe has passed, so it never fails.
    server.wait_for("web to show 2/2 Running", RUN_TIMEOUT, || {
        let table = server.kubectl_ok(&["get", "pods"]);
        table_row(&table, "web").filter(|c| c[1] == "2/2" && c[2] == "Running")
    });
    let status = server.get_json("pod", "web")["status"].clone();
    for type_ in ["Initialized", "Ready", "ContainersReady"] {
        assert_eq!(condition(&status, type_), "True", "{type_}: {status}");
    }
    let side = &status["initContainerStatuses"][0];
    assert_eq!((side["started"].clone(), side["ready"].clone()), (Value::Bool(true), Value::Bool(true)), "{side}");
    assert!(side["state"]["running"].is_object(), "{side}");
    assert_eq!(status["containerStatuses"][0]["restartCount"], 0, "the app started after the sidecar: {status}");
    assert_eq!(server.kubectl_ok(&["exec", "web", "-c", "app", "--", "cat", "/shared/side"]).trim(), "side");

    // The sidecar ends (its shell exits 0 on SIGTERM): restarted whatever its exit code.
    server.kubectl_ok(&["exec", "web", "-c", "side", "--", "kill", "1"]);
    let side = server.wait_for("the sidecar to run again after a restart", RUN_TIMEOUT, || {
        let side = side_status(&server, "web");
        (side["restartCount"] == 1 && side["state"]["running"].is_object() && side["ready"] == true).then_some(side)
    });
    assert_eq!(side["lastState"]["terminated"]["exitCode"], 0, "{side}");
    let row = table_row(&server.kubectl_ok(&["get", "pods"]), "web").expect("web is listed");
    assert_eq!(row[1..4], ["2/2", "Running", "1"], "{row:?}");
    let app = &server.get_json("pod", "web")["status"]["containerStatuses"][0];
    assert_eq!(app["restartCount"], 0, "the app kept running: {app}");
    assert!(app["state"]["running"].is_object(), "{app}");

    // Deletion: the app container gets SIGTERM and ends before the sidecar does.
    server.kubectl_ok(&["delete", "pod", "web", "--timeout", "60s"]);
    let order = std::fs::read_to_string(host.join("order")).expect("the containers wrote their order");
    // The first line is the sidecar's SIGTERM from `kill 1` above.
    assert_eq!(order, "side\napp\nside\n");
    server.finish();
}

#[test]
fn a_sidecar_and_its_app_are_adopted_after_the_server_is_killed() {
    let mut server = TestServer::start();
    let images = TestImages::start();
    let host = server.dir().join("sidecar-out");
    server.apply(&sidecar_pod(&images.busybox(), &host));
    let ids = |server: &TestServer| {
        server.kubectl_ok(&[
            "get",
            "pod",
            "web",
            "-o",
            "jsonpath={.status.initContainerStatuses[0].containerID} {.status.containerStatuses[0].containerID}",
        ])
    };
    server.wait_for("web to show 2/2 Running", RUN_TIMEOUT, || {
        let table = server.kubectl_ok(&["get", "pods"]);
        table_row(&table, "web").filter(|c| c[1] == "2/2" && c[2] == "Running")
    });
    let before = ids(&server);

    // A crash of the node's agent is no reason to restart anything: after the restart the same
    // containers are adopted, the sidecar still ahead of the app, neither run again.
    server.kill9();
    server.restart();
    server.wait_for("web to be Ready again after the restart", RUN_TIMEOUT, || {
        let status = server.get_json("pod", "web")["status"].clone();
        (condition(&status, "Ready") == "True").then_some(())
    });
    assert_eq!(ids(&server), before, "the same containers run");
    let status = server.get_json("pod", "web")["status"].clone();
    assert_eq!(status["initContainerStatuses"][0]["restartCount"], 0, "{status}");
    assert_eq!(status["containerStatuses"][0]["restartCount"], 0, "{status}");
    assert!(status["initContainerStatuses"][0]["state"]["running"].is_object(), "{status}");
    assert!(std::fs::read_to_string(host.join("order")).is_err(), "no container got SIGTERM");

    // The adopted pod still ends in order: app first, then its sidecar.
    server.kubectl_ok(&["delete", "pod", "web", "--timeout", "60s"]);
    let order = std::fs::read_to_string(host.join("order")).expect("the containers wrote their order");
    assert_eq!(order, "app\nside\n");
    server.finish();
}

#[test]
fn a_job_completes_when_its_app_container_does_while_the_sidecar_would_run_forever() {
    let server = TestServer::start();
    let images = TestImages::start();
    let image = images.busybox();
    let side = "trap 'exit 0' TERM; while true; do sleep 1; done";
    server.apply(&format!(
        r#"apiVersion: batch/v1
kind: Job
metadata:
  name: batch
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      initContainers:
      - name: side
        image: {image}
        restartPolicy: Always
        command: ["sh", "-c", "{side}"]
      containers:
      - name: main
        image: {image}
        command: ["sh", "-c", "sleep 2; echo done"]
"#
    ));
    let job = server.wait_for("the job to complete", RUN_TIMEOUT, || {
        let job = server.get_json("job", "batch");
        (job["status"]["succeeded"] == 1).then_some(job)
    });
    let complete = job["status"]["conditions"].as_array().cloned().unwrap_or_default();
    assert!(complete.iter().any(|c| c["type"] == "Complete" && c["status"] == "True"), "{job}");
    let pods = server.kubectl_ok(&["get", "pods", "-l", "job-name=batch", "-o", "json"]);
    let pods: Value = serde_json::from_str(&pods).expect("pod list");
    let pod = &pods["items"][0];
    let status = &pod["status"];
    assert_eq!(status["phase"], "Succeeded", "{status}");
    assert_eq!(status["containerStatuses"][0]["state"]["terminated"]["exitCode"], 0, "{status}");
    let side = &status["initContainerStatuses"][0];
    assert!(side["state"]["terminated"].is_object(), "the kubelet stopped the sidecar: {side}");
    assert_eq!(side["restartCount"], 0, "stopped, not restarted: {side}");
    server.finish();
}

#[test]
fn restart_policy_is_accepted_on_init_containers_only() {
    let server = TestServer::start();
    let out = server.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: bad\nspec:\n  containers:\n  - name: app\n    image: busybox\n    \
         restartPolicy: Always\n",
    );
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("spec.containers[0].restartPolicy: Forbidden: may not be set for non-init containers"),
        "{stderr}"
    );
    server.finish();
}
