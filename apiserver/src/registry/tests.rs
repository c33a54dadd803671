//! The registry against a real redb file in a temp dir.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use skiff_api::{ApiClient, DeleteOptions, ListOptions, PatchKind, ResourceKind, WatchEventType, WriteOptions};
use tempfile::TempDir;

use super::{Registry, core};

struct Fixture {
    reg: Arc<Registry>,
    dir: TempDir,
}

impl Fixture {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(&dir.path().join("db/state.redb")).unwrap();
        reg.bootstrap("10.43.0.1").await.unwrap();
        Self { reg, dir }
    }

    fn reopen(self) -> Self {
        let Fixture { reg, dir } = self;
        drop(reg);
        let reg = Registry::open(&dir.path().join("db/state.redb")).unwrap();
        Self { reg, dir }
    }
}

fn pods() -> &'static ResourceKind {
    core("pods")
}

fn deployments() -> &'static ResourceKind {
    ResourceKind::by_plural("apps", "v1", "deployments").unwrap()
}

fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "web"}},
           "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}})
}

fn rv(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap()
}

async fn next(stream: &mut skiff_api::WatchStream) -> skiff_api::WatchEvent {
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("watch event in time")
        .expect("stream open")
}

#[tokio::test]
async fn create_fills_system_fields_and_defaults() {
    let f = Fixture::new().await;
    let created = f.reg.create(pods(), Some("default"), pod("web")).await.unwrap();
    let meta = &created["metadata"];
    assert_eq!(meta["namespace"], "default");
    assert_eq!(meta["uid"].as_str().unwrap().len(), 36);
    assert!(meta["creationTimestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(meta["generation"], 1);
    assert!(meta["resourceVersion"].is_string());
    assert_eq!(created["spec"]["restartPolicy"], "Always");
    assert_eq!(created["status"]["phase"], "Pending");
    assert_eq!(created["status"]["qosClass"], "BestEffort");
    let got = f.reg.get(pods(), Some("default"), "web").await.unwrap();
    assert_eq!(got, created);
}

#[tokio::test]
async fn create_errors_are_kubernetes_statuses() {
    let f = Fixture::new().await;
    let err = f.reg.create(pods(), Some("nope"), pod("web")).await.unwrap_err();
    assert_eq!((err.code, err.message.as_str()), (404, "namespaces \"nope\" not found"));

    let mut other_ns = pod("web");
    other_ns["metadata"]["namespace"] = json!("kube-system");
    assert_eq!(f.reg.create(pods(), Some("default"), other_ns).await.unwrap_err().code, 400);

    f.reg.create(pods(), Some("default"), pod("web")).await.unwrap();
    let err = f.reg.create(pods(), Some("default"), pod("web")).await.unwrap_err();
    assert_eq!((err.code, err.message.as_str()), (409, "pods \"web\" already exists"));

    let no_containers = json!({"metadata": {"name": "bad"}, "spec": {}});
    let err = f.reg.create(pods(), Some("default"), no_containers).await.unwrap_err();
    assert_eq!(err.code, 422);
    assert_eq!(err.message, "Pod \"bad\" is invalid: spec.containers: Required value");
    assert_eq!(err.causes[0].field, "spec.containers");

    let wrong_type = json!({"metadata": {"name": "bad"}, "spec": {"containers": [{"name": "a", "image": 5}]}});
    let err = f.reg.create(pods(), Some("default"), wrong_type).await.unwrap_err();
    assert_eq!(err.code, 400, "{}", err.message);

    let bad_name = json!({"metadata": {"name": "Bad_Name"}, "data": {}});
    let err = f.reg.create(core("configmaps"), Some("default"), bad_name).await.unwrap_err();
    assert_eq!(err.code, 422);
    assert!(err.message.starts_with("ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\""));
}

#[tokio::test]
async fn generate_name_appends_a_random_suffix() {
    let f = Fixture::new().await;
    let body = json!({"metadata": {"generateName": "web-"}, "spec": {"containers": [{"name": "a", "image": "x"}]}});
    let a = f.reg.create(pods(), Some("default"), body.clone()).await.unwrap();
    let b = f.reg.create(pods(), Some("default"), body).await.unwrap();
    let name = a["metadata"]["name"].as_str().unwrap();
    assert!(name.starts_with("web-") && name.len() == 9, "{name}");
    assert_ne!(a["metadata"]["name"], b["metadata"]["name"]);
}

#[tokio::test]
async fn updates_check_resource_version_and_track_generation() {
    let f = Fixture::new().await;
    let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"selector": {"matchLabels": {"app": "d"}},
                 "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": [{"name": "a", "image": "x"}]}}}});
    let created = f.reg.create(deployments(), Some("default"), d).await.unwrap();
    assert_eq!(created["metadata"]["generation"], 1);

    // A label change is not a spec change.
    let mut labelled = created.clone();
    labelled["metadata"]["labels"] = json!({"x": "y"});
    let labelled = f.reg.update(deployments(), Some("default"), "d", None, labelled).await.unwrap();
    assert_eq!(labelled["metadata"]["generation"], 1);
    assert!(rv(&labelled) > rv(&created));

    // A stale resourceVersion is a conflict.
    let err = f.reg.update(deployments(), Some("default"), "d", None, created.clone()).await.unwrap_err();
    assert_eq!(err.code, 409);
    assert!(err.is_conflict());
    assert_eq!(
        err.message,
        "Operation cannot be fulfilled on deployments.apps \"d\": the object has been modified; please apply your changes to the latest version and try again"
    );

    // A spec change bumps the generation; status in a main update is ignored.
    let mut scaled = labelled.clone();
    scaled["spec"]["replicas"] = json!(3);
    scaled["status"] = json!({"replicas": 99});
    let scaled = f.reg.update(deployments(), Some("default"), "d", None, scaled).await.unwrap();
    assert_eq!(scaled["metadata"]["generation"], 2);
    assert!(scaled["status"].get("replicas").is_none());

    // A status update never bumps the generation and ignores spec changes.
    let mut status = scaled.clone();
    status["spec"]["replicas"] = json!(7);
    status["status"] = json!({"replicas": 3, "observedGeneration": 2});
    let status = f.reg.update(deployments(), Some("default"), "d", Some("status"), status).await.unwrap();
    assert_eq!(status["metadata"]["generation"], 2);
    assert_eq!(status["spec"]["replicas"], 3);
    assert_eq!(status["status"]["replicas"], 3);

    // An update that changes nothing writes nothing.
    let same = f.reg.update(deployments(), Some("default"), "d", None, status.clone()).await.unwrap();
    assert_eq!(rv(&same), rv(&status));
}

