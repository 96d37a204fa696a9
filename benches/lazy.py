#!/usr/bin/env python3
"""Restore to first answer on a cold node: lazy vs eager podsnap restore vs raw runsc.

    lazy.py --bin DIR --dir SCRATCH --runsc RUNSC_2026 [--mib 512] [--rounds 5] [--results FILE]

Per round: a memfill sandbox (benches/memfill.c, MIB MiB of mixed pages, "Count: N" every
20 ms) runs on runsc 2026, is checkpointed with `podsnapctl checkpoint --stop` into a file://
store on local disk, and its image is also pulled into a local directory (untimed). Then,
each after `sync`, a second of rest and a drop of the kernel's page cache (a cold node), in
an order that rotates between rounds:

* raw: `runsc restore --detach --image-path DIR` of that local image (no `--background`);
* eager: a podsnapd with a fresh state dir (empty page cache), `--lazy-restore never`:
  `podsnapctl restore` pulls and verifies every page, then runsc restores;
* lazy: the same with `--lazy-restore always`: small files verified, the image served through
  podsnapd's FUSE mount, `runsc restore --background`.

Then, on the lazy case's node once its first restore has every page local:

* warm: the same snapshot restored lazily again on that node (its page cache holds the
  pages; the kernel's page cache dropped as for every case).

And once per round, on a fresh node (empty cache): --concurrent restores of the snapshot at
once (as a warm pool fills), lazily. Measured: the bytes that node downloaded against the
bytes the single cold lazy restore downloaded (the image's stored pages), and the last first
answer against the first.

The time is from the call to the first count above the one before the checkpoint (the first
answer of the restored program); it must be the next count. Medians of the rounds and the
ratios to raw in the same run go to --results (markdown) and a .json beside it.
"""
import argparse
import concurrent.futures
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from e2e import Daemon, counts, wait_count_above  # noqa: E402

INTERVAL_MS = 20
TIMEOUT = 600


def cold():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
    time.sleep(1.0)


