//! Black-box test harness: a real `skiff server` on a temp data dir, its own port, CIDRs, node
//! name and cgroup root, driven with the real `/usr/bin/kubectl`.
//!
//! [`TestServer`] is a guard. Dropping it stops the server (SIGTERM, then SIGKILL, by PID) and
//! sweeps up everything the test made, also when the test failed: shims and container processes,
//! mounts under the temp dir, the cgroups under its cgroup root, then the temp dir itself.
//! [`TestServer::finish`] is the end of a passing test: it stops the server, checks that it
//! exited 0 and that Skiff itself left nothing behind, sweeps, and checks that the sweep worked.

#![allow(dead_code)] // each test binary uses its own part of the harness

use std::fmt::Write as _;
use std::fs;
use std::net::TcpListener;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub const KUBECTL: &str = "/usr/bin/kubectl";
/// Test CIDRs, apart from the defaults (10.42/10.43) so a test never touches a real node's.
/// Each test server gets its own /24 of these, so servers side by side never share a route or
/// a Service address: `10.242.X.0/24` for pods and `10.243.X.0/24` for Services.
const CLUSTER_CIDRS: &str = "10.242";
const SERVICE_CIDRS: &str = "10.243";

const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// No single kubectl command of a test takes this long against a working server.
const KUBECTL_TIMEOUT: Duration = Duration::from_secs(120);
const STOP_TIMEOUT: Duration = Duration::from_secs(40);
/// How long Skiff gets to finish tearing a deleted pod down before `finish` calls it a leftover.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct TestServer {
    /// Everything of this test lives under here: data dir, kubectl's HOME and cache, logs.
    dir: PathBuf,
    data_dir: PathBuf,
    port: u16,
    node_name: String,
    cgroup_root: String,
    /// The pod bridge and the third octet of this server's CIDRs.
    bridge: String,
    subnet: u32,
    extra_args: Vec<String>,
    child: Option<Child>,
    finished: bool,
}

impl TestServer {
    /// Starts a server and waits until its `/readyz` answers `ok`.
    pub fn start() -> TestServer {
        Self::start_with(&[])
    }

