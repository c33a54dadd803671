//! Who a container's processes run as and what they may do: user and groups, capabilities,
//! no_new_privs, all taken from the OCI Spec's `process` so that the init and every exec'd
//! process get the same. [`Identity::enter_confined`] runs in a single-threaded child, right
//! before execve, and installs the seccomp filters (`seccomp.rs`) in runc's order. Masked and read-only paths (Docker's lists) are mounts; see `mount.rs`.

use oci_spec::runtime::{Capability, LinuxCapabilitiesBuilder, Process};

use crate::SecurityContext;

/// Capability names (without `CAP_`) and numbers, as in linux/capability.h.
pub const CAPABILITIES: &[(&str, u8)] = &[
    ("CHOWN", 0),
    ("DAC_OVERRIDE", 1),
    ("DAC_READ_SEARCH", 2),
    ("FOWNER", 3),
    ("FSETID", 4),
    ("KILL", 5),
    ("SETGID", 6),
    ("SETUID", 7),
    ("SETPCAP", 8),
    ("LINUX_IMMUTABLE", 9),
    ("NET_BIND_SERVICE", 10),
    ("NET_BROADCAST", 11),
    ("NET_ADMIN", 12),
    ("NET_RAW", 13),
    ("IPC_LOCK", 14),
    ("IPC_OWNER", 15),
    ("SYS_MODULE", 16),
    ("SYS_RAWIO", 17),
    ("SYS_CHROOT", 18),
    ("SYS_PTRACE", 19),
    ("SYS_PACCT", 20),
    ("SYS_ADMIN", 21),
    ("SYS_BOOT", 22),
    ("SYS_NICE", 23),
    ("SYS_RESOURCE", 24),
    ("SYS_TIME", 25),
    ("SYS_TTY_CONFIG", 26),
    ("MKNOD", 27),
    ("LEASE", 28),
    ("AUDIT_WRITE", 29),
    ("AUDIT_CONTROL", 30),
    ("SETFCAP", 31),
    ("MAC_OVERRIDE", 32),
    ("MAC_ADMIN", 33),
    ("SYSLOG", 34),
    ("WAKE_ALARM", 35),
    ("BLOCK_SUSPEND", 36),
    ("AUDIT_READ", 37),
    ("PERFMON", 38),
    ("BPF", 39),
    ("CHECKPOINT_RESTORE", 40),
];

/// Docker's (and containerd's) default capabilities of an unprivileged container.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Paths hidden from unprivileged containers (Docker's list): files under /dev/null, directories
/// under an empty read-only tmpfs.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths unprivileged containers see read-only (Docker's list).
pub const READONLY_PATHS: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

