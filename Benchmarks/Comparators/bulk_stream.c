#define _GNU_SOURCE
/* Anchor pair for the UNIX-stream bulk-read workload.
 *   bulk-stream read <socket path>        C libev reader: listens, accepts one connection, reads to EOF
 *                                          with 64 KiB reads from an ev_io callback, prints one JSON line.
 *   bulk-stream write <socket path> <MiB> blocking writer: connects, writes <MiB> in 64 KiB chunks, closes.
 * IOLoop's reader takes the place of `read` (same socket path, same writer) once it has stream sockets.
 * Build: gcc -O2 -o bulk-stream bulk_stream.c -lev */
#include <ev.h>
#include <errno.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include "bench_common.h"

#define CHUNK 65536
static char buf[CHUNK];
static uint64_t total, t_first, t_last;

static void read_cb(struct ev_loop *loop, ev_io *w, int revents) {
    (void)revents;
    for (;;) {
        ssize_t n = read(w->fd, buf, sizeof buf);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
        if (n <= 0) { t_last = bench_now_ns(); ev_io_stop(loop, w); close(w->fd); return; }
        if (total == 0) t_first = bench_now_ns();
        total += (uint64_t)n;
    }
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents) {
    (void)revents;
    int fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;
    ev_io_stop(loop, w);
    static ev_io conn;
    ev_io_init(&conn, read_cb, fd, EV_READ);
    ev_io_start(loop, &conn);
}

static int make_addr(const char *path, struct sockaddr_un *a) {
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof a->sun_path) return -1;
    strcpy(a->sun_path, path);
    return 0;
}

int main(int argc, char **argv) {
    struct sockaddr_un a;
    if (argc >= 3 && !strcmp(argv[1], "read") && make_addr(argv[2], &a) == 0) {
        unlink(argv[2]);
        int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof a) || listen(lfd, 1)) { perror("listen"); return 1; }
        struct ev_loop *loop = ev_default_loop(EVBACKEND_EPOLL);
        ev_io acc; ev_io_init(&acc, accept_cb, lfd, EV_READ); ev_io_start(loop, &acc);
        printf("ready %s\n", argv[2]); fflush(stdout);
        ev_run(loop, 0);
        close(lfd); unlink(argv[2]);
        double secs = (double)(t_last - t_first) / 1e9;
        printf("{\"impl\":\"libev\",\"workload\":\"bulk_read\",\"bytes\":%llu,\"mb_per_s\":%.1f}\n",
            (unsigned long long)total, secs > 0 ? (double)total / 1048576.0 / secs : 0.0);
        return 0;
    }
    if (argc >= 4 && !strcmp(argv[1], "write") && make_addr(argv[2], &a) == 0) {
        long mib = atol(argv[3]);
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a)) { perror("connect"); return 1; }
        memset(buf, 'x', sizeof buf);
        for (long i = 0; i < mib * (1048576 / CHUNK); i++) {
            size_t off = 0;
            while (off < CHUNK) {
                ssize_t n = write(fd, buf + off, CHUNK - off);
                if (n < 0 && errno == EINTR) continue;
                if (n <= 0) { perror("write"); return 1; }
                off += (size_t)n;
            }
        }
        close(fd);
        return 0;
    }
    fprintf(stderr, "usage: %s read <socket> | write <socket> <MiB>\n", argv[0]);
    return 2;
}
