#!/usr/bin/env python3
"""End-to-end checkpoint and restore of a real runsc sandbox: podsnapd against raw runsc.

    e2e.py --bin DIR --dir SCRATCH [--mib 1024] [--rounds 3] [--s3 0|1] [--results FILE]

The sandbox runs benches/memfill.c (built static with gcc): it touches MIB MiB of memory
(1/3 zero, 1/3 random, 1/3 text-like pages) and then prints "Count: N" every 20 ms. Per round
and per case a fresh sandbox is started and, once it counts, checkpointed and restored:

* raw: `runsc checkpoint --image-path DIR [--compression=none] ID` (the image flags
  podsnapd passes to this runsc) + fsync of the image files and DIR (local disk), then `runsc restore --detach --image-path DIR --bundle B NEW`;
* podsnap (file): podsnapd with a file:// store on the same disk: `podsnapctl checkpoint ID
  --stop` until it prints the snapshot id (committed), then `podsnapctl restore SNAP --bundle B
  --id NEW`;
* podsnap (S3): the same against moto (`--s3 1`, needs `python3 -m moto.server`);
* podsnap, no page cache (`--nocache 1`): the file:// case with `--cache-max-bytes 0`.

podsnapd links the image it checkpointed into its node's page cache, so a restore on the
checkpointing node reads no pages from the store. The timed restore (the ratio's) therefore
runs on a second podsnapd with its own state dir and cache, sharing the store: another node,
cold cache. The same snapshot is then restored once more on the checkpointing node
("same-node restore", reported apart).

Checkpoint-to-durable ends when the command (and, raw, the fsync) returns; podsnap's file://
store fsyncs the objects a manifest names before committing it, so its command returns durable
(the harness fsyncs the new objects again afterwards as a check: ~0 s when nothing was left
dirty). Restore-to-running
ends when the restored sandbox prints a count beyond the last one before the checkpoint (same
criterion on every side); the first restored count must be the next one (the memory was
restored, not restarted). The order of the cases alternates between rounds, and before every
timed operation the harness syncs and waits a second, so no case pays for the previous one's
writeback. podsnapd's CPU time and peak RSS per operation come from /proc (utime+stime,
VmHWM reset through clear_refs), its phase timings from its /metrics histograms.

Writes every measurement as JSON (next to --results) and a markdown report (--results) with
the medians, the spread and the podsnap / raw ratios.
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
INTERVAL_MS = 20
COUNT = re.compile(rb"Count: (\d+)\n")
TIMEOUT = 900


def log(msg):
    print(f"== e2e: {msg}", file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def counts(path):
    try:
        with open(path, "rb") as f:
            data = f.read().replace(b"\0", b"")
    except FileNotFoundError:
        return []
    return [int(m.group(1)) for m in COUNT.finditer(data)]


def wait_count_above(path, above, deadline):
    """Polls `path` every 2 ms until a count > `above` appears; returns the first such."""
    while time.monotonic() < deadline:
        c = [n for n in counts(path) if n > above]
        if c:
            return c[0]
        time.sleep(0.002)
    raise RuntimeError(f"no count above {above} in {path} before the deadline")


def proc_cpu(pid):
    """user+sys seconds of a process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reset_hwm(pid):
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def hwm_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def settle():
    """The same starting point for every timed operation: nothing left dirty by the previous
    step (its image, the store's objects) being written back meanwhile, and a moment for a
    deleted sandbox's memory to be released."""
    os.sync()
    time.sleep(1.0)


