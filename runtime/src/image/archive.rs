//! Importing image archives into the store: `docker save` tarballs (`manifest.json` with
//! `Config`, `RepoTags` and `Layers`, legacy `<id>/layer.tar` or Docker 25's `blobs/sha256/…`)
//! and OCI image layout tarballs (`oci-layout`, `index.json`, `blobs/`), plain or gzip'd.
//!
//! The archive is unpacked into the store's `tmp/` (swept at open), its files are found with
//! symlinks resolved inside that directory only (an archive's symlink must not make the
//! runtime read a host file), every layer is checked against the config's diff IDs and
//! unpacked once ([`ImageStore::commit_layer`] skips layers already present), then each image
//! is recorded under its references. A `docker save` image has no registry manifest: an OCI
//! manifest of its uncompressed layers is made and stored, and its digest is the repo digest.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::pull::{go_arch, parse_config};
use super::reference::Reference;
use super::store::ImageStore;
use crate::state::io_ctx;
use crate::{Error, Image, Result};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// containerd's annotation with the full image name; the OCI one often holds only a tag.
const CONTAINERD_NAME: &str = "io.containerd.image.name";
const OCI_REF_NAME: &str = "org.opencontainers.image.ref.name";

fn bad(archive: &Path, message: impl std::fmt::Display) -> Error {
    Error::Io {
        context: format!("importing {}", archive.display()),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, message.to_string()),
    }
}

