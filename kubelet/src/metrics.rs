//! Resource metrics: what the kubelet's `/metrics/resource` gives metrics-server, kept in
//! process for `kubectl top`. Every `resolution` (10 s by default, as the kubelet's cAdvisor
//! housekeeping) the sampler reads the cumulative CPU time and the memory working set of every
//! running container's cgroup and of the node, and keeps the last two points of each; usage is
//! the CPU rate between them and the memory of the last one (metrics-server's storage).
//!
//! ```text
//!  tick ──▶ observe (runtime: container cgroups, root cgroup; pods: uid → namespace/name)
//!             │ each read stamped with the time it was taken
//!             ▼
//!          record: per container id and for the node, (prev, last); a container not seen
//!                  this round is dropped, a restarted one is a new id and starts over
//!             ▼
//!  ResourceMetrics::pods / node ◀── the API server's metrics.k8s.io handlers
//! ```
//!
//! A pod is reported only once every running container of it has two points, as metrics-server
//! leaves out a pod until all its containers have a rate.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Pod;
use skiff_api::{ContainerUsage, NodeUsage, PodUsage, ResourceMetrics, Store};
use skiff_runtime::{ContainerState, Runtime, Usage};
use tokio_util::sync::CancellationToken;

/// How often usage is measured when nothing else is set.
pub const DEFAULT_RESOLUTION: Duration = Duration::from_secs(10);

/// One measurement of a cumulative CPU counter and the memory working set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Point {
    at: SystemTime,
    cpu_ns: u64,
    memory_bytes: u64,
}

/// The last two points of one container or of the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Series {
    prev: Option<Point>,
    last: Point,
}

/// A rate over a window, as metrics-server computes it from two cumulative points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rate {
    at: SystemTime,
    window: Duration,
    cpu_nanocores: u64,
    memory_bytes: u64,
}

impl Series {
    fn start(point: Point) -> Self {
        Series { prev: None, last: point }
    }

    /// A counter that went backwards (or a clock that did) cannot give a rate: start over.
    fn push(&mut self, point: Point) {
        let monotonic = point.cpu_ns >= self.last.cpu_ns && point.at > self.last.at;
        self.prev = monotonic.then_some(self.last);
        self.last = point;
    }

    fn rate(&self) -> Option<Rate> {
        let prev = self.prev?;
        let window = self.last.at.duration_since(prev.at).ok().filter(|w| !w.is_zero())?;
        let used = u128::from(self.last.cpu_ns - prev.cpu_ns);
        let cpu_nanocores = u64::try_from(used * 1_000_000_000 / window.as_nanos()).unwrap_or(u64::MAX);
        Some(Rate { at: self.last.at, window, cpu_nanocores, memory_bytes: self.last.memory_bytes })
    }
}

/// Which pod a sandbox belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

/// A running container as one round found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerObservation {
    pub id: String,
    /// The pod UID.
    pub sandbox_id: String,
    pub name: String,
    pub usage: Usage,
    /// When it was read: each read is stamped with its own time, so that a slow round (a loaded
    /// node, many containers) does not stretch or shrink one container's window.
    pub at: SystemTime,
}

/// One round of measurements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// When the node's usage was read.
    pub at: SystemTime,
    pub node: Option<Usage>,
    pub containers: Vec<ContainerObservation>,
    /// The pods of this node by UID, for the names of the containers' pods.
    pub pods: HashMap<String, PodRef>,
}

struct ContainerSeries {
    sandbox_id: String,
    name: String,
    series: Series,
}

#[derive(Default)]
struct State {
    node: Option<Series>,
    /// By container id.
    containers: HashMap<String, ContainerSeries>,
    pods: HashMap<String, PodRef>,
}

/// The kubelet's measurements of the last two rounds; the API server reads them through
/// [`ResourceMetrics`].
pub struct MetricsSampler {
    node_name: String,
    state: Mutex<State>,
}

impl MetricsSampler {
    pub fn new(node_name: &str) -> Self {
        MetricsSampler { node_name: node_name.to_string(), state: Mutex::default() }
    }

    /// Measures every `resolution` until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        runtime: Arc<Runtime>,
        pods: Store<Pod>,
        resolution: Duration,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(resolution);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let refs = pod_refs(&pods.list());
            let runtime = runtime.clone();
            // Reading a few files per container: blocking, but short.
            match tokio::task::spawn_blocking(move || observe(&runtime, refs)).await {
                Ok(observation) => self.record(observation),
                Err(e) => tracing::warn!("measuring resource usage: {e}"),
            }
        }
    }

    /// Takes one round's measurements into the series.
    pub fn record(&self, observation: Observation) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let point =
            |u: &Usage, at: SystemTime| Point { at, cpu_ns: u.cpu_ns, memory_bytes: u.memory_working_set_bytes };
        state.node = match (state.node.take(), &observation.node) {
            (Some(mut series), Some(usage)) => {
                series.push(point(usage, observation.at));
                Some(series)
            }
            (None, Some(usage)) => Some(Series::start(point(usage, observation.at))),
            (_, None) => None,
        };
        let mut previous = std::mem::take(&mut state.containers);
        for c in &observation.containers {
            let series = match previous.remove(&c.id) {
                Some(mut known) => {
                    known.series.push(point(&c.usage, c.at));
                    known.series
                }
                None => Series::start(point(&c.usage, c.at)),
            };
            state.containers.insert(
                c.id.clone(),
                ContainerSeries { sandbox_id: c.sandbox_id.clone(), name: c.name.clone(), series },
            );
        }
        state.pods = observation.pods;
    }
}

