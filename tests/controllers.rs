//! Controllers end to end: the real kubectl against a real `skiff server` running real
//! containers. A Deployment rolls out, updates without dropping below its replicas, shows its
//! history, rolls back, scales, heals and cascades on delete; Jobs complete or fail with
//! Kubernetes' reasons; a CronJob runs on schedule, keeps its history limit and stops when
//! suspended.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{TestImages, TestServer};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(180);

fn apply(server: &TestServer, manifest: &str) {
    let out = server.kubectl_stdin(&["apply", "-f", "-"], manifest);
    assert!(out.status.success(), "kubectl apply failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn json(server: &TestServer, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&server.kubectl_ok(&all)).expect("kubectl -o json prints JSON")
}

/// Pods of `selector` that are Ready and not terminating.
fn ready_pods(server: &TestServer, selector: &str) -> usize {
    ready_in(&json(server, &["get", "pods", "-l", selector]))
}

fn ready_in(list: &Value) -> usize {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| {
            p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .count()
}

/// One line per pod: name, phase, Ready, terminating — for failure messages.
fn summary(list: &Value) -> String {
    let mut lines = Vec::new();
    for p in list["items"].as_array().into_iter().flatten() {
        let ready = p["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready")
            .map(|c| c["status"].clone());
        lines.push(format!(
            "{} phase={} ready={:?} deleting={}",
            p["metadata"]["name"].as_str().unwrap_or_default(),
            p["status"]["phase"].as_str().unwrap_or_default(),
            ready,
            !p["metadata"]["deletionTimestamp"].is_null()
        ));
    }
    lines.join("\n")
}

fn deployment(image: &str, replicas: u32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: web}}
  strategy:
    type: RollingUpdate
    rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: app
        image: {image}
        command: ["sleep", "3600"]
"#
    )
}

fn rollout_status(server: &TestServer) {
    let out = server.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=180s"]);
    assert!(out.contains("deployment \"web\" successfully rolled out"), "{out}");
}

#[test]
fn deployment_updates_without_losing_replicas_rolls_back_scales_heals_and_cascades() {
    let images = TestImages::start();
    let server = TestServer::start();
    let first = images.busybox();
    // The same image through another name of the loopback registry: a different template.
    let second = first.replacen("127.0.0.1", "localhost", 1);

    apply(&server, &deployment(&first, 3));
    rollout_status(&server);
    assert_eq!(ready_pods(&server, "app=web"), 3);

    // Watch readiness through the update: with maxUnavailable 0 it never drops below 3.
    let lowest = Arc::new(AtomicUsize::new(usize::MAX));
    let lowest_seen = std::sync::Mutex::new(String::new());
    let done = Arc::new(AtomicBool::new(false));
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                let pods = json(&server, &["get", "pods", "-l", "app=web"]);
                let ready = ready_in(&pods);
                if ready < lowest.fetch_min(ready, Ordering::SeqCst) {
                    let sets = server.kubectl_ok(&["get", "replicasets", "-l", "app=web"]);
                    *lowest_seen.lock().unwrap() = format!("{}\n{sets}", summary(&pods));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let out = server.kubectl_ok(&["set", "image", "deployment/web", &format!("app={second}")]);
        assert!(out.contains("deployment.apps/web image updated"), "{out}");
        rollout_status(&server);
        done.store(true, Ordering::SeqCst);
    });
    let seen = lowest_seen.lock().unwrap().clone();
    assert!(lowest.load(Ordering::SeqCst) >= 3, "ready pods fell to {}:\n{seen}", lowest.load(Ordering::SeqCst));

    let history = server.kubectl_ok(&["rollout", "history", "deployment/web"]);
    let revisions: Vec<&str> =
        history.lines().filter_map(|l| l.split_whitespace().next()).filter(|w| w.parse::<u32>().is_ok()).collect();
    assert_eq!(revisions, ["1", "2"], "{history}");

    let out = server.kubectl_ok(&["rollout", "undo", "deployment/web"]);
    assert!(out.contains("deployment.apps/web rolled back"), "{out}");
    rollout_status(&server);
    let image =
        server.kubectl_ok(&["get", "deployment", "web", "-o", "jsonpath={.spec.template.spec.containers[0].image}"]);
    assert_eq!(image, first);

    let out = server.kubectl_ok(&["scale", "deployment/web", "--replicas=5"]);
    assert!(out.contains("deployment.apps/web scaled"), "{out}");
    rollout_status(&server);
    server.wait_for("5 ready pods", TIMEOUT, || (ready_pods(&server, "app=web") == 5).then_some(()));
    let table = server.kubectl_ok(&["get", "deployment", "web"]);
    assert!(
        table.lines().nth(1).is_some_and(|row| row.split_whitespace().collect::<Vec<_>>()[1..4] == ["5/5", "5", "5"]),
        "{table}"
    );

    // A deleted pod of the ReplicaSet is replaced.
    let pods = json(&server, &["get", "pods", "-l", "app=web"]);
    let victim = pods["items"][0]["metadata"]["name"].as_str().unwrap().to_string();
    server.kubectl_ok(&["delete", "pod", &victim]);
    server.wait_for("the ReplicaSet to heal", TIMEOUT, || {
        let pods = json(&server, &["get", "pods", "-l", "app=web"]);
        let names: Vec<&str> =
            pods["items"].as_array().unwrap().iter().filter_map(|p| p["metadata"]["name"].as_str()).collect();
        (!names.contains(&victim.as_str()) && ready_pods(&server, "app=web") == 5).then_some(())
    });

    // Deleting the Deployment removes its ReplicaSets and their pods.
    server.kubectl_ok(&["delete", "deployment", "web"]);
    server.wait_for("ReplicaSets and pods to go", TIMEOUT, || {
        let left = json(&server, &["get", "replicasets,pods", "-l", "app=web"]);
        left["items"].as_array().unwrap().is_empty().then_some(())
    });
    drop(images);
    server.finish();
}

