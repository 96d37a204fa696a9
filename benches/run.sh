#!/usr/bin/env bash
# podsnap benchmarks against what users would pick instead (tar | zstd, restic), on the same
# data, in one run. Usage: make bench   (or: bash benches/run.sh)
#
#   BENCH_SIZE_MIB   size of the synthetic memory image (default 1024)
#   BENCH_DIR        scratch directory (default: a new /tmp/podsnap-bench.XXXXXX, removed after)
#   BENCH_RESULTS    where the markdown table goes (default benches/results/latest.md)
#   BENCH_RUNSC_MIB  tmpfs data in the real runsc sandbox (default 64; 0 skips the runsc case)
#   BENCH_S3=0       skip the S3 (moto) cases;  BENCH_LATENCY_MS (default 20) for the proxy case
#   BENCH_KEEP=1     keep BENCH_DIR
#   BENCH_E2E_MIB    memory of the end-to-end sandbox (default 1024; 0 skips benches/e2e.sh,
#                    which also reads BENCH_E2E_ROUNDS, BENCH_E2E_S3, BENCH_E2E_RESULTS)
#   BENCH_INCR_MIB   memory of the incremental-snapshot sandbox (default 512; 0 skips
#                    benches/incremental.sh, which also reads BENCH_INCR_ROUNDS, BENCH_INCR_S3,
#                    BENCH_INCR_ZERO, BENCH_INCR_RESULTS)
#   BENCH_COLD_ROUNDS rounds of the cold-start-against-restore Python sandbox (default 5; 0
#                    skips benches/coldstart.sh, which also reads BENCH_COLD_ROWS, BENCH_COLD_S3,
#                    BENCH_COLD_RESULTS; needs python3-numpy, -scipy, -pandas from Debian)
#   BENCH_DOWN_MIB   memory of the suspend-downtime sandbox (default 256; 0 skips
#                    benches/downtime.sh, which also reads BENCH_DOWN_ROUNDS, BENCH_DOWN_REPS,
#                    BENCH_DOWN_S3, BENCH_DOWN_RESULTS)
#   BENCH_LAZY_MIB   memory of the lazy-restore sandbox (default 256; 0 skips benches/lazy.py:
#                    restore to first answer on a cold node, lazy vs eager vs raw runsc 2026,
#                    BENCH_LAZY_ROUNDS rounds, default 5; needs runsc 2026 at PODSNAP_RUNSC_2026
#                    or /opt/podsnap/gvisor/runsc)
#   CARGO_TARGET_DIR respected for the release build.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
SIZE=${BENCH_SIZE_MIB:-1024}
RUNSC_MIB=${BENCH_RUNSC_MIB:-64}
S3=${BENCH_S3:-1}
LAT_MS=${BENCH_LATENCY_MS:-20}
RESULTS=${BENCH_RESULTS:-$here/results/latest.md}
T0=$SECONDS

for t in zstd tar restic python3 taskset curl; do
  command -v "$t" >/dev/null || { echo "bench: $t is required" >&2; exit 1; }
done
[ -x /usr/bin/time ] || { echo "bench: GNU time is required (apt-get install time)" >&2; exit 1; }

echo "== building release binaries" >&2
(cd "$repo" && cargo build --release -q -p podsnapctl -p podsnapd)
tdir=$(cd "$repo" && cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
ctl=$tdir/release/podsnapctl
[ -x "$ctl" ] || { echo "bench: $ctl missing after build" >&2; exit 1; }

if [ -n "${BENCH_DIR:-}" ]; then D=$BENCH_DIR; mkdir -p "$D"; own_dir=0
else D=$(mktemp -d /tmp/podsnap-bench.XXXXXX); own_dir=1; fi
mkdir -p "$D/log"
TSV=$D/results.tsv
: >"$TSV"
pids=()
sandbox=""
runsc_root=$D/runsc-root
cleanup() {
  set +e
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  if [ -n "$sandbox" ]; then runsc --root "$runsc_root" --network=none delete --force "$sandbox" >/dev/null 2>&1; fi
  if [ "${BENCH_KEEP:-0}" != 1 ]; then
    # runsc 2026 leaves a bind mount (null-netns) in every --root it used.
    grep -F " $D/" /proc/self/mountinfo | awk '{print $5}' | xargs -r -n1 umount -l 2>/dev/null
    if [ "$own_dir" = 1 ]; then rm -rf "$D"; else rm -rf "$D"/{data,ps,ps1,tz,tz1,rr,out,real,bundle,runsc-root,e2e,incr,coldstart,downtime}; fi
  fi
}
trap cleanup EXIT

# measure KEY CASE TOOL OP STOREDIR CMD: wall, user+sys CPU, peak RSS (largest single process
# of CMD's tree, from wait4) and the growth of STOREDIR (du -sb), one TSV row.
measure() {
  local key=$1 case=$2 tool=$3 op=$4 store=$5 cmd=$6 before=0 after=0 stored=-
  if [ -n "$store" ]; then mkdir -p "$store"; before=$(du -sb "$store" | cut -f1); fi
  echo "== $key: $cmd" >&2
  if ! /usr/bin/time -f "%e %U %S %M" -o "$D/log/$key.time" bash -c "$cmd" \
      >"$D/log/$key.out" 2>"$D/log/$key.err"; then
    echo "bench: $key failed:" >&2; tail -n 20 "$D/log/$key.err" >&2; exit 1
  fi
  if [ -n "$store" ]; then after=$(du -sb "$store" | cut -f1); stored=$((after - before)); fi
  local wall user sys rss
  read -r wall user sys rss < <(tail -n 1 "$D/log/$key.time")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$key" "$case" "$tool" "$op" "$wall" \
    "$(python3 -c "print(round($user+$sys,2))")" "$rss" "$stored" "${7:-}" >>"$TSV"
}
json_field() { python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])[sys.argv[2]])' "$1" "$2"; }
fresh() { rm -rf "$D/out"; mkdir -p "$D/out"; }

