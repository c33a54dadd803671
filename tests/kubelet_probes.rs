//! Probes end to end: the real kubectl against a real `skiff server` whose kubelet runs exec,
//! httpGet and tcpSocket probes against real containers. Each test flips a probe's result from
//! inside the container with `kubectl exec` and waits for the pod's status and events to follow.

mod common;

use std::time::Duration;

use common::{TestImages, TestServer, table_row};
use serde_json::Value;

const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// Probes run every second here; a flip shows within a few periods.
const FLIP_TIMEOUT: Duration = Duration::from_secs(60);

fn pod(name: &str, image: &str, container: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 5\n  containers:\n  \
         - name: main\n    image: {image}\n{container}"
    )
}

fn status(server: &TestServer, name: &str) -> Value {
    server.get_json("pod", name)["status"].clone()
}

fn condition(status: &Value, kind: &str) -> Option<String> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .and_then(|c| c["status"].as_str())
        .map(String::from)
}

fn container_status(status: &Value) -> Value {
    status["containerStatuses"][0].clone()
}

fn wait_ready(server: &TestServer, name: &str, ready: bool) -> Value {
    let want = if ready { "True" } else { "False" };
    server.wait_for(&format!("pod {name} to have Ready={want}"), RUN_TIMEOUT, || {
        let st = status(server, name);
        let cs = container_status(&st);
        (st["phase"] == "Running"
            && condition(&st, "Ready").as_deref() == Some(want)
            && condition(&st, "ContainersReady").as_deref() == Some(want)
            && cs["ready"] == ready)
            .then_some(st)
    })
}

/// The event of `reason` about `name` whose message contains `text`, once there is one.
fn wait_event(server: &TestServer, name: &str, reason: &str, text: &str) -> Value {
    server.wait_for(&format!("a {reason} event about {name} saying {text:?}"), FLIP_TIMEOUT, || {
        server
            .events_about(name)
            .into_iter()
            .find(|e| e["reason"] == reason && e["message"].as_str().is_some_and(|m| m.contains(text)))
    })
}

fn exec_ok(server: &TestServer, pod: &str, command: &str) {
    server.kubectl_ok(&["exec", pod, "--", "sh", "-c", command]);
}

fn delete_all_pods(server: &TestServer) {
    server.kubectl_ok(&["delete", "pods", "--all", "--timeout", "90s"]);
    let left = server.kubectl_ok(&["get", "pods", "-o", "name"]);
    assert_eq!(left.trim(), "", "pods left after delete --all");
}

