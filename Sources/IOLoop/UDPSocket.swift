import CLibev
import Glibc

/// A UDP socket (IPv4 or IPv6), bound at creation.
///
/// Asynchronous receive and send complete through the queue like every IOLoop operation (never inline; at
/// most one pending receive and one pending send; `cancel()`/`close()` abort them with `operationAborted`
/// exactly once). A host loop that polls ``nativeHandle`` itself can use the non-blocking
/// ``receiveFrom(into:)`` and `sendTo(_:to:)` instead. Sends use `MSG_NOSIGNAL`; `EINTR` is retried.
/// Thread contract: the thread running `service`. Asio counterpart: `ip::udp::socket`.
public final class UDPSocket: SocketCompletionTarget, ShutdownParticipant {
    /// The service whose run/poll calls complete this socket's operations.
    public let service: IOService
    /// The descriptor, or -1 after close.
    public private(set) var nativeHandle: Int32 = -1
    /// The bound address (with the real port when port 0 was asked for).
    public let localAddress: SocketAddress

    @exclusivity(unchecked) var shutdownSlot = -1
    private let readWatcher = UnsafeMutablePointer<ev_io>.allocate(capacity: 1)
    private let writeWatcher = UnsafeMutablePointer<ev_io>.allocate(capacity: 1)

    private var receiveState = OpState.idle
    private var receiveBuffer = UnsafeMutableRawBufferPointer(start: nil, count: 0)
    private var receiveHandler: ((IOError?, Int, SocketAddress?) throws -> Void)?
    private var receiveCount = 0
    private var receiveError: IOError?
    private var receivePeer = SocketAddress(storage: sockaddr_storage(), length: 0)
    private var receiveKeep: UDPSocket?
    private(set) var receiveGeneration: UInt64 = 0

    private var sendState = OpState.idle
    private var sendBase: UnsafeRawPointer?
    private var sendLength = 0
    private var sendArray: [UInt8]?
    private var sendPeer = SocketAddress(storage: sockaddr_storage(), length: 0)
    private var sendHandler: TransferHandler?
    private var sendError: IOError?
    private var sendCount = 0
    private var sendKeep: UDPSocket?
    private(set) var sendGeneration: UInt64 = 0

