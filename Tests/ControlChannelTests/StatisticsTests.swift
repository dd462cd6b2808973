import Foundation
import Synchronization
import Testing

@testable import ControlChannel

/// A clock the test moves by hand (microseconds since the epoch).
final class ManualStatisticsClock: Sendable {
    let micros: Atomic<Int64>
    init(_ start: Int64 = 1_700_000_000_000_000) { micros = Atomic(start) }
    func advance(microseconds: Int64) { micros.add(microseconds, ordering: .relaxed) }
    func advance(seconds: Int64) { advance(microseconds: seconds * 1_000_000) }
    var now: StatisticTimestamp { StatisticTimestamp(microsecondsSinceEpoch: micros.load(ordering: .relaxed)) }
    var timeSource: StatisticsManager.TimeSource { { self.now } }
}

@Suite("Statistics")
struct StatisticsTests {
    let clock = ManualStatisticsClock()
    let stats: StatisticsManager
    let commands = CommandManager()

    init() throws {
        stats = StatisticsManager(timeSource: clock.timeSource)
        try stats.registerCommands(on: commands)
    }

    func run(_ text: String) throws -> JSONValue {
        guard let answer = commands.processCommandImmediately(try JSONParser.parse(text)) else {
            Issue.record("no immediate answer")
            return .null
        }
        return answer
    }

    func answer(_ result: Int, _ text: String? = nil, _ arguments: JSONValue = [:]) -> JSONValue {
        ControlAnswer(result: result, text: text, arguments: arguments).json
    }

    func ts(_ t: StatisticTimestamp) -> JSONValue { .string(t.keaText) }

    // MARK: statistic-get / statistic-get-all

