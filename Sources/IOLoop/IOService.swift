import CLibev
import Glibc
import Synchronization

/// One unit of ready work in the service's queue.
///
/// Kept to three words (24-byte stride): a batch of a thousand posted handlers is written by `post` and read back by
/// the drain, so the item size is memory traffic per handler. Completions of the framework's own operations carry
/// no boxed result: a timer wait stores only whether it was aborted, and a socket completion names the socket and
/// the direction, whose result the socket holds.
///
/// `@unchecked Sendable`: only `.handler` items made from `post`'s `@Sendable` closures ever cross threads (through
/// the shared queue); every other case is created and consumed on the loop thread.
enum Work: @unchecked Sendable {
    case handler(() throws -> Void)
    /// A timer wait completing: nil on expiry, `operationAborted` when `aborted` (cancel or re-arm).
    case timerWait((IOError?) throws -> Void, aborted: Bool)
    /// A socket's read-side (`read`) or write-side operation completing; the socket holds the result. The strong
    /// reference keeps the socket alive until its completion has run.
    case socket(any SocketCompletionTarget, read: Bool)
}

/// An event loop with Boost.Asio `io_context` semantics, driven by the system libev.
///
/// Handlers (posted closures and completions of asynchronous operations) run only inside `run()`,
/// `runOne()`, `poll()`, `pollOne()` and their bounded variants, on the thread that calls them. libev
/// callbacks never run user code: they record completions in the service's own queue, which the
/// run/poll family drains. That makes every count exact, keeps Swift errors away from C frames, and
/// guarantees Asio's rule that a completion never runs inside the call that started its operation.
///
/// Outstanding work = queued handlers + pending asynchronous operations + live `WorkGuard`s. When it
/// reaches zero the service stops itself; `restart()` clears that.
///
/// Host embedding (Kea's DHCP server pattern): a host that owns its main loop blocks in its own
/// `poll(2)`/`epoll_wait` on its sockets plus ``pollDescriptor()``, bounded by ``timeUntilNextEvent()``,
/// and calls ``poll()`` after each wake-up. See `Docs/IOService.md`.
///
/// Thread contract: one thread runs a given service at a time (enforced: a second concurrent runner
/// is a precondition failure). `post`, `dispatch`, `stop`, `stopped`, `WorkGuard` and the embedding
/// descriptor are safe from any thread. Everything else — starting operations, timers, closing — belongs
/// to the thread running the service (or is reached through `post`).
///
/// Asio counterpart: `boost::asio::io_context`; Kea: `isc::asiolink::IOService`.
public final class IOService: @unchecked Sendable {
    // MARK: libev state (loop thread)

    /// The libev loop (`struct ev_loop *`); internal so I/O objects in this module can start watchers.
    let loop: OpaquePointer
    private let wakeFD: Int32
    private let timerFD: Int32
    private let wakeWatcher: UnsafeMutablePointer<ev_io>
    private let timerWatcher: UnsafeMutablePointer<ev_io>

    // MARK: queues

    // Loop-thread state. Exclusivity is guaranteed by the one-runner rule (enforced in `enter()`), so the
    // runtime's dynamic exclusivity checks are switched off on these hot properties.

    /// Ready handlers, touched only by the thread running the service.
    @exclusivity(unchecked) private var ready = WorkQueue()
    /// An empty queue with capacity, swapped with the shared one under the lock (no copy, no allocation).
    @exclusivity(unchecked) private var spare = WorkQueue()
    /// How many items of `ready` come before the reactor sentinel (Asio's task_operation_ marker).
    @exclusivity(unchecked) private var batchRemaining = 0
    /// When the reactor was last sampled while handlers kept coming (0: not known, sample at the next boundary).
    @exclusivity(unchecked) private var lastSampleNanoseconds: UInt64 = 0
    /// The longest a busy loop goes without sampling the kernel for I/O readiness: 50 µs.
    static let resampleInterval: UInt64 = 50_000
    /// Handlers run but not yet subtracted from `outstanding` (flushed at every batch boundary).
    @exclusivity(unchecked) private var finishedUnflushed = 0

    /// Guards `sharedHandlers` and `sharedEvents`. A plain pthread mutex (Asio's `posix_mutex`) rather than
    /// `Synchronization.Mutex`: its lock/unlock calls bracket straight-line code, so a posted handler is moved into
    /// the queue without the closure capture that `withLock` needs (which costs a retain/release pair per post),
    /// and ThreadSanitizer understands it.
    private let sharedLock: UnsafeMutablePointer<pthread_mutex_t>
    /// Handlers posted from outside the running thread (under `sharedLock`).
    @exclusivity(unchecked) private var sharedHandlers = WorkQueue()
    /// Internal events from other threads, e.g. signal fan-out (under `sharedLock`).
    @exclusivity(unchecked) private var sharedEvents: [@Sendable () -> Void] = []
    /// Mirrors "shared is non-empty" so the drain can skip the lock when nothing was posted.
    private let sharedPending = Atomic<Bool>(false)

    // MARK: counters and flags (any thread)

