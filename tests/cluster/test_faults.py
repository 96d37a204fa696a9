"""Faults through Kubernetes.

- The podsnapd pod (DaemonSet podsnap-system/podsnapd) is killed while it checkpoints a pod
  for a PodSnapshotManualTrigger. The DaemonSet brings podsnapd back on that node, the trigger
  ends with a verdict (Complete, or Failed/Error with a message), no PodSnapshot is Ready
  without its image in the store, and the pod is not left frozen: its counter moves again.
- podsnap-controller's leader (the Lease holder) is killed right after a trigger is created:
  the other replica takes the Lease and the trigger completes.

The pod holds 300 MiB of random data in its /dev/shm (sandbox memory), so the checkpoint and
its upload take long enough to be interrupted. Needs podsnap installed from the image (the
default cluster-up); skipped with PODSNAP_CLUSTER_HOST_PROCESSES=1.

Run: make cluster-up && python3 -m pytest -q tests/cluster/test_faults.py
"""

import json
import re
import time
import uuid
from pathlib import Path

import pytest
from kubernetes import client

from conftest import cluster_env
from test_podsnapshot import NS, PS, api, core, custom, wait  # noqa: F401

if cluster_env().get("HOST_PROCESSES") == "1":
    pytest.skip("podsnapd runs as a host process (PODSNAP_CLUSTER_HOST_PROCESSES=1), not a DaemonSet pod",
                allow_module_level=True)

SYSTEM = "podsnap-system"
FILL = ('dd if=/dev/urandom of=/dev/shm/fill bs=1M count=300 2>/dev/null; '
        'i=0; while true; do echo "Count: $i"; i=$((i+1)); sleep 1; done')


def counts(core, pod):
    try:
        log = core.read_namespaced_pod_log(pod, NS)
    except client.ApiException:
        return []
    return [int(n) for n in re.findall(r"^Count: (\d+)$", log, re.M)]


def podsnapd_pod(core, node):
    pods = core.list_namespaced_pod(SYSTEM, label_selector="app.kubernetes.io/component=podsnapd",
                                    field_selector=f"spec.nodeName={node}").items
    return [p for p in pods if p.metadata.deletion_timestamp is None]


def ready(pod):
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def trigger_verdict(custom, name):
    t = custom.get_namespaced_custom_object(*PS, NS, "podsnapshotmanualtriggers", name)
    for c in (t.get("status") or {}).get("conditions") or []:
        if c["type"] == "Triggered" and (c["status"] == "True" or c["reason"] in ("Failed", "Error")):
            return t, c
    return None


def test_killing_podsnapd_during_a_checkpoint(custom, core):
    group = uuid.uuid4().hex[:10]
    app = f"fault-{group}"
    policy = f"fault-policy-{group}"
    src = f"fault-{group}"
    custom.create_namespaced_custom_object(*PS, NS, "podsnapshotpolicies", {
        "apiVersion": "podsnapshot.gke.io/v1", "kind": "PodSnapshotPolicy",
        "metadata": {"name": policy},
        "spec": {"storageConfigName": "local", "selector": {"matchLabels": {"app": app}},
                 "triggerConfig": {"type": "manual", "postCheckpoint": "resume"},
                 "snapshotGroupingRules": {"groupByLabelValue": {"labels": ["app"]}}}})
    try:
        core.create_namespaced_pod(NS, client.V1Pod(
            metadata=client.V1ObjectMeta(name=src, labels={"app": app}),
            spec=client.V1PodSpec(runtime_class_name="gvisor", termination_grace_period_seconds=1,
                                  containers=[client.V1Container(
                                      name="counter", image="localhost/podsnap/busybox:1",
                                      image_pull_policy="Never", command=["sh", "-c", FILL])])))
        wait("the pod to fill its memory and count", 180, lambda: len(counts(core, src)) >= 2)
        node = core.read_namespaced_pod(src, NS).spec.node_name
        (agent,) = podsnapd_pod(core, node)
        old_agent = agent.metadata.name

        name = f"fault-{group}"
        custom.create_namespaced_custom_object(*PS, NS, "podsnapshotmanualtriggers", {
            "apiVersion": "podsnapshot.gke.io/v1", "kind": "PodSnapshotManualTrigger",
            "metadata": {"name": name}, "spec": {"targetPod": src}})

        # Kill podsnapd once it has started on this pod's checkpoint.
        def checkpointing():
            log = core.read_namespaced_pod_log(old_agent, SYSTEM, container="podsnapd", since_seconds=60)
            return f"pod {NS}/{src}" in log and ("checkpointing" in log or "push started" in log)
        wait(f"{old_agent} to start the checkpoint", 30, checkpointing, interval=0.1)
        started = time.monotonic()
        log = core.read_namespaced_pod_log(old_agent, SYSTEM, container="podsnapd", since_seconds=60)
        core.delete_namespaced_pod(old_agent, SYSTEM, grace_period_seconds=0)
        # What podsnapd had done when it was killed (the last lines it logged).
        print("podsnapd's last lines before the kill:\n" + "\n".join(log.splitlines()[-3:])[-1500:])

        # The DaemonSet brings podsnapd back on the node.
        new = wait("a new podsnapd pod Ready on the node", 120, lambda: [
            p for p in podsnapd_pod(core, node) if p.metadata.name != old_agent and ready(p)])
        print(f"podsnapd {old_agent} killed; {new[0].metadata.name} Ready "
              f"{time.monotonic() - started:.1f} s later")

        # The trigger ends, with a reason when it failed.
        t, cond = wait(f"trigger {name} to end", 180, lambda: trigger_verdict(custom, name))
        print(f"trigger: {cond['status']} {cond['reason']}: {cond.get('message')}")
        if cond["status"] != "True":
            assert cond.get("message"), f"trigger failed without a message: {cond}"

        # No PodSnapshot of this pod is Ready without its image in the store; a failed trigger
        # leaves none Ready.
        store = Path(cluster_env()["SNAPSHOTS"]) / "manifests"
        for ps in custom.list_namespaced_custom_object(*PS, NS, "podsnapshots")["items"]:
            if ps["spec"].get("sourcePod") != src:
                continue
            conds = (ps.get("status") or {}).get("conditions") or []
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conds):
                assert cond["status"] == "True", f"trigger failed but PodSnapshot {ps['metadata']['name']} is Ready"
                manifest = store / f"{ps['status']['snapshotID']}.json"
                assert manifest.is_file(), f"PodSnapshot {ps['metadata']['name']} is Ready, {manifest} is missing"
                json.loads(manifest.read_text())

        # Not left frozen: the counter moves (the sandbox resumed, or its container restarted).
        def moving():
            a = counts(core, src)
            time.sleep(3)
            b = counts(core, src)
            return len(b) > len(a) or (b and a and b[-1] != a[-1])
        wait("the pod's counter to move again", 90, moving, interval=1)
    finally:
        for kind, obj in (("podsnapshotmanualtriggers", f"fault-{group}"), ("podsnapshotpolicies", policy)):
            try:
                custom.delete_namespaced_custom_object(*PS, NS, kind, obj)
            except client.ApiException:
                pass
        try:
            core.delete_namespaced_pod(src, NS, grace_period_seconds=0)
        except client.ApiException:
            pass


