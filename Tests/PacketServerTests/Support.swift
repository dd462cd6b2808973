import ControlChannel
import Dispatch
import Foundation
import Glibc
import Synchronization
import Testing

/// Where `swift build` put the executables: next to the test bundle.
func builtProduct(_ name: String) -> String {
    var buffer = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    let exe = String(decoding: buffer.prefix(max(n, 0)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return (exe as NSString).deletingLastPathComponent + "/" + name
}

/// A fresh temporary directory, removed by `cleanUp()`.
func makeTempDir(_ tag: String = "ps") -> String {
    var template = Array("/tmp/ioloop-\(tag)-XXXXXX".utf8CString)
    let p = mkdtemp(&template)!
    return String(cString: p)
}

struct TimedOut: Error, CustomStringConvertible {
    let what: String
    var description: String { "timed out waiting for \(what)" }
}

/// Runs `process` (Foundation's `Process`), keeping a weak reference to the calling thread's run loop.
///
/// `Process` points weakly at `RunLoop.current`, a per-thread object that outlives it. Once the last `Process`
/// is released that run loop keeps the side table the weak reference needed, and only the run loop's encoded
/// refcount word points to it: LeakSanitizer cannot read that as a pointer and reports 32 bytes per thread,
/// allocated in `Process.run()` — a false positive. (Suppressing side tables is no cure: LSan then also hides
/// every real retain cycle behind one.) One weak reference kept here keeps those side tables reachable.
func runProcess(_ process: Process) throws {
    rememberRunLoop()
    try process.run()
}

/// `process.waitUntilExit()`, which also points the `Process` weakly at the calling thread's run loop.
func waitForProcess(_ process: Process) {
    rememberRunLoop()
    process.waitUntilExit()
}

private final class WeakRunLoop: @unchecked Sendable {
    weak var value: RunLoop?
    init(_ value: RunLoop) { self.value = value }
}

private let processRunLoops = Mutex<[WeakRunLoop]>([])

private func rememberRunLoop() {
    let current = WeakRunLoop(RunLoop.current)
    processRunLoops.withLock { known in
        if !known.contains(where: { $0.value === current.value }) { known.append(current) }
    }
}

/// A packet-server child process; stopped by PID when the test ends.
final class ServerProcess: @unchecked Sendable {
    let process = Process()
    let dir: String
    let socketPath: String
    private let outPipe = Pipe()
    private let exited = DispatchSemaphore(value: 0)
    private let outputLock = NSCondition()
    private var collected = ""
    private var outputClosed = false

    /// Starts packet-server with `config` written to `<dir>/config.json` (or no config when nil). With
    /// `descriptorLimit`, the child runs under that RLIMIT_NOFILE (through `sh -c 'ulimit -n N; exec ...'`, so
    /// the PID is still packet-server's). `environment` adds to (or replaces) variables of the inherited one.
    init(
        config: String?, extraArguments: [String] = [], dir: String = makeTempDir(), descriptorLimit: Int? = nil,
        environment: [String: String] = [:]
    ) throws {
        self.dir = dir
        socketPath = dir + "/control.sock"
        var args: [String] = []
        if let config {
            let path = dir + "/config.json"
            try config.replacingOccurrences(of: "$DIR", with: dir).write(
                toFile: path, atomically: true, encoding: .utf8)
            args += ["-c", path]
        }
        if let descriptorLimit {
            process.executableURL = URL(fileURLWithPath: "/bin/sh")
            process.arguments =
                ["-c", "ulimit -n \(descriptorLimit) && exec \"$0\" \"$@\"", builtProduct("packet-server")] + args
                + extraArguments
        } else {
            process.executableURL = URL(fileURLWithPath: builtProduct("packet-server"))
            process.arguments = args + extraArguments
        }
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        process.standardOutput = outPipe
        process.standardError = outPipe
        let sem = exited
        process.terminationHandler = { _ in sem.signal() }
        try runProcess(process)
        // The parent's copy of the write end must go, or the reader never sees EOF.
        try? outPipe.fileHandleForWriting.close()
        startReader()
    }

    static func standardConfig(threads: Int = 0, extra: String = "") -> String {
        """
        {"PacketServer": {
            "listen": ["127.0.0.1:0"],
            "control-socket": {"socket-type": "unix", "socket-name": "$DIR/control.sock"},
            "threads": \(threads),
            "log-level": "info"\(extra)
        }}
        """
    }

    /// Waits until `needle` appears in the child's output (collected by a reader thread), bounded by a deadline.
    @discardableResult
    func waitForOutput(_ needle: String, timeout: Duration = .seconds(20)) throws -> String {
        let deadline = Date().addingTimeInterval(Double(timeout.components.seconds))
        outputLock.lock()
        defer { outputLock.unlock() }
        while !collected.contains(needle) {
            if outputClosed || !outputLock.wait(until: deadline) {
                if collected.contains(needle) { break }
                throw TimedOut(what: "'\(needle)' in packet-server output:\n\(collected)")
            }
        }
        return collected
    }

    /// Everything the child printed so far.
    var output: String {
        outputLock.lock()
        defer { outputLock.unlock() }
        return collected
    }

    /// Drains the child's stdout+stderr continuously: a child blocked on a full pipe would stall its loop.
    private func startReader() {
        let fd = outPipe.fileHandleForReading.fileDescriptor
        let thread = Thread { [self] in
            var buf = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = read(fd, &buf, buf.count)
                outputLock.lock()
                if n <= 0 {
                    outputClosed = true
                    outputLock.broadcast()
                    outputLock.unlock()
                    return
                }
                collected += String(decoding: buf[0..<n], as: UTF8.self)
                outputLock.broadcast()
                outputLock.unlock()
            }
        }
        thread.start()
    }

    /// Waits for the "control socket:" start-up line.
    func waitUntilReady() throws {
        try waitForOutput("control socket: ")
    }

    /// Waits for exit; returns the exit status.
    func waitForExit(timeout: Duration = .seconds(20)) throws -> Int32 {
        let ok = exited.wait(timeout: .now() + .milliseconds(Int(timeout.components.seconds * 1000)))
        guard ok == .success else { throw TimedOut(what: "packet-server to exit") }
        releaseProcessRunLoopSource()
        return process.terminationStatus
    }

    func signal(_ sig: Int32) { kill(process.processIdentifier, sig) }

    /// Stops the child by PID if it is still running, then removes the temp dir.
    func cleanUp() {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            _ = exited.wait(timeout: .now() + 5)
        }
        releaseProcessRunLoopSource()
        try? FileManager.default.removeItem(atPath: dir)
    }

    /// Foundation's `Process` (Linux) keeps a run-loop source that retains the `Process` until
    /// `waitUntilExit()` clears it; a `Process` whose exit is only observed through `terminationHandler` is
    /// never released (LeakSanitizer reported every one). Once the child has exited this returns at once.
    private func releaseProcessRunLoopSource() {
        if !process.isRunning { waitForProcess(process) }
    }

    /// Sends one command over the control socket and returns the parsed answer.
    func rawCommand(_ json: String, socket: String? = nil) throws -> JSONValue {
        let raw = try controlRoundTrip(socket ?? socketPath, Array(json.utf8))
        return try JSONParser.parse(raw)
    }

    func command(_ name: String, _ arguments: JSONValue? = nil) throws -> JSONValue {
        var cmd: JSONValue = ["command": .string(name)]
        if let arguments { cmd["arguments"] = arguments }
        return try rawCommand(cmd.serializedString())
    }
}

