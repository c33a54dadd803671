//! Skiff's scheduler: binds pending pods to a node that fits them.
//!
//! Three informers feed it: pods without a node (`spec.nodeName=`), pods with one (their requests
//! count against the node), and nodes. Each pending pod's key goes into a work queue; one attempt
//! ([`Scheduler::schedule_one`]) either POSTs a `Binding` and records `Scheduled`, or records
//! `FailedScheduling` and sets `PodScheduled=False/Unschedulable`. Unschedulable pods are tried
//! again whenever a node or a bound pod changes (resources may have been freed), and once a
//! minute in any case.
//!
//! A pod bound but not yet seen by the bound-pods informer is "assumed" on its node, so a burst
//! of pods (a ReplicaSet scaling up) does not overcommit the node in the gap.

pub mod fit;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::json;
use skiff_api::{
    ApiClient, ApiError, EventSource, Informer, InformerEvent, ListOptions, ObjectKey, ObjectReference, PatchKind,
    Recorder, ResourceKind, Store, WorkQueue,
};
use tokio_util::sync::CancellationToken;

pub use fit::Decision;

/// The `spec.schedulerName` this scheduler serves.
pub const SCHEDULER_NAME: &str = "default-scheduler";

/// How often unschedulable pods are tried again even without a change.
const UNSCHEDULABLE_RETRY: Duration = Duration::from_secs(60);

/// Runs the scheduler until `shutdown` is cancelled.
pub async fn run(client: Arc<dyn ApiClient>, shutdown: CancellationToken) {
    let (pending, mut pending_events, _h1) =
        Informer::<Pod>::new(client.clone(), None, ListOptions::fields("spec.nodeName=")).spawn();
    let (assigned, mut assigned_events, _h2) =
        Informer::<Pod>::new(client.clone(), None, ListOptions::fields("spec.nodeName!=")).spawn();
    let (nodes, mut node_events, _h3) = Informer::<Node>::new(client.clone(), None, ListOptions::default()).spawn();
    let scheduler = Arc::new(Scheduler::new(client, pending, assigned, nodes));
    let queue = scheduler.queue.clone();

    // Decisions are taken one at a time (under `deciding`); the bindings they lead to are
    // written by several workers at once, so a burst of pods shares the store's commits.
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let scheduler = scheduler.clone();
            tokio::spawn(async move {
                while let Some(key) = scheduler.queue.next().await {
                    scheduler.handle(&key).await;
                    scheduler.queue.done(&key);
                }
            })
        })
        .collect();

    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(event) = pending_events.recv() => match event {
                InformerEvent::Applied(pod) => queue.add(ObjectKey::of(pod.as_ref())),
                InformerEvent::Deleted(_) | InformerEvent::Synced => {}
            },
            Some(event) = assigned_events.recv() => match event {
                InformerEvent::Applied(pod) => {
                    scheduler.forget_assumed(&pod);
                    if !fit::holds_resources(&pod) {
                        scheduler.retry_all_pending();
                    }
                }
                InformerEvent::Deleted(pod) => {
                    scheduler.forget_assumed(&pod);
                    scheduler.retry_all_pending();
                }
                InformerEvent::Synced => scheduler.retry_all_pending(),
            },
            Some(_) = node_events.recv() => scheduler.retry_all_pending(),
        }
    }
    queue.shut_down();
    for worker in workers {
        let _ = worker.await;
    }
}

/// How many pods are bound at the same time.
const WORKERS: usize = 4;

/// The scheduler's state: the informers' stores, the pods assumed bound, the queue.
pub struct Scheduler {
    client: Arc<dyn ApiClient>,
    pending: Store<Pod>,
    assigned: Store<Pod>,
    nodes: Store<Node>,
    /// Pods bound (or being bound) by us and not yet seen in `assigned`, by UID.
    assumed: Mutex<HashMap<String, Arc<Pod>>>,
    /// Held from reading the stores to assuming the chosen node, so that two decisions never
    /// count the same free resources.
    deciding: tokio::sync::Mutex<()>,
    recorder: Arc<Recorder>,
    pub queue: WorkQueue<ObjectKey>,
}

fn pods_res() -> &'static ResourceKind {
    ResourceKind::of::<Pod>()
}

