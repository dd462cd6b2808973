import CLibev
import Glibc

/// Which direction(s) of a connected stream to shut down. Asio: `socket_base::shutdown_type`.
public enum ShutdownDirection: Sendable {
    /// No more reads (`SHUT_RD`). Asio: `shutdown_receive`.
    case read
    /// No more writes; the peer reads end of stream (`SHUT_WR`). Asio: `shutdown_send`.
    case write
    /// Both (`SHUT_RDWR`). Asio: `shutdown_both`.
    case both
}

/// The completion of a stream read or write: an error (nil on success) and the bytes transferred.
///
/// On error the count is what was transferred before the error (Asio's `(error_code, bytes_transferred)`).
public typealias TransferHandler = (_ error: IOError?, _ bytesTransferred: Int) throws -> Void

/// Where an operation is in its life: nothing pending, waiting for readiness, or completed and queued.
enum OpState {
    case idle
    case waiting
    case queued
}

/// An I/O object whose completions are queued as `Work.socket(self, read:)`: the object holds each direction's
/// result, so a completion allocates nothing (and a socket needs no completion objects of its own).
protocol SocketCompletionTarget: AnyObject {
    /// Runs the completion of the read side (`read`) or the write side. Called once per enqueue, on the loop thread.
    func completionRun(read: Bool) throws
}

/// A connected (or connecting) byte-stream socket: the shared implementation of ``UnixStreamSocket`` and
/// ``TCPSocket``.
///
/// Operations follow Asio: a completion never runs inside the call that started it; at most one read and one
/// write may be outstanding at a time (a second one is a precondition failure); `cancel()` and `close()`
/// complete every pending operation with `operationAborted`, exactly once, through the queue. A pending
/// operation keeps the socket alive and counts as outstanding work. Writes use `MSG_NOSIGNAL`, so a peer
/// that went away gives `EPIPE`, never `SIGPIPE`. `EINTR` is retried.
///
/// Thread contract: the thread running `service` (reach it from elsewhere with `service.post`); the async
/// overloads may be called from any task.
/// Asio counterpart: `basic_stream_socket`.
public class StreamSocket: SocketCompletionTarget, ShutdownParticipant {
    /// The service whose run/poll calls complete this socket's operations.
    public let service: IOService
    /// The descriptor, or -1 when closed. Asio: `native_handle()`.
    @exclusivity(unchecked) public internal(set) var nativeHandle: Int32 = -1

    /// Both libev watchers in one allocation (a socket per control connection makes this a per-request cost).
    let readWatcher = UnsafeMutablePointer<ev_io>.allocate(capacity: 2)
    var writeWatcher: UnsafeMutablePointer<ev_io> { readWatcher + 1 }

    // Loop-thread state (the thread contract below): `@exclusivity(unchecked)` drops the runtime's dynamic
    // exclusivity check, a TLS lookup plus an access-set insert on every access (~40 per control request).
    // Read side.
    @exclusivity(unchecked) var readState = OpState.idle
    @exclusivity(unchecked) private var readBase: UnsafeMutableRawPointer?
    @exclusivity(unchecked) private var readLength = 0
    @exclusivity(unchecked) private var readDone = 0
    @exclusivity(unchecked) private var readExactly = false
    @exclusivity(unchecked) private var readTarget: IOBuffer?
    @exclusivity(unchecked) private var readHandler: TransferHandler?
    @exclusivity(unchecked) private var readError: IOError?
    @exclusivity(unchecked) private var readKeep: StreamSocket?
    @exclusivity(unchecked) private(set) var readGeneration: UInt64 = 0
    /// The last read filled its buffer, so more data is probably waiting: try the syscall before arming.
    @exclusivity(unchecked) private var readLikelyReady = true

