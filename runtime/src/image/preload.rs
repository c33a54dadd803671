//! Importing the archives dropped into `<data-dir>/images/` when the server starts, as k3s does
//! with its `agent/images/`, but only once: `<store>/imported-archives.json` remembers the size,
//! mtime and sha256 of each archive imported and the images it gave. An archive is imported
//! again only when its content changed, or when an image it gave is no longer in the store
//! (the folder says which images the node should have; `skiff image rm` of one is undone at the
//! next start, as on k3s). A touched file with the same content is hashed, not imported.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::manage::ImageManager;
use crate::state::{io_ctx, read_json, write_json};
use crate::{Image, Result};

const STATE: &str = "imported-archives.json";
const EXTENSIONS: &[&str] = &[".tar", ".tar.gz", ".tgz"];

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Record {
    size: u64,
    mtime_ns: u64,
    sha256: String,
    /// The references the import recorded.
    images: Vec<String>,
}

/// What happened to one archive of the folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preloaded {
    /// The file name in the folder.
    pub archive: String,
    pub outcome: PreloadOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreloadOutcome {
    Imported(Vec<Image>),
    /// Imported before, unchanged since, and its images are all still there.
    Unchanged,
    Failed(String),
    /// Not an archive Skiff reads (by its name).
    Skipped,
}

pub fn import_dir(manager: &ImageManager, dir: &Path) -> Result<Vec<Preloaded>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_ctx(format!("reading {}", dir.display()))(e)),
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    let state_path = manager.store().root().join(STATE);
    let mut state: BTreeMap<String, Record> = read_json(&state_path)?.unwrap_or_default();
    let before = state.clone();
    state.retain(|name, _| names.contains(name));
    let mut out = Vec::new();
    for name in names {
        let path = dir.join(&name);
        if !EXTENSIONS.iter().any(|ext| name.ends_with(ext)) {
            tracing::warn!(archive = %path.display(), "not an image archive (.tar, .tar.gz, .tgz): skipped");
            out.push(Preloaded { archive: name, outcome: PreloadOutcome::Skipped });
            continue;
        }
        let outcome = match preload_one(manager, &path, state.get(&name)) {
            Ok((outcome, record)) => {
                state.insert(name.clone(), record);
                // Written after each import, so an interrupted start redoes only the rest.
                write_json(&state_path, &state)?;
                match &outcome {
                    PreloadOutcome::Imported(images) => {
                        let references: Vec<&str> = images.iter().map(|i| i.reference.as_str()).collect();
                        tracing::info!(archive = %path.display(), images = ?references, "imported image archive");
                    }
                    _ => tracing::info!(archive = %path.display(), "image archive unchanged since its import"),
                }
                outcome
            }
            Err(e) => {
                tracing::warn!(archive = %path.display(), error = %e, "importing image archive failed");
                PreloadOutcome::Failed(e.to_string())
            }
        };
        out.push(Preloaded { archive: name, outcome });
    }
    if state != before {
        write_json(&state_path, &state)?;
    }
    Ok(out)
}

fn preload_one(manager: &ImageManager, path: &Path, known: Option<&Record>) -> Result<(PreloadOutcome, Record)> {
    let m = std::fs::metadata(path).map_err(io_ctx(format!("reading {}", path.display())))?;
    let mtime_ns = (m.mtime().max(0) as u64).saturating_mul(1_000_000_000).saturating_add(m.mtime_nsec().max(0) as u64);
    let present = |r: &Record| r.images.iter().all(|i| manager.store().find(i).is_some());
    if let Some(r) = known.filter(|r| r.size == m.len() && r.mtime_ns == mtime_ns && present(r)) {
        return Ok((PreloadOutcome::Unchanged, r.clone()));
    }
    let sha256 = file_sha256(path)?;
    if let Some(r) = known.filter(|r| r.sha256 == sha256 && present(r)) {
        return Ok((PreloadOutcome::Unchanged, Record { size: m.len(), mtime_ns, ..r.clone() }));
    }
    let images = manager.import(path)?;
    let record =
        Record { size: m.len(), mtime_ns, sha256, images: images.iter().map(|i| i.reference.clone()).collect() };
    Ok((PreloadOutcome::Imported(images), record))
}

