//! API server benchmark against a real `skiff server` started in the same run (as root; the
//! test script installs what it needs): `cargo bench --bench api`.
//!
//! - create / update / delete latency (p50, p99) and throughput with 50 and 200 concurrent
//!   clients, each on its own keep-alive HTTPS connection, as fast as each can go;
//! - the same operations paced at 200 requests per second in total, the goal
//!   (mutating p99 ≤ 10 ms at 200 qps);
//! - `kubectl get pods` with 1,000 pods stored (real kubectl, process start included; its
//!   time against an empty namespace is printed beside it), and the list as the server answers it
//!   (Table and JSON), measured by the client here;
//! - the server's resident memory (VmRSS) idle, after the load, and with 1,000 pods stored;
//! - the server's CPU time (user + system, from /proc/PID/stat) per operation of each run: a
//!   figure that other work on the machine hardly moves, unlike the latencies.
//!
//! The pods are bound to a node that does not exist (`spec.nodeName: bench-no-such-node`): the
//! scheduler leaves bound pods alone and the kubelet runs only its own node's pods, so no
//! container is started and the figures are the API server's. Deletes use
//! `gracePeriodSeconds: 0`, which removes such a pod at once.
//!
//! There is no peer API server (kube-apiserver, k3s) on this machine to compare with: the
//! figures are Skiff's own, and the output says so.

#[path = "../tests/common/mod.rs"]
#[allow(dead_code)]
mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::TestServer;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};

const NAMESPACE: &str = "bench";
const GHOST_NODE: &str = "bench-no-such-node";
const STORED_PODS: usize = 1000;
const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";

/// Where and how to connect: the server's port, its CA, its token.
#[derive(Clone)]
struct Target {
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    token: String,
}

impl Target {
    fn of(server: &TestServer) -> Target {
        let field = |name: &str| server.kubeconfig_field(name);
        let ca = base64::engine::general_purpose::STANDARD.decode(field("certificate-authority-data")).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&ca) {
            roots.add(cert.expect("the kubeconfig's CA is PEM")).unwrap();
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Target { port: server.port(), tls: Arc::new(tls), token: field("token") }
    }

    async fn connect(&self) -> Client {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone()).connect(name, tcp).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn);
        Client { sender, token: self.token.clone() }
    }
}

/// One simulated client: one connection, one request at a time.
struct Client {
    sender: SendRequest<Full<Bytes>>,
    token: String,
}

impl Client {
    /// Sends a request and reads the whole reply: its status code, its body and how long it took.
    async fn call(&mut self, method: &str, path: &str, accept: &str, body: Option<&Value>) -> (u16, Bytes, Duration) {
        let bytes = body.map(|b| Bytes::from(serde_json::to_vec(b).unwrap())).unwrap_or_default();
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "127.0.0.1")
            .header("authorization", format!("Bearer {}", self.token))
            .header("accept", accept)
            .header("content-type", "application/json")
            .body(Full::new(bytes))
            .unwrap();
        let start = Instant::now();
        self.sender.ready().await.unwrap();
        let reply = self.sender.send_request(req).await.unwrap();
        let code = reply.status().as_u16();
        let body = reply.into_body().collect().await.unwrap().to_bytes();
        (code, body, start.elapsed())
    }

    async fn expect(&mut self, want: u16, method: &str, path: &str, body: Option<&Value>) -> (Value, Duration) {
        let (code, reply, took) = self.call(method, path, "application/json", body).await;
        assert_eq!(code, want, "{method} {path}: {}", String::from_utf8_lossy(&reply));
        (serde_json::from_slice(&reply).unwrap(), took)
    }
}

fn pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {
            "nodeName": GHOST_NODE,
            "containers": [{"name": "app", "image": "example.invalid/bench:1", "command": ["sleep", "3600"]}],
        },
    })
}

const PODS: &str = "/api/v1/namespaces/bench/pods";

#[derive(Default)]
struct Latencies {
    create: Vec<Duration>,
    update: Vec<Duration>,
    delete: Vec<Duration>,
}

impl Latencies {
    fn extend(&mut self, other: Latencies) {
        self.create.extend(other.create);
        self.update.extend(other.update);
        self.delete.extend(other.delete);
    }

    fn count(&self) -> usize {
        self.create.len() + self.update.len() + self.delete.len()
    }
}

/// One create → update (PUT with the resourceVersion just read) → delete cycle of one pod.
async fn cycle(client: &mut Client, name: &str, into: &mut Latencies) {
    let (created, took) = client.expect(201, "POST", PODS, Some(&pod(name))).await;
    into.create.push(took);
    let mut changed = created;
    changed["metadata"]["labels"]["round"] = json!("2");
    let (_, took) = client.expect(200, "PUT", &format!("{PODS}/{name}"), Some(&changed)).await;
    into.update.push(took);
    let grace = json!({"gracePeriodSeconds": 0});
    let (_, took) = client.expect(200, "DELETE", &format!("{PODS}/{name}"), Some(&grace)).await;
    into.delete.push(took);
}

