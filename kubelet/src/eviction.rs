//! The eviction manager (Kubernetes `pkg/kubelet/eviction`): every 10 s it observes the node's
//! signals, turns the hard thresholds they cross into the MemoryPressure / DiskPressure /
//! PIDPressure conditions and their NoSchedule taints, and evicts pods that outgrow their local
//! storage limits.
//!
//! ```text
//!  observe() ──▶ thresholds_met() ──▶ pressure_of() ──▶ PressureTracker (5 min transition)
//!                                                          │ NodeConditions::observe
//!                                                          ▼
//!                                      watch ──▶ node heartbeat (writes status at once)
//!                                      taints on the Node, NodeHas* events
//!  per active pod: emptyDir / pod / container usage vs limits ──▶ evict: `Evicted` event,
//!                                      status Failed/Evicted; the pod worker, which keeps a
//!                                      terminal phase, then kills the containers (grace 0)
//! ```
//!
//! Signals: `memory.available` is MemAvailable from /proc/meminfo; `nodefs.*` is the kubelet
//! root's filesystem and `imagefs.*` the runtime root's; `pid.available` is the lower of pid_max
//! and threads-max minus the kernel's count of tasks (sysinfo), as the kubelet's pidlimit does.
//!
//! One deliberate difference: bytes available count the blocks root may use (`f_bfree`), not
//! `f_bavail`. Skiff and its pods write as root, and on a filesystem with a large root reserve
//! (the lab machine keeps 160 GiB of 252 GiB back) `f_bavail` would put a node with two thirds
//! of its disk free under DiskPressure and taint it.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use serde_json::json;
use skiff_api::{ObjectReference, PatchKind, ResourceKind, Store};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Kubelet;
use crate::node::{NodeConditions, Pressure, PressureKind};

/// How often the manager looks (the kubelet's `evictionMonitoringPeriod`).
pub const MONITORING_INTERVAL: Duration = Duration::from_secs(10);
/// How long a pressure condition stays True after its threshold was last crossed
/// (`evictionPressureTransitionPeriod`).
pub const PRESSURE_TRANSITION_PERIOD: Duration = Duration::from_secs(300);
/// The pod status reason and event reason of an eviction.
pub const REASON: &str = "Evicted";

/// An eviction signal, by its Kubernetes name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    MemoryAvailable,
    NodefsAvailable,
    NodefsInodesFree,
    ImagefsAvailable,
    ImagefsInodesFree,
    PidAvailable,
}

impl Signal {
    const ALL: [Signal; 6] = [
        Signal::MemoryAvailable,
        Signal::NodefsAvailable,
        Signal::NodefsInodesFree,
        Signal::ImagefsAvailable,
        Signal::ImagefsInodesFree,
        Signal::PidAvailable,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory.available",
            Signal::NodefsAvailable => "nodefs.available",
            Signal::NodefsInodesFree => "nodefs.inodesFree",
            Signal::ImagefsAvailable => "imagefs.available",
            Signal::ImagefsInodesFree => "imagefs.inodesFree",
            Signal::PidAvailable => "pid.available",
        }
    }

    /// The node condition a crossed threshold on this signal raises.
    pub fn pressure(self) -> PressureKind {
        match self {
            Signal::MemoryAvailable => PressureKind::Memory,
            Signal::PidAvailable => PressureKind::Pid,
            _ => PressureKind::Disk,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ThresholdError {
    #[error("invalid eviction threshold {0:?}: want <signal><<quantity or percentage>")]
    Syntax(String),
    #[error("unknown eviction signal {0:?}")]
    UnknownSignal(String),
    #[error("invalid eviction threshold value {0:?}")]
    Value(String),
}

/// How much of a signal must stay available.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ThresholdValue {
    Quantity(u64),
    /// A fraction of capacity, 0..=1.
    Percentage(f64),
}

/// A hard threshold: `signal < value` evicts (and raises the signal's condition).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold {
    pub signal: Signal,
    pub value: ThresholdValue,
}