    /// Binds a UDP socket to `address` (port 0 = ephemeral).
    /// - Throws: `IOError` (`EADDRINUSE`, `EACCES`, ...).
    public init(_ service: IOService, bindTo address: SocketAddress, reuseAddress: Bool = false) throws {
        self.service = service
        let family = address.family == .ipv6 ? AF_INET6 : AF_INET
        let fd = try makeSocket(family: family, type: SOCK_DGRAM, "UDP socket at \(address)")
        do {
            if reuseAddress { try setIntOption(fd, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR") }
            let rc = address.withSockAddr { bind(fd, $0, $1) }
            guard rc == 0 else { throw IOError.lastErrno("bind UDP to \(address)") }
            localAddress = try IOLoop.localAddress(of: fd)
        } catch {
            closeDescriptor(fd)
            throw error
        }
        nativeHandle = fd
        ioloop_ev_io_init(readWatcher, udpReadCallback, fd, Int32(EV_READ))
        ioloop_ev_io_init(writeWatcher, udpWriteCallback, fd, Int32(EV_WRITE))
        let me = Unmanaged.passUnretained(self).toOpaque()
        readWatcher.pointee.data = me
        writeWatcher.pointee.data = me
        service.register(self)
    }

    /// Binds to a numeric `host` (default `"0.0.0.0"`) and `port`. - Throws: `IOError`.
    public convenience init(_ service: IOService, host: String = "0.0.0.0", port: UInt16) throws {
        try self.init(service, bindTo: try SocketAddress(ip: host, port: port))
    }

    deinit {
        service.unregister(self)
        stopWatchers()
        closeDescriptor(nativeHandle)
        readWatcher.deallocate()
        writeWatcher.deallocate()
    }

    /// Whether the socket is open.
    public var isOpen: Bool { nativeHandle >= 0 }
    /// The bound port.
    public var port: UInt16 { localAddress.port ?? 0 }

    private func stopWatchers() {
        guard nativeHandle >= 0 else { return }
        service.stop(readWatcher)
        service.stop(writeWatcher)
    }

    // MARK: - Non-blocking calls for host loops

    /// Receives one datagram if one is waiting, without waiting: `(count, peer)`, or nil when none is.
    ///
    /// A datagram longer than `buffer` is truncated to it (the rest is discarded, as with `recvfrom`); an empty one
    /// gives a count of 0. Would-block costs no error value (a host loop ends every pass with it).
    ///
    /// - Throws: `IOError` from `recvfrom` (`ECONNREFUSED` from an earlier send's ICMP, `EBADF` on a closed
    ///   socket, ...). `EINTR` is retried.
    /// Precondition: no `asyncReceiveFrom` pending (it would race with the pending one for the datagram).
    /// Thread contract: the loop thread. Asio: `receive_from` on a socket in non-blocking mode (which reports
    /// `would_block` as an error where this returns nil).
    public func receiveFrom(
        into buffer: UnsafeMutableRawBufferPointer
    ) throws(IOError) -> (count: Int, peer: SocketAddress)? {
        precondition(receiveState == .idle, "receiveFrom while a receive is pending on this UDP socket")
        if nativeHandle < 0 { throw IOError(errno: EBADF, "receive on a closed UDP socket") }
        var peer = SocketAddress(storage: sockaddr_storage(), length: 0)
        guard let n = try receiveNow(buffer, &peer) else { return nil }
        return (n, peer)
    }

    /// Sends one datagram to `peer` if the socket takes it now: the count sent (all of `bytes`), or nil when the
    /// send buffer is full (nothing sent).
    ///
    /// - Throws: `IOError` from `sendto` (`EMSGSIZE`, `ENETUNREACH`, `EBADF` on a closed socket, ...). `EINTR` is
    ///   retried; `MSG_NOSIGNAL` is set.
    /// Precondition: no `asyncSendTo` pending. Thread contract: the loop thread. Asio: `send_to` on a socket in
    /// non-blocking mode.
    public func sendTo(_ bytes: UnsafeRawBufferPointer, to peer: SocketAddress) throws(IOError) -> Int? {
        precondition(sendState == .idle, "sendTo while a send is pending on this UDP socket")
        if nativeHandle < 0 { throw IOError(errno: EBADF, "send on a closed UDP socket") }
        return try sendNow(bytes.baseAddress, bytes.count, peer)
    }

    /// `sendTo` for an array.
    public func sendTo(_ bytes: [UInt8], to peer: SocketAddress) throws(IOError) -> Int? {
        let sent = bytes.withUnsafeBytes { raw in
            Result { () throws(IOError) -> Int? in try sendTo(raw, to: peer) }
        }
        return try sent.get()
    }

    /// One `recvfrom` (`EINTR` retried): the datagram's length with `peer` filled in, or nil for `EAGAIN`.
    private func receiveNow(
        _ buffer: UnsafeMutableRawBufferPointer, _ peer: inout SocketAddress
    ) throws(IOError)
        -> Int?
    {
        let fd = nativeHandle
        while true {
            var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let n = withUnsafeMutablePointer(to: &peer.storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    recvfrom(fd, buffer.baseAddress, buffer.count, 0, $0, &len)
                }
            }
            if n >= 0 {
                peer.length = len
                return n
            }
            let e = errno
            if e == EINTR { continue }
            if e == EAGAIN || e == EWOULDBLOCK { return nil }
            throw IOError(errno: e, "recvfrom on UDP fd \(fd)")
        }
    }

    /// One `sendto(MSG_NOSIGNAL)` (`EINTR` retried): the count sent, or nil for `EAGAIN`.
    private func sendNow(_ base: UnsafeRawPointer?, _ count: Int, _ peer: SocketAddress) throws(IOError) -> Int? {
        let fd = nativeHandle
        while true {
            let n = peer.withSockAddr { sendto(fd, base, count, Int32(MSG_NOSIGNAL), $0, $1) }
            if n >= 0 { return n }
            let e = errno
            if e == EINTR { continue }
            if e == EAGAIN || e == EWOULDBLOCK { return nil }
            throw IOError(errno: e, "sendto \(peer) on UDP fd \(fd)")
        }
    }

    // MARK: - Asynchronous receive and send

    /// Receives one datagram into `buffer`; the handler gets `(nil, bytes, peer)` or `(error, 0, nil)`.
    ///
    /// Zero-length datagrams complete with 0 bytes. Longer datagrams are truncated to the buffer. Buffer
    /// ownership: `buffer` is borrowed until the handler runs. Precondition: no receive pending.
    /// Asio: `async_receive_from`.
    public func asyncReceiveFrom(
        into buffer: UnsafeMutableRawBufferPointer,
        _ handler: @escaping (_ error: IOError?, _ count: Int, _ peer: SocketAddress?) throws -> Void
    ) {
        precondition(
            receiveState == .idle,
            "a receive is already pending on this UDP socket: at most one outstanding receive per socket")
        service.beginWork()
        receiveState = .waiting
        receiveGeneration &+= 1
        receiveBuffer = buffer
        receiveHandler = handler
        receiveKeep = self
        receiveCount = 0
        receiveError = nil
        guard nativeHandle >= 0 else {
            finishReceive(IOError(errno: EBADF, "receive on a closed UDP socket"))
            return
        }
        attemptReceive()
    }

    private func attemptReceive() {
        do throws(IOError) {
            guard let n = try receiveNow(receiveBuffer, &receivePeer) else {
                service.start(readWatcher)
                return
            }
            receiveCount = n
            finishReceive(nil)
        } catch {
            finishReceive(error)
        }
    }

    private func finishReceive(_ error: IOError?) {
        receiveError = error
        receiveState = .queued
        service.enqueue(.socket(self, read: true))
    }

    /// Sends one datagram to `peer`; the handler gets `(nil, bytes.count)` or an error.
    ///
    /// Buffer ownership: `bytes` is borrowed until the handler runs. Precondition: no send pending.
    /// Asio: `async_send_to`.
    public func asyncSendTo(
        _ bytes: UnsafeRawBufferPointer, to peer: SocketAddress, _ handler: @escaping TransferHandler
    ) {
        startSend(bytes.baseAddress, bytes.count, nil, peer, handler)
    }

    /// `asyncSendTo` for an array (kept alive by the socket until the handler runs).
    public func asyncSendTo(_ bytes: [UInt8], to peer: SocketAddress, _ handler: @escaping TransferHandler) {
        let (base, count) = bytes.withUnsafeBytes { ($0.baseAddress, $0.count) }
        startSend(base, count, bytes, peer, handler)
    }

    private func startSend(
        _ base: UnsafeRawPointer?, _ count: Int, _ array: [UInt8]?, _ peer: SocketAddress,
        _ handler: @escaping TransferHandler
    ) {
        precondition(
            sendState == .idle, "a send is already pending on this UDP socket: at most one outstanding send per socket")
        service.beginWork()
        sendState = .waiting
        sendGeneration &+= 1
        sendBase = base
        sendLength = count
        sendArray = array
        sendPeer = peer
        sendHandler = handler
        sendKeep = self
        sendCount = 0
        sendError = nil
        guard nativeHandle >= 0 else {
            finishSend(IOError(errno: EBADF, "send on a closed UDP socket"))
            return
        }
        attemptSend()
    }

    private func attemptSend() {
        do throws(IOError) {
            guard let n = try sendNow(sendBase, sendLength, sendPeer) else {
                service.start(writeWatcher)
                return
            }
            sendCount = n
            finishSend(nil)
        } catch {
            finishSend(error)
        }
    }

    private func finishSend(_ error: IOError?) {
        if nativeHandle >= 0 { service.stop(writeWatcher) }
        sendError = error
        sendState = .queued
        service.enqueue(.socket(self, read: false))
    }

    fileprivate func readable() {
        if receiveState == .waiting { attemptReceive() } else { service.stop(readWatcher) }
    }

    fileprivate func writable() {
        if sendState == .waiting { attemptSend() } else { service.stop(writeWatcher) }
    }

    func completionRun(read: Bool) throws {
        if read {
            guard receiveState == .queued, let h = receiveHandler else { return }
            let e = receiveError
            let n = receiveCount
            let p = receivePeer
            receiveState = .idle
            receiveHandler = nil
            receiveKeep = nil
            try h(e, n, e == nil ? p : nil)
        } else {
            guard sendState == .queued, let h = sendHandler else { return }
            let e = sendError
            let n = sendCount
            sendState = .idle
            sendHandler = nil
            sendArray = nil
            sendKeep = nil
            try h(e, n)
        }
    }

    /// Aborts the pending receive if `generation` still names it.
    func cancelReceive(generation: UInt64? = nil) {
        guard receiveState == .waiting, generation == nil || generation == receiveGeneration else { return }
        if nativeHandle >= 0 { service.stop(readWatcher) }
        finishReceive(IOError(.operationAborted, "UDP receive"))
    }

    /// Aborts the pending send if `generation` still names it.
    func cancelSend(generation: UInt64? = nil) {
        guard sendState == .waiting, generation == nil || generation == sendGeneration else { return }
        finishSend(IOError(.operationAborted, "UDP send"))
    }

    /// Aborts the pending receive and send with `operationAborted` (exactly once, through the queue); the
    /// socket stays open. Asio: `cancel()`.
    public func cancel() {
        cancelReceive()
        cancelSend()
    }

    /// Cancels pending operations and closes the socket; idempotent. Asio: `close()`.
    public func close() {
        cancel()
        guard nativeHandle >= 0 else { return }
        stopWatchers()
        closeDescriptor(nativeHandle)
        nativeHandle = -1
    }

    func dropForShutdown() {
        stopWatchers()
        receiveState = .idle
        receiveHandler = nil
        sendState = .idle
        sendHandler = nil
        sendArray = nil
        receiveKeep = nil
        sendKeep = nil
    }
}

private let udpReadCallback: ioloop_ev_io_cb = { _, w, _ in
    Unmanaged<UDPSocket>.fromOpaque(w!.pointee.data).takeUnretainedValue().readable()
}

private let udpWriteCallback: ioloop_ev_io_cb = { _, w, _ in
    Unmanaged<UDPSocket>.fromOpaque(w!.pointee.data).takeUnretainedValue().writable()
}
