// StatisticsCommands: Kea's statistic-* control commands on top of StatisticsManager.

extension StatisticsManager {
    /// The commands ``registerCommands(on:)`` registers, sorted.
    public static let commandNames: [String] = [
        "statistic-get", "statistic-get-all", "statistic-remove", "statistic-remove-all", "statistic-reset",
        "statistic-reset-all", "statistic-sample-age-set", "statistic-sample-age-set-all",
        "statistic-sample-count-set", "statistic-sample-count-set-all",
    ]

    /// Registers Kea's ten `statistic-*` commands on `commands`, answering from this manager.
    ///
    /// Answers, with Kea's texts and result codes (result 0 unless noted; "error" is result 1):
    /// - `statistic-get {"name": n}`: arguments `{n: [[value, "YYYY-MM-DD HH:MM:SS.ffffff"], ...]}` newest
    ///   first, no text; an unknown name gives result 0 with arguments `{}`.
    /// - `statistic-get-all`: arguments hold every statistic (sorted by name), no text. Arguments are ignored.
    /// - `statistic-reset {"name": n}`: `Statistic 'n' reset.`, or error `No 'n' statistic found`.
    /// - `statistic-reset-all`: `All statistics reset to neutral values.`
    /// - `statistic-remove {"name": n}`: `Statistic 'n' removed.`, or error `No 'n' statistic found`.
    /// - `statistic-remove-all`: `All statistics removed.`
    /// - `statistic-sample-count-set {"name": n, "max-samples": k}`: `Statistic 'n' count limit is set.`, or
    ///   error `No 'n' statistic found`.
    /// - `statistic-sample-count-set-all {"max-samples": k}`: `All statistics count limit are set.`
    /// - `statistic-sample-age-set {"name": n, "duration": s}`: `Statistic 'n' duration limit is set.`, or error
    ///   `No 'n' statistic found`.
    /// - `statistic-sample-age-set-all {"duration": s}`: `All statistics duration limit are set.`
    ///
    /// Parameter errors (result 1), checked in Kea's order (`name`, then the limit, then existence):
    /// `Missing mandatory 'name' parameter.`, `'name' parameter expected to be a string.`,
    /// `Missing mandatory 'max-samples' parameter.`, `'max-samples' parameter expected to be an integer.`,
    /// `'max-samples' parameter must not be zero`, `Missing mandatory 'duration' parameter.`, and the texts
    /// below marked as fixes.
    ///
    /// Where we fixed Kea (2.6.5 source, `src/lib/stats/stats_mgr.cc`):
    /// - Arguments that are not a map: Kea throws from `get("name")` on a non-map, answering an internal
    ///   error; we answer `Missing mandatory 'name' parameter.` (resp. `'max-samples'`, `'duration'`).
    /// - `'duration' parameter expected to be an integer.`: Kea does not check the type (its `intValue()` throws
    ///   and the command fails with an internal error text).
    /// - `'duration' parameter must not be negative`: Kea accepts a negative age.
    /// - `'max-samples' parameter must not be zero` also for `statistic-sample-count-set` (Kea checks zero only
    ///   in the `-all` variant; 0 leaves a statistic without samples).
    /// - `'max-samples' parameter must be between 1 and 4294967295`: Kea silently truncates a negative or larger
    ///   value to 32 bits.
    /// Not provided: Kea 3.x's `statistic-get {"name": "all"}` shortcut (3.x also crashes on a non-string name).
    ///
    /// - Throws: ``CommandManagerError/alreadyRegistered(_:)`` if one of the names is taken; nothing is
    ///   registered then.
    /// Thread contract: call on the loop thread, as any ``CommandManager`` registration. The handlers run on the
    /// loop thread and lock this manager, so workers may keep updating statistics meanwhile.
    /// Kea counterpart: the `statistic*Handler` functions of `StatsMgr`, registered by each server's
    /// `Controlled*Srv` constructor.
    public func registerCommands(on commands: CommandManager) throws(CommandManagerError) {
        for name in Self.commandNames where commands.hasCommand(name) { throw .alreadyRegistered(name) }
        for name in Self.commandNames {
            try commands.registerCommand(name) { [self] name, arguments, _ in
                handleCommand(name, arguments: arguments).json
            }
        }
    }

