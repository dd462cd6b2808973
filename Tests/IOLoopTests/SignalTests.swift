import Foundation
import Glibc
import Testing

@testable import IOLoop

// Signals are process-wide: these tests run one at a time. They use kill(getpid()) rather than raise():
// raise() targets the calling thread, and the test runner's worker threads block most signals.
@Suite("SignalSet", .serialized)
struct SignalTests {
    @Test func receivesRaisedSignal() throws {
        let io = try IOService()
        let set = try SignalSet(io, signals: [SIGUSR1])
        var got: [Int32] = []
        set.asyncWait { got.append(try $0.get()) }
        kill(getpid(), SIGUSR1)
        #expect(try io.run(for: .seconds(10)) == 1)
        #expect(got == [SIGUSR1])
        set.clear()
    }

    @Test func queuesSignalWhileNoWaitPending() throws {
        let io = try IOService()
        let set = try SignalSet(io, signals: [SIGUSR1, SIGUSR2])
        kill(getpid(), SIGUSR2)
        // Let the arrival reach the service while no wait is pending.
        let g = WorkGuard(io)
        let deadline = SteadyInstant.now() + .seconds(10)
        while SteadyInstant.now() < deadline {
            _ = try io.run(for: .milliseconds(5))
            if set.queuedCount > 0 { break }
        }
        g.reset()  // work reaches zero: the service stops, as in Asio
        #expect(io.stopped)
        io.restart()
        #expect(set.queuedCount == 1)
        var got: [Int32] = []
        set.asyncWait { got.append(try $0.get()) }
        #expect(got.isEmpty)  // completes through the queue, not inline
        #expect(try io.run() == 1)
        #expect(got == [SIGUSR2])
        set.clear()
    }

    @Test func fansOutToSetsOnTwoServices() throws {
        let io1 = try IOService()
        let io2 = try IOService()
        let s1 = try SignalSet(io1, signals: [SIGUSR1])
        let s2 = try SignalSet(io2, signals: [SIGUSR1])
        var a: Int32 = 0
        var b: Int32 = 0
        s1.asyncWait { a = try $0.get() }
        s2.asyncWait { b = try $0.get() }
        kill(getpid(), SIGUSR1)
        #expect(try io1.run(for: .seconds(10)) == 1)
        #expect(try io2.run(for: .seconds(10)) == 1)
        #expect(a == SIGUSR1 && b == SIGUSR1)
    }

    @Test func cancelAbortsWait() throws {
        let io = try IOService()
        let set = try SignalSet(io, signals: [SIGUSR2])
        var result: Result<Int32, IOError>?
        set.asyncWait { result = $0 }
        #expect(set.cancel() == 1)
        try io.run()
        #expect(throws: IOError.operationAborted) { try result?.get() }
    }

    /// Asio's `signal_set` destructor cancels its waits: a dropped set's pending wait completes with
    /// `operationAborted` and releases its work, so `run()` returns instead of waiting for ever.
    @Test func droppingASetAbortsItsPendingWait() throws {
        let io = try IOService()
        var set: SignalSet? = try SignalSet(io, signals: [SIGUSR2])
        var result: Result<Int32, IOError>?
        set?.asyncWait { result = $0 }
        #expect(io.outstandingWork == 1)
        set = nil
        #expect(try io.run(for: .seconds(10)) == 1)
        #expect(result.map { if case .failure(let e) = $0 { e.isOperationAborted } else { false } } == true)
        #expect(io.outstandingWork == 0)
        #expect(io.stopped)  // run() returned because no work was left, not because the 10 s passed
    }

    /// `shutdown()` releases a set's pending waits without calling them, as it does for sockets' operations.
    @Test func shutdownReleasesPendingSignalWaits() throws {
        final class Witness {
            let released: UnsafeMutablePointer<Bool>
            init(_ flag: UnsafeMutablePointer<Bool>) { released = flag }
            deinit { released.pointee = true }
        }
        let io = try IOService()
        let set = try SignalSet(io, signals: [SIGUSR2])
        let flag = UnsafeMutablePointer<Bool>.allocate(capacity: 1)
        defer { flag.deallocate() }
        flag.pointee = false
        do {
            let witness = Witness(flag)
            set.asyncWait { _ in
                _ = witness
                Issue.record("a wait released by shutdown() was called")
            }
        }
        #expect(!flag.pointee)
        io.shutdown()
        #expect(flag.pointee, "shutdown() kept the pending wait's handler")
        #expect(io.outstandingWork == 0)
        set.clear()
    }

    @Test func signalsThatCannotBeOwnedAreRejectedClearly() throws {
        let io = try IOService()
        let set = try SignalSet(io)
        #expect {
            try set.add(SIGKILL)
        } throws: { error in
            "\(error)".contains("SIGKILL") && "\(error)".contains("can't be caught")
        }
        #expect(throws: IOError.self) { try set.add(SIGSEGV) }
        #expect(throws: IOError.self) { try set.add(0) }
        #expect(throws: IOError.self) { try set.add(99) }
    }

    @Test func foreignHandlerIsReported() throws {
        let io = try IOService()
        let set = try SignalSet(io)
        signal(SIGWINCH) { _ in }
        defer { signal(SIGWINCH, SIG_DFL) }
        #expect {
            try set.add(SIGWINCH)
        } throws: { error in
            "\(error)".contains("already has a handler")
        }
    }
}
