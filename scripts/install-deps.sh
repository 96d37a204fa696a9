#!/usr/bin/env bash
# Checks, and as root installs, what podsnap's demo and tests need on Debian 12. Idempotent:
# when everything is present it only checks (about a second) and changes nothing.
#
#   scripts/install-deps.sh [demo|test]     (default: test, the superset)
#
# As root, what is missing is installed:
#   - apt (bookworm): containerd busybox-static zstd restic openssl curl python3 python3-pip
#   - runsc 20240729 from Debian trixie as the system runsc (/usr/bin/runsc), with trixie pinned
#     at priority 100 so nothing else comes from it;
#   - runsc 20221219 (bookworm's) at /opt/podsnap/runsc-20221219/runsc, for the tests of the
#     older release;
#   - current gVisor (test only): runsc and containerd-shim-runsc-v1 built from the Go module
#     proxy at the version pinned in scripts/cluster/versions.env (scripts/gvisor/build.sh,
#     about 5 minutes on 2 cores, cached under /var/cache/podsnap/gvisor), installed in
#     /opt/podsnap/gvisor; needs Go. The demo stays on Debian's runsc, so a newcomer's first
#     `make demo` does not wait for a Go build;
#   - pip: moto[server] kubernetes-validate pytest pyyaml grpcio, and for the cluster tests
#     kubernetes==34.1.0 and k8s-agent-sandbox==0.4.6 (test only); and in a directory of its
#     own, /opt/podsnap/sdk1 (pip --target, used through PYTHONPATH by tests/cluster/sdk1),
#     today's SDK k8s-agent-sandbox==1.0.8 with the kubernetes==37.0.2 it needs;
#   - npm: azurite (the Azure Storage emulator; test only), pinned to a release that runs on
#     bookworm's Node, with its whole dependency tree pinned by scripts/azurite/package-lock.json
#     (npm ci into /opt/podsnap/azurite, azurite-blob linked into /usr/local/bin): an unpinned
#     install resolves transitive ranges afresh and breaks when a new release needs a package
#     the registry does not serve yet.
# Not as root, it prints the exact commands that would install what is missing and exits 1.
# No protoc is needed: the build uses a vendored one.
#
# PODSNAP_SKIP_DEPS=1 skips the whole step (for machines set up some other way).
set -euo pipefail

profile=${1:-test}
case "$profile" in demo|test) ;; *) echo "usage: $0 [demo|test]" >&2; exit 2 ;; esac
[ "${PODSNAP_SKIP_DEPS:-0}" = 1 ] && exit 0

OLD_RUNSC_VERSION=0.0~20221219.0-2+b3
OLD_RUNSC=/opt/podsnap/runsc-20221219/runsc
MIN_RUNSC=0.0~20240729.0
AZURITE_VERSION=3.35.0   # 3.36 and later need Node >= 21; bookworm has Node 18, this machine 20
AZURITE_DIR=/opt/podsnap/azurite
AZURITE_LOCK="$(cd "$(dirname "$0")" && pwd)/azurite"
GVISOR_DIR=/opt/podsnap/gvisor
GVISOR_BUILD="$(cd "$(dirname "$0")" && pwd)/gvisor/build.sh"
GVISOR_RELEASE=$(sed -n 's/^GVISOR_RELEASE=//p' "$(cd "$(dirname "$0")" && pwd)/cluster/versions.env")
SDK1_DIR=/opt/podsnap/sdk1
SDK1_PKGS="k8s-agent-sandbox==1.0.8 kubernetes==37.0.2"
TRIXIE_SOURCES=/etc/apt/sources.list.d/trixie.sources
TRIXIE_PIN=/etc/apt/preferences.d/podsnap-trixie