    // Write side (also used by connect).
    @exclusivity(unchecked) var writeState = OpState.idle
    @exclusivity(unchecked) private var writeBase: UnsafeRawPointer?
    @exclusivity(unchecked) private var writeLength = 0
    @exclusivity(unchecked) private var writeDone = 0
    /// The pending write completes after its first successful `send` (`asyncWriteSome`), not after all of it.
    @exclusivity(unchecked) private var writeSomeOnly = false
    @exclusivity(unchecked) private var writeArray: [UInt8]?
    @exclusivity(unchecked) private var writeHandler: TransferHandler?
    @exclusivity(unchecked) private var writeError: IOError?
    @exclusivity(unchecked) private var writeKeep: StreamSocket?
    @exclusivity(unchecked) private(set) var writeGeneration: UInt64 = 0

    // Connect (a write-side operation).
    @exclusivity(unchecked) private var connecting = false
    @exclusivity(unchecked) private var connectCandidates: [SocketAddress] = []
    @exclusivity(unchecked) private var connectIndex = 0
    @exclusivity(unchecked) private var connectRetryDelay: Duration = .milliseconds(1)
    private lazy var connectRetry = RetryTimer(service)

    /// Set when the socket is closed so `TCPSocket` can apply its options on (re)open.
    @exclusivity(unchecked) var connectNoDelay = true
    @exclusivity(unchecked) var shutdownSlot = -1

    required init(service: IOService, adopting fd: Int32) {
        self.service = service
        if fd >= 0 { attach(fd) }
        service.register(self)
    }

    deinit {
        service.unregister(self)
        stopWatchers()
        closeDescriptor(nativeHandle)
        readWatcher.deallocate()
    }

    /// Takes ownership of an open, connected stream descriptor (e.g. from socket activation or `socketpair`),
    /// switching it to non-blocking mode. An open socket is closed first.
    ///
    /// - Throws: `IOError` from `fcntl` (e.g. `EBADF`); the descriptor is not taken then.
    /// Precondition: no operation pending. Asio: `assign(protocol, native_handle)`.
    public func assign(_ descriptor: Int32) throws {
        precondition(readState == .idle && writeState == .idle, "assign on a socket with a pending operation")
        let flags = fcntl(descriptor, F_GETFL)
        guard flags >= 0, fcntl(descriptor, F_SETFL, flags | O_NONBLOCK) == 0 else {
            throw IOError.lastErrno("fcntl O_NONBLOCK on fd \(descriptor)")
        }
        closeDescriptorOnly()
        attach(descriptor)
    }

    /// Whether the socket has a descriptor. Asio: `is_open()`.
    public var isOpen: Bool { nativeHandle >= 0 }

    func attach(_ fd: Int32) {
        nativeHandle = fd
        // A new descriptor (possibly a reused number): libev must see ev_io_set again.
        ioloop_ev_io_init(readWatcher, streamReadCallback, fd, Int32(EV_READ))
        ioloop_ev_io_init(writeWatcher, streamWriteCallback, fd, Int32(EV_WRITE))
        let me = Unmanaged.passUnretained(self).toOpaque()
        readWatcher.pointee.data = me
        writeWatcher.pointee.data = me
        readLikelyReady = true
    }

    private func stopWatchers() {
        if nativeHandle >= 0 {
            service.stop(readWatcher)
            service.stop(writeWatcher)
        }
    }

    /// The local address. - Throws: `IOError` from `getsockname`. Asio: `local_endpoint()`.
    public func localAddress() throws -> SocketAddress { try IOLoop.localAddress(of: nativeHandle) }
    /// The peer's address. - Throws: `IOError` from `getpeername` (e.g. `ENOTCONN`). Asio: `remote_endpoint()`.
    public func remoteAddress() throws -> SocketAddress { try IOLoop.remoteAddress(of: nativeHandle) }

    // MARK: - Reading

