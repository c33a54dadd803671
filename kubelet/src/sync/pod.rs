//! `sync_pod`: bring the runtime in line with the pod spec, one level-triggered pass. Ensure the
//! sandbox; for each container in order: leave it running, restart it per `restartPolicy` (with
//! back-off: the first restart at once, then 10 s doubling to 5 min, `CrashLoopBackOff` while
//! waiting), or pull its image (with back-off, `ErrImagePull` → `ImagePullBackOff`), create and
//! start it. Init containers run one at a time; a sidecar (`restartPolicy: Always`, KEP-753)
//! only has to have started before the next, keeps running and is restarted whenever it exits,
//! and is stopped once the app containers of a Never/OnFailure pod have ended for good.
//! Returns when the worker should look again if nothing else happens.

use std::time::{Duration, Instant as StdInstant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use skiff_api::{Api, EventType};
use skiff_runtime::{ContainerSpec, ContainerState, Image, RegistryAuth, Resources, SandboxSpec};
use tokio::time::Instant;

use super::{PodWorker, terminated_from_exit};
use crate::env::{self, EnvSources};
use crate::events::{container_ref, go_duration, pod_ref};
use crate::generate::{self, Current, Terminated, will_restart, will_restart_init};

/// How soon a container whose configuration failed is tried again.
const CONFIG_RETRY: Duration = Duration::from_secs(10);
/// How soon a volume that failed to set up is tried again.
const VOLUME_RETRY: Duration = Duration::from_secs(2);
/// The waiting reason of a container whose postStart hook failed (Kubernetes `ErrPostStartHook`).
const POST_START_HOOK_ERROR: &str = "PostStartHookError";
/// How long `ErrImagePull` shows before it turns into `ImagePullBackOff`.
const ERR_IMAGE_PULL_SHOWN: Duration = Duration::from_secs(1);

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The pull policy, defaulted as the API server does: `Always` for `:latest` or no tag.
pub fn pull_policy(container: &Container) -> &str {
    if let Some(p) = container.image_pull_policy.as_deref() {
        return p;
    }
    let image = container.image.as_deref().unwrap_or_default();
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') {
        "IfNotPresent"
    } else {
        match last.split_once(':') {
            None | Some((_, "latest")) => "Always",
            Some(_) => "IfNotPresent",
        }
    }
}

/// The registry host of an image reference, as docker config files key it.
pub fn registry_host(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => first,
        _ => "docker.io",
    }
}

