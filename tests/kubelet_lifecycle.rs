//! The container lifecycle end to end, through the real kubectl against a real `skiff server`:
//! postStart and preStop hooks (and a failing postStart: `FailedPostStartHook`, a kill and a
//! restart), termination messages (the file at `terminationMessagePath`, and the log tail with
//! `FallbackToLogsOnError`), and the service environment variables a pod gets.

mod common;

use std::time::Duration;

use common::{TestImages, TestServer};
use serde_json::Value;

const RUN_TIMEOUT: Duration = Duration::from_secs(120);

fn pod(name: &str, body: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 5\n{body}")
}

fn container_status(server: &TestServer, name: &str) -> Value {
    server.get_json("pod", name)["status"]["containerStatuses"][0].clone()
}

fn wait_running(server: &TestServer, name: &str) -> Value {
    server.wait_for(&format!("pod {name} to run"), RUN_TIMEOUT, || {
        let cs = container_status(server, name);
        cs["state"]["running"].is_object().then_some(cs)
    })
}

fn wait_terminated(server: &TestServer, name: &str) -> Value {
    server.wait_for(&format!("pod {name}'s container to end"), RUN_TIMEOUT, || {
        let cs = container_status(server, name);
        cs["state"]["terminated"].is_object().then_some(cs)
    })
}

fn wait_event(server: &TestServer, name: &str, reason: &str) -> Value {
    server.wait_for(&format!("a {reason} event about {name}"), RUN_TIMEOUT, || {
        server.events_about(name).into_iter().find(|e| e["reason"] == reason)
    })
}

fn delete_all_pods(server: &TestServer) {
    server.kubectl_ok(&["delete", "pods", "--all", "--timeout", "90s"]);
    let left = server.kubectl_ok(&["get", "pods", "-o", "name"]);
    assert_eq!(left.trim(), "", "pods left after delete --all");
}

#[test]
fn post_start_ends_before_the_container_counts_as_running_pre_stop_runs_before_sigterm_and_a_failed_post_start_restarts()
 {
    let server = TestServer::start();
    let images = TestImages::start();
    let image = images.busybox();

    // postStart writes a file the container's own command waits for and prints. The hook takes a
    // second first: the status says running only once it is done, so the file is there by then.
    let hooked = format!(
        "  containers:\n  - name: main\n    image: {image}\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; while [ ! \
         -f /tmp/started ]; do sleep 0.1; done; echo saw $(cat /tmp/started); while true; do sleep 1; done\"]\n    \
         lifecycle:\n      postStart:\n        exec:\n          command: [\"sh\", \"-c\", \"sleep 1; echo by-post-start > \
         /tmp/started\"]\n"
    );
    server.apply(&pod("hooked", &hooked));
    wait_running(&server, "hooked");
    assert_eq!(server.kubectl_ok(&["exec", "hooked", "--", "cat", "/tmp/started"]).trim(), "by-post-start");
    server.wait_for("the container to print what postStart wrote", RUN_TIMEOUT, || {
        server.kubectl_ok(&["logs", "hooked"]).contains("saw by-post-start").then_some(())
    });

    // preStop appends to a host file before the SIGTERM, whose trap appends after it.
    let host = server.dir().join("stop-order");
    std::fs::create_dir_all(&host).unwrap();
    let stopping = format!(
        "  containers:\n  - name: main\n    image: {image}\n    command: [\"sh\", \"-c\", \"trap 'echo sigterm >> \
         /out/order; exit 0' TERM; while true; do sleep 1; done\"]\n    volumeMounts:\n    - name: out\n      \
         mountPath: /out\n    lifecycle:\n      preStop:\n        exec:\n          command: [\"sh\", \"-c\", \"echo \
         pre-stop >> /out/order\"]\n  volumes:\n  - name: out\n    hostPath:\n      path: {}\n",
        host.display()
    );
    server.apply(&pod("stopping", &stopping));
    wait_running(&server, "stopping");
    server.kubectl_ok(&["delete", "pod", "stopping", "--timeout", "60s"]);
    let order = std::fs::read_to_string(host.join("order")).expect("the hooks wrote their order");
    assert_eq!(order, "pre-stop\nsigterm\n");

    // A failing postStart: the event (without the hook's output), a kill, a restart.
    let failing = format!(
        "  containers:\n  - name: main\n    image: {image}\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; while \
         true; do sleep 1; done\"]\n    lifecycle:\n      postStart:\n        exec:\n          command: [\"sh\", \
         \"-c\", \"echo secret-output; exit 7\"]\n"
    );
    server.apply(&pod("failing", &failing));
    let event = wait_event(&server, "failing", "FailedPostStartHook");
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["message"], "PostStartHook failed");
    assert_eq!(event["involvedObject"]["fieldPath"], "spec.containers{main}");
    let killing = wait_event(&server, "failing", "Killing");
    assert_eq!(killing["message"], "FailedPostStartHook");
    let cs = server.wait_for("the failing container to restart", RUN_TIMEOUT, || {
        let cs = container_status(&server, "failing");
        (cs["restartCount"].as_i64() >= Some(1)).then_some(cs)
    });
    assert!(cs["lastState"]["terminated"].is_object(), "{cs}");
    // Between restarts it waits with the hook's error, as Kubernetes' reason cache shows it.
    let waiting = server.wait_for("a PostStartHookError or CrashLoopBackOff wait", RUN_TIMEOUT, || {
        let cs = container_status(&server, "failing");
        let reason = cs["state"]["waiting"]["reason"].as_str().map(String::from);
        reason.filter(|r| r == "PostStartHookError" || r == "CrashLoopBackOff").map(|_| cs)
    });
    assert!(waiting["lastState"]["terminated"].is_object(), "{waiting}");

    delete_all_pods(&server);
    drop(images);
    server.finish();
}

