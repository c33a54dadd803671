//! Pods use Services as in Kubernetes: a busybox pod finds a Service by its short name through
//! the resolv.conf the kubelet gives it and the cluster DNS, and fetches from the server pod
//! behind the Service's clusterIP through the proxy. Real runtime, real kubelet, real registry;
//! root required.
//!
//! Its own `main` (`harness = false`): this test binary is the runtime's shim too. The guard
//! stops the kubelet and the service plane and removes every container, sandbox, cgroup, address
//! and the bridge, also when the test fails.

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;
use skiff_api::{Api, ApiClient, LogOptions, PodStreams, ResourceKind};
use skiff_kubelet::service::{self, ServiceConfig};
use skiff_kubelet::{Kubelet, KubeletConfig};
use skiff_runtime::network::{Ipv4Cidr, NetworkConfig};
use skiff_runtime::testing::{LocalRegistry, build_busybox_image, push};
use skiff_runtime::{CgroupManager, Runtime, RuntimeConfig};
use tokio_util::sync::CancellationToken;

// The pods here opt out of the API credentials volume: these tests run the registry and the
// kubelet only, without the token issuer, the namespace's `default` ServiceAccount and the
// `kube-root-ca.crt` ConfigMap that `skiff server` provides (tests/service_account_tokens.rs).
const NODE: &str = "node1";

fn bridge_name() -> String {
    format!("sksp{}", std::process::id() % 100_000)
}

/// Stops everything and removes what the test made, whichever way the test ends.
struct Cleanup {
    runtime: Arc<Runtime>,
    stop: CancellationToken,
    cgroup_root: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.stop.cancel();
        let runtime = self.runtime.clone();
        let cgroup_root = self.cgroup_root.clone();
        std::thread::spawn(move || {
            let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            tokio.block_on(async {
                for c in runtime.list_containers().unwrap_or_default() {
                    let _ = runtime.stop_container(&c.id, Duration::ZERO).await;
                    let _ = runtime.remove_container(&c.id).await;
                }
                for s in runtime.list_sandboxes().unwrap_or_default() {
                    let _ = runtime.remove_sandbox(&s).await;
                }
                if let Some(net) = runtime.network() {
                    let _ = net.remove_bridge().await;
                }
            });
            let bridge = bridge_name();
            if std::path::Path::new("/sys/class/net").join(&bridge).exists() {
                let _ = std::process::Command::new("ip").args(["link", "del", &bridge]).status();
            }
            if let Ok(m) = CgroupManager::detect(&cgroup_root) {
                let _ = m.kill_and_remove(std::path::Path::new(&cgroup_root), Duration::from_secs(10));
            }
        })
        .join()
        .unwrap();
    }
}

fn kind(plural: &str) -> &'static ResourceKind {
    ResourceKind::by_plural("", "v1", plural).unwrap()
}

