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
. "$(dirname "$0")/common.sh"

[ "$(id -u)" = 0 ] || die "the cluster needs root (kubelet, containerd, CNI)"

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

# --- build (cached) -------------------------------------------------------------------------
bash "$CLUSTER_SCRIPTS/build.sh"

if [ -f "$CLUSTER_RUN/pids/kube-apiserver.pid" ] && kill -0 "$(cat "$CLUSTER_RUN/pids/kube-apiserver.pid")" 2>/dev/null; then
    die "a cluster is already up ($CLUSTER_RUN); run make cluster-down first"
fi
# Leftovers of a cluster that was not taken down (state that no longer matches fresh
# certificates): clean them first.
if [ -e "$CLUSTER_VAR" ] || [ -e "$CLUSTER_RUN" ]; then
    log "cleaning up the state of an earlier cluster"
    bash "$CLUSTER_SCRIPTS/down.sh"
fi
need_debs
trap 'log "cluster-up failed: logs in $CLUSTER_DIR/logs; make cluster-down stops what started"' ERR

NODE_NAME="${PODSNAP_CLUSTER_NODE:-podsnap-node}"
# The node's address: the source address of the default route (what the API server dials for
# logs and exec), loopback only if there is no route at all.
NODE_IP="$(ip -4 route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p' | head -1)"
NODE_IP="${NODE_IP:-127.0.0.1}"
ETCD_PORT=12379
API_PORT=16443
POD_SUBNET=10.244.0.0/24
SERVICE_RANGE=10.96.0.0/16

PKI="$CLUSTER_DIR/pki"
rm -rf "$CLUSTER_DIR"
mkdir -p "$CLUSTER_DIR" "$PKI" "$LOGS" "$PIDS" "$CLUSTER_VAR" "$CLUSTER_RUN" "$CLUSTER_DIR/bin"
# Where things are, for down.sh and for anyone debugging.
cat >"$CLUSTER_DIR/env" <<EOF
CLUSTER_BIN=$CLUSTER_BIN
CLUSTER_RUN=$CLUSTER_RUN
CLUSTER_VAR=$CLUSTER_VAR
NODE_NAME=$NODE_NAME
NODE_IP=$NODE_IP
API_SERVER=https://127.0.0.1:$API_PORT
CONTAINERD_SOCK=$CLUSTER_RUN/containerd.sock
EOF

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
    local file="$1" name="$2" server="$3"
    cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: podsnap
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 <"$PKI/ca.crt")
users:
- name: $name
  user:
    client-certificate-data: $(base64 -w0 <"$PKI/$name.crt")
    client-key-data: $(base64 -w0 <"$PKI/$name.key")
contexts:
- name: podsnap
  context:
    cluster: podsnap
    user: $name
    namespace: default
current-context: podsnap
EOF
}

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
# podsnapd's --listen-tls serving certificate (the name podsnap-controller checks: podsnapd)
# and podsnap-controller's client certificate for it; the same CA on both sides.
cert podsnapd podsnapd "" "DNS:podsnapd,IP:$NODE_IP,IP:127.0.0.1"
cert podsnap-controller podsnap-controller ""
openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null

API="https://127.0.0.1:$API_PORT"
kubeconfig "$CLUSTER_DIR/kubeconfig" admin "$API"
kubeconfig "$CLUSTER_DIR/controller-manager.kubeconfig" controller-manager "$API"
kubeconfig "$CLUSTER_DIR/scheduler.kubeconfig" scheduler "$API"
kubeconfig "$CLUSTER_DIR/kubelet.kubeconfig" kubelet "$API"
kubeconfig "$CLUSTER_DIR/agent-sandbox-controller.kubeconfig" agent-sandbox-controller "$API"
kubeconfig "$CLUSTER_DIR/podsnap-controller.kubeconfig" podsnap-controller "$API"
export KUBECONFIG="$CLUSTER_DIR/kubeconfig"
KUBECTL="$CLUSTER_BIN/kubectl"
ln -sf "$KUBECTL" "$CLUSTER_DIR/bin/kubectl"
ln -sf "$CLUSTER_BIN/ctr" "$CLUSTER_DIR/bin/ctr"

# --- processes (start, wait_for, alive: common.sh) ------------------------------------------

log "etcd"
start etcd etcd --name podsnap --data-dir "$CLUSTER_VAR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls http://127.0.0.1:12380 \
    --initial-advertise-peer-urls http://127.0.0.1:12380 \
    --initial-cluster podsnap=http://127.0.0.1:12380 \
    --listen-metrics-urls "" --log-level warn
