//! Part two: pod start latency on a real `skiff server` (this binary, started as a child with a
//! data dir, port, cgroup root, bridge and CIDRs of its own, the bench image imported into its
//! store beforehand). Pods running busybox `sleep 3600` are created through the API and timed
//! from the create request to the watch event that shows them `Running`, in two rounds:
//!
//! - one at a time: create, wait for Running, next (the latency of a quiet node);
//! - a burst: all created back to back, as `kubectl apply -f` of a list does (queueing included).
//!
//! The first round's pods are deleted (and awaited) before the burst, which gets the node empty
//! (it takes 110 pods, Kubernetes' default maxPods). Then every pod is deleted and awaited, the server is stopped with SIGTERM, and the caller's
//! sweep checks that nothing is left (processes, mounts, cgroups, the bridge and veths).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::stats::{median, ms, percentile};

const NAMESPACE: &str = "default";
const LABEL: &str = "app=skiff-bench";
const PODS: &str = "/api/v1/namespaces/default/pods";
const READY_TIMEOUT: Duration = Duration::from_secs(90);
const RUNNING_TIMEOUT: Duration = Duration::from_secs(120);
const DELETE_TIMEOUT: Duration = Duration::from_secs(180);
const STOP_TIMEOUT: Duration = Duration::from_secs(40);

pub struct Setup<'a> {
    pub scratch: &'a Path,
    pub cgroup_root: &'a str,
    pub bridge: &'a str,
    pub archive: &'a Path,
    pub pods: usize,
}

/// The server child; stopped with SIGTERM (then SIGKILL) when dropped.
struct Server {
    child: Option<Child>,
    log: PathBuf,
    data_dir: PathBuf,
    port: u16,
    node: String,
}

impl Server {
    fn start(setup: &Setup<'_>) -> anyhow::Result<Server> {
        let data_dir = setup.scratch.join("data");
        let log = setup.scratch.join("server.log");
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        // Addresses apart from a real node's (10.42/10.43) and the tests' (10.242/10.243).
        let subnet = std::process::id() % 250;
        let node = format!("skiff-bench-{}", std::process::id());
        let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("server")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--https-listen-port", &port.to_string(), "--bind-address", "127.0.0.1"])
            .args(["--cluster-cidr", &format!("10.246.{subnet}.0/24")])
            .args(["--service-cidr", &format!("10.247.{subnet}.0/24")])
            .args(["--bridge-name", setup.bridge, "--node-name", &node, "--cgroup-root", setup.cgroup_root]);
        for (key, _) in std::env::vars() {
            if key.starts_with("SKIFF_") {
                cmd.env_remove(key);
            }
        }
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        // Its own process group: Ctrl-C reaches only the bench, which then deletes the pods
        // and stops the server in order (a server stopped first would leave the pods running).
        use std::os::unix::process::CommandExt;
        cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out).process_group(0);
        let child = cmd.spawn().context("starting skiff server")?;
        Ok(Server { child: Some(child), log, data_dir, port, node })
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGTERM, then SIGKILL after `STOP_TIMEOUT`. Returns how it ended.
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                eprintln!("skiff server did not stop within {STOP_TIMEOUT:?} of SIGTERM: SIGKILL");
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// HTTPS to the server with the kubeconfig's CA and token; one connection per caller.
#[derive(Clone)]
struct Api {
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    token: String,
}

type Conn = SendRequest<Full<Bytes>>;

impl Api {
    fn from_kubeconfig(path: &Path, port: u16) -> anyhow::Result<Api> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.trim_start().strip_prefix(&format!("{name}: ")))
                .map(|v| v.trim().to_string())
                .with_context(|| format!("no {name} in {}", path.display()))
        };
        let ca = base64::engine::general_purpose::STANDARD.decode(field("certificate-authority-data")?)?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&ca) {
            roots.add(cert.context("the kubeconfig's CA is not PEM")?)?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Api { port, tls: Arc::new(tls), token: field("token")? })
    }

    async fn connect(&self) -> anyhow::Result<Conn> {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone()).connect(name, tcp).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        Ok(sender)
    }

    fn request(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<hyper::Request<Full<Bytes>>> {
        let bytes = body.map(|b| Bytes::from(serde_json::to_vec(b).unwrap_or_default())).unwrap_or_default();
        Ok(hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "127.0.0.1")
            .header("authorization", format!("Bearer {}", self.token))
            .header("accept", "application/json")
            .header("content-type", "application/json")
            .body(Full::new(bytes))?)
    }

    /// One request: the status code and the body as JSON (Null when it is not JSON).
    async fn call(
        &self,
        conn: &mut Conn,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let req = self.request(method, path, body)?;
        conn.ready().await?;
        let reply = conn.send_request(req).await.with_context(|| format!("{method} {path}"))?;
        let code = reply.status().as_u16();
        let body = reply.into_body().collect().await?.to_bytes();
        Ok((code, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }

    /// Watches the bench's pods from `resource_version` on; each event goes to the channel with
    /// the instant it arrived. A watch the server ends is resumed from the last version seen.
    fn watch(&self, mut resource_version: String, events: mpsc::UnboundedSender<(Instant, Value)>) {
        let api = self.clone();
        tokio::spawn(async move {
            loop {
                let path = format!(
                    "{PODS}?watch=true&labelSelector={}&resourceVersion={resource_version}&allowWatchBookmarks=true",
                    LABEL.replace('=', "%3D")
                );
                let Ok(mut conn) = api.connect().await else { return };
                let Ok(req) = api.request("GET", &path, None) else { return };
                let Ok(reply) = conn.send_request(req).await else { return };
                if reply.status() != 200 {
                    return;
                }
                let mut body = reply.into_body();
                let mut buf: Vec<u8> = Vec::new();
                while let Some(Ok(frame)) = body.frame().await {
                    let Ok(data) = frame.into_data() else { continue };
                    let now = Instant::now();
                    buf.extend_from_slice(&data);
                    while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=end).collect();
                        let Ok(event) = serde_json::from_slice::<Value>(&line) else { continue };
                        if let Some(rv) = event["object"]["metadata"]["resourceVersion"].as_str() {
                            resource_version = rv.to_string();
                        }
                        if event["type"] == "ERROR" {
                            // Expired (410): nothing to resume from; the bench's waits time out.
                            return;
                        }
                        if events.send((now, event)).is_err() {
                            return;
                        }
                    }
                }
                if events.is_closed() {
                    return;
                }
            }
        });
    }
}

