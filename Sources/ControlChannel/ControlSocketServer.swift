import Foundation
import Glibc
import IOLoop
import Logging

/// A control-socket configuration error, reported before any system call.
///
/// Kea counterpart: `isc::config::BadSocketInfo`.
public struct ControlSocketConfigError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What is wrong, naming the key and the value.
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Where and how the control socket listens: Kea's `control-socket` map plus IOLoop's limits.
///
/// Thread contract: a plain value. Kea counterpart: the `control-socket` map of `Dhcp4`.
public struct ControlSocketConfig: Sendable, Equatable {
    /// Maximum UNIX socket path length on Linux (`sizeof(sun_path) - 1`).
    public static let maxPathLength = 107

    /// The socket path, resolved against the working directory when relative.
    public var socketName: String
    /// Mode of the socket file, set explicitly after bind (never left to the umask). Default 0600.
    public var socketMode: mode_t = 0o600
    /// Inactivity timeout: from accept and after each chunk received, suspended while a command runs.
    public var inactivityTimeout: Duration = .seconds(10)
    /// Writing the answer fails after this long without progress.
    public var writeTimeout: Duration = .seconds(10)
    /// Largest command accepted, in bytes (default 16 MiB).
    public var maxCommandSize: Int = JSONFramer.defaultMaxSize
    /// Deepest nesting accepted (default 100, what current Kea uses).
    public var maxDepth: Int = JSONFramer.defaultMaxDepth

    /// A configuration for `socketName` with every default.
    public init(socketName: String) {
        self.socketName = Self.resolve(socketName)
    }

    /// Parses a Kea-style map: `{"socket-type": "unix", "socket-name": "/run/app/control.sock"}`.
    ///
    /// Also accepted: `socket-mode` (an integer such as `432`, or an octal string such as `"0660"`), Kea's
    /// `user-context` and `comment`. Errors, each with a clear text: not a map; missing `socket-type`;
    /// `socket-type` other than `unix` (naming the value); missing or non-string `socket-name`; a resolved path
    /// longer than 107 bytes (saying the length and the limit); a parent directory that does not exist; an
    /// unsupported key. Kea counterpart: the checks at the top of `CommandMgr::openCommandSocket`.
    public init(parsing map: JSONValue) throws(ControlSocketConfigError) {
        guard case .object(let object) = map else {
            throw ControlSocketConfigError("control-socket must be a map, got \(map.typeName)")
        }
        for key in object.keys
        where !["socket-type", "socket-name", "socket-mode", "user-context", "comment"].contains(key) {
            throw ControlSocketConfigError("unsupported parameter '\(key)' in control-socket")
        }
        guard let type = object["socket-type"] else {
            throw ControlSocketConfigError("Mandatory 'socket-type' parameter missing")
        }
        guard type.stringValue == "unix" else {
            let shown = type.stringValue ?? type.serializedString()
            throw ControlSocketConfigError("Invalid 'socket-type' parameter value \(shown) (only 'unix' is supported)")
        }
        guard let name = object["socket-name"] else {
            throw ControlSocketConfigError("Mandatory 'socket-name' parameter missing")
        }
        guard let path = name.stringValue, !path.isEmpty else {
            throw ControlSocketConfigError(
                "'socket-name' parameter expected to be a non-empty string, got \(name.typeName)")
        }
        self.init(socketName: path)
        if let mode = object["socket-mode"] {
            if let i = mode.intValue, (0...0o777).contains(i) {
                socketMode = mode_t(i)
            } else if let s = mode.stringValue, let m = mode_t(s, radix: 8), m <= 0o777 {
                socketMode = m
            } else {
                throw ControlSocketConfigError(
                    "'socket-mode' must be a permission mode such as \"0660\" or 432, got \(mode.serializedString())")
            }
        }
        try validatePath()
    }

