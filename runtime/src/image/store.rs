//! The content-addressed image store.
//!
//! ```text
//! <root>/images/
//!   blobs/sha256/<hex>        manifests and configs, verified against their digest
//!   layers/<diff id hex>/     one unpacked layer (overlay lower-dir format), made once
//!   layers/.tmp-*/            a layer being unpacked; renamed into place only when whole
//!   tmp/                      downloads in flight
//!   index.json                reference → image, rewritten atomically
//! ```
//! A layer directory exists only once it is complete (unpack into a temp dir, then rename), so
//! a crash mid-pull never leaves a half layer that a later pull would take as done.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use super::unpack::{self, UnpackError};
use crate::state::{io_ctx, read_json, write_atomic, write_json};
use crate::{Error, Image, Result};

pub struct ImageStore {
    root: PathBuf,
    index: Mutex<BTreeMap<String, Image>>,
}

impl ImageStore {
    pub fn open(root: &Path) -> Result<ImageStore> {
        for d in ["blobs/sha256", "layers", "tmp"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(io_ctx(format!("creating {}", p.display())))?;
        }
        // Leftovers of an interrupted pull are incomplete by construction.
        for dir in [root.join("tmp"), root.join("layers")] {
            for e in std::fs::read_dir(&dir).map_err(io_ctx(format!("reading {}", dir.display())))?.flatten() {
                let name = e.file_name();
                if dir.ends_with("tmp") || name.to_string_lossy().starts_with(".tmp-") {
                    let _ = std::fs::remove_dir_all(e.path()).or_else(|_| std::fs::remove_file(e.path()));
                }
            }
        }
        let index = read_json(&root.join("index.json"))?.unwrap_or_default();
        Ok(ImageStore { root: root.to_path_buf(), index: Mutex::new(index) })
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(hex_of(digest))
    }

    pub fn layer_dir(&self, diff_id: &str) -> PathBuf {
        self.root.join("layers").join(hex_of(diff_id))
    }

    pub fn layers_root(&self) -> PathBuf {
        self.root.join("layers")
    }

    pub fn has_layer(&self, diff_id: &str) -> bool {
        self.layer_dir(diff_id).is_dir()
    }

    /// A fresh path under `tmp/` for a download.
    pub fn temp_path(&self, what: &str) -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        self.root.join("tmp").join(format!("{what}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)))
    }

    /// Stores `data` as the blob `digest` after checking that it hashes to it.
    pub fn put_blob(&self, digest: &str, data: &[u8]) -> Result<()> {
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(data)));
        if actual != digest {
            return Err(Error::Io {
                context: format!("storing blob {digest}"),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("content hashes to {actual}")),
            });
        }
        let path = self.blob_path(digest);
        write_atomic(&path, data).map_err(io_ctx(format!("writing {}", path.display())))
    }

    pub fn read_blob(&self, digest: &str) -> Option<Vec<u8>> {
        let data = std::fs::read(self.blob_path(digest)).ok()?;
        // A blob is trusted only while it still matches its name.
        (format!("sha256:{}", hex::encode(Sha256::digest(&data))) == digest).then_some(data)
    }

    /// Unpacks the downloaded layer blob at `blob` into `layers/<diff id>` unless present,
    /// verifying both the blob digest and the diff ID on the way. Blocking.
    pub fn commit_layer(&self, blob: &Path, blob_digest: &str, diff_id: &str) -> Result<()> {
        let dest = self.layer_dir(diff_id);
        if dest.is_dir() {
            return Ok(());
        }
        let tmp = self
            .root
            .join("layers")
            .join(format!(".tmp-{}", self.temp_path("layer").file_name().unwrap().to_string_lossy()));
        std::fs::create_dir(&tmp).map_err(io_ctx(format!("creating {}", tmp.display())))?;
        let result = (|| {
            let file = std::fs::File::open(blob).map_err(io_ctx(format!("opening {}", blob.display())))?;
            let unpack_err = |e: UnpackError| Error::Io {
                context: format!("unpacking layer {blob_digest}"),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            };
            let got = unpack::unpack_layer(file, &tmp).map_err(unpack_err)?;
            if got.blob_digest != blob_digest {
                return Err(unpack_err(UnpackError::Digest { expected: blob_digest.into(), actual: got.blob_digest }));
            }
            if got.diff_id != diff_id {
                return Err(unpack_err(UnpackError::Digest { expected: diff_id.into(), actual: got.diff_id }));
            }
            match std::fs::rename(&tmp, &dest) {
                Ok(()) => Ok(()),
                // Another pull of the same layer finished first: its copy is as good as ours.
                Err(_) if dest.is_dir() => Ok(()),
                Err(e) => Err(io_ctx(format!("renaming {} to {}", tmp.display(), dest.display()))(e)),
            }
        })();
        if tmp.exists() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result
    }

    /// Records `image` under its reference (and keeps earlier references to other images).
    pub fn put_image(&self, image: &Image) -> Result<()> {
        let mut index = self.index.lock().expect("image index lock poisoned by a panic");
        index.insert(image.reference.clone(), image.clone());
        write_json(&self.root.join("index.json"), &*index)
    }

    /// By normalized reference, else by repo digest (`name@sha256:…`) or image ID.
    pub fn find(&self, key: &str) -> Option<Image> {
        let index = self.index.lock().expect("image index lock poisoned by a panic");
        index.get(key).or_else(|| index.values().find(|i| i.repo_digest == key || i.id == key)).cloned()
    }

    pub fn list(&self) -> Vec<Image> {
        self.index.lock().expect("image index lock poisoned by a panic").values().cloned().collect()
    }
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ImageConfig;

    fn image(reference: &str) -> Image {
        Image {
            reference: reference.into(),
            id: "sha256:aa".into(),
            repo_digest: format!("{}@sha256:{}", reference.rsplit_once(':').unwrap().0, "b".repeat(64)),
            config: ImageConfig { cmd: vec!["sh".into()], ..Default::default() },
            layers: vec![],
            size: 1,
        }
    }

    #[test]
    fn the_index_survives_reopening_and_finds_by_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        store.put_image(&image("127.0.0.1:5000/busybox:1")).unwrap();
        drop(store);
        let store = ImageStore::open(dir.path()).unwrap();
        assert_eq!(store.find("127.0.0.1:5000/busybox:1").unwrap().id, "sha256:aa");
        let by_digest = format!("127.0.0.1:5000/busybox@sha256:{}", "b".repeat(64));
        assert!(store.find(&by_digest).is_some());
        assert!(store.find(&format!("127.0.0.1:5000/other@sha256:{}", "b".repeat(64))).is_none());
        assert!(store.find("127.0.0.1:5000/busybox:2").is_none());
    }

    #[test]
    fn a_blob_that_does_not_match_its_digest_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        assert!(store.put_blob("sha256:00", b"x").is_err());
        let d = format!("sha256:{}", hex::encode(Sha256::digest(b"x")));
        store.put_blob(&d, b"x").unwrap();
        assert_eq!(store.read_blob(&d).unwrap(), b"x");
    }

    #[test]
    fn an_interrupted_layer_unpack_is_swept_at_open() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("layers/.tmp-layer-1-0/etc")).unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(store.layers_root()).unwrap().count(), 0);
    }
}
