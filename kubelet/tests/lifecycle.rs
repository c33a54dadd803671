//! The kubelet end to end below the HTTP layer: the real API server core on a temp redb, the real
//! runtime (namespaces, overlay, cgroups; root required) and a local registry with a busybox
//! image. Pods are created with `spec.nodeName` set, as the scheduler would bind them.
//!
//! This file has its own `main` (`harness = false`): the runtime starts each container through
//! `<shim_exe> shim container DIR`, and this test binary is its own shim, so no other binary has
//! to be built first. The tests share one fixture and run in order; the fixture's guard stops the
//! kubelet and removes every container, sandbox and cgroup it made, also when a test fails.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Event, Pod};
use serde_json::json;
use skiff_api::{Api, ApiClient, DeleteOptions, ListOptions, LogOptions, PodStreams};
use skiff_kubelet::logs::rotation::LogRotation;
use skiff_kubelet::{Kubelet, KubeletConfig};
use skiff_runtime::network::{Ipv4Cidr, NetworkConfig};
use skiff_runtime::testing::{LocalRegistry, build_busybox_image, push};
use skiff_runtime::{CgroupManager, Runtime, RuntimeConfig, SandboxSpec};
use tokio_util::sync::CancellationToken;

// The pods here opt out of the API credentials volume: these tests run the registry and the
// kubelet only, without the token issuer, the namespace's `default` ServiceAccount and the
// `kube-root-ca.crt` ConfigMap that `skiff server` provides (tests/service_account_tokens.rs).
const NODE: &str = "node1";
/// The fixture kubelet's `containerLogMaxSize`.
const ROTATE_AT: u64 = 1024 * 1024;

fn bridge_name() -> String {
    format!("skkl{}", std::process::id() % 100_000)
}

struct Fixture {
    client: Arc<dyn ApiClient>,
    runtime: Arc<Runtime>,
    kubelet: Arc<Kubelet>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    image: String,
    root: PathBuf,
    cgroup_root: String,
    _registry: LocalRegistry,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn new() -> Fixture {
        let dir = tempfile::Builder::new().prefix("skiff-kubelet-").tempdir().unwrap();
        let registry = skiff_apiserver::Registry::open(&dir.path().join("state.redb")).unwrap();
        registry.bootstrap("10.43.0.1").await.unwrap();
        let client: Arc<dyn ApiClient> = registry;
        let oci = build_busybox_image(&dir.path().join("oci")).unwrap();
        let local = LocalRegistry::start().expect("docker-registry (scripts/test.sh installs it)");
        let image = push(&local, "busybox:1", &oci).await.expect("push busybox");
        let cgroup_root = format!("skiff-kubelet-test-{}", std::process::id());
        // A pod network of the test's own (bridge, /24), so probes reach pod IPs from the node.
        let network = NetworkConfig {
            bridge: bridge_name(),
            cidr: Ipv4Cidr::parse(&format!("10.245.{}.0/24", std::process::id() % 250)).unwrap(),
            state_dir: dir.path().join("runtime").join("network"),
        };
        let runtime = Arc::new(
            Runtime::new(RuntimeConfig {
                root: dir.path().join("runtime"),
                shim_exe: std::env::current_exe().unwrap(),
                cgroup_root: cgroup_root.clone(),
            })
            .expect("runtime on this host (root)")
            .with_network(network)
            .expect("the test's pod network"),
        );
        let root = dir.path().join("kubelet");
        let kubelet =
            Kubelet::new(KubeletConfig { node_name: NODE.into(), root: root.clone() }, client.clone(), runtime.clone());
        // Small enough for a test to fill; Kubernetes' default is 10Mi.
        kubelet.set_log_rotation(LogRotation { max_size: ROTATE_AT, max_files: 3 });
        let stop = CancellationToken::new();
        let task = Some(tokio::spawn(kubelet.clone().run(stop.clone())));
        Fixture { client, runtime, kubelet, stop, task, image, root, cgroup_root, _registry: local, _dir: dir }
    }