/// When each bench pod reached each step, as this side saw it.
#[derive(Default, Clone)]
struct PodTimes {
    created: Option<Instant>,
    scheduled: Option<Instant>,
    running: Option<Instant>,
}

struct Tracker {
    events: mpsc::UnboundedReceiver<(Instant, Value)>,
    pods: HashMap<String, PodTimes>,
}

impl Tracker {
    fn absorb(&mut self, at: Instant, event: &Value) {
        let Some(name) = event["object"]["metadata"]["name"].as_str() else { return };
        let times = self.pods.entry(name.to_string()).or_default();
        let pod = &event["object"];
        if times.scheduled.is_none() && pod["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty()) {
            times.scheduled = Some(at);
        }
        if times.running.is_none() && pod["status"]["phase"] == "Running" {
            times.running = Some(at);
        }
    }

    /// Takes in watch events until every pod in `names` runs.
    async fn until_running(&mut self, names: &[String], cancel: &CancellationToken) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + RUNNING_TIMEOUT;
        while names.iter().any(|n| self.pods.get(n).is_none_or(|t| t.running.is_none())) {
            tokio::select! {
                event = self.events.recv() => {
                    let Some((at, event)) = event else { bail!("the watch on the bench's pods ended") };
                    self.absorb(at, &event);
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let waiting: Vec<&PodTimes> =
                        names.iter().filter_map(|n| self.pods.get(n)).filter(|t| t.running.is_none()).collect();
                    let unscheduled = waiting.iter().filter(|t| t.scheduled.is_none()).count();
                    bail!(
                        "{} of {} pods were not Running after {RUNNING_TIMEOUT:?} ({unscheduled} of them not even scheduled)",
                        waiting.len(),
                        names.len()
                    );
                }
                _ = cancel.cancelled() => bail!("interrupted"),
            }
        }
        Ok(())
    }
}

fn pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": "skiff-bench"}},
        "spec": {
            // sleep as pid 1 ignores SIGTERM: without this, every delete would wait out 30 s.
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "sleep",
                "image": super::image::REFERENCE,
                "imagePullPolicy": "Never",
                "command": ["sleep", "3600"],
            }],
        },
    })
}

