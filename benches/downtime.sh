#!/usr/bin/env bash
# Suspend downtime: how long `podsnapctl checkpoint --resume` freezes a running sandbox,
# against raw `runsc checkpoint --leave-running`, measured from inside it by a 1 ms ticker
# (benches/ticker.c; benches/downtime.py has the details). Target: podsnap's freeze at most
# 1.05x runsc's own. Usage: make bench-downtime (make bench runs it too).
#
#   BENCH_DOWN_MIB      random memory of the sandbox in MiB (default 256; 0 skips it in make bench)
#   BENCH_DOWN_ROUNDS   rounds, a fresh sandbox each (default 5)
#   BENCH_DOWN_REPS     checkpoints per case per sandbox (default 3)
#   BENCH_DOWN_S3       1 adds podsnapd with an S3 (moto) store (default 0)
#   BENCH_DOWN_SEQ      1 adds podsnapd with --upload-while-checkpointing=always (default 1)
#   BENCH_DOWN_PRIME    1: an untimed raw checkpoint right before every timed one (default 1)
#   BENCH_DOWN_RESULTS  report (default benches/results/downtime-latest.md, plus a .json)
#   BENCH_DIR           scratch directory (default: a new /tmp/podsnap-down.XXXXXX, removed after)
#   BENCH_KEEP=1        keep the scratch directory
#   CARGO_TARGET_DIR    respected for the release build.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
[ "$(id -u)" = 0 ] || { echo "bench-downtime: runsc needs root" >&2; exit 1; }
for t in runsc gcc python3; do
  command -v "$t" >/dev/null || { echo "bench-downtime: $t is required" >&2; exit 1; }
done
grep -q -- '-leave-running' <<<"$(runsc checkpoint --help 2>&1 || true)" || {
  echo "bench-downtime: this runsc has no checkpoint --leave-running" >&2; exit 1; }

echo "== building release binaries" >&2
(cd "$repo" && cargo build --release -q -p podsnapctl -p podsnapd)
tdir=$(cd "$repo" && cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')

if [ -n "${BENCH_DIR:-}" ]; then D=$BENCH_DIR; mkdir -p "$D"; own_dir=0
else D=$(mktemp -d /tmp/podsnap-down.XXXXXX); own_dir=1; fi
cleanup() {
  if [ "${BENCH_KEEP:-0}" != 1 ]; then
    # runsc 2026 leaves a bind mount (null-netns) in every --root it used.
    grep -F " $D/" /proc/self/mountinfo | awk '{print $5}' | xargs -r -n1 umount -l 2>/dev/null
    if [ "$own_dir" = 1 ]; then rm -rf "$D"; else rm -rf "$D/downtime"; fi
  fi
}
trap cleanup EXIT

echo "== load before the run: $(uptime)" >&2
python3 "$here/downtime.py" --bin "$tdir/release" --dir "$D" \
  --mib "${BENCH_DOWN_MIB:-256}" --rounds "${BENCH_DOWN_ROUNDS:-5}" \
  --reps "${BENCH_DOWN_REPS:-3}" --s3 "${BENCH_DOWN_S3:-0}" --seq "${BENCH_DOWN_SEQ:-1}" \
  --prime "${BENCH_DOWN_PRIME:-1}" \
  --results "${BENCH_DOWN_RESULTS:-$here/results/downtime-latest.md}"
