/// `IOService` as a Swift concurrency executor: an actor whose `unownedExecutor` is the service runs its
/// jobs on the loop thread, inside `run()` / `poll()` like any handler.
///
/// ```swift
/// actor Connection {
///     let service: IOService
///     nonisolated var unownedExecutor: UnownedSerialExecutor { service.asUnownedSerialExecutor() }
///     ...
/// }
/// ```
///
/// `IOService` is also a `TaskExecutor`: `Task(executorPreference: service) { ... }` runs a task's nonisolated
/// code on the loop thread too, so a loop-driven program needs no thread of the global pool at all.
///
/// Each job is queued through the thread-safe `post` path, so it counts as outstanding work and as one
/// handler in the run/poll counts, and it runs whether the service is driven by `run()` on a thread of its
/// own or by a host loop calling `poll()`. Jobs only run while something drives the service: an actor on a
/// service nobody runs never makes progress (keep a `WorkGuard` while awaiting external events).
/// Asio counterpart: an `io_context` executor used by C++20 coroutines (`co_spawn(io_context, ...)`).
extension IOService: SerialExecutor, TaskExecutor {
    /// Queues `job` to run on the loop thread. Thread-safe. Never runs the job inline.
    public func enqueue(_ job: consuming ExecutorJob) {
        let unowned = UnownedJob(job)
        post { [self] in
            unowned.runSynchronously(
                isolatedTo: self.asUnownedSerialExecutor(), taskExecutor: self.asUnownedTaskExecutor())
        }
    }

    /// This service as a task executor: `Task(executorPreference: service) { ... }` starts the task (and runs
    /// its nonisolated async code) on the loop thread, without touching the global concurrent pool.
    public func asUnownedTaskExecutor() -> UnownedTaskExecutor {
        UnownedTaskExecutor(ordinary: self)
    }

    /// This service as an unowned serial executor (for an actor's `unownedExecutor`).
    public func asUnownedSerialExecutor() -> UnownedSerialExecutor {
        UnownedSerialExecutor(complexEquality: self)
    }

    /// Two services are the same execution context only if they are the same object.
    public func isSameExclusiveExecutionContext(other: IOService) -> Bool {
        self === other
    }

    /// Traps unless the calling thread is running this service (used by `assumeIsolated`/`preconditionIsolated`).
    public func checkIsolated() {
        precondition(runningInThisThread, "not on the thread running this IOService")
    }
}
