import Testing

@testable import ControlChannel

@Suite("JSON parser and serializer")
struct JSONTests {
    func parse(_ text: String) throws -> JSONValue { try JSONParser.parse(text) }

    func parseError(_ bytes: [UInt8], maxDepth: Int = 100) -> JSONParseError? {
        do {
            _ = try JSONParser.parse(bytes, maxDepth: maxDepth)
            return nil
        } catch {
            return error
        }
    }

    func parseError(_ text: String) -> JSONParseError? { parseError(Array(text.utf8)) }

    @Test func scalars() throws {
        #expect(try parse("null") == .null)
        #expect(try parse("true") == .bool(true))
        #expect(try parse(" false ") == .bool(false))
        #expect(try parse("\"x\"") == .string("x"))
        #expect(try parse("0") == .integer(0))
        #expect(try parse("-0") == .integer(0))
        #expect(try parse("42") == .integer(42))
        #expect(try parse("-17") == .integer(-17))
    }

    @Test func integersAndDoublesAreDistinct() throws {
        #expect(try parse("1") == .integer(1))
        #expect(try parse("1.0") == .double(1.0))
        #expect(try parse("1e2") == .double(100))
        #expect(try parse("1E+2") == .double(100))
        #expect(try parse("-2.5e-3") == .double(-0.0025))
        #expect(JSONValue.integer(1) != JSONValue.double(1))
        #expect(try parse("9223372036854775807") == .integer(Int64.max))
        #expect(try parse("-9223372036854775808") == .integer(Int64.min))
        #expect(parseError("9223372036854775808")?.reason.contains("out of range") == true)
        #expect(parseError("-9223372036854775809")?.reason.contains("out of range") == true)
        #expect(parseError("123456789012345678901234567890") != nil)
    }

    @Test func doublesAreCorrectlyRounded() throws {
        let samples = [
            "0.1", "0.3", "3.141592653589793", "1e-300", "1.7976931348623157e308", "5e-324",
            "2.2250738585072014e-308", "123456789012345678.5", "0.000000000000000000000000000001",
            "9007199254740993.0", "1.00000000000000011102", "4.9406564584124654e-324", "100000000000000000000000.0",
            "0.1e1", "12345.6789e-3", "-0.0", "1e-400",
        ]
        for s in samples {
            #expect(try parse(s) == .double(Double(s)!), "\(s)")
        }
    }

    /// Fuzz finding (Fuzz/run framer): `1.5e3372036854775808` parsed to an infinity, which serializes as `null`, so
    /// an echoed or stored value silently changed. Numbers beyond the double range are now parse errors.
    @Test func doublesBeyondTheRangeAreErrors() throws {
        let beyond = ["1e400", "-1e400", "1.5e3372036854775808", "-6666666666666e666609", "1.8e308"]
        for s in beyond {
            #expect(parseError(s)?.reason.contains("out of range") == true, "\(s)")
        }
        #expect(try parse("1.7976931348623157e308") == .double(.greatestFiniteMagnitude))
        #expect(try parse("1e-400") == .double(0))
        var answer: [UInt8] = []
        let command = #"{"command":"x","arguments":{"x":[1.5e3372036854775808]}}"#
        CommandManager().processCommandBytes(Array(command.utf8)) { answer = $0 }
        let parsed = try JSONParser.parse(answer)
        #expect(parsed["result"] == 1)
        #expect(parsed["text"]?.stringValue?.hasPrefix("number out of range") == true)
    }

    @Test func invalidNumbers() {
        for s in ["01", "-", "1.", ".5", "1e", "1e+", "+1", "0x10", "NaN", "Infinity", "-Infinity", "1.5.2", "--1"] {
            #expect(parseError(s) != nil, "\(s)")
        }
    }

    @Test func doublesRoundTrip() throws {
        let values: [Double] = [
            0.1, 1.0, -0.0, 1e-5, 1e300, .leastNonzeroMagnitude, .pi, 123456789.125, 1e16, 2.5e-8,
            Double.greatestFiniteMagnitude,
        ]
        for d in values {
            let text = JSONValue.double(d).serializedString()
            #expect(try parse(text) == .double(d), "\(d) -> \(text)")
        }
        #expect(JSONValue.double(.nan).serializedString() == "null")
        #expect(JSONValue.double(.infinity).serializedString() == "null")
        #expect(JSONValue.double(1).serializedString() == "1.0")
        #expect(JSONValue.integer(Int64.min).serializedString() == "-9223372036854775808")
        #expect(JSONValue.integer(0).serializedString() == "0")
    }

