// Statistics values: the value, sample, timestamp, retention and error types of StatisticsManager.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The value of one statistic sample: an integer, a real, a duration or a string.
///
/// A statistic keeps the kind of its first value for its whole life; setting or adding a value of another kind
/// fails with ``StatisticsError/typeMismatch(name:expected:actual:)``.
///
/// Literals: `1` is `.integer`, `1.5` is `.real`, `"x"` is `.string`, so `try stats.add("pkt4-received", 1)`
/// works as is.
///
/// JSON (``json``): integers and reals as JSON numbers, strings as strings, durations as Kea's
/// `HH:MM:SS.ffffff` text (hours not limited to 24, a leading `-` for a negative duration).
///
/// Thread contract: a plain value, `Sendable`.
/// Kea counterpart: the four `Observation::Type`s (`STAT_INTEGER`, `STAT_FLOAT`, `STAT_DURATION`,
/// `STAT_STRING`); Kea 2.6's big-integer type is not provided.
public enum StatisticValue: Sendable, Hashable {
    /// A 64-bit integer (Kea `STAT_INTEGER`). Additions wrap around on overflow (Kea's is undefined).
    case integer(Int64)
    /// A real number (Kea `STAT_FLOAT`). A non-finite value serializes as JSON `null`.
    case real(Double)
    /// A duration (Kea `STAT_DURATION`), kept to the microsecond when serialized.
    case duration(Duration)
    /// A string (Kea `STAT_STRING`); adding a string appends it.
    case string(String)

    /// The kind of a statistic value.
    public enum Kind: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
        /// ``StatisticValue/integer(_:)``.
        case integer
        /// ``StatisticValue/real(_:)`` (Kea calls it `float`).
        case real
        /// ``StatisticValue/duration(_:)``.
        case duration
        /// ``StatisticValue/string(_:)``.
        case string

        /// The kind's name: `integer`, `real`, `duration` or `string`.
        public var description: String { rawValue }
    }

    /// The kind of this value.
    public var kind: Kind {
        switch self {
        case .integer: return .integer
        case .real: return .real
        case .duration: return .duration
        case .string: return .string
        }
    }

    /// The neutral value of a kind, what a reset sets: `0`, `0.0`, a zero duration, or `""`.
    /// Kea counterpart: `Observation::reset()`.
    public static func neutral(_ kind: Kind) -> StatisticValue {
        switch kind {
        case .integer: return .integer(0)
        case .real: return .real(0)
        case .duration: return .duration(.zero)
        case .string: return .string("")
        }
    }

    /// `self + other` for two values of the same kind (string: concatenation; integer: wrapping), or nil if
    /// the kinds differ. Kea counterpart: `Observation::addValue`.
    public func adding(_ other: StatisticValue) -> StatisticValue? {
        switch (self, other) {
        case (.integer(let a), .integer(let b)): return .integer(a &+ b)
        case (.real(let a), .real(let b)): return .real(a + b)
        case (.duration(let a), .duration(let b)): return .duration(a + b)
        case (.string(let a), .string(let b)): return .string(a + b)
        default: return nil
        }
    }

    /// The value as it appears in a sample of Kea's statistics JSON.
    public var json: JSONValue {
        switch self {
        case .integer(let i): return .integer(i)
        case .real(let d): return .double(d)
        case .duration(let d): return .string(Self.durationText(d))
        case .string(let s): return .string(s)
        }
    }

    /// Kea's text of a duration: `HH:MM:SS.ffffff`, e.g. `"01:02:03.000004"`; hours may exceed two digits,
    /// a negative duration gets a leading `-`. Sub-microsecond parts are truncated.
    /// Kea counterpart: `isc::util::durationToText`.
    public static func durationText(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        var micros = seconds.multipliedReportingOverflow(by: 1_000_000)
        if micros.overflow { micros.partialValue = seconds < 0 ? Int64.min : Int64.max }
        let total = micros.partialValue.addingReportingOverflow(attoseconds / 1_000_000_000_000).partialValue
        let magnitude = total.magnitude
        let fraction = magnitude % 1_000_000
        let allSeconds = magnitude / 1_000_000
        var text = total < 0 ? "-" : ""
        text += pad(allSeconds / 3600, 2)
        text += ":" + pad(allSeconds / 60 % 60, 2)
        text += ":" + pad(allSeconds % 60, 2)
        text += "." + pad(fraction, 6)
        return text
    }

    static func pad<T: BinaryInteger>(_ value: T, _ width: Int) -> String {
        let digits = String(value)
        return digits.count >= width ? digits : String(repeating: "0", count: width - digits.count) + digits
    }
}

extension StatisticValue: ExpressibleByIntegerLiteral, ExpressibleByFloatLiteral, ExpressibleByStringLiteral {
    /// An integer literal is ``integer(_:)``.
    public init(integerLiteral value: Int64) { self = .integer(value) }
    /// A float literal is ``real(_:)``.
    public init(floatLiteral value: Double) { self = .real(value) }
    /// A string literal is ``string(_:)``.
    public init(stringLiteral value: String) { self = .string(value) }
}

