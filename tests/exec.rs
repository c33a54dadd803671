//! `kubectl exec` end to end: the real kubectl over WebSocket to a real `skiff server`, which
//! runs the command inside the pod's running container through the runtime.

mod common;

use std::time::Duration;

use common::{TestImages, TestServer};

const RUN_TIMEOUT: Duration = Duration::from_secs(120);

fn pod_manifest(image: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: shell
spec:
  containers:
  - name: main
    image: {image}
    env:
    - name: GREETING
      value: from-the-pod
    command: ["sh", "-c", "trap 'exit 0' TERM; echo ready; while true; do sleep 1; done"]
"#
    )
}

#[test]
fn kubectl_exec_runs_in_the_container_pipes_stdin_and_reports_exit_codes() {
    let server = TestServer::start();
    let images = TestImages::start();
    let out = server.kubectl_stdin(&["apply", "-f", "-"], &pod_manifest(&images.busybox()));
    assert!(out.status.success(), "apply: {}", String::from_utf8_lossy(&out.stderr));
    server.wait_for("pod shell to run", RUN_TIMEOUT, || {
        let phase = server.kubectl_ok(&["get", "pod", "shell", "-o", "jsonpath={.status.phase}"]);
        (phase == "Running").then_some(())
    });

    assert_eq!(server.kubectl_ok(&["exec", "shell", "--", "echo", "hi"]), "hi\n");
    let env = server.kubectl_ok(&["exec", "shell", "-c", "main", "--", "sh", "-c", "echo $GREETING $(hostname)"]);
    assert_eq!(env, "from-the-pod shell\n", "the container's env and the pod's hostname");

    let cat = server.kubectl_stdin(&["exec", "-i", "shell", "--", "cat"], "line one\nline two\n");
    assert!(cat.status.success(), "exec -i cat: {}", String::from_utf8_lossy(&cat.stderr));
    assert_eq!(String::from_utf8_lossy(&cat.stdout), "line one\nline two\n");

    let failed = server.kubectl(&["exec", "shell", "--", "sh", "-c", "echo to-stderr >&2; exit 3"]);
    assert_eq!(failed.status.code(), Some(3), "kubectl exits with the command's code");
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("to-stderr\n"), "stderr is its own stream: {stderr}");
    assert!(stderr.contains("command terminated with exit code 3"), "{stderr}");

    // A terminal for kubectl, so that `-it` asks for one in the container; its size is set
    // first: kubectl sends it, and the command sees it from its start.
    let tty = server
        .kubectl_on_terminal("cols 100 rows 40", "exec -it shell -- sh -c 'tty; stty size'")
        .output()
        .expect("running script(1)");
    let printed = String::from_utf8_lossy(&tty.stdout);
    let lines: Vec<&str> = printed.lines().map(|l| l.trim().trim_start_matches("^@")).collect();
    let line = lines.iter().find(|l| l.starts_with("/dev/")).copied().unwrap_or_default();
    assert!(
        line.strip_prefix("/dev/pts/").is_some_and(|n| n.parse::<u32>().is_ok()),
        "tty in the container names its own pts: {printed:?} {}",
        String::from_utf8_lossy(&tty.stderr)
    );
    assert!(lines.contains(&"40 100"), "the client's terminal size: {printed:?}");

    let missing = server.kubectl(&["exec", "shell", "--", "nope"]);
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains(r#"exec: "nope": executable file not found in $PATH"#), "{stderr}");

    let out = server.kubectl_ok(&["delete", "pod", "shell"]);
    assert_eq!(out.trim(), "pod \"shell\" deleted");
    server.finish();
}
