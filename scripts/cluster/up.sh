#!/usr/bin/env bash
# `make cluster-up`: a one-node Kubernetes cluster of real parts on this machine.
#
#   etcd (Debian trixie's etcd-server) -> kube-apiserver -> kube-controller-manager,
#   kube-scheduler; containerd 2.x (CRI, CNI bridge) -> kubelet; agent-sandbox-controller
#   (with --extensions) and its CRDs, release v0 or v1 (PODSNAP_CLUSTER_AGENT_SANDBOX, default
#   v0; scripts/cluster/agent-sandbox.sh switches a running cluster); RuntimeClass `gvisor`
#   (handler `runsc`, podsnap-runsc); podsnapd on the node (Unix socket for podsnap-runsc,
#   mutual TLS on NODE_IP:9443 for the controller); podsnap-controller (podsnapshot.gke.io/v1,
#   restore webhook on 127.0.0.1:9444) and the PodSnapshotStorageConfig `local` (a file store
#   under /var/lib/podsnap-cluster).
#
# Leaves target/cluster/kubeconfig (cluster admin) and target/cluster/containerd.sock. Every
# process runs in its own session, logs to target/cluster/logs/ and is stopped by
# `make cluster-down` (scripts/cluster/down.sh) through its pid file.
set -euo pipefail
# The failure trap (set in main) also fires inside the step functions.
set -o errtrace
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

TEMPLATES="$CLUSTER_SCRIPTS/templates"

# render TEMPLATE OUT VAR...: writes templates/TEMPLATE to OUT (`-`: stdout) with each `${VAR}`
# named replaced by that variable's value (nothing else is expanded: the runsc handler's own
# `$wrapper` stays); a `${VAR}` left unnamed is an error.
render() {
    local tmpl="$1" out="$2" text var
    shift 2
    text="$(cat "$TEMPLATES/$tmpl"; echo .)"
    text="${text%.}"
    for var in "$@"; do
        text="${text//"\${$var}"/"${!var}"}"
    done
    if [[ "$text" =~ \$\{[A-Z_][A-Z0-9_]*\} ]]; then
        die "template $tmpl: ${BASH_REMATCH[0]} is not rendered"
    fi
    if [ "$out" = - ]; then
        printf '%s' "$text"
    else
        printf '%s' "$text" >"$out"
    fi
}

