//! `securityContext.fsGroup` on volumes, as the kubelet's `SetVolumeOwnership`: every file and
//! directory gets the group, group read (and write unless the volume is read-only) permission,
//! and directories the setgid bit, so files the containers create later inherit the group.
//! Symlinks are re-owned but never followed (configMap and secret volumes are symlink trees).
//!
//! Volumes whose plugin manages ownership in Kubernetes get it: emptyDir, configMap, secret,
//! downwardAPI and projected. hostPath does not, and neither do the local-path provisioner's
//! claims (hostPath PersistentVolumes, as on k3s).

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

const RW_MASK: u32 = 0o660;
const RO_MASK: u32 = 0o440;
const EXEC_MASK: u32 = 0o110;
const SETGID: u32 = 0o2000;

/// `fsGroupChangePolicy`: `Always` (the default) walks the whole volume; `OnRootMismatch` only
/// when the volume's root does not already look done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangePolicy {
    Always,
    OnRootMismatch,
}

impl ChangePolicy {
    pub fn parse(policy: Option<&str>) -> Self {
        match policy {
            Some("OnRootMismatch") => ChangePolicy::OnRootMismatch,
            _ => ChangePolicy::Always,
        }
    }
}

pub fn set_volume_ownership(dir: &Path, fs_group: u32, read_only: bool, policy: ChangePolicy) -> io::Result<()> {
    let mask = if read_only { RO_MASK } else { RW_MASK };
    if policy == ChangePolicy::OnRootMismatch {
        let meta = std::fs::metadata(dir)?;
        let wanted = mask | EXEC_MASK | SETGID;
        if meta.gid() == fs_group && meta.mode() & wanted == wanted {
            return Ok(());
        }
    }
    walk(dir, fs_group, mask)
}

fn walk(path: &Path, gid: u32, mask: u32) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| at(path, e))?;
    std::os::unix::fs::lchown(path, None, Some(gid)).map_err(|e| at(path, e))?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let extra = if meta.is_dir() { mask | EXEC_MASK | SETGID } else { mask };
    let mode = (meta.mode() & 0o7777) | extra;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| at(path, e))?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).map_err(|e| at(path, e))? {
            walk(&entry?.path(), gid, mask)?;
        }
    }
    Ok(())
}

fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("setting the fsGroup of {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(p: &Path) -> (u32, u32) {
        let m = std::fs::symlink_metadata(p).unwrap();
        (m.gid(), m.mode() & 0o7777)
    }

    #[test]
    fn files_and_directories_get_the_group_and_its_permissions_and_links_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("vol");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(root.join("sub"), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(root.join("sub/file"), "x").unwrap();
        std::fs::set_permissions(root.join("sub/file"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, "y").unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();

        set_volume_ownership(&root, 4242, false, ChangePolicy::Always).unwrap();
        assert_eq!(mode_of(&root), (4242, 0o2775));
        assert_eq!(mode_of(&root.join("sub")), (4242, 0o2770));
        assert_eq!(mode_of(&root.join("sub/file")), (4242, 0o660));
        assert_eq!(mode_of(&root.join("link")).0, 4242, "the link itself is re-owned");
        assert_eq!(mode_of(&outside).1, 0o600, "its target is not touched");

        set_volume_ownership(&root, 4243, true, ChangePolicy::Always).unwrap();
        assert_eq!(mode_of(&root.join("sub/file")), (4243, 0o660), "read-only adds only read bits");
    }

    #[test]
    fn on_root_mismatch_leaves_a_volume_whose_root_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("vol");
        std::fs::create_dir(&root).unwrap();
        set_volume_ownership(&root, 4242, false, ChangePolicy::OnRootMismatch).unwrap();
        std::fs::write(root.join("later"), "x").unwrap();
        std::os::unix::fs::chown(root.join("later"), None, Some(0)).unwrap();
        set_volume_ownership(&root, 4242, false, ChangePolicy::OnRootMismatch).unwrap();
        assert_eq!(mode_of(&root.join("later")).0, 0, "the root matched: nothing walked");
        set_volume_ownership(&root, 4242, false, ChangePolicy::Always).unwrap();
        assert_eq!(mode_of(&root.join("later")).0, 4242);
    }
}