#[test]
fn termination_messages_come_from_the_file_or_with_fallback_to_logs_on_error_from_the_log_tail() {
    let server = TestServer::start();
    let images = TestImages::start();
    let image = images.busybox();
    let body = |command: &str, extra: &str| {
        format!(
            "  restartPolicy: Never\n  containers:\n  - name: main\n    image: {image}\n    command: [\"sh\", \"-c\", \
             \"{command}\"]\n{extra}"
        )
    };
    server.apply(&pod("default-path", &body("printf 'all done' > /dev/termination-log; exit 3", "")));
    server.apply(&pod("own-path", &body("printf 'from my file' > /tmp/why", "    terminationMessagePath: /tmp/why\n")));
    let fallback = "    terminationMessagePolicy: FallbackToLogsOnError\n";
    server.apply(&pod("from-logs", &body("for i in $(seq 1 100); do echo line $i; done; exit 1", fallback)));
    server.apply(&pod("clean-exit", &body("echo not a message", fallback)));

    let cs = wait_terminated(&server, "default-path");
    assert_eq!(
        (cs["state"]["terminated"]["exitCode"].as_i64(), cs["state"]["terminated"]["reason"].as_str()),
        (Some(3), Some("Error"))
    );
    let message = server.kubectl_ok(&[
        "get",
        "pod",
        "default-path",
        "-o",
        "jsonpath={.status.containerStatuses[0].state.terminated.message}",
    ]);
    assert_eq!(message, "all done");

    let cs = wait_terminated(&server, "own-path");
    assert_eq!(cs["state"]["terminated"]["message"], "from my file", "{cs}");
    assert_eq!(cs["state"]["terminated"]["reason"], "Completed", "{cs}");

    let cs = wait_terminated(&server, "from-logs");
    let want: String = (21..=100).map(|i| format!("line {i}\n")).collect();
    assert_eq!(cs["state"]["terminated"]["message"].as_str(), Some(want.as_str()), "the last 80 lines: {cs}");

    let cs = wait_terminated(&server, "clean-exit");
    assert!(cs["state"]["terminated"]["message"].is_null(), "no fallback on a clean exit: {cs}");

    delete_all_pods(&server);
    drop(images);
    server.finish();
}

