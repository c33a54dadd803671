//! Pod volumes end to end: the real kubectl against a real `skiff server` whose kubelet mounts
//! secret, configMap, emptyDir, hostPath and persistentVolumeClaim volumes into real containers.
//! What the containers see is read with `kubectl exec`; what the host holds, from the data dir.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{TestImages, TestServer, mounts_under};
use serde_json::Value;

const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// The kubelet re-renders configMap and secret volumes every few seconds.
const UPDATE_TIMEOUT: Duration = Duration::from_secs(60);
const SLEEP: &str = "[\"sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]";

fn wait_running(server: &TestServer, name: &str) -> Value {
    server.wait_for(&format!("pod {name} to be Running with all containers ready"), RUN_TIMEOUT, || {
        let pod = server.get_json("pod", name);
        let statuses = pod["status"]["containerStatuses"].as_array().cloned().unwrap_or_default();
        (pod["status"]["phase"] == "Running" && !statuses.is_empty() && statuses.iter().all(|c| c["ready"] == true))
            .then_some(pod)
    })
}

fn exec(server: &TestServer, pod: &str, container: &str, command: &str) -> std::process::Output {
    server.kubectl(&["exec", pod, "-c", container, "--", "sh", "-c", command])
}

fn exec_ok(server: &TestServer, pod: &str, container: &str, command: &str) -> String {
    server.kubectl_ok(&["exec", pod, "-c", container, "--", "sh", "-c", command])
}

fn wait_event(server: &TestServer, name: &str, reason: &str, text: &str) -> Value {
    server.wait_for(&format!("a {reason} event about {name} saying {text:?}"), RUN_TIMEOUT, || {
        server
            .events_about(name)
            .into_iter()
            .find(|e| e["reason"] == reason && e["message"].as_str().is_some_and(|m| m.contains(text)))
    })
}

/// The pod is still waiting in ContainerCreating (its volumes are not set up).
fn assert_container_creating(server: &TestServer, name: &str) {
    let pod = server.get_json("pod", name);
    assert_eq!(pod["status"]["phase"], "Pending", "{}", pod["status"]);
    assert_eq!(
        pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"], "ContainerCreating",
        "{}",
        pod["status"]
    );
}

fn delete_all_pods(server: &TestServer) {
    server.kubectl_ok(&["delete", "pods", "--all", "--timeout", "90s"]);
    let left = server.kubectl_ok(&["get", "pods", "-o", "name"]);
    assert_eq!(left.trim(), "", "pods left after delete --all");
}

fn pod_dir(server: &TestServer, pod: &Value) -> PathBuf {
    server.data_dir().join("kubelet/pods").join(pod["metadata"]["uid"].as_str().unwrap())
}