def fsync_path(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(d):
    """fsync every file under d, then every directory; returns seconds taken."""
    t = time.monotonic()
    for p in files_under(d):
        fsync_path(p)
    for root, _, _ in os.walk(d):
        fsync_path(root)
    return time.monotonic() - t


def sizes(d):
    return {os.path.relpath(p, d): os.path.getsize(p) for p in files_under(d)}


def raw_checkpoint_flags():
    """The image flags podsnapd passes to this runsc: `--compression=none` where runsc has it
    (20240729; podsnap compresses with zstd itself), none on older releases (one flate
    `checkpoint.img`). The raw baseline uses the same."""
    out = subprocess.run(["runsc", "checkpoint", "--help"], capture_output=True, text=True)
    return ["--compression=none"] if "-compression" in out.stdout + out.stderr else []


def files_under(d):
    out = {}
    for root, _, names in os.walk(d):
        for n in names:
            p = os.path.join(root, n)
            try:
                out[p] = os.stat(p).st_mtime_ns
            except FileNotFoundError:
                pass
    return out


def du(d):
    return sum(os.path.getsize(p) for p in files_under(d))


class Daemon:
    """A podsnapd with its own socket, state dir and metrics port."""

    def __init__(self, binary, work, name, store, runsc_root, env=None, args=()):
        self.sock = os.path.join(work, f"{name}.sock")
        self.mport = free_port()
        self.logf = open(os.path.join(work, "log", f"podsnapd-{name}.log"), "wb")
        cmd = [binary, "--listen", f"unix://{self.sock}", "--store", store,
               "--runsc-root", runsc_root, "--state-dir", os.path.join(work, f"state-{name}"),
               "--runsc-flag=--network=none", "--metrics-listen", f"127.0.0.1:{self.mport}",
               *args]
        self.store, self.env = store, {**os.environ, **(env or {})}
        self.binary, self.extra_env = binary, env
        self.state = os.path.join(work, f"state-{name}")
        self.proc = subprocess.Popen(cmd, stdout=self.logf, stderr=subprocess.STDOUT,
                                     env=self.env)
        for _ in range(200):
            if os.path.exists(self.sock):
                break
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        if not os.path.exists(self.sock):
            raise RuntimeError(f"podsnapd {name} did not start (see {self.logf.name})")

    def phases(self):
        """{(operation, phase): seconds so far} from the metrics histograms' sums."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.mport}/metrics",
                                      timeout=10).read().decode()
        out = {}
        for m in re.finditer(r'^podsnap_phase_duration_seconds_sum\{([^}]*)\} (\S+)$', text,
                             re.M):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            out[(labels.get("operation"), labels.get("phase"))] = float(m.group(2))
        return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logf.close()


class SandboxBench:
    """What every bench that runs sandboxes and podsnapd shares: runsc under the bench's own
    root, a moto S3 server, and cleanup. Subclasses set root, live, daemons, moto, work."""
    runsc_timeout = TIMEOUT

    def start_moto(self):
        port = free_port()
        self.moto_log = open(os.path.join(self.work, "log", "moto.log"), "wb")
        self.moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(port)],
                                     stdout=self.moto_log, stderr=subprocess.STDOUT)
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except Exception:
                time.sleep(0.1)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/e2e", method="PUT")
        urllib.request.urlopen(req, timeout=10)
        return {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ALLOW_HTTP": "true",
                "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
                "AWS_REGION": "us-east-1"}

    def runsc(self, *args, check=True, stdout=None):
        cmd = ["runsc", "--root", self.root, "--network=none", *args]
        r = subprocess.run(cmd, stdout=stdout if stdout else subprocess.PIPE,
                           stderr=subprocess.STDOUT if stdout else subprocess.PIPE,
                           timeout=self.runsc_timeout)
        if check and r.returncode != 0:
            err = (r.stderr or b"").decode(errors="replace")[-2000:]
            raise RuntimeError(f"runsc {' '.join(args)} failed: {err}")
        return r

    def delete(self, cid):
        self.runsc("delete", "--force", cid, check=False)
        self.live.discard(cid)

    def cleanup(self):
        for cid in list(self.live):
            self.delete(cid)
        for d in self.daemons.values():
            d.stop()
        if self.moto:
            self.moto.terminate()
            self.moto.wait()
            self.moto_log.close()


def write_results(path, text, data):
    """The report `text` as markdown at `path`, `data` beside it as .json, the text on stdout."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    with open(os.path.splitext(path)[0] + ".json", "w") as f:
        json.dump(data, f, indent=1)
    print(text)


class Bench(SandboxBench):
    def __init__(self, a):
        self.a = a
        self.work = os.path.abspath(os.path.join(a.dir, "e2e"))
        shutil.rmtree(self.work, ignore_errors=True)
        os.makedirs(os.path.join(self.work, "log"))
        self.root = os.path.join(self.work, "runsc-root")
        self.bundle = os.path.join(self.work, "bundle")
        self.ctl = os.path.join(a.bin, "podsnapctl")
        self.rows = []
        self.live = set()
        self.daemons = {}
        self.moto = None

    # ---- setup ----------------------------------------------------------------------------
    def build_bundle(self):
        rootfs = os.path.join(self.bundle, "rootfs")
        for d in ("bin", "proc", "dev", "tmp"):
            os.makedirs(os.path.join(rootfs, d), exist_ok=True)
        subprocess.run(["gcc", "-O2", "-static", "-o", os.path.join(rootfs, "bin", "memfill"),
                        os.path.join(HERE, "memfill.c")], check=True)
        spec = {
            "ociVersion": "1.0.0",
            "process": {"terminal": False, "user": {"uid": 0, "gid": 0},
                        "args": ["/bin/memfill", str(self.a.mib), str(INTERVAL_MS)],
                        "env": ["PATH=/bin"], "cwd": "/"},
            "root": {"path": "rootfs", "readonly": True},
            "hostname": "memfill",
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                       {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"}],
            "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                                     {"type": "mount"}]},
        }
        with open(os.path.join(self.bundle, "config.json"), "w") as f:
            json.dump(spec, f)

    # ---- runsc ----------------------------------------------------------------------------

    def start_sandbox(self, cid):
        logp = os.path.join(self.work, "log", f"{cid}.log")
        with open(logp, "wb") as out:
            self.live.add(cid)
            t = time.monotonic()
            self.runsc("run", "--detach", "--bundle", self.bundle, cid, stdout=out)
        # Counting means the memory is filled; let it count a little.
        wait_count_above(logp, 4, time.monotonic() + TIMEOUT)
        log(f"{cid}: {self.a.mib} MiB filled and counting after {time.monotonic() - t:.1f} s")
        return logp

    # ---- one case -------------------------------------------------------------------------
    def restore(self, d, snap, dst, dst_log, before, row, prefix):
        """One timed `podsnapctl restore` through daemon `d`; fills row[prefix + ...]; returns
        the first count the restored sandbox printed."""
        pid = d.proc.pid
        settle()
        ph0, cpu0 = d.phases(), proc_cpu(pid)
        reset_hwm(pid)
        t0 = time.monotonic()
        self.live.add(dst)
        out = subprocess.run([self.ctl, "--socket", d.sock, "restore", snap, "--bundle",
                              self.bundle, "--id", dst, "--log", dst_log],
                             capture_output=True, timeout=TIMEOUT)
        t1 = time.monotonic()
        if out.returncode != 0:
            raise RuntimeError(f"podsnapctl restore failed: {out.stderr.decode()[-2000:]}")
        first = wait_count_above(dst_log, before, t0 + TIMEOUT)
        t2 = time.monotonic()
        ph1, cpu1, hwm = d.phases(), proc_cpu(pid), hwm_kib(pid)
        p = prefix
        row.update({f"{p}restore": t2 - t0, f"{p}restore_cmd": t1 - t0,
                    f"{p}d_cpu_restore": cpu1 - cpu0, f"{p}d_hwm_restore": hwm,
                    f"{p}ph_download": ph1.get(("restore", "download"), 0)
                    - ph0.get(("restore", "download"), 0),
                    f"{p}ph_runsc_restore": ph1.get(("restore", "runsc_restore"), 0)
                    - ph0.get(("restore", "runsc_restore"), 0)})
        return first

    def fresh_node(self, key, rnd):
        """The "other node" `key`, restarted with a new state dir (an empty page cache):
        memfill fills memory the same way every round, so a node that restored an earlier
        round would hold most of this round's pages."""
        old = self.daemons.get(key)
        if old is None:
            return None
        old.stop()
        shutil.rmtree(old.state, ignore_errors=True)
        self.daemons[key] = Daemon(old.binary, self.work, f"{key}{rnd}", old.store, self.root,
                                   old.extra_env)
        return self.daemons[key]

    def case(self, rnd, name):
        src, dst = f"pb-{rnd}-{name}-src-x", f"pb-{rnd}-{name}-dst-x"
        src_log = self.start_sandbox(src)
        dst_log = os.path.join(self.work, "log", f"{dst}.log")
        row = {"round": rnd, "case": name}
        settle()
        load = os.getloadavg()[0]
        if name == "raw":
            img = os.path.join(self.work, f"img-{rnd}")
            os.makedirs(img)
            t0 = time.monotonic()
            self.runsc("checkpoint", f"--image-path={img}", *raw_checkpoint_flags(), src)
            t1 = time.monotonic()
            fsync_tree(img)
            t2 = time.monotonic()
            row.update(ckpt=t2 - t0, ckpt_cmd=t1 - t0, ckpt_sync=t2 - t1,
                       image_bytes=sum(sizes(img).values()))
            before = counts(src_log)[-1]
            self.delete(src)
            settle()
            t0 = time.monotonic()
            with open(dst_log, "wb") as out:
                self.live.add(dst)
                self.runsc("restore", "--detach", f"--image-path={img}",
                           f"--bundle={self.bundle}", dst, stdout=out)
            t1 = time.monotonic()
            first = wait_count_above(dst_log, before, t0 + TIMEOUT)
            t2 = time.monotonic()
            row.update(restore=t2 - t0, restore_cmd=t1 - t0)
            shutil.rmtree(img)
        else:
            d = self.daemons[name]
            pid = d.proc.pid
            store_dir = d.store[len("file://"):] if d.store.startswith("file://") else None
            seen = files_under(store_dir) if store_dir else {}
            ph0, cpu0 = d.phases(), proc_cpu(pid)
            reset_hwm(pid)
            t0 = time.monotonic()
            out = subprocess.run([self.ctl, "--socket", d.sock, "checkpoint", src, "--stop"],
                                 capture_output=True, timeout=TIMEOUT)
            t1 = time.monotonic()
            if out.returncode != 0:
                raise RuntimeError(f"podsnapctl checkpoint failed: {out.stderr.decode()[-2000:]}")
            snap = out.stdout.decode().strip().splitlines()[-1]
            ph1, cpu1, hwm = d.phases(), proc_cpu(pid), hwm_kib(pid)
            row.update(ckpt=t1 - t0, ckpt_cmd=t1 - t0, d_cpu_ckpt=cpu1 - cpu0,
                       d_hwm_ckpt=hwm, snapshot=snap,
                       ph_runsc_ckpt=ph1.get(("checkpoint", "runsc_checkpoint"), 0)
                       - ph0.get(("checkpoint", "runsc_checkpoint"), 0),
                       ph_upload=ph1.get(("checkpoint", "upload"), 0)
                       - ph0.get(("checkpoint", "upload"), 0),
                       ph_after_runsc=ph1.get(("checkpoint", "upload_after_runsc"), 0)
                       - ph0.get(("checkpoint", "upload_after_runsc"), 0))
            m = json.loads(subprocess.run(
                [self.ctl, "--socket", d.sock, "inspect", snap, "--json"],
                capture_output=True, check=True).stdout)
            row["image_bytes"] = m["logical_bytes"]
            row["uploaded_bytes"] = m["uploaded_bytes"]
            if store_dir:
                # podsnap fsyncs a file:// store's new objects before it commits (in ckpt);
                # an fsync of them after the call checks that nothing was left dirty
                # (should cost ~0).
                now = files_under(store_dir)
                new = [p for p, mt in now.items() if seen.get(p) != mt]
                t2 = time.monotonic()
                for p in new:
                    fsync_path(p)
                for dd in {os.path.dirname(p) for p in new}:
                    fsync_path(dd)
                row["store_fsync"] = time.monotonic() - t2
                row["stored_bytes"] = sum(os.path.getsize(p) for p in new)
            before = counts(src_log)[-1]
            self.delete(src)
            # Another node (cold cache), timed for the ratio; then the checkpointing node.
            other = self.fresh_node(f"{name}-b", rnd)
            other = other or d
            first = self.restore(other, snap, dst, dst_log, before, row, "")
            if other is not d:
                self.delete(dst)
                here = f"{dst}-here"
                here_log = os.path.join(self.work, "log", f"{here}.log")
                again = self.restore(d, snap, here, here_log, before, row, "here_")
                if again != before + 1:
                    raise RuntimeError(f"{name} round {rnd}: same-node restore resumed at "
                                       f"{again}, expected {before + 1}")
                self.delete(here)
            # Untimed: drop the snapshot and its packs so a long run does not fill the disk
            # (or moto's memory).
            subprocess.run([self.ctl, "--socket", d.sock, "delete", snap],
                           capture_output=True, timeout=120)
            subprocess.run([self.ctl, "image", "gc", "--store", d.store, "--grace", "0s"],
                           capture_output=True, timeout=300, env=d.env)
        if first != before + 1:
            raise RuntimeError(f"{name} round {rnd}: the counter was at {before} when "
                               f"checkpointed and restored at {first} (expected {before + 1})")
        row.update(count_before=before, count_after=first, load=load)
        if dst in self.live:
            self.delete(dst)
        self.rows.append(row)
        log(f"round {rnd} {name}: checkpoint {row['ckpt']:.2f} s, restore {row['restore']:.2f} s "
            f"(image {row['image_bytes'] / 2**20:.0f} MiB, counter {before} -> {first})")

    def run(self):
        self.build_bundle()
        podsnapd = os.path.join(self.a.bin, "podsnapd")
        cases = ["raw", "file"]
        self.daemons["file"] = Daemon(podsnapd, self.work, "file",
                                      f"file://{self.work}/store", self.root)
        self.daemons["file-b"] = Daemon(podsnapd, self.work, "file-b",
                                        f"file://{self.work}/store", self.root)
        if self.a.s3:
            env = self.start_moto()
            self.daemons["s3"] = Daemon(podsnapd, self.work, "s3", "s3://e2e/snaps",
                                        self.root, env)
            self.daemons["s3-b"] = Daemon(podsnapd, self.work, "s3-b", "s3://e2e/snaps",
                                          self.root, env)
            cases.append("s3")
        if self.a.nocache:
            self.daemons["nocache"] = Daemon(podsnapd, self.work, "nocache",
                                             f"file://{self.work}/store-nocache", self.root,
                                             args=("--cache-max-bytes", "0"))
            cases.append("nocache")
        for rnd in range(1, self.a.rounds + 1):
            order = cases if rnd % 2 else list(reversed(cases))
            for name in order:
                self.case(rnd, name)

# ---- report -------------------------------------------------------------------------------
def med(xs):
    return statistics.median(xs) if xs else float("nan")


def spread(xs, fmt="{:.2f}"):
    return f"{fmt.format(min(xs))}–{fmt.format(max(xs))}" if xs else "-"


def report(rows, meta):
    by = {}
    for r in rows:
        by.setdefault(r["case"], []).append(r)
    label = {"raw": "raw runsc", "file": "podsnap, file:// store", "s3": "podsnap, S3 (moto)",
             "nocache": "podsnap, file:// store, no page cache"}
    out = []
    p = out.append
    mib, rounds = meta["mib"], meta["rounds"]
    imgs = [r["image_bytes"] for r in by.get("raw", [])]
    p(f"# End-to-end: {mib} MiB sandbox, podsnapd against raw runsc\n")
    p(f"Command: `{meta['command']}` (whole e2e run {meta['elapsed']:.0f} s), source "
      f"`{meta['source']}`.\n")
    p(f"Machine: {meta['machine']}; {meta['runsc']} (default platform), `--network=none`. "
      f"Scratch (images, stores, podsnapd state): {meta['scratch']}. Load average (1 min) "
      f"at the start of each case: {min(r['load'] for r in rows):.1f}–"
      f"{max(r['load'] for r in rows):.1f}.\n")
    if imgs:
        how = ("uncompressed (`--compression=none`, as podsnapd asks this runsc for)"
               if meta.get("raw_flags") else "runsc's flate compression")
        p(f"Raw image: {med(imgs) / 2**20:.0f} MiB, {how}, of the {mib} MiB sandbox; "
          f"{min(imgs)}–{max(imgs)} bytes over the rounds.\n")
    p(f"{rounds} rounds, the case order alternating, `sync` and 1 s pause before every timed "
      "operation; median and min–max in seconds; ratio = podsnap median / raw median of this "
      "run. Checkpoint: call until durable (raw: `runsc checkpoint` + fsync of the "
      "image; podsnap: `podsnapctl checkpoint --stop` until the snapshot id is "
      "printed, i.e. the manifest is committed). Restore: call until the restored counter "
      "prints its next count; podsnap's on a second podsnapd sharing the store (another "
      "node, cold page cache).\n")
    p("| case | checkpoint s | ratio | restore s | ratio | podsnapd CPU s (ckpt / restore) "
      "| podsnapd peak RSS MiB (ckpt / restore) |")
    p("|---|---:|---:|---:|---:|---:|---:|")
    raw = by.get("raw", [])
    rc, rr = med([r["ckpt"] for r in raw]), med([r["restore"] for r in raw])
    for name in ("raw", "file", "s3", "nocache"):
        rs = by.get(name)
        if not rs:
            continue
        c, rst = [r["ckpt"] for r in rs], [r["restore"] for r in rs]
        if name == "raw":
            cpu_s = rss = "-"
        else:
            cpu_s = (f"{med([r['d_cpu_ckpt'] for r in rs]):.2f} / "
                     f"{med([r['d_cpu_restore'] for r in rs]):.2f}")
            rss = (f"{max(r['d_hwm_ckpt'] for r in rs) / 1024:.0f} / "
                   f"{max(r['d_hwm_restore'] for r in rs) / 1024:.0f}")
        p(f"| {label[name]} | {med(c):.2f} ({spread(c)}) | {med(c) / rc:.2f} | "
          f"{med(rst):.2f} ({spread(rst)}) | {med(rst) / rr:.2f} | {cpu_s} | {rss} |")
    p("")
    p("Where the time goes (medians, s). podsnap's runsc phases are the same runsc "
      "operations as the raw case, so \"podsnap adds\" (its total minus its own runsc "
      "phase, per operation) is the overhead with the runsc noise taken out; \"ratio from "
      "added\" = (raw runsc command median + podsnap adds) / raw median (for the "
      "checkpoint, podsnap's upload takes the place of raw's fsync).\n")
    p("| case | ckpt: runsc checkpoint | ckpt: fsync / upload | ckpt: podsnap adds | "
      "ratio from added | restore: download (verified pull) | restore: runsc restore | "
      "restore: podsnap adds | ratio from added |")
    p("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    if raw:
        p(f"| raw | {med([r['ckpt_cmd'] for r in raw]):.2f} | "
          f"{med([r['ckpt_sync'] for r in raw]):.2f} (fsync) | - | - | - | "
          f"{med([r['restore_cmd'] for r in raw]):.2f} | - | - |")
    for name in ("file", "s3", "nocache"):
        rs = by.get(name)
        if not rs:
            continue
        rcc, rrc = med([r["ckpt_cmd"] for r in raw]), med([r["restore_cmd"] for r in raw])
        ca = med([r["ckpt"] - r["ph_runsc_ckpt"] for r in rs])
        ra = med([r["restore"] - r["ph_runsc_restore"] for r in rs])
        p(f"| {name} | {med([r['ph_runsc_ckpt'] for r in rs]):.2f} | "
          f"{med([r['ph_upload'] for r in rs]):.2f} (upload) | {ca:.2f} | "
          f"{(rcc + ca) / rc:.2f} | {med([r['ph_download'] for r in rs]):.2f} | "
          f"{med([r['ph_runsc_restore'] for r in rs]):.2f} | {ra:.2f} | {(rrc + ra) / rr:.2f} |")
    split = [(n, by[n]) for n in ("file", "s3", "nocache")
             if by.get(n) and by[n][0].get("ph_after_runsc")]
    if split and raw:
        p("")
        p("The checkpoint split (medians, s): podsnap's snapshot is committed (durable) once "
          "runsc is done and the upload left after it; the call answers after that once "
          "runsc's record of the stopped sandbox is settled, which waits until the sandbox "
          "process is reaped (" + ("the harness reaps it at once here, as a pod's shim "
                                   "does" if meta.get("reap") else "its parent here is the "
                                   "machine's init; under Kubernetes the shim reaps it at "
                                   "once") +
          "). Raw runsc does not wait for that. \"committed\" = runsc phase "
          "+ upload after runsc, per round; its ratio is against the raw median.\n")
        p("| case | runsc checkpoint | upload after runsc | committed | ratio committed | "
          "answered | after the commit |")
        p("|---|---:|---:|---:|---:|---:|---:|")
        for name, rs in split:
            com = [r["ph_runsc_ckpt"] + r["ph_after_runsc"] for r in rs]
            p(f"| {name} | {med([r['ph_runsc_ckpt'] for r in rs]):.2f} | "
              f"{med([r['ph_after_runsc'] for r in rs]):.2f} | {med(com):.2f} | "
              f"{med(com) / rc:.2f} | {med([r['ckpt'] for r in rs]):.2f} | "
              f"{med([r['ckpt'] - c for r, c in zip(rs, com)]):.2f} |")
    here = [(n, by[n]) for n in ("file", "s3") if by.get(n) and "here_restore" in by[n][0]]
    if here and raw:
        p("")
        p("The timed restores above run on a second podsnapd (another node: its page cache "
          "has never seen the image). Restored on the checkpointing node instead, whose "
          "cache holds the image it pushed (linked at the checkpoint), the same snapshots "
          "download no pages:\n")
        p("| case | same-node restore s | ratio | download (from the node cache) | "
          "runsc restore |")
        p("|---|---:|---:|---:|---:|")
        for name, rs in here:
            h = [r["here_restore"] for r in rs]
            p(f"| {label[name]} | {med(h):.2f} ({spread(h)}) | {med(h) / rr:.2f} | "
              f"{med([r['here_ph_download'] for r in rs]):.2f} | "
              f"{med([r['here_ph_runsc_restore'] for r in rs]):.2f} |")
    fs = by.get("file")
    if fs:
        p("")
        p(f"podsnap fsyncs a file:// store's new objects before it commits (in the times "
          f"above); fsyncing them again after the call, a check that nothing was left dirty, "
          f"took {med([r['store_fsync'] for r in fs]):.2f} s (median), for "
          f"{med([r['stored_bytes'] for r in fs]) / 2**20:.0f} MiB stored. Checkpoint ratio "
          f"with it included: {med([r['ckpt'] + r['store_fsync'] for r in fs]) / rc:.2f}.")
    p("")
    p("## Targets\n")
    p("| target | measured | met? |")
    p("|---|---|---|")
    for name in ("file", "s3", "nocache"):
        rs = by.get(name)
        if not rs or not raw:
            continue
        c = med([r["ckpt"] for r in rs]) / rc
        r_ = med([r["restore"] for r in rs]) / rr
        p(f"| checkpoint-to-durable <= 1.5x raw ({label[name]}) | "
          f"{med([r['ckpt'] for r in rs]):.2f} s vs {rc:.2f} s ({c:.2f}x) | "
          f"{'met' if c <= 1.5 else '**missed**'} |")
        p(f"| restore-to-running <= 1.5x raw ({label[name]}) | "
          f"{med([r['restore'] for r in rs]):.2f} s vs {rr:.2f} s ({r_:.2f}x) | "
          f"{'met' if r_ <= 1.5 else '**missed**'} |")
    p("")
    p("Per round (s): " + "; ".join(
        f"{r['round']} {r['case']}: ckpt {r['ckpt']:.2f}, restore {r['restore']:.2f}"
        + (f", same-node restore {r['here_restore']:.2f}" if "here_restore" in r else "")
        for r in sorted(rows, key=lambda r: (r["round"], r["case"]))) + ".")
    return "\n".join(out) + "\n"


def describe(a, elapsed):
    """What the report says about the run: command, machine, scratch filesystem."""
    import platform

    def sh(cmd):
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), "?")
    memk = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal"))
    env = f"BENCH_E2E_MIB={a.mib} BENCH_E2E_ROUNDS={a.rounds} BENCH_E2E_S3={int(a.s3)}"
    if a.nocache:
        env += " BENCH_E2E_NOCACHE=1"
    if getattr(a, "reap", 0):
        env += " BENCH_E2E_REAP=1"
    scratch = os.path.abspath(a.dir)
    dirty = sh(f"git -C {HERE} status --porcelain --untracked-files=no -- ../crates ../benches "
               "':!../benches/results'")
    return {
        "mib": a.mib, "rounds": a.rounds, "s3": int(a.s3), "nocache": int(a.nocache),
        "reap": int(getattr(a, "reap", 0)),
        "elapsed": elapsed,
        "command": f"{env} make bench-e2e",
        "source": sh(f"git -C {HERE} rev-parse --short HEAD")
        + (" with uncommitted changes" if dirty else ""),
        "machine": f"{os.cpu_count()} CPUs, {cpu}, {memk / 2**20:.1f} GiB RAM, kernel "
                   f"{platform.release()}",
        "runsc": sh("runsc --version | head -n 1"),
        "raw_flags": raw_checkpoint_flags(),
        "scratch": f"`{scratch}` on "
                   f"`{sh(f'df --output=source,fstype {scratch} | tail -n 1')}`",
    }


def reap_sandboxes():
    """Makes this process the child subreaper of everything it starts and reaps the orphaned
    sandbox and gofer processes (`exe`, runsc's re-exec of itself) as they exit, as
    containerd's shim does for a pod. Without it they are re-parented to the machine's init,
    which on the development VM reaps them 1-2 s late, and podsnapd's `--stop` checkpoint
    answers only once runsc stops reporting the sandbox running (a zombie counts as
    running). Only zombies named `exe` are waited for, each by its pid, so the statuses of
    the harness's own subprocesses stay theirs."""
    import ctypes
    import threading
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
        sys.exit(f"e2e: prctl(PR_SET_CHILD_SUBREAPER): errno {ctypes.get_errno()}")

    def children():
        """This process's children (re-parented orphans included), from each thread's list."""
        out = set()
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/children") as f:
                    out.update(f.read().split())
            except OSError:
                pass
        return out

    def loop():
        while True:
            for pid in children():
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        stat = f.read()
                except OSError:
                    continue
                comm = stat[stat.index("(") + 1:stat.rindex(")")]
                state = stat[stat.rindex(")") + 2:].split()[0]
                if comm == "exe" and state == "Z":
                    try:
                        os.waitpid(int(pid), os.WNOHANG)
                    except ChildProcessError:
                        pass
            time.sleep(0.01)

    threading.Thread(target=loop, daemon=True).start()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", help="directory holding podsnapd and podsnapctl")
    ap.add_argument("--dir", help="scratch directory")
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--s3", type=int, default=0)
    ap.add_argument("--nocache", type=int, default=0,
                    help="1 adds podsnapd with its node page cache off (--cache-max-bytes 0)")
    ap.add_argument("--reap", type=int, default=0,
                    help="1: reap the sandboxes as a shim would (see reap_sandboxes)")
    ap.add_argument("--results", default=os.path.join(HERE, "results", "e2e-latest.md"))
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
            sys.exit(f"e2e: {t} is required")
    if os.getuid() != 0:
        sys.exit("e2e: runsc needs root")
    if a.s3:
        try:
            import moto.server  # noqa: F401
        except ImportError:
            log("moto is not installed: skipping the S3 case")
            a.s3 = 0
    if a.reap:
        reap_sandboxes()
    t = time.monotonic()
    b = Bench(a)
    try:
        b.run()
    finally:
        b.cleanup()
        with open(os.path.join(b.work, "rows.json"), "w") as f:
            json.dump(b.rows, f, indent=1)
    meta = describe(a, time.monotonic() - t)
    text = report(b.rows, meta)
    write_results(a.results, text, {"meta": meta, "rows": b.rows})
    log(f"results written to {a.results}")


if __name__ == "__main__":
    main()