    @Test func getReturnsKeaShapeNewestFirst() throws {
        let t0 = clock.now
        try stats.set("pkt4-received", 5)
        clock.advance(microseconds: 1500)
        let t1 = clock.now
        try stats.add("pkt4-received", 2)
        clock.advance(seconds: 1)
        let t2 = clock.now
        try stats.add("pkt4-received", 3)
        let expected: JSONValue = ["pkt4-received": [[10, ts(t2)], [7, ts(t1)], [5, ts(t0)]]]
        #expect(
            try run(#"{"command": "statistic-get", "arguments": {"name": "pkt4-received"}}"#)
                == answer(0, nil, expected))
        #expect(stats.get("pkt4-received") == expected)
        #expect(stats.value(of: "pkt4-received") == .integer(10))
        // On the wire: Kea's key order, no text.
        let bytes = commands.processCommandImmediately(
            ["command": "statistic-get", "arguments": ["name": "pkt4-received"]])?.serialized()
        #expect(
            String(decoding: bytes ?? [], as: UTF8.self)
                == #"{"arguments":{"pkt4-received":[[10,"\#(t2.keaText)"],[7,"\#(t1.keaText)"],[5,"\#(t0.keaText)"]]},"result":0}"#
        )
    }

    @Test func getUnknownIsSuccessWithEmptyMap() throws {
        #expect(try run(#"{"command": "statistic-get", "arguments": {"name": "nope"}}"#) == answer(0))
        #expect(stats.get("nope") == [:])
    }

    @Test func getAllIsSortedAndTyped() throws {
        let t = clock.now
        try stats.set("b-real", 1.5)
        try stats.set("a-int", 7)
        try stats.set("d-string", "up")
        try stats.set("c-duration", .duration(.seconds(3723) + .microseconds(4)))
        let expected: JSONValue = [
            "a-int": [[7, ts(t)]], "b-real": [[1.5, ts(t)]], "c-duration": [["01:02:03.000004", ts(t)]],
            "d-string": [["up", ts(t)]],
        ]
        let got = try run(#"{"command": "statistic-get-all", "arguments": {"ignored": 1}}"#)
        #expect(got == answer(0, nil, expected))
        #expect(got["arguments"]?.objectValue?.map(\.key) == ["a-int", "b-real", "c-duration", "d-string"])
        stats.removeAll()
        #expect(try run(#"{"command": "statistic-get-all"}"#) == answer(0))
    }

    // MARK: 'name' parameter errors

    @Test(arguments: [
        "statistic-get", "statistic-reset", "statistic-remove", "statistic-sample-count-set",
        "statistic-sample-age-set",
    ])
    func nameParameterErrors(command: String) throws {
        let missing = answer(1, "Missing mandatory 'name' parameter.")
        #expect(try run(#"{"command": "\#(command)"}"#) == missing)
        #expect(try run(#"{"command": "\#(command)", "arguments": {}}"#) == missing)
        #expect(try run(#"{"command": "\#(command)", "arguments": ["name"]}"#) == missing)
        #expect(
            try run(#"{"command": "\#(command)", "arguments": {"name": 5, "max-samples": 1, "duration": 1}}"#)
                == answer(1, "'name' parameter expected to be a string."))
    }

    // MARK: reset / remove

    @Test func resetTexts() throws {
        try stats.set("x", 42)
        try stats.add("x", 1)
        clock.advance(seconds: 2)
        #expect(
            try run(#"{"command": "statistic-reset", "arguments": {"name": "x"}}"#) == answer(0, "Statistic 'x' reset.")
        )
        #expect(stats.get("x") == ["x": [[0, ts(clock.now)]]])
        #expect(
            try run(#"{"command": "statistic-reset", "arguments": {"name": "y"}}"#)
                == answer(1, "No 'y' statistic found"))
    }

    @Test func resetAllSetsNeutralValues() throws {
        try stats.set("i", 3)
        try stats.set("r", 2.5)
        try stats.set("d", .duration(.seconds(9)))
        try stats.set("s", "text")
        clock.advance(seconds: 1)
        #expect(try run(#"{"command": "statistic-reset-all"}"#) == answer(0, "All statistics reset to neutral values."))
        #expect(stats.value(of: "i") == .integer(0))
        #expect(stats.value(of: "r") == .real(0))
        #expect(stats.value(of: "d") == .duration(.zero))
        #expect(stats.value(of: "s") == .string(""))
        #expect(stats.get("d") == ["d": [["00:00:00.000000", ts(clock.now)]]])
        #expect(stats.sampleCount(of: "i") == 1)
    }

    @Test func removeTexts() throws {
        try stats.set("x", 1)
        try stats.set("y", 2)
        #expect(
            try run(#"{"command": "statistic-remove", "arguments": {"name": "x"}}"#)
                == answer(0, "Statistic 'x' removed."))
        #expect(
            try run(#"{"command": "statistic-remove", "arguments": {"name": "x"}}"#)
                == answer(1, "No 'x' statistic found"))
        #expect(stats.names == ["y"])
        #expect(try run(#"{"command": "statistic-remove-all"}"#) == answer(0, "All statistics removed."))
        #expect(stats.count == 0)
        #expect(try run(#"{"command": "statistic-get", "arguments": {"name": "y"}}"#) == answer(0))
    }

    // MARK: Retention by count

    @Test func defaultRetentionKeepsTwentyNewest() throws {
        #expect(stats.defaultRetention == .count(20))
        for i in 1...25 {
            try stats.set("n", .integer(Int64(i)))
            clock.advance(microseconds: 1)
        }
        let values = stats.samples(of: "n")?.map(\.value)
        #expect(values == (6...25).reversed().map { StatisticValue.integer(Int64($0)) })
        let times = stats.samples(of: "n")?.map(\.timestamp.microsecondsSinceEpoch) ?? []
        #expect(times == times.sorted(by: >))
    }

    @Test func sampleCountSet() throws {
        for i in 1...10 { try stats.set("n", .integer(Int64(i))) }
        #expect(
            try run(#"{"command": "statistic-sample-count-set", "arguments": {"name": "n", "max-samples": 3}}"#)
                == answer(0, "Statistic 'n' count limit is set."))
        #expect(stats.samples(of: "n")?.map(\.value) == [10, 9, 8])
        try stats.add("n", 1)
        #expect(stats.samples(of: "n")?.map(\.value) == [11, 10, 9])
        #expect(stats.retention(of: "n") == .count(3))
        #expect(
            try run(#"{"command": "statistic-sample-count-set", "arguments": {"name": "z", "max-samples": 3}}"#)
                == answer(1, "No 'z' statistic found"))
    }

    @Test(arguments: ["statistic-sample-count-set", "statistic-sample-count-set-all"])
    func maxSamplesErrors(command: String) throws {
        try stats.set("n", 1)
        func call(_ args: String) throws -> JSONValue {
            try run(#"{"command": "\#(command)", "arguments": {"name": "n"\#(args)}}"#)
        }
        #expect(try call("") == answer(1, "Missing mandatory 'max-samples' parameter."))
        #expect(try call(#", "max-samples": "3""#) == answer(1, "'max-samples' parameter expected to be an integer."))
        #expect(try call(#", "max-samples": 3.0"#) == answer(1, "'max-samples' parameter expected to be an integer."))
        #expect(try call(#", "max-samples": 0"#) == answer(1, "'max-samples' parameter must not be zero"))
        #expect(
            try call(#", "max-samples": -1"#) == answer(1, "'max-samples' parameter must be between 1 and 4294967295"))
        #expect(
            try call(#", "max-samples": 4294967296"#)
                == answer(1, "'max-samples' parameter must be between 1 and 4294967295"))
        #expect(stats.retention(of: "n") == .count(20))
    }

    @Test func sampleCountSetAllSetsDefaultAndAppliesToAll() throws {
        for i in 1...5 { try stats.set("a", .integer(Int64(i))) }
        try stats.setMaxSampleAge(of: "a", to: .seconds(100))
        #expect(
            try run(#"{"command": "statistic-sample-count-set-all", "arguments": {"max-samples": 2}}"#)
                == answer(0, "All statistics count limit are set."))
        #expect(stats.samples(of: "a")?.map(\.value) == [5, 4])
        #expect(stats.retention(of: "a") == .count(2))
        #expect(stats.defaultRetention == .count(2))
        for i in 1...5 { try stats.set("new", .integer(Int64(i))) }
        #expect(stats.samples(of: "new")?.map(\.value) == [5, 4])
    }

    // MARK: Retention by age

    @Test func sampleAgeSet() throws {
        for i in 1...6 {
            try stats.set("n", .integer(Int64(i)))
            clock.advance(seconds: 10)
        }
        // Samples at 0, 10, ..., 50 s; the newest is at 50 s: keep those within 25 s of it.
        #expect(
            try run(#"{"command": "statistic-sample-age-set", "arguments": {"name": "n", "duration": 25}}"#)
                == answer(0, "Statistic 'n' duration limit is set."))
        #expect(stats.samples(of: "n")?.map(\.value) == [6, 5, 4])
        #expect(stats.retention(of: "n") == .age(.seconds(25)))
        // Age retention has no count limit; the sample at 30 s is now more than 25 s older than the newest.
        for i in 7...40 { try stats.set("n", .integer(Int64(i))) }
        #expect(stats.sampleCount(of: "n") == 36)  // 34 new ones at 60 s, plus 5 and 6 (40 s, 50 s)
        clock.advance(seconds: 26)
        try stats.set("n", 41)
        #expect(stats.samples(of: "n")?.map(\.value) == [41])
        #expect(
            try run(#"{"command": "statistic-sample-age-set", "arguments": {"name": "z", "duration": 5}}"#)
                == answer(1, "No 'z' statistic found"))
    }

    @Test func sampleAgeSetAllSetsDefaultAndAppliesToAll() throws {
        for i in 1...30 {
            try stats.set("a", .integer(Int64(i)))
            clock.advance(seconds: 1)
        }
        #expect(
            try run(#"{"command": "statistic-sample-age-set-all", "arguments": {"duration": 4}}"#)
                == answer(0, "All statistics duration limit are set."))
        #expect(stats.samples(of: "a")?.map(\.value) == [30, 29, 28, 27, 26])
        #expect(stats.defaultRetention == .age(.seconds(4)))
        for i in 1...30 { try stats.set("new", .integer(Int64(i))) }  // same instant: all within the age
        #expect(stats.sampleCount(of: "new") == 30)
        #expect(stats.retention(of: "new") == .age(.seconds(4)))
    }

    @Test(arguments: ["statistic-sample-age-set", "statistic-sample-age-set-all"])
    func durationErrors(command: String) throws {
        try stats.set("n", 1)
        func call(_ args: String) throws -> JSONValue {
            try run(#"{"command": "\#(command)", "arguments": {"name": "n"\#(args)}}"#)
        }
        #expect(try call("") == answer(1, "Missing mandatory 'duration' parameter."))
        #expect(try call(#", "duration": "5""#) == answer(1, "'duration' parameter expected to be an integer."))
        #expect(try call(#", "duration": -5"#) == answer(1, "'duration' parameter must not be negative"))
        #expect(stats.retention(of: "n") == .count(20))
    }

    @Test func limitsWithoutArgumentsMap() throws {
        #expect(
            try run(#"{"command": "statistic-sample-count-set-all"}"#)
                == answer(1, "Missing mandatory 'max-samples' parameter."))
        #expect(
            try run(#"{"command": "statistic-sample-age-set-all", "arguments": [1]}"#)
                == answer(1, "Missing mandatory 'duration' parameter."))
    }

    @Test func apiRejectsInvalidLimits() throws {
        try stats.set("n", 1)
        #expect(throws: StatisticsError.invalidMaxSampleCount(0)) { try stats.setMaxSampleCount(of: "n", to: 0) }
        #expect(throws: StatisticsError.invalidMaxSampleCount(-2)) { try stats.setMaxSampleCountAll(-2) }
        #expect(throws: StatisticsError.invalidMaxSampleAge(.seconds(-1))) {
            try stats.setMaxSampleAge(of: "n", to: .seconds(-1))
        }
        #expect(try stats.setMaxSampleCount(of: "missing", to: 3) == false)
        #expect(try stats.setMaxSampleAge(of: "missing", to: .zero) == false)
    }

    // MARK: Values and types

    @Test func addByKind() throws {
        try stats.add("i", 2)
        try stats.add("i", 3)
        try stats.add("r", 0.25)
        try stats.add("r", 0.5)
        try stats.add("d", .duration(.milliseconds(1500)))
        try stats.add("d", .duration(.seconds(3600)))
        try stats.add("s", "ab")
        try stats.add("s", "cd")
        #expect(stats.value(of: "i") == .integer(5))
        #expect(stats.value(of: "r") == .real(0.75))
        #expect(stats.value(of: "d")?.json == "01:00:01.500000")
        #expect(stats.value(of: "s") == .string("abcd"))
        try stats.set("max", .integer(.max))
        try stats.add("max", 1)
        #expect(stats.value(of: "max") == .integer(.min))
    }

    @Test func kindMismatchThrowsAndRecordsNothing() throws {
        try stats.set("i", 1)
        #expect(throws: StatisticsError.typeMismatch(name: "i", expected: .real, actual: .integer)) {
            try stats.set("i", 1.0)
        }
        #expect(throws: StatisticsError.typeMismatch(name: "i", expected: .string, actual: .integer)) {
            try stats.add("i", "x")
        }
        try stats.set("s", "x")
        #expect(throws: StatisticsError.typeMismatch(name: "s", expected: .integer, actual: .string)) {
            try stats.counter(named: "s")
        }
        #expect(stats.sampleCount(of: "i") == 1)
    }

    @Test func durationText() {
        #expect(StatisticValue.durationText(.zero) == "00:00:00.000000")
        #expect(StatisticValue.durationText(.seconds(3723) + .microseconds(4)) == "01:02:03.000004")
        #expect(StatisticValue.durationText(.seconds(100 * 3600)) == "100:00:00.000000")
        #expect(StatisticValue.durationText(.nanoseconds(1999)) == "00:00:00.000001")
        #expect(StatisticValue.durationText(.seconds(-61)) == "-00:01:01.000000")
    }

    // MARK: Timestamps

    @Test func timestampFormat() throws {
        let pattern = try Regex(#"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{6}$"#)
        let real = StatisticsManager()
        try real.set("x", 1)
        guard case .string(let text)? = real.get("x")["x"]?[0]?[1] else {
            Issue.record("no timestamp in \(real.get("x"))")
            return
        }
        #expect(text.wholeMatch(of: pattern) != nil)
        let t = StatisticTimestamp(microsecondsSinceEpoch: 1_700_000_000_000_123)
        #expect(t.keaText.wholeMatch(of: pattern) != nil)
        #expect(t.keaText.hasSuffix(".000123"))
        // Seconds and minutes do not depend on the (whole-minute offset) local time zone: 22:13:20 UTC.
        #expect(t.keaText.dropFirst(13).prefix(6) == ":13:20")
        let next = StatisticTimestamp(microsecondsSinceEpoch: 1_700_000_001_999_999)
        #expect(next.keaText.hasSuffix(":13:21.999999"))
        let beforeEpoch = StatisticTimestamp(microsecondsSinceEpoch: -1)
        #expect(beforeEpoch.keaText.hasSuffix(":59.999999"))
        // The wall-clock time source agrees with Foundation within a generous margin.
        let now = StatisticTimestamp.now().microsecondsSinceEpoch
        #expect(abs(now - Int64(Date().timeIntervalSince1970 * 1_000_000)) < 5_000_000)
    }

    // MARK: Counters

    @Test func counterIncrementsAndSurvivesRemoval() throws {
        let counter = try stats.counter(named: "pkt")
        #expect(stats.get("pkt") == ["pkt": [[0, ts(clock.now)]]])
        counter.increment()
        counter.increment(by: 4)
        #expect(counter.value == 5)
        #expect(stats.samples(of: "pkt")?.map(\.value) == [5, 1, 0])
        #expect(try stats.counter(named: "pkt").value == 5)
        stats.remove("pkt")
        #expect(counter.value == nil)
        counter.increment(by: 2)  // re-creates the statistic, as add would
        #expect(stats.samples(of: "pkt")?.map(\.value) == [2])
        stats.removeAll()
        try stats.set("pkt", 10)  // re-created by someone else: the counter re-attaches
        counter.increment()
        #expect(stats.value(of: "pkt") == .integer(11))
        stats.remove("pkt")
        try stats.set("pkt", "now a string")
        #expect(counter.increment() == false)
        #expect(stats.value(of: "pkt") == .string("now a string"))
        stats.remove("pkt")
        #expect(counter.set(7))
        #expect(stats.value(of: "pkt") == .integer(7))
    }

    @Test func concurrentIncrementsFromFourThreadsAreExact() throws {
        let real = StatisticsManager()
        let counter = try real.counter(named: "by-counter")
        let perThread = 25_000
        let done = DispatchSemaphore(value: 0)
        let start = DispatchSemaphore(value: 0)
        for _ in 0..<4 {
            let thread = Thread {
                start.wait()
                for _ in 0..<perThread {
                    counter.increment()
                    try? real.add("by-name", 1)
                }
                done.signal()
            }
            thread.start()
        }
        for _ in 0..<4 { start.signal() }
        for _ in 0..<4 { done.wait() }
        #expect(counter.value == Int64(4 * perThread))
        #expect(real.value(of: "by-name") == .integer(Int64(4 * perThread)))
        // The 20 kept samples are the 20 last increments, newest first, with non-increasing timestamps.
        let samples = real.samples(of: "by-counter") ?? []
        #expect(samples.map(\.value) == (0..<20).map { .integer(Int64(4 * perThread - $0)) })
        let times = samples.map(\.timestamp)
        #expect(times == times.sorted(by: >))
    }

    // MARK: Registration

    @Test func registerAndDeregister() throws {
        #expect(commands.commandNames == ["list-commands"] + StatisticsManager.commandNames)
        #expect(throws: CommandManagerError.alreadyRegistered("statistic-get")) {
            try stats.registerCommands(on: commands)
        }
        let other = CommandManager()
        try other.registerCommand("statistic-reset") { _, _, _ in ControlAnswer.success().json }
        #expect(throws: CommandManagerError.alreadyRegistered("statistic-reset")) {
            try stats.registerCommands(on: other)
        }
        #expect(other.commandNames == ["list-commands", "statistic-reset"])
        stats.deregisterCommands(from: commands)
        #expect(commands.commandNames == ["list-commands"])
        #expect(
            try run(#"{"command": "statistic-get-all"}"#)
                == answer(2, "'statistic-get-all' command not supported."))
        stats.deregisterCommands(from: commands)  // idempotent
        #expect(stats.handleCommand("statistic-nope", arguments: nil) == .unsupported(command: "statistic-nope"))
    }
}
