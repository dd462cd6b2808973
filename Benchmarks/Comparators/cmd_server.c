#define _GNU_SOURCE
/* Anchor for the control-channel workload: a minimal C libev UNIX-socket command server.
 * Accepts, reads until the braces of one JSON object balance (strings and escapes respected), writes a
 * fixed reply shaped like Kea's list-commands answer, closes. No JSON parsing: it is the floor a
 * Kea-style control channel can't beat.
 * Usage: cmd-server <socket path>   (runs until SIGTERM/SIGINT)
 * Build: gcc -O2 -o cmd-server cmd_server.c -lev */
#include <ev.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static const char REPLY[] =
    "{ \"arguments\": [ \"build-report\", \"config-get\", \"config-reload\", \"config-set\", \"config-test\", "
    "\"config-write\", \"list-commands\", \"shutdown\", \"status-get\", \"version-get\" ], \"result\": 0 }";

typedef struct {
    ev_io io;
    int depth, started, in_string, escaped;
    size_t sent;
    int replying;
} conn;

static void conn_close(struct ev_loop *loop, conn *c) {
    ev_io_stop(loop, &c->io);
    close(c->io.fd);
    free(c);
}

static void conn_cb(struct ev_loop *loop, ev_io *w, int revents) {
    (void)revents;
    conn *c = (conn *)w;
    if (!c->replying) {
        char buf[4096];
        for (;;) {
            ssize_t n = read(w->fd, buf, sizeof buf);
            if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
            if (n <= 0) { conn_close(loop, c); return; }
            for (ssize_t i = 0; i < n; i++) {
                char ch = buf[i];
                if (c->in_string) {
                    if (c->escaped) c->escaped = 0;
                    else if (ch == '\\') c->escaped = 1;
                    else if (ch == '"') c->in_string = 0;
                } else if (ch == '"') c->in_string = 1;
                else if (ch == '{') { c->depth++; c->started = 1; }
                else if (ch == '}') c->depth--;
            }
            if (c->started && c->depth <= 0) break;
        }
        c->replying = 1;
        ev_io_stop(loop, &c->io);
        ev_io_set(&c->io, c->io.fd, EV_WRITE);
        ev_io_start(loop, &c->io);
    }
    while (c->sent < sizeof REPLY - 1) {
        ssize_t n = write(w->fd, REPLY + c->sent, sizeof REPLY - 1 - c->sent);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
        if (n <= 0) break;
        c->sent += (size_t)n;
    }
    conn_close(loop, c);
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents) {
    (void)revents;
    for (;;) {
        int fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return;
        conn *c = calloc(1, sizeof *c);
        ev_io_init(&c->io, conn_cb, fd, EV_READ);
        ev_io_start(loop, &c->io);
    }
}

static void stop_cb(struct ev_loop *loop, ev_signal *w, int revents) { (void)w; (void)revents; ev_break(loop, EVBREAK_ALL); }

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: %s <socket path>\n", argv[0]); return 2; }
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(argv[1]) >= sizeof addr.sun_path) { fprintf(stderr, "path too long\n"); return 2; }
    strcpy(addr.sun_path, argv[1]);
    unlink(argv[1]);
    int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(lfd, 1024) != 0) {
        perror("listen"); return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    struct ev_loop *loop = ev_default_loop(EVBACKEND_EPOLL);
    ev_io acc; ev_io_init(&acc, accept_cb, lfd, EV_READ); ev_io_start(loop, &acc);
    ev_signal s1, s2;
    ev_signal_init(&s1, stop_cb, SIGTERM); ev_signal_start(loop, &s1);
    ev_signal_init(&s2, stop_cb, SIGINT); ev_signal_start(loop, &s2);
    printf("ready %s\n", argv[1]);
    fflush(stdout);
    ev_run(loop, 0);
    close(lfd);
    unlink(argv[1]);
    return 0;
}
