import ControlChannel
import Dispatch
import Foundation
import Glibc
import Synchronization
import Testing

@testable import packet_server

let clientID: [UInt8] = [0x02, 0x00, 0x5e, 0x10, 0x20, 0x30]

@Suite("packet-server protocol and config (in process)")
struct PacketProtocolTests {
    @Test func discoverGetsStableOfferAndRequestIsAcked() {
        let reply = UnsafeMutableRawBufferPointer.allocate(byteCount: PacketFormat.maxDatagram, alignment: 16)
        defer { reply.deallocate() }
        let discover = PacketFormat.request(.discover, xid: 42, clientID: clientID)
        let outcome = discover.withUnsafeBytes { handlePacket($0, reply: reply) }
        #expect(outcome == .reply(.offer, 18))
        #expect(reply[3] == PacketType.offer.rawValue)
        #expect(Array(reply[4..<8]) == [0, 0, 0, 42])
        let offered = Array(reply[14..<18])
        let request = PacketFormat.request(.request, xid: 43, clientID: clientID, payload: offered)
        #expect(request.withUnsafeBytes { handlePacket($0, reply: reply) } == .reply(.ack, 18))
        let wrong = PacketFormat.request(.request, xid: 44, clientID: clientID, payload: [1, 2, 3, 4])
        #expect(wrong.withUnsafeBytes { handlePacket($0, reply: reply) } == .reply(.nak, 18))
    }

    @Test func malformedAndUnknownPackets() {
        let reply = UnsafeMutableRawBufferPointer.allocate(byteCount: PacketFormat.maxDatagram, alignment: 16)
        defer { reply.deallocate() }
        #expect([UInt8]([1, 2, 3]).withUnsafeBytes { handlePacket($0, reply: reply) } == .malformed)
        var bad = PacketFormat.request(.echo, xid: 1, clientID: clientID)
        bad[0] = 0
        #expect(bad.withUnsafeBytes { handlePacket($0, reply: reply) } == .malformed)
        var unknown = PacketFormat.request(.echo, xid: 1, clientID: clientID)
        unknown[3] = 77
        #expect(unknown.withUnsafeBytes { handlePacket($0, reply: reply) } == .unknown(77))
    }

    @Test func configErrorsNameTheKey() throws {
        func error(_ text: String) -> String {
            do {
                _ = try ServerConfig.parse(try JSONParser.parse(text))
                return "no error"
            } catch {
                return "\(error)"
            }
        }
        #expect(error(#"{"PacketServer": {"control-socket": {}, "threads": "x"}}"#).contains("PacketServer.threads"))
        #expect(error(#"{"PacketServer": {"control-socket": {}, "listen": ["nope"]}}"#).contains("listen[0]"))
        #expect(
            error(#"{"PacketServer": {"control-socket": {}, "bogus": 1}}"#)
                == "PacketServer.bogus: unsupported parameter")
        // Not a Kea key (Kea's control-socket timeout cannot be configured) and nothing read it: rejected too.
        #expect(
            error(#"{"PacketServer": {"control-socket": {}, "control-timeout": 5000}}"#)
                == "PacketServer.control-timeout: unsupported parameter")
        #expect(error(#"{"PacketServer": {}}"#).contains("control-socket"))
        #expect(error(#"{"Dhcp4": {}}"#).contains("Dhcp4"))
        #expect(
            error(#"{"PacketServer": {"control-socket": {}, "listen": ["[::1]:6767", "127.0.0.1:0"]}}"#) == "no error")
    }
}

@Suite("packet-server (real binary)")
struct PacketServerProcessTests {
    @Test func servesPacketsAndCountsThem() throws {
        let server = try ServerProcess(config: ServerProcess.standardConfig())
        defer { server.cleanUp() }
        try server.waitUntilReady()
        let client = UDPClient(port: try listenPort(server))
        client.send(PacketFormat.request(.discover, xid: 7, clientID: clientID))
        let offer = try #require(client.receive())
        #expect(offer[3] == PacketType.offer.rawValue)
        client.send(PacketFormat.request(.request, xid: 8, clientID: clientID, payload: Array(offer[14..<18])))
        #expect(client.receive()?[3] == PacketType.ack.rawValue)
        client.send(PacketFormat.request(.echo, xid: 9, clientID: clientID, payload: Array("hello".utf8)))
        #expect(client.receive().map { Array($0[14...]) } == Array("hello".utf8))
        client.send([1, 2, 3])  // malformed: counted, no reply
        // The statistics are exact once the answers have come back; the malformed one is ordered before
        // the command by the server's single thread, so query after one more echo.
        client.send(PacketFormat.request(.echo, xid: 10, clientID: clientID))
        #expect(client.receive() != nil)
        let stats = try server.command("statistic-get-all")
        #expect(stats["result"] == 0)
        let args = try #require(stats["arguments"])
        #expect(args["pkt4-received"]?[0]?[0] == 5)
        #expect(args["pkt4-sent"]?[0]?[0] == 4)
        #expect(args["pkt4-parse-failed"]?[0]?[0] == 1)
        #expect(args["pkt4-offer-sent"]?[0]?[0] == 1)
        #expect(args["pkt4-ack-sent"]?[0]?[0] == 1)
        #expect(args["pkt4-echo-reply-sent"]?[0]?[0] == 2)
        // Samples are newest first with Kea's timestamp format.
        let stamp = try #require(args["pkt4-received"]?[0]?[1]?.stringValue)
        #expect(stamp.wholeMatch(of: /\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}/) != nil)
    }

