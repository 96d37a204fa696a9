#!/usr/bin/env bash
# `make cluster-up`: a one-node Kubernetes cluster of real parts on this machine.
#
#   etcd (Debian trixie's etcd-server) -> kube-apiserver -> kube-controller-manager,
#   kube-scheduler; containerd 2.x (CRI, CNI bridge) -> kubelet; agent-sandbox-controller
#   (with --extensions) and its CRDs, release v0 or v1 (PODSNAP_CLUSTER_AGENT_SANDBOX, default
#   v0; scripts/cluster/agent-sandbox.sh switches a running cluster); RuntimeClass `gvisor`
#   (handler `runsc`, podsnap-runsc); podsnap installed as users install it: `make image`
#   (target/oci/podsnap.tar) imported into the node's containerd, then `kubectl apply -k
#   scripts/cluster/install/<shim>` (daemonset/ with the local cluster's paths, store and
#   certificates patched in): podsnapd as the DaemonSet podsnap-system/podsnapd (Unix socket
#   for podsnap-runsc, mutual TLS on NODE_IP:9443 for the controller), podsnap-controller as
#   the Deployment podsnap-system/podsnap-controller (podsnapshot.gke.io/v1, restore
#   webhook), and the PodSnapshotStorageConfig `local` (a file store under
#   /var/lib/podsnap-cluster). PODSNAP_CLUSTER_HOST_PROCESSES=1 runs podsnapd and
#   podsnap-controller as host processes instead (debugging: this clone's newer build).
#
# Leaves target/cluster/kubeconfig (cluster admin) and target/cluster/containerd.sock (also at
# target/cluster/<node name>/containerd.sock, for each node). Every
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
    command -v ip >/dev/null || missing+=(iproute2)
    command -v nsenter >/dev/null || missing+=(util-linux)
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
    NODE2_IP=
    [ "${PODSNAP_CLUSTER_NODES:-1}" = 2 ] && NODE2_IP=10.245.2.2
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
    PODSNAPD_SOCK="$CLUSTER_RUN/podsnap/podsnapd.sock"
    # PODSNAP_CLUSTER_NODES=2: a second node (second_node) on this machine.
    NODES="${PODSNAP_CLUSTER_NODES:-1}"
    case "$NODES" in 1 | 2) ;; *) die "PODSNAP_CLUSTER_NODES=$NODES: 1 (default) or 2" ;; esac
    NODE2_NAME=podsnap-node-2
    # podsnap installed from the image (the default) or as host processes (debugging).
    HOST_PROCESSES="${PODSNAP_CLUSTER_HOST_PROCESSES:-0}"
    # Where the DaemonSet installs podsnap-runsc and its config on the node, and the node's
    # runsc that both the shim's wrapper and podsnapd run (scripts/cluster/install/base).
    NODE_BIN="$CLUSTER_VAR/bin"
    NODE_ETC="$CLUSTER_VAR/etc"
    RUNSC_BINARY="$CLUSTER_DIR/bin/runsc-handler"
    VERSION="$(awk -F'"' '/^\[workspace.package\]/ { p = 1 } p && /^version/ { print $2; exit }' "$REPO_ROOT/Cargo.toml")"
    if [ "$HOST_PROCESSES" != 1 ]; then
        # The install's manifests name these paths (scripts/cluster/install/base).
        [ "$CLUSTER_RUN" = /run/podsnap-cluster ] && [ "$CLUSTER_VAR" = /var/lib/podsnap-cluster ] ||
            die "PODSNAP_CLUSTER_RUN/PODSNAP_CLUSTER_VAR other than the defaults need PODSNAP_CLUSTER_HOST_PROCESSES=1 (scripts/cluster/install names the default paths)"
        [ -f "$REPO_ROOT/target/oci/podsnap.tar" ] || die "target/oci/podsnap.tar missing: make image (make cluster-up runs it)"
        RUNSC_BINARY="$NODE_BIN/podsnap-runsc"
    elif [ "$NODES" = 2 ]; then
        die "PODSNAP_CLUSTER_NODES=2 needs podsnap installed from the image (the DaemonSet puts a podsnapd on each node), not PODSNAP_CLUSTER_HOST_PROCESSES=1"
    fi
}

