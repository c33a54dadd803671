//! `kubectl port-forward` and the SPDY exec fallback end to end: the real kubectl against a real
//! `skiff server`, over both of kubectl's transports (SPDY/3.1 tunnelled in WebSocket, the
//! default, and plain SPDY/3.1 after an `Upgrade: SPDY/3.1`). The pod's ports are dialled inside
//! its network namespace, so a server bound to the pod's 127.0.0.1 is reachable as well.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{TestImages, TestServer};

const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// How long kubectl gets to set up a forward, and a request through it to be answered.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(60);
const KUBECTL_TIMEOUT: Duration = Duration::from_secs(120);

fn web_pod(image: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: web
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: httpd
    image: {image}
    command: ["sh", "-c", "trap 'exit 0' TERM; mkdir -p /www /lo; echo hello-from-pod > /www/index.html; echo only-on-loopback > /lo/index.html; seq 1 300000 > /www/big; (while true; do nc -l -p 9000 -e wc -c; done) & httpd -p 8080 -h /www; httpd -p 127.0.0.1:8081 -h /lo; while true; do sleep 1; done"]
    readinessProbe:
      exec:
        command: ["sh", "-c", "wget -q -O /dev/null http://127.0.0.1:8080/ && wget -q -O /dev/null http://127.0.0.1:8081/"]
      periodSeconds: 1
"#
    )
}

fn stuck_pod(image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: stuck\nspec:\n  containers:\n  - name: main\n    image: {image}\n"
    )
}

/// A running `kubectl port-forward`, ended by its PID when dropped.
struct PortForward {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

fn collect(pipe: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            let mut text = sink.lock().unwrap();
            text.push_str(&line);
            text.push('\n');
        }
    });
    text
}

impl PortForward {
    /// `kubectl port-forward pod/<pod> :<port>…`, each remote port on a local port kubectl picks;
    /// returns once kubectl printed where it listens: the local ports, in the order asked.
    fn start(server: &TestServer, pod: &str, ports: &[u16], websockets: bool) -> (PortForward, Vec<u16>) {
        let target = format!("pod/{pod}");
        let mut args = vec!["port-forward", "--address", "127.0.0.1", target.as_str()];
        let specs: Vec<String> = ports.iter().map(|p| format!(":{p}")).collect();
        args.extend(specs.iter().map(String::as_str));
        let mut child = server
            .kubectl_command(&args)
            .env("KUBECTL_PORT_FORWARD_WEBSOCKETS", if websockets { "true" } else { "false" })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running kubectl port-forward");
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        let mut forward = PortForward { child, stdout, stderr };
        let deadline = Instant::now() + FORWARD_TIMEOUT;
        let local = loop {
            let found: Vec<Option<u16>> = ports.iter().map(|p| forward.local_port(*p)).collect();
            if found.iter().all(Option::is_some) {
                break found.into_iter().flatten().collect();
            }
            if let Ok(Some(status)) = forward.child.try_wait() {
                panic!("kubectl port-forward exited ({status}) before forwarding: {}", forward.describe());
            }
            assert!(Instant::now() < deadline, "kubectl port-forward did not start: {}", forward.describe());
            std::thread::sleep(Duration::from_millis(100));
        };
        (forward, local)
    }

