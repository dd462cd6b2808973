import CLibev
import Dispatch
import Glibc
import Synchronization

/// A set of POSIX signals to wait for asynchronously, with Asio `signal_set` semantics.
///
/// `asyncWait` completes with the number of the next signal that arrives. Signals that arrive while no
/// wait is pending are queued (in arrival order) and complete later waits at once — through the queue,
/// never inside `asyncWait`. Every pending wait of a set completes when a signal arrives.
///
/// libev lets only one loop own a signal, so one process-wide owner (a private libev loop on its own
/// thread) holds every signal watcher and fans each arrival out to every set that contains it, on every
/// service; the owning service is woken like any cross-thread post, so this also works for a host that
/// embeds the service and blocks on its `pollDescriptor()`. When the last set drops a signal, its default
/// disposition is restored (as Asio does).
///
/// Thread contract: the thread running the service. Asio counterpart: `boost::asio::signal_set`;
/// Kea: `isc::asiolink::IOSignalSet`.
public final class SignalSet {
    /// The service whose run/poll calls complete this set's waits.
    public let service: IOService
    private let core: SignalSetCore

    /// Creates a set bound to `service` containing `signals`.
    /// - Throws: `IOError` if a signal can't be owned (see `add(_:)`).
    public init(_ service: IOService, signals: [Int32] = []) throws {
        self.service = service
        self.core = SignalSetCore(service: service)
        for s in signals { try add(s) }
    }

    /// Pending waits complete with `operationAborted` (through the queue, as Asio's destructor cancels them), so
    /// the work they count is released and `run()` can return; then every signal is removed.
    deinit {
        _ = core.cancel()
        core.clear()
    }

    /// Adds `signal` to the set (idempotent). Asio: `signal_set::add`.
    ///
    /// - Throws: `IOError(.invalidArgument)` for a number outside 1...64, `SIGKILL`/`SIGSTOP` (can't be
    ///   caught), synchronous fault signals (`SIGSEGV`, `SIGBUS`, `SIGFPE`, `SIGILL`), or a signal whose
    ///   handler was installed by someone else in this process — each with a text naming the signal.
    public func add(_ signal: Int32) throws {
        try core.add(signal)
    }

    /// Removes `signal` from the set; queued, undelivered instances of it are discarded. Asio: `remove`.
    public func remove(_ signal: Int32) {
        core.remove(signal)
    }

    /// Removes every signal. Asio: `clear`.
    public func clear() {
        core.clear()
    }

    /// The signals currently in the set.
    public var signals: Set<Int32> { core.signals }

    /// Signals that arrived while no wait was pending and are not yet delivered.
    public var queuedCount: Int { core.queuedCount }

    /// Waits for the next signal: `handler` gets `.success(signalNumber)`, or `.failure(operationAborted)`
    /// after `cancel()`. Counts as outstanding work while pending. Asio: `async_wait`.
    public func asyncWait(_ handler: @escaping (Result<Int32, IOError>) throws -> Void) {
        core.asyncWait(handler)
    }

    /// Aborts every pending wait with `operationAborted`; returns how many. Queued signals stay queued.
    /// Asio: `cancel`.
    @discardableResult
    public func cancel() -> Int {
        core.cancel()
    }
}

/// The loop-thread state of a `SignalSet`, referenced weakly by the process-wide owner. Registered for
/// `IOService.shutdown()`, which releases its pending waits uncalled.
final class SignalSetCore: @unchecked Sendable, ShutdownParticipant {
    let service: IOService
    private(set) var signals: Set<Int32> = []
    private var queued: [Int32] = []
    var queuedCount: Int { queued.count }
    private var waits: [(Result<Int32, IOError>) throws -> Void] = []
    var shutdownSlot = -1

    init(service: IOService) {
        self.service = service
        service.register(self)
    }

    deinit {
        service.unregister(self)
    }

    func dropForShutdown() {
        // Out of the property before they are released: releasing a handler may start a new wait.
        let dropped = waits
        waits = []
        _ = dropped
    }

    func add(_ signal: Int32) throws {
        if signals.contains(signal) { return }
        try SignalOwner.shared.subscribe(signal, self)
        signals.insert(signal)
    }

    func remove(_ signal: Int32) {
        guard signals.remove(signal) != nil else { return }
        SignalOwner.shared.unsubscribe(signal, self)
        queued.removeAll { $0 == signal }
    }

    func clear() {
        for s in signals { SignalOwner.shared.unsubscribe(s, self) }
        signals.removeAll()
        queued.removeAll()
    }

