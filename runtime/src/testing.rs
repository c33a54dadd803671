//! Test fixtures for privileged runtime tests and the black-box tests of the `skiff` crate
//! (enable the `testing` feature, e.g. `skiff-runtime = { workspace = true, features = ["testing"] }`
//! under `[dev-dependencies]`). Nothing here reaches beyond the loopback interface.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use skiff_runtime::testing::{LocalRegistry, build_busybox_image, push};
//! let dir = tempfile::tempdir()?;
//! let image = build_busybox_image(dir.path())?;         // OCI layout of /bin/busybox
//! let registry = LocalRegistry::start()?;                // docker-registry on 127.0.0.1:<free>
//! let reference = push(&registry, "busybox:1", &image).await?;  // "127.0.0.1:PORT/busybox:1"
//! // `Runtime::pull_image(&reference, registry.auth().as_ref())` now pulls it; the registry
//! // process is killed (by PID) when `registry` is dropped.
//! # Ok(()) }
//! ```
//!
//! The image is reproducible (sorted entries, fixed mtimes, gzip without a timestamp), so its
//! digests are stable. Layer 1 holds busybox, its applet symlinks (`busybox --list-full`),
//! `/etc/passwd`, `/etc/group` and the whiteout fixtures under `/etc/skiff/`; layer 2 removes
//! `/etc/skiff/removed-file` and `/etc/skiff/removed-dir` with whiteouts, makes
//! `/etc/skiff/opaque/` opaque (hiding `old`, adding `new`) and adds `/etc/skiff/layer2`.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::RegistryAuth;
use crate::image::reference::Reference;

pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The fixed mtime of every entry (2023-11-14), for stable digests.
const MTIME: u64 = 1_700_000_000;

#[derive(Debug, Clone)]
pub struct Blob {
    pub media_type: String,
    pub digest: String,
    pub data: Vec<u8>,
}

impl Blob {
    fn new(media_type: &str, data: Vec<u8>) -> Blob {
        Blob { media_type: media_type.into(), digest: sha256(&data), data }
    }
}

/// An image as its blobs (also written as an OCI layout directory at `dir`).
#[derive(Debug, Clone)]
pub struct OciImage {
    pub dir: PathBuf,
    /// gzip'd layers, lowest first.
    pub layers: Vec<Blob>,
    /// sha256 of each uncompressed layer tar.
    pub diff_ids: Vec<String>,
    pub config: Blob,
    pub manifest: Blob,
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// One entry of a fixture layer.
pub enum Entry {
    Dir(&'static str, u32),
    File(String, Vec<u8>, u32),
    Symlink(String, String),
    HardLink(&'static str, &'static str),
}

/// A reproducible tar of `entries` (sorted by path), and its gzip'd form.
pub fn layer_tar(mut entries: Vec<Entry>) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    fn path(e: &Entry) -> String {
        match e {
            Entry::Dir(p, _) | Entry::HardLink(p, _) => p.to_string(),
            Entry::File(p, _, _) | Entry::Symlink(p, _) => p.clone(),
        }
    }
    entries.sort_by_key(path);
    let mut b = tar::Builder::new(Vec::new());
    for e in &entries {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(MTIME);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(0);
        match e {
            Entry::Dir(p, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                b.append_data(&mut h, p, std::io::empty())?;
            }
            Entry::File(p, data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, &data[..])?;
            }
            Entry::Symlink(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                b.append_link(&mut h, p, target)?;
            }
            Entry::HardLink(p, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o644);
                b.append_link(&mut h, p, target)?;
            }
        }
    }
    let tar = b.into_inner()?;
    let mut gz = flate2::GzBuilder::new().operating_system(255).write(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar)?;
    Ok((tar, gz.finish()?))
}