impl ResourceMetrics for MetricsSampler {
    fn pods(&self) -> Vec<PodUsage> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut by_pod: BTreeMap<&str, Vec<&ContainerSeries>> = BTreeMap::new();
        for c in state.containers.values() {
            by_pod.entry(c.sandbox_id.as_str()).or_default().push(c);
        }
        let mut out = Vec::new();
        for (uid, containers) in by_pod {
            let Some(pod) = state.pods.get(uid) else { continue };
            let rates: Option<Vec<(&str, Rate)>> =
                containers.iter().map(|c| c.series.rate().map(|r| (c.name.as_str(), r))).collect();
            let Some(mut rates) = rates else { continue };
            rates.sort_by(|a, b| a.0.cmp(b.0));
            // The pod's window is that of its earliest measured container, as metrics-server's.
            let Some(earliest) = rates.iter().map(|(_, r)| *r).min_by_key(|r| r.at) else { continue };
            out.push(PodUsage {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                uid: uid.to_string(),
                timestamp: earliest.at,
                window: earliest.window,
                containers: rates
                    .into_iter()
                    .map(|(name, r)| ContainerUsage {
                        name: name.to_string(),
                        cpu_nanocores: r.cpu_nanocores,
                        memory_bytes: r.memory_bytes,
                    })
                    .collect(),
            });
        }
        out
    }

    fn node(&self) -> Option<NodeUsage> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let rate = state.node?.rate()?;
        Some(NodeUsage {
            name: self.node_name.clone(),
            timestamp: rate.at,
            window: rate.window,
            cpu_nanocores: rate.cpu_nanocores,
            memory_bytes: rate.memory_bytes,
        })
    }
}

fn pod_refs(pods: &[Arc<Pod>]) -> HashMap<String, PodRef> {
    pods.iter()
        .filter_map(|p| {
            let m = &p.metadata;
            Some((m.uid.clone()?, PodRef { namespace: m.namespace.clone().unwrap_or_default(), name: m.name.clone()? }))
        })
        .collect()
}