/// Credentials for `image` from a `kubernetes.io/dockerconfigjson` (or `.dockercfg`) secret.
pub fn auth_from_secret(secret: &Secret, image: &str) -> Option<RegistryAuth> {
    use base64::Engine;
    let data = secret.data.as_ref()?;
    let config: serde_json::Value = if let Some(raw) = data.get(".dockerconfigjson") {
        serde_json::from_slice::<serde_json::Value>(&raw.0).ok()?.get("auths")?.clone()
    } else {
        serde_json::from_slice(&data.get(".dockercfg")?.0).ok()?
    };
    let host = registry_host(image);
    let entry = config.as_object()?.iter().find_map(|(key, v)| {
        let key = key.trim_start_matches("https://").trim_start_matches("http://");
        let key = key.split('/').next().unwrap_or(key);
        let matches = key == host || (host == "docker.io" && matches!(key, "index.docker.io" | "registry-1.docker.io"));
        matches.then_some(v)
    })?;
    if let (Some(u), Some(p)) = (entry["username"].as_str(), entry["password"].as_str()) {
        return Some(RegistryAuth { username: u.to_string(), password: p.to_string() });
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(entry["auth"].as_str()?).ok()?;
    let (u, p) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some(RegistryAuth { username: u.to_string(), password: p.to_string() })
}

/// Runtime resources from the container's limits and requests.
pub fn container_resources(container: &Container) -> Resources {
    let res = container.resources.as_ref();
    let get =
        |map: Option<&std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
         key: &str,
         milli: bool| {
            map.and_then(|m| m.get(key)).and_then(|q| skiff_api::ParsedQuantity::parse(&q.0).ok()).map(|q| {
                let v = if milli { q.milli_value() } else { q.value() };
                v.max(0) as u64
            })
        };
    let limits = res.and_then(|r| r.limits.as_ref());
    let requests = res.and_then(|r| r.requests.as_ref());
    Resources {
        memory_limit_bytes: get(limits, "memory", false),
        cpu_limit_millis: get(limits, "cpu", true),
        cpu_request_millis: get(requests, "cpu", true).or(get(limits, "cpu", true)),
    }
}

impl PodWorker {
    pub(crate) async fn sync_pod(&mut self, pod: &Pod) -> Option<Instant> {
        self.pod = Some(pod.clone());
        if self.rt.start_time.is_none() {
            self.rt.start_time = Some(generate::truncate(Timestamp::now()));
        }
        let k = self.kubelet.clone();
        if !self.rt.sandbox_ready {
            // `spec.hostname` if set, else the pod name, cut to a DNS label as the kubelet does.
            let hostname = pod.spec.as_ref().and_then(|s| s.hostname.clone()).filter(|h| !h.is_empty());
            let mut hostname = hostname.or(pod.metadata.name.clone()).unwrap_or_default();
            hostname.truncate(63);
            let hostname = hostname.trim_end_matches(['-', '.']).to_string();
            let host_network = super::host_network(pod);
            match k.runtime.run_sandbox(&SandboxSpec { id: self.uid.clone(), hostname, host_network }).await {
                Ok(()) => {
                    self.rt.sandbox_ready = true;
                    self.rt.pod_ip = super::sandbox_pod_ip(&k, pod, &self.uid, &self.rt.host_ip);
                }
                Err(e) => {
                    k.recorder
                        .warning(&pod_ref(pod), "FailedCreatePodSandBox", &format!("Failed to create pod sandbox: {e}"))
                        .await;
                    return Some(Instant::now() + CONFIG_RETRY);
                }
            }
        }
        match k.volumes.setup(pod).await {
            Ok(volumes) => self.volumes = Some(volumes),
            Err(e) => {
                // As Kubernetes: the containers wait (ContainerCreating) and the mount is retried.
                k.recorder.warning(&pod_ref(pod), "FailedMount", &e.to_string()).await;
                if self.volumes.is_none() {
                    return Some(Instant::now() + VOLUME_RETRY);
                }
                // Already running: keep what is mounted, try again later.
            }
        }
        let sources = self.env_sources(pod).await;
        let inits = pod.spec.as_ref().and_then(|s| s.init_containers.clone()).unwrap_or_default();
        let containers = pod.spec.as_ref().map(|s| s.containers.clone()).unwrap_or_default();
        // Kubernetes `computePodActions`: once no app container runs or will run again, the
        // sidecars are stopped (not restarted) and the pod ends by its app containers.
        if self.apps_done(pod, &containers) {
            return self.stop_sidecars(pod, &inits).await;
        }
        // After a restarting sidecar the app containers carry on: they have run already.
        let has_run = containers.iter().any(|c| self.tracks.get(&c.name).is_some_and(|t| t.id.is_some()));
        // Init containers run one at a time, in order; each must complete before the next, but a
        // sidecar only has to have started (startup probe passed), and keeps running.
        let mut wake = None;
        for c in &inits {
            wake = earliest(wake, self.sync_container(pod, c, &sources, true).await);
            let current = self.rt.containers.get(&c.name);
            let done = if generate::is_sidecar(c) {
                has_run
                    || current.is_some_and(|s| matches!(s.current, Current::Running { .. }) && s.startup != Some(false))
            } else {
                matches!(current.map(|s| &s.current), Some(Current::Terminated(t)) if t.exit_code == 0)
            };
            if !done {
                return wake;
            }
        }
        for c in &containers {
            wake = earliest(wake, self.sync_container(pod, c, &sources, false).await);
        }
        wake
    }

    /// Whether every app container has ended for good (`restartPolicy` Never or OnFailure).
    fn apps_done(&self, pod: &Pod, containers: &[Container]) -> bool {
        !containers.is_empty()
            && containers.iter().all(|c| {
                matches!(self.rt.containers.get(&c.name).map(|s| &s.current),
                    Some(Current::Terminated(t)) if !will_restart(pod, t.exit_code))
            })
    }

    /// Stops the running sidecars, last one first, each within the pod's grace period, as
    /// Kubernetes does once the app containers of a Job's pod have ended. Returns when to try
    /// again if one could not be stopped.
    async fn stop_sidecars(&mut self, pod: &Pod, inits: &[Container]) -> Option<Instant> {
        let k = self.kubelet.clone();
        let pod_ip = self.rt.pod_ip.clone().unwrap_or_default();
        let grace = Duration::from_secs(pod_grace(pod));
        let mut wake = None;
        for c in inits.iter().rev() {
            if !generate::is_sidecar(c) {
                continue;
            }
            let running = matches!(self.rt.containers.get(&c.name).map(|s| &s.current), Some(Current::Running { .. }));
            let Some(id) = self.tracks.get(&c.name).and_then(|t| t.id.clone()).filter(|_| running) else { continue };
            if let Some(probes) = self.probes.remove(&c.name) {
                probes.cancel();
            }
            match crate::lifecycle::kill_container(&k, pod, &c.name, &id, &pod_ip, None, grace).await {
                Ok(status) => {
                    let terminated = self.with_message(&c.name, terminated_from_exit(&status, &id));
                    self.tracks.entry(c.name.clone()).or_default().exited_at = Some(Instant::now());
                    self.rt.containers.entry(c.name.clone()).or_default().current = Current::Terminated(terminated);
                }
                Err(e) => {
                    tracing::warn!(container = %id, "stopping sidecar: {e}");
                    wake = Some(Instant::now() + CONFIG_RETRY);
                }
            }
        }
        wake
    }

    /// Fetches the ConfigMaps and Secrets the containers' env refers to; missing ones are left
    /// out, and env resolution reports them.
    async fn env_sources(&self, pod: &Pod) -> EnvSources {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let client = self.kubelet.client.clone();
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        let secrets: Api<Secret> = Api::namespaced(client, ns);
        let mut sources = EnvSources::default();
        // Collected first: an iterator with closures held across the awaits below would make
        // the future not `Send`.
        let all: Vec<&Container> =
            pod.spec.iter().flat_map(|s| s.init_containers.iter().flatten().chain(s.containers.iter())).collect();
        for c in all {
            let (cm_names, secret_names) = env::referenced_objects(c);
            for name in cm_names {
                if let Ok(Some(cm)) = cms.get_opt(&name).await {
                    sources.config_maps.insert(name, cm);
                }
            }
            for name in secret_names {
                if let Ok(Some(s)) = secrets.get_opt(&name).await {
                    sources.secrets.insert(name, s);
                }
            }
        }
        sources
    }

    async fn sync_container(&mut self, pod: &Pod, c: &Container, sources: &EnvSources, init: bool) -> Option<Instant> {
        let k = self.kubelet.clone();
        let st = self.rt.containers.entry(c.name.clone()).or_default().clone();
        let track = self.tracks.entry(c.name.clone()).or_default();
        // A sidecar is restarted whenever it exits, whatever the pod's policy.
        let sidecar = init && generate::is_sidecar(c);
        let restarts = |code| {
            if sidecar {
                true
            } else if init {
                will_restart_init(pod, code)
            } else {
                will_restart(pod, code)
            }
        };
        let changed = track.image.is_some() && track.image != c.image;
        if changed && matches!(st.current, Current::Running { .. }) {
            return match self.replace_changed(pod, c).await {
                Ok(()) => self.create_and_start(pod, c, sources).await,
                Err(wake) => Some(wake),
            };
        }
        let dead = match &st.current {
            Current::Running { .. } => return None,
            Current::Terminated(t) if !restarts(t.exit_code) => return None,
            Current::Terminated(t) => Some(t.clone()),
            // Both wait to restart a container that ran: its end is the last state.
            Current::Waiting { reason, .. } if reason == "CrashLoopBackOff" || reason == POST_START_HOOK_ERROR => {
                st.last_terminated.clone()
            }
            Current::Waiting { .. } => None,
        };
        if let Some(dead) = dead {
            let ready_at = track.restart_backoff.ready_at(track.exited_at.unwrap_or_else(Instant::now));
            if Instant::now() < ready_at {
                let delay = track.restart_backoff.delay().unwrap_or_default();
                let (ns, name) = Self::pod_names(pod);
                let st = self.rt.containers.get_mut(&c.name).expect("inserted above");
                st.last_terminated = Some(dead);
                st.current = Current::Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: Some(format!(
                        "back-off {} restarting failed container={} pod={name}_{ns}({})",
                        go_duration(delay),
                        c.name,
                        self.uid
                    )),
                };
                k.recorder
                    .warning(
                        &container_ref(pod, &c.name),
                        "BackOff",
                        &format!("Back-off restarting failed container {} in pod {name}_{ns}({})", c.name, self.uid),
                    )
                    .await;
                return Some(ready_at);
            }
            track.restart_backoff.step();
            let old = track.id.take();
            if let Some(probes) = self.probes.remove(&c.name) {
                probes.cancel();
            }
            let st = self.rt.containers.get_mut(&c.name).expect("inserted above");
            st.last_terminated = Some(dead);
            st.restart_count += 1;
            st.current = Current::Waiting { reason: "ContainerCreating".into(), message: None };
            if let Some(old) = old {
                if let Err(e) = k.runtime.remove_container(&old).await {
                    tracing::warn!(container = %old, "removing exited container: {e}");
                }
            }
        }
        self.create_and_start(pod, c, sources).await
    }

    /// Pulls (per policy) and starts a container that has none running.
    async fn create_and_start(&mut self, pod: &Pod, c: &Container, sources: &EnvSources) -> Option<Instant> {
        if let Some(at) = track_retry(self.tracks.get(&c.name)) {
            if Instant::now() < at {
                return Some(at);
            }
        }
        let image = match self.ensure_image(pod, c).await {
            Ok(image) => image,
            Err(wake) => return wake,
        };
        self.start_container(pod, c, image, sources).await
    }

    /// A running container whose image was changed in the pod (`kubectl set image`) is stopped
    /// and started again with the new one at once, whatever the restart policy, as Kubernetes does.
    /// Returns when to try again if the old container could not be stopped.
    async fn replace_changed(&mut self, pod: &Pod, c: &Container) -> Result<(), Instant> {
        let k = self.kubelet.clone();
        let Some(id) = self.tracks.get(&c.name).and_then(|t| t.id.clone()) else { return Ok(()) };
        if let Some(probes) = self.probes.remove(&c.name) {
            probes.cancel();
        }
        let message = format!("Container {} definition changed, will be restarted", c.name);
        let pod_ip = self.rt.pod_ip.clone().unwrap_or_default();
        let grace = Duration::from_secs(pod_grace(pod));
        let stopped = crate::lifecycle::kill_container(&k, pod, &c.name, &id, &pod_ip, Some(message), grace).await;
        let status = match stopped {
            Ok(status) => status,
            Err(e) => {
                tracing::warn!(container = %id, "stopping changed container: {e}");
                return Err(Instant::now() + CONFIG_RETRY);
            }
        };
        let track = self.tracks.entry(c.name.clone()).or_default();
        track.exited_at = Some(Instant::now());
        // Not a crash: the replacement starts without waiting out a back-off.
        track.restart_backoff.reset();
        track.image = None;
        let terminated = self.with_message(&c.name, terminated_from_exit(&status, &id));
        self.rt.containers.entry(c.name.clone()).or_default().current = Current::Terminated(terminated);
        // Restart regardless of policy: mark it as a failure the policy would restart.
        let st = self.rt.containers.get_mut(&c.name).expect("inserted above");
        st.last_terminated = match std::mem::replace(
            &mut st.current,
            Current::Waiting { reason: "ContainerCreating".into(), message: None },
        ) {
            Current::Terminated(t) => Some(t),
            _ => None,
        };
        st.restart_count += 1;
        let old = self.tracks.get_mut(&c.name).and_then(|t| t.id.take());
        if let Some(old) = old {
            if let Err(e) = k.runtime.remove_container(&old).await {
                tracing::warn!(container = %old, "removing replaced container: {e}");
            }
        }
        Ok(())
    }

    fn set_waiting(&mut self, name: &str, reason: &str, message: Option<String>) {
        let st = self.rt.containers.entry(name.to_string()).or_default();
        st.current = Current::Waiting { reason: reason.to_string(), message };
    }

    /// The image, pulled or found per the pull policy. `Err(wake)` when it is not available yet.
    async fn ensure_image(&mut self, pod: &Pod, c: &Container) -> Result<Image, Option<Instant>> {
        let k = self.kubelet.clone();
        let reference = c.image.clone().unwrap_or_default();
        let cref = container_ref(pod, &c.name);
        let track = self.tracks.entry(c.name.clone()).or_default();
        if let Some(failed_at) = track.pull_failed_at {
            let ready_at = track.pull_backoff.ready_at(failed_at);
            if Instant::now() < ready_at {
                let shown = self.rt.containers.get(&c.name).map(|s| s.current.clone());
                if let Some(Current::Waiting { reason, message }) = shown {
                    if reason == "ErrImagePull" {
                        if Instant::now() < failed_at + ERR_IMAGE_PULL_SHOWN {
                            return Err(Some(failed_at + ERR_IMAGE_PULL_SHOWN));
                        }
                        let msg = format!(
                            "Back-off pulling image \"{reference}\": ErrImagePull: {}",
                            message.unwrap_or_default()
                        );
                        self.set_waiting(&c.name, "ImagePullBackOff", Some(msg));
                        k.recorder.normal(&cref, "BackOff", &format!("Back-off pulling image \"{reference}\"")).await;
                        k.recorder.warning(&cref, "Failed", "Error: ImagePullBackOff").await;
                    }
                }
                return Err(Some(ready_at));
            }
        }
        let policy = pull_policy(c).to_string();
        if policy != "Always" {
            if let Some(image) = k.runtime.find_image(&reference) {
                k.recorder
                    .normal(&cref, "Pulled", &format!("Container image \"{reference}\" already present on machine"))
                    .await;
                return Ok(image);
            }
            if policy == "Never" {
                let msg = format!("Container image \"{reference}\" is not present with pull policy of Never");
                k.recorder.warning(&cref, "ErrImageNeverPull", &msg).await;
                self.set_waiting(&c.name, "ErrImageNeverPull", Some(msg));
                return Err(Some(Instant::now() + CONFIG_RETRY));
            }
        }
        k.recorder.normal(&cref, "Pulling", &format!("Pulling image \"{reference}\"")).await;
        let auth = self.pull_auth(pod, &reference).await;
        let started = StdInstant::now();
        match pull_detached(&k.runtime, &reference, auth).await {
            Ok(image) => {
                let took = go_duration(started.elapsed());
                k.recorder
                    .normal(
                        &cref,
                        "Pulled",
                        &format!(
                            "Successfully pulled image \"{reference}\" in {took} ({took} including waiting). Image size: {} bytes.",
                            image.size
                        ),
                    )
                    .await;
                let track = self.tracks.entry(c.name.clone()).or_default();
                track.pull_failed_at = None;
                track.pull_backoff.reset();
                Ok(image)
            }
            Err(msg) => {
                k.recorder.warning(&cref, "Failed", &format!("Failed to pull image \"{reference}\": {msg}")).await;
                k.recorder.warning(&cref, "Failed", "Error: ErrImagePull").await;
                self.set_waiting(&c.name, "ErrImagePull", Some(msg));
                let track = self.tracks.entry(c.name.clone()).or_default();
                let now = Instant::now();
                track.pull_failed_at = Some(now);
                track.pull_backoff.step();
                Err(Some(now + ERR_IMAGE_PULL_SHOWN))
            }
        }
    }

    async fn pull_auth(&self, pod: &Pod, image: &str) -> Option<RegistryAuth> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let secrets: Api<Secret> = Api::namespaced(self.kubelet.client.clone(), ns);
        for r in pod.spec.as_ref()?.image_pull_secrets.iter().flatten() {
            if let Ok(Some(secret)) = secrets.get_opt(&r.name).await {
                if let Some(auth) = auth_from_secret(&secret, image) {
                    return Some(auth);
                }
            }
        }
        None
    }

    async fn config_failed(&mut self, pod: &Pod, c: &Container, reason: &str, msg: String) -> Option<Instant> {
        self.kubelet
            .recorder
            .record(&container_ref(pod, &c.name), EventType::Warning, "Failed", &format!("Error: {msg}"))
            .await;
        self.set_waiting(&c.name, reason, Some(msg));
        let at = Instant::now() + CONFIG_RETRY;
        self.tracks.entry(c.name.clone()).or_default().retry_at = Some(at);
        Some(at)
    }

    async fn start_container(
        &mut self,
        pod: &Pod,
        c: &Container,
        image: Image,
        sources: &EnvSources,
    ) -> Option<Instant> {
        let k = self.kubelet.clone();
        let (ns, name) = Self::pod_names(pod);
        let pod_ip = self.rt.pod_ip.clone().unwrap_or_default();
        let sources = &EnvSources { services: self.service_env(pod).await, ..sources.clone() };
        let (env, vars) = match env::container_env(pod, c, &image.config, sources, &self.rt.host_ip, &pod_ip) {
            Ok(v) => v,
            Err(e) => return self.config_failed(pod, c, "CreateContainerConfigError", e.0).await,
        };
        let argv = env::container_argv(c, &image.config, &vars);
        if argv.is_empty() {
            return self.config_failed(pod, c, "CreateContainerError", "no command specified".into()).await;
        }
        let restart = self.rt.containers.get(&c.name).map_or(0, |s| s.restart_count);
        let log_path = crate::logs::container_log_path(&k.config.root, ns, name, &self.uid, &c.name, restart);
        if let Some(dir) = log_path.parent() {
            if let Err(e) = std::fs::create_dir_all(dir) {
                let msg = format!("creating log directory {}: {e}", dir.display());
                return self.config_failed(pod, c, "CreateContainerError", msg).await;
            }
        }
        // service plane wiring: /etc/resolv.conf as the pod's dnsPolicy says.
        let pod_dir = crate::logs::pod_log_dir(&k.config.root, ns, name, &self.uid);
        let resolv_conf = match crate::service::dns::resolv_conf_mount(pod, k.cluster_dns.get(), &pod_dir) {
            Ok(mount) => mount,
            Err(e) => return self.config_failed(pod, c, "CreateContainerError", e.to_string()).await,
        };
        let volume_mounts =
            match crate::volumes::container_mounts(c, self.volumes.as_ref().unwrap_or(&Default::default())) {
                Ok(m) => m,
                Err(e) => return self.config_failed(pod, c, "CreateContainerConfigError", e).await,
            };
        let termination_log = match crate::termination::prepare(c, &log_path) {
            Ok(mount) => mount,
            Err(e) => return self.config_failed(pod, c, "CreateContainerError", e.to_string()).await,
        };
        let security = crate::security::container_security(pod, c, &k.config.root.join("seccomp"))
            .and_then(|sc| crate::security::verify_run_as_non_root(pod, c, image.config.user.as_deref()).map(|()| sc));
        let security = match security {
            Ok(sc) => sc,
            Err(e) => return self.config_failed(pod, c, "CreateContainerConfigError", e).await,
        };
        let spec = ContainerSpec {
            name: c.name.clone(),
            argv,
            env,
            working_dir: c.working_dir.clone().filter(|w| !w.is_empty()).or(image.config.working_dir.clone()),
            log_path: log_path.clone(),
            resources: container_resources(c),
            image: Some(image.clone()),
            mounts: std::iter::once(resolv_conf).chain(volume_mounts).chain(termination_log).collect(),
            stdio: skiff_runtime::StdioSpec {
                stdin: c.stdin.unwrap_or(false),
                stdin_once: c.stdin_once.unwrap_or(false),
                tty: c.tty.unwrap_or(false),
            },
            security,
            ..Default::default()
        };
        k.logs.started(&log_path);
        let id = match k.runtime.create_container(&self.uid, &spec).await {
            Ok(id) => id,
            Err(e) => {
                k.logs.exited(&log_path);
                return self.config_failed(pod, c, "CreateContainerError", e.to_string()).await;
            }
        };
        let cref = container_ref(pod, &c.name);
        k.recorder.normal(&cref, "Created", &format!("Created container: {}", c.name)).await;
        {
            let st = self.rt.containers.entry(c.name.clone()).or_default();
            st.container_id = Some(format!("skiff://{id}"));
            st.image_id = Some(image.repo_digest.clone());
            let track = self.tracks.entry(c.name.clone()).or_default();
            track.id = Some(id.clone());
            track.log_path = Some(log_path.clone());
            track.image = c.image.clone();
            track.retry_at = None;
        }
        if let Err(e) = k.runtime.start_container(&id).await {
            k.logs.exited(&log_path);
            let msg = e.to_string();
            k.recorder.warning(&cref, "Failed", &format!("Error: {msg}")).await;
            let now = generate::truncate(Timestamp::now());
            let st = self.rt.containers.entry(c.name.clone()).or_default();
            st.current = Current::Terminated(Terminated {
                exit_code: 128,
                signal: None,
                reason: "StartError".into(),
                message: Some(msg),
                started_at: Some(now),
                finished_at: now,
                container_id: Some(format!("skiff://{id}")),
            });
            self.tracks.entry(c.name.clone()).or_default().exited_at = Some(Instant::now());
            return Some(Instant::now());
        }
        k.recorder.normal(&cref, "Started", &format!("Started container {}", c.name)).await;
        // The sync waits for the postStart hook, so the container shows as created until then.
        if let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
            let target =
                crate::lifecycle::HookTarget { runtime: Some(&k.runtime), id: &id, pod, container: c, pod_ip: &pod_ip };
            if let Err(message) = crate::lifecycle::run(&target, hook).await {
                return self.post_start_failed(pod, c, &id, &log_path, message).await;
            }
        }
        if super::long_running(pod, &c.name).is_some() {
            self.start_probes(pod, c, &id, false).await;
        }
        let current = match k.runtime.container(&id).map(|i| i.state) {
            Ok(ContainerState::Running { started_at, .. }) => {
                Current::Running { started_at: super::timestamp(started_at) }
            }
            // Already gone (a quick `true`): the waiter reports the exit; until then it ran.
            Ok(ContainerState::Exited(status)) => Current::Running {
                started_at: terminated_from_exit(&status, &id)
                    .started_at
                    .unwrap_or_else(|| generate::truncate(Timestamp::now())),
            },
            _ => Current::Running { started_at: generate::truncate(Timestamp::now()) },
        };
        self.rt.containers.entry(c.name.clone()).or_default().current = current;
        self.spawn_waiter(&c.name, &id, log_path);
        None
    }
}