    private let outstanding = Atomic<Int>(0)
    private let stoppedFlag = Atomic<Bool>(false)
    private let wakePending = Atomic<Bool>(false)
    /// Whether a thread may be blocked waiting for this service, so that other threads pay for an eventfd write
    /// (Asio's `task_interrupted_`): `awake` while a run/poll call is handling work; `blocked` in a blocking
    /// `ev_run`, or for a host that asked `timeUntilNextEvent()`; `parked` once a run/poll call has returned —
    /// its thread may block on ``pollDescriptor()`` next, without asking. Posts from the parked thread itself
    /// skip the write: that thread is running, not waiting.
    private let sleeping = Atomic<UInt8>(Sleep.awake)
    /// The thread that parked the service (a `pthread_t`), meaningful while `sleeping` is `parked`.
    private let parkedThread = Atomic<UInt>(0)
    private enum Sleep {
        static let awake: UInt8 = 0
        static let blocked: UInt8 = 1
        static let parked: UInt8 = 2
    }
    private let owner = Atomic<UInt>(0)
    @exclusivity(unchecked) private var depth = 0
    private let isShutDown = Atomic<Bool>(false)

    // MARK: timers (loop thread)

    let timers = TimerHeap()
    /// The deadline the timerfd is armed for (`UInt64.max` = disarmed).
    @exclusivity(unchecked) private var armedDeadline = UInt64.max
    /// Set by the timerfd callback: a deadline was reached, so the heap must be checked against the clock.
    @exclusivity(unchecked) private var timerFired = false
    @exclusivity(unchecked) private var timerSlackNanoseconds: UInt64 = IOService.defaultTimerSlackNanoseconds
    /// `SteadyInstant.coarseMargin`, copied so the hot path skips the lazy-global check.
    private let coarseMargin = SteadyInstant.coarseMargin
    /// Set when a watcher was started or stopped outside `ev_run`, so the kernel state may be stale.
    @exclusivity(unchecked) var watchersChanged = false

    private let embedding = Mutex<Int32?>(nil)
    /// I/O objects holding handlers that `shutdown()` must release. Unowned: each object leaves in its deinit.
    @exclusivity(unchecked) private var participants: [ParticipantRef] = []

    /// Creates a service with its own libev loop (epoll backend).
    ///
    /// - Throws: `IOError` if libev cannot create a loop or the wake-up descriptors cannot be made
    ///   (for example under descriptor exhaustion).
    public init() throws {
        let flags = UInt32(EVBACKEND_EPOLL) | UInt32(EVFLAG_NOENV) | UInt32(EVFLAG_NOSIGMASK)
        guard let loop = ev_loop_new(flags) else {
            throw IOError(errno: errno == 0 ? ENOMEM : errno, "ev_loop_new (epoll backend)")
        }
        let wfd = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        guard wfd >= 0 else {
            let e = IOError.lastErrno("eventfd for IOService wake-ups")
            ev_loop_destroy(loop)
            throw e
        }
        let tfd = timerfd_create(CLOCK_MONOTONIC, Int32(TFD_NONBLOCK | TFD_CLOEXEC))
        guard tfd >= 0 else {
            let e = IOError.lastErrno("timerfd_create for IOService timers")
            close(wfd)
            ev_loop_destroy(loop)
            throw e
        }
        self.loop = loop
        sharedLock = .allocate(capacity: 1)
        pthread_mutex_init(sharedLock, nil)
        self.wakeFD = wfd
        self.timerFD = tfd
        wakeWatcher = .allocate(capacity: 1)
        timerWatcher = .allocate(capacity: 1)
        ioloop_ev_io_init(wakeWatcher, ioServiceWakeCallback, wfd, Int32(EV_READ))
        ioloop_ev_io_init(timerWatcher, ioServiceTimerCallback, tfd, Int32(EV_READ))
        ev_set_userdata(loop, Unmanaged.passUnretained(self).toOpaque())
        // These two keep libev's active count above zero, so EVRUN_ONCE blocks instead of spinning.
        ev_io_start(loop, wakeWatcher)
        ev_io_start(loop, timerWatcher)
        // Push the registrations into the kernel now, so the embedding descriptor is complete at once.
        ev_run(loop, Int32(EVRUN_NOWAIT))
    }

    deinit {
        releaseEverything()
        ev_io_stop(loop, wakeWatcher)
        ev_io_stop(loop, timerWatcher)
        ev_loop_destroy(loop)
        wakeWatcher.deallocate()
        timerWatcher.deallocate()
        pthread_mutex_destroy(sharedLock)
        sharedLock.deallocate()
        close(wakeFD)
        close(timerFD)
    }

    // MARK: - Run family

    /// Runs handlers until no work is left or `stop()` is called; returns how many ran.
    ///
    /// Entered with no outstanding work it stops the service and returns 0 at once. Blocks while work is
    /// outstanding but nothing is ready. A handler that throws ends the call with that error; the handler
    /// counts as done and the service stays usable without `restart()`.
    /// Asio: `io_context::run()`.
    @discardableResult
    public func run() throws -> Int {
        try drive(limit: .max, blocking: true, deadline: nil)
    }