impl Threshold {
    /// Parses one `--eviction-hard` entry, such as `memory.available<100Mi` or `nodefs.available<10%`.
    pub fn parse(s: &str) -> Result<Threshold, ThresholdError> {
        let (name, value) = s.trim().split_once('<').ok_or_else(|| ThresholdError::Syntax(s.to_string()))?;
        let signal = Signal::ALL
            .into_iter()
            .find(|sig| sig.name() == name.trim())
            .ok_or_else(|| ThresholdError::UnknownSignal(name.trim().to_string()))?;
        let value = value.trim();
        let value = match value.strip_suffix('%') {
            Some(pct) => {
                let pct: f64 = pct.parse().map_err(|_| ThresholdError::Value(value.to_string()))?;
                if !(0.0..=100.0).contains(&pct) {
                    return Err(ThresholdError::Value(value.to_string()));
                }
                ThresholdValue::Percentage(pct / 100.0)
            }
            None => {
                let q = skiff_api::parse_bytes(value).map_err(|_| ThresholdError::Value(value.to_string()))?;
                ThresholdValue::Quantity(u64::try_from(q).map_err(|_| ThresholdError::Value(value.to_string()))?)
            }
        };
        Ok(Threshold { signal, value })
    }

    /// The amount below which the threshold is crossed, for a signal of `capacity`.
    fn floor(&self, capacity: u64) -> u64 {
        match self.value {
            ThresholdValue::Quantity(q) => q,
            ThresholdValue::Percentage(p) => (capacity as f64 * p) as u64,
        }
    }
}

/// Parses a comma-separated threshold list (the kubelet's `--eviction-hard` syntax).
pub fn parse_thresholds(s: &str) -> Result<Vec<Threshold>, ThresholdError> {
    s.split(',').filter(|t| !t.trim().is_empty()).map(Threshold::parse).collect()
}

/// The kubelet's default hard thresholds on Linux. `pid.available` has none by default.
pub fn default_thresholds() -> Vec<Threshold> {
    parse_thresholds(
        "memory.available<100Mi,nodefs.available<10%,nodefs.inodesFree<5%,imagefs.available<15%,imagefs.inodesFree<5%",
    )
    .expect("the default thresholds parse")
}

/// What a signal measured: how much is available out of how much.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    pub available: u64,
    pub capacity: u64,
}

pub type Observations = HashMap<Signal, Observation>;

/// `memory.available` from /proc/meminfo text: MemAvailable out of MemTotal.
pub fn memory_observation(meminfo: &str) -> Option<Observation> {
    let total = skiff_runtime::meminfo_kib(meminfo, "MemTotal")?;
    let available = skiff_runtime::meminfo_kib(meminfo, "MemAvailable")?;
    Some(Observation { available: available * 1024, capacity: total * 1024 })
}

/// `pid.available`: the lower of pid_max and threads-max, minus the tasks that exist.
pub fn pid_observation(pid_max: &str, threads_max: &str, tasks: u64) -> Option<Observation> {
    let pid_max: u64 = pid_max.trim().parse().ok()?;
    let capacity = threads_max.trim().parse::<u64>().map_or(pid_max, |t| t.min(pid_max));
    Some(Observation { available: capacity.saturating_sub(tasks), capacity })
}

/// Bytes and inodes free on the filesystem holding `path`.
fn filesystem_observations(path: &Path) -> std::io::Result<(Observation, Observation)> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: all-zero is a valid statvfs, which the call then fills.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let block = st.f_frsize as u64;
    let bytes = Observation { available: st.f_bfree as u64 * block, capacity: st.f_blocks as u64 * block };
    let inodes = Observation { available: st.f_ffree as u64, capacity: st.f_files as u64 };
    Ok((bytes, inodes))
}

/// Observes every signal it can read; an unreadable one is left out (and so never crosses).
pub fn observe(node_root: &Path, image_root: &Path) -> Observations {
    let mut out = Observations::new();
    match std::fs::read_to_string("/proc/meminfo") {
        Ok(text) => {
            if let Some(o) = memory_observation(&text) {
                out.insert(Signal::MemoryAvailable, o);
            }
        }
        Err(e) => tracing::warn!("reading /proc/meminfo: {e}"),
    }
    for (root, bytes, inodes) in [
        (node_root, Signal::NodefsAvailable, Signal::NodefsInodesFree),
        (image_root, Signal::ImagefsAvailable, Signal::ImagefsInodesFree),
    ] {
        match filesystem_observations(root) {
            Ok((b, i)) => {
                out.insert(bytes, b);
                out.insert(inodes, i);
            }
            Err(e) => tracing::warn!("statfs {}: {e}", root.display()),
        }
    }
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    // SAFETY: all-zero is a valid sysinfo, which the call then fills.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a writable sysinfo.
    if unsafe { libc::sysinfo(&mut info) } == 0 {
        let tasks = info.procs as u64;
        if let Some(o) =
            pid_observation(&read("/proc/sys/kernel/pid_max"), &read("/proc/sys/kernel/threads-max"), tasks)
        {
            out.insert(Signal::PidAvailable, o);
        }
    }
    out
}

