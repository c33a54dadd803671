//! Container lifecycle hooks (Kubernetes `lifecycle/handlers.go` and `killContainer`).
//!
//! `postStart` runs right after the container started; the pod's sync waits for it, so the
//! container shows `ContainerCreating` until it is done. If it fails the kubelet records
//! `FailedPostStartHook`, kills the container and it restarts by the restart policy (status
//! `PostStartHookError` meanwhile). `preStop` runs before the SIGTERM of any kill (deletion,
//! liveness failure, image change), within the grace period, which its run time then shortens;
//! a failure records `FailedPreStopHook` and the kill goes on. Handlers: `exec` in the container,
//! `httpGet` from the node to the pod IP (only a transport error fails it, as in Kubernetes),
//! and `sleep`.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Pod};
use skiff_runtime::{ContainerState, ExitStatus, Runtime};
use tokio::time::Instant;

use crate::Kubelet;
use crate::events::container_ref;

/// Kubernetes' `minimumGracePeriodInSeconds`: what a container gets after a preStop hook used
/// up its grace period, so it still may shut down on SIGTERM.
pub const MINIMUM_GRACE: Duration = Duration::from_secs(2);

/// Where a hook runs: the container (exec) and the pod's address (httpGet).
pub struct HookTarget<'a> {
    /// For exec hooks (as [`crate::prober::ProbeTarget`]'s).
    pub runtime: Option<&'a Runtime>,
    pub id: &'a str,
    pub pod: &'a Pod,
    pub container: &'a Container,
    pub pod_ip: &'a str,
}

/// `name_namespace(uid)`, as Kubernetes' `format.Pod` names a pod in messages.
pub fn format_pod(pod: &Pod) -> String {
    let m = &pod.metadata;
    format!(
        "{}_{}({})",
        m.name.as_deref().unwrap_or_default(),
        m.namespace.as_deref().unwrap_or("default"),
        m.uid.as_deref().unwrap_or_default()
    )
}

/// Go's `%v` of a string slice: `[sh -c exit 1]`.
fn go_list(items: &[String]) -> String {
    format!("[{}]", items.join(" "))
}

/// Runs one handler. `Err` carries the message Kubernetes gives (it becomes the waiting message
/// of a `PostStartHookError`; events leave it out, as secrets could be in it).
pub async fn run(target: &HookTarget<'_>, handler: &LifecycleHandler) -> Result<(), String> {
    let (c, pod) = (target.container, format_pod(target.pod));
    if let Some(exec) = &handler.exec {
        let argv = exec.command.clone().unwrap_or_default();
        let failed = |error: String, output: &str| {
            let output = serde_json::to_string(output).unwrap_or_default();
            format!(
                "Exec lifecycle hook ({}) for Container {:?} in Pod {pod:?} failed - error: {error}, message: {output}",
                go_list(&argv),
                c.name
            )
        };
        let Some(runtime) = target.runtime else { return Err(failed("no runtime to exec in".into(), "")) };
        return match crate::prober::exec_in_container(runtime, target.id, argv.clone(), None).await {
            Ok((0, _)) => Ok(()),
            Ok((code, output)) => {
                Err(failed(format!("command '{}' exited with {code}: {output}", argv.join(" ")), &output))
            }
            Err(e) => Err(failed(e, "")),
        };
    }
    if let Some(http) = &handler.http_get {
        let ports = c.ports.clone().unwrap_or_default();
        let path = http.path.clone().unwrap_or_default();
        return match crate::prober::http_get(http, target.pod_ip, &ports, "kube-lifecycle/1.33").await {
            // Any answer will do: Kubernetes checks only that the request went through.
            Ok(_) => Ok(()),
            Err(e) => Err(format!(
                "HTTP lifecycle hook ({path}) for Container {:?} in Pod {pod:?} failed - error: {e}",
                c.name
            )),
        };
    }
    if let Some(sleep) = &handler.sleep {
        tokio::time::sleep(Duration::from_secs(sleep.seconds.max(0) as u64)).await;
        return Ok(());
    }
    Err(format!("Cannot run handler: invalid handler: {c:?}", c = handler))
}

/// Runs the preStop hook for at most `grace`; returns what is left of the grace period for the
/// SIGTERM (at least [`MINIMUM_GRACE`]). A failure is recorded as `FailedPreStopHook`.
pub async fn run_pre_stop(kubelet: &Kubelet, target: &HookTarget<'_>, grace: Duration) -> Duration {
    let Some(handler) = target.container.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) else { return grace };
    if grace.is_zero() {
        return grace;
    }
    let started = Instant::now();
    match tokio::time::timeout(grace, run(target, handler)).await {
        Ok(Ok(())) => {}
        Ok(Err(message)) => {
            tracing::warn!(container = %target.id, "preStop hook failed: {message}");
            let cref = container_ref(target.pod, &target.container.name);
            kubelet.recorder.warning(&cref, "FailedPreStopHook", "PreStopHook failed").await;
        }
        Err(_) => tracing::info!(container = %target.id, "preStop hook not completed in the grace period"),
    }
    remaining_grace(grace, started.elapsed())
}

