/// The ready queue of an `IOService`: a FIFO ring buffer of `Work` that moves items in and out.
///
/// Why not `Deque<Work>`: `Deque.append` takes its element borrowed and `Work` is a multi-payload enum, so every
/// post paid an outlined enum copy (a retain of the handler's context) on the way in and an outlined destroy on the
/// way out. Here an item is moved into uninitialized storage and moved out again: no copies, no retain/release,
/// no uniqueness check. Non-copyable, so two owners can never share (and double-free) one buffer; queues are
/// exchanged with `swap`, which moves three words.
///
/// Thread contract: none of its own; the `IOService` touches a queue only on its loop thread or under its lock.
struct WorkQueue: ~Copyable {
    private var buffer: UnsafeMutablePointer<Work>
    /// Capacity - 1; the capacity is a power of two, so wrapping is a mask.
    private var mask: Int
    private var head = 0
    private(set) var count = 0

    /// Creates an empty queue with room for `capacity` items (rounded up to a power of two) before it grows.
    init(capacity: Int = 64) {
        var c = 16
        while c < capacity { c <<= 1 }
        buffer = .allocate(capacity: c)
        mask = c - 1
    }

    deinit {
        var i = head
        for _ in 0..<count {
            (buffer + i).deinitialize(count: 1)
            i = (i &+ 1) & mask
        }
        buffer.deallocate()
    }

    var isEmpty: Bool {
        @inline(__always) get { count == 0 }
    }

    /// Moves `item` to the back of the queue.
    @inline(__always)
    mutating func append(_ item: consuming Work) {
        if count > mask { grow() }
        (buffer + ((head &+ count) & mask)).initialize(to: item)
        count &+= 1
    }

    /// Moves the front item out of the queue. Precondition (unchecked): the queue is not empty.
    @inline(__always)
    mutating func removeFirst() -> Work {
        let item = (buffer + head).move()
        head = (head &+ 1) & mask
        count &-= 1
        return item
    }

    /// Moves every item of `other` to the back of this queue, leaving `other` empty with its capacity.
    mutating func append(contentsOf other: inout WorkQueue) {
        while !other.isEmpty { append(other.removeFirst()) }
        other.head = 0
    }

    /// Destroys every item (releasing the handlers uncalled) and keeps the capacity.
    mutating func removeAll() {
        while count > 0 { _ = removeFirst() }
        head = 0
    }

    /// Doubles the capacity, moving the items to the front of the new buffer in FIFO order.
    private mutating func grow() {
        let oldCapacity = mask + 1
        let newBuffer = UnsafeMutablePointer<Work>.allocate(capacity: oldCapacity * 2)
        let firstRun = oldCapacity - head
        (newBuffer).moveInitialize(from: buffer + head, count: firstRun)
        (newBuffer + firstRun).moveInitialize(from: buffer, count: head)
        buffer.deallocate()
        buffer = newBuffer
        mask = oldCapacity * 2 - 1
        head = 0
    }
}
