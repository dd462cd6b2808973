import ControlChannel
import Foundation
import Glibc
import IOLoop
import Logging

/// The example host server: a UDP packet loop that owns its main loop and calls `IOService.poll()` between
/// packet passes, with Kea's control channel and command set on the same service.
///
/// The main loop blocks in `poll(2)` on the packet sockets plus the service's `pollDescriptor()`, bounded by
/// `pollTimeoutMilliseconds()` — Kea's DHCP main loop minus its 1-second `select` workaround: idle, it
/// sleeps; a control command, a timer or a signal wakes it at once.
final class PacketServer {
    let io: IOService
    let commands: CommandManager
    let stats: StatisticsManager
    var logger: Logger
    private(set) var config: ServerConfig
    /// The file given with `-c` (config-reload re-reads it; config-write writes it by default).
    let configPath: String?
    /// `--control-socket`: overrides the socket name of every configuration applied.
    let controlSocketOverride: String?
    private(set) var control: ControlSocketServer?
    private var listeners: [(address: ListenAddress, socket: UDPSocket)] = []
    private var pool: WorkerPool?
    private var signals: SignalSet?
    private let counters: PacketCounters

    private var running = true
    private(set) var exitValue: Int32 = 0
    private let startedAt = SteadyInstant.now()
    private var reloadedAt = SteadyInstant.now()
    private var pollSet: [pollfd] = []
    private var receiveBuffer = UnsafeMutableRawBufferPointer.allocate(
        byteCount: PacketFormat.maxDatagram, alignment: 16)
    private var replyBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: PacketFormat.maxDatagram, alignment: 16)

    static let version = "1.0.0"

    init(config: ServerConfig, configPath: String?, controlSocketOverride: String?, logger: Logger) throws {
        self.io = try IOService()
        self.commands = CommandManager(logger: logger)
        self.stats = StatisticsManager()
        self.counters = try PacketCounters(stats)
        self.logger = logger
        self.configPath = configPath
        self.controlSocketOverride = controlSocketOverride
        self.config = config
        var initial = config
        if let path = controlSocketOverride { initial = initial.withControlSocket(path: path) }
        try registerCommands()
        try apply(initial, initial: true)
        signals = try SignalSet(io, signals: [SIGTERM, SIGINT, SIGHUP])
        waitForSignal()
    }

    deinit {
        receiveBuffer.deallocate()
        replyBuffer.deallocate()
    }

    // MARK: main loop

    /// Runs until `shutdown` (command or SIGTERM/SIGINT); returns the exit value.
    func run() -> Int32 {
        // Kea's IOService holds a work guard too: poll() on a service without work would stop it.
        let keepAlive = io.makeWorkGuard()
        defer { keepAlive.reset() }
        while running {
            rebuildPollSetIfNeeded()
            let timeout = io.pollTimeoutMilliseconds()
            let ready = Glibc.poll(&pollSet, nfds_t(pollSet.count), timeout)
            if ready < 0 && errno != EINTR {
                logger.error("poll failed: \(IOError.lastErrno("poll"))")
            }
            if ready > 0 {
                for i in 0..<listeners.count where pollSet[i].revents & Int16(POLLIN | POLLERR) != 0 {
                    receivePackets(from: listeners[i].socket)
                }
            }
            do {
                try io.poll(maxHandlers: 1000)
            } catch {
                // As Kea's main loop: a failing handler is logged and the server goes on.
                logger.error("handler failed: \(error)")
            }
        }
        pool?.stop()
        for l in listeners { l.socket.close() }
        control?.close()
        signals?.clear()
        // The loop will not run again: release what it would have run (the control socket's accept, aborted by
        // close() through the queue, keeps the acceptor and so the service alive until then).
        io.shutdown()
        logger.info("packet-server exiting with status \(exitValue)")
        return exitValue
    }

    /// Set when listeners change; the poll set is rebuilt before the next wait.
    private var pollSetDirty = true

    private func rebuildPollSetIfNeeded() {
        guard pollSetDirty else {
            for i in pollSet.indices { pollSet[i].revents = 0 }
            return
        }
        pollSet = listeners.map { pollfd(fd: $0.socket.nativeHandle, events: Int16(POLLIN), revents: 0) }
        // The service's descriptor: readable whenever control work is ready.
        let descriptor = (try? io.pollDescriptor()) ?? -1
        pollSet.append(pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0))
        pollSetDirty = false
    }

    /// One packet pass on a socket: up to 64 datagrams, so control work is never starved.
    private func receivePackets(from socket: UDPSocket) {
        for _ in 0..<64 {
            let received: (count: Int, peer: SocketAddress)?
            do throws(IOError) {
                received = try socket.receiveFrom(into: receiveBuffer)
            } catch {
                // An ICMP error from an earlier reply surfaces here; the next datagram is unaffected.
                logger.debug("receive on udp port \(socket.port): \(error)")
                return
            }
            guard let (n, peer) = received else { return }  // none waiting: pass done
            counters.received.increment()
            let request = UnsafeRawBufferPointer(rebasing: receiveBuffer[0..<n])
            if let pool {
                let job = PacketJob(fd: socket.nativeHandle, bytes: Array(request), peer: peer)
                if !pool.submit(job) { counters.dropped.increment() }
            } else {
                counters.handle(request, reply: replyBuffer, fd: socket.nativeHandle, peer: peer)
            }
        }
    }

    // MARK: signals

    /// Signals go through the same command path as Kea: SIGTERM/SIGINT → shutdown, SIGHUP → config-reload.
    private func waitForSignal() {
        signals?.asyncWait { [weak self] result in
            guard let self, case .success(let signal) = result else { return }
            let command: String = signal == SIGHUP ? "config-reload" : "shutdown"
            self.logger.info("received \(signalName(signal)): running '\(command)'")
            self.commands.processCommand(["command": .string(command)]) { answer in
                self.logger.info("'\(command)' answered: \(answer.serializedString())")
            }
            if self.running { self.waitForSignal() }
        }
    }

    // MARK: configuration

    /// Applies a configuration: listeners, worker threads, control socket, log level. New sockets are opened
    /// before old ones close, so on failure the old configuration stays in force and the error is thrown.
    /// Runs inside the critical section: packet workers are paused meanwhile (Kea's
    /// MultiThreadingCriticalSection).
    func apply(_ requested: ServerConfig, initial: Bool = false) throws {
        var new = requested
        if let path = controlSocketOverride { new = new.withControlSocket(path: path) }
        let controlConfig = try ControlSocketConfig(parsing: new.controlSocket)

        pool?.pause()
        defer { pool?.resume() }

        // 1. Listeners: keep the ones that stay, open the new ones first.
        var opened: [(address: ListenAddress, socket: UDPSocket)] = []
        do {
            for address in new.listen where !listeners.contains(where: { $0.address == address }) {
                opened.append((address, try UDPSocket(io, host: address.host, port: address.port)))
            }
        } catch {
            for o in opened { o.socket.close() }
            throw ConfigError(key: "PacketServer.listen", message: "cannot open UDP listener: \(error)")
        }
        // 2. Control socket: reconfigure opens the new one before closing the old one.
        do {
            if let control {
                try control.reconfigure(controlConfig)
            } else {
                control = try ControlSocketServer(
                    service: io, commandManager: commands, config: controlConfig, logger: logger)
            }
        } catch {
            for o in opened { o.socket.close() }
            throw ConfigError(key: "PacketServer.control-socket", message: "\(error)")
        }
        // Committed from here on.
        let kept = listeners.filter { l in new.listen.contains(l.address) }
        let closing = listeners.filter { l in !new.listen.contains(l.address) }
        if let pool, !closing.isEmpty {
            // Their replies could otherwise go out on whatever socket reuses the descriptor number next.
            let fds = closing.map { $0.socket.nativeHandle }
            let discarded = pool.discardQueued { fds.contains($0.fd) }
            if discarded > 0 {
                counters.dropped.increment(by: Int64(discarded))
                logger.info("dropped \(discarded) queued packets of the closed listeners")
            }
        }
        for l in closing {
            l.socket.close()
            logger.info("stopped listening on udp \(l.address)")
        }
        for o in opened { logger.info("listening on udp \(o.address) (port \(o.socket.port))") }
        listeners = kept + opened
        pollSetDirty = true

        if new.threads != (pool?.threadCount ?? 0) || new.packetQueueSize != (pool?.capacity ?? new.packetQueueSize) {
            let old = pool
            pool = nil
            old?.resume()
            old?.stop()
            if new.threads > 0 {
                let counters = self.counters
                pool = WorkerPool(threads: new.threads, capacity: new.packetQueueSize) { job, reply in
                    counters.handle(job, reply: reply)
                }
                pool?.pause()  // balanced by the deferred resume
            }
            logger.info("packet processing: \(new.threads == 0 ? "single-threaded" : "\(new.threads) worker threads")")
        }
        logger.logLevel = new.logLevel
        config = new
        reloadedAt = .now()
        if !initial { logger.info("configuration applied") }
    }

    /// Port actually bound by the first listener (useful with port 0).
    var firstPort: UInt16? { listeners.first?.socket.port }
    var boundPorts: [UInt16] { listeners.map { $0.socket.port } }

    // MARK: commands

    private func registerCommands() throws {
        try commands.registerCommand("version-get") { _, _, _ in
            .answer(.success, Self.version, arguments: ["extended": .string(Self.extendedVersion)])
        }
        try commands.registerCommand("build-report") { _, _, _ in
            .answer(.success, Self.buildReport)
        }
        try commands.registerCommand("status-get") { [unowned self] _, _, _ in
            var args: JSONValue = [
                "pid": .integer(Int64(getpid())),
                "uptime": .integer(Int64((SteadyInstant.now() - startedAt).components.seconds)),
                "reload": .integer(Int64((SteadyInstant.now() - reloadedAt).components.seconds)),
                "multi-threading-enabled": .bool(pool != nil),
                "sockets": ["status": "ready"],
                "control-socket": .string(control?.socketPath ?? ""),
                "listen": .array(listeners.map { .string("\($0.address.host):\($0.socket.port)") }),
            ]
            if let pool {
                args["thread-pool-size"] = .integer(Int64(pool.threadCount))
                args["packet-queue-size"] = .integer(Int64(pool.capacity))
                args["packet-queue-statistics"] = .array(pool.queueStatistics().map { .double($0) })
            }
            return .answer(.success, arguments: args)
        }
        try commands.registerAsyncCommand("shutdown") { [unowned self] _, arguments, _, responder in
            var value: Int64 = 0
            if let arguments, !arguments.isNull {
                guard case .object(let map) = arguments else {
                    responder.respond(.answer(.error, "Argument must be a map"))
                    return
                }
                if let v = map["exit-value"] {
                    guard let i = v.intValue else {
                        responder.respond(.answer(.error, "parameter 'exit-value' is not an integer"))
                        return
                    }
                    value = i
                }
            }
            exitValue = Int32(truncatingIfNeeded: value)
            responder.respond(.answer(.success, "Shutting down."))
            logger.info("shutdown requested (exit value \(exitValue))")
            // The answer must reach the client before the process exits (Kea gets this only by luck).
            control?.whenAnswersDelivered { [unowned self] in running = false }
        }
        try commands.registerCommand("config-get") { [unowned self] _, _, _ in
            .answer(.success, arguments: config.json)
        }
        try commands.registerCommand("config-test") { _, arguments, _ in
            guard let arguments else { return .answer(.error, "Missing mandatory 'arguments' parameter.") }
            do {
                let candidate = try ServerConfig.parse(arguments)
                _ = try ControlSocketConfig(parsing: candidate.controlSocket)
                return .answer(
                    .success, "Configuration seems sane. Control-socket was sanity checked, but not applied.")
            } catch {
                return .answer(.error, "Configuration check failed: \(error)")
            }
        }
        try commands.registerCommand("config-set") { [unowned self] _, arguments, _ in
            guard let arguments else { return .answer(.error, "Missing mandatory 'arguments' parameter.") }
            do {
                try apply(try ServerConfig.parse(arguments))
                return .answer(.success, "Configuration successful.")
            } catch {
                logger.warning("config-set rejected: \(error)")
                return .answer(.error, "Configuration failed: \(error)")
            }
        }
        try commands.registerCommand("config-reload") { [unowned self] _, _, _ in
            do {
                let fresh = try configPath.map { try ServerConfig.load(path: $0) } ?? ServerConfig.builtInDefault()
                try apply(fresh)
                return .answer(.success, "Configuration successful.")
            } catch {
                logger.warning("config-reload failed: \(error)")
                return .answer(.error, "Config reload failed: \(error)")
            }
        }
        try commands.registerCommand("config-write") { [unowned self] _, arguments, _ in
            var target = configPath
            if let arguments, !arguments.isNull {
                guard case .object(let map) = arguments else { return .answer(.error, "Argument must be a map") }
                if let f = map["filename"] {
                    guard let s = f.stringValue, !s.isEmpty else {
                        return .answer(.error, "'filename' parameter expected to be a string.")
                    }
                    target = s
                }
            }
            guard let target else {
                return .answer(
                    .error, "Unable to determine filename: no 'filename' given and no configuration file in use")
            }
            let bytes = Array((config.json.prettyPrinted() + "\n").utf8)
            guard FileManager.default.createFile(atPath: target, contents: Data(bytes)) else {
                return .answer(.error, "Unable to write configuration file '\(target)': \(IOError.lastErrno("write"))")
            }
            return .answer(
                .success, "Configuration written to \(target) successful",
                arguments: ["filename": .string(target), "size": .integer(Int64(bytes.count))])
        }
        try stats.registerCommands(on: commands)
        // One line per command, at debug only: Kea's per-command info line costs it ~10 % of its throughput.
        _ = commands.addObserver { [unowned self] name, _, response in
            logger.debug("command '\(name)' answered with result \(response["result"]?.intValue ?? -1)")
        }
    }

    static var extendedVersion: String {
        """
        \(version)
        IOLoop packet-server (Swift, libev \(IOService.libevVersion))
        linked with:
        libev \(IOService.libevVersion)
        swift-log, swift-argument-parser
        """
    }

    static var buildReport: String {
        #if DEBUG
        let mode = "debug"
        #else
        let mode = "release"
        #endif
        return """
            Package: IOLoop packet-server \(version)
            Build mode: \(mode)
            Platform: Linux \(ProcessInfo.processInfo.operatingSystemVersionString)
            Event loop: system libev \(IOService.libevVersion) (epoll backend)
            Control channel: Kea-compatible UNIX socket
            """
    }
}

