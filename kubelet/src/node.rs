//! Node registration and heartbeat: the Node object (labels, capacity, conditions, addresses,
//! nodeInfo) read off this machine, a Lease in `kube-node-lease` renewed every 10 s, and the
//! Ready condition's `lastHeartbeatTime` refreshed every 40 s.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use serde_json::{Value, json};
use skiff_api::{Api, ApiClient, ApiError, PatchKind, ResourceKind};
use tokio_util::sync::CancellationToken;

pub const KUBELET_VERSION: &str = "v1.33.0+skiff";
pub const RUNTIME_VERSION: &str = "skiff://0.1.0";
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
pub const LEASE_DURATION_SECONDS: i32 = 40;
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
pub const STATUS_REFRESH: Duration = Duration::from_secs(40);
/// The pods a node takes, as the kubelet's default `maxPods`.
pub const MAX_PODS: u32 = 110;
/// Kept back from allocatable memory, as the kubelet's default hard eviction threshold.
const EVICTION_MEMORY_KI: u64 = 100 * 1024;

/// What registration reports about this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    pub cpus: u32,
    pub memory_ki: u64,
    pub ephemeral_storage_ki: u64,
    pub kernel_version: String,
    pub os_image: String,
    pub internal_ip: String,
    pub hostname: String,
    pub machine_id: String,
    pub boot_id: String,
    pub system_uuid: String,
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_default()
}

/// `PRETTY_NAME` from /etc/os-release text.
pub fn pretty_name(os_release: &str) -> Option<String> {
    os_release.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=")).map(|v| v.trim().trim_matches('"').to_string())
}

fn filesystem_ki(path: &Path) -> u64 {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else { return 0 };
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    (st.f_blocks as u64).saturating_mul(st.f_frsize as u64) / 1024
}

/// The first non-loopback IPv4 address of an interface that is up, else 127.0.0.1.
pub fn internal_ip() -> String {
    let mut found = None;
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `ifap` with a list we only read and then free with freeifaddrs.
    unsafe {
        if libc::getifaddrs(&mut ifap) == 0 {
            let mut cur = ifap;
            while !cur.is_null() {
                let ifa = &*cur;
                let up = ifa.ifa_flags & libc::IFF_UP as u32 != 0;
                let loopback = ifa.ifa_flags & libc::IFF_LOOPBACK as u32 != 0;
                if up && !loopback && !ifa.ifa_addr.is_null() && (*ifa.ifa_addr).sa_family as i32 == libc::AF_INET {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    found = Some(std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).to_string());
                    break;
                }
                cur = ifa.ifa_next;
            }
            libc::freeifaddrs(ifap);
        }
    }
    found.unwrap_or_else(|| "127.0.0.1".to_string())
}

/// Kubernetes' name of the machine architecture.
pub fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "s390x" => "s390x",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

impl HostInfo {
    /// Reads this machine; `root` is the kubelet's directory (its filesystem is ephemeral storage).
    pub fn read(root: &Path) -> Self {
        Self {
            cpus: std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
            memory_ki: skiff_runtime::meminfo_kib(&read_trim("/proc/meminfo"), "MemTotal").unwrap_or(0),
            ephemeral_storage_ki: filesystem_ki(root),
            kernel_version: read_trim("/proc/sys/kernel/osrelease"),
            os_image: pretty_name(&read_trim("/etc/os-release")).unwrap_or_else(|| "Linux".to_string()),
            internal_ip: internal_ip(),
            hostname: read_trim("/proc/sys/kernel/hostname"),
            machine_id: read_trim("/etc/machine-id"),
            boot_id: read_trim("/proc/sys/kernel/random/boot_id"),
            system_uuid: read_trim("/sys/class/dmi/id/product_uuid"),
        }
    }
}

fn condition(type_: &str, status: &str, reason: &str, message: &str, heartbeat: &str, transition: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message,
           "lastHeartbeatTime": heartbeat, "lastTransitionTime": transition})
}

/// One node condition as the kubelet observed it: whether it holds, and since when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    pub status: bool,
    pub since: Timestamp,
}

/// The node's conditions as observed: the three pressures the eviction manager computes, and
/// Ready. A condition's `lastTransitionTime` moves only when its status flips.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeConditions {
    pub memory_pressure: Observed,
    pub disk_pressure: Observed,
    pub pid_pressure: Observed,
    pub ready: Observed,
}

