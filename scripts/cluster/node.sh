#!/usr/bin/env bash
# A node of the running local cluster lost and brought back, for fault tests
# (tests/cluster/test_faults.py, "delete a node mid-restore"):
#
#   scripts/cluster/node.sh lose podsnap-node-2     # its kubelet killed, its Node object deleted
#   scripts/cluster/node.sh return podsnap-node-2   # its kubelet started again: the Node
#                                                   # registers anew and turns Ready
#
# Losing a node the way a deleted VM does: the kubelet stops reporting at once (SIGKILL, no
# status update), and `kubectl delete node` removes the Node. What ran there keeps running in
# its containerd until the kubelet returns and removes the pods the API server no longer has
# (the pod garbage collector deleted them). Only the second node of PODSNAP_CLUSTER_NODES=2:
# the first node's kubelet also serves the cluster's control-plane pods.
set -euo pipefail
. "$(dirname "$0")/common.sh"
PODSNAP_CLUSTER_NODES=2
# up.sh, sourced, only defines its steps; settings names the cluster's paths.
# shellcheck source=up.sh
. "$CLUSTER_SCRIPTS/up.sh"
settings
cluster_lock "scripts/cluster/node.sh $*"
export KUBECONFIG="$CLUSTER_DIR/kubeconfig"

usage() { die "usage: $0 lose|return $NODE2_NAME"; }
[ $# = 2 ] || usage
[ "$2" = "$NODE2_NAME" ] || die "only $NODE2_NAME (the second node) can be lost and returned, not $2"
grep -q "^NODE2_NAME=$NODE2_NAME$" "$CLUSTER_DIR/env" 2>/dev/null ||
    die "no $NODE2_NAME in $CLUSTER_DIR/env: PODSNAP_CLUSTER_NODES=2 make cluster-up first"

case "$1" in
lose)
    pid="$(cat "$PIDS/kubelet-$NODE2_NAME.pid" 2>/dev/null || true)"
    [ -n "$pid" ] && kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$PIDS/kubelet-$NODE2_NAME.pid"
    "$KUBECTL" delete node "$NODE2_NAME" --wait=true >&2
    log "$NODE2_NAME lost: kubelet killed, Node deleted"
    ;;
return)
    if [ -f "$PIDS/kubelet-$NODE2_NAME.pid" ] && alive "kubelet-$NODE2_NAME"; then
        die "the kubelet of $NODE2_NAME still runs (pid $(cat "$PIDS/kubelet-$NODE2_NAME.pid"))"
    fi
    node2_kubelet
    log "$NODE2_NAME back: Node registered and Ready"
    ;;
*) usage ;;
esac
