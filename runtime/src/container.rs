//! Containers, seen from the runtime: build the Spec and directories, start the shim, talk to
//! the waiting init through the start fifo, wait on the shim's pidfd, signal, remove. All state
//! lives on disk (see `rootfs.rs`), so a restarted server adopts the running containers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use oci_spec::runtime::{
    LinuxBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxResourcesBuilder, MountBuilder, ProcessBuilder, RootBuilder, Spec, UserBuilder,
};
use tokio::io::AsyncBufReadExt;

use crate::rootfs::{self, ContainerDir};
use crate::shim::{ExitRecord, ShimRecord, StartedRecord};
use crate::state::{ProcessId, from_nanos, io_ctx, read_json};
use crate::{ContainerInfo, ContainerSpec, ContainerState, Error, ExitStatus, Result, sandbox};

const A_SANDBOX: &str = "io.skiff.sandbox-id";
const A_NAME: &str = "io.skiff.container-name";
const A_LOG: &str = "io.skiff.log-path";
const A_LAYERS_ROOT: &str = "io.skiff.layers-root";
const A_LAYERS: &str = "io.skiff.layers";
const A_STDIN: &str = "io.skiff.stdin";

/// What the runtime and shim need beyond the standard Spec fields, kept in its annotations.
#[derive(Debug, Clone)]
pub struct Meta {
    pub sandbox_id: String,
    pub name: String,
    pub log_path: PathBuf,
    pub layers_root: PathBuf,
    /// Layer directory names under `layers_root`, lowest first.
    pub layers: Vec<String>,
    /// The container's cgroup, relative to each hierarchy root.
    pub cgroup_rel: PathBuf,
    pub stdio: crate::StdioSpec,
}

impl Meta {
    pub fn from_spec(spec: &Spec) -> Result<Meta> {
        let bad = |what: &str| Error::Io {
            context: "reading container config".into(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("missing {what}")),
        };
        let a = spec.annotations().as_ref().ok_or_else(|| bad("annotations"))?;
        let get = |k: &str| a.get(k).cloned().ok_or_else(|| bad(k));
        let cgroup = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone()).ok_or_else(|| bad("cgroupsPath"))?;
        let layers = get(A_LAYERS)?;
        Ok(Meta {
            sandbox_id: get(A_SANDBOX)?,
            name: get(A_NAME)?,
            log_path: get(A_LOG)?.into(),
            layers_root: get(A_LAYERS_ROOT)?.into(),
            layers: layers.split(':').filter(|l| !l.is_empty()).map(String::from).collect(),
            cgroup_rel: cgroup.strip_prefix("/").unwrap_or(&cgroup).to_path_buf(),
            stdio: crate::StdioSpec {
                stdin: a.get(A_STDIN).is_some(),
                stdin_once: a.get(A_STDIN).is_some_and(|v| v == "once"),
                tty: spec.process().as_ref().and_then(|p| p.terminal()).unwrap_or(false),
            },
        })
    }
}