wait_for etcd 30 curl -fsS "http://127.0.0.1:$ETCD_PORT/health"

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
curl_api() { curl -fsS --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" "$API$1"; }
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

# --- the node: images, CNI, containerd, kubelet -----------------------------------------------
log "images"
IMAGES="$CLUSTER_DIR/images"
mkdir -p "$IMAGES"
K8S_SRC="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
gcc -Os -static -Wall -DVERSION="podsnap-cluster" -o "$IMAGES/pause" "$K8S_SRC/build/pause/linux/pause.c"
PAUSE_IMAGE=localhost/podsnap/pause:3.10
BUSYBOX_IMAGE=localhost/podsnap/busybox:1
python3 "$CLUSTER_SCRIPTS/oci-image.py" "$IMAGES/pause.tar" "$PAUSE_IMAGE" \
    --entrypoint '["/pause"]' "/pause=$IMAGES/pause"
busybox_links=()
for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || busybox_links+=("/bin/$applet@busybox")
done
python3 "$CLUSTER_SCRIPTS/oci-image.py" "$IMAGES/busybox.tar" "$BUSYBOX_IMAGE" \
    --cmd '["sh"]' "/bin/busybox=/bin/busybox" "${busybox_links[@]}"
# Python (the tutorial's counter is a Python program): Debian's interpreter, the libraries it
# loads and its standard library's .py files as one zip on its default sys.path (no compiled
# modules; enough for the standard library's pure-Python part, time and print).
PYTHON_IMAGE=localhost/podsnap/python:3
py="$(readlink -f /usr/bin/python3)"
pyver="$(basename "$py")"                    # python3.11
pyzip="$IMAGES/$(echo "$pyver" | tr -d .).zip" # python311.zip
/usr/bin/python3 - "/usr/lib/$pyver" "$pyzip" <<'PY'
import os, sys, zipfile
src, out = sys.argv[1], sys.argv[2]
skip = {"test", "idlelib", "tkinter", "ensurepip", "lib2to3", "site-packages", "dist-packages",
        "turtledemo", "__pycache__", "lib-dynload", "pydoc_data"}
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if d not in skip and not d.startswith("config-"))
        for f in sorted(files):
            if f.endswith(".py"):
                full = os.path.join(root, f)
                z.write(full, os.path.relpath(full, src))
PY
: >"$IMAGES/keep"
py_files=("/usr/bin/python3=$py" "/usr/lib/$(basename "$pyzip")=$pyzip" "/usr/lib/$pyver/lib-dynload/.keep=$IMAGES/keep")
for lib in $(ldd "$py" | grep -o '/[^ ]*'); do
    py_files+=("$lib=$(readlink -f "$lib")")
done
python3 "$CLUSTER_SCRIPTS/oci-image.py" "$IMAGES/python.tar" "$PYTHON_IMAGE" \
    --cmd '["python3"]' "${py_files[@]}"

log "containerd"
CNI_CONF="$CLUSTER_VAR/cni/net.d"
mkdir -p "$CNI_CONF" "$CLUSTER_VAR/cni/ipam" "$CLUSTER_RUN/containerd" "$CLUSTER_RUN/runsc" "$CLUSTER_RUN/runc" \
    "$CLUSTER_RUN/podsnap/restored"
cat >"$CNI_CONF/10-podsnap.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "podsnap-cluster",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "podsnap0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_SUBNET"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$CLUSTER_VAR/cni/ipam"
      }
    }
  ]
}
EOF

# The gvisor handler's binary: podsnap-runsc from this clone's build (the newer of release and
# debug) in front of the system runsc; the system runsc itself when podsnap is not built.
# runsc's network: runsc 20240729 decides that a sandbox sits in the root network
# namespace when /proc/sys/net/core/rmem_default exists, which kernels of 6.x show in every
# network namespace, so pod sandboxes with the default `sandbox` network fail to start
# ("cannot run with network enabled in root network namespace"). gVisor pods here therefore
# run with --network=none (loopback only); PODSNAP_CLUSTER_RUNSC_NETWORK=sandbox for a runsc
# that checks otherwise (later releases test net/core/dev_weight).
RUNSC_NETWORK="${PODSNAP_CLUSTER_RUNSC_NETWORK:-none}"
cat >"$CLUSTER_DIR/podsnap-runsc.toml" <<EOF
runsc = "/usr/bin/runsc"
runsc_flags = ["--network=$RUNSC_NETWORK"]
marker_dir = "$CLUSTER_RUN/podsnap/restored"
socket = "$CLUSTER_RUN/podsnapd.sock"
EOF
cat >"$CLUSTER_DIR/bin/runsc-handler" <<EOF
#!/bin/sh
# BinaryName of containerd's \`runsc\` runtime handler (written by scripts/cluster/up.sh).
release="$REPO_ROOT/target/release/podsnap-runsc"
debug="$REPO_ROOT/target/debug/podsnap-runsc"
wrapper=
if [ -x "\$release" ] && { [ ! -x "\$debug" ] || [ "\$release" -nt "\$debug" ]; }; then
    wrapper="\$release"
