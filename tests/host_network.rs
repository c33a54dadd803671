//! Pods in the node's network (`spec.hostNetwork: true`) and the node's egress table, with the
//! real kubectl against a real `skiff server`: the pod's IP is the node's, it sees the node's
//! interfaces and hostname, and what it serves is reachable on the node's loopback. The server
//! keeps an nftables table of its own while it runs, rewrites it after a kill -9, and removes it
//! when it stops.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{TestImages, TestServer, free_port};
use skiff_runtime::network::nft;

const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// GET / on 127.0.0.1:`port`, the body if it answered 200.
fn http_get(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then_some(())?;
    head.lines().next()?.contains(" 200 ").then(|| body.to_string())
}

#[test]
fn a_host_network_pod_has_the_node_address_interfaces_and_hostname_and_serves_on_its_loopback() {
    let mut server = TestServer::start();
    let images = TestImages::start();
    let table = nft::table_name(server.bridge());
    assert!(nft::table_exists(&table).unwrap(), "the running server has its egress table ip {table}");

    let port = free_port();
    // Loopback only: a hostNetwork pod listening on all addresses would be on the real network.
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: hostnet\nspec:\n  hostNetwork: true\n  containers:\n  \
         - name: web\n    image: {image}\n    command: [\"sh\", \"-c\", \"mkdir -p /tmp/www && echo served-from-host-net \
         > /tmp/www/index.html && exec httpd -f -p 127.0.0.1:{port} -h /tmp/www\"]\n    ports:\n    - containerPort: \
         {port}\n",
        image = images.busybox()
    );
    server.apply(&manifest);
    let status = server.wait_for("pod hostnet to run", RUN_TIMEOUT, || {
        let status = server.get_json("pod", "hostnet")["status"].clone();
        (status["phase"] == "Running" && status["podIP"].is_string()).then_some(status)
    });
    let host_ip = status["hostIP"].as_str().expect("status.hostIP").to_string();
    assert_eq!(status["podIP"], host_ip, "a hostNetwork pod's IP is the node's: {status}");
    assert_eq!(status["podIPs"][0]["ip"], host_ip, "{status}");
    let node = server.get_json("node", server.node_name());
    let internal = node["status"]["addresses"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["type"] == "InternalIP"))
        .and_then(|a| a["address"].as_str())
        .map(str::to_string);
    assert_eq!(internal.as_deref(), Some(host_ip.as_str()), "the node's InternalIP: {node}");

    // The node's interfaces, the test's own bridge among them (the service proxy makes it at start).
    let interfaces = server.kubectl_ok(&["exec", "hostnet", "--", "ls", "/sys/class/net"]);
    let interfaces: Vec<&str> = interfaces.split_whitespace().collect();
    assert!(interfaces.contains(&server.bridge()), "the pod sees the node's interfaces: {interfaces:?}");
    assert!(interfaces.contains(&"lo"), "{interfaces:?}");

    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    let pod_hostname = server.kubectl_ok(&["exec", "hostnet", "--", "hostname"]);
    assert_eq!(pod_hostname.trim(), hostname, "a hostNetwork pod has the node's hostname");
    let env_hostname = server.kubectl_ok(&["exec", "hostnet", "--", "sh", "-c", "echo $HOSTNAME"]);
    assert_eq!(env_hostname.trim(), hostname);

    let body = server.wait_for("the pod's httpd on 127.0.0.1", RUN_TIMEOUT, || http_get(port));
    assert_eq!(body.trim(), "served-from-host-net");

    // A crash leaves the table; the next start finds it and writes it anew, and the restarted
    // kubelet reports the pod's address as before.
    server.kill9();
    assert!(nft::table_exists(&table).unwrap(), "a killed server cannot remove its table");
    server.restart();
    assert!(nft::table_exists(&table).unwrap());
    let status = server.wait_for("pod hostnet to run after the restart", RUN_TIMEOUT, || {
        let status = server.get_json("pod", "hostnet")["status"].clone();
        (status["phase"] == "Running" && status["containerStatuses"][0]["ready"] == true).then_some(status)
    });
    assert_eq!(status["podIP"], host_ip, "{status}");
    assert_eq!(http_get(port).as_deref().map(str::trim), Some("served-from-host-net"));

    server.kubectl_ok(&["delete", "pod", "hostnet", "--wait=true"]);
    // Deleting the pod leaves the node's own network alone.
    assert!(common::link_exists("lo"));
    assert!(http_get(port).is_none(), "the pod's server is gone with the pod");
    let bridge = server.bridge().to_string();
    drop(images);
    server.finish();
    assert!(!nft::table_exists(&table).unwrap(), "a stopped server removes table ip {table} ({bridge})");
}
