// ControlClient against ControlSocketServer and against hand-made misbehaving peers, over real sockets.

import CLibev
import Foundation
import Glibc
import IOLoop
import Synchronization
import Testing

@testable import ControlChannel

/// A listening UNIX socket run by hand (plain POSIX calls on a thread), to play a misbehaving server.
final class RawListener: @unchecked Sendable {
    let fd: Int32
    let path: String
    private let done = DispatchSemaphore(value: 0)

    init(_ path: String, listen backlog: Int32 = 16) throws {
        self.path = path
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        try bindUnix(fd, path)
        guard Glibc.listen(fd, backlog) == 0 else { throw TestError(description: "listen: \(errno)") }
    }

    /// Accepts one connection on a thread and hands it to `body`, then closes it.
    func serveOnce(_ body: @escaping @Sendable (Int32) -> Void) {
        let fd = self.fd
        let thread = Thread { [done] in
            let c = ioloop_accept4(fd, Int32(SOCK_CLOEXEC.rawValue))  // never inherited by a spawned child
            if c >= 0 {
                body(c)
                close(c)
            }
            done.signal()
        }
        thread.start()
    }

    func waitServed() -> Bool { done.wait(timeout: .now() + 10) == .success }

    deinit { close(fd) }
}

func bindUnix(_ fd: Int32, _ path: String) throws {
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: Array(path.utf8) + [0]) }
    let rc = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    guard rc == 0 else { throw TestError(description: "bind \(path): errno \(errno)") }
}

/// Leaves a socket file with no server behind it at `path` (what a crashed server leaves).
func makeStaleSocket(_ path: String) throws {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    defer { close(fd) }
    try bindUnix(fd, path)
}

/// Waits until `fd` is readable (at most 10 s).
func waitReadable(_ fd: Int32) {
    var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
    _ = poll(&p, 1, 10_000)
}

/// Reads the client's command up to its half-close, so closing afterwards gives the client EOF, not a reset.
func drainCommand(_ fd: Int32) {
    var scratch = [UInt8](repeating: 0, count: 4096)
    while read(fd, &scratch, scratch.count) > 0 {}
}

