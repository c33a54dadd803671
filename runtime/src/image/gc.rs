//! Removing images and the content nothing references any more: `docker rmi`'s rules (a name is
//! untagged; the image goes with its last name; an image a container uses stays), prune, and the
//! kubelet's disk-pressure collection.
//!
//! "Used" means: some container the runtime holds (running or exited, under `containers/`)
//! has exactly the image's layers as its lower dirs. Containers name their layers, not their
//! image, and layers are what removing an image would pull from under them. Everything here
//! runs under the store's exclusive lock, so no pull, import or container creation is half done.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::reference::Reference;
use super::store::ImageStore;
use crate::rootfs::{CONFIG, ContainerDir};
use crate::{ContainerState, Error, Image, Result};

/// A container the runtime holds, with the layers it runs on.
#[derive(Debug, Clone)]
pub struct ImageUser {
    pub container_id: String,
    /// The Kubernetes container name.
    pub name: String,
    pub sandbox_id: String,
    pub running: bool,
    /// Layer hexes (no `sha256:`), lowest first.
    layers: Vec<String>,
}

impl ImageUser {
    fn uses(&self, image: &Image) -> bool {
        !image.layers.is_empty()
            && self.layers.len() == image.layers.len()
            && self.layers.iter().zip(&image.layers).all(|(a, b)| a == hex_of(b))
    }

    fn describe(&self) -> String {
        format!(
            "{} container {} ({} in pod sandbox {})",
            if self.running { "running" } else { "stopped" },
            short(&self.container_id),
            self.name,
            self.sandbox_id
        )
    }
}

/// One line of what a removal did, as `docker rmi` prints them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// A name (familiar form: `busybox:1.36`) no longer points at its image.
    Untagged(String),
    /// The image (its `sha256:` ID) is gone.
    Deleted(String),
}

/// Every container under `containers_root` whose config names its layers.
pub fn users(containers_root: &Path) -> Result<Vec<ImageUser>> {
    let entries = match std::fs::read_dir(containers_root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(crate::state::io_ctx(format!("reading {}", containers_root.display()))(e)),
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        let dir = ContainerDir(e.path());
        // A container still being created has no config yet; its creator holds the store lock
        // shared, so none is half made while this runs.
        let Ok(spec) = oci_spec::runtime::Spec::load(dir.file(CONFIG)) else { continue };
        let Ok(meta) = crate::container::Meta::from_spec(&spec) else { continue };
        let running = !matches!(crate::container::state(&dir), Ok(ContainerState::Exited(_)));
        out.push(ImageUser {
            container_id: id,
            name: meta.name,
            sandbox_id: meta.sandbox_id,
            running,
            layers: meta.layers,
        });
    }
    out.sort_by(|a, b| a.container_id.cmp(&b.container_id));
    Ok(out)
}

/// Removes `key` (a name, a repo digest, or an image ID or unique prefix of one) from the
/// store as `docker rmi` does. The caller holds the exclusive lock.
pub fn remove(store: &ImageStore, users: &[ImageUser], key: &str, force: bool) -> Result<Vec<Removal>> {
    let images = store.list();
    let (targets, by_id) = resolve(&images, key)?;
    let id = targets[0].id.clone();
    if by_id && !force {
        let repositories: BTreeSet<String> =
            targets.iter().filter_map(|i| Reference::parse(&i.reference).ok()).map(|r| r.name()).collect();
        if repositories.len() > 1 {
            return Err(Error::ImageConflict(format!(
                "conflict: unable to delete {} (must be forced) - image is referenced in multiple repositories",
                short(&id)
            )));
        }
    }
    let remaining = images.iter().filter(|i| i.id == id && !targets.iter().any(|t| t.reference == i.reference));
    let last = remaining.count() == 0;
    if last && let Some(user) = users.iter().find(|u| u.uses(&targets[0])) {
        let message = if by_id {
            format!(
                "conflict: unable to delete {} (cannot be forced) - image is being used by {}",
                short(&id),
                user.describe()
            )
        } else {
            format!(
                "conflict: unable to remove repository reference {key:?} (cannot be forced) - {} is using its referenced image {}",
                user.describe(),
                short(&id)
            )
        };
        return Err(Error::ImageConflict(message));
    }
    let references: Vec<String> = targets.iter().map(|t| t.reference.clone()).collect();
    store.update_index(|index| {
        for r in &references {
            index.remove(r);
        }
        (true, ())
    })?;
    let mut out: Vec<Removal> =
        references.iter().filter(|r| !r.starts_with("sha256:")).map(|r| Removal::Untagged(familiar(r))).collect();
    if last {
        out.push(Removal::Deleted(id));
    }
    Ok(out)
}