/// Builds the busybox test image from the host's static `/bin/busybox` (Debian
/// `busybox-static`) and writes it as an OCI layout into `dir`.
pub fn build_busybox_image(dir: &Path) -> std::io::Result<OciImage> {
    let busybox = std::fs::read("/bin/busybox")
        .map_err(|e| std::io::Error::new(e.kind(), format!("/bin/busybox (apt-get install busybox-static): {e}")))?;
    let list = Command::new("/bin/busybox").arg("--list-full").output()?;
    let mut base = vec![
        Entry::Dir("bin", 0o755),
        Entry::Dir("sbin", 0o755),
        Entry::Dir("usr", 0o755),
        Entry::Dir("usr/bin", 0o755),
        Entry::Dir("usr/sbin", 0o755),
        Entry::Dir("etc", 0o755),
        Entry::Dir("root", 0o700),
        Entry::Dir("tmp", 0o1777),
        Entry::Dir("var", 0o755),
        Entry::Dir("home", 0o755),
        Entry::Dir("etc/skiff", 0o755),
        Entry::Dir("etc/skiff/removed-dir", 0o755),
        Entry::Dir("etc/skiff/opaque", 0o755),
        Entry::File("bin/busybox".into(), busybox, 0o755),
        Entry::File(
            "etc/passwd".into(),
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n".to_vec(),
            0o644,
        ),
        Entry::File("etc/group".into(), b"root:x:0:\nnogroup:x:65534:\n".to_vec(), 0o644),
        Entry::File("etc/skiff/removed-file".into(), b"removed by layer 2\n".to_vec(), 0o644),
        Entry::File("etc/skiff/removed-dir/inner".into(), b"removed with its dir\n".to_vec(), 0o644),
        Entry::File("etc/skiff/opaque/old".into(), b"hidden by the opaque dir\n".to_vec(), 0o644),
        Entry::File("etc/skiff/kept".into(), b"kept\n".to_vec(), 0o644),
        Entry::HardLink("etc/skiff/kept-hardlink", "etc/skiff/kept"),
    ];
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim().trim_start_matches('/');
        if applet.is_empty() || applet == "bin/busybox" {
            continue;
        }
        base.push(Entry::Symlink(applet.to_string(), "/bin/busybox".into()));
    }
    let top = vec![
        Entry::Dir("etc", 0o755),
        Entry::Dir("etc/skiff", 0o755),
        Entry::Dir("etc/skiff/opaque", 0o755),
        Entry::File("etc/skiff/.wh.removed-file".into(), vec![], 0o644),
        Entry::File("etc/skiff/.wh.removed-dir".into(), vec![], 0o644),
        Entry::File("etc/skiff/opaque/.wh..wh..opq".into(), vec![], 0o644),
        Entry::File("etc/skiff/opaque/new".into(), b"new\n".to_vec(), 0o644),
        Entry::File("etc/skiff/layer2".into(), b"layer 2\n".to_vec(), 0o644),
    ];
    let config = serde_json::json!({
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "Cmd": ["sh"],
    });
    build_image(dir, vec![base, top], config)
}

/// Writes an OCI layout of the given layers and runtime config (`Env`, `Cmd`, …) into `dir`.
pub fn build_image(
    dir: &Path,
    layers: Vec<Vec<Entry>>,
    runtime_config: serde_json::Value,
) -> std::io::Result<OciImage> {
    let mut blobs = Vec::new();
    let mut diff_ids = Vec::new();
    for entries in layers {
        let (tar, gz) = layer_tar(entries)?;
        diff_ids.push(sha256(&tar));
        blobs.push(Blob::new(LAYER_MEDIA_TYPE, gz));
    }
    let config = serde_json::json!({
        "architecture": go_arch(),
        "os": "linux",
        "created": "2023-11-14T22:13:20Z",
        "config": runtime_config,
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    });
    let config = Blob::new(CONFIG_MEDIA_TYPE, serde_json::to_vec(&config)?);
    let manifest = manifest_of(MANIFEST_MEDIA_TYPE, &config, &blobs)?;
    let descriptor =
        |b: &Blob| serde_json::json!({"mediaType": b.media_type, "digest": b.digest, "size": b.data.len()});

    let blob_dir = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blob_dir)?;
    for b in blobs.iter().chain([&config, &manifest]) {
        std::fs::write(blob_dir.join(b.digest.trim_start_matches("sha256:")), &b.data)?;
    }
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [descriptor(&manifest)]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
    Ok(OciImage { dir: dir.to_path_buf(), layers: blobs, diff_ids, config, manifest })
}

impl OciImage {
    /// The same layers with a config for another architecture (for multi-platform indexes).
    pub fn for_architecture(&self, arch: &str) -> std::io::Result<OciImage> {
        let mut config: serde_json::Value = serde_json::from_slice(&self.config.data)?;
        config["architecture"] = arch.into();
        let config = Blob::new(CONFIG_MEDIA_TYPE, serde_json::to_vec(&config)?);
        let manifest = manifest_of(MANIFEST_MEDIA_TYPE, &config, &self.layers)?;
        Ok(OciImage { config, manifest, ..self.clone() })
    }

