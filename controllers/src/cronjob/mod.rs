//! The CronJob controller: creates a Job per scheduled time (at most one catch-up run after
//! downtime), honours `concurrencyPolicy`, `startingDeadlineSeconds` and `suspend`, keeps
//! `status.active`, `lastScheduleTime` and `lastSuccessfulTime`, and prunes finished Jobs past
//! the history limits.

mod schedule;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference as CoreReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
pub use schedule::{MISSED_LIMIT, Schedule};
use skiff_api::{
    Api, ApiClient, ApiError, DeleteOptions, Informer, ListOptions, ObjectKey, ObjectReference, Recorder, Store,
    WorkQueue,
};
use tokio_util::sync::CancellationToken;

use crate::controller::{self, Action, Reconciler};
use crate::pods::controller_of;

pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

pub struct CronJobController {
    client: Arc<dyn ApiClient>,
    cronjobs: Store<CronJob>,
    jobs: Store<Job>,
    recorder: Recorder,
}

/// `Complete` or `Failed`, if the Job has finished.
fn finished(job: &Job) -> Option<&str> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| c.type_.as_str())
}

/// Kubernetes names a scheduled Job `<cronjob>-<scheduled time in minutes since the epoch>`.
pub fn job_name(cronjob: &str, scheduled: jiff::Timestamp) -> String {
    format!("{cronjob}-{}", scheduled.as_second() / 60)
}

fn job_for(cj: &CronJob, scheduled: jiff::Timestamp, schedule: &Schedule) -> Job {
    let template = cj.spec.as_ref().map(|s| s.job_template.clone()).unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    annotations.insert(SCHEDULED_TIMESTAMP.into(), schedule.format(scheduled));
    let name = cj.metadata.name.clone().unwrap_or_default();
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(&name, scheduled)),
            namespace: cj.metadata.namespace.clone(),
            labels: meta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![controller::controller_reference(cj)]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

fn reference(job: &Job) -> CoreReference {
    CoreReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        field_path: None,
    }
}

impl CronJobController {
    pub async fn run(client: Arc<dyn ApiClient>, shutdown: CancellationToken) {
        let (cronjobs, cj_events, _c) = Informer::<CronJob>::new(client.clone(), None, ListOptions::default()).spawn();
        let (jobs, job_events, _j) = Informer::<Job>::new(client.clone(), None, ListOptions::default()).spawn();
        let recorder = controller::recorder(client.clone(), "cronjob-controller");
        let this = Arc::new(Self { client, cronjobs, jobs, recorder });
        let queue = WorkQueue::<ObjectKey>::new();
        let triggers = [
            controller::queue_objects(queue.clone(), cj_events),
            controller::queue_owners(queue.clone(), job_events, "CronJob"),
        ];
        controller::run(this, queue, 1, shutdown).await;
        triggers.iter().for_each(|t| t.abort());
    }

