#!/usr/bin/env bash
# What a failed cluster test run needs to be understood from its output alone: the node, every
# pod and its container states, recent events, the sandboxes and containers containerd knows,
# runsc's view, and the tail of every part's log. `make test-cluster` runs it when the tests
# fail, before it takes the cluster down; run it by hand on a cluster that is up. The pods'
# states and the events come last, where a truncated CI log still shows them.
#
#   scripts/cluster/diagnose.sh [LINES]     (log lines per part, default 25)
set -uo pipefail
. "$(dirname "$0")/common.sh"

lines="${1:-25}"
[ -f "$CLUSTER_DIR/env" ] || { log "no cluster is up ($CLUSTER_DIR/env missing)"; exit 0; }
# shellcheck disable=SC1091
. "$CLUSTER_DIR/env"
export KUBECONFIG="$CLUSTER_DIR/kubeconfig"
kubectl() { timeout 20 "$CLUSTER_BIN/kubectl" "$@"; }
section() { printf '\n===== %s\n' "$*"; }

section "agent-sandbox release"
cat "$CLUSTER_DIR/agent-sandbox" 2>/dev/null || echo "(not recorded)"
for f in "$CLUSTER_DIR"/logs/*.log; do
    [ -f "$f" ] || continue
    section "$(basename "$f") (last $lines lines)"
    tail -n "$lines" "$f"
done
# The errors of the node's parts over the whole run (a failure early in the run has long left
# the tails above).
for f in kubelet containerd podsnapd podsnap-controller; do
    [ -f "$CLUSTER_DIR/logs/$f.log" ] || continue
    section "$f.log: the last 30 error lines"
    grep -E '^E[0-9]{4} |level=error|level=fatal| ERROR ' "$CLUSTER_DIR/logs/$f.log" | tail -n 30
done
# runsc's own debug logs, where the handler was told to write them.
for f in $(ls -t "$CLUSTER_DIR"/logs/runsc/*.boot* 2>/dev/null | head -3); do
    section "$f (last 20 lines)"
    tail -n 20 "$f"
done
# podsnap installed from the image (the default): podsnapd and podsnap-controller log in
# their pods.
for pod in $(kubectl -n podsnap-system get pods --no-headers -o custom-columns=N:.metadata.name 2>/dev/null); do
    section "podsnap-system/$pod (last $lines lines; its error lines)"
    kubectl -n podsnap-system get pod "$pod" -o wide --no-headers
    kubectl -n podsnap-system logs "$pod" --all-containers --tail="$lines" 2>&1
    kubectl -n podsnap-system logs "$pod" --all-containers 2>&1 | grep -E '"level":"(ERROR|WARN)"| ERROR | WARN ' | tail -n 20
done
section "nodes"
kubectl get nodes -o wide
kubectl describe nodes | sed -n '/^Conditions:/,/^Addresses:/p'
section "pods"
kubectl get pods -A -o wide
section "pods that are not Running or Succeeded"
for p in $(kubectl get pods -A --no-headers \
    -o custom-columns=NS:.metadata.namespace,NAME:.metadata.name,PHASE:.status.phase 2>/dev/null \
    | awk '$3 != "Running" && $3 != "Succeeded" { print $1 "/" $2 }'); do
    kubectl describe pod -n "${p%%/*}" "${p#*/}" | sed -n '/^Status:/,$p' | head -60
done
section "sandboxes and claims"
kubectl get sandboxes,sandboxclaims -A 2>&1 | head -40
section "recent events"
kubectl get events -A --sort-by=.lastTimestamp 2>&1 | tail -40
section "containerd (k8s.io)"
ctr=("$CLUSTER_BIN/ctr" --address "$CONTAINERD_SOCK" --namespace k8s.io)
timeout 20 "${ctr[@]}" containers list 2>&1 | head -30
timeout 20 "${ctr[@]}" tasks list 2>&1 | head -30
section "runsc list"
timeout 20 runsc --root "$CLUSTER_RUN/runsc/k8s.io" list 2>&1 | head -30
# The second node (PODSNAP_CLUSTER_NODES=2): its containerd and runsc root, seen from its
# mount namespace.
if [ -n "${NODE2_NAME:-}" ]; then
    section "containerd on $NODE2_NAME (k8s.io)"
    ctr2=("$CLUSTER_BIN/ctr" --address "$CLUSTER_RUN/nodes/$NODE2_NAME/containerd.sock" --namespace k8s.io)
    timeout 20 "${ctr2[@]}" tasks list 2>&1 | head -30
    section "runsc list on $NODE2_NAME"
    timeout 20 nsenter --mount="/run/podsnap-cluster-ns/$NODE2_NAME" -- runsc --root "$CLUSTER_RUN/runsc/k8s.io" list 2>&1 | head -30
fi
exit 0
