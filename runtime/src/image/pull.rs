//! Pulls over the OCI distribution API with `oci-client`: manifest (an index resolves to this
//! host's platform), config, then each layer not yet unpacked, downloaded to its partial file
//! and handed to the store, which verifies and unpacks it once. Each blob is fetched once however
//! many pulls want it (one run per digest in a process, a lock file across processes), and an
//! interrupted download is continued from its partial file by the next pull. The endpoints come from
//! `registries.yaml` (mirrors in order, then the registry itself); `oci-client` answers a
//! registry's `WWW-Authenticate: Bearer realm=…` challenge by fetching a token from the realm,
//! anonymously or with the basic credentials it was given, and falls back to basic auth for a
//! `Basic` challenge.

use std::sync::Arc;

use futures::StreamExt;
use oci_client::client::current_platform_resolver;
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE,
    OciDescriptor, OciManifest,
};
use oci_client::secrets::RegistryAuth as OciAuth;

use oci_client::client::BlobResponse;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::flight::Observers;
use super::progress::{CountingWriter, LayerInfo, PullEvent, PullProgress, Pulled};
use super::reference::Reference;
use super::registries::{Endpoint, Registries};
use super::store::ImageStore;
use crate::{Error, Image, ImageConfig, RegistryAuth, Result};

/// An optional observer of a pull's progress (`None` for the kubelet's pulls).
pub type Progress = Option<Arc<dyn PullProgress>>;

const ACCEPT: &[&str] =
    &[OCI_IMAGE_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, IMAGE_MANIFEST_LIST_MEDIA_TYPE];

/// Layer media types Skiff unpacks (the unpacker tells the compressions apart by magic bytes;
/// the list refuses, say, an artifact's JSON blob before it is mistaken for a tar).
const LAYER_MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd",
];

/// Layers downloaded at once.
const PARALLEL_LAYERS: usize = 3;

/// rustls needs one process-wide crypto provider; Skiff uses ring (no C build of aws-lc).
pub(crate) fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Another part of the binary may have installed it already, which is just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A client for the reference's own registry, no mirror (the test push).
#[cfg(feature = "testing")]
pub(crate) fn client_for(reference: &Reference, registries: &Registries) -> oci_client::Client {
    let endpoints = registries.endpoints(&reference.registry);
    client_for_endpoint(registries, &endpoints[endpoints.len() - 1])
}

fn client_for_endpoint(registries: &Registries, endpoint: &Endpoint) -> oci_client::Client {
    install_crypto_provider();
    oci_client::Client::new(oci_client::client::ClientConfig {
        platform_resolver: Some(Box::new(current_platform_resolver)),
        ..registries.client_config(endpoint)
    })
}

pub(crate) fn oci_reference(r: &Reference) -> oci_client::Reference {
    match (&r.tag, &r.digest) {
        (Some(t), Some(d)) => {
            oci_client::Reference::with_tag_and_digest(r.registry.clone(), r.repository.clone(), t.clone(), d.clone())
        }
        (_, Some(d)) => oci_client::Reference::with_digest(r.registry.clone(), r.repository.clone(), d.clone()),
        (t, None) => oci_client::Reference::with_tag(
            r.registry.clone(),
            r.repository.clone(),
            t.clone().unwrap_or_else(|| super::reference::DEFAULT_TAG.into()),
        ),
    }
}

pub(crate) fn oci_auth(auth: Option<&RegistryAuth>) -> OciAuth {
    match auth {
        Some(a) => OciAuth::Basic(a.username.clone(), a.password.clone()),
        None => OciAuth::Anonymous,
    }
}

