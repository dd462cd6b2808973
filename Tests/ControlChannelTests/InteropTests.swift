// Interoperability (spec §8): socat, a C client, ioloop-ctl, a real kea-dhcp4 and a real kea-ctrl-agent.
// Each test is skipped, with the reason, only when the program it needs is not installed (Scripts/bootstrap
// installs them). Every process started is stopped by its PID, also when the test fails.

import Foundation
import Glibc
import IOLoop
import Testing

@testable import ControlChannel

let socat = findExecutable("socat")
let cc = findExecutable("cc", "gcc", "clang")
let keaDhcp4 = findExecutable("kea-dhcp4")
let keaAgent = findExecutable("kea-ctrl-agent")
let ioloopCtl = ioloopCtlPath()
let setpriv = findExecutable("setpriv")

/// A running kea-dhcp4 with everything (config, control socket, pid and lock files) in a temp directory.
final class KeaDhcp4: @unchecked Sendable {
    let dir: TempDir
    let socketPath: String
    let child: ChildProcess

    init() throws {
        dir = try TempDir()
        socketPath = dir.file("kea4.sock")
        let config: JSONValue = [
            "Dhcp4": [
                "interfaces-config": ["interfaces": []],
                "control-socket": ["socket-type": "unix", "socket-name": .string(socketPath)],
                "lease-database": ["type": "memfile", "persist": false],
                "loggers": [["name": "kea-dhcp4", "severity": "WARN", "output_options": [["output": "stderr"]]]],
            ]
        ]
        let configPath = dir.file("kea-dhcp4.json")
        _ = FileManager.default.createFile(atPath: configPath, contents: Data(config.prettyPrinted().utf8))
        child = try ChildProcess(
            keaDhcp4!, ["-c", configPath], environment: ["KEA_PIDFILE_DIR": dir.path, "KEA_LOCKFILE_DIR": dir.path],
            in: dir, label: "kea-dhcp4")
        guard waitUntil(.seconds(10), { isSocket(socketPath) || !child.isRunning }), isSocket(socketPath) else {
            let log = child.stderr
            stop()
            throw TestError(description: "kea-dhcp4 did not open its control socket within 10 s: \(log)")
        }
    }

    func stop() {
        child.stop()
        dir.remove()
    }
}

func isSocket(_ path: String) -> Bool {
    var st = stat()
    return lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFSOCK
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0 and released).
func freeTCPPort() throws -> UInt16 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = 0
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    let rc = withUnsafeMutablePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { p -> Int32 in
            guard bind(fd, p, len) == 0 else { return -1 }
            return getsockname(fd, p, &len)
        }
    }
    guard rc == 0 else { throw TestError(description: "cannot bind an ephemeral port: errno \(errno)") }
    return UInt16(bigEndian: addr.sin_port)
}

/// A raw HTTP/1.1 POST to 127.0.0.1:`port` with `Connection: close`; returns the status line and the body.
/// Returns nil if nothing accepts on the port.
func httpPost(port: UInt16, body: String) -> (status: String, body: String)? {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = port.bigEndian
    let rc = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
        }
    }
    guard rc == 0 else { return nil }
    var tv = timeval(tv_sec: 10, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    let request =
        "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + "Content-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n" + body
    _ = Array(request.utf8).withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    var out: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = read(fd, &buffer, buffer.count)
        if n <= 0 { break }
        out.append(contentsOf: buffer[0..<n])
    }
    let text = String(decoding: out, as: UTF8.self)
    guard let split = text.range(of: "\r\n\r\n") else { return (text, "") }
    let status = text[..<split.lowerBound].components(separatedBy: "\r\n").first ?? ""
    return (status, String(text[split.upperBound...]))
}

@Suite("Interop")
struct InteropTests {
    static let listCommands = #"{"command": "list-commands"}"#

    func expectedList(_ h: ServerHarness) -> String {
        ControlAnswer.success(arguments: .array(h.manager.commandNames.map { .string($0) })).json.serializedString()
    }

    // MARK: socat