    @Test func everyCommandAnswersInKeaShape() throws {
        let server = try ServerProcess(config: ServerProcess.standardConfig())
        defer { server.cleanUp() }
        try server.waitUntilReady()

        let list = try server.command("list-commands")
        let names = (list["arguments"]?.arrayValue ?? []).compactMap { $0.stringValue }
        #expect(names == names.sorted())
        for expected in [
            "build-report", "config-get", "config-reload", "config-set", "config-test", "config-write",
            "list-commands", "shutdown", "statistic-get", "statistic-get-all", "statistic-remove",
            "statistic-remove-all", "statistic-reset", "statistic-reset-all", "statistic-sample-age-set",
            "statistic-sample-age-set-all", "statistic-sample-count-set", "statistic-sample-count-set-all",
            "status-get", "version-get",
        ] {
            #expect(names.contains(expected), "missing \(expected)")
        }

        let version = try server.command("version-get")
        #expect(version["result"] == 0)
        #expect(version["text"]?.stringValue == PacketServer.version)
        #expect(version["arguments"]?["extended"]?.stringValue?.contains("libev") == true)

        let build = try server.command("build-report")
        #expect(build["result"] == 0 && build["text"]?.stringValue?.contains("libev") == true)

        let status = try server.command("status-get")
        let s = try #require(status["arguments"])
        #expect(s["pid"]?.intValue == Int64(server.process.processIdentifier))
        #expect(s["uptime"]?.intValue != nil && s["reload"]?.intValue != nil)
        #expect(s["multi-threading-enabled"] == false)
        #expect(s["sockets"]?["status"] == "ready")

        let config = try server.command("config-get")
        #expect(config["arguments"]?["PacketServer"]?["threads"] == 0)

        let test = try server.command("config-test", config["arguments"])
        #expect(test["result"] == 0)
        let badTest = try server.command("config-test", ["PacketServer": ["threads": -1, "control-socket": [:]]])
        #expect(badTest["result"] == 1)
        #expect(badTest["text"]?.stringValue?.contains("PacketServer.threads") == true)

        let written = server.dir + "/written.json"
        let write = try server.command("config-write", ["filename": .string(written)])
        #expect(write["result"] == 0)
        #expect(write["arguments"]?["filename"]?.stringValue == written)
        let reread = try JSONParser.parse(Array(try String(contentsOfFile: written, encoding: .utf8).utf8))
        #expect(reread == config["arguments"])

        #expect(try server.command("statistic-get", ["name": "pkt4-received"])["result"] == 0)
        #expect(try server.command("statistic-get", ["name": "nope"])["arguments"] == [:])
        #expect(
            try server.command("statistic-reset", ["name": "pkt4-received"])["text"]
                == "Statistic 'pkt4-received' reset.")
        #expect(try server.command("statistic-reset", ["name": "nope"])["result"] == 1)
        #expect(try server.command("statistic-reset-all")["text"] == "All statistics reset to neutral values.")
        #expect(try server.command("statistic-sample-count-set-all", ["max-samples": 5])["result"] == 0)
        #expect(try server.command("statistic-sample-age-set", ["name": "pkt4-sent", "duration": 60])["result"] == 0)
        #expect(try server.command("statistic-remove", ["name": "pkt4-sent"])["result"] == 0)
        #expect(try server.command("statistic-remove-all")["result"] == 0)

