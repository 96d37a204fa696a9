"""Placement on two nodes (`PODSNAP_CLUSTER_NODES=2 make cluster-up`, docs/kubernetes.md
"Placement"): the controller publishes each node's facts on its Node; a restoring pod goes only
to a node whose published CPU feature set has every feature its snapshot needs, even when the
node that lacks one holds the snapshot's pages; with no such node the pod stays Pending with
PodRestored=False/NoCompatibleNode and a Warning naming what each node lacks.

Both nodes run on one machine, so they share a CPU: the test hides a feature the snapshot needs
on a node (the operator annotation podsnap.dev/cpu-features-hidden), which takes it out of that
node's published set.

The test of a pod that no node can run needs one node (the feature is hidden on every node);
the one that chooses between nodes is skipped on a one-node cluster, and PODSNAP_CLUSTER_NODES=2
in the environment makes a missing second node a failure instead.
"""

import os
import uuid

import pytest

from conftest import node_names

REQUIRED = os.environ.get("PODSNAP_CLUSTER_NODES") == "2"


def two_nodes():
    if len(node_names()) < 2:
        if REQUIRED:
            pytest.fail("PODSNAP_CLUSTER_NODES=2 but the cluster has one node (target/cluster/env)", pytrace=False)
        pytest.skip("one-node cluster (PODSNAP_CLUSTER_NODES=2 make cluster-up for two)")
    return node_names()


from test_podsnapshot import NS, PS, counter_pod, trigger, triggered, wait  # noqa: E402
from test_podsnapshot import api, core, custom, tutorial  # noqa: E402,F401  (module fixtures)

FEATURES = "podsnap.dev/cpu-features"
HIDDEN = "podsnap.dev/cpu-features-hidden"
RUNSC = "podsnap.dev/runsc-version"


def published(core, node):
    """The node's published CPU features (None until the controller published them)."""
    a = core.read_node(node).metadata.annotations or {}
    if RUNSC not in a or FEATURES not in a:
        return None
    return set(filter(None, a[FEATURES].split(",")))


def hide(core, node, feature):
    """Hides `feature` on `node` (None: shows everything again); waits until the node's
    published set says so."""
    core.patch_node(node, {"metadata": {"annotations": {HIDDEN: feature}}})
    if feature:
        wait(f"{node}'s published features without {feature}", 60,
             lambda: feature not in (published(core, node) or {feature}))


def restore_pod(core, name, ps):
    core.create_namespaced_pod(NS, counter_pod(name, {"app": "other"}, {"podsnapshot.gke.io/ps-name": ps}))
    return core.read_namespaced_pod(name, NS)


class Snapshot:
    """A counter pod of a fresh group, checkpointed by a trigger (postCheckpoint resume): its
    node, its PodSnapshot and a feature that snapshot needs. Cleans up pods, snapshots and
    hidden features."""

    def __init__(self, core, custom, nodes):
        self.core, self.custom, self.nodes = core, custom, nodes
        self.group = uuid.uuid4().hex[:10]
        self.pods = []

    def __enter__(self):
        core, custom = self.core, self.custom
        facts = wait("every node's published facts", 90,
                     lambda: all(published(core, n) for n in self.nodes) and {n: published(core, n) for n in self.nodes})
        src = self.pod("src")
        core.create_namespaced_pod(NS, counter_pod(src, {
            "app": "agent-sandbox-workload", "agents.x-k8s.io/sandbox-name-hash": self.group}))
        wait("the source pod to run", 120, lambda: core.read_namespaced_pod(src, NS).status.phase == "Running")
        self.source = core.read_namespaced_pod(src, NS).spec.node_name
        t = trigger(custom, src)
        assert triggered(t)["status"] == "True", t["status"]
        self.ps = t["status"]["snapshotCreated"]["name"]
        self.sid = custom.get_namespaced_custom_object(*PS, NS, "podsnapshots", self.ps)["status"]["snapshotID"]
        # The snapshot recorded the source node's feature set; sse2 is in every x86-64 one.
        self.feature = "sse2" if "sse2" in facts[self.source] else sorted(facts[self.source])[0]
        return self

    def pod(self, prefix):
        name = f"{prefix}-{self.group}"
        self.pods.append(name)
        return name

    def restore(self, prefix):
        name = self.pod(prefix)
        self.core.create_namespaced_pod(NS, counter_pod(name, {"app": "other"}, {"podsnapshot.gke.io/ps-name": self.ps}))
        return name, self.core.read_namespaced_pod(name, NS)

    def __exit__(self, *exc):
        for n in self.nodes:
            hide(self.core, n, None)
        for n in self.pods:
            try:
                self.core.delete_namespaced_pod(n, NS, grace_period_seconds=0)
            except Exception:  # noqa: BLE001  (never created)
                pass
        for o in self.custom.list_namespaced_custom_object(
                *PS, NS, "podsnapshots", label_selector=f"agents.x-k8s.io/sandbox-name-hash={self.group}")["items"]:
            self.custom.delete_namespaced_custom_object(*PS, NS, "podsnapshots", o["metadata"]["name"])


def test_restores_go_only_to_nodes_that_have_the_snapshots_cpu_features(tutorial, custom, core):
    nodes = two_nodes()
    with Snapshot(core, custom, nodes) as s:
        other = next(n for n in nodes if n != s.source)
        # The source node took the snapshot (its cache holds the pages, so it would be
        # preferred) but now publishes a set without a feature the snapshot needs.
        hide(core, s.source, s.feature)
        name, pod = s.restore("dst")
        placement = pod.metadata.annotations["podsnap.dev/placement"]
        assert f"{s.source} lacks {s.feature}" in placement, placement
        assert s.sid in placement and other in placement, placement
        wait(f"{name} scheduled", 60, lambda: core.read_namespaced_pod(name, NS).spec.node_name)
        on = core.read_namespaced_pod(name, NS).spec.node_name
        assert on == other, f"{name} went to {on}, which lacks {s.feature}: {placement}"
        wait(f"{name} restored", 120, lambda: any(
            c.type == "PodRestored" and c.status == "True"
            for c in core.read_namespaced_pod(name, NS).status.conditions or []))


def test_a_restore_no_node_can_run_stays_pending_and_says_why(tutorial, custom, core):
    nodes = node_names()
    with Snapshot(core, custom, nodes) as s:
        for n in nodes:
            hide(core, n, s.feature)
        name, pod = s.restore("stuck")
        why = pod.metadata.annotations["podsnap.dev/no-compatible-node"]
        for n in nodes:
            assert f"{n} lacks {s.feature}" in why, why

        def no_node_condition():
            conds = core.read_namespaced_pod(name, NS).status.conditions or []
            return next((c for c in conds if c.type == "PodRestored"), None)
        c = wait("PodRestored=False/NoCompatibleNode", 60, no_node_condition)
        assert (c.status, c.reason) == ("False", "NoCompatibleNode"), c
        assert s.ps in c.message and f"lacks {s.feature}" in c.message, c.message
        events = wait("the NoCompatibleNode Warning", 60, lambda: [
            e for e in core.list_namespaced_event(NS, field_selector=f"involvedObject.name={name}").items
            if e.reason == "NoCompatibleNode"])
        assert events[0].type == "Warning" and f"{nodes[0]} lacks {s.feature}" in events[0].message, events[0]
        scheduling = [e.message for e in core.list_namespaced_event(
            NS, field_selector=f"involvedObject.name={name}").items if e.reason == "FailedScheduling"]
        p = core.read_namespaced_pod(name, NS)
        assert p.status.phase == "Pending" and not p.spec.node_name, (p.status, scheduling)
