//! `securityContext.seccompProfile` end to end with the real kubectl: a pod-level
//! `RuntimeDefault` filters its containers (and what `kubectl exec` runs in them) unless a
//! container says `Unconfined`; a `Localhost` profile comes from `<data-dir>/kubelet/seccomp`, and
//! a missing one leaves the container waiting in `CreateContainerError` with containerd's message.
//! The rest of the securityContext (users, no_new_privs, runAsNonRoot) comes along.

mod common;

use std::time::Duration;

use common::{TestImages, TestServer};

const RUN_TIMEOUT: Duration = Duration::from_secs(120);
const LOOP: &str = r#"["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]"#;

fn manifest(image: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: confined
spec:
  terminationGracePeriodSeconds: 1
  securityContext:
    seccompProfile:
      type: RuntimeDefault
  containers:
  - name: main
    image: {image}
    command: {LOOP}
  - name: open
    image: {image}
    command: {LOOP}
    securityContext:
      seccompProfile:
        type: Unconfined
---
apiVersion: v1
kind: Pod
metadata:
  name: local
spec:
  terminationGracePeriodSeconds: 1
  securityContext:
    runAsNonRoot: true
    runAsUser: 1000
    runAsGroup: 3000
  containers:
  - name: main
    image: {image}
    command: {LOOP}
    securityContext:
      allowPrivilegeEscalation: false
      seccompProfile:
        type: Localhost
        localhostProfile: profiles/no-mkdir.json
---
apiVersion: v1
kind: Pod
metadata:
  name: as-root
spec:
  securityContext:
    runAsNonRoot: true
  containers:
  - name: main
    image: {image}
    command: {LOOP}
---
apiVersion: v1
kind: Pod
metadata:
  name: missing
spec:
  containers:
  - name: main
    image: {image}
    command: {LOOP}
    securityContext:
      seccompProfile:
        type: Localhost
        localhostProfile: profiles/missing.json
"#
    )
}

fn wait_running(server: &TestServer, name: &str) {
    server.wait_for(&format!("pod {name} to run"), RUN_TIMEOUT, || {
        let phase = server.kubectl_ok(&["get", "pod", name, "-o", "jsonpath={.status.phase}"]);
        (phase == "Running").then_some(())
    });
}

#[test]
fn seccomp_profiles_filter_containers_and_their_execs() {
    let server = TestServer::start();
    let images = TestImages::start();
    let profiles = server.data_dir().join("kubelet/seccomp/profiles");
    std::fs::create_dir_all(&profiles).unwrap();
    std::fs::write(
        profiles.join("no-mkdir.json"),
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 95}]}"#,
    )
    .unwrap();
    server.apply(&manifest(&images.busybox()));
    wait_running(&server, "confined");
    wait_running(&server, "local");

    let status = |pod: &str, container: &str| {
        server.kubectl_ok(&[
            "exec",
            pod,
            "-c",
            container,
            "--",
            "sh",
            "-c",
            "grep Seccomp: /proc/1/status /proc/self/status",
        ])
    };
    let main = status("confined", "main");
    assert!(main.contains("/proc/1/status:Seccomp:\t2") && main.contains("/proc/self/status:Seccomp:\t2"), "{main}");
    let open = status("confined", "open");
    assert!(open.contains("/proc/1/status:Seccomp:\t0") && open.contains("/proc/self/status:Seccomp:\t0"), "{open}");

    // unshare(CLONE_NEWUSER) needs no capability: only the default profile's allowlist stops it.
    let denied = server.kubectl(&["exec", "confined", "-c", "main", "--", "unshare", "-U", "true"]);
    assert_eq!(denied.status.code(), Some(1), "{denied:?}");
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(stderr.contains("Operation not permitted"), "EPERM from the filter: {stderr}");
    server.kubectl_ok(&["exec", "confined", "-c", "open", "--", "unshare", "-U", "true"]);

    let local = server.kubectl(&["exec", "local", "--", "sh", "-c", "grep Seccomp: /proc/1/status; mkdir /made"]);
    let (out, err) = (String::from_utf8_lossy(&local.stdout), String::from_utf8_lossy(&local.stderr));
    assert!(out.contains("Seccomp:\t2"), "{out}");
    assert!(err.contains("ot supported"), "the profile's own errno (EOPNOTSUPP), before any permission check: {err}");
    // The rest of the securityContext reaches the container too (no_new_privs: the filter went
    // in after the switch to uid 1000).
    let ids = server.kubectl_ok(&["exec", "local", "--", "sh", "-c", "id -u; id -g; grep NoNewPrivs /proc/1/status"]);
    assert_eq!(ids, "1000\n3000\nNoNewPrivs:\t1\n");

    let waiting = server.wait_for("pod as-root to wait in CreateContainerConfigError", RUN_TIMEOUT, || {
        let st = server.get_json("pod", "as-root")["status"]["containerStatuses"][0]["state"]["waiting"].clone();
        (st["reason"] == "CreateContainerConfigError").then_some(st)
    });
    let message = waiting["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("container has runAsNonRoot and image will run as root (pod: \"as-root_default("),
        "{waiting}"
    );

    let path = server.data_dir().join("kubelet/seccomp/profiles/missing.json");
    let waiting = server.wait_for("pod missing to wait in CreateContainerError", RUN_TIMEOUT, || {
        let st = server.get_json("pod", "missing")["status"]["containerStatuses"][0]["state"]["waiting"].clone();
        (st["reason"] == "CreateContainerError").then_some(st)
    });
    let message = waiting["message"].as_str().unwrap_or_default();
    let p = path.display();
    assert!(
        message.contains(&format!("cannot load seccomp profile \"{p}\": open {p}: no such file or directory")),
        "{waiting}"
    );
    assert_eq!(server.get_json("pod", "missing")["status"]["phase"], "Pending");

    server.kubectl_ok(&["delete", "pod", "confined", "local", "as-root", "missing", "--wait=true"]);
    server.finish();
}
