//! Skiff's container runtime. It knows nothing of the Kubernetes API: the kubelet maps pod specs
//! onto these calls.
//!
//! - images: pulled from OCI distribution registries into a content-addressed store under
//!   `<root>/images` (blobs by digest, each layer unpacked once, whiteouts applied);
//! - sandboxes: the namespaces a pod's containers share (net, ipc, uts) and its parent cgroup;
//! - containers: an overlay rootfs over the image layers with its own writable layer, own pid and
//!   mount namespaces, a cgroup with limits, started through `skiff shim` (a re-exec of the
//!   `skiff` binary, single-threaded) which stays as the container's parent, writes its output to
//!   a CRI-format log file and records the exit status on disk, so a restarted server can adopt it.
//!
//! CONTRACT (written before the implementation; the kubelet codes against it): the public items
//! below keep these names and signatures. Bodies marked `todo!` are filled in by the runtime work.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    HostUnsupported(String),
    #[error("image pull failed for {reference}: {message}")]
    Pull { reference: String, message: String },
    #[error("no such sandbox {0}")]
    NoSandbox(String),
    #[error("no such container {0}")]
    NoContainer(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Spawn(String),
}

impl Error {
    /// True when a pull failed because the image or tag does not exist (kubelet: ErrImagePull
    /// with "not found"), as opposed to a transport failure.
    pub fn is_image_not_found(&self) -> bool {
        todo!()
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where the runtime keeps its state and how it starts containers.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// `<data dir>/runtime`: images, sandboxes, containers, each under its own folder.
    pub root: PathBuf,
    /// The `skiff` binary, re-executed as `skiff shim …` to start each container.
    pub shim_exe: PathBuf,
    /// Name of Skiff's cgroup under each hierarchy (`skiff` by default; tests use their own).
    pub cgroup_root: String,
}

/// Credentials for one registry, as the kubelet reads them from an imagePullSecret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryAuth {
    pub username: String,
    pub password: String,
}

/// The parts of an image config a container start needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=value`
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

/// A pulled image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Fully qualified: `docker.io/library/busybox:latest`, `127.0.0.1:5000/busybox:1`.
    pub reference: String,
    /// `sha256:<config digest>`: the image ID.
    pub id: String,
    /// `<repository>@sha256:<manifest digest>`: what Kubernetes shows as `imageID`.
    pub repo_digest: String,
    pub config: ImageConfig,
    /// Layer digests (uncompressed diff IDs), lowest first.
    pub layers: Vec<String>,
    pub size: u64,
}

/// A pod's shared namespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSpec {
    /// Unique; the kubelet uses the pod UID.
    pub id: String,
    /// The pod name (uts namespace).
    pub hostname: String,
}

/// Resource limits of one container, already converted from Kubernetes quantities.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub memory_limit_bytes: Option<u64>,
    /// CPU limit in millicores → CFS quota (period 100 ms) / cpu.max.
    pub cpu_limit_millis: Option<u64>,
    /// CPU request in millicores → cpu.shares / cpu.weight.
    pub cpu_request_millis: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerSpec {
    /// The Kubernetes container name (used in the id and for logs).
    pub name: String,
    pub image: Option<Image>,
    /// The resolved argv (Kubernetes' command/args over the image's Entrypoint/Cmd).
    pub argv: Vec<String>,
    /// `KEY=value`, image env first, then the container's.
    pub env: Vec<String>,
    /// Defaults to the image's, then `/`.
    pub working_dir: Option<String>,
    /// Where the shim writes output in CRI format: `<RFC3339Nano> stdout|stderr F|P <line>`.
    pub log_path: PathBuf,
    pub resources: Resources,
}

/// What the runtime knows of one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running { pid: i32, started_at: SystemTime },
    Exited(ExitStatus),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitStatus {
    /// As Kubernetes reports it: the exit code, or 128+signal.
    pub code: i32,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub started_at: SystemTime,
    pub finished_at: SystemTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub sandbox_id: String,
    pub name: String,
    pub state: ContainerState,
}

pub struct Runtime {
    config: RuntimeConfig,
}

impl Runtime {
    /// Opens (or creates) the runtime's state under `config.root`. Fails with `HostUnsupported`
    /// when the kernel lacks overlayfs or namespaces, or the process is not root.
    pub fn new(config: RuntimeConfig) -> Result<Self> {
        let _ = &config;
        todo!()
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Pulls `reference` (short names resolve to docker.io/library; registries on 127.0.0.0/8
    /// over plain HTTP) unless every blob is already present.
    pub async fn pull_image(&self, reference: &str, auth: Option<&RegistryAuth>) -> Result<Image> {
        let _ = (reference, auth);
        todo!()
    }

    /// The stored image of `reference`, if present.
    pub fn find_image(&self, reference: &str) -> Option<Image> {
        let _ = reference;
        todo!()
    }

    /// Creates the pod's shared namespaces and parent cgroup. Idempotent for an existing id.
    pub async fn run_sandbox(&self, spec: &SandboxSpec) -> Result<()> {
        let _ = spec;
        todo!()
    }

    /// Kills what is left in the sandbox and removes its namespaces, mounts and cgroups.
    /// Idempotent: removing a missing sandbox is not an error.
    pub async fn remove_sandbox(&self, id: &str) -> Result<()> {
        let _ = id;
        todo!()
    }

    /// Prepares a container (rootfs, cgroup, shim) without starting the user's process.
    /// Returns the container id.
    pub async fn create_container(&self, sandbox_id: &str, spec: &ContainerSpec) -> Result<String> {
        let _ = (sandbox_id, spec);
        todo!()
    }

    pub async fn start_container(&self, id: &str) -> Result<()> {
        let _ = id;
        todo!()
    }

    /// Resolves when the container has exited.
    pub async fn wait_container(&self, id: &str) -> Result<ExitStatus> {
        let _ = id;
        todo!()
    }

    /// SIGTERM, then SIGKILL once `grace` has passed; returns once it has exited.
    pub async fn stop_container(&self, id: &str, grace: Duration) -> Result<ExitStatus> {
        let _ = (id, grace);
        todo!()
    }

    /// Removes an exited container's rootfs, cgroup and state (its log file is the kubelet's).
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let _ = id;
        todo!()
    }

    pub fn container(&self, id: &str) -> Result<ContainerInfo> {
        let _ = id;
        todo!()
    }

    /// Everything the runtime has on disk, for adoption and cleanup after a restart.
    pub fn list_containers(&self) -> Result<Vec<ContainerInfo>> {
        todo!()
    }

    pub fn list_sandboxes(&self) -> Result<Vec<String>> {
        todo!()
    }
}

/// Entry point of `skiff shim …`: the binary calls this when re-executed by the runtime.
/// Never returns.
pub fn shim_main(args: Vec<String>) -> ! {
    let _ = args;
    todo!()
}
