#!/usr/bin/env python3
"""Incremental snapshots of a real runsc sandbox through podsnapd, against raw runsc.

    incremental.py --bin DIR --dir SCRATCH [--mib 512] [--rounds 3] [--s3 0|1] [--zero 1]
                   [--seq 1] [--results FILE]

The sandbox runs benches/memfill.c in its `random` mode (built static with gcc): MIB MiB of
anonymous memory, every page random (incompressible), then "Count: N" every 20 ms; on
SIGUSR1 (`runsc kill ID USR1`) it rewrites 5% of its pages (one page at a random place in
every run of 20) with new random data and prints "rewrote ... generation G".

Per round, one fresh sandbox, and for each case: file:// (podsnapd's defaults: a checkpoint
that leaves the sandbox running is uploaded after runsc), with --seq 1 file:// again with
`--upload-while-checkpointing=always` (the upload reads pages.img while runsc writes it; the
A/B of that overlap), and S3 (moto) with --s3 1:

* first:  `podsnapctl checkpoint ID --label bench-incr=rR-CASE --group-by bench-incr --resume`
          (the sandbox keeps running; the snapshot is the first of its group);
* rewrite 5% of the sandbox's pages (SIGUSR1, wait for its "rewrote" line; untimed);
* second: the same command again: the daemon dedups against the group's newest snapshot.

With --cycle 1 (the default), also the suspend/resume cycle of GKE Pod Snapshots on a fresh
sandbox of its own, through the default file:// podsnapd (whose default overlaps the upload
with runsc for these): `checkpoint ID ... --stop` (first; the sandbox stops), `podsnapctl
restore` of it (untimed), rewrite 5% of the restored sandbox's pages, `checkpoint ... --stop`
(second, dedups against the first).

Each checkpoint is timed from the call until podsnapctl prints the snapshot id (the manifest
is committed); `podsnapctl inspect --json` gives its `logical_bytes` and `uploaded_bytes`.
The same-run baseline is raw runsc on the same sandbox: `runsc checkpoint --compression=none
--leave-running --image-path DIR ID` (the flags podsnapd passes on this release) + fsync of
every image file and DIR; it runs before the podsnap pair in odd rounds and after it in even
rounds. Before every timed operation the harness syncs and waits a second (as e2e.py does).
After every checkpoint it checks that the sandbox is still counting.

With --zero 1 it also measures runsc's `--exclude-committed-zero-pages` on a sandbox in
memfill's `mixed` mode (1/3 of the pages zero-filled but committed, 1/3 random, 1/3
text-like): per round and per variant (with and without the flag, order alternating) a fresh
sandbox, raw `runsc checkpoint --compression=none --leave-running [flag]` + fsync, the image's
sizes, an offline `podsnapctl image push` of that image into an empty file:// store, and
`runsc restore` of the image until the restored counter prints its next count.

Writes every measurement as JSON (next to --results) and a markdown report (--results).
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from e2e import (Daemon, SandboxBench, counts, files_under, fsync_path, fsync_tree,  # noqa: E402
                 med, proc_cpu, reset_hwm, hwm_kib, settle, sizes, spread, wait_count_above,
                 write_results)

INTERVAL_MS = 20
TIMEOUT = 900
REWRITE_PCT = 5
ZERO_PCT = 25
# bundle name -> memfill's MODE and REWRITE_PCT
BUNDLES = {"random": ("random", REWRITE_PCT), "mixed": ("mixed", REWRITE_PCT),
           "zero": ("random", ZERO_PCT)}
GROUP_KEY = "bench-incr"


def log(msg):
    print(f"== incremental: {msg}", file=sys.stderr, flush=True)


class Bench(SandboxBench):
    def __init__(self, a):
        self.a = a
        self.work = os.path.abspath(os.path.join(a.dir, "incr"))
        shutil.rmtree(self.work, ignore_errors=True)
        os.makedirs(os.path.join(self.work, "log"))
        self.root = os.path.join(self.work, "runsc-root")
        self.ctl = os.path.join(a.bin, "podsnapctl")
        self.rows = []      # one per checkpoint (raw, first, second)
        self.zrows = []     # zero-page variants
        self.live = set()
        self.daemons = {}
        self.moto = None

    # ---- setup ----------------------------------------------------------------------------
    def build_bundles(self):
        binary = os.path.join(self.work, "memfill")
        subprocess.run(["gcc", "-O2", "-static", "-o", binary, os.path.join(HERE, "memfill.c")],
                       check=True)
        self.bundles = {}
        for name, (mode, pct) in BUNDLES.items():
            b = os.path.join(self.work, f"bundle-{name}")
            rootfs = os.path.join(b, "rootfs")
            for d in ("bin", "proc", "dev", "tmp"):
                os.makedirs(os.path.join(rootfs, d), exist_ok=True)
            shutil.copy(binary, os.path.join(rootfs, "bin", "memfill"))
            spec = {
                "ociVersion": "1.0.0",
                "process": {"terminal": False, "user": {"uid": 0, "gid": 0},
                            "args": ["/bin/memfill", str(self.a.mib), str(INTERVAL_MS), mode,
                                     str(pct)],
                            "env": ["PATH=/bin"], "cwd": "/"},
                "root": {"path": "rootfs", "readonly": True},
                "hostname": "memfill",
                "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                           {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"}],
                "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                                         {"type": "mount"}]},
            }
            with open(os.path.join(b, "config.json"), "w") as f:
                json.dump(spec, f)
            self.bundles[name] = b

    # ---- runsc ----------------------------------------------------------------------------

    def start_sandbox(self, cid, mode, image=None):
        logp = os.path.join(self.work, "log", f"{cid}.log")
        with open(logp, "wb") as out:
            self.live.add(cid)
            t = time.monotonic()
            if image:
                self.runsc("restore", "--detach", f"--image-path={image}",
                           f"--bundle={self.bundles[mode]}", cid, stdout=out)
            else:
                self.runsc("run", "--detach", "--bundle", self.bundles[mode], cid, stdout=out)
        wait_count_above(logp, 4, time.monotonic() + TIMEOUT)
        log(f"{cid}: {self.a.mib} MiB ({mode}) filled and counting after "
            f"{time.monotonic() - t:.1f} s")
        return logp

    def still_running(self, logp):
        """The sandbox resumed: a count above the last one printed appears."""
        last = counts(logp)[-1]
        wait_count_above(logp, last, time.monotonic() + 60)

    def rewrite(self, cid, logp, gen, zero=False):
        t = time.monotonic()
        self.runsc("kill", cid, "USR2" if zero else "USR1")
        word = b"zeroed" if zero else b"rewrote"
        pat = re.compile(rb"%s (\d+) of (\d+) pages, generation %d\n" % (word, gen))
        while time.monotonic() < t + 120:
            with open(logp, "rb") as f:
                m = pat.search(f.read().replace(b"\0", b""))
            if m:
                return int(m.group(1)), int(m.group(2)), time.monotonic() - t
            time.sleep(0.005)
        raise RuntimeError(f"{cid}: no '{word.decode()} ... generation {gen}' line within 120 s")

    def raw_checkpoint(self, cid, img, extra=()):
        os.makedirs(img)
        t0 = time.monotonic()
        self.runsc("checkpoint", f"--image-path={img}", "--compression=none", "--leave-running",
                   *extra, cid)
        t1 = time.monotonic()
        sync = fsync_tree(img)
        return {"ckpt": t1 - t0 + sync, "ckpt_cmd": t1 - t0, "ckpt_sync": sync,
                "files": sizes(img), "image_bytes": sum(sizes(img).values())}

    # ---- podsnap --------------------------------------------------------------------------
    def ps_checkpoint(self, name, cid, group, post="--resume"):
        d = self.daemons[name]
        pid = d.proc.pid
        local = d.store.startswith("file://")
        store_dir = d.store[len("file://"):]
        seen = files_under(store_dir) if local else {}
        ph0, cpu0 = d.phases(), proc_cpu(pid)
        reset_hwm(pid)
        t0 = time.monotonic()
        out = subprocess.run([self.ctl, "--socket", d.sock, "checkpoint", cid,
                              "--label", f"{GROUP_KEY}={group}", "--group-by", GROUP_KEY,
                              post], capture_output=True, timeout=TIMEOUT)
        t1 = time.monotonic()
        if out.returncode != 0:
            raise RuntimeError(f"podsnapctl checkpoint failed: {out.stderr.decode()[-2000:]}")
        snap = out.stdout.decode().strip().splitlines()[-1]
        ph1, cpu1, hwm = d.phases(), proc_cpu(pid), hwm_kib(pid)

        def ph(phase):
            return ph1.get(("checkpoint", phase), 0) - ph0.get(("checkpoint", phase), 0)

        m = json.loads(subprocess.run([self.ctl, "--socket", d.sock, "inspect", snap, "--json"],
                                      capture_output=True, check=True).stdout)
        row = {"ckpt": t1 - t0, "snapshot": snap, "parent": m.get("parent") or "",
               "logical_bytes": m["logical_bytes"], "uploaded_bytes": m["uploaded_bytes"],
               "ph_runsc_ckpt": ph("runsc_checkpoint"), "ph_upload": ph("upload"),
               "ph_upload_after": ph("upload_after_runsc"),
               "overlapped": ph1.get(("checkpoint", "upload_after_runsc"), None) is not None
               and ph("upload_after_runsc") > 0,
               "d_cpu": cpu1 - cpu0, "d_hwm_kib": hwm}
        if local:
            # podsnap fsyncs a file:// store's new objects before it commits; an fsync of
            # them after the call checks that nothing was left dirty (should cost ~0).
            now = files_under(store_dir)
            new = [p for p, mt in now.items() if seen.get(p) != mt]
            t2 = time.monotonic()
            for p in new:
                fsync_path(p)
            for dd in {os.path.dirname(p) for p in new}:
                fsync_path(dd)
            row["store_fsync"] = time.monotonic() - t2
            row["stored_bytes"] = sum(os.path.getsize(p) for p in new)
        return row

    def ps_restore(self, name, snap, dst, mode="random"):
        """Restores `snap` as the sandbox `dst` (untimed); its log."""
        d = self.daemons[name]
        dlog = os.path.join(self.work, "log", f"{dst}.log")
        self.live.add(dst)
        out = subprocess.run([self.ctl, "--socket", d.sock, "restore", snap, "--bundle",
                              self.bundles[mode], "--id", dst, "--log", dlog],
                             capture_output=True, timeout=TIMEOUT)
        if out.returncode != 0:
            raise RuntimeError(f"podsnapctl restore failed: {out.stderr.decode()[-2000:]}")
        wait_count_above(dlog, 0, time.monotonic() + TIMEOUT)
        return dlog

    def timed_checkpoint(self, rnd, name, cid, group, kind, snaps, rewritten=None,
                         post="--resume", logp=None):
        """One timed podsnap checkpoint in group `group`: its row, and its id added to
        `snaps` (whose first is the parent expected of a second). With `logp`, waits until
        the sandbox counts again; `rewritten` = (pages rewritten, pages) before a second."""
        settle()
        load = os.getloadavg()[0]
        r = self.ps_checkpoint(name, cid, group, post=post)
        if logp:
            self.still_running(logp)
        r.update(round=rnd, case=name, kind=kind, load=load)
        if rewritten:
            r.update(rewritten_pages=rewritten[0], pages=rewritten[1])
            if r["parent"] != snaps[0]:
                log(f"warning: second snapshot's parent is {r['parent']!r}, "
                    f"not the first snapshot {snaps[0]}")
        snaps.append(r["snapshot"])
        self.rows.append(r)
        log(f"round {rnd} {name} {kind}: {r['ckpt']:.2f} s (runsc {r['ph_runsc_ckpt']:.2f}, "
            f"upload {r['ph_upload']:.2f}, after runsc {r['ph_upload_after']:.2f}), uploaded "
            f"{r['uploaded_bytes'] / 2**20:.1f} of {r['logical_bytes'] / 2**20:.1f} MiB")

    def cycle_round(self, rnd):
        """The suspend/resume cycle of GKE Pod Snapshots: `checkpoint --stop` (first), restore,
        rewrite 5%, `checkpoint --stop` again (second, deduplicated against the first)."""
        name, group = "cycle", f"r{rnd}-cycle"
        cid = f"pi-{rnd}-c0"
        logp = self.start_sandbox(cid, "random")
        snaps = []
        for kind in ("first", "second"):
            if kind == "second":
                dst = f"pi-{rnd}-c1"
                logp = self.ps_restore(name, snaps[0], dst)
                self.delete(cid)
                cid = dst
                n, total, took = self.rewrite(cid, logp, 1)
                log(f"round {rnd}: restored the first snapshot as {cid}, rewrote {n} of "
                    f"{total} pages in {took:.2f} s")
            self.timed_checkpoint(rnd, name, cid, group, kind, snaps,
                                  (n, total) if kind == "second" else None, post="--stop")
        self.delete(cid)
        self.drop_snapshots(name, snaps)

    def drop_snapshots(self, name, snaps):
        d = self.daemons[name]
        for s in snaps:
            subprocess.run([self.ctl, "--socket", d.sock, "delete", s], capture_output=True,
                           timeout=120)
        subprocess.run([self.ctl, "image", "gc", "--store", d.store, "--grace", "0s"],
                       capture_output=True, timeout=300, env=d.env)

    # ---- one round ------------------------------------------------------------------------
    def incremental_round(self, rnd, cases):
        cid = f"pi-{rnd}-x"
        logp = self.start_sandbox(cid, "random")
        gen = 0

        def raw():
            settle()
            load = os.getloadavg()[0]
            img = os.path.join(self.work, f"raw-{rnd}")
            r = self.raw_checkpoint(cid, img)
            shutil.rmtree(img)
            self.still_running(logp)
            r.update(round=rnd, case="raw", kind="raw", load=load)
            self.rows.append(r)
            log(f"round {rnd} raw: {r['ckpt']:.2f} s (runsc {r['ckpt_cmd']:.2f} + fsync "
                f"{r['ckpt_sync']:.2f}), image {r['image_bytes'] / 2**20:.0f} MiB")

        if rnd % 2:
            raw()
        for name in cases:
            group = f"r{rnd}-{name}"
            snaps = []
            for kind in ("first", "second"):
                if kind == "second":
                    gen += 1
                    n, total, took = self.rewrite(cid, logp, gen)
                    log(f"round {rnd}: rewrote {n} of {total} pages in {took:.2f} s")
                self.timed_checkpoint(rnd, name, cid, group, kind, snaps,
                                      (n, total) if kind == "second" else None, logp=logp)
            self.drop_snapshots(name, snaps)
        if not rnd % 2:
            raw()
        self.delete(cid)

    def zero_round(self, rnd):
        """--exclude-committed-zero-pages, with and without, on two kinds of sandbox: a fresh
        `mixed` one (zero pages written by the app since it started), and a restored `random`
        one whose app then zeroed ZERO_PCT% of its pages (pages runsc loaded at restore)."""
        variants = [("plain", ()), ("exclude", ("--exclude-committed-zero-pages",))]
        if not rnd % 2:
            variants.reverse()
        for name, extra in variants:
            cid = f"pz-{rnd}-fresh-{name}-x"
            logp = self.start_sandbox(cid, "mixed")
            self.zero_measure(rnd, "fresh", "mixed", cid, logp, name, extra)
        base = os.path.join(self.work, f"zbase-{rnd}")
        cid = f"pz-{rnd}-base-x"
        self.start_sandbox(cid, "zero")
        os.makedirs(base)
        self.runsc("checkpoint", f"--image-path={base}", "--compression=none", cid)
        self.delete(cid)
        for name, extra in variants:
            cid = f"pz-{rnd}-restored-{name}-x"
            logp = self.start_sandbox(cid, "zero", image=base)
            n, total, _ = self.rewrite(cid, logp, 1, zero=True)
            self.zero_measure(rnd, "restored", "zero", cid, logp, name, extra,
                              zeroed_pages=n, pages=total)
        shutil.rmtree(base)

    def zero_measure(self, rnd, scenario, bundle, cid, logp, name, extra, **more):
        settle()
        load = os.getloadavg()[0]
        img = os.path.join(self.work, f"zimg-{rnd}-{scenario}-{name}")
        r = self.raw_checkpoint(cid, img, extra)
        self.still_running(logp)
        before = counts(logp)[-1]
        self.delete(cid)
        # podsnap's side: an offline push of that image into an empty store.
        store = os.path.join(self.work, f"zstore-{rnd}-{scenario}-{name}")
        settle()
        t0 = time.monotonic()
        out = subprocess.run([self.ctl, "image", "push", img, "--store", f"file://{store}",
                              "--json"], capture_output=True, timeout=TIMEOUT)
        push = time.monotonic() - t0
        if out.returncode != 0:
            raise RuntimeError(f"image push failed: {out.stderr.decode()[-2000:]}")
        pj = json.loads(out.stdout.decode().strip().splitlines()[-1])
        shutil.rmtree(store)
        # The image restores (and how fast).
        dst = f"pz-{rnd}-{scenario}-{name}-r"
        dlog = os.path.join(self.work, "log", f"{dst}.log")
        settle()
        t0 = time.monotonic()
        with open(dlog, "wb") as outf:
            self.live.add(dst)
            self.runsc("restore", "--detach", f"--image-path={img}",
                       f"--bundle={self.bundles[bundle]}", dst, stdout=outf)
        first = wait_count_above(dlog, before, t0 + TIMEOUT)
        restore = time.monotonic() - t0
        if first != before + 1:
            raise RuntimeError(f"zero {scenario} {name} round {rnd}: counter {before} -> {first}")
        self.delete(dst)
        shutil.rmtree(img)
        r.update(round=rnd, scenario=scenario, variant=name, load=load, push=push,
                 push_uploaded=pj.get("bytes_uploaded"), restore=restore, **more)
        self.zrows.append(r)
        log(f"round {rnd} zero-pages {scenario} {name}: checkpoint {r['ckpt']:.2f} s (runsc "
            f"{r['ckpt_cmd']:.2f} + fsync {r['ckpt_sync']:.2f}), image "
            f"{r['image_bytes'] / 2**20:.0f} MiB, push {push:.2f} s, restore {restore:.2f} s")

    def run(self):
        self.build_bundles()
        podsnapd = os.path.join(self.a.bin, "podsnapd")
        cases = ["file"]
        self.daemons["file"] = Daemon(podsnapd, self.work, "file",
                                      f"file://{self.work}/store", self.root)
        if self.a.seq:
            self.daemons["ovl"] = Daemon(podsnapd, self.work, "ovl",
                                         f"file://{self.work}/store-ovl", self.root,
                                         args=["--upload-while-checkpointing=always"])
            cases.append("ovl")
        if self.a.s3:
            env = self.start_moto()
            self.daemons["s3"] = Daemon(podsnapd, self.work, "s3", "s3://e2e/incr",
                                        self.root, env)
            cases.append("s3")
        if self.a.cycle:
            # The default daemon, its own groups.
            self.daemons["cycle"] = self.daemons["file"]
        for rnd in range(1, self.a.rounds + 1):
            self.incremental_round(rnd, cases if rnd % 2 else list(reversed(cases)))
            if self.a.cycle:
                self.cycle_round(rnd)
            if self.a.zero:
                self.zero_round(rnd)

# ---- report -------------------------------------------------------------------------------
LABEL = {"file": "podsnap, file:// store", "ovl": "podsnap, file://, upload while runsc writes (`always`)",
         "s3": "podsnap, S3 (moto)",
         "cycle": "podsnap, file://, suspend/resume (`--stop`, restore, `--stop`)"}
CASES = ("file", "ovl", "s3", "cycle")


def report(rows, zrows, meta):
    out = []
    p = out.append
    mib = meta["mib"]
    raw = [r for r in rows if r["case"] == "raw"]
    rounds = sorted({r["round"] for r in rows})
    p(f"# Incremental snapshots of a real {mib} MiB runsc sandbox\n")
    p(f"Command: `{meta['command']}` (whole run {meta['elapsed']:.0f} s), source "
      f"`{meta['source']}`, {meta['date']}.\n")
    p(f"Machine: {meta['machine']}; {meta['runsc']} (default platform), `--network=none`. "
      f"Scratch (images, stores, podsnapd state): {meta['scratch']}. Load average (1 min) "
      f"before each timed checkpoint: {spread([r['load'] for r in rows + zrows], '{:.1f}')}.\n")
    p(f"Sandbox: `benches/memfill.c` in `random` mode, {mib} MiB of random pages; between the "
      f"first and the second snapshot it rewrites {REWRITE_PCT}% of its pages (one at a random "
      "place in every run of 20) with new random data. Checkpoint = the call until durable: "
      "podsnap `podsnapctl checkpoint ID --label bench-incr=G --group-by bench-incr --resume` "
      "until it prints the snapshot id; raw `runsc checkpoint --compression=none "
      "--leave-running` + fsync of the image files and dir. "
      f"{len(rounds)} rounds, a fresh sandbox each; `sync` and 1 s pause before every timed "
      "checkpoint; medians with min–max; ratios are per round (same sandbox, same minute), "
      "then the median over rounds."
      + (" The suspend/resume cycle runs on a fresh sandbox of its own through the default "
         "file:// podsnapd: `checkpoint ... --stop` (first), `podsnapctl restore` of it "
         "(untimed), the same 5% rewrite in the restored sandbox, `checkpoint ... --stop` "
         "(second); its 'vs raw' compares with the round's `--leave-running` raw checkpoint."
         if any(r["case"] == "cycle" for r in rows) else "") + "\n")
    p("| case | checkpoint | s | uploaded MiB | logical MiB | uploaded / logical | "
      "vs raw (same round) |")
    p("|---|---|---:|---:|---:|---:|---:|")
    rawc = {r["round"]: r["ckpt"] for r in raw}
    if raw:
        p(f"| raw runsc | `checkpoint --compression=none` + fsync | {med(list(rawc.values())):.2f} "
          f"({spread(list(rawc.values()))}) | - | {med([r['image_bytes'] for r in raw]) / 2**20:.1f}"
          " | - | 1.00 |")
    for name in CASES:
        for kind in ("first", "second"):
            rs = [r for r in rows if r["case"] == name and r["kind"] == kind]
            if not rs:
                continue
            c = [r["ckpt"] for r in rs]
            frac = [r["uploaded_bytes"] / r["logical_bytes"] for r in rs]
            vs = [r["ckpt"] / rawc[r["round"]] for r in rs if r["round"] in rawc]
            p(f"| {LABEL[name]} | {kind} | {med(c):.2f} ({spread(c)}) | "
              f"{med([r['uploaded_bytes'] for r in rs]) / 2**20:.1f} | "
              f"{med([r['logical_bytes'] for r in rs]) / 2**20:.1f} | "
              f"{100 * med(frac):.1f}% | {med(vs):.2f}x |")
    p("")
    p("Where the time goes (medians, s): podsnapd's `runsc_checkpoint`, `upload` (the whole "
      "push, which overlaps runsc when it follows its write) and `upload_after_runsc` (the "
      "push's part after runsc exited) phases (its `/metrics` histograms), the rest of the "
      "call, podsnapd's CPU (user+sys) and peak RSS (VmHWM, daemon baseline included); raw: "
      "the runsc command and the fsync.\n")
    p("| case | checkpoint | runsc checkpoint | upload / fsync | upload after runsc | rest | "
      "podsnapd CPU s | podsnapd peak RSS MiB |")
    p("|---|---|---:|---:|---:|---:|---:|---:|")
    if raw:
        p(f"| raw runsc | - | {med([r['ckpt_cmd'] for r in raw]):.2f} | "
          f"{med([r['ckpt_sync'] for r in raw]):.2f} (fsync) | - | - | - | - |")
    for name in CASES:
        for kind in ("first", "second"):
            rs = [r for r in rows if r["case"] == name and r["kind"] == kind]
            if not rs:
                continue
            after = [r['ph_upload_after'] if r.get('overlapped') else r['ph_upload']
                     for r in rs]
            p(f"| {LABEL[name]} | {kind} | {med([r['ph_runsc_ckpt'] for r in rs]):.2f} | "
              f"{med([r['ph_upload'] for r in rs]):.2f} | {med(after):.2f} | "
              f"{med([r['ckpt'] - r['ph_runsc_ckpt'] - a for r, a in zip(rs, after)]):.2f} | "
              f"{med([r['d_cpu'] for r in rs]):.2f} | "
              f"{max(r['d_hwm_kib'] for r in rs) / 1024:.0f} |")
    fs = [r for r in rows if r["case"] == "file"]
    if fs:
        p("")
        p("podsnap fsyncs a file:// store's new objects before it commits (in the times "
          "above); fsyncing them again after the call, a check that nothing was left dirty, "
          "took "
          + ", ".join(
              f"{med([r['store_fsync'] for r in fs if r['kind'] == k]):.2f} s for "
              f"{med([r['stored_bytes'] for r in fs if r['kind'] == k]) / 2**20:.1f} MiB "
              f"({k})" for k in ("first", "second")) + " (medians).")
    p("")
    p("## Targets\n")
    p("| target | measured (median over rounds) | met? |")
    p("|---|---|---|")
    for name in CASES:
        pairs = []
        for rnd in rounds:
            f = [r for r in rows if r["case"] == name and r["round"] == rnd]
            a = [r for r in f if r["kind"] == "first"]
            b = [r for r in f if r["kind"] == "second"]
            if a and b:
                pairs.append((a[0], b[0]))
        if not pairs:
            continue
        frac = med([b["uploaded_bytes"] / b["logical_bytes"] for _, b in pairs])
        tr = med([b["ckpt"] / a["ckpt"] for a, b in pairs])
        p(f"| second snapshot uploads <= 10% of its logical bytes ({LABEL[name]}) | "
          f"{100 * frac:.1f}% (per round: "
          + ", ".join(f"{100 * b['uploaded_bytes'] / b['logical_bytes']:.1f}%" for _, b in pairs)
          + f") | {'met' if frac <= 0.10 else '**missed**'} |")
        parents = sum(b["parent"] == a["snapshot"] for a, b in pairs)
        p(f"| second snapshot's parent is the first ({LABEL[name]}) | {parents} of "
          f"{len(pairs)} rounds | {'yes' if parents == len(pairs) else '**no**'} |")
        p(f"| second checkpoint <= 0.5x the first's time ({LABEL[name]}) | {tr:.2f}x (per "
          "round: " + ", ".join(f"{b['ckpt']:.2f}/{a['ckpt']:.2f} s" for a, b in pairs)
          + f") | {'met' if tr <= 0.5 else '**missed**'} |")
        for kind, i in (("first", 0), ("second", 1)):
            vs = [(pr[i]["ckpt"], rawc[pr[i]["round"]]) for pr in pairs if pr[i]["round"] in rawc]
            if vs:
                v = med([x / y for x, y in vs])
                p(f"| {kind} checkpoint <= 1.1x raw `runsc checkpoint` + fsync, same round "
                  f"({LABEL[name]}) | {v:.2f}x (per round: "
                  + ", ".join(f"{x:.2f}/{y:.2f} s" for x, y in vs)
                  + f") | {'met' if v <= 1.1 else '**missed**'} |")
    ab = {}
    for r in rows:
        if r["case"] in ("file", "ovl"):
            ab.setdefault((r["round"], r["kind"]), {})[r["case"]] = r["ckpt"]
    for kind in ("first", "second"):
        both = [(k[0], v) for k, v in sorted(ab.items()) if k[1] == kind and len(v) == 2]
        if both:
            p(f"| (A/B) {kind} checkpoint, upload while runsc writes / upload after runsc | "
              f"{med([v['ovl'] / v['file'] for _, v in both]):.2f}x (per round: "
              + ", ".join(f"{v['ovl']:.2f}/{v['file']:.2f} s" for _, v in both)
              + ") | - |")
    if zrows:
        p("")
        p("## runsc `--exclude-committed-zero-pages`\n")
        p("Raw `runsc checkpoint --compression=none --leave-running "
          "[--exclude-committed-zero-pages]` + fsync, a fresh sandbox per variant, the variant "
          "order alternating per round; then an offline `podsnapctl image push` of that image "
          "into an empty file:// store, and `runsc restore` of it until the restored counter "
          "prints its next count (checked to be the next one). Two kinds of sandbox: "
          f"**fresh**, a {mib} MiB sandbox in memfill's `mixed` mode (about 1/3 of its pages "
          "zero-filled by the app after it started, 1/3 random, 1/3 text-like); **restored**, a "
          f"{mib} MiB `random` sandbox checkpointed, restored, and then made to zero "
          f"{ZERO_PCT}% of its pages (SIGUSR2), so the zero pages are pages runsc itself "
          "loaded at restore. Medians (min–max).\n")
        p("| sandbox | variant | checkpoint s (runsc + fsync) | runsc s | fsync s | "
          "pages.img MiB | image MiB | podsnap push s | podsnap uploaded MiB | restore s |")
        p("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for sc in ("fresh", "restored"):
            for name in ("plain", "exclude"):
                rs = [r for r in zrows if r["variant"] == name and r.get("scenario") == sc]
                if not rs:
                    continue
                label = ("without the flag" if name == "plain"
                         else "`--exclude-committed-zero-pages`")
                up = [r["push_uploaded"] for r in rs if r.get("push_uploaded") is not None]
                p(f"| {sc} | {label} | {med([r['ckpt'] for r in rs]):.2f} "
                  f"({spread([r['ckpt'] for r in rs])}) | {med([r['ckpt_cmd'] for r in rs]):.2f} "
                  f"| {med([r['ckpt_sync'] for r in rs]):.2f} "
                  f"| {med([r['files'].get('pages.img', 0) for r in rs]) / 2**20:.1f} | "
                  f"{med([r['image_bytes'] for r in rs]) / 2**20:.1f} | "
                  f"{med([r['push'] for r in rs]):.2f} ({spread([r['push'] for r in rs])}) | "
                  f"{med(up) / 2**20 if up else float('nan'):.1f} | "
                  f"{med([r['restore'] for r in rs]):.2f} ({spread([r['restore'] for r in rs])}) |")
        for sc in ("fresh", "restored"):
            pr = {}
            for r in zrows:
                if r.get("scenario") == sc:
                    pr.setdefault(r["round"], {})[r["variant"]] = r
            both = [v for v in pr.values() if "plain" in v and "exclude" in v]
            if not both:
                continue
            p("")
            p(f"{sc}, per round, with the flag / without: checkpoint "
              + ", ".join(f"{v['exclude']['ckpt'] / v['plain']['ckpt']:.2f}x" for v in both)
              + " (runsc alone " + ", ".join(
                  f"{v['exclude']['ckpt_cmd'] / v['plain']['ckpt_cmd']:.2f}x" for v in both)
              + "); image " + ", ".join(
                  f"{v['exclude']['image_bytes'] / v['plain']['image_bytes']:.3f}x" for v in both)
              + "; push " + ", ".join(
                  f"{v['exclude']['push'] / v['plain']['push']:.2f}x" for v in both)
              + "; restore " + ", ".join(
                  f"{v['exclude']['restore'] / v['plain']['restore']:.2f}x" for v in both) + ".")
    p("")
    p("Per round (s): " + "; ".join(
        f"{r['round']} {r['case']}{'' if r['case'] == 'raw' else ' ' + r['kind']}: "
        f"{r['ckpt']:.2f}" for r in rows) + ".")
    return "\n".join(out) + "\n"


def describe(a, elapsed):
    import platform

    def sh(cmd):
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), "?")
    memk = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal"))
    env = (f"BENCH_INCR_MIB={a.mib} BENCH_INCR_ROUNDS={a.rounds} BENCH_INCR_S3={int(a.s3)} "
           f"BENCH_INCR_ZERO={int(a.zero)} BENCH_INCR_SEQ={int(a.seq)} "
           f"BENCH_INCR_CYCLE={int(a.cycle)}")
    scratch = os.path.abspath(a.dir)
    dirty = sh(f"git -C {HERE} status --porcelain --untracked-files=no -- ../crates ../benches "
               "':!../benches/results'")
    return {
        "mib": a.mib, "rounds": a.rounds, "s3": int(a.s3), "zero": int(a.zero),
        "seq": int(a.seq),
        "elapsed": elapsed, "date": time.strftime("%Y-%m-%d"),
        "command": f"{env} make bench-incremental",
        "source": sh(f"git -C {HERE} rev-parse --short HEAD")
        + (" with uncommitted changes" if dirty else ""),
        "machine": f"{os.cpu_count()} CPUs, {cpu}, {memk / 2**20:.1f} GiB RAM, kernel "
                   f"{platform.release()}",
        "runsc": sh("runsc --version | head -n 1"),
        "scratch": f"`{scratch}` on "
                   f"`{sh(f'df --output=source,fstype {scratch} | tail -n 1')}`",
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", help="directory holding podsnapd and podsnapctl")
    ap.add_argument("--dir", help="scratch directory")
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--s3", type=int, default=0)
    ap.add_argument("--zero", type=int, default=1)
    ap.add_argument("--seq", type=int, default=1)
    ap.add_argument("--cycle", type=int, default=1,
                    help="1 (default): also the suspend/resume cycle with --stop checkpoints")
    ap.add_argument("--results", default=os.path.join(HERE, "results", "incremental-latest.md"))
    ap.add_argument("--report-from", metavar="JSON",
                    help="only render the report of an earlier run's .json")
    a = ap.parse_args()
    if a.report_from:
        with open(a.report_from) as f:
            saved = json.load(f)
        sys.stdout.write(report(saved["rows"], saved["zrows"], saved["meta"]))
        return
    if not a.bin or not a.dir:
        ap.error("--bin and --dir are required")
    for t in ("runsc", "gcc"):
        if not shutil.which(t):
            sys.exit(f"incremental: {t} is required")
    if os.getuid() != 0:
        sys.exit("incremental: runsc needs root")
    if a.s3:
        try:
            import moto.server  # noqa: F401
        except ImportError:
            log("moto is not installed: skipping the S3 case")
            a.s3 = 0
    t = time.monotonic()
    b = Bench(a)
    try:
        b.run()
    finally:
        b.cleanup()
        with open(os.path.join(b.work, "rows.json"), "w") as f:
            json.dump({"rows": b.rows, "zrows": b.zrows}, f, indent=1)
    meta = describe(a, time.monotonic() - t)
    text = report(b.rows, b.zrows, meta)
    write_results(a.results, text, {"meta": meta, "rows": b.rows, "zrows": b.zrows})
    log(f"results written to {a.results}")


if __name__ == "__main__":
    main()
