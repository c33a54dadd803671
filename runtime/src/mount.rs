//! Mounts made inside a new container's mount namespace, before its user process runs: the
//! overlay root, the Spec's mounts (proc, a tmpfs /dev, devpts, shm, mqueue, read-only sysfs,
//! bind mounts), device nodes, and the pivot into the new root. Runs in the shim's forked child,
//! which is single-threaded.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use oci_spec::runtime::Mount;

type R<T> = Result<T, String>;

fn ctx<E: std::fmt::Display>(what: impl std::fmt::Display) -> impl FnOnce(E) -> String {
    move |e| format!("{what}: {e}")
}

/// Cuts propagation from the container's new mount namespace back to the host, while host
/// mounts under shared sources still reach the container's `HostToContainer` volumes (runc's
/// default root propagation, rslave).
pub fn make_root_slave() -> R<()> {
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
        .map_err(ctx("making / a slave mount"))
}

pub fn mount_overlay(layers_root: &Path, options: &str, target: &Path) -> R<()> {
    // lowerdir entries are relative to the layers root.
    nix::unistd::chdir(layers_root).map_err(ctx(format!("chdir {}", layers_root.display())))?;
    mount(Some("overlay"), target, Some("overlay"), MsFlags::empty(), Some(options))
        .map_err(ctx(format!("mounting overlay on {} ({options})", target.display())))
}

/// Resolves `path` inside `root` as if `root` were `/`: symlinks in the image are followed but
/// never lead outside it (an image's `/etc -> /host/etc` must not make Skiff write to the host).
pub fn secure_join(root: &Path, path: &Path) -> R<PathBuf> {
    let mut resolved = PathBuf::new();
    let mut pending: Vec<PathBuf> = path.components().rev().map(|c| PathBuf::from(c.as_os_str())).collect();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        match part.components().next() {
            None | Some(Component::RootDir) | Some(Component::CurDir) => continue,
            Some(Component::ParentDir) => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let candidate = resolved.join(&part);
        match std::fs::symlink_metadata(root.join(&candidate)) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return Err(format!("too many symlinks resolving {}", path.display()));
                }
                let target = std::fs::read_link(root.join(&candidate)).map_err(ctx("readlink"))?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                for c in target.components().rev() {
                    pending.push(PathBuf::from(c.as_os_str()));
                }
            }
            _ => resolved = candidate,
        }
    }
    Ok(root.join(resolved))
}

/// The propagation an OCI mount asks for, as the flags of a second mount(2) call.
pub fn propagation(options: &[String]) -> Option<MsFlags> {
    options.iter().rev().find_map(|o| match o.as_str() {
        "private" => Some(MsFlags::MS_PRIVATE),
        "rprivate" => Some(MsFlags::MS_PRIVATE | MsFlags::MS_REC),
        "slave" => Some(MsFlags::MS_SLAVE),
        "rslave" => Some(MsFlags::MS_SLAVE | MsFlags::MS_REC),
        "shared" => Some(MsFlags::MS_SHARED),
        "rshared" => Some(MsFlags::MS_SHARED | MsFlags::MS_REC),
        _ => None,
    })
}

/// MS_* flags and the remaining data string of an OCI mount's options.
pub fn parse_options(options: &[String]) -> (MsFlags, bool, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    let mut bind = false;
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => {}
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "strictatime" => flags |= MsFlags::MS_STRICTATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "bind" => bind = true,
            "rbind" => {
                bind = true;
                flags |= MsFlags::MS_REC;
            }
            "private" | "rprivate" | "slave" | "rslave" | "shared" | "rshared" => {}
            other => data.push(other),
        }
    }
    (flags, bind, data.join(","))
}

/// One OCI Spec mount under `rootfs`.
pub fn mount_spec(rootfs: &Path, m: &Mount) -> R<()> {
    let dest = secure_join(rootfs, m.destination())?;
    let options = m.options().clone().unwrap_or_default();
    let (flags, bind, data) = parse_options(&options);
    let typ = m.typ().clone().unwrap_or_default();
    let source = m.source().clone().unwrap_or_default();
    if bind {
        let is_dir = std::fs::metadata(&source).map_err(ctx(format!("bind source {}", source.display())))?.is_dir();
        make_mount_point(&dest, is_dir)?;
        mount(Some(&source), &dest, None::<&str>, MsFlags::MS_BIND | (flags & MsFlags::MS_REC), None::<&str>)
            .map_err(ctx(format!("bind-mounting {} on {}", source.display(), dest.display())))?;
        let remount = flags & !MsFlags::MS_REC;
        if !remount.is_empty() {
            mount(None::<&str>, &dest, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | remount, None::<&str>)
                .map_err(ctx(format!("remounting {}", dest.display())))?;
        }
        if let Some(p) = propagation(&options) {
            mount(None::<&str>, &dest, None::<&str>, p, None::<&str>)
                .map_err(ctx(format!("setting the propagation of {}", dest.display())))?;
        }
        return Ok(());
    }
    make_mount_point(&dest, true)?;
    let data = (!data.is_empty()).then_some(data.as_str());
    mount(Some(&source), &dest, Some(typ.as_str()), flags, data)
        .map_err(ctx(format!("mounting {typ} on {}", dest.display())))
}