#[test]
fn secret_and_config_map_volumes_hold_decoded_read_only_files_that_follow_updates() {
    let server = TestServer::start();
    let images = TestImages::start();
    server.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "creds",
        "--from-literal=password=hunter2",
        "--from-literal=user=admin",
    ]);
    server.kubectl_ok(&["create", "configmap", "app", "--from-literal=greeting=hello"]);
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: vols\n  labels:\n    app: web\n    tier: \"1\"\nspec:\n  terminationGracePeriodSeconds: 5\n  containers:\n  \
         - name: main\n    image: {}\n    command: {SLEEP}\n    volumeMounts:\n    - name: creds\n      mountPath: \
         /etc/creds\n    - name: app\n      mountPath: /etc/app\n    - name: info\n      mountPath: /etc/info\n    - \
         name: labels\n      mountPath: /etc/labels\n  volumes:\n  - name: creds\n    secret:\n      \
         secretName: creds\n      defaultMode: 0400\n  - name: app\n    configMap:\n      name: app\n      items:\n      \
         - key: greeting\n        path: conf/greeting.txt\n  - name: info\n    projected:\n      sources:\n      - \
         configMap:\n          name: app\n          items:\n          - key: greeting\n            path: greeting\n      \
         - secret:\n          name: creds\n          items:\n          - key: user\n            path: user\n      - \
         downwardAPI:\n          items:\n          - path: name\n            fieldRef:\n              fieldPath: \
         metadata.name\n  - name: labels\n    downwardAPI:\n      items:\n      - path: labels\n        fieldRef:\n          \
         fieldPath: metadata.labels\n",
        images.busybox()
    );
    assert_eq!(server.apply(&manifest).trim(), "pod/vols created");
    let pod = wait_running(&server, "vols");

    assert_eq!(exec_ok(&server, "vols", "main", "cat /etc/creds/password"), "hunter2");
    assert_eq!(exec_ok(&server, "vols", "main", "cat /etc/creds/user"), "admin");
    assert_eq!(exec_ok(&server, "vols", "main", "stat -L -c %a /etc/creds/password").trim(), "400");
    assert_eq!(exec_ok(&server, "vols", "main", "readlink /etc/creds/password").trim(), "..data/password");
    assert_eq!(exec_ok(&server, "vols", "main", "cat /etc/app/conf/greeting.txt"), "hello");
    assert_eq!(exec_ok(&server, "vols", "main", "stat -L -c %a /etc/app/conf/greeting.txt").trim(), "644");
    // projected (configMap, secret and downward API in one directory) and downwardAPI.
    assert_eq!(
        exec_ok(&server, "vols", "main", "cat /etc/info/greeting /etc/info/user /etc/info/name"),
        "helloadminvols"
    );
    assert_eq!(exec_ok(&server, "vols", "main", "cat /etc/labels/labels"), "app=\"web\"\ntier=\"1\"");
    for dir in ["/etc/creds", "/etc/app", "/etc/info", "/etc/labels"] {
        let write = exec(&server, "vols", "main", &format!("echo x > {dir}/new"));
        assert!(!write.status.success(), "{dir} must be read-only");
        let stderr = String::from_utf8_lossy(&write.stderr);
        assert!(stderr.contains("Read-only file system"), "{dir}: {stderr}");
    }
    // The secret lives on a tmpfs of its own on the host, never on the data dir's disk.
    let secret_dir = pod_dir(&server, &pod).join("volumes/kubernetes.io~secret/creds");
    assert!(mounts_under(server.data_dir()).contains(&secret_dir), "no tmpfs at {}", secret_dir.display());

    // An update of the ConfigMap reaches the mounted file (through the `..data` swap).
    server.kubectl_ok(&["patch", "configmap", "app", "-p", r#"{"data":{"greeting":"bonjour"}}"#]);
    server.wait_for("the configMap update to reach the container", UPDATE_TIMEOUT, || {
        (exec_ok(&server, "vols", "main", "cat /etc/app/conf/greeting.txt /etc/info/greeting") == "bonjourbonjour")
            .then_some(())
    });

    // A missing, non-optional ConfigMap holds the pod in ContainerCreating until it exists.
    let waiting = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: waits\nspec:\n  terminationGracePeriodSeconds: 5\n  containers:\n  \
         - name: main\n    image: {}\n    command: {SLEEP}\n    volumeMounts:\n    - name: cfg\n      mountPath: /cfg\n  \
         volumes:\n  - name: cfg\n    configMap:\n      name: later\n",
        images.busybox()
    );
    server.apply(&waiting);
    let event = wait_event(&server, "waits", "FailedMount", "");
    assert_eq!(event["message"], "MountVolume.SetUp failed for volume \"cfg\" : configmap \"later\" not found");
    assert_eq!(event["type"], "Warning");
    assert_container_creating(&server, "waits");
    server.kubectl_ok(&["create", "configmap", "later", "--from-literal=k=v"]);
    wait_running(&server, "waits");
    assert_eq!(exec_ok(&server, "waits", "main", "cat /cfg/k"), "v");

    delete_all_pods(&server);
    assert!(!secret_dir.exists(), "the pod's volumes are removed with it");
    drop(images);
    server.finish();
}