    /// Checks the resolved path's length and its parent directory, before any socket call.
    public func validatePath() throws(ControlSocketConfigError) {
        let length = socketName.utf8.count
        guard length <= Self.maxPathLength else {
            throw ControlSocketConfigError(
                "'socket-name' is invalid: resolved path '\(socketName)' is \(length) bytes long, "
                    + "the limit is \(Self.maxPathLength)")
        }
        let parent = (socketName as NSString).deletingLastPathComponent
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: parent.isEmpty ? "/" : parent, isDirectory: &isDirectory),
            isDirectory.boolValue
        else {
            throw ControlSocketConfigError(
                "'socket-name' is invalid: parent directory '\(parent)' of '\(socketName)' does not exist")
        }
    }

    static func resolve(_ path: String) -> String {
        if path.hasPrefix("/") { return path }
        return FileManager.default.currentDirectoryPath + "/" + path
    }
}

/// Kea's UNIX control socket: one JSON command per connection, answered by a `CommandManager`.
///
/// Behaviour (normative text: `../shared/spec/control-channel.md`):
/// - Opens with a lock file `<socket-name>.lock` (flock; a second instance fails naming it), reclaims a stale
///   socket but never deletes anything else at the path, and sets the socket file's mode explicitly.
/// - Each connection sends one JSON value, framed by `JSONFramer` (any chunking, comments, limits). The
///   answer is written as soon as the value is complete, in full, then the connection is shut down and closed.
/// - Inactivity timeout (default 10 s) from accept and after each chunk, suspended while the command runs; on
///   expiry the client gets Kea's exact text. A separate write timeout (no progress) closes the connection
///   without ever splicing a second value into a half-written answer.
/// - A client that leaves before its command is complete gets nothing; one that leaves mid-answer is
///   handled quietly. A complete command always gets an answer.
/// - Unlimited concurrent connections; none blocks another. A handler may `reconfigure` or `close` the server
///   without breaking its own in-flight answer.
///
/// Thread contract: the thread running `service`. Kea counterpart: `isc::config::CommandMgr`
/// (`openCommandSocket`, `closeCommandSocket`, `Connection`, `ConnectionPool`).
public final class ControlSocketServer {
    /// The service that runs the server's I/O and the command handlers.
    public let service: IOService
    /// The command manager that answers.
    public let commandManager: CommandManager
    /// The current configuration.
    // Loop-thread state (the thread contract below): `@exclusivity(unchecked)` drops the runtime's dynamic
    // exclusivity check, a TLS lookup plus an access-set insert on every access (~40 per control request).
    @exclusivity(unchecked) public private(set) var config: ControlSocketConfig
    let logger: Logger
    @exclusivity(unchecked) private var acceptor: UnixStreamAcceptor?
    /// The accept completion of the current listener (nil: make it at the next accept). Reset with the listener.
    @exclusivity(unchecked) private var acceptHandler: ((Result<UnixStreamSocket, IOError>) throws -> Void)?
    @exclusivity(unchecked) private var connections: [ObjectIdentifier: ControlConnection] = [:]
    @exclusivity(unchecked) private var drainWaiters: [() -> Void] = []
    @exclusivity(unchecked) private(set) var acceptedCount = 0
    /// One timer for every connection's timeout (libev's advice for many timeouts of one duration): connections
    /// wait in a list ordered by deadline, and the timer is armed for the first. Per connection that is an append
    /// and an unlink instead of a timer object, a closure, two heap operations and an aborted completion.
    private let sweepTimer: SteadyTimer
    @exclusivity(unchecked) private var sweepArmedAt: SteadyInstant?
    @exclusivity(unchecked) private unowned(unsafe) var timeoutHead: ControlConnection?
    @exclusivity(unchecked) private unowned(unsafe) var timeoutTail: ControlConnection?
    /// Where connections serialize their answers, reused: an answer the socket takes at once (the usual case) is
    /// written from here and never copied; only the rest of a larger one is copied into its connection.
    @exclusivity(unchecked) var answerScratch = ByteSink(capacity: 4096)
    /// Set while an answer is written from `answerScratch`: an answer produced meanwhile (by a log handler that
    /// runs a command, say) must not overwrite it, and takes its own buffer.
    @exclusivity(unchecked) var answerScratchBusy = false
    /// What a new connection's first read goes into: a command that arrives whole (the usual case) is framed from
    /// here, so that connection never allocates a read buffer. The framer copies what it keeps.
    let readScratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 16384, alignment: 16)

    /// Opens the socket and starts accepting.
    ///
    /// - Throws: `ControlSocketConfigError` for a bad path, or `IOError` from opening (lock held by another
    ///   instance, something other than a socket at the path, a live server on it, permissions, ...).
    public init(
        service: IOService, commandManager: CommandManager, config: ControlSocketConfig,
        logger: Logger = Logger(label: "ioloop.control-socket")
    ) throws {
        self.service = service
        self.commandManager = commandManager
        self.config = config
        self.logger = logger
        sweepTimer = SteadyTimer(service)
        acceptor = try Self.open(service, config)
        logger.info("control socket listening on \(config.socketName)")
        acceptNext()
    }

    /// Convenience: opens from a Kea `control-socket` map.
    public convenience init(
        service: IOService, commandManager: CommandManager, map: JSONValue,
        logger: Logger = Logger(label: "ioloop.control-socket")
    ) throws {
        try self.init(
            service: service, commandManager: commandManager, config: ControlSocketConfig(parsing: map), logger: logger)
    }

    deinit {
        acceptor?.close()
        sweepTimer.cancel()
        readScratch.deallocate()
    }

    /// The path currently listened on, or nil when closed.
    public var socketPath: String? { acceptor?.path }
    /// Whether the listener is open.
    public var isOpen: Bool { acceptor != nil }
    /// Connections currently open (reading, running a command or writing an answer).
    public var connectionCount: Int { connections.count }

    /// Applies a new configuration. The new listener is opened before the old one is closed, so a failure
    /// leaves the old socket serving and is thrown. An identical configuration changes nothing (Kea keeps
    /// the socket and its clients then too); limits and timeouts apply to new connections.
    public func reconfigure(_ newConfig: ControlSocketConfig) throws {
        if newConfig == config && acceptor != nil { return }
        if newConfig.socketName == config.socketName, let acceptor {
            // Same path: the listener stays (a second bind would find our own lock held); only the mode and
            // the limits change.
            if newConfig.socketMode != config.socketMode && chmod(acceptor.path, newConfig.socketMode) != 0 {
                throw IOError.lastErrno("chmod \(String(newConfig.socketMode, radix: 8)) on \(acceptor.path)")
            }
            config = newConfig
            return
        }
        let fresh = try Self.open(service, newConfig)
        let old = acceptor
        acceptor = fresh
        acceptHandler = nil
        config = newConfig
        old?.close()
        logger.info("control socket moved to \(newConfig.socketName)")
        acceptNext()
    }

    /// Stops accepting, removes the socket and lock files, and closes every connection that is still reading.
    /// Connections whose command is running or whose answer is being written finish delivering it first.
    /// Kea counterpart: `closeCommandSocket()`.
    public func close() {
        if let a = acceptor {
            acceptor = nil
            acceptHandler = nil
            a.close()
            logger.info("control socket \(a.path) closed")
        }
        for c in connections.values { c.closeIfIdle() }
        cancelSweepIfDone()
    }

    /// Calls `completion` (through the service's queue) once no connection is running a command or writing an
    /// answer — e.g. to exit only after a `shutdown` answer has reached its client.
    public func whenAnswersDelivered(_ completion: @escaping () -> Void) {
        drainWaiters.append(completion)
        checkDrained()
    }

    // MARK: internals

    private static func open(_ service: IOService, _ config: ControlSocketConfig) throws -> UnixStreamAcceptor {
        try config.validatePath()
        return try UnixStreamAcceptor(
            service, path: config.socketName,
            options: UnixAcceptorOptions(mode: config.socketMode, useLockFile: true, removeStaleSocket: true))
    }

    private func acceptNext() {
        guard let acceptor else { return }
        // Assigned only when nil, never read back and stored again: each trip of a closure through an Optional
        // (whose payload is held at the generic abstraction) wraps it in one more reabstraction thunk, and a
        // re-stored handler grew by two thunks per connection (quadratic slow-down; seen in the benchmark).
        if acceptHandler == nil { acceptHandler = makeAcceptHandler(for: acceptor) }
        acceptor.asyncAccept(acceptHandler!)
    }

    /// The accept completion for `acceptor`, made once per listener and reused for every accept (a fresh closure
    /// per connection cost an allocation each). It holds the server and the listener weakly: no cycle.
    private func makeAcceptHandler(
        for acceptor: UnixStreamAcceptor
    ) -> (Result<UnixStreamSocket, IOError>) throws -> Void {
        return { [weak self, weak acceptor] result in
            guard let self else { return }
            switch result {
            case .success(let socket):
                // Served even if the listener was replaced meanwhile: a client that got in gets its answer.
                self.acceptedCount += 1
                let c = ControlConnection(server: self, socket: socket, config: self.config)
                self.connections[ObjectIdentifier(c)] = c
                c.start()
            case .failure(let error):
                if error.isOperationAborted { return }
                self.logger.warning("control socket accept failed: \(error)")
            }
            if let acceptor, acceptor === self.acceptor { self.acceptNext() }
        }
    }

    func connectionClosed(_ c: ControlConnection) {
        unschedule(c)
        connections[ObjectIdentifier(c)] = nil
        cancelSweepIfDone()
        checkDrained()
    }

    // MARK: connection deadlines

    /// Queues `c` by its current deadline (moving it if queued). Deadlines of one timeout arrive in order, so
    /// this is an append; a shorter timeout after `reconfigure` walks back from the tail.
    func schedule(_ c: ControlConnection) {
        unschedule(c)
        let d = c.deadline
        c.queuedDeadline = d
        var before = timeoutTail
        while let b = before, b.queuedDeadline > d { before = b.timeoutPrev }
        c.timeoutPrev = before
        if let b = before {
            c.timeoutNext = b.timeoutNext
            b.timeoutNext = c
        } else {
            c.timeoutNext = timeoutHead
            timeoutHead = c
        }
        if let n = c.timeoutNext { n.timeoutPrev = c } else { timeoutTail = c }
        c.isQueued = true
        if timeoutHead === c { armSweep(at: d) }
    }

    /// Takes `c` off the deadline list (no-op when not queued). The sweep timer stays armed: it finds nothing.
    func unschedule(_ c: ControlConnection) {
        guard c.isQueued else { return }
        c.isQueued = false
        if let p = c.timeoutPrev { p.timeoutNext = c.timeoutNext } else { timeoutHead = c.timeoutNext }
        if let n = c.timeoutNext { n.timeoutPrev = c.timeoutPrev } else { timeoutTail = c.timeoutPrev }
        c.timeoutPrev = nil
        c.timeoutNext = nil
    }

    /// Closed and no connection left: a pending sweep must not keep the service's run() going.
    private func cancelSweepIfDone() {
        guard acceptor == nil, connections.isEmpty, sweepArmedAt != nil else { return }
        sweepArmedAt = nil
        sweepTimer.cancel()
    }

    private func armSweep(at deadline: SteadyInstant) {
        if let armed = sweepArmedAt, armed <= deadline { return }
        sweepArmedAt = deadline
        // Re-arming aborts a later pending wait; its completion arrives with an error and is ignored.
        sweepTimer.expires(at: deadline)
        sweepTimer.asyncWait { [weak self] error in
            guard let self, error == nil else { return }
            self.sweep()
        }
    }

    /// Times out every connection whose deadline has passed; one whose deadline moved later is re-queued.
    private func sweep() {
        sweepArmedAt = nil
        let now = SteadyInstant.now()
        while let c = timeoutHead, c.queuedDeadline <= now {
            unschedule(c)
            if c.deadline > now {
                schedule(c)
            } else {
                c.deadlinePassed()
            }
        }
        if let head = timeoutHead { armSweep(at: head.queuedDeadline) }
    }

    func checkDrained() {
        guard !drainWaiters.isEmpty, !connections.values.contains(where: { $0.isAnswering }) else { return }
        let waiters = drainWaiters
        drainWaiters.removeAll()
        for w in waiters { service.post { [w = UncheckedBox(w)] in w.value() } }
    }
}

