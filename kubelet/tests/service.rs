//! The service proxy and cluster DNS on the real kernel: a bridge and two network namespaces of
//! our own, a busybox httpd "pod" in one, a Service and its Endpoints in a real registry. The
//! other namespace (and the node) reach the pod through clusterIP:port, DNS answers the
//! Service name, and the plane removes every address it added. Needs root.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use skiff_api::{ApiClient, DeleteOptions, ResourceKind};
use skiff_kubelet::service::{self, NodeAddresses, ServiceConfig};
use skiff_runtime::network::{Ipv4Cidr, NetworkConfig, PodNetwork};
use tokio_util::sync::CancellationToken;

/// A network namespace pinned by a bind mount, unmounted on drop.
struct Netns {
    path: PathBuf,
}

impl Netns {
    fn new(path: PathBuf) -> Netns {
        std::fs::write(&path, b"").unwrap();
        let target = path.clone();
        std::thread::spawn(move || {
            // SAFETY: plain syscalls on this short-lived thread, which ends right after.
            unsafe {
                assert_eq!(libc::unshare(libc::CLONE_NEWNET), 0, "unshare: {}", std::io::Error::last_os_error());
                let source = std::ffi::CString::new("/proc/thread-self/ns/net").unwrap();
                let target = std::ffi::CString::new(target.to_str().unwrap()).unwrap();
                let rc =
                    libc::mount(source.as_ptr(), target.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null());
                assert_eq!(rc, 0, "bind-mounting the netns: {}", std::io::Error::last_os_error());
            }
        })
        .join()
        .unwrap();
        Netns { path }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path.display())).arg("busybox").args(args);
        c
    }

    fn busybox(&self, args: &[&str]) -> std::process::Output {
        self.command(args).output().unwrap()
    }

    /// `curl -m 3 URL` inside the namespace (busybox 1.35's `wget -T` crashes).
    fn curl(&self, url: &str) -> std::process::Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.path.display()))
            .args(["curl", "-sS", "-m", "3", url])
            .output()
            .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let target = std::ffi::CString::new(self.path.to_str().unwrap()).unwrap();
        // SAFETY: a plain umount2 of our own mount.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Deletes the test's bridge, and with it every address the plane put there, even when an
/// assertion fails half-way.
struct BridgeGuard(String);

impl Drop for BridgeGuard {
    fn drop(&mut self) {
        if Path::new("/sys/class/net").join(&self.0).exists() {
            let _ = Command::new("ip").args(["link", "del", &self.0]).status();
        }
    }
}

