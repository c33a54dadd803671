//! Pod networking on the real kernel: two network namespaces of our own attached to a bridge of
//! our own reach each other and the node over it; detaching and removing the bridge leave no
//! link, lease or mount behind.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use skiff_runtime::network::{Ipv4Cidr, NetworkConfig, PodNetwork, host_veth_name};

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