    async fn delete_job(&self, cj: &CronJob, job: &Job) -> Result<(), ApiError> {
        let api: Api<Job> = Api::namespaced(self.client.clone(), job.metadata.namespace.as_deref().unwrap_or_default());
        let name = job.metadata.name.as_deref().unwrap_or_default();
        let opts = DeleteOptions { propagation_policy: Some("Background".into()), ..Default::default() };
        match api.delete(name, &opts).await {
            Ok(_) => {
                self.recorder
                    .normal(&ObjectReference::of(cj), "SuccessfulDelete", &format!("Deleted job {name}"))
                    .await;
                Ok(())
            }
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Deletes the oldest finished Jobs beyond the successful/failed history limits.
    async fn prune_history(&self, cj: &CronJob, jobs: &[Arc<Job>]) -> Result<(), ApiError> {
        let spec = cj.spec.as_ref();
        for (outcome, limit) in [
            ("Complete", spec.and_then(|s| s.successful_jobs_history_limit).unwrap_or(3)),
            ("Failed", spec.and_then(|s| s.failed_jobs_history_limit).unwrap_or(1)),
        ] {
            let mut done: Vec<&Arc<Job>> = jobs.iter().filter(|j| finished(j) == Some(outcome)).collect();
            let keep = limit.max(0) as usize;
            if done.len() <= keep {
                continue;
            }
            done.sort_by_key(|j| j.metadata.creation_timestamp.as_ref().map(|t| t.0));
            for job in &done[..done.len() - keep] {
                self.delete_job(cj, job).await?;
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Reconciler for CronJobController {
    const NAME: &'static str = "cronjob";
    type Key = ObjectKey;

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, ApiError> {
        let Some(cj) = self.cronjobs.get(key) else { return Ok(Action::AwaitChange) };
        if cj.metadata.deletion_timestamp.is_some() {
            return Ok(Action::AwaitChange);
        }
        let spec = cj.spec.clone().unwrap_or_default();
        let uid = cj.metadata.uid.clone().unwrap_or_default();
        let reference_cj = ObjectReference::of(cj.as_ref());
        let jobs: Vec<Arc<Job>> = self
            .jobs
            .list()
            .into_iter()
            .filter(|j| {
                j.metadata.namespace == key.namespace && controller_of(&j.metadata).is_some_and(|o| o.uid == uid)
            })
            .collect();
        let previous = cj.status.clone().unwrap_or_default();
        let mut status = previous.clone();

        // Reconcile status.active with what exists; note Jobs that finished since.
        let was_active: Vec<String> = previous.active.iter().flatten().filter_map(|r| r.uid.clone()).collect();
        for job in &jobs {
            if let Some(outcome) = finished(job) {
                if was_active.iter().any(|u| Some(u) == job.metadata.uid.as_ref()) {
                    let name = job.metadata.name.as_deref().unwrap_or_default();
                    self.recorder
                        .normal(
                            &reference_cj,
                            "SawCompletedJob",
                            &format!("Saw completed job: {name}, condition: {outcome}"),
                        )
                        .await;
                }
                if outcome == "Complete" {
                    let done = job.status.as_ref().and_then(|s| s.completion_time.clone());
                    if done.as_ref().map(|t| t.0) > status.last_successful_time.as_ref().map(|t| t.0) {
                        status.last_successful_time = done;
                    }
                }
            }
        }
        let active: Vec<&Arc<Job>> =
            jobs.iter().filter(|j| finished(j).is_none() && j.metadata.deletion_timestamp.is_none()).collect();
        status.active = Some(active.iter().map(|j| reference(j)).collect::<Vec<_>>()).filter(|a| !a.is_empty());
        self.prune_history(&cj, &jobs).await?;

        let mut requeue = None;
        match Schedule::parse(&spec.schedule, spec.time_zone.as_deref()) {
            Err(message) => {
                self.recorder.warning(&reference_cj, "UnparseableSchedule", &message).await;
            }
            Ok(_) if spec.suspend.unwrap_or(false) => {}
            Ok(schedule) => {
                let now = jiff::Timestamp::now();
                let mut earliest =
                    status.last_schedule_time.as_ref().or(cj.metadata.creation_timestamp.as_ref()).map_or(now, |t| t.0);
                if let Some(deadline) = spec.starting_deadline_seconds {
                    let floor = now - jiff::SignedDuration::from_secs(deadline);
                    earliest = earliest.max(floor);
                }
                let (latest, missed) = schedule.missed(earliest, now);
                if missed > MISSED_LIMIT {
                    let message = format!(
                        "too many missed start times: {missed}. Set or decrease .spec.startingDeadlineSeconds or check clock skew"
                    );
                    self.recorder.warning(&reference_cj, "TooManyMissedTimes", &message).await;
                }
                if let Some(scheduled) = latest {
                    let name = job_name(key.name.as_str(), scheduled);
                    let exists = jobs.iter().any(|j| j.metadata.name.as_deref() == Some(&name));
                    let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
                    if !exists && !(policy == "Forbid" && !active.is_empty()) {
                        if policy == "Replace" {
                            for job in &active {
                                self.delete_job(&cj, job).await?;
                            }
                            status.active = None;
                        }
                        let api: Api<Job> =
                            Api::namespaced(self.client.clone(), key.namespace.as_deref().unwrap_or_default());
                        match api.create(&job_for(&cj, scheduled, &schedule)).await {
                            Ok(job) => {
                                self.recorder
                                    .normal(&reference_cj, "SuccessfulCreate", &format!("Created job {name}"))
                                    .await;
                                status.active.get_or_insert_with(Vec::new).push(reference(&job));
                            }
                            Err(e) if e.is_already_exists() => {}
                            Err(e) => {
                                self.recorder
                                    .warning(&reference_cj, "FailedCreate", &format!("Error creating job: {e}"))
                                    .await;
                                return Err(e);
                            }
                        }
                        status.last_schedule_time = Some(Time(scheduled));
                    }
                }
                if let Some(next) = schedule.next_after(now) {
                    let wait = (next - now).get_milliseconds().max(0) as u64 + 100;
                    requeue = Some(Duration::from_millis(wait));
                }
            }
        }
        if status != previous {
            let mut updated = (*cj).clone();
            updated.status = Some(CronJobStatus { ..status });
            let api: Api<CronJob> = Api::namespaced(self.client.clone(), key.namespace.as_deref().unwrap_or_default());
            api.replace_status(&key.name, &updated).await?;
        }
        Ok(requeue.map_or(Action::AwaitChange, Action::RequeueAfter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_count_minutes_since_the_epoch() {
        let t: jiff::Timestamp = "2026-01-01T00:03:00Z".parse().unwrap();
        assert_eq!(job_name("backup", t), format!("backup-{}", t.as_second() / 60));
    }
}