impl PodWorker {
    /// A failed postStart hook (Kubernetes `startContainer` step 4): a `FailedPostStartHook`
    /// event without the hook's output (it may hold secrets), the container killed (its preStop
    /// runs), then `PostStartHookError` with that output until the restart policy restarts it.
    async fn post_start_failed(
        &mut self,
        pod: &Pod,
        c: &Container,
        id: &str,
        log_path: &std::path::Path,
        message: String,
    ) -> Option<Instant> {
        let k = self.kubelet.clone();
        tracing::warn!(container = %id, "postStart hook failed: {message}");
        k.recorder.warning(&container_ref(pod, &c.name), "FailedPostStartHook", "PostStartHook failed").await;
        let pod_ip = self.rt.pod_ip.clone().unwrap_or_default();
        let grace = Duration::from_secs(pod_grace(pod));
        let stopped =
            crate::lifecycle::kill_container(&k, pod, &c.name, id, &pod_ip, Some("FailedPostStartHook".into()), grace)
                .await;
        k.logs.exited(log_path);
        let terminated = match stopped {
            Ok(status) => terminated_from_exit(&status, id),
            Err(e) => {
                tracing::warn!(container = %id, "stopping after a failed postStart hook: {e}");
                let now = generate::truncate(Timestamp::now());
                Terminated {
                    exit_code: 137,
                    signal: None,
                    reason: "Error".into(),
                    message: None,
                    started_at: Some(now),
                    finished_at: now,
                    container_id: Some(format!("skiff://{id}")),
                }
            }
        };
        let terminated = self.with_message(&c.name, terminated);
        self.tracks.entry(c.name.clone()).or_default().exited_at = Some(Instant::now());
        let init = pod
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .is_some_and(|i| i.iter().any(|i| i.name == c.name));
        let restarts = if generate::is_sidecar(c) {
            true
        } else if init {
            will_restart_init(pod, terminated.exit_code)
        } else {
            will_restart(pod, terminated.exit_code)
        };
        let st = self.rt.containers.entry(c.name.clone()).or_default();
        if restarts {
            st.last_terminated = Some(terminated);
            st.current = Current::Waiting { reason: POST_START_HOOK_ERROR.into(), message: Some(message) };
        } else {
            st.current = Current::Terminated(terminated);
        }
        Some(Instant::now())
    }

