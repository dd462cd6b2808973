import Glibc

/// A socket endpoint: an IPv4 or IPv6 address with a port, or a UNIX-domain path.
///
/// Stored inline (a `sockaddr_storage` and its length), so receiving a datagram's peer allocates nothing.
/// Asio counterpart: `ip::tcp::endpoint`, `ip::udp::endpoint`, `local::stream_protocol::endpoint`.
/// Thread contract: a plain value, `Sendable`.
public struct SocketAddress: Sendable, Hashable, CustomStringConvertible {
    var storage: sockaddr_storage
    var length: socklen_t

    /// The address family.
    public enum Family: Sendable, Equatable {
        case ipv4
        case ipv6
        case unix
        case other(Int32)
    }

    init(storage: sockaddr_storage, length: socklen_t) {
        self.storage = storage
        self.length = length
    }

    /// Parses a numeric IPv4 or IPv6 address (`"127.0.0.1"`, `"::1"`) with a port.
    ///
    /// - Throws: `IOError(.invalidArgument)` if `ip` is not a numeric address. Use
    ///   ``resolve(host:port:passive:)`` for names.
    public init(ip: String, port: UInt16) throws {
        var st = sockaddr_storage()
        var ok = false
        var len = socklen_t(0)
        withUnsafeMutableBytes(of: &st) { raw in
            var a4 = sockaddr_in()
            if inet_pton(AF_INET, ip, &a4.sin_addr) == 1 {
                a4.sin_family = sa_family_t(AF_INET)
                a4.sin_port = port.bigEndian
                withUnsafeBytes(of: a4) { raw.copyMemory(from: $0) }
                len = socklen_t(MemoryLayout<sockaddr_in>.size)
                ok = true
                return
            }
            var a6 = sockaddr_in6()
            if inet_pton(AF_INET6, ip, &a6.sin6_addr) == 1 {
                a6.sin6_family = sa_family_t(AF_INET6)
                a6.sin6_port = port.bigEndian
                withUnsafeBytes(of: a6) { raw.copyMemory(from: $0) }
                len = socklen_t(MemoryLayout<sockaddr_in6>.size)
                ok = true
            }
        }
        guard ok else { throw IOError(.invalidArgument, "\"\(ip)\" is not a numeric IPv4 or IPv6 address") }
        self.init(storage: st, length: len)
    }

    /// A UNIX-domain address for `path`.
    ///
    /// - Throws: `IOError(.system(ENAMETOOLONG))` naming the length and the limit (107 bytes on Linux) if the
    ///   path doesn't fit `sun_path`; `IOError(.invalidArgument)` for an empty path or one containing NUL.
    public init(unixPath path: String) throws {
        try checkUnixPath(path)
        var st = sockaddr_storage()
        withUnsafeMutableBytes(of: &st) { raw in
            var un = sockaddr_un()
            un.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &un.sun_path) { dst in
                dst.copyBytes(from: path.utf8)
            }
            withUnsafeBytes(of: un) { raw.copyMemory(from: $0) }
        }
        let offset = MemoryLayout<sockaddr_un>.offset(of: \.sun_path)!
        self.init(storage: st, length: socklen_t(offset + path.utf8.count + 1))
    }

    /// Resolves `host` (a name or numeric address) and `port` with `getaddrinfo`, in the resolver's order.
    ///
    /// Numeric hosts never touch the network. Names are resolved synchronously (this blocks the calling
    /// thread for as long as the system resolver takes). `passive` with a nil host gives the wildcard
    /// addresses for binding.
    /// - Throws: `IOError(.invalidArgument)` with the resolver's message if nothing resolves.
    public static func resolve(
        host: String?, port: UInt16, passive: Bool = false, datagram: Bool = false
    ) throws
        -> [SocketAddress]
    {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(datagram ? SOCK_DGRAM.rawValue : SOCK_STREAM.rawValue)
        hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0)
        var res: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &res)
        guard rc == 0, let first = res else {
            let why = rc == EAI_SYSTEM ? String(cString: strerror(errno)) : String(cString: gai_strerror(rc))
            throw IOError(.invalidArgument, "cannot resolve \"\(host ?? "*")\" port \(port): \(why)")
        }
        defer { freeaddrinfo(first) }
        var out: [SocketAddress] = []
        var p: UnsafeMutablePointer<addrinfo>? = first
        while let ai = p {
            if let sa = ai.pointee.ai_addr, ai.pointee.ai_family == AF_INET || ai.pointee.ai_family == AF_INET6 {
                var st = sockaddr_storage()
                let n = Int(ai.pointee.ai_addrlen)
                withUnsafeMutableBytes(of: &st) { raw in
                    raw.copyMemory(from: UnsafeRawBufferPointer(start: sa, count: n))
                }
                let addr = SocketAddress(storage: st, length: ai.pointee.ai_addrlen)
                if !out.contains(addr) { out.append(addr) }
            }
            p = ai.pointee.ai_next
        }
        if out.isEmpty { throw IOError(.invalidArgument, "\"\(host ?? "*")\" has no IPv4 or IPv6 address") }
        return out
    }

    /// The address family.
    public var family: Family {
        switch Int32(storage.ss_family) {
        case AF_INET: return .ipv4
        case AF_INET6: return .ipv6
        case AF_UNIX: return .unix
        case let f: return .other(f)
        }
    }

    /// The port of an IP address (host byte order), or nil for other families.
    public var port: UInt16? {
        withUnsafeBytes(of: storage) { raw in
            switch Int32(storage.ss_family) {
            case AF_INET: return UInt16(bigEndian: raw.load(as: sockaddr_in.self).sin_port)
            case AF_INET6: return UInt16(bigEndian: raw.load(as: sockaddr_in6.self).sin6_port)
            default: return nil
            }
        }
    }

    /// The numeric IP address (`"127.0.0.1"`, `"::1"`), or the path of a UNIX-domain address.
    public var host: String {
        withUnsafeBytes(of: storage) { raw -> String in
            var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
            switch Int32(storage.ss_family) {
            case AF_INET:
                var a = raw.load(as: sockaddr_in.self).sin_addr
                inet_ntop(AF_INET, &a, &text, socklen_t(text.count))
            case AF_INET6:
                var a = raw.load(as: sockaddr_in6.self).sin6_addr
                inet_ntop(AF_INET6, &a, &text, socklen_t(text.count))
            case AF_UNIX:
                let offset = MemoryLayout<sockaddr_un>.offset(of: \.sun_path)!
                let end = min(Int(length), MemoryLayout<sockaddr_un>.size)
                guard end > offset else { return "" }
                let bytes = raw[offset..<end].prefix(while: { $0 != 0 })
                return String(decoding: bytes, as: UTF8.self)
            default:
                return "family \(storage.ss_family)"
            }
            return String(decoding: text.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
    }

    /// `"127.0.0.1:8080"`, `"[::1]:8080"` or the UNIX path.
    public var description: String {
        switch family {
        case .ipv4: return "\(host):\(port ?? 0)"
        case .ipv6: return "[\(host)]:\(port ?? 0)"
        default: return host
        }
    }

    /// Calls `body` with the address as a `sockaddr` pointer and its length, for system calls IOLoop does not
    /// wrap (e.g. `sendto` from a worker thread on a descriptor).
    ///
    /// The pointer is valid only inside `body`. Thread contract: a plain value; any thread. Asio: `endpoint.data()`
    /// and `endpoint.size()`.
    @inline(__always)
    public func withSockAddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        withUnsafeBytes(of: storage) { raw in
            body(raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), length)
        }
    }

    public static func == (lhs: SocketAddress, rhs: SocketAddress) -> Bool {
        guard lhs.length == rhs.length else { return false }
        return withUnsafeBytes(of: lhs.storage) { a in
            withUnsafeBytes(of: rhs.storage) { b in
                memcmp(a.baseAddress!, b.baseAddress!, Int(lhs.length)) == 0
            }
        }
    }

    public func hash(into hasher: inout Hasher) {
        withUnsafeBytes(of: storage) { hasher.combine(bytes: UnsafeRawBufferPointer(rebasing: $0[0..<Int(length)])) }
    }
}

