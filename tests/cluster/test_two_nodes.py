"""Two nodes (`PODSNAP_CLUSTER_NODES=2 make cluster-up`): podsnap installed as users install it
(the DaemonSet on both nodes, the controller's Deployment), a sandbox suspended on the first
node and, with that node cordoned, the tutorial's resume scheduled on the second: its podsnapd
fetches the snapshot from the store both nodes share, the counter continues, and the bytes the
second node downloaded are read from its podsnapd's metrics (podsnap_bytes_total
{direction="downloaded"}, on NODE2_IP:9090: podsnapd runs with hostNetwork).

Skipped on a one-node cluster; PODSNAP_CLUSTER_NODES=2 in the environment makes a missing
second node a failure instead.
"""

import os
import re
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from conftest import cluster_env, node_names

REQUIRED = os.environ.get("PODSNAP_CLUSTER_NODES") == "2"
if len(node_names()) < 2:
    if REQUIRED:
        pytest.fail("PODSNAP_CLUSTER_NODES=2 but the cluster has one node (target/cluster/env)", pytrace=False)
    pytest.skip("one-node cluster (PODSNAP_CLUSTER_NODES=2 make cluster-up for two)", allow_module_level=True)

from kubernetes import client  # noqa: E402

from test_podsnapshot import NS, PS, ROOT, wait  # noqa: E402,F401  (module fixtures: api, core, custom, tutorial)
from test_podsnapshot import api, core, custom, tutorial  # noqa: E402,F401

sys.path.insert(0, str(ROOT / "docs" / "tutorial"))
from client import TEMPLATE, first_count, last_count  # noqa: E402

DOWNLOADED = re.compile(r'^podsnap_bytes_total\{[^}]*direction="downloaded"[^}]*\} (\S+)$', re.M)


def downloaded_bytes(ip):
    """podsnap_bytes_total{direction="downloaded"} of the podsnapd on the node at `ip` (0 until
    the first download: the counter appears then)."""
    with urllib.request.urlopen(f"http://{ip}:9090/metrics", timeout=10) as r:
        text = r.read().decode()
    assert "podsnap_build_info" in text, f"{ip}:9090/metrics is not podsnapd's: {text[:200]}"
    return sum(float(v) for v in DOWNLOADED.findall(text))


def cordon(core, node, on):
    core.patch_node(node, {"spec": {"unschedulable": on}})


def test_resume_lands_on_the_other_node_and_downloads_the_snapshot_there(tutorial, custom, core):
    from k8s_agent_sandbox.gke_extensions.snapshots import PodSnapshotSandboxClient

    env = cluster_env()
    first, second = node_names()
    ips = {first: env["NODE_IP"], second: env["NODE2_IP"]}
    ds = client.AppsV1Api(core.api_client).read_namespaced_daemon_set("podsnapd", "podsnap-system")
    assert ds.status.number_ready == 2, f"podsnapd DaemonSet: {ds.status.number_ready} of 2 ready"

    sandboxes = PodSnapshotSandboxClient()
    # The sandbox starts on the first node: the second is cordoned until the suspend.
    cordon(core, second, True)
    sandbox = None
    try:
        sandbox = sandboxes.create_sandbox(template=TEMPLATE, namespace=NS)
        pod = sandbox.get_pod_name()
        node = core.read_namespaced_pod(pod, NS).spec.node_name
        assert node == first, f"pod {pod} ran on {node}, not {first} ({second} was cordoned)"
        wait("counting", 60, lambda: (last_count(core, pod) or -1) >= 5)
        before = last_count(core, pod)

        s = sandbox.suspend(snapshot_before_suspend=True)
        assert s.success, s.error_reason
        snapshot = s.snapshot_response.snapshot_uid
        down = {n: downloaded_bytes(ip) for n, ip in ips.items()}

        # Now only the second node takes pods.
        cordon(core, second, False)
        cordon(core, first, True)
        r = sandbox.resume()
        assert r.success and r.restored_from_snapshot, r
        pod = sandbox.get_pod_name()
        node = core.read_namespaced_pod(pod, NS).spec.node_name
        assert node == second, f"resumed pod {pod} ran on {node}, not {second} ({first} was cordoned)"
        after = wait("the restored counter", 60, lambda: first_count(core, pod))
        assert before < after <= before + 9, f"counter {before} -> {after}: not continued from the snapshot"

        # The second node's podsnapd fetched the image; the first node's fetched nothing.
        got = {n: downloaded_bytes(ip) - down[n] for n, ip in ips.items()}
        ps = [p for p in custom.list_namespaced_custom_object(*PS, NS, "podsnapshots")["items"]
              if p["metadata"]["name"] == snapshot or p["metadata"].get("uid") == snapshot]
        logical = (ps[0].get("status") or {}).get("logicalBytes") if ps else None
        print(f"resume on {second}: downloaded {got[second]:.0f} bytes "
              f"(snapshot {snapshot}, logical {logical}); {first}: {got[first]:.0f}")
        assert got[second] > 0, f"{second}'s podsnapd reports no downloaded bytes for the restore: {got}"
        assert got[first] == 0, f"{first} (cordoned) downloaded {got[first]} bytes: the restore was not only on {second}"
        if logical:
            # Chunks travel compressed and zero pages not at all: never more than the image.
            assert got[second] <= logical, f"{second} downloaded {got[second]} bytes of a {logical}-byte image"
    finally:
        cordon(core, first, False)
        cordon(core, second, False)
        if sandbox is not None:
            sandbox.terminate()
            sandboxes.delete_sandbox(sandbox.claim_name, NS)


