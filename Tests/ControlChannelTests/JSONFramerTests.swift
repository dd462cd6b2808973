import Testing

@testable import ControlChannel

/// A small deterministic generator (SplitMix64) so random splits are reproducible.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Result of framing a whole input split into chunks.
struct Framed: Equatable {
    var status: JSONFramer.FeedResult
    var value: [UInt8]
    /// Total bytes consumed up to the completion (or failure).
    var consumed: Int
}

@Suite("JSONFramer")
struct JSONFramerTests {
    /// Feeds `input` split at `cuts` (sorted offsets) and stops at the first terminal result.
    func frame(_ input: [UInt8], cuts: [Int], framer: JSONFramer = JSONFramer()) -> Framed {
        var framer = framer
        var start = 0
        var consumed = 0
        for end in cuts + [input.count] where end > start || end == input.count {
            let chunk = Array(input[start..<max(start, end)])
            let r = framer.feed(chunk)
            switch r {
            case .needMoreData:
                consumed += chunk.count
            case .complete(let n):
                return Framed(status: .complete(consumed: 0), value: framer.valueBytes, consumed: consumed + n)
            case .failed:
                // What was captured before a failure depends on the chunking; it is discarded anyway.
                return Framed(status: r, value: [], consumed: framer.totalBytesConsumed)
            }
            start = max(start, end)
        }
        return Framed(status: .needMoreData, value: framer.valueBytes, consumed: consumed)
    }

    func frame(_ text: String, chunk: Int? = nil) -> Framed {
        let bytes = Array(text.utf8)
        let cuts = chunk.map { stride(from: $0, to: bytes.count, by: $0).map { $0 } } ?? []
        return frame(bytes, cuts: cuts)
    }

    func randomCuts(_ count: Int, _ rng: inout SplitMix64) -> [Int] {
        guard count > 1 else { return [] }
        let n = Int.random(in: 0...min(count - 1, 12), using: &rng)
        return Set((0..<n).map { _ in Int.random(in: 1..<count, using: &rng) }).sorted()
    }

    /// Checks that every split (single bytes, random) gives the same result as one chunk.
    func checkAllSplits(_ text: String, _ expected: Framed, sourceLocation: SourceLocation = #_sourceLocation) {
        let bytes = Array(text.utf8)
        #expect(frame(bytes, cuts: []) == expected, "whole", sourceLocation: sourceLocation)
        #expect(frame(bytes, cuts: Array(0..<bytes.count)) == expected, "1-byte chunks", sourceLocation: sourceLocation)
        var rng = SplitMix64(seed: UInt64(bytes.count))
        for _ in 0..<200 {
            let cuts = randomCuts(bytes.count, &rng)
            #expect(frame(bytes, cuts: cuts) == expected, "cuts \(cuts)", sourceLocation: sourceLocation)
        }
    }

    func complete(_ value: String, consumed: Int) -> Framed {
        Framed(status: .complete(consumed: 0), value: Array(value.utf8), consumed: consumed)
    }

    func failed(_ kind: JSONFramerError.Kind, value: String = "", consumed: Int) -> Framed {
        Framed(status: .failed(JSONFramerError(kind)), value: Array(value.utf8), consumed: consumed)
    }

    @Test func simpleCommand() {
        let cmd = #"{ "command": "list-commands" }"#
        checkAllSplits(cmd, complete(cmd, consumed: cmd.utf8.count))
        checkAllSplits("[1, [2, {}], 3]", complete("[1, [2, {}], 3]", consumed: 15))
    }

    @Test func leadingWhitespaceIsSkippedAndNotCaptured() {
        let input = " \t\r\n  {\"command\":\"x\"}"
        checkAllSplits(input, complete("{\"command\":\"x\"}", consumed: input.utf8.count))
    }

    @Test func commentsBeforeTheValue() {
        let input = "# hash comment {\n// line comment [\n/* block ** { [ \n */ {\"a\":1}"
        checkAllSplits(input, complete("{\"a\":1}", consumed: input.utf8.count))
        checkAllSplits("/**/[]", complete("[]", consumed: 6))
        checkAllSplits("/***/[]", complete("[]", consumed: 7))
    }

    @Test func commentsInsideTheValueAreStrippedKeepingNewlines() throws {
        let input = "{ # first\n\"a\": 1, // second {\n\"b\": /* x { [ \n y */ 2 /**/}"
        let expected = "{ \n\"a\": 1, \n\"b\": \n 2 }"
        checkAllSplits(input, complete(expected, consumed: input.utf8.count))
        var framer = JSONFramer()
        _ = framer.feed(Array(input.utf8))
        #expect(try framer.parse() == ["a": 1, "b": 2])
    }

    @Test func slashThatIsNotACommentIsKept() {
        // Inside the value a lone '/' is kept (the parser rejects it); the following byte is processed normally.
        checkAllSplits("[1 /\"]\" ]", complete("[1 /\"]\" ]", consumed: 9))
        checkAllSplits("[1 /]", complete("[1 /]", consumed: 5))
        checkAllSplits("[/{]]", complete("[/{]]", consumed: 5))
    }

