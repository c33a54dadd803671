//! Files that must survive a crash whole: keys, certificates, kubeconfigs, tokens.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A failed atomic write, naming the file it concerns.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

fn at(path: &Path) -> impl Fn(std::io::Error) -> WriteError + '_ {
    move |source| WriteError { path: path.to_path_buf(), source }
}

/// Writes `data` to `path` through a temporary sibling, fsync and rename (then fsyncs the
/// directory), so a reader, or a restart after a crash, sees the old file or the new one and
/// never half of one. The file has exactly `mode`, not narrowed by the umask.
pub fn write(path: &Path, data: &[u8], mode: u32) -> Result<(), WriteError> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(at(dir))?;
    let name = path.file_name().ok_or_else(|| at(path)(std::io::ErrorKind::InvalidInput.into()))?;
    // One temporary name per process: two processes writing the same file never share one.
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut file =
            fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp).map_err(at(&tmp))?;
        file.set_permissions(fs::Permissions::from_mode(mode)).map_err(at(&tmp))?;
        file.write_all(data).map_err(at(&tmp))?;
        file.sync_all().map_err(at(&tmp))?;
        fs::rename(&tmp, path).map_err(at(path))?;
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(at(dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_replaces_the_file_whole_with_exactly_the_mode_asked_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("key.pem");
        write(&path, b"one", 0o644).unwrap();
        write(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let names: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["key.pem"]);
    }

    #[test]
    fn a_failed_write_names_the_path_and_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("taken");
        fs::create_dir(&path).unwrap();
        let err = write(&path, b"x", 0o600).unwrap_err();
        assert_eq!(err.path, path);
        assert!(path.is_dir());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "the temporary is gone");
    }
}