/// Pulls `reference` (short names resolve to docker.io/library) into the store unless it pins a
/// digest whose image is there whole, holding the store's shared lock until the image is
/// recorded, so an `image rm` or prune never sweeps its layers as unreferenced half way.
pub async fn pull_reference(
    store: &Arc<ImageStore>,
    registries: &Registries,
    reference: &str,
    auth: Option<&RegistryAuth>,
    progress: Progress,
) -> Result<Pulled> {
    let r = Reference::parse(reference)
        .map_err(|source| Error::InvalidReference { reference: reference.to_string(), source })?;
    let complete = |image: &Image| image.layers.iter().all(|l| store.has_layer(l));
    let digest_of = |image: &Image| image.repo_digest.rsplit_once('@').map(|(_, d)| d.to_string()).unwrap_or_default();
    // A digest pins the content: a complete local copy is the image, no registry needed.
    if let Some(digest) = &r.digest
        && let Some(image) =
            store.find(&r.to_string()).or_else(|| store.find(&format!("{}@{digest}", r.name()))).filter(complete)
    {
        return Ok(Pulled { digest: digest.clone(), image, up_to_date: true });
    }
    let before = store.find(&r.to_string()).filter(complete);
    let lock_store = store.clone();
    let _lock = tokio::task::spawn_blocking(move || lock_store.lock_shared())
        .await
        .map_err(|e| Error::Pull { reference: r.to_string(), message: format!("locking the image store: {e}") })??;
    let image = pull(store, registries, &r, auth, progress).await?;
    Ok(Pulled { digest: digest_of(&image), up_to_date: before.as_ref() == Some(&image), image })
}

