#!/usr/bin/env bash
# Smoke test of gVisor's containerd shim on this machine: starts a private containerd 2.x (config,
# root, state and socket under a temp dir; no CRI), imports a busybox-static OCI image built here,
# and runs a container with `ctr run --runtime <shim> --runtime-config-path runsc.toml` under the
# 2026 runsc (systrap, --network=none). Exits non-zero, with the reason on stderr, on failure.
#
#   scripts/gvisor/smoke.sh
#
# With crictl (PODSNAP_CRICTL, or on PATH; `go install sigs.k8s.io/cri-tools/cmd/crictl@v1.37.0`)
# it then goes through containerd's CRI: a host-network pod (pause + a counter) on a runtime
# handler `runsc` of runtime_type io.containerd.runsc.v1, `runsc checkpoint --leave-running` and
# a stop checkpoint under the shim's runsc root, and a pod annotated podsnap.dev/restore-from
# that comes up restored through restore-at-start.sh (the shape podsnap-runsc must take behind
# this shim). PODSNAP_SMOKE_CRI=1 makes a missing crictl a failure.
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
"$CBIN/containerd" --version | grep ' v2\.' >/dev/null || fail "$CBIN/containerd is not containerd 2.x"

CRICTL="${PODSNAP_CRICTL:-$(command -v crictl || true)}"
if [ -z "$CRICTL" ] && [ "${PODSNAP_SMOKE_CRI:-0}" = 1 ]; then
    fail "PODSNAP_SMOKE_CRI=1 but no crictl (PODSNAP_CRICTL or PATH)"
fi
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
CRI=("$CRICTL" --runtime-endpoint "unix://$SOCK" --image-endpoint "unix://$SOCK" --timeout 60s)

cleanup() {
    set +e
    if [ -n "$CONTAINERD_PID" ] && [ -n "$CRICTL" ]; then
        for pod in $("${CRI[@]}" pods -q 2>/dev/null); do
            timeout 30 "${CRI[@]}" stopp "$pod" >/dev/null 2>&1
            timeout 30 "${CRI[@]}" rmp -f "$pod" >/dev/null 2>&1
        done
    fi
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
    for r in "$RUNSC_ROOT/$NS" "$RUNSC_ROOT/k8s.io"; do
        [ -d "$r" ] || continue
        for id in $("$RUNSC" --root "$r" list -quiet 2>/dev/null); do
            "$RUNSC" --root "$r" kill --all "$id" KILL >/dev/null 2>&1
            "$RUNSC" --root "$r" delete -force "$id" >/dev/null 2>&1
        done
    done
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
log_path = "$W/shim-logs/"
[runsc_config]
  network = "none"
  platform = "systrap"
EOF

cat >"$W/containerd.toml" <<EOF
version = 3
root = "$W/root"
state = "$W/state"
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
EOF
if [ -z "$CRICTL" ]; then
    echo 'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images", "io.containerd.podsandbox.controller.v1.podsandbox"]' \
        >>"$W/containerd.toml"
else
    # The CRI's runtime handler as a node operator configures it (the test-machine shim via
    # runtime_path); its runsc is restore-at-start.sh in front of the real one.
    mkdir -p "$W/cni" "$W/markers"
    cat >"$W/runsc-cri-handler" <<EOF
#!/bin/sh
PODSNAP_FIXTURE_RUNSC="$RUNSC" PODSNAP_FIXTURE_MARKERS="$W/markers" exec /bin/bash "$HERE/restore-at-start.sh" "\$@"
EOF
    chmod +x "$W/runsc-cri-handler"
    sed "s|^binary_name = .*|binary_name = \"$W/runsc-cri-handler\"|" "$W/runsc.toml" >"$W/runsc-cri.toml"
    cat >>"$W/containerd.toml" <<EOF
[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = 'localhost/podsnap/smoke-pause:1'
[plugins.'io.containerd.cri.v1.runtime']
  # root here lacks CAP_SYS_RESOURCE: the CRI's -998 for sandboxes cannot be applied.
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ['/usr/lib/cni']
    conf_dir = '$W/cni'
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = 'runsc'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runsc]
      runtime_type = 'io.containerd.runsc.v1'
      runtime_path = '$SHIM'
      pod_annotations = ['podsnap.dev/*']
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runsc.options]
        TypeUrl = 'io.containerd.runsc.v1.options'
        ConfigPath = '$W/runsc-cri.toml'
