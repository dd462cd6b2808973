// Soak and fault tests against a packet-server child process (loopback UNIX socket only; every child stopped
// by PID). Short by default (a few seconds, for CI); `IOLOOP_SOAK=full` (Scripts/soak) runs the full sizes:
// 1 000 000 commands over fresh connections, 10 000 idle connections held, 1-byte-per-second and silent clients
// against the 10 s default timeout. Each test prints its figures on a `SOAK` line.

import ControlChannel
import Dispatch
import Foundation
import Glibc
import Synchronization
import Testing

/// Whether the full-size soak was asked for (`IOLOOP_SOAK=full`).
let fullSoak = ProcessInfo.processInfo.environment["IOLOOP_SOAK"] == "full"

/// Whether this test process (and so the packet-server built beside it) runs under AddressSanitizer.
let underAddressSanitizer = dlsym(dlopen(nil, RTLD_NOW), "__asan_init") != nil

/// Resident set size of a process in KiB (/proc/PID/statm).
func residentKiB(of pid: Int32) -> Int {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/statm", encoding: .utf8) else { return -1 }
    let fields = text.split(separator: " ")
    return (Int(fields[1]) ?? 0) * Int(sysconf(Int32(_SC_PAGESIZE))) / 1024
}

/// Open descriptors of a process (/proc/PID/fd).
func descriptorCount(of pid: Int32) -> Int {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1
}

/// Reads to EOF (or error); returns the text.
func readAll(_ fd: Int32) -> String {
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = recv(fd, &buf, buf.count, 0)
        if n > 0 {
            out += buf[0..<n]
            continue
        }
        if n < 0 && errno == EINTR { continue }
        break
    }
    return String(decoding: out, as: UTF8.self)
}

func sendText(_ fd: Int32, _ text: String) {
    let bytes = Array(text.utf8)
    _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
}

func milliseconds(_ d: Duration) -> Int {
    Int(d.components.seconds * 1000 + d.components.attoseconds / 1_000_000_000_000_000)
}

func soakReport(_ line: String) { print("SOAK \(line)") }

