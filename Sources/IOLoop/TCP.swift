import Glibc

/// A TCP stream socket (IPv4 or IPv6).
///
/// All stream operations (read, write, shutdown, cancel, close) are those of ``StreamSocket``. Sockets made
/// by ``asyncConnect(host:port:_:)`` and accepted by a ``TCPAcceptor`` have `TCP_NODELAY` set by default.
/// Thread contract: the thread running `service`. Asio counterpart: `ip::tcp::socket`.
public final class TCPSocket: StreamSocket {
    /// Creates an unopened socket; `asyncConnect` opens it.
    public convenience init(_ service: IOService) {
        self.init(service: service, adopting: -1)
    }

    required init(service: IOService, adopting fd: Int32) {
        super.init(service: service, adopting: fd)
    }

    /// Whether `asyncConnect` sets `TCP_NODELAY` on the descriptor it opens (default true).
    public var noDelayOnConnect: Bool {
        get { connectNoDelay }
        set { connectNoDelay = newValue }
    }

    /// Resolves `host` and connects to the first address that accepts; `handler` gets nil on success.
    ///
    /// Numeric hosts (`"127.0.0.1"`, `"::1"`) never block; names are resolved with `getaddrinfo` on the
    /// calling thread before the asynchronous part starts. Each resolved address is tried in order; the error
    /// of the last one is reported. Errors arrive through the handler, never inline: resolution failure
    /// (`invalidArgument`), `ECONNREFUSED`, `ETIMEDOUT`, ..., or `operationAborted` after `cancel()`/`close()`
    /// (which leaves the socket closed). An open socket is closed first. Precondition: no operation pending.
    /// Asio: `async_connect` with a resolver's results.
    public func asyncConnect(host: String, port: UInt16, _ handler: @escaping (IOError?) throws -> Void) {
        do {
            let addresses = try SocketAddress.resolve(host: host, port: port)
            startConnect(addresses, handler)
        } catch {
            failInitiation(error as? IOError ?? IOError(.invalidArgument, "\(error)"), handler)
        }
    }

    /// Connects to one address. Asio: `async_connect(endpoint)`.
    public func asyncConnect(to address: SocketAddress, _ handler: @escaping (IOError?) throws -> Void) {
        startConnect([address], handler)
    }

    /// Sets or clears `TCP_NODELAY` (Nagle's algorithm off when true). - Throws: `IOError` from `setsockopt`.
    /// Asio: `ip::tcp::no_delay`.
    public func setNoDelay(_ on: Bool) throws {
        try setIntOption(nativeHandle, Int32(IPPROTO_TCP), TCP_NODELAY, on ? 1 : 0, "TCP_NODELAY")
    }

    /// Whether `TCP_NODELAY` is set.
    public var noDelay: Bool { getIntOption(nativeHandle, Int32(IPPROTO_TCP), TCP_NODELAY) != 0 }
}

/// A listening TCP socket.
///
/// Binds with `SO_REUSEADDR` (by default), so a restarted server can rebind while old connections sit in
/// `TIME_WAIT`. Port 0 picks an ephemeral port: read it from ``port``. Accepted sockets get `TCP_NODELAY`
/// unless ``noDelay`` is false. Accept semantics (one pending accept, back-off under `EMFILE`/`ENFILE`) are
/// those of ``UnixStreamAcceptor``.
/// Thread contract: the thread running `service`. Asio counterpart: `ip::tcp::acceptor`.
public final class TCPAcceptor: ShutdownParticipant {
    /// The service whose run/poll calls complete accepts.
    public let service: IOService
    let core: ListenerCore<TCPSocket>
    @exclusivity(unchecked) var shutdownSlot = -1
    func dropForShutdown() { core.dropForShutdown() }
    /// The bound address (with the real port when port 0 was asked for).
    public let localAddress: SocketAddress
    /// Whether accepted sockets get `TCP_NODELAY` (default true).
    public var noDelay = true {
        didSet { applyConfigure() }
    }

    /// Binds to `host` (a numeric address or name; nil = every IPv6 and IPv4 address via `"::"`, falling back
    /// to `"0.0.0.0"` without IPv6) and `port` (0 = ephemeral), then listens.
    ///
    /// - Throws: `IOError`: resolution failure (`invalidArgument`), `EADDRINUSE`, `EACCES` (privileged port),
    ///   or the failing syscall's errno.
    public init(
        _ service: IOService, host: String? = nil, port: UInt16, backlog: Int32 = SOMAXCONN, reuseAddress: Bool = true
    ) throws {
        self.service = service
        let candidates: [SocketAddress]
        if let host {
            candidates = try SocketAddress.resolve(host: host, port: port, passive: true)
        } else {
            candidates = [try SocketAddress(ip: "::", port: port), try SocketAddress(ip: "0.0.0.0", port: port)]
        }
        var lastError = IOError(.invalidArgument, "no address to bind")
        var bound: (Int32, SocketAddress)?
        for addr in candidates {
            let family = addr.family == .ipv6 ? AF_INET6 : AF_INET
            do {
                let fd = try makeSocket(family: family, type: SOCK_STREAM, "TCP listener at \(addr)")
                do {
                    if reuseAddress { try setIntOption(fd, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR") }
                    let rc = addr.withSockAddr { bind(fd, $0, $1) }
                    guard rc == 0 else { throw IOError.lastErrno("bind to \(addr)") }
                    guard listen(fd, backlog) == 0 else { throw IOError.lastErrno("listen on \(addr)") }
                    bound = (fd, try IOLoop.localAddress(of: fd))
                    break
                } catch {
                    closeDescriptor(fd)
                    throw error
                }
            } catch let e as IOError {
                lastError = e
            }
        }
        guard let (fd, local) = bound else { throw lastError }
        self.localAddress = local
        self.core = ListenerCore(service: service)
        core.describe = "\(local)"
        core.attach(fd)
        core.owner = self
        applyConfigure()
        service.register(self)
    }

    deinit {
        service.unregister(self)
        core.closeDescriptor()
    }

    private func applyConfigure() {
        core.configure =
            noDelay ? { fd in try? setIntOption(fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1, "TCP_NODELAY") } : nil
    }

    /// The bound port (the ephemeral one when bound with port 0).
    public var port: UInt16 { localAddress.port ?? 0 }
    /// The listening descriptor, or -1 after close.
    public var nativeHandle: Int32 { core.fd }
    /// Whether the acceptor is listening.
    public var isOpen: Bool { core.fd >= 0 }
    /// Whether an accept is pending.
    public var acceptPending: Bool { core.pending }

    /// How long accepting pauses after `EMFILE`/`ENFILE`/`ENOBUFS`/`ENOMEM` (default 100 ms).
    public var exhaustionBackoff: Duration {
        get { core.backoff }
        set { core.backoff = newValue }
    }

    /// Called once per back-off period when accepting pauses for lack of descriptors (default: stderr).
    public var onExhaustion: ((IOError, Duration) -> Void)? {
        get { core.onBackoff }
        set { core.onBackoff = newValue }
    }

    /// Accepts the next connection (see ``UnixStreamAcceptor/asyncAccept(_:)``). Asio: `async_accept`.
    public func asyncAccept(_ handler: @escaping (Result<TCPSocket, IOError>) throws -> Void) {
        core.asyncAccept(handler)
    }

    /// Aborts a pending accept with `operationAborted`. Asio: `cancel()`.
    public func cancel() { core.cancel() }

    /// Cancels a pending accept and closes the listener; idempotent. Asio: `close()`.
    public func close() { core.closeDescriptor() }
}