/// Lets a loop-thread closure travel through `post`, which takes `@Sendable` closures; it runs on the same
/// loop thread that created it.
struct UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

/// One client connection of a `ControlSocketServer`: read one command, answer, close.
final class ControlConnection {
    private enum State {
        case reading, processing, writing, closed
    }

    private weak var server: ControlSocketServer?
    private let socket: UnixStreamSocket
    private let config: ControlSocketConfig
    private let logger: Logger
    // Loop-thread state (the thread contract below): `@exclusivity(unchecked)` drops the runtime's dynamic
    // exclusivity check, a TLS lookup plus an access-set insert on every access (~40 per control request).
    @exclusivity(unchecked) private var framer: JSONFramer
    @exclusivity(unchecked) private var state = State.reading
    @exclusivity(unchecked) private var buffer: UnsafeMutableRawBufferPointer
    /// When the current timeout (inactivity or write) expires; `distantFuture` while a command runs.
    @exclusivity(unchecked) private(set) var deadline = SteadyInstant.distantFuture
    // The server's deadline list (see `ControlSocketServer.schedule`): links and the deadline queued with.
    // Unowned: a queued connection is always also in the server's `connections`, and leaves the list first.
    @exclusivity(unchecked) unowned(unsafe) var timeoutPrev: ControlConnection?
    @exclusivity(unchecked) unowned(unsafe) var timeoutNext: ControlConnection?
    @exclusivity(unchecked) var queuedDeadline = SteadyInstant.distantFuture
    @exclusivity(unchecked) var isQueued = false
    /// An answer the socket did not take at once (a copy: the serialized bytes are only lent), written from
    /// `written` on.
    @exclusivity(unchecked) private var answer = UnsafeMutableRawBufferPointer(start: nil, count: 0)
    @exclusivity(unchecked) private var written = 0
    /// False once a complete command ended exactly at the end of a short read; see `finish()`.
    @exclusivity(unchecked) private var mayHaveUnreadInput = true
    private let fd: Int32

