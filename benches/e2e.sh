#!/usr/bin/env bash
# End-to-end benchmark: checkpoint-to-durable and restore-to-running of a real runsc sandbox
# holding BENCH_E2E_MIB of memory, through podsnapd and with raw runsc on local disk, in one
# run (benches/e2e.py has the details). Usage: make bench-e2e   (make bench runs it too)
#
#   BENCH_E2E_MIB      sandbox memory in MiB (default 1024; 128 for a quick run)
#   BENCH_E2E_ROUNDS   rounds, each checkpointing and restoring every case once (default 3)
#   BENCH_E2E_S3       1 adds podsnapd against S3 (moto) as a third case (default 0)
#   BENCH_E2E_NOCACHE  1 adds podsnapd with its node page cache off, file:// store (default 0)
#   BENCH_E2E_REAP     1: the harness reaps exited sandboxes at once, as a pod's shim does
#                      (default 0: the machine's init does, late on some VMs)
#   BENCH_E2E_RUNSC    the runsc to run it all on, a file named runsc (default: runsc on PATH;
#                      /opt/podsnap/gvisor/runsc is the 2026 build: lazy restores)
#   BENCH_E2E_RESULTS  report (default benches/results/e2e-latest.md, plus a .json of the rows)
#   BENCH_DIR          scratch directory (default: a new /tmp/podsnap-e2e.XXXXXX, removed after)
#   BENCH_KEEP=1       keep the scratch directory
#   CARGO_TARGET_DIR   respected for the release build.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
[ "$(id -u)" = 0 ] || { echo "bench-e2e: runsc needs root" >&2; exit 1; }
for t in runsc gcc python3; do
  command -v "$t" >/dev/null || { echo "bench-e2e: $t is required" >&2; exit 1; }
done

echo "== building release binaries" >&2
(cd "$repo" && cargo build --release -q -p podsnapctl -p podsnapd)
tdir=$(cd "$repo" && cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')

if [ -n "${BENCH_DIR:-}" ]; then D=$BENCH_DIR; mkdir -p "$D"; own_dir=0
else D=$(mktemp -d /tmp/podsnap-e2e.XXXXXX); own_dir=1; fi
cleanup() {
  if [ "${BENCH_KEEP:-0}" != 1 ]; then
    # runsc 2026 leaves a bind mount (null-netns) in every --root it used.
    grep -F " $D/" /proc/self/mountinfo | awk '{print $5}' | xargs -r -n1 umount -l 2>/dev/null
    if [ "$own_dir" = 1 ]; then rm -rf "$D"; else rm -rf "$D/e2e"; fi
  fi
}
trap cleanup EXIT

if [ -n "${BENCH_E2E_RUNSC:-}" ]; then
  # Its directory first on PATH (the harness's runsc and podsnapd's both).
  [ "$(basename "$BENCH_E2E_RUNSC")" = runsc ] || { echo "BENCH_E2E_RUNSC must name a file called runsc" >&2; exit 1; }
  export PATH="$(dirname "$(readlink -f "$BENCH_E2E_RUNSC")"):$PATH"
fi
echo "== load before the run: $(uptime); $(runsc --version | head -n 1)" >&2
python3 "$here/e2e.py" --bin "$tdir/release" --dir "$D" \
  --mib "${BENCH_E2E_MIB:-1024}" --rounds "${BENCH_E2E_ROUNDS:-3}" --s3 "${BENCH_E2E_S3:-0}" \
  --nocache "${BENCH_E2E_NOCACHE:-0}" --reap "${BENCH_E2E_REAP:-0}" \
  --results "${BENCH_E2E_RESULTS:-$here/results/e2e-latest.md}"