    /// Removes the `statistic-*` commands from `commands` (those not registered are skipped).
    /// Thread contract: loop thread. Kea counterpart: the `deregisterCommand` calls of a server's destructor.
    public func deregisterCommands(from commands: CommandManager) {
        for name in Self.commandNames where commands.hasCommand(name) {
            try? commands.deregisterCommand(name)
        }
    }

    /// Answers one `statistic-*` command (see ``registerCommands(on:)``) without a ``CommandManager``;
    /// an unknown name gets result 2 `'NAME' command not supported.`. Thread contract: any thread.
    public func handleCommand(_ command: String, arguments: JSONValue?) -> ControlAnswer {
        switch command {
        case "statistic-get":
            return withName(arguments) { name in .success(arguments: get(name)) }
        case "statistic-get-all":
            return .success(arguments: getAll())
        case "statistic-reset":
            return withName(arguments) { name in
                reset(name) ? .success("Statistic '\(name)' reset.") : notFound(name)
            }
        case "statistic-reset-all":
            resetAll()
            return .success("All statistics reset to neutral values.")
        case "statistic-remove":
            return withName(arguments) { name in
                remove(name) ? .success("Statistic '\(name)' removed.") : notFound(name)
            }
        case "statistic-remove-all":
            removeAll()
            return .success("All statistics removed.")
        case "statistic-sample-count-set":
            return withName(arguments) { name in
                withMaxSamples(arguments) { maxSamples in
                    // maxSamples ≥ 1 was checked, so the setter cannot throw.
                    (try? setMaxSampleCount(of: name, to: maxSamples)) == true
                        ? .success("Statistic '\(name)' count limit is set.") : notFound(name)
                }
            }
        case "statistic-sample-count-set-all":
            return withMaxSamples(arguments) { maxSamples in
                try? setMaxSampleCountAll(maxSamples)
                return .success("All statistics count limit are set.")
            }
        case "statistic-sample-age-set":
            return withName(arguments) { name in
                withDuration(arguments) { duration in
                    (try? setMaxSampleAge(of: name, to: duration)) == true
                        ? .success("Statistic '\(name)' duration limit is set.") : notFound(name)
                }
            }
        case "statistic-sample-age-set-all":
            return withDuration(arguments) { duration in
                try? setMaxSampleAgeAll(duration)
                return .success("All statistics duration limit are set.")
            }
        default:
            return .unsupported(command: command)
        }
    }

    private func notFound(_ name: String) -> ControlAnswer { .error("No '\(name)' statistic found") }

    /// Kea's `getStatName`.
    private func withName(_ arguments: JSONValue?, _ body: (String) -> ControlAnswer) -> ControlAnswer {
        guard let value = arguments?["name"] else { return .error("Missing mandatory 'name' parameter.") }
        guard case .string(let name) = value else { return .error("'name' parameter expected to be a string.") }
        return body(name)
    }

    /// Kea's `getStatMaxSamples`, plus the range check.
    private func withMaxSamples(_ arguments: JSONValue?, _ body: (Int) -> ControlAnswer) -> ControlAnswer {
        guard let value = arguments?["max-samples"] else {
            return .error("Missing mandatory 'max-samples' parameter.")
        }
        guard case .integer(let n) = value else {
            return .error("'max-samples' parameter expected to be an integer.")
        }
        if n == 0 { return .error("'max-samples' parameter must not be zero") }
        guard n > 0, n <= Int64(UInt32.max) else {
            return .error("'max-samples' parameter must be between 1 and \(UInt32.max)")
        }
        return body(Int(n))
    }

    /// Kea's `getStatDuration` (whole seconds), plus the type and sign checks.
    private func withDuration(_ arguments: JSONValue?, _ body: (Duration) -> ControlAnswer) -> ControlAnswer {
        guard let value = arguments?["duration"] else { return .error("Missing mandatory 'duration' parameter.") }
        guard case .integer(let seconds) = value else {
            return .error("'duration' parameter expected to be an integer.")
        }
        guard seconds >= 0 else { return .error("'duration' parameter must not be negative") }
        return body(.seconds(seconds))
    }
}