apt_pkgs="busybox-static python3"
pip_mods=""
pip_pkgs=""
if [ "$profile" = test ]; then
  apt_pkgs="$apt_pkgs containerd zstd restic openssl curl python3-pip npm"
  # module to import -> pip requirement
  pip_mods="moto flask flask_cors kubernetes_validate pytest yaml grpc kubernetes k8s_agent_sandbox"
  # The agent-sandbox SDK at the tutorial's version, with a kubernetes client that keeps
  # python-dateutil 2.x (kubernetes 37 wants dateutil 3, which botocore, and so moto, refuse).
  pip_pkgs="'moto[server]' kubernetes-validate pytest pyyaml 'grpcio>=1.57' 'kubernetes==34.1.0' 'k8s-agent-sandbox==0.4.6'"
fi

# ---- checks (fast; nothing is compiled or downloaded) ----
missing_apt=""
for p in $apt_pkgs; do
  case "$p" in
    python3|npm)
      # Any install will do (pyenv, nodesource, ...), not necessarily Debian's package.
      command -v "$p" >/dev/null 2>&1 || missing_apt="$missing_apt $p" ;;
    python3-pip)
      python3 -c 'import importlib.util as u, sys; sys.exit(u.find_spec("pip") is None)' 2>/dev/null \
        || missing_apt="$missing_apt $p" ;;
    *) dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing_apt="$missing_apt $p" ;;
  esac
done

need_trixie_source=0
[ -f "$TRIXIE_SOURCES" ] && [ -f "$TRIXIE_PIN" ] || need_trixie_source=1
need_runsc=0
v=$(dpkg-query -W -f '${Version}' runsc 2>/dev/null || true)
if [ -z "$v" ] || ! dpkg --compare-versions "$v" ge "$MIN_RUNSC" || [ ! -x /usr/bin/runsc ]; then
  need_runsc=1
fi
need_old_runsc=0
[ -x "$OLD_RUNSC" ] || need_old_runsc=1

missing_pip=""
if [ -n "$pip_mods" ]; then
  # find_spec, not import: importing moto.server alone takes a second.
  missing_pip=$(python3 - $pip_mods <<'PY' 2>/dev/null || echo python3
import importlib.metadata as md, importlib.util as u, sys
missing = [m for m in sys.argv[1:] if u.find_spec(m.split(".")[0]) is None]
try:
    if tuple(int(x) for x in md.version("grpcio").split(".")[:2]) < (1, 57):
        missing.append("grpc>=1.57")
except md.PackageNotFoundError:
    pass
print(" ".join(missing))
PY
)
fi

need_sdk1=0
if [ "$profile" = test ]; then
  for p in $SDK1_PKGS; do
    d="$(echo "${p%%==*}" | tr - _)-${p#*==}.dist-info"
    [ -d "$SDK1_DIR/$d" ] || need_sdk1=1
  done
fi