/// The images `key` names: (their index entries, whether `key` was an ID).
pub fn resolve(images: &[Image], key: &str) -> Result<(Vec<Image>, bool)> {
    if let Ok(r) = Reference::parse(key) {
        let normalized = r.to_string();
        if let Some(i) = images.iter().find(|i| i.reference == normalized) {
            return Ok((vec![i.clone()], false));
        }
        if r.digest.is_some() {
            let wanted = format!("{}@{}", r.name(), r.digest.as_deref().unwrap_or_default());
            let found: Vec<Image> = images.iter().filter(|i| i.repo_digest == wanted).cloned().collect();
            if !found.is_empty() {
                return Ok((found, false));
            }
        }
    }
    let hex = key.strip_prefix("sha256:").unwrap_or(key);
    if !hex.is_empty() && hex.len() <= 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        let ids: BTreeSet<&str> =
            images.iter().map(|i| i.id.as_str()).filter(|id| hex_of(id).starts_with(hex)).collect();
        if ids.len() > 1 {
            return Err(Error::ImageConflict(format!(
                "image ID prefix {key:?} is ambiguous: it matches {} images",
                ids.len()
            )));
        }
        if let Some(id) = ids.into_iter().next() {
            return Ok((images.iter().filter(|i| i.id == id).cloned().collect(), true));
        }
    }
    Err(Error::NoSuchImage(key.to_string()))
}

/// `docker tag`: records the image `source` names under `target` too (replacing what `target`
/// named before, which keeps its own other names).
pub fn tag(store: &ImageStore, source: &str, target: &str) -> Result<Image> {
    let (found, _) = resolve(&store.list(), source)?;
    let r =
        Reference::parse(target).map_err(|e| Error::InvalidReference { reference: target.to_string(), source: e })?;
    if r.digest.is_some() {
        return Err(Error::InvalidReference {
            reference: target.to_string(),
            source: super::reference::ReferenceError::Tag("a tag, not a digest".into()),
        });
    }
    let image = &found[0];
    let digest = image.repo_digest.rsplit_once('@').map_or(image.repo_digest.as_str(), |(_, d)| d);
    let tagged = Image { reference: r.to_string(), repo_digest: format!("{}@{digest}", r.name()), ..image.clone() };
    store.update_index(|index| {
        // A named image is no longer listed as `<none>` under its ID.
        index.remove(&tagged.id);
        index.insert(tagged.reference.clone(), tagged.clone());
        (true, ())
    })?;
    Ok(tagged)
}

/// Removes every image no container uses (all its names). The caller holds the exclusive lock.
pub fn prune(store: &ImageStore, users: &[ImageUser]) -> Result<Vec<Removal>> {
    let images = store.list();
    let unused: Vec<&Image> = images.iter().filter(|i| !users.iter().any(|u| u.uses(i))).collect();
    remove_all(store, &unused)
}

/// Drops every reference of `images` from the index.
fn remove_all(store: &ImageStore, images: &[&Image]) -> Result<Vec<Removal>> {
    if images.is_empty() {
        return Ok(Vec::new());
    }
    let references: HashSet<String> = images.iter().map(|i| i.reference.clone()).collect();
    store.update_index(|index| {
        index.retain(|r, _| !references.contains(r));
        (true, ())
    })?;
    let mut out = Vec::new();
    let mut by_id: BTreeMap<&str, Vec<&Image>> = BTreeMap::new();
    for i in images {
        by_id.entry(&i.id).or_default().push(i);
    }
    let left: HashSet<String> = store.list().into_iter().map(|i| i.id).collect();
    for (id, names) in by_id {
        out.extend(
            names
                .iter()
                .filter(|i| !i.reference.starts_with("sha256:"))
                .map(|i| Removal::Untagged(familiar(&i.reference))),
        );
        if !left.contains(id) {
            out.push(Removal::Deleted(id.to_string()));
        }
    }
    Ok(out)
}

