//! Field ownership, dry runs and paged lists through the real kubectl: every write records its
//! field manager (client-side apply, scale, edit…), server-side apply conflicts with those
//! managers exactly as Kubernetes words it, `--dry-run=server` runs a write without keeping it,
//! and `--chunk-size` pages a list that stays one consistent snapshot.
//!
//! Pods and Deployments here never run: their pods name a node selector no node has.

mod common;

use common::{TestServer, unschedulable_deployment};
use serde_json::Value;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `kubectl apply -f - <args>` that must fail: its exit code and stderr.
fn apply_fails(server: &TestServer, args: &[&str], manifest: &str) -> (Option<i32>, String) {
    let mut all = vec!["apply", "-f", "-"];
    all.extend(args);
    let out = server.kubectl_stdin(&all, manifest);
    assert!(!out.status.success(), "kubectl {} succeeded but should not have: {}", all.join(" "), stdout(&out));
    (out.status.code(), stderr(&out))
}

fn get(server: &TestServer, kind: &str, name: &str) -> Value {
    let out = server.kubectl_ok(&["get", kind, name, "-o", "json", "--show-managed-fields"]);
    serde_json::from_str(&out).expect("kubectl -o json prints JSON")
}

/// The managedFields entry of `manager` with `operation`.
fn entry<'a>(object: &'a Value, manager: &str, operation: &str) -> Option<&'a Value> {
    object["metadata"]["managedFields"]
        .as_array()
        .and_then(|entries| entries.iter().find(|e| e["manager"] == manager && e["operation"] == operation))
}