    @Test func stringsHideBracketsAndCommentMarkers() {
        let input = #"{"a": "} ] { [ # // /* \" \\", "b": "\\"}"#
        checkAllSplits(input, complete(input, consumed: input.utf8.count))
        let escapedQuote = #"["\"]"]"#
        checkAllSplits(escapedQuote, complete(escapedQuote, consumed: escapedQuote.utf8.count))
    }

    @Test func trailingBytesAreNotConsumed() {
        let input = "[ 1, 2] 3, 4]"
        checkAllSplits(input, complete("[ 1, 2]", consumed: 7))
        var framer = JSONFramer()
        #expect(framer.feed(Array("{\"a\":1}{\"b\":2}".utf8)) == .complete(consumed: 7))
        #expect(framer.feed(Array("more".utf8)) == .complete(consumed: 0))
        #expect(framer.isComplete)
        #expect(!framer.needsData)
    }

    @Test func invalidFirstCharacter() {
        checkAllSplits("utter nonsense", failed(.invalidFirstCharacter(0x75), consumed: 0))
        #expect(JSONFramerError(.invalidFirstCharacter(0x75)).text == "invalid first character u")
        checkAllSplits("  \n \"x\"", failed(.invalidFirstCharacter(0x22), consumed: 4))
        checkAllSplits("# c\n 42", failed(.invalidFirstCharacter(0x34), consumed: 5))
        checkAllSplits("/x{}", failed(.invalidFirstCharacter(0x2F), consumed: 1))
        #expect(JSONFramerError(.invalidFirstCharacter(0x2F)).text == "invalid first character /")
        let high = frame([0xEF, 0xBB, 0xBF, 0x7B, 0x7D], cuts: [])
        #expect(high.status == .failed(JSONFramerError(.invalidFirstCharacter(0xEF))))
        #expect(JSONFramerError(.invalidFirstCharacter(0xEF)).text == "invalid first character \\u00ef")
        #expect(JSONFramerError(.invalidFirstCharacter(0x01)).text == "invalid first character \\u0001")
        #expect(JSONFramerError(.invalidFirstCharacter(0x7F)).text == "invalid first character \\u007f")
        // The answer text is valid UTF-8 and serializes with an escaped backslash.
        let answer = CommandManager.answerBytes(for: JSONFramerError(.invalidFirstCharacter(0xEF)))
        #expect(
            String(decoding: answer, as: UTF8.self)
                == #"{"arguments":{},"result":1,"text":"invalid first character \\u00ef"}"#)
    }

    @Test func failureIsSticky() {
        var framer = JSONFramer()
        let r = framer.feed(Array("x".utf8))
        #expect(r == .failed(JSONFramerError(.invalidFirstCharacter(0x78))))
        #expect(framer.feed(Array("{}".utf8)) == r)
        #expect(framer.error == JSONFramerError(.invalidFirstCharacter(0x78)))
    }

    @Test func sizeLimit() {
        let small = JSONFramer(maxSize: 10)
        // Exactly at the limit: fine.
        #expect(frame(Array("[1,2,3,45]".utf8), cuts: [], framer: small).status == .complete(consumed: 0))
        // Completes within the limit, trailing bytes beyond it: fine.
        #expect(frame(Array("[1]        xxxxxxx".utf8), cuts: [], framer: small).status == .complete(consumed: 0))
        // One byte too many.
        let input = Array("[1,2,3,456]".utf8)
        let expected = Framed(
            status: .failed(JSONFramerError(.tooLarge(limit: 10))), value: [], consumed: 10)
        #expect(frame(input, cuts: [], framer: small) == expected)
        #expect(frame(input, cuts: Array(0..<input.count), framer: small) == expected)
        // Whitespace before the value counts too.
        let padded = Array((String(repeating: " ", count: 11) + "[]").utf8)
        #expect(frame(padded, cuts: [3, 7], framer: small).status == .failed(JSONFramerError(.tooLarge(limit: 10))))
        #expect(JSONFramerError(.tooLarge(limit: 16_777_216)).text == "command too large: more than 16777216 bytes")
        #expect(JSONFramer().maxSize == 16 * 1024 * 1024)
    }

