//! `sync_terminating`: stop every container of the pod (SIGTERM, SIGKILL once the grace period
//! has passed), then remove the containers, the sandbox and the pod's volumes. It works from the runtime's own
//! list of the pod's containers, so nothing a cancelled sync created is left behind.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use skiff_runtime::ContainerState;

use super::{PodWorker, terminated_from_exit};
use crate::generate::Current;

impl PodWorker {
    pub(crate) async fn sync_terminating(&mut self, pod: &Pod, grace: Duration) {
        let k = self.kubelet.clone();
        self.stop_probes();
        let containers = match k.runtime.list_containers() {
            Ok(list) => list.into_iter().filter(|c| c.sandbox_id == self.uid).collect::<Vec<_>>(),
            Err(e) => {
                tracing::warn!(pod = %self.uid, "listing containers to stop: {e}");
                Vec::new()
            }
        };
        let running: Vec<_> = containers
            .iter()
            .filter(|c| matches!(c.state, ContainerState::Running { .. } | ContainerState::Created))
            .collect();
        let pod_ip = self.rt.pod_ip.clone().unwrap_or_default();
        // Each in parallel, preStop hook first (lifecycle::kill_container), as Kubernetes does.
        let stops = running.iter().map(|c| {
            let (k, pod_ip) = (k.clone(), pod_ip.as_str());
            async move {
                let result = crate::lifecycle::kill_container(&k, pod, &c.name, &c.id, pod_ip, None, grace).await;
                (c.name.clone(), c.id.clone(), result)
            }
        });
        for (name, id, result) in futures::future::join_all(stops).await {
            match result {
                Ok(status) => {
                    let current = self.tracks.get(&name).and_then(|t| t.id.as_deref()) == Some(id.as_str());
                    if current {
                        let terminated = self.with_message(&name, terminated_from_exit(&status, &id));
                        self.rt.containers.entry(name).or_default().current = Current::Terminated(terminated);
                    }
                }
                Err(e) => tracing::warn!(pod = %self.uid, container = %id, "stopping: {e}"),
            }
        }
        for c in &containers {
            if let Some(path) = self.tracks.get(&c.name).and_then(|t| t.log_path.clone()) {
                k.logs.exited(&path);
            }
            if let Err(e) = k.runtime.remove_container(&c.id).await {
                tracing::warn!(pod = %self.uid, container = %c.id, "removing: {e}");
            }
        }
        for track in self.tracks.values_mut() {
            track.id = None;
        }
        if let Err(e) = k.runtime.remove_sandbox(&self.uid).await {
            tracing::warn!(pod = %self.uid, "removing sandbox: {e}");
        }
        self.rt.sandbox_ready = false;
        // Nothing uses the volumes now: emptyDirs (tmpfs unmounted) and API-data files go.
        self.volumes = None;
        if let Err(e) = k.volumes.teardown(&self.uid).await {
            tracing::warn!(pod = %self.uid, "removing volumes: {e}");
        }
    }
}