/// Which pressures hold now (the eviction manager's verdict after its transition period).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pressure {
    pub memory: bool,
    pub disk: bool,
    pub pid: bool,
}

impl NodeConditions {
    /// No pressure and Ready, all since `since` (when the kubelet came up).
    pub fn healthy(since: Timestamp) -> Self {
        let no = Observed { status: false, since };
        Self { memory_pressure: no, disk_pressure: no, pid_pressure: no, ready: Observed { status: true, since } }
    }

    /// Takes in the pressures observed at `now`; returns whether any condition flipped.
    pub fn observe(&mut self, pressure: Pressure, now: Timestamp) -> bool {
        let mut changed = false;
        for (cond, status) in [
            (&mut self.memory_pressure, pressure.memory),
            (&mut self.disk_pressure, pressure.disk),
            (&mut self.pid_pressure, pressure.pid),
        ] {
            if cond.status != status {
                *cond = Observed { status, since: now };
                changed = true;
            }
        }
        changed
    }

    /// The pressures these conditions report.
    pub fn pressure(&self) -> Pressure {
        Pressure { memory: self.memory_pressure.status, disk: self.disk_pressure.status, pid: self.pid_pressure.status }
    }
}

/// A pressure condition's type, reason and message, as the kubelet's setters word them.
pub fn pressure_condition(kind: PressureKind, status: bool) -> (&'static str, &'static str, &'static str) {
    match (kind, status) {
        (PressureKind::Memory, false) => {
            ("MemoryPressure", "KubeletHasSufficientMemory", "kubelet has sufficient memory available")
        }
        (PressureKind::Memory, true) => {
            ("MemoryPressure", "KubeletHasInsufficientMemory", "kubelet has insufficient memory available")
        }
        (PressureKind::Disk, false) => ("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        (PressureKind::Disk, true) => ("DiskPressure", "KubeletHasDiskPressure", "kubelet has disk pressure"),
        (PressureKind::Pid, false) => {
            ("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available")
        }
        (PressureKind::Pid, true) => {
            ("PIDPressure", "KubeletHasInsufficientPID", "kubelet has insufficient PID available")
        }
    }
}

/// The three node pressures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PressureKind {
    Memory,
    Disk,
    Pid,
}

impl PressureKind {
    pub const ALL: [PressureKind; 3] = [PressureKind::Memory, PressureKind::Disk, PressureKind::Pid];

    /// The NoSchedule taint the node carries while under this pressure.
    pub fn taint_key(self) -> &'static str {
        match self {
            PressureKind::Memory => "node.kubernetes.io/memory-pressure",
            PressureKind::Disk => "node.kubernetes.io/disk-pressure",
            PressureKind::Pid => "node.kubernetes.io/pid-pressure",
        }
    }

    /// The node event recorded when the condition turns to `status` (`NodeHasDiskPressure`, ...).
    pub fn event_reason(self, status: bool) -> &'static str {
        match (self, status) {
            (PressureKind::Memory, false) => "NodeHasSufficientMemory",
            (PressureKind::Memory, true) => "NodeHasInsufficientMemory",
            (PressureKind::Disk, false) => "NodeHasNoDiskPressure",
            (PressureKind::Disk, true) => "NodeHasDiskPressure",
            (PressureKind::Pid, false) => "NodeHasSufficientPID",
            (PressureKind::Pid, true) => "NodeHasInsufficientPID",
        }
    }

    pub fn of(self, p: Pressure) -> bool {
        match self {
            PressureKind::Memory => p.memory,
            PressureKind::Disk => p.disk,
            PressureKind::Pid => p.pid,
        }
    }
}

/// The node's conditions as the API shows them, at heartbeat time `heartbeat`.
pub fn conditions(heartbeat: Timestamp, observed: &NodeConditions) -> Value {
    let h = heartbeat.to_string();
    let mut out: Vec<Value> = [
        (PressureKind::Memory, observed.memory_pressure),
        (PressureKind::Disk, observed.disk_pressure),
        (PressureKind::Pid, observed.pid_pressure),
    ]
    .into_iter()
    .map(|(kind, o)| {
        let (type_, reason, message) = pressure_condition(kind, o.status);
        let status = if o.status { "True" } else { "False" };
        condition(type_, status, reason, message, &h, &o.since.to_string())
    })
    .collect();
    out.push(condition(
        "Ready",
        "True",
        "KubeletReady",
        "kubelet is posting ready status",
        &h,
        &observed.ready.since.to_string(),
    ));
    Value::Array(out)
}