echo "== generating ${SIZE} MiB images" >&2
python3 "$here/gen_image.py" "$D/data" "$SIZE" >&2
img_bytes=$((SIZE * 1024 * 1024))

# ---- synthetic images, file:// stores -------------------------------------------------------
PS=file://$D/ps
for g in gen1 gen2 gen2c; do
  measure "tar_push_$g" "$g" "tar|zstd -1 -T0" push "$D/tz" \
    "tar -C '$D/data/$g' -cf - . | zstd -q -1 -T0 > '$D/tz/$g.tar.zst'"
done
measure tar_push_gen1_1cpu gen1 "tar|zstd -1 -T0 (1 CPU)" push "$D/tz1" \
  "tar -C '$D/data/gen1' -cf - . | taskset -c 0 zstd -q -1 -T0 > '$D/tz1/gen1.tar.zst'"

measure ps_push_gen1 gen1 "podsnap" push "$D/ps" \
  "'$ctl' image push '$D/data/gen1' --store '$PS' --id bench-gen1 --json"
for g in gen2 gen2c; do
  measure "ps_push_$g" "$g" "podsnap --parent gen1" push "$D/ps" \
    "'$ctl' image push '$D/data/$g' --store '$PS' --id bench-$g --parent bench-gen1 --json"
done
measure ps_push_gen1_1cpu gen1 "podsnap (1 CPU)" push "$D/ps1" \
  "taskset -c 0 '$ctl' image push '$D/data/gen1' --store 'file://$D/ps1' --id bench-gen1 --json"

export RESTIC_PASSWORD=bench RESTIC_CACHE_DIR=$D/restic-cache
restic -r "$D/rr" init -q >/dev/null
for g in gen1 gen2 gen2c; do
  measure "restic_push_$g" "$g" "restic backup" push "$D/rr" \
    "restic -r '$D/rr' backup -q --json --host bench '$D/data/$g'"
done

for g in gen1 gen2; do
  fresh; measure "tar_pull_$g" "$g" "zstd -d -T0|tar -x" pull "" \
    "zstd -q -d -T0 < '$D/tz/$g.tar.zst' | tar -C '$D/out' -xf -"
  cmp "$D/out/pages.img" "$D/data/$g/pages.img"
  rm -rf "$D/out"
  measure "ps_pull_${g}_nofsync" "$g" "podsnap --no-fsync" pull "" \
    "'$ctl' image pull --no-fsync bench-$g '$D/out' --store '$PS'"
  cmp "$D/out/pages.img" "$D/data/$g/pages.img"
  # Durable against durable: podsnap's default pull fsyncs every file and directory.
  fresh; measure "tar_pull_${g}_sync" "$g" "zstd -d -T0|tar -x; sync" pull "" \
    "zstd -q -d -T0 < '$D/tz/$g.tar.zst' | tar -C '$D/out' -xf - && sync '$D/out/pages.img' '$D/out'"
  rm -rf "$D/out"
  measure "ps_pull_$g" "$g" "podsnap" pull "" \
    "'$ctl' image pull bench-$g '$D/out' --store '$PS'"
  cmp "$D/out/pages.img" "$D/data/$g/pages.img"
  fresh
  snap=$(restic -r "$D/rr" snapshots --json --path "$D/data/$g" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["short_id"])')
  measure "restic_pull_$g" "$g" "restic restore" pull "" \
    "restic -r '$D/rr' restore -q '$snap' --target '$D/out'"
  cmp "$D/out/$D/data/$g/pages.img" "$D/data/$g/pages.img"
