/*
 * The end-to-end benchmark's sandbox workload: touches MIB MiB of anonymous memory with a
 * deterministic mix of contents, then counts.
 *
 *   memfill MIB [INTERVAL_MS]
 *
 * Memory is filled in runs of 1..64 pages (4 KiB); each run is, with equal odds, zero
 * (written, so committed), random (xorshift64*, incompressible) or text-like (words from a
 * small pool, compressible about 4x), the same mix as benches/gen_image.py. Then it prints
 * "filled MIB MiB" and "Count: N" every INTERVAL_MS (default 100) forever, N = 0, 1, 2, ...
 * A restored copy continues the sequence, which is how the benchmark detects and checks a
 * restore. Output goes through write(2), unbuffered. Built static (gcc -O2 -static).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint64_t next(void) {
    uint64_t x = rng_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * 0x2545f4914f6cdd1dULL;
}

static const char *const words[] = {
    "sandbox ", "checkpoint ", "restore ", "gvisor ", "memory ", "page ", "kernel ",
    "socket ", "the ", "of ", "runsc ", "container ", "pod ", "node ", "image ",
    "state ", "fd ", "mmap ", "0x7f00 ", "{ ", "} ", "error ", "ok ", "GET / ",
    "HTTP/1.1 ", "200 ", "user ", "\n",
};
#define NWORDS (sizeof(words) / sizeof(words[0]))

static void say(const char *s) {
    size_t n = strlen(s);
    while (n > 0) {
        ssize_t w = write(1, s, n);
        if (w <= 0)
            return;
        s += w;
        n -= (size_t)w;
    }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        say("usage: memfill MIB [INTERVAL_MS]\n");
        return 2;
    }
    size_t mib = strtoull(argv[1], NULL, 10);
    long interval_ms = argc > 2 ? strtol(argv[2], NULL, 10) : 100;
    size_t pages = mib * 256;
    unsigned char *mem = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        say("memfill: mmap failed\n");
        return 1;
    }
    size_t p = 0;
    while (p < pages) {
        size_t run = 1 + next() % 64;
        if (run > pages - p)
            run = pages - p;
        unsigned kind = (unsigned)(next() % 3);
        unsigned char *at = mem + p * PAGE;
        size_t len = run * PAGE;
        if (kind == 0) {
            memset(at, 0, len);
        } else if (kind == 1) {
            for (size_t i = 0; i + 8 <= len; i += 8) {
                uint64_t v = next();
                memcpy(at + i, &v, 8);
            }
        } else {
            size_t i = 0;
            while (i < len) {
                const char *w = words[next() % NWORDS];
                size_t wl = strlen(w);
                if (wl > len - i)
                    wl = len - i;
                memcpy(at + i, w, wl);
                i += wl;
            }
        }
        p += run;
    }
    char line[64];
    snprintf(line, sizeof line, "filled %zu MiB\n", mib);
    say(line);
    struct timespec ts = {interval_ms / 1000, (interval_ms % 1000) * 1000000L};
    for (unsigned long n = 0;; n++) {
        snprintf(line, sizeof line, "Count: %lu\n", n);
        say(line);
        nanosleep(&ts, NULL);
    }
}
