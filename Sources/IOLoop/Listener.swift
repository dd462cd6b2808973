import CLibev
import Glibc

/// The non-generic part of a listening socket, so the C callback can reach it.
class ListenerBase {
    let service: IOService
    @exclusivity(unchecked) var fd: Int32 = -1
    let watcher = UnsafeMutablePointer<ev_io>.allocate(capacity: 1)

    init(service: IOService) {
        self.service = service
    }

    deinit { watcher.deallocate() }

    func attach(_ fd: Int32) {
        self.fd = fd
        ioloop_ev_io_init(watcher, listenerCallback, fd, Int32(EV_READ))
        watcher.pointee.data = Unmanaged.passUnretained(self).toOpaque()
    }

    func readable() {}
}

private let listenerCallback: ioloop_ev_io_cb = { _, w, _ in
    Unmanaged<ListenerBase>.fromOpaque(w!.pointee.data).takeUnretainedValue().readable()
}

/// Accept machinery shared by ``UnixStreamAcceptor`` and ``TCPAcceptor``: one pending accept, completion via
/// the queue, and back-off under descriptor exhaustion.
final class ListenerCore<S: StreamSocket>: ListenerBase, SocketCompletionTarget {
    // Loop-thread state (the thread contract below): `@exclusivity(unchecked)` drops the runtime's dynamic
    // exclusivity check, a TLS lookup plus an access-set insert on every access (~40 per control request).
    @exclusivity(unchecked) private var state = OpState.idle
    @exclusivity(unchecked) private var handler: ((Result<S, IOError>) throws -> Void)?
    @exclusivity(unchecked) private var result: Result<S, IOError>?
    /// The public acceptor, retained while an accept is pending (a pending operation keeps its object alive).
    weak var owner: AnyObject?
    @exclusivity(unchecked) private var keep: AnyObject?
    @exclusivity(unchecked) private(set) var generation: UInt64 = 0
    /// The last accept succeeded, so another connection is probably queued: try accept before arming.
    @exclusivity(unchecked) private var likelyReady = false
    private lazy var backoffTimer = RetryTimer(service)
    @exclusivity(unchecked) var backoff: Duration = .milliseconds(100)
    @exclusivity(unchecked) var onBackoff: ((IOError, Duration) -> Void)?
    @exclusivity(unchecked) var configure: ((Int32) -> Void)?
    @exclusivity(unchecked) var describe = "listener"
    /// Number of times accept hit descriptor exhaustion and backed off (for diagnostics and tests).
    @exclusivity(unchecked) private(set) var backoffCount = 0

    override init(service: IOService) {
        super.init(service: service)
    }

    var isBackingOff: Bool { backoffTimer.isArmed }

    func asyncAccept(_ handler: @escaping (Result<S, IOError>) throws -> Void) {
        precondition(
            state == .idle,
            "an accept is already pending on this acceptor: at most one outstanding accept "
                + "(wait for its completion before starting another)")
        service.beginWork()
        state = .waiting
        generation &+= 1
        self.handler = handler
        keep = owner ?? self
        if fd < 0 {
            finish(.failure(IOError(errno: EBADF, "accept on a closed acceptor")))
            return
        }
        if backoffTimer.isArmed { return }
        if likelyReady {
            attempt()
        } else {
            service.start(watcher)
        }
    }

    private func attempt() {
        while true {
            let c = ioloop_accept4(fd, Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue))
            if c >= 0 {
                likelyReady = true
                configure?(c)
                finish(.success(S(service: service, adopting: c)))
                return
            }
            let e = errno
            switch e {
            case EINTR, ECONNABORTED, EPROTO:
                continue
            case EAGAIN, EWOULDBLOCK:
                likelyReady = false
                service.start(watcher)
                return
            case EMFILE, ENFILE, ENOBUFS, ENOMEM:
                // The pending connection stays queued, so the watcher would fire forever: stop it, keep the
                // listener, and try again after the back-off.
                likelyReady = false
                service.stop(watcher)
                backoffCount += 1
                let err = IOError(errno: e, "accept on \(describe)")
                if let log = onBackoff {
                    // User code runs from the queue like any handler, never inside the reactor step (a libev
                    // callback): counted as one unit of work until it has run.
                    let pause = backoff
                    service.beginWork()
                    service.enqueue(.handler { log(err, pause) })
                } else {
                    let line = "IOLoop: \(err); pausing accepts for \(backoff)\n"
                    _ = line.withCString { Glibc.write(2, $0, strlen($0)) }
                }
                backoffTimer.arm(after: backoff) { [weak self] in
                    guard let self, self.state == .waiting, self.fd >= 0 else { return }
                    self.attempt()
                }
                return
            default:
                finish(.failure(IOError(errno: e, "accept on \(describe)")))
                return
            }
        }
    }

    private func finish(_ r: Result<S, IOError>) {
        result = r
        state = .queued
        service.enqueue(.socket(self, read: true))
    }

    override func readable() {
        if state == .waiting {
            attempt()
        } else {
            service.stop(watcher)
        }
    }

    func completionRun(read: Bool) throws {
        guard state == .queued, let h = handler, let r = result else { return }
        state = .idle
        handler = nil
        result = nil
        keep = nil
        try h(r)
    }

    func cancel(generation g: UInt64? = nil) {
        guard state == .waiting, g == nil || g == generation else { return }
        if fd >= 0 { service.stop(watcher) }
        backoffTimer.cancel()
        finish(.failure(IOError(.operationAborted, "accept on \(describe)")))
    }

    func closeDescriptor() {
        cancel()
        guard fd >= 0 else { return }
        service.stop(watcher)
        backoffTimer.cancel()
        IOLoop.closeDescriptor(fd)
        fd = -1
    }

    var pending: Bool { state != .idle }

    func dropForShutdown() {
        if fd >= 0 { service.stop(watcher) }
        backoffTimer.cancel()
        state = .idle
        handler = nil
        result = nil  // an accepted socket that was never delivered closes with it
        keep = nil
    }
}
