"""A second, independent client of Skiff's API server: the official Python `kubernetes` package.

Run by tests/python_client.rs against a real server: python client.py KUBECONFIG. It lists,
creates, watches (a change made while watching must arrive), patches (merge, strategic, JSON)
and reads the scale subresource, and prints one JSON line per check so the Rust side can assert
on what this client saw. Any failure raises, so the exit status is non-zero.
"""

import json
import sys
import threading
import time

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException


def report(check, **fields):
    print(json.dumps({"check": check, **fields}), flush=True)


def main(kubeconfig):
    config.load_kube_config(config_file=kubeconfig)
    core = client.CoreV1Api()
    apps = client.AppsV1Api()

    version = client.VersionApi().get_code()
    report("version", major=version.major, minor=version.minor, git_version=version.git_version)

    namespaces = core.list_namespace()
    report("namespaces", names=sorted(n.metadata.name for n in namespaces.items),
           resource_version=namespaces.metadata.resource_version)

    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="py")))
    made = core.create_namespaced_config_map(
        "py", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="first", labels={"from": "python"}),
                                 data={"k": "v"}))
    report("created", name=made.metadata.name, uid=made.metadata.uid, data=made.data)

    listed = core.list_namespaced_config_map("py", label_selector="from=python")
    report("listed", names=[c.metadata.name for c in listed.items])

    # Watch from the list's resourceVersion; a configmap created meanwhile must arrive.
    def create_later():
        time.sleep(1)
        core.create_namespaced_config_map(
            "py", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="arrived"), data={"n": "1"}))

    creator = threading.Thread(target=create_later)
    creator.start()
    seen = []
    w = watch.Watch()
    for event in w.stream(core.list_namespaced_config_map, "py",
                          resource_version=listed.metadata.resource_version, timeout_seconds=30):
        seen.append((event["type"], event["object"].metadata.name))
        if event["object"].metadata.name == "arrived":
            w.stop()
    creator.join()
    report("watched", events=seen, data=event["object"].data)

    merged = core.patch_namespaced_config_map("first", "py", {"data": {"k": "merged", "extra": "1"}})
    report("merge-patched", data=merged.data)
    jsoned = core.patch_namespaced_config_map("first", "py", [{"op": "remove", "path": "/data/extra"}])
    report("json-patched", data=jsoned.data)

    deployment = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1DeploymentSpec(
            replicas=0,
            selector=client.V1LabelSelector(match_labels={"app": "web"}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": "web"}),
                spec=client.V1PodSpec(containers=[client.V1Container(name="app", image="example.invalid/a:1")]))))
    apps.create_namespaced_deployment("py", deployment)
    # A dict body goes as a strategic merge patch: the container is matched by name.
    patched = apps.patch_namespaced_deployment(
        "web", "py", {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "example.invalid/a:2"}]}}}})
    containers = patched.spec.template.spec.containers
    report("strategic-patched", images=[c.image for c in containers], generation=patched.metadata.generation)
    scaled = apps.patch_namespaced_deployment_scale("web", "py", {"spec": {"replicas": 0}})
    report("scale", replicas=scaled.spec.replicas, selector=scaled.status.selector)

    try:
        core.read_namespaced_config_map("nope", "py")
        report("not-found", status=None)
    except ApiException as e:
        body = json.loads(e.body)
        report("not-found", status=e.status, reason=body["reason"], message=body["message"])

    try:
        core.create_namespaced_config_map("py", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="first")))
        report("already-exists", status=None)
    except ApiException as e:
        report("already-exists", status=e.status, reason=json.loads(e.body)["reason"])


if __name__ == "__main__":
    main(sys.argv[1])
