// Codable bridge: Decodable from JSONValue and Encodable into JSONValue (for typed command arguments).
//
// The bridge goes through Foundation's JSONEncoder/JSONDecoder and our serializer/parser. It is used for typed
// command arguments, which are small; the wire path (framer, parser, serializer) does not use Foundation.

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

extension JSONValue {
    /// Decodes a `Decodable` value from this JSON value.
    ///
    /// Numbers decode into Swift integer or floating-point types as `JSONDecoder` allows; keys are matched
    /// exactly (no key strategy). Thread contract: pure function.
    /// - Throws: `DecodingError` (see ``describeDecodingError(_:)`` for a readable text).
    public func decode<T: Decodable>(_ type: T.Type = T.self) throws -> T {
        let bytes = serialized()
        return try JSONDecoder().decode(T.self, from: Data(bytes))
    }

    /// Encodes an `Encodable` value into a JSON value (map keys sorted, for determinism).
    ///
    /// Integers become `.integer`, floating-point values `.double` (an integral one such as `2.0` is written by
    /// `JSONEncoder` without a fraction and therefore becomes `.integer`).
    /// - Throws: `EncodingError`, or ``JSONParseError`` if the encoder produced text we cannot parse (e.g. a
    ///   non-finite double under a conversion strategy).
    public init<T: Encodable>(encoding value: T) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let data = try encoder.encode(value)
        self = try JSONParser.parse([UInt8](data), maxDepth: Int.max)
    }

    /// A readable, Kea-style text for a decoding failure of this value (used for typed command arguments):
    /// - `missing mandatory parameter 'subnet.id'`
    /// - `parameter 'name' expected to be a string, got integer`
    /// - `'arguments' expected to be a map, got list`
    /// - `parameter 'count' must not be null`
    /// - `parameter 'count': <Foundation's description>` for other data errors (e.g. a number out of range).
    public func describeDecodingError(_ error: any Error) -> String {
        guard let error = error as? DecodingError else { return String(describing: error) }
        switch error {
        case .keyNotFound(let key, let context):
            return "missing mandatory parameter '\(Self.path(context.codingPath + [key]))'"
        case .typeMismatch(let type, let context):
            let actual = value(at: context.codingPath)?.typeName ?? "nothing"
            return "\(Self.subject(context.codingPath)) expected to be \(Self.keaTypeName(type)), got \(actual)"
        case .valueNotFound(_, let context):
            if let v = value(at: context.codingPath), !v.isNull {
                return "\(Self.subject(context.codingPath)): \(context.debugDescription)"
            }
            return "\(Self.subject(context.codingPath)) must not be null"
        case .dataCorrupted(let context):
            return "\(Self.subject(context.codingPath)): \(context.debugDescription)"
        @unknown default:
            return String(describing: error)
        }
    }

    /// The value at a coding path inside this value, if any.
    func value(at path: [any CodingKey]) -> JSONValue? {
        var current = self
        for key in path {
            if let index = key.intValue, case .array(let a) = current {
                guard a.indices.contains(index) else { return nil }
                current = a[index]
            } else if let next = current[key.stringValue] {
                current = next
            } else {
                return nil
            }
        }
        return current
    }

    static func subject(_ path: [any CodingKey]) -> String {
        path.isEmpty ? "'arguments'" : "parameter '\(Self.path(path))'"
    }

    static func path(_ path: [any CodingKey]) -> String {
        var text = ""
        for key in path {
            if let index = key.intValue {
                text += "[\(index)]"
            } else {
                if !text.isEmpty { text += "." }
                text += key.stringValue
            }
        }
        return text
    }

    static func keaTypeName(_ type: Any.Type) -> String {
        switch type {
        case is String.Type, is Substring.Type, is Character.Type: return "a string"
        case is Bool.Type: return "a boolean"
        case is Int.Type, is Int8.Type, is Int16.Type, is Int32.Type, is Int64.Type,
            is UInt.Type, is UInt8.Type, is UInt16.Type, is UInt32.Type, is UInt64.Type:
            return "an integer"
        case is Double.Type, is Float.Type: return "a real"
        case is [Any].Type: return "a list"
        case is [String: Any].Type: return "a map"
        default: return "\(type)"
        }
    }
}

extension JSONValue: Codable {
    /// Decodes any JSON value (map key order follows the decoder's, which may not be the input's).
    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let b = try? container.decode(Bool.self) {
            self = .bool(b)
        } else if let i = try? container.decode(Int64.self) {
            self = .integer(i)
        } else if let d = try? container.decode(Double.self) {
            self = .double(d)
        } else if let s = try? container.decode(String.self) {
            self = .string(s)
        } else if let a = try? container.decode([JSONValue].self) {
            self = .array(a)
        } else if let o = try? container.decode([String: JSONValue].self) {
            self = .object(JSONObject(o.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }))
        } else {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: "not a JSON value")
        }
    }

    /// Encodes this JSON value as itself.
    public func encode(to encoder: any Encoder) throws {
        switch self {
        case .null:
            var c = encoder.singleValueContainer()
            try c.encodeNil()
        case .bool(let b):
            var c = encoder.singleValueContainer()
            try c.encode(b)
        case .integer(let i):
            var c = encoder.singleValueContainer()
            try c.encode(i)
        case .double(let d):
            var c = encoder.singleValueContainer()
            try c.encode(d)
        case .string(let s):
            var c = encoder.singleValueContainer()
            try c.encode(s)
        case .array(let a):
            var c = encoder.unkeyedContainer()
            for element in a { try c.encode(element) }
        case .object(let o):
            var c = encoder.container(keyedBy: AnyKey.self)
            for (k, v) in o { try c.encode(v, forKey: AnyKey(k)) }
        }
    }
}

private struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(_ s: String) { stringValue = s }
    init?(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}