struct SocketError: Error, CustomStringConvertible {
    let description: String
}

/// Connects a blocking UNIX stream socket with a receive timeout; returns the descriptor or -errno.
func connectControl(_ path: String, receiveTimeoutSeconds: Int = 30) -> Int32 {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { return -errno }
    var tv = timeval(tv_sec: receiveTimeoutSeconds, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &addr.sun_path) { raw in
        for (i, b) in path.utf8.enumerated() where i < raw.count - 1 { raw[i] = b }
    }
    let rc = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
        }
    }
    if rc != 0 {
        let e = errno
        close(fd)
        return -e
    }
    return fd
}

/// Connects to a UNIX socket, writes `bytes`, reads to EOF (receive timeout 10 s).
func controlRoundTrip(_ path: String, _ bytes: [UInt8]) throws -> [UInt8] {
    let fd = connectControl(path, receiveTimeoutSeconds: 10)
    guard fd >= 0 else { throw SocketError(description: "connect \(path): errno \(-fd)") }
    defer { close(fd) }
    var off = 0
    while off < bytes.count {
        let n = bytes[off...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        guard n > 0 else { throw SocketError(description: "send: errno \(errno)") }
        off += n
    }
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = recv(fd, &buf, buf.count, 0)
        if n == 0 { break }
        guard n > 0 else { throw SocketError(description: "recv: errno \(errno) after \(out.count) bytes") }
        out += buf[0..<n]
    }
    return out
}

/// A UDP client socket on loopback with a receive timeout.
final class UDPClient {
    let fd: Int32
    let port: UInt16

    init(port: UInt16) {
        self.port = port
        fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(fd) }

    func send(_ bytes: [UInt8]) {
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = port.bigEndian
        _ = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                sendto(fd, bytes, bytes.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
    }

    func receive() -> [UInt8]? {
        var buf = [UInt8](repeating: 0, count: 2048)
        let n = recv(fd, &buf, buf.count, 0)
        return n > 0 ? Array(buf[0..<n]) : nil
    }
}

/// The UDP port packet-server reports in status-get.
func listenPort(_ server: ServerProcess) throws -> UInt16 {
    let status = try server.command("status-get")
    guard let first = status["arguments"]?["listen"]?[0]?.stringValue,
        let port = UInt16(first.split(separator: ":").last ?? "")
    else { throw SocketError(description: "no listen port in \(status)") }
    return port
}

/// CPU time (user + system) of a process, from /proc/PID/stat.
func cpuTime(of pid: Int32) -> Duration {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
        let close = text.lastIndex(of: ")")
    else { return .zero }
    let fields = text[text.index(close, offsetBy: 2)...].split(separator: " ")
    // After the command name: state is field 3; utime and stime are fields 14 and 15.
    let ticks = (Int(fields[11]) ?? 0) + (Int(fields[12]) ?? 0)
    let hz = sysconf(Int32(_SC_CLK_TCK))
    return .milliseconds(ticks * 1000 / hz)
}
