//! `skiff server`: host checks, then the parts of the node started in order, and a graceful stop.
//!
//! Start order, each step depending on the one before:
//! 1. checks: root, the API port free, no other server on the data dir, a kernel the runtime
//!    can use (`Runtime::new`);
//! 2. the store (`<data-dir>/db/state.redb`) and its bootstrap objects;
//! 3. TLS (`<data-dir>/tls`), the token (`<data-dir>/token`), the service account token key
//!    (`<data-dir>/tls/service-account.key`) and the admin kubeconfig;
//! 4. the HTTPS API, the scheduler, the controllers, then the kubelet (which serves logs through the API).
//!
//! SIGTERM or SIGINT cancels one token that every part watches. Containers outlive the server:
//! their shims are separate processes that a restarted server adopts.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use skiff_api::{ApiClient, PodStreams};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::cidr::Cidr;
use crate::kubeconfig;

/// How long the parts get to stop after a signal before the process exits anyway.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// The server's settings, checked and with every default filled in (see `cli::server`).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub cluster_cidr: Cidr,
    pub service_cidr: Cidr,
    /// The first address of the service CIDR: Service `default/kubernetes`.
    pub kubernetes_service_ip: Ipv4Addr,
    pub cluster_dns: Ipv4Addr,
    pub cluster_domain: String,
    pub node_name: String,
    pub kubeconfig_path: PathBuf,
    pub kubeconfig_mode: u32,
    pub disabled: Vec<String>,
    pub cgroup_root: String,
    pub bridge_name: String,
}

impl ServerConfig {
    /// This node's share of the cluster CIDR: its first /24 (or all of it, if smaller), as k3s
    /// gives its first node `10.42.0.0/24`.
    pub fn node_pod_cidr(&self) -> Cidr {
        self.cluster_cidr.first_subnet(24)
    }

    /// The node's address on the pod bridge (the pod CIDR's gateway). The API listens there too,
    /// and Endpoints `default/kubernetes` point there, so pods reach the API through Service
    /// `kubernetes` (as k3s lists the node's address): a loopback endpoint is invalid in Kubernetes.
    pub fn api_pod_address(&self) -> Ipv4Addr {
        self.node_pod_cidr().nth(1).expect("a pod CIDR has a first address")
    }

    /// What clients dial: a wildcard bind address is reached on loopback.
    fn server_url(&self) -> String {
        let ip = match self.listen.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("https://{}", SocketAddr::new(ip, self.listen.port()))
    }

    /// Names and addresses the serving certificate must cover: how kubectl reaches the node and
    /// how pods reach Service `kubernetes`.
    fn certificate_sans(&self) -> Vec<String> {
        let mut sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        if !self.listen.ip().is_unspecified() {
            sans.push(self.listen.ip().to_string());
        }
        sans.push(self.node_name.clone());
        sans.push(self.kubernetes_service_ip.to_string());
        sans.push(self.api_pod_address().to_string());
        for name in ["kubernetes", "kubernetes.default", "kubernetes.default.svc"] {
            sans.push(name.to_string());
        }
        sans.push(format!("kubernetes.default.svc.{}", self.cluster_domain));
        let mut seen = std::collections::HashSet::new();
        sans.retain(|san| seen.insert(san.clone()));
        sans
    }
}

