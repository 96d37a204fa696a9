#!/usr/bin/env python3
"""Cold start against restore of a heavy-import Python sandbox: raw runsc and podsnapd.

    coldstart.py --bin DIR --dir SCRATCH [--rounds 5] [--rows 200000] [--s3 0|1]
                 [--results FILE]

The sandbox runs benches/coldstart_app.py with the host's Debian python3 and its numpy,
scipy and pandas (apt-get install python3-numpy python3-scipy python3-pandas): the OCI
bundle's rootfs is an empty directory with the host's /usr bind-mounted read-only (plus
copies of /etc/alternatives and /etc/ld.so.cache, which the BLAS that numpy links needs).
The app prints START, imports the stack, builds a ROWS-row pandas frame and some scipy state,
prints READY, then one "answer N VALUE" line every 10 ms computed from that state.

One untimed cold start first warms the host's page cache (so the cold starts below read the
Python stack from memory, not disk: the cold start measured is the best case). Then per round:

* cold:    `runsc run --detach --bundle B ID` until the first "answer" line in its log;
* snapshots, untimed, of that running sandbox: `podsnapctl checkpoint ID --resume` into
           podsnapd with a file:// store (and S3 (moto) with --s3 1), and raw
           `runsc checkpoint --compression=none --leave-running --image-path DIR ID` (the
           flags podsnapd passes on runsc 20240729); then the sandbox is deleted;
* restore, each into a new id, the order of the cases rotating per round:
  - raw:    `runsc restore --detach --image-path DIR --bundle B NEW`;
  - podsnap: `podsnapctl restore SNAP --bundle B --id NEW --log LOG` (podsnapd downloads the
             image from its store and runs `runsc restore`; on a runsc with
             `restore --background` it serves the image lazily instead);
  - file-cold (with --cold-node 1): the same through a second podsnapd with a fresh state
             dir each round (an empty page cache: a node that never saw the snapshot),
             sharing the file:// store, after the kernel's page cache was dropped;
  timed until the first "answer" line in the new sandbox's log (polled every 2 ms while the
  command runs: an answer before the command returns counts). The restored log must hold
  no START line and the first answer's N must be > 0: the process continued, not restarted.

Before every timed operation the harness syncs and waits a second (as e2e.py does). The
ratio cold / restore is taken per round (same minute), then the median over rounds.
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
from e2e import Daemon, SandboxBench, med, settle, spread, write_results  # noqa: E402

INTERVAL_MS = 10
TIMEOUT = 600
TARGET = 3.0
ANSWER = re.compile(rb"answer (\d+) ")
PYTHON = "/usr/bin/python3"
MODULES = ("numpy", "scipy", "pandas")


def log(msg):
    print(f"== coldstart: {msg}", file=sys.stderr, flush=True)


def read_log(path):
    try:
        with open(path, "rb") as f:
            # A restored sandbox writes at the offset its stdout had: the head is NULs.
            return f.read().replace(b"\0", b"")
    except FileNotFoundError:
        return b""


def wait_answer(path, deadline):
    """Polls every 2 ms until an answer line appears; returns (time, N, log text)."""
    while time.monotonic() < deadline:
        data = read_log(path)
        m = ANSWER.search(data)
        if m:
            return time.monotonic(), int(m.group(1)), data
        time.sleep(0.002)
    raise RuntimeError(f"no answer in {path} before the deadline: {read_log(path)[-2000:]!r}")


def last_answer(path):
    ns = [int(m.group(1)) for m in ANSWER.finditer(read_log(path))]
    return ns[-1] if ns else -1


class Bench(SandboxBench):
    runsc_timeout = TIMEOUT

    def __init__(self, a):
        self.a = a
        self.work = os.path.abspath(os.path.join(a.dir, "coldstart"))
        shutil.rmtree(self.work, ignore_errors=True)
        os.makedirs(os.path.join(self.work, "log"))
        self.root = os.path.join(self.work, "runsc-root")
        self.bundle = os.path.join(self.work, "bundle")
        self.ctl = os.path.join(a.bin, "podsnapctl")
        self.rows = []
        self.live = set()
        self.daemons = {}
        self.moto = None

    def build_bundle(self):
        rootfs = os.path.join(self.bundle, "rootfs")
        for d in ("usr", "proc", "dev", "tmp", "app", "etc"):
            os.makedirs(os.path.join(rootfs, d), exist_ok=True)
        for link, target in (("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64"),
                             ("sbin", "usr/sbin")):
            os.symlink(target, os.path.join(rootfs, link))
        # numpy links libblas.so.3 through /etc/alternatives; ld.so.cache speeds lookups.
        subprocess.run(["cp", "-a", "/etc/alternatives", "/etc/ld.so.cache",
                        os.path.join(rootfs, "etc")], check=True)
        shutil.copy(os.path.join(HERE, "coldstart_app.py"), os.path.join(rootfs, "app"))
        spec = {
            "ociVersion": "1.0.0",
            "process": {"terminal": False, "user": {"uid": 0, "gid": 0},
                        "args": [PYTHON, "-B", "/app/coldstart_app.py", str(self.a.rows),
                                 str(INTERVAL_MS)],
                        "env": ["PATH=/usr/bin:/bin", "HOME=/tmp", "LANG=C.UTF-8",
                                "PYTHONDONTWRITEBYTECODE=1"],
                        "cwd": "/"},
            "root": {"path": "rootfs", "readonly": True},
            "hostname": "coldstart",
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                       {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
                       {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"},
                       {"destination": "/usr", "type": "bind", "source": "/usr",
                        "options": ["rbind", "ro"]}],
            "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                                     {"type": "mount"}]},
        }
        with open(os.path.join(self.bundle, "config.json"), "w") as f:
            json.dump(spec, f)

    def cold(self, cid):
        logp = os.path.join(self.work, "log", f"{cid}.log")
        settle()
        load = os.getloadavg()[0]
        t0 = time.monotonic()
        with open(logp, "wb") as out:
            self.live.add(cid)
            self.runsc("run", "--detach", "--bundle", self.bundle, cid, stdout=out)
        t1 = time.monotonic()
        t2, n, data = wait_answer(logp, t0 + TIMEOUT)
        m = re.search(rb"READY ([\d.]+)", data)
        return logp, {"cold": t2 - t0, "cold_cmd": t1 - t0, "cold_load": load,
                      "app_ready": float(m.group(1)) if m else None}

    def restore(self, name, rnd, src, img_or_snap):
        """Runs the restore command and polls the new sandbox's log meanwhile: the first answer
        counts when it appears, even before the command returns."""
        cid = f"pc-{rnd}-{name}-r"
        logp = os.path.join(self.work, "log", f"{cid}.log")
        settle()
        load = os.getloadavg()[0]
        row = {}
        self.live.add(cid)
        # Files, not pipes: a detached sandbox inherits runsc's stdio and keeps it open.
        out = open(logp if name == "raw" else logp + ".cmd-out", "wb")
        err = open(logp + ".cmd-err", "w+b")
        if name == "raw":
            cmd = ["runsc", "--root", self.root, "--network=none", "restore", "--detach",
                   f"--image-path={img_or_snap}", f"--bundle={self.bundle}", cid]
        else:
            if name == "file-cold":
                # A node that never saw the snapshot: fresh state dir, kernel caches dropped.
                old = self.daemons.pop(name, None)
                if old is not None:
                    old.stop()
                self.daemons[name] = Daemon(os.path.join(self.a.bin, "podsnapd"), self.work,
                                            f"filecold{rnd}", f"file://{self.work}/store",
                                            self.root)
                os.sync()
                with open("/proc/sys/vm/drop_caches", "w") as f:
                    f.write("3\n")
                time.sleep(1.0)
            d = self.daemons[name]
            ph0 = d.phases()
            cmd = [self.ctl, "--socket", d.sock, "restore", img_or_snap, "--bundle",
                   self.bundle, "--id", cid, "--log", logp]
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        t1 = t2 = None
        n, data = None, b""
        while t1 is None or t2 is None:
            now = time.monotonic()
            if now > t0 + TIMEOUT:
                proc.kill()
                raise RuntimeError(f"{cid}: no answer within {TIMEOUT} s: {data[-2000:]!r}")
            if t2 is None:
                data = read_log(logp)
                m = ANSWER.search(data)
                if m:
                    t2, n = now, int(m.group(1))
            if t1 is None and proc.poll() is not None:
                t1 = now
                if proc.returncode != 0:
                    err.seek(0)
                    raise RuntimeError(f"{' '.join(cmd[:4])} failed: "
                                       f"{err.read().decode(errors='replace')[-2000:]}")
            time.sleep(0.002)
        out.close()
        err.close()
        if name != "raw":
            ph1 = d.phases()
            for ph in ("download", "lazy_mount", "runsc_restore"):
                row[f"ph_{ph}"] = ph1.get(("restore", ph), 0) - ph0.get(("restore", ph), 0)
        if b"START" in data or n == 0:
            raise RuntimeError(f"{cid}: the restored app started over (first answer {n})")
        row.update(restore=t2 - t0, restore_cmd=t1 - t0, restore_load=load, first_answer=n)
        self.delete(cid)
        return row

    def round(self, rnd, cases):
        src = f"pc-{rnd}-cold"
        logp, cold = self.cold(src)
        log(f"round {rnd}: cold start to first answer {cold['cold']:.2f} s (runsc run "
            f"{cold['cold_cmd']:.2f} s, app's own import+build {cold['app_ready']} s)")
        snaps = {}
        for name in cases:
            if name == "file-cold":
                continue  # restores the `file` case's snapshot
            if name == "raw":
                img = os.path.join(self.work, f"img-{rnd}")
                os.makedirs(img)
                t = time.monotonic()
                self.runsc("checkpoint", f"--image-path={img}", "--compression=none",
                           "--leave-running", src)
                snaps[name] = img
                size = sum(os.path.getsize(os.path.join(img, f)) for f in os.listdir(img))
                log(f"round {rnd}: raw checkpoint {time.monotonic() - t:.2f} s, "
                    f"image {size / 2**20:.0f} MiB")
            else:
                d = self.daemons[name]
                t = time.monotonic()
                out = subprocess.run([self.ctl, "--socket", d.sock, "checkpoint", src,
                                      "--resume"], capture_output=True, timeout=TIMEOUT)
                if out.returncode != 0:
                    raise RuntimeError(
                        f"podsnapctl checkpoint failed: {out.stderr.decode()[-2000:]}")
                snaps[name] = out.stdout.decode().strip().splitlines()[-1]
                log(f"round {rnd}: podsnap {name} checkpoint {time.monotonic() - t:.2f} s")
        self.delete(src)
        if "file-cold" in cases:
            snaps["file-cold"] = snaps["file"]
        k = (rnd - 1) % len(cases)
        for name in cases[k:] + cases[:k]:
            r = self.restore(name, rnd, src, snaps[name])
            r.update(cold, round=rnd, case=name, ratio=cold["cold"] / r["restore"])
            self.rows.append(r)
            log(f"round {rnd} {name}: restore to first answer {r['restore']:.2f} s "
                f"(command {r['restore_cmd']:.2f} s), cold / restore {r['ratio']:.1f}x")
        for name, s in snaps.items():
            if name == "file-cold":
                continue
            if name == "raw":
                shutil.rmtree(s)
            else:
                d = self.daemons[name]
                subprocess.run([self.ctl, "--socket", d.sock, "delete", s],
                               capture_output=True, timeout=120)
                subprocess.run([self.ctl, "image", "gc", "--store", d.store, "--grace", "0s"],
                               capture_output=True, timeout=300, env=d.env)

    def run(self):
        self.build_bundle()
        podsnapd = os.path.join(self.a.bin, "podsnapd")
        cases = ["raw", "file"]
        self.daemons["file"] = Daemon(podsnapd, self.work, "file",
                                      f"file://{self.work}/store", self.root)
        if self.a.s3:
            env = self.start_moto()
            self.daemons["s3"] = Daemon(podsnapd, self.work, "s3", "s3://e2e/cold",
                                        self.root, env)
            cases.append("s3")
        if self.a.cold_node:
            cases.append("file-cold")
        log("warm-up cold start (untimed: fills the host page cache)")
        _, w = self.cold("pc-0-warmup")
        self.delete("pc-0-warmup")
        log(f"warm-up: {w['cold']:.2f} s")
        for rnd in range(1, self.a.rounds + 1):
            self.round(rnd, cases)

LABEL = {"raw": "raw `runsc restore`", "file": "podsnap restore, file:// store",
         "file-cold": "podsnap restore on a cold node, file:// store",
         "s3": "podsnap restore, S3 (moto)"}
CASES = ("raw", "file", "file-cold", "s3")


def report(rows, meta):
    out = []
    p = out.append
    rounds = sorted({r["round"] for r in rows})
    cold = {r["round"]: r for r in rows}
    colds = [cold[n]["cold"] for n in rounds]
    p("# Cold start against restore: a heavy-import Python sandbox\n")
    p(f"Command: `{meta['command']}` (whole run {meta['elapsed']:.0f} s), source "
      f"`{meta['source']}`, {meta['date']}.\n")
    p(f"Machine: {meta['machine']}; {meta['runsc']} (default platform), `--network=none`. "
      f"Scratch: {meta['scratch']}. Load average (1 min) before each timed start or restore: "
      f"{spread([r['cold_load'] for r in rows] + [r['restore_load'] for r in rows], '{:.1f}')}"
      f"; `uptime` before the run: {meta['uptime_before']}; after: {meta['uptime_after']}.\n")
    p(f"Sandbox: `benches/coldstart_app.py` under Debian's {meta['python']} with "
      f"{meta['stack']} from the host, its `/usr` bind-mounted read-only into an empty rootfs; "
      f"it imports numpy, pandas and scipy (linalg, sparse, stats, optimize, signal), builds a "
      f"{meta['rows']}-row frame, two group-bys, a sparse matrix and a solved 300x300 system, "
      f"then answers every {INTERVAL_MS} ms. Time to first answer: from the command's start "
      "until the sandbox's first `answer` line is in its log (polled every 2 ms). Cold: `runsc "
      "run --detach`. Restore: of a snapshot of that sandbox taken after it answered (raw "
      "`runsc checkpoint --compression=none --leave-running`; podsnap `podsnapctl checkpoint "
      "--resume`, which passes the same flags). The host's page cache holds the Python stack "
      "(an untimed warm-up start ran first), so the cold starts are the best case. "
      f"{len(rounds)} rounds; `sync` and a 1 s pause before every timed operation; medians "
      "(min–max); ratios are per round, then the median.\n")
    p("| case | time to first answer s | command returned s | cold / restore (same round) |")
    p("|---|---:|---:|---:|")
    p(f"| cold start, `runsc run` | {med(colds):.2f} ({spread(colds)}) | "
      f"{med([cold[n]['cold_cmd'] for n in rounds]):.2f} | 1.0 |")
    for name in CASES:
        rs = [r for r in rows if r["case"] == name]
        if not rs:
            continue
        t = [r["restore"] for r in rs]
        p(f"| {LABEL[name]} | {med(t):.2f} ({spread(t)}) | "
          f"{med([r['restore_cmd'] for r in rs]):.2f} | **{med([r['ratio'] for r in rs]):.1f}x** "
          f"({spread([r['ratio'] for r in rs], '{:.1f}')}) |")
    ready = [cold[n]["app_ready"] for n in rounds if cold[n]["app_ready"] is not None]
    p("")
    p(f"Where the cold start goes: the app's own clock from its first line to READY (imports "
      f"and state) {med(ready):.2f} s (median); `runsc run --detach` itself returned after "
      f"{med([cold[n]['cold_cmd'] for n in rounds]):.2f} s.")
    ps = [r for r in rows if r["case"] != "raw"]
    if ps:
        p("Where podsnap's restore goes (medians, s; podsnapd's `/metrics` phases): " + "; ".join(
            f"{LABEL[n]}: download {med([r['ph_download'] for r in ps if r['case'] == n]):.2f}, "
            f"lazy mount {med([r.get('ph_lazy_mount', 0) for r in ps if r['case'] == n]):.2f}, "
            f"runsc restore {med([r['ph_runsc_restore'] for r in ps if r['case'] == n]):.2f}, "
            f"command {med([r['restore_cmd'] for r in ps if r['case'] == n]):.2f}, "
            f"to first answer {med([r['restore'] for r in ps if r['case'] == n]):.2f}"
            for n in CASES if any(r["case"] == n for r in ps)) + ".")
    p("")
    p("## Targets\n")
    p("| target | measured (median over rounds) | met? |")
    p("|---|---|---|")
    raw = {r["round"]: r for r in rows if r["case"] == "raw"}
    for name in CASES[1:]:
        rs = [r for r in rows if r["case"] == name]
        if not rs:
            continue
        ratio = med([r["ratio"] for r in rs])
        p(f"| podsnap restore >= {TARGET:.0f}x faster than a cold start ({LABEL[name]}) | "
          f"{ratio:.1f}x (per round: " + ", ".join(f"{r['ratio']:.1f}x" for r in rs)
          + f") | {'met' if ratio >= TARGET else '**missed**'} |")
        vs = [r["restore"] / raw[r["round"]]["restore"] for r in rs if r["round"] in raw]
        if vs:
            p(f"| (for reference) podsnap restore / raw `runsc restore` ({LABEL[name]}) | "
              f"{med(vs):.2f}x (per round: " + ", ".join(f"{v:.2f}x" for v in vs) + ") | - |")
    rr = [r["ratio"] for r in rows if r["case"] == "raw"]
    if rr:
        p(f"| (baseline) raw `runsc restore` against cold start | {med(rr):.1f}x | - |")
    p("")
    p("Per round (s): " + "; ".join(
        f"{n}: cold {cold[n]['cold']:.2f}, " + ", ".join(
            f"{r['case']} {r['restore']:.2f}" for r in rows if r["round"] == n)
        for n in rounds) + ".")
    return "\n".join(out) + "\n"


def describe(a, elapsed, uptime_before):
    import platform

    def sh(cmd):
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), "?")
    memk = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal"))
    scratch = os.path.abspath(a.dir)
    dirty = sh(f"git -C {HERE} status --porcelain --untracked-files=no -- ../crates ../benches "
               "':!../benches/results'")
    stack = sh(f"{PYTHON} -c 'import numpy, scipy, pandas; print(\"numpy \" + numpy.__version__ "
               "+ \", scipy \" + scipy.__version__ + \", pandas \" + pandas.__version__)'")
    return {
        "rounds": a.rounds, "rows": a.rows, "s3": int(a.s3), "elapsed": elapsed,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": f"BENCH_COLD_ROUNDS={a.rounds} BENCH_COLD_ROWS={a.rows} "
                   f"BENCH_COLD_S3={int(a.s3)} make bench-coldstart",
        "source": sh(f"git -C {HERE} rev-parse --short HEAD")
        + (" with uncommitted changes" if dirty else ""),
        "machine": f"{os.cpu_count()} CPUs, {cpu}, {memk / 2**20:.1f} GiB RAM, kernel "
                   f"{platform.release()}",
        "runsc": sh("runsc --version | head -n 1"),
        "python": sh(f"{PYTHON} --version"),
        "stack": stack,
        "scratch": f"`{scratch}` on "
                   f"`{sh(f'df --output=source,fstype {scratch} | tail -n 1')}`",
        "uptime_before": uptime_before, "uptime_after": sh("uptime"),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", help="directory holding podsnapd and podsnapctl")
    ap.add_argument("--dir", help="scratch directory")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rows", type=int, default=200000)
    ap.add_argument("--s3", type=int, default=0)
    ap.add_argument("--cold-node", type=int, default=0,
                    help="1: also restore through a podsnapd with an empty cache each round")
    ap.add_argument("--results", default=os.path.join(HERE, "results", "coldstart-latest.md"))
    ap.add_argument("--report-from", metavar="JSON",
                    help="only render the report of an earlier run's .json")
    a = ap.parse_args()
    if a.report_from:
        with open(a.report_from) as f:
            saved = json.load(f)
        sys.stdout.write(report(saved["rows"], saved["meta"]))
        return
    if not a.bin or not a.dir:
        ap.error("--bin and --dir are required")
    if not shutil.which("runsc"):
        sys.exit("coldstart: runsc is required")
    if os.getuid() != 0:
        sys.exit("coldstart: runsc needs root")
    r = subprocess.run([PYTHON, "-c", "import " + ", ".join(MODULES)], capture_output=True)
    if r.returncode != 0:
        sys.exit(f"coldstart: {PYTHON} cannot import {', '.join(MODULES)} (apt-get install "
                 "python3-numpy python3-scipy python3-pandas)")
    if a.s3:
        try:
            import moto.server  # noqa: F401
        except ImportError:
            log("moto is not installed: skipping the S3 case")
            a.s3 = 0
    uptime_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    t = time.monotonic()
    b = Bench(a)
    try:
        b.run()
    finally:
        b.cleanup()
        with open(os.path.join(b.work, "rows.json"), "w") as f:
            json.dump({"rows": b.rows}, f, indent=1)
    meta = describe(a, time.monotonic() - t, uptime_before)
    text = report(b.rows, meta)
    write_results(a.results, text, {"meta": meta, "rows": b.rows})
    log(f"results written to {a.results}")


if __name__ == "__main__":
    main()
