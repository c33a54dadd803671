//! Kubernetes' `AtomicWriter`: a volume's files live in a timestamped directory
//! (`..2026_11_25_10_05_05.123456789`), `..data` is a symlink to it, and each top-level entry the
//! user sees is a symlink through `..data`. An update writes a new timestamped directory and
//! renames a fresh `..data_tmp` symlink over `..data`, so a reader sees either the old set of
//! files or the new one, never a mix; then stale entries and the old directory go.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

const DATA_DIR: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

/// One file of the payload: its content and permission bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProjection {
    pub data: Vec<u8>,
    pub mode: u32,
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Checks a payload path as Kubernetes' `validatePath`: relative, no `..` element, not
/// starting with `..` (those names belong to the writer).
pub fn validate_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("invalid path: must not be empty".into());
    }
    if path.len() > 4096 {
        return Err(format!("invalid path: must be less than or equal to 4096 characters: {path}"));
    }
    if Path::new(path).is_absolute() {
        return Err(format!("invalid path: must be relative path: {path}"));
    }
    if Path::new(path).components().any(|c| c == Component::ParentDir) {
        return Err(format!("invalid path: must not contain '..': {path}"));
    }
    if path.starts_with("..") {
        return Err(format!("invalid path: must not start with '..': {path}"));
    }
    Ok(())
}

fn timestamp_dir_name() -> String {
    let now = jiff::Timestamp::now();
    let z = now.to_zoned(jiff::tz::TimeZone::UTC);
    format!("..{}.{:09}", z.strftime("%Y_%m_%d_%H_%M_%S"), now.subsec_nanosecond())
}

/// The files under the current `..data` directory, if any.
fn current_files(dir: &Path) -> Option<(PathBuf, BTreeMap<String, FileProjection>)> {
    let target = std::fs::read_link(dir.join(DATA_DIR)).ok()?;
    let ts = dir.join(&target);
    let mut files = BTreeMap::new();
    let mut stack = vec![ts.clone()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).ok()?.flatten() {
            let path = entry.path();
            let meta = entry.metadata().ok()?;
            if meta.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(&ts).ok()?.to_string_lossy().into_owned();
                let data = std::fs::read(&path).ok()?;
                files.insert(rel, FileProjection { data, mode: meta.permissions().mode() & 0o7777 });
            }
        }
    }
    Some((target, files))
}

fn top_level(path: &str) -> &str {
    path.split('/').next().unwrap_or(path)
}

/// Writes `payload` (relative path → file) into `dir` atomically. Returns whether anything
/// changed (an identical payload leaves the volume alone, so mtimes stay and watchers sleep).
pub fn write(dir: &Path, payload: &BTreeMap<String, FileProjection>) -> io::Result<bool> {
    for path in payload.keys() {
        validate_path(path).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    }
    std::fs::create_dir_all(dir).map_err(at(dir))?;
    let current = current_files(dir);
    let links_ok = payload.keys().all(|p| std::fs::symlink_metadata(dir.join(top_level(p))).is_ok());
    if let Some((_, files)) = &current {
        if files == payload && links_ok {
            return Ok(false);
        }
    }
    // The new generation of files.
    let ts_name = timestamp_dir_name();
    let ts = dir.join(&ts_name);
    std::fs::create_dir(&ts).map_err(at(&ts))?;
    std::fs::set_permissions(&ts, std::fs::Permissions::from_mode(0o755)).map_err(at(&ts))?;
    for (rel, file) in payload {
        let path = ts.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(at(parent))?;
        }
        std::fs::write(&path, &file.data).map_err(at(&path))?;
        // Explicitly, as the umask would otherwise trim the mode.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(file.mode)).map_err(at(&path))?;
    }
    // Swap `..data` in one rename.
    let tmp = dir.join(DATA_TMP);
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&ts_name, &tmp).map_err(at(&tmp))?;
    std::fs::rename(&tmp, dir.join(DATA_DIR)).map_err(at(&dir.join(DATA_DIR)))?;
    // The user-visible links, then what the new payload no longer has.
    let wanted: std::collections::BTreeSet<&str> = payload.keys().map(|p| top_level(p)).collect();
    for name in &wanted {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new(DATA_DIR).join(name), &link).map_err(at(&link))?;
        }
    }
    for entry in std::fs::read_dir(dir).map_err(at(dir))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("..") || wanted.contains(name.as_str()) {
            continue;
        }
        if entry.file_type().is_ok_and(|t| t.is_symlink()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    if let Some((old, _)) = current {
        let old = dir.join(old);
        if old != ts {
            std::fs::remove_dir_all(&old).map_err(at(&old))?;
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(entries: &[(&str, &str, u32)]) -> BTreeMap<String, FileProjection> {
        entries
            .iter()
            .map(|(p, d, m)| (p.to_string(), FileProjection { data: d.as_bytes().to_vec(), mode: *m }))
            .collect()
    }

    #[test]
    fn files_appear_through_the_data_symlink_with_their_modes() {
        let dir = tempfile::tempdir().unwrap();
        assert!(write(dir.path(), &payload(&[("a", "1", 0o644), ("sub/b", "2", 0o400)])).unwrap());
        assert_eq!(std::fs::read_to_string(dir.path().join("a")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(dir.path().join("sub/b")).unwrap(), "2");
        assert_eq!(std::fs::read_link(dir.path().join("a")).unwrap(), Path::new("..data/a"));
        assert_eq!(std::fs::read_link(dir.path().join("sub")).unwrap(), Path::new("..data/sub"));
        let target = std::fs::read_link(dir.path().join("..data")).unwrap();
        assert!(target.to_string_lossy().starts_with("..20"), "{target:?}");
        let mode = std::fs::metadata(dir.path().join("sub/b")).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o400);
    }

    #[test]
    fn an_update_swaps_the_generation_and_drops_stale_entries() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &payload(&[("a", "1", 0o644), ("gone", "x", 0o644)])).unwrap();
        let first = std::fs::read_link(dir.path().join("..data")).unwrap();
        assert!(write(dir.path(), &payload(&[("a", "2", 0o644)])).unwrap());
        let second = std::fs::read_link(dir.path().join("..data")).unwrap();
        assert_ne!(first, second);
        assert_eq!(std::fs::read_to_string(dir.path().join("a")).unwrap(), "2");
        assert!(std::fs::symlink_metadata(dir.path().join("gone")).is_err());
        assert!(!dir.path().join(&first).exists(), "the old generation is removed");
        assert!(std::fs::symlink_metadata(dir.path().join("..data_tmp")).is_err());
    }

    #[test]
    fn an_identical_payload_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = payload(&[("a", "1", 0o644)]);
        write(dir.path(), &p).unwrap();
        let first = std::fs::read_link(dir.path().join("..data")).unwrap();
        assert!(!write(dir.path(), &p).unwrap());
        assert_eq!(std::fs::read_link(dir.path().join("..data")).unwrap(), first);
        // A mode change alone is a change.
        assert!(write(dir.path(), &payload(&[("a", "1", 0o600)])).unwrap());
    }

    #[test]
    fn paths_escaping_the_volume_are_refused() {
        for bad in ["/etc/passwd", "../x", "a/../../x", "..data", ""] {
            assert!(validate_path(bad).is_err(), "{bad}");
        }
        assert!(validate_path("a/b.txt").is_ok());
        let dir = tempfile::tempdir().unwrap();
        assert!(write(dir.path(), &payload(&[("../x", "1", 0o644)])).is_err());
    }
}
