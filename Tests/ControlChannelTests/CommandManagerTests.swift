import Logging
import Synchronization
import Testing

@testable import ControlChannel

/// Holds a value set from a callback (tests run the manager on one thread).
final class Box<T>: @unchecked Sendable {
    var value: T
    init(_ value: T) { self.value = value }
}

struct TestError: Error, CustomStringConvertible {
    var description: String
}

@Suite("CommandManager")
struct CommandManagerTests {
    func process(_ manager: CommandManager, _ command: JSONValue) -> JSONValue {
        guard let answer = manager.processCommandImmediately(command) else {
            Issue.record("no immediate answer")
            return .null
        }
        return answer
    }

    func process(_ manager: CommandManager, _ text: String) throws -> JSONValue {
        process(manager, try JSONParser.parse(text))
    }

    func processBytes(_ manager: CommandManager, _ text: String) -> String {
        let box = Box<[UInt8]?>(nil)
        manager.processCommandBytes(Array(text.utf8)) { box.value = $0 }
        return String(decoding: box.value ?? [], as: UTF8.self)
    }

    func errorAnswer(_ text: String) -> JSONValue {
        ["arguments": [:], "result": 1, "text": .string(text)]
    }

    // MARK: Validation (spec §5)

    @Test func validationTexts() throws {
        let m = CommandManager()
        let prefix = "Error during command processing: "
        #expect(
            try process(m, #"["command", "list-commands"]"#)
                == errorAnswer(prefix + "invalid command: expected toplevel entry to be a map, got list instead"))
        #expect(
            try process(m, #"{"arguments": {}}"#)
                == errorAnswer(prefix + "invalid command: does not contain mandatory 'command'"))
        #expect(
            try process(m, #"{"command": "list-commands", "x": 1}"#)
                == errorAnswer(prefix + "invalid command: unsupported parameter 'x'"))
        #expect(
            try process(m, #"{"command": {"a": 1}}"#)
                == errorAnswer(prefix + "invalid command: expected 'command' to be a string, got map instead"))
        #expect(
            try process(m, #"{"command": 42}"#)
                == errorAnswer(prefix + "invalid command: expected 'command' to be a string, got integer instead"))
        #expect(
            try process(m, #"{"command": ["x"]}"#)
                == errorAnswer(prefix + "invalid command: expected 'command' to be a string, got list instead"))
        #expect(
            try process(m, #""list-commands""#)
                == errorAnswer(prefix + "invalid command: expected toplevel entry to be a map, got string instead"))
    }

    @Test func validationOrderFollowsKea() throws {
        let m = CommandManager()
        let prefix = "Error during command processing: "
        // Missing 'command' is reported before unsupported keys.
        #expect(
            try process(m, #"{"zzz": 1}"#)
                == errorAnswer(prefix + "invalid command: does not contain mandatory 'command'"))
        // Unsupported keys before a non-string 'command'; the first in byte order is named.
        #expect(
            try process(m, #"{"command": 1, "zeta": 1, "Alpha": 2, "beta": 3}"#)
                == errorAnswer(prefix + "invalid command: unsupported parameter 'Alpha'"))
    }