pub fn labels(node_name: &str) -> Value {
    json!({
        "beta.kubernetes.io/arch": arch(),
        "beta.kubernetes.io/os": "linux",
        "kubernetes.io/arch": arch(),
        "kubernetes.io/hostname": node_name,
        "kubernetes.io/os": "linux",
        "node-role.kubernetes.io/control-plane": "true",
    })
}

/// The `status` of the Node.
pub fn node_status(info: &HostInfo, node_name: &str, now: Timestamp, observed: &NodeConditions) -> Value {
    let capacity = json!({
        "cpu": info.cpus.to_string(),
        "memory": format!("{}Ki", info.memory_ki),
        "pods": MAX_PODS.to_string(),
        "ephemeral-storage": format!("{}Ki", info.ephemeral_storage_ki),
        "hugepages-1Gi": "0",
        "hugepages-2Mi": "0",
    });
    let allocatable = json!({
        "cpu": info.cpus.to_string(),
        "memory": format!("{}Ki", info.memory_ki.saturating_sub(EVICTION_MEMORY_KI)),
        "pods": MAX_PODS.to_string(),
        // The default nodefs.available<10% eviction threshold, in bytes as the kubelet writes it.
        "ephemeral-storage": (info.ephemeral_storage_ki * 1024 / 10 * 9).to_string(),
        "hugepages-1Gi": "0",
        "hugepages-2Mi": "0",
    });
    json!({
        "capacity": capacity,
        "allocatable": allocatable,
        "conditions": conditions(now, observed),
        "addresses": [
            {"type": "InternalIP", "address": info.internal_ip},
            {"type": "Hostname", "address": node_name},
        ],
        "nodeInfo": {
            "machineID": info.machine_id,
            "systemUUID": info.system_uuid,
            "bootID": info.boot_id,
            "kernelVersion": info.kernel_version,
            "osImage": info.os_image,
            "containerRuntimeVersion": RUNTIME_VERSION,
            "kubeletVersion": KUBELET_VERSION,
            "kubeProxyVersion": KUBELET_VERSION,
            "operatingSystem": "linux",
            "architecture": arch(),
        },
    })
}

fn now() -> Timestamp {
    crate::generate::truncate(Timestamp::now())
}

/// Creates the Node (or takes over an existing one: labels merged, status replaced).
/// Returns the stored node.
pub async fn register(
    client: &Arc<dyn ApiClient>,
    node_name: &str,
    info: &HostInfo,
    observed: &NodeConditions,
) -> Result<Node, ApiError> {
    let nodes = ResourceKind::of::<Node>();
    let status = node_status(info, node_name, now(), observed);
    let object = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node_name, "labels": labels(node_name), "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
        "spec": {},
        "status": status,
    });
    match client.create(nodes, None, object).await {
        Ok(_) => {}
        Err(e) if e.is_already_exists() => {
            let patch = json!({"metadata": {"labels": labels(node_name)}});
            client.patch(nodes, None, node_name, None, PatchKind::Merge, patch).await?;
        }
        Err(e) => return Err(e),
    }
    // The create may drop status (as for most kinds); write it through the subresource.
    let stored =
        client.patch(nodes, None, node_name, Some("status"), PatchKind::Merge, json!({"status": status})).await?;
    serde_json::from_value(stored).map_err(|e| ApiError::internal(format!("decoding node: {e}")))
}