/// Pulls `r` from the first of its endpoints that has it whole. When every endpoint fails,
/// the error is the registry's own (it decides not-found), naming the mirrors' failures.
pub async fn pull(
    store: &Arc<ImageStore>,
    registries: &Registries,
    r: &Reference,
    auth: Option<&RegistryAuth>,
    progress: Progress,
) -> Result<Image> {
    let endpoints = registries.endpoints(&r.registry);
    let mut failures = Vec::new();
    for endpoint in &endpoints {
        let client = client_for_endpoint(registries, endpoint);
        let mut oci_ref = oci_reference(r);
        if !endpoint.is_default {
            oci_ref.set_mirror_registry(endpoint.host.clone());
        }
        let auth = registries.auth_for(endpoint, &r.registry, auth);
        match pull_from(store, &client, &oci_ref, r, auth.as_ref(), &progress).await {
            Ok(image) => return Ok(image),
            Err(e) if !endpoint.is_default => {
                tracing::warn!(image = %r, mirror = %endpoint.url(), error = %e, "pull from mirror failed");
                failures.push(format!("mirror {}: {}", endpoint.url(), message_of(&e)));
            }
            Err(e) if failures.is_empty() => return Err(e),
            Err(Error::ImageNotFound { reference, message }) => {
                return Err(Error::ImageNotFound {
                    reference,
                    message: format!("{message} ({})", failures.join("; ")),
                });
            }
            Err(Error::Pull { reference, message }) => {
                return Err(Error::Pull { reference, message: format!("{message} ({})", failures.join("; ")) });
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("the registry itself is always the last endpoint")
}

fn message_of(e: &Error) -> String {
    match e {
        Error::Pull { message, .. } | Error::ImageNotFound { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

async fn pull_from(
    store: &Arc<ImageStore>,
    client: &oci_client::Client,
    oci_ref: &oci_client::Reference,
    r: &Reference,
    auth: Option<&RegistryAuth>,
    progress: &Progress,
) -> Result<Image> {
    let reference = r.to_string();
    let err = |e: OciDistributionError| map_error(&reference, e);
    let auth = oci_auth(auth);

    let (body, digest) = client.pull_manifest_raw(oci_ref, &auth, ACCEPT).await.map_err(err)?;
    store.put_blob(&digest, &body)?;
    let (manifest, manifest_digest, list_digest) = match parse_manifest(&reference, &body)? {
        OciManifest::Image(m) => (m, digest, None),
        OciManifest::ImageIndex(index) => {
            let chosen = current_platform_resolver(&index.manifests).ok_or_else(|| Error::ImageNotFound {
                reference: reference.clone(),
                message: format!("no manifest for {}/{} in the image index", std::env::consts::OS, go_arch()),
            })?;
            let (body, d) =
                client.pull_manifest_raw(&oci_ref.clone_with_digest(chosen), &auth, ACCEPT).await.map_err(err)?;
            store.put_blob(&d, &body)?;
            match parse_manifest(&reference, &body)? {
                OciManifest::Image(m) => (m, d, Some(digest)),
                OciManifest::ImageIndex(_) => {
                    return Err(Error::Pull { reference, message: "an image index points to another index".into() });
                }
            }
        }
    };

    if let Some(layer) = manifest.layers.iter().find(|l| !LAYER_MEDIA_TYPES.contains(&l.media_type.as_str())) {
        return Err(Error::Pull {
            reference,
            message: format!("layer {} has unsupported media type {}", layer.digest, layer.media_type),
        });
    }
    let config_digest = manifest.config.digest.clone();
    let config_bytes = match store.read_blob(&config_digest) {
        Some(b) => b,
        None => {
            // The config is not a layer: the observer hears only of layers.
            fetch_blob(store, client, oci_ref, &reference, &manifest.config, None, None).await?;
            store.read_blob(&config_digest).ok_or_else(|| Error::Pull {
                reference: reference.clone(),
                message: format!("config {config_digest} vanished from the store after its download"),
            })?
        }
    };
    let (config, diff_ids) = parse_config(&reference, &config_bytes)?;
    if diff_ids.len() != manifest.layers.len() {
        return Err(Error::Pull {
            reference,
            message: format!(
                "manifest has {} layers but config lists {} diff IDs",
                manifest.layers.len(),
                diff_ids.len()
            ),
        });
    }

    if let Some(progress) = progress {
        progress.event(PullEvent::Resolved {
            digest: list_digest.clone().unwrap_or_else(|| manifest_digest.clone()),
            layers: manifest
                .layers
                .iter()
                .zip(&diff_ids)
                .map(|(l, diff_id)| LayerInfo {
                    digest: l.digest.clone(),
                    size: l.size.max(0) as u64,
                    present: store.has_layer(diff_id),
                })
                .collect(),
        });
    }

    // Each download owns its inputs: borrowing them from this frame makes the future non-Send
    // (rustc cannot prove the closure general over the borrows' lifetimes).
    let downloads: Vec<_> = manifest
        .layers
        .iter()
        .cloned()
        .zip(diff_ids.iter().cloned())
        .map(|(layer, diff_id)| {
            let (store, client, oci_ref, reference, progress) =
                (store.clone(), client.clone(), oci_ref.clone(), reference.clone(), progress.clone());
            async move { fetch_layer(&store, &client, &oci_ref, &reference, &layer, &diff_id, progress).await }
        })
        .collect();
    // Every download runs to its end before the first failure is reported: one dropped mid-way
    // would leave its unpack running detached, writing into the store after the pull returned.
    let results: Vec<Result<()>> = futures::stream::iter(downloads).buffer_unordered(PARALLEL_LAYERS).collect().await;
    results.into_iter().collect::<Result<Vec<()>>>()?;

    let size = manifest.layers.iter().map(|l| l.size.max(0) as u64).sum::<u64>() + config_bytes.len() as u64;
    let image = Image {
        reference: reference.clone(),
        id: config_digest,
        repo_digest: format!("{}@{}", r.name(), list_digest.unwrap_or(manifest_digest)),
        config,
        layers: diff_ids,
        size,
    };
    store.put_image(&image)?;
    Ok(image)
}

/// Makes the layer present in the store: downloads and unpacks it unless it is there, sharing
/// the download with any other pull of the same blob (see [`fetch_blob`]).
async fn fetch_layer(
    store: &Arc<ImageStore>,
    client: &oci_client::Client,
    oci_ref: &oci_client::Reference,
    reference: &str,
    layer: &OciDescriptor,
    diff_id: &str,
    progress: Progress,
) -> Result<()> {
    if store.has_layer(diff_id) {
        if let Some(p) = &progress {
            p.event(PullEvent::LayerExists { digest: layer.digest.clone() })
        }
        return Ok(());
    }
    fetch_blob(store, client, oci_ref, reference, layer, Some(diff_id), progress).await?;
    // A run shared with another image's pull unpacked the blob as that image's config said;
    // this image's config may name another diff ID for it (a forged or broken config).
    if !store.has_layer(diff_id) {
        return Err(Error::Pull {
            reference: reference.into(),
            message: format!("layer {} does not unpack to diff ID {diff_id}", layer.digest),
        });
    }
    Ok(())
}

/// Downloads blob `desc` and commits it: unpacked as the layer `diff_id`, or stored as a blob
/// (a config) when `diff_id` is `None`. Within this process every pull of the digest shares
/// one run, each caller's `progress` seeing its events from when it joined (a caller that
/// joins a download half way sees the rest of its bytes, then `Downloaded` with the bytes the
/// shared run fetched, then the unpack). Across processes the blob's lock file serializes the
/// runs, and the later one finds the content present.
async fn fetch_blob(
    store: &Arc<ImageStore>,
    client: &oci_client::Client,
    oci_ref: &oci_client::Reference,
    reference: &str,
    desc: &OciDescriptor,
    diff_id: Option<&str>,
    progress: Progress,
) -> Result<()> {
    let (store2, client, oci_ref, desc2, diff_id) =
        (store.clone(), client.clone(), oci_ref.clone(), desc.clone(), diff_id.map(str::to_string));
    let (outcome, _led) = store
        .flights
        .run(&desc.digest, progress, move |observers| async move {
            download_blob(store2, client, oci_ref, desc2, diff_id, observers).await.map_err(|e| message_of(&e))
        })
        .await;
    outcome.map_err(|message| Error::Pull { reference: reference.into(), message })
}

/// One run of [`fetch_blob`]: under the blob's lock file, continues `tmp/<hex>.partial` from its
/// length with a Range request (the registry may answer with the whole blob instead), hashing
/// the bytes already there first so the digest check covers the whole blob, then commits it.
/// An interrupted run leaves the partial file for the next one; one that does not hash to the
/// digest is removed.
async fn download_blob(
    store: Arc<ImageStore>,
    client: oci_client::Client,
    oci_ref: oci_client::Reference,
    desc: OciDescriptor,
    diff_id: Option<String>,
    observers: Arc<Observers>,
) -> Result<()> {
    let digest = desc.digest.clone();
    let size = desc.size.max(0) as u64;
    let fail = |message: String| Error::Pull { reference: oci_ref.whole(), message };
    let locked = {
        let (store, digest, diff_id) = (store.clone(), digest.clone(), diff_id.clone());
        tokio::task::spawn_blocking(move || -> Result<_> {
            let lock = store.lock_blob_download(&digest)?;
            let present = match &diff_id {
                Some(d) => store.has_layer(d),
                None => store.read_blob(&digest).is_some(),
            };
            if present {
                return Ok(None);
            }
            let path = store.partial_path(&digest);
            let (offset, hasher) = hash_partial(&path, size)?;
            Ok(Some((lock, path, offset, hasher)))
        })
        .await
        .map_err(|e| fail(format!("locking the download of {}: {e}", desc.digest)))??
    };
    let Some((lock, path, offset, mut hasher)) = locked else {
        // Another process fetched it while this one waited for the lock.
        if diff_id.is_some() {
            observers.event(PullEvent::LayerExists { digest });
        }
        return Ok(());
    };

    let io = |what: &str| crate::state::io_ctx(format!("{what} {}", path.display()));
    let mut file = tokio::fs::OpenOptions::new().create(true).append(true).open(&path).await.map_err(io("opening"))?;
    let mut network = 0u64;
    if offset < size {
        let mut stream = if offset > 0 {
            match client.pull_blob_stream_partial(&oci_ref, &desc, offset, None).await {
                Ok(BlobResponse::Partial(stream)) => stream,
                // The registry ignored the Range header: start over with what it sent.
                Ok(BlobResponse::Full(stream)) => {
                    file.set_len(0).await.map_err(io("truncating"))?;
                    hasher = Sha256::new();
                    stream
                }
                Err(e) => return Err(fail(describe(&e))),
            }
        } else {
            client.pull_blob_stream(&oci_ref, &desc).await.map_err(|e| fail(describe(&e)))?
        };
        let resumed_at = std::fs::metadata(&path).map(|m| m.len()).map_err(io("reading"))?;
        let mut out = CountingWriter::new(&mut file, observers.clone(), &digest, size).starting_at(resumed_at);
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    // The client's own digest check fails on the last chunk: those bytes are bad.
                    if resumed_at + network >= size {
                        let _ = std::fs::remove_file(&path);
                    }
                    return Err(fail(format!("downloading {digest}: {e}")));
                }
            };
            if resumed_at + network + chunk.len() as u64 > size {
                let _ = std::fs::remove_file(&path);
                return Err(fail(format!("the registry sent more than the {size} bytes of {digest}")));
            }
            hasher.update(&chunk);
            out.write_all(&chunk).await.map_err(io("writing"))?;
            network += chunk.len() as u64;
            store.count_downloaded(chunk.len() as u64);
        }
        out.flush().await.map_err(io("writing"))?;
    }
    drop(file);
    let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
    if actual != digest {
        let _ = std::fs::remove_file(&path);
        return Err(fail(format!("{digest} hashes to {actual}: the download is discarded")));
    }
    observers.event(PullEvent::Downloaded { digest: digest.clone(), bytes: network });

    // The blocking task owns the lock and the file, so the commit ends as one even if every
    // pull waiting for it is dropped meanwhile.
    let (unpack_store, unpack_digest, unpack_observers) = (store.clone(), digest.clone(), observers.clone());
    let layer = diff_id.is_some();
    tokio::task::spawn_blocking(move || {
        let _lock = lock;
        let result = match &diff_id {
            Some(diff_id) => {
                let total = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(size);
                unpack_store.commit_layer_counted(&path, &unpack_digest, diff_id, |current| {
                    unpack_observers.event(PullEvent::Extracting { digest: unpack_digest.clone(), current, total })
                })
            }
            None => std::fs::read(&path)
                .map_err(crate::state::io_ctx(format!("reading {}", path.display())))
                .and_then(|data| unpack_store.put_blob(&unpack_digest, &data)),
        };
        // Verified bytes that would not unpack would not unpack the next time either.
        let _ = std::fs::remove_file(&path);
        result
    })
    .await
    .map_err(|e| fail(format!("unpack task failed: {e}")))??;
    if layer {
        observers.event(PullEvent::LayerDone { digest });
    }
    Ok(())
}

/// The length of the partial download at `path` and the hash of its bytes; one longer than the
/// blob is emptied (it cannot be a prefix of it).
fn hash_partial(path: &std::path::Path, size: u64) -> Result<(u64, Sha256)> {
    let mut hasher = Sha256::new();
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, hasher)),
        Err(e) => return Err(crate::state::io_ctx(format!("opening {}", path.display()))(e)),
    };
    let len = file.metadata().map_err(crate::state::io_ctx(format!("reading {}", path.display())))?.len();
    if len > size {
        drop(file);
        std::fs::remove_file(path).map_err(crate::state::io_ctx(format!("removing {}", path.display())))?;
        return Ok((0, hasher));
    }
    std::io::copy(&mut file, &mut hasher).map_err(crate::state::io_ctx(format!("reading {}", path.display())))?;
    Ok((len, hasher))
}

