import Foundation
import Glibc
import Testing

@testable import IOLoop

@Suite("Stream sockets")
struct StreamSocketTests {
    /// Accepts connections forever and echoes everything back until the peer closes.
    final class EchoServer<S: StreamSocket> {
        let accept: (@escaping (Result<S, IOError>) throws -> Void) -> Void
        var connections: [ObjectIdentifier: S] = [:]
        var accepted = 0
        var stopAfter: Int

        init(stopAfter: Int = .max, accept: @escaping (@escaping (Result<S, IOError>) throws -> Void) -> Void) {
            self.accept = accept
            self.stopAfter = stopAfter
        }

        func start() {
            accept { [self] r in
                guard case .success(let s) = r else { return }
                accepted += 1
                connections[ObjectIdentifier(s)] = s
                echo(s, RawBuffer(4096))
                if accepted < stopAfter { start() }
            }
        }

        func echo(_ s: S, _ buf: RawBuffer) {
            s.asyncReadSome(into: buf.buffer) { [self] e, n in
                if e != nil {
                    s.close()
                    connections[ObjectIdentifier(s)] = nil
                    return
                }
                s.asyncWrite(UnsafeRawBufferPointer(rebasing: buf.buffer[0..<n])) { [self] e, _ in
                    if e == nil { echo(s, buf) } else { s.close() }
                }
            }
        }
    }

    @Test func unixEcho() throws {
        let io = try IOService()
        let dir = TempDir()
        let path = dir.file("echo.sock")
        let acceptor = try UnixStreamAcceptor(io, path: path)
        let server = EchoServer<UnixStreamSocket>(stopAfter: 1) { acceptor.asyncAccept($0) }
        server.start()
        let client = UnixStreamSocket(io)
        let reply = RawBuffer(5)
        var got: [UInt8] = []
        var credentials: PeerCredentials?
        client.asyncConnect(to: path) { e in
            #expect(e == nil)
            client.asyncWrite(Array("hello".utf8)) { e, n in
                #expect(e == nil && n == 5)
                client.asyncRead(exactly: reply.buffer) { e, n in
                    #expect(e == nil && n == 5)
                    got = reply.bytes
                    credentials = try? client.peerCredentials()
                    client.close()
                }
            }
        }
        try io.run(for: .seconds(5))
        #expect(got == Array("hello".utf8))
        #expect(credentials?.pid == getpid())
        #expect(credentials?.uid == getuid())
        #expect(fileMode(path) == 0o600)
        acceptor.close()
        #expect(!fileExists(path))
    }

    func tcpEcho(host: String) throws {
        let io = try IOService()
        let acceptor = try TCPAcceptor(io, host: host, port: 0)
        #expect(acceptor.port != 0)
        let server = EchoServer<TCPSocket>(stopAfter: 1) { acceptor.asyncAccept($0) }
        server.start()
        let client = TCPSocket(io)
        let reply = RawBuffer(4)
        var got: [UInt8] = []
        client.asyncConnect(host: host, port: acceptor.port) { e in
            #expect(e == nil)
            #expect(client.noDelay)
            client.asyncWrite(Array("ping".utf8)) { e, _ in
                #expect(e == nil)
                client.asyncRead(exactly: reply.buffer) { e, _ in
                    #expect(e == nil)
                    got = reply.bytes
                    client.close()
                }
            }
        }
        try io.run(for: .seconds(5))
        #expect(got == Array("ping".utf8))
        acceptor.close()
    }

    @Test func tcpEchoIPv4() throws { try tcpEcho(host: "127.0.0.1") }
    @Test func tcpEchoIPv6() throws { try tcpEcho(host: "::1") }

    @Test func tcpConnectRefusedAndByName() throws {
        let io = try IOService()
        // A port nobody listens on: an ephemeral port bound and held, never listening. (A listener opened and
        // closed would do only until a process spawned meanwhile by a parallel test holds a copy of it between
        // its fork and its exec: the connect would then complete.)
        let holder = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        defer { close(holder) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(holder, $0, length) == 0 && getsockname(holder, $0, &length) == 0
            }
        }
        #expect(bound)
        let port = UInt16(bigEndian: address.sin_port)
        let client = TCPSocket(io)
        var error: IOError?
        client.asyncConnect(host: "127.0.0.1", port: port) { error = $0 }
        try io.run(for: .seconds(5))
        #expect(error?.errnoValue == ECONNREFUSED)
        #expect(!client.isOpen)

