//! The three lifecycle steps of a pod worker: `sync_pod` (pod.rs), `sync_terminating`
//! (terminating.rs) and `sync_terminated` plus the final delete (terminated.rs); this file holds
//! the worker's state and what they share: adoption after a restart, exits, status writes.

mod pod;
mod terminated;
mod terminating;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod};
use skiff_runtime::{ContainerState, ExitStatus};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::Kubelet;
use crate::backoff::Backoff;
use crate::generate::{self, Current, PodRuntimeState, Terminated};
use crate::pod_workers::WorkerState;

/// What wakes a pod worker besides a new pod: a container's exit, a probe result's flip.
#[derive(Debug)]
pub(crate) enum WorkerEvent {
    Exit(Exit),
    Probe(crate::prober::ProbeUpdate),
}

/// A container's exit, reported by its waiter task.
#[derive(Debug)]
pub(crate) struct Exit {
    pub name: String,
    pub id: String,
    pub result: Result<ExitStatus, String>,
}

/// The kubelet's bookkeeping for one container name, beyond what status shows.
#[derive(Debug, Default)]
pub(crate) struct ContainerTrack {
    /// The runtime id of the current container.
    pub id: Option<String>,
    pub log_path: Option<PathBuf>,
    pub exited_at: Option<Instant>,
    pub restart_backoff: Backoff,
    pub pull_backoff: Backoff,
    pub pull_failed_at: Option<Instant>,
    /// When a configuration or create error may be retried.
    pub retry_at: Option<Instant>,
    /// The image the current container was created from, to notice `kubectl set image`.
    pub image: Option<String>,
}

pub(crate) struct PodWorker {
    kubelet: Arc<Kubelet>,
    pub uid: String,
    rt: PodRuntimeState,
    tracks: HashMap<String, ContainerTrack>,
    exits: mpsc::UnboundedSender<WorkerEvent>,
    /// The probe tasks of each container, by container name.
    probes: HashMap<String, tokio_util::sync::CancellationToken>,
    /// The pod as last synced, for handling probe results between syncs.
    pod: Option<Pod>,
    /// The pod's volumes, once all are set up.
    volumes: Option<crate::volumes::PodVolumes>,
}

pub(crate) fn timestamp(t: SystemTime) -> Timestamp {
    generate::truncate(Timestamp::try_from(t).unwrap_or_else(|_| Timestamp::now()))
}

pub(crate) fn terminated_from_exit(status: &ExitStatus, id: &str) -> Terminated {
    Terminated {
        exit_code: status.code,
        signal: None,
        reason: Terminated::reason_for(status.code, status.oom_killed).to_string(),
        message: None,
        started_at: Some(timestamp(status.started_at)),
        finished_at: timestamp(status.finished_at),
        container_id: Some(format!("skiff://{id}")),
    }
}

fn terminated_from_status(t: &ContainerStateTerminated) -> Terminated {
    Terminated {
        exit_code: t.exit_code,
        signal: t.signal,
        reason: t.reason.clone().unwrap_or_else(|| Terminated::reason_for(t.exit_code, false).to_string()),
        message: t.message.clone(),
        started_at: t.started_at.as_ref().map(|t| t.0),
        finished_at: t.finished_at.as_ref().map(|t| t.0).unwrap_or_else(|| generate::truncate(Timestamp::now())),
        container_id: t.container_id.clone(),
    }
}

/// The spec of a container that runs beside the others, probed and restarted: an app container
/// or a sidecar (an init container with `restartPolicy: Always`).
pub(crate) fn long_running<'a>(pod: &'a Pod, name: &str) -> Option<&'a k8s_openapi::api::core::v1::Container> {
    let spec = pod.spec.as_ref()?;
    let sidecars = spec.init_containers.iter().flatten().filter(|c| generate::is_sidecar(c));
    spec.containers.iter().chain(sidecars).find(|c| c.name == name)
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

impl PodWorker {
    pub(crate) fn new(kubelet: Arc<Kubelet>, uid: String, exits: mpsc::UnboundedSender<WorkerEvent>) -> Self {
        let rt = PodRuntimeState { host_ip: kubelet.host_ip.clone(), ..Default::default() };
        Self { kubelet, uid, rt, tracks: HashMap::new(), exits, probes: HashMap::new(), pod: None, volumes: None }
    }

