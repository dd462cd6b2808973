import Foundation
import Glibc

@testable import IOLoop

/// A fresh, short-named temporary directory (UNIX socket paths must stay under 108 bytes), removed on deinit.
final class TempDir {
    let path: String

    init() {
        var template = Array("/tmp/iol.XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        precondition(made != nil, "mkdtemp failed")
        path = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    func file(_ name: String) -> String { path + "/" + name }

    deinit { try? FileManager.default.removeItem(atPath: path) }
}

/// A deterministic generator (xorshift64*) so "random" chunk sizes are reproducible.
struct TestRNG: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed == 0 ? 0x9E37_79B9_7F4A_7C15 : seed }
    mutating func next() -> UInt64 {
        state ^= state >> 12
        state ^= state << 25
        state ^= state >> 27
        return state &* 0x2545_F491_4F6C_DD1D
    }
}

func fileExists(_ path: String) -> Bool {
    var st = stat()
    return lstat(path, &st) == 0
}

func fileMode(_ path: String) -> mode_t {
    var st = stat()
    guard lstat(path, &st) == 0 else { return 0 }
    return st.st_mode & 0o7777
}

/// Creates a socket file at `path` with no server behind it (bound, then closed without unlinking).
func makeStaleSocket(_ path: String) throws {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    defer { close(fd) }
    let addr = try SocketAddress(unixPath: path)
    let rc = addr.withSockAddr { bind(fd, $0, $1) }
    precondition(rc == 0, "bind for stale socket failed: \(errno)")
}

/// An owned byte region for reads in tests.
final class RawBuffer {
    let buffer: UnsafeMutableRawBufferPointer
    init(_ count: Int) { buffer = .allocate(byteCount: count, alignment: 16) }
    deinit { buffer.deallocate() }
    var bytes: [UInt8] { Array(buffer) }
    func prefix(_ n: Int) -> [UInt8] { Array(buffer[0..<n]) }
}

/// Raises the soft descriptor limit towards `wanted` (never above the hard limit); returns the new soft limit.
func raiseDescriptorLimit(to wanted: Int) -> Int {
    var limit = rlimit()
    getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    if limit.rlim_cur < rlim_t(wanted) {
        limit.rlim_cur = min(rlim_t(wanted), limit.rlim_max)
        setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    }
    return Int(limit.rlim_cur)
}