/// One round: the node, then every running container of a known pod. A container whose cgroup
/// cannot be read (it is exiting) is left out of this round.
fn observe(runtime: &Runtime, pods: HashMap<String, PodRef>) -> Observation {
    let node = runtime.node_usage().inspect_err(|e| tracing::debug!("reading the node's usage: {e}")).ok();
    let at = SystemTime::now();
    let mut containers = Vec::new();
    match runtime.list_containers() {
        Ok(list) => {
            for c in list {
                if !matches!(c.state, ContainerState::Running { .. }) || !pods.contains_key(&c.sandbox_id) {
                    continue;
                }
                match runtime.container_usage(&c.sandbox_id, &c.id) {
                    Ok(usage) => containers.push(ContainerObservation {
                        id: c.id,
                        sandbox_id: c.sandbox_id,
                        name: c.name,
                        usage,
                        at: SystemTime::now(),
                    }),
                    Err(e) => tracing::debug!(container = %c.id, "reading usage: {e}"),
                }
            }
        }
        Err(e) => tracing::warn!("listing containers for resource metrics: {e}"),
    }
    Observation { at, node, containers, pods }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(cpu_ns: u64, memory: u64) -> Usage {
        Usage { cpu_ns, memory_working_set_bytes: memory }
    }

    fn container(id: &str, pod: &str, name: &str, cpu_ns: u64, memory: u64) -> ContainerObservation {
        ContainerObservation {
            id: id.into(),
            sandbox_id: pod.into(),
            name: name.into(),
            usage: usage(cpu_ns, memory),
            at: SystemTime::UNIX_EPOCH,
        }
    }

    /// A round read at `secs`: the node and every container at that same instant.
    fn round(secs: u64, node: Option<Usage>, mut containers: Vec<ContainerObservation>) -> Observation {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        for c in &mut containers {
            c.at = at;
        }
        let pods = [("uid-a", "web"), ("uid-b", "db")]
            .into_iter()
            .map(|(uid, name)| (uid.to_string(), PodRef { namespace: "default".into(), name: name.into() }))
            .collect();
        Observation { at, node, containers, pods }
    }

    #[test]
    fn usage_appears_after_the_second_round_as_a_rate_over_the_window() {
        let s = MetricsSampler::new("node1");
        s.record(round(100, Some(usage(1_000_000_000, 500)), vec![container("c1", "uid-a", "app", 0, 10)]));
        assert!(s.pods().is_empty(), "one point gives no rate");
        assert!(s.node().is_none());

        // 5 s of CPU time over a 10 s window: half a core.
        s.record(round(110, Some(usage(6_000_000_000, 700)), vec![container("c1", "uid-a", "app", 2_500_000_000, 20)]));
        let node = s.node().unwrap();
        assert_eq!((node.name.as_str(), node.cpu_nanocores, node.memory_bytes), ("node1", 500_000_000, 700));
        assert_eq!(node.window, Duration::from_secs(10));
        let pods = s.pods();
        assert_eq!(pods.len(), 1);
        assert_eq!(
            (pods[0].namespace.as_str(), pods[0].name.as_str(), pods[0].uid.as_str()),
            ("default", "web", "uid-a")
        );
        assert_eq!(pods[0].timestamp, SystemTime::UNIX_EPOCH + Duration::from_secs(110));
        assert_eq!(
            pods[0].containers,
            [ContainerUsage { name: "app".into(), cpu_nanocores: 250_000_000, memory_bytes: 20 }]
        );
    }

    #[test]
    fn a_pod_waits_until_every_running_container_has_two_points() {
        let s = MetricsSampler::new("n");
        s.record(round(0, None, vec![container("c1", "uid-a", "app", 0, 1)]));
        s.record(round(10, None, vec![container("c1", "uid-a", "app", 10, 1), container("c2", "uid-a", "side", 0, 1)]));
        assert!(s.pods().is_empty(), "the sidecar has one point only");
        s.record(round(20, None, vec![container("c1", "uid-a", "app", 20, 1), container("c2", "uid-a", "side", 5, 1)]));
        let names: Vec<_> = s.pods()[0].containers.iter().map(|c| c.name.clone()).collect();
        assert_eq!(names, ["app", "side"]);
    }

    #[test]
    fn each_container_is_rated_over_its_own_window_and_the_pod_stamped_with_the_earliest() {
        let s = MetricsSampler::new("n");
        let at = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        let mut first =
            round(0, None, vec![container("c1", "uid-a", "app", 0, 1), container("c2", "uid-a", "side", 0, 1)]);
        first.containers[1].at = at(500);
        s.record(first);
        // The second read of `side` came 2.5 s late; its 2 s of CPU were over 12 s, not 10.
        let mut second = round(
            10,
            None,
            vec![container("c1", "uid-a", "app", 1_000_000_000, 1), container("c2", "uid-a", "side", 2_000_000_000, 1)],
        );
        second.containers[1].at = at(12_500);
        s.record(second);
        let pod = &s.pods()[0];
        let cpu: Vec<u64> = pod.containers.iter().map(|c| c.cpu_nanocores).collect();
        assert_eq!(cpu, [100_000_000, 166_666_666]);
        assert_eq!((pod.timestamp, pod.window), (at(10_000), Duration::from_secs(10)));
    }

    #[test]
    fn a_restarted_container_or_a_vanished_one_starts_over() {
        let s = MetricsSampler::new("n");
        s.record(round(0, None, vec![container("c1", "uid-a", "app", 0, 1), container("d1", "uid-b", "db", 0, 1)]));
        s.record(round(10, None, vec![container("c1", "uid-a", "app", 100, 1), container("d1", "uid-b", "db", 5, 1)]));
        assert_eq!(s.pods().len(), 2);
        // web's container restarted (a new id); db's was not running this round.
        s.record(round(20, None, vec![container("c2", "uid-a", "app", 3, 1)]));
        assert!(s.pods().is_empty());
        // A counter that went backwards gives no rate either.
        s.record(round(30, None, vec![container("c2", "uid-a", "app", 1, 1)]));
        assert!(s.pods().is_empty());
        s.record(round(40, None, vec![container("c2", "uid-a", "app", 1_000_000_001, 1)]));
        assert_eq!(s.pods()[0].containers[0].cpu_nanocores, 100_000_000);
    }

    #[test]
    fn containers_of_pods_no_longer_known_are_not_reported() {
        let s = MetricsSampler::new("n");
        let mut first = round(0, None, vec![container("x1", "uid-gone", "app", 0, 1)]);
        first.pods.insert("uid-gone".into(), PodRef { namespace: "ns".into(), name: "gone".into() });
        s.record(first);
        s.record(round(10, None, vec![container("x1", "uid-gone", "app", 10, 1)]));
        assert!(s.pods().is_empty(), "the pod is no longer in the store");
    }
}
