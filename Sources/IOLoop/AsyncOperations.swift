import Synchronization

/// Carries a loop-thread-only value across a `@Sendable` hop to the loop thread.
struct LoopBound<T>: @unchecked Sendable {
    let value: T
}

/// Shared by an async call and its cancellation handler (which runs on whatever thread cancels the task).
private final class AsyncOperationToken: @unchecked Sendable {
    let cancelled = Atomic<Bool>(false)
    // Loop-thread only:
    var started = false
    var generation: UInt64 = 0
}

extension IOService {
    /// Runs an IOLoop operation from async code and honours Task cancellation.
    ///
    /// `start` runs on the loop thread (inline when the caller already is on it, e.g. an actor whose executor
    /// is this service; otherwise through `post`), begins the operation and returns its generation.
    /// `cancel` runs on the loop thread (reached through `post`) with that generation, so it aborts this
    /// operation only — never a later one.
    func performAsync<T>(
        isolation: isolated (any Actor)?,
        start: @escaping (_ complete: @escaping (Result<T, IOError>) -> Void) -> UInt64,
        cancel: @escaping (UInt64) -> Void
    ) async throws -> T {
        let token = AsyncOperationToken()
        let cancelBox = LoopBound(value: cancel)
        let boxed = try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation(isolation: isolation) {
                (cont: CheckedContinuation<LoopBound<T>, Error>) in
                let begin = LoopBound<() -> Void>(value: {
                    if token.cancelled.load(ordering: .acquiring) {
                        cont.resume(throwing: IOError(.operationAborted, "task cancelled before the operation started"))
                        return
                    }
                    token.generation = start { result in
                        switch result {
                        case .success(let v): cont.resume(returning: LoopBound(value: v))
                        case .failure(let e): cont.resume(throwing: e)
                        }
                    }
                    token.started = true
                })
                if runningInThisThread {
                    begin.value()
                } else {
                    post { begin.value() }
                }
            }
        } onCancel: {
            token.cancelled.store(true, ordering: .releasing)
            self.post {
                if token.started { cancelBox.value(token.generation) }
            }
        }
        return boxed.value
    }
}

// MARK: - Stream sockets

extension StreamSocket {
    /// Reads at least one byte into `buffer` and returns the count (async `asyncReadSome`).
    ///
    /// Throws `IOError`: `.eof` when the peer closed its sending side, a system error, or `operationAborted`
    /// on `cancel()`/`close()` or when the Task is cancelled. After Task cancellation no data is lost (the
    /// aborted read consumed nothing) and the socket stays open and usable. Buffer ownership: borrowed until
    /// this returns. Thread contract: any task; the read starts on the loop thread.
    public func read(
        into buffer: UnsafeMutableRawBufferPointer, isolation: isolated (any Actor)? = #isolation
    ) async throws -> Int {
        let b = LoopBound(value: buffer)
        return try await service.performAsync(
            isolation: isolation,
            start: { done in
                self.asyncReadSome(into: b.value) { e, n in done(e.map { .failure($0) } ?? .success(n)) }
                return self.readGeneration
            }, cancel: { self.cancelRead(generation: $0) })
    }

    /// Reads at least one byte into the free space of `buffer` (which grows by the count returned).
    public func read(into buffer: IOBuffer, isolation: isolated (any Actor)? = #isolation) async throws -> Int {
        let b = LoopBound(value: buffer)
        return try await service.performAsync(
            isolation: isolation,
            start: { done in
                self.asyncReadSome(into: b.value) { e, n in done(e.map { .failure($0) } ?? .success(n)) }
                return self.readGeneration
            }, cancel: { self.cancelRead(generation: $0) })
    }

    /// Fills `buffer` completely (async `asyncRead(exactly:)`). Throws `.eof` if the peer closes first.
    ///
    /// After Task cancellation the bytes read so far are lost to the caller: treat the stream as unusable.
    public func read(
        exactly buffer: UnsafeMutableRawBufferPointer, isolation: isolated (any Actor)? = #isolation
    ) async throws {
        let b = LoopBound(value: buffer)
        _ = try await service.performAsync(
            isolation: isolation,
            start: { done in
                self.asyncRead(exactly: b.value) { e, n in done(e.map { .failure($0) } ?? .success(n)) }
                return self.readGeneration
            }, cancel: { self.cancelRead(generation: $0) })
    }

    /// Writes all of `bytes` (async `asyncWrite`).
    ///
    /// Throws `IOError` (its context names the bytes written before the error). After Task cancellation a
    /// prefix of `bytes` may have been sent: the stream's framing is unknown, so close the socket.
    public func write(_ bytes: [UInt8], isolation: isolated (any Actor)? = #isolation) async throws {
        _ = try await service.performAsync(
            isolation: isolation,
            start: { done in
                self.asyncWrite(bytes) { e, n in done(e.map { .failure($0) } ?? .success(n)) }
                return self.writeGeneration
            }, cancel: { self.cancelWrite(generation: $0) })
    }

