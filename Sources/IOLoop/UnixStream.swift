import Glibc

/// The credentials of the process at the other end of a UNIX-domain socket (`SO_PEERCRED`), as of the
/// time it connected (or created the pair).
public struct PeerCredentials: Sendable, Equatable, CustomStringConvertible {
    /// Process id.
    public var pid: pid_t
    /// Effective user id.
    public var uid: uid_t
    /// Effective group id.
    public var gid: gid_t

    public var description: String { "pid \(pid) uid \(uid) gid \(gid)" }
}

/// A UNIX-domain stream socket (`AF_UNIX`, `SOCK_STREAM`).
///
/// All stream operations (read, write, shutdown, cancel, close) are those of ``StreamSocket``.
/// Thread contract: the thread running `service`. Asio counterpart: `local::stream_protocol::socket`.
public final class UnixStreamSocket: StreamSocket {
    /// Creates an unopened socket; ``asyncConnect(to:_:)`` opens it.
    public convenience init(_ service: IOService) {
        self.init(service: service, adopting: -1)
    }

    required init(service: IOService, adopting fd: Int32) {
        super.init(service: service, adopting: fd)
    }

    /// Creates a connected pair (`socketpair`). - Throws: `IOError` (e.g. `EMFILE`).
    /// Asio: `local::connect_pair`.
    public static func pair(_ service: IOService) throws -> (UnixStreamSocket, UnixStreamSocket) {
        var fds: [Int32] = [-1, -1]
        let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        guard socketpair(AF_UNIX, type, 0, &fds) == 0 else { throw IOError.lastErrno("socketpair") }
        return (
            UnixStreamSocket(service: service, adopting: fds[0]), UnixStreamSocket(service: service, adopting: fds[1])
        )
    }

    /// Connects to the listener at `path`; `handler` gets nil on success.
    ///
    /// Errors arrive through the handler, never thrown and never inline: a path longer than 107 bytes
    /// (`ENAMETOOLONG`, checked before any syscall), `ENOENT` (nothing there), `ECONNREFUSED` (a stale socket
    /// file), `EACCES` (the socket file's mode), or `operationAborted` after `cancel()`/`close()`. If the
    /// listener's backlog is full the connect is retried on a short back-off until it fits or is cancelled.
    /// An open socket is closed first. Precondition: no operation pending. Asio: `async_connect`.
    public func asyncConnect(to path: String, _ handler: @escaping (IOError?) throws -> Void) {
        do {
            let addr = try SocketAddress(unixPath: path)
            startConnect([addr], handler)
        } catch {
            failInitiation(error as? IOError ?? IOError(.invalidArgument, "\(error)"), handler)
        }
    }

    /// The peer's pid, uid and gid (`SO_PEERCRED`). - Throws: `IOError` (e.g. `EBADF` when closed).
    public func peerCredentials() throws -> PeerCredentials {
        var raw: (Int32, UInt32, UInt32) = (0, 0, 0)
        var len = socklen_t(MemoryLayout.size(ofValue: raw))
        guard getsockopt(nativeHandle, SOL_SOCKET, SO_PEERCRED, &raw, &len) == 0 else {
            throw IOError.lastErrno("getsockopt SO_PEERCRED on fd \(nativeHandle)")
        }
        return PeerCredentials(pid: raw.0, uid: raw.1, gid: raw.2)
    }
}

extension StreamSocket {
    /// Completes an operation that failed before it started, through the queue (never inline).
    func failInitiation(_ error: IOError, _ handler: @escaping (IOError?) throws -> Void) {
        service.beginWork()
        // Rare (a connect that failed before it started): one small closure allocation is fine here.
        service.enqueue(.handler { try handler(error) })
    }
}

/// Options for ``UnixStreamAcceptor``.
public struct UnixAcceptorOptions: Sendable {
    /// `listen(2)` backlog. Default `SOMAXCONN`.
    public var backlog: Int32
    /// Mode set on the socket file with `chmod` right after `bind` and before `listen` (so no client can
    /// connect earlier); nil keeps what the umask gave. Default `0o600` (owner only; connecting needs
    /// write permission on the file).
    public var mode: mode_t?
    /// Hold `<path>.lock` with `flock(LOCK_EX | LOCK_NB)` while bound, so a second instance fails clearly.
    /// Default false.
    public var useLockFile: Bool
    /// Remove an existing socket file at the path if no live server answers on it. Only ever removes a
    /// socket: a regular file, directory, symbolic link or anything else is an error and left untouched.
    /// Default true.
    public var removeStaleSocket: Bool

    /// Creates options; every parameter has the default described on its property.
    public init(
        backlog: Int32 = SOMAXCONN, mode: mode_t? = 0o600, useLockFile: Bool = false, removeStaleSocket: Bool = true
    ) {
        self.backlog = backlog
        self.mode = mode
        self.useLockFile = useLockFile
        self.removeStaleSocket = removeStaleSocket
    }
}

