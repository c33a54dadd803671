//! Probes (Kubernetes `prober/worker.go`): one task per (container, kind) that waits out
//! `initialDelaySeconds`, probes every `periodSeconds`, and reports to the pod worker only when
//! the result flips after `successThreshold`/`failureThreshold` consecutive results. Readiness
//! starts as failed, startup as unknown; liveness and readiness wait for startup to succeed (the
//! pod worker starts them then). A startup probe stops once it has succeeded.
//!
//! `httpGet`, `tcpSocket` and `grpc` ([`grpc`]: `grpc.health.v1.Health/Check` over h2c) probes
//! run from the node to the pod IP, as the kubelet's do; `exec` probes run the command in the
//! container through the runtime (exit 0 is success).

pub mod grpc;

use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerPort, HTTPGetAction, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use skiff_api::{ObjectReference, Recorder};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    Readiness,
    Liveness,
    Startup,
}

impl ProbeKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::Readiness => "Readiness",
            Self::Liveness => "Liveness",
            Self::Startup => "Startup",
        }
    }
}

/// A flip of one probe's result, for the pod worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeUpdate {
    pub container: String,
    /// The runtime id of the container probed (results of an older container are stale).
    pub id: String,
    pub kind: ProbeKind,
    pub success: bool,
}

/// Whether this kubelet can run the probe (`httpGet`, `tcpSocket`, `grpc` or `exec`).
pub fn supported(probe: &Probe) -> bool {
    probe.http_get.is_some() || probe.tcp_socket.is_some() || probe.grpc.is_some() || probe.exec.is_some()
}

/// Whether the probe goes over the network to the pod IP.
pub fn needs_pod_ip(probe: &Probe) -> bool {
    probe.http_get.is_some() || probe.tcp_socket.is_some() || probe.grpc.is_some()
}

/// Runs `argv` in the container and collects its output (stdout, then stderr). With a timeout, a
/// command still running then is killed and `Err` says so. `Ok` carries the exit code.
pub async fn exec_in_container(
    runtime: &skiff_runtime::Runtime,
    id: &str,
    argv: Vec<String>,
    timeout: Option<Duration>,
) -> Result<(i32, String), String> {
    let spec = skiff_runtime::ExecSpec {
        argv,
        env: Vec::new(),
        tty: false,
        stdin: false,
        stdout: true,
        stderr: true,
        terminal_size: None,
    };
    let mut process = runtime.exec(id, spec).await.map_err(|e| e.to_string())?;
    let pid = process.pid();
    let (mut out, mut err) = (process.take_stdout(), process.take_stderr());
    let run = async {
        let (mut o, mut e) = (Vec::new(), Vec::new());
        let read_out = async {
            if let Some(r) = out.as_mut() {
                let _ = r.read_to_end(&mut o).await;
            }
        };
        let read_err = async {
            if let Some(r) = err.as_mut() {
                let _ = r.read_to_end(&mut e).await;
            }
        };
        tokio::join!(read_out, read_err);
        let code = process.wait().await.map_err(|e| e.to_string())?;
        o.extend_from_slice(&e);
        Ok::<_, String>((code, String::from_utf8_lossy(&o).into_owned()))
    };
    let Some(timeout) = timeout else { return run.await };
    match tokio::time::timeout(timeout, run).await {
        Ok(result) => result,
        Err(_) => {
            // SAFETY: kill(2) on the pid the runtime reported for this exec; no memory involved.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            Err(format!("command timed out after {}s", timeout.as_secs()))
        }
    }
}

/// Runs an exec probe's command in the container: success is exit code 0; a failure carries the
/// command's output, as Kubernetes shows it. A command still running at the timeout is killed.
pub async fn probe_exec(runtime: &skiff_runtime::Runtime, id: &str, probe: &Probe) -> Result<(), String> {
    let argv = probe.exec.as_ref().and_then(|e| e.command.clone()).unwrap_or_default();
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    match exec_in_container(runtime, id, argv, Some(timeout)).await? {
        (0, _) => Ok(()),
        (_, output) => Err(output),
    }
}

