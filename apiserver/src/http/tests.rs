//! The HTTP layer end to end: a real TLS server on 127.0.0.1:0 over an in-memory `ApiClient`
//! test double, driven by the real `/usr/bin/kubectl`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use futures::StreamExt;
use serde_json::{Value, json};
use skiff_api::{
    ApiClient, ApiError, ByteStream, DeleteOptions, FieldSelector, LabelSelector, ListOptions, LogOptions, ObjectList,
    PatchKind, PodStreams, ResourceKind, WatchEvent, WatchEventType, WatchStream, WriteOptions,
};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Objects in a map, one revision counter, a broadcast of changes: just enough of an API
/// server's behaviour to exercise the wire, with none of the registry's rules.
type Key = (String, String, String);

struct MemoryApi {
    /// The last resourceVersion, and the objects by (plural, namespace, name).
    objects: Mutex<(u64, BTreeMap<Key, Value>)>,
    changes: broadcast::Sender<(&'static str, WatchEvent<Value>)>,
}

impl MemoryApi {
    fn new() -> Arc<Self> {
        Arc::new(Self { objects: Mutex::new((1, BTreeMap::new())), changes: broadcast::channel(64).0 })
    }

    fn key(res: &ResourceKind, ns: Option<&str>, name: &str) -> Key {
        (res.plural.to_string(), ns.unwrap_or("").to_string(), name.to_string())
    }

    fn store(&self, res: &'static ResourceKind, ns: Option<&str>, mut object: Value, kind: WatchEventType) -> Value {
        let mut guard = self.objects.lock().unwrap();
        guard.0 += 1;
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
        object["metadata"]["resourceVersion"] = json!(guard.0.to_string());
        object["kind"] = json!(res.kind);
        object["apiVersion"] = json!(res.api_version());
        guard.1.insert(Self::key(res, ns, &name), object.clone());
        let _ = self.changes.send((res.plural, WatchEvent { kind, object: object.clone() }));
        object
    }

    fn matches(object: &Value, ns: Option<&str>, opts: &ListOptions) -> bool {
        let in_ns = ns.is_none_or(|ns| object["metadata"]["namespace"] == ns);
        let labels =
            opts.label_selector.as_deref().is_none_or(|s| LabelSelector::parse(s).unwrap().matches_object(object));
        let fields =
            opts.field_selector.as_deref().is_none_or(|s| FieldSelector::parse(s).unwrap().matches_object(object));
        in_ns && labels && fields
    }
}

#[async_trait::async_trait]
impl ApiClient for MemoryApi {
    async fn get(&self, res: &'static ResourceKind, ns: Option<&str>, name: &str) -> Result<Value, ApiError> {
        let guard = self.objects.lock().unwrap();
        guard.1.get(&Self::key(res, ns, name)).cloned().ok_or_else(|| ApiError::not_found(res, name))
    }

    async fn list(
        &self,
        res: &'static ResourceKind,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> Result<ObjectList, ApiError> {
        let guard = self.objects.lock().unwrap();
        let items = guard
            .1
            .iter()
            .filter(|((plural, _, _), o)| plural == res.plural && Self::matches(o, ns, opts))
            .map(|(_, o)| o.clone())
            .collect();
        Ok(ObjectList { resource_version: guard.0.to_string(), items, continue_token: None })
    }

    async fn watch(
        &self,
        res: &'static ResourceKind,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> Result<WatchStream, ApiError> {
        let rx = self.changes.subscribe();
        let ns = ns.map(String::from);
        let opts = opts.clone();
        let initial = if opts.resource_version.as_deref().is_none_or(|rv| rv == "0") {
            self.list(res, ns.as_deref(), &opts).await?.items
        } else {
            Vec::new()
        };
        let initial =
            futures::stream::iter(initial.into_iter().map(|object| WatchEvent { kind: WatchEventType::Added, object }));
        let changes = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(move |change| {
            let keep = match change {
                Ok((plural, event)) if plural == res.plural && Self::matches(&event.object, ns.as_deref(), &opts) => {
                    Some(event)
                }
                _ => None,
            };
            async move { keep }
        });
        Ok(initial.chain(changes).boxed())
    }

    async fn create_with(
        &self,
        res: &'static ResourceKind,
        ns: Option<&str>,
        mut object: Value,
        _opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
        if self.get(res, ns, &name).await.is_ok() {
            return Err(ApiError::already_exists(res, &name));
        }
        object["metadata"]["uid"] = json!(format!("uid-{name}"));
        object["metadata"]["creationTimestamp"] = json!(jiff::Timestamp::now().to_string());
        Ok(self.store(res, ns, object, WatchEventType::Added))
    }

    async fn create_subresource_with(
        &self,
        res: &'static ResourceKind,
        _ns: Option<&str>,
        _name: &str,
        sub: &str,
        _body: Value,
        _opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        Err(ApiError::bad_request(format!("{}/{sub} is not in the test double", res.plural)))
    }