def test_killing_the_controller_leader_during_a_trigger(custom, core):
    """The leader of podsnap-controller's Lease is killed (its pod deleted, grace 0) right
    after a trigger is created for a pod whose checkpoint takes a while: the other replica
    takes the Lease and the trigger still completes, with a Ready PodSnapshot whose image is
    in the store."""
    from kubernetes.client import CoordinationV1Api
    leases = CoordinationV1Api(core.api_client)
    group = uuid.uuid4().hex[:10]
    app = f"leader-{group}"
    policy = f"leader-policy-{group}"
    src = f"leader-{group}"
    custom.create_namespaced_custom_object(*PS, NS, "podsnapshotpolicies", {
        "apiVersion": "podsnapshot.gke.io/v1", "kind": "PodSnapshotPolicy",
        "metadata": {"name": policy},
        "spec": {"storageConfigName": "local", "selector": {"matchLabels": {"app": app}},
                 "triggerConfig": {"type": "manual", "postCheckpoint": "resume"},
                 "snapshotGroupingRules": {"groupByLabelValue": {"labels": ["app"]}}}})
    name = f"leader-{group}"
    try:
        core.create_namespaced_pod(NS, client.V1Pod(
            metadata=client.V1ObjectMeta(name=src, labels={"app": app}),
            spec=client.V1PodSpec(runtime_class_name="gvisor", termination_grace_period_seconds=1,
                                  containers=[client.V1Container(
                                      name="counter", image="localhost/podsnap/busybox:1",
                                      image_pull_policy="Never", command=["sh", "-c", FILL])])))
        wait("the pod to fill its memory and count", 180, lambda: len(counts(core, src)) >= 2)
        leader = leases.read_namespaced_lease("podsnap-controller", SYSTEM).spec.holder_identity
        pods = {p.metadata.name for p in core.list_namespaced_pod(
            SYSTEM, label_selector="app.kubernetes.io/component=controller").items}
        assert leader in pods, f"Lease holder {leader!r} is not one of the controller's pods {sorted(pods)}"

        custom.create_namespaced_custom_object(*PS, NS, "podsnapshotmanualtriggers", {
            "apiVersion": "podsnapshot.gke.io/v1", "kind": "PodSnapshotManualTrigger",
            "metadata": {"name": name}, "spec": {"targetPod": src}})
        started = time.monotonic()
        core.delete_namespaced_pod(leader, SYSTEM, grace_period_seconds=0)

        def new_leader():
            h = leases.read_namespaced_lease("podsnap-controller", SYSTEM).spec.holder_identity
            return h if h and h != leader else None
        successor = wait("another replica to take the Lease", 120, new_leader)
        t, cond = wait(f"trigger {name} to end", 180, lambda: trigger_verdict(custom, name))
        print(f"leader {leader} killed; {successor} leads; trigger {cond['status']} {cond['reason']} "
              f"{time.monotonic() - started:.1f} s after the kill: {cond.get('message')}")
        assert cond["status"] == "True", f"the trigger did not complete after the leader was killed: {cond}"
        ps = custom.get_namespaced_custom_object(*PS, NS, "podsnapshots", t["status"]["snapshotCreated"]["name"])
        assert any(c["type"] == "Ready" and c["status"] == "True" for c in ps["status"]["conditions"]), ps
        manifest = Path(cluster_env()["SNAPSHOTS"]) / "manifests" / f"{ps['status']['snapshotID']}.json"
        assert manifest.is_file(), f"PodSnapshot {ps['metadata']['name']} is Ready, {manifest} is missing"
    finally:
        for kind, obj in (("podsnapshotmanualtriggers", name), ("podsnapshotpolicies", policy)):
            try:
                custom.delete_namespaced_custom_object(*PS, NS, kind, obj)
            except client.ApiException:
                pass
        try:
            core.delete_namespaced_pod(src, NS, grace_period_seconds=0)
        except client.ApiException:
            pass
