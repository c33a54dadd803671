//! Who a container's processes run as: user, groups, taken from the OCI Spec's `process` so the
//! init and every exec'd process get the same identity. Runs in a single-threaded child, right
//! before execve.

use oci_spec::runtime::Process;

/// The identity part of a Spec's process, read before the fork.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

impl Identity {
    pub fn from_process(process: &Process) -> Identity {
        let user = process.user();
        Identity {
            uid: user.uid(),
            gid: user.gid(),
            additional_gids: user.additional_gids().clone().unwrap_or_default(),
        }
    }

    /// Switches the calling process to this identity. Groups first: once the uid is not 0 the
    /// process may no longer change them.
    pub fn enter(&self) -> Result<(), String> {
        if self.uid == 0 && self.gid == 0 && self.additional_gids.is_empty() {
            return Ok(());
        }
        let groups: Vec<nix::unistd::Gid> = self.additional_gids.iter().map(|g| (*g).into()).collect();
        nix::unistd::setgroups(&groups).map_err(|e| format!("setgroups {:?}: {e}", self.additional_gids))?;
        let gid = self.gid.into();
        nix::unistd::setresgid(gid, gid, gid).map_err(|e| format!("setting gid {}: {e}", self.gid))?;
        let uid = self.uid.into();
        nix::unistd::setresuid(uid, uid, uid).map_err(|e| format!("setting uid {}: {e}", self.uid))
    }
}
