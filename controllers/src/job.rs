//! The Job controller: runs pods of a template until `completions` of them succeed (or, with
//! no `completions`, until one succeeds and the rest have finished), within `parallelism`,
//! retrying failures with exponential back-off up to `backoffLimit`, and failing the Job past
//! `activeDeadlineSeconds`. Finished Jobs with `ttlSecondsAfterFinished` are deleted when it
//! runs out (the TTL-after-finished controller of Kubernetes, folded in here).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::{EnvVar, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use skiff_api::{
    Api, ApiClient, ApiError, DeleteOptions, Informer, ListOptions, ObjectKey, ObjectReference, Recorder, Store,
    WorkQueue,
};
use tokio_util::sync::CancellationToken;

use crate::controller::{self, Action, Reconciler};
use crate::expectations::Expectations;
use crate::pods::{controller_of, deletion_order, is_active, is_ready};

pub const CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
pub const JOB_NAME: &str = "batch.kubernetes.io/job-name";
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
const LEGACY_CONTROLLER_UID: &str = "controller-uid";
const LEGACY_JOB_NAME: &str = "job-name";

/// First retry delay after a failed pod; doubles per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(360);

pub struct JobController {
    client: Arc<dyn ApiClient>,
    jobs: Store<Job>,
    pods: Store<Pod>,
    expectations: Expectations,
    recorder: Recorder,
}

fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending")
}

fn index_of(pod: &Pod) -> Option<i32> {
    pod.metadata.annotations.as_ref()?.get(COMPLETION_INDEX)?.parse().ok()
}

fn indexed(job: &Job) -> bool {
    job.spec.as_ref().and_then(|s| s.completion_mode.as_deref()) == Some("Indexed")
}

fn condition_true(job: &Job, type_: &str) -> Option<JobCondition> {
    job.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == type_ && c.status == "True").cloned()
}

/// `0-2,4,6-7`: how Kubernetes writes a set of completed indexes.
pub fn format_indexes(indexes: &BTreeSet<i32>) -> String {
    let mut parts = Vec::new();
    let mut iter = indexes.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end = iter.next().unwrap_or(end);
        }
        parts.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
    }
    parts.join(",")
}

/// The delay before the next pod after `failures` failed ones (10 s doubling, capped at 6 min).
pub fn failure_backoff(failures: i32) -> Duration {
    if failures <= 0 {
        return Duration::ZERO;
    }
    let factor = 2u32.saturating_pow((failures - 1).min(16) as u32);
    FIRST_BACKOFF.saturating_mul(factor).min(MAX_BACKOFF)
}

/// Pure: what the pods say about the job.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub active: Vec<String>,
    pub ready: i32,
    pub succeeded: i32,
    pub failed: i32,
    pub completed_indexes: BTreeSet<i32>,
    pub active_indexes: BTreeSet<i32>,
    /// When the latest failure happened (for back-off), as seconds since the epoch.
    pub last_failure: Option<i64>,
}

pub fn tally(job: &Job, pods: &[&Pod]) -> Tally {
    let on_failure = job.spec.as_ref().and_then(|s| s.template.spec.as_ref()).and_then(|s| s.restart_policy.as_deref())
        == Some("OnFailure");
    let mut t = Tally::default();
    for pod in pods {
        match phase(pod) {
            "Succeeded" => {
                t.succeeded += 1;
                t.completed_indexes.extend(index_of(pod));
            }
            "Failed" => {
                t.failed += 1;
                let finished = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .into_iter()
                    .flatten()
                    .filter_map(|c| {
                        c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref().map(|t| t.0.as_second())
                    })
                    .max();
                t.last_failure = t.last_failure.max(finished.or(Some(jiff::Timestamp::now().as_second())));
            }
            _ if is_active(pod) => {
                t.active.push(pod.metadata.name.clone().unwrap_or_default());
                t.active_indexes.extend(index_of(pod));
                if is_ready(pod) {
                    t.ready += 1;
                }
                // With OnFailure the kubelet restarts containers in place: each restart is a failure.
                if on_failure {
                    let restarts: i32 = pod
                        .status
                        .as_ref()
                        .and_then(|s| s.container_statuses.as_ref())
                        .into_iter()
                        .flatten()
                        .map(|c| c.restart_count)
                        .sum();
                    t.failed += restarts;
                }
            }
            _ => {}
        }
    }
    t
}