need_azurite=0
if [ "$profile" = test ]; then
  # The version from the package's own package.json (running azurite-blob --version takes 2 s).
  # The install must come from this lockfile (a copy of it sits beside the installed tree).
  main=$(readlink -f "$(command -v azurite-blob 2>/dev/null || echo /nonexistent)")
  pkg=${main%/dist/*}/package.json
  grep -q "\"version\": *\"$AZURITE_VERSION\"" "$pkg" 2>/dev/null || need_azurite=1
  cmp -s "$AZURITE_LOCK/package-lock.json" "$AZURITE_DIR/package-lock.json" || need_azurite=1
fi

need_gvisor=0
if [ "$profile" = test ]; then
  [ -x "$GVISOR_DIR/containerd-shim-runsc-v1" ] && [ -x "$GVISOR_DIR/containerd-shim-runsc-v1-testmachine" ] \
    && [ "$("$GVISOR_DIR/runsc" --version 2>/dev/null | sed -n 1p)" = "runsc version $GVISOR_RELEASE" ] \
    || need_gvisor=1
fi

missing_tools=""
command -v cargo >/dev/null 2>&1 || missing_tools="$missing_tools cargo(rustup.rs)"
if [ "$profile" = test ]; then
  cargo fmt --version >/dev/null 2>&1 || missing_tools="$missing_tools rustfmt(rustup component add rustfmt)"
  cargo clippy --version >/dev/null 2>&1 || missing_tools="$missing_tools clippy(rustup component add clippy)"
fi

if [ -z "$missing_apt" ] && [ $need_trixie_source = 0 ] && [ $need_runsc = 0 ] && [ $need_old_runsc = 0 ] \
  && [ -z "$missing_pip" ] && [ $need_sdk1 = 0 ] && [ $need_azurite = 0 ] && [ $need_gvisor = 0 ] \
  && [ -z "$missing_tools" ]; then
  exit 0
fi

# ---- what would be done ----
cmds=()
if [ $need_trixie_source = 1 ]; then
  cmds+=("printf 'Types: deb\\nURIs: http://deb.debian.org/debian\\nSuites: trixie\\nComponents: main\\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\\n' >$TRIXIE_SOURCES")
  cmds+=("printf 'Package: *\\nPin: release n=trixie\\nPin-Priority: 100\\n' >$TRIXIE_PIN")
fi
if [ -n "$missing_apt" ] || [ $need_trixie_source = 1 ] || [ $need_runsc = 1 ] || [ $need_old_runsc = 1 ]; then
  cmds+=("apt-get update")
fi
[ -n "$missing_apt" ] && cmds+=("apt-get install -y --no-install-recommends$missing_apt")
[ $need_runsc = 1 ] && cmds+=("apt-get install -y -t trixie runsc")
if [ $need_old_runsc = 1 ]; then
  cmds+=("(d=\$(mktemp -d) && cd \$d && chmod 777 \$d && apt-get download runsc=$OLD_RUNSC_VERSION && dpkg -x runsc_*.deb x && install -D -m 0755 x/usr/bin/runsc $OLD_RUNSC && rm -rf \$d)")
fi
[ -n "$missing_pip" ] && cmds+=("python3 -m pip install -q $pip_pkgs")
[ $need_sdk1 = 1 ] && cmds+=("rm -rf $SDK1_DIR && python3 -m pip install -q --no-warn-conflicts --target $SDK1_DIR $SDK1_PKGS")
if [ $need_azurite = 1 ]; then
  cmds+=("mkdir -p $AZURITE_DIR && cp $AZURITE_LOCK/package.json $AZURITE_LOCK/package-lock.json $AZURITE_DIR/ && (cd $AZURITE_DIR && npm ci --no-fund --no-audit --omit=dev) && ln -sf $AZURITE_DIR/node_modules/.bin/azurite-blob /usr/local/bin/azurite-blob")
fi

if [ $need_gvisor = 1 ]; then
  command -v go >/dev/null 2>&1 || missing_tools="$missing_tools go(gVisor's runsc and shim are built from Go modules)"
  cmds+=("bin=\$(bash $GVISOR_BUILD) && install -D -m 0755 \$bin/runsc $GVISOR_DIR/runsc && install -D -m 0755 \$bin/containerd-shim-runsc-v1 $GVISOR_DIR/containerd-shim-runsc-v1 && install -D -m 0755 \$bin/containerd-shim-runsc-v1-testmachine $GVISOR_DIR/containerd-shim-runsc-v1-testmachine")
fi

if [ -n "$missing_tools" ]; then
  echo "install-deps: missing, install them yourself:$missing_tools" >&2
  [ ${#cmds[@]} = 0 ] && exit 1
fi

if [ "$(id -u)" != 0 ]; then
  {
    echo "install-deps: podsnap's $profile needs packages that are not installed."
    echo "Run as root (or run 'make $profile' as root, which does this):"
    echo
    for c in "${cmds[@]}"; do echo "  $c"; done
    echo
    echo "(or set PODSNAP_SKIP_DEPS=1 to go on without them)"
  } >&2
  exit 1
fi

echo "install-deps: installing what is missing for '$profile'" >&2
export DEBIAN_FRONTEND=noninteractive
for c in "${cmds[@]}"; do
  echo "+ $c" >&2
  bash -euo pipefail -c "$c" >/dev/null
done
[ -n "$missing_tools" ] && exit 1
/usr/bin/runsc --version | sed -n 1p >&2
[ "$profile" = test ] && "$GVISOR_DIR/runsc" --version | sed -n 1p >&2
echo "install-deps: done" >&2
