//! A container's environment and argv, resolved as the kubelet does: `env` values may use
//! `$(VAR)` of earlier variables; `command` replaces the image's Entrypoint and drops its Cmd;
//! `args` replace Cmd; both expand `$(VAR)` against the container's environment.
//!
//! ConfigMaps and Secrets are fetched by the caller ([`referenced_objects`] names them) and
//! passed in, so resolution stays pure.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use skiff_api::ParsedQuantity;
use skiff_runtime::ImageConfig;

/// Kubernetes' `$(VAR)` expansion: `$$` is a literal `$`, an undefined `$(VAR)` stays as written.
pub fn expand(input: &str, vars: &dyn Fn(&str) -> Option<String>) -> String {
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut i = 0;
    let mut plain_start = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && i + 1 < bytes.len() {
            out.push_str(&input[plain_start..i]);
            match bytes[i + 1] {
                b'$' => {
                    out.push('$');
                    i += 2;
                }
                b'(' => match input[i + 2..].find(')') {
                    Some(end) => {
                        let name = &input[i + 2..i + 2 + end];
                        match vars(name) {
                            Some(v) => out.push_str(&v),
                            None => {
                                out.push_str("$(");
                                out.push_str(name);
                                out.push(')');
                            }
                        }
                        i += end + 3;
                    }
                    None => {
                        out.push_str("$(");
                        i += 2;
                    }
                },
                _ => {
                    out.push('$');
                    i += 1;
                }
            }
            plain_start = i;
        } else {
            i += 1;
        }
    }
    out.push_str(&input[plain_start..]);
    out
}

/// Why a container's configuration cannot be built (`CreateContainerConfigError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The ConfigMaps and Secrets of the pod's namespace that its env refers to, by name, and the
/// service variables of its namespace ([`service_env`]).
#[derive(Debug, Clone, Default)]
pub struct EnvSources {
    pub config_maps: HashMap<String, ConfigMap>,
    pub secrets: HashMap<String, Secret>,
    pub services: Vec<(String, String)>,
}

/// Kubernetes `makeEnvVariableName`: `my-svc` → `MY_SVC`.
fn env_name(name: &str) -> String {
    name.replace('-', "_").to_uppercase()
}

/// The service variables of a pod in `namespace` (Kubernetes `getServiceEnvVarMap` +
/// `envvars.FromServices`), given the services of that namespace and of `default`. With
/// `enableServiceLinks` every service of the namespace with a cluster IP gets
/// `<NAME>_SERVICE_HOST`, `<NAME>_SERVICE_PORT`, `<NAME>_SERVICE_PORT_<PORTNAME>` and Docker's
/// link variables (`<NAME>_PORT`, `<NAME>_PORT_<port>_<PROTO>{,_PROTO,_PORT,_ADDR}`); the API's
/// own `default/kubernetes` is always there (a `kubernetes` service of the namespace wins).
/// Sorted by service name, so a container's env does not change between restarts.
pub fn service_env(
    namespace: &str,
    services: &[k8s_openapi::api::core::v1::Service],
    enable_service_links: bool,
) -> Vec<(String, String)> {
    let mut chosen: BTreeMap<String, &k8s_openapi::api::core::v1::Service> = BTreeMap::new();
    for svc in services {
        let Some(spec) = svc.spec.as_ref() else { continue };
        let ip = spec.cluster_ip.as_deref().unwrap_or_default();
        if ip.is_empty() || ip == "None" || spec.ports.as_ref().is_none_or(|p| p.is_empty()) {
            continue;
        }
        let name = svc.metadata.name.clone().unwrap_or_default();
        let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
        if ns == "default" && name == "kubernetes" {
            chosen.entry(name).or_insert(svc);
        } else if ns == namespace && enable_service_links {
            chosen.insert(name, svc);
        }
    }
    let mut out = Vec::new();
    for (name, svc) in chosen {
        let spec = svc.spec.as_ref().expect("filtered above");
        let ip = spec.cluster_ip.clone().unwrap_or_default();
        let ports = spec.ports.as_deref().unwrap_or_default();
        let prefix = env_name(&name);
        out.push((format!("{prefix}_SERVICE_HOST"), ip.clone()));
        out.push((format!("{prefix}_SERVICE_PORT"), ports[0].port.to_string()));
        for p in ports {
            if let Some(port_name) = p.name.as_deref().filter(|n| !n.is_empty()) {
                out.push((format!("{prefix}_SERVICE_PORT_{}", env_name(port_name)), p.port.to_string()));
            }
        }
        let host = |port: i32| if ip.contains(':') { format!("[{ip}]:{port}") } else { format!("{ip}:{port}") };
        for (i, p) in ports.iter().enumerate() {
            let proto = p.protocol.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "TCP".into());
            let lower = proto.to_lowercase();
            let url = format!("{lower}://{}", host(p.port));
            if i == 0 {
                // Docker special-cases the first port.
                out.push((format!("{prefix}_PORT"), url.clone()));
            }
            let port_prefix = format!("{prefix}_PORT_{}_{}", p.port, proto.to_uppercase());
            out.push((port_prefix.clone(), url));
            out.push((format!("{port_prefix}_PROTO"), lower));
            out.push((format!("{port_prefix}_PORT"), p.port.to_string()));
            out.push((format!("{port_prefix}_ADDR"), ip.clone()));
        }
    }
    out
}

