// CommandManager: Kea's BaseCommandMgr/HookedCommandMgr — command table, validation, dispatch, observers.

import Logging
import Synchronization

/// Errors of command registration. `description` is the text to log.
///
/// Kea counterpart: `InvalidCommandName` ("Handler for command 'x' is already installed.") and
/// `InvalidCommandName` from `deregisterCommand` ("Handler for command 'x' not found.",
/// "Can't uninstall internal command 'list-commands'").
public enum CommandManagerError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A handler is already registered under this name (`list-commands` included).
    case alreadyRegistered(String)
    /// No handler is registered under this name.
    case notRegistered(String)
    /// `list-commands` is built in and cannot be removed.
    case cannotRemoveBuiltIn(String)

    public var description: String {
        switch self {
        case .alreadyRegistered(let name): return "Handler for command '\(name)' is already installed."
        case .notRegistered(let name): return "Handler for command '\(name)' not found."
        case .cannotRemoveBuiltIn(let name): return "Can't uninstall internal command '\(name)'"
        }
    }
}

/// A command that passed request validation (spec §5).
public struct ValidatedCommand: Sendable, Equatable {
    /// The `command` string (case-sensitive).
    public var name: String
    /// The `arguments` value if present (any JSON type).
    public var arguments: JSONValue?
    /// The whole command map (with `service`, `remote-address`... if present).
    public var command: JSONValue
}

/// The one-shot callback an asynchronous handler uses to deliver its answer.
///
/// Call ``respond(_:)-(JSONValue)`` (or ``respond(_:)-(ControlAnswer)``, ``fail(_:)``) exactly once, on the loop
/// thread, when the answer is ready — possibly long after the handler returned (after I/O or a timer). Rules:
/// - A second answer is ignored and logged at `warning` level as an assertion failure (`respond` called twice).
/// - If the last reference to the responder goes away without an answer (a handler that forgot to answer),
///   the command is answered with result 1, `internal error: the handler of 'NAME' finished without an answer`
///   and an error is logged: a command always gets an answer (spec §6), never a silent close.
/// - A handler that keeps the responder forever without answering keeps the command pending, and over the
///   socket its connection open, for good: nothing bounds it. The socket server suspends the inactivity timeout
///   while a command runs (spec §7) and does not notice a client that gives up meanwhile, and
///   ``ControlSocketServer/whenAnswersDelivered(_:)`` waits for the answer. A handler that may never finish must
///   bound itself, e.g. with a timer that answers result 1.
///
/// Thread contract: the once-flag is atomic, so a second call from any thread is safely ignored; the
/// completion runs on the thread that answers, which must be the loop thread (the manager is loop-confined).
/// `@unchecked Sendable` so that it can be captured by loop callbacks (`@Sendable` because they may be posted
/// from any thread); the stored completion is only invoked once, guarded by the atomic flag.
/// Kea counterpart: none (Kea handlers are synchronous); this is what lets a handler answer later without
/// blocking the loop.
public final class CommandResponder: @unchecked Sendable {
    /// The name of the command being answered.
    public let commandName: String
    private let answered = Atomic<Bool>(false)
    /// Released once the answer is delivered: it holds the manager and the caller's completion (for the
    /// socket server, the connection), which a responder kept after answering must not keep alive. Only the
    /// caller that wins `answered` (or deinit, when nobody did) touches it, so `answered` orders every access
    /// and the runtime's dynamic exclusivity check is left out.
    @exclusivity(unchecked) private var completion: ((JSONValue) -> Void)?
    private let logger: Logger

    init(commandName: String, logger: Logger, completion: @escaping (JSONValue) -> Void) {
        self.commandName = commandName
        self.logger = logger
        self.completion = completion
    }

    /// Whether an answer has been delivered.
    public var hasResponded: Bool { answered.load(ordering: .acquiring) }

    /// Delivers the answer map (normally built with ``ControlAnswer``). Only the first call counts.
    public func respond(_ response: JSONValue) {
        guard answered.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged
        else {
            logger.warning(
                "assertion failed: respond called twice for command '\(commandName)'; the second answer is ignored")
            return
        }
        completion.take()?(response)
    }

    /// Delivers an answer. Only the first call counts.
    public func respond(_ answer: ControlAnswer) { respond(answer.json) }

    /// Answers with result 1 `Error during command processing: <error>`, as if a synchronous handler had thrown.
    public func fail(_ error: any Error) {
        respond(ControlAnswer.error(CommandManager.errorText(error)))
    }