fn job(name: &str, command: &str, completions: u32, parallelism: u32, backoff_limit: u32) -> String {
    format!(
        r#"apiVersion: batch/v1
kind: Job
metadata:
  name: {name}
spec:
  completions: {completions}
  parallelism: {parallelism}
  backoffLimit: {backoff_limit}
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: work
        image: IMAGE
        command: ["sh", "-c", "{command}"]
"#
    )
}

#[test]
fn jobs_complete_or_fail_with_kubernetes_reasons() {
    let images = TestImages::start();
    let server = TestServer::start();
    apply(&server, &job("work", "echo done", 3, 2, 6).replace("IMAGE", &images.busybox()));
    apply(&server, &job("broken", "exit 3", 1, 1, 1).replace("IMAGE", &images.busybox()));

    let out = server.kubectl_ok(&["wait", "--for=condition=complete", "job/work", "--timeout=180s"]);
    assert!(out.contains("job.batch/work condition met"), "{out}");
    let work = json(&server, &["get", "job", "work"]);
    assert_eq!(work["status"]["succeeded"], 3);
    let table = server.kubectl_ok(&["get", "job", "work"]);
    assert!(table.contains("3/3"), "{table}");
    let logs = server.kubectl_ok(&["logs", "job/work"]);
    assert_eq!(logs.trim(), "done");

    let out = server.kubectl_ok(&["wait", "--for=condition=failed", "job/broken", "--timeout=180s"]);
    assert!(out.contains("job.batch/broken condition met"), "{out}");
    let broken = json(&server, &["get", "job", "broken"]);
    let failed =
        broken["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Failed").unwrap().clone();
    assert_eq!(failed["reason"], "BackoffLimitExceeded");
    assert_eq!(broken["status"]["failed"], 2);

    server.kubectl_ok(&["delete", "job", "work", "broken"]);
    server.wait_for("job pods to go", TIMEOUT, || {
        let left = json(&server, &["get", "pods", "-l", "batch.kubernetes.io/job-name"]);
        left["items"].as_array().unwrap().is_empty().then_some(())
    });
    drop(images);
    server.finish();
}

