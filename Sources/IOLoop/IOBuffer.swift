/// A fixed-capacity byte buffer that reads fill and the caller drains, reused across reads.
///
/// The storage is allocated once, at `init`; reading into it allocates nothing. Reads append at the end of
/// the valid bytes (`count`) into the free space, and the caller consumes from the front with
/// ``removeFirst(_:)`` or ``clear()``. A pending read keeps the buffer alive and owns its free space until
/// the completion handler runs: don't change the buffer while a read into it is pending.
///
/// Asio counterpart: `boost::asio::streambuf` / `dynamic_buffer` (fixed capacity).
/// Thread contract: loop thread (the thread that runs the socket's service).
public final class IOBuffer {
    /// The whole storage; valid bytes are `[0, count)`.
    public let storage: UnsafeMutableRawBufferPointer
    /// Number of valid bytes at the front.
    public private(set) var count = 0

    /// Allocates `capacity` bytes of storage.
    public init(capacity: Int) {
        precondition(capacity > 0, "IOBuffer capacity must be positive")
        storage = .allocate(byteCount: capacity, alignment: 16)
    }

    deinit { storage.deallocate() }

    /// Total storage size.
    public var capacity: Int { storage.count }
    /// Free bytes after the valid ones.
    public var freeSpace: Int { storage.count - count }
    /// Whether there are no valid bytes.
    public var isEmpty: Bool { count == 0 }

    /// The valid bytes. Valid until the buffer is next changed.
    public var readableBytes: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: storage[0..<count])
    }

    /// The free tail, where the next read lands.
    var writableTail: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(rebasing: storage[count..<storage.count])
    }

    /// Copies the valid bytes into an array.
    public var bytes: [UInt8] { Array(readableBytes) }

    /// Marks `n` more bytes after the valid ones as valid (after filling `writableTail` yourself).
    public func commit(_ n: Int) {
        precondition(n >= 0 && n <= freeSpace, "IOBuffer.commit(\(n)) with only \(freeSpace) bytes free")
        count += n
    }

    /// Appends bytes, or traps if they don't fit.
    public func append(_ bytes: some Collection<UInt8>) {
        precondition(bytes.count <= freeSpace, "IOBuffer.append of \(bytes.count) bytes with \(freeSpace) free")
        let tail = writableTail
        tail.copyBytes(from: bytes)
        count += bytes.count
    }

    /// Drops the first `n` valid bytes, moving the rest to the front.
    public func removeFirst(_ n: Int) {
        precondition(n >= 0 && n <= count, "IOBuffer.removeFirst(\(n)) with only \(count) bytes valid")
        let rest = count - n
        if rest > 0 {
            storage.baseAddress!.copyMemory(from: storage.baseAddress! + n, byteCount: rest)
        }
        count = rest
    }

    /// Drops every valid byte.
    public func clear() { count = 0 }
}
