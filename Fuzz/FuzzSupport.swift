// Oracle helpers shared by the libFuzzer targets; Fuzz/run compiles this file with each target.
import Glibc

/// A failed oracle: prints why (release builds drop precondition messages) and traps for libFuzzer.
func check(_ condition: Bool, _ message: @autoclosure () -> String) {
    if !condition { failure(message()) }
}

/// Prints `message` to standard error and aborts (libFuzzer reports the trap as a crash).
func failure(_ message: String) -> Never {
    let line = Array("FUZZ ORACLE FAILED: \(message)\n".utf8)
    _ = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    abort()
}
