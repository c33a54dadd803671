//! hostPath volumes: the `type` check Kubernetes makes before the mount (`checkTypeInternal`),
//! with its messages, creating the path for the `…OrCreate` types.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Checks (and for `DirectoryOrCreate` / `FileOrCreate` creates) `path` per the hostPath
/// `type`. `Err` carries Kubernetes' message.
pub fn check_type(path: &Path, kind: &str) -> Result<(), String> {
    let meta = std::fs::metadata(path).ok();
    let p = path.display();
    let is_dir = meta.as_ref().is_some_and(|m| m.is_dir());
    match kind {
        "" => Ok(()),
        "DirectoryOrCreate" if meta.is_none() => {
            std::fs::DirBuilder::new().recursive(true).mode(0o755).create(path).map_err(|e| format!("mkdir {p}: {e}"))
        }
        "Directory" | "DirectoryOrCreate" if is_dir => Ok(()),
        "Directory" | "DirectoryOrCreate" => Err(format!("hostPath type check failed: {p} is not a directory")),
        "FileOrCreate" if meta.is_none() => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o644)
            .open(path)
            .map(drop)
            .map_err(|e| format!("open {p}: {e}")),
        "File" | "FileOrCreate" if meta.is_some() && !is_dir => Ok(()),
        "File" | "FileOrCreate" => Err(format!("hostPath type check failed: {p} is not a file")),
        "Socket" if meta.as_ref().is_some_and(|m| m.file_type().is_socket()) => Ok(()),
        "Socket" => Err(format!("hostPath type check failed: {p} is not a socket file")),
        "CharDevice" if meta.as_ref().is_some_and(|m| m.file_type().is_char_device()) => Ok(()),
        "CharDevice" => Err(format!("hostPath type check failed: {p} is not a character device")),
        "BlockDevice" if meta.as_ref().is_some_and(|m| m.file_type().is_block_device()) => Ok(()),
        "BlockDevice" => Err(format!("hostPath type check failed: {p} is not a block device")),
        other => Err(format!("{other} is an invalid volume type")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn or_create_types_make_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("a/b");
        check_type(&d, "DirectoryOrCreate").unwrap();
        assert!(d.is_dir());
        assert_eq!(std::fs::metadata(&d).unwrap().permissions().mode() & 0o777, 0o755);
        let f = dir.path().join("f");
        check_type(&f, "FileOrCreate").unwrap();
        assert!(f.is_file());
        // Existing paths of the right kind pass untouched.
        std::fs::write(&f, "keep").unwrap();
        check_type(&f, "FileOrCreate").unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "keep");
        check_type(&d, "Directory").unwrap();
        check_type(&f, "File").unwrap();
        check_type(&dir.path().join("anything-missing"), "").unwrap();
    }

    #[test]
    fn wrong_kinds_fail_with_kubernetes_messages() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, "").unwrap();
        let missing = dir.path().join("missing");
        let cases = [
            (&f, "Directory", "is not a directory"),
            (&f, "DirectoryOrCreate", "is not a directory"),
            (&missing, "Directory", "is not a directory"),
            (&dir.path().to_path_buf(), "File", "is not a file"),
            (&dir.path().to_path_buf(), "FileOrCreate", "is not a file"),
            (&missing, "File", "is not a file"),
            (&f, "Socket", "is not a socket file"),
            (&f, "CharDevice", "is not a character device"),
            (&f, "BlockDevice", "is not a block device"),
        ];
        for (path, kind, want) in cases {
            let err = check_type(path, kind).unwrap_err();
            assert_eq!(err, format!("hostPath type check failed: {} {want}", path.display()), "{kind}");
        }
        assert!(!missing.exists(), "plain types never create");
        assert_eq!(check_type(&f, "Pipe").unwrap_err(), "Pipe is an invalid volume type");
    }

    #[test]
    fn devices_and_sockets_pass_their_own_checks() {
        check_type(Path::new("/dev/null"), "CharDevice").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        check_type(&sock, "Socket").unwrap();
        assert!(check_type(Path::new("/dev/null"), "BlockDevice").is_err());
    }
}
