//! The kubelet's API-facing parts against the real API server core on a temp redb: node
//! registration, the Lease, write-if-changed status, events folded into counts.

use std::sync::Arc;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use serde_json::json;
use skiff_api::{Api, ApiClient, ListOptions};
use skiff_kubelet::generate::{self, ContainerRuntimeState, Current, PodRuntimeState};
use skiff_kubelet::node::{self, HostInfo};
use skiff_kubelet::status::StatusManager;

async fn registry() -> (Arc<dyn ApiClient>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let registry = skiff_apiserver::Registry::open(&dir.path().join("state.redb")).unwrap();
    registry.bootstrap("10.43.0.1").await.unwrap();
    (registry, dir)
}

fn info() -> HostInfo {
    HostInfo {
        cpus: 2,
        memory_ki: 4_000_000,
        ephemeral_storage_ki: 10_000_000,
        kernel_version: "6.18.0".into(),
        os_image: "Debian GNU/Linux 12 (bookworm)".into(),
        internal_ip: "10.1.2.3".into(),
        hostname: "box".into(),
        machine_id: "m".into(),
        boot_id: "b".into(),
        system_uuid: "s".into(),
    }
}

#[tokio::test]
async fn node_registers_ready_and_re_registers_after_a_restart() {
    let (client, _dir) = registry().await;
    let since = generate::truncate(jiff::Timestamp::now());
    let node = node::register(&client, "box", &info(), &node::NodeConditions::healthy(since)).await.unwrap();
    let labels = node.metadata.labels.clone().unwrap();
    assert_eq!(labels["kubernetes.io/hostname"], "box");
    assert_eq!(labels["node-role.kubernetes.io/control-plane"], "true");
    let status = node.status.clone().unwrap();
    let ready = status.conditions.unwrap().into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!((ready.status.as_str(), ready.reason.as_deref()), ("True", Some("KubeletReady")));
    assert_eq!(status.node_info.unwrap().kubelet_version, "v1.33.0+skiff");
    assert_eq!(status.allocatable.unwrap()["pods"].0, "110");

    let mut disk = node::NodeConditions::healthy(since);
    disk.observe(node::Pressure { disk: true, ..Default::default() }, since);
    let again = node::register(&client, "box", &info(), &disk).await.unwrap();
    let conditions = again.status.clone().unwrap().conditions.unwrap();
    let pressure = conditions.iter().find(|c| c.type_ == "DiskPressure").unwrap();
    assert_eq!((pressure.status.as_str(), pressure.reason.as_deref()), ("True", Some("KubeletHasDiskPressure")));
    assert_eq!(again.metadata.uid, node.metadata.uid, "the same Node is taken over");
    let nodes: Api<Node> = Api::all(client.clone());
    assert_eq!(nodes.list(&ListOptions::default()).await.unwrap().0.len(), 1);
}

