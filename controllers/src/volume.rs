//! The built-in local-path provisioner (k3s' `rancher.io/local-path`) and the binding it needs:
//!
//! - a claim of a class provisioned by `rancher.io/local-path` gets a PersistentVolume once it
//!   may be bound: at once for `Immediate` classes, for `WaitForFirstConsumer` ones when a pod
//!   using it is scheduled (or the claim carries `volume.kubernetes.io/selected-node`). The
//!   volume is a `hostPath` directory `<nodePath>/pvc-<uid>_<ns>_<name>` (the class's
//!   `nodePath` parameter; the kubelet's default class points it at `<data-dir>/storage`, or
//!   the controller's own `storage_dir` when given), made here, with node affinity to that node;
//!   both are then bound (PV `claimRef` and `Bound`, claim `volumeName` and `Bound`).
//! - a volume whose claim is gone is `Released`; with `reclaimPolicy: Delete` and this
//!   provisioner, its directory and the PersistentVolume are deleted, `Retain` keeps both.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, ObjectReference as CoreRef,
    PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec, Pod, VolumeNodeAffinity,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::json;
use skiff_api::{
    Api, ApiClient, ApiError, DeleteOptions, EventSource, Informer, InformerEvent, ListOptions, ObjectKey,
    ObjectReference, PatchKind, Recorder, Store, WorkQueue,
};
use tokio_util::sync::CancellationToken;

use crate::controller::{self, Action, Reconciler};

pub const PROVISIONER: &str = "rancher.io/local-path";
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";

pub struct LocalPathProvisioner {
    client: Arc<dyn ApiClient>,
    claims: Store<PersistentVolumeClaim>,
    volumes: Store<PersistentVolume>,
    pods: Store<Pod>,
    classes: Store<StorageClass>,
    recorder: Recorder,
    /// Overrides the classes' `nodePath` (the server's `<data-dir>/storage`).
    storage_dir: Option<PathBuf>,
}

fn claims_of(pod: &Pod) -> impl Iterator<Item = ObjectKey> + '_ {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(move |v| v.persistent_volume_claim.as_ref().map(|c| ObjectKey::namespaced(&ns, &c.claim_name)))
}

/// The directory a provisioned volume lives in, as local-path-provisioner names it.
pub fn volume_dir(node_path: &Path, claim: &PersistentVolumeClaim) -> PathBuf {
    let m = &claim.metadata;
    let (uid, ns, name) =
        (m.uid.as_deref().unwrap_or(""), m.namespace.as_deref().unwrap_or(""), m.name.as_deref().unwrap_or(""));
    node_path.join(format!("pvc-{uid}_{ns}_{name}"))
}

