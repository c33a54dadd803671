//! `kubectl attach` and `kubectl run -i` end to end: the real kubectl attaches to the container's
//! own stdio, which the runtime's shim holds open for it.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{TestImages, TestServer};

const RUN_TIMEOUT: Duration = Duration::from_secs(120);

fn wait_running(server: &TestServer, name: &str) {
    server.wait_for(&format!("pod {name} to run"), RUN_TIMEOUT, || {
        let phase = server.kubectl_ok(&["get", "pod", name, "-o", "jsonpath={.status.phase}"]);
        (phase == "Running").then_some(())
    });
}

#[test]
fn kubectl_run_i_feeds_stdin_to_the_container_and_rm_deletes_the_pod() {
    let server = TestServer::start();
    let images = TestImages::start();
    let image = format!("--image={}", images.busybox());

    let run = server.kubectl_stdin(
        &["run", "reader", "-i", "--rm", "--restart=Never", &image, "--", "sh", "-c", "read a; read b; echo got $a $b"],
        "one\ntwo\n",
    );
    let (stdout, stderr) = (String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "kubectl run -i: {stdout}\n{stderr}");
    assert!(stdout.contains("got one two\n"), "the container read kubectl's stdin: {stdout:?} {stderr:?}");
    assert!(stdout.contains(r#"pod "reader" deleted"#), "--rm deletes the pod: {stdout:?}");
    let gone = server.kubectl(&["get", "pod", "reader"]);
    assert!(String::from_utf8_lossy(&gone.stderr).contains("NotFound"), "{gone:?}");

    // A failing container: kubectl waits for the pod to end and exits with its code.
    let run = server.kubectl_stdin(
        &["run", "failing", "-i", "--restart=Never", &image, "--", "sh", "-c", "read a; echo read $a; exit 4"],
        "x\n",
    );
    let (stdout, stderr) = (String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(stdout.contains("read x\n"), "{stdout:?} {stderr:?}");
    assert_eq!(run.status.code(), Some(4), "kubectl exits with the container's code: {stderr}");
    assert!(stderr.contains("pod default/failing terminated (Error)"), "{stderr}");
    server.kubectl_ok(&["delete", "pod", "failing", "--wait"]);

    drop(images);
    server.finish();
}

#[test]
fn kubectl_attach_streams_output_and_writes_to_an_open_stdin() {
    let server = TestServer::start();
    let images = TestImages::start();
    server.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: echo
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: {}
    stdin: true
    command: ["sh", "-c", "echo started; while read line; do echo echo: $line; done"]
"#,
        images.busybox()
    ));
    wait_running(&server, "echo");

    // Two sessions one after the other: without stdinOnce the input stays open between them.
    for word in ["first", "second"] {
        let seen =
            attach_session(&server, &["attach", "-i", "echo"], &format!("echo: {word}"), || Some(format!("{word}\n")));
        assert!(seen.iter().any(|l| *l == format!("echo: {word}")), "{seen:?}");
    }
    // kubectl attach without -i: output only, from now on. The line is written by exec into the
    // init's stdin (/proc/1/fd/0 is the shim's pipe).
    let seen = attach_session(&server, &["attach", "echo"], "echo: third", || {
        server.kubectl_ok(&["exec", "echo", "--", "sh", "-c", "echo third > /proc/1/fd/0"]);
        None
    });
    assert!(seen.iter().any(|l| l == "echo: third"), "attached output: {seen:?}");
    assert!(!seen.iter().any(|l| l == "started"), "attach shows output from now on, not the log: {seen:?}");
    let phase = server.kubectl_ok(&["get", "pod", "echo", "-o", "jsonpath={.status.phase}"]);
    assert_eq!(phase, "Running", "the container outlives the session");

    server.kubectl_ok(&["delete", "pod", "echo", "--wait"]);
    drop(images);
    server.finish();
}

#[test]
fn kubectl_attach_it_drives_a_shell_on_the_containers_terminal() {
    let server = TestServer::start();
    let images = TestImages::start();
    server.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: shell
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: {}
    stdin: true
    tty: true
    command: ["sh"]
"#,
        images.busybox()
    ));
    wait_running(&server, "shell");
    // kubectl on a terminal keeps `-it`; what the shell reads is typed into that terminal.
    let mut script = server
        .kubectl_on_terminal("sane", "attach -it shell")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running script(1)");
    {
        use std::io::Write;
        let mut stdin = script.stdin.take().unwrap();
        // Typed once the session is up; the shell's exit ends the container and the session.
        std::thread::sleep(Duration::from_secs(2));
        stdin.write_all(b"echo on-$(tty | tr / _)-$((6*7)); exit 5\n").unwrap();
        std::thread::sleep(Duration::from_secs(1));
    }
    let out = script.wait_with_output().expect("script(1) output");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("on-_dev_pts_0-42"), "the shell ran on its own terminal: {printed:?}");
    let code = server.wait_for("the shell to exit", RUN_TIMEOUT, || {
        let jsonpath = "jsonpath={.status.containerStatuses[0].state.terminated.exitCode}";
        let code = server.kubectl_ok(&["get", "pod", "shell", "-o", jsonpath]);
        (!code.is_empty()).then_some(code)
    });
    assert_eq!(code, "5");

    server.kubectl_ok(&["delete", "pod", "shell", "--wait"]);
    drop(images);
    server.finish();
}

/// Runs kubectl (attach) with its stdin kept open, calling `poke` about every 2 s (what it
/// returns is written to kubectl's stdin) until a line `until` is printed; then ends kubectl
/// by its PID, as a user's Ctrl-C would. Returns the lines seen.
fn attach_session(
    server: &TestServer,
    args: &[&str],
    until: &str,
    mut poke: impl FnMut() -> Option<String>,
) -> Vec<String> {
    use std::io::Write;
    let mut child = server
        .kubectl_command(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl attach");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen: Vec<String> = Vec::new();
    while !seen.iter().any(|l| l == until) && Instant::now() < deadline {
        if let Some(input) = poke() {
            let _ = stdin.write_all(input.as_bytes());
            let _ = stdin.flush();
        }
        let poke_at = Instant::now() + Duration::from_secs(2);
        while let Ok(line) = rx.recv_timeout(poke_at.saturating_duration_since(Instant::now())) {
            let done = line == until;
            seen.push(line);
            if done {
                break;
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    seen
}