    /// Reads at least one byte into `buffer`; the handler gets the exact count.
    ///
    /// Completes with `(nil, n)` for `n > 0` bytes, `(.eof, 0)` when the peer closed its sending side, or
    /// `(error, 0)`. A zero-length buffer completes with `(nil, 0)` at once (through the queue).
    ///
    /// Buffer ownership: `buffer` is borrowed until the handler runs — keep it allocated and don't touch it
    /// meanwhile. If the service is shut down first, the buffer is never touched again after `shutdown()`.
    /// Precondition: no other read pending on this socket. Asio: `async_read_some`.
    public func asyncReadSome(into buffer: UnsafeMutableRawBufferPointer, _ handler: @escaping TransferHandler) {
        startRead(buffer, exactly: false, target: nil, handler)
    }

    /// Reads at least one byte into the free space of `buffer` and marks it valid (`buffer.count` grows).
    ///
    /// Same completions as the raw-buffer variant; the socket retains
    /// `buffer` until the handler runs. Precondition: `buffer.freeSpace > 0`, no other read pending.
    public func asyncReadSome(into buffer: IOBuffer, _ handler: @escaping TransferHandler) {
        precondition(buffer.freeSpace > 0, "asyncReadSome into a full IOBuffer (capacity \(buffer.capacity))")
        startRead(buffer.writableTail, exactly: false, target: buffer, handler)
    }

    /// Reads exactly `buffer.count` bytes (a composed operation of repeated reads).
    ///
    /// Completes with `(nil, buffer.count)`, or an error and the bytes read before it — `.eof` if the peer
    /// closed early. Same buffer ownership and precondition as `asyncReadSome`. Asio: `async_read`.
    public func asyncRead(exactly buffer: UnsafeMutableRawBufferPointer, _ handler: @escaping TransferHandler) {
        startRead(buffer, exactly: true, target: nil, handler)
    }

    /// Reads exactly `count` bytes into the free space of `buffer` (a composed operation).
    ///
    /// The bytes read (all of them, or those before an error) are marked valid. Precondition:
    /// `count <= buffer.freeSpace`.
    public func asyncRead(exactly count: Int, into buffer: IOBuffer, _ handler: @escaping TransferHandler) {
        precondition(
            count >= 0 && count <= buffer.freeSpace,
            "asyncRead(exactly: \(count)) into an IOBuffer "
                + "with \(buffer.freeSpace) bytes free")
        startRead(
            UnsafeMutableRawBufferPointer(rebasing: buffer.writableTail[0..<count]), exactly: true, target: buffer,
            handler)
    }

    private func startRead(
        _ buffer: UnsafeMutableRawBufferPointer, exactly: Bool, target: IOBuffer?, _ handler: @escaping TransferHandler
    ) {
        precondition(
            readState == .idle,
            "a read is already pending on this socket: at most one outstanding read per socket "
                + "(wait for its completion before starting another)")
        service.beginWork()
        readState = .waiting
        readGeneration &+= 1
        readBase = buffer.baseAddress
        readLength = buffer.count
        readDone = 0
        readExactly = exactly
        readTarget = target
        readHandler = handler
        readError = nil
        readKeep = self
        if nativeHandle < 0 {
            finishRead(IOError(errno: EBADF, "read on a closed socket"))
            return
        }
        if readLength == 0 {
            finishRead(nil)
            return
        }
        if readLikelyReady {
            attemptRead()
        } else {
            service.start(readWatcher)
        }
    }

    /// Performs the read syscall(s) for the pending read; completes it or leaves the watcher armed.
    private func attemptRead() {
        while true {
            let read: Int?
            do {
                read = try readNow(readBase! + readDone, readLength - readDone)
            } catch {
                finishRead(error)
                return
            }
            guard let n = read else { break }
            readDone += n
            if !readExactly || readDone == readLength {
                finishRead(nil)
                return
            }
            if !readLikelyReady { break }
        }
        service.start(readWatcher)
    }

