//! Images without a registry: `skiff image import` of a `docker save` tarball and of an OCI
//! layout tarball into a running node, `skiff images`, pods that run from the imported image
//! with imagePullPolicy Never, `skiff image rm` refused while a pod's container uses the image,
//! `skiff image prune`, and archives in `<data-dir>/images/` imported at start, once.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::TestServer;
use skiff_runtime::testing::{Entry, OciImage, build_busybox_image, build_image};

const RUN_TIMEOUT: Duration = Duration::from_secs(90);

fn skiff(server: &TestServer, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(args)
        .arg("--data-dir")
        .arg(server.data_dir())
        .env_remove("SKIFF_DATA_DIR")
        .output()
        .expect("running skiff")
}

fn skiff_ok(server: &TestServer, args: &[&str]) -> String {
    let out = skiff(server, args);
    assert!(
        out.status.success(),
        "skiff {} failed ({}):\nstdout: {}\nstderr: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The `skiff images` rows as (REPOSITORY, TAG, IMAGE ID); SIZE is checked to be there.
fn image_rows(server: &TestServer) -> Vec<(String, String, String)> {
    let table = skiff_ok(server, &["images"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split("  ").map(str::trim).filter(|c| !c.is_empty()).collect();
    assert_eq!(header, ["REPOSITORY", "TAG", "IMAGE ID", "SIZE"], "{table}");
    lines
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(cols.len(), 4, "{table}");
            assert!(cols[3].ends_with('B'), "a size in the last column: {table}");
            (cols[0].to_string(), cols[1].to_string(), cols[2].to_string())
        })
        .collect()
}

fn short_id(image: &OciImage) -> String {
    image.config.digest.trim_start_matches("sha256:")[..12].to_string()
}

fn pod(name: &str, image: &str, command: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {image}
    imagePullPolicy: Never
    command: ["sh", "-c", "{command}"]
"#
    )
}

fn wait_phase(server: &TestServer, name: &str, phase: &str) {
    server.wait_for(&format!("pod {name} to be {phase}"), RUN_TIMEOUT, || {
        let pod = server.get_json("pod", name);
        (pod["status"]["phase"] == phase).then_some(())
    });
}

/// A second, unrelated image: one layer with `/other`.
fn other_image(dir: &Path) -> OciImage {
    build_image(
        dir,
        vec![vec![Entry::File("other".into(), b"other image\n".to_vec(), 0o644)]],
        serde_json::json!({"Cmd": ["/other"]}),
    )
    .unwrap()
}

#[test]
fn an_imported_docker_save_tarball_runs_and_rm_and_prune_keep_images_in_use() {
    let server = TestServer::start();
    let work = tempfile::Builder::new().prefix("skiff-test-images-").tempdir_in("/tmp").unwrap();
    let busybox = build_busybox_image(&work.path().join("busybox")).unwrap();
    let saved = work.path().join("busybox-saved.tar");
    busybox.write_docker_save(&["busybox:imported"], &saved).unwrap();
    let layout = work.path().join("busybox-oci.tar.gz");
    busybox.write_oci_archive("skiff.test/busybox:oci", true, &layout).unwrap();

    assert_eq!(image_rows(&server), [], "a new node has no images");
    let out = skiff_ok(&server, &["image", "import", saved.to_str().unwrap()]);
    assert_eq!(out, "Loaded image: busybox:imported\n");
    let out = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["image", "import", "-", "--data-dir"])
        .arg(server.data_dir())
        .stdin(std::fs::File::open(&layout).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "import from stdin: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Loaded image: skiff.test/busybox:oci\n");
    let id = short_id(&busybox);
    assert_eq!(
        image_rows(&server),
        [
            ("busybox".to_string(), "imported".to_string(), id.clone()),
            ("skiff.test/busybox".to_string(), "oci".to_string(), id.clone()),
        ],
        "one image (the same config) under both names"
    );
    let out = skiff_ok(&server, &["image", "rm", "skiff.test/busybox:oci"]);
    assert_eq!(out, "Untagged: skiff.test/busybox:oci\n", "its other name keeps the image");
    assert_eq!(skiff_ok(&server, &["image", "tag", &id, "mine:v1"]), "");
    assert!(image_rows(&server).contains(&("mine".to_string(), "v1".to_string(), id.clone())));
    assert_eq!(skiff_ok(&server, &["image", "rm", "mine:v1"]), "Untagged: mine:v1\n");

    // Must-show: import a `docker save` tarball and run from it, with no registry anywhere.
    server.apply(&pod(
        "from-archive",
        "busybox:imported",
        "echo hello from the archive; cat /etc/skiff/layer2; exec sleep 3600",
    ));
    wait_phase(&server, "from-archive", "Running");
    server.wait_for("the pod's log", RUN_TIMEOUT, || {
        (server.kubectl_ok(&["logs", "from-archive"]) == "hello from the archive\nlayer 2\n").then_some(())
    });
    let pulled = server.events_about("from-archive").into_iter().any(|e| {
        e["reason"] == "Pulled" && e["message"].as_str().unwrap_or_default().contains("already present on machine")
    });
    assert!(pulled, "the kubelet found the image on the node");

    // The pod's container runs on the image: removing it is refused, by name and by ID.
    let out = skiff(&server, &["image", "rm", "busybox:imported"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "rm of an image in use succeeded");
    assert!(
        stderr.contains(r#"unable to remove repository reference "busybox:imported""#)
            && stderr.contains("running container")
            && stderr.contains("(main in pod sandbox"),
        "{stderr}"
    );
    let out = skiff(&server, &["image", "rm", &id]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("image is being used by"), "{out:?}");
    assert_eq!(image_rows(&server).len(), 1, "nothing was removed");

    server.kubectl_ok(&["delete", "pod", "from-archive", "--wait=true", "--grace-period=1"]);
    // The kubelet removes the pod's containers as the pod goes; the image is free once they are.
    let out = server.wait_for("the image to be removable", RUN_TIMEOUT, || {
        let out = skiff(&server, &["image", "rm", "busybox:imported"]);
        out.status.success().then(|| String::from_utf8(out.stdout).unwrap())
    });
    assert_eq!(out, format!("Untagged: busybox:imported\nDeleted: {}\n", busybox.config.digest));
    assert_eq!(image_rows(&server), []);
    let layers = server.data_dir().join("runtime/images/layers");
    assert_eq!(std::fs::read_dir(&layers).unwrap().count(), 0, "the layers went with the image");
    let out = skiff(&server, &["image", "rm", "busybox:imported"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("No such image: busybox:imported"), "{out:?}");

    // Prune removes what no container uses and keeps what a running pod uses.
    let other = other_image(&work.path().join("other"));
    let other_saved = work.path().join("other.tar");
    other.write_docker_save(&["other:1"], &other_saved).unwrap();
    skiff_ok(&server, &["image", "import", saved.to_str().unwrap(), other_saved.to_str().unwrap()]);
    server.apply(&pod("sleeper", "busybox:imported", "echo up; sleep 3600"));
    wait_phase(&server, "sleeper", "Running");
    let out = skiff_ok(&server, &["image", "prune"]);
    assert!(
        out.starts_with(&format!(
            "Deleted Images:\nuntagged: other:1\ndeleted: {}\n\nTotal reclaimed space: ",
            other.config.digest
        )),
        "{out}"
    );
    assert!(!out.trim_end().ends_with(" 0B"), "the other image's layer was reclaimed: {out}");
    assert_eq!(image_rows(&server), [("busybox".to_string(), "imported".to_string(), id.clone())]);
    assert_eq!(skiff_ok(&server, &["image", "prune"]), "Total reclaimed space: 0B\n");

    server.kubectl_ok(&["delete", "pod", "sleeper", "--wait=true", "--grace-period=1"]);
    server.wait_for("prune to remove the image once its pod is gone", RUN_TIMEOUT, || {
        skiff_ok(&server, &["image", "prune"]);
        image_rows(&server).is_empty().then_some(())
    });
    server.finish();
}

#[test]
fn archives_in_the_images_folder_are_imported_at_start_and_only_once() {
    let mut server = TestServer::start();
    let work = tempfile::Builder::new().prefix("skiff-test-images-").tempdir_in("/tmp").unwrap();
    let busybox = build_busybox_image(&work.path().join("busybox")).unwrap();
    let folder = server.data_dir().join("images");
    // The API answers before the kubelet's start, which follows the import.
    server.wait_for("the server to make the folder for archives", RUN_TIMEOUT, || folder.is_dir().then_some(()));
    busybox.write_oci_archive("skiff.test/preloaded:1", false, &folder.join("preloaded.tar")).unwrap();
    busybox.write_docker_save(&["saved:1"], &folder.join("saved.tar")).unwrap();

    let imported = |log: &str, name: &str| {
        log.lines().filter(|l| l.contains("imported image archive") && l.contains(name)).count()
    };
    let unchanged = |log: &str| log.lines().filter(|l| l.contains("image archive unchanged since its import")).count();
    // The API answers before the import is done; the kubelet starts after it.
    server.restart();
    server.wait_for("both archives to be imported", RUN_TIMEOUT, || {
        let log = server.log();
        (imported(&log, "preloaded.tar") + imported(&log, "saved.tar") >= 2).then_some(())
    });
    let log = server.log();
    assert_eq!(imported(&log, "preloaded.tar"), 1, "{log}");
    assert_eq!(imported(&log, "saved.tar"), 1, "{log}");
    let id = short_id(&busybox);
    assert_eq!(
        image_rows(&server),
        [
            ("saved".to_string(), "1".to_string(), id.clone()),
            ("skiff.test/preloaded".to_string(), "1".to_string(), id.clone()),
        ]
    );
    server.apply(&pod("preloaded", "skiff.test/preloaded:1", "echo preloaded"));
    wait_phase(&server, "preloaded", "Succeeded");
    assert_eq!(server.kubectl_ok(&["logs", "preloaded"]), "preloaded\n");
    server.kubectl_ok(&["delete", "pod", "preloaded", "--wait=true"]);

    // A second start finds both archives unchanged: nothing is imported again.
    let state = server.data_dir().join("runtime/images/imported-archives.json");
    let recorded = std::fs::read_to_string(&state).unwrap();
    assert!(recorded.contains("preloaded.tar") && recorded.contains("saved.tar"), "{recorded}");
    server.restart();
    server
        .wait_for("both archives to be seen unchanged", RUN_TIMEOUT, || (unchanged(&server.log()) >= 2).then_some(()));
    let log = server.log();
    assert_eq!(imported(&log, "preloaded.tar"), 1, "imported again:\n{log}");
    assert_eq!(imported(&log, "saved.tar"), 1, "imported again:\n{log}");
    assert_eq!(unchanged(&log), 2, "{log}");
    assert_eq!(image_rows(&server).len(), 2);
    server.finish();
}
