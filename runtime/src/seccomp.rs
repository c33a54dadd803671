//! Seccomp for containers, as Kubernetes asks for it through `securityContext.seccompProfile` and
//! containerd and Docker provide it:
//!
//! - a profile in Docker's format (the OCI `linux.seccomp` plus `archMap` and rules that apply
//!   only with some capabilities, architectures or kernels) is resolved for one container into the
//!   OCI Spec's `linux.seccomp` when the container is created ([`oci_profile`]): `RuntimeDefault`
//!   is Docker's default profile ([`runtime_default`]), `Localhost` a JSON file;
//! - the shim compiles that section to BPF before it forks ([`Filters::compile`], with
//!   `seccompiler` from rust-vmm) and the container's init, like every exec'd process, installs
//!   it right before execve ([`Filters::install`]).
//!
//! One BPF program has one match and one mismatch action in seccompiler, while a profile gives
//! each rule its own action (Docker's default answers `clone3` with ENOSYS so that libc falls back
//! to `clone`). The kernel runs every installed filter and takes the most restrictive answer, so
//! a profile becomes a base filter (every rule's syscall → allow, the rest → the default action)
//! plus one filter per other action (its rules → that action, the rest → allow). Filters cover
//! the native architecture only; other calling conventions (i386 or x32 on x86_64) are killed, as
//! libseccomp does with architectures a profile leaves out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction as Act, LinuxSeccompArg, LinuxSeccompFilterFlag, LinuxSeccompOperator as Op,
    LinuxSyscall,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