    /// The service variables for the pod's containers, from the services of its namespace and
    /// `default/kubernetes`. A failed list leaves them out (Kubernetes fails the start while its
    /// service informer has not synced; here the in-process API answers at once).
    async fn service_env(&self, pod: &Pod) -> Vec<(String, String)> {
        use k8s_openapi::api::core::v1::Service;
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let links = pod.spec.as_ref().and_then(|s| s.enable_service_links).unwrap_or(true);
        let client = self.kubelet.client.clone();
        let mut services = Vec::new();
        if links {
            match Api::<Service>::namespaced(client.clone(), ns).list(&Default::default()).await {
                Ok((items, _)) => services.extend(items),
                Err(e) => tracing::warn!(namespace = %ns, "listing services for the environment: {e}"),
            }
        }
        if let Ok(Some(master)) = Api::<Service>::namespaced(client, "default").get_opt("kubernetes").await {
            services.push(master);
        }
        env::service_env(ns, &services, links)
    }
}

/// The pod's `terminationGracePeriodSeconds` (default 30), as a kill without an override uses.
pub(crate) fn pod_grace(pod: &Pod) -> u64 {
    pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds).unwrap_or(30).max(0) as u64
}

/// Pulls in a task of its own, so a pod deleted mid-pull is not held up by it: the worker drops
/// its wait while the pull finishes in the background (and the image is there for next time).
async fn pull_detached(
    runtime: &std::sync::Arc<skiff_runtime::Runtime>,
    reference: &str,
    auth: Option<RegistryAuth>,
) -> Result<Image, String> {
    let (runtime, reference) = (runtime.clone(), reference.to_string());
    tokio::spawn(async move { runtime.pull_image(&reference, auth.as_ref()).await.map_err(|e| e.to_string()) })
        .await
        .unwrap_or_else(|e| Err(format!("image pull task failed: {e}")))
}

