//! Cgroups, managed the cgroupfs way (no systemd). A [`CgroupManager`] is handed the places it
//! works in (the v1 hierarchy mount points or the v2 mount), so tests run it on tempdir fixtures.
//!
//! Layout, in every hierarchy used:
//! ```text
//! <hierarchy>/<cgroup_root>/            Skiff's own cgroup (`skiff`, tests use their own name)
//!   pod<sandbox id>/                    a pod's parent cgroup
//!     <container id>/                   one container: limits, its processes, OOM counters
//! ```
//! Paths are absolute from each hierarchy's root, never relative to the caller's own cgroup (the
//! shell's memory cgroup on these hosts is not `/`).

pub mod usage;
mod v1;
mod v2;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::Resources;
pub use usage::{Usage, meminfo_kib};

/// The v1 controllers Skiff places pods and containers in.
const V1_CONTROLLERS: &[&str] = &["memory", "cpu", "cpuacct", "pids", "cpuset", "freezer"];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no usable cgroup hierarchy found in /proc/self/mountinfo")]
    NoHierarchy,
    #[error("cgroup io on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cgroup {path} still has processes after {waited:?}")]
    Busy { path: PathBuf, waited: Duration },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

/// Which cgroup version this host uses and where its hierarchies are mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// One mount point per v1 hierarchy (deduplicated: `cpu,cpuacct` co-mounted counts once).
    V1 { hierarchies: Vec<Hierarchy> },
    /// The unified hierarchy's mount point.
    V2 { mount: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub mount: PathBuf,
    /// Controllers bound to this hierarchy, among those Skiff uses.
    pub controllers: Vec<String>,
}

impl Hierarchy {
    fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

impl Layout {
    /// v2 when the top of `/sys/fs/cgroup` is itself cgroup2 (it has `cgroup.controllers`);
    /// otherwise the v1 hierarchies found in mountinfo (a hybrid host's `unified` mount has no
    /// controllers and is ignored).
    pub fn detect() -> Result<Layout, Error> {
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            return Ok(Layout::V2 { mount: PathBuf::from("/sys/fs/cgroup") });
        }
        let path = Path::new("/proc/self/mountinfo");
        let mountinfo = std::fs::read_to_string(path).map_err(io_err(path))?;
        let hierarchies = parse_v1_mountinfo(&mountinfo);
        if hierarchies.is_empty() {
            return Err(Error::NoHierarchy);
        }
        Ok(Layout::V1 { hierarchies })
    }
}

/// The v1 hierarchies among `V1_CONTROLLERS`, from mountinfo lines like
/// `35 25 0:30 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory`.
pub fn parse_v1_mountinfo(mountinfo: &str) -> Vec<Hierarchy> {
    let mut out: Vec<Hierarchy> = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let mut right = right.split_whitespace();
        if right.next() != Some("cgroup") {
            continue;
        }
        let super_opts = right.nth(1).unwrap_or("");
        let controllers: Vec<String> =
            super_opts.split(',').filter(|o| V1_CONTROLLERS.contains(o)).map(str::to_string).collect();
        let Some(mount) = left.split_whitespace().nth(4) else { continue };
        if controllers.is_empty() || out.iter().any(|h| h.mount == Path::new(mount)) {
            continue;
        }
        out.push(Hierarchy { mount: PathBuf::from(mount), controllers });
    }
    out
}

/// Creates, limits, empties and removes Skiff's cgroups under one `cgroup_root` name.
#[derive(Debug, Clone)]
pub struct CgroupManager {
    layout: Layout,
    root_name: String,
}

impl CgroupManager {
    pub fn new(layout: Layout, root_name: &str) -> Self {
        CgroupManager { layout, root_name: root_name.trim_matches('/').to_string() }
    }

