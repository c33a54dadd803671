//! The controllers against the real API server core on a temp redb, with a stand-in for the
//! kubelet that reports pods Running and Ready (or Succeeded/Failed, by a label), so rollouts,
//! healing, Jobs and garbage collection are checked without containers. The same flows run
//! end to end with real containers and kubectl in the root crate's tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;
use skiff_api::{Api, ApiClient, DeleteOptions, Informer, InformerEvent, ListOptions, PatchKind};
use tokio_util::sync::CancellationToken;

struct Cluster {
    client: Arc<dyn ApiClient>,
    _dir: tempfile::TempDir,
    stop: CancellationToken,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What the stand-in kubelet reports for a pod, from its `test/outcome` label.
fn reported_status(pod: &Pod) -> serde_json::Value {
    let now = jiff::Timestamp::now().to_string();
    match pod.metadata.labels.as_ref().and_then(|l| l.get("test/outcome")).map(String::as_str) {
        Some("succeed") => json!({"phase": "Succeeded", "conditions": [{"type": "Ready", "status": "False"}]}),
        Some("fail") => json!({"phase": "Failed", "conditions": [{"type": "Ready", "status": "False"}]}),
        _ => json!({"phase": "Running", "podIP": "10.242.0.9", "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": now}]}),
    }
}

async fn cluster() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let registry = skiff_apiserver::Registry::open(&dir.path().join("state.redb")).unwrap();
    registry.bootstrap("10.243.0.1").await.unwrap();
    let client: Arc<dyn ApiClient> = registry;
    let stop = CancellationToken::new();
    tokio::spawn(skiff_controllers::run_all(client.clone(), stop.clone()));
    let kubelet = client.clone();
    let kubelet_stop = stop.clone();
    tokio::spawn(async move {
        let (_store, mut events, _h) = Informer::<Pod>::new(kubelet.clone(), None, ListOptions::default()).spawn();
        loop {
            tokio::select! {
                _ = kubelet_stop.cancelled() => return,
                Some(event) = events.recv() => if let InformerEvent::Applied(pod) = event {
                    if pod.status.as_ref().and_then(|s| s.phase.as_deref()).is_some_and(|p| p != "Pending") {
                        continue;
                    }
                    let api: Api<Pod> = Api::namespaced(kubelet.clone(), pod.metadata.namespace.as_deref().unwrap());
                    let _ = api.patch_status(pod.metadata.name.as_deref().unwrap(), PatchKind::Merge, json!({"status": reported_status(&pod)})).await;
                },
            }
        }
    });
    Cluster { client, _dir: dir, stop }
}

/// Polls `check` until it returns `Some` or 30 s pass.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..600 {
        if let Some(v) = check().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

fn deployment(replicas: i32, image: &str) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "app", "image": image}]}}}
    }))
    .unwrap()
}

async fn live_ready_pods(client: &Arc<dyn ApiClient>) -> i64 {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let (items, _) = pods.list(&ListOptions::labels("app=web")).await.unwrap();
    items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
        .count() as i64
}

