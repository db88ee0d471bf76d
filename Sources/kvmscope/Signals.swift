import Foundation
import KVMExits
import KVMHost

/// SIGINT, SIGTERM and SIGHUP end a command cleanly: a handler records the signal (``StopSignals``), the
/// command's loop polls it (and is woken by it), and the command ends as it would at its natural end —
/// status 0, instance removed, files complete. SIGHUP is treated like SIGTERM everywhere, `serve`
/// included (no reload), but `stat -L` (it reopens its log file: ``Hangups``): a closed terminal or ssh session ends the trace instead of killing it uncleanly.
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

/// The end of a trace, whichever comes first: a stop signal (Ctrl-C, SIGTERM, SIGHUP), a deadline, or the
/// end of the command traced after `--`. The one loop `stat`, `record`, `watch` and `serve` wait in.
struct TraceRun {
    let stop: StopSignal
    let deadline: Date?
    let child: ChildProcess?
    /// `-p PID`: the trace ends when that process does, as `perf stat -p` and `watch -p` end.
    let watched: Int32?

    init(stop: StopSignal, seconds: Double? = nil, child: ChildProcess? = nil, watched: Int32? = nil) {
        self.stop = stop
        deadline = seconds.map { Date().addingTimeInterval($0) }
        self.child = child
        self.watched = watched
    }

    /// Whether the trace should end now.
    var isOver: Bool {
        if stop.isRaised { return true }
        if let deadline, Date() >= deadline { return true }
        if let child, !child.isRunning { return true }
        if let watched, !StormAlerts.isAlive(watched) { return true }
        return false
    }

    /// Waits until the trace is over, calling `tick` every `interval` seconds (the last wait is cut at the
    /// deadline). `tick` returns false to end the trace early.
    func wait(every interval: Double, _ tick: () throws -> Bool = { true }) rethrows {
        while !isOver {
            let slice = min(interval, deadline.map { max(0.01, $0.timeIntervalSinceNow) } ?? interval)
            let end = Date().addingTimeInterval(slice)
            // Woken at once by a stop signal; the command's end, when there is one, is looked at every 20 ms, a
            // watched process's every 250 ms (without either the loop sleeps the whole slice: an idle `serve`
            // wakes once per interval).
            let poll = child != nil ? 0.02 : watched != nil ? 0.25 : Double.infinity
            while Date() < end && !isOver { _ = stop.sleep(min(poll, max(0.001, end.timeIntervalSinceNow))) }
            if stop.isRaised { return }
            guard try tick() else { return }
        }
    }

    /// After the trace: the command's exit status (0 without a command). A command still running when the
    /// trace ended first is ended as `perf stat` ends its workload: SIGINT, then SIGTERM after 5 s, then
    /// SIGKILL after 2 more. When the user stopped the trace (Ctrl-C, SIGTERM, SIGHUP), the command's own status
    /// is returned, as it was interrupted with it; when kvmscope's own limit ended it (`--duration`, `-1`,
    /// `--max-size`), that is not the command's failure: 0. ``check(_:)`` turns a failure into the error.
    func endChild() throws -> Int32 {
        guard let child else { return 0 }
        guard child.isRunning else { return try child.wait().status }
        for (signal, grace) in [(SIGINT, 5.0), (SIGTERM, 2.0), (SIGKILL, 10.0)] {
            child.signal(signal)
            let end = Date().addingTimeInterval(grace)
            while child.isRunning && Date() < end { usleep(10_000) }
            if !child.isRunning { break }
        }
        let status = try child.wait().status
        return stop.isRaised ? status : 0
    }

    /// Throws ``KVMScopeError/commandFailed(_:)`` (exit status 3) for a non-zero status of the command.
    static func check(_ status: Int32) throws {
        if status != 0 { throw KVMScopeError.commandFailed(status) }
    }
}