elif [ -x "\$debug" ]; then
    wrapper="\$debug"
fi
if [ -n "\$wrapper" ]; then
    PODSNAP_RUNSC=/usr/bin/runsc PODSNAP_CONFIG="$CLUSTER_DIR/podsnap-runsc.toml" exec "\$wrapper" "\$@"
fi
exec /usr/bin/runsc --network=$RUNSC_NETWORK "\$@"
EOF
chmod +x "$CLUSTER_DIR/bin/runsc-handler"

cat >"$CLUSTER_DIR/containerd.toml" <<EOF
version = 3
root = "$CLUSTER_VAR/containerd"
state = "$CLUSTER_RUN/containerd"

[grpc]
  address = "$CLUSTER_RUN/containerd.sock"

[ttrpc]
  address = "$CLUSTER_RUN/containerd.sock.ttrpc"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = '$PAUSE_IMAGE'

[plugins.'io.containerd.cri.v1.runtime']
  # root here lacks CAP_SYS_RESOURCE: the CRI's -998 for sandboxes cannot be applied.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ['/usr/lib/cni']
    conf_dir = '$CNI_CONF'
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = 'runc'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        Root = '$CLUSTER_RUN/runc'
        SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runsc]
      runtime_type = 'io.containerd.runc.v2'
      pod_annotations = ['podsnap.dev/*', 'podsnapshot.gke.io/*']
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runsc.options]
        BinaryName = '$CLUSTER_DIR/bin/runsc-handler'
        Root = '$CLUSTER_RUN/runsc'
        SystemdCgroup = false
EOF
# The shim runs from PATH: put this build's shim first.
start containerd env PATH="$CLUSTER_BIN:$PATH" "$CLUSTER_BIN/containerd" \
    --config "$CLUSTER_DIR/containerd.toml"
ln -sf "$CLUSTER_RUN/containerd.sock" "$CLUSTER_DIR/containerd.sock"
CTR=("$CLUSTER_BIN/ctr" --address "$CLUSTER_RUN/containerd.sock" -n k8s.io)
wait_for containerd 30 "${CTR[@]}" version
for image in pause busybox python; do
    "${CTR[@]}" images import "$IMAGES/$image.tar" >/dev/null
done
"${CTR[@]}" images ls -q | sed 's/^/[cluster] image /' >&2

log "kubelet"
cat >"$CLUSTER_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$CLUSTER_RUN/containerd.sock
# This machine: cgroup v1, PID 1 is not systemd.
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
address: 0.0.0.0
port: 10250
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: $PKI/ca.crt
authorization:
  mode: Webhook
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
podLogsDir: $CLUSTER_VAR/pod-logs
# Images come from ctr import only: never garbage-collect them. A test node never evicts:
# a machine whose disk is nearly full (or whose page cache the kubelet counts as used memory)
# would otherwise taint the node with a pressure condition, and every later pod would stay
# Pending with nothing in the tests' output to say why.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "0%"
  nodefs.available: "0%"
  imagefs.available: "0%"
  nodefs.inodesFree: "0%"
  imagefs.inodesFree: "0%"
  pid.available: "0%"
serializeImagePulls: false
protectKernelDefaults: false
rotateCertificates: false
serverTLSBootstrap: false
EOF
start kubelet "$CLUSTER_BIN/kubelet" \
    --config "$CLUSTER_DIR/kubelet.yaml" --kubeconfig "$CLUSTER_DIR/kubelet.kubeconfig" \
    --root-dir "$CLUSTER_VAR/kubelet" --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" \
    --v=1
wait_for "node $NODE_NAME" 120 "$KUBECTL" get node "$NODE_NAME"
"$KUBECTL" wait --for=condition=Ready "node/$NODE_NAME" --timeout=120s >&2 ||
    die "node $NODE_NAME not Ready (logs: $LOGS/kubelet.log)"