fn track_retry(track: Option<&super::ContainerTrack>) -> Option<Instant> {
    track.and_then(|t| t.retry_at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn container(v: serde_json::Value) -> Container {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn pull_policy_defaults_like_the_api_server() {
        let cases = [
            (json!({"name": "c", "image": "busybox"}), "Always"),
            (json!({"name": "c", "image": "busybox:latest"}), "Always"),
            (json!({"name": "c", "image": "busybox:1"}), "IfNotPresent"),
            (json!({"name": "c", "image": "127.0.0.1:5000/busybox"}), "Always"),
            (json!({"name": "c", "image": "127.0.0.1:5000/busybox:1"}), "IfNotPresent"),
            (json!({"name": "c", "image": "busybox@sha256:abc"}), "IfNotPresent"),
            (json!({"name": "c", "image": "busybox", "imagePullPolicy": "Never"}), "Never"),
        ];
        for (c, want) in cases {
            assert_eq!(pull_policy(&container(c.clone())), want, "{c}");
        }
    }

    #[test]
    fn resources_convert_limits_and_requests() {
        let c = container(
            json!({"name": "c", "resources": {"limits": {"memory": "128Mi", "cpu": "1.5"}, "requests": {"cpu": "500m"}}}),
        );
        assert_eq!(
            container_resources(&c),
            Resources {
                memory_limit_bytes: Some(134_217_728),
                cpu_limit_millis: Some(1500),
                cpu_request_millis: Some(500)
            }
        );
        assert_eq!(container_resources(&container(json!({"name": "c"}))), Resources::default());
    }

    #[test]
    fn pull_secrets_match_the_image_registry() {
        use base64::Engine;
        let config = json!({"auths": {"127.0.0.1:5000": {"username": "u", "password": "p"},
                                       "https://index.docker.io/v1/": {"auth": base64::engine::general_purpose::STANDARD.encode("d:q")}}});
        let secret: Secret =
            serde_json::from_value(json!({"metadata": {"name": "s"}, "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": base64::engine::general_purpose::STANDARD.encode(config.to_string())}}))
            .unwrap();
        assert_eq!(
            auth_from_secret(&secret, "127.0.0.1:5000/app:1"),
            Some(RegistryAuth { username: "u".into(), password: "p".into() })
        );
        assert_eq!(
            auth_from_secret(&secret, "busybox:1"),
            Some(RegistryAuth { username: "d".into(), password: "q".into() })
        );
        assert_eq!(auth_from_secret(&secret, "quay.io/x/y"), None);
    }
}