#[test]
fn every_write_records_its_manager_and_server_side_apply_conflicts_with_it() {
    let server = TestServer::start();

    // Client-side apply creates as `kubectl-client-side-apply` (an Update), defaults included.
    assert_eq!(server.apply_with(&[], &unschedulable_deployment("web", 2)).trim(), "deployment.apps/web created");
    let live = get(&server, "deployment", "web");
    let csa = entry(&live, "kubectl-client-side-apply", "Update").unwrap_or_else(|| panic!("no CSA entry: {live}"));
    assert_eq!(csa["apiVersion"], "apps/v1");
    assert_eq!(csa["fieldsType"], "FieldsV1");
    let fields = &csa["fieldsV1"];
    assert_eq!(fields["f:spec"]["f:replicas"], serde_json::json!({}), "{csa}");
    assert_eq!(fields["f:spec"]["f:progressDeadlineSeconds"], serde_json::json!({}), "{csa}");
    assert!(
        fields["f:metadata"]["f:annotations"].get("f:kubectl.kubernetes.io/last-applied-configuration").is_some(),
        "{csa}"
    );
    assert!(fields["f:spec"]["f:template"]["f:spec"]["f:containers"].get("k:{\"name\":\"app\"}").is_some(), "{csa}");

    // Another applier changing replicas: the conflict as Kubernetes words it, exit code 1.
    let (code, err) =
        apply_fails(&server, &["--server-side", "--field-manager=ci"], &unschedulable_deployment("web", 3));
    assert_eq!(code, Some(1));
    assert!(
        err.starts_with(
            "error: Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using apps/v1: .spec.replicas"
        ),
        "{err}"
    );
    assert!(err.contains("--force-conflicts"), "{err}");
    assert_eq!(get(&server, "deployment", "web")["spec"]["replicas"], 2);

    // --force-conflicts takes replicas over.
    let out = server
        .apply_with(&["--server-side", "--field-manager=ci", "--force-conflicts"], &unschedulable_deployment("web", 3));
    assert_eq!(out.trim(), "deployment.apps/web serverside-applied");
    let live = get(&server, "deployment", "web");
    assert_eq!(live["spec"]["replicas"], 3);
    assert_eq!(entry(&live, "ci", "Apply").unwrap()["fieldsV1"]["f:spec"]["f:replicas"], serde_json::json!({}));
    // kubectl itself then folds the client-side apply entry into the applier's (its
    // `csaupgrade`: a JSON patch of managedFields the server takes as given) and applies once
    // more, which leaves the applier owning just its configuration.
    assert!(entry(&live, "kubectl-client-side-apply", "Update").is_none(), "{live}");
    assert_eq!(live["spec"]["progressDeadlineSeconds"], 600, "defaults are back: {live}");

    // `kubectl scale` writes through the scale subresource as `kubectl` (from its User-Agent).
    assert_eq!(server.kubectl_ok(&["scale", "deployment/web", "--replicas=4"]).trim(), "deployment.apps/web scaled");
    let live = get(&server, "deployment", "web");
    let scaler = entry(&live, "kubectl", "Update").unwrap_or_else(|| panic!("no scale entry: {live}"));
    assert_eq!(scaler["subresource"], "scale");
    assert_eq!(scaler["fieldsV1"], serde_json::json!({"f:spec": {"f:replicas": {}}}));
    let ci = entry(&live, "ci", "Apply").unwrap_or_else(|| panic!("no ci entry: {live}"));
    assert!(ci["fieldsV1"]["f:spec"].get("f:replicas").is_none(), "{live}");
    let (_, err) = apply_fails(&server, &["--server-side", "--field-manager=ci"], &unschedulable_deployment("web", 5));
    assert!(
        err.starts_with(
            "error: Apply failed with 1 conflict: conflict with \"kubectl\" with subresource \"scale\" using apps/v1: .spec.replicas"
        ),
        "{err}"
    );

    // `-o yaml --show-managed-fields` shows the entries; without the flag kubectl hides them.
    let yaml = server.kubectl_ok(&["get", "deployment", "web", "-o", "yaml", "--show-managed-fields"]);
    for want in ["manager: ci", "operation: Apply", "manager: kubectl", "operation: Update", "subresource: scale"] {
        assert!(yaml.contains(want), "{want} missing from:\n{yaml}");
    }
    assert!(!server.kubectl_ok(&["get", "deployment", "web", "-o", "yaml"]).contains("managedFields"));

    // The upgrade from client-side apply: the default manager `kubectl` takes over what is
    // still as the last client-side apply left it, without a conflict.
    let config = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  mode: a\n";
    assert_eq!(server.apply_with(&[], config).trim(), "configmap/settings created");
    let changed = config.replace("mode: a", "mode: b");
    assert_eq!(server.apply_with(&["--server-side"], &changed).trim(), "configmap/settings serverside-applied");
    let live = get(&server, "configmap", "settings");
    assert_eq!(live["data"]["mode"], "b", "{live}");
    assert_eq!(entry(&live, "kubectl", "Apply").unwrap()["fieldsV1"], serde_json::json!({"f:data": {"f:mode": {}}}));
    // The annotation follows, so a later client-side apply diffs against what was applied.
    let last = live["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"].as_str().unwrap();
    assert!(last.contains("\"mode\":\"b\""), "{last}");

    // kubectl edit (its editor here a sed) takes the field it changes from the applier.
    let out = server
        .kubectl_command(&["edit", "configmap", "settings"])
        // kubectl runs an editor with arguments through a shell.
        .env("KUBE_EDITOR", "sed -i 's/mode: b/mode: c/'")
        .output()
        .unwrap();
    assert!(out.status.success(), "kubectl edit: {}{}", stdout(&out), stderr(&out));
    let live = get(&server, "configmap", "settings");
    assert_eq!(live["data"]["mode"], "c", "{live}");
    let edit = entry(&live, "kubectl-edit", "Update").unwrap_or_else(|| panic!("no kubectl-edit entry: {live}"));
    assert_eq!(edit["fieldsV1"], serde_json::json!({"f:data": {"f:mode": {}}}));
    assert!(entry(&live, "kubectl", "Apply").is_none_or(|e| e["fieldsV1"]["f:data"].get("f:mode").is_none()), "{live}");

    // Ports are keyed by port and protocol, as server-side apply keys them.
    let service = |target: u16| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: front\nspec:\n  selector: {{app: web}}\n  ports:\n  - port: 80\n    targetPort: {target}\n"
        )
    };
    server.apply_with(&["--server-side", "--field-manager=a"], &service(8080));
    let (_, err) = apply_fails(&server, &["--server-side", "--field-manager=b"], &service(9090));
    assert!(
        err.starts_with(
            "error: Apply failed with 1 conflict: conflict with \"a\": .spec.ports[port=80,protocol=\"TCP\"].targetPort"
        ),
        "{err}"
    );

    server.kubectl_ok(&["delete", "deployment", "web"]);
    server.finish();
}