    /// Reads start with a small buffer (10 000 idle connections stay cheap) that grows when a read fills it.
    /// 1 KiB fits typical commands and stays within glibc's per-thread cache (4 KiB did not: ~1k instructions of
    /// malloc/free per connection).
    private static let initialBuffer = 1024
    private static let largeBuffer = 65536
    /// At most this much unread input is drained before the close.
    private static let maxDrain = 1 << 20

    init(server: ControlSocketServer, socket: UnixStreamSocket, config: ControlSocketConfig) {
        self.server = server
        self.socket = socket
        self.config = config
        self.logger = server.logger
        self.framer = JSONFramer(maxSize: config.maxCommandSize, maxDepth: config.maxDepth)
        // Allocated by the first asynchronous read; a command read whole in `start()` needs none.
        self.buffer = UnsafeMutableRawBufferPointer(start: nil, count: 0)
        self.fd = socket.nativeHandle
    }

    deinit {
        buffer.deallocate()
        answer.deallocate()
    }

    /// Whether a command is running or its answer is being written.
    var isAnswering: Bool { state == .processing || state == .writing }

    func start() {
        logger.debug("control connection opened on fd \(fd)")
        // A client connects to send its command, which is usually there by the time it is accepted: handle it in
        // this handler, without arming the timeout or waiting a loop pass for the read's completion.
        let chunk = server?.readScratch ?? UnsafeMutableRawBufferPointer(start: nil, count: 0)
        do throws(IOError) {
            if chunk.count > 0, let n = try socket.readSome(into: chunk) {
                readCompleted(nil, n, from: chunk)
                return
            }
        } catch {
            readCompleted(error, 0, from: chunk)
            return
        }
        armTimer(config.inactivityTimeout)
        read()
    }