/// `clients` clients, each running `cycles` cycles back to back; `pace` spaces each client's
/// operations that far apart (on a fixed schedule, so a slow reply does not lower the rate).
async fn load(
    target: &Target,
    tag: &str,
    clients: usize,
    cycles: usize,
    pace: Option<Duration>,
) -> (Latencies, Duration) {
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(target.connect().await);
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (c, mut client) in conns.into_iter().enumerate() {
        let tag = tag.to_string();
        tasks.push(tokio::spawn(async move {
            let mut lat = Latencies::default();
            // Clients start spread over one period, not all on the same tick.
            let offset = pace.map(|p| p.mul_f64(c as f64 / clients as f64)).unwrap_or_default();
            for k in 0..cycles {
                if let Some(p) = pace {
                    // Three operations per cycle, one every `p`.
                    tokio::time::sleep_until((start + offset + p * (3 * k) as u32).into()).await;
                    let name = format!("{tag}-{c}-{k}");
                    let (created, took) = client.expect(201, "POST", PODS, Some(&pod(&name))).await;
                    lat.create.push(took);
                    tokio::time::sleep_until((start + offset + p * (3 * k + 1) as u32).into()).await;
                    let mut changed = created;
                    changed["metadata"]["labels"]["round"] = json!("2");
                    let (_, took) = client.expect(200, "PUT", &format!("{PODS}/{name}"), Some(&changed)).await;
                    lat.update.push(took);
                    tokio::time::sleep_until((start + offset + p * (3 * k + 2) as u32).into()).await;
                    let grace = json!({"gracePeriodSeconds": 0});
                    let (_, took) = client.expect(200, "DELETE", &format!("{PODS}/{name}"), Some(&grace)).await;
                    lat.delete.push(took);
                } else {
                    cycle(&mut client, &format!("{tag}-{c}-{k}"), &mut lat).await;
                }
            }
            lat
        }));
    }
    let mut all = Latencies::default();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    (all, start.elapsed())
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS in /proc/PID/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The CPU time the server process has used so far (user + system, all threads).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').expect("/proc/PID/stat has (comm)") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(ticks * 1_000_000 / per_second)
}

/// Waits until the server is idle (under 5% of a core over half a second, at most a minute);
/// answers how long that took.
fn settle(pid: u32) -> Duration {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        let before = cpu_time(pid);
        std::thread::sleep(Duration::from_millis(500));
        if cpu_time(pid) - before < Duration::from_millis(25) {
            break;
        }
    }
    start.elapsed()
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Runs `kubectl get pods` in `namespace` `runs` times: the wall time of each run, and the
/// number of lines the last one printed.
fn kubectl_get_pods(server: &TestServer, namespace: &str, runs: usize) -> (Vec<Duration>, usize) {
    let mut times = Vec::new();
    let mut lines = 0;
    for _ in 0..runs {
        let start = Instant::now();
        let out = server.kubectl(&["get", "pods", "-n", namespace]);
        times.push(start.elapsed());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        lines = out.stdout.iter().filter(|b| **b == b'\n').count() + out.stderr.iter().filter(|b| **b == b'\n').count();
    }
    (times, lines)
}

