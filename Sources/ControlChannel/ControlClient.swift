// ControlClient: sends one command to a Kea-style UNIX control socket and reads the answer to EOF.

import Foundation
import Glibc
import IOLoop
import Synchronization

/// Why a command could not be exchanged with the control socket. Every case names the socket path;
/// `description` is one line a CLI can print as it is.
///
/// A server that answered — whatever its `result` — is not an error: that is a ``ControlClientResponse``.
/// Thread contract: a plain value, `Sendable`.
public enum ControlClientError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Where the exchange was when it timed out.
    public enum Stage: String, Sendable, Equatable {
        case connecting = "connecting"
        case sending = "sending the command"
        case waitingForAnswer = "waiting for the answer"
    }

    /// Nothing exists at the path (`ENOENT`): the server is not running, or the path is wrong.
    case noSocket(path: String)
    /// Connecting was refused (`ECONNREFUSED`): a stale socket file without a server, or not a socket at
    /// all; `detail` says which.
    case connectionRefused(path: String, detail: String)
    /// Connecting was not permitted (`EACCES`/`EPERM`): connecting needs write permission on the socket
    /// file and search permission on its directories.
    case permissionDenied(path: String)
    /// The whole exchange took longer than `timeout`.
    case timedOut(path: String, timeout: Duration, stage: Stage, bytesReceived: Int)
    /// The server closed the connection before a complete answer arrived (`bytesReceived` bytes came).
    case closedWithoutAnswer(path: String, bytesReceived: Int, detail: String)
    /// The bytes received are not a control-channel answer (not JSON, or not a map with an integer
    /// `result`, nor a list of such maps).
    case invalidAnswer(path: String, reason: String, bytes: [UInt8])
    /// The answer grew past the client's limit.
    case answerTooLarge(path: String, limit: Int)
    /// Any other transport failure (e.g. a path longer than 107 bytes, `ENOTDIR`, a read error).
    case transport(path: String, error: IOError)
    /// The calling Task was cancelled; the connection was closed.
    case cancelled(path: String)

    public var description: String {
        switch self {
        case .noSocket(let path):
            return "no control socket at \(path): nothing exists there (is the server running? is the path right?)"
        case .connectionRefused(let path, let detail):
            return "connection refused by \(path): \(detail)"
        case .permissionDenied(let path):
            return "permission denied connecting to \(path): connecting needs write permission on the socket "
                + "file (and search permission on its directories)"
        case .timedOut(let path, let timeout, let stage, let received):
            let got = stage == .waitingForAnswer ? " (\(received) bytes of answer received)" : ""
            return "timed out after \(Self.seconds(timeout)) \(stage.rawValue) on \(path)\(got)"
        case .closedWithoutAnswer(let path, let received, let detail):
            return received == 0
                ? "\(path) closed the connection without answering (\(detail))"
                : "\(path) closed the connection after \(received) bytes of an incomplete answer (\(detail))"
        case .invalidAnswer(let path, let reason, let bytes):
            return "invalid answer from \(path): \(reason) (\(bytes.count) bytes received)"
        case .answerTooLarge(let path, let limit):
            return "answer from \(path) is larger than the client's limit of \(limit) bytes"
        case .transport(let path, let error):
            return "cannot exchange a command with \(path): \(error)"
        case .cancelled(let path):
            return "command to \(path) cancelled"
        }
    }

    static func seconds(_ d: Duration) -> String {
        let (s, atto) = d.components
        let ms = s * 1000 + atto / 1_000_000_000_000_000
        return ms % 1000 == 0 ? "\(ms / 1000) s" : "\(ms) ms"
    }
}

/// One answer received from a control socket.
///
/// Thread contract: a plain value, `Sendable`.
public struct ControlClientResponse: Sendable, Equatable {
    /// The exact bytes the server sent, up to EOF.
    public var bytes: [UInt8]
    /// The parsed answer.
    public var json: JSONValue
    /// The answer maps: one from a server; one per service when `json` is a list (the Kea control agent's
    /// form). Never empty.
    public var answers: [ControlAnswer]

    /// The (first) answer.
    public var answer: ControlAnswer { answers[0] }