    /// Runs handlers until the deadline passes, work runs out or `stop()` is called.
    /// Asio: `io_context::run_until()`.
    @discardableResult
    public func run(until deadline: SteadyInstant) throws -> Int {
        try drive(limit: .max, blocking: true, deadline: deadline.nanoseconds)
    }

    /// Runs handlers for at most `duration`. Asio: `io_context::run_for()`.
    @discardableResult
    public func run(for duration: Duration) throws -> Int {
        try run(until: .now() + duration)
    }

    /// Blocks until exactly one handler has run (returns 1), or returns 0 when stopped or out of work.
    ///
    /// "One handler" is one user completion, never an internal libev iteration. Asio: `run_one()`.
    @discardableResult
    public func runOne() throws -> Int {
        try drive(limit: 1, blocking: true, deadline: nil)
    }

    /// `runOne()` bounded by a monotonic deadline: returns 0 if none ran in time. Asio: `run_one_until()`.
    @discardableResult
    public func runOne(until deadline: SteadyInstant) throws -> Int {
        try drive(limit: 1, blocking: true, deadline: deadline.nanoseconds)
    }

    /// `runOne()` bounded by a duration. Asio: `run_one_for()`.
    @discardableResult
    public func runOne(for duration: Duration) throws -> Int {
        try runOne(until: .now() + duration)
    }

    /// Runs every handler that is ready now, never blocking; returns how many ran.
    ///
    /// I/O readiness and expired timers are sampled without blocking first, so completions that are
    /// ready at the time of the call run too. Handlers posted by these handlers also run (as in Asio);
    /// use `poll(maxHandlers:)` to bound the call so a host loop can't be starved. Asio: `poll()`.
    @discardableResult
    public func poll() throws -> Int {
        try drive(limit: .max, blocking: false, deadline: nil)
    }

    /// `poll()` that runs at most `maxHandlers` handlers; the rest stay queued for the next call.
    @discardableResult
    public func poll(maxHandlers: Int) throws -> Int {
        precondition(maxHandlers >= 0, "poll(maxHandlers:) needs a non-negative bound")
        return try drive(limit: maxHandlers, blocking: false, deadline: nil)
    }

    /// Runs at most one ready handler, never blocking. Asio: `poll_one()`.
    @discardableResult
    public func pollOne() throws -> Int {
        try drive(limit: 1, blocking: false, deadline: nil)
    }

    /// Stops the service: a blocked `run()` on any thread returns promptly; queued handlers stay queued.
    ///
    /// Thread-safe and non-blocking. The service stays stopped (every run/poll call returns 0 at once)
    /// until `restart()`. Asio: `io_context::stop()`.
    public func stop() {
        stoppedFlag.store(true, ordering: .sequentiallyConsistent)
        wake()
    }

    /// True after `stop()` or after running out of work, until `restart()`. Asio: `stopped()`.
    public var stopped: Bool { stoppedFlag.load(ordering: .acquiring) }

    /// Clears the stopped state so the run/poll family works again. Asio: `io_context::restart()`.
    ///
    /// Precondition: not called from inside a run/poll call of this service.
    public func restart() {
        precondition(owner.load(ordering: .acquiring) == 0, "IOService.restart() called while the service is running")
        stoppedFlag.store(false, ordering: .sequentiallyConsistent)
    }

    /// True when the calling thread is inside a run/poll call of this service.
    /// Asio: `io_context::get_executor().running_in_this_thread()`.
    public var runningInThisThread: Bool {
        // A service nobody runs answers without asking for the thread's identity (a libc call).
        let current = owner.load(ordering: .relaxed)
        return current != 0 && current == UInt(bitPattern: Int(bitPattern: UInt(pthread_self())))
    }

    /// How late the service may wake for a timer so that nearby deadlines share one wake-up.
    ///
    /// A timer's handler becomes ready no earlier than its deadline (never early, whatever the slack) and, when
    /// the loop is otherwise idle, no later than deadline + slack. The default, 50 µs, is Linux's default timer
    /// slack (`PR_GET_TIMERSLACK`): the same coalescing the kernel applies to a thread's own `poll`/`epoll_wait`/
    /// `nanosleep` timeouts, which a timerfd does not get. With dense timers (one every microsecond) it lets the
    /// loop sleep between batches instead of waking per deadline.
    /// Set `.zero` for wake-ups as exact as the kernel allows. Negative values are treated as zero.
    ///
    /// Thread contract: the thread that runs the service. libev counterpart: `ev_set_timeout_collect_interval`;
    /// Linux: `PR_SET_TIMERSLACK`. Asio has no slack of its own.
    public var timerSlack: Duration {
        get { .nanoseconds(Int64(clamping: timerSlackNanoseconds)) }
        set { timerSlackNanoseconds = UInt64(max(0, newValue.nanosecondsClamped)) }
    }