/// The packet statistics, as handles so the hot path never looks a name up. Shared by the main thread and
/// the workers; `StatisticsManager` is internally synchronized.
final class PacketCounters: Sendable {
    let received: StatisticsManager.Counter
    let sent: StatisticsManager.Counter
    let parseFailed: StatisticsManager.Counter
    let unknown: StatisticsManager.Counter
    let dropped: StatisticsManager.Counter
    let sendFailed: StatisticsManager.Counter
    private let receivedByType: [StatisticsManager.Counter?]
    private let sentByType: [StatisticsManager.Counter?]

    init(_ stats: StatisticsManager) throws {
        received = try stats.counter(named: "pkt4-received")
        sent = try stats.counter(named: "pkt4-sent")
        parseFailed = try stats.counter(named: "pkt4-parse-failed")
        unknown = try stats.counter(named: "pkt4-unknown-received")
        dropped = try stats.counter(named: "pkt4-receive-drop")
        sendFailed = try stats.counter(named: "pkt4-send-fail")
        var r = [StatisticsManager.Counter?](repeating: nil, count: 256)
        var s = [StatisticsManager.Counter?](repeating: nil, count: 256)
        for t in [PacketType.discover, .request, .echo] {
            r[Int(t.rawValue)] = try stats.counter(named: "pkt4-\(t.statName)-received")
        }
        for t in [PacketType.offer, .ack, .nak, .echoReply] {
            s[Int(t.rawValue)] = try stats.counter(named: "pkt4-\(t.statName)-sent")
        }
        receivedByType = r
        sentByType = s
    }