    /// Starts a server with more flags after the harness's own; pass none that the harness sets
    /// (clap refuses a flag given twice).
    pub fn start_with(extra_args: &[&str]) -> TestServer {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let name = format!("skiff-test-{}-{n}", std::process::id());
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir_in("/tmp")
            .expect("creating the test's temp dir")
            .keep();
        let data_dir = dir.join("data");
        for sub in ["home", "kube-cache"] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let mut server = TestServer {
            dir,
            data_dir,
            port: free_port(),
            node_name: name.clone(),
            cgroup_root: name,
            bridge: format!("skt{}x{n}", std::process::id() % 100_000),
            subnet: (std::process::id() + n * 37) % 250,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            child: None,
            finished: false,
        };
        server.spawn();
        server.wait_ready();
        server
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    pub fn cgroup_root(&self) -> &str {
        &self.cgroup_root
    }

    /// Where the server writes its kubeconfig: `--write-kubeconfig` if the test gave one.
    pub fn kubeconfig(&self) -> PathBuf {
        match self.extra_args.iter().position(|a| a == "--write-kubeconfig") {
            Some(i) => PathBuf::from(&self.extra_args[i + 1]),
            None => self.data_dir.join("kubeconfig.yaml"),
        }
    }

    /// A `name: value` field of this server's kubeconfig (`certificate-authority-data`, `token`).
    pub fn kubeconfig_field(&self, name: &str) -> String {
        let kubeconfig = fs::read_to_string(self.kubeconfig()).unwrap();
        kubeconfig
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in the kubeconfig"))
            .trim()
            .to_string()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// The server's log so far (stdout and stderr of every start), for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn cluster_cidr(&self) -> String {
        format!("{CLUSTER_CIDRS}.{}.0/24", self.subnet)
    }

    pub fn service_cidr(&self) -> String {
        format!("{SERVICE_CIDRS}.{}.0/24", self.subnet)
    }

    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The `skiff server` command line of this test, also usable for negative tests of the CLI.
    pub fn server_command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_skiff"));
        cmd.arg("server")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--https-listen-port")
            .arg(self.port.to_string())
            .args(["--bind-address", "127.0.0.1"])
            .args(["--cluster-cidr", &self.cluster_cidr(), "--service-cidr", &self.service_cidr()])
            .args(["--bridge-name", &self.bridge])
            .args(["--node-name", &self.node_name, "--cgroup-root", &self.cgroup_root])
            .args(&self.extra_args);
        // Flags are all given; a SKIFF_* variable of the caller's shell must not fill in others.
        for (key, _) in std::env::vars() {
            if key.starts_with("SKIFF_") {
                cmd.env_remove(key);
            }
        }
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "the server is already running");
        let log = fs::OpenOptions::new().create(true).append(true).open(self.log_path()).unwrap();
        let child =
            self.server_command().stdout(log.try_clone().unwrap()).stderr(log).spawn().expect("starting skiff server");
        self.child = Some(child);
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!("skiff server exited ({status}) before it was ready; its log:\n{}", self.log());
            }
            if self.kubeconfig().exists() {
                let out = self.kubectl(&["get", "--raw", "/readyz", "--request-timeout", "5s"]);
                if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok" {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!("skiff server was not ready within {READY_TIMEOUT:?}; its log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs the real kubectl against this server, with a HOME and discovery cache of its own.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_stdin(args, "")
    }

    pub fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(KUBECTL);
        cmd.arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--cache-dir")
            .arg(self.dir.join("kube-cache"))
            .args(args)
            .env("HOME", self.dir.join("home"))
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null());
        cmd
    }

    /// kubectl on a terminal of its own (util-linux `script(1)` makes one), for `-it`: what
    /// is written to the command's stdin is typed into that terminal. `args` is one shell word
    /// string; `stty` settings (e.g. `cols 100 rows 40`) are applied to the terminal first.
    /// script(1) types an EOF character when its own input ends, which kubectl forwards: the
    /// container's terminal may echo it as `^@`.
    pub fn kubectl_on_terminal(&self, stty: &str, args: &str) -> Command {
        let kubectl = format!(
            "stty {stty}; {KUBECTL} --kubeconfig {} --cache-dir {} {args}",
            self.kubeconfig().display(),
            self.dir.join("kube-cache").display()
        );
        let mut cmd = Command::new("script");
        cmd.args(["-qec", &kubectl, "/dev/null"])
            .env("HOME", self.dir.join("home"))
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null());
        cmd
    }

    /// kubectl that must succeed: its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {} failed ({}):\nstdout: {}\nstderr: {}\nserver log tail:\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log(), 40)
        );
        String::from_utf8(out.stdout).expect("kubectl printed UTF-8")
    }

    /// kubectl with `stdin` as its input (a manifest for `apply -f -`). A kubectl that hangs (on a
    /// server that accepts connections but never answers) is killed after `KUBECTL_TIMEOUT`.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .kubectl_command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running /usr/bin/kubectl");
        let pid = Pid::from_raw(child.id() as i32);
        let mut input = child.stdin.take().unwrap();
        let _ = input.write_all(stdin.as_bytes());
        drop(input);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(child.wait_with_output()));
        match rx.recv_timeout(KUBECTL_TIMEOUT) {
            Ok(output) => output.expect("waiting for kubectl"),
            Err(_) => {
                let _ = kill(pid, Signal::SIGKILL);
                let output = rx.recv().expect("kubectl's waiter").expect("waiting for kubectl");
                panic!(
                    "kubectl {} did not finish within {KUBECTL_TIMEOUT:?}; stderr: {}\nserver log tail:\n{}",
                    args.join(" "),
                    String::from_utf8_lossy(&output.stderr),
                    tail(&self.log(), 60)
                );
            }
        }
    }

    /// Polls `probe` until it yields a value; panics naming `what` (and the server log) at the
    /// deadline. Waiting is how tests meet asynchronous state; time itself is never asserted.
    pub fn wait_for<T>(&self, what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = probe() {
                return value;
            }
            if Instant::now() > deadline {
                panic!("timed out after {timeout:?} waiting for {what}; server log tail:\n{}", tail(&self.log(), 60));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// `kubectl apply -f -` of `manifest`, which must succeed: kubectl's stdout.
    pub fn apply(&self, manifest: &str) -> String {
        self.apply_with(&[], manifest)
    }

    /// `kubectl apply -f - <args>` that must succeed: its stdout.
    pub fn apply_with(&self, args: &[&str], manifest: &str) -> String {
        let mut all = vec!["apply", "-f", "-"];
        all.extend(args);
        let out = self.kubectl_stdin(&all, manifest);
        assert!(
            out.status.success(),
            "kubectl {} failed ({}): {}{}\nserver log tail:\n{}",
            all.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log(), 40)
        );
        String::from_utf8(out.stdout).expect("kubectl printed UTF-8")
    }

    /// `kubectl get <kind> <name> -o json` (or the list when `name` is empty), parsed.
    pub fn get_json(&self, kind: &str, name: &str) -> serde_json::Value {
        let mut args = vec!["get", kind];
        if !name.is_empty() {
            args.push(name);
        }
        args.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl_ok(&args)).expect("kubectl -o json printed JSON")
    }

    /// The events of the default namespace about the object named `name`, as kubectl lists them.
    pub fn events_about(&self, name: &str) -> Vec<serde_json::Value> {
        let list = self.get_json("events", "");
        list["items"]
            .as_array()
            .map(|items| items.iter().filter(|e| e["involvedObject"]["name"] == name).cloned().collect())
            .unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILLs the server, as a crash would; containers and their shims stay.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let status = child.wait().unwrap();
            assert_eq!(status.signal(), Some(libc::SIGKILL), "the server died of SIGKILL");
        }
    }

    /// SIGTERMs the server and waits for it (SIGKILL after `STOP_TIMEOUT`): how it exited.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                eprintln!("skiff server did not stop within {STOP_TIMEOUT:?} of SIGTERM: SIGKILL");
                let _ = child.kill();
                return Some(child.wait().unwrap());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server if it runs (SIGTERM) and starts it again on the same data dir.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
        self.wait_ready();
    }

    /// The end of a passing test: the server stops cleanly on SIGTERM (exit 0), Skiff has left no
    /// process, mount or cgroup of a pod behind, and after the sweep nothing of the test is left.
    /// Delete the test's pods first: containers outlive a server stop by design.
    pub fn finish(mut self) {
        if let Some(status) = self.stop() {
            assert!(
                status.success(),
                "skiff server exited with {status} on SIGTERM; log tail:\n{}",
                tail(&self.log(), 60)
            );
        }
        let deadline = Instant::now() + CLEANUP_TIMEOUT;
        let mut left = self.leftovers(false);
        while !left.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(250));
            left = self.leftovers(false);
        }
        let report = left.describe();
        let log = self.log();
        self.finished = true;
        self.sweep();
        assert!(report.is_empty(), "Skiff left these behind after its pods were deleted:\n{report}");
        self.assert_nothing_left();
        assert!(!log.contains("panicked at"), "a part of skiff server panicked; its log:\n{log}");
    }

    /// Asserts that nothing of this test is on the machine: no process, mount, cgroup (not even
    /// the cgroup root) and no temp dir.
    pub fn assert_nothing_left(&self) {
        let report = self.leftovers(true).describe();
        assert!(report.is_empty(), "left on the machine after the test:\n{report}");
        assert!(!self.dir.exists(), "{} still exists", self.dir.display());
    }

    /// What of this test is still on the machine. `with_root` counts the cgroup root dirs
    /// themselves, which a stopped node may keep (as k3s keeps `kubepods`).
    pub fn leftovers(&self, with_root: bool) -> Leftovers {
        let own = [Some(std::process::id()), self.pid()];
        let processes = test_processes(&self.dir, &self.cgroup_root)
            .into_iter()
            .filter(|(pid, _)| !own.contains(&Some(*pid as u32)))
            .collect();
        let mut cgroups = Vec::new();
        for root in cgroup_roots(&self.cgroup_root) {
            let mut below = dirs_deepest_first(&root);
            if !with_root {
                below.retain(|dir| dir != &root);
            }
            cgroups.extend(below);
        }
        // A stopped node keeps its bridge (as k3s keeps cni0), but no pod's veth may stay on it.
        let mut links: Vec<String> = bridge_ports(&self.bridge);
        if with_root && link_exists(&self.bridge) {
            links.push(self.bridge.clone());
        }
        Leftovers { processes, mounts: mounts_under(&self.dir), cgroups, links }
    }

    /// Removes everything this test made, whatever state it is in. Never panics.
    fn sweep(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Processes first (shims, then anything in the test's cgroups), so nothing holds a mount.
        for _ in 0..3 {
            let procs = test_processes(&self.dir, &self.cgroup_root);
            if procs.is_empty() {
                break;
            }
            for (pid, _) in &procs {
                if *pid as u32 != std::process::id() {
                    let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        for root in cgroup_roots(&self.cgroup_root) {
            for dir in dirs_deepest_first(&root) {
                remove_cgroup(&dir);
            }
        }
        for link in bridge_ports(&self.bridge).into_iter().chain([self.bridge.clone()]) {
            if link_exists(&link) {
                let _ = Command::new("ip").args(["link", "del", &link]).status();
            }
        }
        for mount in mounts_under(&self.dir).into_iter().rev() {
            if let Err(err) = nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH) {
                eprintln!("sweep: umount -l {}: {err}", mount.display());
            }
        }
        if self.dir.exists()
            && let Err(err) = fs::remove_dir_all(&self.dir)
        {
            eprintln!("sweep: removing {}: {err}", self.dir.display());
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if std::thread::panicking() {
            eprintln!("--- skiff server log ({}) ---\n{}", self.log_path().display(), tail(&self.log(), 120));
        }
        self.stop();
        let left = self.leftovers(true).describe();
        if !left.is_empty() {
            eprintln!("sweeping what the test left:\n{left}");
        }
        self.sweep();
    }
}

#[derive(Debug, Default)]
pub struct Leftovers {
    /// PID and command line.
    pub processes: Vec<(i32, String)>,
    pub mounts: Vec<PathBuf>,
    pub cgroups: Vec<PathBuf>,
    /// Network interfaces: veths left on the test's bridge, and the bridge itself.
    pub links: Vec<String>,
}

impl Leftovers {
    pub fn is_empty(&self) -> bool {
        self.processes.is_empty() && self.mounts.is_empty() && self.cgroups.is_empty() && self.links.is_empty()
    }

    /// One line per leftover; empty when there is none.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (pid, cmdline) in &self.processes {
            let _ = writeln!(out, "  process {pid}: {cmdline}");
        }
        for mount in &self.mounts {
            let _ = writeln!(out, "  mount {}", mount.display());
        }
        for cgroup in &self.cgroups {
            let _ = writeln!(out, "  cgroup {}", cgroup.display());
        }
        for link in &self.links {
            let _ = writeln!(out, "  link {link}");
        }
        out
    }
}

/// The columns of the row for `name` in a `kubectl get` table, if it has one.
pub fn table_row(table: &str, name: &str) -> Option<Vec<String>> {
    table
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .find(|cols| cols.first().map(String::as_str) == Some(name))
}

pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// The interfaces enslaved to `bridge` (its pods' veths).
pub fn bridge_ports(bridge: &str) -> Vec<String> {
    fs::read_dir(Path::new("/sys/class/net").join(bridge).join("brif"))
        .map(|entries| entries.flatten().filter_map(|e| e.file_name().to_str().map(String::from)).collect())
        .unwrap_or_default()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Processes of one test: those whose command line names its temp dir (the server, shims) and
/// those in a cgroup under its cgroup root (containers).
fn test_processes(dir: &Path, cgroup_root: &str) -> Vec<(i32, String)> {
    let dir = dir.to_string_lossy();
    let in_root = |line: &str| {
        let path = line.splitn(3, ':').nth(2).unwrap_or("");
        path.split('/').any(|part| part == cgroup_root)
    };
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else { return found };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let cmdline = fs::read(entry.path().join("cmdline"))
            .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " ").trim().to_string())
            .unwrap_or_default();
        let cgroups = fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
        if cmdline.contains(dir.as_ref()) || cgroups.lines().any(in_root) {
            found.push((pid, cmdline));
        }
    }
    found
}