    /// The local port of `Forwarding from 127.0.0.1:LOCAL -> REMOTE`.
    fn local_port(&self, remote: u16) -> Option<u16> {
        let suffix = format!(" -> {remote}");
        self.stdout.lock().unwrap().lines().find_map(|line| {
            let rest = line.strip_prefix("Forwarding from 127.0.0.1:")?.strip_suffix(&suffix)?;
            rest.parse().ok()
        })
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn describe(&self) -> String {
        format!("stdout: {}\nstderr: {}", self.stdout(), self.stderr())
    }

    /// Waits up to `timeout` for kubectl to exit on its own.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            if self.wait_exit(Duration::from_secs(10)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// One HTTP/1.0 request for `path` to 127.0.0.1:`port`: the whole reply (the server closes
/// after it).
fn fetch(port: u16, path: &str) -> String {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connecting to kubectl's local port");
    conn.set_read_timeout(Some(FORWARD_TIMEOUT)).unwrap();
    conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).expect("reading the reply through the forward");
    reply
}

/// kubectl with extra environment and `stdin`, killed (and the test failed) if it hangs.
fn kubectl_env(server: &TestServer, env: &[(&str, &str)], args: &[&str], stdin: &str) -> Output {
    let mut cmd = server.kubectl_command(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child =
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("running kubectl");
    let pid = child.id();
    let mut input = child.stdin.take().unwrap();
    let _ = input.write_all(stdin.as_bytes());
    drop(input);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(KUBECTL_TIMEOUT) {
        Ok(output) => output.expect("waiting for kubectl"),
        Err(_) => {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
            let output = rx.recv().expect("kubectl's waiter").expect("waiting for kubectl");
            panic!("kubectl {args:?} hung; stderr: {}", String::from_utf8_lossy(&output.stderr));
        }
    }
}

#[test]
fn kubectl_port_forward_over_both_transports_and_exec_over_spdy() {
    let server = TestServer::start();
    let images = TestImages::start();
    server.apply(&web_pod(&images.busybox()));
    server.apply(&stuck_pod(&images.missing()));
    server.wait_for("web to be ready (both httpd listening)", RUN_TIMEOUT, || {
        let ready = server.kubectl_ok(&["get", "pod", "web", "-o", "jsonpath={.status.containerStatuses[0].ready}"]);
        (ready == "true").then_some(())
    });

    for websockets in [true, false] {
        let transport = if websockets { "SPDY in WebSocket" } else { "plain SPDY" };
        let (forward, local) = PortForward::start(&server, "web", &[8080, 8081], websockets);
        // Two connections to the same port are two request ids on one SPDY connection.
        for attempt in 0..2 {
            let reply = fetch(local[0], "/index.html");
            assert!(reply.starts_with("HTTP/1.1 200 OK"), "{transport}, fetch {attempt}: {reply:?}");
            assert!(reply.ends_with("hello-from-pod\n"), "{transport}, fetch {attempt}: {reply:?}");
        }
        let reply = fetch(local[1], "/index.html");
        assert!(reply.ends_with("only-on-loopback\n"), "{transport}: the pod's own 127.0.0.1 is reached: {reply:?}");
        // kubectl prints a line per accepted connection; the collecting thread may lag behind.
        let deadline = Instant::now() + FORWARD_TIMEOUT;
        while forward.stdout().matches("Handling connection for").count() < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let handled = forward.stdout().matches("Handling connection for").count();
        assert_eq!(handled, 3, "{transport}: {}", forward.describe());
        drop(forward);

        // Megabytes both ways: many DATA frames, and the half-close of each direction. The
        // pod's `wc -c` answers only after the end of its input, which is the client's FIN.
        let (_forward, local) = PortForward::start(&server, "web", &[8080, 9000], websockets);
        let reply = fetch(local[0], "/big");
        let expected: String = (1..=300_000).map(|i| format!("{i}\n")).collect();
        let body = reply.split_once("\r\n\r\n").map(|(_, body)| body).unwrap_or_default();
        assert!(body == expected, "{transport}: /big came back with {} of {} bytes", body.len(), expected.len());
        let mut conn = TcpStream::connect(("127.0.0.1", local[1])).unwrap();
        conn.set_read_timeout(Some(FORWARD_TIMEOUT)).unwrap();
        conn.write_all(&vec![b'x'; 3 << 20]).unwrap();
        conn.shutdown(std::net::Shutdown::Write).unwrap();
        let mut counted = String::new();
        conn.read_to_string(&mut counted).expect("wc's answer after the half-close");
        assert_eq!(counted, format!("{}\n", 3 << 20), "{transport}");
    }

    // Nothing listens on 9999 in the pod: kubectl reports the node's error, the local
    // connection is closed instead of hanging.
    for websockets in [true, false] {
        let (mut forward, local) = PortForward::start(&server, "web", &[9999], websockets);
        let mut conn = TcpStream::connect(("127.0.0.1", local[0])).unwrap();
        conn.set_read_timeout(Some(FORWARD_TIMEOUT)).unwrap();
        let _ = conn.write_all(b"GET / HTTP/1.0\r\n\r\n");
        let mut rest = Vec::new();
        let read = conn.read_to_end(&mut rest);
        assert!(
            matches!(read, Ok(0)) || read.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "the local connection ends: {read:?} {rest:?}"
        );
        let deadline = Instant::now() + FORWARD_TIMEOUT;
        while !forward.stderr().contains("an error occurred forwarding") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let stderr = forward.stderr();
        assert!(stderr.contains(&format!("an error occurred forwarding {} -> 9999", local[0])), "{stderr}");
        assert!(stderr.contains("dial tcp4 127.0.0.1:9999: connect: connection refused"), "{stderr}");
        // kubectl ≥1.31 gives up on the whole forward after such an error.
        let _ = forward.wait_exit(Duration::from_secs(10));
    }

    let not_running = server.kubectl(&["port-forward", "pod/stuck", ":80"]);
    assert!(!not_running.status.success());
    let stderr = String::from_utf8_lossy(&not_running.stderr);
    assert!(stderr.contains("unable to forward port because pod is not running. Current status=Pending"), "{stderr}");

    // exec over SPDY/3.1: stdout, stdin, stderr and the exit code.
    let spdy = [("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")];
    let echo = kubectl_env(&server, &spdy, &["exec", "web", "-v=6", "--", "echo", "over", "spdy"], "");
    let log = String::from_utf8_lossy(&echo.stderr);
    assert!(echo.status.success(), "{log}");
    assert_eq!(String::from_utf8_lossy(&echo.stdout), "over spdy\n");
    assert!(log.contains(r#"verb="POST""#) && log.contains("101 Switching Protocols"), "went over SPDY: {log}");
    let cat = kubectl_env(&server, &spdy, &["exec", "-i", "web", "--", "cat"], "line one\nline two\n");
    assert!(cat.status.success(), "exec -i cat: {}", String::from_utf8_lossy(&cat.stderr));
    assert_eq!(String::from_utf8_lossy(&cat.stdout), "line one\nline two\n");
    let failed = kubectl_env(&server, &spdy, &["exec", "web", "--", "sh", "-c", "echo to-stderr >&2; exit 3"], "");
    assert_eq!(failed.status.code(), Some(3), "kubectl exits with the command's code");
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("to-stderr\n"), "stderr is its own stream: {stderr}");
    assert!(stderr.contains("command terminated with exit code 3"), "{stderr}");

    // kubectl on a terminal: the resize stream instead of stderr.
    let tty = server
        .kubectl_on_terminal("sane", "exec -it web -- tty")
        .env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")
        .output()
        .expect("running script(1)");
    let printed = String::from_utf8_lossy(&tty.stdout);
    // The terminal may echo a stray `^@` that script(1) feeds kubectl, on either transport.
    let lines: Vec<&str> = printed.lines().map(|l| l.trim().trim_start_matches("^@")).collect();
    assert!(
        lines.iter().any(|l| l.strip_prefix("/dev/pts/").is_some_and(|n| n.parse::<u32>().is_ok())),
        "a pts in the container: {printed:?} {}",
        String::from_utf8_lossy(&tty.stderr)
    );

    // A forwarded connection still open when its pod is deleted ends with the pod, and the
    // socket in the pod's network namespace does not keep anything of the pod alive.
    let (forward, local) = PortForward::start(&server, "web", &[9000], true);
    let mut open = TcpStream::connect(("127.0.0.1", local[0])).unwrap();
    open.write_all(b"input that never ends").unwrap();
    let deadline = Instant::now() + FORWARD_TIMEOUT;
    while !forward.stdout().contains("Handling connection for") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    server.kubectl_ok(&["delete", "pod", "web", "stuck"]);
    open.set_read_timeout(Some(FORWARD_TIMEOUT)).unwrap();
    let mut rest = Vec::new();
    let read = open.read_to_end(&mut rest);
    assert!(
        read.is_ok() || read.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "the forwarded connection ends with its pod: {read:?}"
    );
    drop(forward);
    drop(images);
    server.finish();
}