pub async fn run(config: ServerConfig) -> anyhow::Result<()> {
    // 1. Checks, before anything is written.
    if !nix::unistd::geteuid().is_root() {
        bail!("skiff server must run as root");
    }
    let listener = bind(config.listen)?;
    // From here a signal stops the server cleanly, also while it is still starting: the parts
    // see the cancelled token and return at once.
    let shutdown = CancellationToken::new();
    watch_signals(shutdown.clone())?;
    create_private_dir(&config.data_dir)?;
    let _data_dir_lock = lock_data_dir(&config.data_dir)?;
    let runtime = skiff_runtime::Runtime::new(skiff_runtime::RuntimeConfig {
        root: config.data_dir.join("runtime"),
        shim_exe: std::env::current_exe().context("finding the skiff executable to run shims with")?,
        cgroup_root: config.cgroup_root.clone(),
    })
    .map_err(|err| match err {
        skiff_runtime::Error::HostUnsupported(why) => anyhow!("this host cannot run containers: {why}"),
        other => anyhow!(other).context("starting the container runtime"),
    })?;
    let network = skiff_runtime::network::NetworkConfig {
        bridge: config.bridge_name.clone(),
        cidr: skiff_runtime::network::Ipv4Cidr::parse(&config.node_pod_cidr().to_string())
            .context("the node's pod CIDR")?,
        state_dir: config.data_dir.join("runtime").join("network"),
    };
    // k3s's mirrors and per-registry credentials, read once at start as k3s does.
    let registries = skiff_runtime::Registries::load(&config.data_dir.join("registries.yaml"))?;
    let runtime = runtime.with_network(network).context("preparing the pod network")?.with_registries(registries);
    let runtime = Arc::new(runtime);
    // Pods reach beyond the node through ip_forward and a masquerade table of this instance;
    // removed (ip_forward put back) when the server stops, also on an error return (drop).
    // Without it pods still reach each other and the node, so a kernel without nf_tables only
    // costs egress.
    let egress = skiff_runtime::network::Ipv4Cidr::parse(&config.cluster_cidr.to_string())
        .and_then(|cluster| runtime.network().expect("set just above").enable_egress(cluster))
        .inspect_err(|e| warn!("pods cannot reach beyond this node: {e}"))
        .ok();

    // Pods reach the API on the node's bridge address (see `api_pod_address`); a wildcard bind
    // covers it already.
    let pod_listener = match config.listen.ip() {
        ip if ip.is_unspecified() || ip == IpAddr::V4(config.api_pod_address()) => None,
        _ => listen_for_pods(&runtime, SocketAddr::new(config.api_pod_address().into(), config.listen.port()))
            .await
            .inspect_err(|e| warn!("pods cannot reach the API through Service kubernetes: {e:#}"))
            .ok(),
    };

    // 2. The store.
    let db_dir = config.data_dir.join("db");
    create_private_dir(&db_dir)?;
    let registry = skiff_apiserver::Registry::open(&db_dir.join("state.redb")).context("opening the store")?;
    registry
        .set_service_cidr(&config.service_cidr.to_string())
        .map_err(|e| anyhow!("--service-cidr {}: {e}", config.service_cidr))?;
    registry
        .bootstrap(&config.kubernetes_service_ip.to_string())
        .await
        .context("creating the default namespaces and Service kubernetes")?;
    if pod_listener.is_some() || config.listen.ip().is_unspecified() {
        publish_api_endpoints(registry.as_ref(), config.api_pod_address(), config.listen.port())
            .await
            .context("writing Endpoints default/kubernetes")?;
    }

    // 3. Credentials.
    let tls = skiff_apiserver::http::load_or_create_tls(&config.data_dir.join("tls"), &config.certificate_sans())
        .context("preparing TLS")?;
    let token = kubeconfig::load_or_create_token(&config.data_dir.join("token"))?;
    let issuer = Arc::new(
        skiff_apiserver::token::TokenIssuer::load_or_create(
            &config.data_dir.join("tls").join("service-account.key"),
            &format!("https://kubernetes.default.svc.{}", config.cluster_domain),
        )
        .context("preparing the service account token key")?,
    );
    registry.set_token_issuer(issuer.clone());
    let kubeconfig_text = kubeconfig::render(&config.server_url(), &tls.ca_pem, &token);
    skiff_apiserver::atomic_file::write(&config.kubeconfig_path, kubeconfig_text.as_bytes(), config.kubeconfig_mode)?;
    info!(path = %config.kubeconfig_path.display(), "wrote kubeconfig");
    let api: Arc<dyn ApiClient> = registry;

    // 4. The long-running parts.
    let streams: Arc<OnceLock<Arc<dyn PodStreams>>> = Arc::new(OnceLock::new());
    let mut parts: JoinSet<(&'static str, anyhow::Result<()>)> = JoinSet::new();

    let auth = skiff_apiserver::http::Auth { admin_token: token, service_accounts: Some(issuer) };
    if let Some(pod_listener) = pod_listener {
        let serve = skiff_apiserver::http::serve(
            pod_listener,
            tls.server_config.clone(),
            auth.clone(),
            api.clone(),
            streams.clone(),
            shutdown.clone(),
        );
        parts.spawn(async move { ("api server (pod network)", serve.await.map_err(anyhow::Error::from)) });
    }
    let serve =
        skiff_apiserver::http::serve(listener, tls.server_config, auth, api.clone(), streams.clone(), shutdown.clone());
    parts.spawn(async move { ("api server", serve.await.map_err(anyhow::Error::from)) });
    info!(url = %config.server_url(), "serving the Kubernetes API");

    let scheduler = skiff_scheduler::run(api.clone(), shutdown.clone());
    parts.spawn(async move {
        scheduler.await;
        ("scheduler", Ok(()))
    });

    let controllers = skiff_controllers::run_all(api.clone(), shutdown.clone());
    parts.spawn(async move {
        controllers.await;
        ("controllers", Ok(()))
    });

    let root_ca = skiff_controllers::root_ca::RootCaPublisher::run(api.clone(), tls.ca_pem.clone(), shutdown.clone());
    parts.spawn(async move {
        root_ca.await;
        ("root CA publisher", Ok(()))
    });

    let service_config = skiff_kubelet::service::ServiceConfig {
        cluster_dns: config.cluster_dns,
        cluster_domain: config.cluster_domain.clone(),
    };
    let service_plane =
        skiff_kubelet::service::run(api.clone(), runtime.clone(), service_config.clone(), shutdown.clone());
    parts.spawn(async move { ("service proxy and DNS", service_plane.await.map_err(anyhow::Error::from)) });

    // Archives dropped into <data-dir>/images are imported before the kubelet starts the pods
    // that may run from them.
    import_image_archives(&runtime, &config.data_dir.join("images")).await?;
    tokio::spawn(collect_images_under_disk_pressure(runtime.clone(), shutdown.clone()));

    let kubelet = skiff_kubelet::Kubelet::new(
        skiff_kubelet::KubeletConfig { node_name: config.node_name.clone(), root: config.data_dir.join("kubelet") },
        api.clone(),
        runtime,
    );
    kubelet.set_cluster_dns(service_config);
    if streams.set(kubelet.clone()).is_err() {
        unreachable!("the pod streams are set once, here");
    }
    let kubelet_run = kubelet.run(shutdown.clone());
    parts.spawn(async move {
        kubelet_run.await;
        ("kubelet", Ok(()))
    });
    info!(
        node = %config.node_name,
        cluster_cidr = %config.cluster_cidr,
        service_cidr = %config.service_cidr,
        cluster_dns = %config.cluster_dns,
        cluster_domain = %config.cluster_domain,
        disabled = ?config.disabled,
        "skiff is running"
    );

    let result = supervise(parts, shutdown).await;
    if let Some(Err(e)) = egress.map(|e| e.remove()) {
        warn!("removing the pod egress table: {e}");
    }
    result
}

/// Binds the API port on the node's bridge address (making the bridge first, as the pod
/// network would).
async fn listen_for_pods(
    runtime: &skiff_runtime::Runtime,
    addr: SocketAddr,
) -> anyhow::Result<tokio::net::TcpListener> {
    let network = runtime.network().ok_or_else(|| anyhow!("no pod network"))?;
    network.ensure_bridge().await.context("preparing the pod bridge")?;
    bind(addr)
}

/// Endpoints `default/kubernetes`: the API at `ip:port` (kube-apiserver's endpoint reconciler
/// writes its own address there at start), and the Service's `targetPort` to match.
async fn publish_api_endpoints(api: &dyn ApiClient, ip: Ipv4Addr, port: u16) -> anyhow::Result<()> {
    let endpoints = skiff_api::ResourceKind::by_plural("", "v1", "endpoints").expect("endpoints are served");
    let subsets = serde_json::json!([{
        "addresses": [{"ip": ip.to_string()}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
    }]);
    match api.get(endpoints, Some("default"), "kubernetes").await {
        Ok(mut current) if current["subsets"] != subsets => {
            current["subsets"] = subsets;
            api.update(endpoints, Some("default"), "kubernetes", None, current).await?;
        }
        Ok(_) => {}
        Err(e) if e.is_not_found() => {
            let object = serde_json::json!({
                "apiVersion": "v1",
                "kind": "Endpoints",
                "metadata": {"name": "kubernetes", "namespace": "default",
                             "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
                "subsets": subsets,
            });
            api.create(endpoints, Some("default"), object).await?;
        }
        Err(e) => return Err(e.into()),
    }
    // The Service's targetPort is the API's port, as kube-apiserver keeps it (bootstrap assumes 6443).
    let services = skiff_api::ResourceKind::by_plural("", "v1", "services").expect("services are served");
    let mut service = api.get(services, Some("default"), "kubernetes").await?;
    if let Some(https) =
        service["spec"]["ports"].as_array_mut().and_then(|p| p.iter_mut().find(|p| p["name"] == "https"))
        && https["targetPort"] != port
    {
        https["targetPort"] = port.into();
        api.update(services, Some("default"), "kubernetes", None, service).await?;
    }
    Ok(())
}

/// Imports the archives of `dir` not imported before (each archive's failure is logged and
/// skips only that archive).
async fn import_image_archives(runtime: &Arc<skiff_runtime::Runtime>, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (images, dir) = (runtime.images(), dir.to_path_buf());
    tokio::task::spawn_blocking(move || images.import_dir(&dir))
        .await
        .context("importing image archives")?
        .context("importing image archives")?;
    Ok(())
}

/// Kubernetes' image garbage collection, every `IMAGE_GC_PERIOD` (its default, 5 minutes): once
/// the image filesystem is 85% used, images no container uses go, oldest first, down to 80%.
async fn collect_images_under_disk_pressure(runtime: Arc<skiff_runtime::Runtime>, shutdown: CancellationToken) {
    const IMAGE_GC_PERIOD: Duration = Duration::from_secs(300);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(IMAGE_GC_PERIOD) => {}
        }
        let images = runtime.images();
        let collected = tokio::task::spawn_blocking(move || {
            images.collect_for_disk(
                skiff_runtime::IMAGE_GC_HIGH_PERCENT,
                skiff_runtime::IMAGE_GC_LOW_PERCENT,
                skiff_runtime::IMAGE_MINIMUM_GC_AGE,
            )
        })
        .await;
        match collected {
            Ok(Ok(Some(reclaimed))) => info!(
                removed = ?reclaimed.removed,
                freed_bytes = reclaimed.bytes,
                "image garbage collection under disk pressure"
            ),
            Ok(Ok(None)) => {}
            Ok(Err(err)) => warn!("image garbage collection failed: {err}"),
            Err(err) => warn!("image garbage collection task failed: {err}"),
        }
    }
}

/// Waits for the parts. One that stops or fails before shutdown stops the others, and the
/// server exits with its error; after a signal, the parts get `STOP_GRACE` to finish.
async fn supervise(
    mut parts: JoinSet<(&'static str, anyhow::Result<()>)>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut failure: Option<anyhow::Error> = None;
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(STOP_GRACE).await;
    };
    tokio::pin!(deadline);
    loop {
        let joined = tokio::select! {
            joined = parts.join_next() => joined,
            () = &mut deadline => {
                warn!(left = parts.len(), "parts still running {}s after the stop signal: exiting", STOP_GRACE.as_secs());
                parts.abort_all();
                break;
            }
        };
        let Some(joined) = joined else { break };
        let err = match joined {
            Ok((_, Ok(()))) if shutdown.is_cancelled() => continue,
            Ok((name, Ok(()))) => anyhow!("{name} stopped on its own"),
            Ok((name, Err(err))) => err.context(format!("{name} failed")),
            Err(join_error) => anyhow!("a part of the server panicked: {join_error}"),
        };
        error!("{err:#}: stopping");
        failure.get_or_insert(err);
        shutdown.cancel();
    }
    match failure {
        Some(err) => Err(err),
        None => {
            info!("stopped");
            Ok(())
        }
    }
}

/// Binds the API port now, so a busy port is reported before anything is written, and no other
/// process can take it while the rest starts.
fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr).map_err(|err| match err.kind() {
        std::io::ErrorKind::AddrInUse => anyhow!("port {} on {} is already in use", addr.port(), addr.ip()),
        std::io::ErrorKind::AddrNotAvailable => {
            anyhow!("address {} is not on this machine (--bind-address)", addr.ip())
        }
        _ => anyhow!(err).context(format!("listening on {addr}")),
    })?;
    listener.set_nonblocking(true).with_context(|| format!("making the listener on {addr} non-blocking"))?;
    tokio::net::TcpListener::from_std(listener).with_context(|| format!("registering the listener on {addr}"))
}