pub async fn run(setup: Setup<'_>, cancel: &CancellationToken) -> anyhow::Result<()> {
    // The image goes into the server's store before it starts: the pods find it present.
    {
        let rt = skiff_runtime::Runtime::new(skiff_runtime::RuntimeConfig {
            root: setup.scratch.join("data").join("runtime"),
            shim_exe: std::env::current_exe()?,
            cgroup_root: setup.cgroup_root.to_string(),
        })?;
        rt.import_archive(setup.archive).await.context("importing the bench image for the server")?;
    }
    let mut server = Server::start(&setup)?;
    let mut created: Vec<String> = Vec::new();
    let result = async {
        let api = wait_ready(&mut server, cancel).await?;
        measure(&api, &server, &mut created, setup.pods, cancel).await
    }
    .await;
    if let Ok(report) = &result {
        println!("{report}");
    }
    // Whatever happened: the pods go (through the server, which tears their containers down),
    // then the server.
    let teardown = async {
        if created.is_empty() || server.exited().is_some() {
            return Ok(());
        }
        let api = Api::from_kubeconfig(&server.data_dir.join("kubeconfig.yaml"), server.port)?;
        delete_all(&api, &created).await
    }
    .await;
    let stopped = server.stop();
    let failed = result.is_err() || teardown.is_err() || stopped.is_some_and(|s| !s.success());
    if failed && !cancel.is_cancelled() {
        let kept = setup.scratch.with_extension("server.log");
        if std::fs::copy(&server.log, &kept).is_ok() {
            eprintln!("skiff bench: the server's log is kept at {}", kept.display());
        }
    }
    result?;
    teardown.context("deleting the bench pods")?;
    if let Some(status) = stopped.filter(|s| !s.success()) {
        bail!("skiff server exited with {status} on SIGTERM; log tail:\n{}", server.log_tail());
    }
    Ok(())
}

