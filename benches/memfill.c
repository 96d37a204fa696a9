/*
 * The end-to-end and incremental benchmarks' sandbox workload: touches MIB MiB of anonymous
 * memory with a deterministic mix of contents, then counts.
 *
 *   memfill MIB [INTERVAL_MS [MODE [REWRITE_PCT]]]
 *
 * MODE "mixed" (the default): memory is filled in runs of 1..64 pages (4 KiB); each run is,
 * with equal odds, zero (written, so committed), random (xorshift64*, incompressible) or
 * text-like (words from a small pool, compressible about 4x), the same mix as
 * benches/gen_image.py. MODE "random": every page random (incompressible). Then it prints
 * "filled MIB MiB" and "Count: N" every INTERVAL_MS (default 100) forever, N = 0, 1, 2, ...
 * A restored copy continues the sequence, which is how the benchmark detects and checks a
 * restore.
 *
 * On SIGUSR1 (`runsc kill ID USR1`) it rewrites REWRITE_PCT percent (default 5) of its pages
 * with new random data at scattered places (one page at a random position in every run of
 * 100 / REWRITE_PCT pages, so the changes are spread evenly over the whole region), then
 * prints "rewrote N of M pages, generation G" (G = 1, 2, ...); benches/incremental.py waits
 * for that line. On SIGUSR2 it writes zeros over REWRITE_PCT percent of its pages instead (the
 * same scattered choice) and prints "zeroed N of M pages, generation G": zero-filled memory
 * that stays committed (benches/incremental.py's --exclude-committed-zero-pages case).
 * Output goes through write(2), unbuffered. Built static (gcc -O2 -static).
 */
#include <signal.h>
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

static volatile sig_atomic_t rewrite_requested, zero_requested;

static void on_signal(int sig) {
    if (sig == SIGUSR1)
        rewrite_requested = 1;
    else
        zero_requested = 1;
}

static void fill_random(unsigned char *at, size_t len) {
    for (size_t i = 0; i + 8 <= len; i += 8) {
        uint64_t v = next();
        memcpy(at + i, &v, 8);
    }
}

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
        say("usage: memfill MIB [INTERVAL_MS [mixed|random [REWRITE_PCT]]]\n");
        return 2;
    }
    size_t mib = strtoull(argv[1], NULL, 10);
    long interval_ms = argc > 2 ? strtol(argv[2], NULL, 10) : 100;
    int all_random = argc > 3 && strcmp(argv[3], "random") == 0;
    long pct = argc > 4 ? strtol(argv[4], NULL, 10) : 5;
    if (pct < 1 || pct > 100)
        pct = 5;
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
        unsigned kind = all_random ? 1 : (unsigned)(next() % 3);
        unsigned char *at = mem + p * PAGE;
        size_t len = run * PAGE;
        if (kind == 0) {
            memset(at, 0, len);
        } else if (kind == 1) {
            fill_random(at, len);
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
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGUSR2, &sa, NULL);
    char line[96];
    snprintf(line, sizeof line, "filled %zu MiB\n", mib);
    say(line);
    struct timespec ts = {interval_ms / 1000, (interval_ms % 1000) * 1000000L};
    size_t stride = (size_t)(100 / pct);
    unsigned generation = 0;
    for (unsigned long n = 0;; n++) {
        if (rewrite_requested || zero_requested) {
            int zero = !rewrite_requested;
            if (zero)
                zero_requested = 0;
            else
                rewrite_requested = 0;
            size_t done = 0;
            for (size_t base = 0; base + stride <= pages; base += stride) {
                unsigned char *at = mem + (base + next() % stride) * PAGE;
                if (zero)
                    memset(at, 0, PAGE);
                else
                    fill_random(at, PAGE);
                done++;
            }
            generation++;
            snprintf(line, sizeof line, "%s %zu of %zu pages, generation %u\n",
                     zero ? "zeroed" : "rewrote", done, pages, generation);
            say(line);
        }
        snprintf(line, sizeof line, "Count: %lu\n", n);
        say(line);
        nanosleep(&ts, NULL);
    }
}
