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

# The GVISOR lines of versions.env key gVisor's own cache (scripts/gvisor/build.sh), not this one.
cluster_key() {
    {
        grep -v GVISOR "$CLUSTER_SCRIPTS/versions.env"
        cat "$CLUSTER_SCRIPTS/build.sh"
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


# Processes of a running cluster: each in its own session, its pid in $PIDS/<name>.pid and its
# output in $LOGS/<name>.log.
LOGS="$CLUSTER_DIR/logs"
PIDS="$CLUSTER_RUN/pids"

start() { # name command...
    local name="$1"
    shift
    # Not holding the cluster lock's descriptor (200): the lock ends with its script.
    setsid "$@" </dev/null >>"$LOGS/$name.log" 2>&1 200>&- &
    echo $! >"$PIDS/$name.pid"
    log "started $name (pid $!)"
}

stop() { # name: SIGTERM its session, then SIGKILL after 10 s
    local name="$1" pid i
    [ -f "$PIDS/$name.pid" ] || return 0
    pid="$(cat "$PIDS/$name.pid")"
    if kill -0 "$pid" 2>/dev/null; then
        log "stopping $name (pid $pid)"
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 20; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PIDS/$name.pid"
}

wait_for() { # what seconds command...
    local what="$1" secs="$2"
    shift 2
    local i
    for ((i = 0; i < secs * 2; i++)); do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.5
    done
    die "$what not ready after ${secs}s (logs: $LOGS)"
}

alive() { kill -0 "$(cat "$PIDS/$1.pid")" 2>/dev/null; }

# One user of the local cluster at a time. `make test-cluster` (scripts/cluster/test.sh) holds
# this lock from its first cluster-down to its last, up.sh and down.sh while they run; what
# they run inherits PODSNAP_CLUSTER_LOCKED=1 and does not lock again. A second user is refused
# with who holds it, instead of taking the other's cluster down under it.
CLUSTER_LOCK=/run/podsnap-cluster.lock
cluster_lock() { # what (for the refusal message of the next one)
    [ "${PODSNAP_CLUSTER_LOCKED:-}" = 1 ] && return 0
    exec 200>>"$CLUSTER_LOCK"
    flock -n 200 || die "the local cluster is in use ($(cat "$CLUSTER_LOCK" 2>/dev/null)); try again when it is done"
    printf '%s, pid %s, since %s UTC' "$1" "$$" "$(date -u +%H:%M:%S)" >"$CLUSTER_LOCK"
    export PODSNAP_CLUSTER_LOCKED=1
}