/// `securityContext.seccompProfile` of a container (the container's own, else the pod's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SeccompProfile {
    /// No filter: Kubernetes' default while the kubelet's `seccompDefault` is off.
    #[default]
    Unconfined,
    /// The container runtime's default profile (Docker's).
    RuntimeDefault,
    /// A profile in Docker's JSON format, at this host path (the kubelet resolves
    /// `localhostProfile` under its seccomp root).
    Localhost(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// containerd's wording, which Kubernetes users see in the CreateContainerError message.
    #[error("cannot load seccomp profile {path:?}: open {}: {reason}", path.display())]
    Load { path: PathBuf, reason: String },
    #[error("decoding seccomp profile failed {path:?}: {source}")]
    Decode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "both 'architectures' and 'archMap' are specified in the seccomp profile, use either 'architectures' or 'archMap'"
    )]
    ArchitecturesAndArchMap,
    #[error("both 'name' and 'names' are specified in the seccomp profile, use either 'name' or 'names'")]
    NameAndNames,
    #[error("the seccomp profile has no defaultAction")]
    NoDefaultAction,
    #[error("invalid kernel version {0:?} in the seccomp profile, expected \"<kernel>.<major>\"")]
    KernelVersion(String),
    #[error("seccomp action {0} is not supported")]
    UnsupportedAction(Act),
    #[error("seccomp is not supported on {0}")]
    UnsupportedArch(&'static str),
    #[error("compiling the seccomp filter: {0}")]
    Compile(#[from] seccompiler::BackendError),
    #[error("installing the seccomp filter: {0}")]
    Install(#[source] std::io::Error),
}

/// A profile in Docker's format: the OCI section plus conditions on each rule.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DockerProfile {
    #[serde(default)]
    pub default_action: Option<Act>,
    #[serde(default)]
    pub default_errno_ret: Option<u32>,
    /// libseccomp names (`SCMP_ARCH_X86_64`); strings, so that architectures this crate's OCI
    /// types do not know still parse.
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
    #[serde(default)]
    pub arch_map: Option<Vec<ArchMap>>,
    #[serde(default)]
    pub flags: Option<Vec<LinuxSeccompFilterFlag>>,
    #[serde(default)]
    pub syscalls: Option<Vec<DockerSyscall>>,
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchMap {
    pub architecture: String,
    #[serde(default)]
    pub sub_architectures: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DockerSyscall {
    /// The old single-name form.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub names: Option<Vec<String>>,
    pub action: Act,
    #[serde(default)]
    pub errno_ret: Option<u32>,
    #[serde(default)]
    pub args: Option<Vec<LinuxSeccompArg>>,
    #[serde(default)]
    pub includes: Option<RuleFilter>,
    #[serde(default)]
    pub excludes: Option<RuleFilter>,
}

/// When a rule applies: all of `caps` held (in the bounding set), the host's architecture
/// (Go's names: `amd64`, `arm64`) among `arches`, the kernel at least `minKernel`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleFilter {
    #[serde(default)]
    pub caps: Option<Vec<String>>,
    #[serde(default)]
    pub arches: Option<Vec<String>>,
    #[serde(default)]
    pub min_kernel: Option<String>,
}

/// The Spec's `linux.seccomp` for a container with these capabilities (`CAP_…` names); `None`
/// when it runs unconfined. A Localhost profile is read now, as containerd reads it at create.
pub fn oci_profile(profile: &SeccompProfile, capabilities: &[String]) -> Result<Option<LinuxSeccomp>, SeccompError> {
    let docker = match profile {
        SeccompProfile::Unconfined => return Ok(None),
        SeccompProfile::RuntimeDefault => runtime_default(),
        SeccompProfile::Localhost(path) => load(path)?,
    };
    resolve(&docker, capabilities, &Host::current())
}

fn load(path: &Path) -> Result<DockerProfile, SeccompError> {
    let data = std::fs::read(path).map_err(|e| SeccompError::Load { path: path.to_path_buf(), reason: go_text(&e) })?;
    serde_json::from_slice(&data).map_err(|source| SeccompError::Decode { path: path.to_path_buf(), source })
}

/// An io error as Go prints it: "no such file or directory".
fn go_text(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = text.split(" (os error").next().unwrap_or_default();
    let mut chars = text.chars();
    chars.next().map(|c| c.to_lowercase().chain(chars).collect()).unwrap_or_default()
}

/// What a profile's conditions are checked against.
#[derive(Debug, Clone)]
struct Host {
    /// Go's GOARCH-style name, as profiles spell it.
    arch: &'static str,
    /// libseccomp's name of the native architecture.
    scmp_arch: &'static str,
    kernel: (u64, u64),
}

impl Host {
    fn current() -> Host {
        let (arch, scmp_arch) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", "SCMP_ARCH_X86_64"),
            "aarch64" => ("arm64", "SCMP_ARCH_AARCH64"),
            "riscv64" => ("riscv64", "SCMP_ARCH_RISCV64"),
            "x86" => ("x86", "SCMP_ARCH_X86"),
            other => (other, ""),
        };
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        Host { arch, scmp_arch, kernel: kernel_version(&release).unwrap_or((0, 0)) }
    }
}

/// "6.18.2-foo" → (6, 18): minor revisions and suffixes do not count, as in Docker.
fn kernel_version(text: &str) -> Option<(u64, u64)> {
    let mut parts = text.trim().split(['.', '-', '+']);
    let kernel = parts.next()?.parse().ok()?;
    let major = parts.next()?.chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok()?;
    Some((kernel, major))
}

/// Docker's `setupSeccomp`: keeps the rules whose conditions hold for this container on this host.
fn resolve(
    profile: &DockerProfile,
    capabilities: &[String],
    host: &Host,
) -> Result<Option<LinuxSeccomp>, SeccompError> {
    let rules = profile.syscalls.as_deref().unwrap_or_default();
    let Some(default_action) = profile.default_action else {
        return if rules.is_empty() { Ok(None) } else { Err(SeccompError::NoDefaultAction) };
    };
    let listed = profile.architectures.as_deref().unwrap_or_default();
    let arch_map = profile.arch_map.as_deref().unwrap_or_default();
    if !listed.is_empty() && !arch_map.is_empty() {
        return Err(SeccompError::ArchitecturesAndArchMap);
    }
    let mut arch_names: Vec<String> = listed.to_vec();
    if let Some(entry) = arch_map.iter().find(|a| a.architecture == host.scmp_arch) {
        arch_names.push(entry.architecture.clone());
        arch_names.extend(entry.sub_architectures.iter().flatten().cloned());
    }
    let architectures: Vec<Arch> =
        arch_names.iter().filter_map(|a| serde_json::from_value(serde_json::Value::String(a.clone())).ok()).collect();
    let held = |cap: &String| capabilities.iter().any(|c| c == cap);
    let newer_or_equal = |v: &str| -> Result<bool, SeccompError> {
        let min = min_kernel(v)?;
        Ok(host.kernel >= min)
    };
    let mut syscalls = Vec::new();
    for rule in rules {
        let names = match (&rule.name, &rule.names) {
            (Some(_), Some(names)) if !names.is_empty() => return Err(SeccompError::NameAndNames),
            (Some(name), _) => vec![name.clone()],
            (None, names) => names.clone().unwrap_or_default(),
        };
        if let Some(ex) = &rule.excludes {
            if ex.arches.iter().flatten().any(|a| a == host.arch) || ex.caps.iter().flatten().any(held) {
                continue;
            }
            if let Some(v) = ex.min_kernel.as_deref().filter(|v| !v.is_empty())
                && newer_or_equal(v)?
            {
                continue;
            }
        }
        if let Some(inc) = &rule.includes {
            if let Some(arches) = inc.arches.as_ref().filter(|a| !a.is_empty())
                && !arches.iter().any(|a| a == host.arch)
            {
                continue;
            }
            if !inc.caps.iter().flatten().all(held) {
                continue;
            }
            if let Some(v) = inc.min_kernel.as_deref().filter(|v| !v.is_empty())
                && !newer_or_equal(v)?
            {
                continue;
            }
        }
        let mut syscall = LinuxSyscall::default();
        syscall.set_names(names).set_action(rule.action).set_errno_ret(rule.errno_ret);
        syscall.set_args(rule.args.clone().filter(|a| !a.is_empty()));
        syscalls.push(syscall);
    }
    let mut out = LinuxSeccomp::default();
    out.set_default_action(default_action)
        .set_default_errno_ret(profile.default_errno_ret)
        .set_architectures((!architectures.is_empty()).then_some(architectures))
        .set_flags(profile.flags.clone().filter(|f| !f.is_empty()))
        .set_syscalls(Some(syscalls));
    Ok(Some(out))
}

fn min_kernel(v: &str) -> Result<(u64, u64), SeccompError> {
    let bad = || SeccompError::KernelVersion(v.to_string());
    let (k, m) = v.split_once('.').ok_or_else(bad)?;
    let version = (k.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if version == (0, 0) {
        return Err(bad());
    }
    Ok(version)
}

/// The compiled filters of one container, in the order they are installed.
#[derive(Debug, Clone)]
pub struct Filters {
    programs: Vec<BpfProgram>,
    flags: libc::c_ulong,
}

/// A rule chain for one syscall: `None` matches whatever the arguments.
type Chains = BTreeMap<i64, Option<Vec<SeccompRule>>>;

fn add_chain(chains: &mut Chains, nr: i64, rules: &Option<Vec<SeccompRule>>) {
    match (chains.get_mut(&nr), rules) {
        (Some(None), _) => {}
        (Some(have @ Some(_)), None) => *have = None,
        (Some(Some(have)), Some(more)) => have.extend(more.iter().cloned()),
        (None, rules) => {
            chains.insert(nr, rules.clone());
        }
    }
}

fn action(act: Act, errno: Option<u32>) -> Result<SeccompAction, SeccompError> {
    // runc's default return code for ERRNO and TRACE rules without one.
    let errno = errno.unwrap_or(libc::EPERM as u32);
    Ok(match act {
        Act::ScmpActAllow => SeccompAction::Allow,
        Act::ScmpActErrno => SeccompAction::Errno(errno),
        Act::ScmpActKill | Act::ScmpActKillThread => SeccompAction::KillThread,
        Act::ScmpActKillProcess => SeccompAction::KillProcess,
        Act::ScmpActTrap => SeccompAction::Trap,
        Act::ScmpActTrace => SeccompAction::Trace(errno),
        Act::ScmpActLog => SeccompAction::Log,
        other @ Act::ScmpActNotify => return Err(SeccompError::UnsupportedAction(other)),
    })
}

/// A rule's argument conditions. All of them must hold, except that several comparisons of the
/// same argument are alternatives (runc's reading, which Docker's profile relies on).
fn rules_for(args: &[LinuxSeccompArg]) -> Result<Option<Vec<SeccompRule>>, SeccompError> {
    if args.is_empty() {
        return Ok(None);
    }
    let condition = |a: &LinuxSeccompArg| -> Result<SeccompCondition, SeccompError> {
        // OCI's MASKED_EQ carries the mask in `value` and the wanted bits in `valueTwo`.
        let (op, value) = match a.op() {
            Op::ScmpCmpNe => (SeccompCmpOp::Ne, a.value()),
            Op::ScmpCmpLt => (SeccompCmpOp::Lt, a.value()),
            Op::ScmpCmpLe => (SeccompCmpOp::Le, a.value()),
            Op::ScmpCmpEq => (SeccompCmpOp::Eq, a.value()),
            Op::ScmpCmpGe => (SeccompCmpOp::Ge, a.value()),
            Op::ScmpCmpGt => (SeccompCmpOp::Gt, a.value()),
            Op::ScmpCmpMaskedEq => (SeccompCmpOp::MaskedEq(a.value()), a.value_two().unwrap_or(0)),
        };
        let index = u8::try_from(a.index()).map_err(|_| seccompiler::BackendError::InvalidArgumentNumber)?;
        Ok(SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)?)
    };
    let mut indices: Vec<usize> = args.iter().map(|a| a.index()).collect();
    indices.sort_unstable();
    let repeated = indices.windows(2).any(|w| w[0] == w[1]);
    let rules = if repeated {
        args.iter().map(|a| Ok(SeccompRule::new(vec![condition(a)?])?)).collect::<Result<Vec<_>, SeccompError>>()?
    } else {
        vec![SeccompRule::new(args.iter().map(condition).collect::<Result<Vec<_>, _>>()?)?]
    };
    Ok(Some(rules))
}

impl Filters {
    /// Compiles the Spec's section for the native architecture. Syscall names this architecture
    /// does not have are skipped, as runc skips them.
    pub fn compile(seccomp: &LinuxSeccomp) -> Result<Filters, SeccompError> {
        let arch = TargetArch::try_from(std::env::consts::ARCH)
            .map_err(|_| SeccompError::UnsupportedArch(std::env::consts::ARCH))?;
        let default = action(seccomp.default_action(), seccomp.default_errno_ret())?;
        let mut base = Chains::new();
        // Actions other than allow, in the order the profile names them first.
        let mut others: Vec<(SeccompAction, Chains)> = Vec::new();
        for rule in seccomp.syscalls().iter().flatten() {
            let act = action(rule.action(), rule.errno_ret())?;
            let chain = rules_for(rule.args().as_deref().unwrap_or_default())?;
            for name in rule.names() {
                let Ok(nr) = syscalls::Sysno::from_str(name) else { continue };
                let nr = nr.id() as i64;
                add_chain(&mut base, nr, &chain);
                if act != SeccompAction::Allow {
                    let at = match others.iter().position(|(a, _)| *a == act) {
                        Some(i) => i,
                        None => {
                            others.push((act.clone(), Chains::new()));
                            others.len() - 1
                        }
                    };
                    add_chain(&mut others[at].1, nr, &chain);
                }
            }
        }
        let build = |chains: Chains, mismatch: SeccompAction, matched: SeccompAction| {
            let chains = chains.into_iter().map(|(nr, c)| (nr, c.unwrap_or_default())).collect();
            let filter = SeccompFilter::new(chains, mismatch, matched, arch)?;
            let mut program = BpfProgram::try_from(filter)?;
            if arch == TargetArch::x86_64 {
                refuse_x32(&mut program);
            }
            Ok::<_, SeccompError>(program)
        };
        let mut programs = Vec::new();
        for (act, chains) in others {
            programs.push(build(chains, SeccompAction::Allow, act)?);
        }
        // The base filter goes in last: installing the others must not depend on what it allows.
        if default != SeccompAction::Allow {
            programs.push(build(base, default, SeccompAction::Allow)?);
        }
        let mut flags: libc::c_ulong = 0;
        for flag in seccomp.flags().iter().flatten() {
            flags |= match flag {
                LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
                LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW,
                // The init and exec'd processes are single-threaded when they install it.
                LinuxSeccompFilterFlag::SeccompFilterFlagTsync => 0,
            };
        }
        Ok(Filters { programs, flags })
    }

    pub fn is_empty(&self) -> bool {
        self.programs.is_empty()
    }

    /// Installs the filters on the calling thread. Without no_new_privs this needs CAP_SYS_ADMIN;
    /// it never sets no_new_privs itself (seccompiler's `apply_filter` would), since Kubernetes
    /// leaves privilege escalation allowed unless asked.
    pub fn install(&self) -> Result<(), SeccompError> {
        #[repr(C)]
        struct SockFprog {
            len: libc::c_ushort,
            filter: *const seccompiler::sock_filter,
        }
        for program in &self.programs {
            let prog = SockFprog { len: program.len() as libc::c_ushort, filter: program.as_ptr() };
            // SAFETY: a valid sock_fprog whose filter outlives the call; the kernel copies it.
            let rc = unsafe {
                libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, self.flags, &prog as *const SockFprog)
            };
            if rc != 0 {
                return Err(SeccompError::Install(std::io::Error::last_os_error()));
            }
        }
        Ok(())
    }
}

