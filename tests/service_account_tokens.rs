//! Service account tokens end to end, with the real kubectl against a real `skiff server`:
//! `kubectl create token`, bearer authentication with a token, the ServiceAccount admission
//! plugin's `kube-api-access-*` volume with what the kubelet writes into it, ConfigMap
//! `kube-root-ca.crt`, and a pod calling the API through Service `kubernetes` from its own network
//! namespace with the credentials it was given.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use base64::Engine as _;
use common::{TestImages, TestServer};
use serde_json::Value;

const RUN_TIMEOUT: Duration = Duration::from_secs(120);
const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The server's CA, as its kubeconfig carries it.
fn server_ca(server: &TestServer) -> String {
    let data = server.kubeconfig_field("certificate-authority-data");
    text(&base64::engine::general_purpose::STANDARD.decode(data).unwrap())
}

/// A kubeconfig that trusts the server but holds no credentials: `--token` supplies them.
fn anonymous_kubeconfig(server: &TestServer) -> PathBuf {
    let path = server.dir().join("anonymous-kubeconfig.yaml");
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: skiff\n  cluster:\n    server: https://127.0.0.1:{}\n    \
         certificate-authority-data: {}\nusers:\n- name: nobody\n  user: {{}}\ncontexts:\n- name: skiff\n  context:\n    \
         cluster: skiff\n    user: nobody\n    namespace: default\ncurrent-context: skiff\n",
        server.port(),
        server.kubeconfig_field("certificate-authority-data"),
    );
    std::fs::write(&path, kubeconfig).unwrap();
    path
}

