import Foundation
import Synchronization
import Testing

@testable import IOLoop

/// A counter that handlers on any thread can bump.
final class Counter: Sendable {
    private let value = Atomic<Int>(0)
    func bump() { value.add(1, ordering: .relaxed) }
    var count: Int { value.load(ordering: .relaxed) }
}

/// Bumps `released` when it is deallocated: captured by a handler, it shows whether the handler was released.
final class Sentinel: Sendable {
    let released: Counter
    init(_ c: Counter) { released = c }
    deinit { released.bump() }
}

/// Records values in order; handlers run on the loop thread, but tests read it from the test thread.
final class Recorder<T: Sendable>: Sendable {
    private let items = Mutex<[T]>([])
    func append(_ item: T) { items.withLock { $0.append(item) } }
    var values: [T] { items.withLock { $0 } }
}

struct TestError: Error, Equatable {
    let tag: Int
}

@Suite("IOService run family")
struct RunFamilyTests {
    @Test func runWithNoWorkReturnsZeroAndStops() throws {
        let io = try IOService()
        #expect(try io.run() == 0)
        #expect(io.stopped)
    }

    @Test func runReturnsWhenWorkReachesZero() throws {
        let io = try IOService()
        let c = Counter()
        for _ in 0..<3 { io.post { c.bump() } }
        #expect(try io.run() == 3)
        #expect(c.count == 3)
        #expect(io.stopped)
        #expect(io.outstandingWork == 0)
    }

    @Test func runOneRunsExactlyOneHandler() throws {
        let io = try IOService()
        let c = Counter()
        for _ in 0..<3 { io.post { c.bump() } }
        #expect(try io.runOne() == 1)
        #expect(c.count == 1)
        #expect(try io.runOne() == 1)
        #expect(c.count == 2)
        #expect(!io.stopped)
    }

    @Test func pollOneRunsAtMostOne() throws {
        let io = try IOService()
        let guardWork = io.makeWorkGuard()
        #expect(try io.pollOne() == 0)
        let c = Counter()
        io.post { c.bump() }
        io.post { c.bump() }
        #expect(try io.pollOne() == 1)
        #expect(c.count == 1)
        #expect(try io.poll() == 1)
        #expect(c.count == 2)
        guardWork.reset()
    }