fn make_mount_point(dest: &Path, dir: bool) -> R<()> {
    if dir {
        return std::fs::create_dir_all(dest).map_err(ctx(format!("creating {}", dest.display())));
    }
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(ctx(format!("creating {}", parent.display())))?;
    }
    if !dest.exists() {
        std::fs::File::create(dest).map_err(ctx(format!("creating {}", dest.display())))?;
    }
    Ok(())
}

/// The standard character devices (mknod on the container's /dev tmpfs; the caller set umask 0)
/// and the usual /dev symlinks.
pub fn populate_dev(rootfs: &Path) -> R<()> {
    let dev = rootfs.join("dev");
    for (name, major, minor) in
        [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)]
    {
        let p = dev.join(name);
        let c = CString::new(p.as_os_str().as_bytes()).map_err(ctx("path"))?;
        // SAFETY: valid C string.
        let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(major, minor)) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            // Where mknod is refused (a devices cgroup), the host node is bind-mounted instead.
            std::fs::File::create(&p).map_err(ctx(format!("creating {}", p.display())))?;
            mount(Some(&Path::new("/dev").join(name)), &p, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .map_err(|b| format!("mknod {}: {e}; bind: {b}", p.display()))?;
        }
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
        ("core", "/proc/kcore"),
    ] {
        let p = dev.join(link);
        if std::fs::symlink_metadata(&p).is_err() {
            std::os::unix::fs::symlink(target, &p).map_err(ctx(format!("symlink {}", p.display())))?;
        }
    }
    Ok(())
}

/// Hides a path of the new root (runc's masked paths): a file under `/dev/null`, a directory
/// under an empty read-only tmpfs. A path this kernel lacks is skipped.
pub fn mask_path(path: &Path) -> R<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("masking {}: {e}", path.display())),
    };
    if meta.is_dir() {
        mount(Some("tmpfs"), path, Some("tmpfs"), MsFlags::MS_RDONLY, None::<&str>)
    } else {
        mount(Some("/dev/null"), path, None::<&str>, MsFlags::MS_BIND, None::<&str>)
    }
    .map_err(ctx(format!("masking {}", path.display())))
}

/// Makes a path of the new root read-only (runc's readonly paths, and a read-only root): a bind
/// mount on itself, remounted read-only with the flags it had. A path this kernel lacks is
/// skipped.
pub fn make_readonly(path: &Path) -> R<()> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    let existing = nix::sys::statvfs::statvfs(path).map_err(ctx(format!("statvfs {}", path.display())))?;
    if path != Path::new("/") {
        mount(Some(path), path, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
            .map_err(ctx(format!("binding {} onto itself", path.display())))?;
    }
    // A bind remount must repeat the mount's locked flags (nosuid, nodev, noexec).
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    let f = existing.flags();
    use nix::sys::statvfs::FsFlags;
    for (have, want) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
    ] {
        if f.contains(have) {
            flags |= want;
        }
    }
    mount(None::<&str>, path, None::<&str>, flags, None::<&str>)
        .map_err(ctx(format!("remounting {} read-only", path.display())))
}

/// Makes `rootfs` the root: pivot_root with the old root stacked on the new one, then detached
/// (runc's trick, needing no temporary directory inside the image).
pub fn pivot_into(rootfs: &Path) -> R<()> {
    nix::unistd::chdir(rootfs).map_err(ctx(format!("chdir {}", rootfs.display())))?;
    nix::unistd::pivot_root(".", ".").map_err(ctx("pivot_root"))?;
    // The old root may carry shared-propagation mounts from a host that uses them; keep its
    // unmount from propagating anywhere.
    mount(None::<&str>, ".", None::<&str>, MsFlags::MS_SLAVE | MsFlags::MS_REC, None::<&str>)
        .map_err(ctx("making the old root a slave"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(ctx("detaching the old root"))?;
    nix::unistd::chdir("/").map_err(ctx("chdir /"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_in_the_image_resolve_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("real/etc")).unwrap();
        std::os::unix::fs::symlink("/real/etc", r.join("etc")).unwrap();
        std::os::unix::fs::symlink("../../../../outside", r.join("real/escape")).unwrap();
        assert_eq!(secure_join(r, Path::new("/etc/hosts")).unwrap(), r.join("real/etc/hosts"));
        assert_eq!(secure_join(r, Path::new("/real/escape/x")).unwrap(), r.join("outside/x"));
        assert_eq!(secure_join(r, Path::new("/../../proc")).unwrap(), r.join("proc"));
    }

    #[test]
    fn mount_options_split_into_flags_and_data() {
        let o: Vec<String> = ["nosuid", "noexec", "mode=755", "size=65536k", "ro"].map(String::from).to_vec();
        let (flags, bind, data) = parse_options(&o);
        assert_eq!(flags, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY);
        assert!(!bind);
        assert_eq!(data, "mode=755,size=65536k");
        let (flags, bind, _) = parse_options(&["rbind".to_string()]);
        assert!(bind && flags.contains(MsFlags::MS_REC));
        let volume: Vec<String> = ["rbind", "rslave", "ro"].map(String::from).to_vec();
        assert_eq!(propagation(&volume), Some(MsFlags::MS_SLAVE | MsFlags::MS_REC));
        assert_eq!(propagation(&o), None, "no propagation option, no second mount call");
    }
}
