import ArgumentParser
import ControlChannel
import Foundation
import Glibc
import IOLoop
import Logging

/// `packet-server`: the example host server (see Docs/PacketServer.md).
@main
struct PacketServerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "packet-server",
        abstract: "UDP packet server with a Kea-compatible control socket, driven by IOLoop's poll() embedding.",
        version: PacketServer.version)

    @Option(name: [.customShort("c"), .long], help: "Configuration file (JSON, Kea-shaped). Default: built-in.")
    var config: String?

    @Option(name: .customLong("control-socket"), help: "Control socket path; overrides control-socket.socket-name.")
    var controlSocket: String?

    @Option(name: .customLong("log-level"), help: "Override the configured log level (trace ... critical).")
    var logLevel: String?

    @Flag(name: [.customShort("t"), .customLong("test")], help: "Check the configuration and exit (as kea-dhcp4 -t).")
    var testOnly = false

    func run() throws {
        signal(SIGPIPE, SIG_IGN)
        let cfg: ServerConfig
        do {
            cfg = try config.map { try ServerConfig.load(path: $0) } ?? ServerConfig.builtInDefault()
            _ = try ControlSocketConfig(parsing: cfg.controlSocket)
        } catch {
            FileHandle.standardError.write(Data("packet-server: configuration error: \(error)\n".utf8))
            throw ExitCode(1)
        }
        if testOnly {
            print("packet-server: configuration \(config ?? "(built-in)") is valid")
            return
        }
        var level = cfg.logLevel
        if let logLevel {
            guard let l = Logger.Level(rawValue: logLevel.lowercased()) else {
                throw ValidationError("--log-level must be one of trace, debug, info, notice, warning, error, critical")
            }
            level = l
        }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = .trace
            return handler
        }
        var logger = Logger(label: "packet-server")
        logger.logLevel = level
        let server: PacketServer
        do {
            server = try PacketServer(
                config: cfg, configPath: config, controlSocketOverride: controlSocket, logger: logger)
        } catch {
            FileHandle.standardError.write(Data("packet-server: cannot start: \(error)\n".utf8))
            throw ExitCode(1)
        }
        let socketPath = server.control?.socketPath ?? "?"
        FileHandle.standardOutput.write(
            Data(
                """
                packet-server \(PacketServer.version) (pid \(getpid())) serving UDP on \
                \(server.config.listen.map(\.description).joined(separator: ", "))
                control socket: \(socketPath)
                try: swift run ioloop-ctl --socket \(socketPath) status-get
                     echo '{"command": "list-commands"}' | socat UNIX:\(socketPath),ignoreeof -

                """.utf8))
        let status = server.run()
        if status != 0 { throw ExitCode(status) }
    }
}
