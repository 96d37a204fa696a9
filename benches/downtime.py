#!/usr/bin/env python3
"""Suspend downtime: how long a checkpoint that leaves the sandbox running freezes the
workload, podsnapd (`podsnapctl checkpoint --resume`) against raw `runsc checkpoint
--leave-running`, measured from inside the sandbox.

    downtime.py --bin DIR --dir SCRATCH [--mib 256] [--rounds 5] [--reps 3] [--s3 0|1] [--seq 0|1]
                [--results FILE]

The sandbox runs benches/ticker.c (built static with gcc): MIB MiB of random pages, then a
1 ms ticker (clock_nanosleep) that prints every gap between two wake-ups of 3 ms or more
("GAP <realtime_ns> <gap_us>") and, every 100 ms, the largest gap since its previous report.
gVisor's CLOCK_REALTIME follows the host's, so the harness matches gaps to the host-side
window of each checkpoint command.

Per round, one fresh sandbox, checkpointed once untimed (raw, image dropped: a sandbox's first
checkpoint froze it longer than the next ones here); then REPS times each case, the order of
the cases rotating at every repetition, and (--prime 1, the default) an untimed raw
checkpoint, image dropped, right before every timed one:

* raw:     `runsc checkpoint --compression=none --leave-running --image-path DIR ID` (the
           flags podsnapd passes on runsc 20240729), then the image is removed (untimed);
* podsnap: `podsnapctl checkpoint ID --resume` into podsnapd with a file:// store (and S3
           (moto) with --s3 1): runsc's checkpoint, then the upload while the sandbox runs;
           the snapshot is deleted afterwards (untimed). podsnapd's default uploads after
           runsc for a checkpoint that leaves the sandbox running; with --seq 1, also a
           podsnapd with `--upload-while-checkpointing=always` (reads pages.img while runsc
           writes it): the A/B of that overlap.

Why the priming: how long runsc froze the sandbox depended on what the step before had
done. Here, a checkpoint right after a raw one froze it ~0.8 s more often than not, one right
after a podsnap checkpoint ~0.1 s (raw runsc alone, both ways). With a fixed case order
each case mostly followed the same other case, and that, not podsnap, decided the ratios
(two runs of the same code: 0.94x and 1.95x). Primed, every timed checkpoint follows the
same step.

Frozen time = the largest gap the ticker saw from the command's start until 300 ms after it
returned. A "pair" is one checkpoint of each case in the same repetition (same sandbox, same
minute); the ratio podsnap / raw is taken per pair, then the median. Also recorded: every gap of 3 ms or more in that window (count and sum of their
excess over 1 ms), the command's time, podsnapd's `runsc_checkpoint` phase, and the largest
gap in the second before the command (the idle noise floor: the harness syncs and then waits
that second).
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

PERIOD_US = 1000
REPORT_MS = 100
TAIL = 0.3
TIMEOUT = 600
TARGET = 1.05
GAP = re.compile(rb"GAP (\d+) (\d+) (\d+)\n")
TLINE = re.compile(rb"T (\d+) (\d+) (\d+) (\d+)\n")


def log(msg):
    print(f"== downtime: {msg}", file=sys.stderr, flush=True)


def read_log(path):
    with open(path, "rb") as f:
        return f.read().replace(b"\0", b"")


def window(path, t0, t1):
    """Gaps (ms) whose wake-up falls in [t0, t1] (host realtime, s), and the largest gap any
    100 ms report ending in that window saw (a gap under 3 ms is only in those)."""
    data = read_log(path)
    gaps = [(int(m.group(1)) / 1e9, int(m.group(2)) / 1000, int(m.group(3)) / 1000)
            for m in GAP.finditer(data)]
    gaps = [g for g in gaps if t0 <= g[0] <= t1]
    tmax = [int(m.group(4)) / 1000 for m in TLINE.finditer(data)
            if t0 <= int(m.group(2)) / 1e9 <= t1]
    return gaps, max(tmax, default=0.0)


def last_report(path):
    ts = [int(m.group(2)) / 1e9 for m in TLINE.finditer(read_log(path))]
    return ts[-1] if ts else 0.0


def wait_report_after(path, t, deadline):
    while time.monotonic() < deadline:
        if last_report(path) > t:
            return
        time.sleep(0.01)
    raise RuntimeError(f"the ticker in {path} reported nothing after {t:.3f} (frozen?)")


class Bench(SandboxBench):
    runsc_timeout = TIMEOUT

    def __init__(self, a):
        self.a = a
        self.work = os.path.abspath(os.path.join(a.dir, "downtime"))
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
        for d in ("bin", "proc", "dev", "tmp"):
            os.makedirs(os.path.join(rootfs, d), exist_ok=True)
        subprocess.run(["gcc", "-O2", "-static", "-o", os.path.join(rootfs, "bin", "ticker"),
                        os.path.join(HERE, "ticker.c")], check=True)
        spec = {
            "ociVersion": "1.0.0",
            "process": {"terminal": False, "user": {"uid": 0, "gid": 0},
                        "args": ["/bin/ticker", str(self.a.mib), str(PERIOD_US),
                                 str(REPORT_MS)],
                        "env": ["PATH=/bin"], "cwd": "/"},
            "root": {"path": "rootfs", "readonly": True},
            "hostname": "ticker",
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                       {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"}],
            "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                                     {"type": "mount"}]},
        }
        with open(os.path.join(self.bundle, "config.json"), "w") as f:
            json.dump(spec, f)

    def measure(self, rnd, name, cid, logp, rep=-1):
        settle()
        load = os.getloadavg()[0]
        w0 = time.time()
        row = {"round": rnd, "rep": rep, "pair": f"{rnd}.{rep + 1}", "case": name, "load": load}
        if name in ("raw", "warmup", "prime"):
            img = os.path.join(self.work, f"img-{rnd}")
            os.makedirs(img)
            t0, m0 = time.time(), time.monotonic()
            self.runsc("checkpoint", f"--image-path={img}", "--compression=none",
                       "--leave-running", cid)
            t1, m1 = time.time(), time.monotonic()
            row["image_bytes"] = sum(os.path.getsize(os.path.join(img, f))
                                     for f in os.listdir(img))
        else:
            d = self.daemons[name]
            ph0 = d.phases()
            t0, m0 = time.time(), time.monotonic()
            out = subprocess.run([self.ctl, "--socket", d.sock, "checkpoint", cid, "--resume"],
                                 capture_output=True, timeout=TIMEOUT)
            t1, m1 = time.time(), time.monotonic()
            if out.returncode != 0:
                raise RuntimeError(f"podsnapctl checkpoint failed: {out.stderr.decode()[-2000:]}")
            snap = out.stdout.decode().strip().splitlines()[-1]
            ph1 = d.phases()
            row["ph_runsc_ckpt"] = (ph1.get(("checkpoint", "runsc_checkpoint"), 0)
                                    - ph0.get(("checkpoint", "runsc_checkpoint"), 0))
            row["ph_upload"] = (ph1.get(("checkpoint", "upload"), 0)
                                - ph0.get(("checkpoint", "upload"), 0))
        wait_report_after(logp, t1 + TAIL + 0.15, time.monotonic() + 60)
        gaps, tmax = window(logp, t0, t1 + TAIL)
        idle, idle_tmax = window(logp, w0 - 1.0, t0)
        frozen = max([g[1] for g in gaps] + [tmax])
        row.update(cmd=m1 - m0, frozen_ms=frozen,
                   frozen_rt_ms=max([g[2] for g in gaps], default=0.0),
                   gaps=len(gaps), stall_ms=sum(g[1] - PERIOD_US / 1000 for g in gaps),
                   idle_max_ms=max([g[1] for g in idle] + [idle_tmax]),
                   gap_list=[round(g[1], 2) for g in sorted(gaps, key=lambda g: -g[1])[:5]])
        # Untimed clean-up: the image, the snapshot and its packs.
        if name in ("raw", "warmup", "prime"):
            shutil.rmtree(img)
        else:
            subprocess.run([self.ctl, "--socket", d.sock, "delete", snap],
                           capture_output=True, timeout=120)
            subprocess.run([self.ctl, "image", "gc", "--store", d.store, "--grace", "0s"],
                           capture_output=True, timeout=300, env=d.env)
        self.rows.append(row)
        extra = (f", runsc phase {row['ph_runsc_ckpt']:.3f} s, upload {row['ph_upload']:.3f} s"
                 if name not in ("raw", "warmup", "prime") else "")
        log(f"round {rnd} {name}: frozen {frozen:.1f} ms (command {row['cmd']:.3f} s{extra}; "
            f"{len(gaps)} gaps >= 3 ms, largest {row['gap_list']}; idle max "
            f"{row['idle_max_ms']:.1f} ms)")

    def round(self, rnd, cases):
        cid = f"pd-{rnd}"
        logp = os.path.join(self.work, "log", f"{cid}.log")
        with open(logp, "wb") as out:
            self.live.add(cid)
            self.runsc("run", "--detach", "--bundle", self.bundle, cid, stdout=out)
        deadline = time.monotonic() + TIMEOUT
        while len(TLINE.findall(read_log(logp))) < 5:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cid}: the ticker did not start")
            time.sleep(0.05)
        # The first checkpoint of a sandbox froze it several times longer than the next ones
        # here (whoever ran first paid for it): one untimed raw checkpoint first.
        self.measure(rnd, "warmup", cid, logp)
        for rep in range(self.a.reps):
            k = (rnd - 1 + rep) % len(cases)
            for name in cases[k:] + cases[:k]:
                if self.a.prime:
                    self.measure(rnd, "prime", cid, logp, rep)
                self.measure(rnd, name, cid, logp, rep)
        self.delete(cid)

    def run(self):
        self.build_bundle()
        podsnapd = os.path.join(self.a.bin, "podsnapd")
        cases = ["raw", "file"]
        self.daemons["file"] = Daemon(podsnapd, self.work, "file",
                                      f"file://{self.work}/store", self.root)
        if self.a.seq:
            self.daemons["ovl"] = Daemon(podsnapd, self.work, "ovl",
                                         f"file://{self.work}/store-ovl", self.root,
                                         args=["--upload-while-checkpointing=always"])
            cases.append("ovl")
        if self.a.s3:
            env = self.start_moto()
            self.daemons["s3"] = Daemon(podsnapd, self.work, "s3", "s3://e2e/down",
                                        self.root, env)
            cases.append("s3")
        for rnd in range(1, self.a.rounds + 1):
            self.round(rnd, cases)

LABEL = {"raw": "raw `runsc checkpoint --leave-running`",
         "file": "podsnap `checkpoint --resume`, file:// store",
         "ovl": "podsnap `checkpoint --resume`, file://, upload while runsc writes (`always`)",
         "s3": "podsnap `checkpoint --resume`, S3 (moto)"}


def report(rows, meta):
    out = []
    p = out.append
    warm = [r for r in rows if r["case"] == "warmup"]
    primes = [r for r in rows if r["case"] == "prime"]
    rows = [r for r in rows if r["case"] not in ("warmup", "prime")]
    rounds = sorted({r["round"] for r in rows})
    p("# Suspend downtime: checkpoint of a running sandbox, seen from inside it\n")
    p(f"Command: `{meta['command']}` (whole run {meta['elapsed']:.0f} s), source "
      f"`{meta['source']}`, {meta['date']}.\n")
    p(f"Machine: {meta['machine']}; {meta['runsc']} (default platform), `--network=none`. "
      f"Scratch: {meta['scratch']}. Load average (1 min) before each checkpoint: "
      f"{spread([r['load'] for r in rows], '{:.1f}')}; `uptime` before the run: "
      f"{meta['uptime_before']}; after: {meta['uptime_after']}.\n")
    p(f"Sandbox: `benches/ticker.c`, {meta['mib']} MiB of random pages, then a {PERIOD_US} us "
      "ticker (`clock_nanosleep`) recording every gap between two wake-ups. Frozen time = the "
      "largest gap whose wake-up falls between the command's start and 300 ms after it "
      "returned (gVisor's CLOCK_REALTIME follows the host's). Raw: `runsc checkpoint "
      "--compression=none --leave-running --image-path DIR ID`; podsnap: `podsnapctl "
      "checkpoint ID --resume` (podsnapd runs runsc with those flags, then uploads while the "
      f"sandbox runs). {len(rounds)} rounds, one fresh sandbox each, checkpointed "
      f"{meta.get('reps', 1)} times per case, the case order rotating at every repetition; a "
      "pair is one checkpoint of each case in the same repetition. `sync` and 1 s pause "
      "before every checkpoint (the idle column is the largest gap in that second); medians "
      "(min–max); ratios per pair, then the median. Each sandbox's first checkpoint is an "
      "untimed raw one: the first checkpoint of a sandbox froze it longer than the later ones "
      "in trial runs, and whichever case came first paid for it."
      + (" Every timed checkpoint came right after an untimed raw one (priming; see "
         "benches/downtime.py for why)." if primes else "") + "\n")
    p("| case | frozen ms | gaps >= 3 ms in the window | their excess ms | command s | "
      "runsc phase s | upload s | idle max gap ms | frozen / raw (same pair) |")
    p("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    raw = {r["pair"]: r for r in rows if r["case"] == "raw"}
    for name in ("raw", "file", "ovl", "s3"):
        rs = [r for r in rows if r["case"] == name]
        if not rs:
            continue
        f = [r["frozen_ms"] for r in rs]
        vs = [r["frozen_ms"] / raw[r["pair"]]["frozen_ms"] for r in rs if r["pair"] in raw]
        ph = (f"{med([r['ph_runsc_ckpt'] for r in rs]):.3f} | "
              f"{med([r['ph_upload'] for r in rs]):.3f}" if name != "raw" else "- | -")
        p(f"| {LABEL[name]} | {med(f):.1f} ({spread(f, '{:.1f}')}) | "
          f"{med([r['gaps'] for r in rs]):.0f} | {med([r['stall_ms'] for r in rs]):.1f} | "
          f"{med([r['cmd'] for r in rs]):.3f} | {ph} | "
          f"{med([r['idle_max_ms'] for r in rs]):.1f} | "
          f"{'1.00' if name == 'raw' else f'{med(vs):.3f}x'} |")
    if warm:
        p("")
        p("The untimed first raw checkpoint of each sandbox froze it "
          + ", ".join(f"{r['frozen_ms']:.0f}" for r in warm) + " ms (median "
          f"{med([r['frozen_ms'] for r in warm]):.0f} ms).")
    p("")
    p("## Targets\n")
    p("| target | measured (median over pairs) | met? |")
    p("|---|---|---|")
    for name in ("file", "ovl", "s3"):
        rs = [r for r in rows if r["case"] == name and r["pair"] in raw]
        if not rs:
            continue
        vs = [r["frozen_ms"] / raw[r["pair"]]["frozen_ms"] for r in rs]
        ratio = med(vs)
        medr = med([r["frozen_ms"] for r in rs]) / med([raw[r["pair"]]["frozen_ms"] for r in rs])
        p(f"| podsnap's freeze <= {TARGET:.2f}x runsc's own ({LABEL[name]}) | {ratio:.3f}x "
          "(per pair, podsnap/raw ms: " + ", ".join(
              f"{r['frozen_ms']:.0f}/{raw[r['pair']]['frozen_ms']:.0f}" for r in rs)
          + f"; ratio of the medians {medr:.3f}x) | {'met' if ratio <= TARGET else '**missed**'} |")
    p("")
    p("Largest gaps per checkpoint (ms): " + "; ".join(
        f"{r['pair']} {r['case']}: {', '.join(f'{g:.1f}' for g in r['gap_list']) or '-'}"
        for r in rows) + ".")
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
    return {
        "mib": a.mib, "rounds": a.rounds, "reps": a.reps, "s3": int(a.s3), "seq": int(a.seq),
        "prime": int(a.prime),
        "elapsed": elapsed,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": f"BENCH_DOWN_MIB={a.mib} BENCH_DOWN_ROUNDS={a.rounds} BENCH_DOWN_REPS={a.reps} "
                   f"BENCH_DOWN_S3={int(a.s3)} BENCH_DOWN_SEQ={int(a.seq)} "
                   f"BENCH_DOWN_PRIME={int(a.prime)} make bench-downtime",
        "source": sh(f"git -C {HERE} rev-parse --short HEAD")
        + (" with uncommitted changes" if dirty else ""),
        "machine": f"{os.cpu_count()} CPUs, {cpu}, {memk / 2**20:.1f} GiB RAM, kernel "
                   f"{platform.release()}",
        "runsc": sh("runsc --version | head -n 1"),
        "scratch": f"`{scratch}` on "
                   f"`{sh(f'df --output=source,fstype {scratch} | tail -n 1')}`",
        "uptime_before": uptime_before, "uptime_after": sh("uptime"),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", help="directory holding podsnapd and podsnapctl")
    ap.add_argument("--dir", help="scratch directory")
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3,
                    help="checkpoints per case per sandbox (default 3)")
    ap.add_argument("--s3", type=int, default=0)
    ap.add_argument("--seq", type=int, default=1)
    ap.add_argument("--prime", type=int, default=1,
                    help="1 (default): an untimed raw checkpoint before every timed one")
    ap.add_argument("--results", default=os.path.join(HERE, "results", "downtime-latest.md"))
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
    for t in ("runsc", "gcc"):
        if not shutil.which(t):
            sys.exit(f"downtime: {t} is required")
    if os.getuid() != 0:
        sys.exit("downtime: runsc needs root")
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