#[test]
fn empty_dirs_are_shared_between_containers_and_host_paths_work_both_ways() {
    let server = TestServer::start();
    let images = TestImages::start();
    let host = server.dir().join("host-data");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("from-host"), "written on the host\n").unwrap();
    let created = server.dir().join("made/by/kubelet");
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: shared\nspec:\n  terminationGracePeriodSeconds: 5\n  containers:\n  \
         - name: writer\n    image: {img}\n    command: [\"sh\", \"-c\", \"echo from-writer > /shared/msg; trap 'exit 0' \
         TERM; while true; do sleep 1; done\"]\n    volumeMounts:\n    - name: scratch\n      mountPath: /shared\n    - \
         name: mem\n      mountPath: /cache\n  - name: reader\n    image: {img}\n    command: {SLEEP}\n    \
         volumeMounts:\n    - name: scratch\n      mountPath: /in\n    - name: scratch\n      mountPath: /logs\n      \
         subPath: logs\n    - name: host\n      mountPath: /host\n    - name: made\n      mountPath: /made\n  \
         volumes:\n  - name: scratch\n    emptyDir: {{}}\n  - name: mem\n    emptyDir:\n      medium: Memory\n      \
         sizeLimit: 16Mi\n  - name: host\n    hostPath:\n      path: {host}\n      type: Directory\n  - name: made\n    \
         hostPath:\n      path: {made}\n      type: DirectoryOrCreate\n",
        img = images.busybox(),
        host = host.display(),
        made = created.display(),
    );
    server.apply(&manifest);
    let pod = wait_running(&server, "shared");
    server.wait_for("the writer's file to show in the reader", RUN_TIMEOUT, || {
        (exec(&server, "shared", "reader", "cat /in/msg").stdout == b"from-writer\n").then_some(())
    });
    exec_ok(&server, "shared", "reader", "echo sub > /logs/x");
    assert_eq!(exec_ok(&server, "shared", "writer", "cat /shared/logs/x"), "sub\n", "subPath is inside the volume");
    let mem = exec_ok(&server, "shared", "writer", "grep ' /cache ' /proc/mounts");
    assert!(mem.starts_with("tmpfs /cache tmpfs") && mem.contains("size=16384k"), "medium Memory: {mem}");
    let pod_dir = pod_dir(&server, &pod);
    assert!(pod_dir.join("volumes/kubernetes.io~empty-dir/scratch/msg").is_file());

    // hostPath: the host's file in, the container's file out.
    assert_eq!(exec_ok(&server, "shared", "reader", "cat /host/from-host"), "written on the host\n");
    exec_ok(&server, "shared", "reader", "echo written in the pod > /host/from-pod");
    assert_eq!(std::fs::read_to_string(host.join("from-pod")).unwrap(), "written in the pod\n");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&created).unwrap().permissions().mode() & 0o777, 0o755, "DirectoryOrCreate");

    // A type that does not match holds the pod with Kubernetes' message.
    let wrong = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: wrongtype\nspec:\n  containers:\n  - name: main\n    image: {}\n    \
         command: {SLEEP}\n    volumeMounts:\n    - name: h\n      mountPath: /h\n  volumes:\n  - name: h\n    hostPath:\n      \
         path: {}\n      type: File\n",
        images.busybox(),
        host.display()
    );
    server.apply(&wrong);
    let event = wait_event(&server, "wrongtype", "FailedMount", "");
    assert_eq!(
        event["message"],
        format!(
            "MountVolume.SetUp failed for volume \"h\" : hostPath type check failed: {} is not a file",
            host.display()
        )
    );
    assert_container_creating(&server, "wrongtype");

    delete_all_pods(&server);
    assert!(!pod_dir.exists(), "emptyDirs go with the pod");
    assert!(mounts_under(server.data_dir()).is_empty(), "the memory emptyDir is unmounted");
    assert!(host.join("from-pod").is_file(), "hostPath data stays");
    drop(images);
    server.finish();
}

fn claim_phase(server: &TestServer, name: &str) -> String {
    server.get_json("pvc", name)["status"]["phase"].as_str().unwrap_or_default().to_string()
}

fn pvc_pod(name: &str, image: &str, command: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 5\n  containers:\n  \
         - name: main\n    image: {image}\n    command: [\"sh\", \"-c\", \"{command}; trap 'exit 0' TERM; while true; do \
         sleep 1; done\"]\n    volumeMounts:\n    - name: data\n      mountPath: /data\n  volumes:\n  - name: data\n    \
         persistentVolumeClaim:\n      claimName: data\n"
    )
}

