/* C comparator on the system libev: the same poll/post/cross-thread/timer workloads as ioloop-bench.
 * Posts are a mutex-protected queue of (function, argument) pairs plus an ev_async, which is how a C
 * libev program hands work to its loop. One JSON line per workload on stdout.
 * Build: gcc -O2 -o libev-bench libev_bench.c -lev -lpthread */
#include <ev.h>
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>
#include "bench_common.h"

typedef void (*job_fn)(void *);
typedef struct { job_fn fn; void *arg; } job;

typedef struct {
    struct ev_loop *loop;
    ev_async async;
    ev_io idle_io;
    ev_timer far_timer;
    int pipefd[2];
    pthread_mutex_t lock;
    job *items; size_t count, cap;      /* shared queue, under lock */
    job *spare; size_t spare_cap;       /* drained array, reused */
} bench_loop;

static void async_cb(struct ev_loop *loop, ev_async *w, int revents) {
    (void)loop; (void)revents;
    bench_loop *b = (bench_loop *)w->data;
    pthread_mutex_lock(&b->lock);
    job *items = b->items; size_t n = b->count, cap = b->cap;
    b->items = b->spare; b->cap = b->spare_cap; b->count = 0;
    pthread_mutex_unlock(&b->lock);
    for (size_t i = 0; i < n; i++) items[i].fn(items[i].arg);
    b->spare = items; b->spare_cap = cap;
}

static void idle_cb(struct ev_loop *loop, ev_io *w, int revents) { (void)loop; (void)w; (void)revents; }
static void far_cb(struct ev_loop *loop, ev_timer *w, int revents) { (void)loop; (void)w; (void)revents; }

static void bench_loop_init(bench_loop *b) {
    memset(b, 0, sizeof *b);
    b->loop = ev_loop_new(EVBACKEND_EPOLL | EVFLAG_NOENV);
    pthread_mutex_init(&b->lock, NULL);
    b->cap = b->spare_cap = 4096;
    b->items = malloc(b->cap * sizeof(job));
    b->spare = malloc(b->spare_cap * sizeof(job));
    ev_async_init(&b->async, async_cb);
    b->async.data = b;
    ev_async_start(b->loop, &b->async);
    if (pipe(b->pipefd) != 0) { perror("pipe"); exit(1); }
    ev_io_init(&b->idle_io, idle_cb, b->pipefd[0], EV_READ);
    ev_io_start(b->loop, &b->idle_io);
    ev_timer_init(&b->far_timer, far_cb, 3600.0, 0.0);
    ev_timer_start(b->loop, &b->far_timer);
    ev_run(b->loop, EVRUN_NOWAIT);
}

static void bench_loop_destroy(bench_loop *b) {
    ev_io_stop(b->loop, &b->idle_io);
    ev_timer_stop(b->loop, &b->far_timer);
    ev_async_stop(b->loop, &b->async);
    ev_loop_destroy(b->loop);
    close(b->pipefd[0]); close(b->pipefd[1]);
    free(b->items); free(b->spare);
    pthread_mutex_destroy(&b->lock);
}

/* Any thread. */
static inline void post(bench_loop *b, job_fn fn, void *arg) {
    pthread_mutex_lock(&b->lock);
    if (b->count == b->cap) {
        b->cap *= 2;
        b->items = realloc(b->items, b->cap * sizeof(job));
    }
    b->items[b->count++] = (job){fn, arg};
    pthread_mutex_unlock(&b->lock);
    ev_async_send(b->loop, &b->async);
}

static void emit_rate(const char *workload, uint64_t ops, uint64_t ns) {
    printf("{\"impl\":\"libev\",\"workload\":\"%s\",\"ops\":%llu,\"ns_per_op\":%.3f,\"ops_per_s\":%.1f}\n",
        workload, (unsigned long long)ops, (double)ns / (double)ops, (double)ops * 1e9 / (double)ns);
}

/* ---- workloads ---- */

static void w_idle_poll(void) {
    bench_loop b; bench_loop_init(&b);
    for (int i = 0; i < 10000; i++) ev_run(b.loop, EVRUN_NOWAIT);
    uint64_t t0 = bench_now_ns();
    for (int i = 0; i < N_IDLE_POLL; i++) ev_run(b.loop, EVRUN_NOWAIT);
    uint64_t t1 = bench_now_ns();
    emit_rate("idle_poll", N_IDLE_POLL, t1 - t0);
    bench_loop_destroy(&b);
}