    /// Stops the kubelet (containers keep running) and starts a new one on the same state.
    async fn restart_kubelet(&mut self) {
        self.stop.cancel();
        self.task.take().unwrap().await.unwrap();
        self.kubelet = Kubelet::new(
            KubeletConfig { node_name: NODE.into(), root: self.root.clone() },
            self.client.clone(),
            self.runtime.clone(),
        );
        self.kubelet.set_log_rotation(LogRotation { max_size: ROTATE_AT, max_files: 3 });
        self.stop = CancellationToken::new();
        self.task = Some(tokio::spawn(self.kubelet.clone().run(self.stop.clone())));
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), "default")
    }

    async fn create(&self, name: &str, policy: &str, containers: serde_json::Value) -> Pod {
        self.create_with_init(name, policy, json!([]), containers).await
    }

    async fn create_with_init(
        &self,
        name: &str,
        policy: &str,
        init: serde_json::Value,
        containers: serde_json::Value,
    ) -> Pod {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"nodeName": NODE, "automountServiceAccountToken": false, "restartPolicy": policy, "terminationGracePeriodSeconds": 2,
                     "initContainers": init, "containers": containers},
        }))
        .unwrap();
        self.pods().create(&pod).await.unwrap()
    }

    /// Polls the pod until `check` accepts it (30 s at most).
    async fn wait_pod(&self, name: &str, what: &str, check: impl Fn(&Pod) -> bool) -> Pod {
        let mut last = None;
        for _ in 0..300 {
            match self.pods().get_opt(name).await.unwrap() {
                Some(pod) if check(&pod) => return pod,
                other => last = other,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("pod {name}: timed out waiting for {what}; last seen: {:#?}", last.map(|p| p.status));
    }

    async fn wait_gone(&self, name: &str) {
        for _ in 0..300 {
            if self.pods().get_opt(name).await.unwrap().is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("pod {name} was not deleted");
    }

    async fn events(&self, pod: &str) -> Vec<Event> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), "default");
        events.list(&ListOptions::fields(format!("involvedObject.name={pod}"))).await.unwrap().0
    }

    async fn logs(&self, pod: &Pod, opts: LogOptions) -> Result<String, skiff_api::ApiError> {
        let meta = &pod.metadata;
        let mut stream =
            self.kubelet.logs("default", meta.name.as_deref().unwrap(), meta.uid.as_deref().unwrap(), &opts).await?;
        let mut out = Vec::new();
        while let Some(chunk) =
            tokio::time::timeout(Duration::from_secs(20), stream.next()).await.expect("log stream stalled")
        {
            out.extend_from_slice(&chunk.unwrap());
        }
        Ok(String::from_utf8(out).unwrap())
    }

    fn sandbox_containers(&self, uid: &str) -> usize {
        self.runtime.list_containers().unwrap().iter().filter(|c| c.sandbox_id == uid).count()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop.cancel();
        let runtime = self.runtime.clone();
        let cgroup_root = self.cgroup_root.clone();
        // Drop may run inside the tokio runtime, which cannot block: clean up on a thread.
        std::thread::spawn(move || {
            let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            tokio.block_on(async {
                for c in runtime.list_containers().unwrap_or_default() {
                    let _ = runtime.stop_container(&c.id, Duration::ZERO).await;
                    let _ = runtime.remove_container(&c.id).await;
                }
                for s in runtime.list_sandboxes().unwrap_or_default() {
                    let _ = runtime.remove_sandbox(&s).await;
                }
                if let Some(net) = runtime.network() {
                    let _ = net.remove_bridge().await;
                }
            });
            let bridge = bridge_name();
            if std::path::Path::new("/sys/class/net").join(&bridge).exists() {
                let _ = std::process::Command::new("ip").args(["link", "del", &bridge]).status();
            }
            if let Ok(m) = CgroupManager::detect(&cgroup_root) {
                let _ = m.kill_and_remove(std::path::Path::new(&cgroup_root), Duration::from_secs(10));
            }
        })
        .join()
        .unwrap();
    }
}

fn status(pod: &Pod) -> &k8s_openapi::api::core::v1::PodStatus {
    pod.status.as_ref().unwrap()
}

fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

fn container_status(pod: &Pod, i: usize) -> k8s_openapi::api::core::v1::ContainerStatus {
    try_container_status(pod, i).expect("a container status")
}

fn try_container_status(pod: &Pod, i: usize) -> Option<k8s_openapi::api::core::v1::ContainerStatus> {
    pod.status.as_ref()?.container_statuses.as_ref()?.get(i).cloned()
}

fn waiting_reason(pod: &Pod) -> Option<String> {
    let cs = pod.status.as_ref()?.container_statuses.as_ref()?.first()?.clone();
    cs.state?.waiting?.reason
}

fn reasons(events: &[Event]) -> Vec<String> {
    events.iter().filter_map(|e| e.reason.clone()).collect()
}

fn opts(container: &str) -> LogOptions {
    LogOptions { container: container.into(), ..Default::default() }
}