#[tokio::test]
async fn pod_spec_is_immutable_except_images() {
    let f = Fixture::new().await;
    let created = f.reg.create(pods(), Some("default"), pod("web")).await.unwrap();
    let mut image = created.clone();
    image["spec"]["containers"][0]["image"] = json!("nginx:1.28");
    let image = f.reg.update(pods(), Some("default"), "web", None, image).await.unwrap();
    assert_eq!(image["spec"]["containers"][0]["image"], "nginx:1.28");
    let mut policy = image.clone();
    policy["spec"]["restartPolicy"] = json!("Never");
    let err = f.reg.update(pods(), Some("default"), "web", None, policy).await.unwrap_err();
    assert_eq!(err.code, 422);
    assert!(err.message.contains("spec: Forbidden: pod updates may not change fields other than"), "{}", err.message);
}

#[tokio::test]
async fn binding_sets_the_node_once() {
    let f = Fixture::new().await;
    f.reg.create(pods(), Some("default"), pod("web")).await.unwrap();
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "web"},
                         "target": {"apiVersion": "v1", "kind": "Node", "name": "node1"}});
    let status = f.reg.create_subresource(pods(), Some("default"), "web", "binding", binding.clone()).await.unwrap();
    assert_eq!(status["status"], "Success");
    let bound = f.reg.get(pods(), Some("default"), "web").await.unwrap();
    assert_eq!(bound["spec"]["nodeName"], "node1");
    assert_eq!(bound["status"]["conditions"][0]["type"], "PodScheduled");
    let err = f.reg.create_subresource(pods(), Some("default"), "web", "binding", binding).await.unwrap_err();
    assert_eq!(err.code, 409);
    assert_eq!(
        err.message,
        "Operation cannot be fulfilled on pods/binding \"web\": pod web is already assigned to node \"node1\""
    );
}

#[tokio::test]
async fn bound_pods_are_deleted_gracefully_and_unbound_ones_at_once() {
    let f = Fixture::new().await;
    f.reg.create(pods(), Some("default"), pod("loose")).await.unwrap();
    f.reg.delete(pods(), Some("default"), "loose", &DeleteOptions::default()).await.unwrap();
    assert!(f.reg.get(pods(), Some("default"), "loose").await.unwrap_err().is_not_found());

    f.reg.create(pods(), Some("default"), pod("web")).await.unwrap();
    let binding = json!({"target": {"kind": "Node", "name": "node1"}});
    f.reg.create_subresource(pods(), Some("default"), "web", "binding", binding).await.unwrap();
    let marked = f.reg.delete(pods(), Some("default"), "web", &DeleteOptions::default()).await.unwrap();
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 30);
    assert!(f.reg.get(pods(), Some("default"), "web").await.is_ok());

    let now = DeleteOptions { grace_period_seconds: Some(0), ..Default::default() };
    f.reg.delete(pods(), Some("default"), "web", &now).await.unwrap();
    assert!(f.reg.get(pods(), Some("default"), "web").await.unwrap_err().is_not_found());
}