async fn wait_ready(server: &mut Server, cancel: &CancellationToken) -> anyhow::Result<Api> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let kubeconfig = server.data_dir.join("kubeconfig.yaml");
    loop {
        if cancel.is_cancelled() {
            bail!("interrupted");
        }
        if let Some(status) = server.exited() {
            bail!("skiff server exited ({status}) before it was ready; log tail:\n{}", server.log_tail());
        }
        if Instant::now() > deadline {
            bail!("skiff server was not ready within {READY_TIMEOUT:?}; log tail:\n{}", server.log_tail());
        }
        if kubeconfig.exists()
            && let Ok(api) = Api::from_kubeconfig(&kubeconfig, server.port)
            && let Ok(mut conn) = api.connect().await
        {
            let node = format!("/api/v1/nodes/{}", server.node);
            if let Ok((200, node)) = api.call(&mut conn, "GET", &node, None).await {
                let ready = node["status"]["conditions"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
                // Pods name the default ServiceAccount, which admission wants to exist and
                // which the controllers make a moment after the namespace.
                let account = "/api/v1/namespaces/default/serviceaccounts/default";
                if ready && matches!(api.call(&mut conn, "GET", account, None).await, Ok((200, _))) {
                    return Ok(api);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn measure(
    api: &Api,
    server: &Server,
    created: &mut Vec<String>,
    count: usize,
    cancel: &CancellationToken,
) -> anyhow::Result<String> {
    let mut conn = api.connect().await?;
    let (code, list) =
        api.call(&mut conn, "GET", &format!("{PODS}?labelSelector={}", LABEL.replace('=', "%3D")), None).await?;
    if code != 200 {
        bail!("listing pods: {code} {list}");
    }
    let rv = list["metadata"]["resourceVersion"].as_str().unwrap_or("0").to_string();
    let (tx, rx) = mpsc::unbounded_channel();
    api.watch(rv, tx);
    let mut tracker = Tracker { events: rx, pods: HashMap::new() };
    println!(
        "\npod start latency: skiff server (node {}), busybox `sleep 3600`, create request → Running seen on a watch (aim: p99 ≤ 500 ms)",
        server.node
    );
    let mut serial = Vec::new();
    let mut api_latency = Vec::new();
    for i in 0..count {
        let (name, at, took) = create(api, &mut conn, format!("bench-serial-{i}")).await?;
        created.push(name.clone());
        tracker.pods.entry(name.clone()).or_default().created = Some(at);
        api_latency.push(took);
        tracker.until_running(std::slice::from_ref(&name), cancel).await?;
        serial.push(name);
    }
    let mut out = String::new();
    let line = |out: &mut String, what: &str, pods: &HashMap<String, PodTimes>, names: &[String]| {
        let get = |f: fn(&PodTimes) -> Option<Duration>| -> Vec<Duration> {
            names.iter().filter_map(|n| pods.get(n)).filter_map(f).collect()
        };
        let to_running = get(|t| Some(t.running? - t.created?));
        let to_scheduled = get(|t| Some(t.scheduled? - t.created?));
        let kubelet = get(|t| Some(t.running? - t.scheduled?));
        out.push_str(&format!(
            "{what:<26} p50 {:>8} ms  p90 {:>8} ms  p99 {:>8} ms  max {:>8} ms   (create→scheduled p50 {} ms, scheduled→Running p50 {} ms)\n",
            ms(median(&to_running)),
            ms(percentile(&to_running, 90.0)),
            ms(percentile(&to_running, 99.0)),
            ms(percentile(&to_running, 100.0)),
            ms(median(&to_scheduled)),
            ms(median(&kubelet)),
        ));
    };
    line(&mut out, &format!("{count} pods, one at a time"), &tracker.pods, &serial);
    // Printed now: the burst below may fail, and this part is worth having anyway.
    print!("{out}");
    out.clear();
    // The node takes 110 pods (Kubernetes' default maxPods): the burst gets it empty.
    delete_all(api, &serial).await.context("deleting the first round's pods")?;
    created.clear();

    let burst_start = Instant::now();
    let mut burst = Vec::new();
    for i in 0..count {
        if cancel.is_cancelled() {
            bail!("interrupted");
        }
        let (name, at, took) = create(api, &mut conn, format!("bench-burst-{i}")).await?;
        created.push(name.clone());
        tracker.pods.entry(name.clone()).or_default().created = Some(at);
        api_latency.push(took);
        burst.push(name);
    }
    let applied = burst_start.elapsed();
    tracker.until_running(&burst, cancel).await?;
    let all_running = burst_start.elapsed();

    line(&mut out, &format!("{count} pods, burst"), &tracker.pods, &burst);
    out.push_str(&format!(
        "burst: {count} creates took {} ms, all Running after {} ms; create request p50 {} ms, p99 {} ms",
        ms(applied),
        ms(all_running),
        ms(median(&api_latency)),
        ms(percentile(&api_latency, 99.0)),
    ));
    Ok(out)
}

/// Creates one bench pod: its name, when the request was sent, how long the API took.
async fn create(api: &Api, conn: &mut Conn, name: String) -> anyhow::Result<(String, Instant, Duration)> {
    let body = pod(&name);
    let at = Instant::now();
    let (code, reply) = api.call(conn, "POST", PODS, Some(&body)).await?;
    if code != 201 {
        bail!("creating pod {name}: {code} {reply}");
    }
    Ok((name, at, at.elapsed()))
}

/// Deletes the bench's pods and waits until the server has removed them all (their containers,
/// sandboxes and veths torn down by the kubelet).
async fn delete_all(api: &Api, names: &[String]) -> anyhow::Result<()> {
    let mut conn = api.connect().await?;
    let started = Instant::now();
    for name in names {
        let (code, reply) = api.call(&mut conn, "DELETE", &format!("{PODS}/{name}"), None).await?;
        if code != 200 && code != 404 {
            bail!("deleting pod {name}: {code} {reply}");
        }
    }
    let path = format!("{PODS}?labelSelector={}", LABEL.replace('=', "%3D"));
    loop {
        let (code, list) = api.call(&mut conn, "GET", &path, None).await?;
        let left = list["items"].as_array().map_or(0, Vec::len);
        if code == 200 && left == 0 {
            println!("deleted {} pods: all gone after {} ms", names.len(), ms(started.elapsed()));
            return Ok(());
        }
        if started.elapsed() > DELETE_TIMEOUT {
            bail!("{left} pods were still there {DELETE_TIMEOUT:?} after their deletion");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
