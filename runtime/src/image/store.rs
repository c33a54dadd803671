//! The content-addressed image store.
//!
//! ```text
//! <root>/images/
//!   blobs/sha256/<hex>        manifests and configs, verified against their digest
//!   layers/<diff id hex>/     one unpacked layer (overlay lower-dir format), made once
//!   layers/.tmp-*/            a layer being unpacked; renamed into place only when whole
//!   tmp/<hex>.partial         a blob download, kept when interrupted so the next pull resumes it
//!   tmp/<hex>.lock            flock: held by the one process downloading that blob
//!   tmp/*                     other downloads in flight
//!   index.json                reference → image, rewritten atomically
//!   gc.lock                   flock: shared while content is added or used, exclusive to delete
//!   index.lock                flock: held for each read-modify-write of index.json
//! ```
//! A layer directory exists only once it is complete (unpack into a temp dir, then rename), so
//! a crash mid-pull never leaves a half layer that a later pull would take as done.
//!
//! More than one process opens the store: the server's runtime, and `skiff image …` beside it.
//! So the index is re-read whenever index.json changed on disk (every write renames a new file
//! into place, so its inode tells), every change re-reads it under `index.lock`, and content
//! is only ever deleted under an exclusive `gc.lock`, which waits for every pull, import and
//! container creation in flight (each holds it shared from its first blob to its last record).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

use super::flight::SingleFlight;
use super::progress::CountingReader;
use super::unpack::{self, UnpackError};
use crate::state::{io_ctx, read_json, write_atomic, write_json};
use crate::{Error, Image, Result};

type Index = BTreeMap<String, Image>;

/// The index as last read, and which file it was read from: (device, inode, size, mtime ns).
#[derive(Default)]
struct Cached {
    identity: Option<(u64, u64, u64, i128)>,
    /// Whether the read came well after the file's mtime. A rewrite within the same timestamp
    /// tick could reuse the inode and keep the size (as git's "racily clean" index entries), so
    /// a file read soon after it was written is read again next time.
    settled: bool,
    index: Index,
}

/// Longer than any filesystem's timestamp granularity that matters here.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

pub struct ImageStore {
    root: PathBuf,
    index: Mutex<Cached>,
    /// Blob downloads in flight in this process, by digest (see flight.rs).
    pub(crate) flights: SingleFlight<()>,
    /// Bytes this store's pulls fetched from registries since it was opened.
    downloaded: AtomicU64,
}

/// A partial download older than this is dropped at open rather than resumed: the registry
/// may have lost the blob, and nothing else would ever remove it.
const PARTIAL_KEPT_FOR: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// A held `gc.lock`; released when dropped (or when the process dies).
pub struct StoreLock {
    _lock: Flock<std::fs::File>,
}

impl ImageStore {
    pub fn open(root: &Path) -> Result<ImageStore> {
        for d in ["blobs/sha256", "layers", "tmp"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(io_ctx(format!("creating {}", p.display())))?;
        }
        let store = ImageStore {
            root: root.to_path_buf(),
            index: Mutex::new(Cached::default()),
            flights: SingleFlight::default(),
            downloaded: AtomicU64::new(0),
        };
        // Leftovers of an interrupted pull are incomplete by construction; while another process
        // holds the lock they may be its downloads in flight, and the next open sweeps them.
        // Partial blob downloads stay (a week): they are what the next pull resumes from, and
        // they are never taken as whole — their bytes are hashed against the digest first.
        if let Some(_lock) = store.try_lock_exclusive()? {
            store.sweep_temporaries();
        }
        store.load_index()?;
        Ok(store)
    }