fn parse_manifest(reference: &str, body: &[u8]) -> Result<OciManifest> {
    serde_json::from_slice(body)
        .map_err(|e| Error::Pull { reference: reference.into(), message: format!("unreadable manifest: {e}") })
}

/// The image config's runtime defaults and `rootfs.diff_ids`.
pub fn parse_config(reference: &str, bytes: &[u8]) -> Result<(ImageConfig, Vec<String>)> {
    #[derive(serde::Deserialize)]
    struct File {
        #[serde(default)]
        config: Option<Runtime>,
        rootfs: RootFs,
    }
    #[derive(serde::Deserialize, Default)]
    #[serde(rename_all = "PascalCase")]
    struct Runtime {
        entrypoint: Option<Vec<String>>,
        cmd: Option<Vec<String>>,
        env: Option<Vec<String>>,
        working_dir: Option<String>,
        user: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct RootFs {
        diff_ids: Vec<String>,
    }
    let f: File = serde_json::from_slice(bytes)
        .map_err(|e| Error::Pull { reference: reference.into(), message: format!("unreadable image config: {e}") })?;
    let c = f.config.unwrap_or_default();
    let config = ImageConfig {
        entrypoint: c.entrypoint.unwrap_or_default(),
        cmd: c.cmd.unwrap_or_default(),
        env: c.env.unwrap_or_default(),
        working_dir: c.working_dir.filter(|w| !w.is_empty()),
        user: c.user.filter(|u| !u.is_empty()),
    };
    Ok((config, f.rootfs.diff_ids))
}

pub(crate) fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Registry answers that mean "no such image" become [`Error::ImageNotFound`]; the rest are
/// pull failures (transport, auth, bad content).
fn map_error(reference: &str, e: OciDistributionError) -> Error {
    let not_found = match &e {
        OciDistributionError::RegistryError { envelope, .. } => {
            envelope.errors.iter().any(|x| matches!(x.code, OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown))
        }
        OciDistributionError::ServerError { code, .. } => *code == 404,
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        _ => false,
    };
    let message = describe(&e);
    if not_found {
        Error::ImageNotFound { reference: reference.into(), message }
    } else {
        Error::Pull { reference: reference.into(), message }
    }
}

/// The registry's own words where it gave some, with the cause chain of transport errors.
fn describe(e: &OciDistributionError) -> String {
    match e {
        OciDistributionError::RegistryError { envelope, .. } if !envelope.errors.is_empty() => {
            envelope.errors.iter().map(|x| x.message.to_lowercase()).collect::<Vec<_>>().join("; ")
        }
        OciDistributionError::UnauthorizedError { url } => format!("unauthorized: authentication required ({url})"),
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_config_defaults_and_diff_ids_are_read() {
        let cfg = br#"{"architecture":"amd64","os":"linux",
            "config":{"Env":["PATH=/bin"],"Cmd":["sh"],"WorkingDir":"","User":"1000"},
            "rootfs":{"type":"layers","diff_ids":["sha256:a","sha256:b"]}}"#;
        let (c, ids) = parse_config("r", cfg).unwrap();
        assert_eq!(c.env, ["PATH=/bin"]);
        assert_eq!(c.cmd, ["sh"]);
        assert_eq!(c.working_dir, None);
        assert_eq!(c.user.as_deref(), Some("1000"));
        assert_eq!(ids, ["sha256:a", "sha256:b"]);
    }

    #[test]
    fn manifest_unknown_is_not_found_and_other_failures_are_pull_errors() {
        let envelope: oci_client::errors::OciEnvelope =
            serde_json::from_str(r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#).unwrap();
        let e = map_error("r", OciDistributionError::RegistryError { envelope, url: "u".into() });
        assert!(e.is_image_not_found());
        assert_eq!(e.to_string(), r#"failed to resolve reference "r": r: not found (manifest unknown)"#);
        let envelope: oci_client::errors::OciEnvelope =
            serde_json::from_str(r#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known"}]}"#)
                .unwrap();
        assert!(map_error("r", OciDistributionError::RegistryError { envelope, url: "u".into() }).is_image_not_found());
        assert!(!map_error("r", OciDistributionError::UnauthorizedError { url: "u".into() }).is_image_not_found());
    }

    /// A real pull from `docker-registry` on loopback (needs Debian's `docker-registry`).
    #[cfg(feature = "testing")]
    #[tokio::test]
    async fn the_bytes_reported_add_up_to_each_layers_size_and_a_second_pull_finds_every_layer() {
        use crate::testing::{LocalRegistry, build_busybox_image, push};
        use crate::{ImageManager, RecordedProgress};

        let registry = LocalRegistry::start().unwrap();
        let work = tempfile::tempdir().unwrap();
        let image = build_busybox_image(&work.path().join("image")).unwrap();
        let reference = push(&registry, "busybox:1.36", &image).await.unwrap();
        let manager = ImageManager::open(&work.path().join("runtime")).unwrap();
        let registries = Registries::default();

        let recorded = Arc::new(RecordedProgress::default());
        let pulled = manager.pull(&reference, &registries, None, Some(recorded.clone())).await.unwrap();
        assert!(!pulled.up_to_date);
        assert_eq!(pulled.digest, image.manifest.digest);
        let events = recorded.0.lock().unwrap().clone();
        let Some(PullEvent::Resolved { digest, layers }) = events.first() else { panic!("{events:?}") };
        assert_eq!(digest, &image.manifest.digest);
        let sizes: Vec<_> = image.layers.iter().map(|l| (l.digest.clone(), l.data.len() as u64, false)).collect();
        assert_eq!(layers.iter().map(|l| (l.digest.clone(), l.size, l.present)).collect::<Vec<_>>(), sizes);
        for (digest, size, _) in &sizes {
            let of_layer: Vec<&PullEvent> = events.iter().filter(|e| layer_of(e) == Some(digest)).collect();
            let mut last = 0;
            for e in &of_layer {
                if let PullEvent::Downloading { current, total, .. } = e {
                    assert!(*current > last && total == size, "{of_layer:?}");
                    last = *current;
                }
            }
            assert_eq!(last, *size, "the bytes counted as they came in add up to the layer: {of_layer:?}");
            assert!(of_layer.contains(&&PullEvent::Downloaded { digest: digest.clone(), bytes: *size }));
            let extracted = of_layer.iter().rev().find_map(|e| match e {
                PullEvent::Extracting { current, total, .. } => Some((*current, *total)),
                _ => None,
            });
            assert_eq!(extracted, Some((*size, *size)), "the unpack read the whole blob");
            assert_eq!(of_layer.last(), Some(&&PullEvent::LayerDone { digest: digest.clone() }));
        }

        let again = Arc::new(RecordedProgress::default());
        let pulled = manager.pull(&reference, &registries, None, Some(again.clone())).await.unwrap();
        assert!(pulled.up_to_date);
        let events = again.0.lock().unwrap().clone();
        assert!(matches!(&events[0], PullEvent::Resolved { layers, .. } if layers.iter().all(|l| l.present)));
        let exists = events.iter().filter(|e| matches!(e, PullEvent::LayerExists { .. })).count();
        assert_eq!((exists, events.len()), (sizes.len(), 1 + sizes.len()), "nothing downloaded: {events:?}");
    }

    #[cfg(feature = "testing")]
    fn layer_of(event: &PullEvent) -> Option<&String> {
        match event {
            PullEvent::Resolved { .. } => None,
            PullEvent::LayerExists { digest }
            | PullEvent::Downloading { digest, .. }
            | PullEvent::Verifying { digest }
            | PullEvent::Downloaded { digest, .. }
            | PullEvent::Extracting { digest, .. }
            | PullEvent::LayerDone { digest } => Some(digest),
        }
    }
}
