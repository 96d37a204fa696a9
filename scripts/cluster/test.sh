#!/usr/bin/env bash
# `make test-cluster`: tests/cluster on a fresh local cluster of two nodes with gVisor's shim
# (one already up is taken down first), then tests/cluster/sdk1 with the SDK 1.0.x
# (SDK1_PATH) on agent-sandbox 1.x, then tests/cluster again on one node with the runc shim
# (PODSNAP_CLUSTER_SHIM=runc: containerd's runc shim + podsnap-runsc + Debian's runsc). Each
# pass takes its cluster down whatever the outcome, and runs diagnose.sh when it failed.
# Holds the cluster lock throughout (common.sh), so a second run is refused, not interleaved.
set -uo pipefail
. "$(dirname "$0")/common.sh"
cluster_lock "make test-cluster"
cd "$REPO_ROOT"
SDK1_PATH="${SDK1_PATH:-/opt/podsnap/sdk1}"

pass() { # name, then the environment and commands of the pass (as one shell string)
    local name="$1" start rc
    start=$(date +%s)
    bash -c "$2"
    rc=$?
    [ $rc = 0 ] || bash scripts/cluster/diagnose.sh
    bash scripts/cluster/down.sh >/dev/null 2>&1
    echo "test-cluster: $name $(($(date +%s) - start)) s (rc $rc)"
    return $rc
}

bash scripts/cluster/down.sh >/dev/null 2>&1 || true
pass "gVisor-shim pass, two nodes" "
    PODSNAP_CLUSTER_NODES=2 make --no-print-directory cluster-up &&
    PODSNAP_CLUSTER=1 PODSNAP_CLUSTER_NODES=2 python3 -m pytest -q tests/cluster --ignore=tests/cluster/sdk1 &&
    PODSNAP_CLUSTER_SDK1=1 PYTHONPATH='$SDK1_PATH' python3 -m pytest -q tests/cluster/sdk1" || exit
pass "runc-shim pass" "
    PODSNAP_CLUSTER_SHIM=runc make --no-print-directory cluster-up &&
    PODSNAP_CLUSTER=1 PODSNAP_CLUSTER_SHIM=runc python3 -m pytest -q tests/cluster --ignore=tests/cluster/sdk1"