/// The thresholds the observations cross.
pub fn thresholds_met(thresholds: &[Threshold], observations: &Observations) -> Vec<Threshold> {
    thresholds
        .iter()
        .filter(|t| observations.get(&t.signal).is_some_and(|o| o.available < t.floor(o.capacity)))
        .copied()
        .collect()
}

/// The pressures a set of crossed thresholds raises.
pub fn pressure_of(met: &[Threshold]) -> Pressure {
    let has = |kind| met.iter().any(|t| t.signal.pressure() == kind);
    Pressure { memory: has(PressureKind::Memory), disk: has(PressureKind::Disk), pid: has(PressureKind::Pid) }
}

/// Keeps a pressure up until it has not been observed for the transition period, so a node
/// hovering at a threshold does not flap.
#[derive(Debug, Default)]
pub struct PressureTracker {
    last_observed: HashMap<PressureKind, Instant>,
}

impl PressureTracker {
    pub fn update(&mut self, observed: Pressure, now: Instant, period: Duration) -> Pressure {
        for kind in PressureKind::ALL {
            if kind.of(observed) {
                self.last_observed.insert(kind, now);
            }
        }
        let holds = |kind| self.last_observed.get(&kind).is_some_and(|at| now.duration_since(*at) < period);
        Pressure { memory: holds(PressureKind::Memory), disk: holds(PressureKind::Disk), pid: holds(PressureKind::Pid) }
    }
}

/// The node's taints with the pressure taints set to `pressure`, or None when they already are.
pub fn pressure_taints(current: &[Taint], pressure: Pressure) -> Option<Vec<Taint>> {
    let keys: Vec<&str> = PressureKind::ALL.iter().map(|k| k.taint_key()).collect();
    let mut out: Vec<Taint> =
        current.iter().filter(|t| !(keys.contains(&t.key.as_str()) && t.effect == "NoSchedule")).cloned().collect();
    for kind in PressureKind::ALL.into_iter().filter(|k| k.of(pressure)) {
        out.push(Taint { key: kind.taint_key().to_string(), effect: "NoSchedule".to_string(), ..Default::default() });
    }
    let same = out.len() == current.len() && out.iter().all(|t| current.contains(t));
    (!same).then_some(out)
}

/// Bytes a directory tree takes on disk (allocated blocks, as `du`), not crossing into other
/// filesystems (a memory-medium emptyDir is a tmpfs mount) and not following symlinks.
pub fn dir_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(top) = std::fs::symlink_metadata(path) else { return 0 };
    let dev = top.dev();
    let mut total = 0;
    let mut stack = vec![(path.to_path_buf(), top)];
    while let Some((p, meta)) = stack.pop() {
        if meta.dev() != dev {
            continue;
        }
        total += meta.blocks() * 512;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                if let Ok(m) = entry.metadata() {
                    stack.push((entry.path(), m));
                }
            }
        }
    }
    total
}

/// What a pod uses of local storage, in bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodUsage {
    /// Disk-medium emptyDir volumes, by volume name.
    pub volumes: HashMap<String, u64>,
    /// Each container's writable layer plus its logs, by container name.
    pub containers: HashMap<String, u64>,
}

fn storage_limit(c: &k8s_openapi::api::core::v1::Container) -> Option<(u64, String)> {
    let q = c.resources.as_ref()?.limits.as_ref()?.get("ephemeral-storage")?;
    let bytes = u64::try_from(skiff_api::parse_bytes(&q.0).ok()?).ok()?;
    (bytes > 0).then(|| (bytes, q.0.clone()))
}

