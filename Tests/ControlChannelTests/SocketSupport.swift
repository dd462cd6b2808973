// Test support for the socket tests: a ControlSocketServer on a loop thread, a blocking POSIX client, temp
// directories and child processes. No sleeps as synchronization: waits are on sockets, semaphores or
// conditions polled against a deadline.

import Foundation
import Glibc
import IOLoop
import Logging
import Synchronization
import Testing

@testable import ControlChannel

let quietLogger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

/// A fresh directory under /tmp with a short name (socket paths must stay under 108 bytes); removed by `remove()`.
final class TempDir: @unchecked Sendable {
    let path: String

    init() throws {
        var template = Array("/tmp/ctl-XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { throw TestError(description: "mkdtemp failed") }
        path = String(cString: p)
    }

    func file(_ name: String) -> String { path + "/" + name }

    func remove() {
        try? FileManager.default.removeItem(atPath: path)
    }
}

/// Polls `condition` until it holds or `timeout` passes; returns whether it held.
func waitUntil(_ timeout: Duration = .seconds(10), _ condition: () -> Bool) -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if condition() { return true }
        sched_yield()
        usleep(200)
    }
    return condition()
}

/// `waitUntil` for async tests: polls without blocking a cooperative thread (a blocked one could be the one
/// the awaited work needs). The bound is generous: the awaited work is often a task queued behind every other
/// test's on a cooperative pool as wide as the machine has cores (2 here), and on a loaded machine the whole
/// suite has taken 40 s; the bound only matters when the test fails anyway.
func eventually(_ timeout: Duration = .seconds(60), _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(1))
    }
    return condition()
}

/// A ControlSocketServer whose IOService runs on a background thread, kept alive by a WorkGuard.
///
/// Built-in test commands: `echo` (answers its arguments: a map as it is, another value as `{"value": ...}`,
/// since answer arguments must be a map), `big` (`{"size": N}` → an answer carrying N
/// bytes of string), `count` (counts its calls), `later` (`{"ms": N}`: async, answers after a timer), `never`
/// (async, keeps its responder and never answers), `drop` (async, drops its responder unanswered), `fail` (throws), `result` (`{"result": N}` → that result),
/// `utf8` (answers a non-ASCII text).
final class ServerHarness: @unchecked Sendable {
    let dir: TempDir
    let path: String
    let service: IOService
    let manager: CommandManager
    var server: ControlSocketServer!
    private var workGuard: WorkGuard?
    private let finished = DispatchSemaphore(value: 0)
    private let stopping = Atomic<Bool>(false)
    /// Loop-thread only.
    var calls: [String: Int] = [:]
    /// Loop-thread only.
    var keptResponders: [CommandResponder] = []
    /// Loop-thread only: timers of `later`.
    var timers: [SteadyTimer] = []
    /// Loop-thread only: run inside `reconfigure-to` and similar commands.
    var hook: ((ControlSocketServer) throws -> Void)?

    init(
        name: String = "c.sock", configure: (inout ControlSocketConfig) -> Void = { _ in },
        logger: Logger = quietLogger, setup: (CommandManager) throws -> Void = { _ in }
    ) throws {
        dir = try TempDir()
        path = dir.file(name)
        service = try IOService()
        manager = CommandManager(logger: quietLogger)
        var config = ControlSocketConfig(socketName: path)
        configure(&config)
        try registerTestCommands()
        try setup(manager)
        server = try ControlSocketServer(service: service, commandManager: manager, config: config, logger: logger)
        start()
    }

    private func start() {
        workGuard = service.makeWorkGuard()
        let service = self.service
        let thread = Thread { [self] in
            repeat {
                do { _ = try service.run() } catch { Issue.record("a loop handler threw: \(error)") }
                if service.stopped && !stopping.load(ordering: .acquiring) { service.restart() }
            } while !stopping.load(ordering: .acquiring)
            finished.signal()
        }
        thread.name = "test-control-server"
        thread.start()
    }

