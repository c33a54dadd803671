//! Images without a registry: `skiff image import` of a `docker save` tarball and of an OCI
//! layout tarball into a running node, `skiff images`, pods that run from the imported image
//! with imagePullPolicy Never, `skiff image rm` refused while a pod's container uses the image,
//! `skiff image prune`, and archives in `<data-dir>/images/` imported at start, once. And
//! `skiff image pull` (`skiff pull`) from a registry on loopback beside the running server: its
//! per-layer lines as Docker prints them without a terminal, up-to-date and missing images, and
//! the credentials of `registries.yaml` or `--username/--password-stdin` for a registry that
//! wants them.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::TestServer;
use skiff_runtime::testing::{Entry, LocalRegistry, OciImage, build_busybox_image, build_image, push};

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

/// Pushes `image` to `registry` as `name_tag`; returns `127.0.0.1:PORT/name_tag`.
fn push_to(registry: &LocalRegistry, name_tag: &str, image: &OciImage) -> String {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(push(registry, name_tag, image))
        .expect("pushing a test image")
}

/// Docker's layer ID: the first 12 hex digits of the layer's blob digest.
fn layer_id(digest: &str) -> &str {
    &digest.trim_start_matches("sha256:")[..12]
}

#[test]
fn a_pull_prints_each_layer_as_docker_does_and_lands_in_the_store_the_kubelet_uses() {
    let server = TestServer::start();
    let registry = LocalRegistry::start().expect("starting docker-registry on loopback");
    let work = tempfile::Builder::new().prefix("skiff-test-pull-").tempdir_in("/tmp").unwrap();
    let busybox = build_busybox_image(&work.path().join("busybox")).unwrap();
    assert!(busybox.layers.len() >= 2, "a multi-layer image");
    let reference = push_to(&registry, "busybox:1.36", &busybox);

    // Standard output is a pipe here: plain lines at state changes, never a redraw.
    let out = skiff_ok(&server, &["image", "pull", &reference]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "1.36: Pulling from busybox", "{out}");
    for layer in &busybox.layers {
        let id = layer_id(&layer.digest);
        let of_layer: Vec<&str> = lines.iter().filter_map(|l| l.strip_prefix(&format!("{id}: "))).collect();
        assert_eq!(of_layer.first(), Some(&"Pulling fs layer"), "{out}");
        assert_eq!(of_layer.last(), Some(&"Pull complete"), "{out}");
        // The byte count is the layer's own size, once, when its download is whole.
        let sizes: Vec<&&str> = of_layer.iter().filter(|l| l.starts_with("Download complete")).collect();
        assert_eq!(sizes.len(), 1, "{out}");
        let size = layer.data.len() as f64;
        let shown = sizes[0].trim_start_matches("Download complete (").trim_end_matches(')');
        let (number, unit) = shown.split_at(shown.find(|c: char| c.is_ascii_alphabetic()).unwrap());
        let scale = match unit {
            "B" => 1.0,
            "kB" => 1e3,
            "MB" => 1e6,
            other => panic!("unit {other} in {out}"),
        };
        let shown_bytes: f64 = number.parse::<f64>().unwrap() * scale;
        assert!((shown_bytes - size).abs() <= size * 0.001 + 0.5, "{shown} for {size} bytes: {out}");
        assert!(of_layer.len() <= 6, "one line per state, no progress flood: {out}");
    }
    let tail = &lines[lines.len() - 3..];
    assert_eq!(
        tail,
        [
            format!("Digest: {}", busybox.manifest.digest).as_str(),
            &format!("Status: Downloaded newer image for {reference}"),
            &reference,
        ],
        "{out}"
    );
    let repository = reference.rsplit_once(':').unwrap().0.to_string();
    assert!(
        image_rows(&server).contains(&(repository.clone(), "1.36".into(), short_id(&busybox))),
        "{}",
        skiff_ok(&server, &["images"])
    );

    // Pulled beside the running server, into the store its kubelet uses.
    server.apply(&pod("pulled", &reference, "cat /etc/skiff/layer2"));
    wait_phase(&server, "pulled", "Succeeded");
    assert_eq!(server.kubectl_ok(&["logs", "pulled"]), "layer 2\n");

    // Again, with `skiff pull`: nothing to download, and Docker shows no layer lines then.
    let out = skiff_ok(&server, &["pull", &reference]);
    assert_eq!(
        out,
        format!(
            "1.36: Pulling from busybox\nDigest: {}\nStatus: Image is up to date for {reference}\n{reference}\n",
            busybox.manifest.digest
        )
    );
    // The same image under a new tag: every layer is there already, the tag is new.
    let again = push_to(&registry, "busybox:again", &busybox);
    let out = skiff_ok(&server, &["pull", &again]);
    for layer in &busybox.layers {
        assert!(out.contains(&format!("{}: Already exists\n", layer_id(&layer.digest))), "{out}");
    }
    assert!(!out.contains("Pull complete"), "{out}");
    assert!(out.contains(&format!("Status: Downloaded newer image for {again}\n")), "{out}");
    // By digest, as `docker pull name@sha256:…`, with only the reference printed (-q).
    let by_digest = format!("{repository}@{}", busybox.manifest.digest);
    assert_eq!(skiff_ok(&server, &["image", "pull", "-q", &by_digest]), format!("{by_digest}\n"));

    // A tag the registry lacks: the registry's words, a failure, and no image recorded.
    let missing = format!("{repository}:nope");
    let out = skiff(&server, &["image", "pull", &missing]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "pull of a missing tag succeeded: {out:?}");
    assert!(stderr.contains("not found") && stderr.contains("manifest unknown"), "{stderr}");
    assert!(!image_rows(&server).iter().any(|(_, tag, _)| tag == "nope"));
    let tmp = server.data_dir().join("runtime/images/tmp");
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "no download left behind");

    server.kubectl_ok(&["delete", "pod", "pulled", "--wait=true", "--grace-period=1"]);
    drop(registry);
    server.finish();
}