/// One server per data dir: the store, the runtime's state and the containers' shims all assume
/// a single owner. The lock is taken before the runtime opens its state, so a second server
/// fails without touching the first one's containers; the kernel drops it when the process dies.
fn lock_data_dir(data_dir: &Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    let path = data_dir.join("server.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        if errno == nix::errno::Errno::EWOULDBLOCK {
            anyhow!("another skiff server is running on data dir {}", data_dir.display())
        } else {
            anyhow!(errno).context(format!("locking {}", path.display()))
        }
    })
}

fn create_private_dir(path: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| format!("creating {}", path.display()))
}

/// The first SIGTERM or SIGINT stops the server gracefully; a second one exits at once.
fn watch_signals(shutdown: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::spawn(async move {
        for round in 0.. {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            if round == 0 {
                info!("{name}: stopping");
                shutdown.cancel();
            } else {
                warn!("{name} again: exiting without waiting");
                std::process::exit(1);
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(listen: &str) -> ServerConfig {
        ServerConfig {
            data_dir: "/var/lib/skiff".into(),
            listen: listen.parse().unwrap(),
            cluster_cidr: "10.42.0.0/16".parse().unwrap(),
            service_cidr: "10.43.0.0/16".parse().unwrap(),
            kubernetes_service_ip: Ipv4Addr::new(10, 43, 0, 1),
            cluster_dns: Ipv4Addr::new(10, 43, 0, 10),
            cluster_domain: "cluster.local".into(),
            node_name: "node1".into(),
            kubeconfig_path: "/var/lib/skiff/kubeconfig.yaml".into(),
            kubeconfig_mode: 0o600,
            disabled: vec![],
            cgroup_root: "skiff".into(),
            bridge_name: "skiff0".into(),
        }
    }

    #[test]
    fn a_wildcard_bind_address_is_dialled_on_loopback() {
        assert_eq!(config("0.0.0.0:6443").server_url(), "https://127.0.0.1:6443");
        assert_eq!(config("[::]:6443").server_url(), "https://[::1]:6443");
        assert_eq!(config("127.0.0.2:7000").server_url(), "https://127.0.0.2:7000");
    }

    #[test]
    fn the_certificate_covers_loopback_the_node_and_service_kubernetes() {
        let sans = config("127.0.0.1:6443").certificate_sans();
        for want in ["localhost", "127.0.0.1", "node1", "10.43.0.1", "kubernetes.default.svc.cluster.local"] {
            assert!(sans.iter().any(|s| s == want), "{want} missing from {sans:?}");
        }
        assert_eq!(sans.iter().filter(|s| *s == "127.0.0.1").count(), 1, "no duplicates");
    }

    #[test]
    fn a_second_server_on_one_data_dir_is_refused_until_the_first_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_data_dir(dir.path()).unwrap();
        let err = lock_data_dir(dir.path()).unwrap_err();
        assert_eq!(err.to_string(), format!("another skiff server is running on data dir {}", dir.path().display()));
        drop(first);
        lock_data_dir(dir.path()).unwrap();
    }

    #[tokio::test]
    async fn a_busy_port_is_named_in_the_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind(addr).unwrap_err();
        assert_eq!(err.to_string(), format!("port {} on 127.0.0.1 is already in use", addr.port()));
    }
}