fn capability_number(name: &str) -> Option<u8> {
    let name = name.to_ascii_uppercase();
    let name = name.strip_prefix("CAP_").unwrap_or(&name);
    CAPABILITIES.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

/// The capability names (`CAP_…`) of a container, as containerd computes them for Kubernetes:
/// privileged has all; otherwise the defaults, `ALL` in add or drop first, then the single adds,
/// then the single drops.
pub fn capability_names(sc: &SecurityContext) -> Result<Vec<String>, String> {
    let all = || CAPABILITIES.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>();
    if sc.privileged {
        return Ok(all().into_iter().map(|n| format!("CAP_{n}")).collect());
    }
    let is_all = |c: &String| c.eq_ignore_ascii_case("ALL");
    let mut caps: Vec<String> = DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect();
    if sc.capabilities_add.iter().any(is_all) {
        caps = all();
    }
    if sc.capabilities_drop.iter().any(is_all) {
        caps.clear();
    }
    let canonical = |c: &String| -> Result<String, String> {
        let n = capability_number(c).ok_or_else(|| format!("unknown capability {c:?}"))?;
        Ok(CAPABILITIES.iter().find(|(_, v)| *v == n).map(|(name, _)| name.to_string()).unwrap_or_default())
    };
    for c in sc.capabilities_add.iter().filter(|c| !is_all(c)) {
        let c = canonical(c)?;
        if !caps.contains(&c) {
            caps.push(c);
        }
    }
    for c in sc.capabilities_drop.iter().filter(|c| !is_all(c)) {
        let c = canonical(c)?;
        caps.retain(|have| *have != c);
    }
    Ok(caps.into_iter().map(|n| format!("CAP_{n}")).collect())
}

/// The Spec's capabilities section: bounding, effective and permitted alike, no inheritable or
/// ambient ones (containerd's choice since 1.6.18).
pub fn oci_capabilities(names: &[String]) -> Result<oci_spec::runtime::LinuxCapabilities, String> {
    let set: std::collections::HashSet<Capability> = names
        .iter()
        .filter_map(|n| serde_json::from_value::<Capability>(serde_json::Value::String(n.clone())).ok())
        .collect();
    LinuxCapabilitiesBuilder::default()
        .bounding(set.clone())
        .effective(set.clone())
        .permitted(set)
        .inheritable(std::collections::HashSet::new())
        .ambient(std::collections::HashSet::new())
        .build()
        .map_err(|e| e.to_string())
}

/// The identity part of a Spec's process, read before the fork.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// Capability numbers to keep; `None` (a Spec without a capabilities section) keeps all.
    pub capabilities: Option<Vec<u8>>,
    pub no_new_privs: bool,
}

impl Identity {
    pub fn from_process(process: &Process) -> Identity {
        let user = process.user();
        let capabilities = process.capabilities().as_ref().map(|c| {
            c.bounding()
                .iter()
                .flatten()
                .filter_map(|cap| serde_json::to_value(cap).ok()?.as_str().and_then(capability_number))
                .collect()
        });
        Identity {
            uid: user.uid(),
            gid: user.gid(),
            additional_gids: user.additional_gids().clone().unwrap_or_default(),
            capabilities,
            no_new_privs: process.no_new_privileges().unwrap_or(false),
        }
    }

    /// Switches the calling process to this identity: capability bounding set (needs
    /// CAP_SETPCAP, so first), groups (before the uid, which would forbid changing them),
    /// gid, uid, the remaining capability sets, then no_new_privs.
    pub fn enter(&self) -> Result<(), String> {
        if let Some(keep) = &self.capabilities {
            for cap in 0..64u8 {
                if keep.contains(&cap) {
                    continue;
                }
                // SAFETY: prctl with integer arguments.
                if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
                    let e = std::io::Error::last_os_error();
                    if e.raw_os_error() == Some(libc::EINVAL) {
                        break; // past the kernel's last capability
                    }
                    return Err(format!("dropping capability {cap} from the bounding set: {e}"));
                }
            }
            // SAFETY: prctl with integer arguments; fails harmlessly on kernels without ambient caps.
            unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0) };
        }
        if self.uid != 0 || self.gid != 0 || !self.additional_gids.is_empty() {
            let groups: Vec<nix::unistd::Gid> = self.additional_gids.iter().map(|g| (*g).into()).collect();
            nix::unistd::setgroups(&groups).map_err(|e| format!("setgroups {:?}: {e}", self.additional_gids))?;
            let gid = self.gid.into();
            nix::unistd::setresgid(gid, gid, gid).map_err(|e| format!("setting gid {}: {e}", self.gid))?;
            let uid = self.uid.into();
            nix::unistd::setresuid(uid, uid, uid).map_err(|e| format!("setting uid {}: {e}", self.uid))?;
        }
        if let Some(keep) = &self.capabilities {
            // A non-root uid lost its capabilities with setresuid; root keeps the kept ones.
            if self.uid == 0 {
                set_capabilities(keep)?;
            }
        }
        if self.no_new_privs {
            // SAFETY: prctl with integer arguments.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) } != 0 {
                return Err(format!("setting no_new_privs: {}", std::io::Error::last_os_error()));
            }
        }
        Ok(())
    }
}