    @Test func pollNeverBlocksWithIdleFdAndFarTimer() throws {
        let io = try IOService()
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        defer {
            close(fds[0])
            close(fds[1])
        }
        // An armed idle descriptor: a read operation on an empty pipe.
        let idle = IdleReadable(io, fd: fds[0])
        defer { idle.stop() }
        let timer = SteadyTimer(io, expiresAfter: .seconds(3600))
        timer.asyncWait { _ in }
        let start = SteadyInstant.now()
        for _ in 0..<1000 { #expect(try io.poll() == 0) }
        #expect(SteadyInstant.now() - start < .seconds(1))
        timer.cancel()
        #expect(try io.poll() == 1)
    }

    @Test func pollRunsHandlersPostedByHandlers() throws {
        let io = try IOService()
        let c = Counter()
        io.post {
            c.bump()
            io.post { c.bump() }
        }
        #expect(try io.poll() == 2)
        #expect(c.count == 2)
    }

    @Test func pollMaxHandlersBounds() throws {
        let io = try IOService()
        let c = Counter()
        for _ in 0..<10 { io.post { c.bump() } }
        #expect(try io.poll(maxHandlers: 4) == 4)
        #expect(c.count == 4)
        #expect(io.timeUntilNextEvent() == .zero)
        #expect(try io.poll() == 6)
    }

    @Test func stopFromAnotherThreadWakesBlockedRun() throws {
        let io = try IOService()
        let guardWork = WorkGuard(io)
        let started = DispatchSemaphore(value: 0)
        io.post { started.signal() }
        let stopper = Thread {
            started.wait()
            io.stop()
        }
        stopper.start()
        let t0 = SteadyInstant.now()
        #expect(try io.run() == 1)
        #expect(io.stopped)
        #expect(SteadyInstant.now() - t0 < .seconds(5))
        guardWork.reset()
    }

    @Test func stoppedHoldsUntilRestart() throws {
        let io = try IOService()
        let c = Counter()
        io.post { c.bump() }
        io.stop()
        #expect(io.stopped)
        #expect(try io.run() == 0)
        #expect(try io.poll() == 0)
        #expect(try io.runOne() == 0)
        #expect(c.count == 0)
        io.restart()
        #expect(!io.stopped)
        #expect(try io.run() == 1)
        #expect(c.count == 1)
    }

    @Test func fifoOrder() throws {
        let io = try IOService()
        let r = Recorder<Int>()
        for i in 0..<1000 { io.post { r.append(i) } }
        try io.run()
        #expect(r.values == Array(0..<1000))
    }

    @Test func fourThreadsPostingAllRunExactlyOnce() throws {
        let io = try IOService()
        let perThread = 100_000
        let c = Counter()
        let work = WorkGuard(io)
        let group = DispatchGroup()
        for _ in 0..<4 {
            group.enter()
            Thread {
                for _ in 0..<perThread { io.post { c.bump() } }
                group.leave()
            }.start()
        }
        Thread {
            group.wait()
            work.reset()
        }.start()
        let ran = try io.run()
        #expect(ran == 4 * perThread)
        #expect(c.count == 4 * perThread)
    }

    @Test func dispatchInlineOnLoopThreadElsePosted() throws {
        let io = try IOService()
        let r = Recorder<String>()
        // Not running: dispatch posts.
        try io.dispatch { r.append("outside") }
        #expect(r.values.isEmpty)
        io.post {
            r.append("handler-start")
            try io.dispatch { r.append("dispatched-inline") }
            io.post { r.append("posted") }
            r.append("handler-end")
        }
        try io.run()
        #expect(r.values == ["outside", "handler-start", "dispatched-inline", "handler-end", "posted"])
    }

    @Test func runningInThisThread() throws {
        let io = try IOService()
        #expect(!io.runningInThisThread)
        let seen = Recorder<Bool>()
        io.post { seen.append(io.runningInThisThread) }
        try io.run()
        #expect(seen.values == [true])
        #expect(!io.runningInThisThread)
    }

    @Test func throwingHandlerPropagatesAndServiceStaysUsable() throws {
        let io = try IOService()
        let c = Counter()
        io.post { c.bump() }
        io.post { throw TestError(tag: 7) }
        io.post { c.bump() }
        #expect(throws: TestError(tag: 7)) { try io.run() }
        #expect(c.count == 1)
        #expect(!io.stopped)
        #expect(try io.run() == 1)
        #expect(c.count == 2)
    }

    @Test func workGuardKeepsRunAliveUntilReset() throws {
        let io = try IOService()
        let g = io.makeWorkGuard()
        #expect(g.ownsWork)
        io.post { g.reset() }
        #expect(try io.run() == 1)
        #expect(!g.ownsWork)
        g.reset()  // idempotent
        #expect(io.outstandingWork == 0)
    }

    @Test func runForReturnsAtDeadlineWithGuard() throws {
        let io = try IOService()
        let g = WorkGuard(io)
        let t0 = SteadyInstant.now()
        #expect(try io.run(for: .milliseconds(50)) == 0)
        let elapsed = SteadyInstant.now() - t0
        #expect(elapsed >= .milliseconds(50))
        #expect(elapsed < .seconds(5))
        #expect(try io.runOne(for: .milliseconds(10)) == 0)
        g.reset()
    }

    @Test func shutdownReleasesHandlersWithoutCallingThem() throws {
        let released = Counter()
        let called = Counter()
        let io = try IOService()
        do {
            let s = Sentinel(released)
            io.post {
                _ = s; called.bump()
            }
            let t = SteadyTimer(io, expiresAfter: .seconds(100))
            let s2 = Sentinel(released)
            t.asyncWait { _ in
                _ = s2; called.bump()
            }
        }
        #expect(released.count == 0)
        io.shutdown()
        #expect(released.count == 2)
        #expect(called.count == 0)
        #expect(io.stopped)
        #expect(io.outstandingWork == 0)
    }

    /// Destroying a service releases the handlers still queued, uncalled — posted from its own thread and from
    /// another (Asio's `io_context` destructor).
    @Test func destroyingTheServiceReleasesQueuedHandlers() throws {
        let released = Counter()
        let called = Counter()
        do {
            let io = try IOService()
            let s = Sentinel(released)
            io.post {
                _ = s
                called.bump()
            }
            let done = DispatchSemaphore(value: 0)
            // Unowned: the thread object keeps its closure after signalling, which must not keep the service. The
            // sentinel is made in a function that has returned before the signal, so no local still holds it.
            @Sendable func postFromHere(_ io: IOService) {
                let s2 = Sentinel(released)
                io.post {
                    _ = s2
                    called.bump()
                }
            }
            Thread { [unowned io] in
                postFromHere(io)
                done.signal()
            }.start()
            #expect(done.wait(timeout: .now() + 10) == .success)
            #expect(released.count == 0)
        }
        #expect(released.count == 2)
        #expect(called.count == 0)
    }

    /// The usual shape: a wait captures the object that owns its timer, so the timer outlives the shutdown.
    /// Its handlers must still be released (before the fix only the heap's reference was: the handlers, and
    /// everything they captured, stayed alive).
    @Test func shutdownReleasesTheHandlersOfTimersStillReferenced() throws {
        let released = Counter()
        let called = Counter()
        let io = try IOService()
        let steady = SteadyTimer(io, expiresAfter: .seconds(100))
        let interval = IntervalTimer(io)
        do {
            let captured = Sentinel(released)
            steady.asyncWait { _ in
                _ = captured
                called.bump()
            }
            steady.asyncWait { _ in
                _ = captured
                called.bump()
            }
            try interval.setup(
                {
                    _ = captured
                    called.bump()
                }, interval: .seconds(100))
        }
        #expect(steady.pendingWaits == 2)
        io.shutdown()
        #expect(released.count == 1)
        #expect(steady.pendingWaits == 0)
        #expect(interval.interval == nil)
        #expect(called.count == 0)
        #expect(io.outstandingWork == 0)
        // Still usable as objects: a new wait is pending (the service stays stopped, so it never runs).
        steady.asyncWait { _ in called.bump() }
        #expect(steady.pendingWaits == 1)
        #expect(try io.run() == 0)
        #expect(called.count == 0)
        io.shutdown()
        #expect(steady.pendingWaits == 0)
    }

    /// Releasing a handler can start new work (a deinit that answers, as a `CommandResponder` released
    /// unanswered does). The shutdown releases that too, instead of leaving it pending on a stopped service.
    @Test func workStartedWhileShuttingDownIsReleasedToo() throws {
        /// Its deinit starts a wait on `next` and posts, each capturing a sentinel. Sendable only to be posted;
        /// it is used on this thread alone.
        final class Restarter: @unchecked Sendable {
            let io: IOService
            let next: SteadyTimer
            let released: Counter
            init(_ io: IOService, _ next: SteadyTimer, _ released: Counter) {
                self.io = io
                self.next = next
                self.released = released
            }
            deinit {
                let waiting = Sentinel(released)
                next.asyncWait { _ in _ = waiting }
                let posted = Sentinel(released)
                io.post { _ = posted }
            }
        }
        let released = Counter()
        let io = try IOService()
        let first = SteadyTimer(io, expiresAfter: .seconds(100))
        let next = SteadyTimer(io, expiresAfter: .seconds(100))
        do {
            let restarter = Restarter(io, next, released)
            first.asyncWait { _ in _ = restarter }
            let viaQueue = Restarter(io, next, released)
            io.post { _ = viaQueue }
        }
        io.shutdown()
        #expect(released.count == 4, "work started by released handlers outlived the shutdown")
        #expect(first.pendingWaits == 0 && next.pendingWaits == 0)
        #expect(io.outstandingWork == 0)
    }

    // MARK: thread contract (each violation stops the process with a precondition failure)

    /// One thread runs a service at a time (Asio allows several; IOLoop's loop-thread state does not): a second
    /// thread's poll() while another thread is inside run() is refused.
    @Test func secondRunnerIsAPreconditionFailure() async {
        await #expect(processExitsWith: .failure) {
            let io = try IOService()
            let guardWork = WorkGuard(io)
            let running = DispatchSemaphore(value: 0)
            io.post { running.signal() }
            Thread { _ = try? io.run() }.start()
            _ = running.wait(timeout: .now() + 10)
            _ = try io.poll()
            _ = guardWork
        }
    }

    @Test func restartInsideRunIsAPreconditionFailure() async {
        await #expect(processExitsWith: .failure) {
            let io = try IOService()
            io.post { io.restart() }
            _ = try io.run()
        }
    }

    @Test func shutdownInsideRunIsAPreconditionFailure() async {
        await #expect(processExitsWith: .failure) {
            let io = try IOService()
            io.post { io.shutdown() }
            _ = try io.run()
        }
    }
}
