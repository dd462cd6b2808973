import Glibc

/// A point on the monotonic clock (`CLOCK_MONOTONIC`), in nanoseconds.
///
/// Asio counterpart: `std::chrono::steady_clock::time_point`. All IOLoop deadlines use this clock:
/// it never jumps with wall-clock changes. Thread contract: a plain value, `Sendable`.
public struct SteadyInstant: Comparable, Hashable, Sendable, CustomStringConvertible {
    /// Nanoseconds since the monotonic clock's unspecified epoch.
    public var nanoseconds: UInt64

    /// Creates an instant from raw monotonic nanoseconds.
    public init(nanoseconds: UInt64) { self.nanoseconds = nanoseconds }

    /// The current monotonic time (a vDSO call, no system call).
    @inline(__always)
    public static func now() -> SteadyInstant {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return SteadyInstant(nanoseconds: UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec))
    }

    /// `CLOCK_MONOTONIC_COARSE` in nanoseconds: the last tick's value, cheaper than `now()` and never ahead
    /// of it; behind it by less than `coarseMargin`.
    @inline(__always)
    static func coarseNow() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC_COARSE, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }

    /// Two ticks of the coarse clock: a safe bound on how far it lags the precise one.
    static let coarseMargin: UInt64 = {
        var res = timespec()
        clock_getres(CLOCK_MONOTONIC_COARSE, &res)
        return 2 * (UInt64(res.tv_sec) &* 1_000_000_000 &+ UInt64(res.tv_nsec))
    }()

    /// An instant before every real one; a timer set to it is already expired.
    public static let distantPast = SteadyInstant(nanoseconds: 0)
    /// An instant after every real one.
    public static let distantFuture = SteadyInstant(nanoseconds: UInt64.max)

    /// This instant moved by `duration` (negative moves back), saturating at the clock's range.
    public func advanced(by duration: Duration) -> SteadyInstant {
        let delta = duration.nanosecondsClamped
        if delta >= 0 {
            let (sum, overflow) = nanoseconds.addingReportingOverflow(UInt64(delta))
            return SteadyInstant(nanoseconds: overflow ? .max : sum)
        }
        let back = delta.magnitude
        return SteadyInstant(nanoseconds: nanoseconds > back ? nanoseconds - back : 0)
    }

    /// The signed duration from this instant to `other`.
    public func duration(to other: SteadyInstant) -> Duration {
        if other.nanoseconds >= nanoseconds {
            return .nanoseconds(Int64(clamping: other.nanoseconds - nanoseconds))
        }
        return .nanoseconds(-Int64(clamping: nanoseconds - other.nanoseconds))
    }

    public static func < (lhs: SteadyInstant, rhs: SteadyInstant) -> Bool { lhs.nanoseconds < rhs.nanoseconds }
    public static func + (lhs: SteadyInstant, rhs: Duration) -> SteadyInstant { lhs.advanced(by: rhs) }
    public static func - (lhs: SteadyInstant, rhs: SteadyInstant) -> Duration { rhs.duration(to: lhs) }

    public var description: String { "SteadyInstant(\(nanoseconds) ns)" }
}

extension Duration {
    /// Whole nanoseconds, clamped to `Int64`.
    var nanosecondsClamped: Int64 {
        let (seconds, attoseconds) = components
        let (secNs, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return seconds < 0 ? .min : .max }
        let (total, overflow2) = secNs.addingReportingOverflow(attoseconds / 1_000_000_000)
        if overflow2 { return seconds < 0 ? .min : .max }
        return total
    }
}