    /// One `read` of up to `count` bytes (`EINTR` retried): the count (> 0), or nil for `EAGAIN`; throws `.eof` at
    /// end of stream or the errno. Notes whether more is probably waiting (the read filled `count`).
    private func readNow(_ p: UnsafeMutableRawPointer, _ count: Int) throws(IOError) -> Int? {
        let fd = nativeHandle
        while true {
            let n = Glibc.read(fd, p, count)
            if n > 0 {
                readLikelyReady = n == count
                return n
            }
            if n == 0 { throw IOError(.eof, "read on fd \(fd)") }
            let e = errno
            if e == EINTR { continue }
            if e == EAGAIN || e == EWOULDBLOCK {
                readLikelyReady = false
                return nil
            }
            throw IOError(errno: e, "read on fd \(fd)")
        }
    }

    private func finishRead(_ error: IOError?) {
        readError = error
        readState = .queued
        if let t = readTarget, readDone > 0 { t.commit(readDone) }
        service.enqueue(.socket(self, read: true))
    }

    fileprivate func readable() {
        if readState == .waiting {
            attemptRead()
        } else {
            // Nothing to read into: stop watching until the next read (keeps level-triggered epoll quiet).
            service.stop(readWatcher)
        }
    }

    /// Reads what is available now, without waiting: up to `buffer.count` bytes.
    ///
    /// Returns the count read (> 0), or nil when nothing is available yet (`EAGAIN`); then start an
    /// `asyncReadSome` to wait. Lets a caller that expects data (a
    /// request right after the accept) handle it in the current handler instead of a later one. A zero-length
    /// buffer returns 0.
    ///
    /// - Throws: `.eof` when the peer closed its sending side; `IOError` from `read` (`ECONNRESET`, `EBADF` on
    ///   a closed socket, ...). `EINTR` is retried.
    /// Precondition: no read pending on this socket (it would race with the pending one for the bytes).
    /// Thread contract: the loop thread. Asio: `read_some` on a socket in non-blocking mode (which reports
    /// `would_block` as an error where this returns nil).
    public func readSome(into buffer: UnsafeMutableRawBufferPointer) throws(IOError) -> Int? {
        precondition(readState == .idle, "readSome while a read is pending on this socket")
        if nativeHandle < 0 { throw IOError(errno: EBADF, "read on a closed socket") }
        guard let base = buffer.baseAddress, buffer.count > 0 else { return 0 }
        return try readNow(base, buffer.count)
    }

    // MARK: - Writing

    /// Writes what the socket takes now, without waiting: up to `bytes.count` bytes.
    ///
    /// Returns the count written, which may be less than `bytes.count` (a full send buffer), or nil when the
    /// socket takes nothing now (`EAGAIN`); write the rest with `asyncWrite`.
    /// Lets a caller whose answer fits the send buffer finish (and close) in the current handler. An empty
    /// `bytes` returns 0. `MSG_NOSIGNAL`: a peer that went away gives `EPIPE`, never `SIGPIPE`.
    ///
    /// - Throws: `IOError` from `send` (`EPIPE`, `ECONNRESET`, `EBADF` on a closed socket, ...). `EINTR` is
    ///   retried.
    /// Precondition: no write or connect pending (the bytes would interleave with the pending write's).
    /// Thread contract: the loop thread. Asio: `write_some` on a socket in non-blocking mode.
    public func writeSome(_ bytes: UnsafeRawBufferPointer) throws(IOError) -> Int? {
        precondition(writeState == .idle, "writeSome while a write or connect is pending on this socket")
        if nativeHandle < 0 { throw IOError(errno: EBADF, "write on a closed socket") }
        guard let base = bytes.baseAddress, bytes.count > 0 else { return 0 }
        return try sendNow(base, bytes.count, "write on fd \(nativeHandle)")
    }

