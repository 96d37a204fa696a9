#!/usr/bin/env python3
"""Builds the DaemonSet's OCI image from the release binaries, without a registry or an engine.

    scripts/build-image.py --bin-dir target/release --version 0.1.0 --out target/oci/podsnap.tar

The image is one layer: podsnapd, podsnapctl, podsnap-runsc and podsnap-controller in
/usr/local/bin, the shared libraries they load (found with ldd: glibc's, from the build host) at the same paths, the
static busybox as /bin/sh and the few tools the DaemonSet's commands and podsnapd's runsc jobs
run (sh, mv, install, ...), CA certificates for the cloud stores, and a root-only /etc/passwd.
The node's runsc is not in the image: the DaemonSet mounts the host's.

The output is an OCI image layout in a tar (oci-layout, index.json, blobs/sha256/...), the
index naming the image `podsnap:VERSION` (org.opencontainers.image.ref.name), which
`ctr images import` reads. The layer is built deterministically (fixed mtimes, owners and
order), so the same binaries give the same digests.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile

BINARIES = ["podsnapd", "podsnapctl", "podsnap-runsc", "podsnap-controller"]
# Applets linked to busybox in /bin: the DaemonSet's initContainer script (sh, install, mv) and
# podsnapd's durable runsc jobs (sh, mv), plus a few for someone debugging inside the pod.
BUSYBOX_APPLETS = ["sh", "mv", "install", "cat", "ls", "mkdir", "rm", "cp", "ln", "echo",
                   "sleep", "env", "ps", "kill", "df", "du", "find", "grep", "head", "tail",
                   "test", "[", "wc", "chmod", "chown", "id", "uname", "date", "stat"]
BUSYBOX = "/bin/busybox"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
MTIME = 0


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def shared_libraries(binary):
    """The absolute paths ldd resolves for `binary` (its interpreter included)."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True)
    if out.returncode != 0:
        text = (out.stdout + out.stderr).strip()
        if "not a dynamic executable" in text or "statically linked" in text:
            return []
        sys.exit(f"build-image: ldd {binary} failed: {text}")
    libs = []
    for line in out.stdout.splitlines():
        line = line.strip()
        if "not found" in line:
            sys.exit(f"build-image: {binary} needs a library that is not installed: {line}")
        m = re.search(r"(/\S+) \(0x[0-9a-f]+\)$", line)
        if m:
            libs.append(m.group(1))
    return libs


class Layer:
    def __init__(self):
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)
        self.dirs = set()

    def _info(self, path, kind, mode):
        info = tarfile.TarInfo(path.lstrip("/"))
        info.type = kind
        info.mode = mode
        info.mtime = MTIME
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    def dir(self, path, mode=0o755):
        path = path.rstrip("/")
        if not path or path in self.dirs:
            return
        self.dir(os.path.dirname(path))
        self.dirs.add(path)
        self.tar.addfile(self._info(path, tarfile.DIRTYPE, mode))

    def file(self, path, data, mode=0o644):
        self.dir(os.path.dirname(path))
        info = self._info(path, tarfile.REGTYPE, mode)
        info.size = len(data)
        self.tar.addfile(info, io.BytesIO(data))

    def symlink(self, path, target):
        self.dir(os.path.dirname(path))
        info = self._info(path, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        self.tar.addfile(info)

    def host_file(self, src, dst=None, mode=None):
        """Copies a host file (following symlinks) to `dst` (default: the same path)."""
        with open(src, "rb") as f:
            data = f.read()
        self.file(dst or src, data, mode if mode is not None else os.stat(src).st_mode & 0o7777)

    def close(self):
        self.tar.close()
        return self.buf.getvalue()


def build(bin_dir, version, out):
    layer = Layer()
    for d in ["/bin", "/etc", "/tmp", "/usr/local/bin", "/var/lib/podsnap", "/run/podsnap",
              "/etc/podsnapd", "/etc/podsnap", "/proc", "/sys", "/dev"]:
        layer.dir(d, 0o1777 if d == "/tmp" else 0o755)

    libs = []
    for name in BINARIES:
        path = os.path.join(bin_dir, name)
        if not os.access(path, os.X_OK):
            sys.exit(f"build-image: {path} not found (cargo build --release first)")
        layer.host_file(path, f"/usr/local/bin/{name}", 0o755)
        for lib in shared_libraries(path):
            if lib not in libs:
                libs.append(lib)
    for lib in sorted(libs):
        # Keep the path the binary's loader asks for; glibc's paths resolve through
        # /lib -> usr/lib on merged-/usr hosts, so the file goes to the path ldd printed.
        layer.host_file(lib, lib, 0o755)

    if not os.access(BUSYBOX, os.X_OK) or shared_libraries(BUSYBOX):
        sys.exit(f"build-image: {BUSYBOX} must be a static busybox (apt-get install busybox-static)")
    layer.host_file(BUSYBOX, "/bin/busybox", 0o755)
    for applet in BUSYBOX_APPLETS:
        layer.symlink(f"/bin/{applet}", "busybox")

    if not os.path.exists(CA_BUNDLE):
        sys.exit(f"build-image: {CA_BUNDLE} not found (apt-get install ca-certificates)")
    layer.host_file(CA_BUNDLE, CA_BUNDLE, 0o644)
    layer.file("/etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    layer.file("/etc/group", b"root:x:0:\n")
    layer.file("/etc/nsswitch.conf", b"hosts: files dns\n")

    tar_bytes = layer.close()
    diff_id = sha256(tar_bytes)
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=MTIME, compresslevel=6) as g:
        g.write(tar_bytes)
    layer_blob = gz.getvalue()

    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "SSL_CERT_FILE=" + CA_BUNDLE],
            # No entrypoint: the DaemonSet's `command` (and `ctr run IMAGE ID CMD...`) names
            # the program, as Kubernetes and ctr both replace Cmd.
            "Cmd": ["/usr/local/bin/podsnapd", "--help"],
            "WorkingDir": "/",
            "Labels": {"org.opencontainers.image.version": version,
                       "org.opencontainers.image.title": "podsnap"},
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "scripts/build-image.py", "comment": f"podsnap {version}"}],
    }
    config_blob = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256(config_blob), "size": len(config_blob)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha256(layer_blob), "size": len(layer_blob)}],
        "annotations": {"org.opencontainers.image.version": version},
    }
    manifest_blob = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256(manifest_blob),
            "size": len(manifest_blob),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"org.opencontainers.image.ref.name": f"podsnap:{version}"},
        }],
    }
    index_blob = json.dumps(index, sort_keys=True, separators=(",", ":")).encode()

    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    tmp = out + ".tmp"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as t:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = MTIME
            info.mode = 0o644
            t.addfile(info, io.BytesIO(data))
        add("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        add("index.json", index_blob)
        for blob in (config_blob, manifest_blob, layer_blob):
            add("blobs/sha256/" + sha256(blob).split(":", 1)[1], blob)
    os.replace(tmp, out)
    print(f"{out}: podsnap:{version} manifest {sha256(manifest_blob)}, "
          f"layer {len(layer_blob)} bytes ({len(tar_bytes)} uncompressed)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--version", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    build(a.bin_dir, a.version, a.out)


if __name__ == "__main__":
    main()