    deinit {
        if !answered.load(ordering: .acquiring) {
            logger.error("the handler of command '\(commandName)' released its responder without answering")
            completion?(
                ControlAnswer.error("internal error: the handler of '\(commandName)' finished without an answer").json)
        }
    }
}

/// Registers command handlers, validates requests and dispatches them: the command core of the control channel.
///
/// - Handlers are keyed by name (case-sensitive). A synchronous ``Handler`` returns the answer map or throws;
///   an ``AsyncHandler`` receives a ``CommandResponder`` and answers later. A thrown error becomes result 1,
///   `Error during command processing: <description>`.
/// - `list-commands` is built in: always registered, cannot be removed, ignores its arguments, and answers
///   result 0 with the sorted list of names as `arguments`.
/// - Requests are validated with Kea 2.4+'s exact texts (spec §5), answered with result 1 and the prefix
///   `Error during command processing: `; an unknown name gets result 2 `'NAME' command not supported.`.
/// - Every answer is a map with an integer `result` and a map `arguments` (`{}` added if the handler left it
///   out; spec §6); only `list-commands` answers with a list. A handler answer that is not a map with an integer
///   `result`, or whose `arguments` is not a map, is a programming error: it is logged and replaced by a
///   result-1 internal error (`internal error: the answer to 'NAME' has 'arguments' of type list, expected a map`).
/// - Observers (Kea's `command_processed` hook) see every command that passed validation, unsupported ones
///   included, after the handler, and may amend the answer.
///
/// Thread contract: not internally locked. Register, deregister and process on one thread — the thread that runs
/// the IOService (handlers run there too, as in Kea where "control channel utilities are not thread safe").
/// It is `@unchecked Sendable` only so that the socket server's loop callbacks, which are `@Sendable`, can hold
/// it; the confinement to the loop thread is the caller's duty.
///
/// Kea counterpart: `isc::config::BaseCommandMgr` / `HookedCommandMgr` / `CommandMgr::processCommand`.
public final class CommandManager: @unchecked Sendable {
    /// A synchronous handler: `(name, arguments, whole command) -> answer`; throw to answer with result 1.
    /// The answer's `arguments`, when present, must be a map (spec §6).
    /// Kea counterpart: `ExtendedCommandHandler` (the plain form is the same without the last parameter).
    public typealias Handler = (_ name: String, _ arguments: JSONValue?, _ command: JSONValue) throws -> JSONValue

    /// An asynchronous handler: answers through `responder`, now or later (`arguments` a map, as for ``Handler``).
    /// Throwing before answering answers result 1 (as a synchronous handler); throwing after answering is logged
    /// and otherwise ignored.
    public typealias AsyncHandler =
        (_ name: String, _ arguments: JSONValue?, _ command: JSONValue, _ responder: CommandResponder) throws -> Void

    /// An observer: sees the command name, its arguments and the answer, and may change the answer.
    /// Kea counterpart: a `command_processed` hook callout.
    public typealias Observer = (_ name: String, _ arguments: JSONValue?, _ response: inout JSONValue) -> Void

    /// Identifies a registered observer, for ``removeObserver(_:)``.
    public struct ObserverID: Sendable, Hashable {
        fileprivate let raw: Int
    }

    /// The name of the built-in command.
    public static let listCommandsName = "list-commands"
    /// The top-level keys a request may contain (spec §5).
    public static let allowedTopLevelKeys: Set<String> = ["command", "arguments", "service", "remote-address"]
    /// The prefix of validation and handler-error texts.
    public static let errorPrefix = "Error during command processing: "

    private enum Entry {
        case sync(Handler)
        case async(AsyncHandler)
        case listCommands
    }

    // Loop-thread state (see the thread contract): no dynamic exclusivity checks, a runtime call per access.
    @exclusivity(unchecked) private var handlers: [String: Entry] = [:] {
        didSet { namesCache = nil }
    }

    /// Sorted names and their `list-commands` array, rebuilt only after a registration change.
    @exclusivity(unchecked) private var namesCache: (names: [String], json: JSONValue)?
    @exclusivity(unchecked) private var observers: [(id: Int, observer: Observer)] = []
    @exclusivity(unchecked) private var nextObserverID = 0
    /// The logger used for command logs (received commands at `debug`, handler errors at `warning`).
    public let logger: Logger
    /// The nesting limit used when parsing raw commands in ``processCommandBytes(_:completion:)``.
    public var maxDepth: Int

