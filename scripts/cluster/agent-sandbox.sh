#!/usr/bin/env bash
# Installs an agent-sandbox release on the running local cluster (its CRDs, RBAC and controller),
# replacing the one that runs. `make cluster-up` installs v0; the SDK 1.x tests switch to v1
# and back.
#
#   scripts/cluster/agent-sandbox.sh v0   # $AGENT_SANDBOX_VERSION: agents.x-k8s.io/v1alpha1,
#                                         # suspend through spec.replicas (SDK 0.4.x, the tutorial's)
#   scripts/cluster/agent-sandbox.sh v1   # $AGENT_SANDBOX_V1_VERSION: v1beta1 only, warm pools,
#                                         # suspend through spec.operatingMode (SDK 1.0.x)
#
# The two releases serve different versions of the same CRDs, so a switch deletes every
# Sandbox, SandboxClaim, SandboxTemplate and SandboxWarmPool (and with them their pods) before
# it replaces the CRDs. PodSnapshots and their policies stay.
set -euo pipefail
. "$(dirname "$0")/common.sh"

case "${1:-}" in
v0) version="$AGENT_SANDBOX_VERSION" bin=agent-sandbox-controller ;;
v1) version="$AGENT_SANDBOX_V1_VERSION" bin=agent-sandbox-controller-v1 ;;
*) die "usage: $0 v0|v1" ;;
esac
[ -f "$CLUSTER_DIR/env" ] || die "no cluster is up ($CLUSTER_DIR/env missing): make cluster-up"
[ -x "$CLUSTER_BIN/$bin" ] || die "$CLUSTER_BIN/$bin is not built (scripts/cluster/build.sh)"
export KUBECONFIG="$CLUSTER_DIR/kubeconfig"
KUBECTL=("$CLUSTER_BIN/kubectl" --request-timeout=60s)
CRDS=(sandboxclaims.extensions.agents.x-k8s.io sandboxwarmpools.extensions.agents.x-k8s.io
    sandboxes.agents.x-k8s.io sandboxtemplates.extensions.agents.x-k8s.io)
AS="$CLUSTER_BUILD/$bin/k8s"

log "agent-sandbox $version ($bin)"
# The objects go while the running controller can still act on its finalizers; the
# kinds a release does not have are skipped.
existing=()
for crd in "${CRDS[@]}"; do
    "${KUBECTL[@]}" get crd "$crd" >/dev/null 2>&1 && existing+=("$crd")
done
if [ "${#existing[@]}" -gt 0 ]; then
    kinds="$(IFS=,; echo "${existing[*]}")"
    "${KUBECTL[@]}" delete "$kinds" --all --all-namespaces --wait=true --timeout=120s >&2
fi
stop agent-sandbox-controller
if [ "${#existing[@]}" -gt 0 ]; then
    "${KUBECTL[@]}" delete crd "${existing[@]}" --wait=true --timeout=60s >&2
fi
"${KUBECTL[@]}" apply --server-side -f "$AS/crds" >&2
"${KUBECTL[@]}" apply -f "$AS/rbac.generated.yaml" -f "$AS/extensions-rbac.generated.yaml" >&2
"${KUBECTL[@]}" apply -f "$CLUSTER_SCRIPTS/manifests/agent-sandbox-rbac.yaml" >&2
"${KUBECTL[@]}" wait --for condition=Established --timeout=60s \
    crd/sandboxes.agents.x-k8s.io crd/sandboxclaims.extensions.agents.x-k8s.io \
    crd/sandboxtemplates.extensions.agents.x-k8s.io >&2
start agent-sandbox-controller env KUBECONFIG="$CLUSTER_DIR/agent-sandbox-controller.kubeconfig" \
    "$CLUSTER_BIN/$bin" --extensions --leader-elect=false \
    --metrics-bind-address 127.0.0.1:18080 --health-probe-bind-address 127.0.0.1:18081
wait_for agent-sandbox-controller 60 curl -fsS http://127.0.0.1:18081/readyz
echo "AGENT_SANDBOX=$1 $version" >"$CLUSTER_DIR/agent-sandbox"
log "agent-sandbox $version is up"
