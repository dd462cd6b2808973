import Foundation
import Synchronization
import Testing

@testable import IOLoop

@Suite("Timers")
struct TimerTests {
    @Test func tenThousandTimersNeverFireEarly() throws {
        let io = try IOService()
        var early = 0
        var fired = 0
        var rng = SystemRandomNumberGenerator()
        var timers: [SteadyTimer] = []
        for _ in 0..<10_000 {
            let t = SteadyTimer(io, expiresAfter: .microseconds(Int.random(in: 0...50_000, using: &rng)))
            let deadline = t.expiry
            t.asyncWait { error in
                #expect(error == nil)
                if SteadyInstant.now() < deadline { early += 1 }
                fired += 1
            }
            timers.append(t)
        }
        #expect(try io.run() == 10_000)
        #expect(fired == 10_000)
        #expect(early == 0)
    }

    @Test func tenThousandTimersNeverFireEarlyWithoutSlack() throws {
        let io = try IOService()
        io.timerSlack = .zero
        var early = 0
        var timers: [SteadyTimer] = []
        for i in 0..<10_000 {
            let t = SteadyTimer(io, expiresAfter: .microseconds(i * 3))
            let deadline = t.expiry
            t.asyncWait { _ in if SteadyInstant.now() < deadline { early += 1 } }
            timers.append(t)
        }
        #expect(try io.run() == 10_000)
        #expect(early == 0)
    }

    @Test func timerSlackDefaultsToLinuxsAndClampsNegative() throws {
        let io = try IOService()
        #expect(io.timerSlack == .microseconds(50))
        io.timerSlack = .milliseconds(3)
        #expect(io.timerSlack == .milliseconds(3))
        io.timerSlack = .milliseconds(-1)
        #expect(io.timerSlack == .zero)
    }

    /// An idle blocking run() sleeps until deadline + slack: the wake-up is coalesced, never early.
    @Test func idleRunWakesAtDeadlinePlusSlack() throws {
        let io = try IOService()
        io.timerSlack = .milliseconds(30)
        let t = SteadyTimer(io, expiresAfter: .milliseconds(5))
        let deadline = t.expiry
        var ranAt: SteadyInstant?
        t.asyncWait { _ in ranAt = .now() }
        #expect(try io.run() == 1)
        let lateness = try #require(ranAt) - deadline
        #expect(lateness >= .milliseconds(30))
    }

    @Test func cancelGivesOperationAbortedExactlyOnce() throws {
        let io = try IOService()
        let t = SteadyTimer(io, expiresAfter: .seconds(60))
        var results: [IOError?] = []
        t.asyncWait { results.append($0) }
        t.asyncWait { results.append($0) }
        #expect(t.cancel() == 2)
        #expect(t.cancel() == 0)
        #expect(results.isEmpty)  // never inline
        #expect(try io.run() == 2)
        #expect(results.count == 2)
        #expect(results.allSatisfy { $0 == .operationAborted })
    }

    @Test func rearmAbortsOldWait() throws {
        let io = try IOService()
        let t = SteadyTimer(io, expiresAfter: .seconds(60))
        var log: [String] = []
        t.asyncWait { log.append($0 == nil ? "first-expired" : "first-aborted") }
        #expect(t.expires(after: .milliseconds(1)) == 1)
        t.asyncWait { log.append($0 == nil ? "second-expired" : "second-aborted") }
        try io.run()
        #expect(log == ["first-aborted", "second-expired"])
    }

    @Test func waitOnExpiredTimerCompletesThroughQueue() throws {
        let io = try IOService()
        let t = SteadyTimer(io)
        var done = false
        t.asyncWait { _ in done = true }
        #expect(!done)
        #expect(try io.poll() == 1)
        #expect(done)
    }

    @Test func pendingTimerIsWork() throws {
        let io = try IOService()
        let t = SteadyTimer(io, expiresAfter: .milliseconds(20))
        let start = SteadyInstant.now()
        t.asyncWait { _ in }
        #expect(try io.run() == 1)
        #expect(SteadyInstant.now() - start >= .milliseconds(20))
    }

    @Test func oneMillionPendingTimers() throws {
        let io = try IOService()
        let base = SteadyInstant.now()
        var timers: [SteadyTimer] = []
        timers.reserveCapacity(1_000_000)
        var fired = 0
        var lastDeadline = SteadyInstant.distantPast
        var outOfOrder = 0
        for i in 0..<1_000_000 {
            let t = SteadyTimer(io)
            // Spread over 200 ms, inserted in a scrambled order.
            t.expires(at: base + .microseconds((i &* 7919) % 200_000))
            let d = t.expiry
            t.asyncWait { error in
                fired += 1
                guard error == nil else { return }  // the cancelled tenth completes first, aborted
                if d < lastDeadline { outOfOrder += 1 }
                lastDeadline = d
            }
            timers.append(t)
        }
        // Cancel every tenth one: O(log n) removal from the middle of the heap.
        var cancelled = 0
        for i in stride(from: 0, to: timers.count, by: 10) { cancelled += timers[i].cancel() }
        #expect(cancelled == 100_000)
        try io.run()
        #expect(fired == 1_000_000)
        #expect(outOfOrder == 0)
    }