/// Pure: how many pods should be running now.
pub fn wanted_active(job: &Job, t: &Tally) -> i32 {
    let spec = job.spec.as_ref();
    let parallelism = spec.and_then(|s| s.parallelism).unwrap_or(1).max(0);
    match spec.and_then(|s| s.completions) {
        Some(completions) if indexed(job) => parallelism.min(completions - t.completed_indexes.len() as i32).max(0),
        Some(completions) => parallelism.min(completions - t.succeeded).max(0),
        None if t.succeeded > 0 => 0,
        None => parallelism,
    }
}

fn complete(job: &Job, t: &Tally) -> bool {
    match job.spec.as_ref().and_then(|s| s.completions) {
        Some(completions) if indexed(job) => t.completed_indexes.len() as i32 >= completions,
        Some(completions) => t.succeeded >= completions,
        None => t.succeeded > 0 && t.active.is_empty(),
    }
}

fn set_condition(status: &mut JobStatus, type_: &str, state: &str, reason: &str, message: &str, now: &Time) {
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) if c.status == state && c.reason.as_deref() == Some(reason) => {}
        Some(c) => {
            c.status = state.into();
            c.reason = Some(reason.into());
            c.message = Some(message.into());
            c.last_transition_time = Some(now.clone());
            c.last_probe_time = Some(now.clone());
        }
        None => conditions.push(JobCondition {
            type_: type_.into(),
            status: state.into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_transition_time: Some(now.clone()),
            last_probe_time: Some(now.clone()),
        }),
    }
}

