// JSONFramer: finds the end of one JSON command in a byte stream (Kea's JSONFeed rules, spec §2 and §4).

/// Why the framer rejected its input. `text` is the exact answer text (result 1) for the client.
///
/// Thread contract: a plain value, `Sendable`. Kea counterpart: `JSONFeed`'s error message (Kea has no size
/// or depth limit in the feed).
public struct JSONFramerError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The kind of failure.
    public enum Kind: Sendable, Equatable {
        /// The first significant byte (after whitespace and comments) was not `{` or `[`.
        case invalidFirstCharacter(UInt8)
        /// More than `limit` bytes arrived without a complete value.
        case tooLarge(limit: Int)
        /// Lists and maps nested deeper than `limit`.
        case tooDeep(limit: Int)
    }

    /// The kind of failure.
    public var kind: Kind

    /// Creates an error of the given kind.
    public init(_ kind: Kind) { self.kind = kind }

    /// The answer text: `invalid first character X` (X printable ASCII as is; a control byte or a byte >= 0x80
    /// as the six characters `\u00XX`, lowercase hex, so the text stays valid UTF-8),
    /// `command too large: more than N bytes`, or
    /// `nesting too deep: more than N levels of lists and maps`.
    public var text: String {
        switch kind {
        case .invalidFirstCharacter(let b):
            return "invalid first character " + JSONFramerError.show(b)
        case .tooLarge(let limit):
            return "command too large: more than \(limit) bytes"
        case .tooDeep(let limit):
            return "nesting too deep: more than \(limit) levels of lists and maps"
        }
    }

    public var description: String { text }

    static func show(_ b: UInt8) -> String {
        if b > 0x20 && b < 0x7F { return String(Character(Unicode.Scalar(b))) }
        return "\\u00" + hex2(b)
    }
}

/// Incremental framer that finds the end of one JSON command in a byte stream, following Kea's JSONFeed.
///
/// Feed it chunks of any size (down to 1 byte) as they arrive; it reports when the outermost `{…}` or `[…]`
/// has closed. Rules (normative spec §2 and §4):
/// - Before the value, space, TAB, CR, LF and comments (`# …` to end of line, `// …` to end of line,
///   `/* … */`) are skipped. The first significant byte must be `{` or `[`, otherwise the framer fails with
///   ``JSONFramerError/Kind/invalidFirstCharacter(_:)`` (also for a `/` that does not start a comment).
/// - Inside the value, `{`/`[` raise and `}`/`]` lower a depth counter (kinds are not matched: the parser
///   rejects `{ ]`). Inside strings, brackets do not count and a backslash escapes the next byte.
/// - Comments inside the value (outside strings) are removed from ``valueBytes``; the newlines that end or sit
///   inside them are kept so the parser's line numbers stay right.
/// - The value is complete when the depth returns to 0; ``feed(_:)-(UnsafeRawBufferPointer)`` then reports how
///   many bytes of that chunk were consumed; the rest is ignored (Kea ignores trailing data too).
/// - Limits, enforced while streaming: at most `maxSize` bytes in total (whitespace and comments before
///   the value included) and at most `maxDepth` nesting levels. The framer keeps no stack, only a counter, so
///   any input (1 000 000 `[` included) is rejected in constant stack space.
///
/// Performance: a table-driven scan over the chunk, bulk copies of runs to ``valueBytes``, no per-byte
/// allocation.
///
/// Thread contract: a value type; use one framer per connection on the loop thread. Kea counterpart:
/// `isc::config::JSONFeed` (`postBuffer`, `poll`, `needData`, `feedOk`, `getProcessedText`).
public struct JSONFramer: Sendable {
    /// Default maximum size of a command: 16 MiB.
    public static let defaultMaxSize = 16 * 1024 * 1024
    /// Default maximum nesting depth: 100, as current Kea.
    public static let defaultMaxDepth = 100

    /// Outcome of feeding a chunk.
    public enum FeedResult: Sendable, Equatable {
        /// The value is not complete yet; feed more bytes.
        case needMoreData
        /// The value is complete. `consumed` bytes of this chunk belong to it (or to what preceded it); the
        /// remaining `chunk.count - consumed` bytes are trailing data, to be ignored. Feeding again after
        /// completion returns `.complete(consumed: 0)`.
        case complete(consumed: Int)
        /// The input is rejected; answer with `error.text` (result 1) and close. Sticky.
        case failed(JSONFramerError)
    }

    /// The maximum number of bytes accepted before the value must be complete.
    public let maxSize: Int
    /// The maximum nesting depth of lists and maps.
    public let maxDepth: Int