async fn pod_runs_to_completion_with_status_events_and_logs(f: &mut Fixture) {
    let pod = f
        .create_with_init(
            "hello",
            "Never",
            json!([{"name": "setup", "image": f.image, "command": ["sh", "-c", "echo setting up"]}]),
            json!([{"name": "app", "image": f.image, "command": ["sh", "-c"],
                    "args": ["echo hello $(WHO); echo oops >&2"], "env": [{"name": "WHO", "value": "skiff"}]}]),
        )
        .await;
    let done = f.wait_pod("hello", "Succeeded", |p| phase(p) == "Succeeded").await;
    let cs = container_status(&done, 0);
    let t = cs.state.clone().unwrap().terminated.expect("terminated state");
    assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")));
    assert!(cs.container_id.as_deref().unwrap().starts_with("skiff://"));
    assert_eq!(cs.container_id.as_deref().unwrap().len(), "skiff://".len() + 64);
    assert!(cs.image_id.contains("@sha256:"), "imageID {}", cs.image_id);
    assert_eq!((cs.ready, cs.restart_count), (false, 0));
    let conditions = status(&done).conditions.clone().unwrap();
    let ready = conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!((ready.status.as_str(), ready.reason.as_deref()), ("False", Some("PodCompleted")));
    assert!(status(&done).start_time.is_some());
    let init = status(&done).init_container_statuses.clone().unwrap();
    let init_done = init[0].state.clone().unwrap().terminated.unwrap();
    assert_eq!((init_done.exit_code, init_done.reason.as_deref(), init[0].ready), (0, Some("Completed"), true));
    assert!(init_done.finished_at.unwrap().0 <= t.started_at.unwrap().0, "init ran before the app");
    assert_eq!(f.logs(&done, opts("setup")).await.unwrap(), "setting up\n");
    assert!(status(&done).host_ip.is_some());

    let events = f.events("hello").await;
    let seen = reasons(&events);
    for want in ["Pulled", "Created", "Started"] {
        assert!(seen.iter().any(|r| r == want), "{want} in {seen:?}");
    }
    let image = &f.image;
    let pulled = events.iter().filter_map(|e| e.message.clone()).filter(|m| m.contains("image")).collect::<Vec<_>>();
    assert!(
        pulled.iter().all(|m| m.starts_with(&format!("Successfully pulled image \"{image}\" in "))
            && m.contains(" including waiting). Image size: ")
            && m.ends_with(" bytes.")
            || m == &format!("Container image \"{image}\" already present on machine")
            || m == &format!("Pulling image \"{image}\"")),
        "{pulled:#?}"
    );
    let started = |c: &str| {
        events
            .iter()
            .find(|e| e.reason.as_deref() == Some("Started") && e.message == Some(format!("Started container {c}")))
            .unwrap_or_else(|| panic!("Started event of {c}"))
    };
    assert_eq!(started("app").involved_object.field_path.as_deref(), Some("spec.containers{app}"));
    assert_eq!(started("setup").involved_object.field_path.as_deref(), Some("spec.initContainers{setup}"));
    let started = started("app");
    assert_eq!(started.source.as_ref().unwrap().component.as_deref(), Some("kubelet"));

    assert_eq!(f.logs(&done, opts("app")).await.unwrap(), "hello skiff\noops\n");
    let stamped = f.logs(&done, LogOptions { timestamps: true, tail_lines: Some(1), ..opts("app") }).await.unwrap();
    assert!(stamped.ends_with(" oops\n") && stamped.starts_with("20"), "{stamped:?}");
    let err = f.logs(&done, LogOptions { previous: true, ..opts("app") }).await.unwrap_err();
    assert_eq!(err.message, "previous terminated container \"app\" in pod \"hello\" not found");
    // Cleanup follows the final status write.
    let uid = pod.metadata.uid.as_deref().unwrap();
    for _ in 0..50 {
        if f.sandbox_containers(uid) == 0 && !f.runtime.list_sandboxes().unwrap().iter().any(|s| s == uid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(f.sandbox_containers(uid), 0, "a finished pod keeps no containers");
    assert!(!f.runtime.list_sandboxes().unwrap().iter().any(|s| s == uid), "nor its sandbox");

    f.pods().delete("hello", &DeleteOptions::default()).await.unwrap();
    f.wait_gone("hello").await;
}

async fn failing_container_restarts_with_back_off_and_keeps_previous_logs(f: &mut Fixture) {
    f.create(
        "crash",
        "Always",
        json!([{"name": "app", "image": f.image, "command": ["sh", "-c", "echo run; exit 3"]}]),
    )
    .await;
    let pod =
        f.wait_pod("crash", "CrashLoopBackOff", |p| waiting_reason(p).as_deref() == Some("CrashLoopBackOff")).await;
    let cs = container_status(&pod, 0);
    assert!(cs.restart_count >= 1, "restartCount {}", cs.restart_count);
    let last = cs.last_state.unwrap().terminated.unwrap();
    assert_eq!((last.exit_code, last.reason.as_deref()), (3, Some("Error")));
    assert_eq!(phase(&pod), "Running");
    let message = cs.state.unwrap().waiting.unwrap().message.unwrap();
    assert!(message.starts_with("back-off 10s restarting failed container=app pod=crash_default("), "{message}");
    assert_eq!(f.logs(&pod, opts("app")).await.unwrap(), "run\n");
    assert_eq!(f.logs(&pod, LogOptions { previous: true, ..opts("app") }).await.unwrap(), "run\n");
    assert!(reasons(&f.events("crash").await).iter().any(|r| r == "BackOff"));
    f.pods().delete("crash", &DeleteOptions::default()).await.unwrap();
    f.wait_gone("crash").await;
}

async fn deleting_a_running_pod_kills_it_after_the_grace_period_and_removes_it(f: &mut Fixture) {
    let pod =
        f.create("sleeper", "Always", json!([{"name": "app", "image": f.image, "command": ["sleep", "3600"]}])).await;
    let running = f.wait_pod("sleeper", "Running", |p| phase(p) == "Running").await;
    let cs = container_status(&running, 0);
    assert!(cs.ready && cs.started == Some(true));
    assert!(cs.state.unwrap().running.unwrap().started_at.is_some());
    let uid = pod.metadata.uid.clone().unwrap();
    assert_eq!(f.sandbox_containers(&uid), 1);
    let started = std::time::Instant::now();
    f.pods().delete("sleeper", &DeleteOptions::default()).await.unwrap();
    f.wait_gone("sleeper").await;
    // `sleep` as PID 1 ignores SIGTERM: it goes at the 2 s grace period's SIGKILL.
    assert!(started.elapsed() >= Duration::from_millis(1500), "gone after {:?}", started.elapsed());
    assert_eq!(f.sandbox_containers(&uid), 0);
    assert!(!f.runtime.list_sandboxes().unwrap().contains(&uid));
    let killing = f.events("sleeper").await.into_iter().find(|e| e.reason.as_deref() == Some("Killing")).unwrap();
    assert_eq!(killing.message.as_deref(), Some("Stopping container app"));
}

async fn missing_image_backs_off_and_the_pod_can_still_be_deleted(f: &mut Fixture) {
    let missing = f.image.replace("busybox:1", "nope:1");
    f.create("noimage", "Always", json!([{"name": "app", "image": missing}])).await;
    let pod =
        f.wait_pod("noimage", "ImagePullBackOff", |p| waiting_reason(p).as_deref() == Some("ImagePullBackOff")).await;
    assert_eq!(phase(&pod), "Pending");
    let events = f.events("noimage").await;
    let failed = events
        .iter()
        .filter_map(|e| e.message.clone())
        .find(|m| m.starts_with("Failed to pull image"))
        .expect("a Failed event");
    assert!(failed.starts_with(&format!("Failed to pull image \"{missing}\": ")), "{failed}");
    assert!(reasons(&events).iter().any(|r| r == "BackOff"));
    f.pods().delete("noimage", &DeleteOptions::default()).await.unwrap();
    f.wait_gone("noimage").await;
}

async fn a_pod_deleted_while_its_image_is_pulling_goes_away(f: &mut Fixture) {
    // A registry that accepts connections and never answers: the pull hangs.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let image = format!("{}/slow:1", silent.local_addr().unwrap());
    f.create("slow", "Always", json!([{"name": "app", "image": image}])).await;
    for _ in 0..100 {
        if reasons(&f.events("slow").await).iter().any(|r| r == "Pulling") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reasons(&f.events("slow").await).iter().any(|r| r == "Pulling"), "the pull started");
    let started = std::time::Instant::now();
    f.pods().delete("slow", &DeleteOptions::default()).await.unwrap();
    f.wait_gone("slow").await;
    assert!(started.elapsed() < Duration::from_secs(10), "deleted after {:?}", started.elapsed());
    drop(silent);
}

async fn active_deadline_fails_the_pod_and_stops_it(f: &mut Fixture) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "deadline"},
        "spec": {"nodeName": NODE, "automountServiceAccountToken": false, "activeDeadlineSeconds": 2, "terminationGracePeriodSeconds": 1, "hostname": "short",
                 "containers": [{"name": "app", "image": f.image, "command": ["sh", "-c", "hostname; sleep 3600"]}]},
    }))
    .unwrap();
    let uid = f.pods().create(&pod).await.unwrap().metadata.uid.unwrap();
    let failed = f.wait_pod("deadline", "Failed", |p| phase(p) == "Failed").await;
    assert_eq!(status(&failed).reason.as_deref(), Some("DeadlineExceeded"));
    assert_eq!(
        status(&failed).message.as_deref(),
        Some("Pod was active on the node longer than the specified deadline")
    );
    assert_eq!(f.logs(&failed, opts("app")).await.unwrap(), "short\n", "the sandbox takes spec.hostname");
    for _ in 0..50 {
        if f.sandbox_containers(&uid) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(f.sandbox_containers(&uid), 0);
    assert!(reasons(&f.events("deadline").await).iter().any(|r| r == "DeadlineExceeded"));
    f.pods().delete("deadline", &DeleteOptions::default()).await.unwrap();
    f.wait_gone("deadline").await;
}

