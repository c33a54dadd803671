//! Pod networking on the real kernel: two network namespaces of our own attached to a bridge of
//! our own reach each other and the node over it; detaching and removing the bridge leave no
//! link, lease or mount behind. Egress runs in a "node" namespace of the test's own, so its
//! `ip_forward` and nftables table never touch the host's.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use rtnetlink::{LinkUnspec, LinkVeth};
use skiff_runtime::network::{Ipv4Cidr, NetworkConfig, PodNetwork, forwarding, host_veth_name, nft};

/// A network namespace pinned by a bind mount, unmounted on drop.
struct Netns {
    path: PathBuf,
}

impl Netns {
    fn new(path: PathBuf) -> Netns {
        std::fs::write(&path, b"").unwrap();
        let target = path.clone();
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            mount(Some(Path::new("/proc/thread-self/ns/net")), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .unwrap();
        })
        .join()
        .unwrap();
        Netns { path }
    }

    /// Runs busybox inside the namespace.
    fn busybox(&self, args: &[&str]) -> std::process::Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.path.display()))
            .arg("busybox")
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = umount2(&self.path, MntFlags::MNT_DETACH);
    }
}

/// Deletes the test's bridge even when an assertion fails half-way (the veths go with their
/// namespaces).
struct BridgeGuard(String);

impl Drop for BridgeGuard {
    fn drop(&mut self) {
        if link_exists(&self.0) {
            let _ = Command::new("ip").args(["link", "del", &self.0]).status();
        }
    }
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

#[tokio::test]
async fn two_pods_on_the_bridge_reach_each_other_and_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let bridge = format!("sknet{}", std::process::id() % 100_000);
    // A /24 of the test range that no other test of this process uses.
    let cidr = Ipv4Cidr::parse(&format!("10.244.{}.0/24", std::process::id() % 250)).unwrap();
    let _guard = BridgeGuard(bridge.clone());
    let net =
        PodNetwork::new(NetworkConfig { bridge: bridge.clone(), cidr, state_dir: dir.path().join("network") }).unwrap();
    let a = Netns::new(dir.path().join("a"));
    let b = Netns::new(dir.path().join("b"));
    let result = async {
        let ip_a = net.attach("sandbox-a", &a.path).await.unwrap();
        let ip_b = net.attach("sandbox-b", &b.path).await.unwrap();
        assert_ne!(ip_a, ip_b);
        assert!(cidr.contains(ip_a) && cidr.contains(ip_b));
        // Attaching again is a no-op that keeps the address.
        assert_eq!(net.attach("sandbox-a", &a.path).await.unwrap(), ip_a);

        let ping = a.busybox(&["ping", "-c", "1", "-W", "2", &ip_b.to_string()]);
        assert!(ping.status.success(), "pod a → pod b: {}", String::from_utf8_lossy(&ping.stdout));
        let ping = b.busybox(&["ping", "-c", "1", "-W", "2", &cidr.gateway().to_string()]);
        assert!(ping.status.success(), "pod b → node: {}", String::from_utf8_lossy(&ping.stdout));
        let node = Command::new("busybox").args(["ping", "-c", "1", "-W", "2", &ip_a.to_string()]).output().unwrap();
        assert!(node.status.success(), "node → pod a: {}", String::from_utf8_lossy(&node.stdout));
        // Hairpin on each port: a pod can reach itself through an address the node forwards back.
        let hairpin = Path::new("/sys/class/net").join(host_veth_name("sandbox-a")).join("brport/hairpin_mode");
        assert_eq!(std::fs::read_to_string(&hairpin).unwrap().trim(), "1", "{}", hairpin.display());
        let eth0 = a.busybox(&["ip", "-4", "addr", "show", "eth0"]);
        assert!(String::from_utf8_lossy(&eth0.stdout).contains(&format!("{ip_a}/24")));
        (ip_a, ip_b)
    }
    .await;
    let _: (Ipv4Addr, Ipv4Addr) = result;

    net.detach("sandbox-a").await.unwrap();
    net.detach("sandbox-b").await.unwrap();
    net.detach("sandbox-b").await.unwrap();
    assert!(!link_exists(&host_veth_name("sandbox-a")) && !link_exists(&host_veth_name("sandbox-b")));
    assert_eq!(net.address("sandbox-a").unwrap(), None);
    net.remove_bridge().await.unwrap();
    assert!(!link_exists(&bridge));
}

