//! Privileged runtime tests of container seccomp: the init and exec'd processes run under the
//! profile's filter (`Seccomp: 2`), a syscall the profile denies fails with EPERM while the same
//! command works unconfined, and the filter goes in before or after the identity switch as runc
//! orders it. Each test has its own temp root, cgroup root and local registry; the `Fixture`
//! guard removes everything on drop, also when a test fails.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use skiff_runtime::testing::{LocalRegistry, OciImage, build_busybox_image, push};
use skiff_runtime::{
    ContainerSpec, ExecSpec, Image, Runtime, RuntimeConfig, SandboxSpec, SeccompProfile, SecurityContext,
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
    _registry: LocalRegistry,
    image: Image,
}

impl Fixture {
    async fn new(sandbox: &str) -> Fixture {
        static N: AtomicU32 = AtomicU32::new(0);
        let registry = LocalRegistry::start().expect("start docker-registry");
        let cgroup_root = format!("skiff-seccomp-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let root = tempfile::Builder::new().prefix("skiff-rt-").tempdir().unwrap();
        let config = RuntimeConfig {
            root: root.path().to_path_buf(),
            shim_exe: PathBuf::from(env!("CARGO_BIN_EXE_skiff-runtime-shim")),
            cgroup_root: cgroup_root.clone(),
        };
        let rt = Runtime::new(config).expect("runtime on this host");
        let reference = push(&registry, "busybox:1", busybox()).await.expect("push busybox");
        let image = rt.pull_image(&reference, registry.auth().as_ref()).await.expect("pull busybox");
        let f = Fixture { rt: Some(rt), root, cgroup_root, _registry: registry, image };
        let spec = SandboxSpec { id: sandbox.into(), hostname: sandbox.into(), host_network: false };
        f.rt().run_sandbox(&spec).await.unwrap();
        f
    }

    fn rt(&self) -> &Runtime {
        self.rt.as_ref().unwrap()
    }

    fn spec(&self, name: &str, script: &str, security: SecurityContext) -> ContainerSpec {
        ContainerSpec {
            name: name.into(),
            image: Some(self.image.clone()),
            argv: vec!["sh".into(), "-c".into(), script.into()],
            env: self.image.config.env.clone(),
            log_path: self.root.path().join("logs").join(format!("{name}.log")),
            security,
            ..Default::default()
        }
    }

    /// create + start + wait; returns the container's id and its stdout lines.
    async fn run(&self, sandbox: &str, spec: ContainerSpec) -> (String, Vec<String>) {
        let id = self.rt().create_container(sandbox, &spec).await.unwrap();
        self.rt().start_container(&id).await.unwrap();
        let status =
            tokio::time::timeout(Duration::from_secs(30), self.rt().wait_container(&id)).await.unwrap().unwrap();
        let log = std::fs::read_to_string(&spec.log_path).unwrap_or_default();
        assert_eq!(status.code, 0, "{log}");
        (id, stdout_of(&log))
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        skiff_runtime::testing::remove_everything(self.rt.take().unwrap(), &self.cgroup_root);
    }
}

/// The stdout lines of a CRI log.
fn stdout_of(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| {
            let mut p = l.splitn(4, ' ');
            let (_ts, stream, _tag, text) = (p.next()?, p.next()?, p.next()?, p.next().unwrap_or(""));
            (stream == "stdout").then(|| text.trim_end().to_string())
        })
        .collect()
}

/// unshare(CLONE_NEWUSER) needs no capability, so only a seccomp filter stops it: Docker's
/// default profile allows unshare(2) to CAP_SYS_ADMIN holders only.
const PROBE: &str = "grep -E '^(Seccomp|NoNewPrivs):' /proc/1/status | tr -s '\\t ' ' '; \
    unshare -U true 2>/dev/null && echo unshare-allowed || echo unshare-denied; \
    unshare -U true 2>&1 | grep -q 'Operation not permitted' && echo eperm; true";

fn default_profile() -> SecurityContext {
    SecurityContext { seccomp: SeccompProfile::RuntimeDefault, ..Default::default() }
}