async fn changing_the_image_of_a_running_pod_replaces_its_container(f: &mut Fixture) {
    f.create("retag", "Never", json!([{"name": "app", "image": f.image, "command": ["sleep", "3600"]}])).await;
    let running = f.wait_pod("retag", "Running", |p| phase(p) == "Running").await;
    let before = container_status(&running, 0);
    // The same image by digest: a different reference, so a changed definition.
    let by_digest = before.image_id.clone();
    let patch = json!({"spec": {"containers": [{"name": "app", "image": by_digest}]}});
    f.pods().patch("retag", skiff_api::PatchKind::StrategicMerge, patch).await.unwrap();
    let after = f
        .wait_pod("retag", "the replacement container", |p| {
            try_container_status(p, 0)
                .is_some_and(|cs| cs.restart_count == 1 && cs.state.is_some_and(|s| s.running.is_some()))
        })
        .await;
    let cs = container_status(&after, 0);
    assert_eq!(cs.image, by_digest);
    assert_ne!(cs.container_id, before.container_id);
    assert_eq!(phase(&after), "Running", "replaced even under restartPolicy Never");
    let killing = f.events("retag").await.into_iter().filter_map(|e| e.message).collect::<Vec<_>>();
    assert!(killing.iter().any(|m| m == "Container app definition changed, will be restarted"), "{killing:?}");
    f.pods().delete("retag", &DeleteOptions::default()).await.unwrap();
    f.wait_gone("retag").await;
}

