//! Pulls the way a node meets registries: zstd layers, a registry that sends clients to a Bearer
//! token realm, and `registries.yaml` mirrors and credentials. Everything stays on loopback: the
//! registries are Debian's docker-registry (`LocalRegistry`) or a small token-guarded registry
//! served from memory by the test itself, and a mirror stands in for names that do not resolve
//! (`example.invalid`, `docker.io`). As root: images are run to show their layers unpacked.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use skiff_runtime::testing::{LocalRegistry, OciImage, build_busybox_image, push};
use skiff_runtime::{ContainerSpec, Image, Registries, RegistryAuth, Resources, Runtime, RuntimeConfig, SandboxSpec};

fn busybox() -> &'static OciImage {
    static IMAGE: OnceLock<OciImage> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        build_busybox_image(dir.path()).unwrap()
    })
}

/// A runtime on its own temp root and cgroup root; containers, sandboxes and the cgroup root
/// are removed on drop, also when the test fails.
struct Node {
    rt: Option<Runtime>,
    root: tempfile::TempDir,
    cgroup_root: String,
}

impl Node {
    fn new(registries: Registries) -> Node {
        static N: AtomicU32 = AtomicU32::new(0);
        let cgroup_root = format!("skiff-test-reg-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let root = tempfile::Builder::new().prefix("skiff-reg-").tempdir().unwrap();
        let config = RuntimeConfig {
            root: root.path().to_path_buf(),
            shim_exe: PathBuf::from(env!("CARGO_BIN_EXE_skiff-runtime-shim")),
            cgroup_root: cgroup_root.clone(),
        };
        let rt = Runtime::new(config).expect("runtime on this host").with_registries(registries);
        Node { rt: Some(rt), root, cgroup_root }
    }

    fn rt(&self) -> &Runtime {
        self.rt.as_ref().unwrap()
    }

    async fn pull(&self, reference: &str, auth: Option<&RegistryAuth>) -> skiff_runtime::Result<Image> {
        self.rt().pull_image(reference, auth).await
    }

    /// Runs `sh -c script` from `image` in a fresh sandbox; returns the exit code and output.
    async fn run(&self, name: &str, image: &Image, script: &str) -> (i32, String) {
        self.rt()
            .run_sandbox(&SandboxSpec { id: format!("pod-{name}"), hostname: name.into(), host_network: false })
            .await
            .unwrap();
        let log_path = self.root.path().join("logs").join(format!("{name}.log"));
        let spec = ContainerSpec {
            name: name.into(),
            image: Some(image.clone()),
            argv: vec!["sh".into(), "-c".into(), script.into()],
            env: image.config.env.clone(),
            log_path: log_path.clone(),
            resources: Resources::default(),
            ..Default::default()
        };
        let id = self.rt().create_container(&format!("pod-{name}"), &spec).await.unwrap();
        self.rt().start_container(&id).await.unwrap();
        let status =
            tokio::time::timeout(Duration::from_secs(30), self.rt().wait_container(&id)).await.unwrap().unwrap();
        // CRI log lines: `<time> <stream> <F|P> <text>`.
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let text = log.lines().filter_map(|l| l.splitn(4, ' ').nth(3)).collect::<Vec<_>>().join("\n");
        (status.code, text)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        skiff_runtime::testing::remove_everything(self.rt.take().unwrap(), &self.cgroup_root);
    }
}

fn registries(yaml: &str) -> Registries {
    Registries::parse(yaml, Path::new("registries.yaml")).unwrap()
}

/// The layers of the busybox fixture, as the container sees them: layer 2's file, and layer 1's
/// files that layer 2 whited out or hid behind an opaque directory.
const LAYERS_SCRIPT: &str = "cat /etc/skiff/layer2 /etc/skiff/kept; ls /etc/skiff/opaque; \
     test -e /etc/skiff/removed-file || echo removed-file gone; test -e /etc/skiff/removed-dir || echo removed-dir gone";
const LAYERS_OUTPUT: &str = "layer 2\nkept\nnew\nremoved-file gone\nremoved-dir gone";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_layers_pull_verified_and_unpacked() {
    let registry = LocalRegistry::start().expect("start docker-registry");
    let zstd = busybox().with_zstd_layers().unwrap();
    let reference = push(&registry, "zstd:1", &zstd).await.unwrap();
    let node = Node::new(Registries::default());
    let image = node.pull(&reference, None).await.unwrap();
    assert_eq!(image.layers, busybox().diff_ids, "the diff IDs are of the uncompressed tars");
    assert_eq!(image.id, busybox().config.digest);
    assert_eq!(image.repo_digest, format!("{}/zstd@{}", registry.addr(), zstd.manifest.digest));
    assert_eq!(
        image.size,
        zstd.layers.iter().map(|l| l.data.len() as u64).sum::<u64>() + zstd.config.data.len() as u64
    );
    assert_eq!(node.run("zstd", &image, LAYERS_SCRIPT).await, (0, LAYERS_OUTPUT.into()));

    // A zstd blob that decodes to something else than the config's diff ID is refused.
    let mut config: serde_json::Value = serde_json::from_slice(&zstd.config.data).unwrap();
    let forged = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
    config["rootfs"]["diff_ids"][1] = forged.into();
    let mut forged_image = zstd.clone();
    forged_image.config.data = serde_json::to_vec(&config).unwrap();
    forged_image.config.digest = skiff_runtime::testing::sha256(&forged_image.config.data);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": forged_image.config.media_type, "digest": forged_image.config.digest,
                   "size": forged_image.config.data.len()},
        "layers": zstd.layers.iter().map(|b| serde_json::json!(
            {"mediaType": b.media_type, "digest": b.digest, "size": b.data.len()})).collect::<Vec<_>>(),
    });
    forged_image.manifest.data = serde_json::to_vec(&manifest).unwrap();
    forged_image.manifest.digest = skiff_runtime::testing::sha256(&forged_image.manifest.data);
    let reference = push(&registry, "forged:1", &forged_image).await.unwrap();
    let err = Node::new(Registries::default()).pull(&reference, None).await.unwrap_err();
    assert!(err.to_string().contains("digest mismatch"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_serves_registries_that_cannot_be_reached() {
    let registry = LocalRegistry::start().expect("start docker-registry");
    let reference = push(&registry, "library/busybox:1", busybox()).await.unwrap();
    assert_eq!(reference, format!("{}/library/busybox:1", registry.addr()));
    // A port nothing listens on: the first mirror fails, the second serves.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let node = Node::new(registries(&format!(
        "mirrors:\n  example.invalid:\n    endpoint:\n      - http://{dead}\n      - http://{addr}\n  docker.io:\n    endpoint: [\"http://{addr}\"]\n",
        addr = registry.addr()
    )));

    let image = node.pull("example.invalid/library/busybox:1", None).await.unwrap();
    assert_eq!(image.reference, "example.invalid/library/busybox:1", "stored under the name asked for");
    assert_eq!(image.repo_digest, format!("example.invalid/library/busybox@{}", busybox().manifest.digest));
    assert_eq!(node.rt().find_image("example.invalid/library/busybox:1").unwrap().id, busybox().config.digest);

    let hub = node.pull("busybox:1", None).await.unwrap();
    assert_eq!(hub.reference, "docker.io/library/busybox:1");
    assert_eq!(hub.repo_digest, format!("docker.io/library/busybox@{}", busybox().manifest.digest));
    assert_eq!(node.run("mirrored", &hub, LAYERS_SCRIPT).await, (0, LAYERS_OUTPUT.into()));

    // When every endpoint fails the registry's own answer decides, and the mirrors' are named.
    let only_mirrors = Node::new(registries(&format!(
        "mirrors:\n  \"{addr}\":\n    endpoint: [\"http://{dead}\"]\n",
        addr = registry.addr()
    )));
    let err = only_mirrors.pull(&format!("{}/library/busybox:nope", registry.addr()), None).await.unwrap_err();
    assert!(err.is_image_not_found(), "{err}");
    assert!(err.to_string().contains(&format!("mirror http://{dead}")), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registries_yaml_credentials_open_an_htpasswd_registry() {
    let registry = LocalRegistry::start_with_auth("skiff", "s3cret").expect("start docker-registry");
    let reference = push(&registry, "private/busybox:1", busybox()).await.unwrap();
    let addr = registry.addr();

    let anonymous = Node::new(Registries::default());
    let err = anonymous.pull(&reference, None).await.unwrap_err();
    assert!(!err.is_image_not_found() && err.to_string().contains("unauthorized"), "{err}");

    let configs = format!("configs:\n  \"{addr}\":\n    auth:\n      username: skiff\n      password: s3cret\n");
    let node = Node::new(registries(&configs));
    assert_eq!(node.pull(&reference, None).await.unwrap().id, busybox().config.digest);

    // A mirror's credentials are those of the mirror host, given as Docker's base64 `auth`.
    let encoded = base64::engine::general_purpose::STANDARD.encode("skiff:s3cret");
    let node = Node::new(registries(&format!(
        "mirrors:\n  example.invalid:\n    endpoint: [\"http://{addr}\"]\nconfigs:\n  \"http://{addr}\":\n    auth:\n      auth: {encoded}\n"
    )));
    let image = node.pull("example.invalid/private/busybox:1", None).await.unwrap();
    assert_eq!(image.id, busybox().config.digest);

    // An imagePullSecret still works beside registries.yaml, and wins on its own registry.
    let wrong = Node::new(registries(&configs.replace("s3cret", "wrong")));
    assert!(wrong.pull(&reference, None).await.is_err());
    assert_eq!(wrong.pull(&reference, registry.auth().as_ref()).await.unwrap().id, busybox().config.digest);
}

/// A registry that, like Docker Hub, accepts only Bearer tokens from its own realm: `/token`
/// hands one out (to anyone, or only for the right basic credentials), `/v2/…` serves the image
/// from memory to requests that carry it and answers the rest with the challenge.
struct TokenRegistry {
    addr: std::net::SocketAddr,
    token_requests: TokenLog,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TokenRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `(service, scope, basic auth user)` of each token request.
type TokenRequest = (String, String, Option<String>);
type TokenLog = Arc<Mutex<Vec<TokenRequest>>>;

struct TokenState {
    realm: String,
    token: String,
    credentials: Option<(String, String)>,
    manifests: HashMap<String, (String, Bytes)>,
    blobs: HashMap<String, Bytes>,
    token_requests: TokenLog,
}

impl TokenRegistry {
    async fn start(repository: &str, tag: &str, image: &OciImage, credentials: Option<(&str, &str)>) -> TokenRegistry {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut manifests = HashMap::new();
        let manifest = (image.manifest.media_type.clone(), Bytes::from(image.manifest.data.clone()));
        manifests.insert(format!("/v2/{repository}/manifests/{tag}"), manifest.clone());
        manifests.insert(format!("/v2/{repository}/manifests/{}", image.manifest.digest), manifest);
        let blobs = image
            .layers
            .iter()
            .chain([&image.config])
            .map(|b| (format!("/v2/{repository}/blobs/{}", b.digest), Bytes::from(b.data.clone())))
            .collect();
        let token_requests = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(TokenState {
            realm: format!("http://{addr}/token"),
            token: format!("tok-{}-{}", std::process::id(), addr.port()),
            credentials: credentials.map(|(u, p)| (u.to_string(), p.to_string())),
            manifests,
            blobs,
            token_requests: token_requests.clone(),
        });
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, std::convert::Infallible>(state.answer(&req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TokenRegistry { addr, token_requests, task }
    }

    fn requests(&self) -> Vec<TokenRequest> {
        self.token_requests.lock().unwrap().clone()
    }
}

impl TokenState {
    fn answer(&self, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let path = req.uri().path().to_string();
        let reply = |status: StatusCode, body: Bytes| {
            let mut r = Response::new(Full::new(body));
            *r.status_mut() = status;
            r
        };
        if path == "/token" {
            let query: HashMap<String, String> =
                form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes()).into_owned().collect();
            let basic = header("authorization").and_then(|a| {
                let decoded = base64::engine::general_purpose::STANDARD.decode(a.strip_prefix("Basic ")?).ok()?;
                let (u, p) = String::from_utf8(decoded).ok()?.split_once(':').map(|(u, p)| (u.into(), p.into()))?;
                Some((u, p))
            });
            self.token_requests.lock().unwrap().push((
                query.get("service").cloned().unwrap_or_default(),
                query.get("scope").cloned().unwrap_or_default(),
                basic.as_ref().map(|(u, _): &(String, String)| u.clone()),
            ));
            if self.credentials.is_some() && basic != self.credentials {
                return reply(
                    StatusCode::UNAUTHORIZED,
                    Bytes::from_static(br#"{"details":"incorrect username or password"}"#),
                );
            }
            let body = serde_json::json!({"token": self.token, "expires_in": 300, "issued_at": "2026-01-01T00:00:00Z"});
            return reply(StatusCode::OK, Bytes::from(body.to_string()));
        }
        if header("authorization").as_deref() != Some(&format!("Bearer {}", self.token)) {
            let scope = path
                .strip_prefix("/v2/")
                .and_then(|p| p.rsplit_once("/manifests/").or_else(|| p.rsplit_once("/blobs/")))
                .map(|(repo, _)| format!(",scope=\"repository:{repo}:pull\""))
                .unwrap_or_default();
            let mut r = reply(
                StatusCode::UNAUTHORIZED,
                Bytes::from_static(br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#),
            );
            let challenge = format!("Bearer realm=\"{}\",service=\"skiff-test\"{scope}", self.realm);
            r.headers_mut().insert("www-authenticate", challenge.parse().unwrap());
            r.headers_mut().insert("content-type", "application/json".parse().unwrap());
            return r;
        }
        if path == "/v2/" {
            return reply(StatusCode::OK, Bytes::from_static(b"{}"));
        }
        if let Some((media_type, body)) = self.manifests.get(&path) {
            let digest = format!("sha256:{}", hex_sha256(body));
            let mut r =
                reply(StatusCode::OK, if req.method() == hyper::Method::HEAD { Bytes::new() } else { body.clone() });
            r.headers_mut().insert("content-type", media_type.parse().unwrap());
            r.headers_mut().insert("docker-content-digest", digest.parse().unwrap());
            return r;
        }
        if let Some(body) = self.blobs.get(&path) {
            return reply(StatusCode::OK, body.clone());
        }
        reply(
            StatusCode::NOT_FOUND,
            Bytes::from_static(br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#),
        )
    }
}

fn hex_sha256(data: &[u8]) -> String {
    skiff_runtime::testing::sha256(data).trim_start_matches("sha256:").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_challenge_is_answered_with_a_token_from_the_realm() {
    let zstd = busybox().with_zstd_layers().unwrap();
    let public = TokenRegistry::start("team/busybox", "1", &zstd, None).await;
    let node = Node::new(Registries::default());
    let image = node.pull(&format!("{}/team/busybox:1", public.addr), None).await.unwrap();
    assert_eq!(image.id, busybox().config.digest);
    let requests = public.requests();
    assert!(!requests.is_empty());
    assert!(
        requests.iter().all(|r| *r == ("skiff-test".into(), "repository:team/busybox:pull".into(), None)),
        "anonymous token requests for the pulled repository: {requests:?}"
    );
    assert_eq!(node.run("token", &image, LAYERS_SCRIPT).await, (0, LAYERS_OUTPUT.into()));

    let private = TokenRegistry::start("team/busybox", "1", &zstd, Some(("robot", "pa55"))).await;
    let reference = format!("{}/team/busybox:1", private.addr);
    let err = Node::new(Registries::default()).pull(&reference, None).await.unwrap_err();
    assert!(!err.is_image_not_found(), "{err}");
    let wrong = RegistryAuth { username: "robot".into(), password: "nope".into() };
    assert!(Node::new(Registries::default()).pull(&reference, Some(&wrong)).await.is_err());
    let right = RegistryAuth { username: "robot".into(), password: "pa55".into() };
    let image = Node::new(Registries::default()).pull(&reference, Some(&right)).await.unwrap();
    assert_eq!(image.id, busybox().config.digest);
    assert!(private.requests().iter().any(|r| r.2.as_deref() == Some("robot")), "the realm saw the basic credentials");

    // registries.yaml credentials reach the realm too, and a missing tag is still not-found.
    let node = Node::new(registries(&format!(
        "configs:\n  \"{}\":\n    auth:\n      username: robot\n      password: pa55\n",
        private.addr
    )));
    assert_eq!(node.pull(&reference, None).await.unwrap().id, busybox().config.digest);
    let missing = node.pull(&format!("{}/team/busybox:nope", private.addr), None).await.unwrap_err();
    assert!(missing.is_image_not_found(), "{missing}");
}

/// A CA and a certificate it signed for 127.0.0.1: `(ca_pem, cert_pem, key_pem)`.
fn certificates() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "skiff test registry CA");
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap().signed_by(&key, &issuer).unwrap();
    (ca_pem, cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_registry_is_trusted_through_its_ca_file_or_insecure_skip_verify() {
    let (ca_pem, cert_pem, key_pem) = certificates();
    let registry = LocalRegistry::start_with_tls(&cert_pem, &key_pem).expect("start docker-registry over HTTPS");
    let reference = push(&registry, "tls/busybox:1", busybox()).await.unwrap();
    let addr = registry.addr();

    let plain = Node::new(Registries::default());
    assert!(plain.pull(&reference, None).await.is_err(), "a loopback registry is plain HTTP unless configured");
    // A `tls` section makes it HTTPS, verified against the system's roots, which do not know
    // this CA.
    let unverified = Node::new(registries(&format!("configs:\n  \"{addr}\":\n    tls: {{}}\n")));
    let err = unverified.pull(&reference, None).await.unwrap_err();
    assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &ca_pem).unwrap();
    let with_ca = Registries::parse(
        &format!("configs:\n  \"{addr}\":\n    tls:\n      ca_file: ca.pem\n"),
        &dir.path().join("registries.yaml"),
    )
    .unwrap();
    let node = Node::new(with_ca);
    assert_eq!(node.pull(&reference, None).await.unwrap().id, busybox().config.digest);

    let skip = Node::new(registries(&format!("configs:\n  \"{addr}\":\n    tls:\n      insecure_skip_verify: true\n")));
    assert_eq!(skip.pull(&reference, None).await.unwrap().id, busybox().config.digest);

    // An https:// mirror endpoint takes the TLS settings of its host too.
    let mirror = Node::new(registries(&format!(
        "mirrors:\n  example.invalid:\n    endpoint: [\"https://{addr}\"]\nconfigs:\n  \"{addr}\":\n    tls:\n      \
         insecure_skip_verify: true\n"
    )));
    let image = mirror.pull("example.invalid/tls/busybox:1", None).await.unwrap();
    assert_eq!(image.repo_digest, format!("example.invalid/tls/busybox@{}", busybox().manifest.digest));
}

/// Bytes of every blob of `image` but its manifest: what one pull of it fetches.
fn blob_bytes(image: &OciImage) -> u64 {
    image.layers.iter().map(|l| l.data.len() as u64).sum::<u64>() + image.config.data.len() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_of_one_image_download_each_blob_once() {
    let registry = LocalRegistry::start().expect("start docker-registry");
    let reference = push(&registry, "shared:1", busybox()).await.unwrap();
    let node = Node::new(Registries::default());
    // The kubelet starting five pods of a new image at once; a second tag of the same content
    // shares the downloads too.
    let also = push(&registry, "shared:also", busybox()).await.unwrap();
    let refs = [&reference, &reference, &also, &reference, &also];
    let pulls = futures::future::join_all(refs.iter().map(|r| node.pull(r, None))).await;
    let images: Vec<Image> = pulls.into_iter().map(|p| p.unwrap()).collect();
    assert!(images.iter().all(|i| i.id == busybox().config.digest && i.layers == busybox().diff_ids));
    assert_eq!(node.rt().images().downloaded_bytes(), blob_bytes(busybox()), "each blob came over once");
    assert_eq!(node.run("shared", &images[2], LAYERS_SCRIPT).await, (0, LAYERS_OUTPUT.into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_beside_another_processes_store_waits_for_its_download_instead_of_repeating_it() {
    let registry = LocalRegistry::start().expect("start docker-registry");
    let reference = push(&registry, "beside:1", busybox()).await.unwrap();
    let node = Node::new(Registries::default());
    // `skiff image pull` opens the store on its own, as another process does: only the blobs'
    // lock files stand between its downloads and the runtime's.
    let cli = skiff_runtime::ImageManager::open(node.root.path()).unwrap();
    let registries = Registries::default();
    let (server, beside) = tokio::join!(node.pull(&reference, None), cli.pull(&reference, &registries, None, None));
    let (server, beside) = (server.unwrap(), beside.unwrap());
    assert_eq!(server.id, beside.image.id);
    assert_eq!(node.rt().images().downloaded_bytes() + cli.downloaded_bytes(), blob_bytes(busybox()));
    assert_eq!(node.run("beside", &server, LAYERS_SCRIPT).await, (0, LAYERS_OUTPUT.into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_layer_download_is_continued_from_where_it_stopped() {
    let registry = LocalRegistry::start().expect("start docker-registry");
    let reference = push(&registry, "resume:1", busybox()).await.unwrap();
    let node = Node::new(Registries::default());
    // The biggest layer (busybox itself), fetched from the registry and cut in half, as a pull
    // killed mid-download leaves it.
    let layer = busybox().layers.iter().max_by_key(|l| l.data.len()).unwrap();
    let url = format!("http://{}/v2/resume/blobs/{}", registry.addr(), layer.digest);
    let whole = fetch(&url).await;
    assert_eq!(whole, layer.data);
    let half = whole.len() / 2;
    let partial =
        node.root.path().join("images/tmp").join(format!("{}.partial", layer.digest.trim_start_matches("sha256:")));
    std::fs::write(&partial, &whole[..half]).unwrap();

    let recorded = Arc::new(skiff_runtime::RecordedProgress::default());
    let pulled =
        node.rt().images().pull(&reference, &Registries::default(), None, Some(recorded.clone())).await.unwrap();
    let rest = (whole.len() - half) as u64;
    assert_eq!(node.rt().images().downloaded_bytes(), blob_bytes(busybox()) - half as u64, "only the rest came over");
    let events = recorded.0.lock().unwrap().clone();
    let of_layer = |e: &&skiff_runtime::PullEvent| match e {
        skiff_runtime::PullEvent::Downloading { digest, .. } | skiff_runtime::PullEvent::Downloaded { digest, .. } => {
            digest == &layer.digest
        }
        _ => false,
    };
    let counts: Vec<_> = events.iter().filter(of_layer).collect();
    assert!(
        matches!(counts.first(), Some(skiff_runtime::PullEvent::Downloading { current, .. }) if *current > half as u64),
        "the count goes on from the bytes already there: {counts:?}"
    );
    assert_eq!(
        counts.last(),
        Some(&&skiff_runtime::PullEvent::Downloaded { digest: layer.digest.clone(), bytes: rest })
    );
    assert!(!partial.exists(), "the partial file went into the layer");
    assert_eq!(node.run("resume", &pulled.image, LAYERS_SCRIPT).await, (0, LAYERS_OUTPUT.into()));

    // A partial file that is not a prefix of the blob fails the digest check and is discarded;
    // the pull after that starts over and succeeds.
    let other = Node::new(Registries::default());
    let partial =
        other.root.path().join("images/tmp").join(format!("{}.partial", layer.digest.trim_start_matches("sha256:")));
    std::fs::write(&partial, vec![0u8; half]).unwrap();
    let err = other.pull(&reference, None).await.unwrap_err();
    assert!(err.to_string().contains("the download is discarded"), "{err}");
    assert!(!partial.exists());
    let image = other.pull(&reference, None).await.unwrap();
    assert_eq!(other.run("restart", &image, LAYERS_SCRIPT).await, (0, LAYERS_OUTPUT.into()));
}

/// GET `url` over plain HTTP/1.1 on loopback.
async fn fetch(url: &str) -> Vec<u8> {
    use http_body_util::BodyExt;
    let uri: hyper::Uri = url.parse().unwrap();
    let stream = tokio::net::TcpStream::connect(uri.authority().unwrap().as_str()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut uri_now = uri.clone();
    // The registry may redirect a blob to its storage URL on the same host.
    for _ in 0..3 {
        let req = Request::get(uri_now.path_and_query().unwrap().as_str())
            .header("host", uri.authority().unwrap().as_str())
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        if resp.status().is_redirection() {
            uri_now = resp.headers()["location"].to_str().unwrap().parse().unwrap();
            continue;
        }
        assert_eq!(resp.status(), StatusCode::OK);
        return resp.into_body().collect().await.unwrap().to_bytes().to_vec();
    }
    panic!("too many redirects fetching {url}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_ignores_range_sends_the_whole_blob_and_the_partial_file_starts_over() {
    // The token registry answers every blob GET with 200 and the whole blob, Range or not.
    let registry = TokenRegistry::start("team/busybox", "1", busybox(), None).await;
    let node = Node::new(Registries::default());
    let layer = busybox().layers.iter().max_by_key(|l| l.data.len()).unwrap();
    let partial =
        node.root.path().join("images/tmp").join(format!("{}.partial", layer.digest.trim_start_matches("sha256:")));
    std::fs::write(&partial, &layer.data[..layer.data.len() / 2]).unwrap();
    let image = node.pull(&format!("{}/team/busybox:1", registry.addr), None).await.unwrap();
    assert_eq!(node.rt().images().downloaded_bytes(), blob_bytes(busybox()), "the whole blob came over again");
    assert!(!partial.exists());
    assert_eq!(node.run("norange", &image, LAYERS_SCRIPT).await, (0, LAYERS_OUTPUT.into()));
}