/// Names of the ConfigMaps and Secrets a container's env and envFrom refer to.
pub fn referenced_objects(container: &Container) -> (Vec<String>, Vec<String>) {
    let (mut cms, mut secrets) = (Vec::new(), Vec::new());
    for e in container.env.iter().flatten() {
        if let Some(from) = &e.value_from {
            if let Some(r) = &from.config_map_key_ref {
                cms.push(r.name.clone());
            }
            if let Some(r) = &from.secret_key_ref {
                secrets.push(r.name.clone());
            }
        }
    }
    for f in container.env_from.iter().flatten() {
        if let Some(r) = &f.config_map_ref {
            cms.push(r.name.clone());
        }
        if let Some(r) = &f.secret_ref {
            secrets.push(r.name.clone());
        }
    }
    cms.sort();
    cms.dedup();
    secrets.sort();
    secrets.dedup();
    (cms, secrets)
}

fn config_map_value(cm: &ConfigMap, key: &str) -> Option<String> {
    cm.data.as_ref().and_then(|d| d.get(key).cloned()).or_else(|| {
        cm.binary_data.as_ref().and_then(|d| d.get(key)).map(|b| String::from_utf8_lossy(&b.0).into_owned())
    })
}

fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .or_else(|| secret.string_data.as_ref().and_then(|d| d.get(key).cloned()))
}

/// `metadata.labels['app']` → (`metadata.labels`, `app`).
fn subscript(path: &str) -> Option<(&str, &str)> {
    let (head, rest) = path.split_once("['")?;
    Some((head, rest.strip_suffix("']")?))
}

pub(crate) fn field_ref(pod: &Pod, path: &str, host_ip: &str, pod_ip: &str) -> Result<String, ConfigError> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let value = match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()).unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => host_ip.to_string(),
        "status.podIP" | "status.podIPs" => pod_ip.to_string(),
        other => match subscript(other) {
            Some(("metadata.labels", key)) => {
                meta.labels.as_ref().and_then(|l| l.get(key).cloned()).unwrap_or_default()
            }
            Some(("metadata.annotations", key)) => {
                meta.annotations.as_ref().and_then(|l| l.get(key).cloned()).unwrap_or_default()
            }
            _ => return Err(ConfigError(format!("unsupported fieldRef path: {other}"))),
        },
    };
    Ok(value)
}

pub(crate) fn resource_field_ref(
    container: &Container,
    r: &k8s_openapi::api::core::v1::ResourceFieldSelector,
) -> Result<String, ConfigError> {
    let res = container.resources.as_ref();
    let (map, name) = match r.resource.split_once('.') {
        Some(("limits", n)) => (res.and_then(|r| r.limits.as_ref()), n),
        Some(("requests", n)) => (res.and_then(|r| r.requests.as_ref()), n),
        _ => return Err(ConfigError(format!("unsupported resourceFieldRef: {}", r.resource))),
    };
    let divisor = r.divisor.as_ref().and_then(|d| ParsedQuantity::parse(&d.0).ok());
    let Some(q) = map.and_then(|m| m.get(name)).and_then(|q| ParsedQuantity::parse(&q.0).ok()) else {
        // Unset limits read as the node's capacity in Kubernetes; unset requests as 0. The node
        // value is not known here, so both read as 0.
        return Ok("0".to_string());
    };
    // Kubernetes rounds the quotient up: cpu 500m / divisor 1 → "1".
    let (num, den) = match divisor {
        Some(d) => (q.milli_value(), d.milli_value().max(1)),
        None if name == "cpu" => (q.milli_value(), 1000),
        None => (q.value(), 1),
    };
    Ok(((num + den - 1).div_euclid(den)).to_string())
}