fn kubectl_with_token(server: &TestServer, kubeconfig: &Path, token: &str, args: &[&str]) -> Output {
    Command::new("/usr/bin/kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(server.dir().join("anonymous-cache"))
        .arg(format!("--token={token}"))
        .args(args)
        .env("HOME", server.dir().join("home"))
        .env_remove("KUBECONFIG")
        .output()
        .unwrap()
}

/// The claims of a JWT (not verified: the server does that).
fn claims(token: &str) -> Value {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWS in compact form: {token}");
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(parts[1]).unwrap();
    serde_json::from_slice(&payload).unwrap()
}

/// The token with one character of its signature changed.
fn tampered(token: &str) -> String {
    let mut bytes = token.as_bytes().to_vec();
    let i = bytes.len() - 5;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

fn create_token(server: &TestServer, account: &str) -> String {
    server.wait_for(&format!("service account {account}"), RUN_TIMEOUT, || {
        server.kubectl(&["get", "serviceaccount", account]).status.success().then_some(())
    });
    server.kubectl_ok(&["create", "token", account]).trim().to_string()
}

/// `curl` of `url` with a bearer token from the given network namespace (or the test's own):
/// (HTTP status, body).
fn curl(netns_pid: Option<u32>, ca: &Path, token: &str, url: &str, resolve: Option<&str>) -> (String, String) {
    let mut cmd = match netns_pid {
        Some(pid) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/proc/{pid}/ns/net")).arg("curl");
            c
        }
        None => Command::new("curl"),
    };
    cmd.args(["-sS", "--max-time", "10", "--cacert"]).arg(ca);
    cmd.args(["-H", &format!("Authorization: Bearer {token}"), "-w", "\n%{http_code}"]);
    if let Some(resolve) = resolve {
        cmd.args(["--resolve", resolve]);
    }
    let out = cmd.arg(url).output().unwrap();
    let stdout = text(&out.stdout);
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", stdout.as_str()));
    (code.trim().to_string(), format!("{body}{}", text(&out.stderr)))
}

#[test]
fn kubectl_create_token_gives_a_bound_token_the_api_accepts_until_it_is_tampered_with_or_revoked() {
    let server = TestServer::start();
    let token = create_token(&server, "default");
    let c = claims(&token);
    assert_eq!(c["sub"], "system:serviceaccount:default:default");
    assert_eq!(c["iss"], "https://kubernetes.default.svc.cluster.local");
    assert_eq!(c["aud"], serde_json::json!(["https://kubernetes.default.svc.cluster.local"]));
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 3600);
    assert_eq!(c["nbf"], c["iat"]);
    let sa = server.get_json("serviceaccount", "default");
    assert_eq!(c["kubernetes.io"]["namespace"], "default");
    assert_eq!(c["kubernetes.io"]["serviceaccount"]["name"], "default");
    assert_eq!(c["kubernetes.io"]["serviceaccount"]["uid"], sa["metadata"]["uid"]);

    let kubeconfig = anonymous_kubeconfig(&server);
    let out = kubectl_with_token(&server, &kubeconfig, &token, &["get", "pods"]);
    assert!(out.status.success(), "get pods with the token: {}", text(&out.stderr));
    let out = kubectl_with_token(&server, &kubeconfig, &token, &["create", "configmap", "made-by-sa"]);
    assert!(out.status.success(), "no RBAC: a service account may write: {}", text(&out.stderr));

    let out = kubectl_with_token(&server, &kubeconfig, &tampered(&token), &["get", "pods"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("(Unauthorized)"), "{}", text(&out.stderr));
    let ca = server.dir().join("ca.crt");
    std::fs::write(&ca, server_ca(&server)).unwrap();
    let url = format!("https://127.0.0.1:{}/api/v1/namespaces/default/pods", server.port());
    let (code, body) = curl(None, &ca, &tampered(&token), &url, None);
    assert_eq!(code, "401", "{body}");
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status["kind"].as_str(), status["reason"].as_str()), (Some("Status"), Some("Unauthorized")));

    // A longer lifetime, an audience the API is not, and refusals worded as Kubernetes words them.
    let long = server.kubectl_ok(&["create", "token", "default", "--duration=2h"]);
    let c = claims(long.trim());
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 7200);
    let vault = server.kubectl_ok(&["create", "token", "default", "--audience=vault"]);
    assert_eq!(claims(vault.trim())["aud"], serde_json::json!(["vault"]));
    let out = kubectl_with_token(&server, &kubeconfig, vault.trim(), &["get", "pods"]);
    assert!(!out.status.success(), "a token for another audience does not authenticate here");
    let out = server.kubectl(&["create", "token", "default", "--duration=5m"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(
            "TokenRequest.authentication.k8s.io \"default\" is invalid: spec.expirationSeconds: Invalid value: 300: \
             may not specify a duration less than 10 minutes"
        ),
        "{}",
        text(&out.stderr)
    );
    let out = server.kubectl(&["create", "token", "nobody"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("serviceaccounts \"nobody\" not found"), "{}", text(&out.stderr));

    // Deleting the service account revokes its tokens.
    server.kubectl_ok(&["create", "serviceaccount", "robot"]);
    let robot = create_token(&server, "robot");
    let out = kubectl_with_token(&server, &kubeconfig, &robot, &["get", "pods"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    server.kubectl_ok(&["delete", "serviceaccount", "robot"]);
    let out = kubectl_with_token(&server, &kubeconfig, &robot, &["get", "pods"]);
    assert!(text(&out.stderr).contains("(Unauthorized)"), "{}", text(&out.stderr));

    // Every namespace gets the CA, and keeps it.
    let ca_pem = server_ca(&server);
    server.kubectl_ok(&["create", "namespace", "other"]);
    let root_ca = |server: &TestServer| {
        let out = server.kubectl(&["get", "configmap", "kube-root-ca.crt", "-n", "other", "-o", "json"]);
        let cm: Value = serde_json::from_slice(&out.stdout).ok()?;
        Some(cm["data"]["ca.crt"].as_str()?.to_string())
    };
    let published = server.wait_for("kube-root-ca.crt in namespace other", RUN_TIMEOUT, || root_ca(&server));
    assert_eq!(published, ca_pem);
    server.kubectl_ok(&["delete", "configmap", "kube-root-ca.crt", "-n", "other"]);
    let published = server.wait_for("kube-root-ca.crt to come back", RUN_TIMEOUT, || root_ca(&server));
    assert_eq!(published, ca_pem);
    server.finish();
}

/// The PID of a process whose command line holds `marker` (the pod's container).
fn pid_with_marker(marker: &str) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        if cmdline.split(|b| *b == 0).any(|arg| arg == marker.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

fn wait_running(server: &TestServer, name: &str) -> Value {
    server.wait_for(&format!("pod {name} to be Running"), RUN_TIMEOUT, || {
        let pod = server.get_json("pod", name);
        (pod["status"]["phase"] == "Running" && pod["status"]["containerStatuses"][0]["ready"] == true).then_some(pod)
    })
}

#[test]
fn a_pod_gets_api_credentials_and_reaches_the_api_through_service_kubernetes() {
    let server = TestServer::start();
    let images = TestImages::start();
    server.wait_for("service account default", RUN_TIMEOUT, || {
        server.kubectl(&["get", "serviceaccount", "default"]).status.success().then_some(())
    });
    let marker = format!("sa-token-test-{}", std::process::id());
    let busybox = images.busybox();
    server.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  initContainers:
  - {{name: init, image: "{busybox}", command: ["sh", "-c", "test -s {MOUNT_PATH}/token"]}}
  containers:
  - name: app
    image: "{busybox}"
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done", "{marker}"]
---
apiVersion: v1
kind: Pod
metadata: {{name: no-token}}
spec:
  automountServiceAccountToken: false
  containers:
  - name: app
    image: "{busybox}"
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
"#
    ));
    let pod = wait_running(&server, "client");
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_string();

    // The admission plugin's volume and mounts, as Kubernetes writes them.
    let volumes = pod["spec"]["volumes"].as_array().unwrap();
    assert_eq!(volumes.len(), 1, "{volumes:?}");
    let name = volumes[0]["name"].as_str().unwrap();
    let suffix = name.strip_prefix("kube-api-access-").unwrap();
    assert_eq!(suffix.len(), 5, "{name}");
    assert_eq!(
        volumes[0]["projected"],
        serde_json::json!({"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace",
                "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
        ]})
    );
    for list in ["initContainers", "containers"] {
        assert_eq!(
            pod["spec"][list][0]["volumeMounts"],
            serde_json::json!([{"name": name, "readOnly": true, "mountPath": MOUNT_PATH}]),
            "{list}"
        );
    }

    // What the container sees.
    let read =
        |file: &str| server.kubectl_ok(&["exec", "client", "-c", "app", "--", "cat", &format!("{MOUNT_PATH}/{file}")]);
    assert_eq!(read("namespace"), "default");
    let ca_pem = server_ca(&server);
    assert_eq!(read("ca.crt"), ca_pem);
    let token = read("token");
    let c = claims(&token);
    assert_eq!(c["kubernetes.io"]["pod"]["name"], "client");
    assert_eq!(c["kubernetes.io"]["pod"]["uid"], uid.as_str());
    assert_eq!(c["kubernetes.io"]["node"]["name"], server.node_name());
    assert_eq!(c["kubernetes.io"]["warnafter"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 3607);

    // From the pod's network namespace, through the Service's clusterIP and by its DNS name.
    let cluster_ip = server.kubectl_ok(&["get", "service", "kubernetes", "-o", "jsonpath={.spec.clusterIP}"]);
    let endpoints = server.get_json("endpoints", "kubernetes");
    assert_eq!(endpoints["subsets"][0]["ports"][0]["name"], "https", "{endpoints}");
    assert_eq!(endpoints["subsets"][0]["ports"][0]["port"], server.port(), "{endpoints}");
    let service = server.get_json("service", "kubernetes");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], server.port());
    let pid = server.wait_for("the client container's process", RUN_TIMEOUT, || pid_with_marker(&marker));
    let ca = server.dir().join("pod-ca.crt");
    std::fs::write(&ca, &ca_pem).unwrap();
    let url = format!("https://{cluster_ip}:443/api/v1/namespaces/default/pods");
    let body = server.wait_for("the API to answer the pod through Service kubernetes", RUN_TIMEOUT, || {
        let (code, body) = curl(Some(pid), &ca, &token, &url, None);
        (code == "200").then_some(body)
    });
    let list: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["kind"], "PodList");
    assert!(list["items"].as_array().unwrap().iter().any(|p| p["metadata"]["name"] == "client"));
    let by_name = "https://kubernetes.default.svc.cluster.local/api/v1/namespaces/default/pods/client";
    let resolve = format!("kubernetes.default.svc.cluster.local:443:{cluster_ip}");
    let (code, body) = curl(Some(pid), &ca, &token, by_name, Some(&resolve));
    assert_eq!(code, "200", "the certificate covers the service's name: {body}");
    let (code, _) = curl(Some(pid), &ca, &tampered(&token), &url, None);
    assert_eq!(code, "401");

    // automountServiceAccountToken: false → nothing mounted.
    let plain = wait_running(&server, "no-token");
    assert!(plain["spec"]["volumes"].as_array().is_none_or(|v| v.is_empty()), "{}", plain["spec"]);
    assert!(plain["spec"]["containers"][0]["volumeMounts"].is_null(), "{}", plain["spec"]);
    let out = server.kubectl(&["exec", "no-token", "--", "ls", MOUNT_PATH]);
    assert!(!out.status.success(), "nothing at {MOUNT_PATH}");

    // The token is bound to its pod: deleting the pod revokes it.
    server.kubectl_ok(&["delete", "pod", "client", "--timeout", "90s"]);
    let host_url = format!("https://127.0.0.1:{}/api/v1/namespaces/default/pods", server.port());
    let host_ca = server.dir().join("host-ca.crt");
    std::fs::write(&host_ca, &ca_pem).unwrap();
    let (code, body) = curl(None, &host_ca, &token, &host_url, None);
    assert_eq!(code, "401", "{body}");
    server.kubectl_ok(&["delete", "pod", "no-token", "--timeout", "90s"]);
    server.finish();
}