#[tokio::test]
async fn heartbeat_writes_changed_conditions_at_once() {
    let (client, _dir) = registry().await;
    let since = generate::truncate(jiff::Timestamp::now());
    let healthy = node::NodeConditions::healthy(since);
    let node = node::register(&client, "box", &info(), &healthy).await.unwrap();
    let (tx, rx) = tokio::sync::watch::channel(healthy);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let beat = tokio::spawn(node::heartbeat(client.clone(), node, info(), rx, shutdown.clone()));
    let mut memory = healthy;
    memory.observe(node::Pressure { memory: true, ..Default::default() }, since);
    tx.send_replace(memory);
    let nodes: Api<Node> = Api::all(client.clone());
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let conditions = nodes.get("box").await.unwrap().status.unwrap().conditions.unwrap();
        let c = conditions.into_iter().find(|c| c.type_ == "MemoryPressure").unwrap();
        if c.status == "True" {
            assert_eq!(c.reason.as_deref(), Some("KubeletHasInsufficientMemory"));
            assert_eq!(c.message.as_deref(), Some("kubelet has insufficient memory available"));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "MemoryPressure not written: {c:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    beat.await.unwrap();
}

#[tokio::test]
async fn lease_is_created_in_kube_node_lease_and_renewed() {
    let (client, _dir) = registry().await;
    let healthy = node::NodeConditions::healthy(jiff::Timestamp::now());
    let node = node::register(&client, "box", &info(), &healthy).await.unwrap();
    node::renew_lease(&client, &node).await.unwrap();
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let first = leases.get("box").await.unwrap();
    let spec = first.spec.clone().unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("box"));
    assert_eq!(spec.lease_duration_seconds, Some(40));
    assert_eq!(first.metadata.owner_references.unwrap()[0].uid, node.metadata.uid.clone().unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    node::renew_lease(&client, &node).await.unwrap();
    let second = leases.get("box").await.unwrap();
    assert!(second.spec.unwrap().renew_time.unwrap().0 > spec.renew_time.unwrap().0);
}

#[tokio::test]
async fn status_is_written_only_when_it_changes() {
    let (client, _dir) = registry().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "hello"}, "spec": {"nodeName": "box",
        "containers": [{"name": "app", "image": "busybox:1"}]}}))
    .unwrap();
    let pod = pods.create(&pod).await.unwrap();
    let manager = StatusManager::new(client.clone());
    let mut rt = PodRuntimeState { sandbox_ready: true, host_ip: "10.1.2.3".into(), ..Default::default() };
    rt.start_time = Some(generate::truncate(jiff::Timestamp::now()));
    rt.containers.insert("app".into(), ContainerRuntimeState::default());
    let status = generate::generate(&pod, &rt, jiff::Timestamp::now());
    assert!(manager.set(&pod, &status).await.unwrap());
    let stored = pods.get("hello").await.unwrap();
    let rv = stored.metadata.resource_version.clone();
    assert_eq!(stored.status.as_ref().unwrap().phase.as_deref(), Some("Pending"));
    let waiting =
        stored.status.as_ref().unwrap().container_statuses.as_ref().unwrap()[0].state.clone().unwrap().waiting;
    assert_eq!(waiting.unwrap().reason.as_deref(), Some("ContainerCreating"));

    let same = generate::generate(&stored, &rt, jiff::Timestamp::now() + jiff::SignedDuration::from_secs(5));
    assert!(!manager.set(&stored, &same).await.unwrap(), "an unchanged status is not written");
    assert_eq!(pods.get("hello").await.unwrap().metadata.resource_version, rv);

    rt.containers.get_mut("app").unwrap().current =
        Current::Running { started_at: generate::truncate(jiff::Timestamp::now()) };
    let running = generate::generate(&stored, &rt, jiff::Timestamp::now());
    assert!(manager.set(&stored, &running).await.unwrap());
    let stored = pods.get("hello").await.unwrap();
    assert_eq!(stored.status.as_ref().unwrap().phase.as_deref(), Some("Running"));
    // A fresh manager (a restarted kubelet) compares with what the API holds.
    assert!(!StatusManager::new(client.clone()).set(&stored, &running).await.unwrap());
}

#[tokio::test]
async fn repeated_events_become_one_event_with_a_count() {
    let (client, _dir) = registry().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "hello"}, "spec": {
        "containers": [{"name": "app", "image": "busybox:1"}]}}))
    .unwrap();
    let pod = pods.create(&pod).await.unwrap();
    let recorder = skiff_kubelet::events::recorder(client.clone(), "box");
    let r = skiff_kubelet::events::container_ref(&pod, "app");
    recorder.warning(&r, "BackOff", "Back-off pulling image \"busybox:1\"").await;
    recorder.warning(&r, "BackOff", "Back-off pulling image \"busybox:1\"").await;
    recorder.normal(&r, "Pulling", "Pulling image \"busybox:1\"").await;
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let uid = pod.metadata.uid.clone().unwrap();
    let selector = format!("involvedObject.name=hello,involvedObject.namespace=default,involvedObject.uid={uid}");
    let (list, _) = events.list(&ListOptions::fields(selector)).await.unwrap();
    assert_eq!(list.len(), 2);
    let backoff = list.iter().find(|e| e.reason.as_deref() == Some("BackOff")).unwrap();
    assert_eq!(backoff.count, Some(2));
    assert_eq!(backoff.involved_object.field_path.as_deref(), Some("spec.containers{app}"));
    assert_eq!(backoff.source.as_ref().unwrap().host.as_deref(), Some("box"));
    assert_eq!(backoff.reporting_instance.as_deref(), Some("box"));
    assert!(backoff.metadata.name.as_deref().unwrap().starts_with("hello."));
}
