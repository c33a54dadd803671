//! cgroup v2: one tree; controllers must be enabled in each parent's `cgroup.subtree_control`.

use std::path::Path;

use super::{CPU_PERIOD_US, Error, cpu_quota_us, cpu_weight, io_err, write_file};
use crate::Resources;

const CONTROLLERS: &[&str] = &["cpu", "cpuset", "memory", "pids"];

/// Creates `rel` level by level, enabling the controllers Skiff uses in every parent on the way
/// (only those the parent offers in `cgroup.controllers`).
pub(super) fn create(mount: &Path, rel: &Path) -> Result<(), Error> {
    let mut dir = mount.to_path_buf();
    for part in rel.components() {
        enable_controllers(&dir)?;
        dir.push(part);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(&dir)(e)),
        }
    }
    Ok(())
}

fn enable_controllers(dir: &Path) -> Result<(), Error> {
    let available = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    let wanted: Vec<String> = available
        .split_whitespace()
        .filter(|c| CONTROLLERS.contains(c) && !enabled.split_whitespace().any(|e| e == *c))
        .map(|c| format!("+{c}"))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    write_file(&dir.join("cgroup.subtree_control"), &wanted.join(" "))
}

pub(super) fn apply(dir: &Path, r: &Resources) -> Result<(), Error> {
    if let Some(bytes) = r.memory_limit_bytes {
        write_file(&dir.join("memory.max"), &bytes.to_string())?;
    }
    if let Some(limit) = r.cpu_limit_millis {
        write_file(&dir.join("cpu.max"), &format!("{} {CPU_PERIOD_US}", cpu_quota_us(limit)))?;
    }
    if let Some(request) = r.cpu_request_millis {
        write_file(&dir.join("cpu.weight"), &cpu_weight(request).to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::{CgroupManager, Layout};

    #[test]
    fn parents_enable_offered_controllers_and_the_leaf_gets_limits() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::write(root.join("cgroup.controllers"), "cpuset cpu io memory hugetlb pids\n").unwrap();
        std::fs::write(root.join("cgroup.subtree_control"), "memory\n").unwrap();
        let mgr = CgroupManager::new(Layout::V2 { mount: root.to_path_buf() }, "skiff-fixture");
        let rel = mgr.container_path("p", "c");
        let res = Resources {
            memory_limit_bytes: Some(1 << 30),
            cpu_limit_millis: Some(1500),
            cpu_request_millis: Some(500),
        };
        mgr.create(&rel, &res).unwrap();
        let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
        assert_eq!(read("cgroup.subtree_control"), "+cpuset +cpu +pids");
        assert_eq!(read("skiff-fixture/podp/c/memory.max"), "1073741824");
        assert_eq!(read("skiff-fixture/podp/c/cpu.max"), "150000 100000");
        assert_eq!(read("skiff-fixture/podp/c/cpu.weight"), "20");
        assert_eq!(mgr.dirs(&rel), vec![root.join("skiff-fixture/podp/c")]);
    }
}