    /// The commands capture the harness `unowned`: the manager that holds them belongs to the harness, so a
    /// strong capture would be a retain cycle (every harness, its service and its server leaked until exit).
    /// They only run on the loop thread, whose closure holds the harness strongly.
    private func registerTestCommands() throws {
        try manager.registerCommand("echo") { _, args, _ in
            switch args {
            case nil: return ControlAnswer.success().json
            case .object(let map)?: return ControlAnswer.success(arguments: .object(map)).json
            case let value?: return ControlAnswer.success(arguments: ["value": value]).json
            }
        }
        try manager.registerCommand("big") { _, args, _ in
            let n = Int(args?["size"]?.intValue ?? 0)
            return ControlAnswer.success(arguments: ["data": .string(String(repeating: "x", count: n))]).json
        }
        try manager.registerCommand("count") { [unowned self] name, _, _ in
            calls[name, default: 0] += 1
            return ControlAnswer.success("counted").json
        }
        try manager.registerAsyncCommand("later") { [unowned self] _, args, _, responder in
            let timer = SteadyTimer(service, expiresAfter: .milliseconds(args?["ms"]?.intValue ?? 10))
            timers.append(timer)
            timer.asyncWait { _ in responder.respond(ControlAnswer.success("answered later")) }
        }
        try manager.registerAsyncCommand("never") { [unowned self] _, _, _, responder in
            keptResponders.append(responder)
        }
        try manager.registerAsyncCommand("drop") { _, _, _, _ in }
        try manager.registerCommand("fail") { _, _, _ in throw TestError(description: "the handler failed") }
        try manager.registerCommand("result") { _, args, _ in
            ControlAnswer(result: Int(args?["result"]?.intValue ?? 0), text: "as asked").json
        }
        try manager.registerCommand("utf8") { _, _, _ in ControlAnswer.success("Grüße, 世界 🌍").json }
        try manager.registerCommand("hook") { [unowned self] _, _, _ in
            try hook?(server)
            return ControlAnswer.success("hook ran").json
        }
    }

    /// Runs `body` on the loop thread and returns its value (waits at most 10 s).
    func onLoop<T>(_ body: @escaping () throws -> T) throws -> T {
        let done = DispatchSemaphore(value: 0)
        let box = Box<Result<T, Error>?>(nil)
        let work = UncheckedBox(body)
        service.post {
            box.value = Result { try work.value() }
            done.signal()
        }
        guard done.wait(timeout: .now() + 10) == .success, let result = box.value else {
            throw TestError(description: "the loop thread did not run a posted closure within 10 s")
        }
        return try result.get()
    }

    var connectionCount: Int { (try? onLoop { self.server.connectionCount }) ?? -1 }

    /// Closes the server on its thread, stops the thread, shuts the service down and removes the directory.
    ///
    /// The shutdown releases what the stopped loop never ran: the server's aborted accept (queued by `close()`),
    /// connections still reading, timer waits. Each pending operation keeps its object, and so the service,
    /// alive; without it they leak (LeakSanitizer reported them).
    func stop() {
        _ = try? onLoop {
            self.server.close()
            // Unanswered responders answer when released: release them here, where the answer can be written.
            self.keptResponders.removeAll()
            self.timers.removeAll()
            self.hook = nil
        }
        stopping.store(true, ordering: .releasing)
        workGuard?.reset()
        service.stop()
        // Once the loop thread has left (the semaphore orders its work before ours), this thread may shut the
        // service down, as the thread contract requires: outside run/poll, with no other thread running it.
        if finished.wait(timeout: .now() + 10) == .success { service.shutdown() }
        dir.remove()
    }
}

/// A blocking POSIX UNIX-socket client with 10 s send/receive timeouts (a hang fails the test instead).
final class RawClient: @unchecked Sendable {
    let fd: Int32

