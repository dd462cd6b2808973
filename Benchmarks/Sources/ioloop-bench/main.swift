// Standalone runner: the same workloads, sizes, timing and JSON output as Comparators/libev_bench.c and
// Comparators/asio_bench.cpp, so `compare` can put the three side by side.
// Usage: ioloop-bench [all|idle_poll|post_poll_1|post_poll_1000|cross_thread|wakeup_latency|timers
//                      |framer_parser_small|framer_parser_1mib|process_command]
// The last three are IOLoop-only (in-process control channel, no anchor): MB/s and ns per command.
import BenchSupport
import ControlChannel
import Glibc
import IOLoop
import Synchronization

func emitRate(_ workload: String, _ ops: Int, _ ns: UInt64) {
    let nsPerOp = Double(ns) / Double(ops)
    let opsPerS = Double(ops) * 1e9 / Double(ns)
    print(
        #"{"impl":"ioloop","workload":"\#(workload)","ops":\#(ops),"ns_per_op":\#(fmt(nsPerOp, 3)),"ops_per_s":\#(fmt(opsPerS, 1))}"#
    )
}

func fmt(_ x: Double, _ digits: Int) -> String {
    var buf = [CChar](repeating: 0, count: 64)
    _ = withVaList([x]) { vsnprintf(&buf, buf.count, "%.\(digits)f", $0) }
    return String(decoding: buf.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

func idlePoll() throws {
    let b = try BenchLoop()
    for _ in 0..<10_000 { try b.io.poll() }
    let t0 = nowNs()
    for _ in 0..<Sizes.idlePoll { try b.io.poll() }
    let t1 = nowNs()
    emitRate("idle_poll", Sizes.idlePoll, t1 - t0)
}

func postPoll1() throws {
    let b = try BenchLoop()
    let counter = Counter()
    for _ in 0..<10_000 {
        b.io.post { counter.value += 1 }
        try b.io.poll()
    }
    let t0 = nowNs()
    for _ in 0..<Sizes.postPoll1 {
        b.io.post { counter.value += 1 }
        try b.io.poll()
    }
    let t1 = nowNs()
    precondition(counter.value == 10_000 + Sizes.postPoll1, "lost handlers")
    emitRate("post_poll_1", Sizes.postPoll1, t1 - t0)
}

func postPoll1000() throws {
    let b = try BenchLoop()
    let counter = Counter()
    for _ in 0..<100 {
        for _ in 0..<Sizes.postBatch { b.io.post { counter.value += 1 } }
        try b.io.poll()
    }
    let t0 = nowNs()
    for _ in 0..<Sizes.postBatches {
        for _ in 0..<Sizes.postBatch { b.io.post { counter.value += 1 } }
        try b.io.poll()
    }
    let t1 = nowNs()
    precondition(counter.value == (100 + Sizes.postBatches) * Sizes.postBatch, "lost handlers")
    emitRate("post_poll_1000", Sizes.postBatches * Sizes.postBatch, t1 - t0)
}

func crossThread() throws {
    let b = try BenchLoop()
    let io = b.io
    let counter = Counter()
    let tStart = Atomic<UInt64>(0)
    let n = Sizes.crossThread
    nonisolated(unsafe) let startRef = UnsafeMutablePointer<UInt64>.allocate(capacity: 1)
    defer { startRef.deallocate() }
    let producer = startThread {
        startRef.pointee = nowNs()
        for _ in 0..<n {
            io.post {
                counter.value += 1
                if counter.value == n { io.stop() }
            }
        }
    }
    try io.run()
    let t1 = nowNs()
    join(producer)
    io.restart()
    _ = tStart
    emitRate("cross_thread", n, t1 - startRef.pointee)
}

func wakeupLatency() throws {
    let b = try BenchLoop()
    let io = b.io
    let loopThread = startThread { _ = try? io.run() }
    let stamp = UnsafeMutablePointer<Atomic<UInt64>>.allocate(capacity: 1)
    stamp.initialize(to: Atomic(0))
    defer { stamp.deallocate() }
    nonisolated(unsafe) let stampRef = stamp
    var lat = [Int64](repeating: 0, count: Sizes.wakeup)
    usleep(10_000)
    for i in -100..<Sizes.wakeup {
        stamp.pointee.store(0, ordering: .sequentiallyConsistent)
        let t0 = nowNs()
        io.post { stampRef.pointee.store(nowNs(), ordering: .sequentiallyConsistent) }
        var t1: UInt64 = 0
        repeat { t1 = stamp.pointee.load(ordering: .sequentiallyConsistent) } while t1 == 0
        if i >= 0 { lat[i] = Int64(t1 &- t0) }
        usleep(50)  // let the loop thread go back to sleep in epoll_wait
    }
    io.stop()
    join(loopThread)
    io.restart()
    lat.sort()
    print(
        #"{"impl":"ioloop","workload":"wakeup_latency","ops":\#(Sizes.wakeup),"p50_us":\#(fmt(Double(percentile(lat, 50)) / 1e3, 3)),"p99_us":\#(fmt(Double(percentile(lat, 99)) / 1e3, 3))}"#
    )
}

/// The timers workload: CPU and set-up time per timer, lateness, early fires (set-up in `armSpreadTimers`).
func timers() throws {
    let io = try IOService()
    let results = TimerResults()
    let cpu0 = cpuNs()
    let setupStart = nowNs()
    let timers = armSpreadTimers(io, into: results)
    let setupEnd = nowNs()
    try io.run()
    let cpu1 = cpuNs()
    var late = results.late
    late.sort()
    let cpuPer = Double(cpu1 - cpu0) / Double(Sizes.timers)
    print(
        #"{"impl":"ioloop","workload":"timers","ops":\#(late.count),"cpu_ns_per_timer":\#(fmt(cpuPer, 1)),"setup_ns_per_timer":\#(fmt(Double(setupEnd - setupStart) / Double(Sizes.timers), 1)),"late_p50_us":\#(fmt(Double(percentile(late, 50)) / 1e3, 1)),"late_p99_us":\#(fmt(Double(percentile(late, 99)) / 1e3, 1)),"early":\#(results.early)}"#
    )
    _ = timers.count
}

/// Framer + parser over one command, repeated for ~0.5 s after a warm-up; MB/s of command text.
func framerParser(_ workload: String, _ bytes: [UInt8], minOps: Int) {
    var framer = JSONFramer()
    for _ in 0..<max(1, minOps / 10) { blackHole(ControlFixtures.frameAndParse(bytes, framer: &framer)) }
    var ops = 0
    let t0 = nowNs()
    var t1 = t0
    while ops < minOps || t1 - t0 < 500_000_000 {
        blackHole(ControlFixtures.frameAndParse(bytes, framer: &framer))
        ops += 1
        if ops % 16 == 0 || bytes.count > 4096 { t1 = nowNs() }
    }
    t1 = nowNs()
    let ns = Double(t1 - t0)
    let mbps = Double(bytes.count * ops) / 1_048_576 / (ns / 1e9)
    print(
        #"{"impl":"ioloop","workload":"\#(workload)","ops":\#(ops),"bytes_per_op":\#(bytes.count),"mb_per_s":\#(fmt(mbps, 1)),"ns_per_op":\#(fmt(ns / Double(ops), 1))}"#
    )
}

func framerParserSmall() { framerParser("framer_parser_small", ControlFixtures.smallCommand, minOps: 200_000) }
func framerParser1MiB() { framerParser("framer_parser_1mib", ControlFixtures.largeCommand, minOps: 20) }

/// CommandManager in-process: `processCommand` on a parsed `list-commands` (value in, value out), and
/// `processCommandBytes` (parse + process + serialize: what the socket server does per request).
func processCommand() {
    let manager = ControlFixtures.makeManager()
    let command = try! JSONParser.parse(ControlFixtures.smallCommand)
    let n = 200_000
    var sink = 0
    for _ in 0..<10_000 { manager.processCommand(command) { if case .object(let o) = $0 { sink &+= o.count } } }
    let t0 = nowNs()
    for _ in 0..<n { manager.processCommand(command) { if case .object(let o) = $0 { sink &+= o.count } } }
    let t1 = nowNs()
    for _ in 0..<10_000 { manager.processCommandBytes(ControlFixtures.smallCommand) { sink &+= $0.count } }
    let t2 = nowNs()
    for _ in 0..<n { manager.processCommandBytes(ControlFixtures.smallCommand) { sink &+= $0.count } }
    let t3 = nowNs()
    // Serializing the list-commands answer alone (the largest part of processCommandBytes).
    var answer = JSONValue.null
    manager.processCommand(command) { answer = $0 }
    for _ in 0..<10_000 { sink &+= answer.serialized().count }
    let t4 = nowNs()
    for _ in 0..<n { sink &+= answer.serialized().count }
    let t5 = nowNs()
    blackHole(sink)
    let a = Double(t1 - t0) / Double(n)
    let b = Double(t3 - t2) / Double(n)
    let c = Double(t5 - t4) / Double(n)
    print(
        #"{"impl":"ioloop","workload":"process_command","ops":\#(n),"ns_per_op":\#(fmt(a, 1)),"ops_per_s":\#(fmt(1e9 / a, 1)),"bytes_ns_per_op":\#(fmt(b, 1)),"bytes_ops_per_s":\#(fmt(1e9 / b, 1)),"serialize_ns_per_op":\#(fmt(c, 1))}"#
    )
}

@inline(never)
func blackHole<T>(_ x: T) { withExtendedLifetime(x) {} }

let workloads: [(String, () throws -> Void)] = [
    ("idle_poll", idlePoll), ("post_poll_1", postPoll1), ("post_poll_1000", postPoll1000),
    ("cross_thread", crossThread), ("wakeup_latency", wakeupLatency), ("timers", timers),
    ("framer_parser_small", framerParserSmall), ("framer_parser_1mib", framerParser1MiB),
    ("process_command", processCommand),
]
let which = CommandLine.arguments.count > 1 ? CommandLine.arguments[1] : "all"
var ran = 0
for (name, body) in workloads where which == "all" || which == name {
    try body()
    ran += 1
}
if ran == 0 {
    let usage = "usage: ioloop-bench [all|" + workloads.map(\.0).joined(separator: "|") + "]\n"
    _ = usage.utf8CString.withUnsafeBufferPointer { write(2, $0.baseAddress, $0.count - 1) }
    exit(2)
}