        let unknown = try server.command("no-such-command")
        #expect(unknown["result"] == 2)
        #expect(unknown["text"] == "'no-such-command' command not supported.")

        let badShutdown = try server.command("shutdown", ["exit-value": "x"])
        #expect(badShutdown["result"] == 1)
        #expect(badShutdown["text"] == "parameter 'exit-value' is not an integer")
    }

    @Test func shutdownWithExitValueAnswersThenExitsAndRemovesFiles() throws {
        let server = try ServerProcess(config: ServerProcess.standardConfig())
        defer { server.cleanUp() }
        try server.waitUntilReady()
        #expect(FileManager.default.fileExists(atPath: server.socketPath))
        #expect(FileManager.default.fileExists(atPath: server.socketPath + ".lock"))
        let answer = try server.command("shutdown", ["exit-value": 3])
        #expect(answer["result"] == 0)
        #expect(answer["text"] == "Shutting down.")
        #expect(try server.waitForExit() == 3)
        #expect(!FileManager.default.fileExists(atPath: server.socketPath))
        #expect(!FileManager.default.fileExists(atPath: server.socketPath + ".lock"))
    }

    @Test func sigtermShutsDownCleanly() throws {
        let server = try ServerProcess(config: ServerProcess.standardConfig())
        defer { server.cleanUp() }
        try server.waitUntilReady()
        #expect(FileManager.default.fileExists(atPath: server.socketPath + ".lock"))
        server.signal(SIGTERM)
        #expect(try server.waitForExit() == 0)
        #expect(!FileManager.default.fileExists(atPath: server.socketPath))
        #expect(!FileManager.default.fileExists(atPath: server.socketPath + ".lock"))
        #expect(try server.waitForOutput("SIGTERM").contains("running 'shutdown'"))
    }

    @Test func sighupReloadsTheConfigurationFile() throws {
        let server = try ServerProcess(config: ServerProcess.standardConfig(threads: 0))
        defer { server.cleanUp() }
        try server.waitUntilReady()
        #expect(try server.command("status-get")["arguments"]?["multi-threading-enabled"] == false)
        let updated = ServerProcess.standardConfig(threads: 2).replacingOccurrences(of: "$DIR", with: server.dir)
        try updated.write(toFile: server.dir + "/config.json", atomically: true, encoding: .utf8)
        server.signal(SIGHUP)
        try server.waitForOutput("'config-reload' answered")
        let status = try server.command("status-get")
        #expect(status["arguments"]?["multi-threading-enabled"] == true)
        #expect(status["arguments"]?["thread-pool-size"] == 2)
        #expect(try server.command("config-reload")["text"] == "Configuration successful.")
    }