/// The container's env as `KEY=value`: the image's, overridden and extended by the container's
/// (envFrom first, then env) and the service variables (which the container's own override),
/// and a map of the variables `$(VAR)` in command and args may use.
pub fn container_env(
    pod: &Pod,
    container: &Container,
    image: &ImageConfig,
    sources: &EnvSources,
    host_ip: &str,
    pod_ip: &str,
) -> Result<(Vec<String>, HashMap<String, String>), ConfigError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut own: Vec<(String, String)> = Vec::new();
    let set = |own: &mut Vec<(String, String)>, k: String, v: String| match own.iter_mut().find(|(n, _)| *n == k) {
        Some(slot) => slot.1 = v,
        None => own.push((k, v)),
    };
    for f in container.env_from.iter().flatten() {
        let prefix = f.prefix.clone().unwrap_or_default();
        let entries: BTreeMap<String, String> = if let Some(r) = &f.config_map_ref {
            match sources.config_maps.get(&r.name) {
                Some(cm) => {
                    let mut all: BTreeMap<String, String> = cm.data.clone().unwrap_or_default();
                    for (k, v) in cm.binary_data.iter().flatten() {
                        all.insert(k.clone(), String::from_utf8_lossy(&v.0).into_owned());
                    }
                    all
                }
                None if r.optional == Some(true) => BTreeMap::new(),
                None => return Err(ConfigError(format!("configmap \"{}\" not found", r.name))),
            }
        } else if let Some(r) = &f.secret_ref {
            match sources.secrets.get(&r.name) {
                Some(s) => s
                    .data
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
                    .collect(),
                None if r.optional == Some(true) => BTreeMap::new(),
                None => return Err(ConfigError(format!("secret \"{}\" not found", r.name))),
            }
        } else {
            BTreeMap::new()
        };
        for (k, v) in entries {
            set(&mut own, format!("{prefix}{k}"), v);
        }
    }
    for e in container.env.iter().flatten() {
        let value = if let Some(from) = &e.value_from {
            if let Some(r) = &from.field_ref {
                field_ref(pod, &r.field_path, host_ip, pod_ip)?
            } else if let Some(r) = &from.resource_field_ref {
                resource_field_ref(container, r)?
            } else if let Some(r) = &from.config_map_key_ref {
                match sources.config_maps.get(&r.name) {
                    Some(cm) => match config_map_value(cm, &r.key) {
                        Some(v) => v,
                        None if r.optional == Some(true) => continue,
                        None => {
                            return Err(ConfigError(format!(
                                "couldn't find key {} in ConfigMap {ns}/{}",
                                r.key, r.name
                            )));
                        }
                    },
                    None if r.optional == Some(true) => continue,
                    None => return Err(ConfigError(format!("configmap \"{}\" not found", r.name))),
                }
            } else if let Some(r) = &from.secret_key_ref {
                match sources.secrets.get(&r.name) {
                    Some(s) => match secret_value(s, &r.key) {
                        Some(v) => v,
                        None if r.optional == Some(true) => continue,
                        None => {
                            return Err(ConfigError(format!("couldn't find key {} in Secret {ns}/{}", r.key, r.name)));
                        }
                    },
                    None if r.optional == Some(true) => continue,
                    None => return Err(ConfigError(format!("secret \"{}\" not found", r.name))),
                }
            } else {
                continue;
            }
        } else {
            // Service variables may be referred to too; the container's own come first.
            let known: HashMap<String, String> = sources.services.iter().chain(own.iter()).cloned().collect();
            expand(e.value.as_deref().unwrap_or_default(), &|n| known.get(n).cloned())
        };
        set(&mut own, e.name.clone(), value);
    }
    let mut env: Vec<(String, String)> = image
        .env
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.clone(), String::new()),
        })
        .collect();
    for (k, v) in &own {
        set(&mut env, k.clone(), v.clone());
    }
    for (k, v) in &sources.services {
        if !own.iter().any(|(n, _)| n == k) {
            set(&mut env, k.clone(), v.clone());
        }
    }
    let vars = sources.services.iter().cloned().chain(own).collect();
    Ok((env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(), vars))
}

