"""On a failed cluster test, the cluster's side of the story: every pod that is not running
(phase, container states), the node's pressure conditions and taints, and the latest warning
events, added to the test's report so that a
CI log shows why, not only that it timed out. Also the run of the tutorial's client that
tests/cluster (SDK 0.4.6) and tests/cluster/sdk1 (SDK 1.0.x) both make."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KUBECONFIG = ROOT / "target" / "cluster" / "kubeconfig"


def cluster_env():
    """target/cluster/env, written by scripts/cluster/up.sh (KEY=VALUE lines)."""
    env = {}
    path = ROOT / "target" / "cluster" / "env"
    for line in path.read_text().splitlines() if path.exists() else []:
        k, _, v = line.partition("=")
        env[k] = v
    return env


def node_names():
    """The cluster's nodes as up.sh made them: the first, and the second with
    PODSNAP_CLUSTER_NODES=2."""
    env = cluster_env()
    return [env.get("NODE_NAME", "podsnap-node")] + ([env["NODE2_NAME"]] if env.get("NODE2_NAME") else [])


def kubelet_root_on_host(node):
    """Where a node's kubelet root (/var/lib/kubelet inside the node) is on this host: the
    second node's is its own directory, mounted there in its mount namespace (up.sh)."""
    env = cluster_env()
    if node and node == env.get("NODE2_NAME"):
        return Path(env.get("CLUSTER_VAR", "/var/lib/podsnap-cluster")) / "nodes" / node / "kubelet"
    return Path("/var/lib/kubelet")


@pytest.fixture
def tutorial_client():
    """Runs docs/tutorial/client.py with whichever SDK this interpreter imports and checks
    that the counter continued from the snapshot; returns the client's output."""
    def run():
        out = subprocess.run([sys.executable, str(ROOT / "docs" / "tutorial" / "client.py")],
                             capture_output=True, text=True, timeout=600,
                             env={**os.environ, "KUBECONFIG": str(KUBECONFIG)})
        assert out.returncode == 0, out.stdout + out.stderr
        before = int(re.search(r"^Count before: (\d+)$", out.stdout, re.M).group(1))
        after = int(re.search(r"^Count after: (\d+)$", out.stdout, re.M).group(1))
        assert "restored from snapshot: True" in out.stdout, out.stdout
        # Continues from the snapshot (taken right after `before` was read): not from 0, and
        # not from where it would be had it kept running through the 10 s suspension.
        assert before >= 5
        assert before < after <= before + 9, out.stdout
        return out.stdout
    return run


def cluster_story():
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=str(KUBECONFIG))
    core = client.CoreV1Api(api)
    out = []
    for node in core.list_node(_request_timeout=10).items:
        bad = [f"{c.type}={c.status} ({c.reason}: {c.message})" for c in node.status.conditions or []
               if (c.type == "Ready") != (c.status == "True")]
        taints = [f"{t.key}:{t.effect}" for t in node.spec.taints or []]
        if bad or taints:
            out.append(f"node {node.metadata.name}: {'; '.join(bad)} taints {taints}")
    for pod in core.list_pod_for_all_namespaces(_request_timeout=10).items:
        phase = pod.status.phase
        statuses = (pod.status.container_statuses or []) + (pod.status.init_container_statuses or [])
        waiting = [cs for cs in statuses if cs.state and cs.state.waiting]
        if phase in ("Running", "Succeeded") and not waiting:
            continue
        out.append(f"pod {pod.metadata.namespace}/{pod.metadata.name} on {pod.spec.node_name}: {phase}")
        for cs in statuses:
            out.append(f"  container {cs.name}: {cs.state}".replace("\n", " "))
    events = core.list_event_for_all_namespaces(_request_timeout=10).items
    # Warnings every pod of this cluster gets (no cluster DNS, cgroup v1) say nothing.
    noise = {"MissingClusterDNS", "CgroupV1"}
    warnings = [e for e in events if e.type != "Normal" and e.reason not in noise]
    warnings.sort(key=lambda e: str(e.last_timestamp or e.event_time or ""))
    for e in warnings[-20:]:
        obj = e.involved_object
        out.append(f"event {e.type} {obj.kind}/{obj.name} {e.reason} x{e.count or 1}: {e.message}")
    return "\n".join(out) or "every pod is running; no warning events"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed or not KUBECONFIG.exists():
        return
    try:
        story = cluster_story()
    except Exception as e:  # the story is a courtesy; never mask the test's own failure
        story = f"(could not read the cluster: {e})"
    report.sections.append(("cluster at the failure", story))
