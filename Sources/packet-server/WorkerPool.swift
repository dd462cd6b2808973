import Foundation
import Glibc
import IOLoop

/// A received datagram waiting for a worker: its bytes, who sent it, and the socket to answer on.
struct PacketJob: Sendable {
    var fd: Int32
    var bytes: [UInt8]
    var peer: SocketAddress
}

/// A fixed pool of packet worker threads with a bounded queue, and Kea's critical section.
///
/// The main thread keeps receiving and handling control commands; it hands each datagram to `submit`, which
/// drops it (returns false) when the queue is full, as Kea does with `packet-queue-size`. A command that
/// changes the configuration calls `pause()`, which returns once every worker is idle and parked (queued
/// packets wait), then `resume()` — Kea 2.6's `MultiThreadingCriticalSection`.
///
/// Thread contract: `submit`, `pause`, `resume`, `stop` from the main thread; the handler runs on workers.
final class WorkerPool: @unchecked Sendable {
    private let condition = NSCondition()
    private var queue: [PacketJob] = []
    private var head = 0
    private var paused = false
    private var stopping = false
    private var busy = 0
    private var parked = 0
    private var workers: [Thread] = []
    private var exited = 0
    let capacity: Int
    let threadCount: Int
    private let handler: @Sendable (PacketJob, UnsafeMutableRawBufferPointer) -> Void

    // Queue-length samples at submission, for Kea's packet-queue-statistics (last 10, 100, 1000 packets).
    private var samples = [Int](repeating: 0, count: 1000)
    private var sampleCount = 0

    /// `handler` gets the job and its worker's reply buffer (`PacketFormat.maxDatagram` bytes, reused for
    /// every packet that worker handles).
    init(threads: Int, capacity: Int, handler: @escaping @Sendable (PacketJob, UnsafeMutableRawBufferPointer) -> Void) {
        self.threadCount = threads
        self.capacity = capacity
        self.handler = handler
        queue.reserveCapacity(capacity)
        for i in 0..<threads {
            let t = Thread { [unowned self] in self.workerMain() }
            t.name = "packet-worker-\(i)"
            workers.append(t)
        }
        for t in workers { t.start() }
    }

    /// Queues a datagram; false when the queue is full (the caller counts the drop).
    func submit(_ job: PacketJob) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        let length = queue.count - head
        samples[sampleCount % samples.count] = length
        sampleCount += 1
        guard length < capacity else { return false }
        queue.append(job)
        condition.signal()
        return true
    }

    /// Removes the queued datagrams `isGone` selects and returns how many; the caller counts them as drops.
    ///
    /// For a listener about to close: a queued job names its socket by descriptor, and once the descriptor is
    /// closed its number can be reused by any socket opened next (a new listener, a control connection), which
    /// would then carry a reply meant for the old one. Call it inside the critical section (`pause()`), so no
    /// worker holds such a job either.
    func discardQueued(where isGone: (PacketJob) -> Bool) -> Int {
        condition.lock()
        defer { condition.unlock() }
        let before = queue.count - head
        queue.removeSubrange(0..<head)
        head = 0
        queue.removeAll(where: isGone)
        return before - queue.count
    }

    /// Averages of the queue length seen by the last 10, 100 and 1000 submissions.
    func queueStatistics() -> [Double] {
        condition.lock()
        defer { condition.unlock() }
        return [10, 100, 1000].map { window in
            let n = min(window, sampleCount)
            guard n > 0 else { return 0 }
            var sum = 0
            for i in 1...n { sum += samples[(sampleCount - i) % samples.count] }
            return Double(sum) / Double(n)
        }
    }

    /// Enters the critical section: returns once no worker is processing a packet.
    func pause() {
        condition.lock()
        paused = true
        condition.broadcast()
        while busy > 0 || parked + exited < threadCount { condition.wait() }
        condition.unlock()
    }

    /// Leaves the critical section.
    func resume() {
        condition.lock()
        paused = false
        condition.broadcast()
        condition.unlock()
    }

    /// Stops the workers after the packets already queued, and waits for them.
    func stop() {
        condition.lock()
        stopping = true
        paused = false
        condition.broadcast()
        while exited < threadCount { condition.wait() }
        condition.unlock()
    }

    private func workerMain() {
        let reply = UnsafeMutableRawBufferPointer.allocate(byteCount: PacketFormat.maxDatagram, alignment: 16)
        defer { reply.deallocate() }
        condition.lock()
        while true {
            if paused {
                parked += 1
                condition.broadcast()
                while paused { condition.wait() }
                parked -= 1
                continue
            }
            if head < queue.count {
                let job = queue[head]
                head += 1
                if head == queue.count {
                    queue.removeAll(keepingCapacity: true)
                    head = 0
                }
                busy += 1
                condition.unlock()
                handler(job, reply)
                condition.lock()
                busy -= 1
                if paused { condition.broadcast() }
                continue
            }
            if stopping { break }
            condition.wait()
        }
        exited += 1
        condition.broadcast()
        condition.unlock()
    }
}
