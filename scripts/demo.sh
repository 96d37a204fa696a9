#!/usr/bin/env bash
# The podsnap story on one node: start podsnapd with a local store, run a counter sandbox
# under runsc, checkpoint it with --stop, wait 10 seconds, restore it, and show the counter
# continuing where it stopped (paused, not reset, not left running).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${PODSNAP_BIN:-${CARGO_TARGET_DIR:-$here/target}/debug}
[ "$(id -u)" = 0 ] || { echo "demo: runsc needs root; run as root" >&2; exit 1; }
command -v runsc >/dev/null || { echo "demo: runsc not found (apt-get install runsc)" >&2; exit 1; }
[ -x /bin/busybox ] || { echo "demo: /bin/busybox not found (apt-get install busybox-static)" >&2; exit 1; }

work=$(mktemp -d /tmp/podsnap-demo.XXXXXX)
sock=$work/podsnapd.sock
root=$work/runsc-root
id=demo-counter-$$x
restored=demo-restored-$$x
cleanup() {
  for c in "$restored" "$id"; do runsc --root "$root" --network=none delete --force "$c" >/dev/null 2>&1 || true; done
  [ -n "${daemon:-}" ] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

echo "== podsnapd with a local store in $work/store"
"$bin/podsnapd" --listen "unix://$sock" --store "file://$work/store" --runsc-root "$root" \
  --state-dir "$work/state" --runsc-flag=--network=none >"$work/podsnapd.log" 2>&1 &
daemon=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
[ -S "$sock" ] || { echo "demo: podsnapd did not start:" >&2; cat "$work/podsnapd.log" >&2; exit 1; }

echo "== a counter sandbox under runsc (prints Count: N every second)"
mkdir -p "$work/bundle/rootfs/bin" "$work/bundle/rootfs/proc" "$work/bundle/rootfs/dev" "$work/bundle/rootfs/tmp"
cp /bin/busybox "$work/bundle/rootfs/bin/busybox"
ln -s busybox "$work/bundle/rootfs/bin/sh"
python3 - "$work/bundle/config.json" <<'PY'
import json, sys
spec = {
  "ociVersion": "1.0.0",
  "process": {"terminal": False, "user": {"uid": 0, "gid": 0},
              "args": ["/bin/sh", "-c", 'i=0; while :; do echo "Count: $i"; i=$((i+1)); sleep 1; done'],
              "env": ["PATH=/bin"], "cwd": "/"},
  "root": {"path": "rootfs", "readonly": False},
  "hostname": "counter",
  "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
             {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}],
  "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]},
}
json.dump(spec, open(sys.argv[1], "w"), indent=1)
PY
runsc --root "$root" --network=none run --detach --bundle "$work/bundle" "$id" >"$work/counter.log" 2>&1
last_count() { tr -d '\0' <"$1" | grep -o 'Count: [0-9]*' | tail -n 1 | cut -d' ' -f2; }
first_count() { tr -d '\0' <"$1" | grep -o 'Count: [0-9]*' | head -n 1 | cut -d' ' -f2; }
sleep 5
echo "   counter log: $(tr -d '\0' <"$work/counter.log" | tail -n 1)"

echo "== podsnapctl checkpoint $id --stop"
snap=$("$bin/podsnapctl" --socket "$sock" checkpoint "$id" --label app=demo --group-by app --stop | tail -n 1)
before=$(last_count "$work/counter.log")
echo "   snapshot $snap; last count before the checkpoint: $before"
"$bin/podsnapctl" --socket "$sock" inspect "$snap" | sed 's/^/   /'

echo "== waiting 10 seconds with the sandbox down"
sleep 10
[ "$(last_count "$work/counter.log")" = "$before" ] || { echo "demo: the sandbox kept counting after the checkpoint" >&2; exit 1; }

echo "== podsnapctl restore $snap --id $restored"
"$bin/podsnapctl" --socket "$sock" restore "$snap" --bundle "$work/bundle" --id "$restored" --log "$work/restored.log"
for _ in $(seq 50); do [ -n "$(first_count "$work/restored.log" 2>/dev/null)" ] && break; sleep 0.2; done
sleep 2
after=$(first_count "$work/restored.log")
echo "   restored log: $(tr -d '\0' <"$work/restored.log" | grep Count | head -n 3 | tr '\n' ' ')..."
echo
echo "before: $before  after: $after"
if [ -n "$after" ] && [ "$after" -ge "$before" ] && [ "$after" -lt $((before + 10)) ]; then
  echo "OK: the counter continued from $before to $after after 10 s down (paused, not reset)"
else
  echo "FAIL: expected $before <= after < $((before + 10)), got '${after}'" >&2
  exit 1
fi