fn sha256_hex(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Imports every image of the archive at `path`. Blocking.
pub fn import(store: &ImageStore, path: &Path) -> Result<Vec<Image>> {
    let dir = store.temp_path("import");
    std::fs::create_dir_all(&dir).map_err(io_ctx(format!("creating {}", dir.display())))?;
    let result = (|| {
        extract(path, &dir)?;
        let archive = Archive { path, root: &dir };
        if archive.file("manifest.json").is_ok_and(|p| p.is_file()) {
            import_docker(store, &archive)
        } else if archive.file("index.json").is_ok_and(|p| p.is_file()) {
            import_oci(store, &archive)
        } else {
            Err(bad(path, "neither a docker save archive (manifest.json) nor an OCI layout (index.json)"))
        }
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn extract(path: &Path, dest: &Path) -> Result<()> {
    let file = std::fs::File::open(path).map_err(io_ctx(format!("opening {}", path.display())))?;
    let mut reader = BufReader::new(file);
    let gzip = reader.fill_buf().map_err(io_ctx(format!("reading {}", path.display())))?.starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn Read> = if gzip { Box::new(flate2::bufread::GzDecoder::new(reader)) } else { Box::new(reader) };
    let mut tar = tar::Archive::new(reader);
    tar.set_preserve_permissions(false);
    tar.set_preserve_ownerships(false);
    // `unpack` refuses entries whose paths leave `dest`.
    tar.unpack(dest).map_err(|e| bad(path, format!("unpacking the archive: {e}")))
}

struct Archive<'a> {
    path: &'a Path,
    root: &'a Path,
}

impl Archive<'_> {
    /// A file of the archive, symlinks resolved inside it.
    fn file(&self, name: &str) -> Result<PathBuf> {
        crate::mount::secure_join(self.root, Path::new(name)).map_err(|e| bad(self.path, e))
    }

    fn read(&self, name: &str) -> Result<Vec<u8>> {
        let p = self.file(name)?;
        std::fs::read(&p).map_err(|e| bad(self.path, format!("{name}: {e}")))
    }

    fn blob_name(digest: &str) -> String {
        format!("blobs/sha256/{}", digest.strip_prefix("sha256:").unwrap_or(digest))
    }

    /// A blob of an OCI layout, checked against its digest.
    fn blob(&self, digest: &str) -> Result<Vec<u8>> {
        let data = self.read(&Self::blob_name(digest))?;
        if sha256_hex(&data) != digest {
            return Err(bad(self.path, format!("blob {digest} does not match its digest")));
        }
        Ok(data)
    }
}

/// Unpacks one layer file unless present; its diff ID must match the config's.
fn commit_layer(store: &ImageStore, archive: &Archive, name: &str, diff_id: &str) -> Result<()> {
    if store.has_layer(diff_id) {
        return Ok(());
    }
    let path = archive.file(name)?;
    let mut file = std::fs::File::open(&path).map_err(|e| bad(archive.path, format!("{name}: {e}")))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| bad(archive.path, format!("{name}: {e}")))?;
    let blob_digest = format!("sha256:{}", hex::encode(hasher.finalize()));
    store.commit_layer(&path, &blob_digest, diff_id)
}

fn import_docker(store: &ImageStore, archive: &Archive) -> Result<Vec<Image>> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Entry {
        config: String,
        #[serde(default)]
        repo_tags: Option<Vec<String>>,
        layers: Vec<String>,
    }
    let entries: Vec<Entry> = serde_json::from_slice(&archive.read("manifest.json")?)
        .map_err(|e| bad(archive.path, format!("manifest.json: {e}")))?;
    let mut images = Vec::new();
    for entry in entries {
        let config_bytes = archive.read(&entry.config)?;
        let id = sha256_hex(&config_bytes);
        let (config, diff_ids) = parse_config(&archive.path.display().to_string(), &config_bytes)?;
        if diff_ids.len() != entry.layers.len() {
            return Err(bad(
                archive.path,
                format!(
                    "{} lists {} layers but its config {} diff IDs",
                    entry.config,
                    entry.layers.len(),
                    diff_ids.len()
                ),
            ));
        }
        for (layer, diff_id) in entry.layers.iter().zip(&diff_ids) {
            commit_layer(store, archive, layer, diff_id)?;
        }
        store.put_blob(&id, &config_bytes)?;
        // The manifest a registry would serve for these uncompressed layers.
        let mut layers = Vec::new();
        let mut size = config_bytes.len() as u64;
        for (layer, diff_id) in entry.layers.iter().zip(&diff_ids) {
            let len = std::fs::metadata(archive.file(layer)?).map(|m| m.len()).unwrap_or(0);
            size += len;
            layers.push(serde_json::json!({"mediaType": OCI_LAYER_TAR, "digest": diff_id, "size": len}));
        }
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": id, "size": config_bytes.len()},
            "layers": layers,
        }))
        .map_err(|e| bad(archive.path, e))?;
        let manifest_digest = sha256_hex(&manifest);
        store.put_blob(&manifest_digest, &manifest)?;
        let tags = entry.repo_tags.unwrap_or_default();
        let base =
            Image { reference: id.clone(), id: id.clone(), repo_digest: String::new(), config, layers: diff_ids, size };
        images.extend(record(store, archive, base, &tags, &manifest_digest)?);
    }
    Ok(images)
}

