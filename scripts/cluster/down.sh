#!/usr/bin/env bash
# `make cluster-down`: stop what scripts/cluster/up.sh started, remove its pods' sandboxes,
# mounts, network and state. Safe to run when nothing is up. Keeps the build cache.
set -uo pipefail
. "$(dirname "$0")/common.sh"

cluster_lock "make cluster-down"
SOCK="$CLUSTER_RUN/containerd.sock"

# Control plane clients of the node first, so nothing recreates pods while they go.
stop podsnap-controller
stop agent-sandbox-controller
stop podsnapd
stop kube-scheduler
stop kube-controller-manager
stop kubelet

# The second node (PODSNAP_CLUSTER_NODES=2, up.sh's second_node): its kubelet, its pods
# through its containerd, its containerd, then whatever still runs in its network namespace,
# its mount namespace, network and cgroups.
NODE2_NAME=podsnap-node-2
NODE2_NETNS=podsnap-node-2
NS_DIR=/run/podsnap-cluster-ns
stop "kubelet-$NODE2_NAME"
SOCK2="$CLUSTER_RUN/nodes/$NODE2_NAME/containerd.sock"
if [ -S "$SOCK2" ] && [ -f "$PIDS/containerd-$NODE2_NAME.pid" ]; then
    CTR2=("$CLUSTER_BIN/ctr" --address "$SOCK2" -n k8s.io)
    for id in $(timeout 20 "${CTR2[@]}" tasks ls -q 2>/dev/null); do
        timeout 10 "${CTR2[@]}" tasks kill -s SIGKILL "$id" >/dev/null 2>&1
    done
    sleep 1
    for id in $(timeout 20 "${CTR2[@]}" tasks ls -q 2>/dev/null); do
        timeout 10 "${CTR2[@]}" tasks delete -f "$id" >/dev/null 2>&1
    done
fi
stop "containerd-$NODE2_NAME"
if [ -e "$NS_DIR/$NODE2_NAME" ] && [ -d "$CLUSTER_RUN/nodes/$NODE2_NAME/runsc/k8s.io" ] && command -v runsc >/dev/null; then
    for id in $(nsenter --mount="$NS_DIR/$NODE2_NAME" -- runsc --root "$CLUSTER_RUN/runsc/k8s.io" list -quiet 2>/dev/null); do
        nsenter --mount="$NS_DIR/$NODE2_NAME" -- runsc --root "$CLUSTER_RUN/runsc/k8s.io" delete -force "$id" >/dev/null 2>&1
    done
fi
if ip netns list 2>/dev/null | grep -qw "$NODE2_NETNS"; then
    for pid in $(ip netns pids "$NODE2_NETNS" 2>/dev/null); do
        log "stopping pid $pid left in $NODE2_NAME's network namespace"
        kill -KILL "$pid" 2>/dev/null
    done
    ip netns delete "$NODE2_NETNS" || log "could not delete netns $NODE2_NETNS"
fi
ip link delete psn-node2 2>/dev/null
ip route delete 10.244.1.0/24 2>/dev/null
if [ -e "$NS_DIR/$NODE2_NAME" ]; then
    umount "$NS_DIR/$NODE2_NAME" 2>/dev/null || umount -l "$NS_DIR/$NODE2_NAME" 2>/dev/null
    rm -f "$NS_DIR/$NODE2_NAME"
fi
if mountpoint -q "$NS_DIR"; then umount "$NS_DIR" 2>/dev/null || umount -l "$NS_DIR"; fi
rmdir "$NS_DIR" 2>/dev/null
for ctl in /sys/fs/cgroup/*/; do
    [ -d "$ctl$NODE2_NAME" ] || continue
    find "$ctl$NODE2_NAME" -depth -type d -exec rmdir {} \; 2>/dev/null
done

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

# up.sh's DNAT of the `kubernetes` Service to the API server (tagged podsnap-cluster).
for chain in PREROUTING OUTPUT; do
    iptables -t nat -S "$chain" 2>/dev/null | grep -- '--comment podsnap-cluster' | sed 's/^-A/-D/' |
        while read -r rule; do
            # shellcheck disable=SC2086 # the rule's words, as iptables -S printed them
            iptables -t nat $rule || log "could not delete iptables rule: $rule"
        done
done

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
rm -f "$CLUSTER_DIR/containerd.sock" "$CLUSTER_DIR/kubeconfig" "$CLUSTER_DIR"/*/containerd.sock
log "down"
