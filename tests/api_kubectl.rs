//! The API server through the real kubectl, command by command: client-side apply with its
//! three-way diff, server-side apply with field managers and conflicts, `get` in every output
//! form (and `-w`), `describe` with events, the protobuf `create` generators, label, annotate,
//! the three patch types, the scale subresource, `explain`, `api-resources`, every cascade of
//! `delete`, and the error texts kubectl prints for each kind of Status.
//!
//! Pods here never run: they either name a node selector no node has (the scheduler leaves them
//! Pending with a FailedScheduling event) or are plain objects, so the tests need no images.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use common::{TestServer, unschedulable_deployment};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(60);

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// kubectl that must fail: its stderr.
fn kubectl_err(server: &TestServer, args: &[&str]) -> String {
    let out = server.kubectl(args);
    assert!(!out.status.success(), "kubectl {} succeeded but should not have: {}", args.join(" "), stdout(&out));
    stderr(&out)
}

fn json(server: &TestServer, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    // kubectl hides managedFields unless asked.
    all.extend(["-o", "json", "--show-managed-fields"]);
    serde_json::from_str(&server.kubectl_ok(&all)).expect("kubectl -o json prints JSON")
}

#[test]
fn apply_shows_created_configured_unchanged_and_removes_what_the_manifest_dropped() {
    let server = TestServer::start();
    let first = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: demo
  labels: {app: demo, tier: web}
data:
  a: "1"
  b: "2"
"#;
    let second = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: demo
  labels: {app: demo}
data:
  a: "1"
  c: "3"
"#;
    assert_eq!(server.apply_with(&[], first).trim(), "configmap/demo created");
    // A field set live by someone else is not the manifest's: the three-way diff keeps it.
    server.kubectl_ok(&["annotate", "configmap", "demo", "owner=someone-else"]);
    assert_eq!(server.apply_with(&[], second).trim(), "configmap/demo configured");
    let live = json(&server, &["get", "configmap", "demo"]);
    assert_eq!(live["data"], serde_json::json!({"a": "1", "c": "3"}), "b was dropped from the manifest: {live}");
    assert_eq!(live["metadata"]["labels"], serde_json::json!({"app": "demo"}), "tier was dropped: {live}");
    assert_eq!(live["metadata"]["annotations"]["owner"], "someone-else", "{live}");
    assert!(
        live["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .as_str()
            .is_some_and(|a| a.contains("\"c\":\"3\"")),
        "{live}"
    );
    assert_eq!(server.apply_with(&[], second).trim(), "configmap/demo unchanged");

    // Server-side apply: the first manager creates and owns data.owner and data.extra.
    let ssa = |owner: &str, extra: bool| {
        let extra = if extra { "\n  extra: \"x\"" } else { "" };
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\ndata:\n  owner: {owner}{extra}\n")
    };
    assert_eq!(server.apply_with(&["--server-side"], &ssa("first", true)).trim(), "configmap/ssa serverside-applied");
    let live = json(&server, &["get", "configmap", "ssa"]);
    let managers: Vec<&str> =
        live["metadata"]["managedFields"].as_array().unwrap().iter().filter_map(|m| m["manager"].as_str()).collect();
    assert_eq!(managers, ["kubectl"], "{live}");
    assert_eq!(live["metadata"]["managedFields"][0]["operation"], "Apply");
    assert_eq!(
        live["metadata"]["managedFields"][0]["fieldsV1"],
        serde_json::json!({"f:data": {"f:owner": {}, "f:extra": {}}})
    );

    // A second manager changing a field the first owns: 409, printed as kubectl prints it.
    let out =
        server.kubectl_stdin(&["apply", "--server-side", "--field-manager=second", "-f", "-"], &ssa("second", false));
    assert!(!out.status.success(), "a conflicting apply succeeded: {}", stdout(&out));
    let err = stderr(&out);
    assert!(err.starts_with("error: Apply failed with 1 conflict: conflict with \"kubectl\": .data.owner"), "{err}");
    assert!(err.contains("--force-conflicts"), "{err}");
    assert_eq!(json(&server, &["get", "configmap", "ssa"])["data"]["owner"], "first");

    // Applying the same value is co-ownership, not a conflict.
    let same = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\ndata:\n  extra: \"x\"\n";
    server.apply_with(&["--server-side", "--field-manager=third"], same);

    // --force-conflicts takes the field over.
    let out =
        server.apply_with(&["--server-side", "--field-manager=second", "--force-conflicts"], &ssa("second", false));
    assert_eq!(out.trim(), "configmap/ssa serverside-applied");
    let live = json(&server, &["get", "configmap", "ssa"]);
    assert_eq!(live["data"]["owner"], "second");
    let fields_of = |live: &Value, manager: &str| {
        live["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["manager"] == manager)
            .map(|m| m["fieldsV1"].clone())
    };
    assert_eq!(fields_of(&live, "second"), Some(serde_json::json!({"f:data": {"f:owner": {}}})), "{live}");
    assert_eq!(fields_of(&live, "kubectl"), Some(serde_json::json!({"f:data": {"f:extra": {}}})), "{live}");

    // The first manager stops applying `extra`, but `third` still owns it: it stays. Once
    // `third` lets go too, it goes.
    server.apply_with(&["--server-side"], "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\n");
    assert_eq!(json(&server, &["get", "configmap", "ssa"])["data"]["extra"], "x");
    server.apply_with(
        &["--server-side", "--field-manager=third"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\n",
    );
    let live = json(&server, &["get", "configmap", "ssa"]);
    assert_eq!(live["data"], serde_json::json!({"owner": "second"}), "{live}");

    server.finish();
}

/// Lines of `kubectl get -w`, read on a thread; the child is killed (by PID) on drop.
struct Watch {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl Watch {
    fn start(server: &TestServer, args: &[&str]) -> Watch {
        let mut child = server.kubectl_command(args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Watch { child, lines }
    }

    /// The first line that satisfies `want`, or a panic naming what came instead.
    fn wait_line(&self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + TIMEOUT;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if want(&line) => return line,
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        panic!("kubectl get -w never printed {what}; it printed:\n{}", seen.join("\n"));
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn columns(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

#[test]
fn get_describe_create_label_patch_scale_explain_and_error_texts_match_kubectl() {
    let server = TestServer::start();

    // create <generator>: kubectl 1.32+ sends these bodies as protobuf.
    let verbose = server.kubectl_ok(&["create", "namespace", "team", "-v=8"]);
    assert_eq!(verbose.trim(), "namespace/team created");
    let trace =
        stderr(&server.kubectl(&["create", "configmap", "settings", "-n", "team", "--from-literal=mode=fast", "-v=8"]));
    assert!(trace.contains("Content-Type: application/vnd.kubernetes.protobuf"), "kubectl sent no protobuf:\n{trace}");
    assert_eq!(
        server.kubectl_ok(&["create", "secret", "generic", "creds", "-n", "team", "--from-literal=user=admin"]).trim(),
        "secret/creds created"
    );
    assert_eq!(
        server
            .kubectl_ok(&["create", "deployment", "web", "-n", "team", "--image=example.invalid/web:1", "--replicas=0"])
            .trim(),
        "deployment.apps/web created"
    );
    assert_eq!(
        server.kubectl_ok(&["get", "configmap", "settings", "-n", "team", "-o", "jsonpath={.data.mode}"]),
        "fast"
    );
    assert_eq!(server.kubectl_ok(&["get", "secret", "creds", "-n", "team", "-o", "jsonpath={.data.user}"]), "YWRtaW4=");
    let web = json(&server, &["get", "deployment", "web", "-n", "team"]);
    assert_eq!(web["spec"]["template"]["spec"]["containers"][0]["image"], "example.invalid/web:1");
    assert_eq!(web["spec"]["selector"]["matchLabels"]["app"], "web");

    // Pods that stay Pending: one per label set.
    for (name, tier) in [("alpha", "front"), ("beta", "back")] {
        let overrides = r#"{"spec":{"nodeSelector":{"skiff.test/none":"true"}}}"#;
        let labels = format!("app={name},tier={tier}");
        server.kubectl_ok(&[
            "run",
            name,
            "-n",
            "team",
            "--image=example.invalid/x:1",
            "-l",
            &labels,
            "--overrides",
            overrides,
        ]);
    }

    let table = server.kubectl_ok(&["get", "pods", "-n", "team"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(columns(lines[0]), ["NAME", "READY", "STATUS", "RESTARTS", "AGE"], "{table}");
    assert_eq!(columns(lines[1])[..4], ["alpha", "0/1", "Pending", "0"], "{table}");
    assert_eq!(lines.len(), 3, "{table}");

    let wide = server.kubectl_ok(&["get", "pods", "-n", "team", "-o", "wide"]);
    assert_eq!(
        columns(wide.lines().next().unwrap()),
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED", "NODE", "READINESS", "GATES"],
        "{wide}"
    );
    assert_eq!(columns(wide.lines().nth(1).unwrap())[5..], ["<none>", "<none>", "<none>", "<none>"], "{wide}");

    let yaml = server.kubectl_ok(&["get", "pod", "alpha", "-n", "team", "-o", "yaml"]);
    assert!(yaml.starts_with("apiVersion: v1\nkind: Pod\nmetadata:\n"), "{yaml}");
    assert!(yaml.contains("\n  name: alpha\n") && yaml.contains("\n    tier: front\n"), "{yaml}");
    let list = json(&server, &["get", "pods", "-n", "team"]);
    assert_eq!(list["kind"], "List");
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    assert_eq!(server.kubectl_ok(&["get", "pods", "-n", "team", "-o", "name"]), "pod/alpha\npod/beta\n");
    assert_eq!(
        server.kubectl_ok(&[
            "get",
            "pods",
            "-n",
            "team",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.metadata.labels.tier} {end}"
        ]),
        "alpha=front beta=back "
    );
    let custom = server.kubectl_ok(&[
        "get",
        "pods",
        "-n",
        "team",
        "-o",
        "custom-columns=POD:.metadata.name,TIER:.metadata.labels.tier",
    ]);
    let custom: Vec<Vec<&str>> = custom.lines().map(columns).collect();
    assert_eq!(custom, [vec!["POD", "TIER"], vec!["alpha", "front"], vec!["beta", "back"]]);

    let all = server.kubectl_ok(&["get", "pods", "-A"]);
    assert_eq!(columns(all.lines().next().unwrap())[..2], ["NAMESPACE", "NAME"], "{all}");
    assert!(all.lines().any(|l| columns(l)[..2] == ["team", "beta"]), "{all}");
    let selected = server.kubectl_ok(&["get", "pods", "-A", "-l", "tier in (back)", "-L", "tier,app"]);
    let selected: Vec<Vec<&str>> = selected.lines().map(columns).collect();
    assert_eq!(selected.len(), 2, "{selected:?}");
    assert_eq!(selected[0][selected[0].len() - 2..], ["TIER", "APP"]);
    assert_eq!(selected[1][..2], ["team", "beta"]);
    assert_eq!(selected[1][selected[1].len() - 2..], ["back", "beta"]);
    let shown = server.kubectl_ok(&["get", "pods", "-n", "team", "-l", "app!=beta", "--show-labels"]);
    let shown: Vec<Vec<&str>> = shown.lines().map(columns).collect();
    assert_eq!(shown[0].last(), Some(&"LABELS"));
    assert_eq!(shown.len(), 2);
    assert_eq!(shown[1].last(), Some(&"app=alpha,tier=front"));
    let many = server.kubectl_ok(&["get", "configmap,secret,deployment", "-n", "team"]);
    for row in ["configmap/settings", "secret/creds", "deployment.apps/web"] {
        assert!(many.lines().any(|l| l.starts_with(row)), "no {row} in\n{many}");
    }

    // -w: the initial table, then a change as it arrives.
    let watch = Watch::start(&server, &["get", "configmaps", "-n", "team", "-w"]);
    watch.wait_line("the settings row", |l| l.starts_with("settings "));
    server.kubectl_ok(&["create", "configmap", "arrived", "-n", "team", "--from-literal=k=v"]);
    let line = watch.wait_line("the new configmap", |l| l.starts_with("arrived "));
    assert_eq!(columns(&line)[..2], ["arrived", "1"], "{line}");
    drop(watch);

    // describe, with the scheduler's event.
    let described = server.wait_for("the FailedScheduling event in kubectl describe", TIMEOUT, || {
        let out = server.kubectl_ok(&["describe", "pod", "alpha", "-n", "team"]);
        out.contains("FailedScheduling").then_some(out)
    });
    assert!(described.starts_with("Name:             alpha\nNamespace:        team\n"), "{described}");
    assert!(described.contains("Labels:           app=alpha\n                  tier=front\n"), "{described}");
    assert!(described.contains("Status:           Pending\n"), "{described}");
    let events = described.split("\nEvents:\n").nth(1).unwrap_or_else(|| panic!("no Events section:\n{described}"));
    let header = events.lines().next().unwrap();
    assert_eq!(columns(header), ["Type", "Reason", "Age", "From", "Message"], "{described}");
    let row = events.lines().find(|l| l.contains("FailedScheduling")).unwrap();
    assert!(row.trim_start().starts_with("Warning  FailedScheduling"), "{row}");
    assert!(row.contains("default-scheduler"), "{row}");
    assert!(row.contains("didn't match Pod's node affinity/selector"), "{row}");

    // label / annotate, with kubectl's --overwrite rule.
    assert_eq!(server.kubectl_ok(&["label", "pod", "alpha", "-n", "team", "env=prod"]).trim(), "pod/alpha labeled");
    let err = kubectl_err(&server, &["label", "pod", "alpha", "-n", "team", "env=dev"]);
    assert_eq!(err.trim(), "error: 'env' already has a value (prod), and --overwrite is false");
    server.kubectl_ok(&["label", "pod", "alpha", "-n", "team", "env=dev", "--overwrite"]);
    assert_eq!(server.kubectl_ok(&["annotate", "pod", "alpha", "-n", "team", "note=hi"]).trim(), "pod/alpha annotated");
    let alpha = json(&server, &["get", "pod", "alpha", "-n", "team"]);
    assert_eq!(alpha["metadata"]["labels"]["env"], "dev");
    assert_eq!(alpha["metadata"]["annotations"]["note"], "hi");
    assert_eq!(server.kubectl_ok(&["label", "pod", "alpha", "-n", "team", "env-"]).trim(), "pod/alpha unlabeled");
    assert!(json(&server, &["get", "pod", "alpha", "-n", "team"])["metadata"]["labels"].get("env").is_none());

    // patch: merge, JSON and strategic (containers merged by name).
    let patched = server.kubectl_ok(&[
        "patch",
        "configmap",
        "settings",
        "-n",
        "team",
        "--type",
        "merge",
        "-p",
        r#"{"data":{"mode":null,"size":"2"}}"#,
    ]);
    assert_eq!(patched.trim(), "configmap/settings patched");
    server.kubectl_ok(&[
        "patch",
        "configmap",
        "settings",
        "-n",
        "team",
        "--type",
        "json",
        "-p",
        r#"[{"op":"add","path":"/data/depth","value":"3"}]"#,
    ]);
    let settings = json(&server, &["get", "configmap", "settings", "-n", "team"]);
    assert_eq!(settings["data"], serde_json::json!({"size": "2", "depth": "3"}));
    let err = kubectl_err(
        &server,
        &[
            "patch",
            "configmap",
            "settings",
            "-n",
            "team",
            "--type",
            "json",
            "-p",
            r#"[{"op":"remove","path":"/data/nope"}]"#,
        ],
    );
    assert!(err.starts_with("The request is invalid") || err.contains("Invalid"), "{err}");
    let smp = r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"example.invalid/web:2"}]}}}}"#;
    server.kubectl_ok(&["patch", "deployment", "web", "-n", "team", "-p", smp]);
    let web = json(&server, &["get", "deployment", "web", "-n", "team"]);
    let containers = web["spec"]["template"]["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1, "strategic merge matched the container by name: {web}");
    assert_eq!(containers[0]["image"], "example.invalid/web:2");
    assert_eq!(containers[0]["imagePullPolicy"], "IfNotPresent", "the rest of the container stays: {web}");
    assert_eq!(web["metadata"]["generation"], 2, "{web}");

    // The scale subresource.
    assert_eq!(
        server.kubectl_ok(&["scale", "deployment", "web", "-n", "team", "--replicas=0"]).trim(),
        "deployment.apps/web scaled"
    );
    let scale: Value = serde_json::from_str(&server.kubectl_ok(&[
        "get",
        "--raw",
        "/apis/apps/v1/namespaces/team/deployments/web/scale",
    ]))
    .unwrap();
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["apiVersion"], "autoscaling/v1");
    assert_eq!(scale["spec"]["replicas"], 0);
    assert_eq!(scale["status"]["selector"], "app=web");
    let err =
        kubectl_err(&server, &["scale", "deployment", "web", "-n", "team", "--replicas=2", "--current-replicas=5"]);
    assert!(err.contains("Expected replicas to be 5, was 0"), "{err}");

    // explain and api-resources come from OpenAPI v3 and discovery.
    let explained = server.kubectl_ok(&["explain", "deployment.spec.replicas"]);
    assert!(explained.starts_with("GROUP:      apps\nKIND:       Deployment\nVERSION:    v1\n"), "{explained}");
    assert!(explained.contains("FIELD: replicas <integer>"), "{explained}");
    let explained = server.kubectl_ok(&["explain", "pods.spec.containers.image"]);
    assert!(explained.contains("FIELD: image <string>"), "{explained}");
    let resources = server.kubectl_ok(&["api-resources"]);
    assert_eq!(columns(resources.lines().next().unwrap()), ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]);
    for row in [
        ["pods", "po", "v1", "true", "Pod"],
        ["deployments", "deploy", "apps/v1", "true", "Deployment"],
        ["namespaces", "ns", "v1", "false", "Namespace"],
        ["cronjobs", "cj", "batch/v1", "true", "CronJob"],
    ] {
        assert!(resources.lines().any(|l| columns(l) == row), "no {row:?} in\n{resources}");
    }
    let names = server.kubectl_ok(&["api-resources", "--api-group=apps", "-o", "name"]);
    assert!(names.lines().any(|l| l == "deployments.apps"), "{names}");

    // The error texts of kubectl-wire.md §5.
    assert_eq!(
        kubectl_err(&server, &["get", "pod", "nope", "-n", "team"]).trim(),
        "Error from server (NotFound): pods \"nope\" not found"
    );
    assert_eq!(
        kubectl_err(&server, &["get", "foos"]).trim(),
        "error: the server doesn't have a resource type \"foos\""
    );
    let dup = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: team\n";
    let out = server.kubectl_stdin(&["create", "-f", "-"], dup);
    assert_eq!(
        stderr(&out).trim(),
        "Error from server (AlreadyExists): error when creating \"STDIN\": configmaps \"settings\" already exists"
    );
    let invalid = unschedulable_deployment("bad", 1).replace("replicas: 1", "replicas: -1");
    let out = server.kubectl_stdin(&["apply", "-f", "-"], &invalid);
    assert_eq!(
        stderr(&out).trim(),
        "The Deployment \"bad\" is invalid: spec.replicas: Invalid value: -1: must be greater than or equal to 0"
    );
    let bad_name = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Not_Valid\n";
    let err = stderr(&server.kubectl_stdin(&["create", "-f", "-"], bad_name));
    assert!(err.starts_with("The ConfigMap \"Not_Valid\" is invalid: metadata.name: Invalid value: \"Not_Valid\": a lowercase RFC 1123 subdomain"), "{err}");
    assert_eq!(
        kubectl_err(&server, &["get", "pods", "-l", "a in ("]).trim(),
        "Error from server (BadRequest): Unable to find \"/v1, Resource=pods\" that match label selector \"a in (\", field selector \"\": unable to parse requirement: a in (: expected a parenthesised set"
    );
    let kubeconfig = std::fs::read_to_string(server.kubeconfig()).unwrap();
    let token_line =
        kubeconfig.lines().find(|l| l.trim_start().starts_with("token:")).expect("a token in the kubeconfig");
    let wrong = kubeconfig.replace(token_line, "    token: not-the-token");
    let wrong_path = server.dir().join("wrong-token.yaml");
    std::fs::write(&wrong_path, wrong).unwrap();
    let out = server.kubectl_command(&["get", "pods"]).arg("--kubeconfig").arg(&wrong_path).output().unwrap();
    assert_eq!(stderr(&out).trim(), "error: You must be logged in to the server (Unauthorized)");

    server.kubectl_ok(&["delete", "namespace", "team", "--wait=true", "--timeout=60s"]);
    server.finish();
}

fn owned_by(object: &Value, uid: &str) -> bool {
    object["metadata"]["ownerReferences"].as_array().into_iter().flatten().any(|r| r["uid"] == uid)
}

#[test]
fn delete_cascades_in_the_background_the_foreground_or_orphans_and_waits() {
    let server = TestServer::start();
    let rs_and_pods = |app: &str| {
        let sets =
            json(&server, &["get", "replicasets", "-l", &format!("app={app}")])["items"].as_array().unwrap().len();
        let pods = json(&server, &["get", "pods", "-l", &format!("app={app}")])["items"].as_array().unwrap().len();
        (sets, pods)
    };
    for app in ["bg", "fg", "or"] {
        server.apply_with(&[], &unschedulable_deployment(app, 2));
    }
    for app in ["bg", "fg", "or"] {
        server.wait_for(&format!("deployment {app}'s ReplicaSet and 2 pods"), TIMEOUT, || {
            (rs_and_pods(app) == (1, 2)).then_some(())
        });
    }

    // Background (kubectl's default): the owner goes now, the collector takes the rest after.
    let out = server.kubectl_ok(&["delete", "deployment", "bg", "--cascade=background", "--wait"]);
    assert_eq!(out.trim(), "deployment.apps \"bg\" deleted");
    server
        .wait_for("bg's ReplicaSet and pods to be collected", TIMEOUT, || (rs_and_pods("bg") == (0, 0)).then_some(()));

    // Foreground: by the time kubectl's --wait ends, the dependents are gone already.
    let out = server.kubectl_ok(&["delete", "deployment", "fg", "--cascade=foreground", "--wait", "--timeout=60s"]);
    assert_eq!(out.trim(), "deployment.apps \"fg\" deleted");
    assert_eq!(rs_and_pods("fg"), (0, 0), "foreground deletion ended with dependents left");

    // Foreground, held: a blocking dependent with a finalizer of its own keeps the owner, marked
    // for deletion under `foregroundDeletion`, until the dependent goes.
    server.apply_with(&[], &unschedulable_deployment("held", 0));
    let held = json(&server, &["get", "deployment", "held"]);
    let uid = held["metadata"]["uid"].as_str().unwrap().to_string();
    let blocker = format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: blocker
  finalizers: [skiff.test/hold]
  ownerReferences:
  - {{apiVersion: apps/v1, kind: Deployment, name: held, uid: {uid}, blockOwnerDeletion: true}}
"#
    );
    server.apply_with(&[], &blocker);
    server.kubectl_ok(&["delete", "deployment", "held", "--cascade=foreground", "--wait=false"]);
    let marked = json(&server, &["get", "deployment", "held"]);
    assert!(marked["metadata"]["deletionTimestamp"].is_string(), "{marked}");
    assert_eq!(marked["metadata"]["finalizers"], serde_json::json!(["foregroundDeletion"]), "{marked}");
    server.wait_for("the collector to delete the blocking configmap", TIMEOUT, || {
        json(&server, &["get", "configmap", "blocker"])["metadata"]["deletionTimestamp"].is_string().then_some(())
    });
    assert!(server.kubectl(&["get", "deployment", "held"]).status.success(), "the owner went before its blocker");
    server.kubectl_ok(&[
        "patch",
        "configmap",
        "blocker",
        "--type",
        "merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    server.kubectl_ok(&["wait", "--for=delete", "deployment/held", "--timeout=60s"]);

    // Orphan: the owner goes, its ReplicaSet stays without the owner reference, pods untouched.
    let owner_uid = json(&server, &["get", "deployment", "or"])["metadata"]["uid"].as_str().unwrap().to_string();
    let out = server.kubectl_ok(&["delete", "deployment", "or", "--cascade=orphan"]);
    assert_eq!(out.trim(), "deployment.apps \"or\" deleted");
    let err = kubectl_err(&server, &["get", "deployment", "or"]);
    assert_eq!(err.trim(), "Error from server (NotFound): deployments.apps \"or\" not found");
    // Give the collector time to (wrongly) act before looking.
    std::thread::sleep(Duration::from_secs(3));
    let sets = json(&server, &["get", "replicasets", "-l", "app=or"]);
    let sets = sets["items"].as_array().unwrap();
    assert_eq!(sets.len(), 1, "the orphaned ReplicaSet was deleted");
    assert!(!owned_by(&sets[0], &owner_uid), "the orphan still names its deleted owner: {}", sets[0]);
    assert_eq!(rs_and_pods("or"), (1, 2));

    // Deleting the orphan itself (background) takes its pods.
    server.kubectl_ok(&["delete", "replicasets", "-l", "app=or", "--wait"]);
    server.wait_for("the orphan's pods to be collected", TIMEOUT, || (rs_and_pods("or") == (0, 0)).then_some(()));
    server.finish();
}
