import Dispatch
import Foundation
import KVMAnalysis
import KVMExits
import KVMHost
import KVMExits
import KVMHost
import Synchronization

/// SIGINT, SIGTERM and SIGHUP end a trace cleanly: they set a flag the command's loop polls (and wake it).
/// SIGHUP is not a reload: a closed terminal or ssh session ends the trace like Ctrl-C.
final class StopSignal: @unchecked Sendable {
    let raised = Atomic<Int32>(0)
    /// Kept alive for the process's life; written only in init.
    var sources: [DispatchSourceSignal] = []
    let queue = DispatchQueue(label: "kvmscope.signals")

    init(signals: [Int32] = [SIGINT, SIGTERM, SIGHUP]) {
        for sig in signals {
            signal(sig, SIG_IGN)
            let src = DispatchSource.makeSignalSource(signal: sig, queue: queue)
            src.setEventHandler { [self] in raised.store(sig, ordering: .releasing) }
            src.resume()
            sources.append(src)
        }
    }

    var isRaised: Bool { raised.load(ordering: .acquiring) != 0 }

    /// Sleeps up to `seconds`, returning early (true) when a signal came.
    func sleep(_ seconds: Double) -> Bool {
        let end = Date().addingTimeInterval(seconds)
        while Date() < end {
            if isRaised { return true }
            usleep(UInt32(min(20_000, max(1, end.timeIntervalSinceNow * 1e6))))
        }
        return isRaised
    }
}

/// The end of a trace, whichever comes first: a stop signal (Ctrl-C, SIGTERM, SIGHUP), a deadline, or the
/// end of the command traced after `--`. The one loop `stat`, `record`, `watch` and `serve` wait in.
struct TraceRun {
    let stop: StopSignal
    let deadline: Date?
    let child: ChildProcess?

    init(stop: StopSignal, seconds: Double? = nil, child: ChildProcess? = nil) {
        self.stop = stop
        deadline = seconds.map { Date().addingTimeInterval($0) }
        self.child = child
    }

    /// Whether the trace should end now.
    var isOver: Bool {
        if stop.isRaised { return true }
        if let deadline, Date() >= deadline { return true }
        if let child, !child.isRunning { return true }
        return false
    }

    /// Waits until the trace is over, calling `tick` every `interval` seconds (the last wait is cut at the
    /// deadline). `tick` returns false to end the trace early.
    func wait(every interval: Double, _ tick: () throws -> Bool = { true }) rethrows {
        while !isOver {
            let slice = min(interval, deadline.map { max(0.01, $0.timeIntervalSinceNow) } ?? interval)
            let end = Date().addingTimeInterval(slice)
            while Date() < end && !isOver { usleep(UInt32(min(20_000, max(1, end.timeIntervalSinceNow * 1e6)))) }
            if stop.isRaised { return }
            guard try tick() else { return }
        }
    }

    /// After the trace: a command still running is interrupted when the user stopped the trace, then waited
    /// for. Returns its exit status (0 without a command); ``check(_:)`` turns a failure into the error.
    func endChild() throws -> Int32 {
        guard let child else { return 0 }
        if child.isRunning && stop.isRaised { child.signal(SIGINT) }
        return try child.wait().status
    }

    /// Throws ``KVMScopeError/commandFailed(_:)`` (exit status 3) for a non-zero status of the command.
    static func check(_ status: Int32) throws {
        if status != 0 { throw KVMScopeError.commandFailed(status) }
    }
}