# --- host packages --------------------------------------------------------------------------
need_debs() {
    local missing=()
    command -v etcd >/dev/null || missing+=("etcd-server/$ETCD_DEB_RELEASE")
    [ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
    command -v iptables >/dev/null || missing+=(iptables)
    command -v openssl >/dev/null || missing+=(openssl)
    command -v gcc >/dev/null || missing+=(gcc libc6-dev)
    [ -x /bin/busybox ] || missing+=(busybox-static)
    [ -x /usr/bin/python3 ] || missing+=(python3)
    command -v runsc >/dev/null || missing+=(runsc)
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2 ||
            { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2; } ||
            die "apt-get install ${missing[*]} failed (etcd-server 3.5 comes from Debian $ETCD_DEB_RELEASE: an apt source for it must exist, pinned low)"
    fi
}

# --- an earlier cluster -----------------------------------------------------------------------
no_cluster_up() {
    if [ -f "$CLUSTER_RUN/pids/kube-apiserver.pid" ] && kill -0 "$(cat "$CLUSTER_RUN/pids/kube-apiserver.pid")" 2>/dev/null; then
        die "a cluster is already up ($CLUSTER_RUN); run make cluster-down first"
    fi
    # Leftovers of a cluster that was not taken down (state that no longer matches fresh
    # certificates): clean them first.
    if [ -e "$CLUSTER_VAR" ] || [ -e "$CLUSTER_RUN" ]; then
        log "cleaning up the state of an earlier cluster"
        bash "$CLUSTER_SCRIPTS/down.sh"
    fi
}

# --- settings and directories -----------------------------------------------------------------
settings() {
    NODE_NAME="${PODSNAP_CLUSTER_NODE:-podsnap-node}"
    # The node's address: the source address of the default route (what the API server dials
    # for logs and exec), loopback only if there is no route at all.
    NODE_IP="$(ip -4 route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p' | head -1)"
    NODE_IP="${NODE_IP:-127.0.0.1}"
    ETCD_PORT=12379
    API_PORT=16443
    POD_SUBNET=10.244.0.0/24
    SERVICE_RANGE=10.96.0.0/16
    PKI="$CLUSTER_DIR/pki"
    API="https://127.0.0.1:$API_PORT"
    KUBECTL="$CLUSTER_BIN/kubectl"
    IMAGES="$CLUSTER_DIR/images"
    PAUSE_IMAGE=localhost/podsnap/pause:3.10
    BUSYBOX_IMAGE=localhost/podsnap/busybox:1
    PYTHON_IMAGE=localhost/podsnap/python:3
    CNI_CONF="$CLUSTER_VAR/cni/net.d"
    # runsc's network: runsc 20240729 decides that a sandbox sits in the root network
    # namespace when /proc/sys/net/core/rmem_default exists, which kernels of 6.x show in
    # every network namespace, so pod sandboxes with the default `sandbox` network fail to
    # start ("cannot run with network enabled in root network namespace"). gVisor pods here
    # therefore run with --network=none (loopback only); PODSNAP_CLUSTER_RUNSC_NETWORK=sandbox
    # for a runsc that checks otherwise (later releases test net/core/dev_weight).
    RUNSC_NETWORK="${PODSNAP_CLUSTER_RUNSC_NETWORK:-none}"
    # The `runsc` handler's shim: gVisor's own (default: runsc 2026 behind
    # containerd-shim-runsc-v1 with podsnap-runsc as its binary_name; gvisor_shim_configs) or
    # PODSNAP_CLUSTER_SHIM=runc (containerd's runc v2 shim with podsnap-runsc in front of the
    # system runsc, Debian's 20240729).
    CLUSTER_SHIM="${PODSNAP_CLUSTER_SHIM:-gvisor}"
    CONTAINERD_ENV=()
    # The kubelet's root: /var/lib/kubelet, as on real nodes. gVisor's shim finds emptyDir
    # volumes only under that fixed path (/var/lib/kubelet/pods/<uid>/volumes/...) when it
    # turns them into sandbox-internal tmpfs mounts (docs/gvisor-shim.md, "emptyDir").
    KUBELET_ROOT=/var/lib/kubelet
    PODSNAPD_RUNSC=/usr/bin/runsc
    SNAPSHOTS="$CLUSTER_VAR/snapshots"
    PODSNAPD_PORT=9443
    WEBHOOK_PORT=9444
}

fresh_dirs() {
    rm -rf "$CLUSTER_DIR"
    mkdir -p "$CLUSTER_DIR" "$PKI" "$LOGS" "$PIDS" "$CLUSTER_VAR" "$CLUSTER_RUN" "$CLUSTER_DIR/bin"
    # Where things are, for down.sh and for anyone debugging.
    write_env
}

write_env() {
    render env.tmpl "$CLUSTER_DIR/env" CLUSTER_BIN CLUSTER_RUN CLUSTER_VAR NODE_NAME NODE_IP API_PORT
}

# --- certificates (one CA signs everything; the API server's also signs kubelet clients) ------
cert() { # name CN O [SANs]
    local name="$1" cn="$2" o="$3" sans="${4:-}"
    local ext="$PKI/$name.ext"
    {
        echo "basicConstraints=CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        if [ -n "$sans" ]; then
            echo "extendedKeyUsage=serverAuth,clientAuth"
            echo "subjectAltName=$sans"
        else
            echo "extendedKeyUsage=clientAuth"
        fi
    } >"$ext"
    local subj="/CN=$cn"
    [ -n "$o" ] && subj="/O=$o$subj"
    openssl req -new -newkey rsa:2048 -nodes -keyout "$PKI/$name.key" -subj "$subj" \
        -out "$PKI/$name.csr" 2>/dev/null
    openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
        -CAcreateserial -days 365 -extfile "$ext" -out "$PKI/$name.crt" 2>/dev/null
    rm -f "$PKI/$name.csr" "$ext"
}

kubeconfig() { # file name (cert pair in pki) server
    local file="$1" USER_NAME="$2" SERVER="$3" CA_DATA CLIENT_CERT_DATA CLIENT_KEY_DATA
    CA_DATA="$(base64 -w0 <"$PKI/ca.crt")"
    CLIENT_CERT_DATA="$(base64 -w0 <"$PKI/$USER_NAME.crt")"
    CLIENT_KEY_DATA="$(base64 -w0 <"$PKI/$USER_NAME.key")"
    render kubeconfig.tmpl "$file" SERVER CA_DATA USER_NAME CLIENT_CERT_DATA CLIENT_KEY_DATA
}

certificates() {
    log "certificates"
    openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=podsnap-cluster-ca" \
        -keyout "$PKI/ca.key" -out "$PKI/ca.crt" 2>/dev/null
    cert apiserver kube-apiserver "" \
        "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:$NODE_IP,IP:10.96.0.1"
    cert kubelet-serving "system:node:$NODE_NAME" system:nodes "DNS:$NODE_NAME,DNS:localhost,IP:$NODE_IP,IP:127.0.0.1"
    cert admin admin system:masters
    cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
    cert controller-manager system:kube-controller-manager ""
    cert scheduler system:kube-scheduler ""
    cert kubelet "system:node:$NODE_NAME" system:nodes
    cert agent-sandbox-controller agent-sandbox-controller ""
    # podsnapd's --listen-tls serving certificate (the name podsnap-controller checks:
    # podsnapd) and podsnap-controller's client certificate for it; the same CA on both sides.
    cert podsnapd podsnapd "" "DNS:podsnapd,IP:$NODE_IP,IP:127.0.0.1"
    cert podsnap-controller podsnap-controller ""
    openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
    openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
}

kubeconfigs() {
    local user
    kubeconfig "$CLUSTER_DIR/kubeconfig" admin "$API"
    for user in controller-manager scheduler kubelet agent-sandbox-controller podsnap-controller; do
        kubeconfig "$CLUSTER_DIR/$user.kubeconfig" "$user" "$API"
    done
    export KUBECONFIG="$CLUSTER_DIR/kubeconfig"
    ln -sf "$KUBECTL" "$CLUSTER_DIR/bin/kubectl"
    ln -sf "$CLUSTER_BIN/ctr" "$CLUSTER_DIR/bin/ctr"
}

# --- processes (start, wait_for, alive: common.sh) ------------------------------------------
curl_api() { curl -fsS --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" "$API$1"; }

start_etcd() {
    log "etcd"
    start etcd etcd --name podsnap --data-dir "$CLUSTER_VAR/etcd" \
        --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls http://127.0.0.1:12380 \
        --initial-advertise-peer-urls http://127.0.0.1:12380 \
        --initial-cluster podsnap=http://127.0.0.1:12380 \
        --listen-metrics-urls "" --log-level warn
    wait_for etcd 30 curl -fsS "http://127.0.0.1:$ETCD_PORT/health"
}

start_control_plane() {
    start kube-apiserver "$CLUSTER_BIN/kube-apiserver" \
        --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
        --bind-address 0.0.0.0 --secure-port "$API_PORT" --advertise-address "$NODE_IP" \
        --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
        --client-ca-file "$PKI/ca.crt" \
        --service-account-issuer https://kubernetes.default.svc.cluster.local \
        --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
        --service-cluster-ip-range "$SERVICE_RANGE" \
        --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
        --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
        --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
        --kubelet-certificate-authority "$PKI/ca.crt" \
        --kubelet-preferred-address-types InternalIP \
        --allow-privileged=true --profiling=false --v=1
    wait_for kube-apiserver 120 curl_api /readyz

    start kube-controller-manager "$CLUSTER_BIN/kube-controller-manager" \
        --kubeconfig "$CLUSTER_DIR/controller-manager.kubeconfig" \
        --authentication-kubeconfig "$CLUSTER_DIR/controller-manager.kubeconfig" \
        --authorization-kubeconfig "$CLUSTER_DIR/controller-manager.kubeconfig" \
        --bind-address 127.0.0.1 --secure-port 10257 --leader-elect=false \
        --use-service-account-credentials=true \
        --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
        --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
        --service-cluster-ip-range "$SERVICE_RANGE" --allocate-node-cidrs=false --v=1
    start kube-scheduler "$CLUSTER_BIN/kube-scheduler" \
        --kubeconfig "$CLUSTER_DIR/scheduler.kubeconfig" \
        --authentication-kubeconfig "$CLUSTER_DIR/scheduler.kubeconfig" \
        --authorization-kubeconfig "$CLUSTER_DIR/scheduler.kubeconfig" \
        --bind-address 127.0.0.1 --secure-port 10259 --leader-elect=false --v=1
}

# --- the node: images, CNI, containerd, kubelet -----------------------------------------------
images() {
    log "images"
    mkdir -p "$IMAGES"
    local k8s_src
    k8s_src="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
    gcc -Os -static -Wall -DVERSION="podsnap-cluster" -o "$IMAGES/pause" "$k8s_src/build/pause/linux/pause.c"
    python3 "$CLUSTER_SCRIPTS/oci-image.py" "$IMAGES/pause.tar" "$PAUSE_IMAGE" \
        --entrypoint '["/pause"]' "/pause=$IMAGES/pause"
    local busybox_links=() applet
    for applet in $(/bin/busybox --list); do
        [ "$applet" = busybox ] || busybox_links+=("/bin/$applet@busybox")
    done
    python3 "$CLUSTER_SCRIPTS/oci-image.py" "$IMAGES/busybox.tar" "$BUSYBOX_IMAGE" \
        --cmd '["sh"]' "/bin/busybox=/bin/busybox" "${busybox_links[@]}"
    python_image
}

# Python (the tutorial's counter is a Python program): Debian's interpreter, the libraries it
# loads and its standard library's .py files as one zip on its default sys.path (no compiled
# modules; enough for the standard library's pure-Python part, time and print).
python_image() {
    local py pyver pyzip lib py_files
    py="$(readlink -f /usr/bin/python3)"
    pyver="$(basename "$py")"                    # python3.11
    pyzip="$IMAGES/$(echo "$pyver" | tr -d .).zip" # python311.zip
    /usr/bin/python3 "$CLUSTER_SCRIPTS/python-stdlib-zip.py" "/usr/lib/$pyver" "$pyzip"
    : >"$IMAGES/keep"
    py_files=("/usr/bin/python3=$py" "/usr/lib/$(basename "$pyzip")=$pyzip" "/usr/lib/$pyver/lib-dynload/.keep=$IMAGES/keep")
    for lib in $(ldd "$py" | grep -o '/[^ ]*'); do
        py_files+=("$lib=$(readlink -f "$lib")")
    done
    python3 "$CLUSTER_SCRIPTS/oci-image.py" "$IMAGES/python.tar" "$PYTHON_IMAGE" \
        --cmd '["python3"]' "${py_files[@]}"
}

# The node's config files: the CNI bridge, the gvisor handler's binary and its podsnap-runsc
# config, containerd's and the kubelet's.
node_configs() {
    mkdir -p "$CNI_CONF" "$CLUSTER_VAR/cni/ipam" "$CLUSTER_RUN/containerd" "$CLUSTER_RUN/runsc" "$CLUSTER_RUN/runc" \
        "$CLUSTER_RUN/podsnap/restored"
    render cni-podsnap.conflist.tmpl "$CNI_CONF/10-podsnap.conflist" POD_SUBNET CLUSTER_VAR
    # The gvisor handler's binary: podsnap-runsc from this clone's build (the newer of release
    # and debug) in front of the system runsc; the system runsc itself when podsnap is not
    # built (RUNSC_NETWORK: see settings).
    render podsnap-runsc.toml.tmpl "$CLUSTER_DIR/podsnap-runsc.toml" RUNSC_NETWORK CLUSTER_RUN
    render runsc-handler.tmpl "$CLUSTER_DIR/bin/runsc-handler" REPO_ROOT CLUSTER_DIR RUNSC_NETWORK
    chmod +x "$CLUSTER_DIR/bin/runsc-handler"
    render containerd.toml.tmpl "$CLUSTER_DIR/containerd.toml" \
        CLUSTER_VAR CLUSTER_RUN PAUSE_IMAGE CNI_CONF CLUSTER_DIR
    render kubelet.yaml.tmpl "$CLUSTER_DIR/kubelet.yaml" CLUSTER_RUN PKI CLUSTER_VAR
    case "$CLUSTER_SHIM" in
        runc) ;;
        gvisor) gvisor_shim_configs ;;
        *) die "PODSNAP_CLUSTER_SHIM=$CLUSTER_SHIM: gvisor (default) or runc" ;;
    esac
}