def node_script(action, node):
    """scripts/cluster/node.sh: `lose` kills the node's kubelet and deletes its Node; `return`
    starts the kubelet again and waits for the Node to be Ready."""
    out = subprocess.run(["bash", str(ROOT / "scripts" / "cluster" / "node.sh"), action, node],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"node.sh {action} {node}: {out.stdout}{out.stderr}"


def bring_back(core, node):
    node_script("return", node)
    apps = client.AppsV1Api(core.api_client)
    wait("podsnapd ready on both nodes again", 180, lambda: apps.read_namespaced_daemon_set(
        "podsnapd", "podsnap-system").status.number_ready == 2)


def lazy_mounts(node):
    """FUSE mounts under podsnapd's prepared/ dir in the node's mount namespace (up.sh keeps
    the second node's at /run/podsnap-cluster-ns/<node>)."""
    out = subprocess.run(["nsenter", f"--mount=/run/podsnap-cluster-ns/{node}", "--", "cat", "/proc/self/mountinfo"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return [line for line in out.splitlines() if "/podsnapd/prepared/" in line and " - fuse.podsnap " in line]


def test_deleting_the_node_mid_restore_restores_the_pod_on_the_other(tutorial, custom, core):
    """The resume is placed on the second node (the first cordoned) and, once that node's
    podsnapd has started downloading the snapshot, the node is lost: its kubelet killed and
    its Node deleted. The pod garbage collector deletes the pod bound to the missing node, the
    Sandbox's controller creates it again, the webhook points it at the same snapshot, and it
    is restored on the first node (uncordoned meanwhile): the SDK's resume succeeds, the pod
    runs on the first node, the counter continues from the snapshot, and PodRestored names
    that node. The second node is brought back afterwards (its kubelet registers it again)."""
    from k8s_agent_sandbox.gke_extensions.snapshots import PodSnapshotSandboxClient

    env = cluster_env()
    first, second = node_names()
    sandboxes = PodSnapshotSandboxClient()
    cordon(core, second, True)
    sandbox, lost, result = None, False, {}
    try:
        sandbox = sandboxes.create_sandbox(template=TEMPLATE, namespace=NS)
        pod = sandbox.get_pod_name()
        assert core.read_namespaced_pod(pod, NS).spec.node_name == first
        wait("counting", 60, lambda: (last_count(core, pod) or -1) >= 5)
        before = last_count(core, pod)
        s = sandbox.suspend(snapshot_before_suspend=True)
        assert s.success, s.error_reason

        cordon(core, second, False)
        cordon(core, first, True)
        down = downloaded_bytes(env["NODE2_IP"])
        # The SDK's resume waits for the pod by name, whichever node it ends on.
        resume = threading.Thread(target=lambda: result.update(r=sandbox.resume(wait_timeout=300)), daemon=True)
        resume.start()

        def restoring_on_second():
            try:
                p = core.read_namespaced_pod(pod, NS)
            except client.ApiException:
                return None
            if p.spec.node_name != second:
                return None
            return p if downloaded_bytes(env["NODE2_IP"]) > down else None
        p = wait(f"the restore to start on {second}", 120, restoring_on_second, interval=0.05)
        ready_there = any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        node_script("lose", second)
        lost = True
        lost_at = time.monotonic()
        assert not ready_there, f"pod {pod} was already Ready on {second}: the node was not lost mid-restore"
        print(f"{second} lost while its podsnapd downloaded the snapshot (pod {p.metadata.uid})")
        cordon(core, first, False)

        resume.join(timeout=360)
        assert not resume.is_alive(), "the SDK's resume did not return"
        r = result["r"]
        assert r.success and r.restored_from_snapshot, r
        now = core.read_namespaced_pod(pod, NS)
        assert now.metadata.uid != p.metadata.uid, "the pod bound to the lost node was not replaced"
        assert now.spec.node_name == first, f"pod {pod} was restored on {now.spec.node_name}, not {first}"
        restored = [c for c in now.status.conditions or [] if c.type == "PodRestored"]
        assert restored and restored[0].status == "True" and first in (restored[0].message or ""), restored
        after = wait("the restored counter", 60, lambda: first_count(core, pod))
        assert before < after <= before + 9, f"counter {before} -> {after}: not continued from the snapshot"
        print(f"restored on {first} {time.monotonic() - lost_at:.0f} s after {second} was lost; "
              f"counter {before} -> {after}")

        # The node comes back clean: its new podsnapd removed the lazy mount the old one left
        # for the abandoned restore.
        bring_back(core, second)
        lost = False
        wait(f"no lazy image mount left on {second}", 60, lambda: not lazy_mounts(second))
    finally:
        cordon(core, first, False)
        if lost:
            bring_back(core, second)
        cordon(core, second, False)
        if sandbox is not None:
            sandbox.terminate()
            sandboxes.delete_sandbox(sandbox.claim_name, NS)