    /// Handles one datagram and sends the reply; counts everything. Any thread.
    ///
    /// Replies go out with `sendto` on the listener's descriptor rather than `UDPSocket.sendTo`: workers answer
    /// off the loop thread, which is the socket object's thread contract. A descriptor stays valid for them: a
    /// listener closes only inside the workers' pause, after its queued datagrams are discarded.
    func handle(_ request: UnsafeRawBufferPointer, reply: UnsafeMutableRawBufferPointer, fd: Int32, peer: SocketAddress)
    {
        if request.count >= 4 { receivedByType[Int(request[3])]?.increment() }
        switch handlePacket(request, reply: reply) {
        case .malformed:
            parseFailed.increment()
        case .unknown:
            unknown.increment()
        case .reply(let type, let length):
            let rc = peer.withSockAddr {
                sendto(fd, reply.baseAddress, length, Int32(MSG_DONTWAIT | MSG_NOSIGNAL), $0, $1)
            }
            if rc == length {
                sent.increment()
                sentByType[Int(type.rawValue)]?.increment()
            } else {
                sendFailed.increment()
            }
        }
    }

    /// Worker-thread entry: the job's datagram, answered through the worker's reused reply buffer.
    func handle(_ job: PacketJob, reply: UnsafeMutableRawBufferPointer) {
        job.bytes.withUnsafeBytes { request in handle(request, reply: reply, fd: job.fd, peer: job.peer) }
    }
}