    /// Writes all of `bytes`; the buffer is borrowed until this returns.
    public func write(_ bytes: UnsafeRawBufferPointer, isolation: isolated (any Actor)? = #isolation) async throws {
        let b = LoopBound(value: bytes)
        _ = try await service.performAsync(
            isolation: isolation,
            start: { done in
                self.asyncWrite(b.value) { e, n in done(e.map { .failure($0) } ?? .success(n)) }
                return self.writeGeneration
            }, cancel: { self.cancelWrite(generation: $0) })
    }
}

extension UnixStreamSocket {
    /// Connects to the listener at `path` (async `asyncConnect`). After Task cancellation the socket is closed.
    public func connect(to path: String, isolation: isolated (any Actor)? = #isolation) async throws {
        _ = try await service.performAsync(
            isolation: isolation,
            start: { done in
                self.asyncConnect(to: path) { e in done(e.map { .failure($0) } ?? .success(0)) }
                return self.writeGeneration
            }, cancel: { self.cancelWrite(generation: $0) })
    }
}

extension TCPSocket {
    /// Resolves and connects (async `asyncConnect(host:port:)`). After Task cancellation the socket is closed.
    public func connect(host: String, port: UInt16, isolation: isolated (any Actor)? = #isolation) async throws {
        _ = try await service.performAsync(
            isolation: isolation,
            start: { done in
                self.asyncConnect(host: host, port: port) { e in done(e.map { .failure($0) } ?? .success(0)) }
                return self.writeGeneration
            }, cancel: { self.cancelWrite(generation: $0) })
    }
}

// MARK: - Acceptors

extension UnixStreamAcceptor {
    /// Accepts the next connection (async `asyncAccept`).
    ///
    /// After Task cancellation the acceptor keeps listening and no connection is lost (one already accepted
    /// is returned instead of the cancellation).
    public func accept(isolation: isolated (any Actor)? = #isolation) async throws -> UnixStreamSocket {
        let core = LoopBound(value: core)
        return try await service.performAsync(
            isolation: isolation,
            start: { done in
                core.value.asyncAccept { done($0) }
                return core.value.generation
            }, cancel: { core.value.cancel(generation: $0) })
    }
}

extension TCPAcceptor {
    /// Accepts the next connection (async `asyncAccept`); cancellation as for ``UnixStreamAcceptor/accept(isolation:)``.
    public func accept(isolation: isolated (any Actor)? = #isolation) async throws -> TCPSocket {
        let core = LoopBound(value: core)
        return try await service.performAsync(
            isolation: isolation,
            start: { done in
                core.value.asyncAccept { done($0) }
                return core.value.generation
            }, cancel: { core.value.cancel(generation: $0) })
    }
}

// MARK: - UDP

extension UDPSocket {
    /// Receives one datagram (async `asyncReceiveFrom`). After Task cancellation nothing is lost.
    public func receiveFrom(
        into buffer: UnsafeMutableRawBufferPointer, isolation: isolated (any Actor)? = #isolation
    ) async throws -> (count: Int, peer: SocketAddress) {
        let b = LoopBound(value: buffer)
        return try await service.performAsync(
            isolation: isolation,
            start: { done in
                self.asyncReceiveFrom(into: b.value) { e, n, p in
                    done(e.map { .failure($0) } ?? .success((n, p!)))
                }
                return self.receiveGeneration
            }, cancel: { self.cancelReceive(generation: $0) })
    }

    /// Sends one datagram (async `asyncSendTo`).
    public func sendTo(
        _ bytes: [UInt8], to peer: SocketAddress, isolation: isolated (any Actor)? = #isolation
    )
        async throws
    {
        _ = try await service.performAsync(
            isolation: isolation,
            start: { done in
                self.asyncSendTo(bytes, to: peer) { e, n in done(e.map { .failure($0) } ?? .success(n)) }
                return self.sendGeneration
            }, cancel: { self.cancelSend(generation: $0) })
    }
}

// MARK: - Timers

extension SteadyTimer {
    /// Waits until the expiry (async `asyncWait`).
    ///
    /// Throws `operationAborted` if the timer is cancelled or re-armed, or if the Task is cancelled — which
    /// cancels the timer, aborting every pending wait on it (Asio's `cancel()`).
    public func wait(isolation: isolated (any Actor)? = #isolation) async throws {
        _ = try await service.performAsync(
            isolation: isolation,
            start: { done in
                self.asyncWait { e in done(e.map { .failure($0) } ?? .success(0)) }
                return 0
            }, cancel: { _ in self.cancel() })
    }
}