static uint64_t counter;
static void count_job(void *arg) { (void)arg; counter++; }

static void w_post_poll_1(void) {
    bench_loop b; bench_loop_init(&b);
    counter = 0;
    for (int i = 0; i < 10000; i++) { post(&b, count_job, NULL); ev_run(b.loop, EVRUN_NOWAIT); }
    uint64_t t0 = bench_now_ns();
    for (int i = 0; i < N_POST_POLL_1; i++) { post(&b, count_job, NULL); ev_run(b.loop, EVRUN_NOWAIT); }
    uint64_t t1 = bench_now_ns();
    if (counter != 10000 + N_POST_POLL_1) { fprintf(stderr, "lost handlers\n"); exit(1); }
    emit_rate("post_poll_1", N_POST_POLL_1, t1 - t0);
    bench_loop_destroy(&b);
}

static void w_post_poll_1000(void) {
    bench_loop b; bench_loop_init(&b);
    counter = 0;
    for (int r = 0; r < 100; r++) {
        for (int i = 0; i < POST_BATCH; i++) post(&b, count_job, NULL);
        ev_run(b.loop, EVRUN_NOWAIT);
    }
    uint64_t t0 = bench_now_ns();
    for (int r = 0; r < N_POST_BATCHES; r++) {
        for (int i = 0; i < POST_BATCH; i++) post(&b, count_job, NULL);
        ev_run(b.loop, EVRUN_NOWAIT);
    }
    uint64_t t1 = bench_now_ns();
    if (counter != (uint64_t)(100 + N_POST_BATCHES) * POST_BATCH) { fprintf(stderr, "lost handlers\n"); exit(1); }
    emit_rate("post_poll_1000", (uint64_t)N_POST_BATCHES * POST_BATCH, t1 - t0);
    bench_loop_destroy(&b);
}

/* cross_thread: a producer thread posts N; the loop thread runs them (ev_run blocking). */
typedef struct { bench_loop *b; uint64_t n; _Atomic uint64_t t_start; } producer_arg;
static uint64_t ct_target;
static struct ev_loop *ct_loop;
static void ct_job(void *arg) { (void)arg; if (++counter == ct_target) ev_break(ct_loop, EVBREAK_ALL); }
static void *ct_producer(void *p) {
    producer_arg *a = p;
    atomic_store(&a->t_start, bench_now_ns());
    for (uint64_t i = 0; i < a->n; i++) post(a->b, ct_job, NULL);
    return NULL;
}

static void w_cross_thread(void) {
    bench_loop b; bench_loop_init(&b);
    counter = 0; ct_target = N_CROSS_THREAD; ct_loop = b.loop;
    producer_arg a = {&b, N_CROSS_THREAD, 0};
    pthread_t th;
    pthread_create(&th, NULL, ct_producer, &a);
    ev_run(b.loop, 0);
    uint64_t t1 = bench_now_ns();
    pthread_join(th, NULL);
    emit_rate("cross_thread", N_CROSS_THREAD, t1 - atomic_load(&a.t_start));
    bench_loop_destroy(&b);
}

/* wakeup_latency: the loop thread blocks in ev_run; another thread stamps t0 and posts one handler that
 * stamps t1; one at a time. */
static _Atomic uint64_t wk_t1;
static void wk_job(void *arg) { (void)arg; atomic_store(&wk_t1, bench_now_ns()); }
static void wk_quit_job(void *arg) { bench_loop *b = arg; ev_break(b->loop, EVBREAK_ALL); }
static void *wk_loop_thread(void *p) { bench_loop *b = p; ev_run(b->loop, 0); return NULL; }

static void w_wakeup_latency(void) {
    bench_loop b; bench_loop_init(&b);
    pthread_t th;
    pthread_create(&th, NULL, wk_loop_thread, &b);
    int64_t *lat = malloc(sizeof(int64_t) * N_WAKEUP);
    usleep(10000);
    for (int i = -100; i < N_WAKEUP; i++) {
        atomic_store(&wk_t1, 0);
        uint64_t t0 = bench_now_ns();
        post(&b, wk_job, NULL);
        uint64_t t1;
        while ((t1 = atomic_load(&wk_t1)) == 0) { }
        if (i >= 0) lat[i] = (int64_t)(t1 - t0);
        usleep(50); /* let the loop thread go back to sleep in epoll_wait */
    }
    post(&b, wk_quit_job, &b);
    pthread_join(th, NULL);
    qsort(lat, N_WAKEUP, sizeof(int64_t), bench_cmp_i64);
    printf("{\"impl\":\"libev\",\"workload\":\"wakeup_latency\",\"ops\":%d,\"p50_us\":%.3f,\"p99_us\":%.3f}\n",
        N_WAKEUP, bench_percentile(lat, N_WAKEUP, 50) / 1e3, bench_percentile(lat, N_WAKEUP, 99) / 1e3);
    free(lat);
    bench_loop_destroy(&b);
}

