#!/usr/bin/env bash
# `make cluster-down`: stop what scripts/cluster/up.sh started, remove its pods' sandboxes,
# mounts, network and state. Safe to run when nothing is up. Keeps the build cache.
set -uo pipefail
. "$(dirname "$0")/common.sh"

SOCK="$CLUSTER_RUN/containerd.sock"

# Control plane clients of the node first, so nothing recreates pods while they go.
stop podsnap-controller
stop agent-sandbox-controller
stop podsnapd
stop kube-scheduler
stop kube-controller-manager
stop kubelet

# Pods: kill every task containerd knows in the CRI namespace while containerd still runs,
# so the shims exit and runsc tears its sandboxes down.
CONTAINERS=()
if [ -S "$SOCK" ] && [ -f "$PIDS/containerd.pid" ]; then
    CTR=("$CLUSTER_BIN/ctr" --address "$SOCK" -n k8s.io)
    mapfile -t CONTAINERS < <(timeout 20 "${CTR[@]}" containers ls -q 2>/dev/null)
    for id in $(timeout 20 "${CTR[@]}" tasks ls -q 2>/dev/null); do
        timeout 10 "${CTR[@]}" tasks kill -s SIGKILL "$id" >/dev/null 2>&1
    done
    sleep 1
    for id in $(timeout 20 "${CTR[@]}" tasks ls -q 2>/dev/null); do
        timeout 10 "${CTR[@]}" tasks delete -f "$id" >/dev/null 2>&1
    done
fi
stop containerd

# Shims outlive containerd (their own sessions): find the ones serving this containerd by the
# address they were started with and stop them by pid.
for pid in $(pgrep -f -- "-address $SOCK" 2>/dev/null); do
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "-address $SOCK "; then
        log "stopping shim pid $pid"
        kill -KILL "$pid" 2>/dev/null
    fi
done
# Shim sockets live in containerd's fixed /run/containerd/s, named by the sha256 of
# "<containerd address>/<namespace>/<id>"; a killed shim leaves its socket behind.
for id in "${CONTAINERS[@]}"; do
    hash="$(printf '%s' "$SOCK/k8s.io/$id" | sha256sum | cut -d' ' -f1)"
    rm -f "/run/containerd/s/$hash"
done
# gVisor sandboxes left behind by a shim that died: runsc's own state under this root.
if [ -d "$CLUSTER_RUN/runsc/k8s.io" ] && command -v runsc >/dev/null; then
    for id in $(runsc --root "$CLUSTER_RUN/runsc/k8s.io" list -quiet 2>/dev/null); do
        runsc --root "$CLUSTER_RUN/runsc/k8s.io" delete -force "$id" >/dev/null 2>&1
    done
fi

stop kube-apiserver
stop etcd

# Mounts under the cluster's directories (pod volumes, overlay rootfs, netns, shm), deepest
# first.
# The kubelet's root is /var/lib/kubelet (up.sh, KUBELET_ROOT).
for dir in "$CLUSTER_VAR" "$CLUSTER_RUN" /var/lib/kubelet; do
    awk -v d="$dir" '$5 == d || index($5, d "/") == 1 {print $5}' /proc/self/mountinfo |
        sort -r | while read -r m; do
            umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
        done
done

# The CNI bridge (veths went with their netns).
if ip link show podsnap0 >/dev/null 2>&1; then
    ip link delete podsnap0 2>/dev/null || log "could not delete bridge podsnap0"
fi

# Pod cgroups the kubelet made (cgroupfs driver, cgroup v1): remove empty ones, deepest first.
for ctl in /sys/fs/cgroup/*/; do
    [ -d "${ctl}kubepods" ] || continue
    find "${ctl}kubepods" -depth -type d -exec rmdir {} \; 2>/dev/null
done

# The kubelet's device-plugin socket has a fixed path.
rm -f /var/lib/kubelet/device-plugins/kubelet.sock
rmdir /var/lib/kubelet/device-plugins /var/lib/kubelet 2>/dev/null

rm -rf "$CLUSTER_RUN" "$CLUSTER_VAR" /var/lib/kubelet
# Logs and certificates stay for a look afterwards; the kubeconfig and socket say "up".
rm -f "$CLUSTER_DIR/containerd.sock" "$CLUSTER_DIR/kubeconfig"
log "down"