    @Test func depthLimit() {
        let ok = String(repeating: "[", count: 100) + String(repeating: "]", count: 100)
        #expect(frame(ok).status == .complete(consumed: 0))
        let deep = String(repeating: "[", count: 101)
        checkAllSplits(deep, failed(.tooDeep(limit: 100), value: "", consumed: 101))
        #expect(
            JSONFramerError(.tooDeep(limit: 100)).text == "nesting too deep: more than 100 levels of lists and maps")
        let custom = JSONFramer(maxDepth: 3)
        #expect(frame(Array("[[[]]]".utf8), cuts: [], framer: custom).status == .complete(consumed: 0))
        #expect(
            frame(Array("[{\"a\":[[]]}]".utf8), cuts: [], framer: custom).status
                == .failed(JSONFramerError(.tooDeep(limit: 3))))
        // Brackets inside strings do not count.
        let inString = "[\"" + String(repeating: "[", count: 500) + "\"]"
        #expect(frame(inString).status == .complete(consumed: 0))
    }

    @Test func millionLevelsFailClearlyWithoutStackGrowth() {
        let input = [UInt8](repeating: 0x5B, count: 1_000_000)
        var framer = JSONFramer()
        let r = framer.feed(input)
        guard case .failed(let e) = r else {
            Issue.record("expected a failure, got \(r)")
            return
        }
        #expect(e.text.contains("nesting too deep"))
        #expect(e.text.contains("100"))
        // Even with the depth limit raised to the maximum, a million levels only cost a counter.
        var unlimited = JSONFramer(maxDepth: Int.max)
        #expect(unlimited.feed(input) == .needMoreData)
        #expect(unlimited.depth == 1_000_000)
        #expect(unlimited.feed([UInt8](repeating: 0x5D, count: 1_000_000)) == .complete(consumed: 1_000_000))
    }

    @Test func partialCommandByteCount() {
        var framer = JSONFramer()
        #expect(framer.feed(Array("  # c\n".utf8)) == .needMoreData)
        #expect(framer.partialCommandByteCount == 0)
        #expect(!framer.hasStarted)
        #expect(framer.feed(Array("{ \"command\": \"foo\" ".utf8)) == .needMoreData)
        #expect(framer.partialCommandByteCount == 19)  // Kea's example
        #expect(framer.hasStarted)
        #expect(framer.totalBytesConsumed == 25)
        #expect(framer.feed(Array("/* c */".utf8)) == .needMoreData)
        #expect(framer.partialCommandByteCount == 26)
        #expect(framer.valueBytes.count == 19)
    }

    @Test func resetAndTake() throws {
        var framer = JSONFramer()
        #expect(framer.feed(Array("{\"a\":1}".utf8)) == .complete(consumed: 7))
        #expect(try framer.parse() == ["a": 1])
        #expect(framer.takeValueBytes() == Array("{\"a\":1}".utf8))
        framer.reset()
        #expect(framer.needsData)
        #expect(framer.feed(Array("[2]".utf8)) == .complete(consumed: 3))
        #expect(try framer.parse() == [2])
        var incomplete = JSONFramer()
        _ = incomplete.feed(Array("[".utf8))
        #expect(throws: JSONParseError.self) { try incomplete.parse() }
    }

    @Test func randomDocumentsUnderRandomSplits() throws {
        // Random JSON-with-comments documents: the framer must extract the same value for any split.
        var rng = SplitMix64(seed: 42)
        for round in 0..<100 {
            var text = ""
            var plain = ""
            func gen(_ depth: Int) {
                let pick = depth > 4 ? Int.random(in: 0..<3, using: &rng) : Int.random(in: 0..<6, using: &rng)
                switch pick {
                case 0:
                    let n = Int.random(in: -1000...1000, using: &rng)
                    text += "\(n)"
                    plain += "\(n)"
                case 1:
                    let s = ["\"a\\\"}\"", "\"[{\"", "\"é//\"", "\"/*x*/\"", "\"#\"", "\"\\\\\""].randomElement(
                        using: &rng)!
                    text += s
                    plain += s
                case 2:
                    text += "true"
                    plain += "true"
                case 3, 4:
                    text += "["
                    plain += "["
                    for i in 0..<Int.random(in: 0...3, using: &rng) {
                        if i > 0 {
                            text += ","
                            plain += ","
                        }
                        if Bool.random(using: &rng) { text += "/* c ] */" }
                        gen(depth + 1)
                    }
                    text += "]"
                    plain += "]"
                default:
                    text += "{"
                    plain += "{"
                    for i in 0..<Int.random(in: 0...3, using: &rng) {
                        if i > 0 {
                            text += ","
                            plain += ","
                        }
                        text += "\"k\(i)\":"
                        plain += "\"k\(i)\":"
                        if Bool.random(using: &rng) {
                            text += "# c }\n"
                            plain += "\n"
                        }
                        gen(depth + 1)
                    }
                    text += "}"
                    plain += "}"
                }
            }
            text += "["
            plain += "["
            gen(0)
            text += "]"
            plain += "]"
            let input = " // lead\n" + text + " trailing"
            let bytes = Array(input.utf8)
            let expected = Framed(
                status: .complete(consumed: 0), value: Array(plain.utf8), consumed: bytes.count - " trailing".utf8.count
            )
            for _ in 0..<20 {
                let cuts = randomCuts(bytes.count, &rng)
                let got = frame(bytes, cuts: cuts)
                #expect(got == expected, "round \(round) cuts \(cuts)")
            }
            let parsed = try JSONParser.parse(Array(plain.utf8))
            #expect(parsed.arrayValue != nil)
        }
    }
}
