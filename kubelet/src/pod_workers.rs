//! One worker task per pod UID (Kubernetes `pod_workers.go`). The informer hands each pod to
//! [`PodWorkers::update`], which puts it in the worker's mailbox, a `watch` channel: a worker
//! busy with a sync sees only the latest pod when it looks again, never a backlog.
//!
//! A worker's life is one enum, [`WorkerState`]:
//!
//! ```text
//!   Syncing ──(deletionTimestamp, or gone from the API)──▶ Terminating { grace }
//!      │                                                        │ stop containers (SIGTERM,
//!      └──(phase Succeeded/Failed)──▶ Terminating { 0 }         │ SIGKILL after grace), remove
//!                                                               ▼ them and the sandbox
//!                          Finished ◀──(pod deleted from the API)── Terminated
//! ```
//!
//! A deletion cancels an in-flight sync (an image pull, say) at once: the sync future is
//! dropped, and termination works from the runtime's own list of the pod's containers, so a
//! container created by the dropped sync is stopped too. A UID that has finished is never
//! started again, even if a late watch event names it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Kubelet;
use crate::sync::{PodWorker, WorkerEvent};

/// The latest word on a pod: its object, and whether it is gone from the API.
#[derive(Debug, Clone)]
pub struct PodUpdate {
    pub pod: Arc<Pod>,
    /// Deleted from the API (force-deleted, or by us after termination).
    pub removed: bool,
}

impl PodUpdate {
    pub fn terminating(&self) -> bool {
        self.removed || self.pod.metadata.deletion_timestamp.is_some()
    }

    /// The grace period of a deletion: the pod's `deletionGracePeriodSeconds`, else its
    /// `terminationGracePeriodSeconds`, else 30 s.
    pub fn grace(&self) -> Duration {
        let secs = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or(self.pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
            .unwrap_or(30);
        Duration::from_secs(secs.max(0) as u64)
    }
}

/// Where a pod worker is in the pod's life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerState {
    /// Running the pod: pulling, starting and restarting containers, reporting status.
    Syncing,
    /// Stopping every container with this grace period, then removing them and the sandbox.
    Terminating { grace: Duration },
    /// Nothing runs any more; waiting for (or performing) the deletion of the API object.
    Terminated,
    /// Done: the task ends and the UID is never started again.
    Finished,
}

struct WorkerHandle {
    mailbox: watch::Sender<PodUpdate>,
    task: JoinHandle<()>,
}

/// The registry of pod workers, by pod UID.
#[derive(Default)]
pub struct PodWorkers {
    workers: Mutex<HashMap<String, WorkerHandle>>,
    finished: Mutex<HashSet<String>>,
}

impl PodWorkers {
    /// Hands the latest pod to its worker, starting one if there is none.
    pub(crate) fn update(&self, kubelet: &Arc<Kubelet>, update: PodUpdate, shutdown: &CancellationToken) {
        let Some(uid) = update.pod.metadata.uid.clone() else { return };
        if self.finished.lock().unwrap_or_else(|e| e.into_inner()).contains(&uid) {
            return;
        }
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(handle) = workers.get(&uid) {
            handle.mailbox.send_replace(update);
            return;
        }
        let (mailbox, rx) = watch::channel(update);
        let (exits_tx, exits_rx) = mpsc::unbounded_channel();
        let worker = PodWorker::new(kubelet.clone(), uid.clone(), exits_tx);
        let task = tokio::spawn(run_worker(worker, rx, exits_rx, shutdown.child_token()));
        workers.insert(uid, WorkerHandle { mailbox, task });
    }

    pub(crate) fn finish(&self, uid: &str) {
        self.finished.lock().unwrap_or_else(|e| e.into_inner()).insert(uid.to_string());
        self.workers.lock().unwrap_or_else(|e| e.into_inner()).remove(uid);
    }

    /// The UIDs that have a live worker.
    pub fn uids(&self) -> Vec<String> {
        self.workers.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect()
    }

    /// Waits for every worker to stop (their shutdown tokens are children of the kubelet's).
    pub(crate) async fn stop_all(&self) {
        let tasks: Vec<JoinHandle<()>> =
            self.workers.lock().unwrap_or_else(|e| e.into_inner()).drain().map(|(_, h)| h.task).collect();
        for task in tasks {
            if tokio::time::timeout(Duration::from_secs(5), task).await.is_err() {
                tracing::warn!("a pod worker did not stop within 5s");
            }
        }
    }
}

/// How long a worker waits for news when nothing is scheduled (a periodic resync).
const RESYNC: Duration = Duration::from_secs(60);

async fn run_worker(
    mut w: PodWorker,
    mut rx: watch::Receiver<PodUpdate>,
    mut exits: mpsc::UnboundedReceiver<WorkerEvent>,
    shutdown: CancellationToken,
) {
    let first = rx.borrow_and_update().clone();
    let mut state = w.adopt(&first.pod).await;
    loop {
        let update = rx.borrow_and_update().clone();
        state = match state {
            WorkerState::Syncing if update.terminating() => WorkerState::Terminating { grace: update.grace() },
            WorkerState::Syncing if w.deadline_exceeded(&update.pod).await => {
                WorkerState::Terminating { grace: update.grace() }
            }
            WorkerState::Syncing => {
                let wake = tokio::select! {
                    wake = w.sync_pod(&update.pod) => wake,
                    _ = rx.wait_for(PodUpdate::terminating) => continue,
                    _ = shutdown.cancelled() => return,
                };
                let mut exited = false;
                while let Ok(exit) = exits.try_recv() {
                    w.handle_event(exit).await;
                    exited = true;
                }
                let phase = w.write_status(&update.pod).await;
                if matches!(phase.as_deref(), Some("Succeeded" | "Failed")) {
                    WorkerState::Terminating { grace: Duration::ZERO }
                } else {
                    if !exited {
                        let deadline = [wake, w.active_deadline(&update.pod)]
                            .into_iter()
                            .flatten()
                            .min()
                            .unwrap_or_else(|| Instant::now() + RESYNC);
                        tokio::select! {
                            changed = rx.changed() => if changed.is_err() { return },
                            Some(exit) = exits.recv() => w.handle_event(exit).await,
                            _ = tokio::time::sleep_until(deadline) => {}
                            _ = shutdown.cancelled() => return,
                        }
                    }
                    WorkerState::Syncing
                }
            }
            WorkerState::Terminating { grace } => {
                tokio::select! {
                    _ = w.sync_terminating(&update.pod, grace) => {}
                    _ = shutdown.cancelled() => return,
                }
                while let Ok(exit) = exits.try_recv() {
                    w.handle_event(exit).await;
                }
                if !update.removed {
                    w.write_status(&update.pod).await;
                }
                WorkerState::Terminated
            }
            WorkerState::Terminated if update.removed => WorkerState::Finished,
            WorkerState::Terminated if update.pod.metadata.deletion_timestamp.is_some() => {
                if w.delete_pod(&update.pod).await {
                    WorkerState::Finished
                } else {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.cancelled() => return,
                    }
                    WorkerState::Terminated
                }
            }
            WorkerState::Terminated => {
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { return },
                    _ = shutdown.cancelled() => return,
                }
                WorkerState::Terminated
            }
            WorkerState::Finished => {
                w.sync_terminated(&update.pod);
                break;
            }
        };
    }
    let uid = w.uid.clone();
    w.kubelet().workers.finish(&uid);
}
