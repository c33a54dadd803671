//! `net.ipv4.ip_forward`: pods reach beyond the node only when the node routes for them, so a
//! running Skiff needs it on, as every Kubernetes node does. Unlike Docker and the CNI plugins,
//! Skiff also puts back the value it found when its last instance on the host stops cleanly, so
//! a test run (or a tried-out and stopped node) leaves the host as it was.
//!
//! Several instances may run side by side (tests), each wanting forwarding on while it runs; the
//! value is per network namespace. They keep a shared count, under a lock:
//! ```text
//! /run/skiff/ip_forward/<netns inode>/
//!   lock               flock(2) serialising the instances
//!   original           the value found when the first instance turned forwarding on
//!   holders/<name>     one file per running instance (its bridge), holding its PID
//! ```
//! A holder whose PID is gone (a killed server) no longer counts; its `original` is kept, so the
//! next start still knows what to put back.
//!
//! Everything here acts on the calling thread's network namespace (`/proc/sys/net` is resolved
//! per opening task), hence synchronous functions.

use std::fs;
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::state::io_ctx;
use crate::{Error, Result};

const SYSCTL: &str = "/proc/sys/net/ipv4/ip_forward";
const REGISTRY: &str = "/run/skiff/ip_forward";

/// This instance's claim on forwarding; [`ForwardingHold::release`] gives it back.
#[derive(Debug)]
pub struct ForwardingHold {
    dir: PathBuf,
    holder: String,
    /// The value before this instance turned forwarding on.
    pub previous: String,
}

/// Turns forwarding on for `holder` (an instance name: its bridge).
pub fn hold(holder: &str) -> Result<ForwardingHold> {
    hold_in(Path::new(REGISTRY), holder)
}

fn hold_in(registry: &Path, holder: &str) -> Result<ForwardingHold> {
    let dir = registry.join(netns_id()?);
    let holders = dir.join("holders");
    fs::create_dir_all(&holders).map_err(io_ctx(format!("creating {}", holders.display())))?;
    let _lock = lock(&dir)?;
    let previous = read_sysctl()?;
    if live_holders(&holders)?.is_empty() && !dir.join("original").exists() {
        write_file(&dir.join("original"), &previous)?;
    }
    write_file(&holders.join(holder), &std::process::id().to_string())?;
    if previous != "1" {
        write_sysctl("1")?;
    }
    Ok(ForwardingHold { dir, holder: holder.to_string(), previous })
}

impl ForwardingHold {
    /// Drops this instance's claim; the last one puts back the original value. Returns what was
    /// written back, if anything.
    pub fn release(self) -> Result<Option<String>> {
        let holders = self.dir.join("holders");
        if !holders.exists() {
            // Released already by another claim of the same holder (a restart that enabled twice).
            return Ok(None);
        }
        let _lock = lock(&self.dir)?;
        match fs::remove_file(holders.join(&self.holder)) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io_ctx(format!("removing {}", holders.join(&self.holder).display()))(e)),
        }
        if !live_holders(&holders)?.is_empty() {
            return Ok(None);
        }
        let original_path = self.dir.join("original");
        let original = match fs::read_to_string(&original_path) {
            Ok(v) => v.trim().to_string(),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_ctx(format!("reading {}", original_path.display()))(e)),
        };
        write_sysctl(&original)?;
        // Leave no trace: the directory goes with the last holder (the lock file included; a
        // racing newcomer recreates all of it).
        let _ = fs::remove_dir_all(&self.dir);
        // And the parents, when no other namespace's registry is in them (fails harmlessly if so).
        if let Some(registry) = self.dir.parent() {
            let _ = fs::remove_dir(registry);
            if registry == Path::new(REGISTRY) {
                let _ = registry.parent().map(fs::remove_dir);
            }
        }
        Ok(Some(original))
    }
}

