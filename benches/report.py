#!/usr/bin/env python3
"""Renders benches/run.sh's TSV as markdown: machine, table, targets (met/missed)."""
import os
import platform
import subprocess
import sys

tsv, img_bytes, size_mib, bench_dir, real_note, elapsed, s3 = sys.argv[1:8]
img_bytes = int(img_bytes)
rows = []
for line in open(tsv):
    key, case, tool, op, wall, cpu, rss, stored, note = line.rstrip("\n").split("\t")
    rows.append(dict(key=key, case=case, tool=tool, op=op, wall=float(wall), cpu=float(cpu),
                     rss=int(rss), stored=None if stored in ("-", "") else int(stored)))
by = {r["key"]: r for r in rows}


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
    except Exception:
        return "?"


def cpu_model():
    for l in open("/proc/cpuinfo"):
        if l.startswith("model name"):
            return l.split(":", 1)[1].strip()
    return "?"


def mem():
    for l in open("/proc/meminfo"):
        if l.startswith("MemTotal"):
            return f"{int(l.split()[1]) / 1048576:.1f} GiB"
    return "?"


def mib(n):
    return "-" if n is None else f"{n / 1048576:.1f}"


CASES = {"gen1": "gen1 (first)", "gen2": "gen2 (5% scattered)", "gen2c": "gen2' (5% clustered)",
         "real1": "runsc checkpoint"}
out = []
p = out.append
p(f"# podsnap benchmarks ({size_mib} MiB synthetic image)\n")
p("Command: `make bench`" + (f" with `BENCH_SIZE_MIB={size_mib}`" if size_mib != "1024" else "")
  + f" (whole run {elapsed} s, including build and data generation).\n")
p(f"Machine: {os.cpu_count()} CPUs (`nproc`: {sh('nproc')}), {cpu_model()}, {mem()} RAM, "
  f"kernel {platform.release()}; scratch disk: "
  f"`{sh(f'df -h --output=source,fstype,size {bench_dir} | tail -n 1')}` "
  f"(rotational={sh('cat /sys/block/$(basename $(df --output=source ' + bench_dir + ' | tail -n 1))/queue/rotational 2>/dev/null') or '?'}).")
p(f"Source: `{sh('git -C ' + os.path.dirname(os.path.abspath(__file__)) + ' rev-parse --short HEAD')}`"
  + (" (with uncommitted changes)" if sh('git -C ' + os.path.dirname(os.path.abspath(__file__)) + ' status --porcelain --untracked-files=no -- ../crates') else "") + ".")
p(f"Tools: {sh('zstd --version')}; {sh('tar --version | head -n 1')}; "
  f"{sh('restic version')}; {sh('runsc --version 2>/dev/null | head -n 1')}.\n")
p("All data is in the page cache (warm reads). `podsnap` pull rows fsync every file and directory "
  "(the default) and are compared with `zstd -d | tar -x; sync` of the same files; `podsnap "
  "--no-fsync` rows, like tar, zstd and restic, leave the data in the page cache. CPU is "
  "user+sys of the whole process tree; peak RSS is the largest single process of the tree. "
  "\"Stored\" is the growth of the store/repo directory (`du -sb`); for S3 it is podsnap's "
  "`bytes_uploaded`. Ratios are to the `tar | zstd` (push) or `zstd -d | tar -x` (pull) row "
  "on the same data in this run.\n")
p("| data | op | tool | wall s | CPU s | peak RSS MiB | stored MiB | wall / tar | stored / tar.zst |")
p("|---|---|---|---:|---:|---:|---:|---:|---:|")
for r in rows:
    base = by.get(f"tar_{r['op']}_{r['case']}")
    if r["op"] == "pull" and r["key"] == f"ps_pull_{r['case']}":
        # The durable pull against the durable baseline.
        base = by.get(f"tar_pull_{r['case']}_sync", base)
    if r["key"].endswith("_1cpu") and f"tar_{r['op']}_{r['case']}_1cpu" in by:
        base = by[f"tar_{r['op']}_{r['case']}_1cpu"]
    wr = f"{r['wall'] / base['wall']:.2f}" if base and base["wall"] > 0 else "-"
    tz = by.get(f"tar_push_{r['case']}")
    sr = (f"{r['stored'] / tz['stored']:.3f}"
          if r["op"] == "push" and r["stored"] is not None and tz and tz["stored"] else "-")
    p(f"| {CASES.get(r['case'], r['case'])} | {r['op']} | {r['tool'].replace('|', chr(92) + '|')} | {r['wall']:.2f} | "
      f"{r['cpu']:.2f} | {r['rss'] / 1024:.1f} | {mib(r['stored'])} | {wr} | {sr} |")
