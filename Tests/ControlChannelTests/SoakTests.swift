// Fault tests against an in-process ControlSocketServer (loopback UNIX socket): huge and deep inputs, clients
// that reset mid-answer. Short by default; `IOLOOP_SOAK=full` (Scripts/soak) repeats more. Each test prints
// its figures on a `SOAK` line.

import Foundation
import Glibc
import IOLoop
import Testing

@testable import ControlChannel

private let fullSoak = ProcessInfo.processInfo.environment["IOLOOP_SOAK"] == "full"

@Suite("Soak and faults (in-process server)", .serialized)
struct ControlChannelSoakTests {
    /// A 64 MiB command against the default 16 MiB limit: a clear error once the limit is passed, the server
    /// keeps serving.
    @Test func sixtyFourMiBCommandIsRefusedClearly() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let c = try RawClient(h.path, timeoutSeconds: 30)
        let size = 64 << 20
        var command = Array(#"{"command": "echo", "arguments": {"pad": ""#.utf8)
        command += [UInt8](repeating: UInt8(ascii: "p"), count: size - command.count - 3)
        command += Array(#""}}"#.utf8)
        let t0 = ContinuousClock.now
        let sendError = c.send(command)  // EPIPE/ECONNRESET once the server has answered and closed
        let (bytes, _) = c.readToEOF()
        print(
            "SOAK 64MiB-command answered-in=\(ContinuousClock.now - t0) send-errno=\(sendError.map(String.init) ?? "none")"
        )
        #expect(
            String(decoding: bytes, as: UTF8.self)
                == errorAnswerText("command too large: more than \(JSONFramer.defaultMaxSize) bytes"))
        #expect(try exchangeJSON(h.path, #"{"command": "count"}"#)["result"] == 0)
    }

    /// Depth 1 000 000, balanced and inside a valid command, through the framer (socket) and straight into the
    /// parser and CommandManager (no framer in front): a clear error each time, constant stack.
    @Test func depthOneMillionEverywhere() throws {
        let deep =
            Array(#"{"command": "echo", "arguments": "#.utf8) + [UInt8](repeating: UInt8(ascii: "["), count: 1_000_000)
            + [UInt8](repeating: UInt8(ascii: "]"), count: 1_000_000) + [UInt8(ascii: "}")]
        let tooDeep = errorAnswerText("nesting too deep: more than 100 levels of lists and maps")
        let h = try ServerHarness()
        defer { h.stop() }
        let c = try RawClient(h.path)
        _ = c.send(deep)
        #expect(String(decoding: c.readToEOF().bytes, as: UTF8.self) == tooDeep)
        #expect(throws: JSONParseError.self) { try JSONParser.parse(deep) }
        var answer: [UInt8] = []
        CommandManager(logger: quietLogger).processCommandBytes(deep) { answer = $0 }
        let parsed = try JSONParser.parse(answer)
        #expect(parsed["result"] == 1)
        #expect(parsed["text"]?.stringValue?.contains("nesting") == true)
        #expect(try exchangeJSON(h.path, #"{"command": "count"}"#)["result"] == 0)
    }

    /// Clients that reset (close with the answer unread, SO_LINGER 0) mid-answer, repeatedly: the command ran,
    /// no connection or descriptor is left behind, the server keeps answering.
    @Test func clientsResettingMidAnswer() throws {
        let rounds = fullSoak ? 500 : 40
        let h = try ServerHarness()
        defer { h.stop() }
        let fdsBefore = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? -1
        for i in 0..<rounds {
            let c = try RawClient(h.path)
            var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
            setsockopt(c.fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
            c.send(#"{"command": "big", "arguments": {"size": \#(1_000_000 + (i % 7) * 500_000)}}"#)
            var first = [UInt8](repeating: 0, count: 1 + (i % 5) * 4000)
            #expect(read(c.fd, &first, first.count) > 0)
            // `c` closes here with most of the answer unread.
        }
        #expect(waitUntil { h.connectionCount == 0 })
        let fdsAfter = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? -1
        print(
            "SOAK reset-mid-answer rounds=\(rounds) open-connections-after=\(h.connectionCount) fds=\(fdsBefore)->\(fdsAfter)"
        )
        #expect(try exchange(h.path, #"{"command": "count"}"#) == #"{"arguments":{},"result":0,"text":"counted"}"#)
    }
}