/// Deletes every layer and blob that neither an image of the index nor a container refers to;
/// returns the bytes freed. The caller holds the exclusive lock.
pub fn sweep_unreferenced(store: &ImageStore, users: &[ImageUser]) -> Result<u64> {
    let images = store.list();
    let mut live_layers: HashSet<String> = users.iter().flat_map(|u| u.layers.iter().cloned()).collect();
    let mut live_blobs: HashSet<String> = HashSet::new();
    for i in &images {
        live_layers.extend(i.layers.iter().map(|l| hex_of(l).to_string()));
        live_blobs.insert(hex_of(&i.id).to_string());
        let top = i.repo_digest.rsplit_once('@').map_or(i.repo_digest.as_str(), |(_, d)| d);
        live_blobs.insert(hex_of(top).to_string());
        // An image index keeps the platform manifests it lists (only the chosen one is stored).
        if let Some(body) = store.read_blob(top)
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body)
            && let Some(list) = v.get("manifests").and_then(|m| m.as_array())
        {
            live_blobs.extend(list.iter().filter_map(|d| d["digest"].as_str()).map(|d| hex_of(d).to_string()));
        }
    }
    let mut freed = 0;
    for (root, live, is_layer) in [(store.layers_root(), &live_layers, true), (store.blobs_root(), &live_blobs, false)]
    {
        let entries = std::fs::read_dir(&root).map_err(crate::state::io_ctx(format!("reading {}", root.display())))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // `.tmp-*` layers and `.<blob>.tmp-*` files are writes in flight of another opener.
            if name.starts_with('.') || live.contains(&name) {
                continue;
            }
            let path = e.path();
            let size = disk_size(&path);
            let removed = if is_layer { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            match removed {
                Ok(()) => freed += size,
                Err(err) => tracing::warn!(path = %path.display(), error = %err, "removing unreferenced image content"),
            }
        }
    }
    Ok(freed)
}

/// The image filesystem as Kubernetes' image GC sees it: (percent used, bytes to free to get
/// down to `low` percent).
pub fn filesystem_usage(store: &ImageStore, low: u8) -> Result<(u64, u64)> {
    let stat = nix::sys::statvfs::statvfs(store.root())
        .map_err(|e| crate::state::io_ctx(format!("statfs {}", store.root().display()))(e.into()))?;
    let block = stat.fragment_size() as u64;
    let capacity = stat.blocks() as u64 * block;
    let available = stat.blocks_available() as u64 * block;
    if capacity == 0 {
        return Ok((0, 0));
    }
    let usage = 100 - available * 100 / capacity;
    let to_free = (capacity * (100 - low.min(100) as u64) / 100).saturating_sub(available);
    Ok((usage, to_free))
}

/// Removes unused images, oldest first (by when they were stored) and none younger than
/// `min_age`, until their layers add up to `to_free` bytes. Returns what it removed and the
/// bytes freed. The caller holds the exclusive lock.
pub fn collect_for_disk(
    store: &ImageStore,
    users: &[ImageUser],
    to_free: u64,
    min_age: Duration,
    layer_size: &dyn Fn(&str) -> u64,
) -> Result<(Vec<Removal>, u64)> {
    let goal = to_free;
    let images = store.list();
    let mut by_id: BTreeMap<&str, Vec<&Image>> = BTreeMap::new();
    for i in images.iter().filter(|i| !users.iter().any(|u| u.uses(i))) {
        by_id.entry(&i.id).or_default().push(i);
    }
    let now = SystemTime::now();
    let mut candidates: Vec<(SystemTime, &str)> = by_id
        .keys()
        .map(|id| {
            let added = std::fs::metadata(store.blob_path(id)).and_then(|m| m.modified()).unwrap_or(now);
            (added, *id)
        })
        .filter(|(added, _)| now.duration_since(*added).unwrap_or_default() >= min_age)
        .collect();
    candidates.sort();
    let mut chosen = Vec::new();
    let mut estimate = 0;
    let mut counted: HashSet<&str> = HashSet::new();
    for (_, id) in candidates {
        if estimate >= goal {
            break;
        }
        for i in &by_id[id] {
            for l in &i.layers {
                if counted.insert(l) {
                    estimate += layer_size(l);
                }
            }
        }
        chosen.extend(by_id[id].iter().copied());
    }
    let removed = remove_all(store, &chosen)?;
    let freed = sweep_unreferenced(store, users)?;
    Ok((removed, freed))
}