    async fn update_with(
        &self,
        res: &'static ResourceKind,
        ns: Option<&str>,
        name: &str,
        _sub: Option<&str>,
        object: Value,
        _opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        self.get(res, ns, name).await?;
        Ok(self.store(res, ns, object, WatchEventType::Modified))
    }

    async fn patch_with(
        &self,
        res: &'static ResourceKind,
        ns: Option<&str>,
        name: &str,
        _sub: Option<&str>,
        kind: PatchKind,
        patch: Value,
        _opts: &WriteOptions,
    ) -> Result<(Value, bool), ApiError> {
        let mut object = match (self.get(res, ns, name).await, &kind) {
            (Ok(object), _) => object,
            (Err(e), PatchKind::Apply { .. }) if e.is_not_found() => {
                return Ok((self.create(res, ns, patch).await?, true));
            }
            (Err(e), _) => return Err(e),
        };
        json_patch::merge(&mut object, &patch);
        Ok((self.store(res, ns, object, WatchEventType::Modified), false))
    }

    async fn delete_with(
        &self,
        res: &'static ResourceKind,
        ns: Option<&str>,
        name: &str,
        _opts: &DeleteOptions,
        _write: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let object = self
            .objects
            .lock()
            .unwrap()
            .1
            .remove(&Self::key(res, ns, name))
            .ok_or_else(|| ApiError::not_found(res, name))?;
        let _ = self.changes.send((res.plural, WatchEvent { kind: WatchEventType::Deleted, object: object.clone() }));
        Ok(object)
    }
}

/// Logs are the container name and the options, so a test sees what reached the kubelet side.
struct EchoLogs;

#[async_trait::async_trait]
impl PodStreams for EchoLogs {
    async fn logs(&self, namespace: &str, name: &str, _uid: &str, opts: &LogOptions) -> Result<ByteStream, ApiError> {
        let text = format!("log of {namespace}/{name}/{} tail={:?}\n", opts.container, opts.tail_lines);
        Ok(futures::stream::iter([Ok(bytes::Bytes::from(text))]).boxed())
    }

    /// `cat` copies stdin to stdout; `fail` writes to stderr and exits 3.
    async fn exec(
        &self,
        _namespace: &str,
        _name: &str,
        _uid: &str,
        opts: &skiff_api::ExecOptions,
        mut io: skiff_api::ExecIo,
    ) -> Result<i32, ApiError> {
        match opts.command[0].as_str() {
            "cat" => {
                let (mut stdin, stdout) = (io.stdin.take().unwrap(), io.stdout.take().unwrap());
                while let Some(chunk) = stdin.recv().await {
                    stdout.send(chunk).await.unwrap();
                }
                Ok(0)
            }
            "fail" => {
                io.stderr.take().unwrap().send(bytes::Bytes::from_static(b"bad things\n")).await.unwrap();
                Ok(3)
            }
            other => Err(ApiError::bad_request(format!("{other}: not found in the test double"))),
        }
    }

    /// Port 7 echoes until the client's end of input, then closes; nothing listens elsewhere.
    async fn port_forward(
        &self,
        _namespace: &str,
        _name: &str,
        _uid: &str,
        port: u16,
    ) -> Result<Box<dyn skiff_api::PortConnection>, ApiError> {
        if port != 7 {
            return Err(ApiError::internal(format!("dial tcp4 127.0.0.1:{port}: connect: connection refused")));
        }
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let (mut from, mut to) = tokio::io::split(theirs);
            let _ = tokio::io::copy(&mut from, &mut to).await;
            let _ = to.shutdown().await;
        });
        Ok(Box::new(ours))
    }
}

const TOKEN: &str = "test-token-0123456789";

/// A running server, its kubeconfig and a private HOME for kubectl's cache. Stops on drop.
struct Server {
    api: Arc<dyn ApiClient>,
    streams: Arc<OnceLock<Arc<dyn PodStreams>>>,
    dir: tempfile::TempDir,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn write_kubeconfig(path: &Path, port: u16, ca_pem: &str, token: &str) {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: skiff\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority-data: {ca}\nusers:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: skiff\n  context:\n    cluster: skiff\n    user: admin\n    namespace: default\ncurrent-context: skiff\n"
    );
    std::fs::write(path, config).unwrap();
}

impl Server {
    /// A server over the in-memory test double.
    async fn start() -> Server {
        Self::start_with(|_| MemoryApi::new() as Arc<dyn ApiClient>).await
    }

    /// A server over the real registry on a temp redb, bootstrapped as `skiff server` does.
    async fn start_registry() -> Server {
        let mut registry = None;
        let server = Self::start_with(|dir| {
            let r = crate::Registry::open(&dir.join("state.redb")).unwrap();
            registry = Some(r.clone());
            r as Arc<dyn ApiClient>
        })
        .await;
        registry.unwrap().bootstrap("10.43.0.1").await.unwrap();
        server
    }