/// A byte count as Kubernetes prints a binary quantity (`1Mi`, `1536Ki`, `1000`).
fn format_bytes(bytes: u64) -> String {
    for (unit, size) in
        [("Ei", 1u64 << 60), ("Pi", 1 << 50), ("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)]
    {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    bytes.to_string()
}

/// Why the pod must be evicted for its local storage, in Kubernetes' words, or None. Checked
/// in Kubernetes' order: emptyDir size limits, the pod's total, each container's limit.
pub fn local_storage_violation(pod: &Pod, usage: &PodUsage) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    for v in spec.volumes.iter().flatten() {
        let Some(ed) = &v.empty_dir else { continue };
        let (Some(limit), Some(used)) = (&ed.size_limit, usage.volumes.get(&v.name)) else { continue };
        let Ok(bytes) = skiff_api::parse_bytes(&limit.0) else { continue };
        if bytes > 0 && *used > bytes as u64 {
            return Some(format!("Usage of EmptyDir volume {:?} exceeds the limit {:?}. ", v.name, limit.0));
        }
    }
    let limits: Vec<(&str, u64, String)> =
        spec.containers.iter().filter_map(|c| storage_limit(c).map(|(b, s)| (c.name.as_str(), b, s))).collect();
    if !limits.is_empty() {
        let total_limit: u64 = limits.iter().map(|(_, b, _)| b).sum();
        let total_used: u64 = usage.volumes.values().sum::<u64>() + usage.containers.values().sum::<u64>();
        if total_used > total_limit {
            let shown = if limits.len() == 1 { limits[0].2.clone() } else { format_bytes(total_limit) };
            return Some(format!("Pod ephemeral local storage usage exceeds the total limit of containers {shown}. "));
        }
    }
    for (name, bytes, shown) in &limits {
        if usage.containers.get(*name).is_some_and(|used| used > bytes) {
            return Some(format!("Container {name} exceeded its local ephemeral storage limit {shown:?}. "));
        }
    }
    None
}

/// Whether the pod declares anything local storage eviction checks.
fn has_storage_limits(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else { return false };
    spec.volumes.iter().flatten().any(|v| v.empty_dir.as_ref().is_some_and(|ed| ed.size_limit.is_some()))
        || spec.containers.iter().any(|c| storage_limit(c).is_some())
}

fn is_active(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && !matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

/// The eviction manager's state between ticks.
pub struct EvictionManager {
    thresholds: Vec<Threshold>,
    tracker: PressureTracker,
    conditions: watch::Sender<NodeConditions>,
    /// Pods evicted, by UID, with the message: never evicted twice.
    evicted: HashMap<String, String>,
}

impl EvictionManager {
    pub fn new(thresholds: Vec<Threshold>, conditions: watch::Sender<NodeConditions>) -> Self {
        Self { thresholds, tracker: PressureTracker::default(), conditions, evicted: HashMap::new() }
    }

    /// Runs until `shutdown`: a sync every [`MONITORING_INTERVAL`].
    pub async fn run(
        mut self,
        kubelet: Arc<Kubelet>,
        pods: Store<Pod>,
        node: ObjectReference,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(MONITORING_INTERVAL);
        let mut first = true;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.sync_node(&kubelet, &node, first).await;
            first = false;
            self.evict_local_storage(&kubelet, &pods).await;
        }
    }

    async fn sync_node(&mut self, k: &Arc<Kubelet>, node: &ObjectReference, first: bool) {
        let (root, image_root) = (k.config.root.clone(), k.runtime.config().root.clone());
        let observations = match tokio::task::spawn_blocking(move || observe(&root, &image_root)).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!("observing eviction signals: {e}");
                return;
            }
        };
        let met = thresholds_met(&self.thresholds, &observations);
        for t in &met {
            let o = observations[&t.signal];
            tracing::warn!(
                signal = t.signal.name(),
                available = o.available,
                capacity = o.capacity,
                "eviction threshold met"
            );
        }
        let pressure = self.tracker.update(pressure_of(&met), Instant::now(), PRESSURE_TRANSITION_PERIOD);
        let before = self.conditions.borrow().pressure();
        let mut flipped = false;
        self.conditions.send_if_modified(|c| {
            flipped = c.observe(pressure, crate::generate::truncate(Timestamp::now()));
            flipped
        });
        let name = &k.config.node_name;
        for kind in PressureKind::ALL {
            let now = kind.of(pressure);
            if first || now != kind.of(before) {
                let reason = kind.event_reason(now);
                k.recorder.normal(node, reason, &format!("Node {name} status is now: {reason}")).await;
            }
        }
        if flipped || first {
            self.sync_taints(k, pressure).await;
        }
    }

    async fn sync_taints(&self, k: &Arc<Kubelet>, pressure: Pressure) {
        let nodes = ResourceKind::of::<Node>();
        let name = &k.config.node_name;
        let current = match k.client.get(nodes, None, name).await {
            Ok(v) => {
                serde_json::from_value::<Node>(v).ok().and_then(|n| n.spec).and_then(|s| s.taints).unwrap_or_default()
            }
            Err(e) => {
                tracing::warn!(node = %name, "reading node taints: {e}");
                return;
            }
        };
        let Some(taints) = pressure_taints(&current, pressure) else { return };
        let taints = if taints.is_empty() { serde_json::Value::Null } else { json!(taints) };
        let patch = json!({"spec": {"taints": taints}});
        if let Err(e) = k.client.patch(nodes, None, name, None, PatchKind::Merge, patch).await {
            tracing::warn!(node = %name, "updating pressure taints: {e}");
        }
    }

    async fn evict_local_storage(&mut self, k: &Arc<Kubelet>, pods: &Store<Pod>) {
        let running: HashSet<String> = k.workers.uids().into_iter().collect();
        let candidates: Vec<Arc<Pod>> = pods
            .list()
            .into_iter()
            .filter(|p| p.metadata.uid.as_ref().is_some_and(|u| running.contains(u) && !self.evicted.contains_key(u)))
            .filter(|p| is_active(p) && has_storage_limits(p))
            .collect();
        for pod in candidates {
            let usage = {
                let (k, pod) = (k.clone(), pod.clone());
                match tokio::task::spawn_blocking(move || pod_usage(&k, &pod)).await {
                    Ok(u) => u,
                    Err(e) => {
                        tracing::warn!("measuring pod storage: {e}");
                        continue;
                    }
                }
            };
            if let Some(message) = local_storage_violation(&pod, &usage) {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                tracing::info!(pod = %pod_name(&pod), "evicting: {message}");
                k.recorder.warning(&crate::events::pod_ref(&pod), REASON, &message).await;
                self.evicted.insert(uid, message);
            }
        }
        // Pods whose workers are gone no longer need remembering.
        self.evicted.retain(|uid, _| running.contains(uid));
        // Marking the pod Failed is what stops it: its worker keeps a terminal phase and tears the
        // pod down at once. A worker mid-sync may still write the phase it had computed, so
        // the mark is repeated until the pod shows it.
        for pod in pods.list() {
            let Some(message) = pod.metadata.uid.as_ref().and_then(|u| self.evicted.get(u)) else { continue };
            if is_active(&pod) {
                mark_evicted(k, &pod, message).await;
            }
        }
    }
}