    /// Linux's default timer slack for a thread (`PR_GET_TIMERSLACK` of a fresh process).
    static let defaultTimerSlackNanoseconds: UInt64 = 50_000

    /// The version of the system libev this process runs with, e.g. "4.33".
    public static var libevVersion: String { "\(ev_version_major()).\(ev_version_minor())" }

    /// Current outstanding work (queued handlers + pending operations + work guards). For diagnostics.
    public var outstandingWork: Int { outstanding.load(ordering: .relaxed) }

    // MARK: - Handlers

    /// Queues `handler` to run inside a later run/poll call; never runs it inside `post`.
    ///
    /// Safe from any thread; handlers posted from one thread run in FIFO order. Counts as outstanding work
    /// until it has run. Asio: `boost::asio::post(io_context, handler)`.
    public func post(_ handler: consuming @escaping @Sendable () throws -> Void) {
        // `consuming`: the caller's reference to the closure context moves into the queue, so a post costs no
        // retain/release pair of its own.
        outstanding.wrappingAdd(1, ordering: .relaxed)
        if runningInThisThread {
            ready.append(.handler(consume handler))
            return
        }
        pthread_mutex_lock(sharedLock)
        sharedHandlers.append(.handler(consume handler))
        pthread_mutex_unlock(sharedLock)
        signalShared()
    }

    /// Runs `handler` at once if the calling thread is running this service, else posts it.
    ///
    /// When run inline, an error it throws propagates to the caller of `dispatch`; when posted, out of the
    /// run/poll call that runs it. Asio: `boost::asio::dispatch`.
    public func dispatch(_ handler: @escaping @Sendable () throws -> Void) throws {
        if runningInThisThread {
            try handler()
        } else {
            post(handler)
        }
    }

    // MARK: - Internal API for I/O objects in this module

    /// Queues a completion produced on the loop thread (from a libev callback or an initiating call).
    /// The caller already counted the operation as outstanding work when it started.
    @inline(__always)
    func enqueue(_ work: Work) {
        ready.append(work)
    }

    /// Counts one pending operation as outstanding work (call when an asynchronous operation starts).
    @inline(__always)
    func beginWork() {
        outstanding.wrappingAdd(1, ordering: .relaxed)
    }

    /// Ends one unit of outstanding work without running a handler (used by guards and shutdown).
    func endWork() {
        if isShutDown.load(ordering: .acquiring) { return }
        if outstanding.wrappingSubtract(1, ordering: .acquiringAndReleasing).newValue == 0 {
            stop()
        }
    }

    /// Runs `event` on the loop thread at the next reactor sample, without counting it as a handler.
    /// Safe from any thread; used for signal fan-out.
    func postInternal(_ event: @escaping @Sendable () -> Void) {
        pthread_mutex_lock(sharedLock)
        sharedEvents.append(event)
        pthread_mutex_unlock(sharedLock)
        signalShared()
    }

    /// After appending to the shared queue: the first poster since the last drain wakes the loop; later
    /// ones see the flag set and skip the atomic exchange and the eventfd write. The drain clears the flag
    /// under the lock before taking the items, so an item appended after a drain always finds it clear.
    @inline(__always)
    private func signalShared() {
        if !sharedPending.load(ordering: .acquiring) {
            sharedPending.store(true, ordering: .sequentiallyConsistent)
            wake()
        }
    }

    /// Registers an I/O object whose pending handlers `shutdown()` must drop. O(1), no allocation beyond the
    /// registry's amortized growth: every control connection's socket registers and leaves again.
    func register(_ participant: any ShutdownParticipant) {
        precondition(participant.shutdownSlot < 0, "already registered for shutdown")
        participant.shutdownSlot = participants.count
        participants.append(ParticipantRef(object: participant))
    }

    /// Removes an object registered with `register(_:)` (call from its deinit). O(1): the last entry moves in.
    func unregister(_ participant: any ShutdownParticipant) {
        let i = participant.shutdownSlot
        guard i >= 0 else { return }
        participant.shutdownSlot = -1
        let last = participants.count - 1
        if i != last {
            participants[i] = participants[last]
            participants[i].object.shutdownSlot = i
        }
        participants.removeLast()
    }

    /// Starts a libev I/O watcher, remembering that the kernel registration may need flushing.
    @inline(__always)
    func start(_ watcher: UnsafeMutablePointer<ev_io>) {
        ev_io_start(loop, watcher)
        watchersChanged = true
    }

    @inline(__always)
    func stop(_ watcher: UnsafeMutablePointer<ev_io>) {
        ev_io_stop(loop, watcher)
    }

    /// Wakes the thread blocked in this service's `ev_run`, or a host blocked on the embedding descriptor.
    /// Coalesced: one write until the loop has drained it. Async-signal-safe.
    @inline(__always)
    private func wake() {
        // Nobody can be blocked: the loop re-checks `sharedPending` and `stopped` after setting `sleeping`
        // and before it blocks (a Dekker handshake: both sides store, then load, sequentially consistent).
        let state = sleeping.load(ordering: .sequentiallyConsistent)
        if state == Sleep.awake { return }
        if state == Sleep.parked && parkedThread.load(ordering: .relaxed) == UInt(pthread_self()) { return }
        writeWake()
    }