# PODSNAP_CLUSTER_SHIM=gvisor (the default): the `runsc` handler is gVisor's shim
# (containerd-shim-runsc-v1-testmachine from scripts/gvisor/build.sh, cached: upstream but for
# the OOM-score tolerance this machine needs) configured as a node operator would add podsnap
# to a gVisor node pool: the runtime's options name a runsc.toml whose binary_name is
# podsnap-runsc (this clone's build, linked at up time), which runs runsc 2026 behind the shim
# (gVisor mode: calls pass through, restores happen at `start`); podsnapd drives the same runsc.
gvisor_shim_configs() {
    local bin
    bin="$(bash "$REPO_ROOT/scripts/gvisor/build.sh")"
    GVISOR_SHIM="$bin/containerd-shim-runsc-v1-testmachine"
    PODSNAPD_RUNSC="$bin/runsc"
    # binary_name: podsnap-runsc when built (the newer of release and debug), else runsc itself.
    SHIM_BINARY="$PODSNAPD_RUNSC"
    local r="$REPO_ROOT/target/release/podsnap-runsc" d="$REPO_ROOT/target/debug/podsnap-runsc"
    if [ -x "$r" ] && { [ ! -x "$d" ] || [ "$r" -nt "$d" ]; }; then SHIM_BINARY="$r"
    elif [ -x "$d" ]; then SHIM_BINARY="$d"; fi
    if [ "$SHIM_BINARY" != "$PODSNAPD_RUNSC" ]; then
        ln -sf "$SHIM_BINARY" "$CLUSTER_DIR/bin/podsnap-runsc"
        SHIM_BINARY="$CLUSTER_DIR/bin/podsnap-runsc"
    fi
    # podsnap-runsc's config, found through containerd's environment (PODSNAP_CONFIG; a node
    # uses /etc/podsnap/podsnap.toml). No runsc_flags: the shim's runsc_config gives them.
    render podsnap-runsc-gvisor.toml.tmpl "$CLUSTER_DIR/podsnap-runsc-gvisor.toml" PODSNAPD_RUNSC CLUSTER_RUN
    CONTAINERD_ENV=(PODSNAP_CONFIG="$CLUSTER_DIR/podsnap-runsc-gvisor.toml")
    render gvisor-runsc.toml.tmpl "$CLUSTER_DIR/gvisor-runsc.toml" SHIM_BINARY CLUSTER_RUN RUNSC_NETWORK LOGS
    # The `runsc` runtime is containerd.toml's last section: replace it.
    sed -i '/containerd\.runtimes\.runsc\]$/,$d' "$CLUSTER_DIR/containerd.toml"
    render containerd-runsc-gvisor.toml.tmpl - GVISOR_SHIM CLUSTER_DIR >>"$CLUSTER_DIR/containerd.toml"
    log "runsc handler: gVisor's shim $GVISOR_SHIM, binary_name $SHIM_BINARY, $("$PODSNAPD_RUNSC" --version | sed -n 1p)"
}

