//! Skiff's container runtime. It knows nothing of the Kubernetes API: the kubelet maps pod specs
//! onto these calls.
//!
//! - images: pulled from OCI distribution registries into a content-addressed store under
//!   `<root>/images` (blobs by digest, each layer unpacked once, whiteouts applied);
//! - sandboxes: the namespaces a pod's containers share (net, ipc, uts) and its parent cgroup;
//! - containers: an overlay rootfs over the image layers with its own writable layer, own pid and
//!   mount namespaces, a cgroup with limits, started through `skiff shim` (a re-exec of the
//!   `skiff` binary, single-threaded) which stays as the container's parent, writes its output to
//!   a CRI-format log file and records the exit status on disk, so a restarted server can adopt it;
//!   volumes are bind mounts ([`MountSpec`]); [`SecurityContext`] gives users, groups, Docker's
//!   default capabilities, masked and read-only `/proc` paths, a read-only root, no_new_privs,
//!   seccomp profiles ([`SeccompProfile`]: Docker's default or a Localhost JSON file);
//! - exec: [`Runtime::exec`] runs a process in a running container through `skiff shim exec`
//!   (its namespaces, cgroup, root, env, user; pipes or a pty of the container's devpts);
//! - archives: [`Runtime::import_archive`] loads `docker save` and OCI layout tarballs.
//!
//! CONTRACT (written before the implementation; the kubelet codes against it): the public items
//! below keep these names and signatures; later additions are additive.
//!
//! State on disk, all under `RuntimeConfig::root`:
//! ```text
//! images/        content-addressed store (see image/store.rs)
//! sandboxes/<id> pinned net/ipc/uts namespaces, hostname and hosts files (see sandbox.rs)
//! containers/<id> Spec, shim and exit records, writable layer (see rootfs.rs)
//! ```
//! and cgroups `<cgroup_root>/pod<sandbox id>/<container id>` in each hierarchy (cgroups/).
//!
//! Exit codes follow Kubernetes: the process's code, 128+signal when killed (137 for SIGKILL),
//! and 128 when the process could not be started (`start_container` then fails with Go's
//! `exec: "nope": executable file not found in $PATH`, Kubernetes' StartError).
//!
//! Tests: `cargo test -p skiff-runtime --features testing`, as root, with Debian's
//! `busybox-static` and `docker-registry` installed; `testing` holds the fixtures (busybox
//! image, local registry, push) that the `skiff` crate's black-box tests reuse.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

mod cgroups;
mod container;
mod exec;
mod image;
mod log;
mod mount;
pub mod mountinfo;
pub mod network;
mod rootfs;
mod sandbox;
mod seccomp;
mod security;
mod shim;
mod state;
mod stdio;
#[cfg(feature = "testing")]
pub mod testing;

pub use cgroups::{CgroupManager, Layout as cgroups_layout, Usage, meminfo_kib};
pub use exec::{ExecProcess, ExecReader, ExecSpec, ExecWriter, TerminalSize};
pub use image::manage::{
    IMAGE_GC_HIGH_PERCENT, IMAGE_GC_LOW_PERCENT, IMAGE_MINIMUM_GC_AGE, ImageManager, PreloadOutcome, Preloaded,
    Reclaimed, Removal, display_name as image_display_name, short_id as image_short_id,
};
pub use image::progress::{LayerInfo, PullEvent, PullProgress, Pulled, RecordedProgress};
pub use image::reference::{Reference, ReferenceError};
pub use image::registries::{Registries, RegistriesError};
pub use log::{CriStream, format_cri_line, rfc3339_nano};
pub use seccomp::{SeccompError, SeccompProfile};
pub use stdio::{AttachInput, AttachOutput, AttachStream};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    HostUnsupported(String),
    #[error("image pull failed for {reference}: {message}")]
    Pull { reference: String, message: String },
    /// The registry answered that the manifest (tag or digest) or the repository does not exist.
    #[error("failed to resolve reference \"{reference}\": {reference}: not found ({message})")]
    ImageNotFound { reference: String, message: String },
    /// The reference cannot be parsed (Kubernetes: InvalidImageName).
    #[error("invalid image reference {reference:?}: {source}")]
    InvalidReference {
        reference: String,
        #[source]
        source: ReferenceError,
    },
    #[error("no such sandbox {0}")]
    NoSandbox(String),
    #[error("no such container {0}")]
    NoContainer(String),
    /// `skiff image rm` of a name, digest or ID the store does not have.
    #[error("No such image: {0}")]
    NoSuchImage(String),
    /// A removal `docker rmi` would refuse too: the image is in use, or the ID is ambiguous.
    #[error("{0}")]
    ImageConflict(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Spawn(String),
    #[error("pod network: {0}")]
    Network(String),
}