#[tokio::test]
async fn finalizers_hold_an_object_until_emptied() {
    let f = Fixture::new().await;
    let cms = core("configmaps");
    let cm = json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}, "data": {"a": "b"}});
    f.reg.create(cms, Some("default"), cm).await.unwrap();
    let mut watch = f
        .reg
        .watch(cms, Some("default"), &ListOptions { resource_version: Some("0".into()), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(next(&mut watch).await.kind, WatchEventType::Added);

    let marked = f.reg.delete(cms, Some("default"), "held", &DeleteOptions::default()).await.unwrap();
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(next(&mut watch).await.kind, WatchEventType::Modified);

    let patch = json!({"metadata": {"finalizers": null}});
    f.reg.patch(cms, Some("default"), "held", None, PatchKind::Merge, patch).await.unwrap();
    let gone = next(&mut watch).await;
    assert_eq!(gone.kind, WatchEventType::Deleted);
    assert!(f.reg.get(cms, Some("default"), "held").await.unwrap_err().is_not_found());
}

#[tokio::test]
async fn delete_preconditions_are_checked() {
    let f = Fixture::new().await;
    let created = f.reg.create(pods(), Some("default"), pod("web")).await.unwrap();
    let wrong = DeleteOptions { precondition_uid: Some("other".into()), ..Default::default() };
    assert_eq!(f.reg.delete(pods(), Some("default"), "web", &wrong).await.unwrap_err().code, 409);
    let stale = DeleteOptions { precondition_resource_version: Some("1".into()), ..Default::default() };
    assert_eq!(f.reg.delete(pods(), Some("default"), "web", &stale).await.unwrap_err().code, 409);
    let right = DeleteOptions {
        precondition_uid: created["metadata"]["uid"].as_str().map(String::from),
        precondition_resource_version: created["metadata"]["resourceVersion"].as_str().map(String::from),
        ..Default::default()
    };
    f.reg.delete(pods(), Some("default"), "web", &right).await.unwrap();
}

#[tokio::test]
async fn lists_filter_by_selectors_and_page_with_continue() {
    let f = Fixture::new().await;
    for i in 0..5 {
        let mut p = pod(&format!("p{i}"));
        p["metadata"]["labels"] = json!({"app": if i % 2 == 0 { "even" } else { "odd" }});
        f.reg.create(pods(), Some("default"), p).await.unwrap();
    }
    f.reg.create(pods(), Some("kube-system"), pod("sys")).await.unwrap();

    let even = f.reg.list(pods(), Some("default"), &ListOptions::labels("app=even")).await.unwrap();
    assert_eq!(even.items.len(), 3);
    let by_name = f.reg.list(pods(), None, &ListOptions::fields("metadata.name=sys")).await.unwrap();
    assert_eq!(by_name.items[0]["metadata"]["namespace"], "kube-system");
    let all = f.reg.list(pods(), None, &ListOptions::default()).await.unwrap();
    assert_eq!(all.items.len(), 6);
    let pending = f.reg.list(pods(), None, &ListOptions::fields("status.phase=Pending,spec.nodeName=")).await.unwrap();
    assert_eq!(pending.items.len(), 6);

    let mut opts = ListOptions { limit: Some(2), ..Default::default() };
    let mut names = Vec::new();
    let mut first_rv = None;
    loop {
        let page = f.reg.list(pods(), Some("default"), &opts).await.unwrap();
        first_rv.get_or_insert(page.resource_version.clone());
        assert_eq!(Some(&page.resource_version), first_rv.as_ref());
        names.extend(page.items.iter().map(|p| p["metadata"]["name"].as_str().unwrap().to_string()));
        match page.continue_token {
            Some(token) => opts.continue_token = Some(token),
            None => break,
        }
    }
    assert_eq!(names, ["p0", "p1", "p2", "p3", "p4"]);
}

#[tokio::test]
async fn watch_resumes_from_a_list_and_filters() {
    let f = Fixture::new().await;
    f.reg.create(pods(), Some("default"), pod("before")).await.unwrap();
    let list = f.reg.list(pods(), Some("default"), &ListOptions::default()).await.unwrap();
    let opts = ListOptions {
        resource_version: Some(list.resource_version.clone()),
        label_selector: Some("app=web".into()),
        ..Default::default()
    };
    let mut watch = f.reg.watch(pods(), Some("default"), &opts).await.unwrap();
    f.reg.create(pods(), Some("kube-system"), pod("elsewhere")).await.unwrap();
    let mut other = pod("other");
    other["metadata"]["labels"] = json!({"app": "db"});
    f.reg.create(pods(), Some("default"), other).await.unwrap();
    f.reg.create(pods(), Some("default"), pod("after")).await.unwrap();
    let ev = next(&mut watch).await;
    assert_eq!(ev.kind, WatchEventType::Added);
    assert_eq!(ev.object["metadata"]["name"], "after");

    // From "0": the current objects first, then live changes.
    let mut from_zero = f
        .reg
        .watch(pods(), Some("default"), &ListOptions { resource_version: Some("0".into()), ..Default::default() })
        .await
        .unwrap();
    let mut initial = Vec::new();
    for _ in 0..3 {
        let ev = next(&mut from_zero).await;
        assert_eq!(ev.kind, WatchEventType::Added);
        initial.push(ev.object["metadata"]["name"].as_str().unwrap().to_string());
    }
    assert_eq!(initial, ["after", "before", "other"]);
    f.reg.delete(pods(), Some("default"), "before", &DeleteOptions::default()).await.unwrap();
    let ev = next(&mut from_zero).await;
    assert_eq!((ev.kind, ev.object["metadata"]["name"].as_str()), (WatchEventType::Deleted, Some("before")));
}

#[tokio::test]
async fn a_watch_from_before_a_restart_is_expired() {
    let f = Fixture::new().await;
    let created = f.reg.create(pods(), Some("default"), pod("web")).await.unwrap();
    let f = f.reopen();
    let old = (rv(&created) - 1).to_string();
    let mut watch = f
        .reg
        .watch(pods(), Some("default"), &ListOptions { resource_version: Some(old.clone()), ..Default::default() })
        .await
        .unwrap();
    let ev = next(&mut watch).await;
    assert_eq!(ev.kind, WatchEventType::Error);
    assert_eq!(ev.object["code"], 410);
    assert_eq!(ev.object["reason"], "Expired");
    assert_eq!(ev.object["message"], format!("too old resource version: {old} ({})", rv(&created)));
    assert!(watch.next().await.is_none());
    // From the current revision it works.
    let current = ListOptions { resource_version: Some(rv(&created).to_string()), ..Default::default() };
    let mut watch = f.reg.watch(pods(), Some("default"), &current).await.unwrap();
    f.reg.delete(pods(), Some("default"), "web", &DeleteOptions::default()).await.unwrap();
    assert_eq!(next(&mut watch).await.kind, WatchEventType::Deleted);
}

#[tokio::test]
async fn kubectl_apply_patches_and_server_side_apply() {
    let f = Fixture::new().await;
    let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "demo", "namespace": "default"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "demo"}},
                 "template": {"metadata": {"labels": {"app": "demo"}}, "spec": {"containers": [{"name": "app", "image": "nginx:1.25"}]}}}});
    let apply = PatchKind::Apply { field_manager: "kubectl".into(), force: false };
    let (created, was_created) = f
        .reg
        .patch_with(deployments(), Some("default"), "demo", None, apply.clone(), d.clone(), &WriteOptions::default())
        .await
        .unwrap();
    assert!(was_created);
    assert_eq!(created["spec"]["strategy"]["type"], "RollingUpdate");

    let smp = json!({"spec": {"replicas": 2, "template": {"spec": {"$setElementOrder/containers": [{"name": "app"}],
                     "containers": [{"image": "nginx:1.26", "name": "app"}]}}}});
    let patched =
        f.reg.patch(deployments(), Some("default"), "demo", None, PatchKind::StrategicMerge, smp).await.unwrap();
    assert_eq!(patched["spec"]["replicas"], 2);
    assert_eq!(patched["spec"]["template"]["spec"]["containers"][0]["image"], "nginx:1.26");
    assert_eq!(patched["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"], "IfNotPresent");
    assert_eq!(patched["metadata"]["generation"], 2);

    let mut again = d;
    again["spec"]["replicas"] = json!(4);
    let (applied, was_created) = f
        .reg
        .patch_with(deployments(), Some("default"), "demo", None, apply, again, &WriteOptions::default())
        .await
        .unwrap();
    assert!(!was_created);
    assert_eq!(applied["spec"]["replicas"], 4);
    assert_eq!(applied["metadata"]["uid"], created["metadata"]["uid"]);

    let undo = json!([{"op": "replace", "path": "/spec/replicas", "value": 1}]);
    let undone = f.reg.patch(deployments(), Some("default"), "demo", None, PatchKind::Json, undo).await.unwrap();
    assert_eq!(undone["spec"]["replicas"], 1);

    let scale = json!({"spec": {"replicas": 3}});
    let scaled =
        f.reg.patch(deployments(), Some("default"), "demo", Some("scale"), PatchKind::Merge, scale).await.unwrap();
    assert_eq!(scaled["kind"], "Scale");
    assert_eq!(scaled["spec"]["replicas"], 3);
    assert_eq!(scaled["status"]["selector"], "app=demo");
    let stored = f.reg.get(deployments(), Some("default"), "demo").await.unwrap();
    assert_eq!(stored["spec"]["replicas"], 3);

    let missing = f.reg.patch(deployments(), Some("default"), "nope", None, PatchKind::Merge, json!({})).await;
    assert!(missing.unwrap_err().is_not_found());
}

