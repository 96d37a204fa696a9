/*
 * The suspend-downtime benchmark's sandbox workload (benches/downtime.py): a 1 ms ticker that
 * reports, from inside the sandbox, how long it was frozen.
 *
 *   ticker MIB [PERIOD_US [REPORT_MS]]
 *
 * It first fills MIB MiB of anonymous memory with random pages (xorshift64*, incompressible),
 * so that a checkpoint has real memory to save, and prints "filled MIB MiB". Then it sleeps
 * PERIOD_US (default 1000) at a time (clock_nanosleep, relative, CLOCK_MONOTONIC) and measures
 * each wake-up's distance to the previous one:
 *
 * - every gap of at least 3 periods is printed at once as
 *   "GAP <realtime_ns at wake-up> <gap_us monotonic> <gap_us realtime>";
 * - every REPORT_MS (default 100) it prints
 *   "T <seq> <realtime_ns> <ticks> <max_gap_us>" for the ticks since the previous T line.
 *
 * A checkpoint that stops the sandbox's tasks shows up as one long gap: that gap is the time
 * the workload was frozen. The realtime stamps (CLOCK_REALTIME, which gVisor takes from the
 * host) let the harness match gaps to the host-side window of a checkpoint command. Output
 * goes through write(2), unbuffered. Built static (gcc -O2 -static).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096

static uint64_t rng_state = 0x243f6a8885a308d3ULL;

static uint64_t next(void) {
    uint64_t x = rng_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * 0x2545f4914f6cdd1dULL;
}

static int64_t now_ns(clockid_t c) {
    struct timespec ts;
    clock_gettime(c, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void say(const char *buf, int n) {
    while (n > 0) {
        ssize_t w = write(1, buf, (size_t)n);
        if (w <= 0)
            return;
        buf += w;
        n -= (int)w;
    }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: ticker MIB [PERIOD_US [REPORT_MS]]\n");
        return 2;
    }
    size_t mib = strtoull(argv[1], NULL, 10);
    int64_t period_us = argc > 2 ? strtoll(argv[2], NULL, 10) : 1000;
    int64_t report_ms = argc > 3 ? strtoll(argv[3], NULL, 10) : 100;
    char line[160];
    int n;

    if (mib > 0) {
        size_t len = mib << 20;
        uint64_t *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (mem == MAP_FAILED) {
            perror("mmap");
            return 1;
        }
        for (size_t i = 0; i < len / 8; i++)
            mem[i] = next();
    }
    n = snprintf(line, sizeof line, "filled %zu MiB\n", mib);
    say(line, n);

    struct timespec req = {.tv_sec = period_us / 1000000, .tv_nsec = (period_us % 1000000) * 1000};
    int64_t prev_m = now_ns(CLOCK_MONOTONIC), prev_r = now_ns(CLOCK_REALTIME);
    int64_t next_report = prev_m + report_ms * 1000000LL;
    int64_t max_gap = 0, ticks = 0, seq = 0;
    for (;;) {
        clock_nanosleep(CLOCK_MONOTONIC, 0, &req, NULL);
        int64_t m = now_ns(CLOCK_MONOTONIC), r = now_ns(CLOCK_REALTIME);
        int64_t gap = m - prev_m;
        if (gap > max_gap)
            max_gap = gap;
        ticks++;
        if (gap >= 3 * period_us * 1000) {
            n = snprintf(line, sizeof line, "GAP %lld %lld %lld\n", (long long)r,
                         (long long)(gap / 1000), (long long)((r - prev_r) / 1000));
            say(line, n);
        }
        prev_m = m;
        prev_r = r;
        if (m >= next_report) {
            n = snprintf(line, sizeof line, "T %lld %lld %lld %lld\n", (long long)seq++,
                         (long long)r, (long long)ticks, (long long)(max_gap / 1000));
            say(line, n);
            max_gap = 0;
            ticks = 0;
            next_report = m + report_ms * 1000000LL;
        }
    }
}
