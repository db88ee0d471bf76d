import Foundation
import KVMTrace

/// SIGINT, SIGTERM and SIGHUP end a command cleanly: a handler records the signal (``StopSignals``), the
/// command's loop polls it (and is woken by it), and the command ends as it would at its natural end —
/// status 0, instance removed, files complete. SIGHUP is treated like SIGTERM everywhere, `serve`
/// included (no reload): a closed terminal or ssh session ends the trace instead of killing it uncleanly.
final class StopSignal: Sendable {
    init(signals: [Int32] = [SIGINT, SIGTERM, SIGHUP]) {
        StopSignals.install(signals)
    }

    var isRaised: Bool { StopSignals.raised != nil }

    /// Stops as if `signal` had come (the terminal went away, `q` in the log fallback).
    func raise(_ signal: Int32) { StopSignals.raise(signal) }

    /// Sleeps up to `seconds`, returning early (true) when a signal came.
    func sleep(_ seconds: Double) -> Bool { StopSignals.wait(seconds: seconds) }
}