async fn wait_pod(pods: &Api<Pod>, name: &str, what: &str, check: impl Fn(&Pod) -> bool) -> Pod {
    let mut last = None;
    for _ in 0..600 {
        match pods.get_opt(name).await.unwrap() {
            Some(pod) if check(&pod) => return pod,
            other => last = other,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("pod {name}: timed out waiting for {what}; last seen: {:#?}", last.map(|p| p.status));
}

fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or_default()
}

async fn a_pod_finds_a_service_by_name_and_reaches_it() {
    let pid = std::process::id();
    let x = 20 + pid % 200;
    let dir = tempfile::Builder::new().prefix("skiff-service-pods-").tempdir().unwrap();
    let registry = skiff_apiserver::Registry::open(&dir.path().join("state.redb")).unwrap();
    registry.set_service_cidr(&format!("10.249.{x}.0/24")).unwrap();
    registry.bootstrap(&format!("10.249.{x}.1")).await.unwrap();
    let client: Arc<dyn ApiClient> = registry;
    let oci = build_busybox_image(&dir.path().join("oci")).unwrap();
    let local = LocalRegistry::start().expect("docker-registry (scripts/test.sh installs it)");
    let image = push(&local, "busybox:1", &oci).await.expect("push busybox");
    let cgroup_root = format!("skiff-service-pods-{pid}");
    let network = NetworkConfig {
        bridge: bridge_name(),
        cidr: Ipv4Cidr::parse(&format!("10.248.{x}.0/24")).unwrap(),
        state_dir: dir.path().join("runtime").join("network"),
    };
    let runtime = Arc::new(
        Runtime::new(RuntimeConfig {
            root: dir.path().join("runtime"),
            shim_exe: std::env::current_exe().unwrap(),
            cgroup_root: cgroup_root.clone(),
        })
        .expect("runtime on this host (root)")
        .with_network(network)
        .expect("the test's pod network"),
    );
    let stop = CancellationToken::new();
    let _cleanup = Cleanup { runtime: runtime.clone(), stop: stop.clone(), cgroup_root };
    let config = ServiceConfig {
        cluster_dns: format!("10.249.{x}.10").parse().unwrap(),
        cluster_domain: "cluster.local".into(),
    };
    let kubelet = Kubelet::new(
        KubeletConfig { node_name: NODE.into(), root: dir.path().join("kubelet") },
        client.clone(),
        runtime.clone(),
    );
    kubelet.set_cluster_dns(config.clone());
    tokio::spawn(kubelet.clone().run(stop.clone()));
    let plane = tokio::spawn(service::run(client.clone(), runtime.clone(), config.clone(), stop.clone()));

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let web: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {"nodeName": NODE, "automountServiceAccountToken": false, "terminationGracePeriodSeconds": 1, "containers": [{
            "name": "httpd", "image": image,
            "command": ["sh", "-c", "mkdir -p /www && echo served-by-web > /www/index.html && exec httpd -f -p 8080 -h /www"]}]},
    }))
    .unwrap();
    pods.create(&web).await.unwrap();
    let web = wait_pod(&pods, "web", "Running with an IP", |p| {
        phase(p) == "Running" && p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some()
    })
    .await;
    let web_ip = web.status.unwrap().pod_ip.unwrap();
    let svc = client
        .create(
            kind("services"),
            Some("default"),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
                   "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
        )
        .await
        .unwrap();
    let cluster_ip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
    // What the Endpoints controller would write for the ready pod.
    client
        .create(
            kind("endpoints"),
            Some("default"),
            json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "web", "namespace": "default"},
                   "subsets": [{"addresses": [{"ip": web_ip}], "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]}),
        )
        .await
        .unwrap();

    // Retries while the plane catches up with the Service; the pod's output tells what it saw.
    // (busybox nslookup fails when any search domain says NXDOMAIN, so only wget's status counts.)
    let script = "cat /etc/resolv.conf; for i in 1 2 3 4 5 6 7 8 9 10; do \
                  nslookup web; wget -q -O - http://web/ && exit 0; sleep 1; done; exit 1";
    let probe: Pod = serde_json::from_value(json!({
        "metadata": {"name": "client"},
        "spec": {"nodeName": NODE, "automountServiceAccountToken": false, "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "c", "image": image, "command": ["sh", "-c", script]}]},
    }))
    .unwrap();
    pods.create(&probe).await.unwrap();
    let done = wait_pod(&pods, "client", "completion", |p| matches!(phase(p), "Succeeded" | "Failed")).await;
    let opts = LogOptions { container: "c".into(), ..Default::default() };
    let mut stream = kubelet.logs("default", "client", done.metadata.uid.as_deref().unwrap(), &opts).await.unwrap();
    let mut out = Vec::new();
    while let Some(chunk) =
        tokio::time::timeout(Duration::from_secs(20), stream.next()).await.expect("log stream stalled")
    {
        out.extend_from_slice(&chunk.unwrap());
    }
    let logs = String::from_utf8_lossy(&out);
    assert_eq!(phase(&done), "Succeeded", "the client pod failed; its output:\n{logs}");
    assert!(
        logs.contains(&format!("nameserver {}", config.cluster_dns))
            && logs.contains("search default.svc.cluster.local svc.cluster.local cluster.local")
            && logs.contains("options ndots:5"),
        "resolv.conf: {logs}"
    );
    assert!(logs.contains(&format!("Address: {cluster_ip}")), "nslookup web: {logs}");
    assert!(logs.contains("served-by-web"), "wget http://web/: {logs}");
    assert!(!plane.is_finished(), "the service plane stopped early");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("shim") {
        skiff_runtime::shim_main(args[1..].to_vec());
    }
    // RUST_LOG=skiff_kubelet=debug shows what the kubelet and the service plane do.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .init();
    let filters: Vec<&String> = args[1..].iter().filter(|a| !a.starts_with('-')).collect();
    let name = "a_pod_finds_a_service_by_name_and_reaches_it";
    if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
        println!("\n0 passed, 0 failed");
        return;
    }
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let ok =
        tokio.block_on(std::panic::AssertUnwindSafe(a_pod_finds_a_service_by_name_and_reaches_it()).catch_unwind());
    let ok = ok.is_ok();
    println!("test {name} ... {}", if ok { "ok" } else { "FAILED" });
    println!("\n{} passed, {} failed", ok as u8, !ok as u8);
    std::process::exit(if ok { 0 } else { 1 });
}