    func asyncWait(_ handler: @escaping (Result<Int32, IOError>) throws -> Void) {
        service.beginWork()
        if !queued.isEmpty {
            let s = queued.removeFirst()
            service.enqueue(.handler { try handler(.success(s)) })
        } else {
            waits.append(handler)
        }
    }

    func cancel() -> Int {
        let n = waits.count
        for w in waits {
            service.enqueue(.handler { try w(.failure(IOError(.operationAborted, "signal wait"))) })
        }
        waits.removeAll()
        return n
    }

    /// Called from the owner thread: hand the arrival to the loop thread without counting it as a handler.
    func deliver(_ signal: Int32) {
        service.postInternal { [weak self] in self?.arrived(signal) }
    }

    private func arrived(_ signal: Int32) {
        guard signals.contains(signal) else { return }
        if waits.isEmpty {
            queued.append(signal)
            return
        }
        for w in waits {
            service.enqueue(.handler { try w(.success(signal)) })
        }
        waits.removeAll()
    }
}

/// The one process-wide owner of libev signal watchers: a private libev loop on its own thread.
final class SignalOwner: @unchecked Sendable {
    static let shared = SignalOwner()

    private struct Weak {
        weak var core: SignalSetCore?
    }

    private struct State {
        var subscribers: [Int32: [ObjectIdentifier: Weak]] = [:]
        var watchers: [Int32: UnsafeMutablePointer<ev_signal>] = [:]
        var requests: [(start: Bool, signal: Int32, done: DispatchSemaphore)] = []
        /// The handler address libev installs, learnt after the first start, to tell ours from foreign ones.
        var libevHandler: UnsafeMutableRawPointer?
    }

    private let loop: OpaquePointer
    private let asyncWatcher: UnsafeMutablePointer<ev_async>
    private let state = Mutex(State())

    private init() {
        guard let loop = ev_loop_new(UInt32(EVBACKEND_EPOLL) | UInt32(EVFLAG_NOENV)) else {
            fatalError("IOLoop: cannot create the signal owner's libev loop")
        }
        self.loop = loop
        asyncWatcher = .allocate(capacity: 1)
        ioloop_ev_async_init(asyncWatcher, signalOwnerRequestCallback)
        ev_set_userdata(loop, Unmanaged.passUnretained(self).toOpaque())
        ev_async_start(loop, asyncWatcher)
        var thread = pthread_t()
        let rc = pthread_create(
            &thread, nil,
            { arg in
                let owner = Unmanaged<SignalOwner>.fromOpaque(arg!).takeUnretainedValue()
                owner.threadMain()
                return nil
            }, Unmanaged.passUnretained(self).toOpaque())
        precondition(rc == 0, "IOLoop: cannot start the signal owner thread (error \(rc))")
        pthread_detach(thread)
    }

    private func threadMain() {
        // Threads inherit their creator's mask, and a Dispatch worker blocks most signals: this thread
        // must accept every signal it owns, whoever created it.
        var none = sigset_t()
        sigemptyset(&none)
        pthread_sigmask(SIG_SETMASK, &none, nil)
        // Lives for the rest of the process; the async watcher keeps ev_run from returning.
        while true { ev_run(loop, 0) }
    }

    func subscribe(_ signal: Int32, _ core: SignalSetCore) throws {
        try Self.validate(signal)
        let done: DispatchSemaphore? = try state.withLock { st in
            if st.watchers[signal] == nil && st.subscribers[signal, default: [:]].isEmpty {
                try Self.checkDisposition(signal, libevHandler: st.libevHandler)
            }
            st.subscribers[signal, default: [:]][ObjectIdentifier(core)] = Weak(core: core)
            if st.watchers[signal] != nil { return nil }
            let sem = DispatchSemaphore(value: 0)
            st.requests.append((true, signal, sem))
            return sem
        }
        if let done {
            ev_async_send(loop, asyncWatcher)
            done.wait()
        }
    }

    func unsubscribe(_ signal: Int32, _ core: SignalSetCore) {
        let done: DispatchSemaphore? = state.withLock { st in
            st.subscribers[signal]?[ObjectIdentifier(core)] = nil
            guard st.subscribers[signal]?.isEmpty ?? true, st.watchers[signal] != nil else { return nil }
            st.subscribers[signal] = nil
            let sem = DispatchSemaphore(value: 0)
            st.requests.append((false, signal, sem))
            return sem
        }
        if let done {
            ev_async_send(loop, asyncWatcher)
            done.wait()
        }
    }