    async fn start_with(make_api: impl FnOnce(&Path) -> Arc<dyn ApiClient>) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let tls = super::load_or_create_tls(&dir.path().join("tls"), &[]).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        write_kubeconfig(&dir.path().join("kubeconfig"), port, &tls.ca_pem, TOKEN);
        write_kubeconfig(&dir.path().join("bad-kubeconfig"), port, &tls.ca_pem, "wrong");
        let api = make_api(dir.path());
        let streams = Arc::new(OnceLock::new());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(super::serve(
            listener,
            tls.server_config,
            TOKEN.to_string(),
            api.clone(),
            streams.clone(),
            shutdown.clone(),
        ));
        let task = tokio::spawn(async move { task.await.unwrap().unwrap() });
        Server { api, streams, dir, shutdown, task: Some(task), port }
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// Runs kubectl; returns (success, stdout, stderr).
    async fn kubectl_with(&self, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        use tokio::io::AsyncWriteExt;
        let mut cmd = tokio::process::Command::new("/usr/bin/kubectl");
        cmd.arg("--kubeconfig").arg(kubeconfig).args(args).env("HOME", self.dir.path()).env_remove("KUBECONFIG");
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd.kill_on_drop(true);
        let mut child = cmd.spawn().expect("kubectl at /usr/bin/kubectl");
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).await.unwrap();
        }
        drop(input);
        let out = tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("kubectl finished within a minute")
            .unwrap();
        let (stdout, stderr) =
            (String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string());
        (out.status.success(), stdout, stderr)
    }

    async fn kubectl(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.kubectl_with(&self.kubeconfig(), args, None).await;
        assert!(ok, "kubectl {args:?} failed:\n{stdout}\n{stderr}");
        stdout
    }

    async fn seed(&self, plural: &str, ns: Option<&str>, object: Value) {
        let res = skiff_api::RESOURCES.iter().find(|r| r.plural == plural).unwrap();
        self.api.create(res, ns, object).await.unwrap();
    }
}