@Suite("ControlClient")
struct ControlClientTests {
    @Test func asyncAndBlockingAgainstOurServer() async throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let client = ControlClient(socketPath: h.path, timeout: .seconds(5))
        let r = try await client.send("list-commands")
        #expect(r.answer.result == 0)
        #expect(r.answer.arguments.arrayValue?.contains("echo") == true)
        #expect(r.json == (try JSONParser.parse(r.bytes)))
        let e = try await client.send("echo", arguments: ["x": [1, 2.5, "ü"]])
        #expect(e.bytes == Array(#"{"arguments":{"x":[1,2.5,"ü"]},"result":0}"#.utf8))
        let u = try await client.send("nope")
        #expect(u.answer == ControlAnswer(.unsupported, text: "'nope' command not supported."))
        let s = try await client.send("count", service: ["dhcp4"])
        #expect(s.answer.text == "counted")
        let b = try client.sendBlocking("result", arguments: ["result": 3])
        #expect(b.answer.result == 3 && b.answer.text == "as asked")
        let big = try await client.send("big", arguments: ["size": .integer(8 << 20)])
        #expect(big.answer.arguments["data"]?.stringValue?.utf8.count == 8 << 20)
    }

    @Test func manyConcurrentSends() async throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let client = ControlClient(socketPath: h.path, timeout: .seconds(10))
        let results = try await withThrowingTaskGroup(of: Int.self) { group in
            for i in 0..<200 {
                group.addTask {
                    let r = try await client.send("echo", arguments: ["i": .integer(Int64(i))])
                    return Int(r.answer.arguments["i"]?.intValue ?? -1)
                }
            }
            var seen: [Int] = []
            for try await i in group { seen.append(i) }
            return seen
        }
        #expect(results.sorted() == Array(0..<200))
    }

    @Test func transportErrors() async throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let missing = dir.file("missing.sock")
        await #expect(throws: ControlClientError.noSocket(path: missing)) {
            try await ControlClient(socketPath: missing).send("list-commands")
        }
        #expect(throws: ControlClientError.noSocket(path: missing)) {
            try ControlClient(socketPath: missing).sendBlocking("list-commands")
        }
        let stale = dir.file("stale.sock")
        try makeStaleSocket(stale)
        do {
            _ = try await ControlClient(socketPath: stale).send("list-commands")
            Issue.record("no error")
        } catch {
            guard case .connectionRefused(let path, let detail) = error else {
                Issue.record("\(error)")
                return
            }
            #expect(path == stale && detail.contains("stale"))
            #expect(error.description.hasPrefix("connection refused by \(stale)"))
        }
        let file = dir.file("file.sock")
        _ = FileManager.default.createFile(atPath: file, contents: Data())
        do {
            _ = try ControlClient(socketPath: file).sendBlocking("list-commands")
            Issue.record("no error")
        } catch {
            #expect(error == .connectionRefused(path: file, detail: "\(file) is a regular file, not a socket"))
        }
        let long = "/tmp/" + String(repeating: "l", count: 120)
        do {
            _ = try await ControlClient(socketPath: long).send("list-commands")
            Issue.record("no error")
        } catch {
            guard case .transport(_, let e) = error else {
                Issue.record("\(error)")
                return
            }
            #expect(e.errnoValue == ENAMETOOLONG)
        }
    }

    @Test func timesOut() async throws {
        let h = try ServerHarness()
        defer { h.stop() }
        do {
            _ = try await ControlClient(socketPath: h.path).send("never", timeout: .milliseconds(200))
            Issue.record("no error")
        } catch {
            #expect(
                error
                    == .timedOut(path: h.path, timeout: .milliseconds(200), stage: .waitingForAnswer, bytesReceived: 0))
            #expect(
                error.description
                    == "timed out after 200 ms waiting for the answer on \(h.path) (0 bytes of answer received)")
        }
        // Timed on the blocking variant: the async one's resumption also waits for a free cooperative thread.
        let start = ContinuousClock.now
        #expect(throws: ControlClientError.self) {
            try ControlClient(socketPath: h.path).sendBlocking("never", timeout: .milliseconds(100))
        }
        #expect(ContinuousClock.now - start < .seconds(5))
    }

    @Test func closedWithoutAnswerAndInvalidAnswers() async throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let path = dir.file("raw.sock")
        let listener = try RawListener(path)
        listener.serveOnce { fd in drainCommand(fd) }
        await #expect(
            throws: ControlClientError.closedWithoutAnswer(path: path, bytesReceived: 0, detail: "end of stream")
        ) {
            try await ControlClient(socketPath: path).send("list-commands")
        }
        #expect(listener.waitServed())

        listener.serveOnce { fd in
            waitReadable(fd)
            _ = write(fd, "hello", 5)
        }
        do {
            _ = try await ControlClient(socketPath: path).send("list-commands")
            Issue.record("no error")
        } catch {
            guard case .invalidAnswer(_, let reason, let bytes) = error else {
                Issue.record("\(error)")
                return
            }
            #expect(bytes == Array("hello".utf8) && reason.hasPrefix("not JSON"))
        }
        #expect(listener.waitServed())

        listener.serveOnce { fd in
            drainCommand(fd)
            _ = write(fd, #"{"result": 0, "argu"#, 19)
        }
        await #expect(
            throws: ControlClientError.closedWithoutAnswer(path: path, bytesReceived: 19, detail: "end of stream")
        ) {
            try await ControlClient(socketPath: path).send("list-commands")
        }
        #expect(listener.waitServed())

        listener.serveOnce { fd in
            waitReadable(fd)
            _ = write(fd, #"{"text": "no result"}"#, 21)
        }
        do {
            _ = try await ControlClient(socketPath: path).send("list-commands")
            Issue.record("no error")
        } catch {
            #expect("\(error)".contains("expected a map with an integer 'result'"))
        }
        #expect(listener.waitServed())
    }

    @Test func answerFollowedByConnectionResetIsAccepted() async throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let path = dir.file("raw.sock")
        let listener = try RawListener(path)
        let answer = #"{ "arguments": [ "list-commands" ], "result": 0 }"#
        listener.serveOnce { fd in
            waitReadable(fd)
            // Answer, then close with the command unread: the kernel resets the connection.
            _ = write(fd, answer, answer.utf8.count)
        }
        let r = try await ControlClient(socketPath: path).send("list-commands")
        #expect(r.bytes == Array(answer.utf8) && r.answer.arguments == ["list-commands"])
        #expect(listener.waitServed())
        // A list of answers (the Kea control agent's form).
        let list = #"[ { "arguments": {  }, "result": 0 }, { "result": 1, "text": "x" } ]"#
        listener.serveOnce { fd in
            waitReadable(fd)
            _ = write(fd, list, list.utf8.count)
        }
        let l = try ControlClient(socketPath: path).sendBlocking("list-commands")
        #expect(l.answers.map(\.result) == [0, 1])
        #expect(listener.waitServed())
    }

    @Test func hearsAnEarlyAnswerWhileStillWriting() async throws {
        let h = try ServerHarness(configure: { $0.maxCommandSize = 1000 })
        defer { h.stop() }
        let client = ControlClient(socketPath: h.path, timeout: .seconds(10))
        // The server answers after 1000 bytes and closes while the client is still writing 4 MiB.
        let tooLarge = try await client.send(
            "echo", arguments: ["pad": .string(String(repeating: "p", count: 4 << 20))])
        #expect(tooLarge.answer == .error("command too large: more than 1000 bytes"))
        let deep = try await client.send(raw: Array(repeating: UInt8(ascii: "["), count: 1_000_000))
        #expect(deep.answer == .error("nesting too deep: more than 100 levels of lists and maps"))
        let blocking = try client.sendBlocking(raw: Array("utter nonsense".utf8))
        #expect(blocking.answer == .error("invalid first character u"))
    }

    @Test func connectRetriesWhileTheListenersBacklogIsFull() async throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let path = dir.file("backlog.sock")
        let listener = try RawListener(path, listen: 1)
        let client = ControlClient(socketPath: path, timeout: .seconds(20))
        let answer = #"{"result": 0, "text": "served"}"#
        let count = 20
        let sends = Task {
            try await withThrowingTaskGroup(of: Int.self) { group in
                for _ in 0..<count { group.addTask { try await client.send("x").answer.result } }
                return try await group.reduce(0) { $0 + ($1 == 0 ? 1 : 0) }
            }
        }
        // A plain thread serves them one by one (the test's own task must not block a cooperative thread).
        let served = Atomic<Int>(0)
        let server = Thread {
            for _ in 0..<count {
                listener.serveOnce { fd in
                    drainCommand(fd)
                    if write(fd, answer, answer.utf8.count) == answer.utf8.count { served.add(1, ordering: .relaxed) }
                }
                // Sequencing only: one accept at a time keeps the backlog full. Counting happens in the body, so
                // a slow round (past this wait's bound on a loaded machine) is still counted when it completes.
                _ = listener.waitServed()
            }
        }
        server.start()
        #expect(try await sends.value == count)
        #expect(await eventually { served.load(ordering: .relaxed) == count })
    }

    @Test func cancellationClosesTheConnection() async throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let client = ControlClient(socketPath: h.path)
        let task = Task { try await client.send("never", timeout: .seconds(30)) }
        #expect(await eventually { h.connectionCount == 1 })
        task.cancel()
        let result = await task.result
        #expect(throws: ControlClientError.cancelled(path: h.path)) { try result.get() }
    }

    /// TSan finding (SEGV in IOService.removeShutdownHook from CancelToken's deinit): the async API's exchange,
    /// held by the call's CancelToken, was released by the awaiting task's thread after the answer, so its
    /// socket's deinit mutated the client loop's IOService from a foreign thread while the loop ran.
    @Test func asyncExchangesAreReleasedOnTheClientLoopThread() async throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let before = ControlExchange.releasedOffTheLoopThread.load(ordering: .relaxed)
        let client = ControlClient(socketPath: h.path)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<50 {
                group.addTask {
                    let answer = try await client.send("echo")
                    #expect(answer.json["result"] == 0)
                }
            }
            try await group.waitForAll()
        }
        // Let the loop finish releasing what it still holds.
        _ = await eventually(.seconds(1)) { false }
        #expect(ControlExchange.releasedOffTheLoopThread.load(ordering: .relaxed) == before)
    }
}