    /// Owner thread: apply start/stop requests to the libev loop.
    fileprivate func processRequests() {
        state.withLock { st in
            for r in st.requests {
                if r.start {
                    if st.watchers[r.signal] == nil {
                        let w = UnsafeMutablePointer<ev_signal>.allocate(capacity: 1)
                        ioloop_ev_signal_init(w, signalOwnerSignalCallback, r.signal)
                        ev_signal_start(loop, w)
                        st.watchers[r.signal] = w
                        if st.libevHandler == nil {
                            var current = sigaction()
                            sigaction(r.signal, nil, &current)
                            st.libevHandler = unsafeBitCast(
                                current.__sigaction_handler.sa_handler, to: UnsafeMutableRawPointer?.self)
                        }
                    }
                } else if st.subscribers[r.signal] == nil, let w = st.watchers.removeValue(forKey: r.signal) {
                    ev_signal_stop(loop, w)
                    w.deallocate()
                }
                r.done.signal()
            }
            st.requests.removeAll()
        }
    }

    /// Owner thread: fan one arrival out to every set that contains the signal.
    fileprivate func signalArrived(_ signal: Int32) {
        let cores = state.withLock { st in st.subscribers[signal].map { Array($0.values) } ?? [] }
        for weak in cores { weak.core?.deliver(signal) }
    }

    private static func validate(_ signal: Int32) throws {
        let name = signalName(signal)
        guard signal > 0 && signal < 65 else {
            throw IOError(.invalidArgument, "signal \(signal) is not a valid signal number (1...64)")
        }
        switch signal {
        case SIGKILL, SIGSTOP:
            throw IOError(.invalidArgument, "signal \(name) can't be caught, so no SignalSet can own it")
        case SIGSEGV, SIGBUS, SIGFPE, SIGILL:
            throw IOError(
                .invalidArgument, "signal \(name) is a synchronous fault signal and can't be waited for asynchronously")
        default: break
        }
    }

    private static func checkDisposition(_ signal: Int32, libevHandler: UnsafeMutableRawPointer?) throws {
        var current = sigaction()
        guard sigaction(signal, nil, &current) == 0 else {
            throw IOError.lastErrno("sigaction query for \(signalName(signal))")
        }
        let handler = unsafeBitCast(current.__sigaction_handler.sa_handler, to: Int.self)
        let dfl = unsafeBitCast(SIG_DFL, to: Int.self)
        let ign = unsafeBitCast(SIG_IGN, to: Int.self)
        if handler == dfl || handler == ign { return }
        if let libevHandler, handler == Int(bitPattern: libevHandler) { return }
        throw IOError(
            .invalidArgument,
            "signal \(signalName(signal)) already has a handler installed by other code in this process; "
                + "IOLoop's signal owner can't take it over")
    }
}

/// A readable name for logs and errors: "SIGTERM (15)".
public func signalName(_ signal: Int32) -> String {
    let names: [Int32: String] = [
        SIGHUP: "SIGHUP", SIGINT: "SIGINT", SIGQUIT: "SIGQUIT", SIGILL: "SIGILL", SIGABRT: "SIGABRT",
        SIGBUS: "SIGBUS", SIGFPE: "SIGFPE", SIGKILL: "SIGKILL", SIGUSR1: "SIGUSR1", SIGSEGV: "SIGSEGV",
        SIGUSR2: "SIGUSR2", SIGPIPE: "SIGPIPE", SIGALRM: "SIGALRM", SIGTERM: "SIGTERM", SIGCHLD: "SIGCHLD",
        SIGCONT: "SIGCONT", SIGSTOP: "SIGSTOP", SIGTSTP: "SIGTSTP", SIGTTIN: "SIGTTIN", SIGTTOU: "SIGTTOU",
        SIGWINCH: "SIGWINCH",
    ]
    if let n = names[signal] { return "\(n) (\(signal))" }
    return "signal \(signal)"
}

private let signalOwnerRequestCallback: ioloop_ev_async_cb = { loop, _, _ in
    Unmanaged<SignalOwner>.fromOpaque(ev_userdata(loop)!).takeUnretainedValue().processRequests()
}

private let signalOwnerSignalCallback: ioloop_ev_signal_cb = { loop, w, _ in
    Unmanaged<SignalOwner>.fromOpaque(ev_userdata(loop)!).takeUnretainedValue().signalArrived(w!.pointee.signum)
}
