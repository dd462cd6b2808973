// C++ comparator on Boost.Asio (Debian libboost-dev, header-only): the same poll/post/cross-thread/timer
// workloads as ioloop-bench, with io_context::poll / run, boost::asio::post and steady_timer.
// One JSON line per workload on stdout.
// Build: g++ -O2 -std=c++17 -o asio-bench asio_bench.cpp -lpthread
#include <boost/asio.hpp>
#include <algorithm>
#include <atomic>
#include <cstring>
#include <thread>
#include <vector>
#include <unistd.h>
extern "C" {
#include "bench_common.h"
}

namespace asio = boost::asio;
using work_guard = asio::executor_work_guard<asio::io_context::executor_type>;

static void emit_rate(const char *workload, uint64_t ops, uint64_t ns) {
    std::printf("{\"impl\":\"asio\",\"workload\":\"%s\",\"ops\":%llu,\"ns_per_op\":%.3f,\"ops_per_s\":%.1f}\n",
        workload, (unsigned long long)ops, (double)ns / (double)ops, (double)ops * 1e9 / (double)ns);
}

// The common loop set-up: one idle descriptor wait (empty pipe) and one far timer.
struct BenchLoop {
    asio::io_context io{1};
    int fds[2];
    asio::posix::stream_descriptor idle{io};
    asio::steady_timer far{io};
    BenchLoop() {
        if (pipe(fds) != 0) { std::perror("pipe"); std::exit(1); }
        idle.assign(fds[0]);
        idle.async_wait(asio::posix::descriptor_base::wait_read, [](boost::system::error_code) {});
        far.expires_after(std::chrono::hours(1));
        far.async_wait([](boost::system::error_code) {});
        io.poll();
    }
    ~BenchLoop() {
        idle.close();
        far.cancel();
        io.run();
        ::close(fds[1]);
    }
};

static void w_idle_poll() {
    BenchLoop b;
    for (int i = 0; i < 10000; i++) b.io.poll();
    uint64_t t0 = bench_now_ns();
    for (int i = 0; i < N_IDLE_POLL; i++) b.io.poll();
    uint64_t t1 = bench_now_ns();
    emit_rate("idle_poll", N_IDLE_POLL, t1 - t0);
}

static void w_post_poll_1() {
    BenchLoop b;
    uint64_t counter = 0;
    for (int i = 0; i < 10000; i++) { asio::post(b.io, [&counter] { counter++; }); b.io.poll(); }
    uint64_t t0 = bench_now_ns();
    for (int i = 0; i < N_POST_POLL_1; i++) { asio::post(b.io, [&counter] { counter++; }); b.io.poll(); }
    uint64_t t1 = bench_now_ns();
    if (counter != 10000 + N_POST_POLL_1) { std::fprintf(stderr, "lost handlers\n"); std::exit(1); }
    emit_rate("post_poll_1", N_POST_POLL_1, t1 - t0);
}

static void w_post_poll_1000() {
    BenchLoop b;
    uint64_t counter = 0;
    for (int r = 0; r < 100; r++) {
        for (int i = 0; i < POST_BATCH; i++) asio::post(b.io, [&counter] { counter++; });
        b.io.poll();
    }
    uint64_t t0 = bench_now_ns();
    for (int r = 0; r < N_POST_BATCHES; r++) {
        for (int i = 0; i < POST_BATCH; i++) asio::post(b.io, [&counter] { counter++; });
        b.io.poll();
    }
    uint64_t t1 = bench_now_ns();
    if (counter != (uint64_t)(100 + N_POST_BATCHES) * POST_BATCH) { std::fprintf(stderr, "lost handlers\n"); std::exit(1); }
    emit_rate("post_poll_1000", (uint64_t)N_POST_BATCHES * POST_BATCH, t1 - t0);
}

static void w_cross_thread() {
    BenchLoop b;
    work_guard guard(b.io.get_executor());
    uint64_t counter = 0;
    std::atomic<uint64_t> tStart{0};
    std::thread producer([&] {
        tStart.store(bench_now_ns());
        for (uint64_t i = 0; i < N_CROSS_THREAD; i++)
            asio::post(b.io, [&counter, &b] { if (++counter == N_CROSS_THREAD) b.io.stop(); });
    });
    b.io.run();
    uint64_t t1 = bench_now_ns();
    producer.join();
    b.io.restart();
    guard.reset();
    emit_rate("cross_thread", N_CROSS_THREAD, t1 - tStart.load());
}

