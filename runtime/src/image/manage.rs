//! [`ImageManager`]: the image store as `skiff images`, `skiff image import|rm|prune`, the
//! server's import of `<data-dir>/images/` and its disk-pressure collection use it. It opens the
//! store files directly, beside a running server: the store's locks keep the two apart (see
//! store.rs), and "in use" is read from the runtime's `containers/` directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::gc::{self, ImageUser};
use super::progress::{PullProgress, Pulled};
use super::registries::Registries;
use super::store::ImageStore;
use crate::{Image, RegistryAuth, Result};

pub use super::gc::Removal;
pub use super::preload::{PreloadOutcome, Preloaded};

/// Kubernetes' kubelet defaults: `imageGCHighThresholdPercent`, `imageGCLowThresholdPercent`,
/// `imageMinimumGCAge`.
pub const IMAGE_GC_HIGH_PERCENT: u8 = 85;
pub const IMAGE_GC_LOW_PERCENT: u8 = 80;
pub const IMAGE_MINIMUM_GC_AGE: Duration = Duration::from_secs(120);

pub struct ImageManager {
    store: Arc<ImageStore>,
    containers: PathBuf,
    /// Layers never change once made, so their sizes are measured once.
    layer_sizes: Mutex<HashMap<String, u64>>,
}

/// What a prune or a collection removed, and the bytes it freed on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reclaimed {
    pub removed: Vec<Removal>,
    pub bytes: u64,
}

impl ImageManager {
    /// The image store of the runtime whose state is under `runtime_root` (`<data-dir>/runtime`).
    pub fn open(runtime_root: &Path) -> Result<ImageManager> {
        let store = Arc::new(ImageStore::open(&runtime_root.join("images"))?);
        Ok(Self::with_store(store, runtime_root.join("containers")))
    }

    pub(crate) fn with_store(store: Arc<ImageStore>, containers: PathBuf) -> ImageManager {
        ImageManager { store, containers, layer_sizes: Mutex::new(HashMap::new()) }
    }

    pub(crate) fn store(&self) -> &ImageStore {
        &self.store
    }

    /// Every stored image, one entry per reference (an unnamed image under its ID).
    pub fn list(&self) -> Vec<Image> {
        self.store.list()
    }

    /// The image's unpacked layers on disk, in bytes (Docker's SIZE column).
    pub fn size_of(&self, image: &Image) -> u64 {
        image.layers.iter().map(|l| self.layer_size(l)).sum()
    }

    fn layer_size(&self, diff_id: &str) -> u64 {
        let mut sizes = self.layer_sizes.lock().expect("layer size cache poisoned by a panic");
        if let Some(size) = sizes.get(diff_id) {
            return *size;
        }
        let dir = self.store.layer_dir(diff_id);
        if !dir.is_dir() {
            return 0;
        }
        let size = gc::disk_size(&dir);
        sizes.insert(diff_id.to_string(), size);
        size
    }

    /// True while a pull, import or container creation holds the store, so a removal would wait.
    pub fn busy(&self) -> bool {
        !matches!(self.store.try_lock_exclusive(), Ok(Some(_)))
    }

    /// Imports a `docker save` or OCI layout tarball (plain or gzip'd). Blocking.
    pub fn import(&self, archive: &Path) -> Result<Vec<Image>> {
        let _lock = self.store.lock_shared()?;
        super::archive::import(&self.store, archive)
    }

    /// Imports every archive in `dir` not imported before (see preload.rs). Blocking.
    pub fn import_dir(&self, dir: &Path) -> Result<Vec<Preloaded>> {
        super::preload::import_dir(self, dir)
    }

    /// `docker pull`: pulls `reference` from its registry (or the mirrors `registries` names, with
    /// the credentials it has for each host; `auth` only for the reference's own registry),
    /// telling `progress` each step. Beside a running server, as its own pulls do.
    pub async fn pull(
        &self,
        reference: &str,
        registries: &Registries,
        auth: Option<&RegistryAuth>,
        progress: Option<Arc<dyn PullProgress>>,
    ) -> Result<Pulled> {
        super::pull::pull_reference(&self.store, registries, reference, auth, progress).await
    }

