//! Controller benchmark: a Deployment scaled 0 → 100 → 0 on a real `skiff server` with real
//! containers, driven by the real kubectl. Prints the time until all 100 pods are Running and
//! Ready, the time until they are all gone again, and pods per second each way.
//!
//! Run with `cargo bench --bench controllers` (as root; the test script installs what it needs).
//! There is no peer to compare with on this machine (no k3s or kubelet here), so the figures
//! are Skiff's own; the issue's aim is ≥ 50 pods/s started on a 2-core machine.

#[path = "../tests/common/mod.rs"]
#[allow(dead_code)]
mod common;

use std::time::{Duration, Instant};

use common::{TestImages, TestServer};

const REPLICAS: usize = 100;

fn deployment(image: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: bench
spec:
  replicas: 0
  selector:
    matchLabels: {{app: bench}}
  template:
    metadata:
      labels: {{app: bench}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: app
        image: {image}
        command: ["sleep", "3600"]
"#
    )
}

fn ready_replicas(server: &TestServer) -> usize {
    server
        .kubectl_ok(&["get", "deployment", "bench", "-o", "jsonpath={.status.readyReplicas}"])
        .trim()
        .parse()
        .unwrap_or(0)
}

fn pods_left(server: &TestServer) -> usize {
    server.kubectl_ok(&["get", "pods", "-l", "app=bench", "-o", "name"]).lines().count()
}

fn main() {
    let images = TestImages::start();
    let server = TestServer::start();
    let out = server.kubectl_stdin(&["apply", "-f", "-"], &deployment(&images.busybox()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Pull the image once so the figures are about pods, not the registry.
    server.kubectl_ok(&["scale", "deployment/bench", "--replicas=1"]);
    server.wait_for("the first pod", Duration::from_secs(120), || (ready_replicas(&server) == 1).then_some(()));
    server.kubectl_ok(&["scale", "deployment/bench", "--replicas=0"]);
    server.wait_for("the first pod to go", Duration::from_secs(120), || (pods_left(&server) == 0).then_some(()));

    let start = Instant::now();
    server.kubectl_ok(&["scale", "deployment/bench", &format!("--replicas={REPLICAS}")]);
    server.wait_for("all pods Ready", Duration::from_secs(600), || (ready_replicas(&server) == REPLICAS).then_some(()));
    let up = start.elapsed();

    let start = Instant::now();
    server.kubectl_ok(&["scale", "deployment/bench", "--replicas=0"]);
    server.wait_for("all pods gone", Duration::from_secs(600), || (pods_left(&server) == 0).then_some(()));
    let down = start.elapsed();

    println!("controllers: Deployment scaled 0 → {REPLICAS} → 0 (real containers, kubectl polling every 250 ms)");
    println!(
        "  0 → {REPLICAS} Running and Ready: {:>8.2} s  {:>7.1} pods/s",
        up.as_secs_f64(),
        REPLICAS as f64 / up.as_secs_f64()
    );
    println!(
        "  {REPLICAS} → 0 gone:              {:>8.2} s  {:>7.1} pods/s",
        down.as_secs_f64(),
        REPLICAS as f64 / down.as_secs_f64()
    );
    println!("  peers: none on this machine (no k3s/kubelet); aim: ≥ 50 pods/s started");
    server.kubectl_ok(&["delete", "deployment", "bench"]);
    drop(images);
    server.finish();
}
