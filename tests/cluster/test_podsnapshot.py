"""GKE's Pod Snapshot API (`podsnapshot.gke.io/v1`) on the local cluster (`make cluster-up`),
served by podsnap-controller over the node's podsnapd, driven only through the Kubernetes API
and the agent-sandbox SDK (k8s-agent-sandbox 0.4.6, the tutorial's).

- The tutorial's client (docs/tutorial/client.py), unchanged: create a sandbox, suspend it
  with a snapshot, resume it; the counter continues from the snapshot.
- The SDK's snapshot helpers: trigger wait, listing (newest first, Ready, origin pod),
  retention (maxSnapshotCountPerGroup: 2), deletion reaching the store.
- Failure reasons on the trigger: a missing pod, a pod no policy selects, a store the node
  does not serve, a node without a reachable podsnapd; a pod naming a missing snapshot is
  refused at admission.

Skipped unless target/cluster/kubeconfig exists or PODSNAP_CLUSTER=1.
Run: make cluster-up && python3 -m pytest -q tests/cluster
"""

import os
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KUBECONFIG = ROOT / "target" / "cluster" / "kubeconfig"
REQUIRED = os.environ.get("PODSNAP_CLUSTER") == "1"
if not KUBECONFIG.exists() and not REQUIRED:
    pytest.skip("no cluster (make cluster-up, or PODSNAP_CLUSTER=1 to require one)", allow_module_level=True)

os.environ["KUBECONFIG"] = str(KUBECONFIG)

import yaml  # noqa: E402
from kubernetes import client, config  # noqa: E402
from kubernetes.config import kube_config  # noqa: E402

# The SDK loads the default kubeconfig, whose path the client fixed when it was first imported
# (perhaps by another test module, before KUBECONFIG was set above).
kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(KUBECONFIG)

NS = "default"
PS = ("podsnapshot.gke.io", "v1")
TUTORIAL = ROOT / "docs" / "tutorial"


def cluster_env():
    env = {}
    for line in (ROOT / "target" / "cluster" / "env").read_text().splitlines():
        k, _, v = line.partition("=")
        env[k] = v
    return env


@pytest.fixture(scope="module")
def api():
    assert KUBECONFIG.exists(), f"{KUBECONFIG} missing: run make cluster-up"
    config.load_kube_config(config_file=str(KUBECONFIG))
    return client.ApiClient()


@pytest.fixture(scope="module")
def core(api):
    return client.CoreV1Api(api)


@pytest.fixture(scope="module")
def custom(api):
    return client.CustomObjectsApi(api)


def apply_file(custom, path):
    for doc in yaml.safe_load_all(path.read_text()):
        group, version = doc["apiVersion"].split("/")
        plural = {"PodSnapshotPolicy": "podsnapshotpolicies", "SandboxTemplate": "sandboxtemplates"}[doc["kind"]]
        name = doc["metadata"]["name"]
        try:
            custom.delete_namespaced_custom_object(group, version, NS, plural, name)
        except client.ApiException as e:
            assert e.status == 404
        custom.create_namespaced_custom_object(group, version, NS, plural, doc)


@pytest.fixture(scope="module")
def tutorial(custom):
    apply_file(custom, TUTORIAL / "policy.yaml")
    apply_file(custom, TUTORIAL / "template.yaml")


