//! The loop every controller runs: informer events become keys in a [`WorkQueue`], and workers
//! call `reconcile(key)` (keys are usually `skiff_api::ObjectKey`) (kube-rs' `Controller`, client-go's `processNextWorkItem`). The
//! reconciler never learns why it ran, so it must be idempotent.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use skiff_api::{ApiClient, ApiError, EventSource, InformerEvent, ObjectKey, Recorder, WorkQueue};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::pods::controller_of;

/// What a reconcile asks of the queue once it has succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing to do until a watched object changes.
    AwaitChange,
    /// Run again after this long even if nothing changes (deadlines, minReadySeconds).
    RequeueAfter(Duration),
}

#[async_trait::async_trait]
pub trait Reconciler: Send + Sync + 'static {
    /// Shown in logs.
    const NAME: &'static str;
    /// What the queue holds: usually an [`ObjectKey`].
    type Key: Clone + Eq + std::hash::Hash + std::fmt::Display + Send + Sync + 'static;

    async fn reconcile(&self, key: &Self::Key) -> Result<Action, ApiError>;
}

/// Runs `workers` reconcile loops over `queue` until `shutdown`. A failed reconcile is retried
/// with the queue's per-key back-off; a success resets it.
pub async fn run<R: Reconciler>(
    reconciler: Arc<R>,
    queue: WorkQueue<R::Key>,
    workers: usize,
    shutdown: CancellationToken,
) {
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (reconciler, queue) = (reconciler.clone(), queue.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(key) = queue.next().await {
                match reconciler.reconcile(&key).await {
                    Ok(Action::AwaitChange) => queue.forget(&key),
                    Ok(Action::RequeueAfter(delay)) => {
                        queue.forget(&key);
                        queue.add_after(key.clone(), delay);
                    }
                    // A conflict only means our cache was behind: retry soon, quietly.
                    Err(e) if e.is_conflict() => {
                        queue.add_rate_limited(key.clone());
                    }
                    Err(e) => {
                        let delay = queue.add_rate_limited(key.clone());
                        tracing::warn!(controller = R::NAME, %key, ?delay, "reconcile failed: {e}");
                    }
                }
                queue.done(&key);
            }
        }));
    }
    shutdown.cancelled().await;
    queue.shut_down();
    for task in tasks {
        let _ = task.await;
    }
}

/// Trigger: queues the key of every object an informer of the controller's own kind reports.
pub fn queue_objects<K>(queue: WorkQueue<ObjectKey>, mut events: UnboundedReceiver<InformerEvent<K>>) -> JoinHandle<()>
where
    K: k8s_openapi::Metadata<Ty = ObjectMeta> + Send + Sync + 'static,
{
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            if let InformerEvent::Applied(object) | InformerEvent::Deleted(object) = event {
                queue.add(ObjectKey::of(object.as_ref()));
            }
        }
    })
}

/// Trigger: queues the controlling owner of kind `owner_kind` of every dependent an informer
/// reports (a Job's pods wake the Job).
pub fn queue_owners<K>(
    queue: WorkQueue<ObjectKey>,
    mut events: UnboundedReceiver<InformerEvent<K>>,
    owner_kind: &'static str,
) -> JoinHandle<()>
where
    K: k8s_openapi::Metadata<Ty = ObjectMeta> + Send + Sync + 'static,
{
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            if let InformerEvent::Applied(object) | InformerEvent::Deleted(object) = event {
                let meta = object.metadata();
                if let Some(owner) = controller_of(meta).filter(|o| o.kind == owner_kind) {
                    queue.add(ObjectKey::new(meta.namespace.as_deref(), &owner.name));
                }
            }
        }
    })
}

/// The owner reference a controller puts on what it creates: `controller` and
/// `blockOwnerDeletion` set, as Kubernetes' controllers do.
pub fn controller_reference<K: k8s_openapi::Resource + k8s_openapi::Metadata<Ty = ObjectMeta>>(
    owner: &K,
) -> OwnerReference {
    let meta = owner.metadata();
    OwnerReference {
        api_version: K::API_VERSION.to_string(),
        kind: K::KIND.to_string(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The event recorder of a controller: events carry `source.component` = `component`, as
/// Kubernetes' controllers report (`deployment-controller`, `job-controller`…).
pub fn recorder(client: Arc<dyn ApiClient>, component: &str) -> Recorder {
    Recorder::new(client, EventSource { component: component.into(), host: None, reporting_instance: String::new() })
}
