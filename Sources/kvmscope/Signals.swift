import Dispatch
import Foundation
import KVMAnalysis
import KVMExits
import KVMHost
import Synchronization

/// SIGINT and SIGTERM end a trace cleanly: they set a flag the command's loop polls (and wake it).
final class StopSignal: @unchecked Sendable {
    let raised = Atomic<Int32>(0)
    /// Kept alive for the process's life; written only in init.
    var sources: [DispatchSourceSignal] = []
    let queue = DispatchQueue(label: "kvmscope.signals")

    init(signals: [Int32] = [SIGINT, SIGTERM]) {
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
