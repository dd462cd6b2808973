import Synchronization

/// A one-shot timer on the monotonic clock with Asio `steady_timer` semantics.
///
/// Set the expiry with `expires(after:)` or `expires(at:)`, then `asyncWait` any number of times; every
/// pending wait completes with `nil` once the monotonic clock reaches the expiry — never earlier — or with
/// `IOError.operationAborted` when the timer is cancelled or re-armed. A wait started after the expiry has
/// passed completes at the next run/poll step, never inside `asyncWait`.
///
/// A pending wait keeps the timer (and its service) alive and counts as outstanding work.
/// Thread contract: the thread running the service (reach it from elsewhere with `post`).
/// Asio counterpart: `boost::asio::steady_timer`.
public final class SteadyTimer: TimerNode {
    /// The service whose run/poll calls complete this timer's waits.
    public let service: IOService
    /// The current expiry. A new timer's expiry is in the past.
    // Loop-thread state (the thread contract below): `@exclusivity(unchecked)` drops the runtime's dynamic
    // exclusivity check, a TLS lookup plus an access-set insert on every access (~40 per control request).
    @exclusivity(unchecked) public private(set) var expiry: SteadyInstant = .distantPast
    @exclusivity(unchecked) var heapIndex = -1
    // The common single wait is kept inline; only further waits allocate an array.
    @exclusivity(unchecked) private var firstWait: ((IOError?) throws -> Void)?
    @exclusivity(unchecked) private var moreWaits: [(IOError?) throws -> Void] = []

    /// Creates a timer bound to `service`, already expired (as in Asio).
    public init(_ service: IOService) {
        self.service = service
    }

    /// Creates a timer expiring `duration` from now.
    public convenience init(_ service: IOService, expiresAfter duration: Duration) {
        self.init(service)
        expires(after: duration)
    }

    /// Sets the expiry to an absolute monotonic instant, aborting pending waits; returns how many it aborted.
    /// Asio: `expires_at`.
    @discardableResult
    public func expires(at instant: SteadyInstant) -> Int {
        let aborted = cancel()
        expiry = instant
        return aborted
    }

    /// Sets the expiry relative to now (the monotonic clock read at this call), aborting pending waits;
    /// returns how many it aborted. Asio: `expires_after`.
    @discardableResult
    public func expires(after duration: Duration) -> Int {
        expires(at: .now() + duration)
    }

    /// Starts an asynchronous wait; `handler` gets nil on expiry or `operationAborted` on cancel/re-arm.
    /// Asio: `async_wait`.
    public func asyncWait(_ handler: @escaping (IOError?) throws -> Void) {
        service.beginWork()
        if firstWait == nil {
            firstWait = handler
        } else {
            moreWaits.append(handler)
        }
        if heapIndex < 0 {
            service.timers.insert(self, deadline: expiry.nanoseconds)
        }
    }

    /// Aborts every pending wait (each completes with `operationAborted`, exactly once, through the
    /// queue); returns how many. Asio: `cancel`.
    @discardableResult
    public func cancel() -> Int {
        let n = pendingWaits
        guard n > 0 else { return 0 }
        service.timers.remove(self)
        complete(aborted: true)
        return n
    }

    /// Number of waits not yet completed.
    public var pendingWaits: Int { (firstWait == nil ? 0 : 1) + moreWaits.count }

    func expire(now: UInt64) {
        complete(aborted: false)
    }

    func dropForShutdown() {
        // Taken out before they are released: releasing one may start a new wait on this timer.
        let dropped = (firstWait, moreWaits)
        firstWait = nil
        moreWaits = []
        _ = dropped
    }

    private func complete(aborted: Bool) {
        if let w = firstWait {
            firstWait = nil
            service.enqueue(.timerWait(w, aborted: aborted))
        }
        if !moreWaits.isEmpty {
            for w in moreWaits { service.enqueue(.timerWait(w, aborted: aborted)) }
            moreWaits.removeAll(keepingCapacity: true)
        }
    }
}

