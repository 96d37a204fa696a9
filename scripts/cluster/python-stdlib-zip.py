"""Zips the .py files of Python's standard library at SRC into OUT (scripts/cluster/up.sh's
python image): no tests, GUIs, site packages, caches or compiled modules."""
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
