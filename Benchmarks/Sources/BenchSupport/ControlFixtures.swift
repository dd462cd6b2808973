// Fixtures for the control-channel in-process workloads, shared by ioloop-bench and the
// package-benchmark suite so both measure exactly the same thing.
import ControlChannel

public enum ControlFixtures {
    /// The load client's request (Comparators/load_client.c), 27 bytes.
    public static let smallCommand: [UInt8] = Array(#"{"command":"list-commands"}"#.utf8)

    /// A `config-test`-shaped command of at least 1 MiB: a Kea-like subnet list (maps, strings, integers,
    /// a nested list, escaped characters), serialized compactly, with a `//` comment before the value so the
    /// framer's comment path is exercised too. Deterministic.
    public static let largeCommand: [UInt8] = {
        var text = #"// generated\#n{"command":"config-test","arguments":{"PacketServer":{"subnets":["#
        var i = 0
        while text.utf8.count < (1 << 20) - 200 {
            if i > 0 { text += "," }
            text += #"{"id":\#(i + 1),"subnet":"10.\#(i / 256 % 256).\#(i % 256).0/24","#
            text += #""pools":[{"pool":"10.\#(i / 256 % 256).\#(i % 256).10 - 10.\#(i / 256 % 256).\#(i % 256).200"}],"#
            text += #""valid-lifetime":\#(3600 + i % 7),"comment":"rack \"\#(i % 97)\" \u00e9 line\nnext","#
            text +=
                #""option-data":[{"name":"routers","data":"10.0.\#(i % 256).1"},{"name":"domain-name-servers","data":"192.0.2.1, 192.0.2.2"}]}"#
            i += 1
        }
        text += "]}}}"
        while text.utf8.count < 1 << 20 { text += " " }
        return Array(text.utf8)
    }()

    /// A manager with packet-server's command names, synchronous handlers with small fixed answers
    /// (plus the built-in `list-commands`).
    public static func makeManager() -> CommandManager {
        let manager = CommandManager()
        let names = [
            "build-report", "config-get", "config-reload", "config-set", "config-test", "config-write",
            "shutdown", "status-get", "version-get",
        ]
        for name in names {
            try! manager.registerCommand(name) { _, _, _ in
                ControlAnswer.success("\(name) done", arguments: ["pid": 1234, "uptime": 5]).json
            }
        }
        return manager
    }

    /// Framer + parser over one command, fed in `chunk`-byte pieces (the server reads 64 KiB at a time).
    /// Returns the parsed value; traps on malformed input (the fixtures are well-formed).
    @inline(never)
    public static func frameAndParse(_ bytes: [UInt8], framer: inout JSONFramer, chunk: Int = 65536) -> JSONValue {
        framer.reset()
        return bytes.withUnsafeBytes { raw -> JSONValue in
            var offset = 0
            while offset < raw.count {
                let end = min(offset + chunk, raw.count)
                switch framer.feed(UnsafeRawBufferPointer(rebasing: raw[offset..<end])) {
                case .needMoreData: offset = end
                case .complete: return try! framer.parse()
                case .failed(let e): fatalError("framer rejected the fixture: \(e)")
                }
            }
            fatalError("fixture incomplete")
        }
    }
}