        // "localhost" may resolve to ::1 first; the connect falls through to an address that answers.
        io.restart()
        let acceptor = try TCPAcceptor(io, host: "127.0.0.1", port: 0)
        var accepted = false
        acceptor.asyncAccept { r in accepted = (try? r.get()) != nil }
        var connectError: IOError? = IOError(.invalidArgument)
        client.asyncConnect(host: "localhost", port: acceptor.port) { connectError = $0 }
        try io.run(for: .seconds(5))
        #expect(connectError == nil)
        #expect(accepted)
    }

    @Test func bulkTransferRandomChunks() throws {
        let io = try IOService()
        let (a, b) = try UnixStreamSocket.pair(io)
        let total = 8 << 20
        var rng = TestRNG(seed: 42)
        var data = [UInt8](repeating: 0, count: total)
        for i in 0..<total { data[i] = UInt8(truncatingIfNeeded: i &* 2_654_435_761 >> 13) }
        var sent = 0
        func writeNext() {
            guard sent < total else {
                try? a.shutdown(.write)
                return
            }
            let n = min(Int.random(in: 1...200_000, using: &rng), total - sent)
            let chunk = Array(data[sent..<sent + n])
            a.asyncWrite(chunk) { e, written in
                #expect(e == nil && written == n)
                sent += n
                writeNext()
            }
        }
        var received = [UInt8]()
        received.reserveCapacity(total)
        let buf = RawBuffer(256 * 1024)
        var readRNG = TestRNG(seed: 7)
        var sawEOF = false
        func readNext() {
            let n = Int.random(in: 1...buf.buffer.count, using: &readRNG)
            b.asyncReadSome(into: UnsafeMutableRawBufferPointer(rebasing: buf.buffer[0..<n])) { e, got in
                if e == .eof {
                    sawEOF = true
                    return
                }
                #expect(e == nil)
                #expect(got > 0 && got <= n)
                received.append(contentsOf: buf.buffer[0..<got])
                readNext()
            }
        }
        writeNext()
        readNext()
        try io.run(for: .seconds(20))
        #expect(sawEOF)
        #expect(received.count == total)
        #expect(received == data)
    }

    @Test func ioBufferAndReadExactly() throws {
        let io = try IOService()
        let (a, b) = try UnixStreamSocket.pair(io)
        let buffer = IOBuffer(capacity: 64)
        var steps: [Int] = []
        a.asyncWrite(Array(0..<10)) { _, _ in }
        b.asyncRead(exactly: 4, into: buffer) { e, n in
            #expect(e == nil)
            steps.append(n)
            #expect(buffer.bytes == [0, 1, 2, 3])
            b.asyncReadSome(into: buffer) { e, n in
                #expect(e == nil)
                steps.append(n)
                #expect(buffer.bytes == Array(0..<10))
                buffer.removeFirst(8)
                #expect(buffer.bytes == [8, 9])
                a.close()
                b.asyncRead(exactly: 10, into: buffer) { e, n in
                    #expect(e == .eof)
                    steps.append(n)
                }
            }
        }
        try io.run(for: .seconds(5))
        #expect(steps == [4, 6, 0])
    }

    @Test func completionNeverInlineEvenWhenDataIsWaiting() throws {
        let io = try IOService()
        let (a, b) = try UnixStreamSocket.pair(io)
        let msg: [UInt8] = [1, 2, 3]
        _ = msg.withUnsafeBytes { send(a.nativeHandle, $0.baseAddress, 3, 0) }
        let buf = RawBuffer(16)
        var inCall = true
        var ranInline = false
        var count = 0
        b.asyncReadSome(into: buf.buffer) { _, n in
            ranInline = inCall
            count = n
        }
        var writeInline = false
        a.asyncWrite(msg) { _, _ in writeInline = inCall }
        inCall = false
        #expect(try io.run(for: .seconds(5)) == 2)
        #expect(!ranInline && !writeInline)
        #expect(count == 3)
    }

    /// `readSome`/`writeSome` (Asio's non-blocking `read_some`/`write_some`): what is there now, nil for "would
    /// block", `.eof` once the peer closed, `EPIPE` for a write to a closed peer, and no handler or work involved.
    @Test func readSomeAndWriteSomeDoNotWait() throws {
        let io = try IOService()
        let (a, b) = try UnixStreamSocket.pair(io)
        let buf = RawBuffer(64)
        #expect(try b.readSome(into: buf.buffer) == nil)
        #expect(try a.writeSome(UnsafeRawBufferPointer(start: nil, count: 0)) == 0)
        let msg: [UInt8] = [7, 8, 9, 10]
        #expect(try msg.withUnsafeBytes { try a.writeSome($0) } == 4)
        #expect(try b.readSome(into: UnsafeMutableRawBufferPointer(rebasing: buf.buffer[0..<3])) == 3)
        #expect(buf.prefix(3) == [7, 8, 9])
        #expect(try b.readSome(into: buf.buffer) == 1)
        #expect(buf.prefix(1) == [10])
        #expect(try b.readSome(into: buf.buffer) == nil)
        #expect(io.outstandingWork == 0)

        // A full send buffer: writeSome takes what fits, then nil; the reader gets every byte in order.
        let chunk = [UInt8](repeating: 0x5A, count: 65536)
        var sent = 0
        while let n = try chunk.withUnsafeBytes({ try a.writeSome($0) }) { sent += n }
        #expect(sent > 0)
        var received = 0
        while let n = try b.readSome(into: buf.buffer) { received += n }
        #expect(received == sent)

        // The peer closes: the reader sees end of stream, the writer EPIPE (never SIGPIPE). A process that a
        // parallel test spawns holds a copy of every descriptor from its fork to its exec (CLOEXEC closes them
        // only at the exec), so the peer's close takes effect when that copy goes: wait for the hang-up first.
        a.close()
        #expect(awaitPeerHangUp(b.nativeHandle))
        #expect(throws: IOError.eof) { try b.readSome(into: buf.buffer) }
        let (c, d) = try UnixStreamSocket.pair(io)
        d.close()
        #expect(awaitPeerHangUp(c.nativeHandle))
        #expect { try msg.withUnsafeBytes { try c.writeSome($0) } } throws: { ($0 as? IOError)?.errnoValue == EPIPE }
        c.close()
        #expect(throws: IOError.self) { try c.readSome(into: buf.buffer) }
        #expect(try io.poll() == 0)
    }

    /// Waits (up to 10 s) until the peer of `fd` has closed: `poll` reports `POLLHUP` once no descriptor for the
    /// other end remains open in any process.
    private func awaitPeerHangUp(_ fd: Int32) -> Bool {
        // No events asked for: POLLHUP is reported regardless, so the one poll returns when the hang-up comes.
        var p = pollfd(fd: fd, events: 0, revents: 0)
        return Glibc.poll(&p, 1, 10_000) == 1 && p.revents & Int16(POLLHUP) != 0
    }

    /// `asyncWriteSome` (Asio's `async_write_some`) completes after the first send that takes bytes — part of a
    /// write larger than the socket buffer — never inline; an empty write completes with 0.
    @Test func asyncWriteSomeCompletesAfterTheFirstSend() throws {
        let io = try IOService()
        let (a, b) = try UnixStreamSocket.pair(io)
        let big = [UInt8](repeating: 0x42, count: 8 << 20)
        var first = -1
        var inCall = true
        var ranInline = false
        a.asyncWriteSome(big) { error, n in
            #expect(error == nil)
            ranInline = inCall
            first = n
        }
        inCall = false
        #expect(try io.run(for: .seconds(10)) == 1)
        #expect(!ranInline)
        #expect(first > 0 && first < big.count, "wrote \(first) of \(big.count) bytes")
        io.restart()  // run() stopped the service when its work ran out
        var empty = -1
        a.asyncWriteSome([]) { _, n in empty = n }
        try io.run(for: .seconds(10))
        io.restart()
        #expect(empty == 0)
        // Full send buffer: the next write waits for the reader, then completes with what fit.
        let payload = RawBuffer(1 << 20)
        var second = -1
        a.asyncWriteSome(UnsafeRawBufferPointer(payload.buffer)) { _, n in second = n }
        let sink = RawBuffer(1 << 16)
        var drained = 0
        func drain() {
            b.asyncReadSome(into: sink.buffer) { error, n in
                drained += n
                if error == nil && second < 0 { drain() }
            }
        }
        drain()
        try io.run(for: .seconds(10))
        #expect(second > 0 && second <= payload.buffer.count)
        #expect(drained > 0)
        _ = (a, b)
    }

    @Test func halfClose() throws {
        let io = try IOService()
        let dir = TempDir()
        let acceptor = try UnixStreamAcceptor(io, path: dir.file("h.sock"))
        var serverGot = [UInt8]()
        var clientGot = [UInt8]()
        var server: UnixStreamSocket?
        let sbuf = RawBuffer(64)
        acceptor.asyncAccept { r in
            let s = try r.get()
            server = s
            func drain() {
                s.asyncReadSome(into: sbuf.buffer) { e, n in
                    if e == .eof {
                        // The client shut down its sending side; this side can still write.
                        s.asyncWrite(Array("bye".utf8)) { e, _ in
                            #expect(e == nil)
                            s.close()
                        }
                        return
                    }
                    serverGot += sbuf.prefix(n)
                    drain()
                }
            }
            drain()
        }
        let client = UnixStreamSocket(io)
        let cbuf = RawBuffer(64)
        client.asyncConnect(to: acceptor.path) { e in
            #expect(e == nil)
            client.asyncWrite(Array("request".utf8)) { e, _ in
                #expect(e == nil)
                try client.shutdown(.write)
                func drain() {
                    client.asyncReadSome(into: cbuf.buffer) { e, n in
                        if e == .eof { return }
                        clientGot += cbuf.prefix(n)
                        drain()
                    }
                }
                drain()
            }
        }
        try io.run(for: .seconds(5))
        #expect(serverGot == Array("request".utf8))
        #expect(clientGot == Array("bye".utf8))
        _ = server
    }

    @Test func peerResetAndNoSIGPIPE() throws {
        let io = try IOService()
        let acceptor = try TCPAcceptor(io, host: "127.0.0.1", port: 0)
        var readError: IOError?
        var writeError: IOError?
        var writeCount = -1
        var server: TCPSocket?
        acceptor.asyncAccept { r in
            let s = try r.get()
            server = s
            // Abortive close: SO_LINGER with a zero timeout sends RST.
            var l = linger(l_onoff: 1, l_linger: 0)
            setsockopt(s.nativeHandle, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size))
            s.close()
        }
        let client = TCPSocket(io)
        let buf = RawBuffer(16)
        client.asyncConnect(host: "127.0.0.1", port: acceptor.port) { e in
            #expect(e == nil)
            client.asyncReadSome(into: buf.buffer) { e, _ in
                readError = e
                // Writing to a reset connection: EPIPE or ECONNRESET, never SIGPIPE.
                client.asyncWrite([UInt8](repeating: 1, count: 1 << 20)) { e, n in
                    writeError = e
                    writeCount = n
                }
            }
        }
        try io.run(for: .seconds(5))
        #expect(readError?.errnoValue == ECONNRESET)
        #expect(writeError?.errnoValue == EPIPE || writeError?.errnoValue == ECONNRESET)
        #expect(writeCount >= 0 && writeCount < 1 << 20)
        _ = server
    }

    @Test func writeToClosedUnixPeerGivesEPIPE() throws {
        let io = try IOService()
        let (a, b) = try UnixStreamSocket.pair(io)
        b.close()
        #expect(awaitPeerHangUp(a.nativeHandle))  // a spawned child's fork-to-exec copy of b (see above)
        var error: IOError?
        var count = -1
        a.asyncWrite([1, 2, 3]) { e, n in
            error = e
            count = n
        }
        try io.run(for: .seconds(5))
        #expect(error?.errnoValue == EPIPE)
        #expect(count == 0)
        #expect(error?.description.contains("EPIPE") == true)
    }

    @Test func cancelPendingReadCompletesOnceAndSocketStaysUsable() throws {
        let io = try IOService()
        let (a, b) = try UnixStreamSocket.pair(io)
        let buf = RawBuffer(8)
        var results: [IOError?] = []
        b.asyncReadSome(into: buf.buffer) { e, n in
            results.append(e)
            #expect(n == 0)
        }
        #expect(b.readPending)
        #expect(try io.poll() == 0)
        b.cancel()
        b.cancel()
        #expect(try io.poll() == 1)
        #expect(results.count == 1 && results[0] == .operationAborted)
        // Still open and usable. (Out of work after the poll, the service stopped: restart it, as in Asio.)
        io.restart()
        a.asyncWrite([9]) { _, _ in }
        var after = 0
        b.asyncReadSome(into: buf.buffer) { e, n in
            #expect(e == nil)
            after = n
        }
        try io.run(for: .seconds(5))
        #expect(after == 1)
        #expect(results.count == 1)
    }

    @Test func closeWithPendingReadAndWrite() throws {
        let io = try IOService()
        let (a, b) = try UnixStreamSocket.pair(io)
        // Fill the socket buffer so a write stays pending.
        var big = [UInt8](repeating: 0, count: 8 << 20)
        big[0] = 1
        var writeResult: (IOError?, Int)?
        var readResult: IOError??
        a.asyncWrite(big) { e, n in writeResult = (e, n) }
        let buf = RawBuffer(8)
        a.asyncReadSome(into: buf.buffer) { e, _ in readResult = .some(e) }
        #expect(try io.poll() == 0)
        #expect(a.writePending && a.readPending)
        a.close()
        a.close()
        try io.run(for: .seconds(5))
        #expect(readResult == .some(.operationAborted))
        #expect(writeResult?.0 == .operationAborted)
        #expect((writeResult?.1 ?? 0) > 0 && (writeResult?.1 ?? 0) < big.count)
        #expect(!a.isOpen)
        _ = b
    }

    @Test func closeWithPendingAccept() throws {
        let io = try IOService()
        let dir = TempDir()
        let path = dir.file("a.sock")
        let acceptor = try UnixStreamAcceptor(io, path: path, options: UnixAcceptorOptions(useLockFile: true))
        var results: [Result<UnixStreamSocket, IOError>] = []
        acceptor.asyncAccept { results.append($0) }
        #expect(try io.poll() == 0)
        #expect(fileExists(path) && fileExists(path + ".lock"))
        acceptor.close()
        acceptor.close()
        #expect(try io.run(for: .seconds(5)) == 1)
        #expect(results.count == 1)
        if case .failure(let e) = results.first {
            #expect(e == .operationAborted)
        } else {
            Issue.record("accept did not fail")
        }
        #expect(!fileExists(path))
        #expect(!fileExists(path + ".lock"))
    }

    @Test func thousandConcurrentUnixConnections() throws {
        let io = try IOService()
        let dir = TempDir()
        let path = dir.file("k.sock")
        let n = 1000
        // Two descriptors per connection, plus what the other tests running in parallel hold.
        #expect(raiseDescriptorLimit(to: 4096) >= 2 * n + 256, "RLIMIT_NOFILE hard limit too low for this test")
        let acceptor = try UnixStreamAcceptor(io, path: path, options: UnixAcceptorOptions(backlog: 128))
        let server = EchoServer<UnixStreamSocket>(stopAfter: n) { acceptor.asyncAccept($0) }
        server.start()
        var done = 0
        var clients: [UnixStreamSocket] = []
        for i in 0..<n {
            let c = UnixStreamSocket(io)
            clients.append(c)
            let buf = RawBuffer(4)
            let msg = withUnsafeBytes(of: UInt32(i).littleEndian) { Array($0) }
            c.asyncConnect(to: path) { e in
                #expect(e == nil)
                c.asyncWrite(msg) { e, _ in
                    #expect(e == nil)
                    c.asyncRead(exactly: buf.buffer) { e, _ in
                        #expect(e == nil)
                        #expect(buf.bytes == msg)
                        c.close()
                        done += 1
                    }
                }
            }
        }
        try io.run(for: .seconds(20))
        #expect(done == n)
        #expect(server.accepted == n)
    }

    @Test func serviceShutdownDropsPendingHandlersUncalled() throws {
        let io = try IOService()
        let dir = TempDir()
        let acceptor = try UnixStreamAcceptor(io, path: dir.file("sd.sock"))
        let (a, b) = try UnixStreamSocket.pair(io)
        let udp = try UDPSocket(io, port: 0)
        let buf = RawBuffer(8)
        var called = 0
        acceptor.asyncAccept { _ in called += 1 }
        a.asyncReadSome(into: buf.buffer) { _, _ in called += 1 }
        udp.asyncReceiveFrom(into: buf.buffer) { _, _, _ in called += 1 }
        // One completion already queued, too.
        b.asyncWrite([1]) { _, _ in called += 1 }
        #expect(io.outstandingWork == 4)
        weak let weakA = a
        io.shutdown()
        #expect(io.outstandingWork == 0)
        #expect(try io.run() == 0)
        #expect(called == 0)
        // The pending read no longer keeps its socket alive once the service dropped it.
        _ = consume a
        #expect(weakA == nil)
        _ = (b, udp, acceptor)
    }

    /// The shutdown registry is an array with swap-removal: sockets come and go in any order, and dropping one
    /// socket's handler may release other registered sockets (here: the only references to them).
    @Test func shutdownAfterSocketsComeAndGoReleasesExactlyThePendingOnes() throws {
        let io = try IOService()
        let buf = RawBuffer(8)
        var called = 0
        var keep: [UnixStreamSocket] = []
        for i in 0..<50 {
            let (a, b) = try UnixStreamSocket.pair(io)
            if i % 3 == 0 { keep.append(a) }  // the others leave the registry at once, from various slots
            _ = b
        }
        weak var captured: UnixStreamSocket?
        do {
            let (x, y) = try UnixStreamSocket.pair(io)
            captured = y
            // x's pending read handler owns y: dropping it during shutdown deallocates a registered socket.
            x.asyncReadSome(into: buf.buffer) { _, _ in
                called += 1
                _ = y
            }
            keep.append(x)
        }
        for s in keep.prefix(5) { s.asyncReadSome(into: buf.buffer) { _, _ in called += 1 } }
        #expect(io.outstandingWork == 6)
        #expect(captured != nil)
        io.shutdown()
        #expect(io.outstandingWork == 0)
        #expect(captured == nil)
        #expect(try io.run() == 0)
        #expect(called == 0)
        keep.removeAll()
    }

    /// Between batches the loop may skip sampling the kernel while handlers keep coming (at most 50 µs): a
    /// handler chain that re-posts itself forever must still let I/O readiness through, in both run() and poll().
    /// Loop-thread state of the chain below (touched only on the thread running the service).
    final class ChainState: @unchecked Sendable {
        var readDone = false
        var runs = 0
        let writeAt: Int
        let peer: Int32
        init(writeAt: Int, peer: Int32) {
            self.writeAt = writeAt
            self.peer = peer
        }
    }

    static func chain(_ io: IOService, _ state: ChainState) {
        state.runs += 1
        if state.runs == state.writeAt { _ = Glibc.write(state.peer, [UInt8(7)], 1) }
        if !state.readDone { io.post { chain(io, state) } }
    }

    /// Between batches the loop may skip sampling the kernel while handlers keep coming (at most 50 µs): a
    /// handler chain that re-posts itself forever must still let I/O readiness through, in run() and in poll().
    @Test func selfRepostingChainDoesNotStarveIO() throws {
        let io = try IOService()
        let (a, b) = try UnixStreamSocket.pair(io)
        let buf = RawBuffer(8)
        let state = ChainState(writeAt: 100, peer: b.nativeHandle)
        a.asyncReadSome(into: buf.buffer) { error, n in
            #expect(error == nil && n == 1)
            state.readDone = true
        }
        io.post { Self.chain(io, state) }
        try io.run(for: .seconds(10))
        #expect(state.readDone)
        #expect(state.runs < 1_000_000, "the read waited for \(state.runs) chained handlers")

        // The same through poll(maxHandlers:) calls that never empty the queue.
        io.restart()  // run() stopped the service when it ran out of work
        let second = ChainState(writeAt: 1, peer: b.nativeHandle)
        var secondDone = false
        a.asyncReadSome(into: buf.buffer) { _, _ in secondDone = true }
        io.post { Self.chain(io, second) }
        let deadline = SteadyInstant.now() + .seconds(10)
        while !secondDone && SteadyInstant.now() < deadline { try io.poll(maxHandlers: 10) }
        #expect(secondDone)
        second.readDone = true
        try io.poll()
        _ = (a, b)
    }

    @Test func secondReadIsAPreconditionFailure() async {
        await #expect(processExitsWith: .failure) {
            let io = try IOService()
            let (_, b) = try UnixStreamSocket.pair(io)
            let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: 8, alignment: 1)
            b.asyncReadSome(into: buf) { _, _ in }
            b.asyncReadSome(into: buf) { _, _ in }
        }
    }
}