    /// Creates a manager with only `list-commands` registered.
    /// - Parameters:
    ///   - maxDepth: the nesting limit for ``processCommandBytes(_:completion:)`` (default 100).
    ///   - logger: where to log; label `ioloop.control-channel` by default.
    public init(maxDepth: Int = JSONParser.defaultMaxDepth, logger: Logger = Logger(label: "ioloop.control-channel")) {
        self.maxDepth = maxDepth
        self.logger = logger
        handlers[Self.listCommandsName] = .listCommands
    }

    // MARK: Registration

    /// Registers a synchronous handler for `name`.
    /// - Throws: ``CommandManagerError/alreadyRegistered(_:)`` if the name is taken (`list-commands` included).
    /// Kea counterpart: `registerCommand` / `registerExtendedCommand`.
    public func registerCommand(_ name: String, handler: @escaping Handler) throws(CommandManagerError) {
        try add(name, .sync(handler))
    }

    /// Registers an asynchronous handler for `name`: it gets a ``CommandResponder`` to answer now or later.
    /// - Throws: ``CommandManagerError/alreadyRegistered(_:)`` if the name is taken.
    public func registerAsyncCommand(_ name: String, handler: @escaping AsyncHandler) throws(CommandManagerError) {
        try add(name, .async(handler))
    }

    /// Registers a handler whose arguments are decoded into `Arguments`.
    ///
    /// Absent arguments decode from `{}` (so a type whose members are all optional accepts no arguments). If
    /// decoding fails, the command is answered with result 1 and
    /// `invalid arguments for command 'NAME': <problem>`, where the problem names the parameter, e.g.
    /// `missing mandatory parameter 'name'` or `parameter 'count' expected to be an integer, got string`.
    /// The handler returns an answer map or throws (result 1, `Error during command processing: ...`).
    /// - Throws: ``CommandManagerError/alreadyRegistered(_:)`` if the name is taken.
    public func registerTyped<Arguments: Decodable>(
        _ name: String, arguments: Arguments.Type = Arguments.self,
        handler: @escaping (_ arguments: Arguments) throws -> JSONValue
    ) throws(CommandManagerError) {
        try registerCommand(name) { name, arguments, _ in
            let value = arguments ?? .object(JSONObject())
            let decoded: Arguments
            do {
                decoded = try value.decode(Arguments.self)
            } catch {
                return ControlAnswer.error(
                    "invalid arguments for command '\(name)': \(value.describeDecodingError(error))"
                ).json
            }
            return try handler(decoded)
        }
    }

    /// Removes the handler of `name`.
    /// - Throws: ``CommandManagerError/cannotRemoveBuiltIn(_:)`` for `list-commands`,
    ///   ``CommandManagerError/notRegistered(_:)`` for an unknown name.
    /// Kea counterpart: `deregisterCommand`.
    public func deregisterCommand(_ name: String) throws(CommandManagerError) {
        if name == Self.listCommandsName { throw .cannotRemoveBuiltIn(name) }
        guard handlers.removeValue(forKey: name) != nil else { throw .notRegistered(name) }
        logger.debug("Command \(name) deregistered")
    }

    /// Removes every handler except `list-commands`. Kea counterpart: `deregisterAll`.
    public func deregisterAll() {
        handlers = [Self.listCommandsName: .listCommands]
    }

    /// Whether a handler is registered for `name` (`list-commands` always is).
    public func hasCommand(_ name: String) -> Bool { handlers[name] != nil }

    /// The registered command names, sorted (byte order), `list-commands` included.
    public var commandNames: [String] { sortedNames().names }

    private func sortedNames() -> (names: [String], json: JSONValue) {
        if let namesCache { return namesCache }
        let names = handlers.keys.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
        let built = (names, JSONValue.array(names.map { .string($0) }))
        namesCache = built
        return built
    }

    /// Adds an observer of every processed command (after validation); returns its id.
    /// Observers run in the order they were added. Kea counterpart: a `command_processed` callout.
    @discardableResult
    public func addObserver(_ observer: @escaping Observer) -> ObserverID {
        nextObserverID += 1
        observers.append((nextObserverID, observer))
        return ObserverID(raw: nextObserverID)
    }

    /// Removes an observer; unknown ids are ignored.
    public func removeObserver(_ id: ObserverID) {
        observers.removeAll { $0.id == id.raw }
    }

