//! The DaemonSet controller: one pod of the template on every node the pod may run on
//! (nodeSelector, required node affinity, taints), replaced node by node when the template
//! changes (RollingUpdate with maxUnavailable; OnDelete leaves that to the user).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{Node, Pod, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use skiff_api::{
    Api, ApiClient, ApiError, DeleteOptions, Informer, InformerEvent, ListOptions, ObjectKey, ObjectReference,
    Recorder, Store, WorkQueue,
};
use tokio_util::sync::CancellationToken;

use crate::controller::{self, Action, Reconciler};
use crate::deployment::template_hash;
use crate::expectations::Expectations;
use crate::pods::{controller_of, is_active, is_available, is_ready};

/// The label naming the template revision a pod was made from.
pub const REVISION_HASH: &str = "controller-revision-hash";

pub struct DaemonSetController {
    client: Arc<dyn ApiClient>,
    daemonsets: Store<DaemonSet>,
    pods: Store<Pod>,
    nodes: Store<Node>,
    expectations: Expectations,
    recorder: Recorder,
}

/// Tolerations every DaemonSet pod gets, so node conditions do not evict it (Kubernetes'
/// `AddOrUpdateDaemonPodTolerations`).
fn daemon_tolerations() -> Vec<Toleration> {
    let t = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    };
    vec![
        t("node.kubernetes.io/not-ready", "NoExecute"),
        t("node.kubernetes.io/unreachable", "NoExecute"),
        t("node.kubernetes.io/disk-pressure", "NoSchedule"),
        t("node.kubernetes.io/memory-pressure", "NoSchedule"),
        t("node.kubernetes.io/pid-pressure", "NoSchedule"),
        t("node.kubernetes.io/unschedulable", "NoSchedule"),
    ]
}

fn pod_for(ds: &DaemonSet, node: &str, hash: &str) -> Pod {
    let template = ds.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(REVISION_HASH.into(), hash.into());
    let mut spec = template.spec.unwrap_or_default();
    spec.node_name = Some(node.into());
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for t in daemon_tolerations() {
        if !tolerations.iter().any(|have| have.key == t.key && have.effect == t.effect) {
            tolerations.push(t);
        }
    }
    let name = ds.metadata.name.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}-")),
            namespace: ds.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: meta.annotations,
            owner_references: Some(vec![controller::controller_reference(ds)]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// Whether a pod of this DaemonSet may run on `node`.
fn eligible(ds: &DaemonSet, node: &Node) -> bool {
    let probe = pod_for(ds, node.metadata.name.as_deref().unwrap_or_default(), "");
    skiff_scheduler::fit::selector_matches(&probe, node)
        && skiff_scheduler::fit::untolerated_taint(&probe, node).is_none()
}

fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref()?.node_name.as_deref()
}

fn revision_of(pod: &Pod) -> Option<&str> {
    pod.metadata.labels.as_ref()?.get(REVISION_HASH).map(String::as_str)
}

impl DaemonSetController {
    pub async fn run(client: Arc<dyn ApiClient>, shutdown: CancellationToken) {
        let all = ListOptions::default;
        let (daemonsets, mut ds_events, _d) = Informer::<DaemonSet>::new(client.clone(), None, all()).spawn();
        let (pods, mut pod_events, _p) = Informer::<Pod>::new(client.clone(), None, all()).spawn();
        let (nodes, mut node_events, _n) = Informer::<Node>::new(client.clone(), None, all()).spawn();
        let recorder = controller::recorder(client.clone(), "daemonset-controller");
        let this = Arc::new(Self { client, daemonsets, pods, nodes, expectations: Expectations::default(), recorder });
        let queue = WorkQueue::<ObjectKey>::new();
        let triggers = {
            let (this, queue) = (this.clone(), queue.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        Some(event) = ds_events.recv() => if let InformerEvent::Applied(ds) | InformerEvent::Deleted(ds) = event {
                            queue.add(ObjectKey::of(ds.as_ref()));
                        },
                        Some(event) = pod_events.recv() => if let InformerEvent::Applied(pod) | InformerEvent::Deleted(pod) = event {
                            if let Some(owner) = controller_of(&pod.metadata).filter(|o| o.kind == "DaemonSet") {
                                queue.add(ObjectKey::new(pod.metadata.namespace.as_deref(), &owner.name));
                            }
                        },
                        // Nodes joining, leaving or changing labels/taints concern every DaemonSet.
                        Some(event) = node_events.recv() => if let InformerEvent::Applied(_) | InformerEvent::Deleted(_) = event {
                            for ds in this.daemonsets.list() {
                                queue.add(ObjectKey::of(ds.as_ref()));
                            }
                        },
                        else => break,
                    }
                }
            })
        };
        controller::run(this, queue, 1, shutdown).await;
        triggers.abort();
    }
}