fn spec_err(e: oci_spec::OciSpecError) -> Error {
    Error::Io {
        context: "building container config".into(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
    }
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<oci_spec::runtime::Mount> {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(spec_err)
}

/// A volume as an OCI bind mount: recursive, as Kubernetes binds volumes.
fn volume_mount(m: &crate::MountSpec) -> Result<oci_spec::runtime::Mount> {
    if !m.destination.starts_with('/') {
        return Err(Error::Spawn(format!("mount destination {:?} is not an absolute path", m.destination)));
    }
    if !m.source.is_absolute() {
        return Err(Error::Spawn(format!("mount source {} is not an absolute path", m.source.display())));
    }
    let propagation = match m.propagation {
        crate::MountPropagation::Private => "rprivate",
        crate::MountPropagation::HostToContainer => "rslave",
        crate::MountPropagation::Bidirectional => "rshared",
    };
    let mut options = vec!["rbind", propagation];
    if m.read_only {
        options.push("ro");
    }
    mount(&m.destination, "bind", &m.source.display().to_string(), &options)
}

/// The OCI Spec of a new container: the contract the shim executes.
pub fn build_spec(
    dir: &ContainerDir,
    sandbox_dir: &Path,
    sandbox_id: &str,
    hostname: &str,
    cgroup_rel: &Path,
    layers_root: &Path,
    spec: &ContainerSpec,
) -> Result<Spec> {
    let image_config = spec.image.as_ref().map(|i| i.config.clone()).unwrap_or_default();
    let mut env = spec.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, format!("PATH={}", crate::shim::DEFAULT_PATH));
    }
    if !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
        env.push(format!("HOSTNAME={hostname}"));
    }
    let cwd = spec.working_dir.clone().or(image_config.working_dir.clone()).unwrap_or_else(|| "/".into());
    let sc = &spec.security;
    let user = match sc.run_as_user {
        Some(uid) => Some(uid.to_string()),
        None => image_config.user.clone(),
    };
    let (uid, mut gid) = resolve_user(user.as_deref(), layers_root, spec)?;
    if let Some(g) = sc.run_as_group {
        gid = g;
    }
    let capabilities = crate::security::capability_names(sc).map_err(Error::Spawn)?;
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", if uid == 0 { "/root" } else { "/" }));
    }
    let process = ProcessBuilder::default()
        .args(spec.argv.clone())
        .env(env)
        .cwd(cwd)
        .user(
            UserBuilder::default()
                .uid(uid)
                .gid(gid)
                .additional_gids(sc.supplemental_groups.clone())
                .build()
                .map_err(spec_err)?,
        )
        .capabilities(crate::security::oci_capabilities(&capabilities).map_err(Error::Spawn)?)
        .no_new_privileges(sc.no_new_privs)
        .terminal(spec.stdio.tty)
        .build()
        .map_err(spec_err)?;

    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"])?,
        mount("/dev/pts", "devpts", "devpts", &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"])?,
        mount("/dev/shm", "tmpfs", "shm", &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"])?,
        mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            if sc.privileged { &["nosuid", "noexec", "nodev"] } else { &["nosuid", "noexec", "nodev", "ro"] },
        )?,
        mount("/etc/hostname", "bind", &sandbox_dir.join("hostname").display().to_string(), &["bind"])?,
        mount("/etc/hosts", "bind", &sandbox_dir.join("hosts").display().to_string(), &["bind"])?,
    ];
    for m in &spec.mounts {
        mounts.push(volume_mount(m)?);
    }

    let ns = |typ: LinuxNamespaceType, path: Option<PathBuf>| {
        let b = LinuxNamespaceBuilder::default().typ(typ);
        match path {
            Some(p) => b.path(p).build(),
            None => b.build(),
        }
        .map_err(spec_err)
    };
    let namespaces = vec![
        ns(LinuxNamespaceType::Network, Some(sandbox::ns_path(sandbox_dir, "net")))?,
        ns(LinuxNamespaceType::Ipc, Some(sandbox::ns_path(sandbox_dir, "ipc")))?,
        ns(LinuxNamespaceType::Uts, Some(sandbox::ns_path(sandbox_dir, "uts")))?,
        ns(LinuxNamespaceType::Pid, None)?,
        ns(LinuxNamespaceType::Mount, None)?,
    ];
    let r = &spec.resources;
    let mut resources = LinuxResourcesBuilder::default();
    if let Some(bytes) = r.memory_limit_bytes {
        resources = resources.memory(LinuxMemoryBuilder::default().limit(bytes as i64).build().map_err(spec_err)?);
    }
    if r.cpu_limit_millis.is_some() || r.cpu_request_millis.is_some() {
        let mut cpu = LinuxCpuBuilder::default();
        if let Some(limit) = r.cpu_limit_millis {
            cpu = cpu.quota(crate::cgroups::cpu_quota_us(limit) as i64).period(crate::cgroups::CPU_PERIOD_US);
        }
        if let Some(req) = r.cpu_request_millis {
            cpu = cpu.shares(crate::cgroups::cpu_shares(req));
        }
        resources = resources.cpu(cpu.build().map_err(spec_err)?);
    }
    let (masked, readonly): (Vec<String>, Vec<String>) = if sc.privileged {
        (Vec::new(), Vec::new())
    } else {
        (
            crate::security::MASKED_PATHS.iter().map(|p| p.to_string()).collect(),
            crate::security::READONLY_PATHS.iter().map(|p| p.to_string()).collect(),
        )
    };
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .masked_paths(masked)
        .readonly_paths(readonly)
        .cgroups_path(Path::new("/").join(cgroup_rel))
        .resources(resources.build().map_err(spec_err)?)
        .build()
        .map_err(spec_err)?;
    // Resolved for this container's capabilities now, as containerd does at create; compiling
    // it here too refuses a profile the shim could not install before anything is started.
    let seccomp = if sc.privileged {
        None
    } else {
        crate::seccomp::oci_profile(&sc.seccomp, &capabilities).map_err(|e| Error::Spawn(e.to_string()))?
    };
    if let Some(profile) = &seccomp {
        crate::seccomp::Filters::compile(profile).map_err(|e| Error::Spawn(e.to_string()))?;
    }
    linux.set_seccomp(seccomp);

    let layers: Vec<String> = spec
        .image
        .as_ref()
        .map(|i| i.layers.iter().map(|l| l.strip_prefix("sha256:").unwrap_or(l).to_string()).collect())
        .unwrap_or_default();
    let mut annotations = HashMap::from([
        (A_SANDBOX.to_string(), sandbox_id.to_string()),
        (A_NAME.to_string(), spec.name.clone()),
        (A_LOG.to_string(), spec.log_path.display().to_string()),
        (A_LAYERS_ROOT.to_string(), layers_root.display().to_string()),
        (A_LAYERS.to_string(), layers.join(":")),
    ]);
    if spec.stdio.stdin {
        annotations.insert(A_STDIN.to_string(), if spec.stdio.stdin_once { "once" } else { "open" }.to_string());
    }

    let mut s = Spec::default();
    s.set_hostname(Some(hostname.to_string()))
        .set_process(Some(process))
        .set_root(Some(
            RootBuilder::default()
                .path(dir.rootfs())
                .readonly(sc.read_only_root_filesystem)
                .build()
                .map_err(spec_err)?,
        ))
        .set_mounts(Some(mounts))
        .set_linux(Some(linux))
        .set_annotations(Some(annotations));
    Ok(s)
}