    /// The same image described with Docker's schema 2 media types instead of OCI's.
    pub fn as_docker_schema2(&self) -> std::io::Result<OciImage> {
        let layers: Vec<Blob> = self
            .layers
            .iter()
            .map(|b| Blob { media_type: "application/vnd.docker.image.rootfs.diff.tar.gzip".into(), ..b.clone() })
            .collect();
        let config =
            Blob { media_type: "application/vnd.docker.container.image.v1+json".into(), ..self.config.clone() };
        let manifest = manifest_of("application/vnd.docker.distribution.manifest.v2+json", &config, &layers)?;
        Ok(OciImage { layers, config, manifest, ..self.clone() })
    }
}

pub const ZSTD_LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

impl OciImage {
    /// The same image (same config, so the same diff IDs and image ID) with each layer
    /// recompressed as zstd and the `tar+zstd` media type. Only the blobs change: the OCI layout
    /// at `dir` still holds the gzip'd image.
    pub fn with_zstd_layers(&self) -> std::io::Result<OciImage> {
        let mut layers = Vec::new();
        for b in &self.layers {
            let mut tar = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&b.data[..]), &mut tar)?;
            let zstd = ruzstd::encoding::compress_to_vec(&tar[..], ruzstd::encoding::CompressionLevel::Fastest);
            layers.push(Blob::new(ZSTD_LAYER_MEDIA_TYPE, zstd));
        }
        let manifest = manifest_of(MANIFEST_MEDIA_TYPE, &self.config, &layers)?;
        Ok(OciImage { layers, manifest, ..self.clone() })
    }
}

impl OciImage {
    /// Writes the image as `docker save` does (Docker before 25: `<diff id>/layer.tar` holding
    /// each uncompressed layer, `<config digest>.json`, and `manifest.json` with `RepoTags`).
    pub fn write_docker_save(&self, repo_tags: &[&str], out: &Path) -> std::io::Result<()> {
        let mut b = tar::Builder::new(std::fs::File::create(out)?);
        let mut names = Vec::new();
        for (blob, diff_id) in self.layers.iter().zip(&self.diff_ids) {
            let mut layer = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&blob.data[..]), &mut layer)?;
            let name = format!("{}/layer.tar", diff_id.trim_start_matches("sha256:"));
            append_file(&mut b, &name, &layer)?;
            names.push(name);
        }
        let config_name = format!("{}.json", self.config.digest.trim_start_matches("sha256:"));
        append_file(&mut b, &config_name, &self.config.data)?;
        let manifest = serde_json::json!([{"Config": config_name, "RepoTags": repo_tags, "Layers": names}]);
        append_file(&mut b, "manifest.json", &serde_json::to_vec(&manifest)?)?;
        b.into_inner()?.sync_all()
    }

    /// Writes the image as an OCI image layout tarball (`oci-layout`, `index.json`, `blobs/`),
    /// gzip'd if `gzip`, its index entry annotated `org.opencontainers.image.ref.name: ref_name`.
    pub fn write_oci_archive(&self, ref_name: &str, gzip: bool, out: &Path) -> std::io::Result<()> {
        let mut b = tar::Builder::new(Vec::new());
        append_file(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": self.manifest.media_type,
            "digest": self.manifest.digest,
            "size": self.manifest.data.len(),
            "annotations": {"org.opencontainers.image.ref.name": ref_name},
        }]});
        append_file(&mut b, "index.json", &serde_json::to_vec(&index)?)?;
        for blob in self.layers.iter().chain([&self.config, &self.manifest]) {
            append_file(&mut b, &format!("blobs/sha256/{}", blob.digest.trim_start_matches("sha256:")), &blob.data)?;
        }
        let tar = b.into_inner()?;
        let data = if gzip {
            let mut gz = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::fast());
            gz.write_all(&tar)?;
            gz.finish()?
        } else {
            tar
        };
        std::fs::write(out, data)
    }
}

fn append_file<W: Write>(b: &mut tar::Builder<W>, name: &str, data: &[u8]) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(MTIME);
    h.set_uid(0);
    h.set_gid(0);
    b.append_data(&mut h, name, data)
}