/// The longest UNIX socket path Linux accepts: `sizeof(sun_path) - 1` (room for the terminating NUL).
public let unixSocketPathLimit = MemoryLayout.size(ofValue: sockaddr_un().sun_path) - 1

/// Rejects a UNIX socket path that can't be bound or connected, before any system call.
func checkUnixPath(_ path: String) throws {
    let n = path.utf8.count
    guard n > 0 else { throw IOError(.invalidArgument, "UNIX socket path is empty") }
    guard !path.utf8.contains(0) else { throw IOError(.invalidArgument, "UNIX socket path contains a NUL byte") }
    guard n <= unixSocketPathLimit else {
        throw IOError(
            errno: ENAMETOOLONG,
            "UNIX socket path is \(n) bytes, longer than the limit of \(unixSocketPathLimit) (sizeof(sun_path) - 1): "
                + path)
    }
}

// MARK: - Descriptor helpers

/// Creates a non-blocking, close-on-exec socket.
func makeSocket(family: Int32, type: __socket_type, _ what: String) throws -> Int32 {
    let fd = socket(family, Int32(type.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw IOError.lastErrno("socket() for \(what)") }
    return fd
}

func setIntOption(_ fd: Int32, _ level: Int32, _ name: Int32, _ value: Int32, _ what: String) throws {
    var v = value
    guard setsockopt(fd, level, name, &v, socklen_t(MemoryLayout<Int32>.size)) == 0 else {
        throw IOError.lastErrno("setsockopt \(what) on fd \(fd)")
    }
}

func getIntOption(_ fd: Int32, _ level: Int32, _ name: Int32) -> Int32 {
    var v: Int32 = 0
    var len = socklen_t(MemoryLayout<Int32>.size)
    _ = getsockopt(fd, level, name, &v, &len)
    return v
}

func localAddress(of fd: Int32) throws -> SocketAddress {
    var st = sockaddr_storage()
    var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
    let rc = withUnsafeMutablePointer(to: &st) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
    }
    guard rc == 0 else { throw IOError.lastErrno("getsockname on fd \(fd)") }
    return SocketAddress(storage: st, length: len)
}

func remoteAddress(of fd: Int32) throws -> SocketAddress {
    var st = sockaddr_storage()
    var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
    let rc = withUnsafeMutablePointer(to: &st) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &len) }
    }
    guard rc == 0 else { throw IOError.lastErrno("getpeername on fd \(fd)") }
    return SocketAddress(storage: st, length: len)
}

/// Closes a descriptor once; EINTR from close is not retried (Linux always releases the descriptor).
@inline(__always)
func closeDescriptor(_ fd: Int32) {
    if fd >= 0 { _ = Glibc.close(fd) }
}