async fn rolled_out(deployments: &Api<Deployment>, replicas: i32, image: &str) -> Option<Deployment> {
    let d = deployments.get("web").await.ok()?;
    let s = d.status.clone()?;
    let image_now = d.spec.as_ref()?.template.spec.as_ref()?.containers[0].image.clone();
    let done = s.observed_generation == d.metadata.generation
        && s.updated_replicas == Some(replicas)
        && s.replicas == Some(replicas)
        && s.available_replicas == Some(replicas)
        && image_now.as_deref() == Some(image)
        && s.conditions.iter().flatten().any(|c| c.reason.as_deref() == Some("NewReplicaSetAvailable"));
    done.then_some(d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_with_max_unavailable_zero_keeps_every_replica_ready_and_rolls_back() {
    let c = cluster().await;
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), "default");
    let replicasets: Api<ReplicaSet> = Api::namespaced(c.client.clone(), "default");
    deployments.create(&deployment(3, "busybox:1")).await.unwrap();
    eventually("first rollout", || rolled_out(&deployments, 3, "busybox:1")).await;

    // Watch readiness through the whole update: it must never drop below 3.
    let lowest = Arc::new(AtomicI64::new(i64::MAX));
    let watching = CancellationToken::new();
    let monitor = {
        let (client, lowest, watching) = (c.client.clone(), lowest.clone(), watching.clone());
        tokio::spawn(async move {
            while !watching.is_cancelled() {
                lowest.fetch_min(live_ready_pods(&client).await, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let image = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "busybox:2"}]}}}});
    deployments.patch("web", PatchKind::StrategicMerge, image).await.unwrap();
    let d = eventually("second rollout", || rolled_out(&deployments, 3, "busybox:2")).await;
    watching.cancel();
    monitor.await.unwrap();
    assert!(lowest.load(Ordering::SeqCst) >= 3, "ready pods dropped to {}", lowest.load(Ordering::SeqCst));
    assert_eq!(d.metadata.annotations.as_ref().unwrap()["deployment.kubernetes.io/revision"], "2");

    let (sets, _) = replicasets.list(&ListOptions::labels("app=web")).await.unwrap();
    let mut revisions: Vec<(String, i32)> = sets
        .iter()
        .map(|rs| {
            (
                rs.metadata.annotations.as_ref().unwrap()["deployment.kubernetes.io/revision"].clone(),
                rs.spec.as_ref().unwrap().replicas.unwrap(),
            )
        })
        .collect();
    revisions.sort();
    assert_eq!(revisions, vec![("1".to_string(), 0), ("2".to_string(), 3)]);

    // Rollback as `kubectl rollout undo` does it: the old template comes back, and its
    // ReplicaSet becomes revision 3.
    let back = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "busybox:1"}]}}}});
    deployments.patch("web", PatchKind::StrategicMerge, back).await.unwrap();
    eventually("rollback", || rolled_out(&deployments, 3, "busybox:1")).await;
    let (sets, _) = replicasets.list(&ListOptions::labels("app=web")).await.unwrap();
    assert_eq!(sets.len(), 2, "the old ReplicaSet is reused, not copied");
    let reused = sets.iter().find(|rs| rs.spec.as_ref().unwrap().replicas == Some(3)).unwrap();
    assert_eq!(reused.metadata.annotations.as_ref().unwrap()["deployment.kubernetes.io/revision"], "3");

    deployments.patch("web", PatchKind::Merge, json!({"spec": {"replicas": 5}})).await.unwrap();
    eventually("scale to 5", || rolled_out(&deployments, 5, "busybox:1")).await;

    // Deleting the Deployment removes its ReplicaSets and their pods.
    deployments.delete("web", &DeleteOptions::default()).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    eventually("cascading delete", || async {
        let (sets, _) = replicasets.list(&ListOptions::default()).await.unwrap();
        let (left, _) = pods.list(&ListOptions::labels("app=web")).await.unwrap();
        (sets.is_empty() && left.is_empty()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_pod_of_a_replicaset_is_replaced() {
    let c = cluster().await;
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), "default");
    deployments.create(&deployment(2, "busybox:1")).await.unwrap();
    eventually("rollout", || rolled_out(&deployments, 2, "busybox:1")).await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let (before, _) = pods.list(&ListOptions::labels("app=web")).await.unwrap();
    let victim = before[0].metadata.name.clone().unwrap();
    pods.delete(&victim, &DeleteOptions::default()).await.unwrap();
    eventually("a replacement", || async {
        let (now, _) = pods.list(&ListOptions::labels("app=web")).await.unwrap();
        let names: Vec<_> = now.iter().filter_map(|p| p.metadata.name.clone()).collect();
        (names.len() == 2 && !names.contains(&victim) && live_ready_pods(&c.client).await == 2).then_some(())
    })
    .await;
}

fn job(name: &str, outcome: &str, completions: i32, parallelism: i32, backoff_limit: i32) -> Job {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"completions": completions, "parallelism": parallelism, "backoffLimit": backoff_limit,
                 "template": {"metadata": {"labels": {"test/outcome": outcome}},
                              "spec": {"restartPolicy": "Never", "containers": [{"name": "work", "image": "busybox:1"}]}}}
    }))
    .unwrap()
}