    /// Makes the descriptor readable (and a blocked `ev_run` return) unless a write is already pending.
    @inline(__always)
    private func writeWake() {
        if !wakePending.exchange(true, ordering: .acquiringAndReleasing) {
            var one: UInt64 = 1
            _ = write(wakeFD, &one, 8)
        }
    }

    /// libev callback side of `wake()`: drain the eventfd, then allow the next write. The order matters:
    /// a post that lands after the read either sees the flag still set (and its item is picked up by the
    /// splice that follows this callback) or sees it clear and writes again.
    fileprivate func wakeReadable() {
        var value: UInt64 = 0
        _ = read(wakeFD, &value, 8)
        wakePending.store(false, ordering: .sequentiallyConsistent)
    }

    fileprivate func timerReadable() {
        var expirations: UInt64 = 0
        _ = read(timerFD, &expirations, 8)
        armedDeadline = UInt64.max
        timerFired = true
    }

    // MARK: - The drain

    // Inlined into each public entry point so `blocking` and `deadline` fold to constants: `poll()` then
    // compiles to the non-blocking path alone (the idle poll is a host loop's most frequent call).
    @inline(__always)
    private func drive(limit: Int, blocking: Bool, deadline: UInt64?) throws -> Int {
        if stoppedFlag.load(ordering: .acquiring) {
            discardStaleWake()
            return 0
        }
        if outstanding.load(ordering: .acquiring) == 0 {
            stop()
            return 0
        }
        enter()
        // A non-blocking call leaves a parked state as it is: a host polling in a loop then costs no atomic
        // store per call (another thread's post made meanwhile writes the eventfd once, until drained).
        if blocking || sleeping.load(ordering: .relaxed) == Sleep.blocked {
            sleeping.store(Sleep.awake, ordering: .relaxed)
        }
        defer {
            flushFinished()
            if depth == 1 { park() }
            leave()
        }
        var count = 0
        var sampledThisCall = false
        while count < limit {
            if stoppedFlag.load(ordering: .relaxed) { break }
            if batchRemaining > 0 {
                if let d = deadline, SteadyInstant.now().nanoseconds >= d { break }
                batchRemaining -= 1
                // The queue can't be empty here: only this thread removes from it.
                let work = ready.removeFirst()
                count += 1
                finishedUnflushed += 1
                try invoke(work)
                continue
            }
            // Batch boundary: the reactor sentinel came round. Re-sample I/O, timers and other threads.
            flushFinished()
            if stoppedFlag.load(ordering: .relaxed) { break }
            if !ready.isEmpty && sampledThisCall {
                // The last batch queued more handlers (completions, posts). Sampling the kernel between every
                // such batch costs a system call per hop of a request through the loop; instead, while handlers
                // keep coming, sample at most once per `resampleInterval`. Posts, signals and due timers are
                // still collected here, and every call still samples first and before it returns or blocks.
                let now = SteadyInstant.now().nanoseconds
                if now &- lastSampleNanoseconds < Self.resampleInterval {
                    collectShared()
                    expireTimers()
                } else {
                    reactorStep(block: false, deadline: nil)
                    lastSampleNanoseconds = now
                }
            } else if blocking && ready.isEmpty {
                if outstanding.load(ordering: .acquiring) == 0 {
                    stop()
                    break
                }
                if let d = deadline, SteadyInstant.now().nanoseconds >= d { break }
                reactorStep(block: true, deadline: deadline)
                noteSample()
                sampledThisCall = true
            } else {
                reactorStep(block: false, deadline: nil)
                noteSample()
                sampledThisCall = true
                if !blocking && ready.isEmpty { break }
            }
            batchRemaining = ready.count
        }
        return count
    }

    /// On return from the outermost run/poll call: from now on another thread's post or a signal makes the
    /// descriptor readable, for a host that blocks on it without calling `timeUntilNextEvent()` (Kea's fixed
    /// one-second `select`). Work left ready (a bounded poll, a post that raced the return) makes it readable at
    /// once; a stopped service leaves it alone, so a host does not spin until `restart()`.
    @inline(__always)
    private func park() {
        let me = UInt(pthread_self())
        if sleeping.load(ordering: .relaxed) != Sleep.parked || parkedThread.load(ordering: .relaxed) != me {
            parkedThread.store(me, ordering: .relaxed)
            // Dekker handshake with `post`: store our state, then load theirs (both sequentially consistent). While
            // the state stays parked, every post from another thread writes the eventfd itself.
            sleeping.store(Sleep.parked, ordering: .sequentiallyConsistent)
            if stoppedFlag.load(ordering: .sequentiallyConsistent) { return }
            if sharedPending.load(ordering: .sequentiallyConsistent) {
                writeWake()
                return
            }
        }
        if !ready.isEmpty && !stoppedFlag.load(ordering: .relaxed) { writeWake() }
    }