    fn sweep_temporaries(&self) {
        for dir in [self.root.join("tmp"), self.root.join("layers")] {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for e in entries.flatten() {
                let name = e.file_name();
                if dir.ends_with("tmp") && is_recent_partial(&e) {
                    continue;
                }
                if dir.ends_with("tmp") || name.to_string_lossy().starts_with(".tmp-") {
                    let _ = std::fs::remove_dir_all(e.path()).or_else(|_| std::fs::remove_file(e.path()));
                }
            }
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn lock_file(&self, name: &str) -> Result<std::fs::File> {
        let path = self.root.join(name);
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_ctx(format!("opening {}", path.display())))
    }

    fn flock(&self, name: &str, arg: FlockArg) -> Result<Option<Flock<std::fs::File>>> {
        let mut file = self.lock_file(name)?;
        loop {
            match Flock::lock(file, arg) {
                Ok(lock) => return Ok(Some(lock)),
                Err((f, nix::errno::Errno::EINTR)) => file = f,
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
                Err((_, errno)) => {
                    let path = self.root.join(name);
                    return Err(io_ctx(format!("locking {}", path.display()))(std::io::Error::from(errno)));
                }
            }
        }
    }

    /// Holds off deletions while content is added or about to be used. Blocking: waits for an
    /// `image rm` or prune in progress.
    pub fn lock_shared(&self) -> Result<StoreLock> {
        let lock = self.flock("gc.lock", FlockArg::LockShared)?.expect("a blocking flock returns a lock");
        Ok(StoreLock { _lock: lock })
    }

    /// Waits until no pull, import or container creation is in flight, then keeps new ones out.
    pub fn lock_exclusive(&self) -> Result<StoreLock> {
        let lock = self.flock("gc.lock", FlockArg::LockExclusive)?.expect("a blocking flock returns a lock");
        Ok(StoreLock { _lock: lock })
    }

    /// The exclusive lock if it is free now.
    pub fn try_lock_exclusive(&self) -> Result<Option<StoreLock>> {
        Ok(self.flock("gc.lock", FlockArg::LockExclusiveNonblock)?.map(|lock| StoreLock { _lock: lock }))
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    /// The index as it is on disk now, re-read only when the file changed since the last read.
    fn load_index(&self) -> Result<Index> {
        let path = self.index_path();
        let (identity, modified) = match std::fs::metadata(&path) {
            Ok(m) => (
                Some((m.dev(), m.ino(), m.len(), m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128)),
                m.modified().ok(),
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, None),
            Err(e) => return Err(io_ctx(format!("reading {}", path.display()))(e)),
        };
        let mut cached = self.index.lock().expect("image index lock poisoned by a panic");
        if identity.is_none() {
            *cached = Cached::default();
        } else if cached.identity != identity || !cached.settled {
            cached.index = read_json(&path)?.unwrap_or_default();
            cached.identity = identity;
            cached.settled = modified
                .and_then(|m| std::time::SystemTime::now().duration_since(m).ok())
                .is_some_and(|age| age > SETTLE);
        }
        Ok(cached.index.clone())
    }

    /// The index for lookups: a store that cannot be read now answers from its last good read.
    fn current_index(&self) -> Index {
        self.load_index().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "re-reading the image index");
            self.index.lock().expect("image index lock poisoned by a panic").index.clone()
        })
    }

    /// Applies `change` to the index as it is on disk, under `index.lock`, and writes it back
    /// when `change` says it changed something.
    pub fn update_index<T>(&self, change: impl FnOnce(&mut Index) -> (bool, T)) -> Result<T> {
        let _lock = self.flock("index.lock", FlockArg::LockExclusive)?;
        let mut index = self.load_index()?;
        let (changed, out) = change(&mut index);
        if changed {
            write_json(&self.index_path(), &index)?;
            self.load_index()?;
        }
        Ok(out)
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(hex_of(digest))
    }

    pub fn blobs_root(&self) -> PathBuf {
        self.root.join("blobs/sha256")
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

    /// Where the download of blob `digest` is written, and resumed from after an interruption.
    pub fn partial_path(&self, digest: &str) -> PathBuf {
        self.root.join("tmp").join(format!("{}.partial", hex_of(digest)))
    }

    /// Takes the download lock of blob `digest`, waiting while another process (or another
    /// run in this one) downloads it. Blocking.
    pub fn lock_blob_download(&self, digest: &str) -> Result<StoreLock> {
        let name = format!("tmp/{}.lock", hex_of(digest));
        let lock = self.flock(&name, FlockArg::LockExclusive)?.expect("a blocking flock returns a lock");
        Ok(StoreLock { _lock: lock })
    }

    /// Counts bytes fetched from a registry.
    pub(crate) fn count_downloaded(&self, bytes: u64) {
        self.downloaded.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Bytes this store's pulls fetched from registries since it was opened (blobs only).
    pub fn downloaded_bytes(&self) -> u64 {
        self.downloaded.load(Ordering::Relaxed)
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
        self.commit_layer_counted(blob, blob_digest, diff_id, |_| {})
    }

    /// [`Self::commit_layer`], telling `on_read` how many blob bytes the unpack has read so far.
    pub fn commit_layer_counted(
        &self,
        blob: &Path,
        blob_digest: &str,
        diff_id: &str,
        on_read: impl FnMut(u64),
    ) -> Result<()> {
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
            let got = unpack::unpack_layer(CountingReader::new(file, on_read), &tmp).map_err(unpack_err)?;
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
        self.update_index(|index| {
            let changed = index.get(&image.reference) != Some(image);
            index.insert(image.reference.clone(), image.clone());
            (changed, ())
        })
    }

    /// By normalized reference, else by repo digest (`name@sha256:…`) or image ID.
    pub fn find(&self, key: &str) -> Option<Image> {
        let index = self.current_index();
        index.get(key).or_else(|| index.values().find(|i| i.repo_digest == key || i.id == key)).cloned()
    }

    pub fn list(&self) -> Vec<Image> {
        self.current_index().into_values().collect()
    }
}

/// A `<sha256 hex>.partial` file written to within [`PARTIAL_KEPT_FOR`].
fn is_recent_partial(entry: &std::fs::DirEntry) -> bool {
    let name = entry.file_name();
    let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".partial")) else { return false };
    let age = entry.metadata().and_then(|m| m.modified()).ok().and_then(|m| m.elapsed().ok());
    hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) && age.is_some_and(|a| a < PARTIAL_KEPT_FOR)
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
    fn another_opener_sees_each_change_and_no_change_is_lost_between_two() {
        let dir = tempfile::tempdir().unwrap();
        let (server, cli) = (ImageStore::open(dir.path()).unwrap(), ImageStore::open(dir.path()).unwrap());
        assert!(cli.find("127.0.0.1:5000/busybox:1").is_none());
        server.put_image(&image("127.0.0.1:5000/busybox:1")).unwrap();
        assert!(cli.find("127.0.0.1:5000/busybox:1").is_some(), "the CLI sees the server's pull");
        cli.put_image(&image("127.0.0.1:5000/busybox:2")).unwrap();
        // The server's next write starts from the file, not from its own older copy.
        server.put_image(&image("127.0.0.1:5000/busybox:3")).unwrap();
        assert_eq!(cli.list().len(), 3);
        cli.update_index(|index| (index.remove("127.0.0.1:5000/busybox:1").is_some(), ())).unwrap();
        assert!(server.find("127.0.0.1:5000/busybox:1").is_none(), "the server sees the CLI's removal");
        assert_eq!(server.list().len(), 2);
    }

    #[test]
    fn deletions_wait_for_additions_in_flight_and_temporaries_in_use_are_not_swept() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let pulling = store.lock_shared().unwrap();
        let download = store.temp_path("blob");
        std::fs::write(&download, b"half a layer").unwrap();
        let also_pulling = store.lock_shared().unwrap();
        assert!(store.try_lock_exclusive().unwrap().is_none(), "a removal waits while a pull runs");
        let other = ImageStore::open(dir.path()).unwrap();
        assert!(download.exists(), "an opener beside a pull leaves its download alone");
        drop((pulling, also_pulling));
        let removal = store.try_lock_exclusive().unwrap();
        assert!(removal.is_some());
        drop((removal, other));
        ImageStore::open(dir.path()).unwrap();
        assert!(!download.exists(), "an abandoned download is swept");
    }

    #[test]
    fn a_partial_download_survives_the_sweep_at_open_and_other_leftovers_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let digest = format!("sha256:{}", "c".repeat(64));
        let partial = store.partial_path(&digest);
        std::fs::write(&partial, b"first half").unwrap();
        drop(store.lock_blob_download(&digest).unwrap());
        let junk = store.temp_path("blob");
        std::fs::write(&junk, b"x").unwrap();
        let odd = store.root().join("tmp/not-a-digest.partial");
        std::fs::write(&odd, b"x").unwrap();
        drop(store);
        ImageStore::open(dir.path()).unwrap();
        assert_eq!(std::fs::read(&partial).unwrap(), b"first half", "kept for the next pull to resume");
        assert!(!junk.exists() && !odd.exists());
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 1, "the lock file went too");
    }

    #[test]
    fn a_layer_whose_unpack_fails_half_way_leaves_no_layer_directory() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        // A gzip'd tar cut off in the middle: the unpack writes the first entries, then fails.
        let mut tar = tar::Builder::new(Vec::new());
        for i in 0..50 {
            let data = vec![i as u8; 10_000];
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            tar.append_data(&mut h, format!("f{i}"), &data[..]).unwrap();
        }
        let tar = tar.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        let gz = gz.finish().unwrap();
        let cut = &gz[..gz.len() / 2];
        let blob = store.temp_path("blob");
        std::fs::write(&blob, cut).unwrap();
        let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&gz)));
        assert!(store.commit_layer(&blob, &digest, &diff_id).is_err());
        assert!(!store.has_layer(&diff_id), "a half-unpacked layer is never taken as whole");
        assert_eq!(std::fs::read_dir(store.layers_root()).unwrap().count(), 0, "its temp dir is gone");
    }

    #[test]
    fn an_interrupted_layer_unpack_is_swept_at_open() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("layers/.tmp-layer-1-0/etc")).unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(store.layers_root()).unwrap().count(), 0);
    }
}
