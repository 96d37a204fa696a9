#!/usr/bin/env bash
# Builds the local cluster's Go parts from the Go module proxy into
# $PODSNAP_CLUSTER_CACHE/<key>/bin (default /var/cache/podsnap/cluster), where <key> hashes
# versions.env, this script and the Go toolchain. A finished key is never rebuilt.
#
#   kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl   k8s.io/kubernetes
#   containerd containerd-shim-runc-v2 ctr                                 containerd/v2
#   agent-sandbox-controller (+ its CRDs and manifests under ../k8s)        sigs.k8s.io/agent-sandbox
#   agent-sandbox-controller-v1 (the 1.x release, the same way)           sigs.k8s.io/agent-sandbox
#
# Environment: PODSNAP_CLUSTER_GO_P (go build -p, default 2), PODSNAP_CLUSTER_NICE (default 10).
set -euo pipefail
. "$(dirname "$0")/common.sh"

GO_P="${PODSNAP_CLUSTER_GO_P:-2}"
NICE="${PODSNAP_CLUSTER_NICE:-10}"

if [ -f "$CLUSTER_BUILD/complete" ]; then
    log "cached: $CLUSTER_BUILD"
    exit 0
fi

mkdir -p "$CLUSTER_BUILD/src" "$CLUSTER_BIN" "$GOMODCACHE" "$GOCACHE"
TIMES="$CLUSTER_BUILD/build-times.txt"
: >"$TIMES"

# The module's directory in the module cache (downloading it if needed).
mod_dir() {
    go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p'
}

timed() {
    local name="$1"
    shift
    local start end
    start=$(date +%s)
    "$@"
    end=$(date +%s)
    printf '%s %ss\n' "$name" "$((end - start))" | tee -a "$TIMES" >&2
}

gobuild() {
    nice -n "$NICE" go build -p "$GO_P" -trimpath "$@"
}

# k8s.io/kubernetes cannot be required plainly: its go.mod points every staging module at
# ./staging/src/k8s.io/<name>, which the module zip does not contain. A wrapper module requires
# it and replaces each staging module it requires with the matching published v0.x release.
build_kubernetes() {
    local src="$CLUSTER_BUILD/src/kubernetes" dir
    mkdir -p "$src"
    dir="$(mod_dir "k8s.io/kubernetes@$K8S_VERSION")"
    [ -n "$dir" ] || die "the module proxy did not serve k8s.io/kubernetes@$K8S_VERSION"
    {
        echo "module podsnap.invalid/cluster-kubernetes"
        echo
        echo "go $(sed -n 's/^go //p' "$dir/go.mod")"
        echo
        echo "require k8s.io/kubernetes $K8S_VERSION"
        echo
        echo "replace ("
        # Staging modules are the ones replaced with ./staging; replace those the module requires.
        awk '/=> \.\/staging\/src\// {print $1}' "$dir/go.mod" | while read -r m; do
            if grep -qE "^[[:space:]]+$m v0\.0\.0" "$dir/go.mod"; then
                echo "	$m => $m $K8S_STAGING_VERSION"
            fi
        done
        echo ")"
    } >"$src/go.mod"
    local major minor ldflags
    major="${K8S_VERSION#v}"
    major="${major%%.*}"
    minor="${K8S_VERSION#v*.}"
    minor="${minor%%.*}"
    ldflags="-s -w"
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags="$ldflags -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor"
        ldflags="$ldflags -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
    done
    (
        cd "$src"
        CGO_ENABLED=0 gobuild -mod=mod -ldflags "$ldflags" -o "$CLUSTER_BIN/" \
            k8s.io/kubernetes/cmd/kube-apiserver \
            k8s.io/kubernetes/cmd/kube-controller-manager \
            k8s.io/kubernetes/cmd/kube-scheduler \
            k8s.io/kubernetes/cmd/kubelet \
            k8s.io/kubernetes/cmd/kubectl
    )
}

# containerd builds as its own main module (its go.mod's replaces then apply), from a writable
# copy of the module.
build_containerd() {
    local src="$CLUSTER_BUILD/src/containerd" dir
    dir="$(mod_dir "github.com/containerd/containerd/v2@$CONTAINERD_VERSION")"
    [ -n "$dir" ] || die "the module proxy did not serve containerd/v2@$CONTAINERD_VERSION"
    rm -rf "$src"
    cp -r "$dir" "$src"
    chmod -R u+w "$src"
    (
        cd "$src"
        CGO_ENABLED=0 gobuild -mod=mod -tags "no_btrfs no_devmapper no_zfs" \
            -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
            -o "$CLUSTER_BIN/" ./cmd/containerd ./cmd/containerd-shim-runc-v2 ./cmd/ctr
    )
}

# One agent-sandbox release: its controller as $CLUSTER_BIN/<bin>, its CRDs and manifests under
# $CLUSTER_BUILD/<bin>/k8s.
build_agent_sandbox() { # version bin
    local version="$1" bin="$2" src="$CLUSTER_BUILD/src/$2" dir
    dir="$(mod_dir "sigs.k8s.io/agent-sandbox@$version")"
    [ -n "$dir" ] || die "the module proxy did not serve sigs.k8s.io/agent-sandbox@$version"
    rm -rf "$src"
    cp -r "$dir" "$src"
    chmod -R u+w "$src"
    (
        cd "$src"
        CGO_ENABLED=0 gobuild -mod=mod -ldflags "-s -w" \
            -o "$CLUSTER_BIN/$bin" ./cmd/agent-sandbox-controller
    )
    rm -rf "${CLUSTER_BUILD:?}/$bin"
    mkdir -p "$CLUSTER_BUILD/$bin"
    cp -r "$src/k8s" "$CLUSTER_BUILD/$bin/k8s"
}

log "building into $CLUSTER_BUILD (go build -p $GO_P under nice -n $NICE)"
start=$(date +%s)
timed agent-sandbox build_agent_sandbox "$AGENT_SANDBOX_VERSION" agent-sandbox-controller
timed agent-sandbox-v1 build_agent_sandbox "$AGENT_SANDBOX_V1_VERSION" agent-sandbox-controller-v1
timed containerd build_containerd
timed kubernetes build_kubernetes
printf 'total %ss\n' "$(($(date +%s) - start))" | tee -a "$TIMES" >&2
# The sources are only needed to build; the module and build caches stay for the next key.
rm -rf "$CLUSTER_BUILD/src"
touch "$CLUSTER_BUILD/complete"
log "built: $(ls "$CLUSTER_BIN" | tr '\n' ' ')"