def downloaded(node):
    """Bytes a podsnapd downloaded from the store so far (its /metrics)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{node.mport}/metrics", timeout=10).read()
    m = re.search(r'^podsnap_bytes(?:_total)?\{[^}]*direction="downloaded"[^}]*\} (\S+)$',
                  text.decode(), re.M)
    return float(m.group(1)) if m else 0.0


def wait_jobs_done(ctl, node, timeout=TIMEOUT):
    """Waits until none of a podsnapd's jobs is unfinished (a lazy restore's last page)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run([ctl, "--socket", node.sock, "jobs", "--json"],
                             capture_output=True, check=True, timeout=60)
        jobs = json.loads(out.stdout or b"[]")
        bad = [j for j in jobs if j["error"]]
        if bad:
            raise RuntimeError(f"a job failed: {bad}")
        if all(j["finished_at"] for j in jobs):
            return
        time.sleep(0.2)
    raise RuntimeError("jobs still running")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--runsc", required=True, help="a runsc with restore --background")
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--concurrent", type=int, default=8,
                    help="restores of one snapshot at once on a cold node (0: skip)")
    ap.add_argument("--results", default=os.path.join(HERE, "results", "lazy-latest.md"))
    a = ap.parse_args()
    work = os.path.abspath(os.path.join(a.dir, "lazy"))
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.join(work, "log"))
    root = os.path.join(work, "runsc-root")
    bundle = os.path.join(work, "bundle")
    rootfs = os.path.join(bundle, "rootfs")
    for d in ("bin", "proc", "dev", "tmp"):
        os.makedirs(os.path.join(rootfs, d), exist_ok=True)
    subprocess.run(["gcc", "-O2", "-static", "-o", os.path.join(rootfs, "bin", "memfill"),
                    os.path.join(HERE, "memfill.c")], check=True)
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump({
            "ociVersion": "1.0.0",
            "process": {"terminal": False, "user": {"uid": 0, "gid": 0},
                        "args": ["/bin/memfill", str(a.mib), str(INTERVAL_MS)],
                        "env": ["PATH=/bin"], "cwd": "/"},
            "root": {"path": "rootfs", "readonly": True},
            "hostname": "memfill",
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                       {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"}],
            "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                                     {"type": "mount"}]},
        }, f)
    ctl = os.path.join(a.bin, "podsnapctl")
    podsnapd = os.path.join(a.bin, "podsnapd")
    store = f"file://{work}/store"

    def runsc(*args, stdout=None):
        # The sandbox inherits runsc's stdio: no pipe (its EOF would never come).
        subprocess.run([a.runsc, f"--root={root}", "--network=none", *args], check=True,
                       stdout=stdout, stderr=stdout or subprocess.DEVNULL, timeout=TIMEOUT)

    def delete(cid):
        subprocess.run([a.runsc, f"--root={root}", "--network=none", "delete", "--force", cid],
                       capture_output=True)

    def restore_once(node, dst, before, cold_first=True):
        """podsnapctl restore of `snap` into `dst` on `node`; seconds to the first answer."""
        dst_log = os.path.join(work, "log", f"{dst}.log")
        if cold_first:
            cold()
        t0 = time.monotonic()
        subprocess.run([ctl, "--socket", node.sock, "restore", snap, "--bundle", bundle,
                        "--id", dst, "--log", dst_log],
                       capture_output=True, check=True, timeout=TIMEOUT)
        first = wait_count_above(dst_log, before, t0 + TIMEOUT)
        if first != before + 1:
            raise RuntimeError(f"{dst}: restored at {first}, expected {before + 1}")
        return time.monotonic() - t0

    def concurrent_restores(rnd, before):
        """--concurrent lazy restores of `snap` at once on a fresh node."""
        node = Daemon(podsnapd, work, f"many{rnd}", store, root,
                      args=[f"--runsc={a.runsc}", "--lazy-restore=always"])
        ids = [f"lz-{rnd}-many{i}" for i in range(a.concurrent)]
        try:
            cold()
            with concurrent.futures.ThreadPoolExecutor(len(ids)) as pool:
                times = list(pool.map(lambda d: restore_once(node, d, before, False), ids))
            wait_jobs_done(ctl, node)
            got = downloaded(node)
        finally:
            for d in ids:
                delete(d)
            node.stop()
            shutil.rmtree(node.state, ignore_errors=True)
        print(f"round {rnd} {len(ids)} at once: first {min(times):.3f} s, last "
              f"{max(times):.3f} s, {got / 2**20:.1f} MiB downloaded",
              file=sys.stderr, flush=True)
        return {"many_first": min(times), "many_last": max(times), "many_bytes": got}

    src_node = Daemon(podsnapd, work, "src", store, root, args=[f"--runsc={a.runsc}"])
    rows = []
    try:
        for rnd in range(a.rounds):
            src = f"lz-{rnd}-src"
            src_log = os.path.join(work, "log", f"{src}.log")
            with open(src_log, "wb") as out:
                runsc("run", "--detach", f"--bundle={bundle}", src, stdout=out)
            wait_count_above(src_log, 4, time.monotonic() + TIMEOUT)
            out = subprocess.run([ctl, "--socket", src_node.sock, "checkpoint", src, "--stop"],
                                 capture_output=True, check=True, timeout=TIMEOUT)
            snap = out.stdout.decode().strip().splitlines()[-1]
            before = counts(src_log)[-1]
            delete(src)
            img = os.path.join(work, f"img-{rnd}")
            subprocess.run([ctl, "image", "pull", snap, img, "--store", store],
                           capture_output=True, check=True, timeout=TIMEOUT)
            row = {"round": rnd, "count_before": before}
            cases = ["raw", "eager", "lazy"]
            cases = cases[rnd % 3:] + cases[:rnd % 3]
            for case in cases:
                dst = f"lz-{rnd}-{case}"
                dst_log = os.path.join(work, "log", f"{dst}.log")
                node = None
                if case != "raw":
                    mode = "always" if case == "lazy" else "never"
                    node = Daemon(podsnapd, work, f"{case}{rnd}", store, root,
                                  args=[f"--runsc={a.runsc}", f"--lazy-restore={mode}"])
                cold()
                t0 = time.monotonic()
                if node is None:
                    with open(dst_log, "wb") as o:
                        runsc("restore", "--detach", f"--image-path={img}",
                              f"--bundle={bundle}", dst, stdout=o)
                else:
                    subprocess.run([ctl, "--socket", node.sock, "restore", snap, "--bundle",
                                    bundle, "--id", dst, "--log", dst_log],
                                   capture_output=True, check=True, timeout=TIMEOUT)
                t1 = time.monotonic()
                first = wait_count_above(dst_log, before, t0 + TIMEOUT)
                t2 = time.monotonic()
                if first != before + 1:
                    raise RuntimeError(f"{case}: restored at {first}, expected {before + 1}")
                row[case] = t2 - t0
                row[f"{case}_cmd"] = t1 - t0
                if case == "lazy":
                    wait_jobs_done(ctl, node)
                    row["lazy_bytes"] = downloaded(node)
                    row["warm"] = restore_once(node, f"lz-{rnd}-warm", before)
                    delete(f"lz-{rnd}-warm")
                delete(dst)
                if node is not None:
                    node.stop()
                    shutil.rmtree(node.state, ignore_errors=True)
                print(f"round {rnd} {case}: first answer {t2 - t0:.3f} s "
                      f"(command {t1 - t0:.3f} s)", file=sys.stderr, flush=True)
            if a.concurrent > 0:
                row.update(concurrent_restores(rnd, before))
            shutil.rmtree(img, ignore_errors=True)
            rows.append(row)
    finally:
        src_node.stop()
    med = {c: statistics.median(r[c] for r in rows) for c in ("raw", "eager", "lazy")}
    cmd = {c: statistics.median(r[f"{c}_cmd"] for r in rows) for c in ("raw", "eager", "lazy")}
    load = os.getloadavg()
    text = (f"# Restore to first answer on a cold node ({a.mib} MiB memfill, runsc "
            f"{os.path.basename(a.runsc)}, {a.rounds} rounds, load {load[0]:.1f})\n\n"
            "| case | first answer, median | call returned, median | vs raw |\n"
            "|---|---|---|---|\n")
    for c in ("raw", "eager", "lazy"):
        text += (f"| {c} | {med[c]:.3f} s | {cmd[c]:.3f} s | "
                 f"{med[c] / med['raw']:.2f}x |\n")
    warm = statistics.median(r["warm"] for r in rows)
    text += (f"| warm (lazy, pages in the node's cache) | {warm:.3f} s | | "
             f"{warm / med['raw']:.2f}x |\n")
    if a.concurrent > 0:
        one = statistics.median(r["lazy_bytes"] for r in rows)
        many = statistics.median(r["many_bytes"] for r in rows)
        first = statistics.median(r["many_first"] for r in rows)
        last = statistics.median(r["many_last"] for r in rows)
        text += (f"\n{a.concurrent} lazy restores of one snapshot at once on a cold node: "
                 f"downloaded {many / 2**20:.1f} MiB against {one / 2**20:.1f} MiB for one "
                 f"restore (**{many / one:.2f}x**); first answer {first:.3f} s, last "
                 f"{last:.3f} s (**{last / first:.2f}x**); medians of the rounds.\n")
    text += "\nPer round (s): " + "; ".join(
        f"r{r['round']} raw {r['raw']:.3f} eager {r['eager']:.3f} lazy {r['lazy']:.3f}"
        for r in rows) + "\n"
    os.makedirs(os.path.dirname(a.results), exist_ok=True)
    with open(a.results, "w") as f:
        f.write(text)
    with open(os.path.splitext(a.results)[0] + ".json", "w") as f:
        json.dump({"rows": rows, "mib": a.mib}, f, indent=1)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