#[test]
fn cronjob_runs_on_schedule_keeps_its_history_limit_and_stops_when_suspended() {
    let images = TestImages::start();
    let server = TestServer::start();
    let manifest = format!(
        r#"apiVersion: batch/v1
kind: CronJob
metadata:
  name: tick
spec:
  schedule: "* * * * *"
  successfulJobsHistoryLimit: 0
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
          - name: tick
            image: {}
            command: ["sh", "-c", "echo tick"]
"#,
        images.busybox()
    );
    apply(&server, &manifest);
    // Within a minute a Job runs and succeeds; with a history limit of 0 it is then deleted.
    server.wait_for("a successful scheduled run", TIMEOUT, || {
        let cj = json(&server, &["get", "cronjob", "tick"]);
        (!cj["status"]["lastSuccessfulTime"].is_null()).then_some(())
    });
    server.wait_for("the finished Job to be pruned", TIMEOUT, || {
        let jobs = json(&server, &["get", "jobs"]);
        jobs["items"].as_array().unwrap().is_empty().then_some(())
    });
    let events = server.kubectl_ok(&["get", "events", "--field-selector", "involvedObject.name=tick"]);
    assert!(events.contains("SuccessfulCreate") && events.contains("SawCompletedJob"), "{events}");

    server.kubectl_ok(&["patch", "cronjob", "tick", "-p", r#"{"spec":{"suspend":true}}"#]);
    // A run may have started just before the patch: let it finish and be pruned first.
    server.wait_for("no Jobs left", TIMEOUT, || {
        let jobs = json(&server, &["get", "jobs"]);
        jobs["items"].as_array().unwrap().is_empty().then_some(())
    });
    let scheduled = json(&server, &["get", "cronjob", "tick"])["status"]["lastScheduleTime"].clone();
    assert!(!scheduled.is_null());
    // Past the next minute boundary nothing new is scheduled.
    std::thread::sleep(Duration::from_secs(70));
    let cj = json(&server, &["get", "cronjob", "tick"]);
    assert_eq!(cj["status"]["lastScheduleTime"], scheduled, "a suspended CronJob scheduled a run");
    let jobs = json(&server, &["get", "jobs"]);
    assert!(jobs["items"].as_array().unwrap().is_empty());

    server.kubectl_ok(&["delete", "cronjob", "tick"]);
    drop(images);
    server.finish();
}

/// The pod IP in the Service's Endpoints: (in addresses, in notReadyAddresses).
fn endpoint_state(server: &TestServer, service: &str, ip: &str) -> (bool, bool) {
    let out = server.kubectl(&["get", "endpoints", service, "-o", "json"]);
    if !out.status.success() {
        return (false, false);
    }
    let ep: Value = serde_json::from_slice(&out.stdout).unwrap();
    let has = |field: &str| {
        ep["subsets"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s[field].as_array().into_iter().flatten().any(|a| a["ip"] == ip))
    };
    (has("addresses"), has("notReadyAddresses"))
}

#[test]
fn a_readiness_flip_moves_the_pod_between_ready_and_not_ready_endpoints() {
    let images = TestImages::start();
    let server = TestServer::start();
    // Ready for a while, then not ready, then ready again: the probe follows the file.
    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: flip
  labels: {{app: flip}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: {}
    command: ["sh", "-c", "touch /tmp/ready; sleep 20; rm /tmp/ready; sleep 20; touch /tmp/ready; sleep 3600"]
    ports: [{{name: http, containerPort: 8080}}]
    readinessProbe:
      exec: {{command: ["cat", "/tmp/ready"]}}
      periodSeconds: 1
      failureThreshold: 1
---
apiVersion: v1
kind: Service
metadata:
  name: flip
spec:
  selector: {{app: flip}}
  ports: [{{name: http, port: 80, targetPort: http}}]
"#,
        images.busybox()
    );
    apply(&server, &manifest);
    let ip = server.wait_for("a pod IP", TIMEOUT, || {
        let ip = server.kubectl_ok(&["get", "pod", "flip", "-o", "jsonpath={.status.podIP}"]);
        (!ip.is_empty()).then_some(ip)
    });
    server.wait_for("the pod among ready addresses", TIMEOUT, || {
        (endpoint_state(&server, "flip", &ip) == (true, false)).then_some(())
    });
    server.wait_for("the pod among notReadyAddresses", TIMEOUT, || {
        (endpoint_state(&server, "flip", &ip) == (false, true)).then_some(())
    });
    server.wait_for("the pod ready again", TIMEOUT, || {
        (endpoint_state(&server, "flip", &ip) == (true, false)).then_some(())
    });
    let ports = server.kubectl_ok(&["get", "endpoints", "flip", "-o", "jsonpath={.subsets[0].ports[0].port}"]);
    assert_eq!(ports, "8080", "the named targetPort resolves to the container port");
    let slices = server.kubectl_ok(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=flip",
        "-o",
        "jsonpath={.items[0].endpoints[0].addresses[0]}",
    ]);
    assert_eq!(slices, ip);

    server.kubectl_ok(&["delete", "pod", "flip"]);
    server.kubectl_ok(&["delete", "service", "flip"]);
    drop(images);
    server.finish();
}

#[test]
fn a_pod_that_fits_nowhere_stays_pending_with_failed_scheduling_until_it_fits() {
    let images = TestImages::start();
    let server = TestServer::start();
    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: huge
spec:
  terminationGracePeriodSeconds: 1
  nodeSelector: {{disk: ssd}}
  containers:
  - name: app
    image: {}
    command: ["sleep", "3600"]
"#,
        images.busybox()
    );
    apply(&server, &manifest);
    let events = server.wait_for("a FailedScheduling event", TIMEOUT, || {
        let events = server.kubectl_ok(&["get", "events", "--field-selector", "involvedObject.name=huge"]);
        events.contains("FailedScheduling").then_some(events)
    });
    assert!(events.contains("0/1 nodes are available"), "{events}");
    let pod = json(&server, &["get", "pod", "huge"]);
    assert_eq!(pod["status"]["phase"], "Pending");
    let scheduled =
        pod["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "PodScheduled").unwrap().clone();
    assert_eq!((scheduled["status"].as_str(), scheduled["reason"].as_str()), (Some("False"), Some("Unschedulable")));

    // Once the node carries the label, the pod is retried and runs.
    server.kubectl_ok(&["label", "node", server.node_name(), "disk=ssd"]);
    server.wait_for("the pod to run", TIMEOUT, || {
        (server.kubectl_ok(&["get", "pod", "huge", "-o", "jsonpath={.status.phase}"]) == "Running").then_some(())
    });
    server.kubectl_ok(&["delete", "pod", "huge"]);
    drop(images);
    server.finish();
}

#[test]
fn deployment_pause_resume_restart_recreate_and_progress_deadline() {
    let images = TestImages::start();
    let server = TestServer::start();
    apply(
        &server,
        &deployment(&images.busybox(), 2)
            .replace("type: RollingUpdate\n    rollingUpdate: {maxSurge: 1, maxUnavailable: 0}", "type: Recreate"),
    );
    rollout_status(&server);

    // Paused: a template change makes no new ReplicaSet until resumed.
    assert!(server.kubectl_ok(&["rollout", "pause", "deployment/web"]).contains("deployment.apps/web paused"));
    server.kubectl_ok(&["set", "env", "deployment/web", "STAGE=two"]);
    std::thread::sleep(Duration::from_secs(3));
    let sets = json(&server, &["get", "replicasets", "-l", "app=web"]);
    assert_eq!(sets["items"].as_array().unwrap().len(), 1, "a paused Deployment rolled out");
    assert!(server.kubectl_ok(&["rollout", "resume", "deployment/web"]).contains("deployment.apps/web resumed"));
    rollout_status(&server);
    let sets = json(&server, &["get", "replicasets", "-l", "app=web"]);
    assert_eq!(sets["items"].as_array().unwrap().len(), 2);

    // Restart: a new ReplicaSet with the restartedAt annotation, all pods replaced.
    let before: Vec<String> = json(&server, &["get", "pods", "-l", "app=web"])["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert!(server.kubectl_ok(&["rollout", "restart", "deployment/web"]).contains("deployment.apps/web restarted"));
    rollout_status(&server);
    server.wait_for("every pod replaced", TIMEOUT, || {
        let pods = json(&server, &["get", "pods", "-l", "app=web"]);
        let live: Vec<&Value> =
            pods["items"].as_array().unwrap().iter().filter(|p| p["metadata"]["deletionTimestamp"].is_null()).collect();
        (live.len() == 2 && live.iter().all(|p| !before.contains(&p["metadata"]["name"].as_str().unwrap().to_string())))
            .then_some(())
    });

    // An image that never arrives: past progressDeadlineSeconds, rollout status reports it.
    server.kubectl_ok(&["patch", "deployment", "web", "-p", r#"{"spec":{"progressDeadlineSeconds":5}}"#]);
    server.kubectl_ok(&["set", "image", "deployment/web", &format!("app={}", images.missing())]);
    let out = server.kubectl(&["rollout", "status", "deployment/web", "--timeout=120s"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("deployment \"web\" exceeded its progress deadline"), "{stderr}");
    let d = json(&server, &["get", "deployment", "web"]);
    let progressing =
        d["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Progressing").unwrap().clone();
    assert_eq!(progressing["reason"], "ProgressDeadlineExceeded");

    server.kubectl_ok(&["delete", "deployment", "web"]);
    server.wait_for("pods to go", TIMEOUT, || {
        json(&server, &["get", "pods", "-l", "app=web"])["items"].as_array().unwrap().is_empty().then_some(())
    });
    drop(images);
    server.finish();
}

#[test]
fn kubectl_create_job_from_a_cronjob_runs_it_once() {
    let images = TestImages::start();
    let server = TestServer::start();
    let manifest = format!(
        r#"apiVersion: batch/v1
kind: CronJob
metadata:
  name: nightly
spec:
  schedule: "0 3 * * *"
  suspend: true
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
          - name: work
            image: {}
            command: ["sh", "-c", "echo by hand"]
"#,
        images.busybox()
    );
    apply(&server, &manifest);
    let out = server.kubectl_ok(&["create", "job", "manual", "--from=cronjob/nightly"]);
    assert!(out.contains("job.batch/manual created"), "{out}");
    let out = server.kubectl_ok(&["wait", "--for=condition=complete", "job/manual", "--timeout=120s"]);
    assert!(out.contains("condition met"), "{out}");
    assert_eq!(server.kubectl_ok(&["logs", "job/manual"]).trim(), "by hand");
    let job = json(&server, &["get", "job", "manual"]);
    assert_eq!(job["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"], "manual");
    server.kubectl_ok(&["delete", "cronjob", "nightly"]);
    server.wait_for("the Job to go with its CronJob", TIMEOUT, || {
        json(&server, &["get", "jobs,pods"])["items"].as_array().unwrap().is_empty().then_some(())
    });
    drop(images);
    server.finish();
}
