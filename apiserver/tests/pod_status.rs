//! Regression: a kubelet's status write must pass the pod-update rules. After defaulting
//! stopped storing `initContainers: null`, the update check (which looked into the old spec and
//! so inserted those nulls itself) saw a spec change in every status write and refused it.

use serde_json::json;
use skiff_api::{ApiClient, ResourceKind};

#[tokio::test]
async fn a_status_write_to_a_defaulted_pod_is_not_a_spec_change() {
    let dir = tempfile::tempdir().unwrap();
    let registry = skiff_apiserver::Registry::open(&dir.path().join("state.redb")).unwrap();
    registry.bootstrap("10.43.0.1").await.unwrap();
    let pods = ResourceKind::by_plural("", "v1", "pods").unwrap();
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "app", "image": "busybox:1.36"}]}});
    let mut pod = registry.create(pods, Some("default"), pod).await.unwrap();
    pod["status"] = json!({"phase": "Running"});
    let written = registry.update(pods, Some("default"), "p", Some("status"), pod).await.unwrap();
    assert_eq!(written["status"]["phase"], "Running");
    assert_eq!(written["metadata"]["generation"], 1, "a status write is no spec change");

    // A real spec change other than the image is still refused.
    let mut changed = written.clone();
    changed["spec"]["restartPolicy"] = json!("Never");
    let err = registry.update(pods, Some("default"), "p", None, changed).await.unwrap_err();
    assert_eq!(err.code, 422);
}