fn condition(job: &Job, type_: &str) -> Option<String> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
        .and_then(|c| c.reason.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_three_completions_at_parallelism_two_completes() {
    let c = cluster().await;
    let jobs: Api<Job> = Api::namespaced(c.client.clone(), "default");
    jobs.create(&job("work", "succeed", 3, 2, 6)).await.unwrap();
    let done = eventually("job complete", || async {
        jobs.get("work").await.ok().filter(|j| condition(j, "Complete").is_some())
    })
    .await;
    let status = done.status.unwrap();
    assert_eq!(status.succeeded, Some(3));
    assert!(status.completion_time.is_some());
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let (made, _) = pods.list(&ListOptions::labels("batch.kubernetes.io/job-name=work")).await.unwrap();
    assert_eq!(made.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_ends_with_backoff_limit_exceeded() {
    let c = cluster().await;
    let jobs: Api<Job> = Api::namespaced(c.client.clone(), "default");
    jobs.create(&job("broken", "fail", 1, 1, 0)).await.unwrap();
    let failed = eventually("job failed", || async {
        jobs.get("broken").await.ok().filter(|j| condition(j, "Failed").is_some())
    })
    .await;
    assert_eq!(condition(&failed, "Failed").as_deref(), Some("BackoffLimitExceeded"));
    assert_eq!(failed.status.unwrap().failed, Some(1));
}

async fn add_ready_node(client: &Arc<dyn ApiClient>, name: &str) {
    use k8s_openapi::api::core::v1::Node;
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node =
        serde_json::from_value(json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}}))
            .unwrap();
    nodes.create(&node).await.unwrap();
    let status = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}});
    nodes.patch_status(name, PatchKind::Merge, status).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemonset_runs_one_pod_per_node() {
    use k8s_openapi::api::apps::v1::DaemonSet;
    let c = cluster().await;
    add_ready_node(&c.client, "node-a").await;
    let sets: Api<DaemonSet> = Api::namespaced(c.client.clone(), "default");
    let ds: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "agent", "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
                 "template": {"metadata": {"labels": {"app": "agent"}},
                              "spec": {"containers": [{"name": "a", "image": "busybox:1"}]}}}}))
    .unwrap();
    sets.create(&ds).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    eventually("one pod on the node, reported ready", || async {
        let ds = sets.get("agent").await.ok()?;
        let s = ds.status?;
        (s.desired_number_scheduled == 1 && s.number_ready == 1).then_some(())
    })
    .await;
    let (made, _) = pods.list(&ListOptions::labels("app=agent")).await.unwrap();
    assert_eq!(made.len(), 1);
    assert_eq!(made[0].spec.as_ref().unwrap().node_name.as_deref(), Some("node-a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statefulset_creates_ordered_pods_with_stable_claims_and_scales_down_from_the_top() {
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    let c = cluster().await;
    let sets: Api<StatefulSet> = Api::namespaced(c.client.clone(), "default");
    let sts: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "db", "namespace": "default"},
        "spec": {"replicas": 3, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                 "template": {"metadata": {"labels": {"app": "db"}},
                              "spec": {"containers": [{"name": "db", "image": "busybox:1"}]}},
                 "volumeClaimTemplates": [{"metadata": {"name": "data"},
                     "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}}))
    .unwrap();
    sets.create(&sts).await.unwrap();
    eventually("three ready replicas", || async {
        let s = sets.get("db").await.ok()?.status?;
        (s.ready_replicas == Some(3)).then_some(())
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let (made, _) = pods.list(&ListOptions::labels("app=db")).await.unwrap();
    let mut names: Vec<_> = made.iter().filter_map(|p| p.metadata.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["db-0", "db-1", "db-2"]);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.client.clone(), "default");
    let (pvcs, _) = claims.list(&ListOptions::default()).await.unwrap();
    let mut claim_names: Vec<_> = pvcs.iter().filter_map(|p| p.metadata.name.clone()).collect();
    claim_names.sort();
    assert_eq!(claim_names, ["data-db-0", "data-db-1", "data-db-2"]);

    sets.patch("db", PatchKind::Merge, json!({"spec": {"replicas": 1}})).await.unwrap();
    eventually("scaled down to db-0", || async {
        let (left, _) = pods.list(&ListOptions::labels("app=db")).await.unwrap();
        let names: Vec<_> = left.iter().filter_map(|p| p.metadata.name.clone()).collect();
        (names == ["db-0"]).then_some(())
    })
    .await;
    // Stable storage outlives the pods.
    let (pvcs, _) = claims.list(&ListOptions::default()).await.unwrap();
    assert_eq!(pvcs.len(), 3);
}

fn with_spec(mut job: Job, extra: serde_json::Value) -> Job {
    let mut spec = serde_json::to_value(job.spec.take().unwrap()).unwrap();
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    job.spec = Some(serde_json::from_value(spec).unwrap());
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_past_its_active_deadline_fails_with_deadline_exceeded_and_its_pods_go() {
    let c = cluster().await;
    let jobs: Api<Job> = Api::namespaced(c.client.clone(), "default");
    jobs.create(&with_spec(job("slow", "run", 1, 2, 6), json!({"activeDeadlineSeconds": 1}))).await.unwrap();
    let failed = eventually("DeadlineExceeded", || async {
        jobs.get("slow").await.ok().filter(|j| condition(j, "Failed").is_some())
    })
    .await;
    assert_eq!(condition(&failed, "Failed").as_deref(), Some("DeadlineExceeded"));
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    eventually("the running pods deleted", || async {
        let (left, _) = pods.list(&ListOptions::labels("batch.kubernetes.io/job-name=slow")).await.unwrap();
        left.is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_job_with_ttl_zero_is_deleted_with_its_pods() {
    let c = cluster().await;
    let jobs: Api<Job> = Api::namespaced(c.client.clone(), "default");
    jobs.create(&with_spec(job("once", "succeed", 1, 1, 6), json!({"ttlSecondsAfterFinished": 0}))).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    eventually("the Job and its pod gone", || async {
        let gone = jobs.get_opt("once").await.unwrap().is_none();
        let (left, _) = pods.list(&ListOptions::labels("batch.kubernetes.io/job-name=once")).await.unwrap();
        (gone && left.is_empty()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_job_runs_no_pods_until_resumed() {
    let c = cluster().await;
    let jobs: Api<Job> = Api::namespaced(c.client.clone(), "default");
    jobs.create(&with_spec(job("later", "succeed", 2, 2, 6), json!({"suspend": true}))).await.unwrap();
    let suspended = eventually("Suspended", || async {
        jobs.get("later").await.ok().filter(|j| condition(j, "Suspended").is_some())
    })
    .await;
    assert_eq!(condition(&suspended, "Suspended").as_deref(), Some("JobSuspended"));
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let (none, _) = pods.list(&ListOptions::labels("batch.kubernetes.io/job-name=later")).await.unwrap();
    assert!(none.is_empty());
    jobs.patch("later", PatchKind::Merge, json!({"spec": {"suspend": false}})).await.unwrap();
    let done = eventually("complete after resume", || async {
        jobs.get("later").await.ok().filter(|j| condition(j, "Complete").is_some())
    })
    .await;
    assert_eq!(done.status.unwrap().succeeded, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_indexed_job_gives_each_pod_its_completion_index() {
    let c = cluster().await;
    let jobs: Api<Job> = Api::namespaced(c.client.clone(), "default");
    jobs.create(&with_spec(job("indexed", "succeed", 3, 3, 6), json!({"completionMode": "Indexed"}))).await.unwrap();
    let done = eventually("complete", || async {
        jobs.get("indexed").await.ok().filter(|j| condition(j, "Complete").is_some())
    })
    .await;
    assert_eq!(done.status.unwrap().completed_indexes.as_deref(), Some("0-2"));
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let (made, _) = pods.list(&ListOptions::labels("batch.kubernetes.io/job-name=indexed")).await.unwrap();
    let mut indexes: Vec<String> = made
        .iter()
        .map(|p| p.metadata.annotations.as_ref().unwrap()["batch.kubernetes.io/job-completion-index"].clone())
        .collect();
    indexes.sort();
    assert_eq!(indexes, ["0", "1", "2"]);
}

async fn cronjob_jobs(c: &Cluster, name: &str) -> Vec<Job> {
    let jobs: Api<Job> = Api::namespaced(c.client.clone(), "default");
    let (all, _) = jobs.list(&ListOptions::default()).await.unwrap();
    all.into_iter().filter(|j| j.metadata.name.as_deref().is_some_and(|n| n.starts_with(&format!("{name}-")))).collect()
}

/// Two schedule ticks of `* * * * *` with a Job that never finishes: Forbid keeps the first
/// running and starts none; Replace deletes it and starts the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_policy_forbid_skips_and_replace_replaces_a_running_job() {
    use k8s_openapi::api::batch::v1::CronJob;
    let c = cluster().await;
    let cronjobs: Api<CronJob> = Api::namespaced(c.client.clone(), "default");
    for (name, policy) in [("forbid", "Forbid"), ("replace", "Replace")] {
        let cj: CronJob = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"schedule": "* * * * *", "concurrencyPolicy": policy,
                     "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never",
                         "containers": [{"name": "w", "image": "busybox:1"}]}}}}}}))
        .unwrap();
        cronjobs.create(&cj).await.unwrap();
    }
    let wait = |what: &'static str, name: &'static str, want: usize| {
        let c = &c;
        async move {
            for _ in 0..1500 {
                let jobs = cronjob_jobs(c, name).await;
                let live: Vec<&Job> = jobs.iter().filter(|j| j.metadata.deletion_timestamp.is_none()).collect();
                if live.len() == want {
                    return live.iter().filter_map(|j| j.metadata.name.clone()).collect::<Vec<_>>();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("timed out waiting for {what}");
        }
    };
    let first_forbid = wait("the first forbid run", "forbid", 1).await;
    let first_replace = wait("the first replace run", "replace", 1).await;
    // The next minute boundary: Replace swaps its Job, Forbid keeps its one Job.
    let replaced = {
        let mut found = None;
        for _ in 0..1500 {
            let names = wait("one replace job", "replace", 1).await;
            if names != first_replace {
                found = Some(names);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        found.expect("Replace started a new Job at the next tick")
    };
    assert_ne!(replaced, first_replace);
    assert_eq!(
        wait("forbid still one job", "forbid", 1).await,
        first_forbid,
        "Forbid started another Job while one ran"
    );
}
