# Sourced by the scripts in scripts/cluster: paths, versions and the build cache key.
# shellcheck shell=bash

log() { printf '[cluster %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

CLUSTER_SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$CLUSTER_SCRIPTS/../.." && pwd)"
# shellcheck source=versions.env
. "$CLUSTER_SCRIPTS/versions.env"

# Built binaries live outside the clone, keyed by everything that decides them.
CLUSTER_CACHE="${PODSNAP_CLUSTER_CACHE:-/var/cache/podsnap/cluster}"
# Go's module and build caches for these builds (a fresh machine starts with both empty).
export GOMODCACHE="${PODSNAP_CLUSTER_GOMODCACHE:-$CLUSTER_CACHE/gomod}"
export GOCACHE="${PODSNAP_CLUSTER_GOCACHE:-$CLUSTER_CACHE/gocache}"
export GOFLAGS="-buildvcs=false"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"

command -v go >/dev/null || die "go not found: the cluster's parts are built from Go modules"

cluster_key() {
    {
        cat "$CLUSTER_SCRIPTS/versions.env" "$CLUSTER_SCRIPTS/build.sh"
        go env GOVERSION GOARCH
    } | sha256sum | cut -c1-16
}

CLUSTER_KEY="$(cluster_key)"
CLUSTER_BUILD="$CLUSTER_CACHE/$CLUSTER_KEY"
CLUSTER_BIN="$CLUSTER_BUILD/bin"

# Runtime state of a running cluster: inside the clone's target dir (the contract's paths), with
# the parts whose paths must stay short or outside overlay-unfriendly places under /run.
CLUSTER_DIR="$REPO_ROOT/target/cluster"
CLUSTER_RUN="${PODSNAP_CLUSTER_RUN:-/run/podsnap-cluster}"
CLUSTER_VAR="${PODSNAP_CLUSTER_VAR:-/var/lib/podsnap-cluster}"

