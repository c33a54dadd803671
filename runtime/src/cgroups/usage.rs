//! What a cgroup has used: cumulative CPU time and the memory working set, read as cAdvisor reads
//! them for the kubelet's resource metrics (v1 and v2 spell the same numbers differently).

use std::path::Path;

use super::{Error, io_err, keyed_value};

/// The usage counters of one cgroup at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// CPU time used by the cgroup's tasks since it was made, in nanoseconds.
    pub cpu_ns: u64,
    /// Memory in use that the kernel cannot simply drop: usage minus inactive file pages,
    /// cAdvisor's `working_set` (what `kubectl top` shows and the OOM killer looks at).
    pub memory_working_set_bytes: u64,
}

/// `usage − inactive file`, never below zero (cAdvisor's rule; the two counters are not read
/// atomically, so the file count can briefly exceed the usage).
pub fn working_set(usage: u64, inactive_file: Option<u64>) -> u64 {
    usage.saturating_sub(inactive_file.unwrap_or(0))
}

/// v1 `memory.stat`: the hierarchical `total_inactive_file` (the cgroup and its children).
pub fn v1_working_set(usage_in_bytes: &str, memory_stat: &str) -> Option<u64> {
    let usage = usage_in_bytes.trim().parse().ok()?;
    Some(working_set(usage, keyed_value(memory_stat, "total_inactive_file")))
}

/// v1 `cpuacct.usage`: nanoseconds.
pub fn v1_cpu_ns(cpuacct_usage: &str) -> Option<u64> {
    cpuacct_usage.trim().parse().ok()
}

/// v2 `memory.current` and `memory.stat`'s `inactive_file` (already hierarchical in v2).
pub fn v2_working_set(memory_current: &str, memory_stat: &str) -> Option<u64> {
    let usage = memory_current.trim().parse().ok()?;
    Some(working_set(usage, keyed_value(memory_stat, "inactive_file")))
}

/// v2 `cpu.stat`'s `usage_usec`, in nanoseconds.
pub fn v2_cpu_ns(cpu_stat: &str) -> Option<u64> {
    keyed_value(cpu_stat, "usage_usec").map(|us| us.saturating_mul(1000))
}

/// The node as a whole from /proc when its root cgroup does not say (the v2 root has no
/// `memory.current`): MemTotal − MemAvailable, which the kubelet's root working set approximates.
pub fn meminfo_working_set(meminfo: &str) -> Option<u64> {
    Some(meminfo_kib(meminfo, "MemTotal")?.saturating_sub(meminfo_kib(meminfo, "MemAvailable")?) * 1024)
}

/// The `key:  N kB` field of /proc/meminfo text, in KiB.
pub fn meminfo_kib(meminfo: &str, key: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The busy time of all CPUs from the `cpu` line of /proc/stat (user, nice, system, irq, softirq
/// and steal; guest time is already in user), in nanoseconds for `ticks_per_second` (USER_HZ).
pub fn proc_stat_cpu_ns(proc_stat: &str, ticks_per_second: u64) -> Option<u64> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line.split_whitespace().skip(1).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal …
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| fields.get(i)).sum();
    Some(busy.saturating_mul(1_000_000_000) / ticks_per_second.max(1))
}

pub(super) fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(io_err(path))
}

pub(super) fn malformed(path: &Path) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "unexpected contents"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_MEMORY_STAT: &str = "\
cache 1409032192
rss 906141696
inactive_file 28672
active_file 4096
total_cache 1409032192
total_rss 906141696
total_inactive_file 688287744
total_active_file 700000000
";

    const V2_MEMORY_STAT: &str = "\
anon 20971520
file 8192000
kernel 1032192
active_anon 20971520
inactive_anon 0
active_file 4096000
inactive_file 4096000
";

    #[test]
    fn v1_working_set_subtracts_the_hierarchical_inactive_file_pages() {
        assert_eq!(v1_working_set("2313760768\n", V1_MEMORY_STAT), Some(2313760768 - 688287744));
        assert_eq!(v1_working_set("1000\n", "total_inactive_file 4096\n"), Some(0), "clamped at zero");
        assert_eq!(v1_working_set("8192\n", ""), Some(8192), "no stat: all of the usage");
        assert_eq!(v1_working_set("garbage", V1_MEMORY_STAT), None);
    }

    #[test]
    fn v2_working_set_subtracts_inactive_file() {
        assert_eq!(v2_working_set("34197504\n", V2_MEMORY_STAT), Some(34197504 - 4096000));
        assert_eq!(v2_working_set("max\n", V2_MEMORY_STAT), None);
    }

    #[test]
    fn cpu_counters_come_out_in_nanoseconds() {
        assert_eq!(v1_cpu_ns("31118640399638\n"), Some(31118640399638));
        let cpu_stat = "usage_usec 1250000\nuser_usec 1000000\nsystem_usec 250000\nnr_periods 10\n";
        assert_eq!(v2_cpu_ns(cpu_stat), Some(1_250_000_000));
        assert_eq!(v2_cpu_ns("user_usec 1\n"), None);
    }

    #[test]
    fn node_fallbacks_read_proc_meminfo_and_proc_stat() {
        let meminfo = "MemTotal:       24683656 kB\nMemFree:        21815568 kB\nMemAvailable:   23133472 kB\n";
        assert_eq!(meminfo_working_set(meminfo), Some((24683656 - 23133472) * 1024));
        assert_eq!(meminfo_working_set("MemTotal: 1 kB\n"), None);
        assert_eq!(meminfo_kib("MemTotal:       24567808 kB\nMemFree: 1 kB\n", "MemTotal"), Some(24_567_808));
        assert_eq!(meminfo_kib("nothing", "MemTotal"), None);
        assert_eq!(meminfo_kib("MemFree: 1 kB\n", "MemFre"), None, "a whole key, not a prefix of one");
        // user nice system idle iowait irq softirq steal guest guest_nice
        let stat = "cpu  100 20 30 5000 70 5 5 10 0 0\ncpu0 50 10 15 2500 35 2 3 5 0 0\nintr 1 2 3\n";
        assert_eq!(proc_stat_cpu_ns(stat, 100), Some(170 * 10_000_000));
        assert_eq!(proc_stat_cpu_ns("intr 1\n", 100), None);
    }
}
