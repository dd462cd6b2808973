/// packet-server's UDP protocol: a small DHCP-like request/response exchange (documented in
/// Docs/PacketServer.md).
///
/// Every datagram starts with a 14-byte header, all integers big-endian:
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 2 | magic `0x50 0x53` ("PS") |
/// | 2 | 1 | version, 1 |
/// | 3 | 1 | message type |
/// | 4 | 4 | transaction id (echoed in the reply) |
/// | 8 | 6 | client hardware id |
/// | 14 | 0–1024 | payload |
///
/// Requests and their replies: DISCOVER (1) → OFFER (2) with a 4-byte address from the pool;
/// REQUEST (3) with a 4-byte address → ACK (5) if it is the client's address, else NAK (6);
/// ECHO (8) → ECHO-REPLY (9) with the payload echoed. Anything else is counted and dropped.
enum PacketType: UInt8, CaseIterable {
    case discover = 1
    case offer = 2
    case request = 3
    case ack = 5
    case nak = 6
    case echo = 8
    case echoReply = 9

    var statName: String {
        switch self {
        case .discover: return "discover"
        case .offer: return "offer"
        case .request: return "request"
        case .ack: return "ack"
        case .nak: return "nak"
        case .echo: return "echo"
        case .echoReply: return "echo-reply"
        }
    }
}

enum PacketFormat {
    static let magic: (UInt8, UInt8) = (0x50, 0x53)
    static let version: UInt8 = 1
    static let headerSize = 14
    static let maxPayload = 1024
    static let maxDatagram = headerSize + maxPayload
    /// The pool offers come from: 198.18.0.0/15 (a range reserved for benchmarking; only data here).
    static let poolBase: UInt32 = 0xC612_0000
    static let poolSize: UInt32 = 1 << 17

    /// The address a client id is offered: a stable hash of the id into the pool.
    static func address(for clientID: UnsafeRawBufferPointer) -> UInt32 {
        var h: UInt32 = 2_166_136_261
        for b in clientID {
            h = (h ^ UInt32(b)) &* 16_777_619
        }
        return poolBase + h % poolSize
    }

    /// Builds a request datagram (for tests and load clients).
    static func request(_ type: PacketType, xid: UInt32, clientID: [UInt8], payload: [UInt8] = []) -> [UInt8] {
        precondition(clientID.count == 6 && payload.count <= maxPayload)
        var out: [UInt8] = [magic.0, magic.1, version, type.rawValue]
        out += withUnsafeBytes(of: xid.bigEndian) { Array($0) }
        out += clientID
        out += payload
        return out
    }
}

/// The outcome of handling one datagram.
enum PacketOutcome: Equatable {
    /// A reply of this type and length was written into the reply buffer.
    case reply(PacketType, Int)
    /// Too short, wrong magic or version: counted as a parse failure.
    case malformed
    /// A well-formed message of a type the server doesn't answer (including reply types sent to it).
    case unknown(UInt8)
}

/// Handles one request datagram; pure function of its input, safe on any thread.
///
/// The reply buffer must hold `PacketFormat.maxDatagram` bytes. No allocation.
func handlePacket(_ request: UnsafeRawBufferPointer, reply: UnsafeMutableRawBufferPointer) -> PacketOutcome {
    guard request.count >= PacketFormat.headerSize, request.count <= PacketFormat.maxDatagram,
        request[0] == PacketFormat.magic.0, request[1] == PacketFormat.magic.1,
        request[2] == PacketFormat.version
    else { return .malformed }
    let typeByte = request[3]
    guard let type = PacketType(rawValue: typeByte) else { return .unknown(typeByte) }
    let clientID = UnsafeRawBufferPointer(rebasing: request[8..<14])
    let payload = UnsafeRawBufferPointer(rebasing: request[PacketFormat.headerSize...])
    // Header of the reply: same magic, version, transaction id and client id.
    reply.copyMemory(from: UnsafeRawBufferPointer(rebasing: request[0..<PacketFormat.headerSize]))

    func putAddress(_ address: UInt32) -> Int {
        withUnsafeBytes(of: address.bigEndian) { bytes in
            UnsafeMutableRawBufferPointer(rebasing: reply[PacketFormat.headerSize..<PacketFormat.headerSize + 4])
                .copyMemory(from: bytes)
        }
        return PacketFormat.headerSize + 4
    }

    switch type {
    case .discover:
        reply[3] = PacketType.offer.rawValue
        return .reply(.offer, putAddress(PacketFormat.address(for: clientID)))
    case .request:
        let expected = PacketFormat.address(for: clientID)
        var requested: UInt32 = 0
        if payload.count >= 4 {
            requested =
                UInt32(payload[0]) << 24 | UInt32(payload[1]) << 16 | UInt32(payload[2]) << 8
                | UInt32(payload[3])
        }
        let granted = payload.count >= 4 && requested == expected
        reply[3] = (granted ? PacketType.ack : PacketType.nak).rawValue
        return .reply(granted ? .ack : .nak, putAddress(expected))
    case .echo:
        reply[3] = PacketType.echoReply.rawValue
        UnsafeMutableRawBufferPointer(
            rebasing: reply[PacketFormat.headerSize..<PacketFormat.headerSize + payload.count]
        )
        .copyMemory(from: payload)
        return .reply(.echoReply, PacketFormat.headerSize + payload.count)
    case .offer, .ack, .nak, .echoReply:
        return .unknown(typeByte)
    }
}