    /// Bytes of blobs this store's pulls fetched from registries since it was opened (the
    /// store is shared with the runtime's pulls when it came from [`crate::Runtime::images`]).
    pub fn downloaded_bytes(&self) -> u64 {
        self.store.downloaded_bytes()
    }

    /// `docker tag SOURCE TARGET`: `target` names the image `source` names (name, ID or prefix).
    pub fn tag(&self, source: &str, target: &str) -> Result<Image> {
        let _lock = self.store.lock_shared()?;
        gc::tag(&self.store, source, target)
    }

    fn users(&self) -> Result<Vec<ImageUser>> {
        gc::users(&self.containers)
    }

    /// `docker rmi`: each key (name, repo digest, ID or ID prefix) is untagged, an image losing its
    /// last name is deleted with whatever content nothing else uses; an image a container uses
    /// is refused. One result per key, in order. Blocking: waits for pulls in flight.
    pub fn remove(&self, keys: &[String], force: bool) -> Result<Vec<Result<Vec<Removal>>>> {
        let _lock = self.store.lock_exclusive()?;
        let users = self.users()?;
        let results: Vec<_> = keys.iter().map(|k| gc::remove(&self.store, &users, k, force)).collect();
        gc::sweep_unreferenced(&self.store, &users)?;
        Ok(results)
    }

    /// Removes every image no container uses. Blocking.
    pub fn prune(&self) -> Result<Reclaimed> {
        let _lock = self.store.lock_exclusive()?;
        let users = self.users()?;
        let removed = gc::prune(&self.store, &users)?;
        let bytes = gc::sweep_unreferenced(&self.store, &users)?;
        Ok(Reclaimed { removed, bytes })
    }

    /// The kubelet's image GC: above `high` percent of the image filesystem used, removes unused
    /// images older than `min_age`, oldest first, down to `low` percent. `None` below `high`.
    pub fn collect_for_disk(&self, high: u8, low: u8, min_age: Duration) -> Result<Option<Reclaimed>> {
        let (usage, to_free) = gc::filesystem_usage(&self.store, low)?;
        if usage < high as u64 {
            return Ok(None);
        }
        tracing::info!(
            usage_percent = usage,
            high_threshold_percent = high,
            bytes_to_free = to_free,
            "image filesystem over its high threshold: removing unused images"
        );
        let _lock = self.store.lock_exclusive()?;
        let users = self.users()?;
        let sizes = |l: &str| self.layer_size(l);
        let (removed, bytes) = gc::collect_for_disk(&self.store, &users, to_free, min_age, &sizes)?;
        Ok(Some(Reclaimed { removed, bytes }))
    }
}

/// `(REPOSITORY, TAG)` as `docker images` shows a reference: familiar names, `<none>` for what
/// is missing (an image known only by its ID or by digest).
pub fn display_name(reference: &str) -> (String, String) {
    if reference.starts_with("sha256:") {
        return ("<none>".into(), "<none>".into());
    }
    let familiar = gc::familiar(reference);
    let name = familiar.split_once('@').map_or(familiar.as_str(), |(n, _)| n);
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    match name[last_slash..].rfind(':') {
        Some(i) => (name[..last_slash + i].to_string(), name[last_slash + i + 1..].to_string()),
        None => (name.to_string(), "<none>".into()),
    }
}

/// The first 12 hex digits of an image ID.
pub fn short_id(id: &str) -> &str {
    gc::short(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_split_repository_and_tag_as_docker_images_does() {
        let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(display_name("docker.io/library/busybox:1.36"), pair("busybox", "1.36"));
        assert_eq!(display_name("127.0.0.1:5000/app:v1"), pair("127.0.0.1:5000/app", "v1"));
        assert_eq!(
            display_name(&format!("localhost:5000/app@sha256:{}", "a".repeat(64))),
            pair("localhost:5000/app", "<none>")
        );
        assert_eq!(display_name("sha256:abc"), pair("<none>", "<none>"));
    }
}