/// The holders whose process still runs; stale files (a killed server's) are removed.
fn live_holders(holders: &Path) -> Result<Vec<String>> {
    let mut live = Vec::new();
    let entries = fs::read_dir(holders).map_err(io_ctx(format!("reading {}", holders.display())))?;
    for entry in entries.flatten() {
        let pid = fs::read_to_string(entry.path()).ok().and_then(|s| s.trim().parse::<i32>().ok());
        let alive = pid.is_some_and(|pid| {
            !matches!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None), Err(nix::errno::Errno::ESRCH))
        });
        if alive {
            live.push(entry.file_name().to_string_lossy().into_owned());
        } else {
            let _ = fs::remove_file(entry.path());
        }
    }
    Ok(live)
}

/// The calling thread's network namespace, as `net-<inode>`.
fn netns_id() -> Result<String> {
    let link = fs::read_link("/proc/thread-self/ns/net").map_err(io_ctx("reading /proc/thread-self/ns/net"))?;
    let link = link.to_string_lossy();
    let inode = link.trim_start_matches("net:[").trim_end_matches(']');
    Ok(format!("net-{inode}"))
}

struct Lock(fs::File);

fn lock(dir: &Path) -> Result<Lock> {
    let path = dir.join("lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_ctx(format!("opening {}", path.display())))?;
    // SAFETY: flock on a descriptor we own; released when the file closes.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io_ctx(format!("locking {}", path.display()))(std::io::Error::last_os_error()));
    }
    Ok(Lock(file))
}

impl Drop for Lock {
    fn drop(&mut self) {
        // SAFETY: unlocking the descriptor this guard owns.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

fn write_file(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).map_err(io_ctx(format!("writing {}", path.display())))
}

pub fn read_sysctl() -> Result<String> {
    Ok(fs::read_to_string(SYSCTL).map_err(io_ctx(format!("reading {SYSCTL}")))?.trim().to_string())
}

fn write_sysctl(value: &str) -> Result<()> {
    fs::write(SYSCTL, value).map_err(|e| Error::Network(format!("setting {SYSCTL} to {value}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a thread of its own network namespace (a fresh one starts at ip_forward=0
    /// or inherits the host's; either way the host is never touched).
    fn in_fresh_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET) needs root");
            f()
        })
        .join()
        .unwrap()
    }

    #[test]
    fn the_last_instance_to_stop_puts_back_the_value_it_found() {
        let registry = tempfile::tempdir().unwrap();
        let registry = registry.path().to_path_buf();
        in_fresh_netns(move || {
            write_sysctl("0").unwrap();
            let a = hold_in(&registry, "bra").unwrap();
            assert_eq!(a.previous, "0");
            assert_eq!(read_sysctl().unwrap(), "1");
            let b = hold_in(&registry, "brb").unwrap();
            assert_eq!(b.previous, "1");
            assert_eq!(a.release().unwrap(), None, "b still needs forwarding");
            assert_eq!(read_sysctl().unwrap(), "1");
            assert_eq!(b.release().unwrap().as_deref(), Some("0"));
            assert_eq!(read_sysctl().unwrap(), "0");
            assert!(!registry.join(netns_id().unwrap()).exists(), "the registry directory is removed");
        });
    }

    #[test]
    fn a_killed_holder_no_longer_counts_and_its_original_value_survives() {
        let registry = tempfile::tempdir().unwrap();
        let registry = registry.path().to_path_buf();
        in_fresh_netns(move || {
            write_sysctl("0").unwrap();
            let a = hold_in(&registry, "bra").unwrap();
            // As after kill -9: the holder file names a process that is gone.
            let dir = registry.join(netns_id().unwrap());
            write_file(&dir.join("holders").join("bra"), &i32::MAX.to_string()).unwrap();
            std::mem::forget(a);
            let restarted = hold_in(&registry, "bra").unwrap();
            assert_eq!(restarted.previous, "1");
            assert_eq!(restarted.release().unwrap().as_deref(), Some("0"), "the value before the first start");
            assert_eq!(read_sysctl().unwrap(), "0");
        });
    }
}