    private func add(_ name: String, _ entry: Entry) throws(CommandManagerError) {
        guard handlers[name] == nil else { throw .alreadyRegistered(name) }
        handlers[name] = entry
        logger.debug("Command \(name) registered")
    }

    // MARK: Validation

    /// Validates a request (spec §5) and extracts its name and arguments.
    ///
    /// Checks, in Kea's order: top level is a map; it has `command`; every key is one of `command`,
    /// `arguments`, `service`, `remote-address` (the first unsupported key in byte order is named); `command`
    /// is a string. The error text excludes the `Error during command processing: ` prefix.
    /// Kea counterpart: `isc::config::parseCommand` (2.4+ texts; our "not a string" text names the type of
    /// the `command` value, where Kea names the outer map's).
    public static func validate(_ command: JSONValue) -> Result<ValidatedCommand, CommandValidationError> {
        guard case .object(let map) = command else {
            return .failure(
                CommandValidationError(
                    "invalid command: expected toplevel entry to be a map, got \(command.typeName) instead"))
        }
        guard let nameValue = map["command"] else {
            return .failure(CommandValidationError("invalid command: does not contain mandatory 'command'"))
        }
        var unsupported: String?
        for (key, _) in map where !isAllowedTopLevelKey(key) {
            if let u = unsupported, !key.utf8.lexicographicallyPrecedes(u.utf8) { continue }
            unsupported = key
        }
        if let unsupported {
            return .failure(CommandValidationError("invalid command: unsupported parameter '\(unsupported)'"))
        }
        guard case .string(let name) = nameValue else {
            return .failure(
                CommandValidationError(
                    "invalid command: expected 'command' to be a string, got \(nameValue.typeName) instead"))
        }
        return .success(ValidatedCommand(name: name, arguments: map["arguments"], command: command))
    }

    /// Whether `key` is one of ``allowedTopLevelKeys`` (compared, not hashed: this runs for every request).
    static func isAllowedTopLevelKey(_ key: String) -> Bool {
        switch key {
        case "command", "arguments", "service", "remote-address": return true
        default: return false
        }
    }

    // MARK: Processing

    /// Processes one command and delivers its answer map to `completion`, exactly once.
    ///
    /// Flow: validate (failure → result 1 with the prefixed text, no observers) → find the handler (none →
    /// result 2) → run it (a throw → result 1 `Error during command processing: <error>`) → check the answer
    /// shape → run observers → add `arguments: {}` if missing → `completion`. For a synchronous handler
    /// `completion` runs before this method returns; for an asynchronous one, when it answers.
    ///
    /// Thread contract: call on the loop thread; `completion` runs on the thread that produced the answer.
    /// Kea counterpart: `BaseCommandMgr::processCommand`.
    public func processCommand(_ command: JSONValue, completion: @escaping (JSONValue) -> Void) {
        let validated: ValidatedCommand
        switch Self.validate(command) {
        case .failure(let error):
            logger.warning("Error during command processing: \(error.message)")
            completion(ControlAnswer.error(Self.errorPrefix + error.message).json)
            return
        case .success(let v):
            validated = v
        }
        let name = validated.name
        logger.debug("Received command '\(name)'")
        guard let entry = handlers[name] else {
            finish(validated, ControlAnswer.unsupported(command: name).json, completion)
            return
        }
        switch entry {
        case .listCommands:
            finish(validated, ControlAnswer.success(arguments: sortedNames().json).json, completion)
        case .sync(let handler):
            let response: JSONValue
            do {
                response = try handler(name, validated.arguments, command)
            } catch {
                response = handlerFailed(name, error)
            }
            finish(validated, response, completion)
        case .async(let handler):
            let responder = CommandResponder(commandName: name, logger: logger) { [self] response in
                finish(validated, response, completion)
            }
            do {
                try handler(name, validated.arguments, command, responder)
            } catch {
                if responder.hasResponded {
                    logger.warning("handler of '\(name)' threw after answering: \(error)")
                } else {
                    responder.respond(handlerFailed(name, error))
                }
            }
        }
    }

    /// Processes one command and returns its answer, waiting for an asynchronous handler.
    ///
    /// For tests and in-process use without a socket. The handler runs on the calling task's executor, so use
    /// this only when no loop thread uses the manager at the same time.
    public func processCommand(_ command: JSONValue) async -> JSONValue {
        await withCheckedContinuation { (continuation: CheckedContinuation<JSONValue, Never>) in
            processCommand(command) { continuation.resume(returning: $0) }
        }
    }