    func closeIfIdle() {
        if state == .reading { finish() }
    }

    // MARK: reading

    /// Waits for the next chunk of the command.
    private func read() {
        if buffer.count == 0 { buffer = .allocate(byteCount: Self.initialBuffer, alignment: 16) }
        socket.asyncReadSome(into: buffer) { [self] error, n in
            guard state == .reading else { return }
            readCompleted(error, n, from: buffer)
        }
    }

    /// Feeds the `n` bytes read into `chunk` (the connection's buffer, or the server's scratch for the first read)
    /// to the framer, or handles the read's error, and goes on: read more, process the command, or answer the
    /// framing error.
    private func readCompleted(_ error: IOError?, _ n: Int, from chunk: UnsafeMutableRawBufferPointer) {
        if let error {
            if error.isOperationAborted { return }
            if error == .eof {
                let partial = framer.partialCommandByteCount
                let detail =
                    partial > 0 ? "discarding partial command of \(partial) bytes" : "no input data to discard"
                logger.info("control connection fd \(fd) closed by the client, \(detail)")
            } else {
                logger.warning("control connection fd \(fd) read failed: \(error)")
            }
            finish()
            return
        }
        let result = framer.feed(UnsafeRawBufferPointer(rebasing: chunk[0..<n]))
        if case .complete(let consumed) = result {
            // The command ended exactly where a short read ended: nothing else was queued then, so the
            // close can skip the probe for unread input (one system call per connection).
            mayHaveUnreadInput = consumed < n || n == chunk.count
        }
        if n == chunk.count && buffer.count < Self.largeBuffer {
            buffer.deallocate()
            buffer = .allocate(byteCount: Self.largeBuffer, alignment: 16)
        }
        if case .needMoreData = result {
            armTimer(config.inactivityTimeout)
            read()
        } else {
            framed(result)
        }
    }

