//! Privileged runtime tests: real namespaces, overlay mounts and cgroups, as root. Each test has
//! its own temp root, its own cgroup root (`skiff-test-<pid>-<n>`) and its own local registry,
//! so they run in parallel; the `Fixture` guard kills and removes everything on drop, also when
//! a test fails.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use skiff_runtime::testing::{LocalRegistry, OciImage, build_busybox_image, push};
use skiff_runtime::{
    CgroupManager, ContainerSpec, ContainerState, Error, ExecSpec, Image, MountSpec, Resources, Runtime, RuntimeConfig,
    SandboxSpec, SecurityContext,
};

fn busybox() -> &'static OciImage {
    static IMAGE: OnceLock<OciImage> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        build_busybox_image(dir.path()).unwrap()
    })
}

struct Fixture {
    rt: Option<Runtime>,
    root: tempfile::TempDir,
    cgroup_root: String,
    registry: LocalRegistry,
    image: Image,
}

impl Fixture {
    async fn new() -> Fixture {
        Self::with_registry(LocalRegistry::start().expect("start docker-registry")).await
    }

    async fn with_registry(registry: LocalRegistry) -> Fixture {
        static N: AtomicU32 = AtomicU32::new(0);
        let cgroup_root = format!("skiff-test-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let root = tempfile::Builder::new().prefix("skiff-rt-").tempdir().unwrap();
        let rt = Runtime::new(config(root.path(), &cgroup_root)).expect("runtime on this host");
        let reference = push(&registry, "busybox:1", busybox()).await.expect("push busybox");
        let image = rt.pull_image(&reference, registry.auth().as_ref()).await.expect("pull busybox");
        Fixture { rt: Some(rt), root, cgroup_root, registry, image }
    }

    fn rt(&self) -> &Runtime {
        self.rt.as_ref().unwrap()
    }

    fn spec(&self, name: &str, argv: &[&str]) -> ContainerSpec {
        ContainerSpec {
            name: name.into(),
            image: Some(self.image.clone()),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: self.image.config.env.clone(),
            working_dir: None,
            log_path: self.root.path().join("logs").join(format!("{name}.log")),
            resources: Resources::default(),
            ..Default::default()
        }
    }

    async fn sandbox(&self, id: &str, hostname: &str) {
        self.rt()
            .run_sandbox(&SandboxSpec { id: id.into(), hostname: hostname.into(), host_network: false })
            .await
            .unwrap();
    }

    /// create + start + wait; returns (id, exit code, log text).
    async fn run(&self, sandbox: &str, spec: ContainerSpec) -> (String, skiff_runtime::ExitStatus, String) {
        let id = self.rt().create_container(sandbox, &spec).await.unwrap();
        self.rt().start_container(&id).await.unwrap();
        let status =
            tokio::time::timeout(Duration::from_secs(30), self.rt().wait_container(&id)).await.unwrap().unwrap();
        let log = std::fs::read_to_string(&spec.log_path).unwrap_or_default();
        (id, status, log)
    }
}

fn config(root: &Path, cgroup_root: &str) -> RuntimeConfig {
    RuntimeConfig {
        root: root.to_path_buf(),
        // SKIFF_TEST_SHIM wraps the shim (strace, perf) when investigating.
        shim_exe: std::env::var_os("SKIFF_TEST_SHIM")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_skiff-runtime-shim"))),
        cgroup_root: cgroup_root.into(),
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        skiff_runtime::testing::remove_everything(self.rt.take().unwrap(), &self.cgroup_root);
        let _ = &self.registry;
    }
}

/// Test-side wait for a container's output (it has no other readiness signal).
async fn wait_for_log(path: &Path, text: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(path).unwrap_or_default().contains(text) {
        assert!(std::time::Instant::now() < deadline, "{text:?} never appeared in {}", path.display());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn log_lines(log: &str) -> Vec<(String, String, String)> {
    log.lines()
        .map(|l| {
            let mut p = l.splitn(4, ' ');
            let (_ts, stream, tag, text) =
                (p.next().unwrap(), p.next().unwrap(), p.next().unwrap(), p.next().unwrap_or(""));
            (stream.to_string(), tag.to_string(), text.to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_hello_is_logged_in_cri_format_and_exits_zero() {
    let f = Fixture::new().await;
    f.sandbox("pod-echo", "echo-pod").await;
    let (_, status, log) = f.run("pod-echo", f.spec("echo", &["echo", "hello"])).await;
    assert_eq!(status.code, 0);
    assert_eq!(status.signal, None);
    assert!(status.finished_at >= status.started_at);
    assert_eq!(log_lines(&log), vec![("stdout".into(), "F".into(), "hello".into())]);
    let ts = log.split(' ').next().unwrap();
    assert!(ts.len() == 30 && ts.ends_with('Z'), "RFC3339Nano timestamp: {ts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_stderr_and_a_partial_last_line_are_reported() {
    let f = Fixture::new().await;
    f.sandbox("pod-exit", "exit-pod").await;
    let (_, status, log) =
        f.run("pod-exit", f.spec("three", &["sh", "-c", "echo oops >&2; printf partial; exit 3"])).await;
    assert_eq!(status.code, 3);
    let mut lines = log_lines(&log);
    lines.sort();
    assert_eq!(
        lines,
        vec![("stderr".into(), "F".into(), "oops".into()), ("stdout".into(), "P".into(), "partial".into())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_container_that_ignores_sigterm_is_killed_with_137() {
    let f = Fixture::new().await;
    f.sandbox("pod-kill", "kill-pod").await;
    let id = f.rt().create_container("pod-kill", &f.spec("sleeper", &["sleep", "1000"])).await.unwrap();
    assert_eq!(f.rt().container(&id).unwrap().state, ContainerState::Created);
    f.rt().start_container(&id).await.unwrap();
    let ContainerState::Running { pid, .. } = f.rt().container(&id).unwrap().state else { panic!("not running") };
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    // sleep as pid 1 has no SIGTERM handler, so only the SIGKILL after the grace ends it.
    let started = std::time::Instant::now();
    let status = f.rt().stop_container(&id, Duration::from_millis(300)).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!((status.code, status.signal, status.oom_killed), (137, Some(9), false));
    assert!(matches!(f.rt().container(&id).unwrap().state, ContainerState::Exited(ref s) if s.code == 137));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_written_to_the_container_cgroup_and_oom_is_reported() {
    let f = Fixture::new().await;
    f.sandbox("pod-mem", "mem-pod").await;
    let mut spec = f.spec("limited", &["sh", "-c", "cat /proc/self/cgroup; sleep 1000"]);
    spec.resources =
        Resources { memory_limit_bytes: Some(32 << 20), cpu_limit_millis: Some(500), cpu_request_millis: Some(250) };
    let id = f.rt().create_container("pod-mem", &spec).await.unwrap();
    let mgr = CgroupManager::detect(&f.cgroup_root).unwrap();
    let rel = mgr.container_path("pod-mem", &id);
    let dirs = mgr.dirs(&rel);
    let read = |file: &str| {
        dirs.iter()
            .find_map(|d| std::fs::read_to_string(d.join(file)).ok())
            .unwrap_or_else(|| panic!("{file} in {dirs:?}"))
    };
    match mgr.layout() {
        skiff_runtime::cgroups_layout::V1 { .. } => {
            assert_eq!(read("memory.limit_in_bytes").trim(), (32u64 << 20).to_string());
            assert_eq!(read("cpu.cfs_quota_us").trim(), "50000");
            assert_eq!(read("cpu.shares").trim(), "256");
        }
        skiff_runtime::cgroups_layout::V2 { .. } => {
            assert_eq!(read("memory.max").trim(), (32u64 << 20).to_string());
            assert_eq!(read("cpu.max").trim(), "50000 100000");
        }
    }
    f.rt().start_container(&id).await.unwrap();
    let ContainerState::Running { pid, .. } = f.rt().container(&id).unwrap().state else { panic!("not running") };
    assert!(read("cgroup.procs").lines().any(|l| l.trim() == pid.to_string()), "init {pid} is in its cgroup");
    f.rt().stop_container(&id, Duration::ZERO).await.unwrap();

    // A shell variable of 64 MiB under a 16 MiB limit: the kernel OOM-kills the container.
    let mut spec = f.spec("hog", &["sh", "-c", "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo survived"]);
    spec.resources.memory_limit_bytes = Some(16 << 20);
    let (_, status, _) = f.run("pod-mem", spec).await;
    assert_eq!((status.code, status.oom_killed), (137, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_containers_cpu_time_and_working_set_are_read_from_its_cgroup() {
    let f = Fixture::new().await;
    f.sandbox("pod-use", "use-pod").await;
    // 8 MiB held in a shell variable, then a busy loop.
    let argv = ["sh", "-c", "x=$(head -c 8388608 /dev/zero | tr '\\0' a); echo filled; while :; do :; done"];
    let spec = f.spec("busy", &argv);
    let id = f.rt().create_container("pod-use", &spec).await.unwrap();
    f.rt().start_container(&id).await.unwrap();
    wait_for_log(&spec.log_path, "filled").await;
    let first = f.rt().container_usage("pod-use", &id).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = f.rt().container_usage("pod-use", &id).unwrap();
    assert!(second.cpu_ns > first.cpu_ns, "the busy loop's CPU time grows: {first:?} then {second:?}");
    assert!(second.memory_working_set_bytes > 8 << 20, "the variable is in the working set: {second:?}");
    let node = f.rt().node_usage().unwrap();
    assert!(node.cpu_ns > second.cpu_ns && node.memory_working_set_bytes > second.memory_working_set_bytes, "{node:?}");
    assert!(f.rt().container_usage("pod-use", "no-such-container").is_err());
    f.rt().stop_container(&id, Duration::ZERO).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whiteouts_of_the_upper_layer_hide_lower_files() {
    let f = Fixture::new().await;
    f.sandbox("pod-wh", "wh-pod").await;
    let script = "ls /etc/skiff | sort | tr '\\n' ' '; echo; ls /etc/skiff/opaque; cat /etc/skiff/kept-hardlink";
    let (_, status, log) = f.run("pod-wh", f.spec("ls", &["sh", "-c", script])).await;
    assert_eq!(status.code, 0, "{log}");
    let out: Vec<String> = log_lines(&log).into_iter().map(|(_, _, t)| t).collect();
    assert_eq!(out, ["kept kept-hardlink layer2 opaque ", "new", "kept"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_container_sees_the_sandbox_hostname_and_is_pid_1() {
    let f = Fixture::new().await;
    f.sandbox("pod-host", "web-0").await;
    let script = "hostname; cat /etc/hostname; echo $$; cat /proc/1/cmdline | tr '\\0' ' '; echo; ip link 2>/dev/null | grep -c '^[0-9]'; cat /sys/class/net/lo/operstate";
    let (_, status, log) = f.run("pod-host", f.spec("host", &["sh", "-c", script])).await;
    assert_eq!(status.code, 0, "{log}");
    let out: Vec<String> = log_lines(&log).into_iter().map(|(_, _, t)| t).collect();
    assert_eq!(out[0], "web-0");
    assert_eq!(out[1], "web-0");
    assert_eq!(out[2], "1");
    assert!(out[3].starts_with("sh -c hostname"), "{out:?}");
    assert_eq!(out[4], "1", "only loopback in the pod network namespace");
    assert_eq!(out[5], "unknown", "lo is up (operstate of lo reads unknown)");

    // Exec'd directly (busybox sh would ignore SIGQUIT for its children itself).
    let (_, status, log) =
        f.run("pod-host", f.spec("signals", &["grep", "-E", "SigIgn|SigBlk", "/proc/self/status"])).await;
    assert_eq!(status.code, 0, "{log}");
    let out: Vec<String> = log_lines(&log).into_iter().map(|(_, _, t)| t).collect();
    assert_eq!(out, ["SigBlk:\t0000000000000000", "SigIgn:\t0000000000000000"], "default signal handling");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_of_a_pod_share_ipc_and_net_but_not_pids() {
    let f = Fixture::new().await;
    f.sandbox("pod-share", "share").await;
    let a = f.rt().create_container("pod-share", &f.spec("a", &["sleep", "1000"])).await.unwrap();
    f.rt().start_container(&a).await.unwrap();
    let ContainerState::Running { pid, .. } = f.rt().container(&a).unwrap().state else { panic!() };
    let script = "for p in /proc/[0-9]*; do cat $p/comm; done";
    let (_, status, log) = f.run("pod-share", f.spec("b", &["sh", "-c", script])).await;
    assert_eq!(status.code, 0);
    let comms: Vec<String> = log_lines(&log).into_iter().map(|(_, _, t)| t).collect();
    assert!(comms.contains(&"sh".to_string()) && !comms.contains(&"sleep".to_string()), "{comms:?}");
    use std::os::unix::fs::MetadataExt;
    let ino = |p: String| std::fs::metadata(p).unwrap().ino();
    let pinned = |n: &str| f.root.path().join("sandboxes/pod-share/ns").join(n).display().to_string();
    for n in ["net", "ipc", "uts"] {
        assert_eq!(ino(format!("/proc/{pid}/ns/{n}")), ino(pinned(n)), "{n} is the sandbox's");
        assert_ne!(ino(format!("/proc/{pid}/ns/{n}")), ino(format!("/proc/self/ns/{n}")), "{n} is not the host's");
    }
    assert_ne!(ino(format!("/proc/{pid}/ns/pid")), ino("/proc/self/ns/pid".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_executable_fails_start_like_runc() {
    let f = Fixture::new().await;
    f.sandbox("pod-nope", "nope").await;
    let id = f.rt().create_container("pod-nope", &f.spec("nope", &["nope"])).await.unwrap();
    let err = f.rt().start_container(&id).await.unwrap_err();
    assert!(matches!(err, Error::Spawn(_)));
    assert_eq!(err.to_string(), r#"exec: "nope": executable file not found in $PATH"#);
    let status = f.rt().wait_container(&id).await.unwrap();
    assert_eq!(status.code, 128);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removal_leaves_no_mount_cgroup_or_process_behind() {
    let f = Fixture::new().await;
    f.sandbox("pod-clean", "clean").await;
    let id = f.rt().create_container("pod-clean", &f.spec("long", &["sleep", "1000"])).await.unwrap();
    f.rt().start_container(&id).await.unwrap();
    let ContainerState::Running { pid, .. } = f.rt().container(&id).unwrap().state else { panic!() };
    let root = f.root.path().display().to_string();
    let mountinfo = || std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(mountinfo().contains(&root), "the sandbox's namespaces are pinned under the root");

    f.rt().remove_container(&id).await.unwrap();
    f.rt().remove_sandbox("pod-clean").await.unwrap();
    assert!(!mountinfo().contains(&root), "a mount under {root} is left");
    let mgr = CgroupManager::detect(&f.cgroup_root).unwrap();
    for d in mgr.dirs(&mgr.pod_path("pod-clean")) {
        assert!(!d.exists(), "{} is left", d.display());
    }
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "the container init is left");
    let shims = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| String::from_utf8_lossy(c).contains(&id))
        .count();
    assert_eq!(shims, 0, "a shim of {id} is left");
    assert!(f.rt().list_containers().unwrap().is_empty());
    assert!(f.rt().list_sandboxes().unwrap().is_empty());
    assert!(matches!(f.rt().container(&id), Err(Error::NoContainer(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_runtime_adopts_running_containers_and_finds_images() {
    let f = Fixture::new().await;
    f.sandbox("pod-adopt", "adopt").await;
    let id = f
        .rt()
        .create_container(
            "pod-adopt",
            &f.spec("waiter", &["sh", "-c", "trap 'exit 7' TERM; echo trapped; sleep 1000 & wait"]),
        )
        .await
        .unwrap();
    f.rt().start_container(&id).await.unwrap();
    // SIGTERM before the trap is set would be dropped (pid 1 without a handler).
    wait_for_log(&f.spec("waiter", &[]).log_path, "trapped").await;

    let again = Runtime::new(config(f.root.path(), &f.cgroup_root)).unwrap();
    assert_eq!(again.find_image(&f.image.reference), Some(f.image.clone()));
    assert_eq!(again.find_image(&f.image.repo_digest).map(|i| i.id), Some(f.image.id.clone()));
    let listed = again.list_containers().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].id.as_str(), listed[0].name.as_str(), listed[0].sandbox_id.as_str()),
        (id.as_str(), "waiter", "pod-adopt")
    );
    assert!(matches!(listed[0].state, ContainerState::Running { .. }));
    assert_eq!(again.list_sandboxes().unwrap(), ["pod-adopt"]);
    let status = again.stop_container(&id, Duration::from_secs(5)).await.unwrap();
    assert_eq!((status.code, status.signal), (7, None), "the adopted container got SIGTERM and exited on its own");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_authenticate_and_missing_tags_are_not_found() {
    let f = Fixture::with_registry(LocalRegistry::start_with_auth("skiff", "s3cret").unwrap()).await;
    assert_eq!(f.image.layers, busybox().diff_ids);
    assert_eq!(f.image.id, busybox().config.digest);
    assert_eq!(f.image.repo_digest, format!("{}/busybox@{}", f.registry.addr(), busybox().manifest.digest));
    assert_eq!(f.image.config.cmd, ["sh"]);

    let missing = format!("{}/busybox:nope", f.registry.addr());
    let err = f.rt().pull_image(&missing, f.registry.auth().as_ref()).await.unwrap_err();
    assert!(err.is_image_not_found(), "{err}");
    let denied = f.rt().pull_image(&f.image.reference, None).await.unwrap_err();
    assert!(!denied.is_image_not_found(), "{denied}");
    let by_digest = format!("{}/busybox@{}", f.registry.addr(), busybox().manifest.digest);
    assert_eq!(f.rt().pull_image(&by_digest, None).await.unwrap().id, f.image.id, "a stored digest needs no registry");
}

/// `cargo test -p skiff-runtime --features testing --test runtime -- --ignored --nocapture`:
/// the create+start+wait+remove latency of `true`, median and p90 of 20 after a warm-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check: run on demand"]
async fn lifecycle_of_true_is_measured() {
    let f = Fixture::new().await;
    f.sandbox("pod-bench", "bench").await;
    let mut times = Vec::new();
    for i in 0..23 {
        let spec = f.spec(&format!("true-{i}"), &["true"]);
        let t = std::time::Instant::now();
        let id = f.rt().create_container("pod-bench", &spec).await.unwrap();
        let t1 = t.elapsed();
        f.rt().start_container(&id).await.unwrap();
        let t2 = t.elapsed();
        let status = f.rt().wait_container(&id).await.unwrap();
        let t3 = t.elapsed();
        f.rt().remove_container(&id).await.unwrap();
        let elapsed = t.elapsed();
        if std::env::var_os("SKIFF_BENCH_PHASES").is_some() {
            println!("create {t1:?} start {:?} wait {:?} remove {:?}", t2 - t1, t3 - t2, elapsed - t3);
        }
        assert_eq!(status.code, 0);
        if i >= 3 {
            times.push(elapsed);
        }
    }
    times.sort();
    println!("create+start+wait+remove of true: median {:?}, p90 {:?}, min {:?}", times[10], times[18], times[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_resolves_to_this_platform_and_docker_media_types_pull() {
    let f = Fixture::new().await;
    let other = if std::env::consts::ARCH == "x86_64" { "arm64" } else { "amd64" };
    let here = if std::env::consts::ARCH == "x86_64" { "amd64" } else { "arm64" };
    let foreign = busybox().for_architecture(other).unwrap();
    let (reference, index_digest) =
        skiff_runtime::testing::push_index(&f.registry, "multi:1", &[(&foreign, other), (busybox(), here)])
            .await
            .unwrap();
    let image = f.rt().pull_image(&reference, None).await.unwrap();
    assert_eq!(image.id, busybox().config.digest, "the {here} entry, not the first one");
    assert_eq!(image.repo_digest, format!("{}/multi@{index_digest}", f.registry.addr()));

    let docker = busybox().as_docker_schema2().unwrap();
    let reference = push(&f.registry, "docker:1", &docker).await.unwrap();
    let image = f.rt().pull_image(&reference, None).await.unwrap();
    assert_eq!(image.repo_digest, format!("{}/docker@{}", f.registry.addr(), docker.manifest.digest));
    f.sandbox("pod-docker", "docker").await;
    let mut spec = f.spec("cat", &["cat", "/etc/skiff/layer2"]);
    spec.image = Some(image);
    let (_, status, log) = f.run("pod-docker", spec).await;
    assert_eq!((status.code, log_lines(&log)[0].2.as_str()), (0, "layer 2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_containers_run_at_once_and_repeated_calls_are_idempotent() {
    let f = Fixture::new().await;
    f.sandbox("pod-many", "many").await;
    f.sandbox("pod-many", "many").await;
    let runs = (0..20).map(|i| {
        let spec = f.spec(&format!("c{i}"), &["sh", "-c", &format!("echo {i}; exit {}", i % 4)]);
        let f = &f;
        async move {
            let (id, status, log) = f.run("pod-many", spec).await;
            (i, id, status.code, log)
        }
    });
    let results = futures::future::join_all(runs).await;
    for (i, id, code, log) in &results {
        assert_eq!(*code, i % 4);
        assert_eq!(log_lines(log), vec![("stdout".into(), "F".into(), i.to_string())]);
        f.rt().remove_container(id).await.unwrap();
        f.rt().remove_container(id).await.unwrap();
    }
    f.rt().remove_sandbox("pod-many").await.unwrap();
    f.rt().remove_sandbox("pod-many").await.unwrap();
    assert!(matches!(f.rt().create_container("pod-many", &f.spec("late", &["true"])).await, Err(Error::NoSandbox(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_whose_namespaces_were_lost_is_made_again() {
    static N: AtomicU32 = AtomicU32::new(0);
    let cgroup_root = format!("skiff-test-{}-ns{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
    let root = tempfile::Builder::new().prefix("skiff-rt-").tempdir().unwrap();
    let rt = Runtime::new(config(root.path(), &cgroup_root)).unwrap();
    let _cleanup = SandboxCleanup { root: root.path().to_path_buf(), cgroup_root: cgroup_root.clone() };
    let spec = SandboxSpec { id: "pod-lost".into(), hostname: "lost".into(), host_network: false };
    rt.run_sandbox(&spec).await.unwrap();
    let net = root.path().join("sandboxes/pod-lost/ns/net");
    let pinned = || std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(&net.display().to_string());
    assert!(pinned());
    // What a reboot does: the bind mounts are gone, the files stay.
    nix::mount::umount(&net).unwrap();
    assert!(!pinned());
    rt.run_sandbox(&spec).await.unwrap();
    assert!(pinned(), "run_sandbox pins fresh namespaces");
    rt.remove_sandbox("pod-lost").await.unwrap();
    assert!(!pinned());
    assert!(!root.path().join("sandboxes/pod-lost").exists());
}

/// Unpins every sandbox's namespaces under `root` and removes the cgroup root, even when the
/// test failed half-way.
struct SandboxCleanup {
    root: PathBuf,
    cgroup_root: String,
}

impl Drop for SandboxCleanup {
    fn drop(&mut self) {
        for sandbox in std::fs::read_dir(self.root.join("sandboxes")).into_iter().flatten().flatten() {
            for ns in ["net", "ipc", "uts"] {
                let _ = nix::mount::umount2(&sandbox.path().join("ns").join(ns), nix::mount::MntFlags::MNT_DETACH);
            }
        }
        if let Ok(m) = CgroupManager::detect(&self.cgroup_root) {
            let _ = m.kill_and_remove(Path::new(&self.cgroup_root), Duration::from_secs(5));
        }
    }
}

/// Runs `spec` in container `id`, feeding `input` to stdin; returns (exit code, stdout, stderr).
async fn exec_collect(rt: &Runtime, id: &str, spec: ExecSpec, input: Option<&[u8]>) -> (i32, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut p = rt.exec(id, spec).await.unwrap();
    assert!(p.pid() > 0);
    let stdin = p.take_stdin();
    let writer = async move {
        if let (Some(mut w), Some(data)) = (stdin, input) {
            w.write_all(data).await.unwrap();
            // Dropping the writer is the end of input.
        }
    };
    let read = |r: Option<skiff_runtime::ExecReader>| async move {
        let mut out = Vec::new();
        if let Some(mut r) = r {
            r.read_to_end(&mut out).await.unwrap();
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    let all = async { tokio::join!(writer, read(p.take_stdout()), read(p.take_stderr())) };
    let ((), out, err) = tokio::time::timeout(Duration::from_secs(20), all).await.expect("exec output ends");
    let code = tokio::time::timeout(Duration::from_secs(20), p.wait()).await.expect("exec exits").unwrap();
    (code, out, err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_in_the_container_with_pipes_exit_codes_and_a_terminal() {
    let f = Fixture::new().await;
    f.sandbox("pod-exec", "exec-pod").await;
    let mut spec = f.spec("main", &["sleep", "60"]);
    spec.env.push("FOO=from-container".into());
    spec.working_dir = Some("/tmp".into());
    let id = f.rt().create_container("pod-exec", &spec).await.unwrap();
    f.rt().start_container(&id).await.unwrap();
    let piped = |argv: &[&str]| ExecSpec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec!["EXTRA=from-exec".into()],
        stdout: true,
        stderr: true,
        ..Default::default()
    };

    let script = "echo hi; echo oops >&2; hostname; pwd; echo $FOO $EXTRA; cat /proc/1/cmdline | tr '\\0' ' '";
    let (code, out, err) = exec_collect(f.rt(), &id, piped(&["sh", "-c", script]), None).await;
    assert_eq!(code, 0, "stderr: {err}");
    assert_eq!(
        out, "hi\nexec-pod\n/tmp\nfrom-container from-exec\nsleep 60 ",
        "in the container's uts, root, cwd, env and pid ns"
    );
    assert_eq!(err, "oops\n");

    let (code, _, _) = exec_collect(f.rt(), &id, piped(&["sh", "-c", "exit 3"]), None).await;
    assert_eq!(code, 3);

    let cat = ExecSpec { stdin: true, ..piped(&["cat"]) };
    let (code, out, _) = exec_collect(f.rt(), &id, cat, Some(b"hello\nworld\n")).await;
    assert_eq!((code, out.as_str()), (0, "hello\nworld\n"), "stdin reaches cat and its end closes it");

    let tty = ExecSpec {
        tty: true,
        terminal_size: Some(skiff_runtime::TerminalSize { width: 100, height: 40 }),
        ..piped(&["sh", "-c", "tty; stty size"])
    };
    let (code, out, _) = exec_collect(f.rt(), &id, tty, None).await;
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.split("\r\n").collect();
    assert!(lines[0].starts_with("/dev/pts/") && lines[0][9..].parse::<u32>().is_ok(), "{out:?}");
    assert_eq!(lines[1], "40 100", "the terminal has the size asked for");

    let missing = f.rt().exec(&id, piped(&["nope"])).await.unwrap_err();
    assert_eq!(missing.to_string(), r#"exec: "nope": executable file not found in $PATH"#);

    // The container still runs its own process, untouched by the execs.
    assert!(matches!(f.rt().container(&id).unwrap().state, ContainerState::Running { .. }));
    f.rt().stop_container(&id, Duration::ZERO).await.unwrap();
    assert!(f.rt().exec(&id, piped(&["true"])).await.is_err(), "no exec into an exited container");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_directories_and_files_are_bind_mounted_and_read_only_ones_refuse_writes() {
    let f = Fixture::new().await;
    f.sandbox("pod-vol", "vol-pod").await;
    let host = tempfile::tempdir().unwrap();
    let (data, config) = (host.path().join("data"), host.path().join("config"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(data.join("seed"), "from the host\n").unwrap();
    std::fs::write(config.join("app.conf"), "key=value\n").unwrap();
    let token = host.path().join("token");
    std::fs::write(&token, "secret\n").unwrap();

    let script = "cat /data/seed; echo written > /data/out; cat /etc/app/app.conf; \
        echo x > /etc/app/new && echo config-writable || echo config-read-only; \
        cat /var/run/token";
    let mut spec = f.spec("vol", &["sh", "-c", script]);
    spec.mounts = vec![
        MountSpec { source: data.clone(), destination: "/data".into(), ..Default::default() },
        // Nested, missing on the image: created in the container's layer, not on the host.
        MountSpec { source: config.clone(), destination: "/etc/app".into(), read_only: true, ..Default::default() },
        // /var/run is a symlink to /run in many images; either way it stays inside the root.
        MountSpec { source: token, destination: "/var/run/token".into(), read_only: true, ..Default::default() },
    ];
    let (_, status, log) = f.run("pod-vol", spec).await;
    let lines = log_lines(&log);
    let out: Vec<&str> = lines.iter().filter(|(s, _, _)| s == "stdout").map(|(_, _, t)| t.as_str()).collect();
    assert_eq!(out, ["from the host", "key=value", "config-read-only", "secret"], "{log}");
    assert!(log.contains("can't create /etc/app/new: Read-only file system"), "{log}");
    assert_eq!(status.code, 0);
    assert_eq!(std::fs::read_to_string(data.join("out")).unwrap(), "written\n", "writes reach the host dir");
    assert!(!config.join("new").exists());

    let mut relative = f.spec("bad", &["true"]);
    relative.mounts = vec![MountSpec { source: data, destination: "data".into(), ..Default::default() }];
    let err = f.rt().create_container("pod-vol", &relative).await.unwrap_err();
    assert!(err.to_string().contains("not an absolute path"), "{err}");
}

/// `/proc/self/status` lines about identity and privileges, whitespace squeezed.
const STATUS: &str = "grep -E '^(Uid|Gid|Groups|CapBnd|CapEff|NoNewPrivs):' /proc/self/status | tr -s '\\t ' ' '";

fn stdout_of(log: &str) -> Vec<String> {
    log_lines(log).into_iter().filter(|(s, _, _)| s == "stdout").map(|(_, _, t)| t.trim_end().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_security_context_is_dockers_unprivileged_container() {
    let f = Fixture::new().await;
    f.sandbox("pod-sec", "sec-pod").await;
    let script = format!(
        "{STATUS}; stat -c '%n %F' /proc/keys /proc/timer_list; echo firmware $(ls /sys/firmware | wc -l); \\
         awk '$5 == \"/proc/sys\" || $5 == \"/proc/irq\" {{ print $5, substr($6, 1, 2) }}' /proc/self/mountinfo; \\
         touch /written && echo root-writable"
    );
    let (_, status, log) = f.run("pod-sec", f.spec("default", &["sh", "-c", &script])).await;
    assert_eq!(status.code, 0, "{log}");
    assert_eq!(
        stdout_of(&log),
        [
            "Uid: 0 0 0 0",
            "Gid: 0 0 0 0",
            "Groups:",
            "CapEff: 00000000a80425fb",
            "CapBnd: 00000000a80425fb",
            "NoNewPrivs: 0",
            "/proc/keys character special file",
            "/proc/timer_list character special file",
            "firmware 0",
            "/proc/irq ro",
            "/proc/sys ro",
            "root-writable",
        ],
        "{log}"
    );

    let mut caps = f.spec("caps", &["sh", "-c", STATUS]);
    caps.security = SecurityContext {
        capabilities_add: vec!["NET_ADMIN".into()],
        capabilities_drop: vec!["ALL".into()],
        ..Default::default()
    };
    let (_, _, log) = f.run("pod-sec", caps).await;
    let out = stdout_of(&log);
    assert!(out.contains(&"CapBnd: 0000000000001000".to_string()), "only NET_ADMIN (12) is left: {out:?}");

    let mut privileged = f.spec("privileged", &["sh", "-c", &script]);
    privileged.security.privileged = true;
    let (_, status, log) = f.run("pod-sec", privileged).await;
    assert_eq!(status.code, 0, "{log}");
    let out = stdout_of(&log);
    let host_bounding = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:").map(|v| format!("CapBnd: {}", v.trim())))
        .unwrap();
    assert!(out.contains(&host_bounding), "privileged keeps every capability: {out:?}");
    assert!(out.iter().any(|l| l.starts_with("/proc/keys regular")), "nothing masked: {out:?}");
    assert!(!out.iter().any(|l| l.ends_with(" ro")), "nothing read-only: {out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_groups_no_new_privs_and_a_read_only_root_apply_to_the_init_and_to_execs() {
    let f = Fixture::new().await;
    f.sandbox("pod-user", "user-pod").await;
    let mut spec =
        f.spec("user", &["sh", "-c", &format!("{STATUS}; touch /x; touch /dev/shm/x && echo shm-writable; sleep 30")]);
    spec.security = SecurityContext {
        run_as_user: Some(1234),
        run_as_group: Some(2345),
        supplemental_groups: vec![3456, 4567],
        read_only_root_filesystem: true,
        no_new_privs: true,
        ..Default::default()
    };
    let id = f.rt().create_container("pod-user", &spec).await.unwrap();
    f.rt().start_container(&id).await.unwrap();
    wait_for_log(&spec.log_path, "shm-writable").await;
    let log = std::fs::read_to_string(&spec.log_path).unwrap();
    let expected = [
        "Uid: 1234 1234 1234 1234",
        "Gid: 2345 2345 2345 2345",
        "Groups: 3456 4567",
        "CapEff: 0000000000000000",
        "CapBnd: 00000000a80425fb",
        "NoNewPrivs: 1",
    ];
    assert_eq!(stdout_of(&log)[..6], expected, "{log}");
    assert!(log.contains("touch: /x: Read-only file system"), "{log}");

    let exec = ExecSpec {
        argv: vec!["sh".into(), "-c".into(), STATUS.into()],
        stdout: true,
        stderr: true,
        ..Default::default()
    };
    let (code, out, err) = exec_collect(f.rt(), &id, exec, None).await;
    assert_eq!(code, 0, "{err}");
    let out: Vec<String> = out.lines().map(|l| l.trim_end().to_string()).collect();
    assert_eq!(out, expected, "an exec'd process runs as the container's user with its privileges");
    f.rt().stop_container(&id, Duration::ZERO).await.unwrap();
}

fn append(b: &mut tar::Builder<std::fs::File>, name: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, name, data).unwrap();
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap()
}

/// A `docker save` tarball (legacy layout: `<id>/layer.tar`, `<config>.json`, manifest.json) of
/// the busybox fixture with one more layer on top holding `/imported.txt`.
fn docker_save_tar(image: &OciImage, tag: &str, out: &Path) -> String {
    use std::io::Read;
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    let (extra, _) = skiff_runtime::testing::layer_tar(vec![skiff_runtime::testing::Entry::File(
        "imported.txt".into(),
        b"from a docker save archive\n".to_vec(),
        0o644,
    )])
    .unwrap();
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for blob in &image.layers {
        let mut tar_bytes = Vec::new();
        flate2::read::GzDecoder::new(&blob.data[..]).read_to_end(&mut tar_bytes).unwrap();
        layers.push(tar_bytes);
    }
    layers.push(extra);
    let mut names = Vec::new();
    for layer in &layers {
        let diff_id = skiff_runtime::testing::sha256(layer);
        let name = format!("{}/layer.tar", hex_of(&diff_id));
        append(&mut b, &name, layer);
        names.push(name);
        diff_ids.push(diff_id);
    }
    let mut config: serde_json::Value = serde_json::from_slice(&image.config.data).unwrap();
    config["rootfs"]["diff_ids"] = serde_json::json!(diff_ids);
    let config = serde_json::to_vec(&config).unwrap();
    let config_name = format!("{}.json", hex_of(&skiff_runtime::testing::sha256(&config)));
    append(&mut b, &config_name, &config);
    let manifest = serde_json::json!([{"Config": config_name, "RepoTags": [tag], "Layers": names}]);
    append(&mut b, "manifest.json", &serde_json::to_vec(&manifest).unwrap());
    b.finish().unwrap();
    diff_ids.last().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_save_and_oci_layout_archives_import_and_run() {
    let f = Fixture::new().await;
    f.sandbox("pod-import", "import-pod").await;
    let dir = tempfile::tempdir().unwrap();
    let layers_dir = f.root.path().join("images/layers");
    let count_layers = || std::fs::read_dir(&layers_dir).unwrap().count();
    let before = count_layers();

    let saved = dir.path().join("saved.tar");
    let top_layer = docker_save_tar(busybox(), "skiff.test/busybox:saved", &saved);
    let images = f.rt().import_archive(&saved).await.unwrap();
    assert_eq!(images.len(), 1);
    let image = &images[0];
    assert_eq!(image.reference, "skiff.test/busybox:saved");
    assert!(image.repo_digest.starts_with("skiff.test/busybox@sha256:"), "{}", image.repo_digest);
    assert_eq!(image.layers.last().unwrap(), &top_layer);
    assert_eq!(count_layers(), before + 1, "the pulled busybox layers are reused, only the new one unpacked");
    assert_eq!(f.rt().find_image("skiff.test/busybox:saved").unwrap(), *image);
    // Importing again unpacks nothing and records the same image.
    assert_eq!(f.rt().import_archive(&saved).await.unwrap(), images);
    assert_eq!(count_layers(), before + 1);

    let mut spec = f.spec("imported", &["sh", "-c", "cat /imported.txt; ls /bin/busybox"]);
    spec.image = Some(image.clone());
    let (_, status, log) = f.run("pod-import", spec).await;
    assert_eq!(status.code, 0, "{log}");
    assert_eq!(stdout_of(&log), ["from a docker save archive", "/bin/busybox"]);

    // An OCI layout tarball, named by its index annotation.
    let layout = dir.path().join("layout.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&layout).unwrap());
    for blob in busybox().layers.iter().chain([&busybox().config, &busybox().manifest]) {
        append(&mut b, &format!("blobs/sha256/{}", hex_of(&blob.digest)), &blob.data);
    }
    append(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": busybox().manifest.media_type,
        "digest": busybox().manifest.digest,
        "size": busybox().manifest.data.len(),
        "annotations": {"org.opencontainers.image.ref.name": "skiff.test/busybox:oci"},
    }]});
    append(&mut b, "index.json", &serde_json::to_vec(&index).unwrap());
    b.finish().unwrap();
    let images = f.rt().import_archive(&layout).await.unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].reference, "skiff.test/busybox:oci");
    assert_eq!(images[0].id, f.image.id, "the same config as the pulled image");
    assert_eq!(images[0].repo_digest, format!("skiff.test/busybox@{}", busybox().manifest.digest));
    let mut spec = f.spec("oci", &["echo", "from the layout"]);
    spec.image = Some(images[0].clone());
    let (_, status, log) = f.run("pod-import", spec).await;
    assert_eq!((status.code, stdout_of(&log)), (0, vec!["from the layout".to_string()]));

    let junk = dir.path().join("junk.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&junk).unwrap());
    append(&mut b, "hello.txt", b"hi");
    b.finish().unwrap();
    let err = f.rt().import_archive(&junk).await.unwrap_err();
    assert!(err.to_string().contains("neither a docker save archive"), "{err}");
}

/// Reads attach output until `text` shows up (or the output ends), returning all of it.
async fn attach_read_until(output: &mut skiff_runtime::AttachOutput, text: &str) -> String {
    let mut seen = String::new();
    let read = async {
        while !seen.contains(text) {
            match output.next().await.unwrap() {
                Some((_, data)) => seen.push_str(&String::from_utf8_lossy(&data)),
                None => break,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(20), read).await;
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_feeds_stdin_sees_output_and_stdin_once_closes_input() {
    let f = Fixture::new().await;
    f.sandbox("pod-attach", "attach-pod").await;
    let mut spec = f.spec("reader", &["sh", "-c", "echo waiting; while read line; do echo got $line; done; echo eof"]);
    spec.stdio = skiff_runtime::StdioSpec { stdin: true, stdin_once: true, tty: false };
    let id = f.rt().create_container("pod-attach", &spec).await.unwrap();
    f.rt().start_container(&id).await.unwrap();
    wait_for_log(&spec.log_path, "waiting").await;
    // Without a session the process blocks on its open stdin instead of seeing end of file.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(matches!(f.rt().container(&id).unwrap().state, ContainerState::Running { .. }));

    let (mut output, mut input) = f.rt().attach(&id).await.unwrap();
    input.stdin(b"one\ntwo\n").await.unwrap();
    let seen = attach_read_until(&mut output, "got two").await;
    assert!(seen.contains("got one\n") && seen.contains("got two\n"), "{seen:?}");
    input.end_stdin().await.unwrap();
    let seen = attach_read_until(&mut output, "eof").await;
    assert!(seen.contains("eof"), "stdinOnce: the end of the session's input is the process's: {seen:?}");
    assert_eq!(output.next().await.unwrap(), None, "the session ends with the container's output");
    let status = tokio::time::timeout(Duration::from_secs(10), f.rt().wait_container(&id)).await.unwrap().unwrap();
    assert_eq!(status.code, 0);
    let log = std::fs::read_to_string(&spec.log_path).unwrap();
    assert_eq!(stdout_of(&log), ["waiting", "got one", "got two", "eof"], "attached output is logged too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_with_a_terminal_runs_an_interactive_shell_over_attach() {
    let f = Fixture::new().await;
    f.sandbox("pod-tty", "tty-pod").await;
    let mut spec = f.spec("shell", &["sh"]);
    spec.stdio = skiff_runtime::StdioSpec { stdin: true, stdin_once: true, tty: true };
    let id = f.rt().create_container("pod-tty", &spec).await.unwrap();
    f.rt().start_container(&id).await.unwrap();
    let (mut output, mut input) = f.rt().attach(&id).await.unwrap();
    input.resize(skiff_runtime::TerminalSize { width: 91, height: 37 }).await.unwrap();
    input.stdin(b"tty; stty size; echo $((6*7))\n").await.unwrap();
    let seen = attach_read_until(&mut output, "42").await;
    assert!(seen.contains("/dev/pts/0"), "the terminal is the container's own pts: {seen:?}");
    assert!(seen.contains("37 91"), "resized: {seen:?}");
    input.stdin(b"exit 3\n").await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), f.rt().wait_container(&id)).await.unwrap().unwrap();
    assert_eq!(status.code, 3);
    let log = std::fs::read_to_string(&spec.log_path).unwrap();
    assert!(log.contains(" stdout ") && log.contains("42"), "terminal output is logged as stdout: {log}");
}
