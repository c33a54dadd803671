//! Pod volumes, as Kubernetes' volume manager and plugins lay them out under
//! `<root>/pods/<uid>/volumes/kubernetes.io~<plugin>/<name>`:
//!
//! - `emptyDir`: a directory there (mode 0777), or with `medium: Memory` a tmpfs mounted there
//!   (`sizeLimit` as its size); shared by the pod's containers, gone with the pod.
//! - `hostPath`: the host path itself, after the `type` check ([`host_path`]).
//! - `configMap`, `secret`, `downwardAPI`, `projected` (also service account tokens, from the
//!   [`token`] manager): files written by the [`atomic_writer`];
//!   secret and projected volumes on a tmpfs so secret data never reaches the disk. Always
//!   mounted read-only, as Kubernetes does. A change of the objects reaches the files within
//!   [`RESYNC`]: a refresher re-renders every such volume of the running pods that often (and
//!   each pod sync re-renders its own), comparing first so an unchanged volume is not touched.
//! - `persistentVolumeClaim`: the bound PersistentVolume's host directory ([`pvc`]).
//!
//! With `securityContext.fsGroup`, emptyDir and the API-data volumes belong to that group
//! ([`ownership`]).
//!
//! The runtime bind-mounts each `volumeMount` (`subPath` inside the volume, made as a directory
//! if missing) into the container before its pivot_root.

pub mod atomic_writer;
pub mod host_path;
pub mod mount;
pub mod ownership;
pub mod projected;
pub mod pvc;
pub mod token;

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Volume};
use skiff_api::{Api, ApiClient};
use skiff_runtime::{MountPropagation, MountSpec};
use tokio_util::sync::CancellationToken;

use projected::{DEFAULT_MODE, Payload};

/// How often configMap, secret, downwardAPI and projected volumes are re-rendered.
pub const RESYNC: Duration = Duration::from_secs(3);

/// A volume that could not be set up; shown as Kubernetes' FailedMount event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("MountVolume.SetUp failed for volume \"{volume}\" : {message}")]
pub struct VolumeError {
    pub volume: String,
    pub message: String,
}

/// One set-up volume: the host path containers mount, and whether it is always read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mounted {
    pub path: PathBuf,
    pub read_only: bool,
}

/// The pod's volumes by name, once all are set up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodVolumes(pub HashMap<String, Mounted>);

pub struct VolumeManager {
    root: PathBuf,
    client: Arc<dyn ApiClient>,
    /// Pods with volumes set up, by UID: what the refresher re-renders.
    pods: Mutex<HashMap<String, Pod>>,
    /// The refresher and the pod workers never write one volume at the same time.
    writes: tokio::sync::Mutex<()>,
    /// Service account tokens of `serviceAccountToken` projections, renewed when due.
    tokens: token::TokenManager,
}

fn plugin_dir(volume: &Volume) -> Option<&'static str> {
    Some(if volume.empty_dir.is_some() {
        "kubernetes.io~empty-dir"
    } else if volume.config_map.is_some() {
        "kubernetes.io~configmap"
    } else if volume.secret.is_some() {
        "kubernetes.io~secret"
    } else if volume.downward_api.is_some() {
        "kubernetes.io~downward-api"
    } else if volume.projected.is_some() {
        "kubernetes.io~projected"
    } else {
        return None;
    })
}

/// The pod's `fsGroup` on a volume's directory, when it has one.
fn set_ownership(pod: &Pod, dir: &Path, read_only: bool) -> std::io::Result<()> {
    let sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let Some(gid) = sc.and_then(|sc| sc.fs_group).and_then(|g| u32::try_from(g).ok()) else { return Ok(()) };
    let policy = ownership::ChangePolicy::parse(sc.and_then(|sc| sc.fs_group_change_policy.as_deref()));
    ownership::set_volume_ownership(dir, gid, read_only, policy)
}

/// Writes a configMap, secret, downwardAPI or projected volume; returns whether it changed.
fn write_api_data(pod: &Pod, dir: &Path, payload: &Payload) -> std::io::Result<bool> {
    let changed = atomic_writer::write(dir, payload)?;
    if changed {
        set_ownership(pod, dir, true)?;
    }
    Ok(changed)
}

fn mode(m: Option<i32>) -> i32 {
    m.unwrap_or(DEFAULT_MODE)
}