impl Error {
    /// True when a pull failed because the image or tag does not exist (kubelet: ErrImagePull
    /// with "not found"), as opposed to a transport failure.
    pub fn is_image_not_found(&self) -> bool {
        matches!(self, Error::ImageNotFound { .. })
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
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=value`
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

/// A pulled image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    /// The pod name (uts namespace). Ignored with `host_network`: the pod has the node's.
    pub hostname: String,
    /// `spec.hostNetwork`: the pod shares the node's network and uts namespaces (as the
    /// kubelet and containerd do), so it gets no veth and no address of its own.
    pub host_network: bool,
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
    /// Host paths bind-mounted into the container (volumes), in order, over the runtime's own
    /// mounts (`/proc`, `/dev`, `/etc/hosts`, …).
    pub mounts: Vec<MountSpec>,
    /// The Kubernetes securityContext; its default is Docker's unprivileged container.
    pub security: SecurityContext,
    /// The process's own stdin and terminal, reached through [`Runtime::attach`].
    pub stdio: StdioSpec,
}

/// Kubernetes' `stdin`, `stdinOnce` and `tty` of a container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StdioSpec {
    /// Keep stdin open for attach sessions (otherwise the process reads `/dev/null`).
    pub stdin: bool,
    /// Close stdin when the first attach session that used it ends.
    pub stdin_once: bool,
    /// A terminal as stdin, stdout and stderr.
    pub tty: bool,
}

/// A container's securityContext, already merged with the pod's (the container's fields win).
/// The default runs as the image's user with Docker's default capabilities, masked and
/// read-only `/proc` paths, a writable root and privilege escalation allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecurityContext {
    /// `runAsUser`: replaces the image's user; the group is then that uid's in the image's
    /// `/etc/passwd`, else 0.
    pub run_as_user: Option<u32>,
    /// `runAsGroup`: replaces the primary group.
    pub run_as_group: Option<u32>,
    /// The pod's `supplementalGroups` (and `fsGroup`, which the kubelet adds).
    pub supplemental_groups: Vec<u32>,
    pub read_only_root_filesystem: bool,
    /// `allowPrivilegeEscalation: false`.
    pub no_new_privs: bool,
    /// All capabilities, no masked or read-only paths, a writable `/sys`.
    pub privileged: bool,
    /// `capabilities.add` / `capabilities.drop`: names with or without `CAP_`, or `ALL`.
    pub capabilities_add: Vec<String>,
    pub capabilities_drop: Vec<String>,
    /// `seccompProfile`: a filter installed right before the process execs (the init's and
    /// every exec'd process's); none for privileged containers, as containerd does.
    pub seccomp: SeccompProfile,
}

/// A bind mount of a host file or directory into a container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountSpec {
    /// An existing host path (directory or file); symlinks in it are the host's.
    pub source: PathBuf,
    /// Absolute path in the container. Missing directories (or the file) are created in the
    /// container's writable layer; symlinks on the way are resolved inside its root.
    pub destination: String,
    pub read_only: bool,
    pub propagation: MountPropagation,
}

/// Kubernetes' `mountPropagation`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MountPropagation {
    /// `None`: rprivate, nothing propagates either way.
    #[default]
    Private,
    /// rslave: mounts made on the host under the source appear in the container.
    HostToContainer,
    /// rshared: and the container's mounts appear on the host (Kubernetes allows it for
    /// privileged containers only; the kubelet checks that).
    Bidirectional,
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
    images: std::sync::Arc<image::store::ImageStore>,
    /// Mirrors and per-host settings for pulls (`registries.yaml`).
    registries: Registries,
    cgroups: CgroupManager,
    /// The pod network; without one, sandboxes have loopback only.
    network: Option<network::PodNetwork>,
}

impl Runtime {
    /// Opens (or creates) the runtime's state under `config.root`. Fails with `HostUnsupported`
    /// when the kernel lacks overlayfs or namespaces, or the process is not root.
    pub fn new(config: RuntimeConfig) -> Result<Self> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(Error::HostUnsupported("the container runtime must run as root".into()));
        }
        let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
        if !filesystems.lines().any(|l| l.split_whitespace().last() == Some("overlay")) {
            return Err(Error::HostUnsupported("the kernel has no overlay filesystem (see /proc/filesystems)".into()));
        }
        for ns in ["net", "ipc", "uts", "pid", "mnt"] {
            if !std::path::Path::new("/proc/self/ns").join(ns).exists() {
                return Err(Error::HostUnsupported(format!("the kernel lacks {ns} namespaces")));
            }
        }
        let cgroups =
            CgroupManager::detect(&config.cgroup_root).map_err(|e| Error::HostUnsupported(format!("cgroups: {e}")))?;
        for d in ["containers", "sandboxes"] {
            let p = config.root.join(d);
            std::fs::create_dir_all(&p).map_err(state::io_ctx(format!("creating {}", p.display())))?;
        }
        let images = std::sync::Arc::new(image::store::ImageStore::open(&config.root.join("images"))?);
        Ok(Runtime { config, images, registries: Registries::default(), cgroups, network: None })
    }

    /// Gives every sandbox made from now on an address on the pod network (a bridge and a
    /// veth pair per pod, see [`network`]).
    pub fn with_network(mut self, config: network::NetworkConfig) -> Result<Self> {
        self.network = Some(network::PodNetwork::new(config)?);
        Ok(self)
    }

    /// Pulls from now on go through these mirrors and use these per-host credentials and TLS
    /// settings (see [`Registries`]).
    pub fn with_registries(mut self, registries: Registries) -> Self {
        self.registries = registries;
        self
    }

    pub fn network(&self) -> Option<&network::PodNetwork> {
        self.network.as_ref()
    }

    /// The pod IP of a sandbox, when the runtime has a pod network.
    pub fn sandbox_ip(&self, id: &str) -> Option<std::net::Ipv4Addr> {
        self.network.as_ref()?.address(id).ok().flatten()
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Pulls `reference` (short names resolve to docker.io/library; registries on 127.0.0.0/8
    /// over plain HTTP) unless every blob is already present.
    pub async fn pull_image(&self, reference: &str, auth: Option<&RegistryAuth>) -> Result<Image> {
        let pulled = image::pull::pull_reference(&self.images, &self.registries, reference, auth, None).await?;
        Ok(pulled.image)
    }

    /// Imports a `docker save` tarball or an OCI image layout tarball (plain or gzip'd) into the
    /// image store: each layer unpacked once (layers already present are kept), every image
    /// recorded under its tags (an untagged one under its ID). Returns one entry per reference.
    pub async fn import_archive(&self, path: &std::path::Path) -> Result<Vec<Image>> {
        let (images, path) = (self.images(), path.to_path_buf());
        blocking(move || images.import(&path)).await
    }

    /// The image store for listing, removing and pruning images (what `skiff images` uses).
    pub fn images(&self) -> ImageManager {
        ImageManager::with_store(self.images.clone(), self.config.root.join("containers"))
    }

    /// The stored image of `reference`, if present.
    pub fn find_image(&self, reference: &str) -> Option<Image> {
        let Ok(r) = Reference::parse(reference) else {
            // Image IDs (`sha256:…`) are not references but identify an image too.
            return self.images.find(reference);
        };
        self.images.find(&r.to_string()).or_else(|| {
            let digest = r.digest.as_ref()?;
            self.images.find(&format!("{}@{digest}", r.name()))
        })
    }

    /// Every stored image (one entry per reference).
    pub fn list_images(&self) -> Vec<Image> {
        self.images.list()
    }

    fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.config.root.join("sandboxes").join(id)
    }

    fn container_dir(&self, id: &str) -> rootfs::ContainerDir {
        rootfs::ContainerDir(self.config.root.join("containers").join(id))
    }

    /// Creates the pod's shared namespaces and parent cgroup. Idempotent for an existing id.
    pub async fn run_sandbox(&self, spec: &SandboxSpec) -> Result<()> {
        check_id("sandbox", &spec.id)?;
        let dir = self.sandbox_dir(&spec.id);
        let pod = self.cgroups.pod_path(&spec.id);
        let cgroups = self.cgroups.clone();
        let (spec_id, host_network) = (spec.id.clone(), spec.host_network);
        let spec = spec.clone();
        let net_ns = sandbox::ns_path(&dir, "net");
        blocking(move || {
            cgroups.create(&pod, &Resources::default()).map_err(cgroup_err)?;
            sandbox::create(&dir, &spec)
        })
        .await?;
        if let Some(network) = &self.network
            && !host_network
        {
            network.attach(&spec_id, &net_ns).await?;
        }
        Ok(())
    }

    /// Kills what is left in the sandbox and removes its namespaces, mounts and cgroups.
    /// Idempotent: removing a missing sandbox is not an error.
    pub async fn remove_sandbox(&self, id: &str) -> Result<()> {
        check_id("sandbox", id)?;
        let dir = self.sandbox_dir(id);
        let pod = self.cgroups.pod_path(id);
        let cgroups = self.cgroups.clone();
        if let Some(network) = &self.network {
            network.detach(id).await?;
        }
        blocking(move || {
            cgroups.kill_and_remove(&pod, Duration::from_secs(10)).map_err(cgroup_err)?;
            sandbox::destroy(&dir)
        })
        .await
    }

    /// Prepares a container (rootfs, cgroup, shim) without starting the user's process.
    /// Returns the container id.
    pub async fn create_container(&self, sandbox_id: &str, spec: &ContainerSpec) -> Result<String> {
        check_id("sandbox", sandbox_id)?;
        let sandbox_dir = self.sandbox_dir(sandbox_id);
        let Some(sandbox) = sandbox::record(&sandbox_dir)? else {
            return Err(Error::NoSandbox(sandbox_id.to_string()));
        };
        if spec.argv.is_empty() {
            return Err(Error::Spawn("no command: neither the container nor its image names one".into()));
        }
        // Held until the container's config names its layers: from then on an image removal
        // sees the image as in use.
        let store = self.images.clone();
        let _lock = blocking(move || store.lock_shared()).await?;
        if let Some(image) = &spec.image
            && let Some(missing) = image.layers.iter().find(|l| !self.images.has_layer(l))
        {
            return Err(Error::Spawn(format!("image {} is missing layer {missing}: pull it again", image.reference)));
        }
        let id = state::random_id()?;
        let dir = self.container_dir(&id);
        let cgroup = self.cgroups.container_path(sandbox_id, &id);
        let result = async {
            for d in [dir.upper(), dir.work(), dir.rootfs(), dir.empty_lower()] {
                std::fs::create_dir_all(&d).map_err(state::io_ctx(format!("creating {}", d.display())))?;
            }
            let oci = container::build_spec(
                &dir,
                &sandbox_dir,
                sandbox_id,
                &sandbox.hostname,
                &cgroup,
                &self.images.layers_root(),
                spec,
            )?;
            oci.save(dir.file(rootfs::CONFIG)).map_err(|e| Error::Io {
                context: format!("writing {}", dir.file(rootfs::CONFIG).display()),
                source: std::io::Error::other(e),
            })?;
            self.cgroups.create(&cgroup, &spec.resources).map_err(cgroup_err)?;
            container::spawn_shim(&self.config.shim_exe, &dir).await
        }
        .await;
        match result {
            Ok(()) => Ok(id),
            Err(e) => {
                let _ = container::kill_and_wait(&dir, &id, Duration::from_secs(5)).await;
                let _ = self.cgroups.kill_and_remove(&cgroup, Duration::from_secs(5));
                let _ = std::fs::remove_dir_all(dir.path());
                Err(e)
            }
        }
    }

    /// Runs the user's process of a created container. An exec failure (missing or
    /// non-executable file) is returned as [`Error::Spawn`] with Go's wording
    /// (`exec: "nope": executable file not found in $PATH`), and the container is then exited
    /// with code 128, as Kubernetes shows a `StartError`.
    pub async fn start_container(&self, id: &str) -> Result<()> {
        check_id("container", id)?;
        let dir = self.container_dir(id);
        match container::state(&dir)? {
            ContainerState::Created => {}
            ContainerState::Running { .. } => return Err(Error::Spawn(format!("container {id} is already running"))),
            ContainerState::Exited(_) => return Err(Error::Spawn(format!("container {id} has already exited"))),
        }
        let rec: shim::ShimRecord =
            state::read_json(&dir.file(rootfs::SHIM_STATE))?.ok_or_else(|| Error::NoContainer(id.to_string()))?;
        blocking(move || container::release_init(&dir, rec.init)).await
    }

    /// Resolves when the container has exited.
    pub async fn wait_container(&self, id: &str) -> Result<ExitStatus> {
        check_id("container", id)?;
        container::wait_exit(&self.container_dir(id), id).await
    }

    /// SIGTERM, then SIGKILL once `grace` has passed; returns once it has exited.
    pub async fn stop_container(&self, id: &str, grace: Duration) -> Result<ExitStatus> {
        check_id("container", id)?;
        let dir = self.container_dir(id);
        let current = container::state(&dir)?;
        if let ContainerState::Exited(status) = current {
            return Ok(status);
        }
        let rec: shim::ShimRecord =
            state::read_json(&dir.file(rootfs::SHIM_STATE))?.ok_or_else(|| Error::NoContainer(id.to_string()))?;
        // A created container has no user process yet to shut down gracefully.
        let first = if current == ContainerState::Created { libc::SIGKILL } else { libc::SIGTERM };
        container::signal(rec.init, first);
        match tokio::time::timeout(grace, container::wait_exit(&dir, id)).await {
            Ok(status) => status,
            Err(_) => {
                container::signal(rec.init, libc::SIGKILL);
                container::wait_exit(&dir, id).await
            }
        }
    }

    /// Removes an exited container's rootfs, cgroup and state (its log file is the kubelet's).
    /// A container still running is killed first; removing a missing one is not an error.
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        check_id("container", id)?;
        let dir = self.container_dir(id);
        if !dir.path().exists() {
            return Ok(());
        }
        container::kill_and_wait(&dir, id, Duration::from_secs(10)).await?;
        let spec = oci_spec::runtime::Spec::load(dir.file(rootfs::CONFIG)).ok();
        let cgroups = self.cgroups.clone();
        blocking(move || {
            if let Some(meta) = spec.as_ref().and_then(|s| container::Meta::from_spec(s).ok()) {
                cgroups.kill_and_remove(&meta.cgroup_rel, Duration::from_secs(10)).map_err(cgroup_err)?;
            }
            // The overlay is mounted only inside the container's own mount namespace, which died
            // with it; a detach here covers an older layout or a manual mount.
            let _ = nix::mount::umount2(&dir.rootfs(), nix::mount::MntFlags::MNT_DETACH);
            std::fs::remove_dir_all(dir.path()).map_err(state::io_ctx(format!("removing {}", dir.path().display())))
        })
        .await
    }

    /// Runs another process in a running container: in its namespaces and cgroup, with its root,
    /// environment (`spec.env` on top), working directory and user (see [`ExecSpec`]). An
    /// executable that cannot be run fails here with Go's wording, as `start_container` does.
    /// A session on the running container's own stdio: its output from now on, and its stdin
    /// and terminal when the container has them ([`StdioSpec`]).
    pub async fn attach(&self, id: &str) -> Result<(AttachOutput, AttachInput)> {
        check_id("container", id)?;
        let dir = self.container_dir(id);
        if !matches!(container::state(&dir)?, ContainerState::Running { .. }) {
            return Err(Error::Spawn(format!("container {id} is not running")));
        }
        stdio::connect(&dir).await
    }

    pub async fn exec(&self, id: &str, spec: ExecSpec) -> Result<ExecProcess> {
        check_id("container", id)?;
        let dir = self.container_dir(id);
        if !matches!(container::state(&dir)?, ContainerState::Running { .. }) {
            return Err(Error::Spawn(format!("container {id} is not running")));
        }
        if spec.argv.is_empty() {
            return Err(Error::Spawn("exec needs a command".into()));
        }
        exec::spawn(&self.config.shim_exe, &dir, &spec).await
    }

    pub fn container(&self, id: &str) -> Result<ContainerInfo> {
        check_id("container", id)?;
        container::info(&self.container_dir(id), id)
    }

    /// What a container's cgroup has used so far (cumulative CPU, memory working set), for the
    /// kubelet's resource metrics.
    pub fn container_usage(&self, sandbox_id: &str, id: &str) -> Result<Usage> {
        check_id("sandbox", sandbox_id)?;
        check_id("container", id)?;
        self.cgroups.usage(&self.cgroups.container_path(sandbox_id, id)).map_err(cgroup_err)
    }

    /// The whole node's usage (root cgroup, or /proc where it has no counters).
    pub fn node_usage(&self) -> Result<Usage> {
        self.cgroups.root_usage().map_err(cgroup_err)
    }

    /// Everything the runtime has on disk, for adoption and cleanup after a restart.
    pub fn list_containers(&self) -> Result<Vec<ContainerInfo>> {
        let root = self.config.root.join("containers");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&root).map_err(state::io_ctx(format!("reading {}", root.display())))?.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            match container::info(&self.container_dir(&id), &id) {
                Ok(info) => out.push(info),
                // Half-created (no config yet) or removed meanwhile.
                Err(Error::NoContainer(_)) => {}
                Err(e) => tracing::warn!(container = %id, error = %e, "unreadable container state"),
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    pub fn list_sandboxes(&self) -> Result<Vec<String>> {
        let root = self.config.root.join("sandboxes");
        let mut out: Vec<String> = std::fs::read_dir(&root)
            .map_err(state::io_ctx(format!("reading {}", root.display())))?
            .flatten()
            .filter(|e| sandbox::is_ready(&e.path()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        out.sort();
        Ok(out)
    }
}

/// Ids become path components: refuse anything that could leave its directory.
fn check_id(what: &str, id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !id.starts_with('.');
    if ok {
        Ok(())
    } else if what == "sandbox" {
        Err(Error::NoSandbox(id.to_string()))
    } else {
        Err(Error::NoContainer(id.to_string()))
    }
}

fn cgroup_err(e: cgroups::Error) -> Error {
    Error::Io { context: "cgroups".into(), source: std::io::Error::other(e) }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Spawn(format!("runtime task failed: {e}")))?
}

/// Entry point of `skiff shim …`: the binary calls this when re-executed by the runtime, with
/// the arguments after `skiff` (a leading `shim` is accepted too): `shim container <dir>`.
/// Call it before starting any threads or async runtime: the shim forks the container's init.
/// Never returns.
pub fn shim_main(args: Vec<String>) -> ! {
    shim::main(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    /// The kubelet drives the runtime from spawned tokio tasks, so every future must be Send.
    #[allow(dead_code)]
    fn runtime_futures_are_send(rt: &Runtime, spec: &ContainerSpec, sandbox: &SandboxSpec) {
        assert_send(&rt.pull_image("busybox", None));
        assert_send(&rt.run_sandbox(sandbox));
        assert_send(&rt.remove_sandbox("s"));
        assert_send(&rt.create_container("s", spec));
        assert_send(&rt.start_container("c"));
        assert_send(&rt.wait_container("c"));
        assert_send(&rt.stop_container("c", Duration::ZERO));
        assert_send(&rt.remove_container("c"));
        assert_send(&rt.exec("c", ExecSpec::default()));
        assert_send(&rt.import_archive(std::path::Path::new("a.tar")));
    }

    #[test]
    fn ids_that_could_leave_their_directory_are_refused() {
        assert!(check_id("container", &"a".repeat(64)).is_ok());
        assert!(check_id("sandbox", "6f1c2a7e-uid").is_ok());
        for bad in ["", "..", "../x", "a/b", ".hidden"] {
            assert!(check_id("container", bad).is_err(), "{bad:?}");
        }
    }
}
