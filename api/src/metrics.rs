//! What the API server asks of the node for `metrics.k8s.io` (`kubectl top`): the usage the
//! kubelet last measured, as rates over a window. The kubelet implements [`ResourceMetrics`];
//! the HTTP layer joins it with the Pods and Nodes it serves and writes `PodMetrics` and
//! `NodeMetrics`, as metrics-server does.

use std::time::{Duration, SystemTime};

/// One container's usage over the window of its pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerUsage {
    pub name: String,
    /// CPU used per second of the window, in billionths of a core.
    pub cpu_nanocores: u64,
    /// The memory working set at the end of the window.
    pub memory_bytes: u64,
}

/// The usage of one pod's running containers. A pod is present only once every one of them
/// was measured twice (metrics-server leaves it out until then).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodUsage {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// When the last measurement was taken: the end of the window.
    pub timestamp: SystemTime,
    pub window: Duration,
    pub containers: Vec<ContainerUsage>,
}

/// A node's usage over a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeUsage {
    pub name: String,
    pub timestamp: SystemTime,
    pub window: Duration,
    pub cpu_nanocores: u64,
    pub memory_bytes: u64,
}

pub trait ResourceMetrics: Send + Sync {
    /// Every pod of the node that has usage to report.
    fn pods(&self) -> Vec<PodUsage>;

    /// The node's own usage, once it was measured twice.
    fn node(&self) -> Option<NodeUsage>;
}
