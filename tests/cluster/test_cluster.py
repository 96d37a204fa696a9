"""Smoke test of the local cluster that `make cluster-up` starts (docs/cluster.md).

Skipped unless target/cluster/kubeconfig exists or PODSNAP_CLUSTER=1 (then a cluster that is not
up fails the tests). Everything goes through the Kubernetes API with the `kubernetes` client:
the node is Ready, a runc pod and a gVisor pod (RuntimeClass `gvisor`) run and their logs are
served through `pods/log`, and the agent-sandbox controller turns a SandboxTemplate and a
SandboxClaim into a Ready Sandbox with a running pod, under runc and under gVisor, and
replicas 0 and 1 remove and recreate that pod (what SDK 0.4.6's suspend and resume do).

The gVisor cases need a podsnap-runsc in target/{release,debug} whose waiter lets app
containers start under containerd's runc shim (docs/cluster.md, "gVisor pods"): with plain
runsc StartContainer never returns and they fail after the kubelet's 2-minute deadline.

Run: make cluster-up && python3 -m pytest -q tests/cluster
(needs: pip install pytest kubernetes==34.1.0; newer clients require python-dateutil 3, which
botocore, and so moto, refuse)
"""

import importlib
import os
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KUBECONFIG = ROOT / "target" / "cluster" / "kubeconfig"
REQUIRED = os.environ.get("PODSNAP_CLUSTER") == "1"
# A piece of this test's own (the tutorial's SDK) missing: a failure when the cluster is
# required or privileged tests are (make test-cluster, make test as root), a skip otherwise.
PIECES_REQUIRED = REQUIRED or os.environ.get("PODSNAP_REQUIRE_PRIVILEGED") == "1"

if not KUBECONFIG.exists() and not REQUIRED:
    pytest.skip("no cluster (make cluster-up, or PODSNAP_CLUSTER=1 to require one)", allow_module_level=True)

from kubernetes import client, config  # noqa: E402


def import_or_missing(module):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        reason = f"{module} not importable ({e}): pip install k8s-agent-sandbox==0.4.6"
        if PIECES_REQUIRED:
            pytest.fail(f"{reason} (PODSNAP_CLUSTER=1 or PODSNAP_REQUIRE_PRIVILEGED=1)")
        pytest.skip(reason)


NAMESPACE = "default"
BUSYBOX = "localhost/podsnap/busybox:1"
AGENTS = ("agents.x-k8s.io", "v1alpha1")
EXTENSIONS = ("extensions.agents.x-k8s.io", "v1alpha1")
# The counter the tutorial's template runs, in busybox sh.
COUNTER = 'i=0; while true; do echo "Count: $i"; i=$((i+1)); sleep 1; done'


@pytest.fixture(scope="module")
def api():
    assert KUBECONFIG.exists(), f"{KUBECONFIG} missing: run make cluster-up"
    return config.new_client_from_config(config_file=str(KUBECONFIG))


@pytest.fixture(scope="module")
def core(api):
    return client.CoreV1Api(api)


def wait(what, timeout, fn):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(1)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")


def condition(obj, kind):
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == kind:
            return c
    return None


def pod_manifest(name, command, runtime_class=None):
    spec = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 1,
        "containers": [
            {
                "name": "main",
                "image": BUSYBOX,
                "imagePullPolicy": "Never",
                "command": ["sh", "-c", command],
            }
        ],
    }
    if runtime_class:
        spec["runtimeClassName"] = runtime_class
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def pod_story(core, name):
    """The pod's phase, container states and events: why it is not running."""
    out = []
    try:
        pod = core.read_namespaced_pod(name, NAMESPACE)
        out.append(f"phase {pod.status.phase}; conditions "
                   + ", ".join(f"{c.type}={c.status} {c.reason or ''} {c.message or ''}".strip()
                               for c in pod.status.conditions or []))
        for cs in (pod.status.container_statuses or []) + (pod.status.init_container_statuses or []):
            out.append(f"container {cs.name}: {cs.state}")
    except client.ApiException as e:
        out.append(f"pod: {e.status} {e.reason}")
    events = core.list_namespaced_event(NAMESPACE, field_selector=f"involvedObject.name={name}").items
    for ev in events:
        out.append(f"event {ev.type} {ev.reason} x{ev.count or 1}: {ev.message}")
    return "\n".join(out)