    @Test func allowedTopLevelKeysAndAnyArguments() throws {
        let m = CommandManager()
        let seen = Box<[JSONValue?]>([])
        try m.registerCommand("echo") { _, args, _ in
            seen.value.append(args)
            return .answer(.success, "ok")
        }
        let cmd = #"{"command": "echo", "arguments": 1, "service": ["dhcp4"], "remote-address": "127.0.0.1"}"#
        #expect(try process(m, cmd) == ["arguments": [:], "result": 0, "text": "ok"])
        _ = try process(m, #"{"command": "echo", "arguments": [1, 2]}"#)
        _ = try process(m, #"{"command": "echo"}"#)
        _ = try process(m, #"{"command": "echo", "arguments": null}"#)
        #expect(seen.value == [.integer(1), [1, 2], nil, .null])
        // The per-request check agrees with the published set.
        #expect(CommandManager.allowedTopLevelKeys.allSatisfy(CommandManager.isAllowedTopLevelKey))
        #expect(!CommandManager.isAllowedTopLevelKey("Command") && !CommandManager.isAllowedTopLevelKey(""))
    }

    @Test func unknownCommandIsUnsupportedAndCaseSensitive() throws {
        let m = CommandManager()
        #expect(
            try process(m, #"{"command": "foo"}"#)
                == ["arguments": [:], "result": 2, "text": "'foo' command not supported."])
        #expect(try process(m, #"{"command": "LIST-COMMANDS"}"#)["result"] == 2)
    }

    // MARK: list-commands, registration

    @Test func listCommandsIsBuiltInSortedAndIgnoresArguments() throws {
        let m = CommandManager()
        #expect(try process(m, #"{"command": "list-commands"}"#) == ["arguments": ["list-commands"], "result": 0])
        for name in ["version-get", "config-get", "status-get", "build-report", "Zeta"] {
            try m.registerCommand(name) { _, _, _ in .answer(.success) }
        }
        let expected: JSONValue = [
            "arguments": ["Zeta", "build-report", "config-get", "list-commands", "status-get", "version-get"],
            "result": 0,
        ]
        #expect(try process(m, #"{"command": "list-commands", "arguments": {"ignored": [1]}}"#) == expected)
        #expect(m.commandNames == ["Zeta", "build-report", "config-get", "list-commands", "status-get", "version-get"])
        // Wire form: compact, arguments first.
        #expect(
            processBytes(m, #"{"command":"list-commands"}"#)
                == #"{"arguments":["Zeta","build-report","config-get","list-commands","status-get","version-get"],"#
                + #""result":0}"#)
    }

    @Test func duplicateRegistrationIsRejected() throws {
        let m = CommandManager()
        try m.registerCommand("foo") { _, _, _ in .answer(.success, "first") }
        #expect(throws: CommandManagerError.alreadyRegistered("foo")) {
            try m.registerCommand("foo") { _, _, _ in .answer(.success, "second") }
        }
        #expect(throws: CommandManagerError.alreadyRegistered("foo")) {
            try m.registerAsyncCommand("foo") { _, _, _, r in r.respond(.answer(.success)) }
        }
        #expect(throws: CommandManagerError.alreadyRegistered("list-commands")) {
            try m.registerCommand("list-commands") { _, _, _ in .answer(.success) }
        }
        #expect(try process(m, #"{"command": "foo"}"#)["text"] == "first")
        #expect(
            CommandManagerError.alreadyRegistered("foo").description
                == "Handler for command 'foo' is already installed.")
    }