    @Test(.enabled(if: socat != nil, "socat is not installed (Scripts/bootstrap installs it)"))
    func socatInteractive() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        // `socat UNIX:path -` with the command typed and stdin left open: the answer comes, then EOF ends socat.
        let child = try ChildProcess(socat!, ["UNIX:" + h.path, "-"], in: h.dir, label: "socat")
        defer { child.stop() }
        child.writeStdin(Self.listCommands + "\n")
        #expect(child.wait() == 0)
        #expect(child.stdout == expectedList(h))
    }

    @Test(.enabled(if: socat != nil, "socat is not installed (Scripts/bootstrap installs it)"))
    func socatBatchWithIgnoreEOF() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        // echo '{"command":"list-commands"}' | socat UNIX:path,ignoreeof -
        let r = try runProgram(
            socat!, ["UNIX:" + h.path + ",ignoreeof", "-"], stdin: Self.listCommands + "\n", in: h.dir)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(String(decoding: r.stdout, as: UTF8.self) == expectedList(h))
        // And without ignoreeof, with a handler that answers after stdin's EOF was seen.
        let late = try runProgram(
            socat!, ["-t", "5", "UNIX:" + h.path, "-"], stdin: #"{"command": "later", "arguments": {"ms": 50}}"#,
            in: h.dir)
        #expect(String(decoding: late.stdout, as: UTF8.self) == #"{"arguments":{},"result":0,"text":"answered later"}"#)
    }

    // MARK: a C client

    @Test(.enabled(if: cc != nil, "no C compiler (cc) is installed"))
    func cClient() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let source = h.dir.file("client.c")
        let program = #"""
            #include <stdio.h>
            #include <string.h>
            #include <sys/socket.h>
            #include <sys/un.h>
            #include <unistd.h>

            /* Connects to argv[1], sends list-commands, reads once (argv[2] == "once") or to EOF. */
            int main(int argc, char **argv) {
                int fd = socket(AF_UNIX, SOCK_STREAM, 0);
                struct sockaddr_un a;
                memset(&a, 0, sizeof a);
                a.sun_family = AF_UNIX;
                strncpy(a.sun_path, argv[1], sizeof a.sun_path - 1);
                if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) { perror("connect"); return 2; }
                const char *cmd = "{ \"command\": \"list-commands\" }";
                if (write(fd, cmd, strlen(cmd)) != (ssize_t)strlen(cmd)) { perror("write"); return 3; }
                static char buf[65536];
                ssize_t n;
                int once = argc > 2 && strcmp(argv[2], "once") == 0;
                while ((n = read(fd, buf, sizeof buf)) > 0) {
                    fwrite(buf, 1, (size_t)n, stdout);
                    if (once) break;
                }
                if (n < 0) { perror("read"); return 4; }
                close(fd);
                return 0;
            }
            """#
        _ = FileManager.default.createFile(atPath: source, contents: Data(program.utf8))
        let binary = h.dir.file("client")
        let build = try runProgram(cc!, ["-O1", "-o", binary, source], in: h.dir, timeout: .seconds(60))
        #expect(build.status == 0, "\(build.stderr)")
        for mode in ["eof", "once"] {
            let r = try runProgram(binary, [h.path, mode], in: h.dir)
            #expect(r.status == 0, "\(r.stderr)")
            #expect(String(decoding: r.stdout, as: UTF8.self) == expectedList(h))
        }
    }

    // MARK: ioloop-ctl

    @Test(.enabled(if: ioloopCtl != nil, "the ioloop-ctl binary was not found next to the test bundle"))
    func ioloopCtlAgainstOurServer() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let ctl = ioloopCtl!
        func run(_ args: [String], stdin: String? = nil) throws -> (status: Int32, stdout: String, stderr: String) {
            let r = try runProgram(ctl, args, stdin: stdin, in: h.dir)
            return (r.status, String(decoding: r.stdout, as: UTF8.self), r.stderr)
        }
        let list = try run(["--socket", h.path, "list-commands"])
        #expect(list.status == 0)
        #expect(try JSONParser.parse(list.stdout) == (try JSONParser.parse(expectedList(h))))
        #expect(list.stdout.hasPrefix("{\n  \"arguments\": [\n") && list.stdout.hasSuffix("}\n"))
        let raw = try run(["--socket", h.path, "echo", "--args", #"{"a": [1, "ü"]}"#, "--raw"])
        #expect(raw.status == 0 && raw.stdout == #"{"arguments":{"a":[1,"ü"]},"result":0}"#)
        for code in 1...4 {
            let r = try run(["--socket", h.path, "result", "--args", #"{"result": \#(code)}"#])
            #expect(r.status == Int32(code), "result \(code) gave exit \(r.status)")
        }
        #expect(try run(["--socket", h.path, "no-such-command"]).status == 2)
        #expect(try run(["--socket", h.path, "count", "--service", "dhcp4", "--service", "dhcp6"]).status == 0)
        let argsFile = h.dir.file("args.json")
        _ = FileManager.default.createFile(atPath: argsFile, contents: Data(#"{"from": "file"}"#.utf8))
        #expect(
            try run(["--socket", h.path, "echo", "--args-file", argsFile, "--raw"]).stdout
                == #"{"arguments":{"from":"file"},"result":0}"#)
        #expect(
            try run(["--socket", h.path, "echo", "--args-file", "-", "--raw"], stdin: #"{"from": "stdin"}"#).stdout
                == #"{"arguments":{"from":"stdin"},"result":0}"#)

        // Errors: distinct statuses with a message on stderr.
        let bad = try run(["--socket", h.path, "echo", "--args", "{nope"])
        #expect(bad.status == 65 && bad.stderr.contains("--args is not valid JSON"), "\(bad)")
        let unreadable = try run(["--socket", h.path, "echo", "--args-file", h.dir.file("missing.json")])
        #expect(unreadable.status == 66 && unreadable.stderr.contains("cannot read"), "\(unreadable)")
        let missing = try run(["--socket", h.dir.file("none.sock"), "list-commands"])
        #expect(missing.status == 69 && missing.stderr.contains("no control socket at"), "\(missing)")
        let stale = h.dir.file("stale.sock")
        try makeStaleSocket(stale)
        let refused = try run(["--socket", stale, "list-commands"])
        #expect(refused.status == 68 && refused.stderr.contains("connection refused"), "\(refused)")
        let slow = try run(["--socket", h.path, "never", "--timeout", "0.2"])
        #expect(slow.status == 75 && slow.stderr.contains("timed out after 200 ms"), "\(slow)")
        let usage = try run(["--socket", h.path])
        #expect(usage.status == 64)
    }

    @Test(
        .enabled(
            if: ioloopCtl != nil && setpriv != nil && getuid() == 0,
            "needs ioloop-ctl, setpriv and root to drop to nobody"))
    func ioloopCtlPermissionDenied() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        chmod(h.dir.path, 0o755)  // nobody may reach the socket file, whose mode 0600 then refuses it
        // A copy nobody can execute wherever the build folder is (its libraries come from an absolute RUNPATH).
        let copy = h.dir.file("ioloop-ctl")
        // Written through a close-on-exec descriptor: FileManager's copy leaves its write descriptor inheritable,
        // and a child a parallel test spawns meanwhile (a server living for seconds) kept it open, so exec failed
        // with ETXTBSY ("Text file busy") for longer than any retry. Between another child's fork and its exec the
        // descriptor is still shared; that short window alone is retried, up to a deadline.
        try copyFileCloseOnExec(from: ioloopCtl!, to: copy, mode: 0o755)
        var r = try runProgram(
            setpriv!, ["--reuid=65534", "--regid=65534", "--clear-groups", copy, "--socket", h.path, "list-commands"],
            in: h.dir)
        let deadline = ContinuousClock.now + .seconds(10)
        while r.status == 126 && r.stderr.contains("Text file busy") && ContinuousClock.now < deadline {
            usleep(20_000)
            r = try runProgram(
                setpriv!,
                ["--reuid=65534", "--regid=65534", "--clear-groups", copy, "--socket", h.path, "list-commands"],
                in: h.dir)
        }
        #expect(r.status == 77 && r.stderr.contains("permission denied"), "\(r.status) \(r.stderr)")
    }

    // MARK: real Kea

    @Test(
        .enabled(
            if: ioloopCtl != nil && keaDhcp4 != nil, "needs ioloop-ctl and kea-dhcp4 (Scripts/bootstrap installs Kea)"))
    func ioloopCtlAndControlClientAgainstKeaDhcp4() async throws {
        let kea = try KeaDhcp4()
        defer { kea.stop() }
        let r = try runProgram(ioloopCtl!, ["--socket", kea.socketPath, "version-get"], in: kea.dir)
        #expect(r.status == 0, "\(r.stderr)")
        let version = try JSONParser.parse(r.stdout)
        #expect(version["result"] == 0 && version["text"]?.stringValue?.isEmpty == false)
        let unsupported = try runProgram(ioloopCtl!, ["--socket", kea.socketPath, "no-such-command"], in: kea.dir)
        #expect(unsupported.status == 2)
        let client = ControlClient(socketPath: kea.socketPath, timeout: .seconds(10))
        let list = try await client.send("list-commands")
        #expect(list.answer.result == 0)
        #expect(list.answer.arguments.arrayValue?.contains("status-get") == true)
        let bad = try await client.send("statistic-get", arguments: [])
        #expect(bad.answer.result == 1)
        let blocking = try client.sendBlocking("status-get")
        #expect(blocking.answer.arguments["pid"]?.intValue == Int64(kea.child.pid))
        // Kea holds the same `<socket-name>.lock`: our server refuses its path, naming the lock.
        do {
            _ = try ControlSocketServer(
                service: try IOService(), commandManager: CommandManager(logger: quietLogger),
                config: ControlSocketConfig(socketName: kea.socketPath), logger: quietLogger)
            Issue.record("opened over a running kea-dhcp4's socket")
        } catch {
            #expect("\(error)".contains(kea.socketPath + ".lock"), "\(error)")
        }
        // Kea's own framing rule, seen through our client: trailing bytes after the value are ignored.
        let twice = try await client.send(raw: Array(#"{"command": "list-commands"} {"command": "x"}"#.utf8))
        #expect(twice.answer.result == 0)
        #expect(kea.child.stop(), "kea-dhcp4 \(kea.child.pid) needed SIGKILL")
        #expect(!FileManager.default.fileExists(atPath: kea.socketPath), "kea-dhcp4 left its socket behind")
    }

    @Test(
        .enabled(
            if: keaAgent != nil, "kea-ctrl-agent is not installed (Scripts/bootstrap installs it)"))
    func keaControlAgentForwardsToOurSocket() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let port = try freeTCPPort()
        let config: JSONValue = [
            "Control-agent": [
                "http-host": "127.0.0.1",
                "http-port": .integer(Int64(port)),
                "control-sockets": ["dhcp4": ["socket-type": "unix", "socket-name": .string(h.path)]],
                "loggers": [
                    ["name": "kea-ctrl-agent", "severity": "WARN", "output_options": [["output": "stderr"]]]
                ],
            ]
        ]
        let configPath = h.dir.file("agent.json")
        _ = FileManager.default.createFile(atPath: configPath, contents: Data(config.prettyPrinted().utf8))
        let agent = try ChildProcess(
            keaAgent!, ["-c", configPath],
            environment: ["KEA_PIDFILE_DIR": h.dir.path, "KEA_LOCKFILE_DIR": h.dir.path],
            in: h.dir, label: "kea-ctrl-agent")
        defer { #expect(agent.stop(), "kea-ctrl-agent \(agent.pid) needed SIGKILL") }
        var reply: (status: String, body: String)?
        let up = waitUntil(.seconds(10)) {
            reply = httpPost(port: port, body: #"{"command": "list-commands", "service": ["dhcp4"]}"#)
            return reply != nil || !agent.isRunning
        }
        guard up, let reply else {
            Issue.record("kea-ctrl-agent did not answer on port \(port): \(agent.stderr)")
            return
        }
        #expect(reply.status == "HTTP/1.1 200 OK", "\(reply)")
        let body = try JSONParser.parse(reply.body)
        // Our answer, wrapped in a list by the agent.
        #expect(body == .array([try JSONParser.parse(expectedList(h))]), "\(reply.body)")
        let echoed = httpPost(
            port: port, body: #"{"command": "echo", "service": ["dhcp4"], "arguments": {"k": "v"}}"#)
        #expect(try echoed.map { try JSONParser.parse($0.body) } == [["arguments": ["k": "v"], "result": 0]])
        let unsupported = httpPost(port: port, body: #"{"command": "nope", "service": ["dhcp4"]}"#)
        #expect(
            try unsupported.map { try JSONParser.parse($0.body)[0]?["result"] } == 2)
    }
}

/// Copies `source` to a new file `destination` with `mode`, writing through an `O_CLOEXEC` descriptor (see
/// `ioloopCtlPermissionDenied`).
func copyFileCloseOnExec(from source: String, to destination: String, mode: mode_t) throws {
    let bytes = try Data(contentsOf: URL(fileURLWithPath: source))
    let fd = open(destination, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
    guard fd >= 0 else { throw TestError(description: "open \(destination): errno \(errno)") }
    defer { close(fd) }
    try bytes.withUnsafeBytes { raw in
        var done = 0
        while done < raw.count {
            let n = write(fd, raw.baseAddress! + done, raw.count - done)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw TestError(description: "write \(destination): errno \(errno)") }
            done += n
        }
    }
    fchmod(fd, mode)  // open's mode is filtered by the umask
}