start_containerd() {
    log "containerd"
    node_configs
    # The shim runs from PATH: put this build's shim first.
    start containerd env PATH="$CLUSTER_BIN:$PATH" "${CONTAINERD_ENV[@]}" "$CLUSTER_BIN/containerd" \
        --config "$CLUSTER_DIR/containerd.toml"
    ln -sf "$CLUSTER_RUN/containerd.sock" "$CLUSTER_DIR/containerd.sock"
    local ctr=("$CLUSTER_BIN/ctr" --address "$CLUSTER_RUN/containerd.sock" -n k8s.io) image
    wait_for containerd 30 "${ctr[@]}" version
    for image in pause busybox python; do
        "${ctr[@]}" images import "$IMAGES/$image.tar" >/dev/null
    done
    "${ctr[@]}" images ls -q | sed 's/^/[cluster] image /' >&2
}

start_kubelet() {
    log "kubelet"
    start kubelet "$CLUSTER_BIN/kubelet" \
        --config "$CLUSTER_DIR/kubelet.yaml" --kubeconfig "$CLUSTER_DIR/kubelet.kubeconfig" \
        --root-dir "$KUBELET_ROOT" --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" \
        --v=1
    wait_for "node $NODE_NAME" 120 "$KUBECTL" get node "$NODE_NAME"
    "$KUBECTL" wait --for=condition=Ready "node/$NODE_NAME" --timeout=120s >&2 ||
        die "node $NODE_NAME not Ready (logs: $LOGS/kubelet.log)"
}

