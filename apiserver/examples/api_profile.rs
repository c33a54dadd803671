//! A profiling driver for the API server alone: the real [`Registry`] and HTTPS front in this
//! process, with in-process watchers standing in for Skiff's scheduler, controllers and kubelet,
//! and a plain HTTP/1.1 client on other threads.
//!
//! `cargo run --release -p skiff-apiserver --example api_profile [cycles] [clients] [list runs]`
//!
//! It prints the server's CPU time (user + system, summed over the server's threads only, from
//! /proc/self/task) per create, update and delete, and per list of 1,000 pods as a Table and as
//! JSON: figures that other load on the machine hardly moves, unlike latencies. Run it under
//! `perf record` or `valgrind --tool=callgrind` to see where that time goes. `benches/api.rs`
//! measures the whole `skiff server` (latencies, memory) instead.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use skiff_api::{ApiClient, ListOptions, ResourceKind};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "profile-token";
const PODS: &str = "/api/v1/namespaces/bench/pods";
const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";

/// CPU time of this process's threads whose name does not start with `client`.
fn server_cpu() -> Duration {
    let mut ticks = 0u64;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        if stat[open + 1..close].starts_with("client") {
            continue;
        }
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        ticks += fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    }
    Duration::from_micros(ticks * 1_000_000 / CLOCK_TICKS)
}

/// `sysconf(_SC_CLK_TCK)`, the unit of /proc's CPU times: 100 on every Linux this runs on.
const CLOCK_TICKS: u64 = 100;

struct Client {
    stream: BufReader<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
}

impl Client {
    async fn connect(port: u16, tls: Arc<rustls::ClientConfig>) -> Client {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let stream = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await.unwrap();
        Client { stream: BufReader::new(stream) }
    }

    async fn call(&mut self, method: &str, path: &str, accept: &str, body: Option<&Value>) -> (u16, Vec<u8>) {
        let body = body.map(|b| serde_json::to_vec(b).unwrap()).unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {TOKEN}\r\naccept: {accept}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let w = self.stream.get_mut();
        w.write_all(head.as_bytes()).await.unwrap();
        w.write_all(&body).await.unwrap();
        w.flush().await.unwrap();
        let mut line = String::new();
        self.stream.read_line(&mut line).await.unwrap();
        let code: u16 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        let mut length = 0;
        loop {
            line.clear();
            self.stream.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            assert!(!lower.starts_with("transfer-encoding"), "chunked replies are not read here");
        }
        let mut reply = vec![0; length];
        self.stream.read_exact(&mut reply).await.unwrap();
        (code, reply)
    }

    async fn expect(&mut self, want: u16, method: &str, path: &str, body: Option<&Value>) -> Value {
        let (code, reply) = self.call(method, path, "application/json", body).await;
        assert_eq!(code, want, "{method} {path}: {}", String::from_utf8_lossy(&reply));
        serde_json::from_slice(&reply).unwrap()
    }
}

fn pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {
            "nodeName": "bench-no-such-node",
            "containers": [{"name": "app", "image": "example.invalid/bench:1", "command": ["sleep", "3600"]}],
        },
    })
}

#[derive(Default, Clone, Copy)]
struct Cpu {
    create: Duration,
    update: Duration,
    delete: Duration,
}