    /// Parses `bytes` as a control-channel answer.
    /// - Throws: ``ControlClientError/invalidAnswer(path:reason:bytes:)`` (with `path`) when they are not one.
    public init(bytes: [UInt8], path: String) throws(ControlClientError) {
        let json: JSONValue
        do {
            json = try JSONParser.parse(bytes, maxDepth: ControlClient.answerMaxDepth)
        } catch {
            throw .invalidAnswer(path: path, reason: "not JSON: \(error)", bytes: bytes)
        }
        var answers: [ControlAnswer] = []
        switch json {
        case .object:
            if let a = ControlAnswer(json: json) { answers = [a] }
        case .array(let list):
            answers = list.compactMap { ControlAnswer(json: $0) }
            if answers.count != list.count { answers = [] }
        default: break
        }
        guard !answers.isEmpty else {
            throw .invalidAnswer(
                path: path,
                reason: "expected a map with an integer 'result' (or a list of such maps), got \(json.typeName)",
                bytes: bytes)
        }
        self.bytes = bytes
        self.json = json
        self.answers = answers
    }
}

/// A client of a Kea-style UNIX control socket: connects, sends one command, reads the answer to EOF and
/// parses it.
///
/// Works against ``ControlSocketServer`` and against a real Kea server (`kea-dhcp4`, `kea-dhcp6`,
/// `kea-dhcp-ddns`, `kea-ctrl-agent`'s UNIX sockets).
///
/// The exchange: connect; write the command and half-close (`SHUT_WR`) while already reading, so a server
/// that answers early (an invalid or too large command) is heard; read until EOF. An answer followed by
/// `ECONNRESET` instead of EOF (a server that closed with unread bytes, as Kea does when a client sends
/// more than one value) is accepted if the bytes received form a complete answer. One `timeout` bounds the
/// whole exchange.
///
/// Thread contract: the type is `Sendable`; ``send(_:arguments:service:timeout:)`` may be called from any
/// task, concurrently — the exchanges run on one process-wide IOService on a private thread
/// (`ioloop.control-client`, started on first use, alive for the life of the process), never on the
/// caller's executor. ``sendBlocking(_:arguments:service:timeout:)`` runs a private IOService on the
/// calling thread until the answer is in (for synchronous code: CLIs, scripts); don't call it from async
/// code, where it would block a shared thread.
///
/// Kea counterpart: `kea-shell`'s and `socat`'s role; Kea ships no UNIX-socket client library.
public final class ControlClient: Sendable {
    /// The socket path.
    public let socketPath: String
    /// The timeout used when a call passes none: 10 s.
    public let defaultTimeout: Duration
    /// The largest answer accepted (default 256 MiB).
    public let maxAnswerSize: Int

    /// Nesting accepted in answers (Kea's config-get answers stay far below).
    static let answerMaxDepth = 10_000

    /// A client of the socket at `socketPath` (nothing is opened until a command is sent).
    public init(socketPath: String, timeout: Duration = .seconds(10), maxAnswerSize: Int = 256 << 20) {
        self.socketPath = socketPath
        self.defaultTimeout = timeout
        self.maxAnswerSize = maxAnswerSize
    }

    /// The request map: `{"command": name, "arguments": ..., "service": [...]}` (absent members left out).
    public static func command(_ name: String, arguments: JSONValue? = nil, service: [String]? = nil) -> JSONValue {
        var map: JSONObject = ["command": .string(name)]
        if let arguments { map["arguments"] = arguments }
        if let service { map["service"] = .array(service.map { .string($0) }) }
        return .object(map)
    }

    /// Sends a command and returns the answer.
    ///
    /// - Parameters:
    ///   - name: the command name (e.g. `list-commands`).
    ///   - arguments: its `arguments`, or nil to send none.
    ///   - service: Kea's `service` list (for the control agent), or nil.
    ///   - timeout: bound of the whole exchange; nil for ``defaultTimeout``.
    /// - Throws: ``ControlClientError`` for transport failures; an answer with a non-zero `result` is
    ///   returned, not thrown. Task cancellation closes the connection and throws `cancelled`.
    public func send(
        _ name: String, arguments: JSONValue? = nil, service: [String]? = nil, timeout: Duration? = nil
    ) async throws(ControlClientError) -> ControlClientResponse {
        try await send(
            raw: Self.command(name, arguments: arguments, service: service).serialized(), timeout: timeout)
    }