async fn exec_stdout(rt: &Runtime, id: &str, script: &str) -> (i32, String) {
    use tokio::io::AsyncReadExt;
    let spec = ExecSpec { argv: vec!["sh".into(), "-c".into(), script.into()], stdout: true, ..Default::default() };
    let mut p = rt.exec(id, spec).await.unwrap();
    let mut out = String::new();
    let mut stdout = p.take_stdout().unwrap();
    tokio::time::timeout(Duration::from_secs(20), stdout.read_to_string(&mut out)).await.unwrap().unwrap();
    let code = tokio::time::timeout(Duration::from_secs(20), p.wait()).await.unwrap().unwrap();
    (code, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_default_filters_the_init_and_exec_and_denies_with_eperm() {
    let f = Fixture::new("pod-seccomp").await;
    let (_, out) = f.run("pod-seccomp", f.spec("unconfined", PROBE, SecurityContext::default())).await;
    assert_eq!(out, ["NoNewPrivs: 0", "Seccomp: 0", "unshare-allowed"], "unconfined is Kubernetes' default");

    let (_, out) = f.run("pod-seccomp", f.spec("default", PROBE, default_profile())).await;
    assert_eq!(out, ["NoNewPrivs: 0", "Seccomp: 2", "unshare-denied", "eperm"]);

    let mut nnp = f.spec("nnp", PROBE, default_profile());
    nnp.security.no_new_privs = true;
    nnp.security.run_as_user = Some(1000);
    let (_, out) = f.run("pod-seccomp", nnp).await;
    assert_eq!(out, ["NoNewPrivs: 1", "Seccomp: 2", "unshare-denied", "eperm"], "installed last, after the uid switch");

    // Without no_new_privs the filter must go in while the init still holds CAP_SYS_ADMIN.
    let mut user = f.spec("user", PROBE, default_profile());
    user.security.run_as_user = Some(1000);
    let (_, out) = f.run("pod-seccomp", user).await;
    assert_eq!(out, ["NoNewPrivs: 0", "Seccomp: 2", "unshare-denied", "eperm"]);

    let mut admin = f.spec("admin", PROBE, default_profile());
    admin.security.capabilities_add = vec!["SYS_ADMIN".into()];
    let (_, out) = f.run("pod-seccomp", admin).await;
    assert_eq!(out, ["NoNewPrivs: 0", "Seccomp: 2", "unshare-allowed"], "CAP_SYS_ADMIN brings unshare back");

    let mut privileged = f.spec("privileged", PROBE, default_profile());
    privileged.security.privileged = true;
    let (_, out) = f.run("pod-seccomp", privileged).await;
    assert_eq!(out[1], "Seccomp: 0", "privileged containers get no filter");

    let sleeper = f.spec("sleeper", "echo up; exec sleep 1000", default_profile());
    let id = f.rt().create_container("pod-seccomp", &sleeper).await.unwrap();
    f.rt().start_container(&id).await.unwrap();
    let (code, out) =
        exec_stdout(f.rt(), &id, "grep Seccomp: /proc/self/status | tr -s '\\t ' ' '; unshare -U true").await;
    assert_ne!(code, 0, "unshare is denied to exec'd processes too");
    assert_eq!(out.lines().next(), Some("Seccomp: 2"), "{out}");
    f.rt().stop_container(&id, Duration::ZERO).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn localhost_profiles_are_read_at_create_and_a_missing_one_fails_it() {
    let f = Fixture::new("pod-local").await;
    let profiles = f.root.path().join("seccomp");
    std::fs::create_dir_all(&profiles).unwrap();
    // A denylist with its own errno: mkdir answers EACCES even to root.
    let profile = profiles.join("no-mkdir.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}"#,
    )
    .unwrap();
    let security = SecurityContext { seccomp: SeccompProfile::Localhost(profile), ..Default::default() };
    let script = "grep Seccomp: /proc/1/status | tr -s '\\t ' ' '; mkdir /made 2>&1; touch /touched && echo touched";
    let (_, out) = f.run("pod-local", f.spec("local", script, security)).await;
    assert_eq!(out[0], "Seccomp: 2");
    assert!(out.iter().any(|l| l.contains("Permission denied")), "{out:?}");
    assert!(out.iter().any(|l| l == "touched"), "everything else is allowed: {out:?}");

    let missing = profiles.join("missing.json");
    let security = SecurityContext { seccomp: SeccompProfile::Localhost(missing.clone()), ..Default::default() };
    let err = f.rt().create_container("pod-local", &f.spec("missing", "true", security)).await.unwrap_err();
    let p = missing.display();
    assert_eq!(err.to_string(), format!("cannot load seccomp profile \"{p}\": open {p}: no such file or directory"));
}
