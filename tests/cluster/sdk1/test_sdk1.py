"""GKE Pod Snapshots through today's agent-sandbox SDK (k8s-agent-sandbox 1.0.8, what `pip
install k8s-agent-sandbox` installs) on agent-sandbox 1.x (v1beta1 Sandboxes, warm pools,
suspend through spec.operatingMode), served by the same podsnap-controller and podsnapd as
the 0.4.6 tests next door.

- The tutorial's client (docs/tutorial/client.py) on SDK 1.0.x: create a sandbox from the
  warm pool of docs/tutorial/v1/template.yaml, suspend it with a snapshot, resume it; the
  counter continues.
- SDK 1.0.x's restore(snapshot_uid): a suspended sandbox restored from an older snapshot than
  its newest (the pod carries podsnapshot.gke.io/ps-name) continues from that one.

The module switches the cluster to agent-sandbox v1 (scripts/cluster/agent-sandbox.sh, which
deletes the v0 Sandboxes) and back to v0 at the end. It needs SDK 1.0.x on the path, which
install-deps puts in its own directory (/opt/podsnap/sdk1, pip --target):

    PODSNAP_CLUSTER_SDK1=1 PYTHONPATH=/opt/podsnap/sdk1 python3 -m pytest -q tests/cluster/sdk1

Skipped without a cluster or without SDK 1.x, unless PODSNAP_CLUSTER_SDK1=1 (then those fail).
"""

import importlib.metadata
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
KUBECONFIG = ROOT / "target" / "cluster" / "kubeconfig"
REQUIRED = os.environ.get("PODSNAP_CLUSTER_SDK1") == "1"
TUTORIAL = ROOT / "docs" / "tutorial" / "v1"
NS = "default"
PS = ("podsnapshot.gke.io", "v1")


def sdk_version():
    try:
        return importlib.metadata.version("k8s-agent-sandbox")
    except importlib.metadata.PackageNotFoundError:
        return None


if not REQUIRED:
    if not KUBECONFIG.exists():
        pytest.skip("no cluster (make cluster-up)", allow_module_level=True)
    if not (sdk_version() or "").startswith("1."):
        pytest.skip(f"k8s-agent-sandbox 1.x is not on the path (found {sdk_version()}): "
                    "PYTHONPATH=/opt/podsnap/sdk1", allow_module_level=True)

os.environ["KUBECONFIG"] = str(KUBECONFIG)

import yaml  # noqa: E402
from kubernetes import client, config  # noqa: E402
from kubernetes.config import kube_config  # noqa: E402

kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(KUBECONFIG)
sys.path.insert(0, str(TUTORIAL.parent))
from client import first_count, last_count  # noqa: E402  the tutorial client's log readers


def switch(release):
    out = subprocess.run(["bash", str(ROOT / "scripts" / "cluster" / "agent-sandbox.sh"), release],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"agent-sandbox.sh {release}:\n{out.stdout}{out.stderr}"


@pytest.fixture(scope="module")
def v1():
    """The cluster on agent-sandbox v1 with the v1 tutorial's template and warm pool (and
    GKE's tutorial policy), put back on v0 afterwards."""
    assert KUBECONFIG.exists(), f"{KUBECONFIG} missing: run make cluster-up"
    assert (sdk_version() or "").startswith("1."), f"k8s-agent-sandbox {sdk_version()} is not 1.x"
    switch("v1")
    config.load_kube_config(config_file=str(KUBECONFIG))
    api = client.ApiClient()
    custom = client.CustomObjectsApi(api)
    plurals = {"PodSnapshotPolicy": "podsnapshotpolicies", "SandboxTemplate": "sandboxtemplates",
               "SandboxWarmPool": "sandboxwarmpools"}
    for path in (TUTORIAL.parent / "policy.yaml", TUTORIAL / "template.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            group, version = doc["apiVersion"].split("/")
            try:
                custom.delete_namespaced_custom_object(group, version, NS, plurals[doc["kind"]],
                                                       doc["metadata"]["name"])
            except client.ApiException as e:
                assert e.status == 404
            custom.create_namespaced_custom_object(group, version, NS, plurals[doc["kind"]], doc)
    yield custom, client.CoreV1Api(api)
    switch("v0")


def wait(what, timeout, fn, interval=1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_the_tutorial_client_on_sdk1_sees_the_counter_continue(v1, tutorial_client):
    """docs/tutorial/client.py on SDK 1.0.x (a sandbox from the v1 template's warm pool), as
    the README runs it."""
    out = tutorial_client()
    assert re.search(r"^Sandbox python-counter-pool-", out, re.M), out


def test_restore_from_an_older_snapshot_continues_from_that_one(v1):
    """SDK 1.0.x's restore(uid): the claim's pod metadata names the snapshot
    (podsnapshot.gke.io/ps-name), podsnap-controller restores that one, not the newest."""
    custom, core = v1
    from k8s_agent_sandbox.gke_extensions.snapshots import PodSnapshotSandboxClient
    sandboxes = PodSnapshotSandboxClient()
    sandbox = sandboxes.create_sandbox(warmpool="python-counter-pool", namespace=NS)
    try:
        pod = sandbox.get_pod_name()
        wait("counting", 60, lambda: (last_count(core, pod) or -1) >= 3)
        older_count = last_count(core, pod)
        older = sandbox.snapshots.create("older")
        assert older.success, older.error_reason
        # The policy resumes after a snapshot: the same pod counts on.
        wait("counting past the older snapshot", 60,
             lambda: (last_count(core, pod) or -1) >= older_count + 12)
        newer_count = last_count(core, pod)
        suspended = sandbox.suspend(snapshot_before_suspend=True)
        assert suspended.success, suspended.error_reason
        newer = suspended.snapshot_response.snapshot_uid
        assert newer != older.snapshot_uid

        restored = sandbox.restore(older.snapshot_uid)
        assert restored.success and restored.restored_from_snapshot, restored
        assert restored.snapshot_uid == older.snapshot_uid
        pod = sandbox.get_pod_name()
        after = wait("the restored counter", 60, lambda: first_count(core, pod))
        assert older_count < after <= older_count + 6, (older_count, newer_count, after)
        assert after < newer_count, (older_count, newer_count, after)
        annotations = core.read_namespaced_pod(pod, NS).metadata.annotations or {}
        assert annotations.get("podsnapshot.gke.io/ps-name") == older.snapshot_uid, annotations
        conds = {c.type: c for c in core.read_namespaced_pod(pod, NS).status.conditions or []}
        assert conds["PodRestored"].status == "True"
        assert older.snapshot_uid in conds["PodRestored"].message
    finally:
        sandboxes.delete_sandbox(sandbox.claim_name, NS)
