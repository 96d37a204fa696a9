#!/usr/bin/env bash
# Incremental snapshots of a real runsc sandbox through podsnapd: a first `podsnapctl
# checkpoint --resume` into a group, 5% of the sandbox's pages rewritten at random places, a
# second checkpoint into the same group; against raw `runsc checkpoint --compression=none`
# + fsync of the same sandbox, in one run (benches/incremental.py has the details). Also
# measures runsc's --exclude-committed-zero-pages. Usage: make bench-incremental (make bench
# runs it too).
#
#   BENCH_INCR_MIB      sandbox memory in MiB, all random pages (default 512; 0 skips it in
#                       make bench)
#   BENCH_INCR_ROUNDS   rounds, each with a fresh sandbox (default 3)
#   BENCH_INCR_S3       1 adds podsnapd against S3 (moto) as a second case (default 0)
#   BENCH_INCR_ZERO     1 (default) also measures --exclude-committed-zero-pages; 0 skips it
#   BENCH_INCR_SEQ      1 (default) adds podsnapd with --upload-while-checkpointing=always
#   BENCH_INCR_CYCLE    1 (default) adds the suspend/resume cycle: checkpoint --stop, restore,
#                       rewrite 5%, checkpoint --stop (podsnapd's defaults, file:// store)
#   BENCH_INCR_RESULTS  report (default benches/results/incremental-latest.md, plus a .json)
#   BENCH_DIR           scratch directory (default: a new /tmp/podsnap-incr.XXXXXX, removed after)
#   BENCH_KEEP=1        keep the scratch directory
#   CARGO_TARGET_DIR    respected for the release build.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
[ "$(id -u)" = 0 ] || { echo "bench-incremental: runsc needs root" >&2; exit 1; }
for t in runsc gcc python3; do
  command -v "$t" >/dev/null || { echo "bench-incremental: $t is required" >&2; exit 1; }
done
ckpt_help=$(runsc checkpoint --help 2>&1 || true)
grep -q -- '-compression' <<<"$ckpt_help" || {
  echo "bench-incremental: this runsc ($(runsc --version | head -n 1)) has no checkpoint" \
    "--compression flag, so its images cannot be deduplicated page by page" >&2
  exit 1
}

echo "== building release binaries" >&2
(cd "$repo" && cargo build --release -q -p podsnapctl -p podsnapd)
tdir=$(cd "$repo" && cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')

if [ -n "${BENCH_DIR:-}" ]; then D=$BENCH_DIR; mkdir -p "$D"; own_dir=0
else D=$(mktemp -d /tmp/podsnap-incr.XXXXXX); own_dir=1; fi
cleanup() {
  if [ "${BENCH_KEEP:-0}" != 1 ]; then
    # runsc 2026 leaves a bind mount (null-netns) in every --root it used.
    grep -F " $D/" /proc/self/mountinfo | awk '{print $5}' | xargs -r -n1 umount -l 2>/dev/null
    if [ "$own_dir" = 1 ]; then rm -rf "$D"; else rm -rf "$D/incr"; fi
  fi
}
trap cleanup EXIT

echo "== load before the run: $(uptime)" >&2
python3 "$here/incremental.py" --bin "$tdir/release" --dir "$D" \
  --mib "${BENCH_INCR_MIB:-512}" --rounds "${BENCH_INCR_ROUNDS:-3}" \
  --s3 "${BENCH_INCR_S3:-0}" --zero "${BENCH_INCR_ZERO:-1}" --seq "${BENCH_INCR_SEQ:-1}" \
  --cycle "${BENCH_INCR_CYCLE:-1}" \
  --results "${BENCH_INCR_RESULTS:-$here/results/incremental-latest.md}"