#[async_trait::async_trait]
impl Reconciler for DaemonSetController {
    const NAME: &'static str = "daemonset";
    type Key = ObjectKey;

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, ApiError> {
        let Some(ds) = self.daemonsets.get(key) else {
            self.expectations.forget(key);
            return Ok(Action::AwaitChange);
        };
        if ds.metadata.deletion_timestamp.is_some() {
            return Ok(Action::AwaitChange);
        }
        let spec = ds.spec.clone().unwrap_or_default();
        let ns = key.namespace.as_deref().unwrap_or_default();
        let uid = ds.metadata.uid.clone().unwrap_or_default();
        let hash = template_hash(&spec.template, ds.status.as_ref().and_then(|s| s.collision_count));
        let owned: Vec<Arc<Pod>> = self
            .pods
            .list()
            .into_iter()
            .filter(|p| {
                p.metadata.namespace.as_deref() == Some(ns) && controller_of(&p.metadata).is_some_and(|o| o.uid == uid)
            })
            .collect();
        let mut by_node: BTreeMap<String, Vec<Arc<Pod>>> = BTreeMap::new();
        for pod in owned.iter().filter(|p| is_active(p)) {
            by_node.entry(node_of(pod).unwrap_or_default().to_string()).or_default().push(pod.clone());
        }
        let nodes = self.nodes.list();
        let wanted: Vec<String> =
            nodes.iter().filter(|n| eligible(&ds, n)).filter_map(|n| n.metadata.name.clone()).collect();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let reference = ObjectReference::of(ds.as_ref());
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let now = jiff::Timestamp::now();

        if self.expectations.satisfied(key, &self.pods) {
            let mut doomed: Vec<Arc<Pod>> = Vec::new();
            for node in &wanted {
                match by_node.get(node).map(Vec::as_slice) {
                    None | Some([]) => {
                        let pod = api.create(&pod_for(&ds, node, &hash)).await?;
                        self.expectations.created(key, &pod);
                        let name = pod.metadata.name.unwrap_or_default();
                        self.recorder.normal(&reference, "SuccessfulCreate", &format!("Created pod: {name}")).await;
                    }
                    // More than one daemon pod on a node: keep the oldest.
                    Some([_, extra @ ..]) => doomed.extend(extra.iter().cloned()),
                }
            }
            // Pods on nodes that should not run one.
            for (node, pods) in &by_node {
                if !wanted.contains(node) {
                    doomed.extend(pods.iter().cloned());
                }
            }
            // Rolling update: replace old-template pods while within maxUnavailable.
            let rolling = spec.update_strategy.as_ref().and_then(|s| s.type_.as_deref()).unwrap_or("RollingUpdate")
                == "RollingUpdate";
            if rolling && doomed.is_empty() {
                let max_unavailable = spec
                    .update_strategy
                    .as_ref()
                    .and_then(|s| s.rolling_update.as_ref())
                    .map(|r| {
                        crate::deployment::scaled_value(r.max_unavailable.as_ref(), wanted.len() as i32, false, 0)
                            .max(1)
                    })
                    .unwrap_or(1);
                let unavailable = wanted
                    .iter()
                    .filter(|n| {
                        !by_node.get(*n).is_some_and(|pods| pods.iter().any(|p| is_available(p, min_ready, now)))
                    })
                    .count() as i32;
                let budget = (max_unavailable - unavailable).max(0) as usize;
                let outdated = wanted
                    .iter()
                    .filter_map(|n| by_node.get(n)?.first())
                    .filter(|p| revision_of(p) != Some(hash.as_str()));
                doomed.extend(outdated.take(budget).cloned());
            }
            for pod in doomed {
                let name = pod.metadata.name.clone().unwrap_or_default();
                match api.delete(&name, &DeleteOptions::default()).await {
                    Ok(_) => {
                        self.expectations.deleted(key, &pod);
                        self.recorder.normal(&reference, "SuccessfulDelete", &format!("Deleted pod: {name}")).await;
                    }
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
            }
        }

        let scheduled = |n: &String| by_node.get(n).is_some_and(|p| !p.is_empty());
        let on = |n: &String, f: &dyn Fn(&Pod) -> bool| by_node.get(n).is_some_and(|p| p.iter().any(|p| f(p)));
        let count = |f: &dyn Fn(&String) -> bool| wanted.iter().filter(|n| f(n)).count() as i32;
        let available = count(&|n| on(n, &|p| is_available(p, min_ready, now)));
        let status = DaemonSetStatus {
            desired_number_scheduled: wanted.len() as i32,
            current_number_scheduled: count(&scheduled),
            number_misscheduled: by_node.keys().filter(|n| !wanted.contains(n)).count() as i32,
            number_ready: count(&|n| on(n, &|p| is_ready(p))),
            updated_number_scheduled: Some(count(&|n| on(n, &|p| revision_of(p) == Some(hash.as_str())))),
            number_available: Some(available),
            number_unavailable: Some(wanted.len() as i32 - available).filter(|n| *n > 0),
            observed_generation: ds.metadata.generation,
            collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
            conditions: ds.status.as_ref().and_then(|s| s.conditions.clone()),
        };
        if ds.status.as_ref() != Some(&status) {
            let mut updated = (*ds).clone();
            updated.status = Some(status);
            let api: Api<DaemonSet> = Api::namespaced(self.client.clone(), ns);
            api.replace_status(&key.name, &updated).await?;
        }
        Ok(Action::AwaitChange)
    }
}
