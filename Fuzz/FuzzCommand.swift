// libFuzzer target: the whole command path of the control socket server without a socket. The input is
// framed as a connection's stream would be (JSONFramer, chunks derived from the input), a framer failure is
// answered as the server answers it, and a complete value goes through CommandManager.processCommandBytes
// with handlers of every kind registered: the ten statistic-* commands over preset statistics, a synchronous
// echo, a typed handler, a throwing handler, a handler returning a malformed answer, an asynchronous handler
// answering later from the IOService, and an observer amending every answer.
//
// Oracles: every complete command is answered exactly once; the answer is compact valid JSON, a map with an
// integer `result` in 0...4 and `arguments`; it re-parses and re-serializes to the same bytes.
import ControlChannel
import Glibc
import IOLoop

private struct Pair: Decodable {
    var a: Int
    var b: String?
}

private struct Thrown: Error, CustomStringConvertible {
    var description: String { "thrown on purpose" }
}

nonisolated(unsafe) private var service: IOService? = nil

private func makeManager(_ io: IOService, stats: StatisticsManager) -> CommandManager {
    let m = CommandManager()
    try! stats.registerCommands(on: m)
    try! m.registerCommand("echo") { _, arguments, _ in
        ControlAnswer.success("echo", arguments: arguments ?? .object(JSONObject())).json
    }
    try! m.registerTyped("typed", arguments: Pair.self) { p in
        ControlAnswer.success("\(p.a) \(p.b ?? "-")").json
    }
    try! m.registerCommand("throws") { _, _, _ in throw Thrown() }
    try! m.registerCommand("bad-answer") { _, arguments, _ in arguments ?? .null }
    try! m.registerAsyncCommand("later") { _, arguments, _, responder in
        io.post { responder.respond(ControlAnswer.success(arguments: arguments ?? .object(JSONObject()))) }
    }
    _ = m.addObserver { name, _, response in
        if name == "echo", case .object(var map) = response {
            map["observed"] = .bool(true)
            response = .object(map)
        }
    }
    return m
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzCommand(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size > 0 else { return 0 }
    if service == nil { service = try! IOService() }
    let io = service!
    let input = Array(UnsafeBufferPointer(start: data, count: size))
    let chunk = Int(input[0] % 16) + 1
    let stream = input[1...]

    let stats = StatisticsManager()
    try! stats.set("pkt4-received", .integer(42))
    try! stats.set("subnet[1].assigned-addresses", .real(1.5))
    try! stats.set("name", .string("ünïcode"))
    let manager = makeManager(io, stats: stats)

    var framer = JSONFramer(maxSize: 1 << 20, maxDepth: JSONFramer.defaultMaxDepth)
    var offset = stream.startIndex
    var outcome: JSONFramer.FeedResult = .needMoreData
    while offset < stream.endIndex {
        let n = min(chunk, stream.endIndex - offset)
        outcome = framer.feed(Array(stream[offset..<offset + n]))
        offset += n
        if outcome != .needMoreData { break }
    }
    var answers: [[UInt8]] = []
    switch outcome {
    case .needMoreData:
        return 0  // the server would wait (and time out): nothing to answer
    case .failed(let error):
        answers.append(CommandManager.answerBytes(for: error))
    case .complete:
        manager.processCommandBytes(framer.takeValueBytes()) { answers.append($0) }
        io.restart()
        _ = try! io.poll()
    }
    check(answers.count == 1, "a command got \(answers.count) answers")
    let answer = answers[0]
    let parsed: JSONValue
    do {
        parsed = try JSONParser.parse(answer)
    } catch {
        failure("the answer does not parse: \(error)")
    }
    guard case .object(let map) = parsed, case .integer(let result)? = map["result"], (0...4).contains(result),
        map["arguments"] != nil
    else { failure("malformed answer") }
    check(parsed.serialized() == answer, "the answer does not re-serialize to itself")
    return 0
}