    /// One `send(MSG_NOSIGNAL)` of up to `count` bytes (`EINTR` retried): the count written, or nil for `EAGAIN`;
    /// throws the errno with `context`.
    private func sendNow(
        _ p: UnsafeRawPointer, _ count: Int, _ context: @autoclosure () -> String
    ) throws(IOError) -> Int? {
        while true {
            let n = send(nativeHandle, p, count, Int32(MSG_NOSIGNAL))
            if n >= 0 { return n }
            let e = errno
            if e == EINTR { continue }
            if e == EAGAIN || e == EWOULDBLOCK { return nil }
            throw IOError(errno: e, context())
        }
    }

    /// Writes all of `bytes`, across partial writes and `EAGAIN`, then completes with `(nil, bytes.count)`.
    ///
    /// On error (`EPIPE` after the peer closed, `ECONNRESET`, ...) the count is the bytes written before it.
    /// Buffer ownership: `bytes` is borrowed until the handler runs. Precondition: no other write (or
    /// connect) pending. Asio: `async_write`.
    public func asyncWrite(_ bytes: UnsafeRawBufferPointer, _ handler: @escaping TransferHandler) {
        startWrite(bytes.baseAddress, bytes.count, array: nil, handler)
    }

    /// Writes all of `bytes` (the socket keeps the array alive until the handler runs; no copy is made).
    public func asyncWrite(_ bytes: [UInt8], _ handler: @escaping TransferHandler) {
        let (base, count) = bytes.withUnsafeBytes { ($0.baseAddress, $0.count) }
        // The array is retained in writeArray below, so its storage stays put while the write is pending.
        startWrite(base, count, array: bytes, handler)
    }

    /// Writes some of `bytes`: completes with `(nil, n)` after the first `send` that takes at least one byte
    /// (waiting for writability first if the socket takes nothing now), where `n` may be less than
    /// `bytes.count`. Lets a caller see progress on a long write (a write timeout that measures progress, not
    /// total time). An empty `bytes` completes with 0.
    ///
    /// Errors as ``asyncWrite(_:_:)-(UnsafeRawBufferPointer,_)`` (count 0). Buffer ownership: borrowed until the
    /// handler runs. Precondition: no other write (or connect) pending. Never completes inline.
    /// Asio: `async_write_some`.
    public func asyncWriteSome(_ bytes: UnsafeRawBufferPointer, _ handler: @escaping TransferHandler) {
        startWrite(bytes.baseAddress, bytes.count, array: nil, some: true, handler)
    }

    /// `asyncWriteSome` of an array (kept alive until the handler runs; no copy is made).
    public func asyncWriteSome(_ bytes: [UInt8], _ handler: @escaping TransferHandler) {
        let (base, count) = bytes.withUnsafeBytes { ($0.baseAddress, $0.count) }
        startWrite(base, count, array: bytes, some: true, handler)
    }

    private func startWrite(
        _ base: UnsafeRawPointer?, _ count: Int, array: [UInt8]?, some: Bool = false,
        _ handler: @escaping TransferHandler
    ) {
        precondition(
            writeState == .idle,
            "a write or connect is already pending on this socket: at most one outstanding write per socket "
                + "(wait for its completion before starting another)")
        service.beginWork()
        writeState = .waiting
        writeGeneration &+= 1
        writeArray = array
        writeBase = base
        writeLength = count
        writeDone = 0
        writeSomeOnly = some
        writeHandler = handler
        writeError = nil
        writeKeep = self
        connecting = false
        if nativeHandle < 0 {
            finishWrite(IOError(errno: EBADF, "write on a closed socket"))
            return
        }
        attemptWrite()
    }

    private func attemptWrite() {
        while writeDone < writeLength {
            let sent: Int?
            do {
                sent = try sendNow(
                    writeBase! + writeDone, writeLength - writeDone,
                    "write on fd \(nativeHandle) after \(writeDone) of \(writeLength) bytes")
            } catch {
                finishWrite(error)
                return
            }
            guard let n = sent else {
                service.start(writeWatcher)
                return
            }
            writeDone += n
            if writeSomeOnly { break }
        }
        finishWrite(nil)
    }

