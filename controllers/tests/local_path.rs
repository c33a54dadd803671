//! The local-path provisioner against the real API server core on a temp redb: claims get
//! bound PersistentVolumes under the storage directory (at once for `Immediate`, once a
//! scheduled pod uses them for `WaitForFirstConsumer`), and a deleted claim's volume is kept
//! `Released` (Retain) or deleted with its directory (Delete).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use serde_json::json;
use skiff_api::{Api, ApiClient, DeleteOptions};
use skiff_controllers::volume::LocalPathProvisioner;
use tokio_util::sync::CancellationToken;

struct Setup {
    client: Arc<dyn ApiClient>,
    storage: PathBuf,
    _dir: tempfile::TempDir,
    stop: CancellationToken,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn setup(binding: &str, reclaim: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let registry = skiff_apiserver::Registry::open(&dir.path().join("state.redb")).unwrap();
    registry.bootstrap("10.243.0.1").await.unwrap();
    let client: Arc<dyn ApiClient> = registry;
    let class: StorageClass = serde_json::from_value(json!({"metadata": {"name": "local-path"},
        "provisioner": "rancher.io/local-path", "volumeBindingMode": binding, "reclaimPolicy": reclaim}))
    .unwrap();
    Api::<StorageClass>::all(client.clone()).create(&class).await.unwrap();
    let storage = dir.path().join("storage");
    let stop = CancellationToken::new();
    tokio::spawn(LocalPathProvisioner::run(client.clone(), Some(storage.clone()), stop.clone()));
    Setup { client, storage, _dir: dir, stop }
}

async fn claim(s: &Setup) -> PersistentVolumeClaim {
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({"metadata": {"name": "data"},
        "spec": {"storageClassName": "local-path", "accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": "2Gi"}}}}))
    .unwrap();
    Api::<PersistentVolumeClaim>::namespaced(s.client.clone(), "default").create(&pvc).await.unwrap()
}

async fn eventually<T, Fut: std::future::Future<Output = Option<T>>>(what: &str, mut check: impl FnMut() -> Fut) -> T {
    for _ in 0..400 {
        if let Some(v) = check().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn bound(s: &Setup) -> (PersistentVolumeClaim, PersistentVolume) {
    let claims = Api::<PersistentVolumeClaim>::namespaced(s.client.clone(), "default");
    let pvs = Api::<PersistentVolume>::all(s.client.clone());
    eventually("the claim to be Bound", || async {
        let pvc = claims.get("data").await.ok()?;
        let phase = pvc.status.as_ref()?.phase.clone()?;
        let pv = pvs.get(pvc.spec.as_ref()?.volume_name.as_deref()?).await.ok()?;
        (phase == "Bound" && pv.status.as_ref()?.phase.as_deref() == Some("Bound")).then_some((pvc, pv))
    })
    .await
}

fn host_path(pv: &PersistentVolume) -> PathBuf {
    PathBuf::from(&pv.spec.as_ref().unwrap().host_path.as_ref().unwrap().path)
}

#[tokio::test]
async fn an_immediate_claim_is_provisioned_at_once_and_its_volume_retained_after_deletion() {
    let s = setup("Immediate", "Retain").await;
    let pvc = claim(&s).await;
    let (pvc_now, pv) = bound(&s).await;
    let uid = pvc.metadata.uid.clone().unwrap();
    assert_eq!(pv.metadata.name.as_deref(), Some(format!("pvc-{uid}").as_str()));
    let path = host_path(&pv);
    assert_eq!(path, s.storage.join(format!("pvc-{uid}_default_data")));
    assert!(path.is_dir());
    let spec = pv.spec.clone().unwrap();
    assert_eq!(spec.claim_ref.as_ref().and_then(|r| r.uid.clone()), Some(uid));
    assert_eq!(spec.persistent_volume_reclaim_policy.as_deref(), Some("Retain"));
    assert_eq!(spec.capacity.unwrap()["storage"].0, "2Gi");
    assert_eq!(pvc_now.status.unwrap().capacity.unwrap()["storage"].0, "2Gi");

    std::fs::write(path.join("keep"), "me").unwrap();
    let claims = Api::<PersistentVolumeClaim>::namespaced(s.client.clone(), "default");
    claims.delete("data", &DeleteOptions::default()).await.unwrap();
    let pvs = Api::<PersistentVolume>::all(s.client.clone());
    let name = pv.metadata.name.clone().unwrap();
    eventually("the volume to be Released", || async {
        let pv = pvs.get(&name).await.ok()?;
        (pv.status?.phase.as_deref() == Some("Released")).then_some(())
    })
    .await;
    assert_eq!(std::fs::read_to_string(path.join("keep")).unwrap(), "me", "Retain keeps the data");
}

#[tokio::test]
async fn a_wait_for_first_consumer_claim_waits_for_a_scheduled_pod_and_is_deleted_with_its_directory() {
    let s = setup("WaitForFirstConsumer", "Delete").await;
    claim(&s).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let claims = Api::<PersistentVolumeClaim>::namespaced(s.client.clone(), "default");
    let pvc = claims.get("data").await.unwrap();
    assert!(pvc.spec.unwrap().volume_name.is_none(), "no consumer, no volume");
    assert_eq!(std::fs::read_dir(&s.storage).map(|d| d.count()).unwrap_or(0), 0);

    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "user"}, "spec": {"nodeName": "node-a",
        "containers": [{"name": "c", "image": "busybox"}],
        "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "data"}}]}}))
    .unwrap();
    Api::<Pod>::namespaced(s.client.clone(), "default").create(&pod).await.unwrap();
    let (_, pv) = bound(&s).await;
    let affinity = serde_json::to_value(&pv.spec.as_ref().unwrap().node_affinity).unwrap();
    assert_eq!(affinity["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"], json!(["node-a"]));
    let path = host_path(&pv);
    assert!(path.is_dir());

    claims.delete("data", &DeleteOptions::default()).await.unwrap();
    let pvs = Api::<PersistentVolume>::all(s.client.clone());
    let name = pv.metadata.name.clone().unwrap();
    eventually("the volume and its directory to go", || async {
        let gone = pvs.get_opt(&name).await.ok()?.is_none() && !Path::new(&path).exists();
        gone.then_some(())
    })
    .await;
}