    @Test func deregister() throws {
        let m = CommandManager()
        try m.registerCommand("foo") { _, _, _ in .answer(.success) }
        try m.registerCommand("bar") { _, _, _ in .answer(.success) }
        try m.deregisterCommand("foo")
        #expect(!m.hasCommand("foo"))
        #expect(try process(m, #"{"command": "foo"}"#)["result"] == 2)
        #expect(throws: CommandManagerError.notRegistered("foo")) { try m.deregisterCommand("foo") }
        #expect(throws: CommandManagerError.cannotRemoveBuiltIn("list-commands")) {
            try m.deregisterCommand("list-commands")
        }
        #expect(CommandManagerError.notRegistered("foo").description == "Handler for command 'foo' not found.")
        #expect(
            CommandManagerError.cannotRemoveBuiltIn("list-commands").description
                == "Can't uninstall internal command 'list-commands'")
        // Re-registering after removal works.
        try m.registerCommand("foo") { _, _, _ in .answer(.success) }
        m.deregisterAll()
        #expect(m.commandNames == ["list-commands"])
        #expect(try process(m, #"{"command": "list-commands"}"#) == ["arguments": ["list-commands"], "result": 0])
    }

    // MARK: Handlers

    @Test func handlerGetsNameArgumentsAndWholeCommand() throws {
        let m = CommandManager()
        let seen = Box<(String, JSONValue?, JSONValue)?>(nil)
        try m.registerCommand("status-get") { name, args, command in
            seen.value = (name, args, command)
            return .answer(.success, arguments: ["pid": 42])
        }
        let cmd: JSONValue = ["command": "status-get", "arguments": ["x": 1], "service": ["dhcp4"]]
        #expect(process(m, cmd) == ["arguments": ["pid": 42], "result": 0])
        #expect(seen.value?.0 == "status-get")
        #expect(seen.value?.1 == ["x": 1])
        #expect(seen.value?.2 == cmd)
    }

    @Test func throwingHandlerGivesResultOne() throws {
        let m = CommandManager()
        try m.registerCommand("boom") { _, _, _ in throw TestError(description: "disk on fire") }
        #expect(
            try process(m, #"{"command": "boom"}"#)
                == errorAnswer("Error during command processing: disk on fire"))
    }

    @Test func argumentsAreAddedWhenMissingAndBadAnswersAreCaught() throws {
        let m = CommandManager()
        try m.registerCommand("bare") { _, _, _ in ["result": 3, "text": "nothing"] }
        try m.registerCommand("bad") { _, _, _ in ["text": "no result"] }
        try m.registerCommand("list") { _, _, _ in [1, 2] }
        let bare = try process(m, #"{"command": "bare"}"#)
        #expect(bare == ["arguments": [:], "result": 3, "text": "nothing"])
        #expect(bare.objectValue?.keys == ["arguments", "result", "text"])
        #expect(
            try process(m, #"{"command": "bad"}"#)
                == errorAnswer("internal error: the answer to 'bad' is not a map with an integer 'result'"))
        #expect(try process(m, #"{"command": "list"}"#)["result"] == 1)
    }

    @Test func nonMapArgumentsInAnAnswerAreAnInternalError() throws {
        let log = LogRecorder()
        let m = CommandManager(logger: log.logger)
        try m.registerCommand("list-args") { _, _, _ in .answer(.success, arguments: [1, 2]) }
        try m.registerCommand("string-args") { _, _, _ in ["arguments": "text", "result": 0] }
        try m.registerCommand("null-args") { _, _, _ in ["arguments": .null, "result": 3] }
        try m.registerAsyncCommand("async-list-args") { _, _, _, responder in
            responder.respond(ControlAnswer.success(arguments: ["a"]))
        }
        try m.registerCommand("fine") { _, _, _ in .answer(.success, arguments: ["k": [1]]) }
        for (name, type) in [
            ("list-args", "list"), ("string-args", "string"), ("null-args", "null"), ("async-list-args", "list"),
        ] {
            #expect(
                process(m, ["command": .string(name)])
                    == errorAnswer(
                        "internal error: the answer to '\(name)' has 'arguments' of type \(type), expected a map"))
        }
        #expect(log.errors.count == 4)
        #expect(log.errors.allSatisfy { $0.contains("'arguments' of type") }, "\(log.errors)")
        // The built-in list-commands alone answers with a list (spec §6), as in Kea.
        #expect(process(m, ["command": "list-commands"])["arguments"]?.arrayValue?.contains("fine") == true)
        #expect(process(m, ["command": "fine"]) == ["arguments": ["k": [1]], "result": 0])
        // An observer that breaks the invariant is caught as well; list-commands' list passes observers.
        m.addObserver { name, _, response in
            if name == "fine" { response["arguments"] = 7 }
        }
        #expect(
            process(m, ["command": "fine"])
                == errorAnswer("internal error: the answer to 'fine' has 'arguments' of type integer, expected a map"))
        #expect(process(m, ["command": "list-commands"])["result"] == 0)
        #expect(log.errors.count == 5)
    }

    @Test func asyncHandlerAnswersLater() throws {
        let m = CommandManager()
        let pending = Box<CommandResponder?>(nil)
        try m.registerAsyncCommand("slow") { name, args, _, responder in
            #expect(name == "slow")
            #expect(args == ["n": 1])
            pending.value = responder
        }
        let answer = Box<JSONValue?>(nil)
        let calls = Box(0)
        m.processCommand(["command": "slow", "arguments": ["n": 1]]) {
            answer.value = $0
            calls.value += 1
        }
        #expect(answer.value == nil)
        #expect(pending.value?.hasResponded == false)
        pending.value?.respond(ControlAnswer.success("done", arguments: ["n": 2]))
        #expect(answer.value == ["arguments": ["n": 2], "result": 0, "text": "done"])
        // A second answer is ignored.
        pending.value?.respond(ControlAnswer.error("again"))
        #expect(calls.value == 1)
        #expect(answer.value?["result"] == 0)
        pending.value = nil
        #expect(calls.value == 1)
    }

    @Test func asyncHandlerAnsweringImmediately() throws {
        let m = CommandManager()
        try m.registerAsyncCommand("now") { _, _, _, r in r.respond(.answer(.empty, "none")) }
        #expect(try process(m, #"{"command": "now"}"#) == ["arguments": [:], "result": 3, "text": "none"])
    }

    @Test func asyncHandlerThatNeverAnswersStillProducesAnAnswer() throws {
        let m = CommandManager()
        try m.registerAsyncCommand("forgetful") { _, _, _, _ in }
        #expect(
            try process(m, #"{"command": "forgetful"}"#)
                == errorAnswer("internal error: the handler of 'forgetful' finished without an answer"))
    }

    @Test func asyncHandlerThrowingOrFailing() throws {
        let m = CommandManager()
        try m.registerAsyncCommand("throws") { _, _, _, _ in throw TestError(description: "nope") }
        try m.registerAsyncCommand("fails") { _, _, _, r in r.fail(TestError(description: "later failure")) }
        try m.registerAsyncCommand("throwsAfter") { _, _, _, r in
            r.respond(.answer(.success))
            throw TestError(description: "ignored")
        }
        #expect(try process(m, #"{"command": "throws"}"#) == errorAnswer("Error during command processing: nope"))
        #expect(
            try process(m, #"{"command": "fails"}"#) == errorAnswer("Error during command processing: later failure"))
        #expect(try process(m, #"{"command": "throwsAfter"}"#)["result"] == 0)
    }

    @Test func asyncAwaitVariantWaitsForALateAnswer() async throws {
        let m = CommandManager()
        try m.registerAsyncCommand("deferred") { _, args, _, responder in
            Task {
                await Task.yield()
                responder.respond(.answer(.success, arguments: args ?? [:]))
            }
        }
        let answer = await m.processCommand(["command": "deferred", "arguments": ["k": "v"]])
        #expect(answer == ["arguments": ["k": "v"], "result": 0])
        #expect(await m.processCommand(["command": "list-commands"])["arguments"] == ["deferred", "list-commands"])
    }

    // MARK: Observers

    @Test func observersSeeAndAmendEveryProcessedCommand() throws {
        let m = CommandManager()
        try m.registerCommand("status-get") { _, _, _ in .answer(.success, arguments: ["pid": 1]) }
        let seen = Box<[String]>([])
        let first = m.addObserver { name, args, response in
            seen.value.append("\(name):\(args?.description ?? "-")")
            if name == "status-get" { response["arguments"]?["high-availability"] = ["state": "hot-standby"] }
        }
        m.addObserver { _, _, response in
            if response["result"] == 2 { response["text"] = "amended" }
        }
        #expect(
            try process(m, #"{"command": "status-get", "arguments": {"a": 1}}"#)
                == ["arguments": ["pid": 1, "high-availability": ["state": "hot-standby"]], "result": 0])
        #expect(try process(m, #"{"command": "nope"}"#) == ["arguments": [:], "result": 2, "text": "amended"])
        // Not run when validation fails (as Kea's command_processed).
        _ = try process(m, #"{"x": 1}"#)
        #expect(seen.value == [#"status-get:{"a":1}"#, "nope:-"])
        m.removeObserver(first)
        _ = try process(m, #"{"command": "list-commands"}"#)
        #expect(seen.value.count == 2)
    }

    @Test func observerRunsAfterAsyncAnswer() throws {
        let m = CommandManager()
        let pending = Box<CommandResponder?>(nil)
        try m.registerAsyncCommand("later") { _, _, _, r in pending.value = r }
        m.addObserver { _, _, response in response["text"] = "observed" }
        let answer = Box<JSONValue?>(nil)
        m.processCommand(["command": "later"]) { answer.value = $0 }
        #expect(answer.value == nil)
        pending.value?.respond(.answer(.success))
        #expect(answer.value == ["arguments": [:], "result": 0, "text": "observed"])
    }

    /// A responder kept after answering (here by its own handler's state) no longer holds the manager or the
    /// caller's completion: before, that was a cycle manager → handler → responder → manager.
    @Test func anAnsweredResponderReleasesItsCompletion() throws {
        final class Sentinel {}
        weak var weakManager: CommandManager?
        weak var weakCaptured: Sentinel?
        do {
            let m = CommandManager(logger: quietLogger)
            let kept = Box<CommandResponder?>(nil)
            try m.registerAsyncCommand("later") { _, _, _, r in kept.value = r }
            let captured = Sentinel()
            m.processCommand(["command": "later"]) { _ in _ = captured }
            kept.value?.respond(.answer(.success))
            #expect(kept.value?.hasResponded == true)
            weakManager = m
            weakCaptured = captured
        }
        #expect(weakManager == nil)
        #expect(weakCaptured == nil)
    }

    // MARK: Typed arguments

    struct LeaseQuery: Decodable {
        var address: String
        var subnetID: Int?
        var flags: [Bool]?
        enum CodingKeys: String, CodingKey {
            case address
            case subnetID = "subnet-id"
            case flags
        }
    }

    struct Options: Decodable {
        var verbose: Bool?
    }

    @Test func typedArguments() throws {
        let m = CommandManager()
        try m.registerTyped("lease4-get", arguments: LeaseQuery.self) { q in
            .answer(.success, arguments: ["address": .string(q.address), "subnet-id": JSONValue(q.subnetID ?? -1)])
        }
        try m.registerTyped("opts") { (o: Options) in
            .answer(.success, arguments: ["verbose": .bool(o.verbose ?? false)])
        }
        #expect(
            try process(m, #"{"command": "lease4-get", "arguments": {"address": "10.0.0.1", "subnet-id": 7}}"#)
                == ["arguments": ["address": "10.0.0.1", "subnet-id": 7], "result": 0])
        let prefix = "invalid arguments for command 'lease4-get': "
        #expect(
            try process(m, #"{"command": "lease4-get", "arguments": {"subnet-id": 7}}"#)
                == errorAnswer(prefix + "missing mandatory parameter 'address'"))
        #expect(
            try process(m, #"{"command": "lease4-get"}"#)
                == errorAnswer(prefix + "missing mandatory parameter 'address'"))
        #expect(
            try process(m, #"{"command": "lease4-get", "arguments": {"address": 10}}"#)
                == errorAnswer(prefix + "parameter 'address' expected to be a string, got integer"))
        #expect(
            try process(m, #"{"command": "lease4-get", "arguments": [1]}"#)
                == errorAnswer(prefix + "'arguments' expected to be a map, got list"))
        #expect(
            try process(m, #"{"command": "lease4-get", "arguments": {"address": "a", "flags": [true, "x"]}}"#)
                == errorAnswer(prefix + "parameter 'flags[1]' expected to be a boolean, got string"))
        #expect(
            try process(m, #"{"command": "lease4-get", "arguments": {"address": null}}"#)
                == errorAnswer(prefix + "parameter 'address' must not be null"))
        // All-optional arguments: absent is fine.
        #expect(try process(m, #"{"command": "opts"}"#) == ["arguments": ["verbose": false], "result": 0])
        #expect(
            try process(m, #"{"command": "opts", "arguments": {"verbose": true}}"#)
                == ["arguments": ["verbose": true], "result": 0])
    }

    @Test func typedHandlerThrowing() throws {
        let m = CommandManager()
        try m.registerTyped("t") { (_: Options) in throw TestError(description: "typed failure") }
        #expect(try process(m, #"{"command": "t"}"#) == errorAnswer("Error during command processing: typed failure"))
    }

    // MARK: Bytes in, bytes out

    @Test func bytesPipeline() throws {
        let m = CommandManager()
        try m.registerCommand("echo") { _, args, _ in .answer(.success, "é ✓", arguments: args ?? [:]) }
        #expect(
            processBytes(m, #"{ "command": "echo", "arguments": {"s": "日本\n"} }"#)
                == #"{"arguments":{"s":"日本\n"},"result":0,"text":"é ✓"}"#)
        #expect(
            processBytes(m, #"{"command": "nope"}"#)
                == #"{"arguments":{},"result":2,"text":"'nope' command not supported."}"#)
        // Parse errors: result 1 with the position, no "Error during command processing" prefix.
        let parseError = processBytes(m, "{\"command\": \"echo\",\n \"arguments\": [1,]}")
        let answer = try JSONParser.parse(parseError)
        #expect(answer["result"] == 1)
        #expect(answer["text"]?.stringValue?.hasPrefix("expected a value, found ']' at line 2, column 18") == true)
        let badUTF8 = Box<[UInt8]>([])
        m.processCommandBytes([0x7B, 0x22, 0x63, 0x22, 0x3A, 0x22, 0xC3, 0x28, 0x22, 0x7D]) { badUTF8.value = $0 }
        let utf8Answer = try JSONParser.parse(badUTF8.value)
        #expect(utf8Answer["result"] == 1)
        #expect(utf8Answer["text"]?.stringValue?.contains("invalid UTF-8 byte 0x28 in string") == true)
        // Depth limit of the manager applies.
        let deep = String(repeating: "[", count: 150) + String(repeating: "]", count: 150)
        let deepAnswer = try JSONParser.parse(processBytes(m, deep))
        #expect(deepAnswer["text"]?.stringValue?.contains("nesting too deep") == true)
    }

    @Test func framerToAnswer() throws {
        // The socket server's path: framer → bytes → answer bytes.
        let m = CommandManager()
        var framer = JSONFramer()
        let input = Array("  // hello\n{\"command\": /* which */ \"list-commands\"} trailing".utf8)
        var complete = false
        for byte in input where !complete {
            if case .complete = framer.feed([byte]) { complete = true }
        }
        #expect(complete)
        let out = Box<[UInt8]>([])
        m.processCommandBytes(framer.takeValueBytes()) { out.value = $0 }
        #expect(String(decoding: out.value, as: UTF8.self) == #"{"arguments":["list-commands"],"result":0}"#)
    }

    // MARK: Answers

    @Test func answerBuilders() {
        #expect(ControlAnswer.success().json == ["arguments": [:], "result": 0])
        #expect(ControlAnswer.success().json.objectValue?.keys == ["arguments", "result"])
        #expect(ControlAnswer.error("bad").json.serializedString() == #"{"arguments":{},"result":1,"text":"bad"}"#)
        #expect(ControlAnswer.unsupported(command: "x").text == "'x' command not supported.")
        #expect(ControlAnswer.empty("none").result == 3)
        #expect(ControlAnswer.conflict("busy").controlResult == .conflict)
        #expect(ControlResult.allCases.map(\.rawValue) == [0, 1, 2, 3, 4])
        #expect(ControlAnswer(result: 7, text: "custom").controlResult == nil)
        let parsed = ControlAnswer(json: ["result": 1, "text": "t"])
        #expect(parsed == ControlAnswer.error("t"))
        #expect(ControlAnswer(json: ["text": "t"]) == nil)
        #expect(ControlAnswer(json: ["result": 0, "text": 5]) == nil)
        #expect(ControlAnswer(json: [1]) == nil)
    }
}

/// Collects what a manager logs at `error` level.
final class LogRecorder: Sendable {
    private let messages = Mutex<[String]>([])
    /// The `error` messages, in order.
    var errors: [String] { messages.withLock { $0 } }
    var logger: Logger {
        recordingLogger { [self] event in
            if event.level == .error { messages.withLock { $0.append(event.message.description) } }
        }
    }
}