pub use skiff_runtime::mountinfo::mounts_under;

/// Every directory named `name` in every mounted cgroup hierarchy (v1 and v2). The runtime may
/// nest its root under the server's own cgroup, so this searches a few levels down.
pub fn cgroup_roots(name: &str) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found = Vec::new();
    for line in info.lines() {
        let Some((before, after)) = line.split_once(" - ") else { continue };
        let fstype = after.split(' ').next().unwrap_or("");
        if fstype != "cgroup" && fstype != "cgroup2" {
            continue;
        }
        let Some(point) = before.split(' ').nth(4) else { continue };
        find_named(Path::new(&skiff_runtime::mountinfo::unescape(point)), name, 6, &mut found);
    }
    found
}

fn find_named(dir: &Path, name: &str, depth: u32, found: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        let path = entry.path();
        if entry.file_name().to_str() == Some(name) {
            found.push(path);
        } else if depth > 0 {
            find_named(&path, name, depth - 1, found);
        }
    }
}

/// `root` and every directory below it, children before parents.
fn dirs_deepest_first(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(root) {
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.extend(dirs_deepest_first(&entry.path()));
            }
        }
    }
    if root.is_dir() {
        out.push(root.to_path_buf());
    }
    out
}

/// Kills what is left in one cgroup (thawing it first, or the kill waits forever) and removes it.
fn remove_cgroup(dir: &Path) {
    let _ = fs::write(dir.join("freezer.state"), "THAWED");
    let _ = fs::write(dir.join("cgroup.freeze"), "0");
    for _ in 0..50 {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        let pids: Vec<i32> = procs.lines().filter_map(|l| l.trim().parse().ok()).collect();
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            if pid as u32 != std::process::id() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Err(err) = fs::remove_dir(dir) {
        eprintln!("sweep: rmdir {}: {err}", dir.display());
    }
}

/// The test images of one test: the busybox image (`skiff_runtime::testing`) pushed to a
/// `docker-registry` on loopback, so pulls never leave the machine. The registry process is
/// killed (by PID) when this is dropped; drop it before `TestServer::finish`.
pub struct TestImages {
    registry: skiff_runtime::testing::LocalRegistry,
    busybox: String,
    _layout: tempfile::TempDir,
}

impl TestImages {
    pub fn start() -> TestImages {
        Self::start_on(skiff_runtime::testing::LocalRegistry::start().expect("starting docker-registry on loopback"))
    }

    /// The same image on a registry that wants basic auth as `username`/`password`.
    pub fn start_with_auth(username: &str, password: &str) -> TestImages {
        Self::start_on(
            skiff_runtime::testing::LocalRegistry::start_with_auth(username, password)
                .expect("starting docker-registry with htpasswd auth on loopback"),
        )
    }

    fn start_on(registry: skiff_runtime::testing::LocalRegistry) -> TestImages {
        use skiff_runtime::testing::{build_busybox_image, push};
        let layout = tempfile::Builder::new().prefix("skiff-test-image-").tempdir_in("/tmp").unwrap();
        let image = build_busybox_image(layout.path()).expect("building the busybox test image");
        let busybox = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(push(&registry, "busybox:1.36", &image))
            .expect("pushing the busybox test image");
        TestImages { registry, busybox, _layout: layout }
    }

    /// `127.0.0.1:PORT/busybox:1.36`
    pub fn busybox(&self) -> String {
        self.busybox.clone()
    }

    /// `127.0.0.1:PORT` of the registry.
    pub fn registry_addr(&self) -> String {
        self.registry.addr().to_string()
    }

    /// A reference on the same registry that was never pushed: pulling it gets a 404.
    pub fn missing(&self) -> String {
        format!("{}/does-not-exist:1.36", self.registry.addr())
    }
}

/// A Deployment whose pods no node can take: they stay Pending, unbound, and go at once when
/// deleted.
pub fn unschedulable_deployment(name: &str, replicas: u32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      nodeSelector: {{skiff.test/none: "true"}}
      containers:
      - name: app
        image: example.invalid/app:1
"#
    )
}