/// Kea's `IntervalTimer`: calls back every interval (or once), driven by an `IOService`.
///
/// A repeating timer re-arms from its previous deadline (no drift) *before* calling back; if the loop fell
/// behind by more than one interval, missed ticks are skipped rather than fired in a burst. After `cancel()`
/// no callback runs, even one already queued. While armed it counts as outstanding work, so `run()` keeps
/// going (as in Kea). Unlike Kea's, whose destructor cancels it, an armed timer is kept alive by the service
/// (as a pending Asio wait keeps its handler): dropping the last reference does not stop it — call `cancel()`.
/// Thread contract: the thread running the service.
/// Kea counterpart: `isc::asiolink::IntervalTimer` (`setup`, `cancel`, `getInterval`).
public final class IntervalTimer: TimerNode {
    /// Whether the timer re-arms after each callback.
    public enum Mode: Sendable {
        /// Fire every interval until cancelled (Kea `REPEATING`).
        case repeating
        /// Fire once (Kea `ONE_SHOT`).
        case oneShot
    }

    /// The service that runs the callbacks.
    public let service: IOService
    /// The configured interval, or nil when not set up. Kea: `getInterval()`.
    @exclusivity(unchecked) public private(set) var interval: Duration?
    @exclusivity(unchecked) var heapIndex = -1
    @exclusivity(unchecked) private var intervalNs: UInt64 = 0
    @exclusivity(unchecked) private var deadline: UInt64 = 0
    @exclusivity(unchecked) private var mode: Mode = .repeating
    @exclusivity(unchecked) private var callback: (() throws -> Void)?
    @exclusivity(unchecked) private var generation: UInt64 = 0

    /// Creates an idle interval timer.
    public init(_ service: IOService) {
        self.service = service
    }

    /// Arms the timer: `callback` runs after `interval`, then every `interval` if `.repeating`.
    ///
    /// Calling it again replaces the callback and interval and restarts the period.
    /// - Throws: `IOError(.invalidArgument)` if `interval` is not positive (Kea rejects 0 too).
    public func setup(_ callback: @escaping () throws -> Void, interval: Duration, mode: Mode = .repeating) throws {
        let ns = interval.nanosecondsClamped
        guard ns > 0 else {
            throw IOError(.invalidArgument, "IntervalTimer interval must be greater than zero, got \(interval)")
        }
        cancel()
        self.callback = callback
        self.interval = interval
        self.intervalNs = UInt64(ns)
        self.mode = mode
        arm(at: SteadyInstant.now().nanoseconds &+ intervalNs)
    }

    /// Stops the timer; idempotent. No callback runs after it returns. Kea: `cancel()`.
    public func cancel() {
        generation &+= 1
        if service.timers.remove(self) {
            service.endWork()
        }
        interval = nil
        callback = nil
    }

    func dropForShutdown() {
        generation &+= 1
        interval = nil
        _ = callback.take()
    }

    private func arm(at instant: UInt64) {
        deadline = instant
        service.beginWork()
        service.timers.insert(self, deadline: instant)
    }

    func expire(now: UInt64) {
        guard let callback else { return }
        let gen = generation
        if mode == .repeating {
            var next = deadline &+ intervalNs
            if next <= now {
                // Fell behind: keep the phase, skip the missed ticks.
                next = now &+ (intervalNs - (now - deadline) % intervalNs)
            }
            arm(at: next)
        }
        // The unit of work of this expiry is consumed by the queued handler.
        service.enqueue(
            .handler { [weak self] in
                guard let self, self.generation == gen else { return }
                try callback()
            })
    }
}

/// Keeps an `IOService`'s `run()` from returning for lack of work, until `reset()` or deinit.
///
/// Asio counterpart: `boost::asio::executor_work_guard` (`make_work_guard`). There is no way to make a
/// guard that does nothing: creating one always counts as outstanding work.
/// Thread contract: create, reset and release from any thread. When the last unit of work ends because of
/// `reset()`, the service stops and a blocked `run()` returns.
public final class WorkGuard: Sendable {
    /// The guarded service.
    public let service: IOService
    private let owns: Atomic<Bool>

    /// Counts one unit of outstanding work on `service` until `reset()` or deinit.
    public init(_ service: IOService) {
        self.service = service
        self.owns = Atomic(true)
        service.beginWork()
    }

    /// Releases the unit of work; idempotent. Asio: `executor_work_guard::reset()`.
    public func reset() {
        if owns.exchange(false, ordering: .acquiringAndReleasing) {
            service.endWork()
        }
    }

    /// Whether the guard still holds its unit of work. Asio: `owns_work()`.
    public var ownsWork: Bool { owns.load(ordering: .acquiring) }

    deinit { reset() }
}

extension IOService {
    /// Creates a `WorkGuard` for this service. Asio: `make_work_guard(io_context)`.
    public func makeWorkGuard() -> WorkGuard { WorkGuard(self) }
}