/// Kills (by its own pid) the process it holds.
struct ProcessGuard(Child);

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn kind(plural: &str) -> &'static ResourceKind {
    ResourceKind::by_plural("", "v1", plural).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_reaches_a_service_by_cluster_ip_and_by_name() {
    let pid = std::process::id();
    let x = 20 + pid % 200;
    let dir = tempfile::tempdir().unwrap();
    let bridge = format!("sksvc{}", pid % 100_000);
    let cidr = Ipv4Cidr::parse(&format!("10.246.{x}.0/24")).unwrap();
    let cluster_dns: Ipv4Addr = format!("10.247.{x}.10").parse().unwrap();
    let _bridge = BridgeGuard(bridge.clone());
    let net = Arc::new(
        PodNetwork::new(NetworkConfig { bridge: bridge.clone(), cidr, state_dir: dir.path().join("network") }).unwrap(),
    );
    let server = Netns::new(dir.path().join("server"));
    let client = Netns::new(dir.path().join("client"));
    let server_ip = net.attach("svc-server", &server.path).await.unwrap();
    net.attach("svc-client", &client.path).await.unwrap();

    let www = dir.path().join("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::write(www.join("index.html"), format!("hello from {server_ip}\n")).unwrap();
    let _httpd = ProcessGuard(
        server
            .command(&["httpd", "-f", "-p", "8080", "-h", www.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let registry = skiff_apiserver::Registry::open(&dir.path().join("state.redb")).unwrap();
    registry.set_service_cidr(&format!("10.247.{x}.0/24")).unwrap();
    registry.bootstrap(&format!("10.247.{x}.1")).await.unwrap();
    let api: Arc<dyn ApiClient> = registry;
    let svc = api
        .create(
            kind("services"),
            Some("default"),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
                   "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
        )
        .await
        .unwrap();
    let cluster_ip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
    api.create(
        kind("endpoints"),
        Some("default"),
        json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "web", "namespace": "default"},
               "subsets": [{"addresses": [{"ip": server_ip.to_string()}],
                            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]}),
    )
    .await
    .unwrap();
    // A Service without endpoints: its connections are refused at once.
    let empty = api
        .create(
            kind("services"),
            Some("default"),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "empty", "namespace": "default"},
                   "spec": {"selector": {"app": "none"}, "ports": [{"port": 81}]}}),
        )
        .await
        .unwrap();
    let empty_ip = empty["spec"]["clusterIP"].as_str().unwrap().to_string();
    // UDP through the proxy: a Service whose endpoint is the cluster DNS server itself.
    let udp = api
        .create(
            kind("services"),
            Some("default"),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "resolver", "namespace": "default"},
                   "spec": {"ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}}),
        )
        .await
        .unwrap();
    let udp_ip = udp["spec"]["clusterIP"].as_str().unwrap().to_string();
    api.create(
        kind("endpoints"),
        Some("default"),
        json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "resolver", "namespace": "default"},
               "subsets": [{"addresses": [{"ip": cluster_dns.to_string()}],
                            "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}]}),
    )
    .await
    .unwrap();
    // A NodePort Service on the same endpoints as web, reached on the node's loopback.
    let node_port = 30000 + pid % 2700;
    api.create(
        kind("services"),
        Some("default"),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web-np", "namespace": "default"},
               "spec": {"type": "NodePort", "ports": [{"name": "http", "port": 80, "nodePort": node_port}]}}),
    )
    .await
    .unwrap();
    api.create(
        kind("endpoints"),
        Some("default"),
        json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "web-np", "namespace": "default"},
               "subsets": [{"addresses": [{"ip": server_ip.to_string()}],
                            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]}),
    )
    .await
    .unwrap();

    let shutdown = CancellationToken::new();
    let config = ServiceConfig { cluster_dns, cluster_domain: "cluster.local".into() };
    let plane = tokio::spawn(service::run(api.clone(), net.clone(), config, shutdown.clone()));
    // Stops the plane even when an assertion below fails, before the guards delete the bridge.
    let _stop = shutdown.clone().drop_guard();

    let url = format!("http://{cluster_ip}/");
    let expected = format!("hello from {server_ip}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = client.curl(&url);
        if String::from_utf8_lossy(&out.stdout).contains(&expected) {
            break;
        }
        if Instant::now() > deadline || plane.is_finished() {
            let addresses = net.local_addresses().await;
            if plane.is_finished() {
                panic!("the plane ended: {:?}", plane.await);
            }
            panic!("the pod does not reach {url}: {out:?}; bridge addresses {addresses:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let node = Command::new("curl").args(["-sS", "-m", "3", &url]).output().unwrap();
    assert!(String::from_utf8_lossy(&node.stdout).contains(&expected), "node → Service: {node:?}");

    let started = Instant::now();
    let refused = client.curl(&format!("http://{empty_ip}:81/"));
    assert!(!refused.status.success(), "a Service without endpoints must not answer");
    assert!(started.elapsed() < Duration::from_secs(3), "and must refuse at once, took {:?}", started.elapsed());

    let dns = cluster_dns.to_string();
    let lookup = client.busybox(&["nslookup", "web.default.svc.cluster.local", &dns]);
    let text = String::from_utf8_lossy(&lookup.stdout);
    assert!(
        text.contains(&format!("Address: {cluster_ip}")),
        "nslookup: {text} {}",
        String::from_utf8_lossy(&lookup.stderr)
    );
    let relayed = client.busybox(&["nslookup", "web.default.svc.cluster.local", &udp_ip]);
    let text = String::from_utf8_lossy(&relayed.stdout);
    assert!(text.contains(&format!("Address: {cluster_ip}")), "nslookup through the UDP Service {udp_ip}: {text}");
    let np = Command::new("curl").args(["-sS", "-m", "3", &format!("http://127.0.0.1:{node_port}/")]).output().unwrap();
    assert!(String::from_utf8_lossy(&np.stdout).contains(&expected), "node port {node_port}: {np:?}");
    let unknown = client.busybox(&["nslookup", "nope.default.svc.cluster.local", &dns]);
    let text = String::from_utf8_lossy(&unknown.stdout).to_string() + &String::from_utf8_lossy(&unknown.stderr);
    assert!(text.contains("NXDOMAIN"), "unknown name: {text}");

    // A deleted Service takes its address with it.
    let present = net.local_addresses().await.unwrap();
    assert!(present.contains(&cluster_ip.parse().unwrap()) && present.contains(&cluster_dns), "{present:?}");
    api.delete(kind("services"), Some("default"), "empty", &DeleteOptions::default()).await.unwrap();
    let gone: Ipv4Addr = empty_ip.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while net.local_addresses().await.unwrap().contains(&gone) {
        assert!(Instant::now() < deadline, "{gone} stayed on the bridge after its Service was deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    shutdown.cancel();
    plane.await.unwrap().unwrap();
    assert_eq!(
        NodeAddresses::list(net.as_ref()).await.unwrap(),
        Vec::<Ipv4Addr>::new(),
        "shutdown removes every address"
    );
    net.detach("svc-server").await.unwrap();
    net.detach("svc-client").await.unwrap();
    net.remove_bridge().await.unwrap();
}
