//! The kubelet's pod lifecycle and configuration, seen with the real kubectl against a real
//! `skiff server`: restart policies of a failing container (back-off, `CrashLoopBackOff`,
//! `Failed`), and the environment a container gets from ConfigMaps, Secrets and the pod itself.

mod common;

use std::time::Duration;

use common::{TestImages, TestServer, table_row};
use serde_json::Value;

const RUN_TIMEOUT: Duration = Duration::from_secs(120);

fn failing_pod(name: &str, image: &str, policy: &str, exit: u8) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  restartPolicy: {policy}\n  containers:\n  \
         - name: main\n    image: {image}\n    command: [\"sh\", \"-c\", \"echo run $(cat \
         /proc/sys/kernel/random/uuid); exit {exit}\"]\n"
    )
}

fn status(server: &TestServer, name: &str) -> Value {
    server.get_json("pod", name)["status"].clone()
}

/// `kubectl get pods` columns READY, STATUS, RESTARTS of `name`, once `accept` likes them.
fn wait_row(server: &TestServer, name: &str, what: &str, accept: impl Fn(&[String]) -> bool) -> Vec<String> {
    server.wait_for(&format!("pod {name} to show {what} in kubectl get pods"), RUN_TIMEOUT, || {
        let table = server.kubectl_ok(&["get", "pods"]);
        table_row(&table, name).filter(|cols| cols.len() >= 4 && accept(&cols[1..4])).map(|cols| cols[1..4].to_vec())
    })
}

