/* Load client for the control-channel workload: N threads, each in a loop: connect to a UNIX socket,
 * send {"command":"list-commands"}, read to EOF, close. Prints one JSON line: req/s, p50/p99 µs.
 * Usage: load-client <impl label> <socket path> <threads> <seconds>
 * Build: gcc -O2 -o load-client load_client.c -lpthread */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include "bench_common.h"

static const char REQUEST[] = "{\"command\":\"list-commands\"}";
static struct sockaddr_un addr;
static uint64_t deadline_ns;
static _Atomic uint64_t failures;

typedef struct { int64_t *lat; size_t n, cap; } samples;

static void *worker(void *p) {
    samples *s = p;
    char buf[65536];
    while (bench_now_ns() < deadline_ns) {
        uint64_t t0 = bench_now_ns();
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
            if (fd >= 0) close(fd);
            atomic_fetch_add(&failures, 1);
            usleep(1000);
            continue;
        }
        size_t off = 0;
        while (off < sizeof REQUEST - 1) {
            ssize_t n = write(fd, REQUEST + off, sizeof REQUEST - 1 - off);
            if (n <= 0) break;
            off += (size_t)n;
        }
        size_t got = 0;
        for (;;) {
            ssize_t n = read(fd, buf, sizeof buf);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) break;
            got += (size_t)n;
        }
        close(fd);
        if (got == 0) { atomic_fetch_add(&failures, 1); continue; }
        if (s->n == s->cap) { s->cap = s->cap ? s->cap * 2 : 65536; s->lat = realloc(s->lat, s->cap * sizeof(int64_t)); }
        s->lat[s->n++] = (int64_t)(bench_now_ns() - t0);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: %s <impl> <socket> <threads> <seconds>\n", argv[0]); return 2; }
    int threads = atoi(argv[3]);
    double seconds = atof(argv[4]);
    addr.sun_family = AF_UNIX;
    strncpy(addr.sun_path, argv[2], sizeof addr.sun_path - 1);
    pthread_t th[256];
    samples s[256];
    if (threads < 1 || threads > 256) return 2;
    memset(s, 0, sizeof s);
    uint64_t t0 = bench_now_ns();
    deadline_ns = t0 + (uint64_t)(seconds * 1e9);
    for (int i = 0; i < threads; i++) pthread_create(&th[i], NULL, worker, &s[i]);
    for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
    uint64_t t1 = bench_now_ns();
    size_t total = 0;
    for (int i = 0; i < threads; i++) total += s[i].n;
    int64_t *all = malloc((total ? total : 1) * sizeof(int64_t));
    size_t k = 0;
    for (int i = 0; i < threads; i++) { memcpy(all + k, s[i].lat, s[i].n * sizeof(int64_t)); k += s[i].n; free(s[i].lat); }
    qsort(all, total, sizeof(int64_t), bench_cmp_i64);
    printf("{\"impl\":\"%s\",\"workload\":\"control_channel_%dt\",\"ops\":%zu,\"req_per_s\":%.1f,"
           "\"p50_us\":%.1f,\"p99_us\":%.1f,\"failures\":%llu}\n",
        argv[1], threads, total, (double)total * 1e9 / (double)(t1 - t0),
        bench_percentile(all, total, 50) / 1e3, bench_percentile(all, total, 99) / 1e3,
        (unsigned long long)atomic_load(&failures));
    free(all);
    return 0;
}