EOF
fi
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
echo "$out" | grep '^hello from .*gvisor' >/dev/null || fail "unexpected output (gVisor's uname -r ends in -gvisor): '$out'"
[ "$rc" = 3 ] || fail "exit status $rc, expected 3"
log "run + exit: output '$out', status $rc, ${t1}s"

# 2. A long-running container: RUNNING in containerd and in runsc, exec, then kill and delete.
timeout 60 "${RUN[@]}" "${SB[@]}" -d "$IMAGE" smoke-long sh -c 'i=0; while :; do i=$((i+1)); echo $i >/tmp/count; sleep 0.2; done' \
    >/dev/null || fail "ctr run -d failed or hung"
status="$(timeout 20 "${CTR[@]}" tasks ls | awk '$1 == "smoke-long" {print $3}')"
[ "$status" = RUNNING ] || fail "smoke-long is '$status' in containerd, expected RUNNING"
"$RUNSC" --root "$RUNSC_ROOT/$NS" list | grep '^smoke-long .*running' >/dev/null \
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

if [ -z "$CRICTL" ]; then
    log "CRI part skipped: no crictl (PODSNAP_CRICTL or PATH)"
    ok=1
    log "PASS (ctr only)"
    exit 0
fi

# 3. Through the CRI.
elapsed() { echo "$(date +%s.%N) - $1" | bc; }
count_of() { # container id: the counter inside it
    timeout 30 "${CRI[@]}" exec "$1" cat /tmp/count 2>/dev/null || true
}
container_state() { # container id
    "${CRI[@]}" inspect -o go-template --template '{{.status.state}}' "$1" 2>/dev/null
}
python3 "$REPO_ROOT/scripts/cluster/oci-image.py" "$W/pause.tar" localhost/podsnap/smoke-pause:1 \
    --entrypoint '["/bin/sleep", "2147483647"]' "/bin/busybox=/bin/busybox" "/bin/sleep@busybox" >/dev/null
"$CBIN/ctr" --address "$SOCK" -n k8s.io images import "$W/pause.tar" >/dev/null
"$CBIN/ctr" --address "$SOCK" -n k8s.io images import "$W/busybox.tar" >/dev/null
mkdir -p "$W/podlogs"
pod_json() { # name uid [restore-from]
    mkdir -p "$W/podlogs/$2"
    python3 - "$W/podlogs" "$@" <<'PY'
import json, sys
logs, name, uid = sys.argv[1], sys.argv[2], sys.argv[3]
pod = {"metadata": {"name": name, "namespace": "default", "uid": uid, "attempt": 0},
       "log_directory": logs + "/" + uid,
       "linux": {"security_context": {"namespace_options": {"network": 2}}}}
if len(sys.argv) > 4:
    pod["annotations"] = {"podsnap.dev/restore-from": sys.argv[4]}
print(json.dumps(pod))
PY
}
cat >"$W/app.json" <<EOF
{"metadata": {"name": "app"}, "image": {"image": "$IMAGE"},
 "command": ["sh", "-c", "i=0; while :; do i=\$((i+1)); echo \$i >/tmp/count; echo \$i >>/rootfs-count; echo tick \$i; sleep 0.2; done"],
 "log_path": "app.log", "linux": {}}
EOF
run_pod() { # pod.json: prints "POD CID"
    local pod cid
    pod="$("${CRI[@]}" runp --runtime runsc "$1" 2>/dev/null)" || fail "RunPodSandbox ($1)"
    cid="$("${CRI[@]}" create "$pod" "$W/app.json" "$1" 2>/dev/null)" || fail "CreateContainer ($1)"
    timeout 70 "${CRI[@]}" start "$cid" >/dev/null 2>&1 || fail "StartContainer ($1) failed or hung"
    echo "$pod $cid"
}
RR=("$RUNSC" --root "$RUNSC_ROOT/k8s.io")

