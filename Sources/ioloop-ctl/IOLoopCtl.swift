// ioloop-ctl: send one command to a Kea-style UNIX control socket and print the answer.

import ArgumentParser
import ControlChannel
import Foundation

/// Exit statuses of `ioloop-ctl` other than the answer's result code (0...4).
enum CtlExit: Int32 {
    /// Bad command line (ArgumentParser's own validation status).
    case usage = 64
    /// `--args` or `--args-file` is not valid JSON.
    case badArguments = 65
    /// `--args-file` cannot be read.
    case argumentsFileUnreadable = 66
    /// Connection refused: a stale socket file, or not a socket.
    case refused = 68
    /// Nothing at the socket path.
    case noSocket = 69
    /// The server closed without a (complete) answer, or another transport failure.
    case transport = 74
    /// The exchange timed out.
    case timedOut = 75
    /// The answer is not a control-channel answer.
    case invalidAnswer = 76
    /// Permission denied on the socket.
    case permissionDenied = 77
}

@main
struct IOLoopCtl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ioloop-ctl",
        abstract: "Send one command to a Kea-style UNIX control socket and print the answer.",
        discussion: """
            Works with IOLoop's ControlSocketServer and with ISC Kea's servers (kea-dhcp4, kea-dhcp6, \
            kea-dhcp-ddns, kea-ctrl-agent UNIX sockets).

            Exit status: the answer's result code (0 success, 1 error, 2 command not supported, 3 empty, \
            4 conflict; another non-zero result gives 1; for a list of answers, the first non-zero one). \
            Otherwise, with a message on stderr: 64 bad command line, 65 --args/--args-file not valid JSON, \
            66 --args-file unreadable, 68 connection refused (stale socket or not a socket), 69 no socket at \
            the path, 74 closed without an answer or other transport error, 75 timed out, 76 invalid answer, \
            77 permission denied.
            """)

    @Option(name: .long, help: ArgumentHelp("Path of the control socket.", valueName: "path"))
    var socket: String

    @Argument(help: "The command name, e.g. list-commands.")
    var command: String

    @Option(name: .customLong("args"), help: ArgumentHelp("The command's arguments as JSON.", valueName: "json"))
    var argumentsText: String?

    @Option(
        name: .customLong("args-file"),
        help: ArgumentHelp("Read the arguments as JSON from a file ('-' for stdin).", valueName: "file"))
    var argumentsFile: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Add a service to the command's 'service' list (for kea-ctrl-agent); repeatable.",
            valueName: "name"))
    var service: [String] = []

    @Option(name: .long, help: ArgumentHelp("Give up after this many seconds.", valueName: "seconds"))
    var timeout: Double = 10

    @Flag(name: .long, help: "Print the answer's exact bytes instead of pretty-printed JSON.")
    var raw = false

    func validate() throws {
        if argumentsText != nil && argumentsFile != nil {
            throw ValidationError("--args and --args-file are mutually exclusive")
        }
        guard timeout > 0, timeout.isFinite, timeout <= 86_400 else {
            throw ValidationError("--timeout must be a number of seconds between 0 and 86400")
        }
    }

    func run() throws {
        let arguments = try loadArguments()
        let client = ControlClient(socketPath: socket, timeout: .milliseconds(Int64(timeout * 1000)))
        let response: ControlClientResponse
        do {
            response = try client.sendBlocking(command, arguments: arguments, service: service.isEmpty ? nil : service)
        } catch {
            fail(Self.exitStatus(for: error), error.description)
        }
        if raw {
            FileHandle.standardOutput.write(Data(response.bytes))
        } else {
            FileHandle.standardOutput.write(Data((response.json.prettyPrinted() + "\n").utf8))
        }
        let result = response.answers.first(where: { $0.result != 0 })?.result ?? 0
        if result != 0 { throw ExitCode(Int32((1...63).contains(result) ? result : 1)) }
    }

    private func loadArguments() throws -> JSONValue? {
        let text: [UInt8]
        let origin: String
        if let argumentsText {
            text = Array(argumentsText.utf8)
            origin = "--args"
        } else if let argumentsFile {
            origin = "--args-file \(argumentsFile)"
            if argumentsFile == "-" {
                text = Array(FileHandle.standardInput.readDataToEndOfFile())
            } else {
                guard let data = FileManager.default.contents(atPath: argumentsFile) else {
                    fail(.argumentsFileUnreadable, "cannot read \(origin): \(String(cString: strerror(errno)))")
                }
                text = Array(data)
            }
        } else {
            return nil
        }
        do {
            return try JSONParser.parse(text)
        } catch {
            fail(.badArguments, "\(origin) is not valid JSON: \(error)")
        }
    }

    static func exitStatus(for error: ControlClientError) -> CtlExit {
        switch error {
        case .noSocket: return .noSocket
        case .connectionRefused: return .refused
        case .permissionDenied: return .permissionDenied
        case .timedOut: return .timedOut
        case .invalidAnswer: return .invalidAnswer
        case .closedWithoutAnswer, .answerTooLarge, .transport, .cancelled: return .transport
        }
    }

    private func fail(_ status: CtlExit, _ message: String) -> Never {
        FileHandle.standardError.write(Data("ioloop-ctl: \(message)\n".utf8))
        Foundation.exit(status.rawValue)
    }
}