    @Test func escapes() throws {
        #expect(try parse(#""a\"b\\c\/d\b\f\n\r\t""#) == .string("a\"b\\c/d\u{8}\u{C}\n\r\t"))
        #expect(try parse(#""\u0041\u00e9\u20AC\u0000""#) == .string("Aé€\u{0}"))
        #expect(parseError(#""\q""#)?.reason.contains("invalid escape") == true)
        #expect(parseError(#""\u12G4""#)?.reason.contains("hex digit") == true)
        #expect(parseError(#""\u12""#) != nil)
    }

    @Test func surrogatePairs() throws {
        #expect(try parse(#""\ud83d\ude00""#) == .string("😀"))
        #expect(try parse(#""\uD834\uDD1E x""#) == .string("𝄞 x"))
        #expect(parseError(#""\ud83d""#)?.reason.contains("unpaired") == true)
        #expect(parseError(#""\ud83d\u0041""#)?.reason.contains("unpaired") == true)
        #expect(parseError(#""\ude00""#)?.reason.contains("unpaired") == true)
        #expect(parseError(#""\ud83dx""#)?.reason.contains("unpaired") == true)
    }

    @Test func invalidUTF8IsRejected() {
        let cases: [[UInt8]] = [
            [0x22, 0xFF, 0x22],  // invalid byte
            [0x22, 0xC3, 0x22],  // truncated 2-byte sequence
            [0x22, 0xC0, 0xAF, 0x22],  // overlong '/'
            [0x22, 0xE0, 0x80, 0xAF, 0x22],  // overlong 3-byte
            [0x22, 0xED, 0xA0, 0x80, 0x22],  // encoded surrogate U+D800
            [0x22, 0xF4, 0x90, 0x80, 0x80, 0x22],  // above U+10FFFF
            [0x22, 0xF8, 0x88, 0x80, 0x80, 0x80, 0x22],  // 5-byte form
            [0x22, 0x80, 0x22],  // lone continuation
            [0x22, 0xE2, 0x82],  // truncated at end
        ]
        for bytes in cases {
            let e = parseError(bytes)
            #expect(e != nil, "\(bytes)")
            #expect(e?.reason.contains("UTF-8") == true, "\(bytes): \(String(describing: e))")
        }
        let e = parseError([0x7B, 0x22, 0x61, 0x22, 0x3A, 0x22, 0x41, 0xFF, 0x22, 0x7D])
        #expect(e?.reason == "invalid UTF-8 byte 0xff in string")
        #expect(e?.offset == 7)
        #expect(e?.line == 1)
        #expect(e?.column == 8)
    }

    @Test func nonASCIIRoundTripsAsRawUTF8() throws {
        let text = "Grüße, 日本語, emoji 😀, ÿ"
        let value = JSONValue.object(["text": .string(text)])
        let bytes = value.serialized()
        // Raw UTF-8, not \u escapes.
        #expect(!bytes.contains(0x5C))
        #expect(bytes == Array("{\"text\":\"\(text)\"}".utf8))
        #expect(try JSONParser.parse(bytes) == value)
        #expect(try parse("\"\(text)\"") == .string(text))
    }

    @Test func controlCharactersAreEscaped() throws {
        let s = "a\u{0}b\u{1}\u{1F}\n\t\"\\\u{7F}"
        let text = JSONValue.string(s).serializedString()
        #expect(text == #""a\u0000b\u0001\u001f\n\t\"\\"# + "\u{7F}\"")
        #expect(try parse(text) == .string(s))
        #expect(parseError("\"a\nb\"")?.reason.contains("control character") == true)
    }