    /// A stopped service runs nothing until `restart()`, so a wake-up written for it (by `stop()` itself, or a
    /// post) would keep the descriptor readable and a host spinning: consume it, unless a thread still runs the
    /// service (its blocking `ev_run` needs that wake-up to return).
    private func discardStaleWake() {
        if wakePending.load(ordering: .acquiring) && owner.load(ordering: .acquiring) == 0 { wakeReadable() }
    }

    /// Records when the reactor was sampled, if handlers are queued (only then can the next boundary skip a
    /// sample); an idle poll() reads no clock.
    @inline(__always)
    private func noteSample() {
        lastSampleNanoseconds = ready.isEmpty ? 0 : SteadyInstant.now().nanoseconds
    }

    /// Subtracts the handlers run since the last flush from the outstanding work, once per batch instead of
    /// once per handler. Until then the counter over-states the work, so another thread's `WorkGuard.reset()`
    /// can never see it reach zero early.
    @inline(__always)
    private func flushFinished() {
        guard finishedUnflushed > 0 else { return }
        let n = finishedUnflushed
        finishedUnflushed = 0
        if outstanding.wrappingSubtract(n, ordering: .acquiringAndReleasing).newValue == 0 {
            stop()
        }
    }

    @inline(__always)
    private func invoke(_ work: consuming Work) throws {
        switch consume work {
        case .handler(let h): try h()
        case .timerWait(let h, let aborted): try h(aborted ? IOError(.operationAborted, "timer wait") : nil)
        case .socket(let target, let read): try target.completionRun(read: read)
        }
    }

    @inline(__always)
    private func enter() {
        let me = UInt(bitPattern: Int(bitPattern: UInt(pthread_self())))
        if depth > 0 && owner.load(ordering: .relaxed) == me {
            depth += 1
            return
        }
        #if DEBUG
        let (exchanged, current) = owner.compareExchange(expected: 0, desired: me, ordering: .acquiringAndReleasing)
        precondition(
            exchanged,
            "IOService is already being run by another thread (\(current)); one thread runs a service at a time")
        #else
        // Release builds check without the locked compare-and-swap: it catches a second runner except in a
        // dead-heat race, for the price of a plain load and store on every run/poll call.
        let current = owner.load(ordering: .acquiring)
        precondition(
            current == 0,
            "IOService is already being run by another thread (\(current)); one thread runs a service at a time")
        owner.store(me, ordering: .releasing)
        #endif
        depth = 1
    }

    @inline(__always)
    private func leave() {
        depth -= 1
        if depth == 0 {
            owner.store(0, ordering: .releasing)
        }
    }

    /// One reactor sample: sync the timerfd, run libev once (blocking or not), then collect what other
    /// threads sent and every expired timer into the ready queue.
    @inline(__always)
    private func reactorStep(block: Bool, deadline: UInt64?) {
        var flags = Int32(EVRUN_NOWAIT)
        let timerWake = timerWakeDeadline
        if block {
            var wakeAt = timerWake
            if let d = deadline, d < wakeAt { wakeAt = d }
            if wakeAt != UInt64.max && wakeAt <= SteadyInstant.now().nanoseconds {
                // Something is due already: sample without sleeping.
                armTimerFD(timerWake)
            } else {
                armTimerFD(wakeAt)
                flags = Int32(EVRUN_ONCE)
            }
        } else {
            armTimerFD(timerWake)
        }
        if flags == Int32(EVRUN_ONCE) {
            sleeping.store(Sleep.blocked, ordering: .sequentiallyConsistent)
            if sharedPending.load(ordering: .sequentiallyConsistent)
                || stoppedFlag.load(ordering: .sequentiallyConsistent)
            {
                flags = Int32(EVRUN_NOWAIT)
            }
            ev_run(loop, flags)
            sleeping.store(Sleep.awake, ordering: .relaxed)
        } else {
            ev_run(loop, flags)
        }
        watchersChanged = false
        collectShared()
        expireTimers()
    }

    @inline(__always)
    private func collectShared() {
        if sharedPending.load(ordering: .acquiring) { collectSharedSlow() }
    }

    private func collectSharedSlow() {
        // Swap the shared queue with the empty spare under the lock: no copy, no allocation, no per-item
        // retain/release on this side.
        pthread_mutex_lock(sharedLock)
        sharedPending.store(false, ordering: .relaxed)
        swap(&sharedHandlers, &spare)
        var events: [@Sendable () -> Void] = []
        if !sharedEvents.isEmpty { swap(&events, &sharedEvents) }
        pthread_mutex_unlock(sharedLock)
        for event in events { event() }
        if ready.isEmpty {
            swap(&ready, &spare)
        } else {
            ready.append(contentsOf: &spare)
        }
    }

    @inline(__always)
    private func expireTimers() {
        guard let first = timers.earliestDeadline else { return }
        if !timerFired {
            // No clock read at all in the common case: the timerfd is armed at or before the earliest deadline
            // plus the slack (every reactor step arms it first), so its callback sets `timerFired` once that
            // passes. A deadline that passes after the kernel sample is caught by the next one.
            if armedDeadline <= timerWakeDeadline { return }
            // Otherwise a cheap check: the coarse clock (no TSC read) lags the real one by less than its
            // resolution, so a deadline beyond coarse + 2 ticks can't have passed yet.
            if first > SteadyInstant.coarseNow() &+ coarseMargin { return }
        }
        expireTimersSlow(first)
    }

