#!/usr/bin/env python3
"""Write a one-layer OCI image layout tar (for `ctr -n k8s.io images import`) without a registry.

    oci-image.py OUT.tar NAME:TAG [--entrypoint JSON] [--cmd JSON] FILE=PATH... LINK=TARGET...

FILE=PATH copies the host file PATH into the image at FILE (absolute, mode kept); LINK@TARGET
makes a symlink. The layer is an uncompressed tar with fixed owners and times, so the same inputs
give the same digests.
"""

import argparse
import hashlib
import io
import json
import os
import sys
import tarfile


def add_dirs(tar, seen, path):
    parts = path.strip("/").split("/")[:-1]
    for i in range(1, len(parts) + 1):
        d = "/".join(parts[:i])
        if d in seen:
            continue
        seen.add(d)
        info = tarfile.TarInfo(d)
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)


def layer(entries):
    buf = io.BytesIO()
    seen = set()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for kind, dest, src in entries:
            add_dirs(tar, seen, dest)
            info = tarfile.TarInfo(dest.strip("/"))
            if kind == "file":
                with open(src, "rb") as f:
                    data = f.read()
                info.size = len(data)
                info.mode = os.stat(src).st_mode & 0o7777
                tar.addfile(info, io.BytesIO(data))
            else:
                info.type = tarfile.SYMTYPE
                info.linkname = src
                info.mode = 0o777
                tar.addfile(info)
        # Directories every container runtime expects to mount over.
        for d in ("proc", "sys", "dev", "etc", "tmp", "var/log"):
            add_dirs(tar, seen, d + "/x")
    return buf.getvalue()


def blob(out, data, media_type):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo("blobs/sha256/" + digest.split(":")[1])
    info.size = len(data)
    info.mode = 0o644
    out.addfile(info, io.BytesIO(data))
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("name", help="full reference, e.g. localhost/podsnap/pause:3.10")
    p.add_argument("--entrypoint", type=json.loads)
    p.add_argument("--cmd", type=json.loads)
    p.add_argument("entries", nargs="*")
    a = p.parse_intermixed_args()

    entries = []
    for e in a.entries:
        if "@" in e:
            dest, target = e.split("@", 1)
            entries.append(("link", dest, target))
        elif "=" in e:
            dest, src = e.split("=", 1)
            entries.append(("file", dest, src))
        else:
            sys.exit(f"bad entry {e!r}: want DEST=SRC or DEST@TARGET")
    data = layer(entries)
    diff_id = "sha256:" + hashlib.sha256(data).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin:/usr/bin:/sbin:/usr/sbin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    if a.entrypoint is not None:
        config["config"]["Entrypoint"] = a.entrypoint
    if a.cmd is not None:
        config["config"]["Cmd"] = a.cmd

    tag = a.name.rsplit(":", 1)[1] if ":" in a.name.rsplit("/", 1)[-1] else "latest"
    with tarfile.open(a.out, mode="w", format=tarfile.PAX_FORMAT) as out:
        layer_desc = blob(out, data, "application/vnd.oci.image.layer.v1.tar")
        config_desc = blob(
            out, json.dumps(config, sort_keys=True).encode(), "application/vnd.oci.image.config.v1+json"
        )
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config_desc,
            "layers": [layer_desc],
        }
        manifest_desc = blob(
            out, json.dumps(manifest, sort_keys=True).encode(), "application/vnd.oci.image.manifest.v1+json"
        )
        manifest_desc["annotations"] = {
            "io.containerd.image.name": a.name,
            "org.opencontainers.image.ref.name": tag,
        }
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [manifest_desc],
        }
        for name, doc in (
            ("oci-layout", {"imageLayoutVersion": "1.0.0"}),
            ("index.json", index),
        ):
            data = json.dumps(doc, sort_keys=True).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            out.addfile(info, io.BytesIO(data))


if __name__ == "__main__":
    main()