pub fn resolve_port(port: &IntOrString, ports: &[ContainerPort]) -> Result<u16, String> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).map_err(|_| format!("invalid port {p}")),
        IntOrString::String(name) => match name.parse::<u16>() {
            Ok(p) => Ok(p),
            Err(_) => ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| format!("port {name:?} not found in the container's ports")),
        },
    }
}

/// Parses the status code of an HTTP/1.x response head.
pub fn status_code(head: &str) -> Option<u16> {
    let line = head.lines().next()?;
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

/// One probe attempt against `ip`. `Err` carries the message Kubernetes would show.
pub async fn probe_once(probe: &Probe, ip: &str, ports: &[ContainerPort]) -> Result<(), String> {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(tcp) = &probe.tcp_socket {
        let host = tcp.host.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| ip.to_string());
        let port = resolve_port(&tcp.port, ports)?;
        let addr = format!("{host}:{port}");
        return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dial tcp {addr}: connect: {}", connect_error(&e))),
            Err(_) => Err(format!("dial tcp {addr}: i/o timeout")),
        };
    }
    if let Some(grpc) = &probe.grpc {
        let port = u16::try_from(grpc.port).map_err(|_| format!("invalid port {}", grpc.port))?;
        return grpc::check(ip, port, grpc.service.as_deref().unwrap_or_default(), timeout).await;
    }
    let Some(http) = &probe.http_get else { return Err("probe has no supported handler".into()) };
    let url = http_url(http, ip, ports)?;
    match tokio::time::timeout(timeout, http_get(http, ip, ports, "kube-probe/1.33")).await {
        Ok(Ok(code)) if (200..400).contains(&code) => Ok(()),
        Ok(Ok(code)) => Err(format!("HTTP probe failed with statuscode: {code}")),
        Ok(Err(e)) => Err(e),
        Err(_) => {
            Err(format!("Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"))
        }
    }
}

/// The URL an `httpGet` action requests: its host or else `ip`, its port (a name resolves
/// through the container's ports), its path (default `/`).
pub fn http_url(http: &HTTPGetAction, ip: &str, ports: &[ContainerPort]) -> Result<String, String> {
    let host = http.host.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| ip.to_string());
    let port = resolve_port(&http.port, ports)?;
    let path = http.path.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "/".into());
    let scheme = http.scheme.as_deref().unwrap_or("HTTP").to_lowercase();
    Ok(format!("{scheme}://{host}:{port}{path}"))
}

/// One `GET` of an `httpGet` action (probe or lifecycle hook) over HTTP/1.1, or over TLS for
/// `scheme: HTTPS` (without verifying the certificate, as the kubelet's prober); returns the
/// status code. `Err` carries the message Go's HTTP client would give.
pub async fn http_get(
    http: &HTTPGetAction,
    ip: &str,
    ports: &[ContainerPort],
    user_agent: &str,
) -> Result<u16, String> {
    let host = http.host.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| ip.to_string());
    let port = resolve_port(&http.port, ports)?;
    let path = http.path.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "/".into());
    let url = http_url(http, ip, ports)?;
    let stream = tokio::net::TcpStream::connect(format!("{host}:{port}"))
        .await
        .map_err(|e| format!("Get \"{url}\": dial tcp {host}:{port}: connect: {}", connect_error(&e)))?;
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: {user_agent}\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for h in http.http_headers.iter().flatten() {
        request.push_str(&format!("{}: {}\r\n", h.name, h.value));
    }
    request.push_str("\r\n");
    if http.scheme.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("HTTPS")) {
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("Get \"{url}\": invalid host {host:?}: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(insecure_tls_config())
            .connect(name, stream)
            .await
            .map_err(|e| format!("Get \"{url}\": {e}"))?;
        exchange(tls, &request, &url).await
    } else {
        exchange(stream, &request, &url).await
    }
}

/// Sends `request` and reads the status line of the answer.
async fn exchange<S>(mut stream: S, request: &str, url: &str) -> Result<u16, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("Get \"{url}\": {e}"))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = stream.read(&mut buf).await.map_err(|e| format!("Get \"{url}\": {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    status_code(&String::from_utf8_lossy(&head)).ok_or_else(|| format!("Get \"{url}\": malformed HTTP response"))
}

/// A TLS client that accepts any server certificate (the kubelet's probes and hooks set
/// InsecureSkipVerify): the handshake's signatures are still checked.
fn insecure_tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default TLS versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn connect_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        _ => e.to_string(),
    }
}