/// The image's `User` as uid:gid: numbers as they are, names from the image's `/etc/passwd`
/// and `/etc/group` (read from the topmost layer that has them).
fn resolve_user(user: Option<&str>, layers_root: &Path, spec: &ContainerSpec) -> Result<(u32, u32)> {
    let Some(user) = user.filter(|u| !u.is_empty()) else { return Ok((0, 0)) };
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let layers: Vec<PathBuf> = spec
        .image
        .iter()
        .flat_map(|i| i.layers.iter().rev())
        .map(|l| layers_root.join(l.strip_prefix("sha256:").unwrap_or(l)))
        .collect();
    let read = |file: &str| layers.iter().find_map(|l| std::fs::read_to_string(l.join(file)).ok()).unwrap_or_default();
    let unknown = |what: &str| Error::Spawn(format!("unable to find user {user}: no matching entries in {what} file"));
    let (uid, primary_gid) = match u.parse::<u32>() {
        Ok(n) => {
            (n, read("etc/passwd").lines().find_map(|l| passwd_ids(l, |f| f.parse() == Ok(n))).map_or(0, |(_, g)| g))
        }
        Err(_) => {
            read("etc/passwd").lines().find_map(|l| passwd_ids(l, |f| f == u)).ok_or_else(|| unknown("passwd"))?
        }
    };
    let gid = match g {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => read("etc/group")
                .lines()
                .find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.len() > 2 && f[0] == g).then(|| f[2].parse().ok()).flatten()
                })
                .ok_or_else(|| unknown("group"))?,
        },
    };
    Ok((uid, gid))
}

fn passwd_ids(line: &str, matches: impl Fn(&str) -> bool) -> Option<(u32, u32)> {
    let f: Vec<&str> = line.split(':').collect();
    if f.len() < 4 || !(matches(f[0]) || matches(f[2])) {
        return None;
    }
    Some((f[2].parse().ok()?, f[3].parse().ok()?))
}

/// Starts `skiff shim container DIR` detached (own session, stdin null) and waits for its
/// `ready <pid>` line. The server never forks a container itself.
pub async fn spawn_shim(shim_exe: &Path, dir: &ContainerDir) -> Result<()> {
    let log_path = dir.file(rootfs::SHIM_LOG);
    let log = std::fs::File::create(&log_path).map_err(io_ctx(format!("creating {}", log_path.display())))?;
    let mut cmd = tokio::process::Command::new(shim_exe);
    cmd.arg0("skiff").arg("shim").arg("container").arg(dir.path());
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log).kill_on_drop(false);
    // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(io_ctx(format!("spawning shim {}", shim_exe.display())))?;
    let stdout = child.stdout.take().expect("stdout was piped");
    let mut line = String::new();
    let read = tokio::io::BufReader::new(stdout).read_line(&mut line).await;
    // The shim lives as long as the container; reap it whenever it exits.
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    read.map_err(io_ctx("reading the shim's ready line"))?;
    let line = line.trim_end();
    if line.starts_with("ready ") {
        return Ok(());
    }
    let message = match line.strip_prefix("error ") {
        Some(m) => m.to_string(),
        None => {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            format!("shim exited without a ready line: {}", log.trim())
        }
    };
    Err(Error::Spawn(message))
}