/// A listening UNIX-domain stream socket bound to a path, with socket-file hygiene.
///
/// Opening, in order: the path length is checked before any syscall (at most 107 bytes: the error names
/// the length and the limit); if `useLockFile`, `<path>.lock` is created (mode 0600) and locked, and a
/// second instance fails with `EWOULDBLOCK` naming the lock file; an existing path is removed only if it is
/// a socket on which no live server answers (a live one gives `EADDRINUSE` "in use"; a regular file,
/// directory, symbolic link, FIFO or device gives `EEXIST` naming what is there, and is never touched);
/// then `bind`, `chmod` to `mode`, `listen`. No error path ever unlinks a file this acceptor didn't create.
///
/// ``close()`` (or deinit) removes the socket file — only if it is still the one this acceptor bound —
/// and the lock file, then releases the lock.
///
/// Thread contract: the thread running `service`. Asio counterpart: `local::stream_protocol::acceptor`
/// (which removes nothing itself); Kea: `UnixDomainSocketAcceptor` plus `CommandMgr`'s lock and stale handling.
public final class UnixStreamAcceptor: ShutdownParticipant {
    /// The service whose run/poll calls complete accepts.
    public let service: IOService
    /// The socket path.
    public let path: String
    /// The lock file path when `useLockFile` is set, else nil.
    public let lockPath: String?
    let core: ListenerCore<UnixStreamSocket>
    @exclusivity(unchecked) var shutdownSlot = -1
    func dropForShutdown() { core.dropForShutdown() }
    private var lockFD: Int32 = -1
    private var boundIdentity: (dev: UInt, ino: UInt)?

    /// Binds and listens at `path` (see the type's documentation for the exact steps and errors).
    ///
    /// - Throws: `IOError`: `ENAMETOOLONG` (path too long), `EWOULDBLOCK` (lock held by another instance),
    ///   `EADDRINUSE` (a live server answers, or a stale socket with `removeStaleSocket` off), `EEXIST`
    ///   (something other than a socket is at the path), or the failing syscall's errno.
    public init(_ service: IOService, path: String, options: UnixAcceptorOptions = UnixAcceptorOptions()) throws {
        let address = try SocketAddress(unixPath: path)
        self.service = service
        self.path = path
        self.lockPath = options.useLockFile ? path + ".lock" : nil
        self.core = ListenerCore(service: service)
        core.describe = path
        if let lockPath {
            lockFD = try Self.acquireLock(lockPath, for: path)
        }
        do {
            try Self.clearStale(path, remove: options.removeStaleSocket)
            let fd = try makeSocket(family: AF_UNIX, type: SOCK_STREAM, "UNIX listener at \(path)")
            do {
                let rc = address.withSockAddr { bind(fd, $0, $1) }
                guard rc == 0 else { throw IOError.lastErrno("bind to \(path)") }
                boundIdentity = Self.identity(path)
                if let mode = options.mode, chmod(path, mode) != 0 {
                    throw IOError.lastErrno("chmod \(String(mode, radix: 8)) on \(path)")
                }
                guard listen(fd, options.backlog) == 0 else { throw IOError.lastErrno("listen on \(path)") }
            } catch {
                closeDescriptor(fd)
                throw error
            }
            core.attach(fd)
        } catch {
            removeOwnFiles()
            throw error
        }
        core.owner = self
        service.register(self)
    }

    deinit {
        service.unregister(self)
        core.closeDescriptor()
        removeOwnFiles()
    }

    /// The listening descriptor, or -1 after close. Asio: `native_handle()`.
    public var nativeHandle: Int32 { core.fd }
    /// Whether the acceptor is listening. Asio: `is_open()`.
    public var isOpen: Bool { core.fd >= 0 }
    /// Whether an accept is pending.
    public var acceptPending: Bool { core.pending }

    /// How long accepting pauses after `EMFILE`/`ENFILE`/`ENOBUFS`/`ENOMEM` (default 100 ms).
    public var exhaustionBackoff: Duration {
        get { core.backoff }
        set { core.backoff = newValue }
    }

    /// Called once per back-off period when accepting pauses for lack of descriptors (default: one line on
    /// stderr). Runs on the loop thread as a handler of the run/poll call (queued, counted like one), never
    /// inside a libev callback.
    public var onExhaustion: ((IOError, Duration) -> Void)? {
        get { core.onBackoff }
        set { core.onBackoff = newValue }
    }

    /// Accepts the next connection: the handler gets the connected socket or an error.
    ///
    /// Never completes inline. Under descriptor exhaustion the accept stays pending: the listener's watcher
    /// is stopped, accepting resumes after ``exhaustionBackoff``, and the pending connection stays queued in
    /// the kernel. `cancel()`/`close()` complete it with `operationAborted`. Precondition: no accept pending.
    /// Asio: `async_accept`.
    public func asyncAccept(_ handler: @escaping (Result<UnixStreamSocket, IOError>) throws -> Void) {
        core.asyncAccept(handler)
    }

