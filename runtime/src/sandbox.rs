//! Sandboxes: the namespaces a pod's containers share (net with loopback up, ipc, uts with the
//! pod's hostname), kept alive by bind mounts of their nsfs files, and the pod's parent cgroup.
//!
//! ```text
//! <root>/sandboxes/<id>/
//!   sandbox.json     id, hostname, creation time
//!   ns/net ns/ipc ns/uts   bind mounts of the namespaces (no holder process to babysit)
//!   hostname hosts   bind-mounted into each container at /etc/hostname and /etc/hosts
//! ```
//! The namespaces are made on a short-lived thread of our own: unsharing net, ipc and uts is a
//! per-thread operation the kernel allows in a multi-threaded process, and the thread exits
//! afterwards, so no server thread is left inside a pod's namespaces.
//!
//! A hostNetwork sandbox unshares ipc only: its `ns/net` and `ns/uts` pin the server's own
//! namespaces, so containers and exec join the node's network and hostname through the same
//! paths as any other pod. Its hostname is the node's and its hosts file a copy of the node's
//! `/etc/hosts`, as the kubelet writes for hostNetwork pods.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

use crate::state::{io_ctx, read_json, write_json};
use crate::{Error, Result, SandboxSpec};

pub const NAMESPACES: &[(&str, CloneFlags)] =
    &[("net", CloneFlags::CLONE_NEWNET), ("ipc", CloneFlags::CLONE_NEWIPC), ("uts", CloneFlags::CLONE_NEWUTS)];

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    pub hostname: String,
    pub created_at: u64,
    #[serde(default)]
    pub host_network: bool,
}

pub fn ns_path(dir: &Path, name: &str) -> PathBuf {
    dir.join("ns").join(name)
}

pub fn is_ready(dir: &Path) -> bool {
    dir.join("sandbox.json").is_file()
}

/// Whether every namespace file is still a live nsfs bind mount (they are gone after a reboot,
/// leaving empty files behind).
pub fn is_pinned(dir: &Path) -> bool {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    NAMESPACES.iter().all(|(name, _)| {
        nix::sys::statfs::statfs(&ns_path(dir, name)).is_ok_and(|s| s.filesystem_type().0 == NSFS_MAGIC)
    })
}

/// Creates the sandbox's namespaces and files. Blocking; idempotent for a complete sandbox.
pub fn create(dir: &Path, spec: &SandboxSpec) -> Result<()> {
    if is_ready(dir) && is_pinned(dir) {
        return Ok(());
    }
    let _ = std::fs::remove_file(dir.join("sandbox.json"));
    // A sandbox left half-made by a crash is redone from scratch.
    destroy_namespaces(dir);
    let ns_dir = dir.join("ns");
    std::fs::create_dir_all(&ns_dir).map_err(io_ctx(format!("creating {}", ns_dir.display())))?;
    for (name, _) in NAMESPACES {
        let p = ns_path(dir, name);
        std::fs::File::create(&p).map_err(io_ctx(format!("creating {}", p.display())))?;
    }
    let (hostname, hosts) = if spec.host_network {
        let hostname = nix::unistd::gethostname()
            .map_err(|e| Error::Spawn(format!("reading the node's hostname: {e}")))?
            .to_string_lossy()
            .into_owned();
        let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_else(|_| hosts_file(&hostname));
        (hostname, hosts)
    } else {
        (spec.hostname.clone(), hosts_file(&spec.hostname))
    };
    std::fs::write(dir.join("hostname"), format!("{hostname}\n"))
        .map_err(io_ctx(format!("writing {}/hostname", dir.display())))?;
    std::fs::write(dir.join("hosts"), hosts).map_err(io_ctx(format!("writing {}/hosts", dir.display())))?;

    let (d, name, host_network) = (dir.to_path_buf(), hostname.clone(), spec.host_network);
    let made = std::thread::spawn(move || make_namespaces(&d, &name, host_network))
        .join()
        .map_err(|_| Error::Spawn("sandbox namespace thread panicked".into()))?;
    if let Err(e) = made {
        destroy_namespaces(dir);
        return Err(e);
    }
    let record = SandboxRecord {
        id: spec.id.clone(),
        hostname,
        created_at: crate::state::to_nanos(std::time::SystemTime::now()),
        host_network: spec.host_network,
    };
    write_json(&dir.join("sandbox.json"), &record)
}

pub fn hosts_file(hostname: &str) -> String {
    format!(
        "# Kubernetes-managed hosts file (Skiff).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n127.0.1.1\t{hostname}\n"
    )
}

/// Runs on its own thread: unshare, configure, pin each namespace with a bind mount. With
/// `host_network` the thread keeps the server's net and uts namespaces, and pins those.
fn make_namespaces(dir: &Path, hostname: &str, host_network: bool) -> Result<()> {
    if host_network {
        unshare(CloneFlags::CLONE_NEWIPC).map_err(|e| Error::Spawn(format!("unshare ipc: {e}")))?;
    } else {
        let flags = NAMESPACES.iter().fold(CloneFlags::empty(), |f, (_, n)| f | *n);
        unshare(flags).map_err(|e| Error::Spawn(format!("unshare net/ipc/uts: {e}")))?;
        nix::unistd::sethostname(hostname).map_err(|e| Error::Spawn(format!("sethostname {hostname:?}: {e}")))?;
        loopback_up().map_err(io_ctx("bringing up lo in the pod network namespace"))?;
    }
    for (name, _) in NAMESPACES {
        let target = ns_path(dir, name);
        let source = format!("/proc/thread-self/ns/{name}");
        mount(Some(source.as_str()), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(|e| Error::Io {
            context: format!("bind-mounting {source} on {}", target.display()),
            source: e.into(),
        })?;
    }
    Ok(())
}

fn loopback_up() -> std::io::Result<()> {
    // SAFETY: plain socket/ioctl calls on a zeroed ifreq that names "lo".
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        let mut rc = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr);
        if rc == 0 {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            rc = libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr);
        }
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(err);
        }
    }
    Ok(())
}

fn destroy_namespaces(dir: &Path) {
    for (name, _) in NAMESPACES {
        // Not mounted (EINVAL) or absent (ENOENT) are both fine here.
        let _ = umount2(&ns_path(dir, name), MntFlags::MNT_DETACH);
    }
}

/// Unmounts the namespaces and removes the directory. The caller has emptied the cgroup.
pub fn destroy(dir: &Path) -> Result<()> {
    destroy_namespaces(dir);
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_ctx(format!("removing {}", dir.display()))(e)),
    }
}

pub fn record(dir: &Path) -> Result<Option<SandboxRecord>> {
    read_json(&dir.join("sandbox.json"))
}