fn running_pod(name: &str, ns: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": ns, "labels": {"app": "web"}},
        "spec": {"nodeName": "node1", "containers": [{"name": "app", "image": "nginx"}]},
        "status": {"phase": "Running", "podIPs": [{"ip": "10.42.0.7"}],
                   "conditions": [{"type": "Ready", "status": "True"}],
                   "containerStatuses": [{"name": "app", "ready": true, "restartCount": 0, "image": "nginx", "imageID": "",
                                          "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]}})
}

fn header_and_rows(out: &str) -> Vec<Vec<String>> {
    out.lines().map(|l| l.split_whitespace().map(String::from).collect()).collect()
}

#[tokio::test]
async fn kubectl_version_and_api_resources_work_against_the_server() {
    let server = Server::start().await;
    let version: Value = serde_json::from_str(&server.kubectl(&["version", "-o", "json"]).await).unwrap();
    assert_eq!(version["serverVersion"]["gitVersion"], "v1.33.0+skiff");
    assert_eq!(version["serverVersion"]["minor"], "33");

    let resources = server.kubectl(&["api-resources"]).await;
    let pods = resources.lines().find(|l| l.starts_with("pods ")).expect("pods listed");
    assert_eq!(pods.split_whitespace().collect::<Vec<_>>(), ["pods", "po", "v1", "true", "Pod"]);
    let deploy = resources.lines().find(|l| l.starts_with("deployments ")).expect("deployments listed");
    assert_eq!(
        deploy.split_whitespace().collect::<Vec<_>>(),
        ["deployments", "deploy", "apps/v1", "true", "Deployment"]
    );
    assert!(resources.lines().any(|l| l.starts_with("nodes ") && l.contains("false")));
}

#[tokio::test]
async fn kubectl_get_prints_the_servers_tables() {
    let server = Server::start().await;
    server.seed("pods", Some("default"), running_pod("web-1", "default")).await;
    server.seed("pods", Some("other"), running_pod("web-2", "other")).await;

    let rows = header_and_rows(&server.kubectl(&["get", "pods"]).await);
    assert_eq!(rows[0], ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]);
    assert_eq!(rows[1][..4], ["web-1", "1/1", "Running", "0"]);
    assert_eq!(rows.len(), 2);

    let wide = header_and_rows(&server.kubectl(&["get", "pods", "-o", "wide"]).await);
    assert_eq!(
        wide[0],
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED", "NODE", "READINESS", "GATES"]
    );
    assert_eq!(wide[1][5..], ["10.42.0.7", "node1", "<none>", "<none>"]);

    let all = header_and_rows(&server.kubectl(&["get", "pods", "-A", "--show-labels"]).await);
    assert_eq!(all[0][0], "NAMESPACE");
    assert_eq!(all[0].last().unwrap(), "LABELS");
    assert!(all.iter().any(|r| r[..2] == ["other", "web-2"] && r.last().unwrap() == "app=web"));

    let one = header_and_rows(&server.kubectl(&["get", "pod", "web-1"]).await);
    assert_eq!((one.len(), one[1][0].as_str()), (2, "web-1"));
    let selected = header_and_rows(&server.kubectl(&["get", "pods", "-A", "-l", "app!=web"]).await);
    assert!(selected.is_empty(), "{selected:?}");

    let yaml = server.kubectl(&["get", "pod", "web-1", "-o", "yaml"]).await;
    assert!(yaml.contains("kind: Pod") && yaml.contains("name: web-1"), "{yaml}");
    let list: Value = serde_json::from_str(&server.kubectl(&["get", "pods", "-o", "json"]).await).unwrap();
    assert_eq!(list["items"][0]["kind"], "Pod");

    let (ok, _, stderr) = server.kubectl_with(&server.kubeconfig(), &["get", "pod", "nope"], None).await;
    assert!(!ok);
    assert!(stderr.contains("Error from server (NotFound): pods \"nope\" not found"), "{stderr}");
    let (ok, _, stderr) = server.kubectl_with(&server.kubeconfig(), &["get", "frobnicators"], None).await;
    assert!(!ok);
    assert!(stderr.contains("the server doesn't have a resource type \"frobnicators\""), "{stderr}");
}

#[tokio::test]
async fn kubectl_apply_creates_with_strict_validation_and_delete_removes() {
    let server = Server::start().await;
    let manifest = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  a: b\n";
    let out = server.kubectl_with(&server.kubeconfig(), &["apply", "-f", "-"], Some(manifest)).await;
    assert!(out.0, "{out:?}");
    assert!(out.1.contains("configmap/settings created"), "{out:?}");
    let rows = header_and_rows(&server.kubectl(&["get", "configmaps"]).await);
    assert_eq!(rows[0], ["NAME", "DATA", "AGE"]);
    assert_eq!(rows[1][..2], ["settings", "1"]);

    let typo = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: typo\ndata:\n  a: b\ndatta:\n  c: d\n";
    let (ok, _, stderr) = server.kubectl_with(&server.kubeconfig(), &["apply", "-f", "-"], Some(typo)).await;
    assert!(!ok);
    assert!(stderr.contains("strict decoding error: unknown field \"datta\""), "{stderr}");

    let ssa = server
        .kubectl_with(
            &server.kubeconfig(),
            &["apply", "--server-side", "-f", "-"],
            Some(&manifest.replace("settings", "ssa")),
        )
        .await;
    assert!(ssa.0 && ssa.1.contains("configmap/ssa serverside-applied"), "{ssa:?}");

    let deleted = server.kubectl(&["delete", "configmap", "settings"]).await;
    assert!(deleted.contains("configmap \"settings\" deleted"), "{deleted}");
    let cms = skiff_api::ResourceKind::by_plural("", "v1", "configmaps").unwrap();
    assert!(server.api.get(cms, Some("default"), "settings").await.unwrap_err().is_not_found());
}

#[tokio::test]
async fn kubectl_logs_reaches_pod_streams_once_they_are_wired() {
    let server = Server::start().await;
    server.seed("pods", Some("default"), running_pod("web-1", "default")).await;
    let (ok, _, stderr) = server.kubectl_with(&server.kubeconfig(), &["logs", "web-1"], None).await;
    assert!(!ok);
    assert!(stderr.contains("the kubelet is not ready to serve logs yet"), "{stderr}");
    let _ = server.streams.set(Arc::new(EchoLogs));
    let out = server.kubectl(&["logs", "web-1", "--tail=5"]).await;
    assert_eq!(out, "log of default/web-1/app tail=Some(5)\n");
}

#[tokio::test]
async fn watch_streams_one_json_event_per_line_until_its_timeout() {
    let server = Server::start().await;
    server.seed("pods", Some("default"), running_pod("web-1", "default")).await;
    let out = server.kubectl(&["get", "--raw", "/api/v1/namespaces/default/pods?watch=true&timeoutSeconds=1"]).await;
    let events: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "ADDED");
    assert_eq!(events[0]["object"]["metadata"]["name"], "web-1");
}

#[tokio::test]
async fn a_wrong_token_is_refused_but_health_checks_are_open() {
    let server = Server::start().await;
    let bad = server.dir.path().join("bad-kubeconfig");
    let (ok, _, stderr) = server.kubectl_with(&bad, &["get", "pods"], None).await;
    assert!(!ok);
    assert!(stderr.contains("You must be logged in to the server"), "{stderr}");
    let (ok, stdout, _) = server.kubectl_with(&bad, &["get", "--raw", "/readyz"], None).await;
    assert!(ok);
    assert_eq!(stdout, "ok");
    let (ok, _, stderr) = server.kubectl_with(&server.kubeconfig(), &["get", "--raw", "/openapi/v2"], None).await;
    assert!(!ok, "{stderr}");
    assert!(server.port > 0);
}

#[tokio::test]
async fn kubectl_explain_finds_kinds_in_openapi_v3() {
    let server = Server::start().await;
    let out = server.kubectl(&["explain", "deployments"]).await;
    assert!(out.contains("KIND:") && out.contains("Deployment"), "{out}");
    let out = server.kubectl(&["explain", "pods.spec.containers.image"]).await;
    assert!(out.contains("FIELD: image <string>") && out.contains("Container image name"), "{out}");
    let out = server.kubectl(&["explain", "deployment.spec", "--recursive"]).await;
    assert!(out.contains("revisionHistoryLimit") && out.contains("containers"), "{out}");
}

// ---- Against the real registry ----

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels:
    tier: web
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: app
        image: nginx:1.27
        ports:
        - containerPort: 80
";

#[tokio::test]
async fn kubectl_apply_configure_scale_and_delete_a_deployment_through_the_registry() {
    let server = Server::start_registry().await;
    let apply = |manifest: String| {
        let server = &server;
        async move { server.kubectl_with(&server.kubeconfig(), &["apply", "-f", "-"], Some(&manifest)).await }
    };
    let out = apply(DEPLOYMENT.to_string()).await;
    assert!(out.0 && out.1.contains("deployment.apps/web created"), "{out:?}");
    let out = apply(DEPLOYMENT.to_string()).await;
    assert!(out.0 && out.1.contains("deployment.apps/web unchanged"), "{out:?}");
    let out = apply(DEPLOYMENT.replace("nginx:1.27", "nginx:1.28")).await;
    assert!(out.0 && out.1.contains("deployment.apps/web configured"), "{out:?}");
    let image =
        server.kubectl(&["get", "deploy", "web", "-o", "jsonpath={.spec.template.spec.containers[0].image}"]).await;
    assert_eq!(image, "nginx:1.28");

    let rows = header_and_rows(&server.kubectl(&["get", "deployments"]).await);
    assert_eq!(rows[0], ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]);
    assert_eq!(rows[1][..4], ["web", "0/2", "0", "0"]);

    let scaled = server.kubectl(&["scale", "deployment", "web", "--replicas=3"]).await;
    assert!(scaled.contains("deployment.apps/web scaled"), "{scaled}");
    let replicas = server.kubectl(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]).await;
    assert_eq!(replicas, "3");

    let typo = DEPLOYMENT.replace("  replicas: 2", "  replicas: 2\n  replicaz: 3");
    let (ok, _, stderr) = apply(typo).await;
    assert!(!ok);
    assert!(stderr.contains("unknown field \"spec.replicaz\""), "{stderr}");

    let deleted = server.kubectl(&["delete", "deployment", "web"]).await;
    assert!(deleted.contains("deployment.apps \"web\" deleted"), "{deleted}");
    let (ok, _, stderr) = server.kubectl_with(&server.kubeconfig(), &["get", "deployment", "web"], None).await;
    assert!(!ok && stderr.contains("NotFound"), "{stderr}");
}