/// x32 system calls pass the x86_64 architecture check, their numbers marked with bit 30.
/// seccompiler matches numbers exactly, so a profile that allows by default would let an x32 call
/// of a denied syscall through: kill them, as libseccomp does when a profile leaves out
/// SCMP_ARCH_X32. The check goes right after seccompiler's own architecture check (load, jump
/// over the kill, kill), which no later jump crosses.
fn refuse_x32(program: &mut BpfProgram) {
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    let stmt = |code: u32, k: u32| seccompiler::sock_filter { code: code as u16, jt: 0, jf: 0, k };
    let check = [
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0), // seccomp_data.nr
        seccompiler::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: X32_SYSCALL_BIT,
        },
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_KILL_PROCESS),
    ];
    program.splice(3..3, check);
}

/// Socket address families Docker's default profile lets `socket(2)` create: every family the
/// kernel still implements except AF_ALG (the kernel's crypto API) and AF_VSOCK (host/guest
/// sockets, not namespaced). 1..=11 go as one `< 12` range, the rest one by one.
const SOCKET_FAMILIES_FROM_13: &[u64] =
    &[13, 14, 15, 16, 17, 18, 21, 22, 24, 26, 27, 28, 29, 30, 31, 32, 33, 35, 36, 39, 41, 42, 43, 44, 45];