    /// Goes on once the framer has a complete command (process it) or has rejected the input (answer why).
    private func framed(_ result: JSONFramer.FeedResult) {
        switch result {
        case .needMoreData:
            break
        case .complete:
            process()
        case .failed(let failure):
            logger.warning("control connection fd \(fd): \(failure.text)")
            send(CommandManager.answerBytes(for: failure))
        }
    }

    // MARK: timers

    /// Sets the connection's deadline to `timeout` from now. Lazily: a connection already queued for an earlier
    /// deadline stays where it is, and the server's sweep re-queues it for the rest, so a chunk read costs
    /// nothing but this store.
    private func armTimer(_ timeout: Duration) {
        deadline = .now() + timeout
        if isQueued && queuedDeadline <= deadline { return }
        server?.schedule(self)
    }

    private func suspendTimer() {
        deadline = .distantFuture
        server?.unschedule(self)
    }

    /// Called by the server's sweep once `deadline` has passed.
    func deadlinePassed() {
        guard state == .reading || state == .writing else { return }
        timedOut()
    }

    private func timedOut() {
        switch state {
        case .reading:
            socket.cancel()
            if readInputWaitingAtDeadline() { return }
            let partial = framer.partialCommandByteCount
            let text =
                partial > 0
                ? "Connection over control channel timed out, discarded partial command of \(partial) bytes"
                : "Connection over control channel timed out"
            logger.info("control connection fd \(fd): \(text)")
            send(ControlAnswer.error(text).serialized())
        case .writing:
            // Never splice a second value into a half-written answer: just close.
            logger.warning(
                "control connection fd \(fd): answer write made no progress for \(config.writeTimeout), closing after \(written) of \(answer.count) bytes"
            )
            finish()
        default: break
        }
    }

    /// Frames input that reached the socket before the deadline was handled but was not read yet (the loop checks
    /// timers after its I/O sample, and between samples while handlers keep coming). A command that arrived in
    /// time is served, a framing error answered, an end of stream closes as a read would (all three return true);
    /// a partial command is counted whole in the timeout text. Bounded like the close's drain, so a client that
    /// keeps streaming cannot hold the loop thread here.
    private func readInputWaitingAtDeadline() -> Bool {
        guard let chunk = server?.readScratch, let base = chunk.baseAddress else { return false }
        var total = 0
        while total < Self.maxDrain {
            let n = recv(fd, base, chunk.count, Int32(MSG_DONTWAIT))
            if n < 0 { return false }  // nothing more now (or an error the answer's write will report)
            if n == 0 {
                readCompleted(.eof, 0, from: chunk)
                return true
            }
            total += n
            let result = framer.feed(UnsafeRawBufferPointer(start: base, count: n))
            if case .needMoreData = result { continue }
            framed(result)
            return true
        }
        return false
    }

