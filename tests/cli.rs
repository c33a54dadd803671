//! The `skiff` binary's own behaviour: start-up checks that fail clearly before anything is
//! written, `version`, and a clean stop on SIGTERM.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

use common::TestServer;

fn skiff(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_skiff"));
    cmd.args(args);
    cmd
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn version_names_skiff_and_the_kubernetes_api() {
    let out = skiff(&["version"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with(&format!("Skiff: v{}\n", env!("CARGO_PKG_VERSION"))), "{text}");
    assert!(text.contains("Kubernetes API: v1."), "{text}");
}

#[test]
fn server_refuses_a_busy_port_and_writes_nothing() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");

    let out =
        skiff(&["server", "--https-listen-port", &port, "--node-name", "busy", "--cgroup-root", "skiff-test-busy"])
            .arg("--data-dir")
            .arg(&data_dir)
            .output()
            .unwrap();
    assert!(!out.status.success(), "skiff server started on a busy port");
    assert!(
        stderr(&out).contains(&format!("error: port {port} on 127.0.0.1 is already in use")),
        "stderr: {}",
        stderr(&out)
    );
    assert!(!data_dir.exists(), "nothing is written before the checks pass");
}

#[test]
fn server_refuses_to_run_without_root() {
    let dir = tempfile::tempdir().unwrap();
    let out = skiff(&["server", "--node-name", "nobody", "--https-listen-port", "0"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("error: skiff server must run as root"), "stderr: {}", stderr(&out));
}

#[test]
fn bad_flags_are_refused_before_start() {
    let out = skiff(&["server", "--cluster-cidr", "10.43.0.0/16", "--service-cidr", "10.43.0.0/16"]).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("overlaps"), "stderr: {}", stderr(&out));

    let out = skiff(&["server", "--service-cidr", "10.43.0.1/16"]).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("host bits"), "stderr: {}", stderr(&out));
}

#[test]
fn server_writes_a_kubeconfig_reuses_its_token_and_stops_cleanly_on_sigterm() {
    use std::os::unix::fs::PermissionsExt;

    let mut server = TestServer::start();
    let kubeconfig = std::fs::read_to_string(server.kubeconfig()).unwrap();
    assert!(kubeconfig.contains(&format!("server: https://127.0.0.1:{}\n", server.port())), "{kubeconfig}");
    let mode = std::fs::metadata(server.kubeconfig()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let token_mode = std::fs::metadata(server.data_dir().join("token")).unwrap().permissions().mode() & 0o777;
    assert_eq!(token_mode, 0o600);

    // `kubectl get --raw` proves TLS with the CA of the kubeconfig and the bearer token both work.
    assert_eq!(server.kubectl_ok(&["get", "--raw", "/readyz"]).trim(), "ok");
    let version = server.kubectl_ok(&["version", "-o", "json"]);
    assert!(version.contains("\"serverVersion\""), "{version}");

    server.restart();
    let again = std::fs::read_to_string(server.kubeconfig()).unwrap();
    assert_eq!(again, kubeconfig, "a restart reuses the CA and the token");
    server.finish();
}

#[test]
fn flags_can_come_from_skiff_environment_variables() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = skiff(&["server"])
        .env("SKIFF_HTTPS_LISTEN_PORT", &port)
        .env("SKIFF_DATA_DIR", dir.path().join("data"))
        .env("SKIFF_NODE_NAME", "env-node")
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains(&format!("error: port {port} on 127.0.0.1 is already in use")),
        "SKIFF_HTTPS_LISTEN_PORT was used; stderr: {}",
        stderr(&out)
    );

    let out = skiff(&["server"]).env("SKIFF_SERVICE_CIDR", "10.42.0.0/16").output().unwrap();
    assert!(stderr(&out).contains("overlaps --service-cidr 10.42.0.0/16"), "stderr: {}", stderr(&out));
}

#[test]
fn kubeconfig_goes_where_write_kubeconfig_says_with_its_mode() {
    use std::os::unix::fs::PermissionsExt;

    let elsewhere = tempfile::tempdir().unwrap();
    let path = elsewhere.path().join("admin.yaml");
    let path_arg = path.to_str().unwrap();
    let server = TestServer::start_with(&["--write-kubeconfig", path_arg, "--write-kubeconfig-mode", "0644"]);
    assert_eq!(server.kubeconfig(), path);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    assert!(!server.data_dir().join("kubeconfig.yaml").exists(), "only the asked-for kubeconfig is written");
    assert_eq!(server.kubectl_ok(&["get", "ns", "default", "-o", "name"]).trim(), "namespace/default");
    server.finish();
}

#[test]
fn a_second_server_on_the_same_data_dir_is_refused_and_the_first_keeps_serving() {
    let server = TestServer::start();
    let port = common::free_port().to_string();
    let out = skiff(&["server", "--https-listen-port", &port, "--node-name", "second"])
        .arg("--data-dir")
        .arg(server.data_dir())
        .args(["--cgroup-root", &format!("{}-second", server.cgroup_root())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let expected = format!("error: another skiff server is running on data dir {}", server.data_dir().display());
    assert!(stderr(&out).contains(&expected), "stderr: {}", stderr(&out));
    assert_eq!(server.kubectl_ok(&["get", "--raw", "/readyz"]).trim(), "ok");
    server.finish();
}