#[test]
fn pods_get_variables_for_the_services_of_their_namespace_and_their_own_env_wins() {
    let server = TestServer::start();
    let images = TestImages::start();
    let image = images.busybox();
    server.kubectl_ok(&["create", "service", "clusterip", "web", "--tcp=80:8080"]);
    let ip = server.get_json("service", "web")["spec"]["clusterIP"].as_str().unwrap().to_string();
    let kubernetes = server.get_json("service", "kubernetes")["spec"]["clusterIP"].as_str().unwrap().to_string();
    let sleeper = |links: &str, env: &str| {
        format!(
            "{links}  containers:\n  - name: main\n    image: {image}\n    command: [\"sh\", \"-c\", \"trap 'exit 0' \
             TERM; while true; do sleep 1; done\"]\n{env}"
        )
    };
    server.apply(&pod("linked", &sleeper("", "    env:\n    - name: WEB_SERVICE_PORT\n      value: mine\n")));
    server.apply(&pod("unlinked", &sleeper("  enableServiceLinks: false\n", "")));
    wait_running(&server, "linked");
    wait_running(&server, "unlinked");

    let env = server.kubectl_ok(&["exec", "linked", "--", "env"]);
    let lines: Vec<&str> = env.lines().collect();
    for want in [
        format!("WEB_SERVICE_HOST={ip}"),
        "WEB_SERVICE_PORT=mine".to_string(),
        "WEB_SERVICE_PORT_80_8080=80".to_string(),
        format!("WEB_PORT=tcp://{ip}:80"),
        format!("WEB_PORT_80_TCP=tcp://{ip}:80"),
        "WEB_PORT_80_TCP_PROTO=tcp".to_string(),
        "WEB_PORT_80_TCP_PORT=80".to_string(),
        format!("WEB_PORT_80_TCP_ADDR={ip}"),
        format!("KUBERNETES_SERVICE_HOST={kubernetes}"),
        "KUBERNETES_SERVICE_PORT=443".to_string(),
    ] {
        assert!(lines.contains(&want.as_str()), "{want} missing from the env:\n{env}");
    }
    let env = server.kubectl_ok(&["exec", "unlinked", "--", "env"]);
    assert!(!env.contains("WEB_"), "enableServiceLinks: false leaves the namespace's services out:\n{env}");
    assert!(env.contains(&format!("KUBERNETES_SERVICE_HOST={kubernetes}")), "the API's service stays:\n{env}");

    delete_all_pods(&server);
    drop(images);
    server.finish();
}

/// The kubelet's log rotation at its defaults (containerLogMaxSize 10Mi): a container that
/// writes 11 MB has its log rotated while it runs; `kubectl logs` then shows the new file, and a
/// `kubectl logs -f` started before the rotation goes on without a gap.
#[test]
fn a_log_past_10mi_is_rotated_and_kubectl_logs_and_follow_keep_working() {
    use std::io::BufRead;
    let server = TestServer::start();
    let images = TestImages::start();
    let image = images.busybox();
    let chatty = format!(
        "  containers:\n  - name: main\n    image: {image}\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; head -c \
         11000000 /dev/zero | tr '\\\\0' x | fold -w 1000; echo; i=0; while true; do i=$((i+1)); echo tick $i; sleep \
         0.1; done\"]\n"
    );
    server.apply(&pod("chatty", &chatty));
    wait_running(&server, "chatty");
    let mut follower = server
        .kubectl_command(&["logs", "-f", "chatty"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl logs -f");
    let out = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let pods = server.data_dir().join("kubelet").join("pods");
    let rotated = server.wait_for("a rotated log file", RUN_TIMEOUT, || {
        let pod_dir = std::fs::read_dir(&pods)
            .ok()?
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with("default_chatty_"))?;
        std::fs::read_dir(pod_dir.path().join("main"))
            .ok()?
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with("0.log."))
            .map(|e| e.path())
    });
    assert!(std::fs::metadata(&rotated).unwrap().len() >= 10 * 1024 * 1024, "{}", rotated.display());
    // kubectl logs reads the current file: ticks only, the burst went with the rotation.
    let latest = server.wait_for("ticks in the new log file", RUN_TIMEOUT, || {
        let text = server.kubectl_ok(&["logs", "chatty"]);
        let last = text.lines().filter_map(|l| l.strip_prefix("tick ")).last().map(|n| n.parse::<u64>().unwrap());
        last.filter(|n| *n >= 3).map(|n| (n, text))
    });
    assert!(!latest.1.contains("xxxxxxxxxx"), "the current file starts after the rotation");
    // The follower saw the whole burst and then every tick up to the latest, in order.
    let (mut burst, mut next) = (0, 1);
    while next <= latest.0 {
        let line = rx.recv_timeout(Duration::from_secs(60)).expect("kubectl logs -f stalled across the rotation");
        if line.len() == 1000 {
            burst += 1;
        } else if let Some(n) = line.strip_prefix("tick ") {
            assert_eq!(n.parse::<u64>().unwrap(), next, "ticks in order, none lost");
            next += 1;
        }
    }
    assert_eq!(burst, 11000, "every line of the burst was followed");
    follower.kill().expect("stopping kubectl logs -f");
    let _ = follower.wait();
    drop(rx);
    let _ = reader.join();

    delete_all_pods(&server);
    drop(images);
    server.finish();
}
