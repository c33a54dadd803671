//! The pure computation of a pod's status from what the kubelet knows of its containers
//! (Kubernetes `generateAPIPodStatus` + `getPhase` + the condition generators). No IO: the pod
//! worker fills a [`PodRuntimeState`], this turns it into a `PodStatus`, and the status manager
//! writes it if it changed.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus,
    HostIP, Pod, PodCondition, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// A container's end, as the kubelet reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terminated {
    pub exit_code: i32,
    pub signal: Option<i32>,
    /// `Completed`, `Error`, `OOMKilled`, `StartError`, `ContainerStatusUnknown`.
    pub reason: String,
    pub message: Option<String>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Timestamp,
    /// `skiff://<id>`
    pub container_id: Option<String>,
}

impl Terminated {
    /// The reason Kubernetes gives an exit: OOMKilled, Completed (0) or Error.
    pub fn reason_for(exit_code: i32, oom_killed: bool) -> &'static str {
        if oom_killed {
            "OOMKilled"
        } else if exit_code == 0 {
            "Completed"
        } else {
            "Error"
        }
    }
}

/// Where one container stands now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Current {
    /// Not running: `ContainerCreating`, `ErrImagePull`, `ImagePullBackOff`, `CrashLoopBackOff`,
    /// `CreateContainerError`, `CreateContainerConfigError`, `ErrImageNeverPull`.
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: Timestamp,
    },
    Terminated(Terminated),
}

/// What the kubelet knows of one container of the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRuntimeState {
    /// `skiff://<id>` of the current container, if one was created.
    pub container_id: Option<String>,
    /// The image's repo digest, once pulled.
    pub image_id: Option<String>,
    pub restart_count: i32,
    pub current: Current,
    pub last_terminated: Option<Terminated>,
    /// The readiness probe's result while it runs (`None`: no readiness probe).
    pub readiness: Option<bool>,
    /// The startup probe's result while it runs (`None`: no startup probe).
    pub startup: Option<bool>,
}

impl Default for ContainerRuntimeState {
    fn default() -> Self {
        Self {
            container_id: None,
            image_id: None,
            restart_count: 0,
            current: Current::Waiting { reason: "ContainerCreating".into(), message: None },
            last_terminated: None,
            readiness: None,
            startup: None,
        }
    }
}

/// Everything `generate` needs that is not in the pod object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRuntimeState {
    pub sandbox_ready: bool,
    /// When the kubelet accepted the pod (`status.startTime`).
    pub start_time: Option<Timestamp>,
    pub host_ip: String,
    pub pod_ip: Option<String>,
    /// Why the kubelet failed the pod as a whole (`DeadlineExceeded`), with its message.
    pub failure: Option<(String, String)>,
    pub containers: BTreeMap<String, ContainerRuntimeState>,
}

fn time(t: Timestamp) -> Time {
    Time(t)
}

/// Seconds precision: what the API stores, so comparing a generated status with a stored one
/// does not see sub-second differences.
pub fn truncate(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

fn terminated_state(t: &Terminated) -> ContainerState {
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: t.exit_code,
            signal: t.signal,
            reason: Some(t.reason.clone()),
            message: t.message.clone(),
            started_at: t.started_at.map(time),
            finished_at: Some(time(t.finished_at)),
            container_id: t.container_id.clone(),
        }),
        ..Default::default()
    }
}

fn restart_policy(pod: &Pod) -> &str {
    pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()).unwrap_or("Always")
}

