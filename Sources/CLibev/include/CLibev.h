// CLibev: the smallest possible bridge from Swift to the system libev (Debian libev-dev, -lev).
//
// Swift imports libev's functions and enums directly but not its function-like macros, so this
// header wraps exactly those macros as `static inline` functions. No libev source is vendored:
// the library itself is the one the system installs.
#ifndef IOLOOP_CLIBEV_H
#define IOLOOP_CLIBEV_H

// libev-3 compatibility names include a function called ev_loop that clashes with the struct.
#define EV_COMPAT3 0
#include <ev.h>

// The two Linux descriptors the IOService pairs with libev's epoll loop (a wake-up eventfd and a timerfd
// for its timer heap). Glibc's Swift module does not export these headers.
#include <sys/eventfd.h>
#include <sys/timerfd.h>

typedef void (*ioloop_ev_io_cb)(struct ev_loop *loop, ev_io *w, int revents);
typedef void (*ioloop_ev_timer_cb)(struct ev_loop *loop, ev_timer *w, int revents);
typedef void (*ioloop_ev_signal_cb)(struct ev_loop *loop, ev_signal *w, int revents);
typedef void (*ioloop_ev_async_cb)(struct ev_loop *loop, ev_async *w, int revents);
typedef void (*ioloop_ev_prepare_cb)(struct ev_loop *loop, ev_prepare *w, int revents);

static inline void ioloop_ev_io_init(ev_io *w, ioloop_ev_io_cb cb, int fd, int events) {
    ev_io_init(w, cb, fd, events);
}
static inline void ioloop_ev_io_set(ev_io *w, int fd, int events) { ev_io_set(w, fd, events); }
static inline void ioloop_ev_io_modify(ev_io *w, int events) { ev_io_modify(w, events); }

static inline void ioloop_ev_timer_init(ev_timer *w, ioloop_ev_timer_cb cb, ev_tstamp after, ev_tstamp repeat) {
    ev_timer_init(w, cb, after, repeat);
}
static inline void ioloop_ev_timer_set(ev_timer *w, ev_tstamp after, ev_tstamp repeat) {
    ev_timer_set(w, after, repeat);
}

static inline void ioloop_ev_signal_init(ev_signal *w, ioloop_ev_signal_cb cb, int signum) {
    ev_signal_init(w, cb, signum);
}

static inline void ioloop_ev_async_init(ev_async *w, ioloop_ev_async_cb cb) { ev_async_init(w, cb); }
static inline int ioloop_ev_async_pending(ev_async *w) { return ev_async_pending(w); }

static inline void ioloop_ev_prepare_init(ev_prepare *w, ioloop_ev_prepare_cb cb) { ev_prepare_init(w, cb); }

static inline int ioloop_ev_is_active(const void *w) { return ev_is_active((const ev_watcher *)w); }
static inline int ioloop_ev_is_pending(const void *w) { return ev_is_pending((const ev_watcher *)w); }

/// accept4(fd, NULL, NULL, flags): glibc declares accept4 only under _GNU_SOURCE, so it lives in shim.c.
int ioloop_accept4(int fd, int flags);

static inline void ioloop_ev_set_priority(void *w, int priority) { ev_set_priority((ev_watcher *)w, priority); }

#endif