#[tokio::test]
async fn server_side_apply_creates_then_updates_and_tables_show_services_and_namespaces() {
    let server = Server::start_registry().await;
    let svc = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector:\n    app: web\n  ports:\n  - port: 80\n";
    let args = ["apply", "--server-side", "-f", "-"];
    let out = server.kubectl_with(&server.kubeconfig(), &args, Some(svc)).await;
    assert!(out.0 && out.1.contains("service/web serverside-applied"), "{out:?}");
    let relabelled = svc.replace("  name: web\n", "  name: web\n  labels:\n    tier: front\n");
    let out = server.kubectl_with(&server.kubeconfig(), &args, Some(&relabelled)).await;
    assert!(out.0 && out.1.contains("service/web serverside-applied"), "{out:?}");
    let tier = server.kubectl(&["get", "svc", "web", "-o", "jsonpath={.metadata.labels.tier}"]).await;
    assert_eq!(tier, "front");

    let rows = header_and_rows(&server.kubectl(&["get", "services", "-o", "wide"]).await);
    assert_eq!(rows[0], ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE", "SELECTOR"]);
    let kubernetes = rows.iter().find(|r| r[0] == "kubernetes").unwrap();
    assert_eq!(kubernetes[1..5], ["ClusterIP", "10.43.0.1", "<none>", "443/TCP"]);
    let web = rows.iter().find(|r| r[0] == "web").unwrap();
    assert_eq!((web[4].as_str(), web[6].as_str()), ("80/TCP", "app=web"));
    assert!(web[2].starts_with("10.43."), "{web:?}");

    let rows = header_and_rows(&server.kubectl(&["get", "namespaces"]).await);
    assert_eq!(rows[0], ["NAME", "STATUS", "AGE"]);
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(rows.iter().any(|r| r[..2] == [ns, "Active"]), "{ns} in {rows:?}");
    }
}

