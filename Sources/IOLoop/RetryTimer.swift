/// An internal one-shot timer that calls `action` on the loop thread when it expires, without counting as a
/// handler or as outstanding work (the operation that uses it already counts).
///
/// Used for accept back-off under descriptor exhaustion and for retrying a UNIX connect whose listener's
/// backlog is full. Loop-thread only.
final class RetryTimer: TimerNode {
    let service: IOService
    @exclusivity(unchecked) var heapIndex = -1
    var action: (() -> Void)?

    init(_ service: IOService) {
        self.service = service
    }

    var isArmed: Bool { heapIndex >= 0 }

    /// Arms (or re-arms) the timer for `delay` from now.
    func arm(after delay: Duration, _ action: @escaping () -> Void) {
        cancel()
        self.action = action
        service.timers.insert(self, deadline: (SteadyInstant.now() + delay).nanoseconds)
    }

    func cancel() {
        service.timers.remove(self)
        action = nil
    }

    func expire(now: UInt64) {
        let a = action
        action = nil
        a?()
    }

    func dropForShutdown() {
        // Out of the property before it is released: releasing it may arm this timer again.
        _ = action.take()
    }
}
