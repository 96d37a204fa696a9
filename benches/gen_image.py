#!/usr/bin/env python3
"""Deterministic synthetic gVisor-like memory images for the benchmarks.

    gen_image.py OUTDIR SIZE_MIB

Writes, each as OUTDIR/<gen>/pages.img (SIZE_MIB MiB of 4 KiB pages):

  gen1       runs of 1..64 pages of one kind: about 1/3 zero, 1/3 random, 1/3 text-like
  gen2       gen1 with 5% of the pages (chosen uniformly at random) overwritten with new
             random bytes: scattered change
  gen2c      gen1 with the same number of pages overwritten in 4 contiguous regions:
             clustered change

Same seed, same bytes: every tool in a run sees exactly the same data.
"""
import os
import random
import shutil
import sys

PAGE = 4096
WORDS = (b"sandbox checkpoint restore gvisor memory page kernel socket the of runsc "
         b"container pod node image state fd mmap 0x7f00a3c0 { } error ok GET / HTTP/1.1 "
         b"200 user session_id=4f2a request latency_ms=12 \"name\": \"value\", \n").split(b" ")


def text_pool(rng, size):
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rng.choice(WORDS) for _ in range(4096))
        out += b"%d\n" % rng.getrandbits(32)
    return bytes(out[:size])


def gen1(path, pages, rng):
    pool = text_pool(rng, 16 << 20)
    zero = bytes(PAGE)
    with open(path, "wb") as f:
        p = 0
        while p < pages:
            run = min(rng.randrange(1, 64), pages - p)
            kind = rng.randrange(3)
            if kind == 0:
                f.write(zero * run)
            elif kind == 1:
                f.write(rng.randbytes(run * PAGE))
            else:
                for _ in range(run):
                    off = rng.randrange(len(pool) - PAGE)
                    f.write(pool[off:off + PAGE])
            p += run


def derive(src, dst, pages, rng, clustered):
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copyfile(src, dst)
    n = max(1, pages * 5 // 100)
    if clustered:
        regions = 4
        per = n // regions
        starts = sorted(rng.sample(range(0, pages - per, max(1, per)), regions)) \
            if pages > per * regions * 2 else [i * per for i in range(regions)]
        idx = [s + i for s in starts for i in range(per)]
    else:
        idx = sorted(rng.sample(range(pages), n))
    fd = os.open(dst, os.O_WRONLY)
    try:
        for p in idx:
            os.pwrite(fd, rng.randbytes(PAGE), p * PAGE)
    finally:
        os.close(fd)
    return len(idx)


def main():
    out, mib = sys.argv[1], int(sys.argv[2])
    pages = mib * 256
    for g in ("gen1", "gen2", "gen2c"):
        os.makedirs(os.path.join(out, g), exist_ok=True)
    g1 = os.path.join(out, "gen1", "pages.img")
    gen1(g1, pages, random.Random(1))
    a = derive(g1, os.path.join(out, "gen2", "pages.img"), pages, random.Random(2), False)
    b = derive(g1, os.path.join(out, "gen2c", "pages.img"), pages, random.Random(3), True)
    print(f"generated {mib} MiB images: gen2 {a} scattered pages changed, gen2c {b} clustered")


if __name__ == "__main__":
    main()