fresh_dirs() {
    rm -rf "$CLUSTER_DIR"
    mkdir -p "$CLUSTER_DIR" "$PKI" "$LOGS" "$CLUSTER_VAR" "$CLUSTER_RUN" "$CLUSTER_DIR/bin"
    # A shared mount of its own: the DaemonSet mounts it with HostToContainer propagation,
    # which containerd allows only from a shared or slave mount (/ is private here).
    mount --bind "$CLUSTER_RUN" "$CLUSTER_RUN"
    mount --make-rshared "$CLUSTER_RUN"
    # The same for podsnapd's state dir, which the DaemonSet mounts Bidirectional (lazy
    # restores' FUSE mounts under prepared/ must reach runsc on the host).
    mkdir -p "$CLUSTER_VAR/podsnapd"
    mount --bind "$CLUSTER_VAR/podsnapd" "$CLUSTER_VAR/podsnapd"
    mount --make-rshared "$CLUSTER_VAR/podsnapd"
    # And the kubelet's root: the DaemonSet mounts its pods/ HostToContainer (podsnapd packs
    # the emptyDirs of runc-shim pods, memory ones being tmpfs mounts made after it starts).
    # On systemd hosts every mount is shared already.
    mkdir -p "$KUBELET_ROOT"
    mount --bind "$KUBELET_ROOT" "$KUBELET_ROOT"
    mount --make-rshared "$KUBELET_ROOT"
    mkdir -p "$PIDS"
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
    if [ "$NODES" = 2 ]; then
        cert "kubelet-serving-$NODE2_NAME" "system:node:$NODE2_NAME" system:nodes "DNS:$NODE2_NAME,IP:$NODE2_IP"
        cert "kubelet-$NODE2_NAME" "system:node:$NODE2_NAME" system:nodes
    fi
    cert agent-sandbox-controller agent-sandbox-controller ""
    # podsnapd's --listen-tls serving certificate (the name podsnap-controller checks:
    # podsnapd) and podsnap-controller's client certificate for it; the same CA on both sides.
    cert podsnapd podsnapd "" "DNS:podsnapd,IP:$NODE_IP,IP:127.0.0.1${NODE2_IP:+,IP:$NODE2_IP}"
    cert podsnap-controller podsnap-controller ""
    # podsnap-controller's webhook (both replicas serve this one; the Service's DNS name).
    cert webhook podsnap-controller.podsnap-system.svc "" \
        "DNS:podsnap-controller.podsnap-system.svc,DNS:podsnap-controller.podsnap-system.svc.cluster.local"
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
        --enable-aggregator-routing=true \
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
    render podsnap-runsc.toml.tmpl "$CLUSTER_DIR/podsnap-runsc.toml" RUNSC_NETWORK PODSNAPD_SOCK CLUSTER_RUN
    render runsc-handler.tmpl "$CLUSTER_DIR/bin/runsc-handler" REPO_ROOT CLUSTER_DIR RUNSC_NETWORK
    chmod +x "$CLUSTER_DIR/bin/runsc-handler"
    render containerd.toml.tmpl "$CLUSTER_DIR/containerd.toml" \
        CLUSTER_VAR CLUSTER_RUN PAUSE_IMAGE CNI_CONF RUNSC_BINARY
    render kubelet.yaml.tmpl "$CLUSTER_DIR/kubelet.yaml" CLUSTER_RUN PKI CLUSTER_VAR
    case "$CLUSTER_SHIM" in
        runc) ;;
        gvisor) gvisor_shim_configs ;;
        *) die "PODSNAP_CLUSTER_SHIM=$CLUSTER_SHIM: gvisor (default) or runc" ;;
    esac
    if [ "$HOST_PROCESSES" != 1 ]; then
        # The node's runsc (the one the shim runs behind podsnap-runsc, and podsnapd's), at
        # the path the install's manifests mount; podsnap-runsc and its config come from the
        # DaemonSet's init container. containerd passes PODSNAP_CONFIG to the shim, and the
        # shim to podsnap-runsc (a real node would use /etc/podsnap/podsnap.toml).
        mkdir -p "$NODE_BIN" "$NODE_ETC"
        cp "$PODSNAPD_RUNSC" "$NODE_BIN/runsc"
        CONTAINERD_ENV=(PODSNAP_CONFIG="$NODE_ETC/podsnap.toml")
    fi
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
    render podsnap-runsc-gvisor.toml.tmpl "$CLUSTER_DIR/podsnap-runsc-gvisor.toml" PODSNAPD_RUNSC PODSNAPD_SOCK CLUSTER_RUN
    CONTAINERD_ENV=(PODSNAP_CONFIG="$CLUSTER_DIR/podsnap-runsc-gvisor.toml")
    # Installed from the image: binary_name is the podsnap-runsc the DaemonSet installs.
    [ "$HOST_PROCESSES" = 1 ] || SHIM_BINARY="$NODE_BIN/podsnap-runsc"
    # Under the node's /run/podsnap-cluster: podsnapd reads it (the runsc root) at the path the
    # container's runtime options name, so the DaemonSet pod must see it there.
    render gvisor-runsc.toml.tmpl "$CLUSTER_RUN/gvisor-runsc.toml" SHIM_BINARY CLUSTER_RUN RUNSC_NETWORK LOGS
    ln -sf "$CLUSTER_RUN/gvisor-runsc.toml" "$CLUSTER_DIR/gvisor-runsc.toml"
    # The `runsc` runtime is containerd.toml's last section: replace it.
    sed -i '/containerd\.runtimes\.runsc\]$/,$d' "$CLUSTER_DIR/containerd.toml"
    render containerd-runsc-gvisor.toml.tmpl - GVISOR_SHIM CLUSTER_RUN >>"$CLUSTER_DIR/containerd.toml"
    log "runsc handler: gVisor's shim $GVISOR_SHIM, binary_name $SHIM_BINARY, $("$PODSNAPD_RUNSC" --version | sed -n 1p)"
}