    /// Sends `bytes` as they are (normally one JSON map) and returns the answer. See ``send(_:arguments:service:timeout:)``.
    public func send(
        raw bytes: [UInt8], timeout: Duration? = nil
    ) async throws(ControlClientError)
        -> ControlClientResponse
    {
        let service = ControlClientLoop.shared.service
        let token = CancelToken()
        let path = socketPath
        let parameters = ExchangeParameters(
            path: path, request: bytes, timeout: timeout ?? defaultTimeout, maxAnswerSize: maxAnswerSize)
        let result = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<ExchangeResult, Never>) in
                service.post {
                    if token.cancelled.load(ordering: .acquiring) {
                        continuation.resume(returning: .failure(.cancelled(path: path)))
                        return
                    }
                    let exchange = ControlExchange(service: service, parameters) { result in
                        // Drop the exchange here, on the loop thread: if the awaiting task released it with the
                        // token, its socket's deinit would touch this IOService from a foreign thread.
                        token.exchange = nil
                        continuation.resume(returning: result)
                    }
                    exchange.mustDieOnTheLoopThread = true
                    token.exchange = UncheckedBox(exchange)
                    exchange.start()
                }
            }
        } onCancel: {
            token.cancelled.store(true, ordering: .releasing)
            service.post { token.exchange?.value.cancel() }
        }
        return try result.get().response(path: path)
    }

    /// Sends a command and waits for the answer, blocking the calling thread (for synchronous code).
    ///
    /// Runs a private IOService on the calling thread for the duration of the call. Same parameters and
    /// errors as ``send(_:arguments:service:timeout:)``.
    public func sendBlocking(
        _ name: String, arguments: JSONValue? = nil, service: [String]? = nil, timeout: Duration? = nil
    ) throws(ControlClientError) -> ControlClientResponse {
        try sendBlocking(raw: Self.command(name, arguments: arguments, service: service).serialized(), timeout: timeout)
    }

    /// Sends `bytes` as they are and waits for the answer, blocking the calling thread.
    public func sendBlocking(
        raw bytes: [UInt8], timeout: Duration? = nil
    ) throws(ControlClientError)
        -> ControlClientResponse
    {
        let service: IOService
        do {
            service = try IOService()
        } catch {
            throw .transport(path: socketPath, error: error as? IOError ?? IOError(.invalidArgument, "\(error)"))
        }
        var outcome: ExchangeResult?
        let exchange = ControlExchange(
            service: service,
            ExchangeParameters(
                path: socketPath, request: bytes, timeout: timeout ?? defaultTimeout, maxAnswerSize: maxAnswerSize)
        ) { outcome = $0 }
        exchange.start()
        while outcome == nil {
            do {
                _ = try service.runOne()
            } catch {
                exchange.cancel()
            }
            if outcome == nil && service.stopped { break }
        }
        service.shutdown()
        guard let outcome else {
            throw .transport(path: socketPath, error: IOError(.invalidArgument, "the client's loop stopped early"))
        }
        return try outcome.get().response(path: socketPath)
    }
}

typealias ExchangeResult = Result<RawAnswer, ControlClientError>

/// The bytes a server sent up to EOF (or a reset), not yet parsed.
struct RawAnswer: Sendable {
    var bytes: [UInt8]
    /// How the stream ended: "end of stream" or "connection reset by peer".
    var endDetail: String

    /// The parsed response, or why there is none.
    func response(path: String) throws(ControlClientError) -> ControlClientResponse {
        if bytes.isEmpty {
            throw .closedWithoutAnswer(path: path, bytesReceived: 0, detail: endDetail)
        }
        // Incomplete JSON at the end means the server closed mid-answer, not that it sent garbage.
        var framer = JSONFramer(maxSize: Int.max, maxDepth: Int.max)
        if case .needMoreData = framer.feed(bytes) {
            throw .closedWithoutAnswer(path: path, bytesReceived: bytes.count, detail: endDetail)
        }
        return try ControlClientResponse(bytes: bytes, path: path)
    }
}

/// Shared between a `send` call, its cancellation handler and the loop thread.
private final class CancelToken: @unchecked Sendable {
    let cancelled = Atomic<Bool>(false)
    /// Loop-thread only.
    var exchange: UncheckedBox<ControlExchange>?
}

/// The process-wide loop of ``ControlClient``'s async API: one IOService run by a private thread.
final class ControlClientLoop: Sendable {
    static let shared = ControlClientLoop()

    let service: IOService
    private let guardian: WorkGuard

    private init() {
        do {
            service = try IOService()
        } catch {
            fatalError("ControlClient: cannot create the client's IOService: \(error)")
        }
        guardian = service.makeWorkGuard()
        let service = self.service
        let thread = Thread {
            while true {
                do {
                    _ = try service.run()
                    if service.stopped { service.restart() }
                } catch {
                    // A handler threw (none of ours do): keep serving the other exchanges.
                }
            }
        }
        thread.name = "ioloop.control-client"
        thread.start()
    }
}

struct ExchangeParameters: Sendable {
    var path: String
    var request: [UInt8]
    var timeout: Duration
    var maxAnswerSize: Int
}