fn pod_for(job: &Job, index: Option<i32>) -> Pod {
    let name = job.metadata.name.clone().unwrap_or_default();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let template = job.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    for (k, v) in [(CONTROLLER_UID, &uid), (JOB_NAME, &name), (LEGACY_CONTROLLER_UID, &uid), (LEGACY_JOB_NAME, &name)] {
        labels.entry(k.to_string()).or_insert_with(|| v.clone());
    }
    let mut annotations = meta.annotations.unwrap_or_default();
    let mut spec = template.spec.unwrap_or_default();
    if let Some(i) = index {
        labels.insert(COMPLETION_INDEX.into(), i.to_string());
        annotations.insert(COMPLETION_INDEX.into(), i.to_string());
        spec.hostname.get_or_insert_with(|| format!("{name}-{i}"));
        for c in spec.containers.iter_mut().chain(spec.init_containers.iter_mut().flatten()) {
            let env = c.env.get_or_insert_with(Vec::new);
            env.retain(|e| e.name != "JOB_COMPLETION_INDEX");
            env.push(EnvVar { name: "JOB_COMPLETION_INDEX".into(), value: Some(i.to_string()), value_from: None });
        }
    }
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(match index {
                Some(i) => format!("{name}-{i}-"),
                None => format!("{name}-"),
            }),
            namespace: job.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner_references: Some(vec![controller::controller_reference(job)]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

impl JobController {
    pub async fn run(client: Arc<dyn ApiClient>, shutdown: CancellationToken) {
        let (jobs, job_events, _j) = Informer::<Job>::new(client.clone(), None, ListOptions::default()).spawn();
        let (pods, pod_events, _p) = Informer::<Pod>::new(client.clone(), None, ListOptions::default()).spawn();
        let recorder = controller::recorder(client.clone(), "job-controller");
        let this = Arc::new(Self { client, jobs, pods, expectations: Expectations::default(), recorder });
        let queue = WorkQueue::<ObjectKey>::new();
        let triggers = [
            controller::queue_objects(queue.clone(), job_events),
            controller::queue_owners(queue.clone(), pod_events, "Job"),
        ];
        controller::run(this, queue, 2, shutdown).await;
        triggers.iter().for_each(|t| t.abort());
    }

    fn pod_api(&self, ns: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), ns)
    }

    async fn delete_pods(&self, key: &ObjectKey, job: &Job, names: &[String]) -> Result<(), ApiError> {
        let ns = key.namespace.as_deref().unwrap_or_default();
        for name in names {
            match self.pod_api(ns).delete(name, &DeleteOptions::default()).await {
                Ok(_) => {
                    if let Some(pod) = self.pods.get(&ObjectKey::namespaced(ns, name)) {
                        self.expectations.deleted(key, &pod);
                    }
                    self.recorder
                        .normal(&ObjectReference::of(job), "SuccessfulDelete", &format!("Deleted pod: {name}"))
                        .await;
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn create_pods(&self, key: &ObjectKey, job: &Job, indexes: Vec<Option<i32>>) -> Result<(), ApiError> {
        let api = self.pod_api(key.namespace.as_deref().unwrap_or_default());
        for index in indexes {
            let pod = api.create(&pod_for(job, index)).await?;
            self.expectations.created(key, &pod);
            let name = pod.metadata.name.unwrap_or_default();
            self.recorder.normal(&ObjectReference::of(job), "SuccessfulCreate", &format!("Created pod: {name}")).await;
        }
        Ok(())
    }

    /// Deletes a finished Job once its `ttlSecondsAfterFinished` has run out.
    async fn expire(&self, key: &ObjectKey, job: &Job, finished: &JobCondition) -> Result<Action, ApiError> {
        let Some(ttl) = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished) else {
            return Ok(Action::AwaitChange);
        };
        let at = job.status.as_ref().and_then(|s| s.completion_time.clone()).or(finished.last_transition_time.clone());
        let at = at.map_or(0, |t| t.0.as_second()) + i64::from(ttl);
        let left = at - jiff::Timestamp::now().as_second();
        if left > 0 {
            return Ok(Action::RequeueAfter(Duration::from_secs(left as u64)));
        }
        let api: Api<Job> = Api::namespaced(self.client.clone(), key.namespace.as_deref().unwrap_or_default());
        let opts = DeleteOptions {
            propagation_policy: Some("Background".into()),
            precondition_uid: job.metadata.uid.clone(),
            ..Default::default()
        };
        match api.delete(&key.name, &opts).await {
            Ok(_) => Ok(Action::AwaitChange),
            Err(e) if e.is_not_found() => Ok(Action::AwaitChange),
            Err(e) => Err(e),
        }
    }
}

#[async_trait::async_trait]
impl Reconciler for JobController {
    const NAME: &'static str = "job";
    type Key = ObjectKey;

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, ApiError> {
        let Some(job) = self.jobs.get(key) else {
            self.expectations.forget(key);
            return Ok(Action::AwaitChange);
        };
        if job.metadata.deletion_timestamp.is_some() {
            return Ok(Action::AwaitChange);
        }
        if let Some(finished) = condition_true(&job, "Complete").or_else(|| condition_true(&job, "Failed")) {
            return self.expire(key, &job, &finished).await;
        }
        let uid = job.metadata.uid.clone().unwrap_or_default();
        let owned: Vec<Arc<Pod>> = self
            .pods
            .list()
            .into_iter()
            .filter(|p| {
                p.metadata.namespace == key.namespace && controller_of(&p.metadata).is_some_and(|o| o.uid == uid)
            })
            .collect();
        let pods: Vec<&Pod> = owned.iter().map(|p| p.as_ref()).collect();
        let t = tally(&job, &pods);
        let spec = job.spec.clone().unwrap_or_default();
        let now = jiff::Timestamp::now();
        let now_time = Time(now);
        let previous = job.status.clone().unwrap_or_default();
        let suspended = spec.suspend.unwrap_or(false);
        let mut status = JobStatus {
            active: Some(t.active.len() as i32).filter(|n| *n > 0),
            ready: Some(t.ready),
            succeeded: Some(t.succeeded).filter(|n| *n > 0),
            failed: Some(t.failed).filter(|n| *n > 0),
            start_time: if suspended {
                previous.start_time.clone()
            } else {
                previous.start_time.clone().or(Some(now_time.clone()))
            },
            completed_indexes: indexed(&job).then(|| format_indexes(&t.completed_indexes)).filter(|s| !s.is_empty()),
            ..previous.clone()
        };
        let reference = ObjectReference::of(job.as_ref());
        let backoff_limit = spec.backoff_limit.unwrap_or(6);
        let started = status.start_time.as_ref().map_or(now.as_second(), |t| t.0.as_second());
        let mut requeue = None;

        let failure = if t.failed > backoff_limit {
            Some(("BackoffLimitExceeded", "Job has reached the specified backoff limit"))
        } else if spec.active_deadline_seconds.is_some_and(|d| !suspended && now.as_second() - started >= d) {
            Some(("DeadlineExceeded", "Job was active longer than specified deadline"))
        } else {
            None
        };
        if let Some((reason, message)) = failure {
            self.delete_pods(key, &job, &t.active).await?;
            status.active = None;
            status.ready = Some(0);
            set_condition(&mut status, "FailureTarget", "True", reason, message, &now_time);
            set_condition(&mut status, "Failed", "True", reason, message, &now_time);
            self.recorder.warning(&reference, reason, message).await;
        } else if complete(&job, &t) {
            self.delete_pods(key, &job, &t.active).await?;
            status.active = None;
            status.ready = Some(0);
            status.completion_time = Some(now_time.clone());
            let message = "Reached expected number of succeeded pods";
            set_condition(&mut status, "SuccessCriteriaMet", "True", "CompletionsReached", message, &now_time);
            set_condition(&mut status, "Complete", "True", "CompletionsReached", message, &now_time);
            self.recorder.normal(&reference, "Completed", "Job completed").await;
        } else if suspended {
            self.delete_pods(key, &job, &t.active).await?;
            status.active = None;
            if condition_true(&job, "Suspended").is_none() {
                set_condition(&mut status, "Suspended", "True", "JobSuspended", "Job suspended", &now_time);
                self.recorder.normal(&reference, "Suspended", "Job suspended").await;
            }
        } else {
            if condition_true(&job, "Suspended").is_some() {
                set_condition(&mut status, "Suspended", "False", "JobResumed", "Job resumed", &now_time);
                status.start_time = Some(now_time.clone());
                self.recorder.normal(&reference, "Resumed", "Job resumed").await;
            }
            if self.expectations.satisfied(key, &self.pods) {
                let want = wanted_active(&job, &t) as usize;
                let active = t.active.len();
                if active < want {
                    let wait = t
                        .last_failure
                        .map_or(0, |at| at + failure_backoff(t.failed).as_secs() as i64 - now.as_second());
                    if wait > 0 {
                        requeue = Some(Duration::from_secs(wait as u64));
                    } else {
                        let indexes = if indexed(&job) {
                            let completions = spec.completions.unwrap_or(0);
                            (0..completions)
                                .filter(|i| !t.completed_indexes.contains(i) && !t.active_indexes.contains(i))
                                .take(want - active)
                                .map(Some)
                                .collect()
                        } else {
                            vec![None; want - active]
                        };
                        self.create_pods(key, &job, indexes).await?;
                    }
                } else if active > want {
                    let mut victims: Vec<&Pod> = pods.iter().copied().filter(|p| is_active(p)).collect();
                    victims.sort_by(|a, b| deletion_order(a, b));
                    let names: Vec<String> =
                        victims.iter().take(active - want).filter_map(|p| p.metadata.name.clone()).collect();
                    self.delete_pods(key, &job, &names).await?;
                }
            }
            if let Some(deadline) = spec.active_deadline_seconds {
                let left = (started + deadline - now.as_second()).max(1) as u64;
                requeue =
                    Some(requeue.map_or(Duration::from_secs(left), |r: Duration| r.min(Duration::from_secs(left))));
            }
        }
        if status != previous {
            let mut updated = (*job).clone();
            updated.status = Some(status);
            let api: Api<Job> = Api::namespaced(self.client.clone(), key.namespace.as_deref().unwrap_or_default());
            api.replace_status(&key.name, &updated).await?;
        }
        Ok(requeue.map_or(Action::AwaitChange, Action::RequeueAfter))
    }
}

/// The labels a Job's selector and template get by default (what the API server adds when
/// `manualSelector` is not set).
pub fn default_selector_labels(name: &str, uid: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(CONTROLLER_UID.to_string(), uid.to_string()), (JOB_NAME.to_string(), name.to_string())])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::fixtures::pod;
    use k8s_openapi::api::batch::v1::JobSpec;

    fn job(completions: Option<i32>, parallelism: i32) -> Job {
        Job {
            spec: Some(JobSpec { completions, parallelism: Some(parallelism), ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn completions_bound_the_active_pods_by_parallelism() {
        let j = job(Some(3), 2);
        let none = tally(&j, &[]);
        assert_eq!(wanted_active(&j, &none), 2);
        let done = pod("a", "Succeeded", true, None);
        let done2 = pod("b", "Succeeded", true, None);
        assert_eq!(wanted_active(&j, &tally(&j, &[&done, &done2])), 1);
        assert!(!complete(&j, &tally(&j, &[&done, &done2])));
        let done3 = pod("c", "Succeeded", true, None);
        assert!(complete(&j, &tally(&j, &[&done, &done2, &done3])));
    }

    #[test]
    fn work_queue_job_stops_creating_after_first_success() {
        let j = job(None, 3);
        let ok = pod("a", "Succeeded", true, None);
        let running = pod("b", "Running", true, None);
        let t = tally(&j, &[&ok, &running]);
        assert_eq!(wanted_active(&j, &t), 0);
        assert!(!complete(&j, &t));
        assert!(complete(&j, &tally(&j, &[&ok])));
    }

    #[test]
    fn backoff_doubles_from_ten_seconds_to_six_minutes() {
        assert_eq!(failure_backoff(0), Duration::ZERO);
        assert_eq!(failure_backoff(1), Duration::from_secs(10));
        assert_eq!(failure_backoff(3), Duration::from_secs(40));
        assert_eq!(failure_backoff(20), Duration::from_secs(360));
    }

    #[test]
    fn completed_indexes_are_written_as_ranges() {
        assert_eq!(format_indexes(&BTreeSet::from([0, 1, 2, 4, 6, 7])), "0-2,4,6-7");
        assert_eq!(format_indexes(&BTreeSet::new()), "");
    }

    #[test]
    fn indexed_pods_carry_their_index() {
        let mut j = job(Some(2), 2);
        j.metadata.name = Some("work".into());
        j.spec.as_mut().unwrap().template.spec =
            Some(k8s_openapi::api::core::v1::PodSpec { containers: vec![Default::default()], ..Default::default() });
        let p = pod_for(&j, Some(1));
        assert_eq!(p.metadata.generate_name.as_deref(), Some("work-1-"));
        assert_eq!(p.metadata.annotations.unwrap()[COMPLETION_INDEX], "1");
        let spec = p.spec.unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("work-1"));
        assert_eq!(spec.containers[0].env.as_ref().unwrap()[0].value.as_deref(), Some("1"));
        assert_eq!(p.metadata.labels.unwrap()[JOB_NAME], "work");
    }
}