    // MARK: processing and writing

    private func process() {
        state = .processing
        suspendTimer()
        let bytes = framer.takeValueBytes()
        guard let server else {
            finish()
            return
        }
        let command: JSONValue
        do {
            // The configured depth, not the manager's default: the framer already enforced it.
            command = try JSONParser.parse(bytes, maxDepth: config.maxDepth)
        } catch {
            logger.warning("control connection fd \(fd): invalid command: \(error)")
            send(ControlAnswer.error(error.description).serialized())
            return
        }
        server.commandManager.processCommand(command) { [self] answer in
            guard state == .processing else { return }
            send(answer)
        }
    }

    private func send(_ answer: JSONValue) {
        guard let server, !server.answerScratchBusy else {
            send(answer.serialized())
            return
        }
        server.answerScratchBusy = true
        defer { server.answerScratchBusy = false }
        answer.serialize(into: &server.answerScratch)
        server.answerScratch.withBytes { send(UnsafeRawBufferPointer($0)) }
    }

    private func send(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { send($0) }
    }

    /// Most answers fit the socket's send buffer: write now and, if all of it went, close in this same handler.
    /// The client then finds its answer and the end of stream together (one wake-up, not two), and the
    /// connection costs no write completion, loop pass or copy of the answer. What the socket does not take now
    /// is copied (`bytes` is only lent) and written asynchronously.
    private func send(_ bytes: UnsafeRawBufferPointer) {
        state = .writing
        var sent = 0
        do throws(IOError) {
            sent = try socket.writeSome(bytes) ?? 0
        } catch {
            writeFailed(error)
            return
        }
        if sent == bytes.count {
            logger.debug("control connection fd \(fd): sent answer of \(sent) bytes")
            finish()
            return
        }
        answer = .allocate(byteCount: bytes.count, alignment: 1)
        answer.copyMemory(from: bytes)
        written = sent
        writeNext()
    }

    private func writeFailed(_ error: IOError) {
        if !error.isOperationAborted {
            // The client left mid-answer: its command has run; nothing else to do.
            logger.info("control connection fd \(fd): client left while the answer was written (\(error))")
        }
        finish()
    }

    private func writeNext() {
        let remaining = answer.count - written
        if remaining == 0 {
            logger.debug("control connection fd \(fd): sent answer of \(answer.count) bytes")
            finish()
            return
        }
        armTimer(config.writeTimeout)
        // One completion per send that makes progress, so the write timeout measures progress (spec §3), whatever
        // the socket's buffer size. The buffer lives until deinit, past any completion.
        socket.asyncWriteSome(UnsafeRawBufferPointer(rebasing: answer[written...])) { [self] error, transferred in
            guard state == .writing else { return }
            written += transferred
            if let error {
                writeFailed(error)
                return
            }
            writeNext()
        }
    }

    /// Closes the connection. If unread input is waiting, it is shut down and the input drained first: on Linux,
    /// closing a UNIX socket that still holds unread data makes the client's next read fail with ECONNRESET
    /// instead of EOF.
    private func finish() {
        guard state != .closed else { return }
        state = .closed
        suspendTimer()
        if socket.isOpen {
            // The common case — nothing unread — costs one peek and the close. Only a client that sent more
            // than its command gets the shutdown and the drain.
            var probe: UInt8 = 0
            if mayHaveUnreadInput && recv(fd, &probe, 1, Int32(MSG_DONTWAIT | MSG_PEEK)) > 0 {
                try? socket.shutdown(.write)
                // Bounded, so a client that keeps streaming cannot hold the loop thread here.
                var drained = 0
                withUnsafeTemporaryAllocation(byteCount: 16384, alignment: 16) { scratch in
                    while drained < Self.maxDrain {
                        let n = recv(fd, scratch.baseAddress, scratch.count, Int32(MSG_DONTWAIT))
                        if n <= 0 { break }
                        drained += n
                    }
                }
            }
            socket.close()
        }
        server?.connectionClosed(self)
    }
}