/// Creates or renews the node's Lease.
pub async fn renew_lease(client: &Arc<dyn ApiClient>, node: &Node) -> Result<(), ApiError> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let renew = MicroTime(Timestamp::now());
    match leases.get_opt(&name).await? {
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(Default::default);
            spec.renew_time = Some(renew);
            spec.holder_identity = Some(name.clone());
            spec.lease_duration_seconds = Some(LEASE_DURATION_SECONDS);
            leases.replace(&name, &lease).await?;
        }
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(LEASE_NAMESPACE.to_string()),
                    owner_references: node.metadata.uid.as_ref().map(|uid| {
                        vec![OwnerReference {
                            api_version: "v1".into(),
                            kind: "Node".into(),
                            name: name.clone(),
                            uid: uid.clone(),
                            ..Default::default()
                        }]
                    }),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(name.clone()),
                    lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
                    renew_time: Some(renew),
                    ..Default::default()
                }),
            };
            leases.create(&lease).await?;
        }
    }
    Ok(())
}

/// Renews the lease every 10 s and the node's conditions every 40 s, and at once when the
/// observed conditions change, until `shutdown`.
pub async fn heartbeat(
    client: Arc<dyn ApiClient>,
    node: Node,
    info: HostInfo,
    mut observed: tokio::sync::watch::Receiver<NodeConditions>,
    shutdown: CancellationToken,
) {
    let name = node.metadata.name.clone().unwrap_or_default();
    let nodes = ResourceKind::of::<Node>();
    let mut lease_tick = tokio::time::interval(LEASE_RENEW);
    let mut status_tick = tokio::time::interval(STATUS_REFRESH);
    status_tick.tick().await; // registration just wrote it
    let mut watching = true;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = lease_tick.tick() => {
                if let Err(e) = renew_lease(&client, &node).await {
                    tracing::warn!(node = %name, "renewing lease: {e}");
                }
            }
            changed = observed.changed(), if watching => match changed {
                Ok(()) => status_tick.reset_immediately(),
                // The eviction manager stopped: keep the last conditions.
                Err(_) => watching = false,
            },
            _ = status_tick.tick() => {
                let current = *observed.borrow_and_update();
                let status = node_status(&info, &name, now(), &current);
                let result = client.patch(nodes, None, &name, Some("status"), PatchKind::Merge, json!({"status": status})).await;
                if let Err(e) = result {
                    tracing::warn!(node = %name, "updating node status: {e}");
                    if e.is_not_found() {
                        // Deleted behind our back (kubectl delete node): register again.
                        if let Err(e) = register(&client, &name, &info, &current).await {
                            tracing::warn!(node = %name, "re-registering: {e}");
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_is_read_like_the_kubelet() {
        assert_eq!(
            pretty_name("NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n").as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
    }

    #[test]
    fn node_status_reports_capacity_conditions_and_node_info() {
        let info = HostInfo {
            cpus: 2,
            memory_ki: 24_567_808,
            ephemeral_storage_ki: 1000,
            kernel_version: "6.18.0".into(),
            os_image: "Debian GNU/Linux 12 (bookworm)".into(),
            internal_ip: "10.1.2.3".into(),
            hostname: "box".into(),
            machine_id: String::new(),
            boot_id: String::new(),
            system_uuid: String::new(),
        };
        let t = Timestamp::from_second(1_700_000_000).unwrap();
        let s = node_status(&info, "box", t, &NodeConditions::healthy(t));
        assert_eq!(s["capacity"]["cpu"], "2");
        assert_eq!(s["capacity"]["memory"], "24567808Ki");
        assert_eq!(s["allocatable"]["memory"], "24465408Ki");
        assert_eq!(s["capacity"]["pods"], "110");
        let ready = &s["conditions"][3];
        assert_eq!((ready["type"].as_str(), ready["status"].as_str()), (Some("Ready"), Some("True")));
        assert_eq!(ready["reason"], "KubeletReady");
        assert_eq!(ready["message"], "kubelet is posting ready status");
        assert_eq!(s["addresses"][0], json!({"type": "InternalIP", "address": "10.1.2.3"}));
        assert_eq!(s["nodeInfo"]["containerRuntimeVersion"], "skiff://0.1.0");
        assert_eq!(s["nodeInfo"]["kubeletVersion"], "v1.33.0+skiff");
        let node: Node = serde_json::from_value(json!({"metadata": {"name": "box"}, "status": s})).unwrap();
        assert_eq!(node.status.unwrap().conditions.unwrap().len(), 4);
    }

    #[test]
    fn internal_ip_is_an_ipv4_address() {
        assert!(internal_ip().parse::<std::net::Ipv4Addr>().is_ok());
    }
}