/* timers: 100 000 one-shot timers, deadlines spread evenly over 100 ms starting 20 ms from now. */
typedef struct { ev_timer w; uint64_t deadline; } bench_timer;
static int64_t *tm_late;
static size_t tm_fired;
static uint64_t tm_early;
static void tm_cb(struct ev_loop *loop, ev_timer *w, int revents) {
    (void)loop; (void)revents;
    uint64_t now = bench_now_ns();
    bench_timer *t = (bench_timer *)w;
    if (now < t->deadline) tm_early++;
    tm_late[tm_fired++] = (int64_t)(now - t->deadline);
}

static void w_timers(void) {
    bench_loop b; bench_loop_init(&b);
    tm_late = malloc(sizeof(int64_t) * N_TIMERS);
    tm_fired = 0; tm_early = 0;
    uint64_t cpu0 = bench_cpu_ns();
    bench_timer *timers = malloc(sizeof(bench_timer) * N_TIMERS);
    ev_now_update(b.loop);           /* libev timers are relative to its cached monotonic time ... */
    uint64_t base_mono = bench_now_ns(); /* ... which this reads right after refreshing it */
    uint64_t start = base_mono + TIMER_START_NS;
    for (int i = 0; i < N_TIMERS; i++) {
        bench_timer *t = &timers[i];
        t->deadline = start + TIMER_SLOT(i) * (TIMER_SPAN_NS / N_TIMERS);
        ev_timer_init(&t->w, tm_cb, (double)(t->deadline - base_mono) / 1e9, 0.0);
        ev_timer_start(b.loop, &t->w);
    }
    uint64_t setup_end = bench_now_ns();
    ev_timer_stop(b.loop, &b.far_timer);
    ev_io_stop(b.loop, &b.idle_io);
    ev_unref(b.loop); /* the async watcher must not keep ev_run alive */
    ev_run(b.loop, 0);
    ev_ref(b.loop);
    uint64_t cpu1 = bench_cpu_ns();
    qsort(tm_late, tm_fired, sizeof(int64_t), bench_cmp_i64);
    printf("{\"impl\":\"libev\",\"workload\":\"timers\",\"ops\":%zu,\"cpu_ns_per_timer\":%.1f,"
           "\"setup_ns_per_timer\":%.1f,\"late_p50_us\":%.1f,\"late_p99_us\":%.1f,\"early\":%llu}\n",
        tm_fired, (double)(cpu1 - cpu0) / (double)N_TIMERS, (double)(setup_end - base_mono) / (double)N_TIMERS,
        bench_percentile(tm_late, tm_fired, 50) / 1e3, bench_percentile(tm_late, tm_fired, 99) / 1e3,
        (unsigned long long)tm_early);
    free(timers); free(tm_late);
    ev_timer_start(b.loop, &b.far_timer);
    ev_io_start(b.loop, &b.idle_io);
    bench_loop_destroy(&b);
}

int main(int argc, char **argv) {
    static const struct { const char *name; void (*fn)(void); } all[] = {
        {"idle_poll", w_idle_poll}, {"post_poll_1", w_post_poll_1}, {"post_poll_1000", w_post_poll_1000},
        {"cross_thread", w_cross_thread}, {"wakeup_latency", w_wakeup_latency}, {"timers", w_timers},
    };
    setvbuf(stdout, NULL, _IOLBF, 0);
    int ran = 0;
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        if (argc < 2 || strcmp(argv[1], "all") == 0 || strcmp(argv[1], all[i].name) == 0) { all[i].fn(); ran++; }
    }
    if (!ran) { fprintf(stderr, "usage: %s [all|idle_poll|post_poll_1|post_poll_1000|cross_thread|wakeup_latency|timers]\n", argv[0]); return 2; }
    return 0;
}
