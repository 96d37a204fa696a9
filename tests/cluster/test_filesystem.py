"""The filesystem state GKE says a pod snapshot keeps, through the tutorial's flow (SDK 0.4.6:
suspend with a snapshot, resume): a counter appends a line a second to a file on its root
filesystem, on a disk emptyDir, on a memory emptyDir and on a tmpfs (/dev/shm); after the
resume every file is complete (0, 1, ... up to where the restored counter goes on), not
empty and not restarted.

All four must be complete on both shims. On gVisor's shim (the default) podsnap-controller's
webhook gives the pod gVisor's mount hints for its emptyDirs (`dev.gvisor.spec.mount.<volume>.*`,
passed on by containerd's `pod_annotations = [..., "dev.gvisor.*"]`), so the shim makes them
sandbox-internal tmpfs mounts whose contents travel in the checkpoint. Behind the runc shim
(PODSNAP_CLUSTER_SHIM=runc) emptyDirs and /dev/shm are host directories of the old pod, outside
the checkpoint: podsnapd packs them into the snapshot (`pod-volumes.psv`) while the sandbox is
paused for its checkpoint, and podsnap-runsc unpacks them into the new pod's directories at
its sandbox's restoring create (docs/gvisor-shim.md, "emptyDir").

Run: make cluster-up && python3 -m pytest -q tests/cluster/test_filesystem.py
"""

import os
import subprocess
import time


from test_podsnapshot import KUBECONFIG, NS, ROOT, apply_file, custom, core, api, sandbox_client, tutorial, wait  # noqa: F401

TEMPLATE = "fs-counter-template"
FILES = {
    "rootfs": "/counter.txt",
    "disk emptyDir": "/disk/counter.txt",
    "memory emptyDir": "/mem/counter.txt",
    "tmpfs": "/dev/shm/counter.txt",
}


def shim():
    return os.environ.get("PODSNAP_CLUSTER_SHIM", "gvisor")


def template():
    appends = " ".join(f'echo "$i" >>{p};' for p in FILES.values())
    return {
        "apiVersion": "extensions.agents.x-k8s.io/v1alpha1",
        "kind": "SandboxTemplate",
        "metadata": {"name": TEMPLATE, "namespace": NS},
        "spec": {"podTemplate": {
            "metadata": {"labels": {"app": "agent-sandbox-workload"}},
            "spec": {
                "runtimeClassName": "gvisor",
                "containers": [{
                    "name": "counter", "image": "localhost/podsnap/busybox:1", "imagePullPolicy": "Never",
                    "command": ["sh", "-c", f'i=0; while true; do {appends} echo "Count: $i"; i=$((i+1)); sleep 1; done'],
                    "volumeMounts": [{"name": "disk", "mountPath": "/disk"}, {"name": "mem", "mountPath": "/mem"}],
                }],
                "volumes": [{"name": "disk", "emptyDir": {}}, {"name": "mem", "emptyDir": {"medium": "Memory"}}],
            },
        }},
    }


def read_file(pod, path):
    out = subprocess.run([str(ROOT / "target" / "cluster" / "bin" / "kubectl"), "--kubeconfig", str(KUBECONFIG),
                          "-n", NS, "exec", pod, "--", "cat", path], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, f"cat {path}: {out.stderr}"
    return [int(line) for line in out.stdout.split()]


def test_rootfs_emptydirs_and_tmpfs_come_back_complete(tutorial, custom, core):
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "t.yaml"
        import yaml
        p.write_text(yaml.safe_dump(template()))
        apply_file(custom, p)
    import sys
    sys.path.insert(0, str(ROOT / "docs" / "tutorial"))
    from client import first_count, last_count
    sandboxes = sandbox_client()
    sandbox = sandboxes.create_sandbox(template=TEMPLATE, namespace=NS)
    try:
        pod = sandbox.get_pod_name()
        wait("counting", 60, lambda: (last_count(core, pod) or -1) >= 4)
        before = last_count(core, pod)
        old = core.read_namespaced_pod(pod, NS)
        old_uid, old_node = old.metadata.uid, old.spec.node_name
        s = sandbox.suspend(snapshot_before_suspend=True)
        assert s.success, s.error_reason
        time.sleep(3)
        # What the old pod left on the node must not be what comes back: its disk emptyDir
        # (under the kubelet's root, /var/lib/kubelet here) is emptied before the resume, so
        # the files can only come from the snapshot.
        from conftest import kubelet_root_on_host
        old_disk = f"{kubelet_root_on_host(old_node)}/pods/{old_uid}/volumes/kubernetes.io~empty-dir/disk"
        if os.path.isdir(old_disk):
            for name in os.listdir(old_disk):
                os.remove(os.path.join(old_disk, name))
        r = sandbox.resume()
        assert r.success and r.restored_from_snapshot, r
        pod = sandbox.get_pod_name()
        after = wait("the restored counter", 60, lambda: first_count(core, pod))
        assert before < after <= before + 6, (before, after)
        missing = {}
        for what, path in FILES.items():
            got = read_file(pod, path)
            # Complete from 0, one line per tick, through the restore, no restart.
            if not got or got != list(range(len(got))) or got[-1] < after:
                missing[what] = f"{path}: {len(got)} lines, first {got[:3]}, last {got[-3:]}"
        assert not missing, f"after resume (counter {before} -> {after}) on the {shim()} shim: {missing}"
    finally:
        sandbox.terminate()
        sandboxes.delete_sandbox(sandbox.claim_name, NS)