#[test]
fn a_pull_from_a_registry_with_basic_auth_uses_the_credentials_of_registries_yaml() {
    let server = TestServer::start();
    let registry = LocalRegistry::start_with_auth("pull-user", "pull-pass").expect("starting docker-registry");
    let work = tempfile::Builder::new().prefix("skiff-test-pull-").tempdir_in("/tmp").unwrap();
    let image = other_image(&work.path().join("other"));
    let reference = push_to(&registry, "private/other:1", &image);

    let out = skiff(&server, &["image", "pull", &reference]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an anonymous pull from a registry that wants auth succeeded");
    assert!(stderr.contains("unauthorized") || stderr.contains("authentication required"), "{stderr}");
    assert_eq!(image_rows(&server), [], "nothing recorded");

    // The server's own file: the CLI reads it at each pull, no restart needed.
    let registries = server.data_dir().join("registries.yaml");
    std::fs::write(
        &registries,
        format!(
            "configs:\n  \"{}\":\n    auth:\n      username: pull-user\n      password: pull-pass\n",
            registry.addr()
        ),
    )
    .unwrap();
    let out = skiff_ok(&server, &["image", "pull", &reference]);
    let layer = layer_id(&image.layers[0].digest);
    assert!(out.contains(&format!("{layer}: Pull complete\n")), "{out}");
    assert!(out.ends_with(&format!("Status: Downloaded newer image for {reference}\n{reference}\n")), "{out}");
    assert_eq!(image_rows(&server).len(), 1);

    // Without the file, credentials on the command line, the password on standard input.
    std::fs::remove_file(&registries).unwrap();
    let login = |password: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_skiff"))
            .args(["pull", "--username", "pull-user", "--password-stdin", &reference, "--data-dir"])
            .arg(server.data_dir())
            .env_remove("SKIFF_DATA_DIR")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child.stdin.take().unwrap().write_all(format!("{password}\n").as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let out = login("pull-pass");
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("Status: Image is up to date for"), "{out:?}");
    let out = login("wrong");
    assert!(!out.status.success(), "a wrong password was accepted: {out:?}");

    drop(registry);
    server.finish();
}