fn file_sha256(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(io_ctx(format!("opening {}", path.display())))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(io_ctx(format!("reading {}", path.display())))?;
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `docker save` archive of one image whose only layer holds `/hello`.
    fn saved_archive(path: &Path, tag: &str, content: &[u8]) {
        let mut layer = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        layer.append_data(&mut h, "hello", content).unwrap();
        let layer = layer.into_inner().unwrap();
        let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&layer)));
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux", "config": {"Cmd": ["/hello"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }))
        .unwrap();
        let manifest = serde_json::json!([{"Config": "config.json", "RepoTags": [tag], "Layers": ["layer.tar"]}]);
        let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
        for (name, data) in
            [("layer.tar", layer), ("config.json", config), ("manifest.json", serde_json::to_vec(&manifest).unwrap())]
        {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, &data[..]).unwrap();
        }
        b.finish().unwrap();
    }

    fn outcomes(out: &[Preloaded]) -> Vec<(&str, &str)> {
        out.iter()
            .map(|p| {
                let what = match &p.outcome {
                    PreloadOutcome::Imported(_) => "imported",
                    PreloadOutcome::Unchanged => "unchanged",
                    PreloadOutcome::Failed(e) => {
                        eprintln!("{}: {e}", p.archive);
                        "failed"
                    }
                    PreloadOutcome::Skipped => "skipped",
                };
                (p.archive.as_str(), what)
            })
            .collect()
    }

    #[test]
    fn archives_are_imported_once_and_again_only_when_changed_or_missing() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("images");
        std::fs::create_dir(&dir).unwrap();
        saved_archive(&dir.join("a.tar"), "a:1", b"one");
        std::fs::write(dir.join("notes.txt"), "not an archive").unwrap();
        let manager = ImageManager::open(&root.path().join("runtime")).unwrap();
        assert_eq!(outcomes(&manager.import_dir(&dir).unwrap()), [("a.tar", "imported"), ("notes.txt", "skipped")]);
        assert!(manager.store().find("docker.io/library/a:1").is_some());
        assert_eq!(outcomes(&manager.import_dir(&dir).unwrap())[0], ("a.tar", "unchanged"));

        // The same bytes written again (a new mtime) are recognised by their hash.
        let bytes = std::fs::read(dir.join("a.tar")).unwrap();
        std::fs::remove_file(dir.join("a.tar")).unwrap();
        std::fs::write(dir.join("a.tar"), &bytes).unwrap();
        assert_eq!(outcomes(&manager.import_dir(&dir).unwrap())[0], ("a.tar", "unchanged"));

        // New content is imported; so is an archive whose image was removed meanwhile.
        saved_archive(&dir.join("a.tar"), "a:2", b"two");
        assert_eq!(outcomes(&manager.import_dir(&dir).unwrap())[0], ("a.tar", "imported"));
        assert!(manager.store().find("docker.io/library/a:2").is_some());
        manager.remove(&["a:2".to_string()], false).unwrap().pop().unwrap().unwrap();
        assert_eq!(outcomes(&manager.import_dir(&dir).unwrap())[0], ("a.tar", "imported"));

        let state: BTreeMap<String, Record> = read_json(&manager.store().root().join(STATE)).unwrap().unwrap();
        assert_eq!(state.keys().collect::<Vec<_>>(), ["a.tar"]);
        assert_eq!(state["a.tar"].images, ["docker.io/library/a:2"]);

        // A broken archive is reported and does not stop the others.
        std::fs::write(dir.join("0-broken.tar"), b"junk").unwrap();
        let out = manager.import_dir(&dir).unwrap();
        assert_eq!(outcomes(&out)[..2], [("0-broken.tar", "failed"), ("a.tar", "unchanged")]);
    }
}
