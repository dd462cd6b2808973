// JSONParser: strict RFC 8259 parsing of bytes into JSONValue.
//
// Why our own parser rather than Foundation's JSONSerialization. Throwaway measurement (Linux x86_64, Swift
// 6.3.1, `swiftc -O -wmo`, best of 5 runs, 2 cores), parse from bytes:
//   - `{"command": "list-commands"}` (28 B):  JSONSerialization 0.65 µs (1.76 µs incl. conversion to JSONValue);
//     ours 0.31 µs (0.47 µs incl. the framer).
//   - 1 MiB command (5 075 lease maps of 9 keys): JSONSerialization 24.4 ms (41 MiB/s; 158 ms incl. a naive
//     conversion to JSONValue); ours 4.8 ms (208 MiB/s). Framer alone: 0.57 ms (1.7 GiB/s).
//   - Serializing that 1 MiB value: JSONSerialization.data 188 ms; ours 3.1 ms.
// Besides speed: Foundation loses the integer/real distinction (NSNumber), recurses (no depth bound of our
// own), and reports errors without line/column. This parser is iterative (explicit stacks, no recursion), so
// no input can exhaust the thread stack; it validates UTF-8 in strings and reports line, column and offset.

/// A JSON syntax error, with the position of the offending byte.
///
/// `description` reads `invalid UTF-8 byte 0xff in string at line 1, column 17 (byte offset 16)`.
/// Thread contract: a plain value, `Sendable`.
/// Kea counterpart: `isc::data::JSONError` (Kea's text is `<reason> in <wire>:<line>:<col>`).
public struct JSONParseError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What is wrong, without the position: `unterminated string`.
    public var reason: String
    /// 0-based byte offset of the offending byte (the input length for an unexpected end).
    public var offset: Int
    /// 1-based line number (lines end with LF).
    public var line: Int
    /// 1-based column, counted in bytes from the start of the line.
    public var column: Int

    /// Creates an error; `line` and `column` are usually computed by the parser from `offset`.
    public init(reason: String, offset: Int, line: Int, column: Int) {
        self.reason = reason
        self.offset = offset
        self.line = line
        self.column = column
    }

    /// `<reason> at line L, column C (byte offset O)`.
    public var description: String { "\(reason) at line \(line), column \(column) (byte offset \(offset))" }
}

/// Strict RFC 8259 JSON parser producing ``JSONValue``.
///
/// - Accepts exactly one JSON value (any type at top level) surrounded by optional whitespace (space, TAB, CR,
///   LF). No comments, no trailing commas, no leading zeros, no NaN/Infinity, no single quotes.
/// - Strings: every escape (`\" \\ \/ \b \f \n \r \t \uXXXX`), UTF-16 surrogate pairs combined, lone
///   surrogates rejected; raw bytes must be valid UTF-8 (overlong forms, encoded surrogates and code points
///   above U+10FFFF are rejected) and control characters must be escaped.
/// - Numbers without fraction or exponent become `.integer` and must fit in `Int64` (else an error, as Kea's
///   "Number overflow"); others become `.double` (correctly rounded) and must be finite (`1e400` is an error,
///   not an infinity that would serialize as `null`; `1e-400` rounds to 0).
/// - Repeated map keys: the last value wins, at the position of the first (as Kea's map `set`).
/// - Nesting deeper than `maxDepth` containers is an error; the parser never recurses, so any depth is safe.
///
/// Thread contract: stateless static functions, callable from any thread.
/// Kea counterpart: `Element::fromJSON` / `Element::fromWire`.
public enum JSONParser {
    /// Default nesting limit, as Kea's `MAX_NESTING_LEVEL` (2.6.5+, CVE-2026-3608).
    public static let defaultMaxDepth = 100

    /// Parses one JSON value from raw bytes.
    ///
    /// - Parameters:
    ///   - bytes: the complete JSON text, UTF-8.
    ///   - maxDepth: the deepest allowed nesting of arrays/objects (`[]` is depth 1). Parsing itself never
    ///     recurses, but `==`, hashing, serialization and deallocation of the resulting value do, so keep the
    ///     limit modest (the default 100, or a few thousand at most).
    /// - Throws: ``JSONParseError`` with the reason and position of the first error.
    public static func parse(
        _ bytes: UnsafeRawBufferPointer, maxDepth: Int = defaultMaxDepth
    ) throws(JSONParseError) -> JSONValue {
        let typed = bytes.bindMemory(to: UInt8.self)
        var core = ParserCore(typed, maxDepth: maxDepth)
        return try core.parseDocument()
    }