p("")
p(f"Real runsc image: {real_note if not real_note.isdigit() else f'{int(real_note)} bytes checkpoint.img'}.")
if s3 != "1":
    p("S3 (moto) cases: skipped (BENCH_S3=0).")
meta = os.path.join(bench_dir, "meta.s3")
if os.path.exists(meta):
    kv = dict(l.strip().split("=", 1) for l in open(meta) if "=" in l)
    if "s3lat_objects" in kv and "s3lat_push_gen1" in by and "s3_push_gen1" in by:
        n = int(kv["s3lat_objects"])
        ms = float(os.environ.get("BENCH_LATENCY_MS", "20"))
        lat = by["s3lat_push_gen1"]["wall"] - by["s3_push_gen1"]["wall"]
        p(f"Latency proxy: the push wrote {n} objects, so requests made one at a time would "
          f"spend {n} x {ms:g} ms = {n * ms / 1000:.2f} s waiting; with the default 4 uploads "
          f"in flight the push took {lat:+.2f} s over the direct moto push.")
        # Upload concurrency: the same push with 1, 4 (default) and 16 uploads in flight.
        conc = [(c, by.get(f"s3lat_push_gen1{sfx}"), by.get(f"s3_push_gen1{sfx}"))
                for c, sfx in ((1, "_c1"), (4, ""), (16, "_c16"))]
        if all(r for _, r, _ in conc):
            p("")
            p(f"Upload concurrency through the +{ms:g} ms proxy (gen1 push, {n} objects; "
              "`image push --concurrency N`):\n")
            p("| uploads in flight | wall s | MiB/s | added over direct moto, same N |")
            p("|---:|---:|---:|---:|")
            for c, r, d in conc:
                added = f"{r['wall'] - d['wall']:+.2f} s" if d else "-"
                p(f"| {c}{' (default)' if c == 4 else ''} | {r['wall']:.2f} | "
                  f"{img_bytes / 1048576 / r['wall']:.0f} | {added} |")
p("")

# The targets.
p("## Targets\n")
p("| target | measured | met? |")
p("|---|---|---|")


def row(name, measured, ok):
    p(f"| {name} | {measured} | {'met' if ok else '**missed**'} |")


ps1, tz1 = by.get("ps_push_gen1"), by.get("tar_push_gen1")
if ps1 and tz1:
    row("first push no slower than tar\\|zstd", f"{ps1['wall']:.2f} s vs {tz1['wall']:.2f} s "
        f"({ps1['wall'] / tz1['wall']:.2f}x)", ps1["wall"] <= tz1["wall"])
    row("first push <= 2% bigger than tar.zst", f"{mib(ps1['stored'])} MiB vs {mib(tz1['stored'])} MiB "
        f"({100 * (ps1['stored'] / tz1['stored'] - 1):+.1f}%)", ps1["stored"] <= 1.02 * tz1["stored"])
ps2 = by.get("ps_push_gen2")
if ps1 and ps2:
    row("incremental (5% scattered) uploads <= 10% of image",
        f"{mib(ps2['stored'])} MiB = {100 * ps2['stored'] / img_bytes:.1f}% of {size_mib} MiB",
        ps2["stored"] <= 0.10 * img_bytes)
    row("incremental takes <= half the first push's time",
        f"{ps2['wall']:.2f} s vs {ps1['wall']:.2f} s ({ps2['wall'] / ps1['wall']:.2f}x)",
        ps2["wall"] <= 0.5 * ps1["wall"])
for g in ("gen1", "gen2"):
    for a, b, name in ((by.get(f"ps_pull_{g}_nofsync"), by.get(f"tar_pull_{g}"),
                        f"pull ({g}) no slower than zstd -d\\|tar -x (neither fsyncs)"),
                       (by.get(f"ps_pull_{g}"), by.get(f"tar_pull_{g}_sync"),
                        f"durable pull ({g}) no slower than zstd -d\\|tar -x; sync")):
        if a and b:
            row(name, f"{a['wall']:.2f} s vs {b['wall']:.2f} s ({a['wall'] / b['wall']:.2f}x)",
                a["wall"] <= b["wall"])
ps_rows = [r for r in rows if r["tool"].startswith("podsnap")]
if ps_rows:
    worst = max(ps_rows, key=lambda r: r["rss"])
    row("podsnap peak RSS < 128 MiB", f"max {worst['rss'] / 1024:.1f} MiB ({worst['key']})",
        worst["rss"] < 128 * 1024)
print("\n".join(out))