impl Identity {
    /// [`Identity::enter`], default signal dispositions, and the seccomp filters, in runc's
    /// order: with no_new_privs the filters go in last, right before execve, so that they see
    /// only the user's process; without it, installing a filter needs CAP_SYS_ADMIN, which only
    /// lasts until `enter` drops it, so they go in first (and then have to allow `enter`'s own
    /// calls, as Docker's default profile does).
    pub fn enter_confined(&self, seccomp: Option<&crate::seccomp::Filters>) -> Result<(), String> {
        let install = |f: &crate::seccomp::Filters| f.install().map_err(|e| e.to_string());
        if let Some(filters) = seccomp.filter(|_| !self.no_new_privs) {
            install(filters)?;
        }
        self.enter()?;
        crate::shim::reset_signals();
        if let Some(filters) = seccomp.filter(|_| self.no_new_privs) {
            install(filters)?;
        }
        Ok(())
    }
}

/// capset(2): effective and permitted = `keep`, inheritable empty.
fn set_capabilities(keep: &[u8]) -> Result<(), String> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut data = [Data::default(); 2];
    for cap in keep {
        let (word, bit) = ((*cap / 32) as usize, 1u32 << (cap % 32));
        data[word].effective |= bit;
        data[word].permitted |= bit;
    }
    let header = Header { version: VERSION_3, pid: 0 };
    // Only what the runtime itself holds can be kept (a host may withhold some, even from root).
    let mut current = [Data::default(); 2];
    // SAFETY: a v3 header and room for two data structs, as capget expects.
    if unsafe { libc::syscall(libc::SYS_capget, &header, current.as_mut_ptr()) } != 0 {
        return Err(format!("capget: {}", std::io::Error::last_os_error()));
    }
    for (d, c) in data.iter_mut().zip(&current) {
        d.permitted &= c.permitted;
        d.effective &= c.permitted;
    }
    // SAFETY: a v3 header and two data structs, as capset expects.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
        return Err(format!("capset: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sc(add: &[&str], drop: &[&str]) -> SecurityContext {
        SecurityContext {
            capabilities_add: add.iter().map(|s| s.to_string()).collect(),
            capabilities_drop: drop.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn capabilities_follow_containerd_add_and_drop_rules() {
        let default = capability_names(&sc(&[], &[])).unwrap();
        assert_eq!(default.len(), 14);
        assert!(default.contains(&"CAP_NET_RAW".to_string()));
        let added = capability_names(&sc(&["NET_ADMIN", "CAP_SYS_TIME"], &["CHOWN"])).unwrap();
        assert!(added.contains(&"CAP_NET_ADMIN".to_string()) && added.contains(&"CAP_SYS_TIME".to_string()));
        assert!(!added.contains(&"CAP_CHOWN".to_string()));
        assert_eq!(capability_names(&sc(&["NET_BIND_SERVICE"], &["ALL"])).unwrap(), ["CAP_NET_BIND_SERVICE"]);
        let all_but_one = capability_names(&sc(&["ALL"], &["SYS_ADMIN"])).unwrap();
        assert_eq!(all_but_one.len(), CAPABILITIES.len() - 1);
        let privileged = SecurityContext { privileged: true, ..sc(&[], &["ALL"]) };
        assert_eq!(capability_names(&privileged).unwrap().len(), CAPABILITIES.len());
        assert!(capability_names(&sc(&["FLY"], &[])).unwrap_err().contains("unknown capability"));
    }

    #[test]
    fn the_spec_capabilities_round_trip_to_numbers() {
        let caps = oci_capabilities(&capability_names(&sc(&[], &[])).unwrap()).unwrap();
        let process = oci_spec::runtime::ProcessBuilder::default().capabilities(caps).build().unwrap();
        let mut numbers = Identity::from_process(&process).capabilities.unwrap();
        numbers.sort();
        // Docker's default set is 0x00000000a80425fb.
        let mask: u64 = numbers.iter().map(|n| 1u64 << n).sum();
        assert_eq!(mask, 0xa80425fb);
    }
}