    @Test func configSetMovesTheControlSocketAndDeliversTheAnswer() throws {
        let server = try ServerProcess(config: ServerProcess.standardConfig())
        defer { server.cleanUp() }
        try server.waitUntilReady()
        var config = try #require(try server.command("config-get")["arguments"])
        let newPath = server.dir + "/moved.sock"
        config["PacketServer"]?["control-socket"]?["socket-name"] = .string(newPath)
        config["PacketServer"]?["listen"] = ["127.0.0.1:0", "127.0.0.1:0"]
        let answer = try server.command("config-set", config)
        #expect(answer["result"] == 0)
        #expect(answer["text"] == "Configuration successful.")
        #expect(!FileManager.default.fileExists(atPath: server.socketPath))
        let status = try server.rawCommand(#"{"command": "status-get"}"#, socket: newPath)
        #expect(status["arguments"]?["control-socket"]?.stringValue == newPath)
        // A failing config-set keeps the old configuration serving.
        var broken = config
        broken["PacketServer"]?["control-socket"]?["socket-name"] = "/nonexistent-dir/x.sock"
        let rejected = try server.rawCommand(
            #"{"command": "config-set", "arguments": \#(broken.serializedString())}"#, socket: newPath)
        #expect(rejected["result"] == 1)
        #expect(rejected["text"]?.stringValue?.contains("does not exist") == true)
        #expect(try server.rawCommand(#"{"command": "list-commands"}"#, socket: newPath)["result"] == 0)
    }

    @Test func packetsServedWhileFourThreadsHammerTheControlChannel() throws {
        for threads in [0, 2] {
            let server = try ServerProcess(config: ServerProcess.standardConfig(threads: threads))
            defer { server.cleanUp() }
            try server.waitUntilReady()
            let port = try listenPort(server)
            let stop = Atomic<Bool>(false)
            let answered = Atomic<Int>(0)
            let failures = Atomic<Int>(0)
            let group = DispatchGroup()
            let path = server.socketPath
            for _ in 0..<4 {
                group.enter()
                Thread {
                    while !stop.load(ordering: .relaxed) {
                        if let bytes = try? controlRoundTrip(path, Array(#"{"command": "status-get"}"#.utf8)),
                            (try? JSONParser.parse(bytes))?["result"] == 0
                        {
                            answered.add(1, ordering: .relaxed)
                        } else {
                            failures.add(1, ordering: .relaxed)
                        }
                    }
                    group.leave()
                }.start()
            }
            let client = UDPClient(port: port)
            var replies = 0
            let total = 500
            for i in 0..<total {
                client.send(PacketFormat.request(.echo, xid: UInt32(i), clientID: clientID))
                if client.receive() != nil { replies += 1 }
            }
            stop.store(true, ordering: .relaxed)
            group.wait()
            #expect(replies == total, "threads \(threads)")
            #expect(failures.load(ordering: .relaxed) == 0)
            #expect(answered.load(ordering: .relaxed) > 0)
            let stats = try server.command("statistic-get", ["name": "pkt4-received"])
            #expect(stats["arguments"]?["pkt4-received"]?[0]?[0] == .integer(Int64(total)), "threads \(threads)")
        }
    }

    @Test func idleServerUsesAlmostNoCPUAndAnswersPromptly() throws {
        let server = try ServerProcess(config: ServerProcess.standardConfig())
        defer { server.cleanUp() }
        try server.waitUntilReady()
        _ = try server.command("status-get")
        let pid = server.process.processIdentifier
        let before = cpuTime(of: pid)
        // Idle for a second: measured by a blocking wait on a pipe that never becomes readable.
        var fds: [Int32] = [0, 0]
        _ = pipe(&fds)
        var p = pollfd(fd: fds[0], events: Int16(POLLIN), revents: 0)
        _ = Glibc.poll(&p, 1, 1000)
        close(fds[0])
        close(fds[1])
        let used = cpuTime(of: pid) - before
        #expect(used <= .milliseconds(30), "idle packet-server used \(used) of CPU in 1 s")
        // An idle server answers at once (Kea's 1 s select would show here); the bound only catches that.
        let t0 = ContinuousClock.now
        #expect(try server.command("list-commands")["result"] == 0)
        #expect(ContinuousClock.now - t0 < .milliseconds(500))
    }

    @Test func badConfigExitsOneNamingTheKey() throws {
        let server = try ServerProcess(
            config:
                #"{"PacketServer": {"control-socket": {"socket-type": "unix", "socket-name": "x"}, "threads": "many"}}"#
        )
        defer { server.cleanUp() }
        #expect(try server.waitForExit() == 1)
        let out = try server.waitForOutput("PacketServer.threads")
        #expect(out.contains("configuration error"))
    }

    @Test func secondInstanceOnTheSameSocketIsRefused() throws {
        let first = try ServerProcess(config: ServerProcess.standardConfig())
        defer { first.cleanUp() }
        try first.waitUntilReady()
        let second = try ServerProcess(config: ServerProcess.standardConfig(), dir: first.dir)
        #expect(try second.waitForExit() == 1)
        #expect(try second.waitForOutput(".lock").contains("cannot start"))
        #expect(try first.command("list-commands")["result"] == 0)
    }

    @Test func socatInterop() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/socat") else {
            Issue.record("socat is not installed (Scripts/bootstrap installs it)")
            return
        }
        let server = try ServerProcess(config: ServerProcess.standardConfig())
        defer { server.cleanUp() }
        try server.waitUntilReady()
        // The start-up banner suggests exactly the command run here: without ignoreeof, socat gives up 0.5 s
        // (its -t default) after its piped input ends, answered or not (spec §8).
        let banner = try server.waitForOutput(",ignoreeof -")
        #expect(banner.contains("| socat UNIX:\(server.socketPath),ignoreeof -"))
        let socat = Process()
        socat.executableURL = URL(fileURLWithPath: "/usr/bin/socat")
        socat.arguments = ["UNIX:\(server.socketPath),ignoreeof", "-"]
        let input = Pipe()
        let output = Pipe()
        socat.standardInput = input
        socat.standardOutput = output
        try runProcess(socat)
        input.fileHandleForWriting.write(Data(#"{"command":"list-commands"}"#.utf8))
        try input.fileHandleForWriting.close()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        waitForProcess(socat)
        let answer = try JSONParser.parse([UInt8](data))
        #expect(answer["result"] == 0)
        #expect(answer["arguments"]?.arrayValue?.contains("status-get") == true)
    }

    @Test func keaShellThroughKeaCtrlAgentReachesPacketServer() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/sbin/kea-ctrl-agent"),
            FileManager.default.isExecutableFile(atPath: "/usr/sbin/kea-shell")
        else {
            Issue.record("kea-ctrl-agent/kea-shell are not installed (Scripts/bootstrap installs them)")
            return
        }
        let server = try ServerProcess(config: ServerProcess.standardConfig())
        defer { server.cleanUp() }
        try server.waitUntilReady()
        let port = 20000 + Int(getpid() % 20000)
        let agentConfig = """
            {"Control-agent": {
              "http-host": "127.0.0.1", "http-port": \(port),
              "control-sockets": {"dhcp4": {"socket-type": "unix", "socket-name": "\(server.socketPath)"}},
              "loggers": [{"name": "kea-ctrl-agent", "output_options": [{"output": "stdout"}], "severity": "WARN"}]
            }}
            """
        try agentConfig.write(toFile: server.dir + "/agent.json", atomically: true, encoding: .utf8)
        let agent = Process()
        agent.executableURL = URL(fileURLWithPath: "/usr/sbin/kea-ctrl-agent")
        agent.arguments = ["-c", server.dir + "/agent.json"]
        var env = ProcessInfo.processInfo.environment
        env["KEA_PIDFILE_DIR"] = server.dir
        env["KEA_LOCKFILE_DIR"] = server.dir
        agent.environment = env
        agent.standardOutput = FileHandle.nullDevice
        agent.standardError = FileHandle.nullDevice
        try runProcess(agent)
        defer {
            // SIGKILL: a child of Foundation's Process inherits the test thread's blocked signals, so the
            // agent may never see SIGTERM.
            kill(agent.processIdentifier, SIGKILL)
            waitForProcess(agent)
        }
        // Wait for the agent's HTTP listener: connect attempts against a deadline (its log goes through
        // log4cplus buffering, so there is no line to wait for).
        var listening = false
        let deadline = ContinuousClock.now + .seconds(20)
        while !listening && ContinuousClock.now < deadline && agent.isRunning {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_addr.s_addr = inet_addr("127.0.0.1")
            addr.sin_port = UInt16(port).bigEndian
            listening =
                withUnsafePointer(to: &addr) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                    }
                } == 0
            close(fd)
            if !listening { usleep(20_000) }
        }
        try #require(listening, "kea-ctrl-agent did not listen on port \(port)")
        func keaShell(_ command: String, _ arguments: String) throws -> JSONValue {
            let shell = Process()
            shell.executableURL = URL(fileURLWithPath: "/usr/sbin/kea-shell")
            shell.arguments = ["--host", "127.0.0.1", "--port", "\(port)", "--service", "dhcp4", command]
            let input = Pipe()
            let output = Pipe()
            shell.standardInput = input
            shell.standardOutput = output
            try runProcess(shell)
            input.fileHandleForWriting.write(Data(arguments.utf8))
            try input.fileHandleForWriting.close()
            let data = output.fileHandleForReading.readDataToEndOfFile()
            waitForProcess(shell)
            return try JSONParser.parse([UInt8](data))
        }
        let list = try keaShell("list-commands", "")
        // The agent wraps each service's answer in a list.
        #expect(list[0]?["result"] == 0)
        #expect(list[0]?["arguments"]?.arrayValue?.contains("statistic-get") == true)
        let stat = try keaShell("statistic-get", #""name": "pkt4-received""#)
        #expect(stat[0]?["arguments"]?["pkt4-received"] != nil)
        let shutdown = try keaShell("shutdown", #""exit-value": 4"#)
        #expect(shutdown[0]?["text"] == "Shutting down.")
        #expect(try server.waitForExit() == 4)
    }
}