pod_json smoke smoke-uid-1 >"$W/pod1.json"
start=$(date +%s.%N)
read -r POD CID < <(run_pod "$W/pod1.json")
[ -n "${CID:-}" ] || fail "CRI: pod did not come up"
log "CRI: pod up (runp + create + start) in $(elapsed "$start")s"
sleep 1
c1="$(count_of "$CID")"
[ "${c1:-0}" -gt 0 ] 2>/dev/null || fail "CRI: exec read '$c1'"
"${CRI[@]}" logs "$CID" 2>/dev/null | grep '^tick ' >/dev/null || fail "CRI: no container logs"

start=$(date +%s.%N)
"${RR[@]}" checkpoint --leave-running --image-path="$W/img-running" "$POD" || fail "checkpoint --leave-running"
t_lr="$(elapsed "$start")"
sleep 1
c2="$(count_of "$CID")"
[ "$(container_state "$CID")" = CONTAINER_RUNNING ] && [ "${c2:-0}" -gt "$c1" ] 2>/dev/null \
    || fail "CRI: after checkpoint --leave-running the app is $(container_state "$CID"), count '$c2' (before '$c1')"
log "CRI: runsc checkpoint --leave-running under the shim's root: ${t_lr}s; app still RUNNING (count $c1 -> $c2)"

start=$(date +%s.%N)
"${RR[@]}" checkpoint --image-path="$W/img-stop" "$POD" || fail "checkpoint (stop)"
t_stop="$(elapsed "$start")"
for _ in $(seq 40); do
    [ "$(container_state "$CID")" = CONTAINER_EXITED ] && break
    sleep 0.25
done
[ "$(container_state "$CID")" = CONTAINER_EXITED ] || fail "CRI: app is $(container_state "$CID") after a stop checkpoint"
c3="$("${CRI[@]}" logs "$CID" 2>/dev/null | sed -n 's/^tick //p' | tail -1)"
exit_code="$("${CRI[@]}" inspect -o go-template --template '{{.status.exitCode}}' "$CID" 2>/dev/null)"
log "CRI: stop checkpoint ${t_stop}s; app EXITED (exit code $exit_code), last tick $c3"
"${CRI[@]}" rmp -f "$POD" >/dev/null 2>&1 || fail "RemovePodSandbox after the checkpoint"

pod_json smoke-restored smoke-uid-2 "$W/img-stop" >"$W/pod2.json"
start=$(date +%s.%N)
read -r POD CID < <(run_pod "$W/pod2.json")
[ -n "${CID:-}" ] || fail "CRI: restored pod did not come up"
log "CRI: restored pod up (runp + create + start) in $(elapsed "$start")s"
c4="$(count_of "$CID")"
[ "${c4:-0}" -ge "${c3:-1}" ] 2>/dev/null || fail "CRI: restored app's count '$c4' did not continue from $c3"
sleep 1
c5="$(count_of "$CID")"
[ "${c5:-0}" -gt "$c4" ] 2>/dev/null || fail "CRI: restored app not counting ($c4 -> $c5)"
# Rootfs writes travel in the image (runsc's rootfs overlay): the file the app appends to on
# its root filesystem still starts at 1 and holds the lines from before the checkpoint.
first="$(timeout 30 "${CRI[@]}" exec "$CID" head -1 /rootfs-count 2>/dev/null || true)"
lines="$(timeout 30 "${CRI[@]}" exec "$CID" wc -l /rootfs-count 2>/dev/null | awk '{print $1}' || true)"
[ "$first" = 1 ] && [ "${lines:-0}" -ge "${c5:-1}" ] 2>/dev/null \
    || fail "CRI: rootfs file after restore starts at '$first' with $lines lines (count $c5)"
"${CRI[@]}" logs "$CID" 2>/dev/null | grep '^tick ' >/dev/null || fail "CRI: no logs from the restored app"
start=$(date +%s.%N)
timeout 60 "${CRI[@]}" stopp "$POD" >/dev/null 2>&1 || fail "StopPodSandbox of the restored pod"
timeout 60 "${CRI[@]}" rmp "$POD" >/dev/null 2>&1 || fail "RemovePodSandbox of the restored pod"
log "CRI: restored app continued ($c3 -> $c4 -> $c5), rootfs file kept ($lines lines); stopped and removed in $(elapsed "$start")s"
[ -z "$("${RR[@]}" list -quiet 2>/dev/null)" ] || fail "runsc containers left under $RUNSC_ROOT/k8s.io"
ok=1
log "PASS"
