// ControlAnswer: the answer map of the control channel and its result codes.

/// The result codes of a control-channel answer (spec §6).
///
/// Other integers are reserved; ``ControlAnswer`` keeps any integer, this enum names the defined ones.
/// Kea counterpart: `CONTROL_RESULT_SUCCESS`, `CONTROL_RESULT_ERROR`, `CONTROL_RESULT_COMMAND_UNSUPPORTED`,
/// `CONTROL_RESULT_EMPTY`, `CONTROL_RESULT_CONFLICT` in `command_interpreter.h`.
public enum ControlResult: Int, Sendable, Hashable, CaseIterable {
    /// 0: the command succeeded.
    case success = 0
    /// 1: the command failed (invalid request, handler error...).
    case error = 1
    /// 2: no handler is registered for the command name.
    case unsupported = 2
    /// 3: completed, but nothing was found or affected.
    case empty = 3
    /// 4: the command conflicts with the current state (Kea 2.4+).
    case conflict = 4
}

/// One control-channel answer: `{"arguments": ..., "result": N, "text": "..."}`.
///
/// ``json`` always contains `arguments` (`{}` when there is nothing to return; spec §6), then `result`, then
/// `text` when there is one — Kea's (alphabetical) key order. Use the static builders in handlers:
/// `return ControlAnswer.success("Done.").json` or `ControlAnswer.error("Missing 'name'.").json`.
///
/// Thread contract: a plain value, `Sendable`.
/// Kea counterpart: `isc::config::createAnswer(code, text, args)` and `parseAnswer`.
public struct ControlAnswer: Sendable, Hashable {
    /// The result code (see ``ControlResult``; other values are kept as they are).
    public var result: Int
    /// The human-readable text; nil to omit it (allowed on success).
    public var text: String?
    /// The answer's arguments; `{}` when there is nothing to return.
    public var arguments: JSONValue

    /// An answer with a raw result code.
    public init(result: Int, text: String? = nil, arguments: JSONValue = [:]) {
        self.result = result
        self.text = text
        self.arguments = arguments
    }

    /// An answer with a defined result code.
    public init(_ result: ControlResult, text: String? = nil, arguments: JSONValue = [:]) {
        self.init(result: result.rawValue, text: text, arguments: arguments)
    }

    /// Result 0, optional text and arguments.
    public static func success(_ text: String? = nil, arguments: JSONValue = [:]) -> ControlAnswer {
        ControlAnswer(.success, text: text, arguments: arguments)
    }

    /// Result 1 with a text saying what went wrong.
    public static func error(_ text: String, arguments: JSONValue = [:]) -> ControlAnswer {
        ControlAnswer(.error, text: text, arguments: arguments)
    }

    /// Result 2: `'NAME' command not supported.` (Kea's exact text).
    public static func unsupported(command name: String) -> ControlAnswer {
        ControlAnswer(.unsupported, text: "'\(name)' command not supported.")
    }

    /// Result 3: completed, nothing found or affected.
    public static func empty(_ text: String, arguments: JSONValue = [:]) -> ControlAnswer {
        ControlAnswer(.empty, text: text, arguments: arguments)
    }

    /// Result 4: conflict.
    public static func conflict(_ text: String, arguments: JSONValue = [:]) -> ControlAnswer {
        ControlAnswer(.conflict, text: text, arguments: arguments)
    }

    /// The result as a ``ControlResult`` if it is one of the defined codes.
    public var controlResult: ControlResult? { ControlResult(rawValue: result) }

    /// The answer as a JSON map: `arguments`, `result`, then `text` if present.
    public var json: JSONValue {
        var object = JSONObject(minimumCapacity: 3)
        object["arguments"] = arguments
        object["result"] = .integer(Int64(result))
        if let text { object["text"] = .string(text) }
        return .object(object)
    }

    /// The compact wire bytes of ``json``.
    public func serialized() -> [UInt8] { json.serialized() }

    /// Reads an answer map (for clients): a map with an integer `result`, an optional string `text` and
    /// optional `arguments` (absent → `{}`). Returns nil if `json` is not such a map.
    /// Kea counterpart: `parseAnswer`.
    public init?(json: JSONValue) {
        guard case .object(let map) = json, case .integer(let code)? = map["result"] else { return nil }
        var text: String?
        if let t = map["text"] {
            guard case .string(let s) = t else { return nil }
            text = s
        }
        self.init(result: Int(code), text: text, arguments: map["arguments"] ?? [:])
    }
}

extension JSONValue {
    /// Builds an answer map: a shorthand for `ControlAnswer(result, text: text, arguments: arguments).json`.
    /// Kea counterpart: `createAnswer(code, text, args)`.
    public static func answer(_ result: ControlResult, _ text: String? = nil, arguments: JSONValue = [:]) -> JSONValue {
        ControlAnswer(result, text: text, arguments: arguments).json
    }
}
