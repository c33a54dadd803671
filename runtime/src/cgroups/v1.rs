//! cgroup v1: one directory per hierarchy, limits written into controller files.

use std::path::Path;

use super::{CPU_PERIOD_US, Error, Hierarchy, cpu_quota_us, cpu_shares, io_err, write_file};
use crate::Resources;

/// Creates `rel` under the hierarchy level by level, so that every new cpuset level gets
/// `cpuset.cpus`/`cpuset.mems` from its parent (a new v1 cpuset child starts empty and refuses
/// tasks with ENOSPC until they are set).
pub(super) fn create(h: &Hierarchy, rel: &Path) -> Result<(), Error> {
    let mut dir = h.mount.clone();
    for part in rel.components() {
        let parent = dir.clone();
        dir.push(part);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(&dir)(e)),
        }
        if h.has("cpuset") {
            for file in ["cpuset.cpus", "cpuset.mems"] {
                inherit(&parent.join(file), &dir.join(file))?;
            }
        }
    }
    Ok(())
}

fn inherit(parent: &Path, child: &Path) -> Result<(), Error> {
    let current = std::fs::read_to_string(child).unwrap_or_default();
    if !current.trim().is_empty() {
        return Ok(());
    }
    let value = std::fs::read_to_string(parent).map_err(io_err(parent))?;
    write_file(child, value.trim())
}

/// Writes the limits this hierarchy's controllers carry into `dir`.
pub(super) fn apply(h: &Hierarchy, dir: &Path, r: &Resources) -> Result<(), Error> {
    if let (true, Some(bytes)) = (h.has("memory"), r.memory_limit_bytes) {
        write_file(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
    }
    if h.has("cpu") {
        if let Some(limit) = r.cpu_limit_millis {
            write_file(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
            write_file(&dir.join("cpu.cfs_quota_us"), &cpu_quota_us(limit).to_string())?;
        }
        if let Some(request) = r.cpu_request_millis {
            write_file(&dir.join("cpu.shares"), &cpu_shares(request).to_string())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::{CgroupManager, Layout};

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap()
    }

    #[test]
    fn container_cgroup_gets_limits_and_inherited_cpusets_on_a_fixture() {
        let tmp = tempfile::tempdir().unwrap();
        let (mem, cpu, cpuset) = (tmp.path().join("memory"), tmp.path().join("cpu"), tmp.path().join("cpuset"));
        for d in [&mem, &cpu, &cpuset] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(cpuset.join("cpuset.cpus"), "0-1\n").unwrap();
        std::fs::write(cpuset.join("cpuset.mems"), "0\n").unwrap();
        let h = |m: &Path, c: &str| Hierarchy { mount: m.to_path_buf(), controllers: vec![c.to_string()] };
        let layout = Layout::V1 { hierarchies: vec![h(&mem, "memory"), h(&cpu, "cpu"), h(&cpuset, "cpuset")] };
        let mgr = CgroupManager::new(layout, "skiff-fixture");
        let rel = mgr.container_path("p1", "c1");
        let res = Resources {
            memory_limit_bytes: Some(64 << 20),
            cpu_limit_millis: Some(250),
            cpu_request_millis: Some(100),
        };
        mgr.create(&rel, &res).unwrap();

        assert_eq!(read(&mem.join("skiff-fixture/podp1/c1/memory.limit_in_bytes")), "67108864");
        assert_eq!(read(&cpu.join("skiff-fixture/podp1/c1/cpu.cfs_quota_us")), "25000");
        assert_eq!(read(&cpu.join("skiff-fixture/podp1/c1/cpu.cfs_period_us")), "100000");
        assert_eq!(read(&cpu.join("skiff-fixture/podp1/c1/cpu.shares")), "102");
        assert!(!mem.join("skiff-fixture/podp1/c1/cpu.shares").exists(), "limits go only to their controller");
        for level in ["skiff-fixture", "skiff-fixture/podp1", "skiff-fixture/podp1/c1"] {
            assert_eq!(read(&cpuset.join(level).join("cpuset.cpus")), "0-1");
            assert_eq!(read(&cpuset.join(level).join("cpuset.mems")), "0");
        }
        assert_eq!(mgr.procs_files(&rel)[0], mem.join("skiff-fixture/podp1/c1/cgroup.procs"));
    }
}