impl Scheduler {
    pub fn new(client: Arc<dyn ApiClient>, pending: Store<Pod>, assigned: Store<Pod>, nodes: Store<Node>) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
        let recorder = Arc::new(Recorder::new(
            client.clone(),
            EventSource {
                component: SCHEDULER_NAME.to_string(),
                host: None,
                reporting_instance: format!("{SCHEDULER_NAME}-{host}"),
            },
        ));
        Self {
            client,
            pending,
            assigned,
            nodes,
            assumed: Mutex::new(HashMap::new()),
            deciding: tokio::sync::Mutex::new(()),
            recorder,
            queue: WorkQueue::with_backoff(Duration::from_millis(100), Duration::from_secs(30)),
        }
    }

    fn forget_assumed(&self, pod: &Pod) {
        if let Some(uid) = &pod.metadata.uid {
            self.assumed.lock().unwrap_or_else(|e| e.into_inner()).remove(uid);
        }
    }

    fn retry_all_pending(&self) {
        for key in self.pending.keys() {
            self.queue.add(key);
        }
    }

    async fn handle(&self, key: &ObjectKey) {
        match self.schedule_one(key).await {
            Ok(Some(Decision::Unschedulable(_))) => {
                self.queue.forget(key);
                self.queue.add_after(key.clone(), UNSCHEDULABLE_RETRY);
            }
            Ok(_) => self.queue.forget(key),
            Err(e) => {
                let delay = self.queue.add_rate_limited(key.clone());
                tracing::warn!(pod = %key, "scheduling failed, retrying in {delay:?}: {e}");
            }
        }
    }

    /// One attempt to schedule the pod `key`. `None` when there was nothing to do (gone,
    /// already bound, another scheduler's, being deleted).
    pub async fn schedule_one(&self, key: &ObjectKey) -> Result<Option<Decision>, ApiError> {
        let deciding = self.deciding.lock().await;
        let Some(pod) = self.pending.get(key) else { return Ok(None) };
        let spec = pod.spec.as_ref();
        let scheduler_name = spec.and_then(|s| s.scheduler_name.as_deref()).unwrap_or(SCHEDULER_NAME);
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if scheduler_name != SCHEDULER_NAME
            || spec.and_then(|s| s.node_name.as_deref()).is_some_and(|n| !n.is_empty())
            || pod.metadata.deletion_timestamp.is_some()
            || self.assumed.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&uid)
        {
            return Ok(None);
        }
        let nodes = self.nodes.list();
        let node_refs: Vec<&Node> = nodes.iter().map(|n| n.as_ref()).collect();
        let mut bound = self.assigned.list();
        {
            let assumed = self.assumed.lock().unwrap_or_else(|e| e.into_inner());
            let seen: std::collections::HashSet<&str> =
                bound.iter().filter_map(|p| p.metadata.uid.as_deref()).collect();
            let extra: Vec<Arc<Pod>> =
                assumed.iter().filter(|(uid, _)| !seen.contains(uid.as_str())).map(|(_, p)| p.clone()).collect();
            bound.extend(extra);
        }
        let bound_refs: Vec<&Pod> = bound.iter().map(|p| p.as_ref()).collect();
        let decision = fit::schedule(&pod, &node_refs, &bound_refs);
        match &decision {
            Decision::Bind(node) => {
                self.assume(&pod, node);
                drop(deciding);
                if let Err(e) = self.bind(&pod, node).await {
                    self.forget_assumed(&pod);
                    return Err(e);
                }
            }
            Decision::Unschedulable(message) => {
                drop(deciding);
                self.unschedulable(&pod, message).await?
            }
        }
        Ok(Some(decision))
    }

    /// Counts `pod` on `node` from now on, before its binding is written.
    fn assume(&self, pod: &Pod, node: &str) {
        let mut assumed = pod.clone();
        if let Some(spec) = assumed.spec.as_mut() {
            spec.node_name = Some(node.to_string());
        }
        if let Some(uid) = &pod.metadata.uid {
            self.assumed.lock().unwrap_or_else(|e| e.into_inner()).insert(uid.clone(), Arc::new(assumed));
        }
    }

    async fn bind(&self, pod: &Pod, node: &str) -> Result<(), ApiError> {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let mut binding = json!({
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "namespace": namespace},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        });
        if let Some(uid) = &pod.metadata.uid {
            binding["metadata"]["uid"] = json!(uid);
        }
        match self.client.create_subresource(pods_res(), Some(namespace), name, "binding", binding).await {
            Ok(_) => {}
            // Deleted meanwhile, or bound by someone else: nothing left to do for this pod.
            Err(e) if e.is_not_found() || e.code == 409 => {
                tracing::debug!(pod = %format!("{namespace}/{name}"), "binding skipped: {e}");
                self.forget_assumed(pod);
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        // Events are written in the background, as Kubernetes' event broadcaster does: the next
        // binding does not wait for this one's event.
        let (recorder, object) = (self.recorder.clone(), ObjectReference::of(pod));
        let message = format!("Successfully assigned {namespace}/{name} to {node}");
        tokio::spawn(async move { recorder.normal(&object, "Scheduled", &message).await });
        Ok(())
    }

    async fn unschedulable(&self, pod: &Pod, message: &str) -> Result<(), ApiError> {
        self.recorder.warning(&ObjectReference::of(pod), "FailedScheduling", message).await;
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let conditions = pod.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
        let current = conditions.iter().find(|c| c.type_ == "PodScheduled");
        if current.is_some_and(|c| {
            c.status == "False" && c.reason.as_deref() == Some("Unschedulable") && c.message.as_deref() == Some(message)
        }) {
            return Ok(());
        }
        let now = jiff::Timestamp::now().round(jiff::Unit::Second).unwrap_or_else(|_| jiff::Timestamp::now());
        let transition = match current {
            Some(c) if c.status == "False" => c.last_transition_time.as_ref().map(|t| t.0).unwrap_or(now),
            _ => now,
        };
        let mut list: Vec<serde_json::Value> = conditions
            .iter()
            .filter(|c| c.type_ != "PodScheduled")
            .map(|c| serde_json::to_value(c).unwrap_or_default())
            .collect();
        list.push(json!({
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": message,
            "lastProbeTime": null,
            "lastTransitionTime": transition.to_string(),
        }));
        let patch = json!({"status": {"conditions": list}});
        match self.client.patch(pods_res(), Some(namespace), name, Some("status"), PatchKind::Merge, patch).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }
}