/// What a probe task needs besides the probe itself.
pub struct ProbeTarget {
    pub container: String,
    pub id: String,
    /// For exec probes.
    pub runtime: Option<Arc<skiff_runtime::Runtime>>,
    pub ip: String,
    pub ports: Vec<ContainerPort>,
    pub pod: ObjectReference,
}

/// Runs one probe until `cancel`, handing flips to `notify` and `Unhealthy` events to `recorder`.
pub async fn run(
    kind: ProbeKind,
    probe: Probe,
    target: ProbeTarget,
    recorder: Arc<Recorder>,
    notify: impl Fn(ProbeUpdate) + Send + 'static,
    cancel: CancellationToken,
) {
    let secs = |v: Option<i32>, default: i32| Duration::from_secs(v.unwrap_or(default).max(0) as u64);
    let initial = secs(probe.initial_delay_seconds, 0);
    let period = secs(probe.period_seconds, 10).max(Duration::from_secs(1));
    let success_threshold = probe.success_threshold.unwrap_or(1).max(1);
    let failure_threshold = probe.failure_threshold.unwrap_or(3).max(1);
    tokio::select! {
        _ = tokio::time::sleep(initial) => {}
        _ = cancel.cancelled() => return,
    }
    let mut tick = tokio::time::interval(period);
    let (mut successes, mut failures) = (0, 0);
    let mut current: Option<bool> = None;
    let field = target.pod.clone().with_field_path(format!("spec.containers{{{}}}", target.container));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cancel.cancelled() => return,
        }
        let result = match (&probe.exec, &target.runtime) {
            (Some(_), Some(runtime)) => probe_exec(runtime, &target.id, &probe).await,
            _ => probe_once(&probe, &target.ip, &target.ports).await,
        };
        match result {
            Ok(()) => {
                successes += 1;
                failures = 0;
                if successes >= success_threshold && current != Some(true) {
                    current = Some(true);
                    notify(ProbeUpdate {
                        container: target.container.clone(),
                        id: target.id.clone(),
                        kind,
                        success: true,
                    });
                    if kind == ProbeKind::Startup {
                        return;
                    }
                }
            }
            Err(message) => {
                failures += 1;
                successes = 0;
                recorder.warning(&field, "Unhealthy", &format!("{} probe failed: {message}", kind.label())).await;
                if failures >= failure_threshold && current != Some(false) {
                    current = Some(false);
                    notify(ProbeUpdate {
                        container: target.container.clone(),
                        id: target.id.clone(),
                        kind,
                        success: false,
                    });
                    if kind != ProbeKind::Readiness {
                        // The container is killed now; a new one gets new probes.
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn probe(v: serde_json::Value) -> Probe {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn status_lines_are_parsed() {
        assert_eq!(status_code("HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(status_code("HTTP/1.0 503 Service Unavailable\r\nx: y"), Some(503));
        assert_eq!(status_code("garbage"), None);
    }

    #[test]
    fn named_ports_resolve_through_the_container_ports() {
        let ports: Vec<ContainerPort> =
            serde_json::from_value(json!([{"name": "http", "containerPort": 8080}])).unwrap();
        assert_eq!(resolve_port(&IntOrString::String("http".into()), &ports), Ok(8080));
        assert_eq!(resolve_port(&IntOrString::Int(81), &ports), Ok(81));
        assert!(resolve_port(&IntOrString::String("nope".into()), &ports).is_err());
    }

    #[tokio::test]
    async fn http_probes_succeed_on_2xx_and_3xx_and_fail_otherwise() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut answers =
                ["HTTP/1.1 204 No Content\r\n\r\n", "HTTP/1.1 500 Internal Server Error\r\n\r\n"].into_iter();
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap();
                assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /healthz HTTP/1.1\r\n"));
                let _ = s.write_all(answers.next().unwrap_or("HTTP/1.1 200 OK\r\n\r\n").as_bytes()).await;
            }
        });
        let p = probe(json!({"httpGet": {"path": "/healthz", "port": port}}));
        assert_eq!(probe_once(&p, "127.0.0.1", &[]).await, Ok(()));
        assert_eq!(probe_once(&p, "127.0.0.1", &[]).await, Err("HTTP probe failed with statuscode: 500".into()));
    }

    #[tokio::test]
    async fn https_probes_do_not_verify_the_certificate_like_the_kubelets() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let mut buf = [0u8; 1024];
                    let n = tls.read(&mut buf).await.unwrap_or(0);
                    let up = String::from_utf8_lossy(&buf[..n]).starts_with("GET /up ");
                    let status = if up { "204 No Content" } else { "503 Service Unavailable" };
                    let _ = tls.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        let p = probe(json!({"httpGet": {"scheme": "HTTPS", "path": "/up", "port": port}}));
        assert_eq!(probe_once(&p, "127.0.0.1", &[]).await, Ok(()), "a self-signed certificate is accepted");
        let p = probe(json!({"httpGet": {"scheme": "HTTPS", "path": "/down", "port": port}}));
        assert_eq!(probe_once(&p, "127.0.0.1", &[]).await, Err("HTTP probe failed with statuscode: 503".into()));
        // Plain HTTP to a TLS port is an error of the exchange, not a hang.
        let p = probe(json!({"httpGet": {"path": "/up", "port": port}, "timeoutSeconds": 2}));
        assert!(probe_once(&p, "127.0.0.1", &[]).await.is_err());
    }

    #[tokio::test]
    async fn tcp_probes_fail_with_the_dial_error_when_nothing_listens() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let p = probe(json!({"tcpSocket": {"port": port}}));
        assert_eq!(probe_once(&p, "127.0.0.1", &[]).await, Ok(()));
        drop(listener);
        assert_eq!(
            probe_once(&p, "127.0.0.1", &[]).await,
            Err(format!("dial tcp 127.0.0.1:{port}: connect: connection refused"))
        );
    }

    fn no_events() -> Arc<Recorder> {
        let events: Arc<dyn skiff_api::ApiClient> = Arc::new(NoEvents);
        Arc::new(Recorder::new(
            events,
            skiff_api::EventSource { component: "kubelet".into(), host: None, reporting_instance: "n".into() },
        ))
    }

    fn tcp_target() -> ProbeTarget {
        ProbeTarget {
            container: "app".into(),
            id: "c1".into(),
            runtime: None,
            ip: "127.0.0.1".into(),
            ports: vec![],
            pod: ObjectReference::default(),
        }
    }

    /// Runs a probe on the paused clock; returns its flips as (seconds since start, success)
    /// and whether the probe loop ended by itself.
    async fn flips(
        kind: ProbeKind,
        p: Probe,
        until: Duration,
        mut listener: impl FnMut(Duration) + Send + 'static,
    ) -> (Vec<(u64, bool)>, bool) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let start = tokio::time::Instant::now();
        let cancel = CancellationToken::new();
        let notify = move |u: ProbeUpdate| {
            let _ = tx.send((start.elapsed().as_secs(), u.success));
        };
        let task = tokio::spawn(run(kind, p, tcp_target(), no_events(), notify, cancel.clone()));
        // The test's own schedule: opens and closes the listener at whole seconds.
        let script = tokio::spawn(async move {
            let mut t = Duration::ZERO;
            while t <= until {
                listener(t);
                tokio::time::sleep(Duration::from_millis(500)).await;
                t += Duration::from_millis(500);
            }
        });
        script.await.unwrap();
        let ended = task.is_finished();
        cancel.cancel();
        let mut seen = Vec::new();
        while let Ok(flip) = rx.try_recv() {
            seen.push(flip);
        }
        (seen, ended)
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_waits_the_initial_delay_then_flips_at_the_success_and_failure_thresholds() {
        let bound = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = bound.local_addr().unwrap().port();
        let mut _held = Some(bound);
        let p = probe(json!({"tcpSocket": {"port": port}, "initialDelaySeconds": 5, "periodSeconds": 10,
            "successThreshold": 2, "failureThreshold": 3}));
        // Listening until 20 s, closed until 50 s, listening again after.
        let (seen, ended) = flips(ProbeKind::Readiness, p, Duration::from_secs(70), move |t| {
            if t == Duration::from_secs(20) {
                _held = None;
            } else if t == Duration::from_secs(50) {
                _held = Some(std::net::TcpListener::bind(("127.0.0.1", port)).unwrap());
            }
        })
        .await;
        // Probes at 5, 15 | 25, 35, 45 | 55, 65.
        assert_eq!(seen, [(15, true), (45, false), (65, true)]);
        assert!(!ended, "readiness probes run for the container's whole life");
    }

    #[tokio::test(start_paused = true)]
    async fn liveness_reports_one_failure_at_the_threshold_and_stops() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let p = probe(json!({"tcpSocket": {"port": port}, "periodSeconds": 3, "failureThreshold": 4}));
        let (seen, ended) = flips(ProbeKind::Liveness, p, Duration::from_secs(30), |_| {}).await;
        // Probes at 0, 3, 6, 9: the fourth failure kills the container; its successor gets new probes.
        assert_eq!(seen, [(9, false)]);
        assert!(ended);
    }

    #[tokio::test(start_paused = true)]
    async fn a_startup_probe_stops_at_its_first_success() {
        let bound = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = bound.local_addr().unwrap().port();
        drop(bound);
        let mut _held = None;
        let p = probe(json!({"tcpSocket": {"port": port}, "periodSeconds": 2, "failureThreshold": 30}));
        let (seen, ended) = flips(ProbeKind::Startup, p, Duration::from_secs(20), move |t| {
            if t == Duration::from_secs(7) {
                _held = Some(std::net::TcpListener::bind(("127.0.0.1", port)).unwrap());
            }
        })
        .await;
        // Failures at 0, 2, 4, 6 raise nothing below the threshold; the probe at 8 succeeds.
        assert_eq!(seen, [(8, true)]);
        assert!(ended, "startup probes end once the container has started");
    }

    /// An API that accepts and drops events.
    struct NoEvents;

    #[async_trait::async_trait]
    impl skiff_api::ApiClient for NoEvents {
        async fn get(
            &self,
            _: &'static skiff_api::ResourceKind,
            _: Option<&str>,
            _: &str,
        ) -> Result<serde_json::Value, skiff_api::ApiError> {
            unreachable!()
        }
        async fn list(
            &self,
            _: &'static skiff_api::ResourceKind,
            _: Option<&str>,
            _: &skiff_api::ListOptions,
        ) -> Result<skiff_api::ObjectList, skiff_api::ApiError> {
            unreachable!()
        }
        async fn watch(
            &self,
            _: &'static skiff_api::ResourceKind,
            _: Option<&str>,
            _: &skiff_api::ListOptions,
        ) -> Result<skiff_api::WatchStream, skiff_api::ApiError> {
            unreachable!()
        }
        async fn create_with(
            &self,
            _: &'static skiff_api::ResourceKind,
            _: Option<&str>,
            o: serde_json::Value,
            _: &skiff_api::WriteOptions,
        ) -> Result<serde_json::Value, skiff_api::ApiError> {
            Ok(o)
        }
        async fn create_subresource_with(
            &self,
            _: &'static skiff_api::ResourceKind,
            _: Option<&str>,
            _: &str,
            _: &str,
            _: serde_json::Value,
            _: &skiff_api::WriteOptions,
        ) -> Result<serde_json::Value, skiff_api::ApiError> {
            unreachable!()
        }
        async fn update_with(
            &self,
            _: &'static skiff_api::ResourceKind,
            _: Option<&str>,
            _: &str,
            _: Option<&str>,
            _: serde_json::Value,
            _: &skiff_api::WriteOptions,
        ) -> Result<serde_json::Value, skiff_api::ApiError> {
            unreachable!()
        }
        async fn patch_with(
            &self,
            _: &'static skiff_api::ResourceKind,
            _: Option<&str>,
            _: &str,
            _: Option<&str>,
            _: skiff_api::PatchKind,
            p: serde_json::Value,
            _: &skiff_api::WriteOptions,
        ) -> Result<(serde_json::Value, bool), skiff_api::ApiError> {
            Ok((p, false))
        }
        async fn delete_with(
            &self,
            _: &'static skiff_api::ResourceKind,
            _: Option<&str>,
            _: &str,
            _: &skiff_api::DeleteOptions,
            _: &skiff_api::WriteOptions,
        ) -> Result<serde_json::Value, skiff_api::ApiError> {
            unreachable!()
        }
    }
}
