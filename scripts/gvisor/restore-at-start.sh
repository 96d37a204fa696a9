#!/usr/bin/env bash
# Test fixture for scripts/gvisor/smoke.sh, not shipped: the smallest stand-in for what
# podsnap-runsc must do as the `binary_name` of gVisor's containerd shim (docs/gvisor-shim.md).
# A container whose OCI annotations carry podsnap.dev/restore-from=<image dir> is created as
# usual; its `start` becomes `runsc restore --detach --image-path=<dir>` with the same global
# flags and stdio (--background for the pod's sandbox container). Everything else is passed
# through unchanged. No podsnapd: the annotation names a local image directory.
#
# Environment: PODSNAP_FIXTURE_RUNSC (the real runsc), PODSNAP_FIXTURE_MARKERS (a directory).
set -euo pipefail
RUNSC="${PODSNAP_FIXTURE_RUNSC:?}"
MARKERS="${PODSNAP_FIXTURE_MARKERS:?}"

# The shim puts runsc's global flags (--root=..., --log=..., runsc_config pairs) first, all
# in --key=value form, then the command.
globals=()
while [ $# -gt 0 ] && [ "${1#--}" != "$1" ]; do
    globals+=("$1")
    shift
done
[ $# -gt 0 ] || exec "$RUNSC" "${globals[@]}"
cmd="$1"
id="${!#}"
root=""
for g in "${globals[@]}"; do
    case "$g" in --root=*) root="${g#--root=}" ;; esac
done
marker="$MARKERS/$(printf '%s' "$root/$id" | sha256sum | cut -c1-32)"

case "$cmd" in
create)
    bundle=""
    prev=""
    for a in "$@"; do
        [ "$prev" = --bundle ] && bundle="$a"
        prev="$a"
    done
    if [ -n "$bundle" ]; then
        python3 - "$bundle/config.json" "$marker" <<'PY'
import json, sys
ann = json.load(open(sys.argv[1])).get("annotations") or {}
image = ann.get("podsnap.dev/restore-from", "")
if image:
    kind = ann.get("io.kubernetes.cri.container-type", "")
    with open(sys.argv[2], "w") as f:
        f.write(image + "\n" + kind + "\n")
PY
    fi
    ;;
start)
    if [ -f "$marker" ]; then
        { read -r image; read -r kind; } <"$marker"
        rm -f "$marker"
        extra=()
        [ "$kind" = sandbox ] && extra=(--background)
        exec "$RUNSC" "${globals[@]}" restore --detach "${extra[@]}" --image-path="$image" "$id"
    fi
    ;;
esac
exec "$RUNSC" "${globals[@]}" "$@"