async fn readiness_waits_for_the_probe_and_a_failing_liveness_probe_restarts(f: &mut Fixture) {
    let serve = "sleep 2; mkdir -p /www; echo ok > /www/index.html; exec httpd -f -p 8080 -h /www";
    f.create(
        "probed",
        "Always",
        json!([{"name": "web", "image": f.image, "command": ["sh", "-c", serve],
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
                "livenessProbe": {"tcpSocket": {"port": 8080}, "initialDelaySeconds": 5, "periodSeconds": 1}}]),
    )
    .await;
    let running = f.wait_pod("probed", "Running", |p| phase(p) == "Running").await;
    assert!(status(&running).pod_ip.is_some(), "the pod has an IP on the test network");
    assert!(!container_status(&running, 0).ready, "not ready before the readiness probe passes");
    let ready = f.wait_pod("probed", "ready", |p| try_container_status(p, 0).is_some_and(|c| c.ready)).await;
    let condition = status(&ready).conditions.clone().unwrap().into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(condition.status, "True");

    f.create(
        "unhealthy",
        "Always",
        json!([{"name": "app", "image": f.image, "command": ["sleep", "3600"],
                "livenessProbe": {"tcpSocket": {"port": 9999}, "periodSeconds": 1, "failureThreshold": 2}}]),
    )
    .await;
    let restarted = f
        .wait_pod("unhealthy", "a liveness restart", |p| {
            try_container_status(p, 0).is_some_and(|c| c.restart_count >= 1)
        })
        .await;
    let last = container_status(&restarted, 0).last_state.unwrap().terminated.unwrap();
    assert_eq!(last.exit_code, 137, "sleep ignores SIGTERM; the 2 s grace ends in SIGKILL");
    let messages: Vec<String> = f.events("unhealthy").await.into_iter().filter_map(|e| e.message).collect();
    assert!(messages.iter().any(|m| m == "Container app failed liveness probe, will be restarted"), "{messages:#?}");
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("Liveness probe failed: dial tcp ")
                && m.ends_with(":9999: connect: connection refused")),
        "{messages:#?}"
    );
    // An exec probe: ready once the file exists.
    f.create(
        "execprobe",
        "Always",
        json!([{"name": "app", "image": f.image, "command": ["sh", "-c", "sleep 2; touch /tmp/ready; sleep 3600"],
                "readinessProbe": {"exec": {"command": ["cat", "/tmp/ready"]}, "periodSeconds": 1}}]),
    )
    .await;
    let running = f.wait_pod("execprobe", "Running", |p| phase(p) == "Running").await;
    assert!(!container_status(&running, 0).ready);
    f.wait_pod("execprobe", "exec readiness", |p| try_container_status(p, 0).is_some_and(|c| c.ready)).await;
    let unhealthy: Vec<String> = f.events("execprobe").await.into_iter().filter_map(|e| e.message).collect();
    assert!(
        unhealthy.iter().any(|m| m.starts_with("Readiness probe failed: cat: can't open '/tmp/ready'")),
        "{unhealthy:#?}"
    );
    // The probe flap in `probed` has not restarted it.
    assert_eq!(container_status(&f.pods().get("probed").await.unwrap(), 0).restart_count, 0);
    for name in ["probed", "unhealthy", "execprobe"] {
        f.pods().delete(name, &DeleteOptions::default()).await.unwrap();
    }
    for name in ["probed", "unhealthy", "execprobe"] {
        f.wait_gone(name).await;
    }
}

