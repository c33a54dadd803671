//! The few mount(2) calls the kubelet makes itself: tmpfs for memory-backed volumes, and
//! unmounting everything under a pod directory before it is removed.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// Whether `path` is a mount point. Compared resolved: mountinfo shows paths without symlinks.
pub fn is_mount_point(path: &Path) -> bool {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    skiff_runtime::mountinfo::mount_points().is_ok_and(|points| points.iter().any(|p| *p == path))
}

/// Mounts a tmpfs on `path` (made if missing) unless one is there already.
pub fn ensure_tmpfs(path: &Path, mode: u32, size_bytes: Option<u64>) -> io::Result<()> {
    std::fs::create_dir_all(path).map_err(|e| io::Error::new(e.kind(), format!("mkdir {}: {e}", path.display())))?;
    if is_mount_point(path) {
        return Ok(());
    }
    let mut data = format!("mode={mode:o}");
    if let Some(size) = size_bytes {
        data.push_str(&format!(",size={size}"));
    }
    let target = cstr(path)?;
    let data = CString::new(data).expect("no NUL in mount options");
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("mounting tmpfs on {}: {e}", path.display())));
    }
    Ok(())
}

/// Unmounts every mount at or under `dir`, deepest first (lazily: the containers that used
/// them are gone, but a straggling reader must not keep the pod directory alive).
pub fn unmount_under(dir: &Path) -> io::Result<()> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mut points: Vec<PathBuf> =
        skiff_runtime::mountinfo::mount_points()?.into_iter().filter(|p| p.starts_with(&dir)).collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for p in points {
        let target = cstr(&p)?;
        // SAFETY: a valid NUL-terminated path.
        let rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINVAL) && e.raw_os_error() != Some(libc::ENOENT) {
                return Err(io::Error::new(e.kind(), format!("unmounting {}: {e}", p.display())));
            }
        }
    }
    Ok(())
}

/// Unmounts what is under `dir`, then removes it.
pub fn remove_dir(dir: &Path) -> io::Result<()> {
    unmount_under(dir)?;
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(io::Error::new(e.kind(), format!("removing {}: {e}", dir.display())))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_is_a_mount_point_through_a_symlink_too() {
        assert!(is_mount_point(Path::new("/proc")));
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/proc", dir.path().join("p")).unwrap();
        assert!(is_mount_point(&dir.path().join("p")));
        assert!(!is_mount_point(dir.path()));
    }
}