impl VolumeManager {
    pub fn new(root: PathBuf, client: Arc<dyn ApiClient>) -> Self {
        let tokens = token::TokenManager::new(client.clone());
        Self { root, client, pods: Mutex::new(HashMap::new()), writes: tokio::sync::Mutex::new(()), tokens }
    }

    /// `<root>/pods/<uid>`: the pod's volumes live under it.
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.root.join("pods").join(uid)
    }

    fn volume_dir(&self, uid: &str, plugin: &str, name: &str) -> PathBuf {
        self.pod_dir(uid).join("volumes").join(plugin).join(name)
    }

    /// Sets up every volume of the pod (idempotent: each sync calls it). The first failure
    /// ends it; the pod's containers wait.
    pub async fn setup(&self, pod: &Pod) -> Result<PodVolumes, VolumeError> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        self.pods.lock().expect("volume pods lock").insert(uid.clone(), pod.clone());
        let mut out = PodVolumes::default();
        for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let mounted = self
                .setup_one(pod, &uid, v)
                .await
                .map_err(|message| VolumeError { volume: v.name.clone(), message })?;
            out.0.insert(v.name.clone(), mounted);
        }
        Ok(out)
    }

    async fn setup_one(&self, pod: &Pod, uid: &str, v: &Volume) -> Result<Mounted, String> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        if let Some(hp) = &v.host_path {
            let path = PathBuf::from(&hp.path);
            host_path::check_type(&path, hp.type_.as_deref().unwrap_or(""))?;
            return Ok(Mounted { path, read_only: false });
        }
        if let Some(claim) = &v.persistent_volume_claim {
            let path = pvc::claim_path(&self.client, ns, &claim.claim_name).await?;
            return Ok(Mounted { path, read_only: claim.read_only.unwrap_or(false) });
        }
        let Some(plugin) = plugin_dir(v) else {
            return Err("volume type not supported by this kubelet (emptyDir, hostPath, configMap, secret, \
                        downwardAPI, projected and persistentVolumeClaim are)"
                .into());
        };
        let dir = self.volume_dir(uid, plugin, &v.name);
        let own = |read_only: bool| set_ownership(pod, &dir, read_only).map_err(|e| e.to_string());
        if let Some(ed) = &v.empty_dir {
            if ed.medium.as_deref() == Some("Memory") {
                let size = ed
                    .size_limit
                    .as_ref()
                    .and_then(|q| skiff_api::ParsedQuantity::parse(&q.0).ok())
                    .map(|q| q.value().max(0) as u64);
                if !mount::is_mount_point(&dir) {
                    mount::ensure_tmpfs(&dir, 0o1777, size).map_err(|e| e.to_string())?;
                    own(false)?;
                }
            } else if !dir.is_dir() {
                std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                    .map_err(|e| format!("chmod {}: {e}", dir.display()))?;
                // Once, when made: later files inherit the group through the setgid bit.
                own(false)?;
            }
            return Ok(Mounted { path: dir, read_only: false });
        }
        // The API-data volumes.
        if v.secret.is_some() || v.projected.is_some() {
            mount::ensure_tmpfs(&dir, 0o755, None).map_err(|e| e.to_string())?;
        }
        let payload = self.payload(pod, ns, v).await?;
        let _guard = self.writes.lock().await;
        write_api_data(pod, &dir, &payload).map_err(|e| e.to_string())?;
        Ok(Mounted { path: dir, read_only: true })
    }

    async fn config_map(&self, ns: &str, name: &str) -> Result<Option<ConfigMap>, String> {
        Api::<ConfigMap>::namespaced(self.client.clone(), ns).get_opt(name).await.map_err(|e| e.to_string())
    }

    async fn secret(&self, ns: &str, name: &str) -> Result<Option<Secret>, String> {
        Api::<Secret>::namespaced(self.client.clone(), ns).get_opt(name).await.map_err(|e| e.to_string())
    }

    /// The files of a configMap, secret, downwardAPI or projected volume.
    async fn payload(&self, pod: &Pod, ns: &str, v: &Volume) -> Result<Payload, String> {
        if let Some(src) = &v.config_map {
            let cm = self.config_map(ns, &src.name).await?;
            let optional = src.optional.unwrap_or(false);
            return projected::config_map_payload(
                cm.as_ref(),
                &src.name,
                src.items.as_ref(),
                mode(src.default_mode),
                optional,
            );
        }
        if let Some(src) = &v.secret {
            let name = src.secret_name.clone().unwrap_or_default();
            let secret = self.secret(ns, &name).await?;
            let optional = src.optional.unwrap_or(false);
            return projected::secret_payload(
                secret.as_ref(),
                &name,
                src.items.as_ref(),
                mode(src.default_mode),
                optional,
            );
        }
        if let Some(src) = &v.downward_api {
            return projected::downward_api_payload(
                pod,
                src.items.as_deref().unwrap_or_default(),
                mode(src.default_mode),
            );
        }
        let Some(src) = &v.projected else { return Ok(Payload::new()) };
        let default_mode = mode(src.default_mode);
        let mut payload = Payload::new();
        for source in src.sources.iter().flatten() {
            let part = if let Some(s) = &source.config_map {
                let cm = self.config_map(ns, &s.name).await?;
                projected::config_map_payload(
                    cm.as_ref(),
                    &s.name,
                    s.items.as_ref(),
                    default_mode,
                    s.optional.unwrap_or(false),
                )?
            } else if let Some(s) = &source.secret {
                let secret = self.secret(ns, &s.name).await?;
                projected::secret_payload(
                    secret.as_ref(),
                    &s.name,
                    s.items.as_ref(),
                    default_mode,
                    s.optional.unwrap_or(false),
                )?
            } else if let Some(s) = &source.downward_api {
                projected::downward_api_payload(pod, s.items.as_deref().unwrap_or_default(), default_mode)?
            } else if let Some(s) = &source.service_account_token {
                let token = self.tokens.token(pod, s).await?;
                projected::token_payload(&s.path, token, default_mode)
            } else if source.cluster_trust_bundle.is_some() {
                return Err("clusterTrustBundle projections are not supported".into());
            } else {
                continue;
            };
            payload.extend(part);
        }
        Ok(payload)
    }

    /// Re-renders the API-data volumes of every pod set up here; failures keep the old files
    /// (as Kubernetes does when an object disappears under a running pod).
    pub async fn resync(&self) {
        let pods: Vec<(String, Pod)> =
            self.pods.lock().expect("volume pods lock").iter().map(|(u, p)| (u.clone(), p.clone())).collect();
        for (uid, pod) in pods {
            let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
            for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
                let Some(plugin) = plugin_dir(v).filter(|p| *p != "kubernetes.io~empty-dir") else { continue };
                let dir = self.volume_dir(&uid, plugin, &v.name);
                let Ok(payload) = self.payload(&pod, ns, v).await else { continue };
                let _guard = self.writes.lock().await;
                // Torn down meanwhile: do not bring it back.
                if !self.pods.lock().expect("volume pods lock").contains_key(&uid) || !dir.exists() {
                    continue;
                }
                // Secret data only ever onto its tmpfs (gone after a reboot until the pod's
                // next sync mounts it again).
                if (v.secret.is_some() || v.projected.is_some()) && !mount::is_mount_point(&dir) {
                    continue;
                }
                match write_api_data(&pod, &dir, &payload) {
                    Ok(true) => tracing::debug!(pod = %uid, volume = %v.name, "volume updated"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(pod = %uid, volume = %v.name, "updating volume: {e}"),
                }
            }
        }
    }

    /// Runs [`Self::resync`] every [`RESYNC`] until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(RESYNC);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => self.resync().await,
            }
        }
    }

    /// Removes the pod's volumes (tmpfs unmounted first) once its containers are gone.
    pub async fn teardown(&self, uid: &str) -> std::io::Result<()> {
        self.pods.lock().expect("volume pods lock").remove(uid);
        self.tokens.forget_pod(uid);
        let _guard = self.writes.lock().await;
        mount::remove_dir(&self.pod_dir(uid))
    }
}

