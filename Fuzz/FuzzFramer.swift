// libFuzzer target: JSONFramer fed the input in chunks derived from the input, then JSONParser and
// CommandManager.processCommandBytes. Built and run by Fuzz/run (not part of the root package).
//
// Input layout: byte 0 picks the chunking pattern and the limits, the rest is the stream.
// Oracles (a failure is a trap, which libFuzzer reports as a crash):
// - feeding in chunks gives exactly the outcome of feeding at once (same result, value bytes, bytes consumed);
// - a complete value either parses or gets a parse error; a parsed value serializes and re-parses to itself;
// - processCommandBytes answers every complete value synchronously with a JSON map holding an integer result.
import ControlChannel
import Glibc

private struct Outcome: Equatable {
    var complete: Bool
    var error: JSONFramerError?
    var value: [UInt8]
    var consumedTotal: Int
    var partial: Int
}

private func frame(_ stream: ArraySlice<UInt8>, maxSize: Int, maxDepth: Int, chunkSizes: (Int) -> Int) -> Outcome {
    var framer = JSONFramer(maxSize: maxSize, maxDepth: maxDepth)
    var offset = stream.startIndex
    var consumedTotal = 0
    var i = 0
    var done = false
    while offset < stream.endIndex && !done {
        let n = min(max(1, chunkSizes(i)), stream.endIndex - offset)
        let chunk = Array(stream[offset..<offset + n])
        switch framer.feed(chunk) {
        case .needMoreData:
            consumedTotal += n
        case .complete(let consumed):
            check(consumed >= 0 && consumed <= n, "consumed out of range")
            consumedTotal += consumed
            done = true
        case .failed:
            done = true
        }
        offset += n
        i += 1
    }
    // Feeding after the end must be stable.
    if done {
        let again = framer.feed([UInt8(ascii: "}")])
        switch again {
        case .complete(let c): check(framer.isComplete && c == 0, "complete is not sticky")
        case .failed(let e): check(framer.error == e, "failure is not sticky")
        case .needMoreData: failure("a finished framer asked for more data")
        }
    }
    return Outcome(
        complete: framer.isComplete, error: framer.error, value: framer.isComplete ? framer.valueBytes : [],
        consumedTotal: framer.isComplete ? consumedTotal : -1, partial: framer.partialCommandByteCount)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzFramer(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size > 0 else { return 0 }
    let input = Array(UnsafeBufferPointer(start: data, count: size))
    let control = input[0]
    let stream = input[1...]
    let maxDepth = control & 0x80 != 0 ? 4 : JSONFramer.defaultMaxDepth
    let maxSize = control & 0x40 != 0 ? 64 : JSONFramer.defaultMaxSize
    let pattern = Int(control & 0x3F)
    let whole = frame(stream, maxSize: maxSize, maxDepth: maxDepth) { _ in Int.max }
    let chunked = frame(stream, maxSize: maxSize, maxDepth: maxDepth) { i in
        switch pattern % 4 {
        case 0: return 1
        case 1: return pattern / 4 + 1
        case 2: return Int(stream[stream.startIndex + (i % stream.count)] % 7) + 1
        default: return (i * (pattern + 1)) % 13 + 1
        }
    }
    check(whole == chunked, "chunked framing differs from framing at once: \(whole) vs \(chunked)")
    if whole.complete {
        check(whole.value.count <= maxSize, "value larger than the limit")
        let manager = CommandManager(maxDepth: maxDepth)
        var parsed: JSONValue?
        do {
            let v = try JSONParser.parse(whole.value, maxDepth: maxDepth)
            let again = try JSONParser.parse(v.serialized(), maxDepth: maxDepth)
            check(again == v, "serialize/parse round trip changed the value")
            parsed = v
        } catch {
            _ = error.description
        }
        var answer: [UInt8]?
        manager.processCommandBytes(whole.value) { answer = $0 }
        guard let answer else { failure("no synchronous answer") }
        guard case .object(let map)? = try? JSONParser.parse(answer), case .integer? = map["result"],
            map["arguments"] != nil
        else { failure("answer is not a map with an integer result and arguments") }
        _ = parsed
    } else if let error = whole.error {
        let answer = CommandManager.answerBytes(for: error)
        guard case .object(let map)? = try? JSONParser.parse(answer), map["result"] == .integer(1) else {
            failure("framer error answer is not result 1")
        }
    }
    // The parser alone on the raw stream (no framer in front): must never trap.
    _ = try? JSONParser.parse(Array(stream), maxDepth: maxDepth)
    return 0
}