done
rm -rf "$D/out"
measure ps_pull_gen1_1cpu gen1 "podsnap --no-fsync (1 CPU)" pull "" \
  "taskset -c 0 '$ctl' image pull --no-fsync bench-gen1 '$D/out' --store 'file://$D/ps1'"
rm -rf "$D/out"
fresh
measure tar_pull_gen1_1cpu gen1 "zstd -d|tar -x (1 CPU)" pull "" \
  "taskset -c 0 zstd -q -d < '$D/tz/gen1.tar.zst' | tar -C '$D/out' -xf -"
rm -rf "$D/out"

# ---- S3 over HTTP (moto), direct and through a per-request latency proxy -------------------
if [ "$S3" = 1 ] && python3 -c 'import moto.server' 2>/dev/null; then
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  python3 -m moto.server -p "$port" >"$D/log/moto.log" 2>&1 & pids+=($!)
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
  curl -sf -X PUT "http://127.0.0.1:$port/bench" >/dev/null
  export AWS_ALLOW_HTTP=true AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x AWS_REGION=us-east-1
  s3run() { # s3run PORT KEY CASE TOOL OP CMD
    local p=$1; shift
    AWS_ENDPOINT_URL=http://127.0.0.1:$p measure "$1" "$2" "$3" "$4" "" "$5"
  }
  s3run "$port" s3_push_gen1 gen1 "podsnap → S3 (moto)" push \
    "'$ctl' image push '$D/data/gen1' --store s3://bench/direct --id bench-gen1 --json"
  s3run "$port" s3_push_gen1_c1 gen1 "podsnap → S3 (moto) --concurrency 1" push \
    "'$ctl' image push '$D/data/gen1' --store s3://bench/direct-c1 --id bench-gen1 --json --concurrency 1"
  s3run "$port" s3_push_gen2 gen2 "podsnap → S3 (moto) --parent" push \
    "'$ctl' image push '$D/data/gen2' --store s3://bench/direct --id bench-gen2 --parent bench-gen1 --json"
  rm -rf "$D/out"
  s3run "$port" s3_pull_gen2 gen2 "podsnap ← S3 (moto)" pull \
    "'$ctl' image pull bench-gen2 '$D/out' --store s3://bench/direct"
  cmp "$D/out/pages.img" "$D/data/gen2/pages.img"; rm -rf "$D/out"
  lport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  python3 "$here/latency_proxy.py" "$lport" "$port" "$LAT_MS" >"$D/log/proxy.log" 2>&1 & pids+=($!)
  for _ in $(seq 50); do grep -q ready "$D/log/proxy.log" 2>/dev/null && break; sleep 0.1; done
  s3run "$lport" s3lat_push_gen1 gen1 "podsnap → S3 (moto) +${LAT_MS}ms/req" push \
    "'$ctl' image push '$D/data/gen1' --store s3://bench/latency --id bench-gen1 --json"
  # Upload concurrency (uploads in flight; the default is 4) against the added latency.
  for c in 1 16; do
    s3run "$lport" "s3lat_push_gen1_c$c" gen1 "podsnap → S3 (moto) +${LAT_MS}ms/req --concurrency $c" push \
      "'$ctl' image push '$D/data/gen1' --store s3://bench/latency-c$c --id bench-gen1 --json --concurrency $c"
  done
  s3run "$lport" s3lat_pull_gen1 gen1 "podsnap ← S3 (moto) +${LAT_MS}ms/req" pull \
    "'$ctl' image pull bench-gen1 '$D/out' --store s3://bench/latency"
  cmp "$D/out/pages.img" "$D/data/gen1/pages.img"; rm -rf "$D/out"
  for k in s3_push_gen1 s3_push_gen1_c1 s3_push_gen2 s3lat_push_gen1 s3lat_push_gen1_c1 s3lat_push_gen1_c16; do
    # S3 has no du: the stored column is what podsnap reports it uploaded.
    up=$(json_field "$D/log/$k.out" bytes_uploaded)
    python3 - "$TSV" "$k" "$up" <<'PY'
import sys
path, key, up = sys.argv[1:]
rows = [l.rstrip("\n").split("\t") for l in open(path)]
for r in rows:
    if r[0] == key:
        r[7] = up
open(path, "w").write("".join("\t".join(r) + "\n" for r in rows))
PY
  done
  s3objs=$(json_field "$D/log/s3lat_push_gen1.out" objects_written)
  echo "s3lat_objects=$s3objs" >"$D/meta.s3"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null || true; done
  pids=()
else
  echo "s3_skipped=1" >"$D/meta.s3"
fi