    private func expireTimersSlow(_ first: UInt64) {
        timerFired = false
        let now = SteadyInstant.now().nanoseconds
        guard first <= now else { return }
        // Re-checked against the monotonic clock: a timer never fires before its deadline.
        while let node = timers.popExpired(now: now) {
            node.expire(now: now)
        }
    }

    /// When the reactor must wake for the earliest timer: its deadline plus the slack (`UInt64.max`: no timer).
    @inline(__always)
    private var timerWakeDeadline: UInt64 {
        guard let first = timers.earliestDeadline else { return UInt64.max }
        let (sum, overflow) = first.addingReportingOverflow(timerSlackNanoseconds)
        return overflow ? UInt64.max - 1 : min(sum, UInt64.max - 1)
    }

    /// Arms the timerfd for an absolute monotonic deadline, only when it moves earlier. A later or absent
    /// deadline leaves the old arming in place: it fires early at worst (one spurious wake-up, re-armed then),
    /// which saves a system call whenever a timer is cancelled — every control connection does that.
    private func armTimerFD(_ deadline: UInt64) {
        if deadline >= armedDeadline { return }
        armedDeadline = deadline
        var spec = itimerspec()
        if deadline != UInt64.max {
            // 0 would disarm: a deadline at the clock's epoch is "now" anyway.
            let d = max(deadline, 1)
            spec.it_value.tv_sec = Int(d / 1_000_000_000)
            spec.it_value.tv_nsec = Int(d % 1_000_000_000)
        }
        timerfd_settime(timerFD, Int32(TFD_TIMER_ABSTIME), &spec, nil)
    }

    // MARK: - Embedding

    /// A descriptor that is readable whenever this service has work ready: I/O readiness of an armed
    /// operation, a handler posted from another thread, a signal, or an expired timer — from the moment a
    /// run/poll call returns, whether or not the host asks ``timeUntilNextEvent()``. A post by the host's own
    /// thread between polls does not make it readable (that thread is not waiting); ask
    /// ``timeUntilNextEvent()`` before blocking to cover it. See `Docs/IOService.md`, "Embedding".
    ///
    /// It is libev's own epoll descriptor. The system libev has no accessor for it, so the service finds
    /// it once, on first use, as the one eventpoll descriptor of the process whose registered targets
    /// (`/proc/self/fdinfo`) include this service's private wake-up eventfd; see `Docs/IOService.md`.
    /// Add it to the host's `poll(2)`/`epoll` set for reading; never read from or close it.
    ///
    /// - Throws: `IOError` if the descriptor cannot be identified (no `/proc`).
    /// Thread contract: any thread. libuv counterpart: `uv_backend_fd`.
    public func pollDescriptor() throws -> Int32 {
        try embedding.withLock { cached in
            if let fd = cached { return fd }
            guard let fd = findBackendDescriptor(targets: [wakeFD, timerFD]) else {
                throw IOError(.invalidArgument, "cannot identify libev's epoll descriptor through /proc/self/fdinfo")
            }
            cached = fd
            return fd
        }
    }

    /// How long a host may block before it must call `poll()`: zero when handlers are ready, the time to
    /// the earliest timer (plus ``timerSlack``), or nil when only I/O, posts or signals can make work (block
    /// indefinitely on ``pollDescriptor()``) — and while the service is stopped, which runs nothing until
    /// `restart()`.
    ///
    /// Also pushes watcher changes made outside `poll()` to the kernel, so the descriptor reflects every
    /// armed operation. Round the result up, never down, when converting to milliseconds.
    /// Thread contract: the thread that drives the service. libuv counterpart: `uv_backend_timeout`.
    public func timeUntilNextEvent() -> Duration? {
        // From here until the next run/poll call, other threads wake the host through the descriptor.
        sleeping.store(Sleep.blocked, ordering: .sequentiallyConsistent)
        // Stopped: nothing runs until `restart()`; a zero timeout would make the host spin on poll() calls that
        // return at once.
        if stoppedFlag.load(ordering: .sequentiallyConsistent) {
            discardStaleWake()
            return nil
        }
        if !ready.isEmpty || sharedPending.load(ordering: .sequentiallyConsistent) { return .zero }
        if watchersChanged || timerWakeDeadline < armedDeadline {
            reactorStep(block: false, deadline: nil)
            if !ready.isEmpty { return .zero }
        }
        guard timers.earliestDeadline != nil else { return nil }
        let next = timerWakeDeadline
        let now = SteadyInstant.now().nanoseconds
        return next <= now ? .zero : .nanoseconds(Int64(clamping: next - now))
    }