#[test]
fn a_claim_of_the_default_local_path_class_keeps_its_data_across_pods_and_goes_with_the_claim() {
    let server = TestServer::start();
    let images = TestImages::start();
    let class = server.wait_for("the default StorageClass local-path", RUN_TIMEOUT, || {
        let out = server.kubectl(&["get", "storageclass", "local-path", "-o", "json"]);
        out.status.success().then(|| serde_json::from_slice::<Value>(&out.stdout).unwrap())
    });
    assert_eq!(class["provisioner"], "rancher.io/local-path");
    assert_eq!(class["volumeBindingMode"], "WaitForFirstConsumer");
    assert_eq!(class["reclaimPolicy"], "Delete");
    assert_eq!(class["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"], "true");

    server.apply(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: data\nspec:\n  accessModes: [ReadWriteOnce]\n  \
         resources:\n    requests:\n      storage: 1Gi\n",
    );
    let pvc = server.get_json("pvc", "data");
    assert_eq!(pvc["spec"]["storageClassName"], "local-path", "the default class is filled in");
    // No consumer yet: the claim waits.
    wait_event(&server, "data", "WaitForFirstConsumer", "waiting for first consumer to be created before binding");
    assert_eq!(claim_phase(&server, "data"), "Pending");

    server.apply(&pvc_pod("first", &images.busybox(), "cat /proc/sys/kernel/random/uuid > /data/id"));
    wait_running(&server, "first");
    let id = exec_ok(&server, "first", "main", "cat /data/id");
    assert_eq!(claim_phase(&server, "data"), "Bound");
    let pvc = server.get_json("pvc", "data");
    let pv_name = pvc["spec"]["volumeName"].as_str().unwrap().to_string();
    let pv = server.get_json("pv", &pv_name);
    assert_eq!(pv["status"]["phase"], "Bound");
    assert_eq!(pv["spec"]["claimRef"]["name"], "data");
    assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Delete");
    assert_eq!(pvc["status"]["capacity"]["storage"], "1Gi");
    let path = PathBuf::from(pv["spec"]["hostPath"]["path"].as_str().unwrap());
    let want = format!("pvc-{}_default_data", pvc["metadata"]["uid"].as_str().unwrap());
    assert_eq!(path, server.data_dir().join("storage").join(&want));
    assert_eq!(std::fs::read_to_string(path.join("id")).unwrap(), id);
    let table = server.kubectl_ok(&["get", "pvc"]);
    assert!(table.lines().nth(1).is_some_and(|l| l.contains("Bound") && l.contains(&pv_name)), "{table}");

    // The pod goes, the data stays; a new pod sees it.
    delete_all_pods(&server);
    assert!(Path::new(&path).join("id").is_file());
    server.apply(&pvc_pod("second", &images.busybox(), "true"));
    wait_running(&server, "second");
    assert_eq!(exec_ok(&server, "second", "main", "cat /data/id"), id);
    delete_all_pods(&server);

    // reclaimPolicy Delete: the claim's deletion takes the volume and its directory.
    server.kubectl_ok(&["delete", "pvc", "data"]);
    server.wait_for("the PersistentVolume and its directory to go", RUN_TIMEOUT, || {
        let gone = !server.kubectl(&["get", "pv", &pv_name]).status.success() && !path.exists();
        gone.then_some(())
    });
    drop(images);
    server.finish();
}

#[test]
fn an_fs_group_owns_empty_dirs_and_secret_files_and_is_a_group_of_the_containers() {
    let server = TestServer::start();
    let images = TestImages::start();
    server.kubectl_ok(&["create", "secret", "generic", "creds", "--from-literal=token=s3cret"]);
    server.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: grouped
spec:
  securityContext:
    runAsUser: 1000
    fsGroup: 2000
  containers:
  - name: main
    image: {}
    command: {SLEEP}
    volumeMounts:
    - {{name: data, mountPath: /data}}
    - {{name: scratch, mountPath: /scratch}}
    - {{name: creds, mountPath: /creds}}
  volumes:
  - {{name: data, emptyDir: {{}}}}
  - {{name: scratch, emptyDir: {{medium: Memory}}}}
  - {{name: creds, secret: {{secretName: creds}}}}
"#,
        images.busybox()
    ));
    wait_running(&server, "grouped");
    let groups = exec_ok(&server, "grouped", "main", "id -G");
    assert!(groups.split_whitespace().any(|g| g == "2000"), "fsGroup is a supplementary group: {groups}");
    // Directories: the group, group rwx and setgid (on top of emptyDir's 0777 / tmpfs' 1777).
    let dirs = exec_ok(&server, "grouped", "main", "stat -c '%g %a' /data /scratch");
    assert_eq!(dirs, "2000 2777\n2000 3777\n");
    // A file the container makes inherits the group through the setgid directory.
    let made = exec_ok(&server, "grouped", "main", "touch /data/new && stat -c '%u %g' /data/new");
    assert_eq!(made, "1000 2000\n");
    // Secret files: the group and group read, still not writable.
    let secret = exec_ok(&server, "grouped", "main", "stat -L -c '%g %a' /creds/token && cat /creds/token");
    assert_eq!(secret, "2000 644\ns3cret");

    delete_all_pods(&server);
    drop(images);
    server.finish();
}