# ---- a real runsc checkpoint: busybox sandbox with RUNSC_MIB of data in a tmpfs ------------
real_note=""
if [ "$RUNSC_MIB" != 0 ] && command -v runsc >/dev/null && [ "$(id -u)" = 0 ] && [ -x /bin/busybox ]; then
  if bash "$here/runsc_images.sh" "$D" "$RUNSC_MIB" >"$D/log/runsc.log" 2>&1; then
    measure tar_push_real1 real1 "tar|zstd -1 -T0" push "$D/tz" \
      "tar -C '$D/real/1' -cf - . | zstd -q -1 -T0 > '$D/tz/real1.tar.zst'"
    measure ps_push_real1 real1 "podsnap" push "$D/ps" \
      "'$ctl' image push '$D/real/1' --store '$PS' --id bench-real1 --json"
    measure restic_push_real1 real1 "restic backup" push "$D/rr" \
      "restic -r '$D/rr' backup -q --json --host bench '$D/real/1'"
    fresh; measure tar_pull_real1 real1 "zstd -d -T0|tar -x" pull "" \
      "zstd -q -d -T0 < '$D/tz/real1.tar.zst' | tar -C '$D/out' -xf -"
    rm -rf "$D/out"
    measure ps_pull_real1 real1 "podsnap" pull "" \
      "'$ctl' image pull bench-real1 '$D/out' --store '$PS'"
    cmp "$D/out/checkpoint.img" "$D/real/1/checkpoint.img"; rm -rf "$D/out"
    real_note="$(du -sb "$D/real/1/checkpoint.img" | cut -f1)"
  else
    real_note="failed: $(tail -n 3 "$D/log/runsc.log" | tr '\n' ' ')"
  fi
else
  real_note="skipped"
fi

# ---- report ---------------------------------------------------------------------------------
mkdir -p "$(dirname "$RESULTS")"
python3 "$here/report.py" "$TSV" "$img_bytes" "$SIZE" "$D" "$real_note" "$((SECONDS - T0))" \
  "${S3}" | tee "$RESULTS"
echo "results written to $RESULTS" >&2

# ---- end to end: a real sandbox through podsnapd against raw runsc (its own report) ----------
if [ "${BENCH_E2E_MIB:-1024}" != 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v runsc >/dev/null && command -v gcc >/dev/null; then
    BENCH_DIR=$D BENCH_KEEP=1 BENCH_E2E_S3=${BENCH_E2E_S3:-$S3} bash "$here/e2e.sh"
  else
    echo "bench: end-to-end case skipped (needs root, runsc and gcc)" >&2
  fi
fi

# ---- incremental snapshots of a real sandbox through podsnapd (its own report) --------------
if [ "${BENCH_INCR_MIB:-512}" != 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v runsc >/dev/null && command -v gcc >/dev/null; then
    BENCH_DIR=$D BENCH_KEEP=1 BENCH_INCR_S3=${BENCH_INCR_S3:-$S3} bash "$here/incremental.sh"
  else
    echo "bench: incremental case skipped (needs root, runsc and gcc)" >&2
  fi
fi

# ---- cold start against restore of a heavy-import Python sandbox (its own report) -----------
if [ "${BENCH_COLD_ROUNDS:-5}" != 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v runsc >/dev/null &&
      /usr/bin/python3 -c 'import numpy, scipy, pandas' 2>/dev/null; then
    BENCH_DIR=$D BENCH_KEEP=1 BENCH_COLD_S3=${BENCH_COLD_S3:-$S3} bash "$here/coldstart.sh"
  else
    echo "bench: cold-start case skipped (needs root, runsc and Debian's python3-numpy," \
      "python3-scipy, python3-pandas)" >&2
  fi
fi

# ---- suspend downtime: checkpoint --resume against runsc --leave-running (its own report) ---
if [ "${BENCH_DOWN_MIB:-256}" != 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v runsc >/dev/null && command -v gcc >/dev/null; then
    BENCH_DIR=$D BENCH_KEEP=1 BENCH_DOWN_S3=${BENCH_DOWN_S3:-$S3} bash "$here/downtime.sh"
  else
    echo "bench: downtime case skipped (needs root, runsc and gcc)" >&2
  fi
fi

# ---- restore to first answer on a cold node: lazy vs eager vs raw runsc 2026 (own report) ----
if [ "${BENCH_LAZY_MIB:-256}" != 0 ]; then
  runsc26=${PODSNAP_RUNSC_2026:-/opt/podsnap/gvisor/runsc}
  if [ "$(id -u)" = 0 ] && [ -x "$runsc26" ] && command -v gcc >/dev/null; then
    mkdir -p "$D/lazy"
    python3 "$here/lazy.py" --bin "$tdir/release" --dir "$D/lazy" --runsc "$runsc26" \
      --mib "${BENCH_LAZY_MIB:-256}" --rounds "${BENCH_LAZY_ROUNDS:-5}"
  else
    echo "bench: lazy-restore case skipped (needs root, gcc and runsc 2026 at $runsc26)" >&2
  fi
fi
