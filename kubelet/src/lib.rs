//! Skiff's kubelet: registers the Node and keeps its Lease, runs the pods bound to it through
//! the runtime, reports their status and events, and serves their logs.
//!
//! ```text
//!  informer (pods, spec.nodeName=<node>) ──▶ PodWorkers: one task per pod UID, latest pod wins
//!                                              │ sync_pod → sync_terminating → sync_terminated
//!                                              ▼
//!                                 runtime (sandbox, pull, create/start/wait/stop)
//!                                              │ exits, log files
//!  StatusManager ◀── generate(pod, runtime state) (pure)      logs.rs ◀── pods/log (PodStreams)
//! ```
//!
//! On start the kubelet adopts what the runtime already runs for pods that still exist here,
//! and removes everything else, so a restarted server neither loses nor leaks containers.
//!
//! Probes: exec in the container, httpGet, tcpSocket and gRPC to the pod IP ([`prober`]).
//! Lifecycle hooks: [`lifecycle`]; termination messages: [`termination`]; log rotation:
//! [`logs::rotation`]. Volumes: see [`volumes`].
//! `status.podIP` is the runtime's sandbox address when it runs a pod network. Restarts back
//! off as Kubernetes' do (10 s doubling to 5 min, reset after 10 min of clean running).
//! Node pressure conditions and taints, and evictions for local storage limits: [`eviction`].
//! Container and node usage for `kubectl top` (the API server's `metrics.k8s.io`): [`metrics`].

pub mod backoff;
pub mod env;
pub mod events;
pub mod eviction;
pub mod exec;
pub mod generate;
pub mod lifecycle;
pub mod logs;
pub mod metrics;
pub mod node;
mod pod_workers;
pub mod portforward;
pub mod prober;
pub mod security;
pub mod service;
pub mod status;
mod sync;
pub mod termination;
pub mod volumes;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use skiff_api::{
    ApiClient, ApiError, ByteStream, Informer, InformerEvent, ListOptions, LogOptions, PodStreams, Recorder,
};
use skiff_runtime::{ContainerState, Runtime};
use tokio_util::sync::CancellationToken;

pub use pod_workers::{PodUpdate, PodWorkers, WorkerState};

/// Where the kubelet keeps its files and what it calls its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletConfig {
    pub node_name: String,
    /// `<data-dir>/kubelet`: pod directories and container logs.
    pub root: PathBuf,
}

pub struct Kubelet {
    config: KubeletConfig,
    client: Arc<dyn ApiClient>,
    runtime: Arc<Runtime>,
    recorder: Arc<Recorder>,
    status: status::StatusManager,
    workers: PodWorkers,
    logs: Arc<logs::LogWatchers>,
    log_rotation: std::sync::OnceLock<logs::rotation::LogRotation>,
    host_ip: String,
    // service plane wiring: the cluster DNS pods' resolv.conf points at (ClusterFirst).
    cluster_dns: std::sync::OnceLock<service::ServiceConfig>,
    volumes: Arc<volumes::VolumeManager>,
    /// Resource usage for `kubectl top`, and how often it is measured.
    metrics: Arc<metrics::MetricsSampler>,
    metrics_resolution: std::sync::OnceLock<Duration>,
}

impl Kubelet {
    pub fn new(config: KubeletConfig, client: Arc<dyn ApiClient>, runtime: Arc<Runtime>) -> Arc<Kubelet> {
        Arc::new(Kubelet {
            recorder: Arc::new(events::recorder(client.clone(), &config.node_name)),
            status: status::StatusManager::new(client.clone()),
            workers: PodWorkers::default(),
            logs: Arc::default(),
            log_rotation: std::sync::OnceLock::new(),
            host_ip: node::internal_ip(),
            cluster_dns: std::sync::OnceLock::new(),
            volumes: Arc::new(volumes::VolumeManager::new(config.root.clone(), client.clone())),
            metrics: Arc::new(metrics::MetricsSampler::new(&config.node_name)),
            metrics_resolution: std::sync::OnceLock::new(),
            config,
            client,
            runtime,
        })
    }