/// The wall-clock time of a sample, in microseconds since the Unix epoch (UTC).
///
/// Serialized in local time as Kea does, `YYYY-MM-DD HH:MM:SS.ffffff` (``keaText``).
///
/// Thread contract: a plain value, `Sendable`.
/// Kea counterpart: the `boost::posix_time::ptime` (2.x) / `system_clock::time_point` (2.4+) of a sample, taken
/// with `microsec_clock::local_time()`, and `isc::util::ptimeToText` / `clockToText`.
public struct StatisticTimestamp: Sendable, Hashable, Comparable, CustomStringConvertible {
    /// Microseconds since 1970-01-01 00:00:00 UTC.
    public var microsecondsSinceEpoch: Int64

    /// A timestamp from microseconds since the epoch.
    public init(microsecondsSinceEpoch: Int64) {
        self.microsecondsSinceEpoch = microsecondsSinceEpoch
    }

    /// The current wall-clock time (`CLOCK_REALTIME`), to the microsecond. The default time source of
    /// ``StatisticsManager``; does not allocate.
    @Sendable public static func now() -> StatisticTimestamp {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return StatisticTimestamp(microsecondsSinceEpoch: Int64(ts.tv_sec) * 1_000_000 + Int64(ts.tv_nsec) / 1000)
    }

    /// Kea's text of this time in the process's local time zone: `YYYY-MM-DD HH:MM:SS.ffffff`, e.g.
    /// `2024-03-01 14:05:09.000123`.
    public var keaText: String {
        var seconds = time_t(microsecondsSinceEpoch.floorDiv(1_000_000))
        let micros = microsecondsSinceEpoch - Int64(seconds) * 1_000_000
        var parts = tm()
        guard localtime_r(&seconds, &parts) != nil else { return "invalid time \(microsecondsSinceEpoch)" }
        func pad(_ value: Int32, _ width: Int) -> String { StatisticValue.pad(value, width) }
        return pad(parts.tm_year + 1900, 4) + "-" + pad(parts.tm_mon + 1, 2) + "-" + pad(parts.tm_mday, 2)
            + " " + pad(parts.tm_hour, 2) + ":" + pad(parts.tm_min, 2) + ":" + pad(parts.tm_sec, 2)
            + "." + StatisticValue.pad(micros, 6)
    }

    /// ``keaText``.
    public var description: String { keaText }

    public static func < (lhs: StatisticTimestamp, rhs: StatisticTimestamp) -> Bool {
        lhs.microsecondsSinceEpoch < rhs.microsecondsSinceEpoch
    }
}

extension Int64 {
    fileprivate func floorDiv(_ divisor: Int64) -> Int64 {
        let q = self / divisor
        return (self % divisor != 0 && (self < 0) != (divisor < 0)) ? q - 1 : q
    }
}

/// One sample of a statistic: a value and when it was recorded.
///
/// Thread contract: a plain value, `Sendable`.
/// Kea counterpart: `IntegerSample`, `FloatSample`, `DurationSample`, `StringSample` (value/time pairs).
public struct StatisticSample: Sendable, Hashable {
    /// The value recorded.
    public var value: StatisticValue
    /// When it was recorded.
    public var timestamp: StatisticTimestamp

    /// A sample.
    public init(value: StatisticValue, timestamp: StatisticTimestamp) {
        self.value = value
        self.timestamp = timestamp
    }

    /// The sample as Kea serializes it: `[value, "YYYY-MM-DD HH:MM:SS.ffffff"]`.
    public var json: JSONValue { .array([value.json, .string(timestamp.keaText)]) }
}

/// How many samples a statistic keeps: one limit is active at a time, as in Kea.
///
/// Thread contract: a plain value, `Sendable`.
/// Kea counterpart: `Observation::max_sample_count_` / `max_sample_age_` (a pair each, one enabled).
public enum StatisticRetention: Sendable, Hashable {
    /// Keep at most this many samples (≥ 1), dropping the oldest. Kea's default is `.count(20)`.
    case count(Int)
    /// Keep the samples no older than this (≥ 0) relative to the newest sample; the newest is always kept.
    /// Nothing is dropped by the passing of time alone: the limit is applied when a sample is recorded or the
    /// limit is set, as in Kea.
    case age(Duration)
}

/// Errors of ``StatisticsManager``. `description` is a human-readable text.
public enum StatisticsError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A value of kind `expected` was given for the statistic `name`, which holds values of kind `actual`.
    /// Kea counterpart: `InvalidStatType` ("Invalid statistic type requested: ...").
    case typeMismatch(name: String, expected: StatisticValue.Kind, actual: StatisticValue.Kind)
    /// A sample count limit below 1 (Kea accepts 0 for a single statistic and then holds no sample at all).
    case invalidMaxSampleCount(Int)
    /// A negative sample age limit (Kea accepts it and then keeps only the newest sample).
    case invalidMaxSampleAge(Duration)

    public var description: String {
        switch self {
        case .typeMismatch(let name, let expected, let actual):
            return "Invalid statistic type requested for '\(name)': \(expected), but the actual type is \(actual)"
        case .invalidMaxSampleCount(let n):
            return "invalid maximum sample count \(n): must be at least 1"
        case .invalidMaxSampleAge(let d):
            return "invalid maximum sample age \(d): must not be negative"
        }
    }
}
