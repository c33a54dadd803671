//! The end of a pod: once nothing runs, delete the API object for good (grace 0, UID
//! precondition, so a new pod of the same name is never hit), then drop its logs and state.

use k8s_openapi::api::core::v1::Pod;
use skiff_api::{DeleteOptions, ResourceKind};

use super::PodWorker;

impl PodWorker {
    /// Deletes the pod object. True when it is gone (also when someone else removed it).
    pub(crate) async fn delete_pod(&self, pod: &Pod) -> bool {
        let (ns, name) = Self::pod_names(pod);
        let opts = DeleteOptions {
            grace_period_seconds: Some(0),
            precondition_uid: Some(self.uid.clone()),
            ..Default::default()
        };
        match self.kubelet.client.delete(ResourceKind::of::<Pod>(), Some(ns), name, &opts).await {
            Ok(_) => true,
            // Gone already, or the name now belongs to a newer pod.
            Err(e) if e.is_not_found() || e.code == 409 => true,
            Err(e) => {
                tracing::warn!(pod = %format!("{ns}/{name}"), "deleting terminated pod: {e}");
                false
            }
        }
    }

    /// Forgets the pod: its log directory and the status manager's record.
    pub(crate) fn sync_terminated(&self, pod: &Pod) {
        let (ns, name) = Self::pod_names(pod);
        let dir = crate::logs::pod_log_dir(&self.kubelet.config.root, ns, name, &self.uid);
        self.kubelet.logs.exited_under(&dir);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("removing {}: {e}", dir.display());
            }
        }
        self.kubelet.status.forget(&self.uid);
    }
}