#[tokio::test]
async fn kubectl_run_then_get_describe_and_delete_a_pending_pod() {
    let server = Server::start_registry().await;
    let out = server.kubectl(&["run", "web", "--image=nginx", "--labels=app=web"]).await;
    assert!(out.contains("pod/web created"), "{out}");
    let rows = header_and_rows(&server.kubectl(&["get", "pods"]).await);
    assert_eq!(rows[1][..4], ["web", "0/1", "Pending", "0"]);
    let described = server.kubectl(&["describe", "pod", "web"]).await;
    assert!(described.contains("Name:") && described.contains("web") && described.contains("nginx"), "{described}");
    let deleted = server.kubectl(&["delete", "pod", "web", "--wait=false"]).await;
    assert!(deleted.contains("pod \"web\" deleted"), "{deleted}");
}

#[tokio::test]
async fn kubectl_get_watch_prints_rows_as_objects_change() {
    use tokio::io::AsyncBufReadExt;
    let server = Server::start_registry().await;
    let mut child = tokio::process::Command::new("/usr/bin/kubectl")
        .arg("--kubeconfig")
        .arg(server.kubeconfig())
        .args(["get", "configmaps", "-w"])
        .env("HOME", server.dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let cms = ResourceKind::by_plural("", "v1", "configmaps").unwrap();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    for name in ["first", "second"] {
        // Created after kubectl is already watching (it printed the header or a row before).
        if name == "second" {
            server
                .api
                .create(cms, Some("default"), json!({"metadata": {"name": name}, "data": {"k": "v"}}))
                .await
                .unwrap();
        } else {
            server.api.create(cms, Some("default"), json!({"metadata": {"name": name}})).await.unwrap();
        }
        loop {
            let line = tokio::time::timeout_at(deadline, lines.next_line())
                .await
                .expect("kubectl printed in time")
                .unwrap()
                .unwrap();
            seen.push(line.clone());
            if line.starts_with(name) {
                break;
            }
        }
    }
    let rows = header_and_rows(&seen.join("\n"));
    assert_eq!(rows[0], ["NAME", "DATA", "AGE"], "{seen:?}");
    assert!(rows.iter().any(|r| r[..2] == ["second", "1"]), "{seen:?}");
    child.kill().await.unwrap();
}

#[tokio::test]
async fn kubectl_create_secret_and_configmap_send_protobuf_that_the_server_decodes() {
    let server = Server::start_registry().await;
    let out = server.kubectl(&["create", "secret", "generic", "s", "--from-literal=a=b"]).await;
    assert!(out.contains("secret/s created"), "{out}");
    let out = server.kubectl(&["create", "configmap", "c", "--from-literal=k=v", "--from-literal=x="]).await;
    assert!(out.contains("configmap/c created"), "{out}");
    let out = server
        .kubectl(&[
            "create",
            "secret",
            "docker-registry",
            "reg",
            "--docker-server=r.example",
            "--docker-username=u",
            "--docker-password=p",
        ])
        .await;
    assert!(out.contains("secret/reg created"), "{out}");

    assert_eq!(server.kubectl(&["get", "secret", "s", "-o", "jsonpath={.data.a}"]).await, "Yg==");
    let data: Value =
        serde_json::from_str(&server.kubectl(&["get", "configmap", "c", "-o", "jsonpath={.data}"]).await).unwrap();
    assert_eq!(data, json!({"k": "v", "x": ""}));
    let rows = header_and_rows(&server.kubectl(&["get", "secrets"]).await);
    assert_eq!(rows[0], ["NAME", "TYPE", "DATA", "AGE"]);
    assert!(rows.iter().any(|r| r[..3] == ["s", "Opaque", "1"]), "{rows:?}");
    assert!(rows.iter().any(|r| r[..3] == ["reg", "kubernetes.io/dockerconfigjson", "1"]), "{rows:?}");

    let (ok, _, stderr) = server
        .kubectl_with(&server.kubeconfig(), &["create", "secret", "generic", "s", "--from-literal=a=c"], None)
        .await;
    assert!(!ok && stderr.contains("already exists"), "{stderr}");
}

#[tokio::test]
async fn shutdown_ends_open_watches_and_serve_returns() {
    let dir = tempfile::tempdir().unwrap();
    let tls = super::load_or_create_tls(dir.path(), &[]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let kubeconfig = dir.path().join("kubeconfig");
    write_kubeconfig(&kubeconfig, port, &tls.ca_pem, TOKEN);
    let shutdown = CancellationToken::new();
    let api: Arc<dyn ApiClient> = MemoryApi::new();
    let serve = tokio::spawn(super::serve(
        listener,
        tls.server_config,
        TOKEN.to_string(),
        api,
        Arc::new(OnceLock::new()),
        shutdown.clone(),
    ));
    let mut watcher = tokio::process::Command::new("/usr/bin/kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["get", "--raw", "/api/v1/namespaces/default/configmaps?watch=true"])
        .env("HOME", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Let the watch get established before stopping.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(watcher.try_wait().unwrap().is_none(), "the watch is still open before shutdown");
    shutdown.cancel();
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(8), serve).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "serve returned after shutdown: {stopped:?}");
    let exited = tokio::time::timeout(std::time::Duration::from_secs(8), watcher.wait()).await;
    assert!(exited.is_ok(), "kubectl's watch ended with the server");
}

#[tokio::test]
async fn kubectl_exec_pipes_stdin_and_output_and_reports_the_exit_code() {
    let server = Server::start().await;
    server.seed("pods", Some("default"), running_pod("web-1", "default")).await;
    let _ = server.streams.set(Arc::new(EchoLogs));
    let (ok, stdout, stderr) =
        server.kubectl_with(&server.kubeconfig(), &["exec", "-i", "web-1", "--", "cat"], Some("hello\nworld\n")).await;
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "hello\nworld\n");

    let mut cmd = tokio::process::Command::new("/usr/bin/kubectl");
    cmd.arg("--kubeconfig")
        .arg(server.kubeconfig())
        .args(["exec", "web-1", "--", "fail"])
        .env("HOME", server.dir.path());
    let out = cmd.output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("bad things") && stderr.contains("command terminated with exit code 3"), "{stderr}");

    let (ok, _, stderr) =
        server.kubectl_with(&server.kubeconfig(), &["exec", "web-1", "-c", "nope", "--", "cat"], None).await;
    assert!(!ok && stderr.contains("container nope is not valid for pod web-1"), "{stderr}");
}