    init(_ path: String, timeoutSeconds: Int = 10) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw TestError(description: "socket: \(errno)") }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            let bytes = Array(path.utf8)
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard rc == 0 else {
            let e = errno
            Glibc.close(fd)
            throw TestError(description: "connect to \(path): errno \(e)")
        }
        var tv = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { Glibc.close(fd) }

    /// Writes all bytes; returns the errno of a failed write (e.g. EPIPE), or nil.
    @discardableResult
    func send(_ bytes: [UInt8]) -> Int32? {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes {
                Glibc.send(fd, $0.baseAddress! + done, bytes.count - done, Int32(MSG_NOSIGNAL))
            }
            if n < 0 {
                if errno == EINTR { continue }
                return errno
            }
            done += n
        }
        return nil
    }

    @discardableResult
    func send(_ text: String) -> Int32? { send(Array(text.utf8)) }

    /// Bytes written but not yet read by the server.
    var unreadByPeer: Int32 {
        var n: Int32 = 0
        _ = ioctl(fd, UInt(TIOCOUTQ), &n)
        return n
    }

    /// Sends one byte per write, each only after the server has read the previous one, so the server
    /// sees the command in 1-byte reads.
    func sendByteByByte(_ text: String) {
        for b in Array(text.utf8) {
            send([b])
            #expect(waitUntil { unreadByPeer == 0 }, "the server did not read a byte")
        }
    }

    func shutdownWrite() { _ = Glibc.shutdown(fd, Int32(SHUT_WR)) }

    /// Reads until EOF or an error; returns the bytes and the errno of the error (nil at EOF).
    func readToEOF() -> (bytes: [UInt8], error: Int32?) {
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(fd, &buffer, buffer.count)
            if n > 0 {
                out.append(contentsOf: buffer[0..<n])
                continue
            }
            if n == 0 { return (out, nil) }
            if errno == EINTR { continue }
            return (out, errno)
        }
    }

    /// Reads until EOF and returns the text; records an issue on a read error.
    func answer(sourceLocation: SourceLocation = #_sourceLocation) -> String {
        let start = ContinuousClock.now
        let (bytes, error) = readToEOF()
        if let error {
            // The wait tells a receive timeout (EAGAIN after the 10 s SO_RCVTIMEO) from a reset or a bad descriptor.
            Issue.record(
                "read on fd \(fd) failed with errno \(error) after \(bytes.count) bytes and \(ContinuousClock.now - start)",
                sourceLocation: sourceLocation)
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// Connects, sends `text` (no half-close) and reads the answer to EOF.
func exchange(_ path: String, _ text: String, sourceLocation: SourceLocation = #_sourceLocation) throws -> String {
    let c = try RawClient(path)
    c.send(text)
    return c.answer(sourceLocation: sourceLocation)
}

/// The parsed answer of an exchange.
func exchangeJSON(
    _ path: String, _ text: String, sourceLocation: SourceLocation = #_sourceLocation
) throws
    -> JSONValue
{
    try JSONParser.parse(try exchange(path, text, sourceLocation: sourceLocation))
}

func errorAnswerText(_ text: String) -> String {
    ControlAnswer.error(text).json.serializedString()
}

// MARK: Logging

/// A log handler that hands every event to `sink`: tests record from it what they check.
struct RecordingLogHandler: LogHandler {
    let sink: @Sendable (LogEvent) -> Void
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(event: LogEvent) { sink(event) }
}

/// A logger (level `.trace`) whose events go to `sink`.
func recordingLogger(_ sink: @escaping @Sendable (LogEvent) -> Void) -> Logger {
    Logger(label: "test", factory: { _ in RecordingLogHandler(sink: sink) })
}

// MARK: Child processes

/// glibc's `posix_spawn_file_actions_addclosefrom_np` (2.34+), looked up at run time: the Swift importer does not
/// see its declaration (a feature-macro guard).
private let spawnAddCloseFrom: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>?, Int32) -> Int32)? = {
    guard let symbol = dlsym(nil, "posix_spawn_file_actions_addclosefrom_np") else { return nil }
    return unsafeBitCast(
        symbol, to: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>?, Int32) -> Int32).self)
}()

/// A child process whose output goes to files; killed (by PID) and reaped by `stop()`, also on failure.
///
/// Spawned with `posix_spawn` and an empty signal mask with default dispositions: test threads (Dispatch and
/// Swift concurrency workers) block most signals, and a child inherits the mask — a Kea server spawned with
/// SIGTERM blocked would never see its stop signal.
final class ChildProcess: @unchecked Sendable {
    let pid: pid_t
    let stdoutPath: String
    let stderrPath: String
    private var stdinFD: Int32
    private var status: Int32?

