//! A second, independent client: the official Python `kubernetes` package (from PyPI) lists,
//! creates, watches, patches and scales against a real `skiff server`, through
//! `tests/python/client.py`; kubectl then checks that what Python wrote is live.
//!
//! `scripts/test.sh` installs the package into a venv at `target/pyvenv`; `SKIFF_TEST_PYTHON`
//! names another interpreter that has it.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::TestServer;
use serde_json::{Value, json};

fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("SKIFF_TEST_PYTHON") {
        return PathBuf::from(python);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/pyvenv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: run scripts/test.sh (it makes the venv and installs the `kubernetes` package), \
         or set SKIFF_TEST_PYTHON to a python3 that has it",
        venv.display()
    );
    venv
}

/// Runs the script to its end (killing it, by PID, after a minute): one JSON object per check.
fn run_script(server: &TestServer) -> HashMap<String, Value> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/client.py");
    let child = Command::new(python())
        .arg(&script)
        .arg(server.kubeconfig())
        .env("HOME", server.dir().join("home"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting python");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    let out = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
            let out = rx.recv().unwrap().unwrap();
            panic!("the Python client hung; stdout: {}", String::from_utf8_lossy(&out.stdout));
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the Python client failed ({}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            (v["check"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

#[test]
fn the_python_kubernetes_client_lists_watches_and_patches() {
    let server = TestServer::start();
    let seen = run_script(&server);
    let get = |check: &str| seen.get(check).unwrap_or_else(|| panic!("the script never reported {check}: {seen:?}"));

    assert_eq!((get("version")["major"].as_str(), get("version")["minor"].as_str()), (Some("1"), Some("33")));
    let names = &get("namespaces")["names"];
    for ns in ["default", "kube-node-lease", "kube-public", "kube-system"] {
        assert!(names.as_array().unwrap().iter().any(|n| n == ns), "no {ns} in {names}");
    }
    assert_eq!(get("created")["data"], json!({"k": "v"}));
    assert_eq!(get("listed")["names"], json!(["first"]));
    // The watch began at the list's resourceVersion: "first" is history, "arrived" is news.
    assert_eq!(get("watched")["events"], json!([["ADDED", "arrived"]]));
    assert_eq!(get("watched")["data"], json!({"n": "1"}));
    assert_eq!(get("merge-patched")["data"], json!({"k": "merged", "extra": "1"}));
    assert_eq!(get("json-patched")["data"], json!({"k": "merged"}));
    assert_eq!(get("strategic-patched")["images"], json!(["example.invalid/a:2"]));
    assert_eq!(get("strategic-patched")["generation"], 2);
    assert_eq!(get("scale")["selector"], "app=web");
    assert_eq!(get("not-found")["status"], 404);
    assert_eq!(get("not-found")["reason"], "NotFound");
    assert_eq!(get("not-found")["message"], "configmaps \"nope\" not found");
    assert_eq!(
        (get("already-exists")["status"].as_u64(), get("already-exists")["reason"].as_str()),
        (Some(409), Some("AlreadyExists"))
    );

    // What Python wrote, as kubectl sees it.
    assert_eq!(
        server.kubectl_ok(&["get", "configmap", "first", "-n", "py", "-o", "jsonpath={.data}"]),
        r#"{"k":"merged"}"#
    );
    assert_eq!(
        server.kubectl_ok(&["get", "configmaps", "-n", "py", "-l", "from=python", "-o", "name"]),
        "configmap/first\n"
    );
    assert_eq!(
        server.kubectl_ok(&[
            "get",
            "deployment",
            "web",
            "-n",
            "py",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}"
        ]),
        "example.invalid/a:2"
    );
    server.kubectl_ok(&["delete", "namespace", "py", "--timeout=60s"]);
    server.finish();
}