#[tokio::test]
async fn service_cluster_ips_are_allocated_once_and_kept_across_restarts() {
    let f = Fixture::new().await;
    let services = core("services");
    let kubernetes = f.reg.get(services, Some("default"), "kubernetes").await.unwrap();
    assert_eq!(kubernetes["spec"]["clusterIP"], "10.43.0.1");
    assert_eq!(kubernetes["spec"]["ports"][0]["targetPort"], 6443);

    let svc =
        |name: &str| json!({"metadata": {"name": name}, "spec": {"selector": {"app": name}, "ports": [{"port": 80}]}});
    let a = f.reg.create(services, Some("default"), svc("a")).await.unwrap();
    assert_eq!(a["spec"]["clusterIP"], "10.43.1.0");
    assert_eq!(a["spec"]["clusterIPs"], json!(["10.43.1.0"]));
    assert_eq!(a["spec"]["ports"][0], json!({"port": 80, "protocol": "TCP", "targetPort": 80}));

    let f = f.reopen();
    let b = f.reg.create(services, Some("default"), svc("b")).await.unwrap();
    assert_eq!(b["spec"]["clusterIP"], "10.43.1.1");

    let mut taken = svc("c");
    taken["spec"]["clusterIP"] = json!("10.43.1.1");
    let err = f.reg.create(services, Some("default"), taken).await.unwrap_err();
    assert_eq!(err.code, 422);
    assert!(err.message.contains("provided IP is already allocated"), "{}", err.message);

    let mut node_port = svc("np");
    node_port["spec"]["type"] = json!("NodePort");
    let np = f.reg.create(services, Some("default"), node_port).await.unwrap();
    assert_eq!(np["spec"]["ports"][0]["nodePort"], 30000);

    // An update that leaves the address out keeps it.
    let mut update = b.clone();
    update["spec"].as_object_mut().unwrap().remove("clusterIP");
    update["spec"].as_object_mut().unwrap().remove("clusterIPs");
    let updated = f.reg.update(services, Some("default"), "b", None, update).await.unwrap();
    assert_eq!(updated["spec"]["clusterIP"], "10.43.1.1");
}

#[tokio::test]
async fn namespaces_terminate_until_finalized() {
    let f = Fixture::new().await;
    let namespaces = core("namespaces");
    f.reg.create(namespaces, None, json!({"metadata": {"name": "team"}})).await.unwrap();
    let ns = f.reg.delete(namespaces, None, "team", &DeleteOptions::default()).await.unwrap();
    assert_eq!(ns["status"]["phase"], "Terminating");
    let err = f.reg.delete(namespaces, None, "kube-system", &DeleteOptions::default()).await.unwrap_err();
    assert_eq!(
        (err.code, err.message.as_str()),
        (403, "namespaces \"kube-system\" is forbidden: this namespace may not be deleted")
    );
    let err = f.reg.create(pods(), Some("team"), pod("late")).await.unwrap_err();
    assert_eq!(err.code, 403);
    let mut finalize = ns.clone();
    finalize["spec"]["finalizers"] = json!([]);
    f.reg.update(namespaces, None, "team", Some("finalize"), finalize).await.unwrap();
    assert!(f.reg.get(namespaces, None, "team").await.unwrap_err().is_not_found());
}

