// ControlSocketServer over real UNIX sockets in temp directories: spec §1–§8, rule by rule.

import Foundation
import Glibc
import IOLoop
import Logging
import Synchronization
import Testing

@testable import ControlChannel

@Suite("ControlSocketServer")
struct ControlSocketServerTests {
    static let prefix = "Error during command processing: "

    // MARK: §1 configuration

    @Test func configValidationTexts() throws {
        func error(_ map: JSONValue) -> String {
            do {
                _ = try ControlSocketConfig(parsing: map)
                return "no error"
            } catch {
                return error.message
            }
        }
        #expect(error(["socket-name": "/tmp/x.sock"]) == "Mandatory 'socket-type' parameter missing")
        #expect(
            error(["socket-type": "tcp", "socket-name": "/tmp/x.sock"])
                == "Invalid 'socket-type' parameter value tcp (only 'unix' is supported)")
        #expect(error(["socket-type": "unix"]) == "Mandatory 'socket-name' parameter missing")
        #expect(
            error(["socket-type": "unix", "socket-name": 42])
                == "'socket-name' parameter expected to be a non-empty string, got integer")
        let long = "/tmp/" + String(repeating: "a", count: 103)
        #expect(
            error(["socket-type": "unix", "socket-name": .string(long)])
                == "'socket-name' is invalid: resolved path '\(long)' is 108 bytes long, the limit is 107")
        #expect(
            error(["socket-type": "unix", "socket-name": "/nonexistent-dir-x/c.sock"])
                == "'socket-name' is invalid: parent directory '/nonexistent-dir-x' of '/nonexistent-dir-x/c.sock' "
                + "does not exist")
        #expect(
            error(["socket-type": "unix", "socket-name": "/tmp/x.sock", "bogus": 1])
                == "unsupported parameter 'bogus' in control-socket")
        let ok = try ControlSocketConfig(
            parsing: ["socket-type": "unix", "socket-name": "/tmp/x.sock", "socket-mode": "0660"])
        #expect(ok.socketMode == 0o660 && ok.socketName == "/tmp/x.sock")
        let relative = try ControlSocketConfig(parsing: ["socket-type": "unix", "socket-name": "rel.sock"])
        #expect(relative.socketName == FileManager.default.currentDirectoryPath + "/rel.sock")
    }

    @Test func configDefaults() throws {
        // Literal values, not the library's constants: a changed constant must fail here (spec §1, §3, §4).
        let parsed = try ControlSocketConfig(parsing: ["socket-type": "unix", "socket-name": "/tmp/x.sock"])
        for config in [ControlSocketConfig(socketName: "/tmp/x.sock"), parsed] {
            #expect(config.inactivityTimeout == .milliseconds(10_000))
            #expect(config.writeTimeout == .milliseconds(10_000))
            #expect(config.maxCommandSize == 16 * 1024 * 1024)
            #expect(config.maxDepth == 100)
            #expect(config.socketMode == 0o600)
        }
    }

    @Test func lockFileAndSecondInstanceRefused() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        #expect(FileManager.default.fileExists(atPath: h.path + ".lock"))
        var st = stat()
        #expect(stat(h.path + ".lock", &st) == 0 && st.st_mode & 0o777 == 0o600)
        let other = try IOService()
        do {
            _ = try ControlSocketServer(
                service: other, commandManager: CommandManager(logger: quietLogger),
                config: ControlSocketConfig(socketName: h.path), logger: quietLogger)
            Issue.record("a second instance opened the same socket")
        } catch {
            let text = "\(error)"
            #expect(text.contains(h.path + ".lock") && text.contains("another instance"), "\(text)")
        }
        // The first instance is untouched.
        #expect(try exchangeJSON(h.path, #"{"command": "count"}"#)["result"] == 0)
    }

    @Test func staleSocketIsReclaimed() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let path = dir.file("c.sock")
        // A socket file with no server behind it, as a crashed server leaves.
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: Array(path.utf8) + [0]) }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        #expect(rc == 0)
        close(fd)
        let service = try IOService()
        // Never run: the pending accept (aborted by `close()`, queued) keeps the acceptor and the service alive
        // until the shutdown releases it.
        defer { service.shutdown() }
        let server = try ControlSocketServer(
            service: service, commandManager: CommandManager(logger: quietLogger),
            config: ControlSocketConfig(socketName: path), logger: quietLogger)
        #expect(server.isOpen)
        server.close()
    }

    /// Shut down while a command runs, its responder held by a timer wait (as `later` does). Releasing the wait
    /// releases the responder, whose error answer starts a write and a write-timeout wait on the service being
    /// shut down; those are released too, so nothing is left holding the server or the service.
    @Test func shutdownWhileACommandRunsReleasesEverything() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        weak var weakService: IOService?
        weak var weakServer: ControlSocketServer?
        let client: RawClient
        do {
            let service = try IOService()
            let manager = CommandManager(logger: quietLogger)
            let started = Box(false)
            try manager.registerAsyncCommand("slow") { _, _, _, responder in
                let timer = SteadyTimer(service, expiresAfter: .seconds(100))
                timer.asyncWait { _ in
                    _ = timer
                    responder.respond(ControlAnswer.success("late"))
                }
                started.value = true
            }
            let server = try ControlSocketServer(
                service: service, commandManager: manager, config: ControlSocketConfig(socketName: dir.file("c.sock")),
                logger: quietLogger)
            client = try RawClient(dir.file("c.sock"))
            client.send(#"{"command": "slow"}"#)
            let deadline = SteadyInstant.now() + .seconds(10)
            while !started.value && SteadyInstant.now() < deadline { try service.runOne(until: deadline) }
            #expect(started.value)
            service.shutdown()
            weakService = service
            weakServer = server
        }
        #expect(weakServer == nil)
        #expect(weakService == nil)
        // The released responder answered; the connection closed with the server.
        #expect(client.answer().contains("finished without an answer"))
    }

    @Test(arguments: ["regular file", "directory", "symbolic link"])
    func nonSocketAtPathIsNeverDeleted(kind: String) throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let path = dir.file("c.sock")
        switch kind {
        case "regular file": _ = FileManager.default.createFile(atPath: path, contents: Data("keep me".utf8))
        case "directory": try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
        default: try FileManager.default.createSymbolicLink(atPath: path, withDestinationPath: dir.file("target"))
        }
        let service = try IOService()
        do {
            _ = try ControlSocketServer(
                service: service, commandManager: CommandManager(logger: quietLogger),
                config: ControlSocketConfig(socketName: path), logger: quietLogger)
            Issue.record("opened over a \(kind)")
        } catch {
            let text = "\(error)"
            #expect(text.contains(path) && text.contains(kind), "\(text)")
        }
        var st = stat()
        #expect(lstat(path, &st) == 0, "the \(kind) was deleted")
        if kind == "regular file" { #expect(FileManager.default.contents(atPath: path) == Data("keep me".utf8)) }
        #expect(!FileManager.default.fileExists(atPath: path + ".lock"), "the lock file was left behind")
    }

    @Test func socketModeDefaultAndConfigurable() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        var st = stat()
        #expect(stat(h.path, &st) == 0 && st.st_mode & 0o777 == 0o600)
        let g = try ServerHarness(configure: { $0.socketMode = 0o660 })
        defer { g.stop() }
        #expect(stat(g.path, &st) == 0 && st.st_mode & 0o777 == 0o660)
        // Reconfiguring the mode on the same path keeps the listener and changes the file's mode.
        try h.onLoop {
            var c = h.server.config
            c.socketMode = 0o640
            try h.server.reconfigure(c)
        }
        #expect(stat(h.path, &st) == 0 && st.st_mode & 0o777 == 0o640)
        #expect(try exchangeJSON(h.path, #"{"command": "count"}"#)["result"] == 0)
    }

    @Test func closeRemovesSocketAndLockFiles() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        #expect(FileManager.default.fileExists(atPath: h.path))
        try h.onLoop { h.server.close() }
        #expect(!FileManager.default.fileExists(atPath: h.path))
        #expect(!FileManager.default.fileExists(atPath: h.path + ".lock"))
        #expect(throws: (any Error).self) { try RawClient(h.path) }
    }

    @Test func failedReconfigurationKeepsTheOldSocket() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        #expect(throws: ControlSocketConfigError.self) {
            try h.onLoop { try h.server.reconfigure(ControlSocketConfig(socketName: "/nonexistent-dir-y/c.sock")) }
        }
        #expect(try exchangeJSON(h.path, #"{"command": "count"}"#)["result"] == 0)
        let newPath = h.dir.file("new.sock")
        try h.onLoop { try h.server.reconfigure(ControlSocketConfig(socketName: newPath)) }
        #expect(try exchangeJSON(newPath, #"{"command": "count"}"#)["result"] == 0)
        #expect(!FileManager.default.fileExists(atPath: h.path))
        #expect(!FileManager.default.fileExists(atPath: h.path + ".lock"))
    }

    // MARK: §2 one command per connection

    @Test func oneByteChunks() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let c = try RawClient(h.path)
        c.sendByteByByte("  # comment\n{ \"command\": /* inside */ \"echo\", \"arguments\": {\"a\": \"}]\\\"\"} }")
        #expect(c.answer() == #"{"arguments":{"a":"}]\""},"result":0}"#)
    }

    @Test func commentsBeforeAndInside() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let text = """
            # hash comment
            // line comment
            /* block
               comment */
            {
              "command": "echo", // trailing
              # another
              "arguments": { /* x */ "k": "v" }
            }
            """
        #expect(try exchange(h.path, text) == #"{"arguments":{"k":"v"},"result":0}"#)
    }

    @Test func invalidFirstCharacter() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        #expect(try exchange(h.path, "utter nonsense") == errorAnswerText("invalid first character u"))
        let c = try RawClient(h.path)
        c.send([0xEF, 0xBB, 0xBF])
        #expect(c.answer() == #"{"arguments":{},"result":1,"text":"invalid first character \\u00ef"}"#)
        #expect(try exchangeJSON(h.path, #"{"command": "count"}"#)["result"] == 0)
    }

    @Test func answeredWithoutHalfCloseAndWithHalfClose() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        // No half-close: the answer comes as soon as the value is complete.
        #expect(try exchange(h.path, #"{"command": "count"}"#) == #"{"arguments":{},"result":0,"text":"counted"}"#)
        let c = try RawClient(h.path)
        c.send(#"{"command": "count"}"#)
        c.shutdownWrite()
        #expect(c.answer() == #"{"arguments":{},"result":0,"text":"counted"}"#)
    }

    @Test func trailingBytesAreIgnored() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let c = try RawClient(h.path)
        c.send(#"{"command": "count"} {"command": "count"} trailing garbage"#)
        let (bytes, error) = c.readToEOF()
        #expect(error == nil, "the client saw errno \(error ?? 0) instead of EOF")
        #expect(String(decoding: bytes, as: UTF8.self) == #"{"arguments":{},"result":0,"text":"counted"}"#)
        #expect(try h.onLoop { h.calls["count"] } == 1)
    }

    @Test func aClientThatKeepsStreamingCannotPinTheLoop() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let flood = try RawClient(h.path)
        let stop = Atomic<Bool>(false)
        let sent = Atomic<Int>(0)
        let writer = Thread {
            // An invalid first character, then bytes as fast as the socket takes them, for at most 5 s.
            let chunk = [UInt8](repeating: UInt8(ascii: "x"), count: 65536)
            let end = ContinuousClock.now + .seconds(5)
            while !stop.load(ordering: .relaxed) && ContinuousClock.now < end {
                if flood.send(chunk) != nil { break }
                sent.add(chunk.count, ordering: .relaxed)
            }
            stop.store(true, ordering: .relaxed)
        }
        writer.start()
        defer { stop.store(true, ordering: .relaxed) }
        // Far more than the socket buffers hold: the server is reading (draining) the flood by now.
        #expect(waitUntil { sent.load(ordering: .relaxed) > 8 << 20 || stop.load(ordering: .relaxed) })
        // The server answers the flood and closes it; meanwhile it keeps serving others promptly.
        let start = ContinuousClock.now
        #expect(try exchange(h.path, #"{"command": "count"}"#) == #"{"arguments":{},"result":0,"text":"counted"}"#)
        #expect(ContinuousClock.now - start < .seconds(3))
        #expect(waitUntil(.seconds(3)) { h.connectionCount == 0 })
    }

    @Test func clientEOFBeforeCompleteGetsNoAnswer() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        for partial in ["", "  # only a comment", #"{"command": "count""#] {
            let c = try RawClient(h.path)
            c.send(partial)
            c.shutdownWrite()
            let (bytes, error) = c.readToEOF()
            #expect(bytes.isEmpty && error == nil, "got \(bytes.count) bytes for \(partial)")
        }
        #expect(waitUntil { h.connectionCount == 0 })
        #expect(try h.onLoop { h.calls["count"] } == nil)
        #expect(try exchangeJSON(h.path, #"{"command": "count"}"#)["result"] == 0)
    }

    @Test func clientVanishingMidAnswer() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        for _ in 0..<3 {
            let c = try RawClient(h.path)
            c.send(#"{"command": "big", "arguments": {"size": 4000000}}"#)
            var first = [UInt8](repeating: 0, count: 1000)
            #expect(read(c.fd, &first, first.count) > 0)
            // `c` goes away here with most of the answer unread.
        }
        #expect(waitUntil { h.connectionCount == 0 })
        #expect(try exchangeJSON(h.path, #"{"command": "count"}"#)["result"] == 0)
    }

    // MARK: §3 timeouts

    @Test func inactivityTimeoutTexts() throws {
        let h = try ServerHarness(configure: { $0.inactivityTimeout = .milliseconds(150) })
        defer { h.stop() }
        let idle = try RawClient(h.path)
        #expect(idle.answer() == errorAnswerText("Connection over control channel timed out"))
        let partial = try RawClient(h.path)
        partial.send("  # not counted\n/* nor this */ { \"command\": \"foo\" ")
        #expect(
            partial.answer()
                == errorAnswerText(
                    "Connection over control channel timed out, discarded partial command of 19 bytes"))
        let onlyComment = try RawClient(h.path)
        onlyComment.send("# nothing yet\n")
        #expect(onlyComment.answer() == errorAnswerText("Connection over control channel timed out"))
    }

    /// Input that arrived before the deadline counts even if the loop gets to it late (busy, or both events due in
    /// the same pass): a complete command is served, and a partial one is counted whole in the timeout text.
    @Test func inputWaitingAtTheDeadlineIsNotLost() throws {
        let h = try ServerHarness(configure: { $0.inactivityTimeout = .milliseconds(100) })
        defer { h.stop() }
        let complete = try RawClient(h.path)
        let partial = try RawClient(h.path)
        #expect(waitUntil { h.connectionCount == 2 })  // both accepted, found nothing yet, and waiting to read
        // Hold the loop thread while both clients send and the deadline passes.
        let gate = DispatchSemaphore(value: 0)
        let held = DispatchSemaphore(value: 0)
        h.service.post {
            held.signal()
            _ = gate.wait(timeout: .now() + 10)
        }
        #expect(held.wait(timeout: .now() + 10) == .success)
        complete.send(#"{"command": "count"}"#)
        partial.send(#"{"command": "cou"#)
        // Pacing, not synchronization: the held loop cannot act, so this only lets the deadline pass.
        Thread.sleep(forTimeInterval: 0.3)
        gate.signal()
        #expect(complete.answer() == #"{"arguments":{},"result":0,"text":"counted"}"#)
        #expect(
            partial.answer()
                == errorAnswerText(
                    "Connection over control channel timed out, discarded partial command of 16 bytes"))
    }

    @Test func inactivityTimeoutRestartsOnEveryChunk() throws {
        let h = try ServerHarness(configure: { $0.inactivityTimeout = .milliseconds(400) })
        defer { h.stop() }
        let c = try RawClient(h.path)
        // Pacing (not synchronization): 5 chunks 150 ms apart take 600 ms, longer than one timeout.
        for piece in [#"{"comm"#, #"and": "#, #""cou"#, #"nt""#, "}"] {
            c.send(piece)
            usleep(150_000)
        }
        #expect(c.answer() == #"{"arguments":{},"result":0,"text":"counted"}"#)
    }

    /// Connection deadlines share one timer through a list kept in deadline order: a connection that gets a
    /// shorter timeout after `reconfigure` is queued ahead of older ones and times out first.
    @Test func shorterTimeoutAfterReconfigureExpiresFirst() throws {
        let h = try ServerHarness(configure: { $0.inactivityTimeout = .seconds(5) })
        defer { h.stop() }
        let older = try RawClient(h.path)
        #expect(waitUntil { h.connectionCount == 1 })
        try h.onLoop {
            var config = h.server.config
            config.inactivityTimeout = .milliseconds(150)
            try h.server.reconfigure(config)
        }
        let newer = try RawClient(h.path)
        #expect(newer.answer() == errorAnswerText("Connection over control channel timed out"))
        // The older connection (5 s) is still open and has received nothing.
        var byte: UInt8 = 0
        #expect(recv(older.fd, &byte, 1, Int32(MSG_DONTWAIT)) == -1 && errno == EAGAIN)
    }

    /// A closed server whose connections are gone leaves no timer behind: run() returns at once.
    @Test func closedServerLeavesNoPendingTimeout() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let io = try IOService()
        let server = try ControlSocketServer(
            service: io, commandManager: CommandManager(), config: ControlSocketConfig(socketName: dir.file("t.sock")))
        let client = try RawClient(dir.file("t.sock"))
        // Half a command first: the connection waits for the rest, with its timeout queued on the sweep timer.
        client.send(#"{"command": "#)
        while server.connectionCount == 0 { try io.runOne() }
        client.send(#""list-commands"}"#)
        while server.connectionCount > 0 { try io.runOne() }
        server.close()
        let start = ContinuousClock.now
        try io.run()
        // The default inactivity timeout is 10 s: a forgotten sweep timer would hold run() that long.
        #expect(ContinuousClock.now - start < .seconds(5))
        #expect(io.outstandingWork == 0)
    }

    @Test func timeoutSuspendedWhileAsyncHandlerRuns() throws {
        let h = try ServerHarness(configure: { $0.inactivityTimeout = .milliseconds(100) })
        defer { h.stop() }
        let start = ContinuousClock.now
        #expect(
            try exchange(h.path, #"{"command": "later", "arguments": {"ms": 350}}"#)
                == #"{"arguments":{},"result":0,"text":"answered later"}"#)
        #expect(ContinuousClock.now - start >= .milliseconds(350))
    }

    @Test func writeTimeoutClosesWithoutSplicing() throws {
        let h = try ServerHarness(configure: {
            $0.writeTimeout = .milliseconds(200)
            $0.inactivityTimeout = .milliseconds(100)
        })
        defer { h.stop() }
        let size = 8 << 20
        let expected = Array(
            ControlAnswer.success(arguments: ["data": .string(String(repeating: "x", count: size))]).serialized())
        let c = try RawClient(h.path)
        c.send(#"{"command": "big", "arguments": {"size": \#(size)}}"#)
        // Never read: the server's write stalls, and after 200 ms without progress it closes.
        #expect(waitUntil { h.connectionCount == 0 })
        let (bytes, _) = c.readToEOF()
        #expect(bytes.count < expected.count, "the whole answer fit in the socket buffers")
        #expect(Array(expected.prefix(bytes.count)) == bytes, "the received bytes are not a prefix of the answer")
        #expect(!String(decoding: bytes.suffix(200), as: UTF8.self).contains("timed out"))
    }

    @Test func writeTimeoutMeasuresProgressNotTotalTime() throws {
        let h = try ServerHarness(configure: { $0.writeTimeout = .milliseconds(250) })
        defer { h.stop() }
        let size = 1 << 20
        let c = try RawClient(h.path)
        c.send(#"{"command": "big", "arguments": {"size": \#(size)}}"#)
        // A slow but steady reader: 64 KiB every 60 ms takes about 1 s in all, longer than the write timeout,
        // but never 250 ms without progress. (Pacing, not synchronization.)
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(c.fd, &buffer, buffer.count)
            if n <= 0 { break }
            received.append(contentsOf: buffer[0..<n])
            usleep(60_000)
        }
        #expect(
            received
                == ControlAnswer.success(arguments: ["data": .string(String(repeating: "x", count: size))]).serialized()
        )
    }

    // MARK: §4 limits

    @Test func sizeLimit() throws {
        let h = try ServerHarness(configure: { $0.maxCommandSize = 1000 })
        defer { h.stop() }
        let c = try RawClient(h.path)
        c.send(#"{"command": "echo", "arguments": {"pad": ""# + String(repeating: "p", count: 5000) + #""}}"#)
        let (bytes, _) = c.readToEOF()
        #expect(String(decoding: bytes, as: UTF8.self) == errorAnswerText("command too large: more than 1000 bytes"))
        // Exactly at the limit is fine.
        let frame = #"{"command":"echo","arguments":{"pad":""}}"#
        let exact =
            #"{"command":"echo","arguments":{"pad":""# + String(repeating: "p", count: 1000 - frame.utf8.count)
            + #""}}"#
        #expect(exact.utf8.count == 1000)
        #expect(try exchangeJSON(h.path, exact)["result"] == 0)
    }

    @Test func depthLimit() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let deep =
            #"{"command": "echo", "arguments": "# + String(repeating: "[", count: 100)
            + String(repeating: "]", count: 100) + "}"
        #expect(
            try exchange(h.path, deep)
                == errorAnswerText("nesting too deep: more than 100 levels of lists and maps"))
        let nested99 = String(repeating: "[", count: 99) + String(repeating: "]", count: 99)
        let ok = #"{"command": "echo", "arguments": "# + nested99 + "}"
        // echo wraps a list in a map, one level deeper than the command: parse the answer with room for that.
        let answer = try JSONParser.parse(try exchange(h.path, ok), maxDepth: 101)
        #expect(answer["result"] == 0)
        #expect(answer["arguments"]?["value"] == (try JSONParser.parse(nested99)))
        let s = try ServerHarness(configure: { $0.maxDepth = 5 })
        defer { s.stop() }
        #expect(
            try exchange(s.path, #"{"command": "echo", "arguments": [[[[[]]]]]}"#)
                == errorAnswerText("nesting too deep: more than 5 levels of lists and maps"))
        #expect(try exchangeJSON(s.path, #"{"command": "echo", "arguments": [[[[]]]]}"#)["result"] == 0)
    }

    @Test func configuredDepthAboveTheManagersDefaultIsHonoured() throws {
        let h = try ServerHarness(configure: { $0.maxDepth = 200 })
        defer { h.stop() }
        let deep =
            #"{"command": "echo", "arguments": "# + String(repeating: "[", count: 150)
            + String(repeating: "]", count: 150) + "}"
        #expect(try JSONParser.parse(try exchange(h.path, deep), maxDepth: 300)["result"] == 0)
    }

    @Test func depthOneMillion() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let c = try RawClient(h.path)
        _ = c.send(Array(repeating: UInt8(ascii: "["), count: 1_000_000))  // EPIPE once the server closes
        let (bytes, _) = c.readToEOF()
        #expect(
            String(decoding: bytes, as: UTF8.self)
                == errorAnswerText("nesting too deep: more than 100 levels of lists and maps"))
        #expect(try exchangeJSON(h.path, #"{"command": "count"}"#)["result"] == 0)
    }

    @Test func invalidUTF8IsAParseError() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let c = try RawClient(h.path)
        c.send(Array(#"{"command": "echo", "arguments": ""#.utf8) + [0xFF, 0xFE] + Array(#""}"#.utf8))
        let (bytes, _) = c.readToEOF()
        let answer = try JSONParser.parse(bytes)
        #expect(answer["result"] == 1)
        #expect(answer["text"]?.stringValue?.contains("invalid UTF-8") == true, "\(answer)")
        #expect(String(validating: bytes, as: UTF8.self) != nil)
    }

    // MARK: §5 validation, §6 responses, §7 command manager

    @Test func validationTextsOverTheSocket() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let p = Self.prefix
        #expect(
            try exchange(h.path, #"["command", "count"]"#)
                == errorAnswerText(p + "invalid command: expected toplevel entry to be a map, got list instead"))
        #expect(
            try exchange(h.path, #"{"arguments": {}}"#)
                == errorAnswerText(p + "invalid command: does not contain mandatory 'command'"))
        #expect(
            try exchange(h.path, #"{"command": "count", "x": 1}"#)
                == errorAnswerText(p + "invalid command: unsupported parameter 'x'"))
        #expect(
            try exchange(h.path, #"{"command": 42}"#)
                == errorAnswerText(p + "invalid command: expected 'command' to be a string, got integer instead"))
        #expect(
            try exchangeJSON(h.path, #"{"command": "count", "service": ["dhcp4"], "remote-address": "127.0.0.1"}"#)[
                "result"] == 0)
        let parse = try exchangeJSON(h.path, "{\"command\": \"count\",\n  ]")
        #expect(parse["result"] == 1)
        #expect(parse["text"]?.stringValue?.contains("line 2") == true, "\(parse)")
    }

    @Test func unknownCommandAndListCommands() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        #expect(
            try exchange(h.path, #"{"command": "Count"}"#)
                == #"{"arguments":{},"result":2,"text":"'Count' command not supported."}"#)
        let list = try exchangeJSON(h.path, #"{"command": "list-commands", "arguments": {"ignored": true}}"#)
        let names = list["arguments"]?.arrayValue?.compactMap(\.stringValue) ?? []
        #expect(list["result"] == 0)
        #expect(names == names.sorted() && names.contains("list-commands") && names.contains("echo"))
        #expect(names.count == h.manager.commandNames.count)
    }

    @Test func answersHandlerErrorsAndUTF8() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        #expect(
            try exchange(h.path, #"{"command": "fail"}"#)
                == errorAnswerText(Self.prefix + "the handler failed"))
        #expect(
            try exchange(h.path, #"{"command": "drop"}"#)
                == errorAnswerText("internal error: the handler of 'drop' finished without an answer"))
        #expect(try exchange(h.path, #"{"command": "utf8"}"#) == #"{"arguments":{},"result":0,"text":"Grüße, 世界 🌍"}"#)
        #expect(
            try exchange(h.path, #"{"command": "echo", "arguments": {"s": "é\u00e9 ☃"}}"#)
                == #"{"arguments":{"s":"éé ☃"},"result":0}"#)
        for code in 0...4 {
            #expect(
                try exchangeJSON(h.path, #"{"command": "result", "arguments": {"result": \#(code)}}"#)["result"]
                    == .integer(Int64(code)))
        }
    }

    @Test func nonMapAnswerArgumentsOverTheSocket() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        try h.onLoop {
            try h.manager.registerCommand("list-args") { _, _, _ in .answer(.success, arguments: [1, 2]) }
            try h.manager.registerAsyncCommand("async-string-args") { _, _, _, responder in
                responder.respond(["arguments": "text", "result": 0])
            }
        }
        #expect(
            try exchange(h.path, #"{"command": "list-args"}"#)
                == errorAnswerText(
                    "internal error: the answer to 'list-args' has 'arguments' of type list, expected a map"))
        #expect(
            try exchange(h.path, #"{"command": "async-string-args"}"#)
                == errorAnswerText(
                    "internal error: the answer to 'async-string-args' has 'arguments' of type string, expected a map"))
        #expect(try exchangeJSON(h.path, #"{"command": "list-commands"}"#)["arguments"]?.arrayValue != nil)
        #expect(
            try exchange(h.path, #"{"command": "echo", "arguments": [1, "ü"]}"#)
                == #"{"arguments":{"value":[1,"ü"]},"result":0}"#)
    }

    @Test func asyncHandlerAnswersLater() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        #expect(
            try exchange(h.path, #"{"command": "later", "arguments": {"ms": 30}}"#)
                == #"{"arguments":{},"result":0,"text":"answered later"}"#)
    }

    @Test func handlersRunOnTheLoopThread() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        // Spec §7. Each handler answers with what it saw of its thread, so nothing is shared with the test thread.
        let service = h.service
        func whereAmI() -> JSONValue {
            [
                "running-the-service": .bool(service.runningInThisThread),
                "thread": .integer(Int64(bitPattern: UInt64(pthread_self()))),
            ]
        }
        let loopThread = try h.onLoop {
            try h.manager.registerCommand("where") { _, _, _ in ControlAnswer.success(arguments: whereAmI()).json }
            try h.manager.registerAsyncCommand("where-async") { _, _, _, responder in
                responder.respond(ControlAnswer.success(arguments: whereAmI()))
            }
            return Int64(bitPattern: UInt64(pthread_self()))
        }
        #expect(loopThread != Int64(bitPattern: UInt64(pthread_self())))
        for name in ["where", "where-async"] {
            let answer = try exchangeJSON(h.path, #"{"command": "\#(name)"}"#)
            #expect(answer["result"] == 0, "\(name)")
            #expect(answer["arguments"]?["running-the-service"] == true, "\(name)")
            #expect(answer["arguments"]?["thread"] == .integer(loopThread), "\(name)")
        }
    }

    @Test func handlerReconfiguringToANewPathGetsItsAnswer() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let newPath = h.dir.file("moved.sock")
        try h.onLoop {
            h.hook = { server in try server.reconfigure(ControlSocketConfig(socketName: newPath)) }
        }
        #expect(try exchange(h.path, #"{"command": "hook"}"#) == #"{"arguments":{},"result":0,"text":"hook ran"}"#)
        #expect(!FileManager.default.fileExists(atPath: h.path))
        #expect(!FileManager.default.fileExists(atPath: h.path + ".lock"))
        #expect(FileManager.default.fileExists(atPath: newPath + ".lock"))
        try h.onLoop { h.hook = { server in server.close() } }
        #expect(try exchange(newPath, #"{"command": "hook"}"#) == #"{"arguments":{},"result":0,"text":"hook ran"}"#)
        #expect(!FileManager.default.fileExists(atPath: newPath))
    }

    @Test func closeWaitsForAnswersInFlightButDropsIdleConnections() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let idle = try RawClient(h.path)
        let busy = try RawClient(h.path)
        busy.send(#"{"command": "later", "arguments": {"ms": 100}}"#)
        #expect(waitUntil { h.connectionCount == 2 })
        let delivered = Box(false)
        try h.onLoop {
            h.server.close()
            h.server.whenAnswersDelivered { delivered.value = true }
        }
        #expect(busy.answer() == #"{"arguments":{},"result":0,"text":"answered later"}"#)
        #expect(idle.readToEOF().bytes.isEmpty)
        #expect(waitUntil { (try? h.onLoop { delivered.value }) == true })
    }

    // MARK: size, concurrency

    @Test func eightMiBCommandAndAnswerIntact() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        // 8 MiB command: a string of varied bytes, echoed back.
        var raw = [UInt8](repeating: 0, count: 8 << 20)
        for i in raw.indices { raw[i] = UInt8(97 + i % 26) }
        let payload = String(decoding: raw, as: UTF8.self)
        let command = #"{"command": "echo", "arguments": {"p": ""# + payload + #""}}"#
        let c = try RawClient(h.path)
        let writer = Thread { c.send(command) }
        writer.start()
        let (bytes, error) = c.readToEOF()
        #expect(error == nil)
        #expect(bytes == Array((#"{"arguments":{"p":""# + payload + #""},"result":0}"#).utf8))
        // 8 MiB answer.
        let size = 8 << 20
        let big = try RawClient(h.path)
        big.send(#"{"command": "big", "arguments": {"size": \#(size)}}"#)
        let answer = big.readToEOF()
        #expect(answer.error == nil)
        #expect(
            answer.bytes
                == ControlAnswer.success(arguments: ["data": .string(String(repeating: "x", count: size))]).serialized()
        )
    }

    @Test func fiveHundredConcurrentClients() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        var clients: [RawClient] = []
        for _ in 0..<500 { clients.append(try RawClient(h.path)) }
        #expect(waitUntil { h.connectionCount == 500 }, "not all 500 connections were open at once")
        for c in clients { c.send(#"{"command": "count"}"#) }
        for c in clients { #expect(c.answer() == #"{"arguments":{},"result":0,"text":"counted"}"#) }
        #expect(try h.onLoop { h.calls["count"] } == 500)
        #expect(waitUntil { h.connectionCount == 0 })
    }

    /// The accept completion is reused for every connection; it must not grow with them. A regression wrapped the
    /// stored closure in two more reabstraction thunks per connection (each accept ran through all of them:
    /// quadratic time, and in the end a stack overflow). The stack depth at "connection opened", logged from
    /// inside the accept completion, must be the same for the 300th connection as for the 2nd.
    @Test func acceptCompletionDoesNotGrowWithConnections() throws {
        let depths = DepthRecorder()
        var logger = recordingLogger { event in
            guard event.message.description.hasPrefix("control connection opened") else { return }
            depths.record(Thread.callStackReturnAddresses.count)
        }
        logger.logLevel = .debug
        let h = try ServerHarness(logger: logger)
        defer { h.stop() }
        for _ in 0..<300 { _ = try exchange(h.path, #"{"command": "count"}"#) }
        let seen = depths.values
        #expect(seen.count == 300)
        if seen.count == 300 { #expect(seen[299] == seen[1], "stack depth at accept: \(seen[1]) then \(seen[299])") }
    }

    @Test func idleConnectionDoesNotDelayAnother() throws {
        let h = try ServerHarness(configure: { $0.inactivityTimeout = .seconds(30) })
        defer { h.stop() }
        let idle = try RawClient(h.path)
        let slow = try RawClient(h.path)
        slow.send(#"{"command": "co"#)
        let start = ContinuousClock.now
        #expect(try exchange(h.path, #"{"command": "count"}"#) == #"{"arguments":{},"result":0,"text":"counted"}"#)
        #expect(ContinuousClock.now - start < .seconds(5))
        _ = idle
    }
}

/// Stack depths recorded at "control connection opened", in order.
final class DepthRecorder: Sendable {
    private let depths = Mutex<[Int]>([])
    var values: [Int] { depths.withLock { $0 } }
    func record(_ depth: Int) { depths.withLock { $0.append(depth) } }
}