/// /usr/bin/kubectl dispatches to the client matching the server (1.33), which sends most
/// `create <generator>` bodies as protobuf.
#[tokio::test]
async fn kubectl_create_generators_work_through_protobuf_bodies() {
    let server = Server::start_registry().await;
    for (args, created) in [
        (&["create", "namespace", "team"][..], "namespace/team created"),
        (
            &["create", "deployment", "web", "--image=nginx:1.27", "--replicas=2", "--port=80"],
            "deployment.apps/web created",
        ),
        (&["create", "service", "clusterip", "web", "--tcp=80:8080"], "service/web created"),
        (&["create", "job", "once", "--image=busybox", "--", "echo", "hi"], "job.batch/once created"),
        (&["create", "cronjob", "tick", "--image=busybox", "--schedule=*/5 * * * *"], "cronjob.batch/tick created"),
        (&["create", "serviceaccount", "robot"], "serviceaccount/robot created"),
    ] {
        let out = server.kubectl(args).await;
        assert!(out.contains(created), "{args:?}: {out}");
    }
    let deploy: Value = serde_json::from_str(&server.kubectl(&["get", "deploy", "web", "-o", "json"]).await).unwrap();
    assert_eq!(deploy["spec"]["replicas"], 2);
    assert_eq!(deploy["spec"]["template"]["spec"]["containers"][0]["image"], "nginx:1.27");
    assert_eq!(deploy["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"], 80);
    let svc: Value = serde_json::from_str(&server.kubectl(&["get", "svc", "web", "-o", "json"]).await).unwrap();
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);
    let job: Value = serde_json::from_str(&server.kubectl(&["get", "job", "once", "-o", "json"]).await).unwrap();
    assert_eq!(job["spec"]["template"]["spec"]["containers"][0]["command"], json!(["echo", "hi"]));
    let cj = server.kubectl(&["get", "cronjob", "tick", "-o", "jsonpath={.spec.schedule}"]).await;
    assert_eq!(cj, "*/5 * * * *");
}

#[tokio::test]
async fn bodies_over_three_mebibytes_are_refused_with_413() {
    let server = Server::start().await;
    let big = server.dir.path().join("big.txt");
    std::fs::write(&big, "x".repeat(4 * 1024 * 1024)).unwrap();
    let from_file = format!("--from-file={}", big.display());
    let (ok, _, stderr) =
        server.kubectl_with(&server.kubeconfig(), &["create", "configmap", "big", &from_file], None).await;
    assert!(!ok);
    assert!(stderr.contains("RequestEntityTooLarge") || stderr.contains("larger than the 3 MiB limit"), "{stderr}");
}

/// `kubectl port-forward pod/web-1 :PORT` with the transport chosen by `websockets`; returns
/// kubectl and the local port it printed.
async fn port_forward(server: &Server, port: u16, websockets: bool) -> (tokio::process::Child, u16) {
    use tokio::io::AsyncBufReadExt;
    let mut cmd = tokio::process::Command::new("/usr/bin/kubectl");
    cmd.arg("--kubeconfig")
        .arg(server.kubeconfig())
        .args(["port-forward", "--address", "127.0.0.1", "pod/web-1", &format!(":{port}")])
        .env("HOME", server.dir.path())
        .env("KUBECTL_PORT_FORWARD_WEBSOCKETS", websockets.to_string())
        .env_remove("KUBECONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("kubectl at /usr/bin/kubectl");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let suffix = format!(" -> {port}");
    let local = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(local) = line.strip_prefix("Forwarding from 127.0.0.1:").and_then(|l| l.strip_suffix(&suffix)) {
                return local.parse::<u16>().unwrap();
            }
        }
        panic!("kubectl port-forward ended before forwarding");
    })
    .await
    .expect("kubectl port-forward started within 30 s");
    // Later lines ("Handling connection for …") must not fill the pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, local)
}

