#!/usr/bin/env bash
# Raw `runsc checkpoint` of the e2e benchmark's sandbox (benches/memfill.c, MIB MiB) written
# to local disk against the same write into a FUSE mount: the ceiling of a FUSE write path
# for issue #29 (runsc writing its image through podsnap). Not part of `make bench`.
#
#   bash benches/fuse_write.sh [ROUNDS]      (root; env: RUNSC, MIB=1024, DIR=/var/tmp/podsnap-fusew)
#
# Cases, alternating per round, each a fresh sandbox; prints one line per checkpoint:
#   local      --image-path on ext4 (DIR), then fsync of the files and the directory
#   sink       a FUSE mount of benches/fuse_sink.c: accepts 1 MiB writes and drops them
#   sink-sha   the same, hashing every 4 KiB page with SHA-256 (OpenSSL) before answering
#   bindfs     Debian's bindfs mirror of a directory on DIR (BINDFS=1; libfuse 2, 128 KiB writes)
# Needs gcc, libfuse3-dev, libssl-dev (and bindfs for BINDFS=1).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
R=${RUNSC:-$(command -v runsc)}; MIB=${MIB:-1024}; D=${DIR:-/var/tmp/podsnap-fusew}
rounds=${1:-5}
mkdir -p "$D/bundle/rootfs/bin" "$D/bundle/rootfs/proc" "$D/bundle/rootfs/dev" "$D/log" \
  "$D/back" "$D/m-sink" "$D/m-sha" "$D/m-bindfs"
gcc -O2 -static -o "$D/bundle/rootfs/bin/memfill" "$here/memfill.c"
gcc -O2 -o "$D/sink" "$here/fuse_sink.c" $(pkg-config --cflags --libs fuse3) -lcrypto -lpthread
cat > "$D/bundle/config.json" <<JSON
{"ociVersion":"1.0.0","process":{"terminal":false,"user":{"uid":0,"gid":0},"args":["/bin/memfill","$MIB","100"],"env":["PATH=/bin"],"cwd":"/"},"root":{"path":"rootfs","readonly":true},"hostname":"memfill","mounts":[{"destination":"/proc","type":"proc","source":"proc"},{"destination":"/dev","type":"tmpfs","source":"tmpfs"}],"linux":{"namespaces":[{"type":"pid"},{"type":"ipc"},{"type":"uts"},{"type":"mount"}]}}
JSON
"$D/sink" -o allow_other "$D/m-sink"
SINK_SHA=1 "$D/sink" -o allow_other "$D/m-sha"
cases="local sink sink-sha"
if [ "${BINDFS:-0}" = 1 ]; then bindfs "$D/back" "$D/m-bindfs"; cases="$cases bindfs"; fi
cleanup() {
  for m in m-sink m-sha m-bindfs; do mountpoint -q "$D/$m" && umount -l "$D/$m"; done
  grep -F " $D/" /proc/self/mountinfo | awk '{print $5}' | xargs -r -n1 umount -l 2>/dev/null || true
}
trap cleanup EXIT
ck() { # id, image dir, label
  "$R" --root "$D/root" --network=none run --detach --bundle "$D/bundle" "$1" > "$D/log/$1.log" 2>&1
  for _ in $(seq 240); do grep -q "Count: 3" "$D/log/$1.log" && break; sleep 0.5; done
  sync; sleep 1
  local t0 t1 t2
  t0=$(date +%s.%N)
  "$R" --root "$D/root" --network=none checkpoint --compression=none --image-path "$2" "$1"
  t1=$(date +%s.%N)
  python3 -c 'import os,sys
d=sys.argv[1]
for n in os.listdir(d):
    fd=os.open(os.path.join(d,n),os.O_RDONLY); os.fsync(fd); os.close(fd)
fd=os.open(d,os.O_RDONLY); os.fsync(fd); os.close(fd)' "$2"
  t2=$(date +%s.%N)
  echo "$3 checkpoint $(echo "$t1-$t0" | bc) fsync $(echo "$t2-$t1" | bc) total $(echo "$t2-$t0" | bc) load $(cut -d' ' -f1 /proc/loadavg)"
  "$R" --root "$D/root" delete -force "$1" >/dev/null 2>&1 || true
  rm -rf "$2"
}
for r in $(seq "$rounds"); do
  for c in $cases; do
    case $c in
      local) ck "fw-l$r" "$D/local-img" local ;;
      sink) ck "fw-s$r" "$D/m-sink/img" sink ;;
      sink-sha) ck "fw-h$r" "$D/m-sha/img" sink-sha ;;
      bindfs) ck "fw-b$r" "$D/m-bindfs/img" bindfs ;;
    esac
  done
done