#[test]
fn a_failing_liveness_exec_probe_restarts_the_container_and_logs_previous_shows_the_run_before() {
    let server = TestServer::start();
    let images = TestImages::start();
    let container = "    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; touch /tmp/healthy; echo run $(cat \
                     /proc/sys/kernel/random/uuid); while true; do sleep 1; done\"]\n    livenessProbe:\n      \
                     exec:\n        command: [\"cat\", \"/tmp/healthy\"]\n      periodSeconds: 1\n      \
                     failureThreshold: 1\n";
    assert_eq!(server.apply(&pod("live", &images.busybox(), container)).trim(), "pod/live created");
    let st = wait_ready(&server, "live", true);
    assert_eq!(container_status(&st)["restartCount"], 0);
    let first_log = server.kubectl_ok(&["logs", "live"]);
    assert!(first_log.starts_with("run ") && first_log.lines().count() == 1, "first run's log: {first_log:?}");
    let previous = server.kubectl(&["logs", "live", "--previous"]);
    assert!(!previous.status.success(), "no previous run yet");
    let stderr = String::from_utf8_lossy(&previous.stderr);
    assert!(stderr.contains(r#"previous terminated container "main" in pod "live" not found"#), "{stderr}");

    // The probe's file goes: the next probe fails, the kubelet kills the container, and the
    // restarted container (which makes the file again) stays up.
    exec_ok(&server, "live", "rm /tmp/healthy");
    let st = server.wait_for("live to run again after its restart", RUN_TIMEOUT, || {
        let st = status(&server, "live");
        let cs = container_status(&st);
        (cs["restartCount"].as_i64() >= Some(1) && cs["state"]["running"].is_object() && cs["ready"] == true)
            .then_some(st)
    });
    let cs = container_status(&st);
    assert!(cs["lastState"]["terminated"].is_object(), "lastState.terminated of the killed run: {cs}");
    assert_eq!(st["phase"], "Running");

    let unhealthy = wait_event(&server, "live", "Unhealthy", "Liveness probe failed:");
    assert_eq!(unhealthy["type"], "Warning", "{unhealthy}");
    assert!(unhealthy["message"].as_str().unwrap().contains("/tmp/healthy"), "the probe's output: {unhealthy}");
    assert_eq!(unhealthy["involvedObject"]["fieldPath"], "spec.containers{main}", "{unhealthy}");
    let killing = wait_event(&server, "live", "Killing", "Container main failed liveness probe, will be restarted");
    assert_eq!(killing["type"], "Normal", "{killing}");

    // `logs --previous` is the killed run, plain `logs` the new one (each printed its own uuid).
    let restarts = cs["restartCount"].clone();
    let previous = server.kubectl_ok(&["logs", "live", "--previous"]);
    let current = server.kubectl_ok(&["logs", "live"]);
    assert_eq!(container_status(&status(&server, "live"))["restartCount"], restarts, "no restart while reading");
    if restarts == 1 {
        assert_eq!(previous, first_log, "--previous is the first run");
    }
    assert!(current.starts_with("run ") && current.lines().count() == 1, "current run's log: {current:?}");
    assert_ne!(previous, current, "--previous and the current run are different runs");

    let table = server.kubectl_ok(&["get", "pods"]);
    let row = table_row(&table, "live").unwrap_or_else(|| panic!("no live row:\n{table}"));
    assert_eq!(row[1..3], ["1/1", "Running"], "{table}");
    assert_ne!(row[3], "0", "RESTARTS column: {table}");

    delete_all_pods(&server);
    drop(images);
    server.finish();
}

#[test]
fn a_startup_probe_holds_liveness_and_readiness_until_it_succeeds_and_restarts_a_container_that_never_starts() {
    let server = TestServer::start();
    let images = TestImages::start();
    // Liveness fails until the startup file exists, with a threshold of one: were it not held
    // back by the startup probe, it would kill the container within a couple of periods.
    let gated = "    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n    startupProbe:\n      \
                 exec:\n        command: [\"test\", \"-f\", \"/tmp/started\"]\n      periodSeconds: 1\n      \
                 failureThreshold: 1000\n    livenessProbe:\n      exec:\n        command: [\"test\", \"-f\", \
                 \"/tmp/started\"]\n      periodSeconds: 1\n      failureThreshold: 1\n    readinessProbe:\n      \
                 exec:\n        command: [\"true\"]\n      periodSeconds: 1\n";
    let never = "    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n    startupProbe:\n      \
                 exec:\n        command: [\"false\"]\n      periodSeconds: 1\n      failureThreshold: 2\n";
    server.apply(&pod("gated", &images.busybox(), gated));
    server.apply(&pod("never-starts", &images.busybox(), never));

    // Several startup probes have failed by the time the event's count is 3.
    server.wait_for("three failed startup probes of gated", FLIP_TIMEOUT, || {
        server.events_about("gated").into_iter().find(|e| {
            e["reason"] == "Unhealthy"
                && e["message"].as_str().is_some_and(|m| m.starts_with("Startup probe failed"))
                && e["count"].as_i64() >= Some(3)
        })
    });
    let st = status(&server, "gated");
    let cs = container_status(&st);
    assert_eq!(st["phase"], "Running", "{st}");
    assert_eq!(cs["started"], false, "not started before its startup probe succeeds: {cs}");
    assert_eq!(cs["ready"], false, "readiness is held back: {cs}");
    assert_eq!(condition(&st, "Ready").as_deref(), Some("False"), "{st}");
    assert_eq!(cs["restartCount"], 0, "liveness is held back: {cs}");
    assert!(
        !server.events_about("gated").iter().any(|e| e["message"].as_str().unwrap_or("").contains("Liveness")),
        "no liveness probe ran before startup succeeded"
    );

    exec_ok(&server, "gated", "touch /tmp/started");
    let st = wait_ready(&server, "gated", true);
    let cs = container_status(&st);
    assert_eq!(cs["started"], true, "{cs}");
    assert_eq!(cs["restartCount"], 0, "{cs}");

    // A startup probe that never succeeds kills the container at its failure threshold.
    wait_event(&server, "never-starts", "Killing", "Container main failed startup probe, will be restarted");
    let st = server.wait_for("never-starts to be restarted", RUN_TIMEOUT, || {
        let st = status(&server, "never-starts");
        (container_status(&st)["restartCount"].as_i64() >= Some(1)).then_some(st)
    });
    assert_eq!(container_status(&st)["started"], false, "{st}");
    assert_eq!(condition(&st, "Ready").as_deref(), Some("False"), "{st}");

    delete_all_pods(&server);
    drop(images);
    server.finish();
}

#[test]
fn readiness_http_get_and_tcp_socket_probes_flip_ready_both_ways() {
    let server = TestServer::start();
    let images = TestImages::start();
    let web = "    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; mkdir -p /www; echo ok > /www/healthz; httpd -p 8080 \
               -h /www; while true; do sleep 1; done\"]\n    ports:\n    - name: http\n      containerPort: 8080\n    \
               readinessProbe:\n      httpGet:\n        path: /healthz\n        port: http\n      periodSeconds: 1\n";
    let tcp = "    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; mkdir -p /www; httpd -p 9000 -h /www; while true; do \
               sleep 1; done\"]\n    readinessProbe:\n      tcpSocket:\n        port: 9000\n      periodSeconds: 1\n";
    server.apply(&pod("web", &images.busybox(), web));
    server.apply(&pod("tcp", &images.busybox(), tcp));
    wait_ready(&server, "web", true);
    wait_ready(&server, "tcp", true);

    // httpGet: a 404 makes the pod unready, without a restart; the file back makes it ready.
    exec_ok(&server, "web", "rm /www/healthz");
    let st = wait_ready(&server, "web", false);
    assert_eq!(container_status(&st)["restartCount"], 0, "readiness never restarts: {st}");
    // Probes that ran before httpd listened left "connection refused" events; wait for the 404 one.
    wait_event(&server, "web", "Unhealthy", "Readiness probe failed: HTTP probe failed with statuscode: 404");
    let table = server.kubectl_ok(&["get", "pods"]);
    let row = table_row(&table, "web").unwrap_or_else(|| panic!("no web row:\n{table}"));
    assert_eq!(row[1..4], ["0/1", "Running", "0"], "{table}");
    exec_ok(&server, "web", "echo ok > /www/healthz");
    wait_ready(&server, "web", true);

    // tcpSocket: nothing listening makes the pod unready; a listener back makes it ready.
    exec_ok(&server, "tcp", "killall httpd");
    let st = wait_ready(&server, "tcp", false);
    assert_eq!(container_status(&st)["restartCount"], 0, "{st}");
    let event = wait_event(&server, "tcp", "Unhealthy", "Readiness probe failed:");
    assert!(event["message"].as_str().unwrap().contains(":9000"), "the dialled address: {event}");
    exec_ok(&server, "tcp", "httpd -p 9000 -h /www");
    wait_ready(&server, "tcp", true);

    delete_all_pods(&server);
    drop(images);
    server.finish();
}