/// The process argv of a container (Kubernetes' command/args over the image's Entrypoint/Cmd).
pub fn container_argv(container: &Container, image: &ImageConfig, vars: &HashMap<String, String>) -> Vec<String> {
    let lookup = |n: &str| vars.get(n).cloned();
    let exp = |list: &[String]| list.iter().map(|s| expand(s, &lookup)).collect::<Vec<_>>();
    let command = container.command.as_deref().unwrap_or_default();
    let args = container.args.as_deref().unwrap_or_default();
    let mut argv = if command.is_empty() { image.entrypoint.clone() } else { exp(command) };
    if !args.is_empty() {
        argv.extend(exp(args));
    } else if command.is_empty() {
        argv.extend(image.cmd.iter().cloned());
    }
    argv
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn container(v: serde_json::Value) -> Container {
        serde_json::from_value(v).unwrap()
    }

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["serve".into(), "--port=80".into()],
            env: vec!["PATH=/usr/bin:/bin".into(), "MODE=image".into()],
            working_dir: None,
            user: None,
        }
    }

    fn pod() -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "default", "uid": "u1",
            "labels": {"app": "web"}}, "spec": {"nodeName": "n1", "containers": []}}))
        .unwrap()
    }

    #[test]
    fn argv_follows_command_and_args_over_entrypoint_and_cmd() {
        let vars = HashMap::new();
        let cases = [
            (json!({"name": "c"}), vec!["/entry", "serve", "--port=80"]),
            (json!({"name": "c", "args": ["x"]}), vec!["/entry", "x"]),
            (json!({"name": "c", "command": ["sh", "-c"]}), vec!["sh", "-c"]),
            (json!({"name": "c", "command": ["sh"], "args": ["-c", "echo hi"]}), vec!["sh", "-c", "echo hi"]),
        ];
        for (c, want) in cases {
            assert_eq!(container_argv(&container(c.clone()), &image(), &vars), want, "{c}");
        }
    }

    #[test]
    fn dollar_paren_expands_defined_variables_only() {
        let vars: HashMap<String, String> = [("NAME".to_string(), "world".to_string())].into();
        let look = |n: &str| vars.get(n).cloned();
        let cases = [
            ("hello $(NAME)", "hello world"),
            ("$(MISSING) stays", "$(MISSING) stays"),
            ("escaped $$(NAME)", "escaped $(NAME)"),
            ("lone $ sign", "lone $ sign"),
            ("unclosed $(NAME", "unclosed $(NAME"),
            ("end$", "end$"),
            ("$(NAME)$(NAME)", "worldworld"),
            ("ünïcödé $(NAME)", "ünïcödé world"),
        ];
        for (input, want) in cases {
            assert_eq!(expand(input, &look), want, "{input}");
        }
    }

    #[test]
    fn env_values_expand_earlier_variables_and_override_the_image() {
        let c = container(json!({"name": "c", "command": ["echo", "$(GREETING)"], "env": [
            {"name": "WHO", "value": "skiff"},
            {"name": "GREETING", "value": "hi $(WHO) from $(MODE)"},
            {"name": "MODE", "value": "pod"},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
        ]}));
        let (env, vars) = container_env(&pod(), &c, &image(), &EnvSources::default(), "10.0.0.5", "").unwrap();
        assert_eq!(
            env,
            ["PATH=/usr/bin:/bin", "MODE=pod", "WHO=skiff", "GREETING=hi skiff from $(MODE)", "POD=web", "APP=web",]
        );
        assert_eq!(container_argv(&c, &image(), &vars), ["echo", "hi skiff from $(MODE)"]);
    }

    #[test]
    fn config_map_and_secret_references_resolve_or_fail_like_kubernetes() {
        let mut sources = EnvSources::default();
        sources.config_maps.insert(
            "cfg".into(),
            serde_json::from_value(json!({"metadata": {"name": "cfg"}, "data": {"level": "debug", "x": "1"}})).unwrap(),
        );
        sources.secrets.insert(
            "s".into(),
            serde_json::from_value(json!({"metadata": {"name": "s"}, "data": {"password": "aHVudGVyMg=="}})).unwrap(),
        );
        let c =
            container(json!({"name": "c", "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}], "env": [
                {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "level"}}},
                {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "s", "key": "password"}}},
                {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": true}}},
            ]}));
        let (env, _) = container_env(&pod(), &c, &ImageConfig::default(), &sources, "", "").unwrap();
        assert_eq!(env, ["CFG_level=debug", "CFG_x=1", "LEVEL=debug", "PW=hunter2"]);
        let missing_key = container(
            json!({"name": "c", "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "nope"}}}]}),
        );
        assert_eq!(
            container_env(&pod(), &missing_key, &ImageConfig::default(), &sources, "", "").unwrap_err().0,
            "couldn't find key nope in ConfigMap default/cfg"
        );
        let missing = container(json!({"name": "c", "envFrom": [{"secretRef": {"name": "gone"}}]}));
        assert_eq!(
            container_env(&pod(), &missing, &ImageConfig::default(), &sources, "", "").unwrap_err().0,
            "secret \"gone\" not found"
        );
        assert_eq!(referenced_objects(&c), (vec!["cfg".to_string()], vec!["nope".to_string(), "s".to_string()]));
    }

    fn service(ns: &str, name: &str, ip: &str, ports: serde_json::Value) -> k8s_openapi::api::core::v1::Service {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "ports": ports}}))
        .unwrap()
    }

    #[test]
    fn services_of_the_namespace_become_variables_as_kubernetes_and_docker_links_name_them() {
        let services = [
            service("default", "kubernetes", "10.96.0.1", json!([{"name": "https", "port": 443}])),
            service(
                "shop",
                "web-front",
                "10.96.0.20",
                json!([{"port": 80}, {"name": "metrics", "port": 9090, "protocol": "TCP"}]),
            ),
            service("shop", "headless", "None", json!([{"port": 80}])),
            service("other", "db", "10.96.0.30", json!([{"port": 5432}])),
        ];
        let env = service_env("shop", &services, true);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("WEB_FRONT_SERVICE_HOST"), Some("10.96.0.20"));
        assert_eq!(get("WEB_FRONT_SERVICE_PORT"), Some("80"));
        assert_eq!(get("WEB_FRONT_SERVICE_PORT_METRICS"), Some("9090"));
        assert_eq!(get("WEB_FRONT_PORT"), Some("tcp://10.96.0.20:80"));
        assert_eq!(get("WEB_FRONT_PORT_80_TCP"), Some("tcp://10.96.0.20:80"));
        assert_eq!(get("WEB_FRONT_PORT_9090_TCP_PROTO"), Some("tcp"));
        assert_eq!(get("WEB_FRONT_PORT_9090_TCP_PORT"), Some("9090"));
        assert_eq!(get("WEB_FRONT_PORT_9090_TCP_ADDR"), Some("10.96.0.20"));
        assert_eq!(get("KUBERNETES_SERVICE_HOST"), Some("10.96.0.1"));
        assert_eq!(get("KUBERNETES_SERVICE_PORT_HTTPS"), Some("443"));
        assert_eq!(get("KUBERNETES_PORT_443_TCP"), Some("tcp://10.96.0.1:443"));
        assert!(get("HEADLESS_SERVICE_HOST").is_none() && get("DB_SERVICE_HOST").is_none());
        let without_links = service_env("shop", &services, false);
        assert!(without_links.iter().all(|(k, _)| k.starts_with("KUBERNETES_")), "{without_links:?}");
        assert_eq!(without_links.len(), 8);
    }

    #[test]
    fn the_containers_own_variables_win_over_service_variables_and_may_use_them() {
        let sources = EnvSources {
            services: vec![("WEB_SERVICE_HOST".into(), "10.96.0.20".into()), ("WEB_SERVICE_PORT".into(), "80".into())],
            ..Default::default()
        };
        let c = container(json!({"name": "c", "command": ["wget", "$(WEB_SERVICE_HOST)"], "env": [
            {"name": "WEB_SERVICE_PORT", "value": "8080"},
            {"name": "URL", "value": "http://$(WEB_SERVICE_HOST):$(WEB_SERVICE_PORT)"},
        ]}));
        let (env, vars) = container_env(&pod(), &c, &ImageConfig::default(), &sources, "", "").unwrap();
        assert_eq!(env, ["WEB_SERVICE_PORT=8080", "URL=http://10.96.0.20:8080", "WEB_SERVICE_HOST=10.96.0.20"]);
        assert_eq!(container_argv(&c, &ImageConfig::default(), &vars), ["wget", "10.96.0.20"]);
    }

    #[test]
    fn resource_field_refs_round_up_by_divisor() {
        let c = container(json!({"name": "c", "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}}, "env": [
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
        ]}));
        let (env, _) = container_env(&pod(), &c, &ImageConfig::default(), &EnvSources::default(), "", "").unwrap();
        assert_eq!(env, ["CPU=1", "MEM=128"]);
    }
}
