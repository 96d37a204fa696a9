#!/usr/bin/env bash
# Makes a real runsc checkpoint image, D/real/1, of a busybox sandbox that filled a tmpfs
# with MIB MiB (half random, half text).
#   runsc_images.sh D MIB
set -euo pipefail
D=$1 MIB=$2
root=$D/runsc-root id=podsnap-bench-$$
mkdir -p "$D/bundle/rootfs/bin" "$D/bundle/rootfs/proc" "$D/bundle/rootfs/tmp" "$D/real"
cp /bin/busybox "$D/bundle/rootfs/bin/busybox"; ln -sf busybox "$D/bundle/rootfs/bin/sh"
half=$((MIB / 2))
python3 - "$D/bundle/config.json" "$half" <<'PY'
import json, sys
half = int(sys.argv[2])
script = (f"dd if=/dev/urandom of=/tmp/rand bs=1M count={half} 2>/dev/null; "
          f"i=0; while [ $i -lt {half * 1024} ]; do busybox --help; i=$((i+64)); done > /tmp/text; "
          "touch /tmp/done; while :; do sleep 1; done")
json.dump({"ociVersion": "1.0.0",
  "process": {"terminal": False, "user": {"uid": 0, "gid": 0}, "cwd": "/", "env": ["PATH=/bin"],
              "args": ["/bin/sh", "-c", script]},
  "root": {"path": "rootfs"},
  "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
             {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}],
  "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]}},
  open(sys.argv[1], "w"))
PY
cleanup() { runsc --root "$root" --network=none delete --force "$id" >/dev/null 2>&1 || true; }
trap cleanup EXIT
timeout 60 runsc --root "$root" --network=none run --detach --bundle "$D/bundle" "$id" >"$D/real/sandbox.log" 2>&1
for _ in $(seq 600); do
  runsc --root "$root" --network=none exec "$id" /bin/busybox test -e /tmp/done 2>/dev/null && break
  sleep 0.5
done
runsc --root "$root" --network=none exec "$id" /bin/busybox test -e /tmp/done
# Without --leave-running: runsc 20221219 implements it as checkpoint + restore-in-place,
# which hung here. One stopped checkpoint is the real case.
timeout 180 runsc --root "$root" --network=none checkpoint --image-path "$D/real/1" "$id"
ls -la "$D/real/1"