def wait(what, timeout, fn, interval=1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def trigger(custom, pod, name=None):
    name = name or f"t-{uuid.uuid4().hex[:8]}"
    custom.create_namespaced_custom_object(*PS, NS, "podsnapshotmanualtriggers", {
        "apiVersion": "podsnapshot.gke.io/v1", "kind": "PodSnapshotManualTrigger",
        "metadata": {"name": name}, "spec": {"targetPod": pod}})

    def done():
        t = custom.get_namespaced_custom_object(*PS, NS, "podsnapshotmanualtriggers", name)
        for c in (t.get("status") or {}).get("conditions") or []:
            if c["type"] == "Triggered" and (c["status"] == "True" or c["reason"] in ("Failed", "Error")):
                return t
        return None
    return wait(f"trigger {name}", 120, done)


def triggered(t):
    return next(c for c in t["status"]["conditions"] if c["type"] == "Triggered")


def test_the_api_is_served_with_the_local_store(custom, api):
    resources = client.CustomObjectsApi(api).get_api_resources(*PS)
    kinds = {r.kind for r in resources.resources}
    assert {"PodSnapshot", "PodSnapshotPolicy", "PodSnapshotManualTrigger",
            "PodSnapshotStorageConfig"} <= kinds
    local = custom.get_cluster_custom_object(*PS, "podsnapshotstorageconfigs", "local")
    assert local["spec"]["snapshotStorageConfig"]["local"]["path"] == cluster_env()["SNAPSHOTS"]


def test_the_tutorial_client_sees_the_counter_continue(tutorial, tutorial_client):
    """docs/tutorial/client.py, as the README runs it."""
    tutorial_client()


def sandbox_client():
    from k8s_agent_sandbox.gke_extensions.snapshots import PodSnapshotSandboxClient
    return PodSnapshotSandboxClient()


def stored_ids():
    manifests = Path(cluster_env()["SNAPSHOTS"]) / "manifests"
    return {p.stem for p in manifests.glob("*.json")} if manifests.is_dir() else set()


def test_sdk_snapshots_are_listed_kept_by_retention_and_deleted_from_the_store(tutorial, custom):
    sandboxes = sandbox_client()
    sandbox = sandboxes.create_sandbox(template="python-counter-template", namespace=NS)
    try:
        taken = []
        for i in range(3):
            r = sandbox.snapshots.create(f"helper-{i}")
            assert r.success, r.error_reason
            taken.append(r.snapshot_uid)
            time.sleep(1.1)  # distinct creation timestamps (seconds)
        listed = sandbox.snapshots.list()
        assert listed.success, listed.error_reason
        names = [s.snapshot_uid for s in listed.snapshots]
        # Retention (maxSnapshotCountPerGroup: 2) removed the oldest; newest first.
        assert names == [taken[2], taken[1]], (names, taken)
        assert all(s.status == "Ready" and s.source_pod == sandbox.get_pod_name() for s in listed.snapshots)
        objs = {n: custom.get_namespaced_custom_object(*PS, NS, "podsnapshots", n) for n in names}
        ids = {n: o["status"]["snapshotID"] for n, o in objs.items()}
        assert set(ids.values()) <= stored_ids()
        # The second snapshot of the group deduplicated against the first: it uploaded less.
        newest = objs[taken[2]]["status"]
        assert newest["uploadedBytes"] < newest["logicalBytes"], newest
        # The retention victim is gone from the API and from the store.
        wait("the oldest snapshot to go", 60, lambda: taken[0] not in {
            o["metadata"]["name"] for o in custom.list_namespaced_custom_object(*PS, NS, "podsnapshots")["items"]})
        # Deleting a PodSnapshot deletes its stored image.
        custom.delete_namespaced_custom_object(*PS, NS, "podsnapshots", taken[1])
        wait("the stored image to be deleted", 60, lambda: ids[taken[1]] not in stored_ids())
        assert ids[taken[2]] in stored_ids()
    finally:
        sandbox.terminate()
        sandboxes.delete_sandbox(sandbox.claim_name, NS)


def test_trigger_failures_say_why(tutorial, custom, core):
    t = trigger(custom, "no-such-pod")
    c = triggered(t)
    assert (c["status"], c["reason"]) == ("False", "Failed")
    assert "no-such-pod not found" in c["message"]

    # A pod no policy selects.
    name = f"plain-{uuid.uuid4().hex[:6]}"
    core.create_namespaced_pod(NS, client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels={"app": "not-selected"}),
        spec=client.V1PodSpec(runtime_class_name="gvisor", containers=[client.V1Container(
            name="c", image="localhost/podsnap/busybox:1", image_pull_policy="Never",
            command=["sleep", "3600"])])))
    try:
        wait("the plain pod to run", 120,
             lambda: core.read_namespaced_pod(name, NS).status.phase == "Running")
        c = triggered(trigger(custom, name))
        assert c["reason"] == "Failed" and "no PodSnapshotPolicy" in c["message"], c

        # A policy whose store this node's podsnapd does not serve.
        custom.create_cluster_custom_object(*PS, "podsnapshotstorageconfigs", {
            "apiVersion": "podsnapshot.gke.io/v1", "kind": "PodSnapshotStorageConfig",
            "metadata": {"name": f"gcs-{name}"},
            "spec": {"snapshotStorageConfig": {"gcs": {"bucket": "elsewhere"}}}})
        custom.create_namespaced_custom_object(*PS, NS, "podsnapshotpolicies", {
            "apiVersion": "podsnapshot.gke.io/v1", "kind": "PodSnapshotPolicy",
            "metadata": {"name": f"p-{name}"},
            "spec": {"storageConfigName": f"gcs-{name}",
                     "selector": {"matchLabels": {"app": "not-selected"}},
                     "triggerConfig": {"type": "manual", "postCheckpoint": "resume"}}})
        try:
            c = triggered(trigger(custom, name))
            assert c["reason"] == "Failed", c
            assert "gs://elsewhere" in c["message"] and "file://" in c["message"], c

            # A node whose podsnapd cannot be reached.
            node = core.read_namespaced_pod(name, NS).spec.node_name
            core.patch_node(node, {"metadata": {"annotations": {
                "podsnap.dev/podsnapd-endpoint": "https://127.0.0.1:1"}}})
            try:
                c = triggered(trigger(custom, name))
                assert c["reason"] == "Error" and "cannot connect" in c["message"], c
                assert node in c["message"]
            finally:
                core.patch_node(node, {"metadata": {"annotations": {
                    "podsnap.dev/podsnapd-endpoint": None}}})
        finally:
            custom.delete_namespaced_custom_object(*PS, NS, "podsnapshotpolicies", f"p-{name}")
            custom.delete_cluster_custom_object(*PS, "podsnapshotstorageconfigs", f"gcs-{name}")
    finally:
        core.delete_namespaced_pod(name, NS, grace_period_seconds=0)