    private func finishWrite(_ error: IOError?) {
        if nativeHandle >= 0 { service.stop(writeWatcher) }
        writeError = error
        writeState = .queued
        service.enqueue(.socket(self, read: false))
    }

    fileprivate func writable() {
        guard writeState == .waiting else {
            service.stop(writeWatcher)
            return
        }
        if connecting {
            connectWritable()
        } else {
            attemptWrite()
        }
    }

    // MARK: - Connecting

    /// Starts connecting to the first of `candidates` that accepts; the socket opens a fresh descriptor.
    func startConnect(_ candidates: [SocketAddress], _ handler: @escaping (IOError?) throws -> Void) {
        precondition(
            writeState == .idle && readState == .idle,
            "connect on a socket with a pending operation (at most one outstanding connect/write per socket)")
        precondition(!candidates.isEmpty, "connect needs at least one address")
        service.beginWork()
        writeState = .waiting
        writeGeneration &+= 1
        writeArray = nil
        writeBase = nil
        writeLength = 0
        writeDone = 0
        writeHandler = { e, _ in try handler(e) }
        writeError = nil
        writeKeep = self
        connecting = true
        connectCandidates = candidates
        connectIndex = 0
        connectRetryDelay = .milliseconds(1)
        closeDescriptorOnly()
        connectNext(lastError: nil)
    }

    private func connectNext(lastError: IOError?) {
        guard connectIndex < connectCandidates.count else {
            closeDescriptorOnly()
            finishConnect(lastError ?? IOError(errno: ECONNREFUSED, "connect"))
            return
        }
        let addr = connectCandidates[connectIndex]
        if nativeHandle < 0 {
            let family: Int32
            switch addr.family {
            case .ipv4: family = AF_INET
            case .ipv6: family = AF_INET6
            case .unix: family = AF_UNIX
            case .other(let f): family = f
            }
            do {
                let fd = try makeSocket(family: family, type: SOCK_STREAM, "connect to \(addr)")
                attach(fd)
                if family != AF_UNIX && connectNoDelay {
                    try? setIntOption(fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1, "TCP_NODELAY")
                }
            } catch let e as IOError {
                finishConnect(e)
                return
            } catch {
                finishConnect(IOError(.invalidArgument, "connect: \(error)"))
                return
            }
        }
        attemptConnect()
    }

    private func attemptConnect() {
        let addr = connectCandidates[connectIndex]
        var rc: Int32
        repeat {
            rc = addr.withSockAddr { Glibc.connect(nativeHandle, $0, $1) }
        } while rc != 0 && errno == EINTR
        if rc == 0 {
            finishConnect(nil)
            return
        }
        let e = errno
        switch e {
        case EINPROGRESS, EALREADY:
            service.start(writeWatcher)
        case EAGAIN where addr.family == .unix:
            // A UNIX listener's backlog is full: nothing to poll for, so retry on a short back-off.
            let delay = connectRetryDelay
            connectRetryDelay = min(connectRetryDelay * 2, .milliseconds(50))
            connectRetry.arm(after: delay) { [weak self] in
                guard let self, self.writeState == .waiting, self.connecting else { return }
                self.attemptConnect()
            }
        default:
            connectFailed(IOError(errno: e, "connect to \(addr)"))
        }
    }

    private func connectWritable() {
        service.stop(writeWatcher)
        let err = getIntOption(nativeHandle, SOL_SOCKET, SO_ERROR)
        if err == 0 {
            finishConnect(nil)
        } else {
            connectFailed(IOError(errno: err, "connect to \(connectCandidates[connectIndex])"))
        }
    }

    private func connectFailed(_ error: IOError) {
        closeDescriptorOnly()
        connectIndex += 1
        connectNext(lastError: error)
    }

    private func finishConnect(_ error: IOError?) {
        connecting = false
        connectCandidates = []
        finishWrite(error)
    }

    // MARK: - Completion, cancel, close

