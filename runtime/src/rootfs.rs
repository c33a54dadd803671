//! A container's directory and its overlay root filesystem.
//!
//! ```text
//! <root>/containers/<id>/
//!   config.json     the OCI runtime Spec: the contract between the runtime and the shim
//!   shim.json       the shim's and the container init's process identities (shim writes)
//!   started.json    when the user's process was exec'd (written just before execve)
//!   exit.json       how it ended (shim writes once, atomically)
//!   start.fifo      `start` opens it to release the waiting init (runc's exec fifo)
//!   shim.log        the shim's own diagnostics
//!   upper/ work/    the writable overlay layer
//!   rootfs/         the overlay mount point (mounted only inside the container's mount ns)
//! ```

use std::path::{Path, PathBuf};

pub const CONFIG: &str = "config.json";
pub const SHIM_STATE: &str = "shim.json";
pub const STARTED: &str = "started.json";
pub const EXIT: &str = "exit.json";
pub const START_FIFO: &str = "start.fifo";
pub const SHIM_LOG: &str = "shim.log";

#[derive(Debug, Clone)]
pub struct ContainerDir(pub PathBuf);

impl ContainerDir {
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    pub fn upper(&self) -> PathBuf {
        self.0.join("upper")
    }
    pub fn work(&self) -> PathBuf {
        self.0.join("work")
    }
    pub fn rootfs(&self) -> PathBuf {
        self.0.join("rootfs")
    }
    /// The lower dir of an image without layers (overlay needs at least one).
    pub fn empty_lower(&self) -> PathBuf {
        self.0.join("lower")
    }
}

/// Overlay mount data. `lowers` are layer dir names relative to the caller's working directory
/// (the layers root), lowest layer first as images list them; overlay wants the topmost first.
/// Relative names keep the data under the one-page limit for deep images.
pub fn overlay_options(lowers: &[String], upper: &Path, work: &Path) -> String {
    let lower: Vec<&str> = lowers.iter().rev().map(String::as_str).collect();
    format!("lowerdir={},upperdir={},workdir={}", lower.join(":"), upper.display(), work.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_lists_the_top_layer_first() {
        let o = overlay_options(&["base".into(), "top".into()], Path::new("/c/upper"), Path::new("/c/work"));
        assert_eq!(o, "lowerdir=top:base,upperdir=/c/upper,workdir=/c/work");
    }
}