fn manifest_of(media_type: &str, config: &Blob, layers: &[Blob]) -> std::io::Result<Blob> {
    let descriptor =
        |b: &Blob| serde_json::json!({"mediaType": b.media_type, "digest": b.digest, "size": b.data.len()});
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": descriptor(config),
        "layers": layers.iter().map(descriptor).collect::<Vec<_>>(),
    });
    Ok(Blob::new(media_type, serde_json::to_vec(&manifest)?))
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Debian's `docker-registry` (distribution 2.8) serving on `127.0.0.1:<free port>` from a temp
/// dir; killed by PID and its dir removed on drop.
pub struct LocalRegistry {
    child: Child,
    addr: String,
    auth: Option<RegistryAuth>,
    /// Serving HTTPS (see [`LocalRegistry::start_with_tls`]).
    tls: bool,
    dir: tempfile::TempDir,
}

impl LocalRegistry {
    pub fn start() -> std::io::Result<LocalRegistry> {
        Self::start_inner(None, None)
    }

    /// Over HTTPS with this PEM certificate (chain) and key, which should name `127.0.0.1`.
    /// [`push`] skips verifying it; pulls need `registries.yaml` TLS settings, as loopback
    /// registries are otherwise reached over plain HTTP.
    pub fn start_with_tls(cert_pem: &str, key_pem: &str) -> std::io::Result<LocalRegistry> {
        Self::start_inner(None, Some((cert_pem, key_pem)))
    }

    /// With htpasswd basic auth for one user.
    pub fn start_with_auth(username: &str, password: &str) -> std::io::Result<LocalRegistry> {
        Self::start_inner(Some(RegistryAuth { username: username.into(), password: password.into() }), None)
    }