/// Releases the init waiting at the start fifo and returns its exec error, if any. Blocking.
pub fn release_init(dir: &ContainerDir, init: ProcessId) -> Result<()> {
    use nix::fcntl::{OFlag, open};
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let fifo = dir.file(rootfs::START_FIFO);
    let fd = open(&fifo, OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())
        .map_err(|e| Error::Io { context: format!("opening {}", fifo.display()), source: e.into() })?;
    let mut message = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        // A FIFO reports hang-up only after a writer came and went, so an init that has not yet
        // opened its end is told apart from one that exec'd. The timeout only guards against an
        // init that died before opening it.
        match poll(&mut fds, PollTimeout::from(200u16)) {
            Ok(0) => {
                if !init.is_alive() {
                    return Err(Error::Spawn("container init exited before it could be started".into()));
                }
                continue;
            }
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Error::Io { context: format!("polling {}", fifo.display()), source: e.into() }),
        }
        let revents = fds[0].revents().unwrap_or(PollFlags::empty());
        match nix::unistd::read(&fd, &mut buf) {
            Ok(0) if revents.contains(PollFlags::POLLHUP) => break,
            Ok(0) => continue,
            Ok(n) => message.extend_from_slice(&buf[..n]),
            Err(nix::errno::Errno::EAGAIN) => continue,
            Err(e) => return Err(Error::Io { context: format!("reading {}", fifo.display()), source: e.into() }),
        }
    }
    if message.is_empty() { Ok(()) } else { Err(Error::Spawn(String::from_utf8_lossy(&message).into_owned())) }
}

/// A pidfd for `p`, only if it is still that process (checked after opening, so the fd cannot
/// refer to a recycled pid).
pub fn pidfd(p: ProcessId) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, p.pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just returned this fd to us.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    p.is_alive().then_some(fd)
}

pub fn signal(p: ProcessId, sig: i32) -> bool {
    use std::os::fd::AsRawFd;
    let Some(fd) = pidfd(p) else { return false };
    // SAFETY: a valid pidfd, a signal number, no siginfo.
    unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), sig, std::ptr::null::<libc::siginfo_t>(), 0) == 0
    }
}

/// Resolves when the shim has exited (its pidfd turns readable): no polling loop.
pub async fn wait_exit(dir: &ContainerDir, id: &str) -> Result<ExitStatus> {
    loop {
        if let Some(exit) = read_json::<ExitRecord>(&dir.file(rootfs::EXIT))? {
            return Ok(exit.to_status());
        }
        if !dir.path().is_dir() {
            return Err(Error::NoContainer(id.into()));
        }
        let Some(rec) = read_json::<ShimRecord>(&dir.file(rootfs::SHIM_STATE))? else {
            return Err(Error::Spawn(format!("container {id} has no shim (never created completely)")));
        };
        let Some(fd) = pidfd(rec.shim) else {
            // Gone: it wrote exit.json before exiting, unless it was killed itself.
            return match read_json::<ExitRecord>(&dir.file(rootfs::EXIT))? {
                Some(exit) => Ok(exit.to_status()),
                None => Ok(lost_status(dir)),
            };
        };
        // SAFETY: the AsyncFd owns the pidfd, so it cannot be closed while registered.
        let afd = unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| io_ctx("registering the shim's pidfd")(std::io::Error::from(e)))?;
        let _ = afd.readable().await.map_err(io_ctx("waiting on the shim's pidfd"))?;
    }
}

/// The status of a container whose shim died without recording one (killed from outside):
/// exit code 255, as the truth is unknown.
fn lost_status(dir: &ContainerDir) -> ExitStatus {
    let started = read_json::<StartedRecord>(&dir.file(rootfs::STARTED)).ok().flatten();
    ExitStatus {
        code: 255,
        signal: None,
        oom_killed: false,
        started_at: from_nanos(started.map_or(0, |s| s.started_at)),
        finished_at: SystemTime::now(),
    }
}

pub fn info(dir: &ContainerDir, id: &str) -> Result<ContainerInfo> {
    let spec = match Spec::load(dir.file(rootfs::CONFIG)) {
        Ok(s) => s,
        // Gone, or half-created: `create_container` makes the directory before the config.
        Err(_) if !dir.file(rootfs::CONFIG).exists() => return Err(Error::NoContainer(id.into())),
        Err(e) => {
            return Err(Error::Io {
                context: format!("reading {}", dir.file(rootfs::CONFIG).display()),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            });
        }
    };
    let meta = Meta::from_spec(&spec)?;
    Ok(ContainerInfo { id: id.into(), sandbox_id: meta.sandbox_id, name: meta.name, state: state(dir)? })
}