    init(
        _ executable: String, _ arguments: [String], environment: [String: String]? = nil, in dir: TempDir,
        label: String
    ) throws {
        stdoutPath = dir.file("\(label).out")
        stderrPath = dir.file("\(label).err")
        var pipeFDs: [Int32] = [-1, -1]
        // Close-on-exec from the start (no window for another test's spawn to inherit the write end and hold
        // the child's stdin open); dup2 clears it on the child's fd 0. A socket pair because glibc declares pipe2
        // only under _GNU_SOURCE, which the Swift importer does not set.
        let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        guard socketpair(AF_UNIX, type, 0, &pipeFDs) == 0 else { throw TestError(description: "socketpair: \(errno)") }
        stdinFD = pipeFDs[1]
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, pipeFDs[0], 0)
        posix_spawn_file_actions_addopen(&actions, 1, stdoutPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_addopen(&actions, 2, stderrPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        // The child gets 0, 1 and 2 only, whatever a parallel test left inheritable (Foundation's Process does
        // the same): an inherited socket would keep that test's peer from seeing its close.
        if let addCloseFrom = spawnAddCloseFrom { _ = addCloseFrom(&actions, 3) }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment ?? [:] { env[k] = v }
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for p in argv { free(p) }
            for p in envp { free(p) }
        }
        var child: pid_t = 0
        let rc = posix_spawn(&child, executable, &actions, &attributes, argv, envp)
        close(pipeFDs[0])
        guard rc == 0 else {
            close(stdinFD)
            throw TestError(description: "posix_spawn \(executable): errno \(rc)")
        }
        pid = child
    }

    deinit { stop() }

    func writeStdin(_ text: String) {
        _ = Array(text.utf8).withUnsafeBytes { write(stdinFD, $0.baseAddress, $0.count) }
    }

    func closeStdin() {
        if stdinFD >= 0 {
            close(stdinFD)
            stdinFD = -1
        }
    }

    /// Whether the process has not exited yet (reaps it once it has).
    var isRunning: Bool {
        if status != nil { return false }
        var raw: Int32 = 0
        let r = waitpid(pid, &raw, WNOHANG)
        if r == pid {
            // WIFEXITED: the low 7 bits are 0; then the status is bits 8...15. Signalled: 128 + signal.
            status = raw & 0x7F == 0 ? (raw >> 8) & 0xFF : 128 + (raw & 0x7F)
            return false
        }
        return r == 0
    }

    /// Waits for the exit; returns the status (128 + N if killed by signal N), or nil after `timeout`.
    func wait(_ timeout: Duration = .seconds(10)) -> Int32? {
        guard waitUntil(timeout, { !isRunning }) else { return nil }
        return status
    }

    var stdout: String { (try? String(contentsOfFile: stdoutPath, encoding: .utf8)) ?? "" }
    var stdoutBytes: [UInt8] { Array(FileManager.default.contents(atPath: stdoutPath) ?? Data()) }
    var stderr: String { (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "" }

    /// SIGTERM by PID, then SIGKILL if it is still running after 5 s; always reaps. Returns whether SIGTERM
    /// was enough.
    @discardableResult
    func stop() -> Bool {
        closeStdin()
        guard isRunning else { return true }
        kill(pid, SIGTERM)
        if wait(.seconds(5)) == nil {
            kill(pid, SIGKILL)
            _ = wait(.seconds(5))
            return false
        }
        return true
    }
}

/// Runs a program to completion (at most `timeout`), returning its status and output.
func runProgram(
    _ executable: String, _ arguments: [String], environment: [String: String]? = nil, stdin: String? = nil,
    in dir: TempDir, timeout: Duration = .seconds(20)
) throws -> (status: Int32, stdout: [UInt8], stderr: String) {
    let label = "run-\(UUID().uuidString.prefix(8))"
    let child = try ChildProcess(executable, arguments, environment: environment, in: dir, label: label)
    defer { child.stop() }
    if let stdin { child.writeStdin(stdin) }
    child.closeStdin()
    guard let status = child.wait(timeout) else {
        throw TestError(description: "\(executable) \(arguments) did not exit within \(timeout)")
    }
    return (status, child.stdoutBytes, child.stderr)
}

/// The first of `names` found in PATH-like standard directories, or nil.
func findExecutable(_ names: String...) -> String? {
    let dirs = ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/sbin", "/usr/local/bin"]
    for name in names {
        for d in dirs where FileManager.default.isExecutableFile(atPath: d + "/" + name) { return d + "/" + name }
    }
    return nil
}

/// The built `ioloop-ctl`, next to the test bundle (e.g. .build/debug/ioloop-ctl).
func ioloopCtlPath() -> String? {
    var dir = URL(
        fileURLWithPath: (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
            ?? CommandLine.arguments[0]
    ).deletingLastPathComponent()
    for _ in 0..<4 {
        let candidate = dir.appendingPathComponent("ioloop-ctl").path
        if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        dir = dir.deletingLastPathComponent()
    }
    return nil
}
