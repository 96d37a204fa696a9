#!/usr/bin/env bash
# Smoke test of gVisor's containerd shim on this machine: starts a private containerd 2.x (config,
# root, state and socket under a temp dir; no CRI), imports a busybox-static OCI image built here,
# and runs a container with `ctr run --runtime <shim> --runtime-config-path runsc.toml` under the
# 2026 runsc (systrap, --network=none). Exits non-zero, with the reason on stderr, on failure.
#
#   scripts/gvisor/smoke.sh
#
# Environment:
#   PODSNAP_GVISOR_BIN      runsc and the shims (default: what scripts/gvisor/build.sh prints)
#   PODSNAP_CONTAINERD_BIN  containerd 2.x and ctr (default: the cluster build's bin dir, which
#                           scripts/cluster/build.sh fills; it is not built from here)
#   PODSNAP_GVISOR_SHIM     the shim binary (default: containerd-shim-runsc-v1-testmachine, the
#                           upstream shim with only the OOM-score error tolerated; see
#                           docs/gvisor-shim.md)
#   PODSNAP_SMOKE_DIR       work dir (default: a new dir under /var/tmp; removed on success)
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO_ROOT="$(cd "$HERE/../.." && pwd)"
log() { printf '[gvisor-smoke %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }

GVISOR_BIN="${PODSNAP_GVISOR_BIN:-$(bash "$HERE/build.sh")}"
if [ -z "${PODSNAP_CONTAINERD_BIN:-}" ]; then
    PODSNAP_CONTAINERD_BIN="$(. "$REPO_ROOT/scripts/cluster/common.sh" && echo "$CLUSTER_BIN")"
fi
CBIN="$PODSNAP_CONTAINERD_BIN"
SHIM="${PODSNAP_GVISOR_SHIM:-$GVISOR_BIN/containerd-shim-runsc-v1-testmachine}"
RUNSC="$GVISOR_BIN/runsc"
for f in "$CBIN/containerd" "$CBIN/ctr" "$SHIM" "$RUNSC"; do
    [ -x "$f" ] || fail "$f missing (gVisor: scripts/gvisor/build.sh; containerd 2.x: scripts/cluster/build.sh)"
done
"$CBIN/containerd" --version | grep -q ' v2\.' || fail "$CBIN/containerd is not containerd 2.x"

W="${PODSNAP_SMOKE_DIR:-$(mktemp -d /var/tmp/podsnap-gvisor-smoke.XXXXXX)}"
mkdir -p "$W"
W="$(cd "$W" && pwd)"
SOCK="$W/containerd.sock"
NS=podsnap-smoke
RUNSC_ROOT="$W/runsc"
CTR=("$CBIN/ctr" --address "$SOCK" -n "$NS")
# ctr warns on every call that containerd's cgroup v1 support is deprecated; keep the rest.
exec 2> >(grep --line-buffered -v 'DEPRECATION: The support for cgroup v1' >&2)
CONTAINERD_PID=
ok=0

cleanup() {
    set +e
    if [ -n "$CONTAINERD_PID" ]; then
        for id in $("${CTR[@]}" tasks ls -q 2>/dev/null); do
            timeout 20 "${CTR[@]}" tasks kill -s KILL "$id" >/dev/null 2>&1
            timeout 20 "${CTR[@]}" tasks delete -f "$id" >/dev/null 2>&1
        done
        for id in $("${CTR[@]}" containers ls -q 2>/dev/null); do
            timeout 20 "${CTR[@]}" containers delete "$id" >/dev/null 2>&1
        done
    fi
    # Whatever is left under this run's runsc root (sandboxes, gofers) and its shims.
    if [ -d "$RUNSC_ROOT/$NS" ]; then
        for id in $("$RUNSC" --root "$RUNSC_ROOT/$NS" list -quiet 2>/dev/null); do
            "$RUNSC" --root "$RUNSC_ROOT/$NS" kill --all "$id" KILL >/dev/null 2>&1
            "$RUNSC" --root "$RUNSC_ROOT/$NS" delete -force "$id" >/dev/null 2>&1
        done
    fi
    for pid in $(pgrep -f -- "-address $SOCK" 2>/dev/null); do
        kill -KILL "$pid" 2>/dev/null
    done
    if [ -n "$CONTAINERD_PID" ]; then
        kill -TERM "$CONTAINERD_PID" 2>/dev/null
        for _ in $(seq 20); do kill -0 "$CONTAINERD_PID" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$CONTAINERD_PID" 2>/dev/null
    fi
    grep -F " $W/" /proc/self/mounts | awk '{print $2}' | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null
    done
    if [ "$ok" = 1 ] && [ -z "${PODSNAP_SMOKE_DIR:-}" ]; then
        rm -rf "$W"
    else
        log "kept $W (containerd.log, shim and runsc logs)"
    fi
}
trap cleanup EXIT

# The shim's runtime options (containerd passes the file's path; see runsc.toml beside this
# script for the annotated sample).
cat >"$W/runsc.toml" <<EOF
binary_name = "$RUNSC"
root = "$RUNSC_ROOT"
log_level = "debug"
log_path = "$W/shim-%ID%.log"
[runsc_config]
  network = "none"
  platform = "systrap"
EOF

cat >"$W/containerd.toml" <<EOF
version = 3
root = "$W/root"
state = "$W/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images", "io.containerd.podsandbox.controller.v1.podsandbox"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
EOF
log "containerd $("$CBIN/containerd" --version | awk '{print $3}'), $("$RUNSC" --version | sed -n 1p), shim $SHIM, dir $W"
setsid "$CBIN/containerd" --config "$W/containerd.toml" </dev/null >"$W/containerd.log" 2>&1 &
CONTAINERD_PID=$!
for _ in $(seq 60); do
    "${CTR[@]}" version >/dev/null 2>&1 && break
    kill -0 "$CONTAINERD_PID" 2>/dev/null || fail "containerd exited (see $W/containerd.log)"
    sleep 0.5
done
"${CTR[@]}" version >/dev/null 2>&1 || fail "containerd did not answer within 30 s"

IMAGE=localhost/podsnap/busybox:smoke
links=()
for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || links+=("/bin/$applet@busybox")
done
python3 "$REPO_ROOT/scripts/cluster/oci-image.py" "$W/busybox.tar" "$IMAGE" \
    --cmd '["sh"]' "/bin/busybox=/bin/busybox" "${links[@]}" >/dev/null
"${CTR[@]}" images import "$W/busybox.tar" >/dev/null

RUN=("${CTR[@]}" run --runtime "$SHIM" --runtime-config-path "$W/runsc.toml")

# 1. A container that prints and exits: its output and exit status come back through the shim.
# The annotation makes it the sandbox's root container the way the CRI's pod sandbox is one
# (docs/gvisor-shim.md: without it the shim's Create never returns).
SB=(--annotation io.kubernetes.cri.container-type=sandbox)
start=$(date +%s.%N)
# (The sleep: a root container that exits at once can beat the shim's `runsc wait`, which then
# reports "sandbox no longer running and its exit status is unavailable" and status 128.)
out="$(timeout 60 "${RUN[@]}" "${SB[@]}" --rm "$IMAGE" smoke-echo sh -c 'echo hello from $(uname -r); sleep 1; exit 3')" \
    && rc=0 || rc=$?
t1=$(echo "$(date +%s.%N) - $start" | bc)
[ "$rc" != 124 ] || fail "ctr run did not return within 60 s"
echo "$out" | grep -q '^hello from .*gvisor' || fail "unexpected output (gVisor's uname -r ends in -gvisor): '$out'"
[ "$rc" = 3 ] || fail "exit status $rc, expected 3"
log "run + exit: output '$out', status $rc, ${t1}s"

# 2. A long-running container: RUNNING in containerd and in runsc, exec, then kill and delete.
timeout 60 "${RUN[@]}" "${SB[@]}" -d "$IMAGE" smoke-long sh -c 'i=0; while :; do i=$((i+1)); echo $i >/tmp/count; sleep 0.2; done' \
    >/dev/null || fail "ctr run -d failed or hung"
status="$(timeout 20 "${CTR[@]}" tasks ls | awk '$1 == "smoke-long" {print $3}')"
[ "$status" = RUNNING ] || fail "smoke-long is '$status' in containerd, expected RUNNING"
"$RUNSC" --root "$RUNSC_ROOT/$NS" list | grep -q '^smoke-long .*running' \
    || fail "smoke-long not running under runsc root $RUNSC_ROOT/$NS"
sleep 1
n="$(timeout 20 "${CTR[@]}" tasks exec --exec-id smoke-exec smoke-long cat /tmp/count)" \
    || fail "ctr tasks exec failed"
[ "${n:-0}" -gt 0 ] 2>/dev/null || fail "exec read '$n'"
timeout 20 "${CTR[@]}" tasks kill -s KILL smoke-long || fail "kill failed"
for _ in $(seq 40); do
    status="$(timeout 20 "${CTR[@]}" tasks ls | awk '$1 == "smoke-long" {print $3}')"
    [ "$status" = STOPPED ] && break
    sleep 0.25
done
[ "$status" = STOPPED ] || fail "smoke-long is '$status' after SIGKILL, expected STOPPED"
timeout 20 "${CTR[@]}" tasks delete smoke-long >/dev/null || fail "task delete failed"
timeout 20 "${CTR[@]}" containers delete smoke-long || fail "container delete failed"
[ -z "$("$RUNSC" --root "$RUNSC_ROOT/$NS" list -quiet)" ] || fail "runsc containers left after delete"
log "long-running: RUNNING, exec read count $n, SIGKILL -> STOPPED, deleted"
ok=1
log "PASS"