# --- cluster objects: RuntimeClass, agent-sandbox ---------------------------------------------
cluster_objects() {
    log "RuntimeClass gvisor"
    "$KUBECTL" apply -f "$CLUSTER_SCRIPTS/manifests/runtimeclass-gvisor.yaml" >&2
    bash "$CLUSTER_SCRIPTS/agent-sandbox.sh" "${PODSNAP_CLUSTER_AGENT_SANDBOX:-v0}"
}

# --- podsnap: podsnapd on the node, podsnap-controller, the `local` storage config -------------
# Binaries: the newer of this clone's release and debug builds (make cluster-up builds debug).
podsnap_bin() {
    local r="$REPO_ROOT/target/release/$1" d="$REPO_ROOT/target/debug/$1"
    if [ -x "$r" ] && { [ ! -x "$d" ] || [ "$r" -nt "$d" ]; }; then echo "$r"
    elif [ -x "$d" ]; then echo "$d"
    else die "$1 is not built (cargo build --bins)"; fi
}

start_podsnapd() {
    mkdir -p "$SNAPSHOTS" "$CLUSTER_VAR/podsnapd"
    log "podsnapd ($PODSNAPD) and podsnap-controller ($CONTROLLER)"
    start podsnapd "$PODSNAPD" --listen "unix://$CLUSTER_RUN/podsnapd.sock" \
        --listen-tls "$NODE_IP:$PODSNAPD_PORT" --tls-cert "$PKI/podsnapd.crt" --tls-key "$PKI/podsnapd.key" \
        --tls-client-ca "$PKI/ca.crt" --store "file://$SNAPSHOTS" \
        --runsc "$PODSNAPD_RUNSC" --runsc-root "$CLUSTER_RUN/runsc/k8s.io" --runsc-flag="--network=$RUNSC_NETWORK" \
        --containerd-socket "$CLUSTER_RUN/containerd.sock" --state-dir "$CLUSTER_VAR/podsnapd" \
        --node-name "$NODE_NAME"
    wait_for podsnapd 30 test -S "$CLUSTER_RUN/podsnapd.sock"
    echo "PODSNAPD_SOCK=$CLUSTER_RUN/podsnapd.sock" >>"$CLUSTER_DIR/env"
    echo "SNAPSHOTS=$SNAPSHOTS" >>"$CLUSTER_DIR/env"
}

