/* Shared helpers for the C and C++ comparators: monotonic clock, CPU time, percentiles, JSON output.
 * Methodology (identical in Sources/ioloop-bench): see Docs/Benchmarks.md. */
#ifndef IOLOOP_BENCH_COMMON_H
#define IOLOOP_BENCH_COMMON_H
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>

static inline uint64_t bench_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Process CPU time (user + system), nanoseconds. */
static inline uint64_t bench_cpu_ns(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ((uint64_t)ru.ru_utime.tv_sec + (uint64_t)ru.ru_stime.tv_sec) * 1000000000ull
        + ((uint64_t)ru.ru_utime.tv_usec + (uint64_t)ru.ru_stime.tv_usec) * 1000ull;
}

static inline int bench_cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of a sorted array (p in 0..100). */
static inline int64_t bench_percentile(const int64_t *sorted, size_t n, double p) {
    if (n == 0) return 0;
    size_t rank = (size_t)((p / 100.0) * (double)n + 0.999999);
    if (rank < 1) rank = 1;
    if (rank > n) rank = n;
    return sorted[rank - 1];
}

/* Workload sizes, the same in every implementation. */
#define N_IDLE_POLL 1000000
#define N_POST_POLL_1 500000
#define N_POST_BATCHES 5000
#define POST_BATCH 1000
#define N_CROSS_THREAD 2000000
#define N_WAKEUP 10000
#define N_TIMERS 100000
#define TIMER_SPAN_NS 100000000ull
#define TIMER_START_NS 20000000ull
/* Deterministic permutation of creation order (7919 is prime, coprime with N_TIMERS). */
#define TIMER_SLOT(i) (((uint64_t)(i) * 7919ull) % N_TIMERS)

#endif