def test_a_pod_naming_a_missing_snapshot_is_refused(core):
    with pytest.raises(client.ApiException) as e:
        core.create_namespaced_pod(NS, client.V1Pod(
            metadata=client.V1ObjectMeta(name=f"r-{uuid.uuid4().hex[:6]}",
                                         annotations={"podsnapshot.gke.io/ps-name": "no-such-snapshot"}),
            spec=client.V1PodSpec(containers=[client.V1Container(
                name="c", image="localhost/podsnap/busybox:1", command=["true"])])))
    assert "no PodSnapshot no-such-snapshot" in e.value.body


def counter_pod(name, labels, annotations=None):
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels, annotations=annotations),
        spec=client.V1PodSpec(runtime_class_name="gvisor", containers=[client.V1Container(
            name="counter", image="localhost/podsnap/busybox:1", image_pull_policy="Never",
            command=["sh", "-c", 'i=0; while true; do echo "Count: $i"; i=$((i+1)); sleep 1; done'])]))


def test_a_failed_restore_is_reported_on_the_pod(tutorial, custom, core):
    """A pod pointed (ps-name) at a snapshot whose stored image is gone: the node refuses the
    restore, the pod never runs fresh, and PodRestored=False/RestoreFailed says why."""
    group = uuid.uuid4().hex[:10]
    labels = {"app": "agent-sandbox-workload", "agents.x-k8s.io/sandbox-name-hash": group}
    src = f"src-{group}"
    core.create_namespaced_pod(NS, counter_pod(src, labels))
    dst = f"dst-{group}"
    try:
        wait("the source pod to run", 120,
             lambda: core.read_namespaced_pod(src, NS).status.phase == "Running")
        t = trigger(custom, src)
        assert triggered(t)["status"] == "True", t["status"]
        ps = t["status"]["snapshotCreated"]["name"]
        snap = custom.get_namespaced_custom_object(*PS, NS, "podsnapshots", ps)
        sid = snap["status"]["snapshotID"]
        manifest = Path(cluster_env()["SNAPSHOTS"]) / "manifests" / f"{sid}.json"
        assert manifest.is_file()
        manifest.unlink()  # the store lost it

        core.create_namespaced_pod(NS, counter_pod(dst, {"app": "other"},
                                                   {"podsnapshot.gke.io/ps-name": ps}))
        pod = core.read_namespaced_pod(dst, NS)
        assert pod.metadata.annotations["podsnap.dev/restore-from"] == sid
        assert any(g.condition_type == "PodRestored" for g in pod.spec.readiness_gates)

        def restored_condition():
            conds = core.read_namespaced_pod(dst, NS).status.conditions or []
            return next((c for c in conds if c.type == "PodRestored"), None)
        c = wait("PodRestored on the pod", 120, restored_condition)
        assert (c.status, c.reason) == ("False", "RestoreFailed"), c
        assert ps in c.message and "cannot restore" in c.message, c.message
        p = core.read_namespaced_pod(dst, NS)
        assert not any(cs.state.running for cs in p.status.container_statuses or []), "started fresh"
        assert not any(c.type == "Ready" and c.status == "True" for c in p.status.conditions)
    finally:
        for n in (src, dst):
            core.delete_namespaced_pod(n, NS, grace_period_seconds=0)
        for o in custom.list_namespaced_custom_object(
                *PS, NS, "podsnapshots", label_selector=f"agents.x-k8s.io/sandbox-name-hash={group}")["items"]:
            custom.delete_namespaced_custom_object(*PS, NS, "podsnapshots", o["metadata"]["name"])


