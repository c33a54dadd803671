//! The scheduler against the real API server core on a temp redb.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Node, Pod};
use serde_json::json;
use skiff_api::{Api, ApiClient, ListOptions, PatchKind};
use tokio_util::sync::CancellationToken;

struct Cluster {
    client: Arc<dyn ApiClient>,
    _dir: tempfile::TempDir,
    stop: CancellationToken,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn cluster() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let registry = skiff_apiserver::Registry::open(&dir.path().join("state.redb")).unwrap();
    registry.bootstrap("10.43.0.1").await.unwrap();
    let client: Arc<dyn ApiClient> = registry;
    let stop = CancellationToken::new();
    tokio::spawn(skiff_scheduler::run(client.clone(), stop.clone()));
    Cluster { client, _dir: dir, stop }
}

async fn add_node(client: &Arc<dyn ApiClient>, name: &str, memory: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node =
        serde_json::from_value(json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}}))
            .unwrap();
    nodes.create(&node).await.unwrap();
    set_node_memory(client, name, memory).await;
}

async fn set_node_memory(client: &Arc<dyn ApiClient>, name: &str, memory: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    let status = json!({"status": {
        "allocatable": {"cpu": "2", "memory": memory, "pods": "110"},
        "capacity": {"cpu": "2", "memory": memory, "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status"}]}});
    nodes.patch_status(name, PatchKind::Merge, status).await.unwrap();
}

async fn add_pod(client: &Arc<dyn ApiClient>, name: &str, memory: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"containers": [
        {"name": "app", "image": "busybox:1", "resources": {"requests": {"memory": memory}}}]}}))
    .unwrap();
    pods.create(&pod).await.unwrap();
}

/// Polls `check` until it returns `Some` or 10 s pass.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..200 {
        if let Some(v) = check().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn events_of(client: &Arc<dyn ApiClient>, pod: &str) -> Vec<Event> {
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    events.list(&ListOptions::fields(format!("involvedObject.name={pod}"))).await.unwrap().0
}

async fn node_of(client: &Arc<dyn ApiClient>, pod: &str) -> Option<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.get(pod).await.unwrap().spec.unwrap().node_name.filter(|n| !n.is_empty())
}

#[tokio::test]
async fn pending_pod_is_bound_to_the_ready_node_with_a_scheduled_event() {
    let c = cluster().await;
    add_node(&c.client, "n1", "1Gi").await;
    add_pod(&c.client, "hello", "64Mi").await;
    let node = eventually("binding", || async { node_of(&c.client, "hello").await }).await;
    assert_eq!(node, "n1");
    let event = eventually("Scheduled event", || async {
        events_of(&c.client, "hello").await.into_iter().find(|e| e.reason.as_deref() == Some("Scheduled"))
    })
    .await;
    assert_eq!(event.message.as_deref(), Some("Successfully assigned default/hello to n1"));
    assert_eq!(event.type_.as_deref(), Some("Normal"));
    assert_eq!(event.source.and_then(|s| s.component).as_deref(), Some("default-scheduler"));
    assert_eq!(event.reporting_component.as_deref(), Some("default-scheduler"));
}

#[tokio::test]
async fn pod_that_does_not_fit_is_marked_unschedulable_and_bound_once_the_node_grows() {
    let c = cluster().await;
    add_node(&c.client, "n1", "1Gi").await;
    add_pod(&c.client, "big", "2Gi").await;
    let event = eventually("FailedScheduling event", || async {
        events_of(&c.client, "big").await.into_iter().find(|e| e.reason.as_deref() == Some("FailedScheduling"))
    })
    .await;
    assert_eq!(event.message.as_deref(), Some("0/1 nodes are available: 1 Insufficient memory."));
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let condition = eventually("PodScheduled=False", || async {
        let pod = pods.get("big").await.unwrap();
        pod.status?.conditions?.into_iter().find(|c| c.type_ == "PodScheduled")
    })
    .await;
    assert_eq!(condition.status, "False");
    assert_eq!(condition.reason.as_deref(), Some("Unschedulable"));
    assert!(node_of(&c.client, "big").await.is_none());

    set_node_memory(&c.client, "n1", "4Gi").await;
    assert_eq!(eventually("binding after the node grew", || async { node_of(&c.client, "big").await }).await, "n1");
}

#[tokio::test]
async fn bound_pods_requests_are_counted_even_in_a_burst() {
    let c = cluster().await;
    add_node(&c.client, "n1", "1Gi").await;
    for i in 0..3 {
        add_pod(&c.client, &format!("p{i}"), "400Mi").await;
    }
    let mut bound = 0;
    let mut failed = 0;
    for _ in 0..100 {
        bound = 0;
        failed = 0;
        for i in 0..3 {
            let name = format!("p{i}");
            if node_of(&c.client, &name).await.is_some() {
                bound += 1;
            } else if events_of(&c.client, &name).await.iter().any(|e| e.reason.as_deref() == Some("FailedScheduling"))
            {
                failed += 1;
            }
        }
        if bound + failed == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!((bound, failed), (2, 1), "two 400Mi pods fit in 1Gi, the third does not");
}

#[tokio::test]
async fn a_bound_pod_leaves_the_pending_informer_as_a_delete() {
    use skiff_api::{Informer, InformerEvent};
    let dir = tempfile::tempdir().unwrap();
    let registry = skiff_apiserver::Registry::open(&dir.path().join("state.redb")).unwrap();
    registry.bootstrap("10.43.0.1").await.unwrap();
    let client: Arc<dyn ApiClient> = registry;
    add_node(&client, "n1", "1Gi").await;
    let (store, mut events, _h) =
        Informer::<Pod>::new(client.clone(), None, ListOptions::fields("spec.nodeName=")).spawn();
    add_pod(&client, "hello", "64Mi").await;
    assert!(matches!(next(&mut events).await, InformerEvent::Synced));
    assert!(matches!(next(&mut events).await, InformerEvent::Applied(_)));
    assert_eq!(store.len(), 1);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "hello"},
                         "target": {"apiVersion": "v1", "kind": "Node", "name": "n1"}});
    pods.create_subresource("hello", "binding", binding).await.unwrap();
    assert!(matches!(next(&mut events).await, InformerEvent::Deleted(_)), "no longer matching is a delete");
    assert!(store.is_empty());
}

async fn next(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<skiff_api::InformerEvent<Pod>>,
) -> skiff_api::InformerEvent<Pod> {
    tokio::time::timeout(Duration::from_secs(5), events.recv()).await.expect("an informer event").unwrap()
}