#[tokio::test]
async fn kubectl_port_forward_carries_connections_over_both_transports() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::start().await;
    server.seed("pods", Some("default"), running_pod("web-1", "default")).await;
    let _ = server.streams.set(Arc::new(EchoLogs));
    for websockets in [true, false] {
        let (mut kubectl, local) = port_forward(&server, 7, websockets).await;
        for attempt in 0..2 {
            let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", local)).await.unwrap();
            let sent = format!("attempt {attempt} over websockets={websockets}\n").repeat(2000);
            conn.write_all(sent.as_bytes()).await.unwrap();
            // The half-close travels as FIN; the echo ends after it, and so does our read.
            conn.shutdown().await.unwrap();
            let mut echoed = String::new();
            tokio::time::timeout(std::time::Duration::from_secs(30), conn.read_to_string(&mut echoed))
                .await
                .expect("the echo ends after the client's FIN")
                .unwrap();
            assert!(echoed == sent, "websockets={websockets}: {} of {} bytes came back", echoed.len(), sent.len());
        }
        kubectl.start_kill().unwrap();
        let _ = kubectl.wait().await;

        // A refused port: the error reaches kubectl as text and the local connection closes.
        let (kubectl, local) = port_forward(&server, 9, websockets).await;
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", local)).await.unwrap();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(std::time::Duration::from_secs(30), conn.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "websockets={websockets}: the local connection to a refused port is closed");
        let out = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            let mut kubectl = kubectl;
            // kubectl gives up after the error; it is killed if it does not.
            if tokio::time::timeout(std::time::Duration::from_secs(10), kubectl.wait()).await.is_err() {
                kubectl.start_kill().unwrap();
            }
            kubectl.wait_with_output().await.unwrap()
        })
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("an error occurred forwarding {local} -> 9"))
                && stderr.contains("error forwarding port 9 to pod web-1")
                && stderr.contains("connect: connection refused"),
            "websockets={websockets}: {stderr}"
        );
    }
}

#[tokio::test]
async fn kubectl_exec_falls_back_to_spdy_with_the_same_streams_and_exit_code() {
    let server = Server::start().await;
    server.seed("pods", Some("default"), running_pod("web-1", "default")).await;
    let _ = server.streams.set(Arc::new(EchoLogs));
    let kubectl = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new("/usr/bin/kubectl");
        cmd.arg("--kubeconfig")
            .arg(server.kubeconfig())
            .args(args)
            .env("HOME", server.dir.path())
            .env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")
            .env_remove("KUBECONFIG")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        cmd.spawn().expect("kubectl at /usr/bin/kubectl")
    };
    let mut cat = kubectl(&["exec", "-i", "web-1", "-v=6", "--", "cat"]);
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = cat.stdin.take().unwrap();
        stdin.write_all(b"over spdy\n").await.unwrap();
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), cat.wait_with_output()).await.unwrap().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "over spdy\n");
    assert!(log.contains(r#"verb="POST""#) && log.contains("101 Switching Protocols"), "went over SPDY: {log}");

    let fail = kubectl(&["exec", "web-1", "--", "fail"]);
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), fail.wait_with_output()).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("bad things") && stderr.contains("command terminated with exit code 3"), "{stderr}");

    let missing = kubectl(&["exec", "web-1", "--", "nope"]);
    let out =
        tokio::time::timeout(std::time::Duration::from_secs(30), missing.wait_with_output()).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("nope: not found in the test double"), "{stderr}");
}

#[tokio::test]
async fn shutdown_ends_open_port_forwards_on_both_transports() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for websockets in [true, false] {
        let server = Server::start().await;
        server.seed("pods", Some("default"), running_pod("web-1", "default")).await;
        let _ = server.streams.set(Arc::new(EchoLogs));
        let (mut kubectl, local) = port_forward(&server, 7, websockets).await;
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", local)).await.unwrap();
        conn.write_all(b"x").await.unwrap();
        let mut echoed = [0u8; 1];
        conn.read_exact(&mut echoed).await.unwrap();
        server.shutdown.cancel();
        let mut rest = Vec::new();
        let ended = tokio::time::timeout(std::time::Duration::from_secs(10), conn.read_to_end(&mut rest)).await;
        assert!(ended.is_ok(), "websockets={websockets}: the forwarded connection ends with the server");
        let exited = tokio::time::timeout(std::time::Duration::from_secs(10), kubectl.wait()).await;
        assert!(exited.is_ok(), "websockets={websockets}: kubectl port-forward ends with the server");
    }
}
