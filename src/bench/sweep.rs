//! Everything the bench makes lives under one scratch directory, cgroups named after it and
//! bridges named after it. [`Scratch::sweep`] removes all of it whatever state the bench is in
//! (after a failure, a Ctrl-C or a panic through `Drop`), and says what it had to remove: the
//! bench itself tears down what it made, so anything found here is a leftover worth reporting.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub struct Scratch {
    pub dir: PathBuf,
    /// Cgroup directory names, each directly under every hierarchy's root.
    pub cgroup_roots: Vec<String>,
    /// Network interfaces the bench may have made (a pod bridge); their ports go with them.
    pub links: Vec<String>,
    swept: bool,
}

impl Scratch {
    /// A fresh directory `skiff-bench-<pid>-<n>` under `parent`.
    pub fn create(parent: &Path) -> anyhow::Result<Scratch> {
        let pid = std::process::id();
        for n in 0..100 {
            let dir = parent.join(format!("skiff-bench-{pid}-{n}"));
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    return Ok(Scratch { dir, cgroup_roots: Vec::new(), links: Vec::new(), swept: false });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
            }
        }
        anyhow::bail!("no free scratch directory name under {}", parent.display())
    }

    /// The scratch directory's own name, which also names the bench's cgroups.
    pub fn name(&self) -> String {
        self.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// Removes every process, cgroup, link and mount of the bench and the directory itself.
    /// Returns one line per thing that was still there (empty when the bench had cleaned up).
    pub fn sweep(&mut self) -> String {
        self.swept = true;
        let mut found = String::new();
        let me = std::process::id() as i32;
        for round in 0..5 {
            let procs: Vec<(i32, String)> = self.processes().into_iter().filter(|(pid, _)| *pid != me).collect();
            if procs.is_empty() {
                break;
            }
            for (pid, cmdline) in &procs {
                if round == 0 {
                    let _ = writeln!(found, "  process {pid}: {cmdline}");
                }
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(100 * (round + 1)));
        }
        for root in &self.cgroup_roots {
            for hierarchy in cgroup_mounts() {
                let top = hierarchy.join(root);
                let dirs = dirs_deepest_first(&top);
                // The runtime keeps its (empty) cgroup root while it runs; only what is below
                // it would be Skiff's leftover.
                for dir in dirs.iter().filter(|d| **d != top) {
                    let _ = writeln!(found, "  cgroup {}", dir.display());
                }
                for dir in dirs {
                    remove_cgroup(&dir);
                }
            }
        }
        for link in &self.links {
            // The server's masquerade table, named after its bridge; a clean stop removes it.
            let table = skiff_runtime::network::nft::table_name(link);
            if skiff_runtime::network::nft::table_exists(&table).unwrap_or(false) {
                let _ = writeln!(found, "  nftables table ip {table}");
                let _ = skiff_runtime::network::nft::delete_table(&table);
            }
            let ports = bridge_ports(link);
            for port in &ports {
                let _ = writeln!(found, "  veth {port} on {link}");
            }
            for l in ports.iter().chain([link]) {
                if Path::new("/sys/class/net").join(l).exists() {
                    let _ = Command::new("ip").args(["link", "del", l]).status();
                }
            }
        }
        for mount in mounts_under(&self.dir).into_iter().rev() {
            let _ = writeln!(found, "  mount {}", mount.display());
            let _ = nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH);
        }
        if self.dir.exists()
            && let Err(e) = std::fs::remove_dir_all(&self.dir)
        {
            let _ = writeln!(found, "  {} could not be removed: {e}", self.dir.display());
        }
        found
    }

    /// Processes of the bench: those whose command line names the scratch directory (servers,
    /// shims) and those in one of its cgroups (containers).
    fn processes(&self) -> Vec<(i32, String)> {
        // With the slash: `…-1/` must not match the scratch dir `…-10`.
        let dir = format!("{}/", self.dir.to_string_lossy());
        let in_root = |line: &str| {
            let path = line.splitn(3, ':').nth(2).unwrap_or("");
            path.split('/').any(|part| self.cgroup_roots.iter().any(|r| r == part))
        };
        let mut found = Vec::new();
        let Ok(entries) = std::fs::read_dir("/proc") else { return found };
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            let cmdline = std::fs::read(entry.path().join("cmdline"))
                .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " ").trim().to_string())
                .unwrap_or_default();
            let cgroups = std::fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
            if cmdline.contains(&dir) || cgroups.lines().any(in_root) {
                found.push((pid, cmdline));
            }
        }
        found
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.swept {
            let left = self.sweep();
            if !left.is_empty() {
                eprintln!("skiff bench: removed what was left:\n{left}");
            }
        }
    }
}

/// The mount point of every cgroup hierarchy (v1 and v2).
pub fn cgroup_mounts() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fstype = after.split(' ').next()?;
            let point = before.split(' ').nth(4)?;
            (fstype == "cgroup" || fstype == "cgroup2")
                .then(|| PathBuf::from(skiff_runtime::mountinfo::unescape(point)))
        })
        .collect()
}

pub use skiff_runtime::mountinfo::mounts_under;

pub fn bridge_ports(bridge: &str) -> Vec<String> {
    std::fs::read_dir(Path::new("/sys/class/net").join(bridge).join("brif"))
        .map(|entries| entries.flatten().filter_map(|e| e.file_name().to_str().map(String::from)).collect())
        .unwrap_or_default()
}

fn dirs_deepest_first(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(root) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(dirs_deepest_first(&entry.path()));
            }
        }
    }
    if root.is_dir() {
        out.push(root.to_path_buf());
    }
    out
}

/// Kills what is left in one cgroup (thawed first, or the kill waits forever) and removes it.
fn remove_cgroup(dir: &Path) {
    let _ = std::fs::write(dir.join("freezer.state"), "THAWED");
    let _ = std::fs::write(dir.join("cgroup.freeze"), "0");
    for _ in 0..50 {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
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
    if let Err(e) = std::fs::remove_dir(dir) {
        eprintln!("skiff bench: rmdir {}: {e}", dir.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scratch_dir_is_made_fresh_and_swept_with_its_contents() {
        let parent = std::env::temp_dir();
        let mut a = Scratch::create(&parent).unwrap();
        let b = Scratch::create(&parent).unwrap();
        assert_ne!(a.dir, b.dir);
        std::fs::create_dir_all(a.dir.join("x/y")).unwrap();
        std::fs::write(a.dir.join("x/y/f"), "data").unwrap();
        assert_eq!(a.sweep(), "", "nothing but files was there");
        assert!(!a.dir.exists());
        drop(b);
    }
}
