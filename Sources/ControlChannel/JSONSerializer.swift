// JSON serialization of JSONValue: compact (the wire form) and pretty (for humans and the CLI).

extension JSONValue {
    /// The compact JSON text of this value as UTF-8 bytes: no spaces, no trailing newline.
    ///
    /// - Strings are written as raw UTF-8 (non-ASCII is not `\u`-escaped, so it round-trips exactly);
    ///   `"` and `\` are escaped, and control characters (< U+0020) use `\b \f \n \r \t` or `\u00XX`.
    /// - Integers are written exactly; doubles in the shortest form that parses back to the same value and
    ///   always with a `.` or an exponent, so they stay reals (`1.0`, `1e-05`); NaN and infinities, which JSON
    ///   cannot express, are written as `null`.
    /// - Map keys in insertion order.
    ///
    /// Thread contract: pure function of the value. Kea counterpart: `Element::str()` (which adds spaces and
    /// escapes every byte >= 0x80 separately; we don't).
    public func serialized() -> [UInt8] {
        var writer = JSONWriter(pretty: false)
        writer.write(self, level: 0)
        return writer.out.toArray()
    }

    /// Appends the compact JSON text of this value to `buffer` (see ``serialized()``).
    public func serialize(into buffer: inout [UInt8]) {
        var writer = JSONWriter(pretty: false)
        writer.write(self, level: 0)
        writer.out.append(to: &buffer)
    }

    /// Writes the compact JSON text of this value into `sink`, replacing what it held, and keeps its storage: a
    /// caller that serializes over and over (the control socket server, one answer per connection) allocates
    /// nothing once the sink has grown to its answers' size.
    func serialize(into sink: inout ByteSink) {
        sink.removeAll()
        var writer = JSONWriter(pretty: false, out: sink)
        writer.write(self, level: 0)
        sink = writer.takeOutput()
    }

    /// The compact JSON text of this value as a String (see ``serialized()``).
    public func serializedString() -> String {
        String(decoding: serialized(), as: UTF8.self)
    }

    /// Human-readable JSON: one member or element per line, indented by `indent` spaces per level,
    /// `"key": value`, empty containers as `{}` / `[]`, no trailing newline.
    ///
    /// Used by `ioloop-ctl` to show answers. Kea counterpart: `isc::data::prettyPrint`.
    public func prettyPrinted(indent: Int = 2) -> String {
        var writer = JSONWriter(pretty: true, indentWidth: indent)
        writer.write(self, level: 0)
        return writer.out.withBytes { String(decoding: $0, as: UTF8.self) }
    }
}

/// Whether any of the 8 bytes of `w` needs escaping inside a JSON string: a control (< 0x20), `"` or `\`.
/// Word-at-a-time ("SWAR") tests: exact as a yes/no answer, and ASCII-heavy strings skip 8 bytes per step.
@inline(__always)
private func wordNeedsEscape(_ w: UInt64) -> Bool {
    let ones: UInt64 = 0x0101_0101_0101_0101
    let highs: UInt64 = 0x8080_8080_8080_8080
    let below0x20 = (w &- ones &* 0x20) & ~w & highs
    let quote = w ^ (ones &* 0x22)
    let backslash = w ^ (ones &* 0x5C)
    let hasQuote = (quote &- ones) & ~quote & highs
    let hasBackslash = (backslash &- ones) & ~backslash & highs
    return (below0x20 | hasQuote | hasBackslash) != 0
}

/// The `m` (1...7) bytes at `p` in one word, its unused lanes filled with `A` (which needs no escape). Only
/// which bytes occur matters to `wordNeedsEscape`, not where, so the pieces go in any order.
@inline(__always)
private func gatherTail(_ p: UnsafePointer<UInt8>, count m: Int) -> UInt64 {
    let raw = UnsafeRawPointer(p)
    var w: UInt64 = 0
    var o = 0
    if m & 4 != 0 {
        w = UInt64(raw.loadUnaligned(as: UInt32.self))
        o = 4
    }
    if m & 2 != 0 {
        w |= UInt64(raw.loadUnaligned(fromByteOffset: o, as: UInt16.self)) &<< UInt64(o &* 8)
        o &+= 2
    }
    if m & 1 != 0 {
        w |= UInt64(p[o]) &<< UInt64(o &* 8)
        o &+= 1
    }
    return w | (0x4141_4141_4141_4141 & (UInt64.max &<< UInt64(o &* 8)))
}

/// Whether `b` must be escaped inside a JSON string: a control (< 0x20), `"` or `\`.
@inline(__always)
private func byteNeedsEscape(_ b: UInt8) -> Bool { b < 0x20 || b == 0x22 || b == 0x5C }