#[test]
fn server_dry_runs_check_and_answer_but_change_nothing() {
    let server = TestServer::start();
    let rv =
        |kind: &str, name: &str| get(&server, kind, name)["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    let not_found = |kind: &str, name: &str| {
        let out = server.kubectl(&["get", kind, name]);
        !out.status.success() && stderr(&out).contains("NotFound")
    };

    // create --dry-run=server answers the object the server would have made, and keeps nothing.
    let out =
        server.kubectl_ok(&["create", "configmap", "probe", "--from-literal=a=1", "--dry-run=server", "-o", "json"]);
    let would_be: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(would_be["data"]["a"], "1");
    assert!(would_be["metadata"]["uid"].is_string(), "{would_be}");
    assert!(not_found("configmap", "probe"));

    assert_eq!(
        server.apply_with(&["--dry-run=server"], &unschedulable_deployment("web", 2)).trim(),
        "deployment.apps/web created (server dry run)"
    );
    assert!(not_found("deployment", "web"));
    // Validation runs as for a real write.
    let (_, err) = apply_fails(
        &server,
        &["--dry-run=server"],
        &unschedulable_deployment("web", 2).replace("replicas: 2", "replicas: -1"),
    );
    assert!(err.contains("spec.replicas: Invalid value: -1"), "{err}");

    server.apply_with(&[], &unschedulable_deployment("web", 2));
    // The Deployment's controller writes its status meanwhile: its generation tells whether the
    // spec was written.
    let generation = |server: &TestServer| get(server, "deployment", "web")["metadata"]["generation"].clone();
    let before = generation(&server);
    assert_eq!(
        server.apply_with(&["--dry-run=server"], &unschedulable_deployment("web", 5)).trim(),
        "deployment.apps/web configured (server dry run)"
    );
    assert_eq!(
        server
            .apply_with(
                &["--server-side", "--force-conflicts", "--dry-run=server"],
                &unschedulable_deployment("web", 6)
            )
            .trim(),
        "deployment.apps/web serverside-applied (server dry run)"
    );
    // kubectl diff is a dry-run patch: it shows the change and exits 1, changing nothing.
    for extra in [None, Some("--server-side")] {
        let mut args = vec!["diff", "-f", "-"];
        args.extend(extra);
        let out = server.kubectl_stdin(&args, &unschedulable_deployment("web", 7));
        assert_eq!(out.status.code(), Some(1), "kubectl {}: {}{}", args.join(" "), stdout(&out), stderr(&out));
        let diff = stdout(&out);
        assert!(diff.contains("-  replicas: 2") && diff.contains("+  replicas: 7"), "{diff}");
    }
    let out = server.kubectl_stdin(&["diff", "-f", "-"], &unschedulable_deployment("web", 2));
    assert_eq!(out.status.code(), Some(0), "no difference: {}{}", stdout(&out), stderr(&out));
    let out = server.kubectl_ok(&["delete", "deployment", "web", "--dry-run=server"]);
    assert_eq!(out.trim(), "deployment.apps \"web\" deleted (server dry run)");
    let live = get(&server, "deployment", "web");
    assert_eq!(live["spec"]["replicas"], 2);
    assert_eq!(generation(&server), before);

    // Nothing writes a ConfigMap behind the test's back: its resourceVersion stays.
    let config =
        |mode: &str| format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  mode: {mode}\n");
    server.apply_with(&[], &config("a"));
    let before = rv("configmap", "settings");
    assert_eq!(
        server.apply_with(&["--dry-run=server"], &config("b")).trim(),
        "configmap/settings configured (server dry run)"
    );
    let out = server.apply_with(&["--server-side", "--force-conflicts", "--dry-run=server"], &config("c"));
    assert_eq!(out.trim(), "configmap/settings serverside-applied (server dry run)");
    let out = server.kubectl_ok(&["delete", "configmap", "settings", "--dry-run=server"]);
    assert_eq!(out.trim(), "configmap \"settings\" deleted (server dry run)");
    let live = get(&server, "configmap", "settings");
    assert_eq!(live["data"]["mode"], "a");
    assert_eq!(rv("configmap", "settings"), before);

    server.kubectl_ok(&["delete", "deployment", "web"]);
    server.finish();
}