/// Whether a container that ended with `exit_code` is started again under the pod's policy.
pub fn will_restart(pod: &Pod, exit_code: i32) -> bool {
    match restart_policy(pod) {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

/// Whether an init container is a sidecar (KEP-753, `restartPolicy: Always`): it is started in
/// init order but kept running beside the app containers, and restarted whenever it exits.
pub fn is_sidecar(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

fn running(cs: &ContainerStatus) -> bool {
    cs.state.as_ref().is_some_and(|s| s.running.is_some())
}

fn terminated(cs: &ContainerStatus) -> Option<&ContainerStateTerminated> {
    cs.state.as_ref().and_then(|s| s.terminated.as_ref())
}

fn last_terminated(cs: &ContainerStatus) -> Option<&ContainerStateTerminated> {
    cs.last_state.as_ref().and_then(|s| s.terminated.as_ref())
}

/// Whether any app container has run (Kubernetes `HasAnyRegularContainerStarted`): the pod was
/// initialized then, even if a sidecar restarts later.
fn any_regular_started(statuses: &[ContainerStatus]) -> bool {
    statuses.iter().any(|cs| running(cs) || terminated(cs).is_some())
}

/// Whether an init container lets the next one start: a sidecar once started, any other once
/// completed successfully (Kubernetes `isInitContainerInitialized`).
fn init_done(c: &Container, cs: &ContainerStatus) -> bool {
    if is_sidecar(c) { cs.started == Some(true) } else { cs.ready }
}

/// The pod phase (Kubernetes `getPhase`). `init` and `statuses` are in spec order. A regular
/// init container that has not completed holds the pod `Pending` (`Failed` once it failed under
/// `restartPolicy: Never`); a sidecar counts like a running container while it runs, and not at
/// all once it ended, so a pod whose sidecars were stopped ends by its app containers alone.
/// `initialized` (an app container has run) keeps a restarting sidecar from making it Pending.
pub fn phase(pod: &Pod, init: &[ContainerStatus], statuses: &[ContainerStatus], initialized: bool) -> &'static str {
    let init_specs = pod.spec.as_ref().and_then(|s| s.init_containers.as_deref()).unwrap_or_default();
    let (mut pending_init, mut pending_sidecars, mut failed_init) = (0, 0, 0);
    let (mut waiting, mut running_, mut stopped, mut succeeded, mut unknown) = (0, 0, 0, 0, 0);
    for (i, c) in init_specs.iter().enumerate() {
        let Some(cs) = init.get(i) else {
            if is_sidecar(c) {
                pending_sidecars += 1;
                unknown += 1;
            } else {
                pending_init += 1;
            }
            continue;
        };
        if is_sidecar(c) {
            if running(cs) {
                if cs.started != Some(true) {
                    pending_sidecars += 1;
                }
                running_ += 1;
            } else if terminated(cs).is_none() && last_terminated(cs).is_none() {
                // Never started yet; an ended one does not count for the phase.
                pending_sidecars += 1;
                waiting += 1;
            }
        } else if running(cs) {
            pending_init += 1;
        } else if let Some(t) = terminated(cs) {
            if t.exit_code != 0 {
                failed_init += 1;
            }
        } else if let Some(t) = last_terminated(cs) {
            if t.exit_code != 0 {
                failed_init += 1;
            }
        } else {
            pending_init += 1;
        }
    }
    let spec_count = pod.spec.as_ref().map_or(0, |s| s.containers.len());
    for i in 0..spec_count {
        let Some(cs) = statuses.get(i) else {
            unknown += 1;
            continue;
        };
        let state = cs.state.as_ref();
        if running(cs) {
            running_ += 1;
        } else if let Some(t) = terminated(cs) {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else if state.and_then(|s| s.waiting.as_ref()).is_some() {
            if last_terminated(cs).is_some() {
                // Restarting: it ran before.
                stopped += 1;
            } else {
                waiting += 1;
            }
        } else {
            unknown += 1;
        }
    }
    if failed_init > 0 && restart_policy(pod) == "Never" {
        return "Failed";
    }
    match () {
        _ if pending_init > 0 || (pending_sidecars > 0 && !initialized) => "Pending",
        _ if waiting > 0 => "Pending",
        _ if running_ > 0 && unknown == 0 => "Running",
        _ if running_ == 0 && stopped > 0 && unknown == 0 => {
            // All stopped: decided by whether any of them will be started again.
            match restart_policy(pod) {
                "Always" => "Running",
                _ if stopped == succeeded => "Succeeded",
                "Never" => "Failed",
                _ => "Running",
            }
        }
        _ => "Pending",
    }
}

fn condition(
    old: &[PodCondition],
    type_: &str,
    status: bool,
    reason: Option<&str>,
    message: Option<String>,
    now: Timestamp,
) -> PodCondition {
    let status = if status { "True" } else { "False" }.to_string();
    // The transition time moves only when the status does.
    let transition = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| time(now));
    PodCondition {
        type_: type_.to_string(),
        status,
        reason: reason.map(String::from),
        message,
        last_transition_time: Some(transition),
        last_probe_time: None,
        ..Default::default()
    }
}

/// One container's status. An init container is ready once it has completed successfully; a
/// sidecar, as an app container, while it runs, has started and passes its readiness probe.
fn container_status(c: &Container, st: Option<&ContainerRuntimeState>, init: bool) -> ContainerStatus {
    let st = st.cloned().unwrap_or_default();
    let init = init && !is_sidecar(c);
    let (state, ready, started) = match &st.current {
        Current::Waiting { reason, message } => (
            ContainerState {
                waiting: Some(ContainerStateWaiting { reason: Some(reason.clone()), message: message.clone() }),
                ..Default::default()
            },
            false,
            false,
        ),
        Current::Running { started_at } => {
            let started = st.startup.unwrap_or(true);
            (
                ContainerState {
                    running: Some(ContainerStateRunning { started_at: Some(time(*started_at)) }),
                    ..Default::default()
                },
                !init && started && st.readiness.unwrap_or(true),
                started,
            )
        }
        Current::Terminated(t) => (terminated_state(t), init && t.exit_code == 0, false),
    };
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        image_id: st.image_id.clone().unwrap_or_default(),
        container_id: st.container_id.clone(),
        ready,
        started: Some(started),
        restart_count: st.restart_count,
        state: Some(state),
        last_state: Some(st.last_terminated.as_ref().map(terminated_state).unwrap_or_default()),
        ..Default::default()
    }
}

/// Whether an init container that ended with `exit_code` runs again: only after a failure,
/// and not under `restartPolicy: Never`.
pub fn will_restart_init(pod: &Pod, exit_code: i32) -> bool {
    exit_code != 0 && restart_policy(pod) != "Never"
}

/// Kubernetes `MaxPodTerminationMessageLogLength`: what all of a pod's termination messages may
/// hold together; each container's share is this divided by the number of containers.
pub const MAX_POD_TERMINATION_MESSAGE_BYTES: usize = 12 * 1024;

/// Cuts every termination message (current and last state) to the container's share of the
/// pod's budget, keeping its start, as Kubernetes' status manager does.
fn limit_termination_messages(statuses: &mut [ContainerStatus], containers: usize) {
    let share = MAX_POD_TERMINATION_MESSAGE_BYTES / containers.max(1);
    let cut = |state: &mut Option<ContainerState>| {
        if let Some(message) = state.as_mut().and_then(|s| s.terminated.as_mut()).and_then(|t| t.message.as_mut())
            && message.len() > share
        {
            let mut end = share;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
    };
    for status in statuses {
        cut(&mut status.state);
        cut(&mut status.last_state);
    }
}

/// The status of `pod` given `rt`, at `now` (seconds precision).
pub fn generate(pod: &Pod, rt: &PodRuntimeState, now: Timestamp) -> PodStatus {
    let now = truncate(now);
    let old = pod.status.clone().unwrap_or_default();
    let old_conditions = old.conditions.clone().unwrap_or_default();
    let spec_containers = pod.spec.as_ref().map(|s| s.containers.as_slice()).unwrap_or_default();

    let init_specs = pod.spec.as_ref().and_then(|s| s.init_containers.as_deref()).unwrap_or_default();
    let mut init_statuses: Vec<ContainerStatus> =
        init_specs.iter().map(|c| container_status(c, rt.containers.get(&c.name), true)).collect();
    let containers = init_specs.len() + spec_containers.len();
    limit_termination_messages(&mut init_statuses, containers);
    let mut statuses: Vec<ContainerStatus> =
        spec_containers.iter().map(|c| container_status(c, rt.containers.get(&c.name), false)).collect();
    let incomplete: Vec<&str> =
        init_specs.iter().zip(&init_statuses).filter(|(c, s)| !init_done(c, s)).map(|(c, _)| c.name.as_str()).collect();
    // Once an app container has run, a restarting sidecar does not un-initialize the pod.
    let has_run = any_regular_started(&statuses);
    let initialized = incomplete.is_empty() || has_run;
    for status in &mut statuses {
        // Not created yet because init containers still run: Kubernetes says PodInitializing.
        if !initialized && status.container_id.is_none() {
            status.state = Some(ContainerState {
                waiting: Some(ContainerStateWaiting { reason: Some("PodInitializing".into()), message: None }),
                ..Default::default()
            });
        }
    }
    limit_termination_messages(&mut statuses, containers);

    let old_phase = old.phase.as_deref();
    // A terminal phase is final (Kubernetes never leaves Succeeded or Failed).
    let phase = match old_phase {
        Some("Succeeded") => "Succeeded",
        Some("Failed") => "Failed",
        _ if rt.failure.is_some() => "Failed",
        _ => phase(pod, &init_statuses, &statuses, has_run),
    };

    // Sidecars count for readiness as app containers do, and are named first, as Kubernetes does.
    let sidecar_statuses = init_specs.iter().zip(&init_statuses).filter(|(c, _)| is_sidecar(c)).map(|(_, s)| s);
    let unready: Vec<&str> =
        sidecar_statuses.chain(statuses.iter()).filter(|s| !s.ready).map(|s| s.name.as_str()).collect();
    let (ready, ready_reason, ready_message) = if phase == "Succeeded" {
        (false, Some("PodCompleted"), None)
    } else if unready.is_empty() {
        (true, None, None)
    } else {
        (false, Some("ContainersNotReady"), Some(format!("containers with unready status: [{}]", unready.join(" "))))
    };
    let scheduled = old_conditions
        .iter()
        .find(|c| c.type_ == "PodScheduled" && c.status == "True")
        .cloned()
        .unwrap_or_else(|| condition(&old_conditions, "PodScheduled", true, None, None, now));
    let (initialized_reason, initialized_message) = if !initialized {
        (
            Some("ContainersNotInitialized"),
            Some(format!("containers with incomplete status: [{}]", incomplete.join(" "))),
        )
    } else if phase == "Succeeded" {
        (Some("PodCompleted"), None)
    } else {
        (None, None)
    };
    let conditions = vec![
        condition(&old_conditions, "PodReadyToStartContainers", rt.sandbox_ready, None, None, now),
        condition(&old_conditions, "Initialized", initialized, initialized_reason, initialized_message, now),
        condition(&old_conditions, "Ready", ready, ready_reason, ready_message.clone(), now),
        condition(&old_conditions, "ContainersReady", ready, ready_reason, ready_message, now),
        scheduled,
    ];

    let host_ip = (!rt.host_ip.is_empty()).then(|| rt.host_ip.clone());
    PodStatus {
        phase: Some(phase.to_string()),
        conditions: Some(conditions),
        container_statuses: Some(statuses),
        init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
        start_time: old.start_time.clone().or(rt.start_time.map(|t| time(truncate(t)))),
        host_ips: host_ip.as_ref().map(|ip| vec![HostIP { ip: ip.clone() }]),
        host_ip,
        pod_ip: rt.pod_ip.clone(),
        pod_ips: rt.pod_ip.as_ref().map(|ip| vec![k8s_openapi::api::core::v1::PodIP { ip: ip.clone() }]),
        qos_class: old.qos_class.clone(),
        reason: rt.failure.as_ref().map(|(r, _)| r.clone()).or(old.reason.clone()),
        message: rt.failure.as_ref().map(|(_, m)| m.clone()).or(old.message.clone()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(policy: &str, containers: &[&str]) -> Pod {
        let cs: Vec<_> = containers.iter().map(|n| json!({"name": n, "image": "busybox:1"})).collect();
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u"},
            "spec": {"restartPolicy": policy, "containers": cs},
        }))
        .unwrap()
    }

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn waiting(reason: &str) -> ContainerRuntimeState {
        ContainerRuntimeState {
            current: Current::Waiting { reason: reason.into(), message: None },
            ..Default::default()
        }
    }

    fn running() -> ContainerRuntimeState {
        ContainerRuntimeState {
            container_id: Some("skiff://abc".into()),
            image_id: Some("docker.io/library/busybox@sha256:1".into()),
            current: Current::Running { started_at: ts(1) },
            ..Default::default()
        }
    }

    fn exited(code: i32) -> ContainerRuntimeState {
        ContainerRuntimeState {
            current: Current::Terminated(Terminated {
                exit_code: code,
                signal: None,
                reason: Terminated::reason_for(code, false).into(),
                message: None,
                started_at: Some(ts(1)),
                finished_at: ts(2),
                container_id: Some("skiff://abc".into()),
            }),
            ..Default::default()
        }
    }

    fn restarting(code: i32) -> ContainerRuntimeState {
        let Current::Terminated(t) = exited(code).current else { unreachable!() };
        ContainerRuntimeState {
            restart_count: 1,
            last_terminated: Some(t),
            current: Current::Waiting { reason: "CrashLoopBackOff".into(), message: None },
            ..Default::default()
        }
    }

    fn state(sandbox: bool, containers: Vec<(&str, ContainerRuntimeState)>) -> PodRuntimeState {
        PodRuntimeState {
            sandbox_ready: sandbox,
            start_time: Some(ts(0)),
            host_ip: "10.0.0.5".into(),
            pod_ip: None,
            failure: None,
            containers: containers.into_iter().map(|(n, s)| (n.to_string(), s)).collect(),
        }
    }

    fn cond<'a>(status: &'a PodStatus, type_: &str) -> &'a PodCondition {
        status.conditions.as_ref().unwrap().iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn termination_messages_share_the_pods_12_kib_evenly() {
        let names: Vec<String> = (0..4).map(|i| format!("c{i}")).collect();
        let p = pod("Always", &names.iter().map(String::as_str).collect::<Vec<_>>());
        let with_message = |text: String| {
            let mut st = restarting(1);
            if let Some(t) = st.last_terminated.as_mut() {
                t.message = Some(text);
            }
            st
        };
        let rt = state(
            true,
            vec![
                ("c0", with_message("a".repeat(4000))),
                ("c1", with_message("short".into())),
                ("c2", with_message(format!("a{}", "é".repeat(2000)))),
                ("c3", running()),
            ],
        );
        let status = generate(&p, &rt, ts(5));
        let cs = status.container_statuses.unwrap();
        let message = |i: usize| cs[i].last_state.clone().unwrap().terminated.unwrap().message.unwrap();
        assert_eq!(message(0).len(), 3072, "12 KiB / 4 containers");
        assert_eq!(message(1), "short");
        assert_eq!(message(2).len(), 3071, "cut back to a character boundary");
    }

    #[test]
    fn phase_follows_kubernetes_get_phase() {
        // (restart policy, container states, phase)
        let cases: Vec<(&str, Vec<(&str, ContainerRuntimeState)>, &str)> = vec![
            ("Always", vec![("a", waiting("ContainerCreating"))], "Pending"),
            ("Always", vec![("a", running()), ("b", waiting("ErrImagePull"))], "Pending"),
            ("Always", vec![("a", running()), ("b", running())], "Running"),
            ("Always", vec![("a", exited(0))], "Running"),
            ("Always", vec![("a", restarting(1))], "Running"),
            ("Never", vec![("a", exited(0)), ("b", exited(0))], "Succeeded"),
            ("Never", vec![("a", exited(0)), ("b", exited(2))], "Failed"),
            ("Never", vec![("a", running()), ("b", exited(2))], "Running"),
            ("OnFailure", vec![("a", exited(0))], "Succeeded"),
            ("OnFailure", vec![("a", restarting(1))], "Running"),
            ("OnFailure", vec![("a", exited(3))], "Running"),
        ];
        for (policy, containers, want) in cases {
            let names: Vec<&str> = containers.iter().map(|(n, _)| *n).collect();
            let p = pod(policy, &names);
            let status = generate(&p, &state(true, containers.clone()), ts(5));
            assert_eq!(status.phase.as_deref(), Some(want), "{policy} {containers:?}");
        }
    }

    #[test]
    fn running_pod_is_ready_with_all_five_conditions_in_kubernetes_order() {
        let p = pod("Always", &["app"]);
        let status = generate(&p, &state(true, vec![("app", running())]), ts(5));
        let types: Vec<&str> = status.conditions.as_ref().unwrap().iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"]);
        assert!(status.conditions.as_ref().unwrap().iter().all(|c| c.status == "True"));
        let cs = &status.container_statuses.as_ref().unwrap()[0];
        assert!(cs.ready);
        assert_eq!(cs.started, Some(true));
        assert_eq!(cs.container_id.as_deref(), Some("skiff://abc"));
        assert_eq!(cs.image, "busybox:1");
        assert_eq!(cs.image_id, "docker.io/library/busybox@sha256:1");
        assert_eq!(status.host_ip.as_deref(), Some("10.0.0.5"));
        assert_eq!(status.start_time, Some(Time(ts(0))));
        assert_eq!(serde_json::to_value(&cs.last_state).unwrap(), json!({}));
    }

    #[test]
    fn unready_containers_are_named_in_the_ready_condition() {
        let p = pod("Always", &["a", "b", "c"]);
        let status = generate(
            &p,
            &state(true, vec![("a", running()), ("b", waiting("ContainerCreating")), ("c", exited(1))]),
            ts(5),
        );
        let ready = cond(&status, "Ready");
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason.as_deref(), Some("ContainersNotReady"));
        assert_eq!(ready.message.as_deref(), Some("containers with unready status: [b c]"));
        assert_eq!(cond(&status, "ContainersReady").message, ready.message);
    }

    #[test]
    fn completed_pod_reports_pod_completed_and_terminated_reasons() {
        let p = pod("Never", &["job"]);
        let status = generate(&p, &state(false, vec![("job", exited(0))]), ts(5));
        assert_eq!(status.phase.as_deref(), Some("Succeeded"));
        assert_eq!(cond(&status, "Ready").reason.as_deref(), Some("PodCompleted"));
        assert_eq!(cond(&status, "PodReadyToStartContainers").status, "False");
        let t = status.container_statuses.as_ref().unwrap()[0].state.as_ref().unwrap().terminated.clone().unwrap();
        assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")));
        assert_eq!(t.finished_at, Some(Time(ts(2))));
    }

    #[test]
    fn restarted_container_shows_last_state_and_restart_count() {
        let p = pod("Always", &["app"]);
        let status = generate(&p, &state(true, vec![("app", restarting(1))]), ts(5));
        let cs = &status.container_statuses.as_ref().unwrap()[0];
        assert_eq!(cs.restart_count, 1);
        assert_eq!(cs.state.as_ref().unwrap().waiting.as_ref().unwrap().reason.as_deref(), Some("CrashLoopBackOff"));
        let last = cs.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!((last.exit_code, last.reason.as_deref()), (1, Some("Error")));
    }

    #[test]
    fn transition_times_move_only_when_a_condition_changes() {
        let mut p = pod("Always", &["app"]);
        let first = generate(&p, &state(true, vec![("app", waiting("ContainerCreating"))]), ts(5));
        p.status = Some(first.clone());
        let second = generate(&p, &state(true, vec![("app", running())]), ts(9));
        assert_eq!(cond(&second, "Ready").last_transition_time, Some(Time(ts(9))));
        assert_eq!(cond(&second, "Initialized").last_transition_time, Some(Time(ts(5))));
        assert_eq!(cond(&second, "PodReadyToStartContainers").last_transition_time, Some(Time(ts(5))));
        p.status = Some(second.clone());
        assert_eq!(
            generate(&p, &state(true, vec![("app", running())]), ts(20)),
            second,
            "nothing changed, nothing moves"
        );
    }

    #[test]
    fn terminal_phase_is_never_left() {
        let mut p = pod("Never", &["job"]);
        p.status = Some(PodStatus { phase: Some("Failed".into()), ..Default::default() });
        let status = generate(&p, &state(false, vec![("job", waiting("ContainerCreating"))]), ts(5));
        assert_eq!(status.phase.as_deref(), Some("Failed"));
    }

    fn pod_with_init(policy: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u"},
            "spec": {"restartPolicy": policy,
                     "initContainers": [{"name": "setup", "image": "busybox:1"}, {"name": "migrate", "image": "busybox:1"}],
                     "containers": [{"name": "app", "image": "busybox:1"}]},
        }))
        .unwrap()
    }

    #[test]
    fn init_containers_hold_the_pod_pending_until_all_have_completed() {
        let p = pod_with_init("Always");
        let status = generate(&p, &state(true, vec![("setup", exited(0)), ("migrate", running())]), ts(5));
        assert_eq!(status.phase.as_deref(), Some("Pending"));
        let init = cond(&status, "Initialized");
        assert_eq!((init.status.as_str(), init.reason.as_deref()), ("False", Some("ContainersNotInitialized")));
        assert_eq!(init.message.as_deref(), Some("containers with incomplete status: [migrate]"));
        let inits = status.init_container_statuses.as_ref().unwrap();
        assert_eq!((inits[0].ready, inits[1].ready), (true, false));
        let app = &status.container_statuses.as_ref().unwrap()[0];
        assert_eq!(app.state.as_ref().unwrap().waiting.as_ref().unwrap().reason.as_deref(), Some("PodInitializing"));

        let done =
            generate(&p, &state(true, vec![("setup", exited(0)), ("migrate", exited(0)), ("app", running())]), ts(6));
        assert_eq!(done.phase.as_deref(), Some("Running"));
        assert_eq!(cond(&done, "Initialized").status, "True");
    }

    #[test]
    fn failed_init_container_fails_the_pod_only_under_restart_policy_never() {
        let cases = [("Never", "Failed"), ("OnFailure", "Pending"), ("Always", "Pending")];
        for (policy, want) in cases {
            let status = generate(&pod_with_init(policy), &state(true, vec![("setup", exited(1))]), ts(5));
            assert_eq!(status.phase.as_deref(), Some(want), "{policy}");
        }
        let restarting = generate(&pod_with_init("Always"), &state(true, vec![("setup", restarting(1))]), ts(5));
        assert_eq!(restarting.phase.as_deref(), Some("Pending"));
        assert!(!will_restart_init(&pod_with_init("Always"), 0));
        assert!(will_restart_init(&pod_with_init("OnFailure"), 2));
        assert!(!will_restart_init(&pod_with_init("Never"), 2));
    }

    fn pod_with_sidecar(policy: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u"},
            "spec": {"restartPolicy": policy,
                     "initContainers": [{"name": "setup", "image": "busybox:1"},
                                        {"name": "side", "image": "busybox:1", "restartPolicy": "Always"}],
                     "containers": [{"name": "app", "image": "busybox:1"}]},
        }))
        .unwrap()
    }

    #[test]
    fn a_running_sidecar_counts_for_ready_like_an_app_container() {
        let p = pod_with_sidecar("Always");
        let status =
            generate(&p, &state(true, vec![("setup", exited(0)), ("side", running()), ("app", running())]), ts(5));
        assert_eq!(status.phase.as_deref(), Some("Running"));
        let side = &status.init_container_statuses.as_ref().unwrap()[1];
        assert_eq!((side.ready, side.started), (true, Some(true)));
        assert!(side.state.as_ref().unwrap().running.is_some());
        assert_eq!(cond(&status, "Initialized").status, "True");
        assert_eq!(cond(&status, "Ready").status, "True");

        let unready = ContainerRuntimeState { readiness: Some(false), ..running() };
        let status =
            generate(&p, &state(true, vec![("setup", exited(0)), ("side", unready), ("app", running())]), ts(5));
        let side = &status.init_container_statuses.as_ref().unwrap()[1];
        assert_eq!((side.ready, side.started), (false, Some(true)));
        let ready = cond(&status, "ContainersReady");
        assert_eq!(ready.status, "False");
        assert_eq!(ready.message.as_deref(), Some("containers with unready status: [side]"));
    }

    #[test]
    fn a_sidecar_initializes_the_pod_once_started_not_once_exited() {
        let p = pod_with_sidecar("Always");
        let starting = ContainerRuntimeState { startup: Some(false), ..running() };
        let status = generate(&p, &state(true, vec![("setup", exited(0)), ("side", starting)]), ts(5));
        assert_eq!(status.phase.as_deref(), Some("Pending"));
        let init = cond(&status, "Initialized");
        assert_eq!(
            (init.status.as_str(), init.message.as_deref()),
            ("False", Some("containers with incomplete status: [side]"))
        );
        let app = &status.container_statuses.as_ref().unwrap()[0];
        assert_eq!(app.state.as_ref().unwrap().waiting.as_ref().unwrap().reason.as_deref(), Some("PodInitializing"));

        let started = generate(&p, &state(true, vec![("setup", exited(0)), ("side", running())]), ts(5));
        assert_eq!(cond(&started, "Initialized").status, "True");
        assert_eq!(started.phase.as_deref(), Some("Pending"), "the app container is still being created");

        // A sidecar restarting after the app container has run keeps the pod initialized and running.
        let status = generate(
            &p,
            &state(true, vec![("setup", exited(0)), ("side", restarting(137)), ("app", running())]),
            ts(5),
        );
        assert_eq!(cond(&status, "Initialized").status, "True");
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(cond(&status, "Ready").status, "False");
    }

    #[test]
    fn a_never_pod_ends_by_its_app_containers_once_its_sidecar_is_stopped() {
        let p = pod_with_sidecar("Never");
        let running_side =
            generate(&p, &state(true, vec![("setup", exited(0)), ("side", running()), ("app", exited(0))]), ts(5));
        assert_eq!(running_side.phase.as_deref(), Some("Running"), "the sidecar still runs");
        let cases = [(0, 143, "Succeeded"), (0, 0, "Succeeded"), (2, 143, "Failed")];
        for (app, side, want) in cases {
            let status = generate(
                &p,
                &state(false, vec![("setup", exited(0)), ("side", exited(side)), ("app", exited(app))]),
                ts(5),
            );
            assert_eq!(status.phase.as_deref(), Some(want), "app {app} sidecar {side}");
            assert_eq!(cond(&status, "Initialized").status, "True");
        }
    }

    #[test]
    fn a_pod_failed_by_the_kubelet_reports_why() {
        let mut rt = state(true, vec![("app", running())]);
        rt.failure =
            Some(("DeadlineExceeded".into(), "Pod was active on the node longer than the specified deadline".into()));
        let status = generate(&pod("Always", &["app"]), &rt, ts(5));
        assert_eq!(status.phase.as_deref(), Some("Failed"));
        assert_eq!(status.reason.as_deref(), Some("DeadlineExceeded"));
    }

    #[test]
    fn probes_gate_ready_and_started() {
        let p = pod("Always", &["app"]);
        let probed = |readiness, startup| ContainerRuntimeState { readiness, startup, ..running() };
        let cases = [
            (None, None, true, true),
            (Some(false), None, false, true),
            (Some(true), None, true, true),
            (None, Some(false), false, false),
            (Some(true), Some(true), true, true),
        ];
        for (readiness, startup, ready, started) in cases {
            let status = generate(&p, &state(true, vec![("app", probed(readiness, startup))]), ts(5));
            let cs = &status.container_statuses.as_ref().unwrap()[0];
            assert_eq!((cs.ready, cs.started), (ready, Some(started)), "{readiness:?} {startup:?}");
            assert_eq!(cond(&status, "Ready").status == "True", ready);
        }
    }

    #[test]
    fn oom_kill_is_reported_as_oom_killed() {
        assert_eq!(Terminated::reason_for(137, true), "OOMKilled");
        assert_eq!(Terminated::reason_for(137, false), "Error");
        assert_eq!(Terminated::reason_for(0, false), "Completed");
    }
}