@Suite("Soak and faults (packet-server)", .serialized)
struct PacketServerSoakTests {
    /// N commands over N fresh connections from 2 client threads; the server's descriptors and RSS are sampled
    /// after a warm-up (10 %) and at the end.
    @Test func commandsOverFreshConnectionsKeepDescriptorsAndMemoryFlat() throws {
        let total = fullSoak ? 1_000_000 : 4_000
        // Under ASan freed memory sits in the allocator's quarantine (256 MiB) instead of being reused, so the
        // RSS grows with the bytes allocated, not with the bytes kept (90 % here). Without the quarantine the
        // check measures the server again; use-after-free detection stays on in every other test.
        let asanOptions = [ProcessInfo.processInfo.environment["ASAN_OPTIONS"], "quarantine_size_mb=0"]
        let server = try ServerProcess(
            config: ServerProcess.standardConfig(),
            environment: underAddressSanitizer
                ? ["ASAN_OPTIONS": asanOptions.compactMap { $0 }.filter { !$0.isEmpty }.joined(separator: ":")] : [:])
        defer { server.cleanUp() }
        try server.waitUntilReady()
        let pid = server.process.processIdentifier
        let path = server.socketPath
        let expected = try controlRoundTrip(path, Array(#"{"command": "list-commands"}"#.utf8))
        let failures = Atomic<Int>(0)
        let done = Atomic<Int>(0)
        let warm = Mutex<(rss: Int, fds: Int)?>(nil)
        let peakRSS = Atomic<Int>(0)
        let warmUp = total / 10
        let threads = 2
        let start = ContinuousClock.now
        DispatchQueue.concurrentPerform(iterations: threads) { t in
            for i in stride(from: t, to: total, by: threads) {
                let answer = try? controlRoundTrip(path, Array(#"{"command": "list-commands"}"#.utf8))
                if answer != expected { failures.add(1, ordering: .relaxed) }
                let n = done.add(1, ordering: .relaxed).newValue
                if n == warmUp { warm.withLock { $0 = (residentKiB(of: pid), descriptorCount(of: pid)) } }
                if t == 0 && i % 20_000 == 0 && n > warmUp {
                    let r = residentKiB(of: pid)
                    if r > peakRSS.load(ordering: .relaxed) { peakRSS.store(r, ordering: .relaxed) }
                }
            }
        }
        let elapsed = ContinuousClock.now - start
        let endRSS = residentKiB(of: pid)
        let w = try #require(warm.withLock { $0 })
        // The last connections may still be closing on the server side: let them settle.
        _ = waitUntilTrue(.seconds(5)) { descriptorCount(of: pid) <= w.fds }
        let endFDs = descriptorCount(of: pid)
        let peak = max(peakRSS.load(ordering: .relaxed), endRSS)
        let growth = Double(peak - w.rss) / Double(w.rss) * 100
        soakReport(
            "fresh-connections commands=\(total) failed=\(failures.load(ordering: .relaxed)) time=\(elapsed) "
                + "rss-after-warmup=\(w.rss)KiB rss-end=\(endRSS)KiB rss-peak=\(peak)KiB growth=\(String(format: "%.2f", growth))% "
                + "fds-after-warmup=\(w.fds) fds-end=\(endFDs)")
        #expect(failures.load(ordering: .relaxed) == 0)
        #expect(endFDs <= w.fds, "descriptors grew from \(w.fds) to \(endFDs)")
        #expect(growth <= 5, "RSS grew \(growth) % after warm-up")
        #expect(try server.command("list-commands")["result"] == 0)
    }

    /// N idle connections held open while fresh commands are timed; then every idle one gets its timeout answer.
    @Test func idleConnectionsHeldWhileCommandsAreAnsweredPromptly() throws {
        let idleCount = fullSoak ? 10_000 : 500
        let server = try ServerProcess(config: ServerProcess.standardConfig())
        defer { server.cleanUp() }
        try server.waitUntilReady()
        let pid = server.process.processIdentifier
        var idle: [Int32] = []
        defer { for fd in idle where fd >= 0 { close(fd) } }
        let openStart = ContinuousClock.now
        for _ in 0..<idleCount {
            let fd = connectControl(server.socketPath)
            try #require(fd >= 0, "connect failed: errno \(-fd) after \(idle.count) idle connections")
            idle.append(fd)
        }
        let opened = ContinuousClock.now - openStart
        // All accepted by the server: its descriptor count covers them.
        #expect(waitUntilTrue(.seconds(10)) { descriptorCount(of: pid) >= idleCount })
        var latencies: [Duration] = []
        for _ in 0..<200 {
            let t0 = ContinuousClock.now
            let answer = try controlRoundTrip(server.socketPath, Array(#"{"command": "status-get"}"#.utf8))
            latencies.append(ContinuousClock.now - t0)
            #expect(String(decoding: answer, as: UTF8.self).contains(#""result":0"#))
        }
        latencies.sort()
        let p50 = latencies[latencies.count / 2]
        let p99 = latencies[latencies.count * 99 / 100]
        let maxL = latencies.last!
        let heldFDs = descriptorCount(of: pid)
        soakReport(
            "idle-connections held=\(idleCount) opened-in=\(opened) server-fds=\(heldFDs) rss=\(residentKiB(of: pid))KiB "
                + "commands=200 p50=\(p50) p99=\(p99) max=\(maxL)")
        // The full soak holds the 10 ms bound at p99; the CI variant shares the machine with the parallel tests.
        #expect((fullSoak ? p99 : p50) < .milliseconds(10), "p50 \(p50), p99 \(p99) with \(idleCount) idle connections")
        if fullSoak {
            // Nothing lost: every idle connection gets exactly the spec's timeout answer.
            let timeoutAnswer = #"{"arguments":{},"result":1,"text":"Connection over control channel timed out"}"#
            var wrong = 0
            for fd in idle where readAll(fd) != timeoutAnswer { wrong += 1 }
            soakReport("idle-connections timed-out-with-exact-text=\(idleCount - wrong)/\(idleCount)")
            #expect(wrong == 0)
        }
    }

    /// Silent and 1-byte-per-second clients against the default 10 s inactivity timeout (full soak only: ~30 s).
    @Test(.enabled(if: fullSoak)) func slowAndSilentClientsTimedOutPerSpec() throws {
        let server = try ServerProcess(config: ServerProcess.standardConfig())
        defer { server.cleanUp() }
        try server.waitUntilReady()
        let path = server.socketPath
        let results = Mutex<[String]>([])
        let command = #"{"command": "list-commands"}"#
        DispatchQueue.concurrentPerform(iterations: 3) { which in
            let fd = connectControl(path)
            defer { close(fd) }
            var last = ContinuousClock.now
            switch which {
            case 0:  // silent
                break
            case 1:  // 1 byte per second, the whole command: never idle for 10 s, so answered
                for b in command.utf8 {
                    _ = withUnsafeBytes(of: b) { send(fd, $0.baseAddress, 1, Int32(MSG_NOSIGNAL)) }
                    last = ContinuousClock.now
                    sleep(1)
                }
            default:  // 1 byte per second for 12 bytes, then silent
                for b in command.utf8.prefix(12) {
                    _ = withUnsafeBytes(of: b) { send(fd, $0.baseAddress, 1, Int32(MSG_NOSIGNAL)) }
                    last = ContinuousClock.now
                    sleep(1)
                }
            }
            let answer = readAll(fd)
            let after = ContinuousClock.now - last
            results.withLock { $0.append("\(which)|\(milliseconds(after))|\(answer)") }
        }
        let all = results.withLock { $0 }.sorted()
        for r in all { soakReport("slow-clients \(r)") }
        func parts(_ i: Int) -> (Duration, String) {
            let p = all[i].split(separator: "|", maxSplits: 2)
            return (.milliseconds(Int(p[1]) ?? -1), String(p[2]))
        }
        let (silentAfter, silent) = parts(0)
        #expect(silent == #"{"arguments":{},"result":1,"text":"Connection over control channel timed out"}"#)
        #expect(silentAfter >= .seconds(10) && silentAfter < .milliseconds(10_500))
        let (_, slow) = parts(1)
        #expect(slow.contains(#""result":0"#) && slow.contains("list-commands"))
        let (partialAfter, partial) = parts(2)
        #expect(
            partial
                == #"{"arguments":{},"result":1,"text":"Connection over control channel timed out, discarded partial command of 12 bytes"}"#
        )
        // Measured from the last byte sent.
        #expect(partialAfter >= .seconds(10) && partialAfter < .milliseconds(10_500))
    }

    /// RLIMIT_NOFILE exhausted in the server: it keeps running without spinning, and serves again once
    /// descriptors free up.
    @Test func descriptorExhaustionIsSurvivedAndRecovered() throws {
        let server = try ServerProcess(config: ServerProcess.standardConfig(), descriptorLimit: 64)
        defer { server.cleanUp() }
        try server.waitUntilReady()
        let pid = server.process.processIdentifier
        var held: [Int32] = []
        defer { for fd in held where fd >= 0 { close(fd) } }
        for _ in 0..<120 {
            let fd = connectControl(server.socketPath)
            try #require(fd >= 0, "connect: errno \(-fd)")
            held.append(fd)
        }
        #expect(waitUntilTrue(.seconds(10)) { descriptorCount(of: pid) >= 60 })
        let cpu0 = cpuTime(of: pid)
        let t0 = ContinuousClock.now
        usleep(1_000_000)
        let cpu = cpuTime(of: pid) - cpu0
        let wall = ContinuousClock.now - t0
        let fdsAtLimit = descriptorCount(of: pid)
        // Free the descriptors: recovery must not need a restart.
        for fd in held { close(fd) }
        held.removeAll()
        let r0 = ContinuousClock.now
        var recovered = false
        while ContinuousClock.now - r0 < .seconds(15) {
            if let a = try? server.command("list-commands"), a["result"] == 0 {
                recovered = true
                break
            }
            usleep(20_000)
        }
        let recoveryTime = ContinuousClock.now - r0
        soakReport(
            "emfile limit=64 connections=120 server-fds-at-limit=\(fdsAtLimit) cpu-while-exhausted=\(cpu)/\(wall) "
                + "recovered=\(recovered) in=\(recoveryTime) alive=\(server.process.isRunning)")
        #expect(server.process.isRunning)
        #expect(recovered)
        #expect(cpu < .milliseconds(500), "the server spins while out of descriptors: \(cpu) CPU in \(wall)")
        #expect(try server.command("list-commands")["result"] == 0)
    }

    /// kill -9, then a restart on the same socket reclaims the stale socket file; a second instance is refused.
    @Test func killNineThenRestartReclaimsTheSocketAndASecondInstanceIsRefused() throws {
        let dir = makeTempDir("k9")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let first = try ServerProcess(config: ServerProcess.standardConfig(), dir: dir)
        try first.waitUntilReady()
        #expect(try first.command("list-commands")["result"] == 0)
        first.signal(SIGKILL)
        _ = try first.waitForExit()
        #expect(FileManager.default.fileExists(atPath: first.socketPath), "kill -9 leaves the socket file behind")
        #expect(connectControl(first.socketPath) == -ECONNREFUSED)
        let second = try ServerProcess(config: ServerProcess.standardConfig(), dir: dir)
        defer {
            second.signal(SIGTERM)
            _ = try? second.waitForExit()
        }
        try second.waitUntilReady()
        #expect(try second.command("list-commands")["result"] == 0)
        let third = try ServerProcess(config: ServerProcess.standardConfig(), dir: dir)
        #expect(try third.waitForExit() == 1)
        let out = try third.waitForOutput(".lock")
        soakReport("kill-9 restart=ok second-instance=\(out.split(separator: "\n").last ?? "")")
        #expect(out.contains("cannot start"))
        #expect(try second.command("list-commands")["result"] == 0)
    }
}

/// Polls `condition` every millisecond until it holds or `timeout` passes.
func waitUntilTrue(_ timeout: Duration, _ condition: () -> Bool) -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if condition() { return true }
        usleep(1000)
    }
    return condition()
}