    @Test func repeatingIntervalTimerFiresExpectedCount() throws {
        let io = try IOService()
        let timer = IntervalTimer(io)
        var ticks: [SteadyInstant] = []
        let start = SteadyInstant.now()
        try timer.setup(
            {
                ticks.append(.now())
                if ticks.count == 5 { timer.cancel() }
            }, interval: .milliseconds(10), mode: .repeating)
        #expect(timer.interval == .milliseconds(10))
        try io.run()
        #expect(ticks.count == 5)
        // Never early: the n-th tick is at least n intervals after setup.
        for (n, t) in ticks.enumerated() {
            #expect(t - start >= .milliseconds(10 * (n + 1)))
        }
        #expect(timer.interval == nil)
    }

    @Test func oneShotIntervalTimerFiresOnce() throws {
        let io = try IOService()
        let timer = IntervalTimer(io)
        var count = 0
        try timer.setup({ count += 1 }, interval: .milliseconds(5), mode: .oneShot)
        try io.run()
        #expect(count == 1)
    }

    @Test func intervalZeroRejectedAndCancelIdempotent() throws {
        let io = try IOService()
        let timer = IntervalTimer(io)
        #expect(throws: IOError.self) { try timer.setup({}, interval: .zero) }
        timer.cancel()
        timer.cancel()
        #expect(io.outstandingWork == 0)
    }

    /// A callback already queued when the timer is cancelled does not run: an earlier timer that expires in the
    /// same pass (its handler is queued first) cancels the interval timer whose callback is queued behind it.
    @Test func noCallbackAfterCancelEvenIfQueued() throws {
        let io = try IOService()
        let timer = IntervalTimer(io)
        var count = 0
        try timer.setup({ count += 1 }, interval: .milliseconds(2), mode: .repeating)
        let first = SteadyTimer(io, expiresAfter: .milliseconds(1))
        var cancelled = false
        first.asyncWait { _ in
            timer.cancel()
            cancelled = true
        }
        // Both deadlines pass before the loop looks, so one reactor sample queues both handlers.
        let deadline = SteadyInstant.now() + .milliseconds(5)
        while SteadyInstant.now() < deadline {}
        #expect(try io.poll() == 2)  // the cancelling handler, and the queued callback that then does nothing
        #expect(cancelled)
        #expect(count == 0)
        #expect(io.outstandingWork == 0)
    }

    /// A repeating timer is re-armed before its callback runs, so a callback that throws (out of `run()`) does
    /// not end the series: the next tick comes.
    @Test func repeatingTimerRearmsBeforeItsCallback() throws {
        let io = try IOService()
        let timer = IntervalTimer(io)
        var ticks = 0
        try timer.setup(
            {
                ticks += 1
                if ticks == 1 { throw TestError(tag: 1) }
                if ticks == 3 { timer.cancel() }
            }, interval: .milliseconds(2), mode: .repeating)
        #expect(throws: TestError(tag: 1)) { try io.run(for: .seconds(10)) }
        #expect(io.outstandingWork == 1)  // armed again before the callback threw
        try io.run(for: .seconds(10))
        #expect(ticks == 3)
        #expect(io.outstandingWork == 0)
    }

    /// `runOne()` runs one user completion even when a single reactor sample finds two timers expired.
    @Test func runOneRunsOneOfTwoExpiredTimers() throws {
        let io = try IOService()
        let a = SteadyTimer(io, expiresAfter: .milliseconds(1))
        let b = SteadyTimer(io, expiresAfter: .milliseconds(1))
        var fired: [String] = []
        a.asyncWait { _ in fired.append("a") }
        b.asyncWait { _ in fired.append("b") }
        let deadline = SteadyInstant.now() + .milliseconds(3)
        while SteadyInstant.now() < deadline {}
        #expect(try io.runOne() == 1)
        #expect(fired.count == 1)
        #expect(try io.runOne() == 1)
        #expect(Set(fired) == ["a", "b"])
        #expect(try io.runOne() == 0)
    }

    /// Handlers that keep re-posting themselves do not starve timers: the timer fires while the chain runs.
    @Test func selfRepostingChainDoesNotStarveTimers() throws {
        final class Chain: Sendable {
            let stop = Atomic<Bool>(false)
            let runs = Atomic<Int>(0)
            func go(_ io: IOService) {
                runs.add(1, ordering: .relaxed)
                if !stop.load(ordering: .relaxed) { io.post { self.go(io) } }
            }
        }
        let io = try IOService()
        let chain = Chain()
        let timer = SteadyTimer(io, expiresAfter: .milliseconds(5))
        var firedAfter = -1
        timer.asyncWait { _ in
            firedAfter = chain.runs.load(ordering: .relaxed)
            chain.stop.store(true, ordering: .relaxed)
        }
        io.post { chain.go(io) }
        try io.run(for: .seconds(10))
        let stopped = chain.stop.load(ordering: .relaxed)
        #expect(firedAfter > 0, "the timer did not fire while the chain ran")
        #expect(stopped)
    }
}