podsnap_objects() {
    "$KUBECTL" apply -f "$REPO_ROOT/daemonset/namespace.yaml" >&2
    "$KUBECTL" apply --server-side -f "$REPO_ROOT/daemonset/controller/crds.yaml" >&2
    "$KUBECTL" apply -f "$REPO_ROOT/daemonset/controller/rbac.yaml" >&2
    "$KUBECTL" wait --for condition=Established --timeout=60s \
        crd/podsnapshots.podsnapshot.gke.io crd/podsnapshotpolicies.podsnapshot.gke.io \
        crd/podsnapshotmanualtriggers.podsnapshot.gke.io crd/podsnapshotstorageconfigs.podsnapshot.gke.io >&2
    render storageconfig-local.yaml.tmpl - SNAPSHOTS | "$KUBECTL" apply -f - >&2
}

start_podsnap_controller() {
    start podsnap-controller "$CONTROLLER" run --kubeconfig "$CLUSTER_DIR/podsnap-controller.kubeconfig" \
        --webhook-listen "127.0.0.1:$WEBHOOK_PORT" --webhook-url "https://127.0.0.1:$WEBHOOK_PORT/mutate-pods" \
        --webhook-exclude-namespace podsnap-system \
        --podsnapd-port "$PODSNAPD_PORT" --podsnapd-ca "$PKI/ca.crt" \
        --podsnapd-cert "$PKI/podsnap-controller.crt" --podsnapd-key "$PKI/podsnap-controller.key" \
        --lease-namespace podsnap-system
    wait_for "podsnap-controller webhook" 60 "$KUBECTL" get mutatingwebhookconfiguration podsnap-controller
    wait_for "podsnap-controller lease" 60 "$KUBECTL" -n podsnap-system get lease podsnap-controller
}

podsnap() {
    PODSNAPD="$(podsnap_bin podsnapd)"
    CONTROLLER="$(podsnap_bin podsnap-controller)"
    start_podsnapd
    podsnap_objects
    start_podsnap_controller
}

all_alive() {
    local p
    for p in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet agent-sandbox-controller podsnapd podsnap-controller; do
        alive "$p" || die "$p exited (log: $LOGS/$p.log)"
    done
    "$KUBECTL" get nodes -o wide >&2
    log "up: KUBECONFIG=$CLUSTER_DIR/kubeconfig; containerd at $CLUSTER_DIR/containerd.sock"
}

main() {
    [ "$(id -u)" = 0 ] || die "the cluster needs root (kubelet, containerd, CNI)"
    bash "$CLUSTER_SCRIPTS/build.sh" # cached
    no_cluster_up
    need_debs
    trap 'log "cluster-up failed: logs in $CLUSTER_DIR/logs; make cluster-down stops what started"' ERR
    settings
    fresh_dirs
    certificates
    kubeconfigs
    start_etcd
    start_control_plane
    images
    start_containerd
    start_kubelet
    cluster_objects
    podsnap
    all_alive
}

# Sourced (a check of the rendered configs, say): the steps are defined, nothing runs.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main "$@"
fi