    /// Parses one JSON value from a byte array. See ``parse(_:maxDepth:)-(UnsafeRawBufferPointer,_)``.
    public static func parse(_ bytes: [UInt8], maxDepth: Int = defaultMaxDepth) throws(JSONParseError) -> JSONValue {
        let result: Result<JSONValue, JSONParseError> = bytes.withUnsafeBytes { raw in
            do throws(JSONParseError) {
                return .success(try parse(raw, maxDepth: maxDepth))
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }

    /// Parses one JSON value from the UTF-8 of a string.
    public static func parse(_ text: String, maxDepth: Int = defaultMaxDepth) throws(JSONParseError) -> JSONValue {
        var text = text
        let result: Result<JSONValue, JSONParseError> = text.withUTF8 { buffer in
            do throws(JSONParseError) {
                return .success(try parse(UnsafeRawBufferPointer(buffer), maxDepth: maxDepth))
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }
}

extension JSONValue {
    /// Parses JSON text (a convenience for ``JSONParser/parse(_:maxDepth:)-(String,_)``).
    /// - Throws: ``JSONParseError``.
    public init(parsing text: String, maxDepth: Int = JSONParser.defaultMaxDepth) throws(JSONParseError) {
        self = try JSONParser.parse(text, maxDepth: maxDepth)
    }

    /// Parses JSON bytes (a convenience for ``JSONParser/parse(_:maxDepth:)-([UInt8],_)``).
    /// - Throws: ``JSONParseError``.
    public init(parsing bytes: [UInt8], maxDepth: Int = JSONParser.defaultMaxDepth) throws(JSONParseError) {
        self = try JSONParser.parse(bytes, maxDepth: maxDepth)
    }
}

// MARK: - Implementation

private enum ASCII {
    static let quote: UInt8 = 0x22
    static let backslash: UInt8 = 0x5C
    static let slash: UInt8 = 0x2F
    static let comma: UInt8 = 0x2C
    static let colon: UInt8 = 0x3A
    static let minus: UInt8 = 0x2D
    static let plus: UInt8 = 0x2B
    static let dot: UInt8 = 0x2E
    static let zero: UInt8 = 0x30
    static let nine: UInt8 = 0x39
    static let openBrace: UInt8 = 0x7B
    static let closeBrace: UInt8 = 0x7D
    static let openBracket: UInt8 = 0x5B
    static let closeBracket: UInt8 = 0x5D
    static let space: UInt8 = 0x20
    static let tab: UInt8 = 0x09
    static let lf: UInt8 = 0x0A
    static let cr: UInt8 = 0x0D
}

/// Shows one input byte in an error text: printable ASCII as `'x'`, anything else as `0xNN`.
func describeByte(_ byte: UInt8) -> String {
    if byte > 0x20 && byte < 0x7F { return "'\(Character(Unicode.Scalar(byte)))'" }
    return "0x" + hex2(byte)
}

func hex2(_ byte: UInt8) -> String {
    let digits: [Character] = Array("0123456789abcdef")
    return String([digits[Int(byte >> 4)], digits[Int(byte & 0xF)]])
}

/// Exact powers of ten representable in a Double (for the fast, exact decimal conversion path).
private let exactPowersOfTen: [Double] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18,
    1e19, 1e20, 1e21, 1e22,
]

private struct ParserCore {
    let base: UnsafePointer<UInt8>
    let end: Int
    let maxDepth: Int
    var i = 0
    /// Reused buffer for strings that need unescaping.
    var scratch: [UInt8] = []

    init(_ buffer: UnsafeBufferPointer<UInt8>, maxDepth: Int) {
        // An empty buffer may have a nil base; point at a static byte, end = 0 keeps it unread.
        self.base = buffer.baseAddress ?? UnsafePointer(emptyByte)
        self.end = buffer.count
        self.maxDepth = maxDepth
    }

    func error(_ reason: String, at offset: Int) -> JSONParseError {
        var line = 1
        var lineStart = 0
        var k = 0
        let limit = min(offset, end)
        while k < limit {
            if base[k] == ASCII.lf {
                line += 1
                lineStart = k + 1
            }
            k += 1
        }
        return JSONParseError(reason: reason, offset: offset, line: line, column: offset - lineStart + 1)
    }

    func unexpected(_ what: String) -> JSONParseError {
        if i >= end { return error("unexpected end of input, expected \(what)", at: end) }
        return error("expected \(what), found \(describeByte(base[i]))", at: i)
    }

    @inline(__always)
    mutating func skipWhitespace() {
        while i < end {
            let b = base[i]
            if b == ASCII.space || b == ASCII.lf || b == ASCII.cr || b == ASCII.tab {
                i += 1
            } else {
                return
            }
        }
    }

    /// An open container: where its members start on the `entries` stack (maps) or `values` stack (lists).
    struct Frame {
        var isObject: Bool
        var start: Int
    }

    /// Moves the contents out of `array`, leaving it empty.
    @inline(__always)
    private func take<T>(_ array: inout [T]) -> [T] {
        var taken: [T] = []
        swap(&taken, &array)
        return taken
    }

    mutating func parseDocument() throws(JSONParseError) -> JSONValue {
        skipWhitespace()
        if i >= end { throw error("empty input, expected a JSON value", at: i) }
        // List elements, and map members (a member's value is filled in when it completes).
        var values: [JSONValue] = []
        var entries: [JSONObject.Entry] = []
        var frames: [Frame] = []

        while true {
            // A value starts at `i` (whitespace skipped).
            guard i < end else { throw unexpected("a value") }
            var value: JSONValue
            switch base[i] {
            case ASCII.openBrace:
                if frames.count >= maxDepth { throw tooDeep() }
                i += 1
                skipWhitespace()
                if i < end && base[i] == ASCII.closeBrace {
                    i += 1
                    value = .object(JSONObject())
                } else {
                    frames.append(Frame(isObject: true, start: entries.count))
                    entries.append(JSONObject.Entry(key: try parseKey(), value: .null))
                    continue
                }
            case ASCII.openBracket:
                if frames.count >= maxDepth { throw tooDeep() }
                i += 1
                skipWhitespace()
                if i < end && base[i] == ASCII.closeBracket {
                    i += 1
                    value = .array([])
                } else {
                    frames.append(Frame(isObject: false, start: values.count))
                    continue
                }
            case ASCII.quote:
                value = .string(try parseString())
            case 0x74:  // t
                try expectLiteral("true")
                value = .bool(true)
            case 0x66:  // f
                try expectLiteral("false")
                value = .bool(false)
            case 0x6E:  // n
                try expectLiteral("null")
                value = .null
            case ASCII.minus, ASCII.zero...ASCII.nine:
                value = try parseNumber()
            default:
                throw unexpected("a value")
            }

            // A value is complete: attach it to the innermost open container, closing containers as they end.
            while true {
                guard let frame = frames.last else {
                    skipWhitespace()
                    if i < end { throw error("unexpected data after the JSON value: \(describeByte(base[i]))", at: i) }
                    return value
                }
                if frame.isObject {
                    entries[entries.count - 1].value = value
                } else {
                    values.append(value)
                }
                skipWhitespace()
                guard i < end else {
                    throw unexpected(frame.isObject ? "',' or '}' in map" : "',' or ']' in list")
                }
                let c = base[i]
                if c == ASCII.comma {
                    i += 1
                    skipWhitespace()
                    if frame.isObject { entries.append(JSONObject.Entry(key: try parseKey(), value: .null)) }
                    break
                }
                if frame.isObject && c == ASCII.closeBrace {
                    i += 1
                    frames.removeLast()
                    if frame.start == 0 {
                        // The stack holds only this map: hand it over whole. Slicing and then truncating would
                        // share the buffer and make the truncation copy-on-write (an allocation per command).
                        value = .object(JSONObject(parsedEntries: take(&entries)[...]))
                    } else {
                        value = .object(JSONObject(parsedEntries: entries[frame.start...]))
                        entries.removeSubrange(frame.start...)
                    }
                    continue
                }
                if !frame.isObject && c == ASCII.closeBracket {
                    i += 1
                    frames.removeLast()
                    if frame.start == 0 {
                        value = .array(take(&values))
                    } else {
                        value = .array(Array(values[frame.start...]))
                        values.removeSubrange(frame.start...)
                    }
                    continue
                }
                throw unexpected(frame.isObject ? "',' or '}' in map" : "',' or ']' in list")
            }
        }
    }

    func tooDeep() -> JSONParseError {
        error("nesting too deep: more than \(maxDepth) levels of lists and maps", at: i)
    }

    /// Parses `"key"` then `:`, leaving `i` at the value (whitespace skipped).
    mutating func parseKey() throws(JSONParseError) -> String {
        guard i < end && base[i] == ASCII.quote else { throw unexpected("'\"' to start a map key") }
        let key = try parseString()
        skipWhitespace()
        guard i < end && base[i] == ASCII.colon else { throw unexpected("':' after map key") }
        i += 1
        skipWhitespace()
        return key
    }

    mutating func expectLiteral(_ literal: StaticString) throws(JSONParseError) {
        let n = literal.utf8CodeUnitCount
        let lit = literal.utf8Start
        var k = 0
        while k < n {
            guard i + k < end, base[i + k] == lit[k] else {
                if i + k >= end { throw error("unexpected end of input in literal \(literal)", at: end) }
                throw error("invalid literal, expected \(literal)", at: i)
            }
            k += 1
        }
        i += n
    }

    // MARK: Strings

    /// Parses a string starting at the opening quote; leaves `i` after the closing quote.
    mutating func parseString() throws(JSONParseError) -> String {
        let quoteAt = i
        i += 1
        let start = i
        // Fast path: printable ASCII without escapes, decoded straight from the input.
        while i < end {
            let b = base[i]
            if b == ASCII.quote {
                let s = String(decoding: UnsafeBufferPointer(start: base + start, count: i - start), as: UTF8.self)
                i += 1
                return s
            }
            if b == ASCII.backslash || b < 0x20 || b >= 0x80 { break }
            i += 1
        }
        scratch.removeAll(keepingCapacity: true)
        scratch.append(contentsOf: UnsafeBufferPointer(start: base + start, count: i - start))
        while true {
            guard i < end else { throw error("unterminated string", at: quoteAt) }
            let b = base[i]
            if b == ASCII.quote {
                i += 1
                return String(decoding: scratch, as: UTF8.self)
            } else if b == ASCII.backslash {
                try parseEscape()
            } else if b < 0x20 {
                throw error("unescaped control character 0x\(hex2(b)) in string", at: i)
            } else if b < 0x80 {
                scratch.append(b)
                i += 1
            } else {
                let n = try validateUTF8Sequence()
                scratch.append(contentsOf: UnsafeBufferPointer(start: base + i, count: n))
                i += n
            }
        }
    }

    /// Validates the UTF-8 sequence starting at `i` (a byte >= 0x80) and returns its length.
    func validateUTF8Sequence() throws(JSONParseError) -> Int {
        let b0 = base[i]
        var length: Int
        var lo: UInt8 = 0x80
        var hi: UInt8 = 0xBF
        switch b0 {
        case 0xC2...0xDF: length = 2
        case 0xE0:
            length = 3
            lo = 0xA0
        case 0xE1...0xEC, 0xEE...0xEF: length = 3
        case 0xED:
            length = 3
            hi = 0x9F  // no encoded UTF-16 surrogates
        case 0xF0:
            length = 4
            lo = 0x90
        case 0xF1...0xF3: length = 4
        case 0xF4:
            length = 4
            hi = 0x8F  // nothing above U+10FFFF
        default:
            throw error("invalid UTF-8 byte 0x\(hex2(b0)) in string", at: i)
        }
        for k in 1..<length {
            guard i + k < end else { throw error("truncated UTF-8 sequence in string", at: i) }
            let b = base[i + k]
            if b < lo || b > hi { throw error("invalid UTF-8 byte 0x\(hex2(b)) in string", at: i + k) }
            lo = 0x80
            hi = 0xBF
        }
        return length
    }

    /// Parses one escape at `i` (the backslash) and appends its UTF-8 to `scratch`.
    mutating func parseEscape() throws(JSONParseError) {
        let at = i
        guard i + 1 < end else { throw error("unterminated string", at: at) }
        let c = base[i + 1]
        i += 2
        switch c {
        case ASCII.quote: scratch.append(ASCII.quote)
        case ASCII.backslash: scratch.append(ASCII.backslash)
        case ASCII.slash: scratch.append(ASCII.slash)
        case 0x62: scratch.append(0x08)  // b
        case 0x66: scratch.append(0x0C)  // f
        case 0x6E: scratch.append(ASCII.lf)  // n
        case 0x72: scratch.append(ASCII.cr)  // r
        case 0x74: scratch.append(ASCII.tab)  // t
        case 0x75:  // u
            var scalar = try parseHex4(escapeAt: at)
            if scalar >= 0xD800 && scalar <= 0xDBFF {
                guard i + 1 < end, base[i] == ASCII.backslash, base[i + 1] == 0x75 else {
                    throw error("unpaired UTF-16 surrogate \\u\(String(scalar, radix: 16)) in string", at: at)
                }
                let lowAt = i
                i += 2
                let low = try parseHex4(escapeAt: lowAt)
                guard low >= 0xDC00 && low <= 0xDFFF else {
                    throw error("unpaired UTF-16 surrogate \\u\(String(scalar, radix: 16)) in string", at: at)
                }
                scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
            } else if scalar >= 0xDC00 && scalar <= 0xDFFF {
                throw error("unpaired UTF-16 surrogate \\u\(String(scalar, radix: 16)) in string", at: at)
            }
            appendUTF8(scalar)
        default:
            throw error("invalid escape \\\(describeByte(c).trimmingQuotes) in string", at: at)
        }
    }

    /// Reads 4 hex digits at `i`, advancing past them.
    mutating func parseHex4(escapeAt: Int) throws(JSONParseError) -> UInt32 {
        guard i + 4 <= end else { throw error("truncated \\u escape in string", at: escapeAt) }
        var v: UInt32 = 0
        for k in 0..<4 {
            let b = base[i + k]
            let d: UInt32
            switch b {
            case 0x30...0x39: d = UInt32(b - 0x30)
            case 0x41...0x46: d = UInt32(b - 0x41 + 10)
            case 0x61...0x66: d = UInt32(b - 0x61 + 10)
            default: throw error("invalid \\u escape in string: \(describeByte(b)) is not a hex digit", at: i + k)
            }
            v = v << 4 | d
        }
        i += 4
        return v
    }

    mutating func appendUTF8(_ scalar: UInt32) {
        switch scalar {
        case 0..<0x80:
            scratch.append(UInt8(scalar))
        case 0x80..<0x800:
            scratch.append(UInt8(0xC0 | (scalar >> 6)))
            scratch.append(UInt8(0x80 | (scalar & 0x3F)))
        case 0x800..<0x10000:
            scratch.append(UInt8(0xE0 | (scalar >> 12)))
            scratch.append(UInt8(0x80 | ((scalar >> 6) & 0x3F)))
            scratch.append(UInt8(0x80 | (scalar & 0x3F)))
        default:
            scratch.append(UInt8(0xF0 | (scalar >> 18)))
            scratch.append(UInt8(0x80 | ((scalar >> 12) & 0x3F)))
            scratch.append(UInt8(0x80 | ((scalar >> 6) & 0x3F)))
            scratch.append(UInt8(0x80 | (scalar & 0x3F)))
        }
    }

    // MARK: Numbers

    @inline(__always)
    func isDigit(_ k: Int) -> Bool { k < end && base[k] >= ASCII.zero && base[k] <= ASCII.nine }

    mutating func parseNumber() throws(JSONParseError) -> JSONValue {
        let start = i
        var negative = false
        if base[i] == ASCII.minus {
            negative = true
            i += 1
        }
        guard isDigit(i) else { throw error("invalid number: expected a digit", at: i) }
        // Integer part, accumulated exactly while it fits (for both the integer result and the fast double path).
        var mantissa: UInt64 = 0
        var mantissaDigits = 0  // significant digits accumulated into `mantissa`
        var overflow = false  // more digits than fit in `mantissa`
        var droppedIntDigits = 0
        if base[i] == ASCII.zero {
            i += 1
            if isDigit(i) { throw error("invalid number: leading zeros are not allowed", at: start) }
        } else {
            while isDigit(i) {
                let d = UInt64(base[i] - ASCII.zero)
                if !overflow {
                    let (m1, o1) = mantissa.multipliedReportingOverflow(by: 10)
                    let (m2, o2) = m1.addingReportingOverflow(d)
                    if o1 || o2 {
                        overflow = true
                        droppedIntDigits += 1
                    } else {
                        mantissa = m2
                        mantissaDigits += 1
                    }
                } else {
                    droppedIntDigits += 1
                }
                i += 1
            }
        }
        var isInteger = true
        var fractionDigits = 0
        if i < end && base[i] == ASCII.dot {
            isInteger = false
            i += 1
            guard isDigit(i) else { throw error("invalid number: expected a digit after '.'", at: i) }
            while isDigit(i) {
                if !overflow && mantissaDigits < 19 {
                    mantissa = mantissa &* 10 &+ UInt64(base[i] - ASCII.zero)
                    if mantissa != 0 { mantissaDigits += 1 }
                    fractionDigits += 1
                } else {
                    overflow = true
                }
                i += 1
            }
        }
        var exponent = 0
        if i < end && (base[i] == 0x65 || base[i] == 0x45) {
            isInteger = false
            i += 1
            var expNegative = false
            if i < end && (base[i] == ASCII.plus || base[i] == ASCII.minus) {
                expNegative = base[i] == ASCII.minus
                i += 1
            }
            guard isDigit(i) else { throw error("invalid number: expected a digit in the exponent", at: i) }
            while isDigit(i) {
                if exponent < 100_000 { exponent = exponent * 10 + Int(base[i] - ASCII.zero) }
                i += 1
            }
            if expNegative { exponent = -exponent }
        }

        if isInteger {
            if !overflow {
                if negative {
                    if mantissa <= UInt64(Int64.max) + 1 { return .integer(Int64(truncatingIfNeeded: 0 &- mantissa)) }
                } else if mantissa <= UInt64(Int64.max) {
                    return .integer(Int64(mantissa))
                }
            }
            throw error("integer out of range (does not fit in 64 bits)", at: start)
        }

        // Fast exact path (Clinger): mantissa < 2^53 and a power of ten that is exact in a Double.
        let exp10 = exponent - fractionDigits + droppedIntDigits
        if !overflow && mantissa < (1 << 53) && exp10 >= -22 && exp10 <= 22 {
            var d = Double(mantissa)
            d = exp10 < 0 ? d / exactPowersOfTen[-exp10] : d * exactPowersOfTen[exp10]
            return .double(negative ? -d : d)
        }
        // General case: the standard library's correctly rounded conversion (locale-independent).
        let text = String(decoding: UnsafeBufferPointer(start: base + start, count: i - start), as: UTF8.self)
        guard let d = Double(text) else { throw error("invalid number", at: start) }
        // Beyond ±1.8e308 the conversion gives an infinity, which JSON cannot carry: it would come back as
        // `null` (found by Fuzz/run framer). Refuse it, as integers out of range are refused.
        guard d.isFinite else { throw error("number out of range (beyond the 64-bit floating-point range)", at: start) }
        return .double(d)
    }
}

nonisolated(unsafe) private let emptyByte = UnsafeMutablePointer<UInt8>.allocate(capacity: 1)

extension String {
    fileprivate var trimmingQuotes: String {
        if hasPrefix("'") && hasSuffix("'") && count >= 3 { return String(dropFirst().dropLast()) }
        return self
    }
}

extension JSONObject {
    /// Builds a map from parsed members; a repeated key keeps its first position and its last value.
    init(parsedEntries entries: ArraySlice<Entry>) {
        let n = entries.count
        if n <= JSONObject.indexThreshold {
            // Pairwise check; comparing lengths first skips most string comparisons.
            var unique = true
            var a = entries.startIndex
            outer: while a < entries.endIndex {
                var b = a + 1
                while b < entries.endIndex {
                    let ka = entries[a].key
                    let kb = entries[b].key
                    if ka.utf8.count == kb.utf8.count && ka == kb {
                        unique = false
                        break outer
                    }
                    b += 1
                }
                a += 1
            }
            if unique {
                self.init(uniqueEntries: Array(entries))
                return
            }
        }
        self.init(minimumCapacity: n)
        for e in entries { updateValue(e.value, forKey: e.key) }
    }
}
