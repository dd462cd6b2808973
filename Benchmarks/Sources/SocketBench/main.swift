// Socket benchmarks for IOLoop, mirroring Comparators/socket_libev_bench.c workload for workload.
//   swift run -c release SocketBench bulk [MiB]   — UNIX stream bulk read, 64 KiB reads into one reused buffer
//   swift run -c release SocketBench conn [count] — accept + read + write + close per connection
//   SocketBench read <socket path>                — compare's bulk_read reader: listens, accepts one connection
//                                                    (the writer is `bulk-stream write`), reads to EOF with 64 KiB
//                                                    reads into one reused buffer, prints one JSON line exactly
//                                                    like `bulk-stream read` (the C libev reader).
import Glibc
import IOLoop

func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

final class BulkReader {
    let socket: UnixStreamSocket
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 16)
    var received = 0
    lazy var onRead: TransferHandler = { [unowned self] error, n in
        if error != nil { return }
        self.received += n
        self.socket.asyncReadSome(into: self.buffer, self.onRead)
    }

    init(_ socket: UnixStreamSocket) { self.socket = socket }
    func start() { socket.asyncReadSome(into: buffer, onRead) }
}

func bulk(_ mib: Int) throws {
    let io = try IOService()
    var fds: [Int32] = [0, 0]
    guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0 else { fatalError("socketpair") }
    _ = fcntl(fds[0], F_SETFL, O_NONBLOCK)
    let socket = UnixStreamSocket(io)
    try socket.assign(fds[0])
    let reader = BulkReader(socket)
    let total = mib << 20
    let writerFD = fds[1]
    var thread = pthread_t()
    let t0 = now()
    let args = UnsafeMutablePointer<(Int32, Int)>.allocate(capacity: 1)
    args.initialize(to: (writerFD, total))
    pthread_create(
        &thread, nil,
        { raw in
            let p = raw!.assumingMemoryBound(to: (Int32, Int).self)
            let (fd, total) = p.pointee
            let buf = UnsafeMutableRawPointer.allocate(byteCount: 65536, alignment: 16)
            var left = total
            while left > 0 {
                let n = write(fd, buf, min(left, 65536))
                if n < 0 { if errno == EINTR { continue }; fatalError("write") }
                left -= n
            }
            close(fd)
            return nil
        }, args)
    reader.start()
    try io.run()
    let dt = now() - t0
    pthread_join(thread, nil)
    print("IOLoop bulk read: \(String(format: dt, reader.received)) (\(reader.received) bytes in \(dt) s)")
}

func String(format dt: Double, _ bytes: Int) -> String {
    let gbps = Double(bytes) / dt / 1e9
    return "\(Double(Int(gbps * 100)) / 100) GB/s"
}

final class ConnServer {
    let acceptor: UnixStreamAcceptor
    var served = 0
    let target: Int
    init(_ acceptor: UnixStreamAcceptor, target: Int) {
        self.acceptor = acceptor
        self.target = target
    }
    func next() {
        acceptor.asyncAccept { [self] r in
            guard case .success(let s) = r else { return }
            let buf = IOBuffer(capacity: 64)
            s.asyncReadSome(into: buf) { [self] e, n in
                guard e == nil else { s.close(); return }
                s.asyncWrite(buf.readableBytes) { [self] _, _ in
                    s.close()
                    served += 1
                    if served == target { acceptor.close() }
                }
            }
            if acceptor.isOpen { next() }
        }
    }
}

func conn(_ count: Int) throws {
    let io = try IOService()
    let path = "/tmp/ioloop_bench.sock"
    unlink(path)
    let acceptor = try UnixStreamAcceptor(io, path: path, options: UnixAcceptorOptions(backlog: 4096))
    let server = ConnServer(acceptor, target: count)
    server.next()
    let args = UnsafeMutablePointer<Int>.allocate(capacity: 1)
    args.initialize(to: count)
    var thread = pthread_t()
    let t0 = now()
    pthread_create(
        &thread, nil,
        { raw in
            let n = raw!.assumingMemoryBound(to: Int.self).pointee
            var sa = sockaddr_un()
            sa.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &sa.sun_path) { $0.copyBytes(from: "/tmp/ioloop_bench.sock".utf8) }
            let saLen = socklen_t(MemoryLayout<sockaddr_un>.size)
            var msg = [UInt8](repeating: 1, count: 64)
            for _ in 0..<n {
                let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
                let rc = withUnsafePointer(to: &sa) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, saLen) }
                }
                guard rc == 0 else { fatalError("connect") }
                _ = write(fd, &msg, 64)
                var got = 0
                while got < 64 {
                    let r = msg.withUnsafeMutableBytes { read(fd, $0.baseAddress! + got, 64 - got) }
                    if r <= 0 { fatalError("read") }
                    got += r
                }
                close(fd)
            }
            return nil
        }, args)
    try io.run()
    let dt = now() - t0
    pthread_join(thread, nil)
    print(
        "IOLoop accept+read+write+close: \(Int(Double(server.served) / dt)) connections/s (\(server.served) in \(dt) s)"
    )
}

/// Reads one accepted connection to EOF; times first byte → EOF like bulk_stream.c's reader.
final class ListenReader {
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 16)
    var socket: UnixStreamSocket?
    var total = 0
    var tFirst: UInt64 = 0
    var tLast: UInt64 = 0

    func onRead(_ error: IOError?, _ n: Int) {
        guard let socket else { return }
        if error != nil {
            tLast = monotonicNs()
            socket.close()
            return
        }
        if total == 0 { tFirst = monotonicNs() }
        total += n
        socket.asyncReadSome(into: buffer) { [unowned self] e, n in self.onRead(e, n) }
    }
}

func monotonicNs() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

func listenRead(_ path: String) throws {
    let io = try IOService()
    unlink(path)
    let acceptor = try UnixStreamAcceptor(io, path: path, options: UnixAcceptorOptions(backlog: 1))
    let reader = ListenReader()
    acceptor.asyncAccept { result in
        acceptor.close()
        guard case .success(let s) = result else { return }
        reader.socket = s
        s.asyncReadSome(into: reader.buffer) { [unowned reader] e, n in reader.onRead(e, n) }
    }
    print("ready \(path)")
    fflush(nil)
    try io.run()
    unlink(path)
    let secs = Double(reader.tLast &- reader.tFirst) / 1e9
    let mbps = secs > 0 ? Double(reader.total) / 1_048_576 / secs : 0
    print(
        #"{"impl":"ioloop","workload":"bulk_read","bytes":\#(reader.total),"mb_per_s":\#((mbps * 10).rounded() / 10)}"#)
}

let args = CommandLine.arguments
let mode = args.count > 1 ? args[1] : "bulk"
if mode == "read" {
    guard args.count > 2 else { fatalError("usage: SocketBench read <socket path>") }
    try listenRead(args[2])
} else if mode == "bulk" {
    try bulk(args.count > 2 ? Int(args[2])! : 8192)
} else {
    try conn(args.count > 2 ? Int(args[2])! : 20000)
}