#[tokio::test]
async fn bootstrap_is_idempotent() {
    let f = Fixture::new().await;
    f.reg.bootstrap("10.43.0.1").await.unwrap();
    let namespaces = f.reg.list(core("namespaces"), None, &ListOptions::default()).await.unwrap();
    let names: Vec<_> = namespaces.items.iter().map(|n| n["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["default", "kube-node-lease", "kube-public", "kube-system"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_survives_a_reopen() {
    let f = Fixture::new().await;
    let cms = core("configmaps");
    let mut tasks = Vec::new();
    for i in 0..200 {
        let reg = f.reg.clone();
        tasks.push(tokio::spawn(async move {
            let cm = json!({"metadata": {"name": format!("cm-{i}")}, "data": {"i": i.to_string()}});
            reg.create(cms, Some("default"), cm).await
        }));
    }
    let mut acknowledged = Vec::new();
    for t in tasks {
        let created = t.await.unwrap().unwrap();
        acknowledged.push(created);
    }
    // Revisions are unique: every write had its own.
    let mut revisions: Vec<u64> = acknowledged.iter().map(rv).collect();
    revisions.sort();
    revisions.dedup();
    assert_eq!(revisions.len(), 200);

    let f = f.reopen();
    for created in &acknowledged {
        let name = created["metadata"]["name"].as_str().unwrap();
        let stored = f.reg.get(cms, Some("default"), name).await.unwrap();
        assert_eq!(&stored, created);
    }
    // New writes continue after the old revisions.
    let next = f.reg.create(cms, Some("default"), json!({"metadata": {"name": "next"}})).await.unwrap();
    assert!(rv(&next) > *revisions.last().unwrap());
}

#[tokio::test]
async fn orphan_deletion_releases_dependents_first() {
    let f = Fixture::new().await;
    let rs = ResourceKind::by_plural("apps", "v1", "replicasets").unwrap();
    let owner = json!({"metadata": {"name": "web"}, "spec": {"selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "a", "image": "x"}]}}}});
    let owner = f.reg.create(rs, Some("default"), owner).await.unwrap();
    let mut dependent = pod("web-1");
    dependent["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web",
        "uid": owner["metadata"]["uid"], "controller": true}]);
    f.reg.create(pods(), Some("default"), dependent).await.unwrap();
    let orphan = DeleteOptions { propagation_policy: Some("Orphan".into()), ..Default::default() };
    f.reg.delete(rs, Some("default"), "web", &orphan).await.unwrap();
    assert!(f.reg.get(rs, Some("default"), "web").await.unwrap_err().is_not_found());
    let released = f.reg.get(pods(), Some("default"), "web-1").await.unwrap();
    assert!(released["metadata"].get("ownerReferences").is_none());
}

#[tokio::test]
async fn foreground_deletion_holds_an_owner_with_dependents_until_its_finalizer_goes() {
    let f = Fixture::new().await;
    let rs = ResourceKind::by_plural("apps", "v1", "replicasets").unwrap();
    let spec = json!({"selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "a", "image": "x"}]}}});
    let owner = f.reg.create(rs, Some("default"), json!({"metadata": {"name": "web"}, "spec": spec})).await.unwrap();
    let mut dependent = pod("web-1");
    dependent["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web",
        "uid": owner["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true}]);
    f.reg.create(pods(), Some("default"), dependent).await.unwrap();
    let foreground = DeleteOptions { propagation_policy: Some("Foreground".into()), ..Default::default() };
    let held = f.reg.delete(rs, Some("default"), "web", &foreground).await.unwrap();
    assert!(held["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(held["metadata"]["finalizers"], json!(["foregroundDeletion"]));
    // The collector's part: once the dependents are gone it drops the finalizer, and the owner goes.
    f.reg.delete(pods(), Some("default"), "web-1", &DeleteOptions::default()).await.unwrap();
    let patch = json!({"metadata": {"finalizers": null}});
    f.reg.patch(rs, Some("default"), "web", None, PatchKind::Merge, patch).await.unwrap();
    assert!(f.reg.get(rs, Some("default"), "web").await.unwrap_err().is_not_found());

    // Without dependents there is nothing to wait for.
    f.reg.create(rs, Some("default"), json!({"metadata": {"name": "lone"}, "spec": spec})).await.unwrap();
    f.reg.delete(rs, Some("default"), "lone", &foreground).await.unwrap();
    assert!(f.reg.get(rs, Some("default"), "lone").await.unwrap_err().is_not_found());
}

#[tokio::test]
async fn events_expire_an_hour_after_their_last_change() {
    let f = Fixture::new().await;
    let events = core("events");
    let event = json!({"metadata": {"name": "web.1"}, "involvedObject": {"kind": "Pod", "name": "web", "namespace": "default"},
                       "reason": "Started", "message": "m", "type": "Normal"});
    f.reg.create(events, Some("default"), event).await.unwrap();
    let now = jiff::Timestamp::now();
    let sweep = |at: jiff::Timestamp| -> crate::storage::Op {
        Box::new(move |tx| super::events::expire(tx, at, super::events::EVENT_TTL))
    };
    f.reg.store.write(sweep(now)).await.unwrap();
    assert!(f.reg.get(events, Some("default"), "web.1").await.is_ok());
    let later = now + jiff::SignedDuration::from_hours(2);
    let out = f.reg.store.write(sweep(later)).await.unwrap();
    assert_eq!(out.object["expired"], 1);
    assert!(f.reg.get(events, Some("default"), "web.1").await.unwrap_err().is_not_found());
}

/// The writer half of `a_killed_server_keeps_every_acknowledged_write`: run as a child process
/// of the test binary, it writes until it is killed, printing each acknowledged name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child_writes_until_killed() {
    use std::io::Write;
    let Ok(path) = std::env::var("SKIFF_CRASH_CHILD_DB") else { return };
    let reg = Registry::open(std::path::Path::new(&path)).unwrap();
    reg.bootstrap("10.43.0.1").await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for writer in 0..4 {
        let (reg, tx) = (reg.clone(), tx.clone());
        tokio::spawn(async move {
            for i in 0..100_000 {
                let name = format!("cm-{writer}-{i}");
                let cm = json!({"metadata": {"name": name}, "data": {"payload": "x".repeat(200)}});
                reg.create(core("configmaps"), Some("default"), cm).await.unwrap();
                tx.send(name).unwrap();
            }
        });
    }
    drop(tx);
    let mut out = std::io::stdout().lock();
    while let Some(name) = rx.recv().await {
        writeln!(out, "acked {name}").unwrap();
        out.flush().unwrap();
    }
}

#[tokio::test]
async fn a_killed_server_keeps_every_acknowledged_write() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "registry::tests::crash_child_writes_until_killed", "--nocapture", "--test-threads=1"])
        .env("SKIFF_CRASH_CHILD_DB", &path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = Vec::new();
    while acked.len() < 400 {
        let line = lines.next().expect("the child writes").unwrap();
        if let Some(name) = line.strip_prefix("acked ") {
            acked.push(name.to_string());
        }
    }
    // SIGKILL mid-stream: commits in flight are lost, acknowledged ones must not be.
    child.kill().unwrap();
    for line in lines.map_while(Result::ok) {
        if let Some(name) = line.strip_prefix("acked ") {
            acked.push(name.to_string());
        }
    }
    child.wait().unwrap();
    let reg = Registry::open(&path).unwrap();
    for name in &acked {
        reg.get(core("configmaps"), Some("default"), name)
            .await
            .unwrap_or_else(|e| panic!("acknowledged {name} was lost: {e}"));
    }
    // The store still takes writes after the crash.
    reg.create(core("configmaps"), Some("default"), json!({"metadata": {"name": "after-crash"}})).await.unwrap();
}

#[tokio::test]
async fn server_side_apply_tracks_owners_across_requests() {
    let f = Fixture::new().await;
    let cms = core("configmaps");
    let apply = |manager: &str, force: bool| PatchKind::Apply { field_manager: manager.into(), force };
    let config =
        |data: Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": data});
    let (created, was_created) = f
        .reg
        .patch_with(
            cms,
            Some("default"),
            "c",
            None,
            apply("a", false),
            config(json!({"x": "1", "y": "2"})),
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    assert!(was_created);
    assert_eq!(created["metadata"]["managedFields"][0]["manager"], "a");
    assert_eq!(created["metadata"]["managedFields"][0]["fieldsV1"], json!({"f:data": {"f:x": {}, "f:y": {}}}));

    let err =
        f.reg.patch(cms, Some("default"), "c", None, apply("b", false), config(json!({"x": "9"}))).await.unwrap_err();
    assert_eq!(err.code, 409);
    assert_eq!(err.causes[0].field, ".data.x");
    let forced =
        f.reg.patch(cms, Some("default"), "c", None, apply("b", true), config(json!({"x": "9"}))).await.unwrap();
    assert_eq!(forced["data"], json!({"x": "9", "y": "2"}));

    // "a" drops y (it alone owns it) and x (now b's): y goes, x stays.
    let dropped = f.reg.patch(cms, Some("default"), "c", None, apply("a", false), config(json!({}))).await.unwrap();
    assert_eq!(dropped["data"], json!({"x": "9"}));

    // A plain update keeps managedFields it leaves out.
    let mut put = dropped.clone();
    put["metadata"].as_object_mut().unwrap().remove("managedFields");
    put["data"]["z"] = json!("3");
    let put = f.reg.update(cms, Some("default"), "c", None, put).await.unwrap();
    assert!(put["metadata"]["managedFields"].as_array().is_some_and(|m| !m.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_replayed_over_a_list_rebuilds_the_final_state() {
    let f = Fixture::new().await;
    let cms = core("configmaps");
    let start = f.reg.list(cms, Some("default"), &ListOptions::default()).await.unwrap();
    let opts = ListOptions { resource_version: Some(start.resource_version.clone()), ..Default::default() };
    let mut watch = f.reg.watch(cms, Some("default"), &opts).await.unwrap();
    let mut tasks = Vec::new();
    for writer in 0..4 {
        let reg = f.reg.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..30 {
                let name = format!("w{writer}-{}", i % 7);
                let body = json!({"metadata": {"name": name}, "data": {"i": i.to_string()}});
                match reg.create(cms, Some("default"), body.clone()).await {
                    Ok(_) => {}
                    Err(e) if e.is_already_exists() => {
                        if i % 3 == 0 {
                            reg.delete(cms, Some("default"), &name, &DeleteOptions::default()).await.unwrap();
                        } else {
                            let patch = json!({"data": {"i": i.to_string()}});
                            reg.patch(cms, Some("default"), &name, None, PatchKind::Merge, patch).await.unwrap();
                        }
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let end = f.reg.list(cms, Some("default"), &ListOptions::default()).await.unwrap();
    let end_rv: u64 = end.resource_version.parse().unwrap();
    let mut state = std::collections::BTreeMap::new();
    let mut last = 0;
    while last < end_rv {
        let ev = next(&mut watch).await;
        let at = rv(&ev.object);
        assert!(at > last, "revisions arrive in order: {at} after {last}");
        last = at;
        let name = ev.object["metadata"]["name"].as_str().unwrap().to_string();
        match ev.kind {
            WatchEventType::Added | WatchEventType::Modified => {
                state.insert(name, ev.object);
            }
            WatchEventType::Deleted => {
                state.remove(&name);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let listed: std::collections::BTreeMap<_, _> =
        end.items.into_iter().map(|o| (o["metadata"]["name"].as_str().unwrap().to_string(), o)).collect();
    assert_eq!(state, listed);
}

#[tokio::test]
async fn claims_without_a_class_get_the_default_storage_class() {
    let f = Fixture::new().await;
    let classes = ResourceKind::by_plural("storage.k8s.io", "v1", "storageclasses").unwrap();
    let class = json!({"metadata": {"name": "local-path", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
                       "provisioner": "rancher.io/local-path"});
    f.reg.create(classes, None, class).await.unwrap();
    let pvcs = core("persistentvolumeclaims");
    let claim = |name: &str| {
        json!({"metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    };
    let created = f.reg.create(pvcs, Some("default"), claim("data")).await.unwrap();
    assert_eq!(created["spec"]["storageClassName"], "local-path");
    assert_eq!(created["status"]["phase"], "Pending");
    let mut explicit = claim("none");
    explicit["spec"]["storageClassName"] = json!("");
    let created = f.reg.create(pvcs, Some("default"), explicit).await.unwrap();
    assert_eq!(created["spec"]["storageClassName"], "");
}

#[tokio::test]
async fn foreground_deletion_holds_an_owner_only_while_it_has_dependents() {
    let f = Fixture::new().await;
    let rs = ResourceKind::by_plural("apps", "v1", "replicasets").unwrap();
    let owner = |name: &str| {
        json!({"metadata": {"name": name}, "spec": {"selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "a", "image": "x"}]}}}})
    };
    let foreground = DeleteOptions { propagation_policy: Some("Foreground".into()), ..Default::default() };

    f.reg.create(rs, Some("default"), owner("lonely")).await.unwrap();
    f.reg.delete(rs, Some("default"), "lonely", &foreground).await.unwrap();
    assert!(f.reg.get(rs, Some("default"), "lonely").await.unwrap_err().is_not_found());

    let parent = f.reg.create(rs, Some("default"), owner("parent")).await.unwrap();
    let mut child = pod("child");
    child["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "parent",
        "uid": parent["metadata"]["uid"], "blockOwnerDeletion": true}]);
    f.reg.create(pods(), Some("default"), child).await.unwrap();
    let held = f.reg.delete(rs, Some("default"), "parent", &foreground).await.unwrap();
    assert!(held["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(held["metadata"]["finalizers"], json!(["foregroundDeletion"]));
    // What the garbage collector does once the dependents are gone.
    f.reg.delete(pods(), Some("default"), "child", &DeleteOptions::default()).await.unwrap();
    let release = json!({"metadata": {"finalizers": null}});
    f.reg.patch(rs, Some("default"), "parent", None, PatchKind::Merge, release).await.unwrap();
    assert!(f.reg.get(rs, Some("default"), "parent").await.unwrap_err().is_not_found());
}

#[tokio::test]
async fn later_list_pages_are_read_at_the_first_pages_revision() {
    let f = Fixture::new().await;
    for name in ["p0", "p1", "p2", "p3"] {
        f.reg.create(pods(), Some("default"), pod(name)).await.unwrap();
    }
    let opts = ListOptions { limit: Some(2), ..Default::default() };
    let first = f.reg.list(pods(), Some("default"), &opts).await.unwrap();
    let names =
        |items: &[Value]| items.iter().map(|p| p["metadata"]["name"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(names(&first.items), ["p0", "p1"]);

    // Changes after the first page: one deleted, one changed, one created (at the end).
    f.reg.delete(pods(), Some("default"), "p2", &DeleteOptions::default()).await.unwrap();
    let mut p3 = f.reg.get(pods(), Some("default"), "p3").await.unwrap();
    p3["metadata"]["labels"]["changed"] = json!("yes");
    f.reg.update(pods(), Some("default"), "p3", None, p3).await.unwrap();
    f.reg.create(pods(), Some("default"), pod("p4")).await.unwrap();

    let next = ListOptions { continue_token: first.continue_token.clone(), ..opts.clone() };
    let second = f.reg.list(pods(), Some("default"), &next).await.unwrap();
    assert_eq!(second.resource_version, first.resource_version);
    assert_eq!(names(&second.items), ["p2", "p3"]);
    assert!(second.items[1]["metadata"]["labels"].get("changed").is_none());
    assert!(rv(&second.items[1]) <= first.resource_version.parse().unwrap());
    // p4 did not exist at the first page's revision: no third page.
    assert_eq!(second.continue_token, None);
}

#[tokio::test]
async fn a_continue_token_older_than_the_history_is_expired() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open_with_history(&dir.path().join("state.redb"), 3).unwrap();
    reg.bootstrap("10.43.0.1").await.unwrap();
    for name in ["p0", "p1", "p2"] {
        reg.create(pods(), Some("default"), pod(name)).await.unwrap();
    }
    let opts = ListOptions { limit: Some(1), ..Default::default() };
    let first = reg.list(pods(), Some("default"), &opts).await.unwrap();
    for i in 0..5 {
        reg.create(core("configmaps"), Some("default"), json!({"metadata": {"name": format!("c{i}")}})).await.unwrap();
    }
    let next = ListOptions { continue_token: first.continue_token, ..opts.clone() };
    let err = reg.list(pods(), Some("default"), &next).await.unwrap_err();
    assert_eq!((err.code, err.reason), (410, skiff_api::StatusReason::Expired));
    assert!(err.message.starts_with("The provided continue parameter is too old"), "{}", err.message);
    assert!(err.to_status()["metadata"]["continue"].is_string());

    // The client may go on, inconsistently, with the token the Status carries: the rest as
    // it is now.
    let latest = reg.create(pods(), Some("default"), pod("p3")).await.unwrap();
    let rest = ListOptions { continue_token: err.continue_token, ..opts };
    let page = reg.list(pods(), Some("default"), &rest).await.unwrap();
    assert_eq!(page.items[0]["metadata"]["name"], "p1");
    assert_eq!(page.resource_version, latest["metadata"]["resourceVersion"]);
    let last = reg.list(pods(), Some("default"), &ListOptions { continue_token: page.continue_token, ..rest }).await;
    let last = last.unwrap();
    assert_eq!(last.items[0]["metadata"]["name"], "p2");
}

#[tokio::test]
async fn every_write_records_its_field_manager_and_apply_conflicts_with_it() {
    let f = Fixture::new().await;
    let by = |m: &str| WriteOptions { field_manager: Some(m.into()), dry_run: false };
    let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "demo"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "demo"}},
                 "template": {"metadata": {"labels": {"app": "demo"}}, "spec": {"containers": [{"name": "app", "image": "nginx"}]}}}});
    let created =
        f.reg.create_with(deployments(), Some("default"), d.clone(), &by("kubectl-client-side-apply")).await.unwrap();
    let entry = &created["metadata"]["managedFields"][0];
    assert_eq!(
        (entry["manager"].as_str(), entry["operation"].as_str()),
        (Some("kubectl-client-side-apply"), Some("Update"))
    );
    // Defaults are the creator's too, as in Kubernetes.
    assert!(entry["fieldsV1"]["f:spec"].get("f:progressDeadlineSeconds").is_some());
    assert_eq!(entry["fieldsV1"]["f:spec"]["f:selector"], json!({}));

    let scale = json!({"spec": {"replicas": 3}});
    f.reg
        .patch_with(deployments(), Some("default"), "demo", Some("scale"), PatchKind::Merge, scale, &by("kubectl"))
        .await
        .unwrap();
    let scaled = f.reg.get(deployments(), Some("default"), "demo").await.unwrap();
    let entries = scaled["metadata"]["managedFields"].as_array().unwrap();
    let scaler = entries.iter().find(|e| e["manager"] == "kubectl").unwrap();
    assert_eq!(scaler["subresource"], "scale");
    assert_eq!(scaler["fieldsV1"], json!({"f:spec": {"f:replicas": {}}}));

    let mut config = d.clone();
    config["spec"]["replicas"] = json!(5);
    let apply = |force| PatchKind::Apply { field_manager: "ci".into(), force };
    let err =
        f.reg.patch(deployments(), Some("default"), "demo", None, apply(false), config.clone()).await.unwrap_err();
    assert_eq!(err.code, 409);
    assert_eq!(
        err.message,
        "Apply failed with 1 conflict: conflict with \"kubectl\" with subresource \"scale\" using apps/v1: .spec.replicas"
    );
    let forced = f.reg.patch(deployments(), Some("default"), "demo", None, apply(true), config).await.unwrap();
    assert_eq!(forced["spec"]["replicas"], 5);
    assert!(forced["metadata"]["managedFields"].as_array().unwrap().iter().all(|e| e["manager"] != "kubectl"));

    // A status write is recorded with its subresource.
    let mut status = forced.clone();
    status["status"] = json!({"observedGeneration": 1});
    let written =
        f.reg.update_with(deployments(), Some("default"), "demo", Some("status"), status, &by("ctl")).await.unwrap();
    let entry =
        written["metadata"]["managedFields"].as_array().unwrap().iter().find(|e| e["manager"] == "ctl").unwrap();
    assert_eq!(entry["subresource"], "status");
    assert_eq!(entry["fieldsV1"], json!({"f:status": {"f:observedGeneration": {}}}));
}

#[tokio::test]
async fn dry_runs_check_everything_and_store_nothing() {
    let f = Fixture::new().await;
    let dry = WriteOptions { field_manager: Some("kubectl".into()), dry_run: true };
    let before = f.reg.store.revision().unwrap();

    let created = f.reg.create_with(pods(), Some("default"), pod("web"), &dry).await.unwrap();
    assert!(created["metadata"]["uid"].is_string());
    assert!(created["metadata"].get("resourceVersion").is_none());
    assert_eq!(created["spec"]["containers"][0]["imagePullPolicy"], "IfNotPresent");
    assert!(f.reg.get(pods(), Some("default"), "web").await.unwrap_err().is_not_found());
    let mut invalid = pod("bad");
    invalid["spec"]["containers"][0]["image"] = json!("");
    assert_eq!(f.reg.create_with(pods(), Some("default"), invalid, &dry).await.unwrap_err().code, 422);
    assert_eq!(f.reg.store.revision().unwrap(), before);

    let stored = f.reg.create(pods(), Some("default"), pod("web")).await.unwrap();
    let after_create = f.reg.store.revision().unwrap();
    let mut changed = stored.clone();
    changed["metadata"]["labels"]["tier"] = json!("front");
    let updated = f.reg.update_with(pods(), Some("default"), "web", None, changed, &dry).await.unwrap();
    assert_eq!(updated["metadata"]["labels"]["tier"], "front");
    assert_eq!(updated["metadata"]["resourceVersion"], stored["metadata"]["resourceVersion"]);
    let patch = json!({"metadata": {"labels": {"tier": "back"}}});
    let (patched, created) =
        f.reg.patch_with(pods(), Some("default"), "web", None, PatchKind::Merge, patch, &dry).await.unwrap();
    assert_eq!((patched["metadata"]["labels"]["tier"].as_str(), created), (Some("back"), false));
    let deleted = f.reg.delete_with(pods(), Some("default"), "web", &DeleteOptions::default(), &dry).await.unwrap();
    assert_eq!(deleted["metadata"]["name"], "web");

    assert_eq!(f.reg.get(pods(), Some("default"), "web").await.unwrap(), stored);
    assert_eq!(f.reg.store.revision().unwrap(), after_create);
}

#[tokio::test]
async fn a_dry_run_eviction_or_binding_leaves_the_pod_alone() {
    let f = Fixture::new().await;
    let stored = f.reg.create(pods(), Some("default"), pod("web")).await.unwrap();
    let eviction = json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "web"},
                          "deleteOptions": {"dryRun": ["All"]}});
    f.reg.create_subresource(pods(), Some("default"), "web", "eviction", eviction).await.unwrap();
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "web"}, "target": {"name": "n1"}});
    let dry = WriteOptions { field_manager: None, dry_run: true };
    f.reg.create_subresource_with(pods(), Some("default"), "web", "binding", binding, &dry).await.unwrap();
    assert_eq!(f.reg.get(pods(), Some("default"), "web").await.unwrap(), stored);
}

#[tokio::test]
async fn pods_need_their_service_account_and_take_its_pull_secrets() {
    let f = Fixture::new().await;
    let sas = core("serviceaccounts");
    // The default account may not exist yet (its controller makes it): such a pod goes through.
    f.reg.create(pods(), Some("default"), pod("early")).await.unwrap();

    let mut builder = pod("builder");
    builder["spec"]["serviceAccountName"] = json!("ci");
    let refused = f.reg.create(pods(), Some("default"), builder.clone()).await.unwrap_err();
    assert_eq!(refused.code, 403);
    assert_eq!(
        refused.message,
        "pods \"builder\" is forbidden: error looking up service account default/ci: serviceaccount \"ci\" not found"
    );

    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "ci"},
                    "imagePullSecrets": [{"name": "regcred"}]});
    f.reg.create(sas, Some("default"), sa).await.unwrap();
    let created = f.reg.create(pods(), Some("default"), builder).await.unwrap();
    assert_eq!(created["spec"]["imagePullSecrets"], json!([{"name": "regcred"}]));

    let mut own = pod("own");
    own["spec"]["serviceAccountName"] = json!("ci");
    own["spec"]["imagePullSecrets"] = json!([{"name": "mine"}]);
    let created = f.reg.create(pods(), Some("default"), own).await.unwrap();
    assert_eq!(created["spec"]["imagePullSecrets"], json!([{"name": "mine"}]), "the pod's own win");
}

#[tokio::test]
async fn an_update_planned_before_a_concurrent_write_is_worked_out_again_in_its_transaction() {
    use super::write::{Tracking, plan_ahead, plan_update, update_op};
    let f = Fixture::new().await;
    let created = f.reg.create(pods(), Some("default"), pod("p")).await.unwrap();
    let key = f.reg.key(pods(), Some("default"), "p").unwrap();

    // A label change planned against the object as created…
    let mut body = created.clone();
    body["metadata"]["labels"]["round"] = json!("2");
    let planned = plan_ahead(&f.reg, &key, |old| {
        plan_update(&key, old, body.clone(), None, Tracking::Update { manager: Some("a"), subresource: None }, None)
    });
    assert!(matches!(planned.as_ref().map(|p| &p.plan), Some(Ok(super::write::Plan::Write(_)))));
    // …while another write lands first: the plan is stale, and carrying it out would lose that
    // write. Its transaction sees the object changed and finds the conflict itself.
    let mut other = created.clone();
    other["metadata"]["labels"]["other"] = json!("yes");
    f.reg.update(pods(), Some("default"), "p", None, other).await.unwrap();
    let op = update_op(key.clone(), None, body.clone(), Some("a".into()), f.reg.service_network(), planned);
    let err = f.reg.store.run(op, false).await.unwrap_err();
    assert_eq!(err.code, 409);
    let stored = f.reg.get(pods(), Some("default"), "p").await.unwrap();
    assert_eq!(stored["metadata"]["labels"]["other"], "yes");
    assert!(stored["metadata"]["labels"].get("round").is_none());

    // A plan made from the object as stored now is carried out as it is.
    let mut body = stored.clone();
    body["metadata"]["labels"]["round"] = json!("3");
    let planned = plan_ahead(&f.reg, &key, |old| {
        plan_update(&key, old, body.clone(), None, Tracking::Update { manager: Some("a"), subresource: None }, None)
    });
    let op = update_op(key, None, body, Some("a".into()), f.reg.service_network(), planned);
    let written = f.reg.store.run(op, false).await.unwrap().object;
    assert_eq!(written["metadata"]["labels"]["round"], "3");
    assert_eq!(rv(&written), rv(&stored) + 1);
    assert_eq!(f.reg.get(pods(), Some("default"), "p").await.unwrap(), written);
}

#[tokio::test]
async fn concurrent_updates_of_one_object_each_see_the_one_before() {
    // Many writers on one object with no resourceVersion: every update is planned ahead from
    // some earlier state, yet none may be lost.
    let f = Fixture::new().await;
    f.reg.create(pods(), Some("default"), pod("p")).await.unwrap();
    let writes = (0..20).map(|i| {
        let reg = f.reg.clone();
        async move {
            let patch = json!({"metadata": {"labels": {format!("w{i}"): "x"}}});
            reg.patch(pods(), Some("default"), "p", None, PatchKind::Merge, patch).await.unwrap()
        }
    });
    futures::future::join_all(writes).await;
    let stored = f.reg.get(pods(), Some("default"), "p").await.unwrap();
    for i in 0..20 {
        assert_eq!(stored["metadata"]["labels"][format!("w{i}")], "x", "label w{i} was lost");
    }
}