static void w_wakeup_latency() {
    BenchLoop b;
    work_guard guard(b.io.get_executor());
    std::thread loopThread([&] { b.io.run(); });
    std::vector<int64_t> lat(N_WAKEUP);
    std::atomic<uint64_t> stamp{0};
    usleep(10000);
    for (int i = -100; i < N_WAKEUP; i++) {
        stamp.store(0);
        uint64_t t0 = bench_now_ns();
        asio::post(b.io, [&stamp] { stamp.store(bench_now_ns()); });
        uint64_t t1;
        while ((t1 = stamp.load()) == 0) {}
        if (i >= 0) lat[i] = (int64_t)(t1 - t0);
        usleep(50); // let the loop thread go back to sleep in epoll_wait
    }
    guard.reset();
    b.io.stop();
    loopThread.join();
    b.io.restart();
    std::sort(lat.begin(), lat.end());
    std::printf("{\"impl\":\"asio\",\"workload\":\"wakeup_latency\",\"ops\":%d,\"p50_us\":%.3f,\"p99_us\":%.3f}\n",
        N_WAKEUP, bench_percentile(lat.data(), N_WAKEUP, 50) / 1e3, bench_percentile(lat.data(), N_WAKEUP, 99) / 1e3);
}

static void w_timers() {
    asio::io_context io{1};
    std::vector<int64_t> late;
    late.reserve(N_TIMERS);
    uint64_t early = 0;
    uint64_t cpu0 = bench_cpu_ns();
    std::vector<asio::steady_timer> timers;
    timers.reserve(N_TIMERS);
    std::vector<uint64_t> deadlines(N_TIMERS);
    uint64_t setup_start = bench_now_ns();
    uint64_t start = setup_start + TIMER_START_NS;
    for (int i = 0; i < N_TIMERS; i++) {
        uint64_t deadline = start + TIMER_SLOT(i) * (TIMER_SPAN_NS / N_TIMERS);
        deadlines[i] = deadline;
        timers.emplace_back(io);
        // steady_clock is CLOCK_MONOTONIC on Linux, the clock bench_now_ns reads.
        timers.back().expires_at(std::chrono::steady_clock::time_point(std::chrono::nanoseconds(deadline)));
        timers.back().async_wait([&late, &early, deadline](boost::system::error_code) {
            uint64_t now = bench_now_ns();
            if (now < deadline) early++;
            late.push_back((int64_t)(now - deadline));
        });
    }
    uint64_t setup_end = bench_now_ns();
    io.run();
    uint64_t cpu1 = bench_cpu_ns();
    std::sort(late.begin(), late.end());
    std::printf("{\"impl\":\"asio\",\"workload\":\"timers\",\"ops\":%zu,\"cpu_ns_per_timer\":%.1f,"
                "\"setup_ns_per_timer\":%.1f,\"late_p50_us\":%.1f,\"late_p99_us\":%.1f,\"early\":%llu}\n",
        late.size(), (double)(cpu1 - cpu0) / (double)N_TIMERS, (double)(setup_end - setup_start) / (double)N_TIMERS,
        bench_percentile(late.data(), late.size(), 50) / 1e3, bench_percentile(late.data(), late.size(), 99) / 1e3,
        (unsigned long long)early);
}

int main(int argc, char **argv) {
    struct { const char *name; void (*fn)(); } all[] = {
        {"idle_poll", w_idle_poll}, {"post_poll_1", w_post_poll_1}, {"post_poll_1000", w_post_poll_1000},
        {"cross_thread", w_cross_thread}, {"wakeup_latency", w_wakeup_latency}, {"timers", w_timers},
    };
    setvbuf(stdout, nullptr, _IOLBF, 0);
    int ran = 0;
    for (auto &w : all) {
        if (argc < 2 || !std::strcmp(argv[1], "all") || !std::strcmp(argv[1], w.name)) { w.fn(); ran++; }
    }
    if (!ran) { std::fprintf(stderr, "usage: %s [all|<workload>]\n", argv[0]); return 2; }
    return 0;
}