    pub fn detect(root_name: &str) -> Result<Self, Error> {
        Ok(Self::new(Layout::detect()?, root_name))
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The pod's cgroup path relative to each hierarchy root: `<cgroup_root>/pod<id>`.
    pub fn pod_path(&self, sandbox_id: &str) -> PathBuf {
        Path::new(&self.root_name).join(format!("pod{sandbox_id}"))
    }

    pub fn container_path(&self, sandbox_id: &str, container_id: &str) -> PathBuf {
        self.pod_path(sandbox_id).join(container_id)
    }

    /// The directories of `rel` in every hierarchy used.
    pub fn dirs(&self, rel: &Path) -> Vec<PathBuf> {
        match &self.layout {
            Layout::V1 { hierarchies } => hierarchies.iter().map(|h| h.mount.join(rel)).collect(),
            Layout::V2 { mount } => vec![mount.join(rel)],
        }
    }

    /// The `cgroup.procs` files a process writes `0` into to join `rel`.
    pub fn procs_files(&self, rel: &Path) -> Vec<PathBuf> {
        self.dirs(rel).into_iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Creates `rel` (and missing parents) everywhere and applies `resources`. Idempotent.
    pub fn create(&self, rel: &Path, resources: &Resources) -> Result<(), Error> {
        match &self.layout {
            Layout::V1 { hierarchies } => {
                for h in hierarchies {
                    v1::create(h, rel)?;
                    v1::apply(h, &h.mount.join(rel), resources)?;
                }
            }
            Layout::V2 { mount } => {
                v2::create(mount, rel)?;
                v2::apply(&mount.join(rel), resources)?;
            }
        }
        Ok(())
    }

    /// Whether the kernel's OOM killer killed a process of `rel` (v1 `memory.oom_control`
    /// `oom_kill`, v2 `memory.events` `oom_kill`).
    pub fn oom_killed(&self, rel: &Path) -> bool {
        let (file, key) = match &self.layout {
            Layout::V1 { hierarchies } => match hierarchies.iter().find(|h| h.has("memory")) {
                Some(h) => (h.mount.join(rel).join("memory.oom_control"), "oom_kill"),
                None => return false,
            },
            Layout::V2 { mount } => (mount.join(rel).join("memory.events"), "oom_kill"),
        };
        std::fs::read_to_string(file).ok().and_then(|s| keyed_value(&s, key)).is_some_and(|n| n > 0)
    }

    /// What `rel` (with its children) has used: cumulative CPU time and memory working set.
    pub fn usage(&self, rel: &Path) -> Result<Usage, Error> {
        let (cpu_ns, memory_working_set_bytes) = match &self.layout {
            Layout::V1 { hierarchies } => {
                let dir = |controller: &str| {
                    hierarchies.iter().find(|h| h.has(controller)).map(|h| h.mount.join(rel)).ok_or(Error::NoHierarchy)
                };
                let cpu = dir("cpuacct")?.join("cpuacct.usage");
                let memory = dir("memory")?;
                let current = memory.join("memory.usage_in_bytes");
                let stat = usage::read(&memory.join("memory.stat"))?;
                (
                    usage::v1_cpu_ns(&usage::read(&cpu)?).ok_or_else(|| usage::malformed(&cpu))?,
                    usage::v1_working_set(&usage::read(&current)?, &stat).ok_or_else(|| usage::malformed(&current))?,
                )
            }
            Layout::V2 { mount } => {
                let dir = mount.join(rel);
                let (cpu, current) = (dir.join("cpu.stat"), dir.join("memory.current"));
                let stat = usage::read(&dir.join("memory.stat"))?;
                (
                    usage::v2_cpu_ns(&usage::read(&cpu)?).ok_or_else(|| usage::malformed(&cpu))?,
                    usage::v2_working_set(&usage::read(&current)?, &stat).ok_or_else(|| usage::malformed(&current))?,
                )
            }
        };
        Ok(Usage { cpu_ns, memory_working_set_bytes })
    }

    /// The whole node's usage, from the root cgroup as the kubelet reads it; where the root has
    /// no counters (the v2 root has no `memory.current`, old kernels no root `cpu.stat`), from
    /// /proc/stat and /proc/meminfo.
    pub fn root_usage(&self) -> Result<Usage, Error> {
        if let Ok(usage) = self.usage(Path::new("")) {
            return Ok(usage);
        }
        let (stat, meminfo) = (Path::new("/proc/stat"), Path::new("/proc/meminfo"));
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        let cpu_ns = match &self.layout {
            Layout::V2 { mount } => {
                std::fs::read_to_string(mount.join("cpu.stat")).ok().and_then(|s| usage::v2_cpu_ns(&s))
            }
            Layout::V1 { .. } => None,
        };
        let cpu_ns = match cpu_ns {
            Some(ns) => ns,
            None => usage::proc_stat_cpu_ns(&usage::read(stat)?, ticks).ok_or_else(|| usage::malformed(stat))?,
        };
        let memory_working_set_bytes =
            usage::meminfo_working_set(&usage::read(meminfo)?).ok_or_else(|| usage::malformed(meminfo))?;
        Ok(Usage { cpu_ns, memory_working_set_bytes })
    }

    /// Every process of `rel` and its descendants, by host pid.
    pub fn pids(&self, rel: &Path) -> Vec<i32> {
        let mut pids = Vec::new();
        for dir in self.dirs(rel) {
            collect_pids(&dir, &mut pids);
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// SIGKILLs everything in `rel` (recursively), waits until the processes have left, then
    /// removes the cgroup dirs bottom-up. A missing cgroup is not an error.
    pub fn kill_and_remove(&self, rel: &Path, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let pids = self.pids(rel);
            for pid in &pids {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            match self.remove(rel) {
                Ok(()) => return Ok(()),
                Err(Error::Io { source, .. })
                    if source.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
                {
                    // Killed tasks leave their cgroup a moment after the signal: back off briefly.
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(Error::Io { path, source }) if source.raw_os_error() == Some(libc::EBUSY) => {
                    return Err(Error::Busy { path, waited: timeout });
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Removes `rel` and its child cgroups in every hierarchy (rmdir; they must be empty).
    pub fn remove(&self, rel: &Path) -> Result<(), Error> {
        for dir in self.dirs(rel) {
            remove_tree(&dir)?;
        }
        Ok(())
    }
}

fn collect_pids(dir: &Path, out: &mut Vec<i32>) {
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_pids(&e.path(), out);
            }
        }
    }
}

fn remove_tree(dir: &Path) -> Result<(), Error> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&e.path())?;
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(dir)(e)),
    }
}

/// `key N` from a flat keyed file such as `memory.events` or `memory.oom_control`.
pub(crate) fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// CFS quota in microseconds per `CPU_PERIOD_US` for a CPU limit in millicores; the kernel's
/// minimum is 1 ms (as the kubelet clamps it).
pub fn cpu_quota_us(limit_millis: u64) -> u64 {
    (limit_millis * CPU_PERIOD_US / 1000).max(1000)
}

pub const CPU_PERIOD_US: u64 = 100_000;

/// v1 `cpu.shares` for a CPU request in millicores, as the kubelet computes it (min 2).
pub fn cpu_shares(request_millis: u64) -> u64 {
    (request_millis * 1024 / 1000).clamp(2, 262_144)
}

/// v2 `cpu.weight` for the same request: the kubelet's shares→weight mapping onto [1, 10000].
pub fn cpu_weight(request_millis: u64) -> u64 {
    let shares = cpu_shares(request_millis);
    1 + ((shares - 2) * 9999) / 262_142
}

fn write_file(path: &Path, value: &str) -> Result<(), Error> {
    std::fs::write(path, value).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_values_follow_the_kubelet_conversions() {
        assert_eq!(cpu_shares(0), 2);
        assert_eq!(cpu_shares(1), 2);
        assert_eq!(cpu_shares(250), 256);
        assert_eq!(cpu_shares(1000), 1024);
        assert_eq!(cpu_quota_us(500), 50_000);
        assert_eq!(cpu_quota_us(2000), 200_000);
        assert_eq!(cpu_quota_us(5), 1000, "below 1 ms the quota is clamped");
        assert_eq!(cpu_weight(0), 1);
        assert_eq!(cpu_weight(1000), 39);
    }

    #[test]
    fn v1_mountinfo_yields_each_hierarchy_once_and_skips_unified() {
        let mi = "\
30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
31 25 0:27 / /sys/fs/cgroup/cpu rw,nosuid - cgroup cgroup rw,cpu
32 25 0:28 / /sys/fs/cgroup/cpuacct rw,nosuid - cgroup cgroup rw,cpuacct
33 25 0:29 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
34 25 0:30 / /sys/fs/cgroup/devices rw,nosuid - cgroup cgroup rw,devices
35 25 0:31 / /sys/fs/cgroup/net rw,nosuid - cgroup cgroup rw,net_cls,net_prio
36 25 0:32 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
";
        let h = parse_v1_mountinfo(mi);
        let mounts: Vec<_> = h.iter().map(|h| h.mount.to_str().unwrap()).collect();
        assert_eq!(
            mounts,
            ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpuacct", "/sys/fs/cgroup/memory", "/sys/fs/cgroup/cpu,cpuacct"]
        );
        assert_eq!(h[3].controllers, ["cpu", "cpuacct"]);
    }

    #[test]
    fn usage_is_read_from_the_cpuacct_and_memory_hierarchies_of_a_v1_fixture() {
        let tmp = tempfile::tempdir().unwrap();
        let (cpuacct, memory) = (tmp.path().join("cpuacct"), tmp.path().join("memory"));
        let h = |m: &Path, c: &str| Hierarchy { mount: m.to_path_buf(), controllers: vec![c.to_string()] };
        let mgr =
            CgroupManager::new(Layout::V1 { hierarchies: vec![h(&cpuacct, "cpuacct"), h(&memory, "memory")] }, "s");
        let rel = mgr.container_path("p", "c");
        for d in [&cpuacct, &memory] {
            std::fs::create_dir_all(d.join(&rel)).unwrap();
        }
        std::fs::write(cpuacct.join(&rel).join("cpuacct.usage"), "1500000000\n").unwrap();
        std::fs::write(memory.join(&rel).join("memory.usage_in_bytes"), "30000000\n").unwrap();
        std::fs::write(memory.join(&rel).join("memory.stat"), "inactive_file 1\ntotal_inactive_file 4000000\n")
            .unwrap();
        let usage = mgr.usage(&rel).unwrap();
        assert_eq!(usage, Usage { cpu_ns: 1_500_000_000, memory_working_set_bytes: 26_000_000 });

        std::fs::remove_file(cpuacct.join(&rel).join("cpuacct.usage")).unwrap();
        let err = mgr.usage(&rel).unwrap_err().to_string();
        assert!(err.contains("cpuacct.usage"), "the error names its file: {err}");
    }

    #[test]
    fn usage_is_read_from_cpu_stat_and_memory_current_of_a_v2_fixture() {
        let tmp = tempfile::tempdir().unwrap();
        let mgr = CgroupManager::new(Layout::V2 { mount: tmp.path().to_path_buf() }, "s");
        let dir = tmp.path().join(mgr.container_path("p", "c"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cpu.stat"), "usage_usec 250000\nuser_usec 200000\nsystem_usec 50000\n").unwrap();
        std::fs::write(dir.join("memory.current"), "20971520\n").unwrap();
        std::fs::write(dir.join("memory.stat"), "anon 16777216\nactive_file 0\ninactive_file 1048576\n").unwrap();
        let usage = mgr.usage(&mgr.container_path("p", "c")).unwrap();
        assert_eq!(usage, Usage { cpu_ns: 250_000_000, memory_working_set_bytes: 20_971_520 - 1_048_576 });
    }

    #[test]
    fn keyed_files_are_read_by_key() {
        let oom = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(keyed_value(oom, "oom_kill"), Some(2));
        assert_eq!(keyed_value("low 0\nhigh 0\nmax 0\noom 1\noom_kill 0\n", "oom_kill"), Some(0));
        assert_eq!(keyed_value(oom, "missing"), None);
    }
}