def test_repeated_suspend_and_resume_continue_and_pay_only_for_changes(tutorial, custom, core):
    """Three suspend/resume cycles of one Sandbox: each resume restores the newest snapshot
    (a snapshot of a restored pod restores too), the counter never goes back, and every
    snapshot after the first deduplicates against its group's previous one."""
    sys.path.insert(0, str(TUTORIAL))
    from client import first_count, last_count  # the tutorial client's log readers
    sandboxes = sandbox_client()
    sandbox = sandboxes.create_sandbox(template="python-counter-template", namespace=NS)
    try:
        pod = sandbox.get_pod_name()
        previous_after = -1
        for cycle in range(3):
            wait("counting", 60, lambda: (last_count(core, pod) or -1) > previous_after + 2)
            before = last_count(core, pod)
            s = sandbox.suspend(snapshot_before_suspend=True)
            assert s.success, s.error_reason
            time.sleep(4)
            r = sandbox.resume()
            assert r.success and r.restored_from_snapshot, r
            assert r.snapshot_uid == s.snapshot_response.snapshot_uid, (r, s)
            after = wait("the restored counter", 60, lambda: first_count(core, pod))
            # Had it kept running, the 4 s suspension alone, plus the suspend's and the
            # resume's waits for the pod (the SDK polls every 2 s), would put it further on.
            assert before < after <= before + 6, (cycle, before, after)
            previous_after = after
            if cycle > 0:
                st = custom.get_namespaced_custom_object(*PS, NS, "podsnapshots", r.snapshot_uid)["status"]
                assert st["uploadedBytes"] * 4 < st["logicalBytes"], st
    finally:
        sandbox.terminate()
        sandboxes.delete_sandbox(sandbox.claim_name, NS)