/// The writer's output: a growable byte buffer whose appends are a capacity check and a copy. (`[UInt8]`'s
/// append re-checks uniqueness and capacity through generic code on every call: ~90 instructions per run of
/// bytes, most of the cost of serializing a list of short strings.)
struct ByteSink: ~Copyable {
    private var base: UnsafeMutablePointer<UInt8>
    private(set) var count = 0
    private var capacity: Int

    /// Starts with room for `capacity` bytes (1 KiB fits typical answers in one allocation).
    init(capacity: Int = 1024) {
        base = .allocate(capacity: capacity)
        self.capacity = capacity
    }

    deinit { base.deallocate() }

    /// Forgets the bytes written; keeps the storage.
    mutating func removeAll() { count = 0 }

    @inline(__always)
    mutating func append(_ byte: UInt8) {
        if count == capacity { grow(1) }
        base[count] = byte
        count &+= 1
    }

    @inline(__always)
    mutating func append(_ bytes: UnsafePointer<UInt8>, count n: Int) {
        if capacity &- count < n { grow(n) }
        (base + count).update(from: bytes, count: n)
        count &+= n
    }

    /// `"`, the `n` bytes at `bytes`, `"`: one capacity check for the three.
    @inline(__always)
    mutating func appendQuoted(_ bytes: UnsafePointer<UInt8>, count n: Int) {
        if capacity &- count < n &+ 2 { grow(n &+ 2) }
        base[count] = 0x22
        (base + (count &+ 1)).update(from: bytes, count: n)
        base[count &+ n &+ 1] = 0x22
        count &+= n &+ 2
    }

    mutating func append(_ bytes: UnsafeBufferPointer<UInt8>) {
        guard let p = bytes.baseAddress else { return }
        append(p, count: bytes.count)
    }

    mutating func append(repeating byte: UInt8, count n: Int) {
        if capacity &- count < n { grow(n) }
        (base + count).update(repeating: byte, count: n)
        count &+= n
    }

    private mutating func grow(_ needed: Int) {
        var newCapacity = capacity * 2
        while newCapacity - count < needed { newCapacity *= 2 }
        let fresh = UnsafeMutablePointer<UInt8>.allocate(capacity: newCapacity)
        fresh.moveInitialize(from: base, count: count)
        base.deallocate()
        base = fresh
        capacity = newCapacity
    }

    /// The bytes written, as an array of exactly that size.
    func toArray() -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            buffer.baseAddress?.initialize(from: base, count: count)
            initialized = count
        }
    }

    func append(to array: inout [UInt8]) {
        array.append(contentsOf: UnsafeBufferPointer(start: base, count: count))
    }

    func withBytes<R>(_ body: (UnsafeBufferPointer<UInt8>) -> R) -> R {
        body(UnsafeBufferPointer(start: base, count: count))
    }
}

struct JSONWriter: ~Copyable {
    var out: ByteSink
    let pretty: Bool
    var indentWidth = 2

    init(pretty: Bool, indentWidth: Int = 2, out: consuming ByteSink = ByteSink()) {
        self.pretty = pretty
        self.indentWidth = indentWidth
        self.out = out
    }

    /// Ends the writer, handing back its output buffer.
    consuming func takeOutput() -> ByteSink { out }

    mutating func newline(_ level: Int) {
        out.append(0x0A)
        let n = level * indentWidth
        if n > 0 { out.append(repeating: 0x20, count: n) }
    }

    mutating func write(_ value: JSONValue, level: Int) {
        switch value {
        case .null: appendASCII("null")
        case .bool(let b): appendASCII(b ? "true" : "false")
        case .integer(let i): writeInteger(i)
        case .double(let d): writeDouble(d)
        case .string(let s): writeString(s)
        case .array(let a):
            if a.isEmpty {
                appendASCII("[]")
                return
            }
            out.append(0x5B)
            // Through the buffer: elements are lent to `write`, not copied (a retain and release each).
            a.withUnsafeBufferPointer { elements in
                for i in 0..<elements.count {
                    if i > 0 { out.append(0x2C) }
                    if pretty { newline(level + 1) }
                    write(elements[i], level: level + 1)
                }
            }
            if pretty { newline(level) }
            out.append(0x5D)
        case .object(let o):
            if o.isEmpty {
                appendASCII("{}")
                return
            }
            out.append(0x7B)
            o._entries.withUnsafeBufferPointer { entries in
                for k in 0..<entries.count {
                    if k > 0 { out.append(0x2C) }
                    if pretty { newline(level + 1) }
                    writeString(entries[k].key)
                    out.append(0x3A)
                    if pretty { out.append(0x20) }
                    write(entries[k].value, level: level + 1)
                }
            }
            if pretty { newline(level) }
            out.append(0x7D)
        }
    }