start_containerd() {
    log "containerd"
    node_configs
    # The shim runs from PATH: put this build's shim first.
    start containerd env PATH="$CLUSTER_BIN:$PATH" "${CONTAINERD_ENV[@]}" "$CLUSTER_BIN/containerd" \
        --config "$CLUSTER_DIR/containerd.toml"
    ln -sf "$CLUSTER_RUN/containerd.sock" "$CLUSTER_DIR/containerd.sock"
    # Every node's socket at target/cluster/<node name>/containerd.sock (second_node's too).
    mkdir -p "$CLUSTER_DIR/$NODE_NAME"
    ln -sf "$CLUSTER_RUN/containerd.sock" "$CLUSTER_DIR/$NODE_NAME/containerd.sock"
    local ctr=("$CLUSTER_BIN/ctr" --address "$CLUSTER_RUN/containerd.sock" -n k8s.io) image
    wait_for containerd 30 "${ctr[@]}" version
    for image in pause busybox python; do
        "${ctr[@]}" images import "$IMAGES/$image.tar" >/dev/null
    done
    if [ "$HOST_PROCESSES" != 1 ]; then
        # podsnap's image, as docs/kubernetes.md tells users to import it on every node.
        "${ctr[@]}" images import "$REPO_ROOT/target/oci/podsnap.tar" >/dev/null
        "${ctr[@]}" images tag --force "podsnap:$VERSION" "docker.io/library/podsnap:$VERSION" >/dev/null
    fi
    "${ctr[@]}" images ls -q | sed 's/^/[cluster] image /' >&2
}