#[test]
fn chunked_lists_return_everything_as_one_snapshot() {
    let server = TestServer::start();
    let mut manifest = String::new();
    for i in 0..5 {
        manifest.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p{i}\nspec:\n  nodeSelector: {{skiff.test/none: \"true\"}}\n  containers:\n  - name: app\n    image: example.invalid/app:1\n"
        ));
    }
    server.apply_with(&[], &manifest);

    let names = server.kubectl_ok(&["get", "pods", "--chunk-size=2", "-o", "name"]);
    assert_eq!(names.lines().collect::<Vec<_>>(), ["pod/p0", "pod/p1", "pod/p2", "pod/p3", "pod/p4"]);
    let table = server.kubectl_ok(&["get", "pods", "--chunk-size=2"]);
    assert_eq!(table.lines().filter(|l| l.starts_with('p')).count(), 5, "{table}");

    // A change between pages does not show: the second page is read at the first one's
    // resourceVersion.
    let raw = |query: &str| -> Value {
        let out = server.kubectl_ok(&["get", "--raw", &format!("/api/v1/namespaces/default/pods?{query}")]);
        serde_json::from_str(&out).unwrap()
    };
    let first = raw("limit=2");
    let token = first["metadata"]["continue"].as_str().expect("a continue token").to_string();
    server.kubectl_ok(&["delete", "pod", "p3"]);
    let second = raw(&format!("limit=2&continue={token}"));
    assert_eq!(second["metadata"]["resourceVersion"], first["metadata"]["resourceVersion"]);
    let page: Vec<&str> =
        second["items"].as_array().unwrap().iter().map(|p| p["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!(page, ["p2", "p3"]);
    let now: Vec<String> =
        server.kubectl_ok(&["get", "pods", "--chunk-size=2", "-o", "name"]).lines().map(String::from).collect();
    assert_eq!(now, ["pod/p0", "pod/p1", "pod/p2", "pod/p4"]);

    server.kubectl_ok(&["delete", "pods", "--all"]);
    server.finish();
}

#[test]
fn large_lists_reach_kubectl_gzipped() {
    let server = TestServer::start();
    let file = server.dir().join("big.txt");
    // Text that compresses, 200 KiB: over Kubernetes' 128 KiB gzip threshold.
    std::fs::write(&file, "skiff ".repeat(200 * 1024 / 6)).unwrap();
    let from_file = format!("--from-file=big.txt={}", file.display());
    server.kubectl_ok(&["create", "configmap", "big", &from_file]);

    let out = server.kubectl(&["get", "configmaps", "-o", "json", "-v=8"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list: Value = serde_json::from_slice(&out.stdout).expect("kubectl decoded the gzipped list");
    let big = list["items"].as_array().unwrap().iter().find(|c| c["metadata"]["name"] == "big").expect("big listed");
    assert_eq!(big["data"]["big.txt"].as_str().unwrap().len(), 200 * 1024 / 6 * 6);
    // Go's client decompresses by itself and hides Content-Encoding; ask with curl as well.
    let headers = |path: &str, accept: &str| {
        let out = std::process::Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "-D", "-", "-H"])
            .arg(format!("Authorization: Bearer {}", server.kubeconfig_field("token")))
            .args(["-H", &format!("Accept-Encoding: {accept}")])
            .arg(format!("https://127.0.0.1:{}{path}", server.port()))
            .output()
            .expect("running curl");
        String::from_utf8_lossy(&out.stdout).to_ascii_lowercase()
    };
    let list = "/api/v1/namespaces/default/configmaps";
    assert!(headers(list, "gzip").contains("content-encoding: gzip"), "{}", headers(list, "gzip"));
    assert!(!headers(list, "identity").contains("content-encoding"));
    // Small replies stay plain.
    server.kubectl_ok(&["create", "configmap", "small", "--from-literal=a=1"]);
    let small = "/api/v1/namespaces/default/configmaps/small";
    assert!(headers(small, "gzip").starts_with("http/1.1 200"), "{}", headers(small, "gzip"));
    assert!(!headers(small, "gzip").contains("content-encoding"), "{}", headers(small, "gzip"));

    server.finish();
}
