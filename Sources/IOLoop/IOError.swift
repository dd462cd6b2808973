import Glibc
import SystemPackage

/// The one error type of IOLoop: an errno-based system error, or one of the framework's own outcomes.
///
/// Asio counterpart: `boost::system::error_code` with `boost::asio::error::operation_aborted`, `eof`,
/// `timed_out`. Kea counterpart: the `isc::asiolink` exceptions.
///
/// Descriptions are written for logs: `"read on fd 7: Connection reset by peer (errno 104, ECONNRESET)"`.
/// Thread contract: a plain value, `Sendable`.
public struct IOError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What kind of failure this is.
    public enum Code: Sendable, Equatable, Hashable {
        /// A system call failed with this errno.
        case system(Errno)
        /// The operation was cancelled by `cancel()`, `close()`, re-arming a timer, or Task cancellation.
        case operationAborted
        /// The peer closed its sending side: no more bytes will arrive.
        case eof
        /// A deadline passed before the operation completed.
        case timedOut
        /// The request was not valid (bad argument, bad state); `context` says why.
        case invalidArgument
    }

    /// The failure kind.
    public var code: Code
    /// What was being done, for logs: `"connect to /run/x.sock"`.
    public var context: String

    /// Creates an error of the given kind with a context string for logs.
    public init(_ code: Code, _ context: String = "") {
        self.code = code
        self.context = context
    }

    /// Creates a system error from an errno value.
    public init(errno value: Int32, _ context: String = "") {
        self.init(.system(Errno(rawValue: value)), context)
    }

    /// Creates a system error from the calling thread's current `errno`.
    public static func lastErrno(_ context: String) -> IOError {
        IOError(errno: errno, context)
    }

    /// Cancelled (Asio `operation_aborted`).
    public static let operationAborted = IOError(.operationAborted)
    /// End of stream (Asio `eof`).
    public static let eof = IOError(.eof)
    /// Timed out (Asio `timed_out`).
    public static let timedOut = IOError(.timedOut)

    /// The errno value if this is a system error, else nil.
    public var errnoValue: Int32? {
        if case .system(let e) = code { return e.rawValue }
        return nil
    }

    /// Whether this is `operationAborted`, whatever the context.
    public var isOperationAborted: Bool { code == .operationAborted }

    public var description: String {
        let what: String
        switch code {
        case .system(let e):
            what = "\(String(cString: strerror(e.rawValue))) (errno \(e.rawValue)\(IOError.symbol(e.rawValue)))"
        case .operationAborted: what = "operation aborted"
        case .eof: what = "end of stream"
        case .timedOut: what = "timed out"
        case .invalidArgument: what = "invalid argument"
        }
        return context.isEmpty ? what : "\(context): \(what)"
    }

    /// Equality compares the code only: `error == .operationAborted` reads as intended whatever the context.
    public static func == (lhs: IOError, rhs: IOError) -> Bool { lhs.code == rhs.code }

    private static func symbol(_ value: Int32) -> String {
        switch value {
        case EPERM: return ", EPERM"
        case ENOENT: return ", ENOENT"
        case EINTR: return ", EINTR"
        case EBADF: return ", EBADF"
        case EAGAIN: return ", EAGAIN"
        case EACCES: return ", EACCES"
        case EEXIST: return ", EEXIST"
        case ENOTDIR: return ", ENOTDIR"
        case EISDIR: return ", EISDIR"
        case EINVAL: return ", EINVAL"
        case ENFILE: return ", ENFILE"
        case EMFILE: return ", EMFILE"
        case EPIPE: return ", EPIPE"
        case ENAMETOOLONG: return ", ENAMETOOLONG"
        case EADDRINUSE: return ", EADDRINUSE"
        case EADDRNOTAVAIL: return ", EADDRNOTAVAIL"
        case ECONNRESET: return ", ECONNRESET"
        case ECONNREFUSED: return ", ECONNREFUSED"
        case ECONNABORTED: return ", ECONNABORTED"
        case ETIMEDOUT: return ", ETIMEDOUT"
        case ENOTCONN: return ", ENOTCONN"
        default: return ""
        }
    }
}
