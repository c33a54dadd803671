//! `sync_terminating`: stop every container of the pod (SIGTERM, SIGKILL once the grace period
//! has passed; app containers before sidecars), then remove the containers, the sandbox and the pod's volumes. It works from the runtime's own
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
        // KEP-753 termination order: the app containers first, each in parallel (preStop hook
        // first, lifecycle::kill_container), then the sidecars one by one, last one first, so
        // they serve the app containers to the end; all within one grace period.
        let sidecars: Vec<String> = pod
            .spec
            .iter()
            .flat_map(|s| s.init_containers.iter().flatten())
            .filter(|c| crate::generate::is_sidecar(c))
            .map(|c| c.name.clone())
            .rev()
            .collect();
        let mut apps = Vec::new();
        let mut sidecar_runs = Vec::new();
        for c in running {
            match sidecars.iter().position(|n| *n == c.name) {
                Some(order) => sidecar_runs.push((order, c)),
                None => apps.push(c),
            }
        }
        sidecar_runs.sort_by_key(|(order, _)| *order);
        let deadline = std::time::Instant::now() + grace;
        let stops = apps.iter().map(|c| {
            let (k, pod_ip) = (k.clone(), pod_ip.as_str());
            async move {
                let result = crate::lifecycle::kill_container(&k, pod, &c.name, &c.id, pod_ip, None, grace).await;
                (c.name.clone(), c.id.clone(), result)
            }
        });
        let mut results = futures::future::join_all(stops).await;
        for (_, c) in sidecar_runs {
            // What is left of the grace period, but never less than Kubernetes' minimum unless
            // the pod is killed at once.
            let left = if grace.is_zero() {
                Duration::ZERO
            } else {
                deadline.saturating_duration_since(std::time::Instant::now()).max(crate::lifecycle::MINIMUM_GRACE)
            };
            let result = crate::lifecycle::kill_container(&k, pod, &c.name, &c.id, &pod_ip, None, left).await;
            results.push((c.name.clone(), c.id.clone(), result));
        }
        for (name, id, result) in results {
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