/// Runs `f` on a thread of its own inside the network namespace pinned at `netns`.
#[tokio::test]
async fn a_veth_pair_left_half_made_by_a_crash_is_made_again() {
    let dir = tempfile::tempdir().unwrap();
    let bridge = format!("skhalf{}", std::process::id() % 100_000);
    let cidr = Ipv4Cidr::parse(&format!("10.245.{}.0/24", std::process::id() % 250)).unwrap();
    let _guard = BridgeGuard(bridge.clone());
    let net =
        PodNetwork::new(NetworkConfig { bridge: bridge.clone(), cidr, state_dir: dir.path().join("network") }).unwrap();
    let pod = Netns::new(dir.path().join("pod"));
    // What a server killed right after creating the pair leaves: both ends in the host.
    let host = host_veth_name("sandbox-half");
    let peer = format!("{}p", &host[..14]);
    ip(&["link", "add", &host, "type", "veth", "peer", "name", &peer]);
    let attached = net.attach("sandbox-half", &pod.path).await;
    let leftover = link_exists(&peer);
    let eth0 = pod.busybox(&["ip", "-4", "addr", "show", "eth0"]);
    net.detach("sandbox-half").await.unwrap();
    let ip_a = attached.unwrap();
    assert!(!leftover, "the peer moved into the pod");
    assert!(String::from_utf8_lossy(&eth0.stdout).contains(&format!("{ip_a}/24")), "{eth0:?}");
    assert!(!link_exists(&host) && !link_exists(&peer), "detach removes the pair");
}

fn in_netns<T: Send + 'static>(netns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = std::fs::File::open(netns).unwrap();
    let thread = std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    });
    thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Runs `ip` (a child of the calling thread, so in its network namespace), asserting success.
fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Connects from the namespace at `netns` and returns what the server wrote (the address it saw),
/// or the connect error.
fn fetch_from(netns: &Path, server: SocketAddr, timeout: Duration) -> Result<String, std::io::Error> {
    in_netns(netns, move || {
        let mut stream = TcpStream::connect_timeout(&server, timeout)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut seen = String::new();
        stream.read_to_string(&mut seen)?;
        Ok(seen)
    })
}

/// A TCP server in the namespace at `netns` that tells each client the source address it sees,
/// until `deadline`; returns the addresses served.
fn serve_peer_addresses(netns: &Path, addr: SocketAddr, deadline: Instant) -> std::thread::JoinHandle<Vec<String>> {
    let ns = std::fs::File::open(netns).unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let listener = TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        ready_tx.send(()).unwrap();
        let mut served = Vec::new();
        while Instant::now() < deadline && served.is_empty() {
            match listener.accept() {
                Ok((mut stream, peer)) => {
                    let _ = stream.write_all(peer.ip().to_string().as_bytes());
                    served.push(peer.ip().to_string());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("accept: {e}"),
            }
        }
        served
    });
    ready_rx.recv().unwrap();
    handle
}