start_kubelet() {
    log "kubelet"
    start kubelet "$CLUSTER_BIN/kubelet" \
        --config "$CLUSTER_DIR/kubelet.yaml" --kubeconfig "$CLUSTER_DIR/kubelet.kubeconfig" \
        --root-dir "$KUBELET_ROOT" --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" \
        --node-labels sandbox.gke.io/runtime=gvisor \
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
    start podsnapd "$PODSNAPD" --listen "unix://$PODSNAPD_SOCK" \
        --listen-tls "$NODE_IP:$PODSNAPD_PORT" --tls-cert "$PKI/podsnapd.crt" --tls-key "$PKI/podsnapd.key" \
        --tls-client-ca "$PKI/ca.crt" --store "file://$SNAPSHOTS" \
        --runsc "$PODSNAPD_RUNSC" --runsc-root "$CLUSTER_RUN/runsc/k8s.io" --runsc-flag="--network=$RUNSC_NETWORK" \
        --containerd-socket "$CLUSTER_RUN/containerd.sock" --state-dir "$CLUSTER_VAR/podsnapd" \
        --node-name "$NODE_NAME"
    wait_for podsnapd 30 test -S "$PODSNAPD_SOCK"
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

# The API server for pods: no kube-proxy here, so the `kubernetes` Service's ClusterIP
# (10.96.0.1:443, what in-cluster clients such as podsnap-controller dial) is DNATed to the
# API server by one rule of our own (tagged, removed by down.sh).
kubernetes_service() {
    local rule=(-d 10.96.0.1/32 -p tcp --dport 443 -m comment --comment podsnap-cluster
        -j DNAT --to-destination "$NODE_IP:$API_PORT")
    iptables -t nat -I PREROUTING "${rule[@]}"
    iptables -t nat -I OUTPUT "${rule[@]}"
}

# podsnap as users install it (docs/kubernetes.md): the image imported (start_containerd),
# the Secrets an operator makes, `kubectl apply -k` of the install overlay, and the rollouts.
install_podsnap() {
    local k=("$KUBECTL" -n podsnap-system) overlay="$CLUSTER_SCRIPTS/install/$CLUSTER_SHIM-shim"
    log "podsnap $VERSION from target/oci/podsnap.tar: kubectl apply -k ${overlay#"$REPO_ROOT/"}"
    mkdir -p "$SNAPSHOTS" "$CLUSTER_VAR/podsnapd"
    "$KUBECTL" apply -f "$REPO_ROOT/daemonset/namespace.yaml" >&2
    "${k[@]}" create secret generic podsnapd-tls --from-file=tls.crt="$PKI/podsnapd.crt" \
        --from-file=tls.key="$PKI/podsnapd.key" --from-file=ca.crt="$PKI/ca.crt" >&2
    "${k[@]}" create secret generic podsnap-controller-tls --from-file=ca.crt="$PKI/ca.crt" \
        --from-file=tls.crt="$PKI/podsnap-controller.crt" --from-file=tls.key="$PKI/podsnap-controller.key" \
        --from-file=webhook.crt="$PKI/webhook.crt" --from-file=webhook.key="$PKI/webhook.key" >&2
    # Server-side: the CRDs are too large for client-side apply's annotation.
    "$KUBECTL" apply --server-side --force-conflicts -k "$overlay" >&2
    "$KUBECTL" wait --for condition=Established --timeout=60s \
        crd/podsnapshots.podsnapshot.gke.io crd/podsnapshotpolicies.podsnapshot.gke.io \
        crd/podsnapshotmanualtriggers.podsnapshot.gke.io crd/podsnapshotstorageconfigs.podsnapshot.gke.io >&2
    render storageconfig-local.yaml.tmpl - SNAPSHOTS | "$KUBECTL" apply -f - >&2
    "${k[@]}" rollout status ds/podsnapd --timeout=180s >&2 ||
        die "DaemonSet podsnapd not ready (kubectl -n podsnap-system describe pods; scripts/cluster/diagnose.sh)"
    "${k[@]}" rollout status deployment/podsnap-controller --timeout=180s >&2 ||
        die "Deployment podsnap-controller not ready (kubectl -n podsnap-system logs deploy/podsnap-controller)"
    wait_for "podsnap-controller webhook" 60 "$KUBECTL" get mutatingwebhookconfiguration podsnap-controller
    wait_for "podsnap-controller lease" 60 "${k[@]}" get lease podsnap-controller
    wait_for "podsnapd socket" 30 test -S "$PODSNAPD_SOCK"
    "${k[@]}" get ds,deploy,pods -o wide >&2
}

podsnap() {
    echo "PODSNAPD_SOCK=$PODSNAPD_SOCK" >>"$CLUSTER_DIR/env"
    echo "SNAPSHOTS=$SNAPSHOTS" >>"$CLUSTER_DIR/env"
    echo "HOST_PROCESSES=$HOST_PROCESSES" >>"$CLUSTER_DIR/env"
    kubernetes_service
    if [ "$HOST_PROCESSES" != 1 ]; then
        install_podsnap
        return
    fi
    PODSNAPD="$(podsnap_bin podsnapd)"
    CONTROLLER="$(podsnap_bin podsnap-controller)"
    start_podsnapd
    podsnap_objects
    start_podsnap_controller
}

all_alive() {
    local p
    local p parts=(etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet agent-sandbox-controller)
    [ "$HOST_PROCESSES" = 1 ] && parts+=(podsnapd podsnap-controller)
    [ "$NODES" = 2 ] && parts+=("containerd-$NODE2_NAME" "kubelet-$NODE2_NAME")
    for p in "${parts[@]}"; do
        alive "$p" || die "$p exited (log: $LOGS/$p.log)"
    done
    "$KUBECTL" get nodes -o wide >&2
    log "up: KUBECONFIG=$CLUSTER_DIR/kubeconfig; containerd at $CLUSTER_DIR/containerd.sock"
}

# --- the second node (PODSNAP_CLUSTER_NODES=2) --------------------------------------------------
# Isolated the way kind isolates its nodes, without a node container: its own network
# namespace (ip netns podsnap-node-2, a veth to the host, NODE2_IP, pod range 10.244.1.0/24
# routed through it) and its own mount namespace (held by a bind mount under
# /run/podsnap-cluster-ns), in which the node's own directories are mounted over the paths
# every node uses: /run/podsnap-cluster (containerd's socket and state, the runsc root,
# podsnapd's socket), /var/lib/podsnap-cluster (containerd's root, CNI, podsnapd's state and
# page cache, the installed podsnap-runsc and runsc; the shared store snapshots/ mounted back
# in) and /var/lib/kubelet. Its containerd and kubelet run in both namespaces; its kubelet's
# cgroups live under /<node name> (cgroupRoot), apart from the first node's. The DaemonSet's
# host paths are thus the same on both nodes and name each node's own things.
NODE2_NETNS=podsnap-node-2
NODE2_VETH=psn-node2
NODE2_GW=10.245.2.1
NODE2_POD_SUBNET=10.244.1.0/24
NS_DIR=/run/podsnap-cluster-ns

node2_in() { nsenter --mount="$NS_DIR/$NODE2_NAME" --net="/run/netns/$NODE2_NETNS" -- "$@"; }

node2_network() {
    ip netns add "$NODE2_NETNS"
    ip link add "$NODE2_VETH" type veth peer name eth0 netns "$NODE2_NETNS"
    ip addr add "$NODE2_GW/24" dev "$NODE2_VETH"
    ip link set "$NODE2_VETH" up
    ip -n "$NODE2_NETNS" link set lo up
    ip -n "$NODE2_NETNS" addr add "$NODE2_IP/24" dev eth0
    ip -n "$NODE2_NETNS" link set eth0 up
    ip -n "$NODE2_NETNS" route add default via "$NODE2_GW"
    ip netns exec "$NODE2_NETNS" sysctl -qw net.ipv4.ip_forward=1
    # The second node's pods, from the host and the first node's pods.
    ip route add "$NODE2_POD_SUBNET" via "$NODE2_IP"
    # The `kubernetes` Service (kubernetes_service) for its pods and host-network pods.
    local rule=(-d 10.96.0.1/32 -p tcp --dport 443 -j DNAT --to-destination "$NODE_IP:$API_PORT")
    ip netns exec "$NODE2_NETNS" iptables -t nat -I PREROUTING "${rule[@]}"
    ip netns exec "$NODE2_NETNS" iptables -t nat -I OUTPUT "${rule[@]}"
}

node2_mounts() {
    local nrun="$CLUSTER_RUN/nodes/$NODE2_NAME" nvar="$CLUSTER_VAR/nodes/$NODE2_NAME"
    mkdir -p "$nrun" "$nvar/snapshots" "$nvar/kubelet" "$nvar/bin" "$nvar/etc" "$nvar/podsnapd" \
        "$SNAPSHOTS" "$KUBELET_ROOT" "$NS_DIR"
    # The file holding the mount namespace must sit on a private mount.
    if ! mountpoint -q "$NS_DIR"; then
        mount --bind "$NS_DIR" "$NS_DIR"
        mount --make-private "$NS_DIR"
    fi
    touch "$NS_DIR/$NODE2_NAME"
    unshare --mount="$NS_DIR/$NODE2_NAME" --propagation private true
    # Inside: first drop the copies of the first node's mounts under the node paths (its
    # containers' rootfs, netns, volumes, and /run/podsnap-cluster's shared bind), then mount
    # this node's directories there; /run/podsnap-cluster a shared mount of its own (the
    # DaemonSet's HostToContainer mount needs one; containerd checks the mount it finds first).
    nsenter --mount="$NS_DIR/$NODE2_NAME" -- sh -ec "
        for d in '$CLUSTER_RUN' '$CLUSTER_VAR' '$KUBELET_ROOT'; do
            awk -v d=\"\$d\" '\$5 == d || index(\$5, d \"/\") == 1 {print \$5}' /proc/self/mountinfo | sort -r |
                while read -r m; do umount -l \"\$m\" 2>/dev/null || true; done
        done
        mount --bind '$SNAPSHOTS' '$nvar/snapshots'
        mount --bind '$nvar/kubelet' '$KUBELET_ROOT'
        mount --make-rshared '$KUBELET_ROOT'
        mount --rbind '$nvar' '$CLUSTER_VAR'
        mount --bind '$CLUSTER_VAR/podsnapd' '$CLUSTER_VAR/podsnapd'
        mount --make-rshared '$CLUSTER_VAR/podsnapd'
        mount --bind '$nrun' '$CLUSTER_RUN'
        mount --make-rshared '$CLUSTER_RUN'
        mkdir -p '$CLUSTER_RUN/containerd' '$CLUSTER_RUN/runsc' '$CLUSTER_RUN/runc' '$CLUSTER_RUN/podsnap/restored' \
            '$CNI_CONF' '$CLUSTER_VAR/cni/ipam'
    "
    # gVisor's shim's options (the same file as the first node's).
    [ -f "$CLUSTER_RUN/gvisor-runsc.toml" ] && cp "$CLUSTER_RUN/gvisor-runsc.toml" "$nrun/gvisor-runsc.toml"
    # The node's runsc where the install's manifests mount it.
    [ "$HOST_PROCESSES" = 1 ] || cp "$PODSNAPD_RUNSC" "$nvar/bin/runsc"
    # Its pod range (inside, the conflist sits where the first node's does).
    POD_SUBNET="$NODE2_POD_SUBNET" render cni-podsnap.conflist.tmpl "$nvar/cni/net.d/10-podsnap.conflist" POD_SUBNET CLUSTER_VAR
    # Its kubelet's cgroups: /<node name> in every hierarchy (cgroup v1, cgroupfs driver).
    local ctl
    for ctl in /sys/fs/cgroup/*/; do
        [ -f "${ctl}cgroup.procs" ] || continue
        mkdir -p "$ctl$NODE2_NAME"
        if [ -f "${ctl}cpuset.cpus" ]; then
            cat "${ctl}cpuset.cpus" >"$ctl$NODE2_NAME/cpuset.cpus"
            cat "${ctl}cpuset.mems" >"$ctl$NODE2_NAME/cpuset.mems"
        fi
    done
}

# The second node's kubelet, in its namespaces; it registers the Node (again, after a test
# deleted it: scripts/cluster/node.sh) and waits for it to be Ready.
node2_kubelet() {
    local dir="$CLUSTER_DIR/$NODE2_NAME"
    start "kubelet-$NODE2_NAME" nsenter --mount="$NS_DIR/$NODE2_NAME" --net="/run/netns/$NODE2_NETNS" -- \
        "$CLUSTER_BIN/kubelet" \
        --config "$dir/kubelet.yaml" --kubeconfig "$dir/kubelet.kubeconfig" \
        --root-dir "$KUBELET_ROOT" --hostname-override "$NODE2_NAME" --node-ip "$NODE2_IP" \
        --node-labels sandbox.gke.io/runtime=gvisor --v=1
    wait_for "node $NODE2_NAME" 120 "$KUBECTL" get node "$NODE2_NAME"
    "$KUBECTL" wait --for=condition=Ready "node/$NODE2_NAME" --timeout=120s >&2 ||
        die "node $NODE2_NAME not Ready (logs: $LOGS/kubelet-$NODE2_NAME.log)"
}

second_node() {
    log "second node $NODE2_NAME ($NODE2_IP, pods $NODE2_POD_SUBNET)"
    local dir="$CLUSTER_DIR/$NODE2_NAME"
    mkdir -p "$dir"
    node2_network
    node2_mounts
    # Its kubelet: the first node's config with its own certificate and cgroup root; the API
    # server at the first node's address (127.0.0.1 is its own loopback).
    sed "s#$PKI/kubelet-serving\.#$PKI/kubelet-serving-$NODE2_NAME.#" "$CLUSTER_DIR/kubelet.yaml" >"$dir/kubelet.yaml"
    echo "cgroupRoot: /$NODE2_NAME" >>"$dir/kubelet.yaml"
    kubeconfig "$dir/kubelet.kubeconfig" "kubelet-$NODE2_NAME" "https://$NODE_IP:$API_PORT"
    # containerd: the first node's config names the same paths, which are this node's inside.
    start "containerd-$NODE2_NAME" env PATH="$CLUSTER_BIN:$PATH" "${CONTAINERD_ENV[@]}" \
        nsenter --mount="$NS_DIR/$NODE2_NAME" --net="/run/netns/$NODE2_NETNS" -- \
        "$CLUSTER_BIN/containerd" --config "$CLUSTER_DIR/containerd.toml"
    local sock="$CLUSTER_RUN/nodes/$NODE2_NAME/containerd.sock"
    ln -sf "$sock" "$dir/containerd.sock"
    local ctr=("$CLUSTER_BIN/ctr" --address "$sock" -n k8s.io) image
    wait_for "containerd on $NODE2_NAME" 30 "${ctr[@]}" version
    for image in pause busybox python; do
        "${ctr[@]}" images import "$IMAGES/$image.tar" >/dev/null
    done
    if [ "$HOST_PROCESSES" != 1 ]; then
        "${ctr[@]}" images import "$REPO_ROOT/target/oci/podsnap.tar" >/dev/null
        "${ctr[@]}" images tag --force "podsnap:$VERSION" "docker.io/library/podsnap:$VERSION" >/dev/null
    fi
    node2_kubelet
    echo "NODE2_NAME=$NODE2_NAME" >>"$CLUSTER_DIR/env"
    echo "NODE2_IP=$NODE2_IP" >>"$CLUSTER_DIR/env"
}

main() {
    [ "$(id -u)" = 0 ] || die "the cluster needs root (kubelet, containerd, CNI)"
    cluster_lock "make cluster-up"
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
    [ "$NODES" = 2 ] && second_node
    cluster_objects
    podsnap
    all_alive
}

# Sourced (a check of the rendered configs, say): the steps are defined, nothing runs.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main "$@"
fi
