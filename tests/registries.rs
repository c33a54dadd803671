//! `<data dir>/registries.yaml` through a real pod: a registry name that does not resolve
//! (`example.invalid`) is served by its mirror on loopback, with the mirror's credentials from
//! the file, so the pod needs no imagePullSecret and nothing leaves the machine. A file Skiff
//! cannot honour stops the server at start, naming the file.

mod common;

use std::fs;
use std::time::Duration;

use common::{TestImages, TestServer};

const RUN_TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn a_registries_yaml_mirror_with_credentials_serves_a_pod_of_an_unresolvable_registry() {
    let mut server = TestServer::start();
    let images = TestImages::start_with_auth("mirror-user", "mirror-pass");
    let registries = server.data_dir().join("registries.yaml");

    server.stop();
    fs::write(&registries, "mirrors:\n  example.invalid:\n    endpoint: [\"ftp://127.0.0.1:1\"]\n").unwrap();
    let refused = server.server_command().output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "a server with an unusable registries.yaml started");
    assert!(
        stderr.contains(&registries.display().to_string()) && stderr.contains("unsupported scheme"),
        "the error names the file and the problem: {stderr}"
    );

    fs::write(
        &registries,
        format!(
            "mirrors:\n  example.invalid:\n    endpoint:\n      - http://{addr}\nconfigs:\n  \"{addr}\":\n    auth:\n      \
             username: mirror-user\n      password: mirror-pass\n",
            addr = images.registry_addr()
        ),
    )
    .unwrap();
    server.restart();

    server.apply(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: mirrored\nspec:\n  terminationGracePeriodSeconds: 5\n  \
         containers:\n  - name: main\n    image: example.invalid/busybox:1.36\n    command: [\"sh\", \"-c\", \"cat \
         /etc/skiff/layer2; trap 'exit 0' TERM; while true; do sleep 1; done\"]\n",
    );
    server.wait_for("the mirrored pod to run", RUN_TIMEOUT, || {
        let pod = server.get_json("pod", "mirrored");
        let status = &pod["status"]["containerStatuses"][0];
        if status["state"]["waiting"]["reason"] == "ErrImagePull"
            || status["state"]["waiting"]["reason"] == "ImagePullBackOff"
        {
            panic!("the pull through the mirror failed: {status}\nevents: {:?}", server.events_about("mirrored"));
        }
        status["state"]["running"].is_object().then_some(())
    });
    let pod = server.get_json("pod", "mirrored");
    let status = &pod["status"]["containerStatuses"][0];
    assert_eq!(status["image"], "example.invalid/busybox:1.36");
    let image_id = status["imageID"].as_str().unwrap_or_default();
    assert!(image_id.starts_with("example.invalid/busybox@sha256:"), "imageID under the name asked for: {image_id}");
    server.wait_for("the container's output", RUN_TIMEOUT, || {
        (server.kubectl_ok(&["logs", "mirrored"]) == "layer 2\n").then_some(())
    });
    let pulled = server.events_about("mirrored").into_iter().any(|e| e["reason"] == "Pulled");
    assert!(pulled, "a Pulled event: {:?}", server.events_about("mirrored"));

    server.kubectl_ok(&["delete", "pod", "mirrored", "--wait=true", "--timeout=60s"]);
    drop(images);
    server.finish();
}