# --- cluster objects: RuntimeClass, agent-sandbox ---------------------------------------------
log "RuntimeClass gvisor"
"$KUBECTL" apply -f "$CLUSTER_SCRIPTS/manifests/runtimeclass-gvisor.yaml" >&2
bash "$CLUSTER_SCRIPTS/agent-sandbox.sh" "${PODSNAP_CLUSTER_AGENT_SANDBOX:-v0}"

# --- podsnap: podsnapd on the node, podsnap-controller, the `local` storage config -------------
# Binaries: the newer of this clone's release and debug builds (make cluster-up builds debug).
podsnap_bin() {
    local r="$REPO_ROOT/target/release/$1" d="$REPO_ROOT/target/debug/$1"
    if [ -x "$r" ] && { [ ! -x "$d" ] || [ "$r" -nt "$d" ]; }; then echo "$r"
    elif [ -x "$d" ]; then echo "$d"
    else die "$1 is not built (cargo build --bins)"; fi
}
PODSNAPD="$(podsnap_bin podsnapd)"
CONTROLLER="$(podsnap_bin podsnap-controller)"
SNAPSHOTS="$CLUSTER_VAR/snapshots"
PODSNAPD_PORT=9443
WEBHOOK_PORT=9444
mkdir -p "$SNAPSHOTS" "$CLUSTER_VAR/podsnapd"
log "podsnapd ($PODSNAPD) and podsnap-controller ($CONTROLLER)"
start podsnapd "$PODSNAPD" --listen "unix://$CLUSTER_RUN/podsnapd.sock" \
    --listen-tls "$NODE_IP:$PODSNAPD_PORT" --tls-cert "$PKI/podsnapd.crt" --tls-key "$PKI/podsnapd.key" \
    --tls-client-ca "$PKI/ca.crt" --store "file://$SNAPSHOTS" \
    --runsc /usr/bin/runsc --runsc-root "$CLUSTER_RUN/runsc/k8s.io" --runsc-flag="--network=$RUNSC_NETWORK" \
    --containerd-socket "$CLUSTER_RUN/containerd.sock" --state-dir "$CLUSTER_VAR/podsnapd" \
    --node-name "$NODE_NAME"
wait_for podsnapd 30 test -S "$CLUSTER_RUN/podsnapd.sock"
echo "PODSNAPD_SOCK=$CLUSTER_RUN/podsnapd.sock" >>"$CLUSTER_DIR/env"
echo "SNAPSHOTS=$SNAPSHOTS" >>"$CLUSTER_DIR/env"
"$KUBECTL" apply -f "$REPO_ROOT/daemonset/namespace.yaml" >&2
"$KUBECTL" apply --server-side -f "$REPO_ROOT/daemonset/controller/crds.yaml" >&2
"$KUBECTL" apply -f "$REPO_ROOT/daemonset/controller/rbac.yaml" >&2
"$KUBECTL" wait --for condition=Established --timeout=60s \
    crd/podsnapshots.podsnapshot.gke.io crd/podsnapshotpolicies.podsnapshot.gke.io \
    crd/podsnapshotmanualtriggers.podsnapshot.gke.io crd/podsnapshotstorageconfigs.podsnapshot.gke.io >&2
printf '%s\n' "apiVersion: podsnapshot.gke.io/v1" "kind: PodSnapshotStorageConfig" \
    "metadata: {name: local}" "spec: {snapshotStorageConfig: {local: {path: \"$SNAPSHOTS\"}}}" |
    "$KUBECTL" apply -f - >&2
start podsnap-controller "$CONTROLLER" run --kubeconfig "$CLUSTER_DIR/podsnap-controller.kubeconfig" \
    --webhook-listen "127.0.0.1:$WEBHOOK_PORT" --webhook-url "https://127.0.0.1:$WEBHOOK_PORT/mutate-pods" \
    --webhook-exclude-namespace podsnap-system \
    --podsnapd-port "$PODSNAPD_PORT" --podsnapd-ca "$PKI/ca.crt" \
    --podsnapd-cert "$PKI/podsnap-controller.crt" --podsnapd-key "$PKI/podsnap-controller.key" \
    --lease-namespace podsnap-system
wait_for "podsnap-controller webhook" 60 "$KUBECTL" get mutatingwebhookconfiguration podsnap-controller
wait_for "podsnap-controller lease" 60 "$KUBECTL" -n podsnap-system get lease podsnap-controller

for p in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet agent-sandbox-controller podsnapd podsnap-controller; do
    alive "$p" || die "$p exited (log: $LOGS/$p.log)"
done
"$KUBECTL" get nodes -o wide >&2
log "up: KUBECONFIG=$CLUSTER_DIR/kubeconfig; containerd at $CLUSTER_DIR/containerd.sock"