def run_pod(core, name, command, runtime_class=None, want=None):
    """Create the pod, wait until it runs and its log holds `want`, return the log."""
    core.create_namespaced_pod(NAMESPACE, pod_manifest(name, command, runtime_class))
    try:
        try:
            wait(f"pod {name} Running", 120,
                 lambda: core.read_namespaced_pod(name, NAMESPACE).status.phase in ("Running", "Succeeded"))
        except AssertionError as e:
            raise AssertionError(f"{e}\n{pod_story(core, name)}") from None

        def log():
            text = core.read_namespaced_pod_log(name, NAMESPACE)
            return text if want in text else None

        return wait(f"log of {name} containing {want!r}", 60, log)
    finally:
        core.delete_namespaced_pod(name, NAMESPACE, grace_period_seconds=0)


def test_node_ready_and_apis_served(api, core):
    from conftest import node_names
    nodes = core.list_node().items
    assert sorted(n.metadata.name for n in nodes) == sorted(node_names())
    for node in nodes:
        ready = [c for c in node.status.conditions if c.type == "Ready"]
        assert ready and ready[0].status == "True", (node.metadata.name, ready)
    groups = {g.name: [v.version for v in g.versions] for g in client.ApisApi(api).get_api_versions().groups}
    assert "v1alpha1" in groups.get(AGENTS[0], []), groups.keys()
    assert "v1alpha1" in groups.get(EXTENSIONS[0], []), groups.keys()
    rc = client.NodeV1Api(api).read_runtime_class("gvisor")
    assert rc.handler == "runsc"


def test_runc_pod_logs_served(core):
    name = f"smoke-runc-{uuid.uuid4().hex[:6]}"
    text = run_pod(core, name, COUNTER, want="Count: 2")
    assert text.startswith("Count: 0\n"), text


def test_gvisor_pod_runs_under_runsc(core):
    # gVisor's kernel log is its own ("Starting gVisor..."); under runc busybox's dmesg reads
    # the host's or is refused.
    name = f"smoke-gvisor-{uuid.uuid4().hex[:6]}"
    text = run_pod(core, name, "dmesg; " + COUNTER, runtime_class="gvisor", want="Count: 2")
    assert "gVisor" in text, text
    assert "Count: 0\nCount: 1\n" in text, text


def sandbox_template(name, runtime_class):
    spec = {
        "terminationGracePeriodSeconds": 1,
        "containers": [{
            "name": "counter",
            "image": BUSYBOX,
            "imagePullPolicy": "Never",
            "command": ["sh", "-c", COUNTER],
        }],
    }
    if runtime_class:
        spec["runtimeClassName"] = runtime_class
    return {
        "apiVersion": "/".join(EXTENSIONS),
        "kind": "SandboxTemplate",
        "metadata": {"name": name},
        "spec": {"podTemplate": {"metadata": {"labels": {"app": "agent-sandbox-workload"}}, "spec": spec}},
    }


def delete_quietly(fn, *args):
    try:
        fn(*args)
    except client.ApiException as e:
        if e.status != 404:
            raise


