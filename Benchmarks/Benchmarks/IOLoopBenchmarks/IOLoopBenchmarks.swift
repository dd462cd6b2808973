// package-benchmark suites for IOLoop: wall clock, CPU and malloc counters per operation, for
// regression tracking (`swift package benchmark` in Benchmarks/). Side-by-side ratios against C libev
// and Boost.Asio come from `ioloop-bench` and `compare`, which share one methodology with the comparators.

import BenchSupport
import Benchmark
import ControlChannel
import Glibc
import IOLoop
import Synchronization

let benchmarks: @Sendable () -> Void = {
    let metrics: [BenchmarkMetric] = [.wallClock, .cpuTotal, .throughput, .mallocCountTotal, .syscalls]
    Benchmark.defaultConfiguration = .init(
        metrics: metrics,
        warmupIterations: 3,
        scalingFactor: .kilo,
        maxDuration: .seconds(2),
        maxIterations: 1_000
    )

    // Idle poll(): a service with one far timer pending and a work guard (see BenchLoop for why no
    // idle socket yet). Must show 0 mallocs.
    Benchmark("idle poll()") { benchmark, loop in
        for _ in benchmark.scaledIterations {
            blackHole(try loop.io.poll())
        }
    } setup: {
        try BenchLoop()
    }

    Benchmark("post+poll batch 1") { benchmark, loop in
        let counter = Counter()
        for _ in benchmark.scaledIterations {
            loop.io.post { counter.value += 1 }
            blackHole(try loop.io.poll())
        }
    } setup: {
        try BenchLoop()
    }

    Benchmark("post+poll batch 1000", configuration: .init(scalingFactor: .mega)) { benchmark, loop in
        let counter = Counter()
        for _ in 0..<(benchmark.scaledIterations.count / 1000) {
            for _ in 0..<1000 { loop.io.post { counter.value += 1 } }
            blackHole(try loop.io.poll())
        }
    } setup: {
        try BenchLoop()
    }

    // Cross-thread post: a producer thread posts scaledIterations handlers; this thread run()s them.
    Benchmark("cross-thread post", configuration: .init(scalingFactor: .mega)) { benchmark, loop in
        let io = loop.io
        let n = benchmark.scaledIterations.count
        let counter = Counter()
        let producer = startThread {
            for _ in 0..<n {
                io.post {
                    counter.value += 1
                    if counter.value == n { io.stop() }
                }
            }
        }
        try io.run()
        join(producer)
        io.restart()
    } setup: {
        try BenchLoop()
    }

    // Wakeup latency of one cross-thread post: the loop thread sleeps in run(); this thread posts one
    // handler and spins until it has run. The wall-clock percentiles are the latency distribution.
    Benchmark(
        "wakeup latency (cross-thread post)",
        configuration: .init(
            metrics: [.wallClock, .mallocCountTotal], scalingFactor: .one, maxDuration: .seconds(2),
            maxIterations: 10_000)
    ) { benchmark, state in
        nonisolated(unsafe) let done = state.done
        wakeupState = state
        benchmark.startMeasurement()
        state.loop.io.post { done.pointee.store(true, ordering: .releasing) }
        while !done.pointee.load(ordering: .acquiring) {}
        benchmark.stopMeasurement()
        done.pointee.store(false, ordering: .relaxed)
        usleep(50)
    } setup: {
        try WakeupState()
    } teardown: {
        wakeupState?.finish()
        wakeupState = nil
    }

    // 100 000 one-shot timers over 100 ms; custom metrics carry lateness and early fires.
    Benchmark(
        "100k timers over 100 ms",
        configuration: .init(
            metrics: [
                .wallClock, .cpuTotal, .mallocCountTotal, TimerMetrics.lateP50, TimerMetrics.lateP99,
                TimerMetrics.early,
            ],
            scalingFactor: .one, maxDuration: .seconds(5), maxIterations: 5)
    ) { benchmark in
        let io = try IOService()
        let results = TimerResults()
        let timers = armSpreadTimers(io, into: results)
        try io.run()
        benchmark.stopMeasurement()
        let late = results.late.sorted()
        benchmark.measurement(TimerMetrics.lateP50, Int(percentile(late, 50) / 1000))
        benchmark.measurement(TimerMetrics.lateP99, Int(percentile(late, 99) / 1000))
        benchmark.measurement(TimerMetrics.early, results.early)
        _ = timers
    }

    // Control channel, in process. Throughput (×1 per inner iteration) times the command size is MB/s;
    // ioloop-bench prints MB/s directly (framer_parser_small / framer_parser_1mib / process_command).
    Benchmark("framer+parser small command (27 B)") { benchmark in
        var framer = JSONFramer()
        let bytes = ControlFixtures.smallCommand
        for _ in benchmark.scaledIterations {
            blackHole(ControlFixtures.frameAndParse(bytes, framer: &framer))
        }
    }

    Benchmark(
        "framer+parser 1 MiB command",
        configuration: .init(scalingFactor: .one, maxDuration: .seconds(3), maxIterations: 100)
    ) { benchmark, bytes in
        var framer = JSONFramer()
        for _ in benchmark.scaledIterations {
            blackHole(ControlFixtures.frameAndParse(bytes, framer: &framer))
        }
    } setup: {
        ControlFixtures.largeCommand
    }

    Benchmark("CommandManager.processCommand (list-commands)") { benchmark, manager in
        let command = try JSONParser.parse(ControlFixtures.smallCommand)
        var sink = 0
        for _ in benchmark.scaledIterations {
            manager.processCommand(command) { if case .object(let o) = $0 { sink &+= o.count } }
        }
        blackHole(sink)
    } setup: {
        ControlFixtures.makeManager()
    }

    Benchmark("CommandManager.processCommandBytes (list-commands)") { benchmark, manager in
        var sink = 0
        for _ in benchmark.scaledIterations {
            manager.processCommandBytes(ControlFixtures.smallCommand) { sink &+= $0.count }
        }
        blackHole(sink)
    } setup: {
        ControlFixtures.makeManager()
    }
}

enum TimerMetrics {
    static var lateP50: BenchmarkMetric { .custom("timer lateness p50 (us)") }
    static var lateP99: BenchmarkMetric { .custom("timer lateness p99 (us)") }
    static var early: BenchmarkMetric { .custom("early fires") }
}

/// The wakeup benchmark's state, for its teardown hook (which takes no arguments). Touched only by the
/// benchmark runner's thread.
nonisolated(unsafe) var wakeupState: WakeupState?

/// A loop thread blocked in run() plus a flag its handler sets.
final class WakeupState: @unchecked Sendable {
    let loop: BenchLoop
    let done: UnsafeMutablePointer<Atomic<Bool>>
    let thread: pthread_t

    init() throws {
        loop = try BenchLoop()
        done = .allocate(capacity: 1)
        done.initialize(to: Atomic(false))
        let io = loop.io
        thread = startThread { _ = try? io.run() }
        usleep(10_000)
    }

    func finish() {
        loop.io.stop()
        join(thread)
        loop.io.restart()
        done.deallocate()
    }
}
