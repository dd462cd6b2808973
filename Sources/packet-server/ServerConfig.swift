import ControlChannel
import Foundation
import Logging

/// A configuration error: names the offending key, so `packet-server -c FILE` can say exactly what is wrong.
struct ConfigError: Error, CustomStringConvertible {
    var key: String
    var message: String
    var description: String { "\(key): \(message)" }
}

/// One UDP listen address, `"127.0.0.1:6767"` or `"[::1]:6767"`.
struct ListenAddress: Equatable, Hashable, CustomStringConvertible {
    var host: String
    var port: UInt16

    init(host: String, port: UInt16) {
        self.host = host
        self.port = port
    }

    init(parsing text: String, key: String) throws(ConfigError) {
        let host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
                throw ConfigError(key: key, message: "expected \"[ipv6]:port\", got \"\(text)\"")
            }
            host = text[text.index(after: text.startIndex)..<close]
            portText = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":") else {
                throw ConfigError(key: key, message: "expected \"host:port\", got \"\(text)\"")
            }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        guard !host.isEmpty else { throw ConfigError(key: key, message: "missing host in \"\(text)\"") }
        guard let port = UInt16(portText) else {
            throw ConfigError(key: key, message: "port must be an integer 0...65535, got \"\(portText)\"")
        }
        self.init(host: String(host), port: port)
    }

    var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// packet-server's configuration, Kea-shaped:
/// `{"PacketServer": {"listen": [...], "control-socket": {...}, "threads": 0, ...}}`.
struct ServerConfig: Equatable {
    static let topLevelKey = "PacketServer"
    /// Every other key is rejected as an unsupported parameter.
    static let knownKeys: Set<String> = [
        "listen", "control-socket", "threads", "packet-queue-size", "log-level", "comment",
    ]

    var listen: [ListenAddress]
    /// The `control-socket` map, validated by `ControlSocketConfig` when the server opens it.
    var controlSocket: JSONValue
    /// Worker threads for packets; 0 = process packets on the main thread (Kea's single-threaded mode).
    var threads: Int
    /// Packets queued for the workers before new ones are dropped (Kea `packet-queue-size`, default 64).
    var packetQueueSize: Int
    var logLevel: Logger.Level
    /// The whole configuration as given (for `config-get` and `config-write`).
    var json: JSONValue

    /// The socket path: `socket-name` from the map.
    var controlSocketName: String? { controlSocket["socket-name"]?.stringValue }

    /// Parses and validates a whole configuration document.
    static func parse(_ document: JSONValue) throws(ConfigError) -> ServerConfig {
        guard case .object(let top) = document else {
            throw ConfigError(key: "(top level)", message: "expected a map, got \(document.typeName)")
        }
        for key in top.keys where key != topLevelKey {
            throw ConfigError(key: key, message: "unsupported top-level entry (expected only '\(topLevelKey)')")
        }
        guard let section = top[topLevelKey] else {
            throw ConfigError(key: topLevelKey, message: "missing mandatory '\(topLevelKey)' map")
        }
        guard case .object(let map) = section else {
            throw ConfigError(key: topLevelKey, message: "expected a map, got \(section.typeName)")
        }
        for key in map.keys where !knownKeys.contains(key) {
            throw ConfigError(key: "\(topLevelKey).\(key)", message: "unsupported parameter")
        }

        var listen: [ListenAddress] = []
        if let value = map["listen"] {
            guard case .array(let items) = value else {
                throw ConfigError(key: "\(topLevelKey).listen", message: "expected a list, got \(value.typeName)")
            }
            for (i, item) in items.enumerated() {
                let key = "\(topLevelKey).listen[\(i)]"
                guard let text = item.stringValue else {
                    throw ConfigError(key: key, message: "expected a string \"host:port\", got \(item.typeName)")
                }
                listen.append(try ListenAddress(parsing: text, key: key))
            }
        } else {
            listen = [ListenAddress(host: "127.0.0.1", port: 6767)]
        }

        guard let controlSocket = map["control-socket"] else {
            throw ConfigError(key: "\(topLevelKey).control-socket", message: "missing mandatory map")
        }
        guard case .object = controlSocket else {
            throw ConfigError(
                key: "\(topLevelKey).control-socket", message: "expected a map, got \(controlSocket.typeName)")
        }

        let threads = try integer(map, "threads", default: 0, range: 0...256)
        let queue = try integer(map, "packet-queue-size", default: 64, range: 1...1_000_000)

        var level = Logger.Level.info
        if let value = map["log-level"] {
            guard let text = value.stringValue, let parsed = Logger.Level(rawValue: text.lowercased()) else {
                throw ConfigError(
                    key: "\(topLevelKey).log-level",
                    message: "expected one of trace, debug, info, notice, warning, error, critical")
            }
            level = parsed
        }
        return ServerConfig(
            listen: listen, controlSocket: controlSocket, threads: threads, packetQueueSize: queue,
            logLevel: level, json: document)
    }

    private static func integer(
        _ map: JSONObject, _ key: String, default value: Int, range: ClosedRange<Int>
    ) throws(ConfigError) -> Int {
        guard let v = map[key] else { return value }
        guard let i = v.intValue else {
            throw ConfigError(key: "\(topLevelKey).\(key)", message: "expected an integer, got \(v.typeName)")
        }
        guard range.contains(Int(i)) else {
            throw ConfigError(
                key: "\(topLevelKey).\(key)", message: "\(i) is out of range \(range.lowerBound)...\(range.upperBound)")
        }
        return Int(i)
    }

    /// Reads and parses a configuration file; errors name the file, the position or the key.
    static func load(path: String) throws -> ServerConfig {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigError(key: path, message: "cannot read the configuration file")
        }
        let document: JSONValue
        do {
            document = try JSONParser.parse([UInt8](data))
        } catch {
            throw ConfigError(key: path, message: "not valid JSON: \(error)")
        }
        return try parse(document)
    }

    /// The built-in default: works on a fresh machine without any file. The control socket goes under a
    /// writable runtime directory ($XDG_RUNTIME_DIR, else /run/ioloop for root, else /tmp/ioloop-UID).
    static func builtInDefault() -> ServerConfig {
        let document: JSONValue = [
            topLevelKey: [
                "listen": ["127.0.0.1:6767"],
                "control-socket": ["socket-type": "unix", "socket-name": .string(defaultSocketPath())],
                "threads": 0,
                "packet-queue-size": 64,
                "log-level": "info",
            ]
        ]
        // The default is valid by construction; a failure here is a programming error.
        return try! parse(document)
    }

    static func defaultSocketPath() -> String {
        let env = ProcessInfo.processInfo.environment
        var dir: String
        if let runtime = env["XDG_RUNTIME_DIR"], !runtime.isEmpty, access(runtime, W_OK) == 0 {
            dir = runtime + "/ioloop"
        } else if getuid() == 0 {
            dir = "/run/ioloop"
        } else {
            dir = "/tmp/ioloop-\(getuid())"
        }
        if mkdir(dir, 0o700) != 0 && errno != EEXIST {
            dir = NSTemporaryDirectory()
        }
        return dir + "/packet-server.sock"
    }

    /// This configuration with `control-socket.socket-name` replaced (the `--control-socket` option).
    func withControlSocket(path: String) -> ServerConfig {
        var copy = self
        copy.controlSocket["socket-name"] = .string(path)
        copy.json[ServerConfig.topLevelKey]?["control-socket"] = copy.controlSocket
        return copy
    }
}
