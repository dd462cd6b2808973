import Foundation
import Glibc
import Synchronization
import Testing

@testable import IOLoop

/// A host main loop in the style of Kea's DHCP server: it blocks in its own poll(2) on its UDP packet
/// socket plus the service's descriptor, bounded by the service's next timer, and calls `poll()`
/// between packet passes.
final class HostLoop {
    let io: IOService
    let udp: Int32
    let port: UInt16
    var packets = 0
    var wakeups = 0

    init(io: IOService) throws {
        self.io = io
        let udp = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(udp, $0, len) }
        }
        precondition(rc == 0)
        withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = getsockname(udp, $0, &len) }
        }
        self.udp = udp
        port = UInt16(bigEndian: addr.sin_port)
    }

    deinit { close(udp) }

    /// One iteration: block, then read packets, then let the service run what is ready.
    func iterate(cap: Int32 = -1) throws {
        var fds = [
            pollfd(fd: udp, events: Int16(POLLIN), revents: 0),
            pollfd(fd: try io.pollDescriptor(), events: Int16(POLLIN), revents: 0),
        ]
        var timeout = io.pollTimeoutMilliseconds()
        // The cap only keeps a broken build from hanging the suite; a correct one never needs it.
        if cap >= 0 && (timeout < 0 || timeout > cap) { timeout = cap }
        _ = Glibc.poll(&fds, 2, timeout)
        wakeups += 1
        if fds[0].revents & Int16(POLLIN) != 0 {
            var buf = [UInt8](repeating: 0, count: 1500)
            while recv(udp, &buf, buf.count, 0) > 0 { packets += 1 }
        }
        try io.poll()
    }

    /// Iterates until `done()` or the deadline; returns whether `done()` became true.
    func iterate(until deadline: SteadyInstant, _ done: () -> Bool) throws -> Bool {
        while !done() {
            let now = SteadyInstant.now()
            if now >= deadline { return false }
            try iterate(cap: Int32(clamping: (deadline - now).components.seconds * 1000 + 1))
        }
        return true
    }
}

func sendUDP(port: UInt16, _ payload: [UInt8]) {
    let s = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
    defer { close(s) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = port.bigEndian
    _ = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            sendto(s, payload, payload.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
        }
    }
}