impl LocalPathProvisioner {
    pub async fn run(client: Arc<dyn ApiClient>, storage_dir: Option<PathBuf>, shutdown: CancellationToken) {
        let all = ListOptions::default;
        let (claims, mut claim_events, _c) =
            Informer::<PersistentVolumeClaim>::new(client.clone(), None, all()).spawn();
        let (volumes, mut volume_events, _v) = Informer::<PersistentVolume>::new(client.clone(), None, all()).spawn();
        let (pods, mut pod_events, _p) = Informer::<Pod>::new(client.clone(), None, all()).spawn();
        let (classes, mut class_events, _s) = Informer::<StorageClass>::new(client.clone(), None, all()).spawn();
        let recorder = Recorder::new(
            client.clone(),
            EventSource {
                component: "rancher.io/local-path_skiff".into(),
                host: None,
                reporting_instance: String::new(),
            },
        );
        let this = Arc::new(Self { client, claims, volumes, pods, classes, recorder, storage_dir });
        let queue = WorkQueue::<ObjectKey>::new();
        let triggers = {
            let (this, queue) = (this.clone(), queue.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        Some(event) = claim_events.recv() => match event {
                            InformerEvent::Applied(c) => queue.add(ObjectKey::of(c.as_ref())),
                            // Its volume is released.
                            InformerEvent::Deleted(c) => {
                                if let Some(v) = c.spec.as_ref().and_then(|s| s.volume_name.as_deref()).filter(|v| !v.is_empty()) {
                                    queue.add(ObjectKey::cluster(v));
                                }
                            }
                            InformerEvent::Synced => {}
                        },
                        Some(event) = volume_events.recv() => if let InformerEvent::Applied(v) = event {
                            queue.add(ObjectKey::of(v.as_ref()));
                        },
                        Some(event) = pod_events.recv() => if let InformerEvent::Applied(p) = event {
                            if p.spec.as_ref().is_some_and(|s| s.node_name.is_some()) {
                                for key in claims_of(&p) {
                                    queue.add(key);
                                }
                            }
                        },
                        // A class created after its claims.
                        Some(event) = class_events.recv() => if let InformerEvent::Applied(_) = event {
                            for c in this.claims.list() {
                                queue.add(ObjectKey::of(c.as_ref()));
                            }
                        },
                        else => break,
                    }
                }
            })
        };
        controller::run(this, queue, 1, shutdown).await;
        triggers.abort();
    }

    /// The node the claim's first scheduled consumer runs on.
    fn consumer_node(&self, key: &ObjectKey) -> Option<String> {
        self.pods
            .list()
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| claims_of(p).any(|k| &k == key))
            .find_map(|p| p.spec.as_ref()?.node_name.clone())
    }

    async fn reconcile_claim(&self, key: &ObjectKey) -> Result<Action, ApiError> {
        let Some(claim) = self.claims.get(key) else { return Ok(Action::AwaitChange) };
        let ns = key.namespace.as_deref().unwrap_or_default();
        let spec = claim.spec.clone().unwrap_or_default();
        let phase = claim.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
        if claim.metadata.deletion_timestamp.is_some() || phase == "Bound" {
            return Ok(Action::AwaitChange);
        }
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
        let reference = ObjectReference::of(claim.as_ref());
        // Bound by name already (ours, after a crash between the two writes, or a static one).
        if let Some(volume) = spec.volume_name.as_deref().filter(|v| !v.is_empty()) {
            if let Some(pv) = self.volumes.get(&ObjectKey::cluster(volume)) {
                self.bind(&claims, &claim, &pv).await?;
            }
            return Ok(Action::AwaitChange);
        }
        let Some(class_name) = spec.storage_class_name.as_deref().filter(|c| !c.is_empty()) else {
            return Ok(Action::AwaitChange);
        };
        let Some(class) = self.classes.get(&ObjectKey::cluster(class_name)) else { return Ok(Action::AwaitChange) };
        if class.provisioner != PROVISIONER {
            return Ok(Action::AwaitChange);
        }
        let selected = claim.metadata.annotations.as_ref().and_then(|a| a.get(SELECTED_NODE).cloned());
        let node = match class.volume_binding_mode.as_deref() {
            Some("WaitForFirstConsumer") => match selected.or_else(|| self.consumer_node(key)) {
                Some(node) => node,
                None => {
                    self.recorder
                        .normal(
                            &reference,
                            "WaitForFirstConsumer",
                            "waiting for first consumer to be created before binding",
                        )
                        .await;
                    return Ok(Action::AwaitChange);
                }
            },
            _ => selected.unwrap_or_default(),
        };
        let node_path = match self
            .storage_dir
            .clone()
            .or_else(|| class.parameters.as_ref().and_then(|p| p.get("nodePath")).map(PathBuf::from))
        {
            Some(p) => p,
            None => {
                let msg =
                    format!("failed to provision volume with StorageClass \"{class_name}\": no nodePath parameter");
                self.recorder.warning(&reference, "ProvisioningFailed", &msg).await;
                return Ok(Action::AwaitChange);
            }
        };
        self.recorder
            .normal(
                &reference,
                "Provisioning",
                &format!("External provisioner is provisioning volume for claim \"{ns}/{}\"", key.name),
            )
            .await;
        let dir = volume_dir(&node_path, &claim);
        if let Err(e) = make_dir(&dir) {
            let msg = format!("failed to provision volume with StorageClass \"{class_name}\": {e}");
            self.recorder.warning(&reference, "ProvisioningFailed", &msg).await;
            return Err(ApiError::internal(msg));
        }
        let pv = self.volume_for(&claim, &class, &dir, &node);
        let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
        let pv = match pvs.create(&pv).await {
            Ok(pv) => pv,
            Err(e) if e.is_already_exists() => pvs.get(pv.metadata.name.as_deref().unwrap_or_default()).await?,
            Err(e) => return Err(e),
        };
        let pv_name = pv.metadata.name.clone().unwrap_or_default();
        self.recorder
            .normal(&reference, "ProvisioningSucceeded", &format!("Successfully provisioned volume {pv_name}"))
            .await;
        self.bind(&claims, &claim, &pv).await?;
        Ok(Action::AwaitChange)
    }

    fn volume_for(
        &self,
        claim: &PersistentVolumeClaim,
        class: &StorageClass,
        dir: &Path,
        node: &str,
    ) -> PersistentVolume {
        let spec = claim.spec.clone().unwrap_or_default();
        let capacity = spec.resources.as_ref().and_then(|r| r.requests.clone()).unwrap_or_default();
        let capacity: BTreeMap<_, _> = capacity.into_iter().filter(|(k, _)| k == "storage").collect();
        let mut annotations = BTreeMap::from([(PROVISIONED_BY.to_string(), PROVISIONER.to_string())]);
        let node_affinity = (!node.is_empty()).then(|| {
            annotations.insert("local.path.provisioner/selected-node".into(), node.to_string());
            VolumeNodeAffinity {
                required: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: "kubernetes.io/hostname".into(),
                            operator: "In".into(),
                            values: Some(vec![node.to_string()]),
                        }]),
                        ..Default::default()
                    }],
                }),
            }
        });
        let m = &claim.metadata;
        PersistentVolume {
            metadata: ObjectMeta {
                name: Some(format!("pvc-{}", m.uid.as_deref().unwrap_or_default())),
                annotations: Some(annotations),
                ..Default::default()
            },
            spec: Some(PersistentVolumeSpec {
                capacity: Some(capacity),
                access_modes: spec.access_modes.clone(),
                host_path: Some(HostPathVolumeSource {
                    path: dir.display().to_string(),
                    type_: Some("DirectoryOrCreate".into()),
                }),
                claim_ref: Some(CoreRef {
                    api_version: Some("v1".into()),
                    kind: Some("PersistentVolumeClaim".into()),
                    namespace: m.namespace.clone(),
                    name: m.name.clone(),
                    uid: m.uid.clone(),
                    resource_version: m.resource_version.clone(),
                    ..Default::default()
                }),
                persistent_volume_reclaim_policy: Some(class.reclaim_policy.clone().unwrap_or_else(|| "Delete".into())),
                storage_class_name: class.metadata.name.clone(),
                volume_mode: Some(spec.volume_mode.clone().unwrap_or_else(|| "Filesystem".into())),
                node_affinity,
                ..Default::default()
            }),
            status: None,
        }
    }

    /// Writes both sides of the binding: the volume `Bound` to the claim, the claim's
    /// `volumeName`, binding annotations and `Bound` status with the volume's capacity.
    async fn bind(
        &self,
        claims: &Api<PersistentVolumeClaim>,
        claim: &PersistentVolumeClaim,
        pv: &PersistentVolume,
    ) -> Result<(), ApiError> {
        let pv_name = pv.metadata.name.clone().unwrap_or_default();
        let name = claim.metadata.name.clone().unwrap_or_default();
        let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
        if pv.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
            pvs.patch_status(&pv_name, PatchKind::Merge, json!({"status": {"phase": "Bound"}})).await?;
        }
        let patch = json!({
            "metadata": {"annotations": {
                "pv.kubernetes.io/bind-completed": "yes",
                "pv.kubernetes.io/bound-by-controller": "yes",
                "volume.beta.kubernetes.io/storage-provisioner": PROVISIONER,
                "volume.kubernetes.io/storage-provisioner": PROVISIONER,
            }},
            "spec": {"volumeName": pv_name},
        });
        claims.patch(&name, PatchKind::Merge, patch).await?;
        let spec = pv.spec.clone().unwrap_or_default();
        let status = json!({"status": {
            "phase": "Bound",
            "accessModes": spec.access_modes.unwrap_or_default(),
            "capacity": spec.capacity.unwrap_or_default(),
        }});
        claims.patch_status(&name, PatchKind::Merge, status).await?;
        Ok(())
    }

    async fn reconcile_volume(&self, key: &ObjectKey) -> Result<Action, ApiError> {
        let Some(pv) = self.volumes.get(key) else { return Ok(Action::AwaitChange) };
        let spec = pv.spec.clone().unwrap_or_default();
        let Some(claim_ref) = spec.claim_ref.as_ref() else { return Ok(Action::AwaitChange) };
        let phase = pv.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or_default();
        if pv.metadata.deletion_timestamp.is_some() || phase == "Failed" {
            return Ok(Action::AwaitChange);
        }
        // The cache may lag behind: ask the API before anything is released (or deleted).
        let ns = claim_ref.namespace.as_deref().unwrap_or_default();
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
        let current = claims.get_opt(claim_ref.name.as_deref().unwrap_or_default()).await?;
        if current.is_some_and(|c| c.metadata.uid == claim_ref.uid) {
            return Ok(Action::AwaitChange);
        }
        let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
        let ours = pv.metadata.annotations.as_ref().and_then(|a| a.get(PROVISIONED_BY)).map(String::as_str)
            == Some(PROVISIONER);
        if spec.persistent_volume_reclaim_policy.as_deref() == Some("Delete") && ours {
            if let Some(path) = spec.host_path.as_ref().map(|h| PathBuf::from(&h.path)) {
                // Only a directory this provisioner named, never some other host path.
                let named = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("pvc-"));
                if named {
                    if let Err(e) = std::fs::remove_dir_all(&path) {
                        if e.kind() != std::io::ErrorKind::NotFound {
                            let msg = format!("removing {}: {e}", path.display());
                            self.recorder.warning(&ObjectReference::of(pv.as_ref()), "VolumeFailedDelete", &msg).await;
                            return Err(ApiError::internal(msg));
                        }
                    }
                }
            }
            match pvs.delete(&key.name, &DeleteOptions::default()).await {
                Err(e) if !e.is_not_found() => return Err(e),
                _ => return Ok(Action::AwaitChange),
            }
        }
        if phase != "Released" {
            pvs.patch_status(&key.name, PatchKind::Merge, json!({"status": {"phase": "Released"}})).await?;
        }
        Ok(Action::AwaitChange)
    }
}

fn make_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(|e| std::io::Error::new(e.kind(), format!("mkdir {}: {e}", dir.display())))?;
    // As local-path-provisioner: any container user may write its volume.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
        .map_err(|e| std::io::Error::new(e.kind(), format!("chmod {}: {e}", dir.display())))
}

#[async_trait::async_trait]
impl Reconciler for LocalPathProvisioner {
    const NAME: &'static str = "local-path-provisioner";
    type Key = ObjectKey;

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, ApiError> {
        if key.namespace.is_some() { self.reconcile_claim(key).await } else { self.reconcile_volume(key).await }
    }
}
