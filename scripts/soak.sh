#!/usr/bin/env bash
# Soak: checkpoint and restore real counter sandboxes through podsnapd in a loop, checking
# every counter continues. Bounded by SOAK_SECONDS (default 180) and SOAK_ROUNDS (default 50);
# SOAK_PARALLEL sandboxes (default 2) go through each round at once.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${PODSNAP_BIN:-${CARGO_TARGET_DIR:-$here/target}/debug}
seconds=${SOAK_SECONDS:-180}
rounds=${SOAK_ROUNDS:-50}
parallel=${SOAK_PARALLEL:-2}
[ "$(id -u)" = 0 ] || { echo "soak: runsc needs root" >&2; exit 1; }

work=$(mktemp -d /tmp/podsnap-soak.XXXXXX)
sock=$work/podsnapd.sock
root=$work/runsc-root
cleanup() {
  for c in $(runsc --root "$root" list -quiet 2>/dev/null); do runsc --root "$root" --network=none delete --force "$c" >/dev/null 2>&1 || true; done
  [ -n "${daemon:-}" ] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
"$bin/podsnapd" --listen "unix://$sock" --store "file://$work/store" --runsc-root "$root" \
  --state-dir "$work/state" --runsc-flag=--network=none >"$work/podsnapd.log" 2>&1 &
daemon=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done

mkdir -p "$work/bundle/rootfs/bin" "$work/bundle/rootfs/proc" "$work/bundle/rootfs/tmp"
cp /bin/busybox "$work/bundle/rootfs/bin/busybox"; ln -s busybox "$work/bundle/rootfs/bin/sh"
python3 - "$work/bundle/config.json" <<'PY'
import json, sys
json.dump({"ociVersion": "1.0.0",
  "process": {"terminal": False, "user": {"uid": 0, "gid": 0}, "cwd": "/", "env": ["PATH=/bin"],
              "args": ["/bin/sh", "-c", 'i=0; while :; do echo "Count: $i"; i=$((i+1)); sleep 1; done']},
  "root": {"path": "rootfs"}, "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
  "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]}},
  open(sys.argv[1], "w"))
PY
count() { tr -d '\0' <"$1" | grep -o 'Count: [0-9]*' | "$2" -n 1 | cut -d' ' -f2; }

# Each lane: a sandbox that is checkpointed (--stop) and restored under a new id every round.
lane() {
  local lane=$1 gen=0 id log snap before after
  id=soak-$lane-g${gen}x; log=$work/$id.log
  runsc --root "$root" --network=none run --detach --bundle "$work/bundle" "$id" >"$log" 2>&1
  sleep 2
  local start=$SECONDS
  for r in $(seq "$rounds"); do
    [ $((SECONDS - start)) -lt "$seconds" ] || break
    snap=$("$bin/podsnapctl" --socket "$sock" checkpoint "$id" --stop --label lane=$lane --group-by lane --keep 2 | tail -n 1)
    before=$(count "$log" tail)
    runsc --root "$root" --network=none delete --force "$id" >/dev/null 2>&1 || true
    gen=$((gen + 1)); id=soak-$lane-g${gen}x; log=$work/$id.log
    "$bin/podsnapctl" --socket "$sock" restore "$snap" --bundle "$work/bundle" --id "$id" --log "$log" >/dev/null
    for _ in $(seq 50); do [ -n "$(count "$log" head 2>/dev/null)" ] && break; sleep 0.1; done
    after=$(count "$log" head)
    if [ -z "$after" ] || [ "$after" -lt "$before" ] || [ "$after" -ge $((before + 10)) ]; then
      echo "soak: lane $lane round $r: counter went from $before to '${after}'" >&2; return 1
    fi
    echo "lane $lane round $r: $before -> $after ($snap)"
  done
}
pids=()
for l in $(seq "$parallel"); do lane "$l" & pids+=($!); done
fail=0
for p in "${pids[@]}"; do wait "$p" || fail=1; done
kept=$("$bin/podsnapctl" --socket "$sock" list | tail -n +2 | wc -l)
echo "snapshots kept: $kept (retention 2 per lane)"
[ "$kept" -le $((2 * parallel)) ] || { echo "soak: retention kept $kept" >&2; fail=1; }
[ $fail = 0 ] && echo "soak: OK" || { echo "soak: FAILED (daemon log: $work/podsnapd.log)" >&2; exit 1; }
