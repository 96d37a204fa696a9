"""The tutorial's client: create a sandbox, suspend it with a snapshot, resume it, and see
that the counter continues. Uses only the agent-sandbox SDK and the Kubernetes client, with
the kubeconfig in $KUBECONFIG. Either SDK line works:

- k8s-agent-sandbox 0.4.6 (the tutorial's, with agent-sandbox 0.4.x and ./template.yaml):
  the sandbox comes from the SandboxTemplate `python-counter-template`;
- k8s-agent-sandbox 1.0.x (with agent-sandbox 1.x and ./v1/template.yaml): 1.0.x claims
  sandboxes from a warm pool, `python-counter-pool`, made from the same counter.

    python3 docs/tutorial/client.py
"""

import inspect
import re
import time

from kubernetes import client, config
from k8s_agent_sandbox.gke_extensions.snapshots import PodSnapshotSandboxClient

NAMESPACE = "default"
TEMPLATE = "python-counter-template"  # SDK 0.4.x
WARM_POOL = "python-counter-pool"  # SDK 1.0.x


def counts(core, pod):
    """Every `Count: N` the pod printed so far (pods/log), oldest first."""
    try:
        log = core.read_namespaced_pod_log(pod, NAMESPACE)
    except client.ApiException:
        return []
    return [int(n) for n in re.findall(r"^Count: (\d+)$", log, re.M)]


def last_count(core, pod):
    return (counts(core, pod) or [None])[-1]


def first_count(core, pod):
    return (counts(core, pod) or [None])[0]


def wait(fn, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = fn()
        if v is not None:
            return v
        time.sleep(1)
    raise TimeoutError("timed out")


def main():
    config.load_kube_config()
    core = client.CoreV1Api()
    sandboxes = PodSnapshotSandboxClient()
    if "template" in inspect.signature(sandboxes.create_sandbox).parameters:
        sandbox = sandboxes.create_sandbox(template=TEMPLATE, namespace=NAMESPACE)
    else:
        sandbox = sandboxes.create_sandbox(warmpool=WARM_POOL, namespace=NAMESPACE)
    try:
        pod = sandbox.get_pod_name()
        print(f"Sandbox {sandbox.sandbox_id} runs in pod {pod}")
        wait(lambda: (c := last_count(core, pod)) is not None and c >= 5 or None)
        before = last_count(core, pod)
        print(f"Count before: {before}")

        suspended = sandbox.suspend(snapshot_before_suspend=True)
        if not suspended.success:
            raise SystemExit(f"suspend failed: {suspended.error_reason}")
        print(f"Suspended; snapshot {suspended.snapshot_response.snapshot_uid}")
        time.sleep(10)  # the sandbox is gone for a while

        resumed = sandbox.resume()
        if not resumed.success:
            raise SystemExit(f"resume failed: {resumed.error_reason}")
        print(f"Resumed; restored from snapshot: {resumed.restored_from_snapshot} ({resumed.snapshot_uid})")
        pod = sandbox.get_pod_name()
        after = wait(lambda: first_count(core, pod))
        print(f"Count after: {after}")
    finally:
        sandboxes.delete_sandbox(sandbox.claim_name, NAMESPACE)


if __name__ == "__main__":
    main()