@pytest.mark.parametrize("runtime_class", [None, "gvisor"], ids=["runc", "gvisor"])
def test_agent_sandbox_claim_gives_ready_sandbox(api, core, runtime_class):
    """A SandboxClaim of a SandboxTemplate becomes a Ready Sandbox whose pod runs the template;
    replicas 0 removes the pod and replicas 1 brings it back under the same name (what SDK
    0.4.6's suspend and resume do)."""
    custom = client.CustomObjectsApi(api)
    suffix = uuid.uuid4().hex[:6]
    template = f"smoke-template-{suffix}"
    claim = f"smoke-claim-{suffix}"
    custom.create_namespaced_custom_object(*EXTENSIONS, NAMESPACE, "sandboxtemplates",
                                           sandbox_template(template, runtime_class))
    try:
        custom.create_namespaced_custom_object(*EXTENSIONS, NAMESPACE, "sandboxclaims", {
            "apiVersion": "/".join(EXTENSIONS),
            "kind": "SandboxClaim",
            "metadata": {"name": claim},
            "spec": {"sandboxTemplateRef": {"name": template}},
        })

        def ready_sandbox():
            status = custom.get_namespaced_custom_object(*EXTENSIONS, NAMESPACE, "sandboxclaims", claim)
            named = ((status.get("status") or {}).get("sandbox") or {}).get("name")
            for sb in custom.list_namespaced_custom_object(*AGENTS, NAMESPACE, "sandboxes")["items"]:
                owners = sb["metadata"].get("ownerReferences") or []
                if sb["metadata"]["name"] == named or any(o["name"] == claim for o in owners):
                    c = condition(sb, "Ready")
                    if c and c["status"] == "True":
                        return sb
            return None

        sandbox = wait(f"a Ready Sandbox for claim {claim}", 180, ready_sandbox)
        name = sandbox["metadata"]["name"]
        pod_name = sandbox["metadata"]["annotations"]["agents.x-k8s.io/pod-name"]
        assert sandbox["status"]["selector"].startswith("agents.x-k8s.io/sandbox-name-hash=")
        pod = core.read_namespaced_pod(pod_name, NAMESPACE)
        assert pod.status.phase == "Running"
        assert pod.spec.runtime_class_name == runtime_class
        assert pod.metadata.labels["app"] == "agent-sandbox-workload"
        wait(f"counter in the log of {pod_name}", 60,
             lambda: "Count: 1" in core.read_namespaced_pod_log(pod_name, NAMESPACE))
        first_uid = pod.metadata.uid

        def pod_gone():
            return not [p for p in core.list_namespaced_pod(NAMESPACE).items if p.metadata.name == pod_name]

        custom.patch_namespaced_custom_object(*AGENTS, NAMESPACE, "sandboxes", name, {"spec": {"replicas": 0}})
        wait(f"pod {pod_name} gone after replicas 0", 120, pod_gone)
        custom.patch_namespaced_custom_object(*AGENTS, NAMESPACE, "sandboxes", name, {"spec": {"replicas": 1}})

        def new_pod_running():
            pods = [p for p in core.list_namespaced_pod(NAMESPACE).items
                    if p.metadata.name == pod_name and p.metadata.uid != first_uid
                    and p.status.phase == "Running"]
            return bool(pods) and ready_sandbox() is not None

        # The Sandbox's Ready condition may still be the old pod's: wait for the new pod.
        wait(f"a new pod {pod_name} Running and Sandbox {name} Ready after replicas 1", 180,
             new_pod_running)
    finally:
        delete_quietly(custom.delete_namespaced_custom_object, *EXTENSIONS, NAMESPACE, "sandboxclaims", claim)
        delete_quietly(custom.delete_namespaced_custom_object, *EXTENSIONS, NAMESPACE, "sandboxtemplates", template)