#[test]
fn failing_containers_follow_their_restart_policy_with_back_off_and_crash_loop() {
    let server = TestServer::start();
    let images = TestImages::start();
    let image = images.busybox();
    server.apply(&failing_pod("always", &image, "Always", 1));
    server.apply(&failing_pod("on-failure", &image, "OnFailure", 2));
    server.apply(&failing_pod("never", &image, "Never", 3));
    server.apply(&failing_pod("on-failure-ok", &image, "OnFailure", 0));

    // Always and OnFailure: restarted at once the first time, then held back: CrashLoopBackOff.
    for (name, code) in [("always", 1), ("on-failure", 2)] {
        let row = wait_row(&server, name, "CrashLoopBackOff", |c| c[1] == "CrashLoopBackOff" && c[2] != "0");
        assert_eq!(row[0], "0/1", "{name}: {row:?}");
        let st = status(&server, name);
        assert_eq!(st["phase"], "Running", "{name} keeps running between restarts: {st}");
        let cs = &st["containerStatuses"][0];
        assert!(cs["restartCount"].as_i64() >= Some(1), "{name}: {cs}");
        let waiting = &cs["state"]["waiting"];
        assert_eq!(waiting["reason"], "CrashLoopBackOff", "{name}: {cs}");
        let message = waiting["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with("back-off ")
                && message.contains("restarting failed container=main pod=")
                && message.contains(name),
            "{name}: waiting message {message:?}"
        );
        let last = &cs["lastState"]["terminated"];
        assert_eq!(last["exitCode"], code, "{name}: {cs}");
        assert_eq!(last["reason"], "Error", "{name}: {cs}");
        server.wait_for(&format!("a BackOff event about {name}"), RUN_TIMEOUT, || {
            server.events_about(name).into_iter().find(|e| {
                e["reason"] == "BackOff"
                    && e["type"] == "Warning"
                    && e["message"].as_str().is_some_and(|m| m.starts_with("Back-off restarting failed container main"))
            })
        });
        // Every run logged its own line; --previous is the run before the latest.
        let latest = server.kubectl_ok(&["logs", name]);
        let previous = server.kubectl_ok(&["logs", name, "--previous"]);
        assert!(latest.starts_with("run ") && previous.starts_with("run "), "{name}: {latest:?} {previous:?}");
    }

    // Never: the pod fails for good, with the exit code, and has no previous run.
    let row = wait_row(&server, "never", "Error", |c| c[1] == "Error");
    assert_eq!(row, ["0/1", "Error", "0"]);
    let st = status(&server, "never");
    assert_eq!(st["phase"], "Failed", "{st}");
    let terminated = &st["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(terminated["exitCode"], 3, "{st}");
    assert_eq!(terminated["reason"], "Error", "{st}");
    assert!(server.kubectl_ok(&["logs", "never"]).starts_with("run "));
    let previous = server.kubectl(&["logs", "never", "--previous"]);
    assert!(!previous.status.success());
    let stderr = String::from_utf8_lossy(&previous.stderr);
    assert!(stderr.contains(r#"previous terminated container "main" in pod "never" not found"#), "{stderr}");

    // OnFailure with a clean exit: done, never restarted.
    let row = wait_row(&server, "on-failure-ok", "Completed", |c| c[1] == "Completed");
    assert_eq!(row, ["0/1", "Completed", "0"]);
    assert_eq!(status(&server, "on-failure-ok")["phase"], "Succeeded");

    // The crash-looping pods' restart counts only grow; the finished ones stay at zero.
    let before = status(&server, "always")["containerStatuses"][0]["restartCount"].as_i64().unwrap();
    server.wait_for("always to be restarted again after its back-off", RUN_TIMEOUT, || {
        (status(&server, "always")["containerStatuses"][0]["restartCount"].as_i64() > Some(before)).then_some(())
    });
    assert_eq!(status(&server, "never")["containerStatuses"][0]["restartCount"], 0);

    server.kubectl_ok(&["delete", "pods", "--all", "--timeout", "90s"]);
    drop(images);
    server.finish();
}

#[test]
fn env_and_env_from_take_values_from_config_maps_secrets_and_the_pod() {
    let server = TestServer::start();
    let images = TestImages::start();
    let manifest = format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
data:
  level: debug
  color: blue
---
apiVersion: v1
kind: Secret
metadata:
  name: creds
type: Opaque
stringData:
  user: admin
  password: "s3cret with spaces"
---
apiVersion: v1
kind: Pod
metadata:
  name: envy
  labels:
    app: envy
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "env | sort"]
    envFrom:
    - configMapRef:
        name: settings
      prefix: CFG_
    - secretRef:
        name: creds
    env:
    - name: LEVEL
      valueFrom:
        configMapKeyRef:
          name: settings
          key: level
    - name: PASSWORD
      valueFrom:
        secretKeyRef:
          name: creds
          key: password
    - name: MISSING_OK
      valueFrom:
        configMapKeyRef:
          name: settings
          key: nope
          optional: true
    - name: POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    - name: POD_NAMESPACE
      valueFrom:
        fieldRef:
          fieldPath: metadata.namespace
    - name: APP
      valueFrom:
        fieldRef:
          fieldPath: metadata.labels['app']
    - name: GREETING
      value: "$(LEVEL)-$(POD_NAME)-$$(LEVEL)"
    - name: user
      value: overridden-by-env
"#,
        image = images.busybox()
    );
    server.apply(&manifest);
    wait_row(&server, "envy", "Completed", |c| c[1] == "Completed");
    let logs = server.kubectl_ok(&["logs", "envy"]);
    let env: Vec<&str> = logs.lines().collect();
    for expected in [
        "CFG_level=debug",
        "CFG_color=blue",
        "user=overridden-by-env",
        "password=s3cret with spaces",
        "LEVEL=debug",
        "PASSWORD=s3cret with spaces",
        "POD_NAME=envy",
        "POD_NAMESPACE=default",
        "APP=envy",
        "GREETING=debug-envy-$(LEVEL)",
    ] {
        assert!(env.contains(&expected), "{expected:?} is missing from the container's env:\n{logs}");
    }
    assert!(!env.iter().any(|l| l.starts_with("MISSING_OK=")), "an optional missing key sets nothing:\n{logs}");

    // A required key that does not exist: the container cannot be configured and waits.
    let broken = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: broken\nspec:\n  containers:\n  - name: main\n    image: {}\n    \
         command: [\"true\"]\n    env:\n    - name: X\n      valueFrom:\n        secretKeyRef:\n          name: creds\n          \
         key: nope\n",
        images.busybox()
    );
    server.apply(&broken);
    let row = wait_row(&server, "broken", "CreateContainerConfigError", |c| c[1] == "CreateContainerConfigError");
    assert_eq!(row, ["0/1", "CreateContainerConfigError", "0"]);
    let waiting = &status(&server, "broken")["containerStatuses"][0]["state"]["waiting"];
    assert!(waiting["message"].as_str().unwrap_or_default().contains("nope"), "names the missing key: {waiting}");

    server.kubectl_ok(&["delete", "pods", "--all", "--timeout", "90s"]);
    drop(images);
    server.finish();
}

#[test]
fn a_private_registry_image_pulls_with_the_pods_image_pull_secret_and_not_without() {
    let server = TestServer::start();
    let images = TestImages::start_with_auth("puller", "pull-secret-pw");
    let pod = |name: &str, secrets: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  restartPolicy: Never\n{secrets}  containers:\n  \
             - name: main\n    image: {}\n    command: [\"echo\", \"pulled with credentials\"]\n",
            images.busybox()
        )
    };

    // Without credentials the registry answers 401: the pull fails and backs off.
    server.apply(&pod("anonymous", ""));
    let row = wait_row(&server, "anonymous", "ErrImagePull or ImagePullBackOff", |c| {
        c[1] == "ErrImagePull" || c[1] == "ImagePullBackOff"
    });
    assert_eq!(row[0], "0/1");
    let st = status(&server, "anonymous");
    assert_eq!(st["phase"], "Pending", "{st}");
    server.wait_for("a Failed event about the anonymous pull", RUN_TIMEOUT, || {
        server.events_about("anonymous").into_iter().find(|e| {
            e["reason"] == "Failed"
                && e["type"] == "Warning"
                && e["message"].as_str().is_some_and(|m| m.contains("Failed to pull image") && m.contains("busybox"))
        })
    });

    // With a dockerconfigjson Secret made by kubectl, named in imagePullSecrets, it runs.
    let registry = images.registry_addr();
    let server_flag = format!("--docker-server={registry}");
    server.kubectl_ok(&[
        "create",
        "secret",
        "docker-registry",
        "regcred",
        &server_flag,
        "--docker-username=puller",
        "--docker-password=pull-secret-pw",
    ]);
    server.apply(&pod("authenticated", "  imagePullSecrets:\n  - name: regcred\n"));
    wait_row(&server, "authenticated", "Completed", |c| c[1] == "Completed");
    assert_eq!(server.kubectl_ok(&["logs", "authenticated"]), "pulled with credentials\n");
    let pulled = server.events_about("authenticated");
    assert!(
        pulled.iter().any(|e| e["reason"] == "Pulled"),
        "a Pulled event: {:?}",
        pulled.iter().map(|e| e["reason"].clone()).collect::<Vec<_>>()
    );

    // A ServiceAccount's imagePullSecrets go to its pods (admission copies them); Always makes
    // the kubelet pull again, with them.
    server.kubectl_ok(&["create", "serviceaccount", "builder"]);
    server.kubectl_ok(&["patch", "serviceaccount", "builder", "-p", r#"{"imagePullSecrets":[{"name":"regcred"}]}"#]);
    let through_account = pod("through-account", "  serviceAccountName: builder\n")
        .replace("    command:", "    imagePullPolicy: Always\n    command:");
    server.apply(&through_account);
    wait_row(&server, "through-account", "Completed", |c| c[1] == "Completed");
    let spec = server.get_json("pod", "through-account")["spec"].clone();
    assert_eq!(spec["imagePullSecrets"], serde_json::json!([{"name": "regcred"}]), "{spec}");
    // A pod naming an account that does not exist is refused, as the admission plugin does.
    let refused = server.kubectl_stdin(&["apply", "-f", "-"], &pod("no-account", "  serviceAccountName: nope\n"));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(r#"pods "no-account" is forbidden: error looking up service account default/nope: serviceaccount "nope" not found"#),
        "{stderr}"
    );

    server.kubectl_ok(&["delete", "pods", "--all", "--timeout", "90s"]);
    drop(images);
    server.finish();
}