    /// Processes one command synchronously and returns its answer, or nil if an asynchronous handler has not
    /// answered by the time it returns (its later answer is then dropped). Thread contract: loop thread.
    public func processCommandImmediately(_ command: JSONValue) -> JSONValue? {
        var answer: JSONValue?
        processCommand(command) { answer = $0 }
        return answer
    }

    /// Turns the bytes of one framed command into the bytes of its answer: parse → validate → process →
    /// serialize (compact). What the socket server calls once ``JSONFramer`` reports a complete value.
    ///
    /// A parse error is answered with result 1 and the error with its position, without the
    /// `Error during command processing: ` prefix (as Kea), e.g.
    /// `{"arguments":{},"result":1,"text":"invalid UTF-8 byte 0xff in string at line 1, column 14 (byte offset 13)"}`.
    /// Thread contract: loop thread; `completion` runs on the thread that produced the answer.
    public func processCommandBytes(_ bytes: [UInt8], completion: @escaping ([UInt8]) -> Void) {
        let command: JSONValue
        do {
            command = try JSONParser.parse(bytes, maxDepth: maxDepth)
        } catch {
            logger.warning("invalid command: \(error)")
            completion(ControlAnswer.error(error.description).serialized())
            return
        }
        processCommand(command) { completion($0.serialized()) }
    }

    /// The serialized answer for a framer failure: result 1 with `error.text` (e.g. `invalid first character u`).
    public static func answerBytes(for error: JSONFramerError) -> [UInt8] {
        ControlAnswer.error(error.text).serialized()
    }

    // MARK: Internals

    static func errorText(_ error: any Error) -> String {
        errorPrefix + String(describing: error)
    }

    private func handlerFailed(_ name: String, _ error: any Error) -> JSONValue {
        let text = Self.errorText(error)
        logger.warning("command '\(name)' failed: \(text)")
        return ControlAnswer.error(text).json
    }

    /// Checks the answer shape, runs observers, guarantees `arguments`, and delivers.
    private func finish(_ command: ValidatedCommand, _ response: JSONValue, _ completion: (JSONValue) -> Void) {
        var response = checked(command.name, response)
        if observers.isEmpty {
            completion(response)
            return
        }
        for (_, observer) in observers {
            observer(command.name, command.arguments, &response)
        }
        // Again: an observer may have broken what the handler got right.
        completion(checked(command.name, response))
    }

    /// The answer as sent, or the result-1 internal error that replaces a malformed one (logged).
    private func checked(_ name: String, _ response: JSONValue) -> JSONValue {
        switch Self.normalized(response, command: name) {
        case .valid(let answer):
            return answer
        case .invalid(let problem):
            logger.error("the answer to '\(name)' \(problem): \(response)")
            return ControlAnswer.error("internal error: the answer to '\(name)' \(problem)").json
        }
    }

    /// What ``normalized(_:command:)`` made of an answer.
    enum Normalized: Equatable {
        /// The answer, `arguments` guaranteed.
        case valid(JSONValue)
        /// What breaks spec §6, as it reads after "the answer to 'NAME' ".
        case invalid(String)
    }

    /// The answer to `command` with `arguments` guaranteed (`{}` inserted first, Kea's key order), or what breaks
    /// spec §6: not a map with an integer `result`, or an `arguments` that is not a map — only the built-in
    /// `list-commands` answers with a list (it cannot be replaced, so its name identifies it).
    static func normalized(_ response: JSONValue, command: String) -> Normalized {
        guard case .object(let map) = response, case .integer? = map["result"] else {
            return .invalid("is not a map with an integer 'result'")
        }
        switch map["arguments"] {
        case .object?:
            return .valid(response)
        case let other?:
            if command == listCommandsName { return .valid(response) }
            return .invalid("has 'arguments' of type \(other.typeName), expected a map")
        case nil:
            var fixed = JSONObject(minimumCapacity: map.count + 1)
            fixed["arguments"] = .object(JSONObject())
            for (k, v) in map { fixed[k] = v }
            return .valid(.object(fixed))
        }
    }
}

/// A request that failed validation; `message` excludes the `Error during command processing: ` prefix.
public struct CommandValidationError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The Kea-compatible message, e.g. `invalid command: does not contain mandatory 'command'`.
    public var message: String
    /// Creates an error with a message.
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
