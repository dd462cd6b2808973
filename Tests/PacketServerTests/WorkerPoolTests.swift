import Foundation
import Glibc
import IOLoop
import Synchronization
import Testing

@testable import packet_server

@Suite("Packet worker pool")
struct WorkerPoolTests {
    private func job(_ fd: Int32, _ byte: UInt8) -> PacketJob {
        PacketJob(fd: fd, bytes: [byte], peer: try! SocketAddress(ip: "127.0.0.1", port: 9))
    }

    /// A listener closed by a reconfiguration takes its queued datagrams with it: a worker must never answer one
    /// on the descriptor number, which the next socket opened may reuse.
    @Test func discardQueuedRemovesOnlyTheClosedListenersJobs() {
        let handled = Mutex<[(fd: Int32, byte: UInt8)]>([])
        let pool = WorkerPool(threads: 2, capacity: 16) { job, _ in
            handled.withLock { $0.append((job.fd, job.bytes[0])) }
        }
        pool.pause()
        for (i, fd) in [5, 6, 5, 7, 5].enumerated() { #expect(pool.submit(job(Int32(fd), UInt8(i)))) }
        #expect(pool.discardQueued { $0.fd == 5 } == 3)
        #expect(pool.discardQueued { $0.fd == 5 } == 0)
        pool.resume()
        pool.stop()  // after the queued jobs
        let seen = handled.withLock { $0 }
        #expect(seen.map(\.fd).sorted() == [6, 7])
        #expect(Set(seen.map(\.byte)) == [1, 3])
    }

    /// Jobs a worker already took are gone from the queue; the rest are counted and the queue stays usable.
    @Test func discardAfterSomeJobsRanKeepsTheQueueConsistent() {
        let handled = Mutex<[UInt8]>([])
        let pool = WorkerPool(threads: 1, capacity: 8) { job, _ in handled.withLock { $0.append(job.bytes[0]) } }
        for i in 0..<3 { #expect(pool.submit(job(9, UInt8(i)))) }
        pool.pause()  // returns with no job in a worker's hands
        let ran = handled.withLock { $0.count }
        #expect(pool.discardQueued { $0.fd == 9 } == 3 - ran)
        for i in 3..<11 { #expect(pool.submit(job(4, UInt8(i)))) }
        #expect(!pool.submit(job(4, 99)), "capacity 8 counts only what is still queued")
        pool.resume()
        pool.stop()
        #expect(handled.withLock { Array($0.dropFirst(ran)) } == Array(3..<11))
    }
}