async fn follow_streams_until_the_container_exits(f: &mut Fixture) {
    f.create(
        "counter",
        "Never",
        json!([{"name": "app", "image": f.image, "command": ["sh", "-c", "for i in 1 2 3; do echo $i; sleep 0.3; done"]}]),
    )
    .await;
    let pod = f
        .wait_pod("counter", "the container to start", |p| {
            p.status.as_ref().and_then(|s| s.container_statuses.as_ref()).is_some_and(|cs| cs[0].container_id.is_some())
        })
        .await;
    let out = f.logs(&pod, LogOptions { follow: true, ..opts("app") }).await.unwrap();
    assert_eq!(out, "1\n2\n3\n");
    f.pods().delete("counter", &DeleteOptions::default()).await.unwrap();
    f.wait_gone("counter").await;
}

async fn restarted_kubelet_adopts_running_containers_and_removes_orphans(f: &mut Fixture) {
    let pod =
        f.create("keeper", "Always", json!([{"name": "app", "image": f.image, "command": ["sleep", "3600"]}])).await;
    let before = container_status(&f.wait_pod("keeper", "Running", |p| phase(p) == "Running").await, 0);
    // A sandbox whose pod no longer exists, as if deleted while the server was down.
    let orphan = "00000000-0000-0000-0000-00000000dead";
    f.runtime
        .run_sandbox(&SandboxSpec { id: orphan.into(), hostname: "gone".into(), host_network: false })
        .await
        .unwrap();
    f.restart_kubelet().await;
    for _ in 0..100 {
        if !f.runtime.list_sandboxes().unwrap().iter().any(|s| s == orphan) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!f.runtime.list_sandboxes().unwrap().iter().any(|s| s == orphan), "orphan sandbox removed");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = container_status(&f.pods().get("keeper").await.unwrap(), 0);
    assert_eq!(after.container_id, before.container_id, "the running container is adopted, not replaced");
    assert_eq!(after.restart_count, 0);
    assert!(after.state.unwrap().running.is_some());
    assert_eq!(f.sandbox_containers(pod.metadata.uid.as_deref().unwrap()), 1);
    f.pods().delete("keeper", &DeleteOptions::default()).await.unwrap();
    f.wait_gone("keeper").await;
}