    pub fn config(&self) -> &KubeletConfig {
        &self.config
    }

    /// `<data-dir>/storage`, where the `local-path` StorageClass puts claims' directories: the
    /// sibling of the kubelet's root, as `skiff server` lays out its data dir.
    pub fn storage_dir(&self) -> PathBuf {
        self.config.root.parent().unwrap_or(&self.config.root).join("storage")
    }

    /// Points ClusterFirst pods at the cluster DNS (set once, before `run`); without it pods
    /// get the node's resolv.conf, as Kubernetes' kubelet without `clusterDNS`.
    pub fn set_cluster_dns(&self, config: service::ServiceConfig) {
        let _ = self.cluster_dns.set(config);
    }

    /// Sets `containerLogMaxSize`/`containerLogMaxFiles` (set once, before `run`); without it
    /// Kubernetes' defaults, 10Mi and 5.
    pub fn set_log_rotation(&self, policy: logs::rotation::LogRotation) {
        let _ = self.log_rotation.set(policy);
    }

    /// Sets how often resource usage is measured (set once, before `run`); without it
    /// [`metrics::DEFAULT_RESOLUTION`].
    pub fn set_metrics_resolution(&self, resolution: Duration) {
        let _ = self.metrics_resolution.set(resolution);
    }

    /// Registers the node, then runs pods until `shutdown`. Containers keep running after
    /// shutdown; the next start adopts them.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let since = generate::truncate(jiff::Timestamp::now());
        if let Err(e) = std::fs::create_dir_all(self.config.root.join("pods")) {
            tracing::error!("creating {}: {e}", self.config.root.join("pods").display());
        }
        let info = node::HostInfo::read(&self.config.root);
        let observed = node::NodeConditions::healthy(since);
        let (conditions_tx, conditions_rx) = tokio::sync::watch::channel(observed);
        let node = loop {
            match node::register(&self.client, &self.config.node_name, &info, &observed).await {
                Ok(node) => break node,
                Err(e) => {
                    tracing::warn!(node = %self.config.node_name, "registering node: {e}");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        let node_ref = skiff_api::ObjectReference::of(&node);
        self.recorder.normal(&node_ref, "Starting", "Starting kubelet.").await;
        let heartbeat =
            tokio::spawn(node::heartbeat(self.client.clone(), node, info, conditions_rx, shutdown.child_token()));
        self.recorder
            .normal(&node_ref, "NodeReady", &format!("Node {} status is now: NodeReady", self.config.node_name))
            .await;

        if let Err(e) = volumes::pvc::ensure_storage_class(&self.client, &self.storage_dir()).await {
            tracing::warn!("creating the default StorageClass {}: {e}", volumes::pvc::CLASS);
        }
        let refresher = tokio::spawn(self.volumes.clone().run(shutdown.child_token()));
        let policy = self.log_rotation.get().copied().unwrap_or_default();
        let rotator = tokio::spawn(logs::rotation::run(self.logs.clone(), policy, shutdown.child_token()));

        let selector = format!("spec.nodeName={}", self.config.node_name);
        let (store, mut events, _informer) =
            Informer::<Pod>::new(self.client.clone(), None, ListOptions::fields(selector)).spawn();
        let evictions = eviction::EvictionManager::new(eviction::default_thresholds(), conditions_tx);
        let evictions = tokio::spawn(evictions.run(self.clone(), store.clone(), node_ref, shutdown.child_token()));
        let resolution = self.metrics_resolution.get().copied().unwrap_or(metrics::DEFAULT_RESOLUTION);
        let sampler = self.metrics.clone().run(self.runtime.clone(), store.clone(), resolution, shutdown.child_token());
        let sampler = tokio::spawn(sampler);
        let mut cleaned = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                event = events.recv() => match event {
                    Some(InformerEvent::Applied(pod)) => self.workers.update(&self, PodUpdate { pod, removed: false }, &shutdown),
                    Some(InformerEvent::Deleted(pod)) => self.workers.update(&self, PodUpdate { pod, removed: true }, &shutdown),
                    Some(InformerEvent::Synced) if !cleaned => {
                        cleaned = true;
                        let known: HashSet<String> = store.list().iter().filter_map(|p| p.metadata.uid.clone()).collect();
                        self.remove_orphans(&known).await;
                    }
                    Some(InformerEvent::Synced) => {}
                    None => break,
                },
            }
        }
        self.workers.stop_all().await;
        let _ = heartbeat.await;
        let _ = evictions.await;
        let _ = refresher.await;
        let _ = sampler.await;
        rotator.abort();
    }