fn main() {
    let mut args = std::env::args().skip(1);
    let cycles: usize = args.next().map(|a| a.parse().unwrap()).unwrap_or(200);
    let clients: usize = args.next().map(|a| a.parse().unwrap()).unwrap_or(1);
    let list_runs: u32 = args.next().map(|a| a.parse().unwrap()).unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("server")
        .enable_all()
        .build()
        .unwrap();
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("client")
        .enable_all()
        .build()
        .unwrap();
    let registry = skiff_apiserver::Registry::open(&dir.path().join("db/state.redb")).unwrap();
    let tls = skiff_apiserver::http::load_or_create_tls(&dir.path().join("tls"), &[]).unwrap();
    let shutdown = CancellationToken::new();
    let pods = ResourceKind::by_plural("", "v1", "pods").unwrap();
    let port = server.block_on(async {
        registry.bootstrap("10.43.0.1").await.unwrap();
        let ns = json!({"metadata": {"name": "bench"}});
        registry.create(ResourceKind::by_plural("", "v1", "namespaces").unwrap(), None, ns).await.unwrap();
        // Skiff's own pod watchers: scheduler, kubelet (its node's pods), replica set, job,
        // endpoints, garbage collector.
        for selector in [None, Some("spec.nodeName=node-a"), None, None, None, None] {
            let opts = ListOptions { field_selector: selector.map(String::from), ..Default::default() };
            let mut events = registry.watch(pods, None, &opts).await.unwrap();
            tokio::spawn(async move { while events.next().await.is_some() {} });
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let api: Arc<dyn ApiClient> = registry.clone();
        tokio::spawn(skiff_apiserver::http::serve(
            listener,
            tls.server_config.clone(),
            TOKEN.to_string(),
            api,
            Arc::new(OnceLock::new()),
            shutdown.clone(),
        ));
        port
    });
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(tls.ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let client_tls = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );

    let (cpu, wall) = client_rt.block_on(async {
        let mut conns = Vec::new();
        for _ in 0..clients {
            conns.push(Client::connect(port, client_tls.clone()).await);
        }
        // Warm-up.
        for k in 0..20 {
            let c = &mut conns[0];
            c.expect(201, "POST", PODS, Some(&pod(&format!("warm-{k}")))).await;
            c.expect(200, "DELETE", &format!("{PODS}/warm-{k}"), Some(&json!({"gracePeriodSeconds": 0}))).await;
        }
        let start = Instant::now();
        let mut cpu = Cpu::default();
        // Each phase runs all clients at once, so concurrent writes share commits as they would.
        let mut created = vec![Vec::new(); clients];
        let mark = server_cpu();
        let tasks: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(c, mut conn)| {
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    for k in 0..cycles {
                        out.push(conn.expect(201, "POST", PODS, Some(&pod(&format!("p-{c}-{k}")))).await);
                    }
                    (conn, out)
                })
            })
            .collect();
        let mut conns = Vec::new();
        for (c, t) in tasks.into_iter().enumerate() {
            let (conn, out) = t.await.unwrap();
            conns.push(conn);
            created[c] = out;
        }
        cpu.create = server_cpu() - mark;
        let mark = server_cpu();
        let tasks: Vec<_> = conns
            .into_iter()
            .zip(created)
            .map(|(mut conn, objects)| {
                tokio::spawn(async move {
                    for mut o in objects {
                        o["metadata"]["labels"]["round"] = json!("2");
                        let name = o["metadata"]["name"].as_str().unwrap().to_string();
                        conn.expect(200, "PUT", &format!("{PODS}/{name}"), Some(&o)).await;
                    }
                    conn
                })
            })
            .collect();
        let mut conns = Vec::new();
        for t in tasks {
            conns.push(t.await.unwrap());
        }
        cpu.update = server_cpu() - mark;
        let mark = server_cpu();
        let tasks: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(c, mut conn)| {
                tokio::spawn(async move {
                    for k in 0..cycles {
                        let grace = json!({"gracePeriodSeconds": 0});
                        conn.expect(200, "DELETE", &format!("{PODS}/p-{c}-{k}"), Some(&grace)).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        cpu.delete = server_cpu() - mark;
        (cpu, start.elapsed())
    });
    let ops = (cycles * clients) as u32;
    println!("{clients} client(s), {cycles} create/update/delete cycles each, {:.1} s", wall.as_secs_f64());
    let ms = |d: Duration| format!("{:.3}", d.as_secs_f64() * 1000.0);
    println!(
        "server CPU per op (ms): create {}  update {}  delete {}",
        ms(cpu.create / ops),
        ms(cpu.update / ops),
        ms(cpu.delete / ops)
    );

    if list_runs == 0 {
        return;
    }
    let lists = client_rt.block_on(async {
        let mut conn = Client::connect(port, client_tls.clone()).await;
        for k in 0..1000 {
            conn.expect(201, "POST", PODS, Some(&pod(&format!("stored-{k:04}")))).await;
        }
        let mut out = Vec::new();
        for (accept, path) in
            [(TABLE, format!("{PODS}?limit=500")), (TABLE, PODS.to_string()), ("application/json", PODS.to_string())]
        {
            let runs = list_runs;
            let mark = server_cpu();
            let start = Instant::now();
            for _ in 0..runs {
                let (code, _) = conn.call("GET", &path, accept, None).await;
                assert_eq!(code, 200);
            }
            out.push((
                accept.split(';').nth(1).unwrap_or("json").to_string(),
                path,
                (server_cpu() - mark) / runs,
                start.elapsed() / runs,
            ));
        }
        out
    });
    for (what, path, cpu, wall) in lists {
        println!("GET {path} ({what}): server CPU {} ms per request, {} ms wall", ms(cpu), ms(wall));
    }
    shutdown.cancel();
    drop(server);
}