/// Records `image` under each of `names` (or under its ID when it has none).
fn record(store: &ImageStore, archive: &Archive, image: Image, names: &[String], digest: &str) -> Result<Vec<Image>> {
    let mut out = Vec::new();
    if !names.is_empty() {
        // An earlier import of the same image without a name listed it under its ID.
        store.update_index(|index| (index.remove(&image.id).is_some(), ()))?;
    }
    for name in names {
        let r = Reference::parse(name).map_err(|e| bad(archive.path, format!("image name {name:?}: {e}")))?;
        let image = Image { reference: r.to_string(), repo_digest: format!("{}@{digest}", r.name()), ..image.clone() };
        store.put_image(&image)?;
        out.push(image);
    }
    if names.is_empty() {
        let image = Image { repo_digest: digest.to_string(), ..image };
        store.put_image(&image)?;
        out.push(image);
    }
    Ok(out)
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    annotations: std::collections::HashMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(serde::Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(serde::Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

fn import_oci(store: &ImageStore, archive: &Archive) -> Result<Vec<Image>> {
    let index: Index = serde_json::from_slice(&archive.read("index.json")?)
        .map_err(|e| bad(archive.path, format!("index.json: {e}")))?;
    let mut images = Vec::new();
    for top in &index.manifests {
        let names: Vec<String> = top
            .annotations
            .get(CONTAINERD_NAME)
            .or_else(|| top.annotations.get(OCI_REF_NAME).filter(|n| n.contains('/') || n.contains(':')))
            .cloned()
            .into_iter()
            .collect();
        let mut body = archive.blob(&top.digest)?;
        store.put_blob(&top.digest, &body)?;
        let manifest_digest = top.digest.clone();
        let is_index = |media_type: &str, body: &[u8]| {
            media_type == OCI_INDEX
                || media_type == DOCKER_LIST
                || serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|v| v.get("manifests").is_some())
        };
        if is_index(&top.media_type, &body) {
            let nested: Index = serde_json::from_slice(&body).map_err(|e| bad(archive.path, e))?;
            let chosen = nested
                .manifests
                .iter()
                .find(|d| d.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == go_arch()))
                .ok_or_else(|| bad(archive.path, format!("no linux/{} manifest in {}", go_arch(), top.digest)))?;
            // As with a pull, the index digest (`manifest_digest`) is the one Kubernetes shows.
            body = archive.blob(&chosen.digest)?;
            store.put_blob(&chosen.digest, &body)?;
        }
        #[derive(serde::Deserialize)]
        struct Manifest {
            config: Descriptor,
            layers: Vec<Descriptor>,
        }
        let manifest: Manifest = serde_json::from_slice(&body).map_err(|e| bad(archive.path, e))?;
        let config_bytes = archive.blob(&manifest.config.digest)?;
        let (config, diff_ids) = parse_config(&archive.path.display().to_string(), &config_bytes)?;
        if diff_ids.len() != manifest.layers.len() {
            return Err(bad(archive.path, format!("manifest {} and its config disagree on the layers", top.digest)));
        }
        for (layer, diff_id) in manifest.layers.iter().zip(&diff_ids) {
            if store.has_layer(diff_id) {
                continue;
            }
            let path = archive.file(&Archive::blob_name(&layer.digest))?;
            store.commit_layer(&path, &layer.digest, diff_id)?;
        }
        store.put_blob(&manifest.config.digest, &config_bytes)?;
        let size = config_bytes.len() as u64
            + manifest
                .layers
                .iter()
                .map(|l| {
                    archive
                        .file(&Archive::blob_name(&l.digest))
                        .ok()
                        .and_then(|p| p.metadata().ok())
                        .map_or(0, |m| m.len())
                })
                .sum::<u64>();
        let id = manifest.config.digest.clone();
        let base = Image { reference: id.clone(), id, repo_digest: String::new(), config, layers: diff_ids, size };
        images.extend(record(store, archive, base, &names, &manifest_digest)?);
    }
    Ok(images)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(b: &mut tar::Builder<impl std::io::Write>, name: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        b.append_data(&mut h, name, data).unwrap();
    }

    /// An uncompressed layer holding `/hello`, and an image config over it.
    fn layer_and_config(content: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut b = tar::Builder::new(Vec::new());
        file(&mut b, "hello", content);
        let layer = b.into_inner().unwrap();
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": go_arch(), "os": "linux",
            "config": {"Cmd": ["/hello"], "Env": ["A=b"]},
            "rootfs": {"type": "layers", "diff_ids": [sha256_hex(&layer)]},
        }))
        .unwrap();
        (layer, config)
    }

    fn docker_save(path: &Path, tags: &[&str]) -> (String, String) {
        let (layer, config) = layer_and_config(b"saved");
        let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
        file(&mut b, "abc/layer.tar", &layer);
        file(&mut b, "cfg.json", &config);
        let manifest = serde_json::json!([{"Config": "cfg.json", "RepoTags": tags, "Layers": ["abc/layer.tar"]}]);
        file(&mut b, "manifest.json", &serde_json::to_vec(&manifest).unwrap());
        b.finish().unwrap();
        (sha256_hex(&config), sha256_hex(&layer))
    }

    fn oci_layout(path: &Path, ref_name: &str) -> (String, String) {
        let (layer, config) = layer_and_config(b"oci");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &layer).unwrap();
        let gz = gz.finish().unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256_hex(&config), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha256_hex(&gz), "size": gz.len()}],
        }))
        .unwrap();
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": OCI_MANIFEST, "digest": sha256_hex(&manifest), "size": manifest.len(),
            "annotations": {OCI_REF_NAME: ref_name},
        }]});
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            std::fs::File::create(path).unwrap(),
            flate2::Compression::fast(),
        ));
        file(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
        file(&mut b, "index.json", &serde_json::to_vec(&index).unwrap());
        for blob in [&gz, &config, &manifest] {
            file(&mut b, &Archive::blob_name(&sha256_hex(blob)), blob);
        }
        b.into_inner().unwrap().finish().unwrap();
        (sha256_hex(&config), sha256_hex(&manifest))
    }

    #[test]
    fn a_docker_save_archive_is_recorded_under_each_tag_and_a_second_import_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(&dir.path().join("store")).unwrap();
        let archive = dir.path().join("saved.tar");
        let (id, diff_id) = docker_save(&archive, &["busybox:saved", "127.0.0.1:5000/app:v1"]);
        let images = import(&store, &archive).unwrap();
        let references: Vec<&str> = images.iter().map(|i| i.reference.as_str()).collect();
        assert_eq!(references, ["docker.io/library/busybox:saved", "127.0.0.1:5000/app:v1"]);
        assert!(images.iter().all(|i| i.id == id && i.layers == [diff_id.clone()]));
        assert_eq!(images[0].config.cmd, ["/hello"]);
        assert!(images[1].repo_digest.starts_with("127.0.0.1:5000/app@sha256:"), "{}", images[1].repo_digest);
        assert_eq!(std::fs::read(store.layer_dir(&diff_id).join("hello")).unwrap(), b"saved");

        let index_before = std::fs::read(store.root().join("index.json")).unwrap();
        let layers = || std::fs::read_dir(store.layers_root()).unwrap().count();
        let layers_before = layers();
        assert_eq!(import(&store, &archive).unwrap(), images);
        assert_eq!(std::fs::read(store.root().join("index.json")).unwrap(), index_before, "the index is untouched");
        assert_eq!(layers(), layers_before);
        assert_eq!(std::fs::read_dir(store.root().join("tmp")).unwrap().count(), 0, "the unpacked archive is removed");
    }

    #[test]
    fn an_oci_layout_is_named_by_its_ref_name_annotation_or_else_by_its_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(&dir.path().join("store")).unwrap();
        let archive = dir.path().join("layout.tar.gz");
        let (id, manifest) = oci_layout(&archive, "skiff.test/app:1");
        let images = import(&store, &archive).unwrap();
        assert_eq!(images.len(), 1);
        assert_eq!(images[0].reference, "skiff.test/app:1");
        assert_eq!(images[0].id, id);
        assert_eq!(images[0].repo_digest, format!("skiff.test/app@{manifest}"));
        assert!(store.read_blob(&manifest).is_some() && store.read_blob(&id).is_some());

        // A bare tag names no repository: the image is kept under its ID, as `docker load` of
        // an untagged image shows `<none>`.
        let (id, _) = oci_layout(&archive, "latest");
        let images = import(&store, &archive).unwrap();
        assert_eq!(images[0].reference, id);
        assert_eq!(store.find(&id).unwrap().reference, id);
    }

    #[test]
    fn symlinks_in_an_archive_never_reach_host_files() {
        let dir = tempfile::tempdir().unwrap();
        let tar_path = dir.path().join("evil.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&tar_path).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_cksum();
        b.append_link(&mut h, "manifest.json", "/etc/hostname").unwrap();
        b.finish().unwrap();
        let store = ImageStore::open(&dir.path().join("store")).unwrap();
        let err = import(&store, &tar_path).unwrap_err().to_string();
        assert!(err.contains("neither a docker save archive"), "{err}");
        assert_eq!(
            std::fs::read_dir(dir.path().join("store/tmp")).unwrap().count(),
            0,
            "the unpacked archive is removed"
        );
    }
}