    /// Aborts a pending accept (`operationAborted`, through the queue). The acceptor keeps listening.
    /// Asio: `cancel()`.
    public func cancel() { core.cancel() }

    /// Cancels a pending accept, closes the listener and removes the socket file (if it is still ours) and
    /// the lock file; idempotent. Asio: `close()`; Kea: `closeCommandSocket()`.
    public func close() {
        core.closeDescriptor()
        removeOwnFiles()
    }

    private func removeOwnFiles() {
        if let id = boundIdentity {
            boundIdentity = nil
            if let now = Self.identity(path), now == id { unlink(path) }
        }
        if lockFD >= 0, let lockPath {
            var st = stat()
            var own = stat()
            if fstat(lockFD, &own) == 0 && stat(lockPath, &st) == 0 && st.st_ino == own.st_ino
                && st.st_dev == own.st_dev
            {
                unlink(lockPath)
            }
            closeDescriptor(lockFD)
            lockFD = -1
        }
    }

    private static func identity(_ path: String) -> (dev: UInt, ino: UInt)? {
        var st = stat()
        guard lstat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFSOCK else { return nil }
        return (UInt(st.st_dev), UInt(st.st_ino))
    }

    private static func acquireLock(_ lockPath: String, for path: String) throws -> Int32 {
        for _ in 0..<5 {
            let fd = open(lockPath, O_RDONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
            guard fd >= 0 else { throw IOError.lastErrno("cannot create socket lock file \(lockPath)") }
            var rc: Int32
            repeat { rc = flock(fd, LOCK_EX | LOCK_NB) } while rc != 0 && errno == EINTR
            if rc != 0 {
                let e = errno
                closeDescriptor(fd)
                if e == EWOULDBLOCK {
                    throw IOError(
                        errno: e, "cannot lock \(lockPath): another instance is serving \(path) (lock held)")
                }
                throw IOError(errno: e, "cannot lock socket lock file \(lockPath)")
            }
            // The holder before us may have unlinked the file between our open and flock: then we locked a
            // dead inode. Only a lock on the file the path names now counts.
            var mine = stat()
            var named = stat()
            if fstat(fd, &mine) == 0 && stat(lockPath, &named) == 0 && mine.st_ino == named.st_ino
                && mine.st_dev == named.st_dev
            {
                return fd
            }
            closeDescriptor(fd)
        }
        throw IOError(errno: EAGAIN, "cannot lock \(lockPath): it keeps being replaced")
    }

    /// Removes a stale socket at `path`; throws if anything else (or a live server) is there.
    private static func clearStale(_ path: String, remove: Bool) throws {
        var st = stat()
        guard lstat(path, &st) == 0 else {
            if errno == ENOENT { return }
            throw IOError.lastErrno("lstat \(path)")
        }
        let kind = st.st_mode & S_IFMT
        guard kind == S_IFSOCK else {
            throw IOError(
                errno: EEXIST, "\(path) exists and is \(fileKind(kind)), not a socket; refusing to remove it")
        }
        // A socket file: is a server alive behind it?
        let probe = try makeSocket(family: AF_UNIX, type: SOCK_STREAM, "probe of \(path)")
        defer { closeDescriptor(probe) }
        let addr = try SocketAddress(unixPath: path)
        var rc: Int32
        repeat { rc = addr.withSockAddr { connect(probe, $0, $1) } } while rc != 0 && errno == EINTR
        let e = rc == 0 ? 0 : errno
        switch e {
        case 0, EAGAIN, EINPROGRESS:
            throw IOError(errno: EADDRINUSE, "\(path) is in use: a live server accepts connections on it")
        case ECONNREFUSED:
            guard remove else {
                throw IOError(
                    errno: EADDRINUSE,
                    "\(path) is a stale socket file (no server answers) and "
                        + "removeStaleSocket is off")
            }
            guard unlink(path) == 0 || errno == ENOENT else {
                throw IOError.lastErrno("cannot remove stale socket file \(path)")
            }
        case ENOENT:
            return
        default:
            throw IOError(errno: e, "cannot tell whether the socket \(path) is in use (probe connect failed)")
        }
    }
}

/// "a regular file", "a directory", ... for error texts.
func fileKind(_ kind: mode_t) -> String {
    switch kind {
    case S_IFREG: return "a regular file"
    case S_IFDIR: return "a directory"
    case S_IFLNK: return "a symbolic link"
    case S_IFIFO: return "a FIFO"
    case S_IFCHR: return "a character device"
    case S_IFBLK: return "a block device"
    case S_IFSOCK: return "a socket"
    default: return "an unknown kind of file"
    }
}