/// preStop httpGet reaches the container (over the pod IP) before the SIGTERM; a failing preStop
/// exec is a `FailedPreStopHook` event and the container still stops.
async fn pre_stop_hooks_run_before_sigterm_and_a_failing_one_is_only_an_event(f: &mut Fixture) {
    let out = f.root.parent().unwrap().join("pre-stop-out");
    std::fs::create_dir_all(&out).unwrap();
    let script = "trap 'echo sigterm >> /out/order; exit 0' TERM; \
                  (printf 'HTTP/1.1 200 OK\\r\\n\\r\\n' | nc -l -p 8080 > /out/request; echo request >> /out/order) & \
                  while true; do sleep 1; done";
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "stopper"},
        "spec": {"nodeName": NODE, "automountServiceAccountToken": false, "terminationGracePeriodSeconds": 10,
                 "volumes": [{"name": "out", "hostPath": {"path": out}}],
                 "containers": [{"name": "app", "image": f.image, "command": ["sh", "-c", script],
                                 "volumeMounts": [{"name": "out", "mountPath": "/out"}],
                                 "lifecycle": {"preStop": {"httpGet": {"path": "/bye", "port": 8080,
                                     "httpHeaders": [{"name": "X-Reason", "value": "stopping"}]}}}}]},
    }))
    .unwrap();
    f.pods().create(&pod).await.unwrap();
    f.wait_pod("stopper", "running", |p| {
        try_container_status(p, 0).is_some_and(|c| c.state.unwrap().running.is_some())
    })
    .await;
    // The listener may need a moment after the container starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    f.pods().delete("stopper", &DeleteOptions::default()).await.unwrap();
    f.wait_gone("stopper").await;
    let request = std::fs::read_to_string(out.join("request")).unwrap();
    assert!(request.starts_with("GET /bye HTTP/1.1\r\n"), "{request}");
    assert!(request.contains("X-Reason: stopping\r\n") && request.contains("User-Agent: kube-lifecycle/1.33\r\n"));
    assert_eq!(std::fs::read_to_string(out.join("order")).unwrap(), "request\nsigterm\n");

    f.create(
        "bad-stop",
        "Always",
        json!([{"name": "app", "image": f.image, "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"],
                "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", "exit 1"]}}}}]),
    )
    .await;
    f.wait_pod("bad-stop", "running", |p| {
        try_container_status(p, 0).is_some_and(|c| c.state.unwrap().running.is_some())
    })
    .await;
    let before = f.events("bad-stop").await;
    f.pods().delete("bad-stop", &DeleteOptions::default()).await.unwrap();
    f.wait_gone("bad-stop").await;
    let events = f.events("bad-stop").await;
    let failed =
        events.iter().find(|e| e.reason.as_deref() == Some("FailedPreStopHook")).expect("a FailedPreStopHook event");
    assert_eq!((failed.type_.as_deref(), failed.message.as_deref()), (Some("Warning"), Some("PreStopHook failed")));
    assert!(!reasons(&before).contains(&"FailedPreStopHook".to_string()));
}

/// A postStart httpGet to a port nobody listens on fails the start: the event, a kill with
/// `FailedPostStartHook`, and under `Never` no restart: the TERM trap exits 0, so the pod
/// succeeds, as it would in Kubernetes.
async fn a_failing_post_start_http_hook_kills_the_container(f: &mut Fixture) {
    f.create(
        "bad-start",
        "Never",
        json!([{"name": "app", "image": f.image, "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"],
                "lifecycle": {"postStart": {"httpGet": {"path": "/start", "port": 9}}}}]),
    )
    .await;
    let done = f.wait_pod("bad-start", "Succeeded", |p| phase(p) == "Succeeded").await;
    assert_eq!(container_status(&done, 0).restart_count, 0);
    let t = container_status(&done, 0).state.unwrap().terminated.expect("terminated");
    assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")), "the TERM trap exits 0");
    let events = f.events("bad-start").await;
    let rs = reasons(&events);
    assert!(rs.contains(&"FailedPostStartHook".to_string()), "{rs:?}");
    let killing = events.iter().find(|e| e.reason.as_deref() == Some("Killing")).expect("a Killing event");
    assert_eq!(killing.message.as_deref(), Some("FailedPostStartHook"));
    f.pods().delete("bad-start", &DeleteOptions::default()).await.unwrap();
    f.wait_gone("bad-start").await;
}