/// Bytes on disk under `path` (each hard-linked file once).
pub fn disk_size(path: &Path) -> u64 {
    fn walk(path: &Path, seen: &mut HashSet<(u64, u64)>) -> u64 {
        let Ok(m) = std::fs::symlink_metadata(path) else { return 0 };
        if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
            return 0;
        }
        let mut total = if m.is_dir() { 0 } else { m.len() };
        if m.is_dir()
            && let Ok(entries) = std::fs::read_dir(path)
        {
            total += entries.flatten().map(|e| walk(&e.path(), seen)).sum::<u64>();
        }
        total
    }
    walk(path, &mut HashSet::new())
}

/// How Docker names an image to people: `busybox:1.36` for `docker.io/library/busybox:1.36`,
/// `user/app:v1` for Docker Hub users, the full name elsewhere.
pub fn familiar(reference: &str) -> String {
    let rest = reference.strip_prefix("docker.io/").map(|r| r.strip_prefix("library/").unwrap_or(r));
    rest.unwrap_or(reference).to_string()
}

/// The first 12 hex digits of an ID, as Docker shows them.
pub fn short(id: &str) -> &str {
    let hex = hex_of(id);
    &hex[..hex.len().min(12)]
}

pub(crate) fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ImageConfig;

    fn image(reference: &str, id: &str, layers: &[&str]) -> Image {
        Image {
            reference: reference.into(),
            id: format!("sha256:{id}"),
            repo_digest: String::new(),
            config: ImageConfig::default(),
            layers: layers.iter().map(|l| format!("sha256:{l}")).collect(),
            size: 1,
        }
    }

    fn user(layers: &[&str]) -> ImageUser {
        ImageUser {
            container_id: "c0ffee".repeat(8),
            name: "app".into(),
            sandbox_id: "pod-uid".into(),
            running: true,
            layers: layers.iter().map(|l| l.to_string()).collect(),
        }
    }

    fn store_with(images: &[Image]) -> (tempfile::TempDir, ImageStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        for i in images {
            store.put_image(i).unwrap();
            for l in &i.layers {
                std::fs::create_dir_all(store.layer_dir(l).join("bin")).unwrap();
                std::fs::write(store.layer_dir(l).join("bin/x"), b"xy").unwrap();
            }
        }
        (dir, store)
    }

    #[test]
    fn familiar_names_drop_docker_hub_and_library() {
        assert_eq!(familiar("docker.io/library/busybox:1.36"), "busybox:1.36");
        assert_eq!(familiar("docker.io/user/app:v1"), "user/app:v1");
        assert_eq!(familiar("127.0.0.1:5000/busybox:1"), "127.0.0.1:5000/busybox:1");
        assert_eq!(short(&format!("sha256:{}", "ab".repeat(32))), "abababababab");
    }

    #[test]
    fn removing_a_name_untags_and_the_last_name_deletes_the_image_and_its_layers() {
        let (_dir, store) = store_with(&[
            image("docker.io/library/busybox:1", "aa", &["l1", "l2"]),
            image("docker.io/library/busybox:2", "aa", &["l1", "l2"]),
            image("docker.io/library/other:1", "bb", &["l1", "l3"]),
        ]);
        let out = remove(&store, &[], "busybox:1", false).unwrap();
        assert_eq!(out, [Removal::Untagged("busybox:1".into())]);
        assert_eq!(sweep_unreferenced(&store, &[]).unwrap(), 0, "the image keeps its layers while named");
        let out = remove(&store, &[], "busybox:2", false).unwrap();
        assert_eq!(out, [Removal::Untagged("busybox:2".into()), Removal::Deleted("sha256:aa".into())]);
        assert!(sweep_unreferenced(&store, &[]).unwrap() > 0);
        assert!(!store.has_layer("sha256:l2"), "only the deleted image used l2");
        assert!(store.has_layer("sha256:l1") && store.has_layer("sha256:l3"), "other:1 keeps its layers");
        let err = remove(&store, &[], "busybox:2", false).unwrap_err();
        assert!(matches!(err, Error::NoSuchImage(_)), "{err}");
    }

    #[test]
    fn an_image_a_container_uses_is_refused_with_a_clear_error() {
        let (_dir, store) = store_with(&[image("docker.io/library/busybox:1", "aa", &["l1", "l2"])]);
        let users = [user(&["l1", "l2"])];
        let err = remove(&store, &users, "busybox:1", false).unwrap_err().to_string();
        assert!(err.contains("unable to remove repository reference \"busybox:1\""), "{err}");
        assert!(err.contains("running container c0ffeec0ffee (app in pod sandbox pod-uid)"), "{err}");
        let err = remove(&store, &users, "aa", true).unwrap_err().to_string();
        assert!(err.contains("image is being used by running container"), "{err}");
        assert!(store.find("docker.io/library/busybox:1").is_some(), "nothing was removed");
        // Another container on a subset of the layers does not use this image.
        assert!(remove(&store, &[user(&["l1"])], "busybox:1", false).is_ok());
    }

    #[test]
    fn removal_by_id_takes_every_name_but_asks_for_force_across_repositories() {
        let id = "abcdef".repeat(10) + "abcd";
        let (_dir, store) = store_with(&[
            image("docker.io/library/busybox:1", &id, &["l1"]),
            image("docker.io/library/copy:1", &id, &["l1"]),
        ]);
        let err = remove(&store, &[], "abcdefabcdef", false).unwrap_err().to_string();
        assert!(err.contains("must be forced") && err.contains("multiple repositories"), "{err}");
        let out = remove(&store, &[], "sha256:abcdefab", true).unwrap();
        assert_eq!(out.len(), 3, "{out:?}");
        assert!(store.list().is_empty());
    }

    #[test]
    fn tagging_adds_a_name_that_removal_then_untags() {
        let (_dir, store) = store_with(&[image("sha256:aa", "aa", &["l1"])]);
        let tagged = tag(&store, "aa", "app:v1").unwrap();
        assert_eq!((tagged.reference.as_str(), tagged.id.as_str()), ("docker.io/library/app:v1", "sha256:aa"));
        assert_eq!(store.find("docker.io/library/app:v1").unwrap().layers, ["sha256:l1"]);
        assert!(matches!(tag(&store, "nope:1", "x:1").unwrap_err(), Error::NoSuchImage(_)));
        assert!(tag(&store, "app:v1", "Bad Name").is_err());
        assert_eq!(store.list().len(), 1, "no `<none>` entry is left beside the name");
        assert_eq!(
            remove(&store, &[], "app:v1", false).unwrap(),
            [Removal::Untagged("app:v1".into()), Removal::Deleted("sha256:aa".into())]
        );
    }

    #[test]
    fn prune_keeps_used_images_and_reports_what_it_removed() {
        let (_dir, store) = store_with(&[
            image("docker.io/library/used:1", "aa", &["l1"]),
            image("docker.io/library/idle:1", "bb", &["l2"]),
            image("sha256:cc", "cc", &["l3"]),
        ]);
        let users = [user(&["l1"])];
        let out = prune(&store, &users).unwrap();
        assert_eq!(
            out,
            [
                Removal::Untagged("idle:1".into()),
                Removal::Deleted("sha256:bb".into()),
                Removal::Deleted("sha256:cc".into())
            ]
        );
        let freed = sweep_unreferenced(&store, &users).unwrap();
        assert_eq!(freed, 4, "two one-file layers of 2 bytes each");
        assert_eq!(store.list().len(), 1);
        assert!(store.has_layer("sha256:l1"));
    }

    #[test]
    fn disk_pressure_collection_removes_unused_images_oldest_first_and_spares_young_ones() {
        let (_dir, store) = store_with(&[
            image("docker.io/library/used:1", "aa", &["l1"]),
            image("docker.io/library/old:1", "bb", &["l2"]),
            image("docker.io/library/new:1", "cc", &["l3"]),
        ]);
        for (id, age) in [("bb", 3600), ("cc", 60)] {
            let blob = std::fs::File::create(store.blob_path(id)).unwrap();
            blob.set_modified(SystemTime::now() - Duration::from_secs(age)).unwrap();
        }
        let (usage, to_free) = filesystem_usage(&store, 0).unwrap();
        assert!(usage <= 100 && to_free > 0, "({usage}, {to_free})");
        let users = [user(&["l1"])];
        let (removed, _) = collect_for_disk(&store, &users, 1, Duration::ZERO, &|_| 1).unwrap();
        assert_eq!(removed, [Removal::Untagged("old:1".into()), Removal::Deleted("sha256:bb".into())]);
        let (removed, _) = collect_for_disk(&store, &users, u64::MAX, Duration::from_secs(120), &|_| 1).unwrap();
        assert_eq!(removed, [], "new:1 is younger than the minimum age");
        let (removed, _) = collect_for_disk(&store, &users, u64::MAX, Duration::ZERO, &|_| 1).unwrap();
        assert_eq!(removed, [Removal::Untagged("new:1".into()), Removal::Deleted("sha256:cc".into())]);
        assert!(store.has_layer("sha256:l1") && !store.has_layer("sha256:l3"));
    }
}