    mutating func appendASCII(_ s: StaticString) {
        out.append(s.utf8Start, count: s.utf8CodeUnitCount)
    }

    mutating func writeInteger(_ value: Int64) {
        // Digits into a small stack buffer, most significant last, then appended reversed.
        var magnitude = value.magnitude
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 20) { digits in
            var n = 0
            repeat {
                digits[n] = UInt8(truncatingIfNeeded: magnitude % 10) &+ 0x30
                magnitude /= 10
                n += 1
            } while magnitude != 0
            if value < 0 { out.append(0x2D) }
            while n > 0 {
                n -= 1
                out.append(digits[n])
            }
        }
    }

    mutating func writeDouble(_ value: Double) {
        guard value.isFinite else {
            appendASCII("null")
            return
        }
        // Swift's description is the shortest round-trip form and is valid JSON for finite values
        // ("1.0", "0.1", "1e-05", "1.2345e+20"), always with a '.' or an exponent.
        var text = value.description
        text.withUTF8 { out.append($0) }
    }

    mutating func writeString(_ string: String) {
        // Native strings (all of them on Linux) lend their UTF-8 without a copy; the mutating `withUTF8` is the
        // fallback for the rest.
        if string.utf8.withContiguousStorageIfAvailable({ writeUTF8($0) }) == nil {
            var string = string
            string.withUTF8 { writeUTF8($0) }
        }
    }

    /// Writes `bytes` as a quoted JSON string. Most strings (command names, keys) need no escape at all: they are
    /// checked eight bytes at a time, then copied in one piece with their quotes.
    ///
    /// From 16 bytes on, the last word overlaps the one before (no byte-by-byte tail). Shorter strings are mostly
    /// Swift's small strings, lent from a copy just stored on the stack as two 8-byte words: a load across those
    /// two stores cannot be forwarded and stalls (it was ~40 % of this function's time in `perf annotate`), so the
    /// bytes after the first word are gathered with 4-, 2- and 1-byte loads, each inside one store.
    @inline(__always)
    mutating func writeUTF8(_ bytes: UnsafeBufferPointer<UInt8>) {
        guard let base = bytes.baseAddress, bytes.count > 0 else {
            out.append(0x22)
            out.append(0x22)
            return
        }
        let n = bytes.count
        var clean = true
        if n >= 16 {
            var k = 0
            while k &+ 8 < n {
                if wordNeedsEscape(UnsafeRawPointer(base + k).loadUnaligned(as: UInt64.self)) {
                    clean = false
                    break
                }
                k &+= 8
            }
            if clean { clean = !wordNeedsEscape(UnsafeRawPointer(base + (n &- 8)).loadUnaligned(as: UInt64.self)) }
        } else {
            var k = 0
            if n >= 8 {
                clean = !wordNeedsEscape(UnsafeRawPointer(base).loadUnaligned(as: UInt64.self))
                k = 8
            }
            if clean && k < n { clean = !wordNeedsEscape(gatherTail(base + k, count: n &- k)) }
        }
        if clean {
            out.appendQuoted(base, count: n)
        } else {
            writeEscaped(base, count: n)
        }
    }

    /// The slow path: unescaped runs copied whole, each escape written in place of its byte.
    mutating func writeEscaped(_ base: UnsafePointer<UInt8>, count n: Int) {
        out.append(0x22)
        var runStart = 0
        for i in 0..<n where byteNeedsEscape(base[i]) {
            if runStart < i { out.append(base + runStart, count: i &- runStart) }
            appendEscape(base[i])
            runStart = i &+ 1
        }
        if runStart < n { out.append(base + runStart, count: n &- runStart) }
        out.append(0x22)
    }

    mutating func appendEscape(_ b: UInt8) {
        out.append(0x5C)
        switch b {
        case 0x22: out.append(0x22)
        case 0x5C: out.append(0x5C)
        case 0x08: out.append(0x62)  // b
        case 0x0C: out.append(0x66)  // f
        case 0x0A: out.append(0x6E)  // n
        case 0x0D: out.append(0x72)  // r
        case 0x09: out.append(0x74)  // t
        default:
            let hex: StaticString = "0123456789abcdef"
            out.append(0x75)
            out.append(0x30)
            out.append(0x30)
            out.append(hex.utf8Start[Int(b >> 4)])
            out.append(hex.utf8Start[Int(b & 0xF)])
        }
    }
}