    /// The value's text from its first `{`/`[` on, comments removed: complete once ``isComplete``.
    public private(set) var valueBytes: [UInt8] = []
    /// Bytes consumed so far, everything before the value included.
    public private(set) var totalBytesConsumed = 0
    /// Whether the first `{` or `[` has been seen.
    public private(set) var hasStarted = false
    /// The current nesting depth (0 before the value starts and after it completes).
    public private(set) var depth = 0

    private var state: LexState = .preamble
    private var valueStartOffset = 0
    private var failure: JSONFramerError?

    private enum LexState: UInt8, Sendable {
        case preamble, preambleSlash, preambleLineComment, preambleBlockComment, preambleBlockStar
        case value, string, stringEscape, valueSlash, lineComment, blockComment, blockStar
        case complete, failed
    }

    /// Creates a framer with the given limits.
    /// - Parameters:
    ///   - maxSize: maximum bytes before the value completes (default 16 MiB); must be positive.
    ///   - maxDepth: maximum nesting depth (default 100); must be positive.
    public init(maxSize: Int = JSONFramer.defaultMaxSize, maxDepth: Int = JSONFramer.defaultMaxDepth) {
        precondition(maxSize > 0 && maxDepth > 0, "JSONFramer limits must be positive")
        self.maxSize = maxSize
        self.maxDepth = maxDepth
    }

    /// Whether the value is complete.
    public var isComplete: Bool { state == .complete }
    /// The failure, if the input was rejected.
    public var error: JSONFramerError? { failure }
    /// Whether more bytes are needed (neither complete nor failed).
    public var needsData: Bool { state != .complete && state != .failed }

    /// Bytes received from the first `{`/`[` on (raw, comments included); 0 before it. This is N in the
    /// timeout text `Connection over control channel timed out, discarded partial command of N bytes`.
    public var partialCommandByteCount: Int { hasStarted ? totalBytesConsumed - valueStartOffset : 0 }

    /// Forgets everything, ready for a new command with the same limits. Keeps the buffer's capacity.
    public mutating func reset() {
        valueBytes.removeAll(keepingCapacity: true)
        totalBytesConsumed = 0
        hasStarted = false
        depth = 0
        state = .preamble
        valueStartOffset = 0
        failure = nil
    }

    /// Hands over the captured value bytes (leaving ``valueBytes`` empty) without copying.
    public mutating func takeValueBytes() -> [UInt8] {
        var out: [UInt8] = []
        swap(&out, &valueBytes)
        return out
    }

    /// Parses the complete value with ``JSONParser`` (same depth limit).
    /// - Throws: ``JSONParseError``; also if the value is not complete yet (reason `incomplete command`).
    public func parse() throws(JSONParseError) -> JSONValue {
        guard isComplete else {
            throw JSONParseError(reason: "incomplete command", offset: valueBytes.count, line: 1, column: 1)
        }
        return try JSONParser.parse(valueBytes, maxDepth: maxDepth)
    }

    /// Feeds a chunk of a byte array. See ``feed(_:)-(UnsafeRawBufferPointer)``.
    public mutating func feed(_ chunk: [UInt8]) -> FeedResult {
        chunk.withUnsafeBytes { feed($0) }
    }

