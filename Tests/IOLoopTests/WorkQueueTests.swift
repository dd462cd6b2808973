import Synchronization
import Testing

@testable import IOLoop

/// The ready queue is a hand-written ring buffer: order across wrap-around and growth, and release of what it holds.
@Suite struct WorkQueueTests {
    /// Runs the front item, which records its tag.
    private func runFirst(_ queue: inout WorkQueue) throws {
        switch queue.removeFirst() {
        case .handler(let h): try h()
        default: Issue.record("unexpected work kind")
        }
    }

    /// The drain streams through this memory once per handler: keep an item at three words.
    @Test func workItemsStayThreeWords() {
        #expect(MemoryLayout<Work>.stride <= 24)
    }

    @Test func keepsFIFOOrderAcrossWrapAroundAndGrowth() throws {
        var queue = WorkQueue(capacity: 16)
        let seen = Mutex<[Int]>([])
        var next = 0
        var expected = 0
        // Interleave appends and removals so the head walks around the ring before every growth.
        for round in 0..<200 {
            for _ in 0..<(round % 7 + 3) {
                let tag = next
                queue.append(.handler { seen.withLock { $0.append(tag) } })
                next += 1
            }
            for _ in 0..<(round % 5 + 1) where !queue.isEmpty {
                try runFirst(&queue)
                expected += 1
            }
        }
        var other = WorkQueue(capacity: 16)
        for _ in 0..<40 {
            let tag = next
            other.append(.handler { seen.withLock { $0.append(tag) } })
            next += 1
        }
        queue.append(contentsOf: &other)
        let otherEmptied = other.isEmpty
        #expect(otherEmptied)
        while !queue.isEmpty { try runFirst(&queue) }
        #expect(seen.withLock { $0 } == Array(0..<next))
    }

    /// Queues `n` handlers that capture a fresh token; returns a weak view of it (the queue holds the only refs).
    private func fill(_ queue: inout WorkQueue, _ n: Int) -> WeakToken {
        let token = Token()
        for _ in 0..<n { queue.append(.handler { _ = token }) }
        return WeakToken(token)
    }

    @Test func releasesUncalledHandlersOnRemoveAllAndDeinit() {
        var second: WeakToken?
        do {
            var queue = WorkQueue(capacity: 16)
            let first = fill(&queue, 20)
            #expect(first.value != nil)
            queue.removeAll()
            #expect(first.value == nil)
            second = fill(&queue, 40)
            _ = queue.removeFirst()
            #expect(second?.value != nil)
        }
        #expect(second?.value == nil)
    }
}

private final class Token: Sendable {}

private struct WeakToken {
    weak var value: Token?
    init(_ value: Token) { self.value = value }
}
