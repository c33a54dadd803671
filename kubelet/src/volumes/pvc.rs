//! persistentVolumeClaim volumes: the claim must be Bound; the kubelet mounts its
//! PersistentVolume's host directory (`hostPath` or `local`). And the node's default
//! StorageClass `local-path` (k3s' local-path provisioner), whose `nodePath` parameter tells the
//! provisioner where on this node claims get their directories.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use skiff_api::{Api, ApiClient};

pub const CLASS: &str = "local-path";
pub const PROVISIONER: &str = "rancher.io/local-path";

/// The host directory of the claim's volume. `Err` is the FailedMount message.
pub async fn claim_path(client: &Arc<dyn ApiClient>, ns: &str, claim: &str) -> Result<PathBuf, String> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let pvc = match claims.get_opt(claim).await {
        Ok(Some(pvc)) => pvc,
        Ok(None) => return Err(format!("persistentvolumeclaim \"{claim}\" not found")),
        Err(e) => return Err(e.to_string()),
    };
    let phase = pvc.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
    let volume = pvc.spec.as_ref().and_then(|s| s.volume_name.clone()).unwrap_or_default();
    if phase != "Bound" || volume.is_empty() {
        return Err(format!(
            "PVC {ns}/{claim} has non-bound phase (\"{phase}\") or empty pvc.Spec.VolumeName (\"{volume}\")"
        ));
    }
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let pv = match pvs.get_opt(&volume).await {
        Ok(Some(pv)) => pv,
        Ok(None) => return Err(format!("persistentvolume \"{volume}\" not found")),
        Err(e) => return Err(e.to_string()),
    };
    let spec = pv.spec.unwrap_or_default();
    if let Some(hp) = spec.host_path {
        let path = PathBuf::from(&hp.path);
        super::host_path::check_type(&path, hp.type_.as_deref().unwrap_or(""))?;
        return Ok(path);
    }
    if let Some(local) = spec.local {
        let path = PathBuf::from(&local.path);
        return if path.is_dir() { Ok(path) } else { Err(format!("path \"{}\" does not exist", local.path)) };
    }
    Err(format!("persistentvolume \"{volume}\" has no hostPath or local source this node can mount"))
}

/// Creates the default StorageClass `local-path` if there is none of that name.
pub async fn ensure_storage_class(client: &Arc<dyn ApiClient>, storage_dir: &Path) -> Result<(), skiff_api::ApiError> {
    let classes: Api<StorageClass> = Api::all(client.clone());
    if classes.get_opt(CLASS).await?.is_some() {
        return Ok(());
    }
    let class = StorageClass {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(CLASS.into()),
            annotations: Some(BTreeMap::from([(
                "storageclass.kubernetes.io/is-default-class".to_string(),
                "true".to_string(),
            )])),
            ..Default::default()
        },
        provisioner: PROVISIONER.into(),
        parameters: Some(BTreeMap::from([("nodePath".to_string(), storage_dir.display().to_string())])),
        reclaim_policy: Some("Delete".into()),
        volume_binding_mode: Some("WaitForFirstConsumer".into()),
        ..Default::default()
    };
    match classes.create(&class).await {
        Err(e) if e.code != 409 => Err(e),
        _ => Ok(()),
    }
}
