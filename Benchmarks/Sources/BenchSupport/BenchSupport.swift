import Glibc
import IOLoop

/// Workload sizes, the same as Comparators/bench_common.h.
public enum Sizes {
    public static let idlePoll = 1_000_000
    public static let postPoll1 = 500_000
    public static let postBatches = 5_000
    public static let postBatch = 1_000
    public static let crossThread = 2_000_000
    public static let wakeup = 10_000
    public static let timers = 100_000
    public static let timerSpanNs: UInt64 = 100_000_000
    public static let timerStartNs: UInt64 = 20_000_000
    /// Deterministic permutation of creation order (7919 is prime, coprime with `timers`).
    public static func timerSlot(_ i: Int) -> UInt64 { UInt64(i) &* 7919 % UInt64(timers) }
}

/// Monotonic nanoseconds (the clock `SteadyInstant` and the comparators use).
@inline(__always)
public func nowNs() -> UInt64 { SteadyInstant.now().nanoseconds }

/// Process CPU time (user + system) in nanoseconds.
public func cpuNs() -> UInt64 {
    var ru = rusage()
    getrusage(RUSAGE_SELF.rawValue, &ru)
    let sec = UInt64(ru.ru_utime.tv_sec) + UInt64(ru.ru_stime.tv_sec)
    let usec = UInt64(ru.ru_utime.tv_usec) + UInt64(ru.ru_stime.tv_usec)
    return sec * 1_000_000_000 + usec * 1_000
}

/// Nearest-rank percentile of a sorted array (p in 0...100), as in the comparators.
public func percentile(_ sorted: [Int64], _ p: Double) -> Int64 {
    guard !sorted.isEmpty else { return 0 }
    var rank = Int((p / 100.0) * Double(sorted.count) + 0.999999)
    rank = min(max(rank, 1), sorted.count)
    return sorted[rank - 1]
}

/// A plain counter that handlers bump on the loop thread (the C++ comparator captures `&counter`).
public final class Counter: @unchecked Sendable {
    public var value = 0
    public init() {}
}

/// The common loop set-up: a service with one far timer pending and a work guard.
///
/// The issue asks for "one idle fd watcher and one far timer". IOLoop has no public socket or descriptor
/// type on `main` yet, so the idle descriptor is represented by the service's own two descriptors
/// (its wake-up eventfd and its timerfd), which are always registered in its libev epoll set; the
/// comparators register one idle pipe (plus libev's ev_async eventfd / Asio's interrupter). Replace the
/// guard with an armed read on an empty socketpair once sockets land.
public final class BenchLoop {
    public let io: IOService
    public let guardian: WorkGuard
    public let far: SteadyTimer
    /// An armed read on an idle socketpair: the one idle descriptor watcher of the methodology (libev and Asio arm
    /// a read on an empty pipe).
    public let idle: (UnixStreamSocket, UnixStreamSocket)
    private let idleBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 8)

    public init() throws {
        io = try IOService()
        guardian = io.makeWorkGuard()
        far = SteadyTimer(io, expiresAfter: .seconds(3600))
        far.asyncWait { _ in }
        idle = try UnixStreamSocket.pair(io)
        idle.0.asyncReadSome(into: idleBuffer) { _, _ in }
        try io.poll()
    }

    deinit {
        far.cancel()
        guardian.reset()
        io.shutdown()
        idleBuffer.deallocate()
    }
}

/// What the timers workload's handlers record: lateness of each (ns, monotonic time in the handler minus the
/// deadline) and how many ran before their deadline.
public final class TimerResults {
    public var late: [Int64] = []
    public var early = 0
    public init() { late.reserveCapacity(Sizes.timers) }
}

/// The timers workload's set-up, the same in both Swift runners (and in the C/C++ comparators):
/// `Sizes.timers` one-shot timers created in the fixed permuted order, deadlines spread evenly over
/// `timerSpanNs` starting `timerStartNs` after this call; each handler records into `results`.
/// Returns the timers (keep them until the service has run).
public func armSpreadTimers(_ io: IOService, into results: TimerResults) -> [SteadyTimer] {
    var timers: [SteadyTimer] = []
    timers.reserveCapacity(Sizes.timers)
    let start = nowNs() + Sizes.timerStartNs
    for i in 0..<Sizes.timers {
        let deadline = start + Sizes.timerSlot(i) * (Sizes.timerSpanNs / UInt64(Sizes.timers))
        let t = SteadyTimer(io)
        t.expires(at: SteadyInstant(nanoseconds: deadline))
        t.asyncWait { _ in
            let now = nowNs()
            if now < deadline { results.early += 1 }
            results.late.append(Int64(bitPattern: now &- deadline))
        }
        timers.append(t)
    }
    return timers
}

/// Starts a POSIX thread running `body`; join it with `join(_:)`.
public func startThread(_ body: @escaping @Sendable () -> Void) -> pthread_t {
    final class Box { let body: @Sendable () -> Void; init(_ b: @escaping @Sendable () -> Void) { body = b } }
    let box = Unmanaged.passRetained(Box(body)).toOpaque()
    var thread = pthread_t()
    let rc = pthread_create(
        &thread, nil,
        { arg in
            let b = Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue()
            b.body()
            return nil
        }, box)
    precondition(rc == 0, "pthread_create failed: \(rc)")
    return thread
}

public func join(_ thread: pthread_t) {
    pthread_join(thread, nil)
}