    /// Feeds the next chunk of the stream.
    ///
    /// - Returns: `.needMoreData`, `.complete(consumed:)` (bytes of this chunk up to and including the closing
    ///   bracket; the rest is trailing data) or `.failed(error)` (with the answer text in `error.text`).
    public mutating func feed(_ chunk: UnsafeRawBufferPointer) -> FeedResult {
        switch state {
        case .complete: return .complete(consumed: 0)
        case .failed: return .failed(failure!)
        default: break
        }
        let total = chunk.count
        guard total > 0, let raw = chunk.baseAddress else { return .needMoreData }
        let p = raw.assumingMemoryBound(to: UInt8.self)
        // Never look past the size limit: if the value is not complete within it, that is the error.
        let allowed = maxSize - totalBytesConsumed
        let n = min(total, allowed)

        var st = state
        var depth = self.depth
        var k = 0
        var run = 0  // start of bytes still to copy to valueBytes (meaningful in copying states)

        // The scan runs in this frame, not in a closure: captured mutable locals cost a runtime exclusivity
        // check on each entry (13 per command when it ran inside withUnsafeBufferPointer).
        @inline(__always) func flush(_ upTo: Int) {
            if run < upTo { valueBytes.append(contentsOf: UnsafeBufferPointer(start: p + run, count: upTo - run)) }
        }
        func finish(_ st: LexState, _ consumed: Int) {
            self.state = st
            self.depth = depth
            self.totalBytesConsumed += consumed
        }
        func fail(_ kind: JSONFramerError.Kind, _ consumed: Int) -> FeedResult {
            let e = JSONFramerError(kind)
            failure = e
            finish(.failed, consumed)
            return .failed(e)
        }

        while k < n {
            switch st {
            case .value:
                while k < n && !FramerScan.isSpecial(p[k]) { k += 1 }
                if k == n { break }
                switch p[k] {
                case 0x22:  // "
                    st = .string
                    k += 1
                case 0x7B, 0x5B:  // { [
                    depth += 1
                    k += 1
                    if depth > maxDepth { return fail(.tooDeep(limit: maxDepth), k) }
                case 0x7D, 0x5D:  // } ]
                    depth -= 1
                    k += 1
                    if depth == 0 {
                        flush(k)
                        finish(.complete, k)
                        return .complete(consumed: k)
                    }
                case 0x23:  // #
                    flush(k)
                    st = .lineComment
                    k += 1
                default:  // '/': a comment, or a plain byte the parser will reject
                    flush(k)
                    st = .valueSlash
                    k += 1
                }
            case .string:
                while k < n && p[k] != 0x22 && p[k] != 0x5C { k += 1 }
                if k == n { break }
                st = p[k] == 0x22 ? .value : .stringEscape
                k += 1
            case .stringEscape:
                st = .string
                k += 1
            case .valueSlash:
                if p[k] == 0x2F {
                    st = .lineComment
                    k += 1
                } else if p[k] == 0x2A {
                    st = .blockComment
                    k += 1
                } else {
                    valueBytes.append(0x2F)  // the held slash; reprocess this byte as part of the value
                    run = k
                    st = .value
                }
            case .lineComment:
                while k < n && p[k] != 0x0A { k += 1 }
                if k == n { break }
                run = k  // keep the newline
                st = .value
                k += 1
            case .blockComment:
                while k < n && p[k] != 0x2A && p[k] != 0x0A { k += 1 }
                if k == n { break }
                if p[k] == 0x0A { valueBytes.append(0x0A) } else { st = .blockStar }
                k += 1
            case .blockStar:
                let b = p[k]
                k += 1
                if b == 0x2F {
                    st = .value
                    run = k
                } else if b == 0x0A {
                    valueBytes.append(0x0A)
                    st = .blockComment
                } else if b != 0x2A {
                    st = .blockComment
                }
            case .preamble:
                while k < n && FramerScan.isWhitespace(p[k]) { k += 1 }
                if k == n { break }
                let b = p[k]
                if b == 0x7B || b == 0x5B {
                    hasStarted = true
                    valueStartOffset = totalBytesConsumed + k
                    run = k
                    depth = 1
                    st = .value
                    k += 1
                } else if b == 0x23 {
                    st = .preambleLineComment
                    k += 1
                } else if b == 0x2F {
                    st = .preambleSlash
                    k += 1
                } else {
                    return fail(.invalidFirstCharacter(b), k)
                }
            case .preambleSlash:
                if p[k] == 0x2F {
                    st = .preambleLineComment
                } else if p[k] == 0x2A {
                    st = .preambleBlockComment
                } else {
                    return fail(.invalidFirstCharacter(0x2F), k)
                }
                k += 1
            case .preambleLineComment:
                while k < n && p[k] != 0x0A { k += 1 }
                if k == n { break }
                st = .preamble
                k += 1
            case .preambleBlockComment:
                while k < n && p[k] != 0x2A { k += 1 }
                if k == n { break }
                st = .preambleBlockStar
                k += 1
            case .preambleBlockStar:
                if p[k] == 0x2F {
                    st = .preamble
                } else if p[k] != 0x2A {
                    st = .preambleBlockComment
                }
                k += 1
            case .complete, .failed:
                preconditionFailure("JSONFramer: terminal state inside the scan loop")
            }
        }
        // End of the allowed part of the chunk.
        if st == .value || st == .string || st == .stringEscape { flush(n) }
        if n < total { return fail(.tooLarge(limit: maxSize), n) }
        finish(st, n)
        return .needMoreData
    }
}

/// Byte classes for the framer's scan loops.
private enum FramerScan {
    /// Whether `b` needs attention inside a value outside strings: `" # / [ ] { }`. Two 64-bit masks, no table.
    @inline(__always)
    static func isSpecial(_ b: UInt8) -> Bool {
        // Bits 0x22, 0x23, 0x2F; and 0x5B, 0x5D, 0x7B, 0x7D relative to 64.
        let low: UInt64 = (1 << 0x22) | (1 << 0x23) | (1 << 0x2F)
        let high: UInt64 = (1 << (0x5B - 64)) | (1 << (0x5D - 64)) | (1 << (0x7B - 64)) | (1 << (0x7D - 64))
        if b < 64 { return (low >> UInt64(b)) & 1 != 0 }
        if b < 128 { return (high >> UInt64(b &- 64)) & 1 != 0 }
        return false
    }

    @inline(__always)
    static func isWhitespace(_ b: UInt8) -> Bool { b == 0x20 || b == 0x09 || b == 0x0A || b == 0x0D }
}