def test_sdk_create_sandbox_on_gvisor(api, core, monkeypatch):
    """The agent-sandbox SDK the tutorial pins (k8s-agent-sandbox 0.4.6) claims a Sandbox from a
    gVisor template on this cluster, finds its pod, and deletes it again."""
    sdk = import_or_missing("k8s_agent_sandbox")
    # The SDK calls load_kube_config(), whose default path was read from KUBECONFIG at import.
    monkeypatch.setattr(config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(KUBECONFIG))
    custom = client.CustomObjectsApi(api)
    template = f"smoke-sdk-{uuid.uuid4().hex[:6]}"
    custom.create_namespaced_custom_object(*EXTENSIONS, NAMESPACE, "sandboxtemplates",
                                           sandbox_template(template, "gvisor"))
    sandboxes = sdk.SandboxClient()
    try:
        sandbox = sandboxes.create_sandbox(template=template, namespace=NAMESPACE)
        pod_name = sandbox.get_pod_name()
        pod = core.read_namespaced_pod(pod_name, NAMESPACE)
        assert pod.spec.runtime_class_name == "gvisor"
        assert pod.status.phase == "Running"
        wait(f"counter in the log of {pod_name}", 60,
             lambda: "Count: 1" in core.read_namespaced_pod_log(pod_name, NAMESPACE))
        claim = sandbox.claim_name
        sandbox.terminate()
        wait(f"claim {claim} deleted", 60, lambda: claim not in [
            c["metadata"]["name"] for c in
            custom.list_namespaced_custom_object(*EXTENSIONS, NAMESPACE, "sandboxclaims")["items"]])
    finally:
        sandboxes.delete_all()
        delete_quietly(custom.delete_namespaced_custom_object, *EXTENSIONS, NAMESPACE, "sandboxtemplates", template)


def test_each_nodes_containerd_socket_imports_images_for_its_pods(core, tmp_path):
    """Every node's containerd answers at target/cluster/<node>/containerd.sock (the first
    node's also at target/cluster/containerd.sock): an image imported there with
    `ctr -n k8s.io images import` runs a pod on that node, and only that node has it."""
    import subprocess
    from conftest import node_names
    ctr = ROOT / "target" / "cluster" / "bin" / "ctr"
    nodes = node_names()
    first_sock = ROOT / "target" / "cluster" / "containerd.sock"
    assert first_sock.resolve() == (ROOT / "target" / "cluster" / nodes[0] / "containerd.sock").resolve()
    for node in nodes:
        sock = ROOT / "target" / "cluster" / node / "containerd.sock"
        assert sock.is_socket(), f"{sock} is not a socket"
        image = f"localhost/podsnap/probe-{uuid.uuid4().hex[:6]}:1"
        tar = tmp_path / f"{node}.tar"
        subprocess.run(["python3", str(ROOT / "scripts" / "cluster" / "oci-image.py"), str(tar), image,
                        "--cmd", '["/bin/echo", "probe ran"]', "/bin/echo=/bin/busybox"], check=True)
        subprocess.run([str(ctr), "--address", str(sock), "-n", "k8s.io", "images", "import", str(tar)],
                       check=True, capture_output=True)
        for other in nodes:
            listed = subprocess.run([str(ctr), "--address", str(ROOT / "target" / "cluster" / other / "containerd.sock"),
                                     "-n", "k8s.io", "images", "ls", "-q"], check=True, capture_output=True,
                                    text=True).stdout.split()
            assert (image in listed) == (other == node), f"{image} imported on {node}; {other} lists it: {image in listed}"
        name = f"probe-{uuid.uuid4().hex[:6]}"
        core.create_namespaced_pod(NAMESPACE, client.V1Pod(
            metadata=client.V1ObjectMeta(name=name),
            spec=client.V1PodSpec(node_name=node, restart_policy="Never", containers=[client.V1Container(
                name="probe", image=image, image_pull_policy="Never")])))
        try:
            wait(f"pod {name} on {node} to finish", 120,
                 lambda: core.read_namespaced_pod(name, NAMESPACE).status.phase in ("Succeeded", "Failed"))
            pod = core.read_namespaced_pod(name, NAMESPACE)
            assert pod.status.phase == "Succeeded", pod_story(core, name)
            assert core.read_namespaced_pod_log(name, NAMESPACE) == "probe ran\n"
        finally:
            core.delete_namespaced_pod(name, NAMESPACE, grace_period_seconds=0)
            subprocess.run([str(ctr), "--address", str(sock), "-n", "k8s.io", "images", "rm", image],
                           capture_output=True)