/// A log past `containerLogMaxSize` is rotated while the container runs: the shim goes on in a
/// new file, `logs` shows that one, and a follower from before the rotation misses nothing.
async fn a_big_log_is_rotated_and_followers_move_to_the_new_file(f: &mut Fixture) {
    let script = "head -c 1500000 /dev/zero | tr '\\0' x | fold -w 500; echo; \
                  i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.1; done";
    let pod =
        f.create("chatty", "Always", json!([{"name": "app", "image": f.image, "command": ["sh", "-c", script]}])).await;
    f.wait_pod("chatty", "running", |p| try_container_status(p, 0).is_some_and(|c| c.state.unwrap().running.is_some()))
        .await;
    let meta = &pod.metadata;
    let follow = LogOptions { container: "app".into(), follow: true, ..Default::default() };
    let mut stream = f.kubelet.logs("default", "chatty", meta.uid.as_deref().unwrap(), &follow).await.unwrap();
    let dir = f.root.join("pods").join(format!("default_chatty_{}", meta.uid.as_deref().unwrap())).join("app");
    let mut rotated = None;
    for _ in 0..300 {
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("0.log."))
            .collect();
        if let Some(n) = names.first() {
            rotated = Some(dir.join(n));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rotated = rotated.expect("the log was rotated within 30 s");
    // In the CRI files a tick line reads `<time> stdout F tick N`.
    let ticks = |text: &str| text.lines().filter(|l| l.contains(" F tick ")).count();
    let before = ticks(&std::fs::read_to_string(&rotated).unwrap());
    assert!(std::fs::metadata(&rotated).unwrap().len() >= ROTATE_AT);
    // The shim writes on in the new file.
    let mut current = String::new();
    for _ in 0..100 {
        current = std::fs::read_to_string(dir.join("0.log")).unwrap();
        if ticks(&current) >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = ticks(&current);
    assert!(after >= 5, "the new file gets the output: {current}");
    assert!(!current.contains("xxxxx"), "the burst stayed in the rotated file");
    let shown = f.logs(&pod, opts("app")).await;
    let shown = shown.unwrap();
    assert!(shown.starts_with("tick ") && !shown.contains("xxxxx"), "logs read the current file");
    // The follower: everything of the rotated file, then on into the new one.
    let mut followed = String::new();
    while followed.lines().filter(|l| l.starts_with("tick ")).count() < before + after {
        let chunk = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("the follower stalled after the rotation")
            .expect("the follow stream ended early")
            .unwrap();
        followed.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert_eq!(followed.lines().filter(|l| l.len() == 500).count(), 3000, "the whole burst was followed");
    let numbers: Vec<u64> =
        followed.lines().filter_map(|l| l.strip_prefix("tick ")).map(|n| n.parse().unwrap()).collect();
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "no tick lost or repeated across the rotation");
    drop(stream);
    f.pods().delete("chatty", &DeleteOptions::default()).await.unwrap();
    f.wait_gone("chatty").await;
}

type Test = for<'a> fn(&'a mut Fixture) -> Pin<Box<dyn Future<Output = ()> + 'a>>;

macro_rules! tests {
    ($($name:ident),* $(,)?) => {
        vec![$((stringify!($name), (|f| Box::pin($name(f))) as Test)),*]
    };
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("shim") {
        skiff_runtime::shim_main(args[1..].to_vec());
    }
    let filters: Vec<&String> = args[1..].iter().filter(|a| !a.starts_with('-')).collect();
    let tests: Vec<(&str, Test)> = tests![
        pod_runs_to_completion_with_status_events_and_logs,
        failing_container_restarts_with_back_off_and_keeps_previous_logs,
        deleting_a_running_pod_kills_it_after_the_grace_period_and_removes_it,
        missing_image_backs_off_and_the_pod_can_still_be_deleted,
        a_pod_deleted_while_its_image_is_pulling_goes_away,
        active_deadline_fails_the_pod_and_stops_it,
        changing_the_image_of_a_running_pod_replaces_its_container,
        readiness_waits_for_the_probe_and_a_failing_liveness_probe_restarts,
        follow_streams_until_the_container_exits,
        restarted_kubelet_adopts_running_containers_and_removes_orphans,
        pre_stop_hooks_run_before_sigterm_and_a_failing_one_is_only_an_event,
        a_failing_post_start_http_hook_kills_the_container,
        a_big_log_is_rotated_and_followers_move_to_the_new_file,
    ];
    let selected: Vec<_> = tests
        .into_iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
        .collect();
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (mut passed, mut failed) = (0, 0);
    tokio.block_on(async {
        let mut fixture = Fixture::new().await;
        println!("\nrunning {} tests", selected.len());
        for (name, test) in selected {
            // A panic fails that test only; the next one runs on the same fixture.
            match std::panic::AssertUnwindSafe(test(&mut fixture)).catch_unwind().await {
                Ok(()) => {
                    println!("test {name} ... ok");
                    passed += 1;
                }
                Err(_) => {
                    println!("test {name} ... FAILED");
                    failed += 1;
                }
            }
        }
        drop(fixture);
    });
    println!("\n{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