    pub(crate) async fn handle_event(&mut self, event: WorkerEvent) {
        match event {
            WorkerEvent::Exit(exit) => self.handle_exit(exit).await,
            WorkerEvent::Probe(update) => self.handle_probe(update).await,
        }
    }

    pub(crate) fn kubelet(&self) -> &Arc<Kubelet> {
        &self.kubelet
    }

    fn pod_names(pod: &Pod) -> (&str, &str) {
        (pod.metadata.namespace.as_deref().unwrap_or("default"), pod.metadata.name.as_deref().unwrap_or_default())
    }

    /// Takes over what the runtime already has for this pod (after a server restart) and what
    /// the pod's status says of earlier runs. A terminal pod goes straight to cleanup.
    pub(crate) async fn adopt(&mut self, pod: &Pod) -> WorkerState {
        let k = self.kubelet.clone();
        self.pod = Some(pod.clone());
        let status = pod.status.clone().unwrap_or_default();
        self.rt.start_time = status.start_time.as_ref().map(|t| t.0);
        // What the status recorded, so restart counts and last states carry on.
        let all_statuses =
            status.init_container_statuses.iter().flatten().chain(status.container_statuses.iter().flatten());
        for cs in all_statuses {
            let st = self.rt.containers.entry(cs.name.clone()).or_default();
            st.restart_count = cs.restart_count;
            st.image_id = (!cs.image_id.is_empty()).then(|| cs.image_id.clone());
            st.container_id = cs.container_id.clone();
            st.last_terminated = cs.last_state.as_ref().and_then(|s| s.terminated.as_ref()).map(terminated_from_status);
            let state = cs.state.as_ref();
            if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
                st.current = Current::Terminated(terminated_from_status(t));
            } else if cs.container_id.is_some() && state.and_then(|s| s.running.as_ref()).is_some() {
                // Running when the kubelet stopped; if the runtime no longer has it (below
                // overrides this), it was lost.
                st.current = Current::Terminated(Terminated {
                    exit_code: 137,
                    signal: None,
                    reason: "ContainerStatusUnknown".into(),
                    message: Some("The container could not be located when the pod was terminated".into()),
                    started_at: None,
                    finished_at: generate::truncate(Timestamp::now()),
                    container_id: cs.container_id.clone(),
                });
            }
        }
        self.rt.sandbox_ready = k.runtime.list_sandboxes().map(|s| s.contains(&self.uid)).unwrap_or(false);
        if self.rt.sandbox_ready {
            self.rt.pod_ip = sandbox_pod_ip(&k, pod, &self.uid, &self.rt.host_ip);
        }
        let spec_names: Vec<String> = pod
            .spec
            .iter()
            .flat_map(|s| s.init_containers.iter().flatten().chain(s.containers.iter()))
            .map(|c| c.name.clone())
            .collect();
        let mut found = match k.runtime.list_containers() {
            Ok(list) => list.into_iter().filter(|c| c.sandbox_id == self.uid).collect::<Vec<_>>(),
            Err(e) => {
                tracing::warn!(pod = %self.uid, "listing containers for adoption: {e}");
                Vec::new()
            }
        };
        // Running ones first, so a stale exited duplicate of a name is the one removed.
        found.sort_by_key(|c| !matches!(c.state, ContainerState::Running { .. }));
        let (ns, name) = Self::pod_names(pod);
        for info in found {
            let adoptable = spec_names.contains(&info.name)
                && !self.tracks.contains_key(&info.name)
                && !matches!(info.state, ContainerState::Created)
                && !is_terminal(pod);
            if !adoptable {
                self.discard_container(&info.id).await;
                continue;
            }
            let st = self.rt.containers.entry(info.name.clone()).or_default();
            st.container_id = Some(format!("skiff://{}", info.id));
            let log_path =
                crate::logs::container_log_path(&k.config.root, ns, name, &self.uid, &info.name, st.restart_count);
            let track = self.tracks.entry(info.name.clone()).or_default();
            track.id = Some(info.id.clone());
            track.log_path = Some(log_path.clone());
            track.image = status
                .init_container_statuses
                .iter()
                .flatten()
                .chain(status.container_statuses.iter().flatten())
                .find(|cs| cs.name == info.name)
                .map(|cs| cs.image.clone());
            match info.state {
                ContainerState::Running { started_at, .. } => {
                    st.current = Current::Running { started_at: timestamp(started_at) };
                    k.logs.started(&log_path);
                    let started = status
                        .init_container_statuses
                        .iter()
                        .flatten()
                        .chain(status.container_statuses.iter().flatten())
                        .find(|cs| cs.name == info.name)
                        .and_then(|cs| cs.started)
                        .unwrap_or(false);
                    self.spawn_waiter(&info.name, &info.id, log_path);
                    if let Some(c) = long_running(pod, &info.name) {
                        let c = c.clone();
                        self.start_probes(pod, &c, &info.id, started).await;
                    }
                }
                ContainerState::Exited(exit) => {
                    track.exited_at = Some(Instant::now());
                    let terminated = self.with_message(&info.name, terminated_from_exit(&exit, &info.id));
                    self.rt.containers.entry(info.name.clone()).or_default().current = Current::Terminated(terminated);
                }
                ContainerState::Created => unreachable!("filtered above"),
            }
            tracing::info!(pod = %format!("{ns}/{name}"), container = %info.name, "adopted container {}", info.id);
        }
        // Exited containers known only from status count as just exited, for the back-off.
        for (cname, st) in &self.rt.containers {
            if matches!(st.current, Current::Terminated(_)) {
                self.tracks.entry(cname.clone()).or_default().exited_at.get_or_insert_with(Instant::now);
            }
        }
        if is_terminal(pod) {
            WorkerState::Terminating { grace: std::time::Duration::ZERO }
        } else {
            WorkerState::Syncing
        }
    }

    /// Adds the termination message of a run that ended (see [`crate::termination`]), unless
    /// it already has a message of the kubelet's own.
    pub(crate) fn with_message(&self, name: &str, mut t: Terminated) -> Terminated {
        if t.message.is_some() {
            return t;
        }
        if let Some(log_path) = self.tracks.get(name).and_then(|t| t.log_path.as_deref()) {
            let spec = self.pod.as_ref().and_then(|p| crate::lifecycle::container_spec(p, name));
            t.message = crate::termination::read_message(spec, log_path, t.exit_code);
        }
        t
    }

    async fn discard_container(&self, id: &str) {
        let rt = &self.kubelet.runtime;
        if let Ok(skiff_runtime::ContainerInfo { state: ContainerState::Running { .. }, .. }) = rt.container(id) {
            if let Err(e) = rt.stop_container(id, std::time::Duration::ZERO).await {
                tracing::warn!(container = %id, "stopping: {e}");
            }
        }
        if let Err(e) = rt.remove_container(id).await {
            tracing::warn!(container = %id, "removing: {e}");
        }
    }

    /// Waits for the container's exit in a task of its own, marks its log file finished, and
    /// tells the worker.
    fn spawn_waiter(&self, name: &str, id: &str, log_path: PathBuf) {
        let (k, tx, name, id) = (self.kubelet.clone(), self.exits.clone(), name.to_string(), id.to_string());
        tokio::spawn(async move {
            let result = k.runtime.wait_container(&id).await.map_err(|e| e.to_string());
            k.logs.exited(&log_path);
            let _ = tx.send(WorkerEvent::Exit(Exit { name, id, result }));
        });
    }

    pub(crate) async fn handle_exit(&mut self, exit: Exit) {
        let Some(track) = self.tracks.get_mut(&exit.name) else { return };
        if track.id.as_deref() != Some(exit.id.as_str()) {
            return; // an older container of this name
        }
        track.exited_at = Some(Instant::now());
        if let Some(probes) = self.probes.remove(&exit.name) {
            probes.cancel();
        }
        let terminated = match exit.result {
            Ok(status) => terminated_from_exit(&status, &exit.id),
            Err(e) => match self.kubelet.runtime.container(&exit.id) {
                Ok(skiff_runtime::ContainerInfo { state: ContainerState::Exited(status), .. }) => {
                    terminated_from_exit(&status, &exit.id)
                }
                _ => Terminated {
                    exit_code: 137,
                    signal: None,
                    reason: "ContainerStatusUnknown".into(),
                    message: Some(format!("waiting for the container failed: {e}")),
                    started_at: None,
                    finished_at: generate::truncate(Timestamp::now()),
                    container_id: Some(format!("skiff://{}", exit.id)),
                },
            },
        };
        let terminated = self.with_message(&exit.name, terminated);
        let track = self.tracks.get_mut(&exit.name).expect("looked up above");
        let st = self.rt.containers.entry(exit.name).or_default();
        if let Current::Running { started_at } = st.current {
            let ran = terminated.finished_at.duration_since(started_at);
            track.restart_backoff.ran_for(std::time::Duration::from_secs(ran.as_secs().max(0) as u64));
        }
        st.current = Current::Terminated(terminated);
    }

    /// Starts the probes of a container that has just started (or was adopted running). While
    /// a startup probe runs, the others wait for it; `startup_done` skips it (adoption).
    pub(crate) async fn start_probes(
        &mut self,
        pod: &Pod,
        c: &k8s_openapi::api::core::v1::Container,
        id: &str,
        startup_done: bool,
    ) {
        use crate::prober::{self, ProbeKind};
        let k = self.kubelet.clone();
        let defined = [
            (ProbeKind::Startup, c.startup_probe.clone()),
            (ProbeKind::Readiness, c.readiness_probe.clone()),
            (ProbeKind::Liveness, c.liveness_probe.clone()),
        ];
        let mut runnable = Vec::new();
        for (kind, probe) in defined {
            let Some(probe) = probe else { continue };
            if kind == ProbeKind::Startup && startup_done {
                continue;
            }
            let why = if !prober::supported(&probe) {
                Some("the probe has no handler")
            } else if prober::needs_pod_ip(&probe) && self.rt.pod_ip.is_none() {
                Some("the pod has no IP to probe (no pod network)")
            } else {
                None
            };
            match why {
                Some(why) => {
                    let message =
                        format!("{} probe not run: {why}; the container counts as if it had none", kind.label());
                    k.recorder
                        .warning(&crate::events::container_ref(pod, &c.name), "ProbeNotSupported", &message)
                        .await;
                }
                None => runnable.push((kind, probe)),
            }
        }
        let has = |kind| runnable.iter().any(|(k, _)| *k == kind);
        let waiting_for_startup = has(ProbeKind::Startup);
        {
            let st = self.rt.containers.entry(c.name.clone()).or_default();
            st.startup = waiting_for_startup.then_some(false);
            st.readiness = has(ProbeKind::Readiness).then_some(false);
        }
        let cancel = self.probes.entry(c.name.clone()).or_default().clone();
        for (kind, probe) in runnable {
            if waiting_for_startup && kind != ProbeKind::Startup {
                continue;
            }
            let target = prober::ProbeTarget {
                container: c.name.clone(),
                id: id.to_string(),
                runtime: Some(k.runtime.clone()),
                ip: self.rt.pod_ip.clone().unwrap_or_default(),
                ports: c.ports.clone().unwrap_or_default(),
                pod: crate::events::pod_ref(pod),
            };
            let tx = self.exits.clone();
            let notify = move |u| {
                let _ = tx.send(WorkerEvent::Probe(u));
            };
            tokio::spawn(prober::run(kind, probe, target, k.recorder.clone(), notify, cancel.child_token()));
        }
    }

    /// A probe result flipped: readiness changes `ready`; a startup success starts the other
    /// probes; a liveness or startup failure kills the container, which then restarts (or not)
    /// by the restart policy, as any exit.
    async fn handle_probe(&mut self, update: crate::prober::ProbeUpdate) {
        use crate::prober::ProbeKind;
        let current = self.tracks.get(&update.container).and_then(|t| t.id.clone());
        if current.as_deref() != Some(update.id.as_str()) {
            return;
        }
        let Some(pod) = self.pod.clone() else { return };
        match (update.kind, update.success) {
            (ProbeKind::Readiness, ready) => {
                self.rt.containers.entry(update.container).or_default().readiness = Some(ready);
            }
            (ProbeKind::Startup, true) => {
                self.rt.containers.entry(update.container.clone()).or_default().startup = Some(true);
                if let Some(c) = long_running(&pod, &update.container) {
                    let c = c.clone();
                    let readiness = self.rt.containers.get(&c.name).and_then(|s| s.readiness);
                    self.start_probes(&pod, &c, &update.id, true).await;
                    // Keep what is known; start_probes resets readiness to "not yet".
                    if readiness == Some(true) {
                        self.rt.containers.entry(c.name.clone()).or_default().readiness = readiness;
                    }
                    self.rt.containers.entry(c.name).or_default().startup = Some(true);
                }
            }
            (kind, false) => {
                let k = self.kubelet.clone();
                let which = if kind == ProbeKind::Liveness { "liveness" } else { "startup" };
                let message = format!("Container {} failed {which} probe, will be restarted", update.container);
                if let Some(probes) = self.probes.remove(&update.container) {
                    probes.cancel();
                }
                let spec = crate::lifecycle::container_spec(&pod, &update.container);
                // The probe's own terminationGracePeriodSeconds, else the pod's.
                let probe = spec.and_then(|c| {
                    if kind == ProbeKind::Liveness { c.liveness_probe.as_ref() } else { c.startup_probe.as_ref() }
                });
                let grace = probe
                    .and_then(|p| p.termination_grace_period_seconds)
                    .map_or_else(|| pod::pod_grace(&pod), |g| g.max(0) as u64);
                let pod_ip = self.rt.pod_ip.clone().unwrap_or_default();
                let stopped = crate::lifecycle::kill_container(
                    &k,
                    &pod,
                    &update.container,
                    &update.id,
                    &pod_ip,
                    Some(message),
                    std::time::Duration::from_secs(grace),
                )
                .await;
                if let Err(e) = stopped {
                    tracing::warn!(container = %update.id, "stopping unhealthy container: {e}");
                }
                // Its waiter reports the exit, which decides the restart.
            }
            (ProbeKind::Liveness, true) => {}
        }
    }

    /// Stops every probe of the pod (termination).
    pub(crate) fn stop_probes(&mut self) {
        for (_, cancel) in self.probes.drain() {
            cancel.cancel();
        }
    }

    /// When `spec.activeDeadlineSeconds` runs out, counted from the pod's start time.
    pub(crate) fn active_deadline(&self, pod: &Pod) -> Option<Instant> {
        let secs = pod.spec.as_ref()?.active_deadline_seconds?;
        let start = self.rt.start_time?;
        let left = start.as_second().saturating_add(secs) - Timestamp::now().as_second();
        Some(Instant::now() + std::time::Duration::from_secs(left.max(0) as u64))
    }

    /// True (once, with the pod marked Failed and an event) when the active deadline has passed:
    /// the kubelet then stops the pod, as Kubernetes' `activeDeadlineHandler` does.
    pub(crate) async fn deadline_exceeded(&mut self, pod: &Pod) -> bool {
        if self.rt.failure.is_some() || self.active_deadline(pod).is_none_or(|at| at > Instant::now()) {
            return false;
        }
        let message = "Pod was active on the node longer than the specified deadline";
        self.rt.failure = Some(("DeadlineExceeded".into(), message.into()));
        self.kubelet.recorder.warning(&crate::events::pod_ref(pod), "DeadlineExceeded", message).await;
        true
    }

    /// Generates the status and writes it if it changed. Returns the phase.
    pub(crate) async fn write_status(&mut self, pod: &Pod) -> Option<String> {
        let status = generate::generate(pod, &self.rt, Timestamp::now());
        if self.rt.start_time.is_none() {
            self.rt.start_time = status.start_time.as_ref().map(|t| t.0);
        }
        if let Err(e) = self.kubelet.status.set(pod, &status).await {
            if !e.is_not_found() {
                tracing::warn!(pod = %self.uid, "writing pod status: {e}");
            }
        }
        status.phase
    }
}

/// `spec.hostNetwork`: the pod shares the node's network namespace.
pub(crate) fn host_network(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false)
}

/// `status.podIP`: a hostNetwork pod's is the node's address (`status.hostIP`), as Kubernetes
/// reports it; any other pod's is its sandbox's lease.
pub(crate) fn sandbox_pod_ip(k: &crate::Kubelet, pod: &Pod, uid: &str, host_ip: &str) -> Option<String> {
    if host_network(pod) {
        return (!host_ip.is_empty()).then(|| host_ip.to_string());
    }
    k.runtime.sandbox_ip(uid).map(|ip| ip.to_string())
}