fn pod_name(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Writes the evicted pod's status as Kubernetes' `killPodFunc` leaves it: phase Failed,
/// reason `Evicted`, the eviction message.
async fn mark_evicted(k: &Kubelet, pod: &Pod, message: &str) {
    let pods = ResourceKind::of::<Pod>();
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let patch = json!({"status": {"phase": "Failed", "reason": REASON, "message": message}});
    if let Err(e) = k.client.patch(pods, Some(ns), name, Some("status"), PatchKind::Merge, patch).await {
        tracing::warn!(pod = %pod_name(pod), "marking evicted: {e}");
    }
}

/// Measures a pod's emptyDirs (disk medium), and each container's writable layer and logs.
fn pod_usage(k: &Kubelet, pod: &Pod) -> PodUsage {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let mut usage = PodUsage::default();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let Some(ed) = &v.empty_dir else { continue };
        if ed.medium.as_deref() == Some("Memory") {
            continue;
        }
        let dir = k.volumes.pod_dir(uid).join("volumes").join("kubernetes.io~empty-dir").join(&v.name);
        usage.volumes.insert(v.name.clone(), dir_usage(&dir));
    }
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let log_dir = crate::logs::pod_log_dir(&k.config.root, ns, name, uid);
    let containers = k.runtime.list_containers().unwrap_or_default();
    for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        let layers: u64 = containers
            .iter()
            .filter(|info| info.sandbox_id == uid && info.name == c.name)
            .map(|info| dir_usage(&k.runtime.config().root.join("containers").join(&info.id).join("upper")))
            .sum();
        usage.containers.insert(c.name.clone(), layers + dir_usage(&log_dir.join(&c.name)));
    }
    usage
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(available: u64, capacity: u64) -> Observation {
        Observation { available, capacity }
    }

    #[test]
    fn meminfo_gives_mem_available_out_of_mem_total() {
        let text = "MemTotal:        2048000 kB\nMemFree:          100000 kB\nMemAvailable:     512000 kB\n";
        assert_eq!(memory_observation(text), Some(obs(512_000 * 1024, 2_048_000 * 1024)));
        assert_eq!(memory_observation("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn pid_available_is_the_lower_limit_minus_tasks() {
        assert_eq!(pid_observation("4194304\n", "63000\n", 1000), Some(obs(62_000, 63_000)));
        assert_eq!(pid_observation("32768\n", "", 768), Some(obs(32_000, 32_768)));
        assert_eq!(pid_observation("junk", "1", 1), None);
    }

    #[test]
    fn thresholds_parse_like_eviction_hard() {
        let t = parse_thresholds("memory.available<100Mi, nodefs.available<10%").unwrap();
        assert_eq!(t[0], Threshold { signal: Signal::MemoryAvailable, value: ThresholdValue::Quantity(100 << 20) });
        assert_eq!(t[1], Threshold { signal: Signal::NodefsAvailable, value: ThresholdValue::Percentage(0.1) });
        assert_eq!(Threshold::parse("memory.free<1Mi"), Err(ThresholdError::UnknownSignal("memory.free".into())));
        assert_eq!(Threshold::parse("pid.available"), Err(ThresholdError::Syntax("pid.available".into())));
        assert_eq!(Threshold::parse("pid.available<120%"), Err(ThresholdError::Value("120%".into())));
        assert_eq!(default_thresholds().len(), 5);
        assert!(default_thresholds().iter().all(|t| t.signal != Signal::PidAvailable));
    }

    #[test]
    fn thresholds_are_met_only_below_their_floor() {
        let thresholds = default_thresholds();
        let mut o = Observations::new();
        o.insert(Signal::MemoryAvailable, obs(100 << 20, 1 << 30));
        o.insert(Signal::NodefsAvailable, obs(9, 100));
        o.insert(Signal::NodefsInodesFree, obs(50, 100));
        o.insert(Signal::ImagefsAvailable, obs(15, 100));
        let met = thresholds_met(&thresholds, &o);
        assert_eq!(met.iter().map(|t| t.signal).collect::<Vec<_>>(), vec![Signal::NodefsAvailable]);
        assert_eq!(pressure_of(&met), Pressure { memory: false, disk: true, pid: false });

        o.insert(Signal::MemoryAvailable, obs((100 << 20) - 1, 1 << 30));
        o.insert(Signal::NodefsAvailable, obs(10, 100));
        let met = thresholds_met(&thresholds, &o);
        assert_eq!(pressure_of(&met), Pressure { memory: true, disk: false, pid: false });
    }

    #[test]
    fn an_unobserved_signal_never_crosses() {
        let pid = parse_thresholds("pid.available<10%").unwrap();
        assert!(thresholds_met(&pid, &Observations::new()).is_empty());
        let mut o = Observations::new();
        o.insert(Signal::PidAvailable, obs(5, 100));
        assert_eq!(pressure_of(&thresholds_met(&pid, &o)), Pressure { memory: false, disk: false, pid: true });
    }

    #[tokio::test(start_paused = true)]
    async fn pressure_holds_for_the_transition_period_after_it_was_last_seen() {
        let mut tracker = PressureTracker::default();
        let period = PRESSURE_TRANSITION_PERIOD;
        let disk = Pressure { disk: true, ..Default::default() };
        let t0 = Instant::now();
        assert_eq!(tracker.update(disk, t0, period), disk);
        tokio::time::advance(Duration::from_secs(299)).await;
        assert_eq!(tracker.update(Pressure::default(), Instant::now(), period), disk);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(tracker.update(Pressure::default(), Instant::now(), period), Pressure::default());
    }

    #[test]
    fn conditions_move_their_transition_time_only_when_status_flips() {
        let t0 = Timestamp::from_second(1_700_000_000).unwrap();
        let t1 = Timestamp::from_second(1_700_000_010).unwrap();
        let t2 = Timestamp::from_second(1_700_000_020).unwrap();
        let mut c = NodeConditions::healthy(t0);
        assert!(!c.observe(Pressure::default(), t1));
        assert_eq!(c, NodeConditions::healthy(t0));
        assert!(c.observe(Pressure { memory: true, ..Default::default() }, t1));
        assert_eq!((c.memory_pressure.status, c.memory_pressure.since), (true, t1));
        assert_eq!(c.disk_pressure.since, t0);
        assert!(!c.observe(Pressure { memory: true, ..Default::default() }, t2));
        assert_eq!(c.memory_pressure.since, t1);
        assert!(c.observe(Pressure::default(), t2));
        assert_eq!((c.memory_pressure.status, c.memory_pressure.since), (false, t2));
    }

    #[test]
    fn pressure_taints_are_added_and_removed_keeping_others() {
        let other = Taint {
            key: "dedicated".into(),
            effect: "NoSchedule".into(),
            value: Some("x".into()),
            ..Default::default()
        };
        let disk = Pressure { disk: true, ..Default::default() };
        let tainted = pressure_taints(std::slice::from_ref(&other), disk).unwrap();
        assert_eq!(tainted.len(), 2);
        assert_eq!(tainted[1].key, "node.kubernetes.io/disk-pressure");
        assert_eq!(tainted[1].effect, "NoSchedule");
        assert_eq!(pressure_taints(&tainted, disk), None);
        assert_eq!(pressure_taints(&tainted, Pressure::default()), Some(vec![other.clone()]));
        assert_eq!(pressure_taints(&[], Pressure::default()), None);
    }

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn an_emptydir_over_its_size_limit_is_reported_in_kubernetes_words() {
        let p = pod(json!({"metadata": {"name": "p"}, "spec": {
            "containers": [{"name": "c", "image": "busybox"}],
            "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "1Mi"}}]}}));
        assert!(has_storage_limits(&p));
        let mut usage = PodUsage::default();
        usage.volumes.insert("scratch".into(), 1 << 20);
        assert_eq!(local_storage_violation(&p, &usage), None);
        usage.volumes.insert("scratch".into(), 3 << 20);
        assert_eq!(
            local_storage_violation(&p, &usage).as_deref(),
            Some("Usage of EmptyDir volume \"scratch\" exceeds the limit \"1Mi\". ")
        );
    }

    #[test]
    fn container_limits_are_checked_as_a_pod_total_then_per_container() {
        let p = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "image": "busybox", "resources": {"limits": {"ephemeral-storage": "1Mi"}}},
            {"name": "b", "image": "busybox", "resources": {"limits": {"ephemeral-storage": "2Mi"}}}]}}));
        let mut usage = PodUsage::default();
        usage.containers.insert("a".into(), 4 << 20);
        assert_eq!(
            local_storage_violation(&p, &usage).as_deref(),
            Some("Pod ephemeral local storage usage exceeds the total limit of containers 3Mi. ")
        );
        usage.containers.insert("a".into(), (1 << 20) + 1);
        assert_eq!(
            local_storage_violation(&p, &usage).as_deref(),
            Some("Container a exceeded its local ephemeral storage limit \"1Mi\". ")
        );
        usage.containers.insert("a".into(), 1 << 20);
        assert_eq!(local_storage_violation(&p, &usage), None);
    }

    #[test]
    fn a_pod_without_limits_is_not_measured() {
        let p = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}],
            "volumes": [{"name": "v", "emptyDir": {}}]}}));
        assert!(!has_storage_limits(&p));
    }

    #[test]
    fn dir_usage_counts_allocated_blocks_of_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/f"), vec![1u8; 3 << 20]).unwrap();
        let used = dir_usage(dir.path());
        assert!(used >= 3 << 20, "{used}");
        assert!(used < 4 << 20, "{used}");
        assert_eq!(dir_usage(&dir.path().join("missing")), 0);
    }

    #[test]
    fn byte_counts_print_as_binary_quantities() {
        assert_eq!(format_bytes(3 << 20), "3Mi");
        assert_eq!(format_bytes(1536 << 10), "1536Ki");
        assert_eq!(format_bytes(1000), "1000");
    }
}
