#!/usr/bin/env bash
# Builds current gVisor from the Go module proxy: runsc and gVisor's containerd shim
# (containerd-shim-runsc-v1), static and version stamped, into
# $PODSNAP_GVISOR_CACHE/<key>/bin (default /var/cache/podsnap/gvisor), where <key> hashes the
# pinned version, the build recipe (RECIPE below) and the Go toolchain. A finished key is
# never rebuilt.
#
#   scripts/gvisor/build.sh          build (or find cached), print the bin directory on stdout
#
# Beside the upstream shim it builds containerd-shim-runsc-v1-testmachine: the same shim from a
# copy of the module with shim-oom-score.patch applied, a test-machine adaptation only (root on
# podsnap's test machines lacks CAP_SYS_RESOURCE; see docs/gvisor-shim.md).
#
# runsc must be built with CGO_ENABLED=0: a cgo build is dynamically linked and dies at sandbox
# start ("error executing umounter: fork/exec /proc/self/exe: no such file or directory"),
# because the dynamic loader is gone once runsc has pivoted into the sandbox's root.
#
# Environment: PODSNAP_GVISOR_GO_P (go build -p, default 2), PODSNAP_GVISOR_NICE (default 10).
set -euo pipefail

# The pinned version (GVISOR_MODULE_VERSION, GVISOR_RELEASE) sits beside the cluster's other
# versions. gvisor.dev/gvisor publishes its Go-only "go" branch as pseudo-versions; `@go` may
# answer an older cached one, hence the pin.
# shellcheck source=../cluster/versions.env
. "$(cd "$(dirname "$0")/../cluster" && pwd)/versions.env"

log() { printf '[gvisor %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
command -v go >/dev/null || die "go not found: runsc and the shim are built from gvisor.dev/gvisor"

CACHE="${PODSNAP_GVISOR_CACHE:-/var/cache/podsnap/gvisor}"
export GOMODCACHE="${PODSNAP_GVISOR_GOMODCACHE:-$CACHE/gomod}"
export GOCACHE="${PODSNAP_GVISOR_GOCACHE:-$CACHE/gocache}"
export GOFLAGS="-buildvcs=false"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
export GOPROXY="${GOPROXY:-https://proxy.golang.org}"
# Everything that decides the binaries; change it when the build steps below change.
RECIPE="CGO_ENABLED=0 -trimpath -ldflags=-s,-w,version.version runsc shim shim-testmachine:$(sha256sum "$(dirname "$0")/shim-oom-score.patch" | cut -c1-16)"
KEY="$( { echo "$GVISOR_MODULE_VERSION $GVISOR_RELEASE $RECIPE"; go env GOVERSION GOARCH; } | sha256sum | cut -c1-16)"
BUILD="$CACHE/$KEY"
BIN="$BUILD/bin"

if [ -f "$BUILD/complete" ]; then
    echo "$BIN"
    exit 0
fi
# One build at a time per cache (a second caller waits, then finds the finished key).
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
if [ -f "$BUILD/complete" ]; then
    echo "$BIN"
    exit 0
fi

PATCH="$(cd "$(dirname "$0")" && pwd)/shim-oom-score.patch"
GO_P="${PODSNAP_GVISOR_GO_P:-2}"
NICE="${PODSNAP_GVISOR_NICE:-10}"
src="$BUILD/src"
rm -rf "$src"
mkdir -p "$src" "$BIN" "$GOMODCACHE" "$GOCACHE"
log "building gvisor.dev/gvisor@$GVISOR_MODULE_VERSION ($GVISOR_RELEASE) into $BUILD"
start=$(date +%s)
(
    cd "$src"
    cat >go.mod <<MOD
module podsnap.invalid/gvisor

go 1.24

require gvisor.dev/gvisor $GVISOR_MODULE_VERSION
MOD
    go mod download gvisor.dev/gvisor >/dev/null
    CGO_ENABLED=0 nice -n "$NICE" go build -mod=mod -p "$GO_P" -trimpath \
        -ldflags "-s -w -X gvisor.dev/gvisor/runsc/version.version=$GVISOR_RELEASE" \
        -o "$BIN/runsc" gvisor.dev/gvisor/runsc
    CGO_ENABLED=0 nice -n "$NICE" go build -mod=mod -p "$GO_P" -trimpath \
        -ldflags "-s -w" -o "$BIN/containerd-shim-runsc-v1" gvisor.dev/gvisor/shim
    # The test-machine shim: a patched copy of the module, through a Go replace.
    cp -r "$(go list -m -f '{{.Dir}}' gvisor.dev/gvisor)" gvisor-patched
    chmod -R u+w gvisor-patched
    patch -s -d gvisor-patched -p1 <"$PATCH"
    go mod edit -replace gvisor.dev/gvisor=./gvisor-patched
    CGO_ENABLED=0 nice -n "$NICE" go build -mod=mod -p "$GO_P" -trimpath \
        -ldflags "-s -w" -o "$BIN/containerd-shim-runsc-v1-testmachine" gvisor.dev/gvisor/shim
)
rm -rf "$src"
"$BIN/runsc" --version | sed -n 1p >&2
log "built in $(($(date +%s) - start)) s"
touch "$BUILD/complete"
echo "$BIN"