func threadCPUTime() -> Duration {
    var usage = rusage()
    getrusage(__rusage_who_t(1), &usage)  // RUSAGE_THREAD: this thread only (tests run in parallel)
    let us =
        (usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1_000_000 + usage.ru_utime.tv_usec
        + usage.ru_stime.tv_usec
    return .microseconds(us)
}

@Suite("Host embedding")
struct EmbeddingTests {
    @Test func descriptorIsLibevsEpollAndStable() throws {
        let io = try IOService()
        let fd = try io.pollDescriptor()
        #expect(fd >= 0)
        #expect(try io.pollDescriptor() == fd)
        var target = [CChar](repeating: 0, count: 64)
        let n = readlink("/proc/self/fd/\(fd)", &target, 63)
        #expect(n > 0)
        #expect(
            String(decoding: target.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self) == "anon_inode:[eventpoll]")
        // Two services get two different descriptors.
        let other = try IOService()
        #expect(try other.pollDescriptor() != fd)
    }

    /// A host that blocks with its own fixed timeout (Kea's one-second `select`) and never asks
    /// `timeUntilNextEvent()`: once `poll()` has returned, another thread's post makes the descriptor readable.
    @Test func fixedTimeoutHostIsWokenByACrossThreadPost() throws {
        let io = try IOService()
        let work = WorkGuard(io)
        let fd = try io.pollDescriptor()
        try io.poll()
        let posted = DispatchSemaphore(value: 0)
        let ran = Atomic<Bool>(false)
        Thread {
            io.post { ran.store(true, ordering: .relaxed) }
            posted.signal()
        }.start()
        #expect(posted.wait(timeout: .now() + 10) == .success)
        let start = ContinuousClock.now
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        #expect(Glibc.poll(&p, 1, 10_000) == 1, "the post did not make the descriptor readable")
        #expect(ContinuousClock.now - start < .seconds(5))
        #expect(try io.poll() == 1)
        let didRun = ran.load(ordering: .relaxed)
        #expect(didRun)
        // Drained: with nothing ready, the descriptor is quiet again.
        #expect(Glibc.poll(&p, 1, 0) == 0)
        work.reset()
    }

    /// A bounded poll that leaves handlers ready leaves the descriptor readable, so a host blocking on it comes
    /// straight back for the rest.
    @Test func handlersLeftByABoundedPollKeepTheDescriptorReadable() throws {
        let io = try IOService()
        let fd = try io.pollDescriptor()
        let ran = Atomic<Int>(0)
        for _ in 0..<3 { io.post { ran.add(1, ordering: .relaxed) } }
        #expect(try io.pollOne() == 1)
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        #expect(Glibc.poll(&p, 1, 0) == 1)
        #expect(try io.poll() == 2)
        #expect(ran.load(ordering: .relaxed) == 3)
    }

    /// A stopped service runs nothing until `restart()`: `timeUntilNextEvent()` says to block without a timeout
    /// even with handlers queued, and the wake-up `stop()` wrote is consumed, so a host never spins on it.
    @Test func stoppedServiceDoesNotMakeTheHostSpin() throws {
        let io = try IOService()
        let work = WorkGuard(io)
        let fd = try io.pollDescriptor()
        try io.poll()
        let ran = Atomic<Int>(0)
        io.post { ran.add(1, ordering: .relaxed) }
        let stopped = DispatchSemaphore(value: 0)
        Thread {
            io.stop()
            stopped.signal()
        }.start()
        #expect(stopped.wait(timeout: .now() + 10) == .success)
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        #expect(Glibc.poll(&p, 1, 10_000) == 1)  // stop() woke the parked host
        #expect(try io.poll() == 0)
        #expect(io.timeUntilNextEvent() == nil)
        #expect(io.pollTimeoutMilliseconds() == -1)
        #expect(Glibc.poll(&p, 1, 100) == 0, "a stopped service kept the descriptor readable: the host would spin")
        io.restart()
        #expect(io.timeUntilNextEvent() == .zero)
        #expect(try io.poll() == 1)
        #expect(ran.load(ordering: .relaxed) == 1)
        work.reset()
    }

    @Test func crossThreadPostWakesHostPromptly() throws {
        let io = try IOService()
        let host = try HostLoop(io: io)
        let work = WorkGuard(io)
        // Settle: nothing is ready, so the host would block indefinitely.
        try io.poll()
        #expect(io.timeUntilNextEvent() == nil)
        let ran = Atomic<Bool>(false)
        let postedAt = Mutex<SteadyInstant>(.distantPast)
        let ranAt = Mutex<SteadyInstant>(.distantPast)
        let t = Thread {
            postedAt.withLock { $0 = .now() }
            io.post {
                ranAt.withLock { $0 = .now() }
                ran.store(true, ordering: .relaxed)
            }
        }
        t.start()
        #expect(try host.iterate(until: .now() + .seconds(10)) { ran.load(ordering: .relaxed) })
        let latency = ranAt.withLock { $0 } - postedAt.withLock { $0 }
        #expect(latency < .milliseconds(200))
        work.reset()
    }

    @Test func timerBoundsHostWaitAndFiresOnTime() throws {
        let io = try IOService()
        let host = try HostLoop(io: io)
        let timer = SteadyTimer(io, expiresAfter: .milliseconds(30))
        let deadline = timer.expiry
        var firedAt: SteadyInstant?
        timer.asyncWait { _ in firedAt = .now() }
        let t = io.timeUntilNextEvent()
        // The host may sleep until the deadline plus the service's timer slack, no longer.
        #expect(t != nil && t! <= .milliseconds(30) + io.timerSlack)
        #expect(try host.iterate(until: .now() + .seconds(10)) { firedAt != nil })
        #expect(firedAt! >= deadline)
        #expect(firedAt! - deadline < .milliseconds(200))
    }

    @Test func packetsAndControlWorkInterleave() throws {
        let io = try IOService()
        let host = try HostLoop(io: io)
        let work = WorkGuard(io)
        let handled = Counter()
        for i in 0..<5 {
            sendUDP(port: host.port, [UInt8(i)])
            io.post { handled.bump() }
        }
        #expect(try host.iterate(until: .now() + .seconds(10)) { host.packets == 5 && handled.count == 5 })
        work.reset()
    }

    @Test func idleHostCostsAlmostNoCPU() throws {
        let io = try IOService()
        let host = try HostLoop(io: io)
        let work = WorkGuard(io)
        // An idle armed descriptor and a far timer, as in a real server.
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        let idle = IdleReadable(io, fd: fds[0])
        let far = SteadyTimer(io, expiresAfter: .seconds(3600))
        far.asyncWait { _ in }
        // A timer ends the idle second; until then nothing may wake the host except spurious wake-ups.
        let end = SteadyTimer(io, expiresAfter: .seconds(1))
        var done = false
        end.asyncWait { _ in done = true }
        // One-time host set-up, outside the measured idle second: finding the descriptor scans /proc.
        _ = try io.pollDescriptor()
        _ = io.timeUntilNextEvent()
        let cpu0 = threadCPUTime()
        #expect(try host.iterate(until: .now() + .seconds(10)) { done })
        let cpu = threadCPUTime() - cpu0
        #expect(cpu < .milliseconds(5) * sanitizerSlowdown, "idle host loop used \(cpu) of CPU in 1 s")
        #expect(host.wakeups < 10, "host woke \(host.wakeups) times while idle")
        idle.stop()
        close(fds[0])
        close(fds[1])
        far.cancel()
        work.reset()
    }

    @Test func operationArmedOutsidePollIsVisibleToHostWait() throws {
        let io = try IOService()
        let host = try HostLoop(io: io)
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        defer {
            close(fds[0])
            close(fds[1])
        }
        // A host holds a guard for its whole life (Kea's IOService does): poll() with no work would
        // otherwise stop the service, exactly as Asio's does.
        let work = WorkGuard(io)
        defer { work.reset() }
        try io.poll()
        // Armed by host code between polls: timeUntilNextEvent() pushes it to the kernel before the wait.
        var readable = false
        let watcher = ReadableOnce(io, fd: fds[0]) { readable = true }
        _ = write(fds[1], "x", 1)
        #expect(try host.iterate(until: .now() + .seconds(10)) { readable })
        _ = watcher
    }
}