    /// Every byte value at every position of strings 1...35 bytes long (under 16 bytes: the first word and the
    /// gathered 4/2/1-byte tail; from 16: every offset in and across the 8-byte words and the overlapping last
    /// word), against a byte-at-a-time reference escaper.
    @Test func stringEscapingMatchesReferenceAtEveryWordOffset() throws {
        func reference(_ bytes: [UInt8]) -> [UInt8] {
            var out: [UInt8] = [0x22]
            for b in bytes {
                switch b {
                case 0x22: out += [0x5C, 0x22]
                case 0x5C: out += [0x5C, 0x5C]
                case 0x08: out += [0x5C, 0x62]
                case 0x0C: out += [0x5C, 0x66]
                case 0x0A: out += [0x5C, 0x6E]
                case 0x0D: out += [0x5C, 0x72]
                case 0x09: out += [0x5C, 0x74]
                case ..<0x20: out += Array("\\u00".utf8) + Array(String(format2(b)).utf8)
                default: out.append(b)
                }
            }
            return out + [0x22]
        }
        func format2(_ b: UInt8) -> String {
            let hex = Array("0123456789abcdef")
            return String([hex[Int(b >> 4)], hex[Int(b & 0xF)]])
        }
        for length in 1...35 {
            for position in 0..<length {
                for value in UInt8(0)...UInt8(0x7F) {
                    var bytes = [UInt8](repeating: 0x61, count: length)
                    bytes[position] = value
                    let string = String(decoding: bytes, as: UTF8.self)
                    #expect(
                        JSONValue.string(string).serialized() == reference(bytes),
                        "length \(length) at \(position): \(value)")
                }
            }
        }
        // Non-ASCII passes through unescaped, whatever its word alignment.
        for prefix in 0..<9 {
            let string = String(repeating: "a", count: prefix) + "é\"ü\u{1}"
            let value = try JSONParser.parse(JSONValue.string(string).serialized(), maxDepth: 10)
            #expect(value == .string(string))
        }
    }

    @Test func structures() throws {
        let v = try parse(#" { "b" : [1, 2.5, "x", null, true, {}, []], "a": {"c": {"d": [ ]}} } "#)
        #expect(v["b"]?[0] == .integer(1))
        #expect(v["b"]?[1] == .double(2.5))
        #expect(v["b"]?.arrayValue?.count == 7)
        #expect(v["a"]?["c"]?["d"] == .array([]))
        #expect(v.objectValue?.keys == ["b", "a"])
        #expect(v.serializedString() == #"{"b":[1,2.5,"x",null,true,{},[]],"a":{"c":{"d":[]}}}"#)
    }

    @Test func duplicateKeysLastWinsAtFirstPosition() throws {
        let v = try parse(#"{"a":1,"b":2,"a":3}"#)
        #expect(v.objectValue?.keys == ["a", "b"])
        #expect(v["a"] == .integer(3))
        // Large maps use the index path.
        var text = "{"
        for i in 0..<40 { text += "\"k\(i)\":\(i)," }
        text += "\"k5\":\"again\"}"
        let big = try parse(text)
        #expect(big.objectValue?.count == 40)
        #expect(big["k5"] == .string("again"))
        #expect(big["k39"] == .integer(39))
    }

    @Test func syntaxErrorsHavePositions() {
        let e = parseError("{\n  \"command\": \"x\",\n  \"arguments\": [1, 2,]\n}")
        #expect(e != nil)
        #expect(e?.line == 3)
        #expect(e?.column == 22)
        #expect(e?.description.contains("at line 3, column 22") == true)
        let bad = [
            "", "   ", "{", "[1,", "{\"a\"}", "{\"a\":}", "{a:1}", "[1 2]", "{\"a\":1,}", "[1]x", "tru", "nul",
            "'x'", "\"abc", "{\"a\":1 \"b\":2}", "[1]]", "}", "[1,]", "[,1]",
        ]
        for text in bad {
            #expect(parseError(text) != nil, "\(text)")
        }
        #expect(parseError("[1] ") == nil)
        #expect(parseError("[1]x")?.reason.contains("after the JSON value") == true)
    }

    @Test func depthLimit() throws {
        let ok = String(repeating: "[", count: 100) + String(repeating: "]", count: 100)
        #expect(try parse(ok).arrayValue != nil)
        let deep = String(repeating: "[", count: 101) + String(repeating: "]", count: 101)
        #expect(parseError(deep)?.reason.contains("nesting too deep") == true)
        #expect(parseError(Array(deep.utf8), maxDepth: 101) == nil)
        // A million levels: rejected without recursion.
        let huge = [UInt8](repeating: 0x5B, count: 1_000_000)
        #expect(parseError(huge)?.reason.contains("more than 100 levels") == true)
        let hugeMaps = [UInt8](String(repeating: "{\"a\":", count: 200_000).utf8)
        #expect(parseError(hugeMaps)?.reason.contains("nesting too deep") == true)
        // An unclosed huge nest under a huge limit: an error at the end, no stack growth.
        #expect(parseError(huge, maxDepth: 2_000_000)?.reason.contains("end of input") == true)
    }

    @Test func literalsAndAccessors() {
        let v: JSONValue = ["s": "x", "i": 3, "d": 2.5, "b": true, "n": nil, "a": [1, "two"], "o": ["k": "v"]]
        #expect(v["s"]?.stringValue == "x")
        #expect(v["i"]?.intValue == 3)
        #expect(v["d"]?.doubleValue == 2.5)
        #expect(v["i"]?.doubleValue == 3)
        #expect(v["d"]?.intValue == nil)
        #expect(v["b"]?.boolValue == true)
        #expect(v["n"]?.isNull == true)
        #expect(v["a"]?[1] == "two")
        #expect(v["a"]?[5] == nil)
        #expect(v["o"]?["k"] == "v")
        #expect(v["missing"] == nil)
        #expect(v.typeName == "map")
        #expect(v["a"]?.typeName == "list")
        #expect(v["s"]?.typeName == "string")
        #expect(v["i"]?.typeName == "integer")
        #expect(v["d"]?.typeName == "real")
        #expect(v["b"]?.typeName == "boolean")
        #expect(v["n"]?.typeName == "null")
        var m = v
        m["s"] = "y"
        m["new"] = 1
        m["i"] = nil
        #expect(m.objectValue?.keys == ["s", "d", "b", "n", "a", "o", "new"])
        var scalar: JSONValue = 5
        scalar["k"] = true
        #expect(scalar == ["k": true])
    }

    @Test func objectEqualityAndHashIgnoreOrder() {
        let a: JSONValue = ["x": 1, "y": [1, 2]]
        let b: JSONValue = ["y": [1, 2], "x": 1]
        #expect(a == b)
        #expect(a.hashValue == b.hashValue)
        #expect(a != ["x": 1, "y": [2, 1]])
        #expect(Set([a, b]).count == 1)
        // Order is still kept for serialization.
        #expect(a.serializedString() == #"{"x":1,"y":[1,2]}"#)
        #expect(b.serializedString() == #"{"y":[1,2],"x":1}"#)
    }

    @Test func largeObjectIndexStaysConsistent() {
        var o = JSONObject()
        for i in 0..<50 { o["k\(i)"] = .integer(Int64(i)) }
        o["k10"] = nil
        o["k20"] = "x"
        #expect(o.count == 49)
        #expect(o["k11"] == .integer(11))
        #expect(o["k20"] == "x")
        #expect(o.index(forKey: "k11") == 10)
        for _ in 0..<40 { o.removeValue(forKey: o.keys[0]) }
        #expect(o.count == 9)
        #expect(o["k49"] == .integer(49))
    }

    @Test func prettyPrinting() throws {
        let v: JSONValue = ["result": 0, "arguments": ["a", "b"], "empty": [:], "list": []]
        let expected = """
            {
              "result": 0,
              "arguments": [
                "a",
                "b"
              ],
              "empty": {},
              "list": []
            }
            """
        #expect(v.prettyPrinted() == expected)
        #expect(try parse(v.prettyPrinted()) == v)
    }

    @Test func stringAndBytesEntryPoints() throws {
        #expect(try JSONValue(parsing: "[1]") == [1])
        #expect(try JSONValue(parsing: Array("{}".utf8)) == [:])
        var out: [UInt8] = [0x41]
        JSONValue.array([1, "a"]).serialize(into: &out)
        #expect(out == Array("A[1,\"a\"]".utf8))
        #expect("\(JSONValue.array([true]))" == "[true]")
    }

    struct Lease: Codable, Equatable {
        var address: String
        var valid: Int
        var ratio: Double?
        var tags: [String]
    }

    @Test func codableBridge() throws {
        let lease = Lease(address: "10.0.0.1", valid: 3600, ratio: 0.5, tags: ["a", "ü"])
        let value = try JSONValue(encoding: lease)
        #expect(value == ["address": "10.0.0.1", "valid": 3600, "ratio": 0.5, "tags": ["a", "ü"]])
        #expect(value["valid"] == .integer(3600))
        #expect(try value.decode(Lease.self) == lease)
        // JSONValue itself is Codable.
        let nested: JSONValue = ["x": [1, 2.5, nil, "s", true]]
        #expect(try JSONValue(encoding: nested) == nested)
    }
}
