"""`postCheckpoint: stop` through the Pod Snapshot API: the checkpointed pod goes away (the
controller deletes it: left alone, the kubelet would restart its containers fresh in a new
sandbox, under gVisor's shim and the runc shim alike), its PodSnapshot is Ready, and a new pod
naming that snapshot (`podsnapshot.gke.io/ps-name`) continues the counter.

Run: make cluster-up && python3 -m pytest -q tests/cluster/test_post_checkpoint.py
"""

import re
import uuid

from kubernetes import client

from test_podsnapshot import NS, PS, api, core, counter_pod, custom, trigger, triggered, wait  # noqa: F401


def counts(core, pod):
    try:
        log = core.read_namespaced_pod_log(pod, NS)
    except client.ApiException:
        return []
    return [int(n) for n in re.findall(r"^Count: (\d+)$", log, re.M)]


def gone(core, name):
    try:
        core.read_namespaced_pod(name, NS)
    except client.ApiException as e:
        return e.status == 404
    return False


def test_stop_deletes_the_pod_and_its_snapshot_restores(custom, core):
    group = uuid.uuid4().hex[:10]
    app = f"stop-{group}"
    policy = f"stop-policy-{group}"
    custom.create_namespaced_custom_object(*PS, NS, "podsnapshotpolicies", {
        "apiVersion": "podsnapshot.gke.io/v1", "kind": "PodSnapshotPolicy",
        "metadata": {"name": policy},
        "spec": {"storageConfigName": "local", "selector": {"matchLabels": {"app": app}},
                 "triggerConfig": {"type": "manual", "postCheckpoint": "stop"},
                 "snapshotGroupingRules": {"groupByLabelValue": {"labels": ["app"]}}}})
    src, dst = f"src-{group}", f"dst-{group}"
    try:
        core.create_namespaced_pod(NS, counter_pod(src, {"app": app}))
        wait("the source pod to count", 120, lambda: len(counts(core, src)) >= 4)
        # Read before the trigger: once stopped, the kubelet may restart the container fresh
        # before the controller's delete lands.
        before = counts(core, src)[-1]
        t = trigger(custom, src)
        assert triggered(t)["status"] == "True", t["status"]
        wait("the stopped pod to be deleted", 60, lambda: gone(core, src))
        ps = t["status"]["snapshotCreated"]["name"]
        snap = custom.get_namespaced_custom_object(*PS, NS, "podsnapshots", ps)
        assert any(c["type"] == "Ready" and c["status"] == "True" for c in snap["status"]["conditions"]), snap

        core.create_namespaced_pod(NS, counter_pod(dst, {"app": app}, {"podsnapshot.gke.io/ps-name": ps}))
        first = wait("the restored counter", 120, lambda: (counts(core, dst) or [None])[0])
        # The checkpoint came a few seconds after `before` was printed: continued, not fresh.
        assert before < first <= before + 10, (before, first)
    finally:
        for name in (src, dst):
            try:
                core.delete_namespaced_pod(name, NS, grace_period_seconds=0)
            except client.ApiException:
                pass
        custom.delete_namespaced_custom_object(*PS, NS, "podsnapshotpolicies", policy)
