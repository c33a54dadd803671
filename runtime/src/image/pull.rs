//! Pulls over the OCI distribution API with `oci-client`: manifest (an index resolves to this
//! host's platform), config, then each layer not yet unpacked, downloaded to a temp file and
//! handed to the store, which verifies and unpacks it once. The endpoints come from
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
            let mut buf = Vec::with_capacity(manifest.config.size.max(0) as usize);
            client.pull_blob(oci_ref, &manifest.config, &mut buf).await.map_err(err)?;
            store.put_blob(&config_digest, &buf)?;
            buf
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

async fn fetch_layer(
    store: &Arc<ImageStore>,
    client: &oci_client::Client,
    oci_ref: &oci_client::Reference,
    reference: &str,
    layer: &OciDescriptor,
    diff_id: &str,
    progress: Progress,
) -> Result<()> {
    let digest = layer.digest.clone();
    let report = |event: PullEvent| {
        if let Some(p) = &progress {
            p.event(event)
        }
    };
    if store.has_layer(diff_id) {
        report(PullEvent::LayerExists { digest });
        return Ok(());
    }
    let tmp = TempBlob(store.temp_path("blob"));
    let file =
        tokio::fs::File::create(&tmp.0).await.map_err(crate::state::io_ctx(format!("creating {}", tmp.0.display())))?;
    let size = layer.size.max(0) as u64;
    let downloaded = match &progress {
        None => client.pull_blob(oci_ref, layer, file).await.map(|()| size),
        Some(p) => {
            let mut counted = CountingWriter::new(file, p.clone(), &digest, size);
            client.pull_blob(oci_ref, layer, &mut counted).await.map(|()| counted.bytes())
        }
    };
    let bytes = downloaded.map_err(|e| map_error(reference, e))?;
    report(PullEvent::Downloaded { digest: digest.clone(), bytes });
    let (store, blob_digest, diff_id) = (store.clone(), digest.clone(), diff_id.to_string());
    // The blocking task owns the download, so it is removed when the unpack ends, even if this
    // pull was dropped meanwhile.
    let unpack_progress = progress.clone();
    tokio::task::spawn_blocking(move || {
        let total = std::fs::metadata(&tmp.0).map(|m| m.len()).unwrap_or(size);
        store.commit_layer_counted(&tmp.0, &blob_digest, &diff_id, |current| {
            if let Some(p) = &unpack_progress {
                p.event(PullEvent::Extracting { digest: blob_digest.clone(), current, total });
            }
        })
    })
    .await
    .map_err(|e| Error::Pull { reference: reference.into(), message: format!("unpack task failed: {e}") })??;
    report(PullEvent::LayerDone { digest });
    Ok(())
}

/// A downloaded layer in the store's tmp dir, removed when dropped: after its unpack, on a
/// failed download, or when the pull is cancelled (a pod deleted while its image downloads).
struct TempBlob(std::path::PathBuf);

impl Drop for TempBlob {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
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