    fn start_inner(auth: Option<RegistryAuth>, tls: Option<(&str, &str)>) -> std::io::Result<LocalRegistry> {
        let exe = Path::new("/usr/bin/docker-registry");
        if !exe.exists() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "/usr/bin/docker-registry is missing (apt-get install docker-registry)",
            ));
        }
        let dir = tempfile::Builder::new().prefix("skiff-registry-").tempdir()?;
        // The port is free now; the registry binds it a moment later (a small, accepted race).
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        // Under `http:`, which the config above ends with.
        if let Some((cert, key)) = tls {
            let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
            std::fs::write(&cert_path, cert)?;
            std::fs::write(&key_path, key)?;
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert_path.display(),
                key_path.display()
            ));
        }
        if let Some(a) = &auth {
            let hash = bcrypt::hash(&a.password, 5).map_err(std::io::Error::other)?;
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{}:{hash}\n", a.username))?;
            config.push_str(&format!("auth:\n  htpasswd:\n    realm: skiff-test\n    path: {}\n", htpasswd.display()));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new(exe)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mut registry = LocalRegistry { child, addr, auth, tls: tls.is_some(), dir };
        registry.wait_ready()?;
        Ok(registry)
    }

    fn wait_ready(&mut self) -> std::io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if std::net::TcpStream::connect(&self.addr).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                let log = std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default();
                return Err(std::io::Error::other(format!("docker-registry exited with {status}: {log}")));
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "docker-registry did not listen in 15s"));
            }
            // A fixture's start-up wait: the registry offers no readiness signal but its port.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn auth(&self) -> Option<RegistryAuth> {
        self.auth.clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A client for pushing to this registry: plain HTTP, or HTTPS without verification.
    fn client(&self, reference: &Reference) -> std::io::Result<oci_client::Client> {
        let registries = if self.tls {
            let yaml = format!("configs:\n  \"{}\":\n    tls:\n      insecure_skip_verify: true\n", self.addr);
            crate::Registries::parse(&yaml, Path::new("registries.yaml")).map_err(std::io::Error::other)?
        } else {
            crate::Registries::default()
        };
        Ok(crate::image::pull::client_for(reference, &registries))
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pushes `image` as `<registry>/<name_tag>` (or `<name>@<digest>`) and returns that reference. The manifest is
/// pushed byte for byte, so its digest is `image.manifest.digest`.
/// Removes every container and sandbox of a test's runtime and its cgroup root. For a test
/// fixture's `Drop`, which runs inside the test's tokio runtime and so cannot block on it: the
/// work runs on a thread with a runtime of its own.
pub fn remove_everything(rt: crate::Runtime, cgroup_root: &str) {
    let cgroup_root = cgroup_root.to_string();
    std::thread::spawn(move || {
        let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
        tokio.block_on(async {
            for c in rt.list_containers().unwrap_or_default() {
                let _ = rt.remove_container(&c.id).await;
            }
            for s in rt.list_sandboxes().unwrap_or_default() {
                let _ = rt.remove_sandbox(&s).await;
            }
        });
        if let Ok(m) = crate::CgroupManager::detect(&cgroup_root) {
            let _ = m.kill_and_remove(Path::new(&cgroup_root), Duration::from_secs(10));
        }
    })
    .join()
    .expect("the cleanup thread");
}

pub async fn push(registry: &LocalRegistry, name_tag: &str, image: &OciImage) -> std::io::Result<String> {
    let reference = format!("{}/{}", registry.addr(), name_tag);
    let r = Reference::parse(&reference).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let client = registry.client(&r)?;
    let oci_ref = crate::image::pull::oci_reference(&r);
    let auth = crate::image::pull::oci_auth(registry.auth().as_ref());
    let io = |e: oci_client::errors::OciDistributionError| std::io::Error::other(e.to_string());
    client.auth(&oci_ref, &auth, oci_client::RegistryOperation::Push).await.map_err(io)?;
    for b in image.layers.iter().chain([&image.config]) {
        client.push_blob(&oci_ref, b.data.clone(), &b.digest).await.map_err(io)?;
    }
    push_manifest(registry, name_tag, &image.manifest).await
}

/// Pushes each `(image, architecture)` by digest, then an OCI image index listing them in that
/// order under `<registry>/<name_tag>`; returns the reference and the index digest.
pub async fn push_index(
    registry: &LocalRegistry,
    name_tag: &str,
    images: &[(&OciImage, &str)],
) -> std::io::Result<(String, String)> {
    let repo = name_tag.split(':').next().unwrap_or(name_tag);
    let mut entries = Vec::new();
    for (image, arch) in images {
        push(registry, &format!("{repo}@{}", image.manifest.digest), image).await?;
        entries.push(serde_json::json!({
            "mediaType": image.manifest.media_type,
            "digest": image.manifest.digest,
            "size": image.manifest.data.len(),
            "platform": {"architecture": arch, "os": "linux"},
        }));
    }
    let media_type = "application/vnd.oci.image.index.v1+json";
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": media_type, "manifests": entries});
    let index = Blob::new(media_type, serde_json::to_vec(&index)?);
    let reference = push_manifest(registry, name_tag, &index).await?;
    Ok((reference, index.digest))
}

async fn push_manifest(registry: &LocalRegistry, name_tag: &str, manifest: &Blob) -> std::io::Result<String> {
    let reference = format!("{}/{}", registry.addr(), name_tag);
    let r = Reference::parse(&reference).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let client = registry.client(&r)?;
    let oci_ref = crate::image::pull::oci_reference(&r);
    let auth = crate::image::pull::oci_auth(registry.auth().as_ref());
    let io = |e: oci_client::errors::OciDistributionError| std::io::Error::other(e.to_string());
    client.auth(&oci_ref, &auth, oci_client::RegistryOperation::Push).await.map_err(io)?;
    let content_type = manifest.media_type.parse().map_err(std::io::Error::other)?;
    client.push_manifest_raw(&oci_ref, manifest.data.clone(), content_type).await.map_err(io)?;
    Ok(reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_zstd_variant_keeps_the_diff_ids_and_recompresses_every_layer() {
        let dir = tempfile::tempdir().unwrap();
        let image = build_image(
            dir.path(),
            vec![vec![Entry::Dir("etc", 0o755), Entry::File("etc/a".into(), b"a\n".to_vec(), 0o644)]],
            serde_json::json!({"Cmd": ["sh"]}),
        )
        .unwrap();
        let zstd = image.with_zstd_layers().unwrap();
        assert_eq!((zstd.diff_ids.clone(), zstd.config.digest.clone()), (image.diff_ids, image.config.digest));
        assert!(zstd.layers[0].data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]));
        let manifest: serde_json::Value = serde_json::from_slice(&zstd.manifest.data).unwrap();
        assert_eq!(manifest["layers"][0]["mediaType"], ZSTD_LAYER_MEDIA_TYPE);
        assert_eq!(manifest["layers"][0]["digest"], zstd.layers[0].digest.as_str());
    }

    #[test]
    fn the_busybox_image_is_reproducible() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (x, y) = (build_busybox_image(a.path()).unwrap(), build_busybox_image(b.path()).unwrap());
        assert_eq!(x.manifest.digest, y.manifest.digest);
        assert_eq!(x.layers.len(), 2);
        assert!(a.path().join("blobs/sha256").join(x.config.digest.trim_start_matches("sha256:")).is_file());
    }
}