/// Links of the calling thread's namespace.
fn links() -> Vec<String> {
    ip(&["-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn a_pod_reaches_an_outside_network_with_its_address_masqueraded_and_cleanup_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let n = std::process::id() % 250;
    // A node namespace of the test's own, and in it everything the server would do on the host.
    let node = Netns::new(dir.path().join("node"));
    let pod = Netns::new(dir.path().join("pod"));
    let outside = Netns::new(dir.path().join("outside"));
    let (node_path, pod_path, outside_path) = (node.path.clone(), pod.path.clone(), outside.path.clone());
    let state_dir = dir.path().join("network");
    in_netns(&node.path, move || {
        ip(&["link", "set", "lo", "up"]);
        let found_forward = forwarding::read_sysctl().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let bridge = format!("skegr{n}");
            let cluster = Ipv4Cidr::parse(&format!("10.{}.0.0/16", 100 + n % 100)).unwrap();
            let node_cidr = Ipv4Cidr::parse(&format!("{}/24", cluster.network)).unwrap();
            let net = PodNetwork::new(NetworkConfig { bridge: bridge.clone(), cidr: node_cidr, state_dir }).unwrap();
            let pod_ip = net.attach("sandbox-egress", &pod_path).await.unwrap();

            // The outside world: a veth pair from the node to a namespace with 198.18.<n>.2 (a
            // benchmarking range, outside the cluster CIDR), whose only route is its own subnet.
            let (outer, inner) = (format!("skout{n}"), format!("skout{n}p"));
            let (connection, handle, _) = rtnetlink::new_connection().unwrap();
            tokio::spawn(connection);
            handle.link().add(LinkVeth::new(&outer, &inner).build()).execute().await.unwrap();
            let index = handle.link().get().match_name(inner.clone()).execute().try_next().await.unwrap().unwrap();
            let ns = std::fs::File::open(&outside_path).unwrap();
            use std::os::fd::AsRawFd;
            handle
                .link()
                .set(LinkUnspec::new_with_index(index.header.index).setns_by_fd(ns.as_raw_fd()).build())
                .execute()
                .await
                .unwrap();
            let (node_side, outside_side) = (format!("198.18.{n}.1"), format!("198.18.{n}.2"));
            ip(&["addr", "add", &format!("{node_side}/24"), "dev", &outer]);
            ip(&["link", "set", &outer, "up"]);
            let nsenter = |args: &[&str]| {
                let out = Command::new("nsenter")
                    .arg(format!("--net={}", outside_path.display()))
                    .arg("ip")
                    .args(args)
                    .output()
                    .unwrap();
                assert!(out.status.success(), "ip {args:?} outside: {}", String::from_utf8_lossy(&out.stderr));
            };
            nsenter(&["addr", "add", &format!("{outside_side}/24"), "dev", &inner]);
            nsenter(&["link", "set", &inner, "up"]);
            let server: SocketAddr = format!("{outside_side}:8080").parse().unwrap();

            let deadline = Instant::now() + Duration::from_secs(30);
            let listening = serve_peer_addresses(&outside_path, server, deadline);
            // Without egress the outside cannot answer a pod address: no route back to it.
            let before = fetch_from(&pod_path, server, Duration::from_secs(1));
            assert!(before.is_err(), "the pod reached the outside without masquerade: {before:?}");

            let egress = net.enable_egress(cluster).unwrap();
            assert!(nft::table_exists(egress.table()).unwrap());
            assert_eq!(forwarding::read_sysctl().unwrap(), "1");
            // Writing it again (a restart after kill -9) replaces the table, never duplicates it.
            let again = net.enable_egress(cluster).unwrap();

            let seen = fetch_from(&pod_path, server, Duration::from_secs(5)).expect("the pod reaches the outside");
            assert_eq!(seen, node_side, "the outside sees the node's address, not the pod's {pod_ip}");
            assert_eq!(listening.join().unwrap(), vec![node_side.clone()]);

            let table = egress.table().to_string();
            // Both claims are the same holder (the bridge), so one release ends it; the other
            // finds nothing left to undo.
            again.remove().unwrap();
            assert!(!nft::table_exists(&table).unwrap(), "table ip {table} is gone");
            assert_eq!(forwarding::read_sysctl().unwrap(), found_forward, "ip_forward is put back");
            egress.remove().unwrap();
            assert_eq!(forwarding::read_sysctl().unwrap(), found_forward);

            net.detach("sandbox-egress").await.unwrap();
            ip(&["link", "del", &outer]);
            net.remove_bridge().await.unwrap();
            let left: Vec<String> = links()
                .into_iter()
                .filter(|l| [&bridge, &outer, &host_veth_name("sandbox-egress")].contains(&l))
                .collect();
            assert!(left.is_empty(), "links left in the node namespace: {left:?}");
        });
    });
    let _ = node_path;
    drop((pod, outside, node));
    for name in ["node", "pod", "outside"] {
        let path = dir.path().join(name);
        let nsfs = nix::sys::statfs::statfs(&path).is_ok_and(|s| s.filesystem_type().0 == 0x6e73_6673);
        assert!(!nsfs, "{} still pins a namespace", path.display());
    }
}