/// A relative `subPath` that stays inside the volume.
fn check_sub_path(sub: &str) -> Result<(), String> {
    let p = Path::new(sub);
    if p.is_absolute() {
        return Err(format!("subPath {sub:?} must be a relative path"));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(format!("subPath {sub:?} must not contain '..'"));
    }
    Ok(())
}

/// The runtime mounts of a container's `volumeMounts`, over the pod's set-up volumes.
pub fn container_mounts(c: &Container, volumes: &PodVolumes) -> Result<Vec<MountSpec>, String> {
    let privileged = c.security_context.as_ref().and_then(|s| s.privileged).unwrap_or(false);
    let mut out = Vec::new();
    for vm in c.volume_mounts.iter().flatten() {
        let Some(vol) = volumes.0.get(&vm.name) else {
            return Err(format!("cannot find volume \"{}\" to mount into container \"{}\"", vm.name, c.name));
        };
        let mut source = vol.path.clone();
        let sub = vm.sub_path.as_deref().filter(|s| !s.is_empty());
        if let Some(sub) = sub {
            check_sub_path(sub)?;
            let wanted = vol.path.join(sub);
            if std::fs::symlink_metadata(&wanted).is_err() {
                // As Kubernetes: a missing subPath becomes a directory (API-data volumes are
                // the writer's; a missing key there is an error).
                if vol.read_only {
                    return Err(format!("subPath {sub:?} does not exist in volume \"{}\"", vm.name));
                }
                std::fs::create_dir_all(&wanted).map_err(|e| format!("mkdir {}: {e}", wanted.display()))?;
            }
            // Symlinks (the atomic writer's, or a container's) must not lead out of the volume.
            let real = wanted.canonicalize().map_err(|e| format!("{}: {e}", wanted.display()))?;
            let base = vol.path.canonicalize().map_err(|e| format!("{}: {e}", vol.path.display()))?;
            if !real.starts_with(&base) {
                return Err(format!("subpath {:?} not within volume path {:?}", real, base));
            }
            source = real;
        }
        let propagation = match vm.mount_propagation.as_deref() {
            None | Some("None") => MountPropagation::Private,
            Some("HostToContainer") => MountPropagation::HostToContainer,
            Some("Bidirectional") if privileged => MountPropagation::Bidirectional,
            Some("Bidirectional") => {
                return Err("Bidirectional mount propagation is available only to privileged containers".into());
            }
            Some(other) => return Err(format!("invalid mountPropagation {other:?}")),
        };
        out.push(MountSpec {
            source,
            destination: vm.mount_path.clone(),
            read_only: vol.read_only || vm.read_only.unwrap_or(false),
            propagation,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn container(mounts: serde_json::Value) -> Container {
        serde_json::from_value(json!({"name": "c", "volumeMounts": mounts})).unwrap()
    }

    #[test]
    fn volume_mounts_map_to_runtime_mounts_with_sub_paths() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let vols = PodVolumes(HashMap::from([
            ("data".to_string(), Mounted { path: data.clone(), read_only: false }),
            ("cfg".to_string(), Mounted { path: dir.path().to_path_buf(), read_only: true }),
        ]));
        let c = container(json!([
            {"name": "data", "mountPath": "/data"},
            {"name": "data", "mountPath": "/logs", "subPath": "a/logs", "readOnly": true},
            {"name": "cfg", "mountPath": "/cfg", "mountPropagation": "HostToContainer"}
        ]));
        let m = container_mounts(&c, &vols).unwrap();
        assert_eq!(m[0], MountSpec { source: data.clone(), destination: "/data".into(), ..Default::default() });
        assert!(data.join("a/logs").is_dir(), "a missing subPath is made a directory");
        assert!(m[1].read_only && m[1].source.ends_with("a/logs"));
        assert!(m[2].read_only, "API-data volumes are read-only");
        assert_eq!(m[2].propagation, MountPropagation::HostToContainer);
    }

    #[test]
    fn escaping_sub_paths_and_unprivileged_bidirectional_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("out")).unwrap();
        let vols = PodVolumes(HashMap::from([(
            "v".to_string(),
            Mounted { path: dir.path().to_path_buf(), read_only: false },
        )]));
        for sub in ["../x", "/etc", "out"] {
            let c = container(json!([{"name": "v", "mountPath": "/m", "subPath": sub}]));
            assert!(container_mounts(&c, &vols).is_err(), "{sub}");
        }
        let c = container(json!([{"name": "v", "mountPath": "/m", "mountPropagation": "Bidirectional"}]));
        assert!(container_mounts(&c, &vols).unwrap_err().contains("privileged"));
        let c = container(json!([{"name": "nope", "mountPath": "/m"}]));
        assert!(container_mounts(&c, &vols).is_err());
    }
}
