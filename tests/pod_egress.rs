//! Pods reach beyond the node, masqueraded, with the real kubectl against a real `skiff server`.
//! "Beyond" is a network namespace the test makes and joins to the node with a veth pair
//! (198.19.<n>.0/24, a benchmarking range): no packet of this test leaves the machine.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{TestImages, TestServer};
use skiff_runtime::network::nft;

const RUN_TIMEOUT: Duration = Duration::from_secs(120);

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace held by a `sleep` of ours, joined to the node by the veth `link`; both go
/// on drop (the PID is ours; deleting the node's end deletes the pair).
struct Outside {
    holder: Child,
    link: String,
}

impl Outside {
    fn new(n: u32) -> Outside {
        let link = format!("skegress{n}");
        let mut holder = Command::new("unshare").args(["--net", "sleep", "600"]).spawn().unwrap();
        let own = std::fs::read_link("/proc/self/ns/net").unwrap();
        let ns = format!("/proc/{}/ns/net", holder.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_link(&ns).ok().is_none_or(|l| l == own) {
            if Instant::now() > deadline {
                let _ = holder.kill();
                let _ = holder.wait();
                panic!("unshare --net did not make a namespace");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let outside = Outside { holder, link };
        let pid = outside.holder.id().to_string();
        let peer = format!("{}p", outside.link);
        ip(&["link", "add", &outside.link, "type", "veth", "peer", "name", &peer]);
        ip(&["link", "set", &peer, "netns", &pid]);
        ip(&["addr", "add", &format!("198.19.{n}.1/24"), "dev", &outside.link]);
        ip(&["link", "set", &outside.link, "up"]);
        for args in [
            vec!["addr", "add", &format!("198.19.{n}.2/24"), "dev", &peer],
            vec!["link", "set", &peer, "up"],
            vec!["link", "set", "lo", "up"],
        ] {
            let out = Command::new("nsenter").args(["-t", &pid, "-n", "ip"]).args(&args).output().unwrap();
            assert!(out.status.success(), "ip {args:?} outside: {}", String::from_utf8_lossy(&out.stderr));
        }
        outside
    }

    /// An HTTP server in the namespace answering each GET with the client address it saw, until
    /// one was served or `deadline`; returns the addresses.
    fn serve_peer_address(&self, addr: SocketAddr, deadline: Instant) -> std::thread::JoinHandle<Vec<String>> {
        let ns = std::fs::File::open(format!("/proc/{}/ns/net", self.holder.id())).unwrap();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let server = std::thread::spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let listener = TcpListener::bind(addr).unwrap();
            listener.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            let mut served = Vec::new();
            while served.is_empty() && Instant::now() < deadline {
                match listener.accept() {
                    Ok((mut stream, peer)) => {
                        stream.set_nonblocking(false).unwrap();
                        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                        let mut request = [0u8; 1024];
                        let _ = stream.read(&mut request);
                        let body = peer.ip().to_string();
                        let _ = write!(
                            stream,
                            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        served.push(body);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
            served
        });
        ready_rx.recv().unwrap();
        server
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.link]).output();
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

#[test]
fn a_pod_reaches_a_network_beyond_the_node_with_the_node_address() {
    let server = TestServer::start();
    let images = TestImages::start();
    let table = nft::table_name(server.bridge());
    assert!(nft::table_exists(&table).unwrap(), "the running server has table ip {table}");
    assert_eq!(std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap().trim(), "1");

    let n = std::process::id() % 250;
    let outside = Outside::new(n);
    let (node_side, target) = (format!("198.19.{n}.1"), format!("198.19.{n}.2"));
    // Safety first: the target must be reached through the test's veth, never the default route.
    let route = ip(&["route", "get", &target]);
    assert!(route.contains(&format!("dev {}", outside.link)), "route to {target}: {route}");
    let served = outside.serve_peer_address(format!("{target}:8080").parse().unwrap(), Instant::now() + RUN_TIMEOUT);

    server.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: egress\nspec:\n  restartPolicy: Never\n  containers:\n  \
         - name: main\n    image: {image}\n    command: [\"timeout\", \"30\", \"wget\", \"-q\", \"-O-\", \
         \"http://{target}:8080/\"]\n",
        image = images.busybox()
    ));
    let status = server.wait_for("pod egress to finish", RUN_TIMEOUT, || {
        let status = server.get_json("pod", "egress")["status"].clone();
        matches!(status["phase"].as_str(), Some("Succeeded" | "Failed")).then_some(status)
    });
    let logs = server.kubectl_ok(&["logs", "egress"]);
    assert_eq!(status["phase"], "Succeeded", "{status}\nlogs: {logs}");
    let pod_ip = status["podIP"].as_str().unwrap_or_default().to_string();
    assert_eq!(logs.trim(), node_side, "the outside sees the node's address, not the pod's {pod_ip}");
    assert_ne!(pod_ip, node_side);
    assert_eq!(served.join().unwrap(), vec![node_side.clone()]);

    server.kubectl_ok(&["delete", "pod", "egress", "--wait=true"]);
    let link = outside.link.clone();
    drop(outside);
    assert!(!common::link_exists(&link), "veth {link} is gone");
    drop(images);
    server.finish();
    assert!(!nft::table_exists(&table).unwrap(), "a stopped server removes table ip {table}");
}