    /// `timeUntilNextEvent()` as a `poll(2)` timeout in milliseconds (rounded up; -1 = infinite).
    public func pollTimeoutMilliseconds() -> Int32 {
        guard let d = timeUntilNextEvent() else { return -1 }
        let ns = d.nanosecondsClamped
        if ns <= 0 { return 0 }
        return Int32(clamping: (ns + 999_999) / 1_000_000)
    }

    // MARK: - Shutdown

    /// Stops the service and releases every uninvoked handler without calling it.
    ///
    /// Pending operations of I/O objects are dropped, queued handlers and timer waits are released (also those
    /// of timers still referenced elsewhere, and any work that releasing them starts), and outstanding work
    /// drops to zero. Afterwards the service stays stopped. Call it from the thread that runs the service,
    /// outside run/poll (Asio: `io_context::shutdown()`, which its destructor calls).
    public func shutdown() {
        precondition(owner.load(ordering: .acquiring) == 0, "IOService.shutdown() called while the service is running")
        isShutDown.store(true, ordering: .releasing)
        stoppedFlag.store(true, ordering: .sequentiallyConsistent)
        releaseEverything()
    }

    private func releaseEverything() {
        // Releasing a handler can run code that starts new work here (a deinit that answers, as a
        // CommandResponder released unanswered does). Each pass releases what the previous one started, until
        // one starts nothing; bounded, for a deinit that never stops starting. The participants stay registered
        // (each leaves in its deinit), so a later pass reaches operations started after the first.
        for _ in 0..<8 {
            outstanding.store(0, ordering: .releasing)
            // Strong references first: dropping one object's handlers may release another registered object.
            let all = participants.map { $0.object }
            for p in all { p.dropForShutdown() }
            // Swapped out first, released after: a released handler may enqueue or post again (into the emptied
            // queues, and outside the lock, which a deinit that posts would otherwise take a second time).
            var droppedReady = WorkQueue()
            swap(&ready, &droppedReady)
            batchRemaining = 0
            finishedUnflushed = 0
            var droppedShared = WorkQueue()
            var droppedEvents: [@Sendable () -> Void] = []
            pthread_mutex_lock(sharedLock)
            swap(&sharedHandlers, &droppedShared)
            swap(&sharedEvents, &droppedEvents)
            sharedPending.store(false, ordering: .relaxed)
            pthread_mutex_unlock(sharedLock)
            timers.removeAll()
            droppedReady.removeAll()
            droppedShared.removeAll()
            droppedEvents.removeAll()
            _ = all
            if outstanding.load(ordering: .acquiring) == 0 && ready.isEmpty && timers.isEmpty
                && !sharedPending.load(ordering: .acquiring)
            {
                break
            }
        }
        outstanding.store(0, ordering: .releasing)
    }
}

/// An I/O object holding handlers of pending operations that `IOService.shutdown()` must release uncalled.
protocol ShutdownParticipant: AnyObject {
    /// Position in the service's registry, -1 when not registered. Maintained by `IOService` only.
    var shutdownSlot: Int { get set }
    /// Releases every pending handler without calling it.
    func dropForShutdown()
}

private struct ParticipantRef {
    unowned(unsafe) let object: any ShutdownParticipant
}

// MARK: - libev callbacks (C convention; they only record events)

private let ioServiceWakeCallback: ioloop_ev_io_cb = { loop, _, _ in
    Unmanaged<IOService>.fromOpaque(ev_userdata(loop)!).takeUnretainedValue().wakeReadable()
}

private let ioServiceTimerCallback: ioloop_ev_io_cb = { loop, _, _ in
    Unmanaged<IOService>.fromOpaque(ev_userdata(loop)!).takeUnretainedValue().timerReadable()
}

/// Finds the eventpoll descriptor of this process whose registered targets include every fd in `targets`.
private func findBackendDescriptor(targets: [Int32]) -> Int32? {
    guard let dir = opendir("/proc/self/fd") else { return nil }
    defer { closedir(dir) }
    let dirFD = dirfd(dir)
    var link = [CChar](repeating: 0, count: 64)
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
        guard let fd = Int32(name), fd != dirFD else { continue }
        let n = readlink("/proc/self/fd/\(fd)", &link, link.count - 1)
        guard n > 0 else { continue }
        let target = link.withUnsafeBufferPointer { buf in
            String(decoding: UnsafeRawBufferPointer(start: buf.baseAddress, count: n), as: UTF8.self)
        }
        guard target == "anon_inode:[eventpoll]" else { continue }
        guard let info = readSmallFile("/proc/self/fdinfo/\(fd)") else { continue }
        var registered = Set<Int32>()
        for line in info.split(separator: "\n") where line.hasPrefix("tfd:") {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            if fields.count >= 2, let t = Int32(fields[1]) { registered.insert(t) }
        }
        if targets.allSatisfy({ registered.contains($0) }) { return fd }
    }
    return nil
}

private func readSmallFile(_ path: String) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = read(fd, &buffer, buffer.count)
        if n <= 0 { break }
        bytes.append(contentsOf: buffer[0..<n])
    }
    return String(decoding: bytes, as: UTF8.self)
}