/// Namespace flags of clone(2): without CAP_SYS_ADMIN a plain clone may set none of them.
const CLONE_NAMESPACES: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

/// Syscalls Docker's default profile allows every container.
const DEFAULT_ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "getxattrat",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listmount",
    "listxattr",
    "listxattrat",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "mseal",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "removexattrat",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "riscv_hwprobe",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "setxattrat",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statmount",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "uretprobe",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// Syscalls allowed only to containers holding a capability (Docker's `includes.caps` groups).
const BY_CAPABILITY: &[(&str, &[&str])] = &[
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "lsm_get_self_attr",
            "lsm_list_modules",
            "lsm_set_self_attr",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    ("CAP_SYS_MODULE", &["delete_module", "init_module", "finit_module"]),
    ("CAP_SYS_PACCT", &["acct"]),
    ("CAP_SYS_PTRACE", &["kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev", "ptrace"]),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    ("CAP_SYS_TIME", &["settimeofday", "stime", "clock_settime", "clock_settime64"]),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    ("CAP_SYS_NICE", &["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"]),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

/// Syscalls allowed on some architectures only (Go's names, as Docker's `includes.arches`).
const BY_ARCH: &[(&[&str], &[&str])] = &[
    (&["ppc64le"], &["sync_file_range2", "swapcontext"]),
    (
        &["arm", "arm64"],
        &["arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint", "cacheflush", "set_tls"],
    ),
    (&["amd64", "x32"], &["arch_prctl"]),
    (&["amd64", "x32", "x86"], &["modify_ldt"]),
    (&["s390", "s390x"], &["s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"]),
    (&["riscv64"], &["riscv_flush_icache"]),
];

fn arg(index: usize, value: u64, value_two: u64, op: Op) -> LinuxSeccompArg {
    oci_spec::runtime::LinuxSeccompArgBuilder::default()
        .index(index)
        .value(value)
        .value_two(value_two)
        .op(op)
        .build()
        .expect("every field is set")
}

fn allow(names: &[&str]) -> DockerSyscall {
    DockerSyscall {
        names: Some(names.iter().map(|n| n.to_string()).collect()),
        action: Act::ScmpActAllow,
        ..Default::default()
    }
}

fn only(caps: &[&str], arches: &[&str], min_kernel: Option<&str>) -> Option<RuleFilter> {
    let list = |l: &[&str]| (!l.is_empty()).then(|| l.iter().map(|s| s.to_string()).collect());
    Some(RuleFilter { caps: list(caps), arches: list(arches), min_kernel: min_kernel.map(String::from) })
}

/// Docker's (moby `profiles/seccomp`) default profile, which containerd's matches: an allowlist
/// answering everything else with EPERM.
pub fn runtime_default() -> DockerProfile {
    let mut rules = vec![
        allow(DEFAULT_ALLOWED),
        DockerSyscall {
            includes: only(&[], &[], Some("4.8")),
            ..allow(&["process_vm_readv", "process_vm_writev", "ptrace"])
        },
        DockerSyscall { args: Some(vec![arg(0, 12, 0, Op::ScmpCmpLt)]), ..allow(&["socket"]) },
    ];
    for family in SOCKET_FAMILIES_FROM_13 {
        rules.push(DockerSyscall { args: Some(vec![arg(0, *family, 0, Op::ScmpCmpEq)]), ..allow(&["socket"]) });
    }
    // personality(2): Linux and 32-bit-address personalities, and the query.
    for persona in [0x0, 0x0008, 0x20000, 0x20008, 0xffff_ffff] {
        rules.push(DockerSyscall { args: Some(vec![arg(0, persona, 0, Op::ScmpCmpEq)]), ..allow(&["personality"]) });
    }
    for (arches, names) in BY_ARCH {
        rules.push(DockerSyscall { includes: only(&[], arches, None), ..allow(names) });
    }
    for (cap, names) in BY_CAPABILITY {
        rules.push(DockerSyscall { includes: only(&[cap], &[], None), ..allow(names) });
    }
    let without_sys_admin = |arches: &[&str]| only(&["CAP_SYS_ADMIN"], arches, None);
    // clone without namespace flags; s390 passes the flags second.
    rules.push(DockerSyscall {
        args: Some(vec![arg(0, CLONE_NAMESPACES, 0, Op::ScmpCmpMaskedEq)]),
        excludes: without_sys_admin(&["s390", "s390x"]),
        ..allow(&["clone"])
    });
    rules.push(DockerSyscall {
        args: Some(vec![arg(1, CLONE_NAMESPACES, 0, Op::ScmpCmpMaskedEq)]),
        includes: only(&[], &["s390", "s390x"], None),
        excludes: without_sys_admin(&[]),
        ..allow(&["clone"])
    });
    // clone3 passes its flags in memory, out of seccomp's sight: ENOSYS makes libc use clone.
    rules.push(DockerSyscall {
        names: Some(vec!["clone3".into()]),
        action: Act::ScmpActErrno,
        errno_ret: Some(libc::ENOSYS as u32),
        excludes: without_sys_admin(&[]),
        ..Default::default()
    });
    // The order of rules only matters within one action, and not for the rules below.
    DockerProfile {
        default_action: Some(Act::ScmpActErrno),
        default_errno_ret: Some(libc::EPERM as u32),
        arch_map: Some(vec![
            ArchMap {
                architecture: "SCMP_ARCH_X86_64".into(),
                sub_architectures: Some(vec!["SCMP_ARCH_X86".into(), "SCMP_ARCH_X32".into()]),
            },
            ArchMap { architecture: "SCMP_ARCH_AARCH64".into(), sub_architectures: Some(vec!["SCMP_ARCH_ARM".into()]) },
            ArchMap { architecture: "SCMP_ARCH_RISCV64".into(), sub_architectures: None },
        ]),
        syscalls: Some(rules),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Host {
        Host { arch: "amd64", scmp_arch: "SCMP_ARCH_X86_64", kernel: (6, 18) }
    }

    fn default_caps() -> Vec<String> {
        crate::security::capability_names(&crate::SecurityContext::default()).unwrap()
    }

    fn names_with(seccomp: &LinuxSeccomp, act: Act) -> Vec<String> {
        seccomp.syscalls().iter().flatten().filter(|s| s.action() == act).flat_map(|s| s.names().clone()).collect()
    }

    #[test]
    fn the_default_profile_follows_the_containers_capabilities() {
        let plain = resolve(&runtime_default(), &default_caps(), &host()).unwrap().unwrap();
        let allowed = names_with(&plain, Act::ScmpActAllow);
        assert_eq!(plain.default_action(), Act::ScmpActErrno);
        assert_eq!(plain.default_errno_ret(), Some(1));
        for name in ["read", "execve", "arch_prctl", "ptrace", "chroot", "clone", "socket", "personality"] {
            assert!(allowed.iter().any(|n| n == name), "{name} is allowed by default");
        }
        for name in ["mount", "unshare", "setns", "reboot", "bpf", "clone3", "kexec_load", "cacheflush"] {
            assert!(!allowed.iter().any(|n| n == name), "{name} is not allowed by default");
        }
        assert_eq!(names_with(&plain, Act::ScmpActErrno), ["clone3"], "clone3 answers ENOSYS");
        let clone: Vec<_> =
            plain.syscalls().iter().flatten().filter(|s| s.names().iter().any(|n| n == "clone")).collect();
        assert_eq!(clone.len(), 1, "only the clone without namespace flags");
        let a = clone[0].args().as_ref().unwrap()[0];
        assert_eq!((a.index(), a.op(), a.value(), a.value_two()), (0, Op::ScmpCmpMaskedEq, 0x7e020000, Some(0)));
        assert_eq!(
            plain.architectures().as_deref(),
            Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32][..])
        );

        let mut caps = default_caps();
        caps.extend(["CAP_SYS_ADMIN".to_string(), "CAP_SYS_PTRACE".to_string()]);
        let admin = resolve(&runtime_default(), &caps, &host()).unwrap().unwrap();
        let allowed = names_with(&admin, Act::ScmpActAllow);
        for name in ["mount", "unshare", "setns", "clone3", "bpf", "kcmp", "pidfd_getfd"] {
            assert!(allowed.iter().any(|n| n == name), "{name} is allowed with CAP_SYS_ADMIN/CAP_SYS_PTRACE");
        }
        assert!(names_with(&admin, Act::ScmpActErrno).is_empty(), "no ENOSYS for clone3 with CAP_SYS_ADMIN");
        assert!(!allowed.iter().any(|n| n == "reboot"));

        let old = Host { kernel: (4, 4), ..host() };
        let on_old = resolve(&runtime_default(), &default_caps(), &old).unwrap().unwrap();
        assert!(!names_with(&on_old, Act::ScmpActAllow).iter().any(|n| n == "ptrace"), "ptrace needs 4.8");
    }

    #[test]
    fn the_default_profile_compiles_to_a_base_and_an_enosys_filter() {
        let profile = resolve(&runtime_default(), &default_caps(), &host()).unwrap().unwrap();
        let filters = Filters::compile(&profile).unwrap();
        assert_eq!(filters.programs.len(), 2, "clone3's ENOSYS filter, then the allowlist");
        assert!(filters.programs.iter().all(|p| p.len() < 4096));
        let mut caps = default_caps();
        caps.push("CAP_SYS_ADMIN".into());
        let admin = Filters::compile(&resolve(&runtime_default(), &caps, &host()).unwrap().unwrap()).unwrap();
        assert_eq!(admin.programs.len(), 1);
    }

    #[test]
    fn a_localhost_profile_in_docker_format_parses_and_resolves() {
        let json = r#"{
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_LOONGARCH64"],
            "syscalls": [
                {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13, "args": null},
                {"name": "chown", "action": "SCMP_ACT_LOG"},
                {"names": ["ptrace"], "action": "SCMP_ACT_KILL", "excludes": {"caps": ["CAP_SYS_PTRACE"]}},
                {"names": ["socket"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_EQ"}]}
            ]
        }"#;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.json");
        std::fs::write(&path, json).unwrap();
        let docker = load(&path).unwrap();
        let profile = resolve(&docker, &default_caps(), &host()).unwrap().unwrap();
        assert_eq!(profile.default_action(), Act::ScmpActAllow);
        assert_eq!(profile.architectures().as_deref(), Some(&[Arch::ScmpArchX86_64][..]), "unknown arches skipped");
        let syscalls = profile.syscalls().as_ref().unwrap();
        assert_eq!(syscalls.len(), 4);
        assert_eq!(syscalls[0].errno_ret(), Some(13));
        assert_eq!(syscalls[1].names(), &["chown"]);
        let filters = Filters::compile(&profile).unwrap();
        assert_eq!(filters.programs.len(), 4, "EACCES, LOG, KILL and EPERM; no base filter for a default allow");

        let mut with_ptrace = default_caps();
        with_ptrace.push("CAP_SYS_PTRACE".into());
        let excluded = resolve(&docker, &with_ptrace, &host()).unwrap().unwrap();
        assert_eq!(excluded.syscalls().as_ref().unwrap().len(), 3, "the ptrace rule is excluded");
    }

    #[test]
    fn a_missing_or_broken_localhost_profile_is_worded_as_containerd_does() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("profiles/none.json");
        let err = oci_profile(&SeccompProfile::Localhost(missing.clone()), &default_caps()).unwrap_err();
        let p = missing.display();
        assert_eq!(
            err.to_string(),
            format!("cannot load seccomp profile \"{p}\": open {p}: no such file or directory")
        );
        let broken = dir.path().join("broken.json");
        std::fs::write(&broken, "{").unwrap();
        let err = oci_profile(&SeccompProfile::Localhost(broken), &default_caps()).unwrap_err();
        assert!(err.to_string().starts_with("decoding seccomp profile failed"), "{err}");
        assert!(oci_profile(&SeccompProfile::Unconfined, &default_caps()).unwrap().is_none());
    }

    #[test]
    fn profile_mistakes_are_refused() {
        let parse = |json: &str| -> DockerProfile { serde_json::from_str(json).unwrap() };
        let both = parse(
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"],
            "archMap": [{"architecture": "SCMP_ARCH_X86_64"}], "syscalls": []}"#,
        );
        assert!(matches!(resolve(&both, &[], &host()), Err(SeccompError::ArchitecturesAndArchMap)));
        let names = parse(
            r#"{"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"name": "read", "names": ["write"], "action": "SCMP_ACT_ALLOW"}]}"#,
        );
        assert!(matches!(resolve(&names, &[], &host()), Err(SeccompError::NameAndNames)));
        let kernel = parse(
            r#"{"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "six"}}]}"#,
        );
        assert!(matches!(resolve(&kernel, &[], &host()), Err(SeccompError::KernelVersion(_))));
        let empty = parse("{}");
        assert!(resolve(&empty, &[], &host()).unwrap().is_none(), "an empty profile means no filter, as in Docker");
        let notify = parse(r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#);
        let notify = resolve(&notify, &[], &host()).unwrap().unwrap();
        assert!(matches!(Filters::compile(&notify), Err(SeccompError::UnsupportedAction(_))));
    }

    #[test]
    fn repeated_comparisons_of_one_argument_are_alternatives() {
        let one = rules_for(&[arg(0, 1, 0, Op::ScmpCmpEq), arg(1, 2, 0, Op::ScmpCmpEq)]).unwrap().unwrap();
        assert_eq!(one.len(), 1, "different arguments: all must hold");
        let two = rules_for(&[arg(0, 1, 0, Op::ScmpCmpEq), arg(0, 2, 0, Op::ScmpCmpEq)]).unwrap().unwrap();
        assert_eq!(two.len(), 2, "the same argument twice: either may hold");
        assert!(rules_for(&[]).unwrap().is_none());
        let mut chains = Chains::new();
        add_chain(&mut chains, 1, &Some(one));
        add_chain(&mut chains, 1, &None);
        add_chain(&mut chains, 1, &Some(two));
        assert!(chains[&1].is_none(), "an unconditional rule wins over conditional ones");
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x32_calls_are_killed_right_after_the_architecture_check() {
        let profile = resolve(&runtime_default(), &default_caps(), &host()).unwrap().unwrap();
        for program in Filters::compile(&profile).unwrap().programs {
            let arch_check = &program[..3];
            assert_eq!((arch_check[0].k, arch_check[1].jt, arch_check[2].k), (4, 1, libc::SECCOMP_RET_KILL_PROCESS));
            assert_eq!((program[4].k, program[4].jf), (0x4000_0000, 1));
            assert_eq!(program[5].k, libc::SECCOMP_RET_KILL_PROCESS);
            assert_eq!((program[6].code, program[6].k), (program[3].code, 0), "then seccompiler loads nr again");
        }
    }

    #[test]
    fn kernel_versions_read_like_dockers() {
        assert_eq!(kernel_version("6.18.0-rc5+\n"), Some((6, 18)));
        assert_eq!(kernel_version("4.8-1-amd64"), Some((4, 8)));
        assert_eq!(min_kernel("4.8").unwrap(), (4, 8));
        assert!(min_kernel("0.0").is_err());
    }
}