/// The grace period left after a preStop hook ran for `used`: Kubernetes counts whole seconds,
/// and never leaves less than [`MINIMUM_GRACE`].
pub fn remaining_grace(grace: Duration, used: Duration) -> Duration {
    grace.saturating_sub(Duration::from_secs(used.as_secs())).max(MINIMUM_GRACE)
}

/// Kills a container as Kubernetes' `killContainer`: a `Killing` event (`message`, else
/// "Stopping container <name>"), the preStop hook if it is running and has one, then SIGTERM
/// and SIGKILL once the rest of the grace period has passed. The hook is the one of container
/// `name` in `pod`.
pub async fn kill_container(
    kubelet: &Kubelet,
    pod: &Pod,
    name: &str,
    id: &str,
    pod_ip: &str,
    message: Option<String>,
    grace: Duration,
) -> Result<ExitStatus, skiff_runtime::Error> {
    let message = message.unwrap_or_else(|| format!("Stopping container {name}"));
    kubelet.recorder.normal(&container_ref(pod, name), "Killing", &message).await;
    let running = matches!(kubelet.runtime.container(id).map(|i| i.state), Ok(ContainerState::Running { .. }));
    let grace = match container_spec(pod, name) {
        Some(container) if running => {
            let target = HookTarget { runtime: Some(&kubelet.runtime), id, pod, container, pod_ip };
            run_pre_stop(kubelet, &target, grace).await
        }
        _ => grace,
    };
    kubelet.runtime.stop_container(id, grace).await
}

/// The spec of container `name` of the pod, regular or init.
pub fn container_spec<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    let spec = pod.spec.as_ref()?;
    spec.containers.iter().chain(spec.init_containers.iter().flatten()).find(|c| c.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn pod() -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "shop", "uid": "u1"},
            "spec": {"containers": [{"name": "app"}]}}))
        .unwrap()
    }

    fn handler(v: serde_json::Value) -> LifecycleHandler {
        serde_json::from_value(v).unwrap()
    }

    #[tokio::test]
    async fn an_http_hook_succeeds_on_any_answer_and_fails_on_a_refused_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
            s.write_all(b"HTTP/1.1 500 Internal Server Error\r\n\r\n").await.unwrap();
        });
        let p = pod();
        let c = p.spec.as_ref().unwrap().containers[0].clone();
        let target = HookTarget { runtime: None, id: "x", pod: &p, container: &c, pod_ip: "127.0.0.1" };
        let h = handler(
            json!({"httpGet": {"path": "/hook", "port": port, "httpHeaders": [{"name": "X-Why", "value": "stop"}]}}),
        );
        assert_eq!(run(&target, &h).await, Ok(()));
        let request = rx.recv().await.unwrap();
        assert!(request.starts_with("GET /hook HTTP/1.1\r\n"), "{request}");
        assert!(request.contains("User-Agent: kube-lifecycle/1.33\r\n") && request.contains("X-Why: stop\r\n"));
        server.await.unwrap();
        assert_eq!(
            run(&target, &h).await,
            Err(format!(
                "HTTP lifecycle hook (/hook) for Container \"app\" in Pod \"web_shop(u1)\" failed - error: Get \
                 \"http://127.0.0.1:{port}/hook\": dial tcp 127.0.0.1:{port}: connect: connection refused"
            ))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_sleep_hook_sleeps_its_seconds() {
        let mut p = pod();
        let spec: Container =
            serde_json::from_value(json!({"name": "app", "lifecycle": {"preStop": {"sleep": {"seconds": 3}}}}))
                .unwrap();
        p.spec.as_mut().unwrap().containers[0] = spec.clone();
        let target = HookTarget { runtime: None, id: "x", pod: &p, container: &spec, pod_ip: "" };
        let handler = spec.lifecycle.as_ref().unwrap().pre_stop.clone().unwrap();
        let started = Instant::now();
        assert_eq!(run(&target, &handler).await, Ok(()));
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[test]
    fn a_pre_stop_shortens_the_grace_period_by_whole_seconds_down_to_two() {
        let s = Duration::from_secs;
        assert_eq!(remaining_grace(s(30), Duration::from_millis(4900)), s(26));
        assert_eq!(remaining_grace(s(30), s(29)), s(2));
        assert_eq!(remaining_grace(s(5), s(60)), s(2));
    }

    #[test]
    fn pods_are_named_as_kubernetes_formats_them() {
        assert_eq!(format_pod(&pod()), "web_shop(u1)");
        assert_eq!(go_list(&["sh".into(), "-c".into(), "exit 1".into()]), "[sh -c exit 1]");
    }
}
