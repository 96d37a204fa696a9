#!/usr/bin/env bash
# Cold start against restore of a heavy-import Python sandbox (Debian's python3 with numpy,
# scipy and pandas from the host, mounted read-only): `runsc run` until its first answer,
# against raw `runsc restore` and `podsnapctl restore` of a snapshot of it until the
# restored process answers (benches/coldstart.py has the details). Target: restore >= 3x
# faster than a cold start. Usage: make bench-coldstart (make bench runs it too).
#
#   BENCH_COLD_ROUNDS   rounds (default 5; 0 skips it in make bench)
#   BENCH_COLD_ROWS     rows of the app's pandas frame (default 200000)
#   BENCH_COLD_S3       1 adds podsnapd with an S3 (moto) store (default 0)
#   BENCH_COLD_NODE     1 adds restores through a podsnapd with an empty cache (default 0)
#   BENCH_COLD_RUNSC    the runsc to run it all on (default: runsc on PATH; the 2026 build,
#                       /opt/podsnap/gvisor/runsc, has restore --background: lazy restores)
#   BENCH_COLD_RESULTS  report (default benches/results/coldstart-latest.md, plus a .json)
#   BENCH_DIR           scratch directory (default: a new /tmp/podsnap-cold.XXXXXX, removed after)
#   BENCH_KEEP=1        keep the scratch directory
#   CARGO_TARGET_DIR    respected for the release build.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
[ "$(id -u)" = 0 ] || { echo "bench-coldstart: runsc needs root" >&2; exit 1; }
command -v runsc >/dev/null || { echo "bench-coldstart: runsc is required" >&2; exit 1; }
/usr/bin/python3 -c 'import numpy, scipy, pandas' 2>/dev/null || {
  echo "bench-coldstart: Debian's python3 with numpy, scipy and pandas is required" \
    "(apt-get install python3-numpy python3-scipy python3-pandas)" >&2
  exit 1
}

echo "== building release binaries" >&2
(cd "$repo" && cargo build --release -q -p podsnapctl -p podsnapd)
tdir=$(cd "$repo" && cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')

if [ -n "${BENCH_DIR:-}" ]; then D=$BENCH_DIR; mkdir -p "$D"; own_dir=0
else D=$(mktemp -d /tmp/podsnap-cold.XXXXXX); own_dir=1; fi
cleanup() {
  if [ "${BENCH_KEEP:-0}" != 1 ]; then
    # runsc 2026 leaves a bind mount (null-netns) in every --root it used.
    grep -F " $D/" /proc/self/mountinfo | awk '{print $5}' | xargs -r -n1 umount -l 2>/dev/null
    if [ "$own_dir" = 1 ]; then rm -rf "$D"; else rm -rf "$D/coldstart"; fi
  fi
}
trap cleanup EXIT

if [ -n "${BENCH_COLD_RUNSC:-}" ]; then
  # Its directory first on PATH (the binary must be named runsc): the harness's runsc and
  # podsnapd's both.
  [ "$(basename "$BENCH_COLD_RUNSC")" = runsc ] || { echo "BENCH_COLD_RUNSC must name a file called runsc" >&2; exit 1; }
  export PATH="$(dirname "$(readlink -f "$BENCH_COLD_RUNSC")"):$PATH"
fi
echo "== load before the run: $(uptime); $(runsc --version | head -n 1)" >&2
python3 "$here/coldstart.py" --bin "$tdir/release" --dir "$D" \
  --rounds "${BENCH_COLD_ROUNDS:-5}" --rows "${BENCH_COLD_ROWS:-200000}" \
  --s3 "${BENCH_COLD_S3:-0}" --cold-node "${BENCH_COLD_NODE:-0}" \
  --results "${BENCH_COLD_RESULTS:-$here/results/coldstart-latest.md}"