/// One command exchange on an IOService: connect, write and half-close, read to EOF, parse.
///
/// Thread contract: the thread running `service`; `completion` runs there exactly once.
final class ControlExchange {
    private let service: IOService
    private let parameters: ExchangeParameters
    private var completion: ((ExchangeResult) -> Void)?
    private let socket: UnixStreamSocket
    private let timer: SteadyTimer
    private var stage = ControlClientError.Stage.connecting
    private var received: [UInt8] = []
    private var buffer: UnsafeMutableRawBufferPointer?

    private static let readSize = 65536

    /// Exchanges that had to die on their loop's thread (those of the async API) but were released on
    /// another thread. Must stay 0: a socket's deinit touches its IOService. For tests.
    static let releasedOffTheLoopThread = Atomic<Int>(0)
    /// Set by the async API: count a release off the loop thread in ``releasedOffTheLoopThread``.
    var mustDieOnTheLoopThread = false

    init(service: IOService, _ parameters: ExchangeParameters, completion: @escaping (ExchangeResult) -> Void) {
        self.service = service
        self.parameters = parameters
        self.completion = completion
        self.socket = UnixStreamSocket(service)
        self.timer = SteadyTimer(service)
    }

    deinit {
        if mustDieOnTheLoopThread && !service.runningInThisThread {
            Self.releasedOffTheLoopThread.add(1, ordering: .relaxed)
        }
        buffer?.deallocate()
    }

    private var path: String { parameters.path }

    func start() {
        timer.expires(after: parameters.timeout)
        timer.asyncWait { [self] error in
            guard error == nil, completion != nil else { return }
            complete(
                .failure(
                    .timedOut(path: path, timeout: parameters.timeout, stage: stage, bytesReceived: received.count)))
        }
        socket.asyncConnect(to: path) { [self] error in
            guard completion != nil else { return }
            if let error {
                complete(.failure(connectError(error)))
                return
            }
            stage = .sending
            buffer = .allocate(byteCount: Self.readSize, alignment: 16)
            read()
            socket.asyncWrite(parameters.request) { [self] error, _ in
                guard completion != nil else { return }
                if stage == .sending { stage = .waitingForAnswer }
                // EPIPE/ECONNRESET: the server answered early and closed; the read side tells the outcome.
                if error == nil { try? socket.shutdown(.write) }
            }
        }
    }

    func cancel() {
        complete(.failure(.cancelled(path: path)))
    }

    private func read() {
        socket.asyncReadSome(into: buffer!) { [self] error, n in
            guard completion != nil else { return }
            if n > 0 {
                received.append(contentsOf: UnsafeRawBufferPointer(rebasing: buffer![0..<n]))
                if received.count > parameters.maxAnswerSize {
                    complete(.failure(.answerTooLarge(path: path, limit: parameters.maxAnswerSize)))
                    return
                }
            }
            guard let error else {
                read()
                return
            }
            switch error.code {
            case .eof:
                finishAnswer(detail: "end of stream")
            case .system(let e) where e.rawValue == ECONNRESET:
                finishAnswer(detail: "connection reset by peer")
            default:
                complete(.failure(.transport(path: path, error: error)))
            }
        }
    }

    private func finishAnswer(detail: String) {
        // Parsing is left to the caller (`RawAnswer.response`), off the loop thread: a large answer must not
        // delay the other exchanges sharing the loop.
        complete(.success(RawAnswer(bytes: received, endDetail: detail)))
    }

    private func connectError(_ error: IOError) -> ControlClientError {
        switch error.errnoValue {
        case ENOENT?:
            return .noSocket(path: path)
        case ECONNREFUSED?:
            var st = stat()
            let detail: String
            if lstat(path, &st) == 0 && (st.st_mode & S_IFMT) != S_IFSOCK {
                detail = "\(path) is \(Self.kind(st.st_mode & S_IFMT)), not a socket"
            } else {
                detail =
                    "a socket file exists but no server accepts connections on it (a stale socket "
                    + "left by a server that exited?)"
            }
            return .connectionRefused(path: path, detail: detail)
        case EACCES?, EPERM?:
            return .permissionDenied(path: path)
        default:
            return .transport(path: path, error: error)
        }
    }

    private static func kind(_ mode: mode_t) -> String {
        switch mode {
        case S_IFREG: return "a regular file"
        case S_IFDIR: return "a directory"
        case S_IFLNK: return "a symbolic link"
        case S_IFIFO: return "a FIFO"
        default: return "a special file"
        }
    }

    private func complete(_ result: ExchangeResult) {
        guard let completion else { return }
        self.completion = nil
        timer.cancel()
        socket.close()
        completion(result)
    }
}