    /// Removes containers and sandboxes of pods that no longer exist here (left by a server
    /// that stopped while they were deleted), and their log directories.
    async fn remove_orphans(&self, known: &HashSet<String>) {
        let known: HashSet<String> = known.iter().cloned().chain(self.workers.uids()).collect();
        match self.runtime.list_containers() {
            Ok(containers) => {
                for c in containers.into_iter().filter(|c| !known.contains(&c.sandbox_id)) {
                    tracing::info!(container = %c.id, sandbox = %c.sandbox_id, "removing orphaned container");
                    if matches!(c.state, ContainerState::Running { .. }) {
                        if let Err(e) = self.runtime.stop_container(&c.id, Duration::ZERO).await {
                            tracing::warn!(container = %c.id, "stopping orphan: {e}");
                        }
                    }
                    if let Err(e) = self.runtime.remove_container(&c.id).await {
                        tracing::warn!(container = %c.id, "removing orphan: {e}");
                    }
                }
            }
            Err(e) => tracing::warn!("listing containers: {e}"),
        }
        match self.runtime.list_sandboxes() {
            Ok(sandboxes) => {
                for id in sandboxes.into_iter().filter(|id| !known.contains(id)) {
                    tracing::info!(sandbox = %id, "removing orphaned sandbox");
                    if let Err(e) = self.runtime.remove_sandbox(&id).await {
                        tracing::warn!(sandbox = %id, "removing orphaned sandbox: {e}");
                    }
                }
            }
            Err(e) => tracing::warn!("listing sandboxes: {e}"),
        }
        let pods_dir = self.config.root.join("pods");
        if let Ok(entries) = std::fs::read_dir(&pods_dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                // `<ns>_<name>_<uid>`: the uid is the last part (namespaces and names have no `_`).
                let uid = name.rsplit('_').next().unwrap_or_default();
                if !known.contains(uid) {
                    // Memory-backed volumes are mounted under it: unmounted first.
                    if let Err(e) = volumes::mount::remove_dir(&entry.path()) {
                        tracing::warn!("removing {}: {e}", entry.path().display());
                    }
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl PodStreams for Kubelet {
    async fn logs(&self, namespace: &str, name: &str, uid: &str, opts: &LogOptions) -> Result<ByteStream, ApiError> {
        let dir = logs::pod_log_dir(&self.config.root, namespace, name, uid).join(&opts.container);
        let path = logs::select_log_file(&dir, name, opts)?;
        let running = if opts.previous { None } else { self.logs.subscribe(&path) };
        logs::stream_log(path, opts, running).await
    }

    async fn exec(
        &self,
        _namespace: &str,
        _name: &str,
        uid: &str,
        opts: &skiff_api::ExecOptions,
        io: skiff_api::ExecIo,
    ) -> Result<i32, ApiError> {
        exec::exec(&self.runtime, uid, opts, io).await
    }

    async fn port_forward(
        &self,
        _namespace: &str,
        _name: &str,
        uid: &str,
        port: u16,
    ) -> Result<Box<dyn skiff_api::PortConnection>, ApiError> {
        Ok(Box::new(portforward::connect(&self.runtime, uid, port).await?))
    }

    async fn attach(
        &self,
        _namespace: &str,
        _name: &str,
        uid: &str,
        opts: &skiff_api::ExecOptions,
        io: skiff_api::ExecIo,
    ) -> Result<(), ApiError> {
        exec::attach(&self.runtime, uid, opts, io).await
    }

    fn resource_metrics(&self) -> Option<&dyn skiff_api::ResourceMetrics> {
        Some(self.metrics.as_ref())
    }
}