fn main() {
    let server = TestServer::start();
    let pid = server.pid().expect("the server runs");
    let target = Target::of(&server);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);

    rt.block_on(async {
        let mut admin = target.connect().await;
        admin.expect(201, "POST", "/api/v1/namespaces", Some(&json!({"metadata": {"name": NAMESPACE}}))).await;
        admin.expect(201, "POST", "/api/v1/namespaces", Some(&json!({"metadata": {"name": "bench-empty"}}))).await;
        // Warm-up: connections, the store, the allocator.
        load(&target, "warm", 10, 10, None).await;
    });
    let rss_idle = rss_kib(pid);

    let mut rows = Vec::new();
    for (clients, cycles) in [(50, 20), (200, 5)] {
        let cpu = cpu_time(pid);
        let (lat, wall) = rt.block_on(load(&target, &format!("c{clients}"), clients, cycles, None));
        rows.push((format!("{clients} clients, closed loop"), lat, wall, cpu_time(pid) - cpu));
    }
    // The closed loops leave the server's own watchers (controllers, scheduler, kubelet) work to
    // catch up on; the paced run measures the API, not that backlog.
    let settled = settle(pid);
    // 200 requests per second in total: 20 clients, one operation each every 100 ms, for 6 s.
    let cpu = cpu_time(pid);
    let (lat, wall) = rt.block_on(load(&target, "paced", 20, 20, Some(Duration::from_millis(100))));
    rows.push(("200 req/s, paced".to_string(), lat, wall, cpu_time(pid) - cpu));
    let rss_loaded = rss_kib(pid);

    // 1,000 pods stored.
    rt.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..50 {
            let target = target.clone();
            tasks.push(tokio::spawn(async move {
                let mut client = target.connect().await;
                for k in 0..STORED_PODS / 50 {
                    client.expect(201, "POST", PODS, Some(&pod(&format!("stored-{c}-{k}")))).await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let (kubectl_times, lines) = kubectl_get_pods(&server, NAMESPACE, 10);
    assert_eq!(lines, STORED_PODS + 1, "kubectl get pods printed a header and one line per pod");
    let (empty_times, _) = kubectl_get_pods(&server, "bench-empty", 10);
    let (page_times, table_times, json_times, list_cpu) = rt.block_on(async {
        let mut client = target.connect().await;
        let (mut page, mut table, mut json_list) = (Vec::new(), Vec::new(), Vec::new());
        // Server CPU per request of each kind of list, summed over the runs.
        let mut cpu = [Duration::ZERO; 3];
        let mut mark = cpu_time(pid);
        // The server CPU used since the last lap.
        let mut lap = || {
            let now = cpu_time(pid);
            now - std::mem::replace(&mut mark, now)
        };
        for _ in 0..20 {
            lap();
            // kubectl asks in pages of 500.
            let (code, body, took) = client.call("GET", &format!("{PODS}?limit=500"), TABLE, None).await;
            assert_eq!(code, 200);
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!((v["kind"].as_str(), v["rows"].as_array().map(Vec::len)), (Some("Table"), Some(500)));
            page.push(took);
            cpu[0] += lap();
            let (code, body, took) = client.call("GET", PODS, TABLE, None).await;
            assert_eq!(code, 200);
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["rows"].as_array().unwrap().len(), STORED_PODS);
            table.push(took);
            cpu[1] += lap();
            let (code, body, took) = client.call("GET", PODS, "application/json", None).await;
            assert_eq!(code, 200);
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["items"].as_array().unwrap().len(), STORED_PODS);
            json_list.push(took);
            cpu[2] += lap();
        }
        (page, table, json_list, cpu.map(|c| c / 20))
    });
    let rss_stored = rss_kib(pid);

    println!();
    let build = if cfg!(debug_assertions) { "debug" } else { "optimised" };
    println!("skiff API server benchmark ({cores} cores, {build} build)");
    println!(
        "no peer API server (kube-apiserver, k3s) is installed on this machine: these are Skiff's own \
         figures, not a comparison"
    );
    println!("pods bound to {GHOST_NODE} (no such node: nothing runs them); deletes with gracePeriodSeconds 0");
    println!();
    println!(
        "{:<26} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9}",
        "mutations", "ops", "create50", "create99", "update50", "update99", "delete50", "delete99", "ops/s", "cpu/op"
    );
    for (name, lat, wall, cpu) in &rows {
        println!(
            "{:<26} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10.0} {:>9}",
            name,
            lat.count(),
            ms(percentile(&lat.create, 50.0)),
            ms(percentile(&lat.create, 99.0)),
            ms(percentile(&lat.update, 50.0)),
            ms(percentile(&lat.update, 99.0)),
            ms(percentile(&lat.delete, 50.0)),
            ms(percentile(&lat.delete, 99.0)),
            lat.count() as f64 / wall.as_secs_f64(),
            ms(*cpu / lat.count() as u32)
        );
    }
    println!(
        "(latencies in ms; ops/s counts creates, updates and deletes together; cpu/op is the server's \
         CPU time, user + system, per operation, in ms)"
    );
    println!(
        "before the paced run the server took {:.1} s to go idle (its watchers catching up on the closed loops)",
        settled.as_secs_f64()
    );
    println!();
    println!(
        "{:<58} {:>9} {:>9} {:>11}",
        format!("reads with {STORED_PODS} pods stored"),
        "p50 ms",
        "max ms",
        "cpu/req ms"
    );
    let row = |name: &str, t: &[Duration], cpu: Option<Duration>| {
        let cpu = cpu.map(ms).unwrap_or_default();
        println!("{:<58} {:>9} {:>9} {:>11}", name, ms(percentile(t, 50.0)), ms(*t.iter().max().unwrap()), cpu);
    };
    row("kubectl get pods (real kubectl, process included), 10 runs", &kubectl_times, None);
    row("kubectl get pods in an empty namespace (kubectl's own cost)", &empty_times, None);
    row("GET pods as a Table, limit=500 (kubectl's page), 20 runs", &page_times, Some(list_cpu[0]));
    row("GET pods as a Table, all 1,000, 20 runs", &table_times, Some(list_cpu[1]));
    row("GET pods as JSON (a PodList), 20 runs", &json_times, Some(list_cpu[2]));
    println!();
    println!("server memory (VmRSS of pid {pid})");
    println!("  idle after start-up and warm-up   {}", mib(rss_idle));
    println!("  after the mutation runs           {}", mib(rss_loaded));
    println!("  with {STORED_PODS} pods stored and listed  {}", mib(rss_stored));
    println!();
    println!("goals of issue 4: mutating p99 <= 10 ms at 200 req/s; a Table of 1,000 pods <= 50 ms");

    server.finish();
}
