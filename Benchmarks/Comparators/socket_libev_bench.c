// C libev reference for Benchmarks/Sources/SocketBench: the same two workloads, written the plain libev way.
//   bulk:  a writer thread sends TOTAL bytes over a UNIX socketpair in 64 KiB blocking writes; the loop reads
//          64 KiB per readiness callback until EOF.
//   conn:  a client thread does connect, write 64 B, read 64 B, close N times against a UNIX listener; the
//          loop accepts, reads, writes back and closes.
// Build: cc -O2 -o libev_bench libev_bench.c -lev -lpthread
#define _GNU_SOURCE
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static long long total = 8LL << 30;
static int writerFD;

static void *writer(void *arg) {
    (void)arg;
    static char buf[65536];
    long long left = total;
    while (left > 0) {
        ssize_t n = write(writerFD, buf, left < (long long)sizeof buf ? (size_t)left : sizeof buf);
        if (n < 0) { if (errno == EINTR) continue; perror("write"); exit(1); }
        left -= n;
    }
    close(writerFD);
    return NULL;
}

static char readBuf[65536];
static long long received;

static void bulk_cb(struct ev_loop *loop, ev_io *w, int revents) {
    (void)revents;
    ssize_t n = read(w->fd, readBuf, sizeof readBuf);
    if (n > 0) { received += n; return; }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    ev_io_stop(loop, w);
}

static const char *path = "/tmp/libev_bench.sock";
static int conns = 20000;

static void *client(void *arg) {
    (void)arg;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    strcpy(sa.sun_path, path);
    char msg[64] = {1}, back[64];
    for (int i = 0; i < conns; i++) {
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) { perror("connect"); exit(1); }
        if (write(fd, msg, 64) != 64) { perror("cwrite"); exit(1); }
        size_t got = 0;
        while (got < 64) { ssize_t n = read(fd, back + got, 64 - got); if (n <= 0) { perror("cread"); exit(1); } got += n; }
        close(fd);
    }
    return NULL;
}

typedef struct { ev_io io; } conn_t;
static int served;

static void conn_cb(struct ev_loop *loop, ev_io *w, int revents) {
    (void)revents;
    char buf[64];
    ssize_t n = read(w->fd, buf, sizeof buf);
    if (n < 0 && errno == EAGAIN) return;
    if (n > 0) { ssize_t m = send(w->fd, buf, n, MSG_NOSIGNAL); (void)m; }
    ev_io_stop(loop, w);
    close(w->fd);
    free(w);
    if (++served == conns) ev_break(loop, EVBREAK_ALL);
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents) {
    (void)revents;
    int c = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (c < 0) return;
    ev_io *cw = malloc(sizeof *cw);
    ev_io_init(cw, conn_cb, c, EV_READ);
    ev_io_start(loop, cw);
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "bulk";
    struct ev_loop *loop = ev_loop_new(EVBACKEND_EPOLL);
    if (strcmp(mode, "bulk") == 0) {
        if (argc > 2) total = atoll(argv[2]) << 20;
        int sv[2];
        socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
        fcntl(sv[0], F_SETFL, O_NONBLOCK);
        writerFD = sv[1];
        ev_io w;
        ev_io_init(&w, bulk_cb, sv[0], EV_READ);
        ev_io_start(loop, &w);
        pthread_t t;
        double t0 = now();
        pthread_create(&t, NULL, writer, NULL);
        ev_run(loop, 0);
        double dt = now() - t0;
        pthread_join(t, NULL);
        printf("C libev bulk read: %.2f GB/s (%lld bytes in %.3f s)\n", received / dt / 1e9, received, dt);
    } else {
        if (argc > 2) conns = atoi(argv[2]);
        unlink(path);
        int l = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        strcpy(sa.sun_path, path);
        bind(l, (struct sockaddr *)&sa, sizeof sa);
        listen(l, 4096);
        ev_io w;
        ev_io_init(&w, accept_cb, l, EV_READ);
        ev_io_start(loop, &w);
        pthread_t t;
        double t0 = now();
        pthread_create(&t, NULL, client, NULL);
        ev_run(loop, 0);
        double dt = now() - t0;
        pthread_join(t, NULL);
        printf("C libev accept+read+write+close: %.0f connections/s (%d in %.3f s)\n", conns / dt, conns, dt);
        unlink(path);
    }
    return 0;
}