    func completionRun(read: Bool) throws {
        if read {
            guard readState == .queued, let h = readHandler else { return }
            let e = readError
            let n = readDone
            readState = .idle
            readHandler = nil
            readError = nil
            readTarget = nil
            readBase = nil
            readKeep = nil
            try h(e, n)
        } else {
            guard writeState == .queued, let h = writeHandler else { return }
            let e = writeError
            let n = writeDone
            writeState = .idle
            writeHandler = nil
            writeError = nil
            writeArray = nil
            writeBase = nil
            writeKeep = nil
            try h(e, n)
        }
    }

    /// Aborts the pending read, if `generation` still names it (used by Task cancellation).
    func cancelRead(generation: UInt64? = nil) {
        guard readState == .waiting, generation == nil || generation == readGeneration else { return }
        if nativeHandle >= 0 { service.stop(readWatcher) }
        finishRead(IOError(.operationAborted, "read on fd \(nativeHandle)"))
    }

    /// Aborts the pending write or connect, if `generation` still names it. A cancelled connect closes the
    /// descriptor.
    func cancelWrite(generation: UInt64? = nil) {
        guard writeState == .waiting, generation == nil || generation == writeGeneration else { return }
        if connecting {
            connectRetry.cancel()
            closeDescriptorOnly()
            finishConnect(IOError(.operationAborted, "connect"))
        } else {
            finishWrite(IOError(.operationAborted, "write on fd \(nativeHandle) after \(writeDone) bytes"))
        }
    }

    /// Aborts every pending operation: each completes with `operationAborted`, exactly once, through the
    /// queue. The socket stays open. An aborted write reports the bytes already written. Asio: `cancel()`.
    public func cancel() {
        cancelRead()
        cancelWrite()
    }

    /// Cancels pending operations (see ``cancel()``), then closes the descriptor; idempotent.
    ///
    /// Never throws: the descriptor is released even if `close(2)` reports an error (as in Asio).
    /// Asio: `close()`.
    public func close() {
        cancel()
        closeDescriptorOnly()
    }

    func closeDescriptorOnly() {
        guard nativeHandle >= 0 else { return }
        stopWatchers()
        closeDescriptor(nativeHandle)
        nativeHandle = -1
    }

    /// Shuts down one or both directions of the connection; the descriptor stays open.
    ///
    /// After `.write` the peer reads end of stream once it has drained the data; reads on this side still
    /// work (half-close). - Throws: `IOError` from `shutdown(2)` (e.g. `ENOTCONN`).
    /// Asio: `socket.shutdown(type)`.
    public func shutdown(_ direction: ShutdownDirection) throws {
        let how: Int32
        switch direction {
        case .read: how = Int32(SHUT_RD)
        case .write: how = Int32(SHUT_WR)
        case .both: how = Int32(SHUT_RDWR)
        }
        guard Glibc.shutdown(nativeHandle, how) == 0 else {
            throw IOError.lastErrno("shutdown on fd \(nativeHandle)")
        }
    }

    /// Whether a read is pending (started and not yet completed).
    public var readPending: Bool { readState != .idle }
    /// Whether a write or connect is pending.
    public var writePending: Bool { writeState != .idle }

    /// Service shutdown: drop pending handlers without calling them, stop watchers, break keep-alives.
    func dropForShutdown() {
        stopWatchers()
        if connecting { connectRetry.cancel() }
        readState = .idle
        readHandler = nil
        readTarget = nil
        writeState = .idle
        writeHandler = nil
        writeArray = nil
        readKeep = nil
        writeKeep = nil
    }
}

private let streamReadCallback: ioloop_ev_io_cb = { _, w, _ in
    Unmanaged<StreamSocket>.fromOpaque(w!.pointee.data).takeUnretainedValue().readable()
}

private let streamWriteCallback: ioloop_ev_io_cb = { _, w, _ in
    Unmanaged<StreamSocket>.fromOpaque(w!.pointee.data).takeUnretainedValue().writable()
}