pub fn state(dir: &ContainerDir) -> Result<ContainerState> {
    if let Some(exit) = read_json::<ExitRecord>(&dir.file(rootfs::EXIT))? {
        return Ok(ContainerState::Exited(exit.to_status()));
    }
    let Some(rec) = read_json::<ShimRecord>(&dir.file(rootfs::SHIM_STATE))? else {
        return Ok(ContainerState::Created);
    };
    if !rec.shim.is_alive() && !rec.init.is_alive() {
        // The shim may have written exit.json between the two reads.
        return Ok(match read_json::<ExitRecord>(&dir.file(rootfs::EXIT))? {
            Some(exit) => ContainerState::Exited(exit.to_status()),
            None => ContainerState::Exited(lost_status(dir)),
        });
    }
    Ok(match read_json::<StartedRecord>(&dir.file(rootfs::STARTED))? {
        Some(s) => ContainerState::Running { pid: rec.init.pid, started_at: from_nanos(s.started_at) },
        None => ContainerState::Created,
    })
}

/// Kills a container that is still there (created or running) and waits for its shim.
pub async fn kill_and_wait(dir: &ContainerDir, id: &str, timeout: Duration) -> Result<()> {
    let Some(rec) = read_json::<ShimRecord>(&dir.file(rootfs::SHIM_STATE))? else { return Ok(()) };
    if !rec.shim.is_alive() {
        return Ok(());
    }
    signal(rec.init, libc::SIGKILL);
    match tokio::time::timeout(timeout, wait_exit(dir, id)).await {
        Ok(r) => r.map(|_| ()),
        Err(_) => Err(Error::Spawn(format!("container {id} did not exit within {timeout:?} of SIGKILL"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Image, ImageConfig};

    fn spec_with_layers(layers: &[&str]) -> ContainerSpec {
        ContainerSpec {
            image: Some(Image {
                reference: "r".into(),
                id: "sha256:c".into(),
                repo_digest: "r@sha256:m".into(),
                config: ImageConfig::default(),
                layers: layers.iter().map(|l| format!("sha256:{l}")).collect(),
                size: 0,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_container_directory_without_its_config_yet_is_no_container() {
        let root = tempfile::tempdir().unwrap();
        let dir = ContainerDir(root.path().join("c1"));
        std::fs::create_dir_all(dir.upper()).unwrap();
        assert!(matches!(info(&dir, "c1"), Err(Error::NoContainer(id)) if id == "c1"));
        std::fs::remove_dir_all(dir.path()).unwrap();
        assert!(matches!(info(&dir, "c1"), Err(Error::NoContainer(_))));
        std::fs::create_dir_all(dir.path()).unwrap();
        std::fs::write(dir.file(rootfs::CONFIG), "{not json").unwrap();
        assert!(matches!(info(&dir, "c1"), Err(Error::Io { .. })), "a broken config is still reported");
    }

    #[test]
    fn image_users_resolve_through_the_topmost_passwd_and_group() {
        let root = tempfile::tempdir().unwrap();
        for (layer, passwd) in [("base", "app:x:1000:1000::/:/bin/sh\n"), ("top", "app:x:1001:1002::/:/bin/sh\n")] {
            std::fs::create_dir_all(root.path().join(layer).join("etc")).unwrap();
            std::fs::write(root.path().join(layer).join("etc/passwd"), passwd).unwrap();
        }
        std::fs::write(root.path().join("base/etc/group"), "staff:x:50:\n").unwrap();
        let spec = spec_with_layers(&["base", "top"]);
        let user = |u: &str| resolve_user(Some(u), root.path(), &spec);
        assert_eq!(user("app").unwrap(), (1001, 1002), "the top layer's passwd wins");
        assert_eq!(user("app:staff").unwrap(), (1001, 50));
        assert_eq!(user("1001").unwrap(), (1001, 1002), "a known uid gets its primary group");
        assert_eq!(user("7:8").unwrap(), (7, 8));
        assert_eq!(user("42").unwrap(), (42, 0), "an unknown uid runs with group 0, as in Docker");
        assert_eq!(resolve_user(None, root.path(), &spec).unwrap(), (0, 0));
        assert!(user("ghost").unwrap_err().to_string().contains("no matching entries in passwd"));
    }
}
