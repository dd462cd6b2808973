/// Something the timer heap can hold: it remembers its own position so removal is O(log n).
protocol TimerNode: AnyObject {
    /// Index in the heap, or -1 when not queued. Maintained by `TimerHeap` only.
    var heapIndex: Int { get set }
    /// Called on the loop thread once the monotonic clock has reached the node's deadline.
    func expire(now: UInt64)
    /// Service shutdown: release the pending handlers without calling them. A handler commonly captures the
    /// timer's owner, which holds the timer: kept, it would keep both (and the service) alive.
    func dropForShutdown()
}

/// An indexed 4-ary min-heap of timer deadlines (monotonic nanoseconds).
///
/// Asio keeps the same structure (`timer_queue`): insertion and removal are O(log n), the earliest
/// deadline is O(1), and one kernel timer (our timerfd) is armed for the earliest entry only.
/// Loop-thread only.
final class TimerHeap {
    /// The heap owns one reference to each queued node, taken in `insert` and given back when the node
    /// leaves; entries hold it unowned(unsafe) so sifting moves them without retain/release traffic.
    private struct Entry {
        var deadline: UInt64
        unowned(unsafe) var node: any TimerNode
    }
    @exclusivity(unchecked) private var entries: [Entry] = []

    var isEmpty: Bool { entries.isEmpty }
    var count: Int { entries.count }

    /// The earliest deadline, or nil when no timer is queued.
    @inline(__always)
    var earliestDeadline: UInt64? { entries.first?.deadline }

    func insert(_ node: any TimerNode, deadline: UInt64) {
        precondition(node.heapIndex < 0, "timer is already queued")
        _ = Unmanaged<AnyObject>.passRetained(node)
        entries.append(Entry(deadline: deadline, node: node))
        node.heapIndex = entries.count - 1
        siftUp(entries.count - 1)
    }

    /// Removes `node` if queued; returns whether it was.
    @discardableResult
    func remove(_ node: any TimerNode) -> Bool {
        guard unlink(node) else { return false }
        Unmanaged<AnyObject>.passUnretained(node).release()
        return true
    }

    /// Takes `node` out of the heap without giving back the heap's reference.
    private func unlink(_ node: any TimerNode) -> Bool {
        let i = node.heapIndex
        guard i >= 0 else { return false }
        node.heapIndex = -1
        let last = entries.count - 1
        if i != last {
            entries[i] = entries[last]
            entries[i].node.heapIndex = i
            entries.removeLast()
            if i > 0 && entries[i].deadline < entries[(i - 1) >> 2].deadline {
                siftUp(i)
            } else {
                siftDown(i)
            }
        } else {
            entries.removeLast()
        }
        return true
    }

    /// Pops the earliest node if its deadline is at or before `now`.
    func popExpired(now: UInt64) -> (any TimerNode)? {
        guard let first = entries.first, first.deadline <= now else { return nil }
        let node = first.node  // a strong reference for the caller
        _ = unlink(node)
        Unmanaged<AnyObject>.passUnretained(node).release()  // the heap's own
        return node
    }

    /// Drops every entry without expiring it, releasing its handlers uncalled (service shutdown).
    ///
    /// Every node is unlinked before any handler is released: releasing one can run code (a deinit) that
    /// cancels or re-arms another timer, which then finds it already out of the heap.
    func removeAll() {
        let all = entries
        entries.removeAll()
        for e in all { e.node.heapIndex = -1 }
        for e in all {
            e.node.dropForShutdown()
            Unmanaged<AnyObject>.passUnretained(e.node).release()
        }
    }

    // A 4-ary heap: half the depth of a binary one, so a pop or push touches half as many entries — and, more
    // to the point, writes `heapIndex` into half as many timer objects scattered over the heap of the process
    // (each one a likely cache miss with 100 000 timers queued). The four children of a node are adjacent.

    private func siftUp(_ start: Int) {
        var i = start
        let moving = entries[i]
        while i > 0 {
            let parent = (i - 1) >> 2
            if entries[parent].deadline <= moving.deadline { break }
            entries[i] = entries[parent]
            entries[i].node.heapIndex = i
            i = parent
        }
        entries[i] = moving
        moving.node.heapIndex = i
    }

    private func siftDown(_ start: Int) {
        var i = start
        let moving = entries[i]
        let n = entries.count
        while true {
            let first = 4 * i + 1
            if first >= n { break }
            var child = first
            var best = entries[first].deadline
            var c = first + 1
            let end = min(first + 4, n)
            while c < end {
                let d = entries[c].deadline
                if d < best {
                    best = d
                    child = c
                }
                c += 1
            }
            if moving.deadline <= best { break }
            entries[i] = entries[child]
            entries[i].node.heapIndex = i
            i = child
        }
        entries[i] = moving
        moving.node.heapIndex = i
    }
}
