//! Reading `/proc/self/mountinfo`: what is mounted where. The runtime, the kubelet, the bench's
//! sweep and the tests' leftover checks all ask it.

use std::io;
use std::path::{Path, PathBuf};

/// Every mount point (field 5 of each line, escapes undone), in mount order.
pub fn mount_points() -> io::Result<Vec<PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| io::Error::new(e.kind(), format!("/proc/self/mountinfo: {e}")))?;
    Ok(info.lines().filter_map(|l| l.split(' ').nth(4)).map(|p| PathBuf::from(unescape(p))).collect())
}

/// Mount points at or under `dir`, in mount order (none if mountinfo cannot be read).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    mount_points().unwrap_or_default().into_iter().filter(|p| p.starts_with(dir)).collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
pub fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            out.push(u8::from_str_radix(&field[i + 1..i + 4], 8).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_undone() {
        assert_eq!(unescape(r"/tmp/a\040b\134c"), r"/tmp/a b\c");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape(r"/x\"), r"/x\");
    }

    #[test]
    fn mounts_under_a_dir_are_found_and_others_not() {
        assert!(mounts_under(Path::new("/")).contains(&PathBuf::from("/proc")));
        assert!(mounts_under(Path::new("/proc")).contains(&PathBuf::from("/proc")));
        let dir = tempfile::tempdir().unwrap();
        assert!(mounts_under(dir.path()).is_empty());
    }
}
