import Foundation
import Glibc
import KVMAnalysis
import KVMExits
import KVMSources
import TestSupport
import Testing

/// A snapshot taken while tracing is exact: the readers sleep until their CPU's buffer crosses the watermark,
/// so a snapshot first has every reader catch up (the writer's partial sub-buffer included) and the pairing
/// thread pair what that completed. The events here fill a few percent of each buffer — far below the
/// watermark — so without the catch-up no reader would have read any of them yet.
@Suite(.serialized, .enabled(if: KVMTest.canRun, "needs root and tracefs"))
struct SnapshotCatchUpTests {
    @Test func snapshotWhileTracingHoldsEveryEventWrittenBefore() throws {
        let cpus = ProcessInfo.processInfo.activeProcessorCount
        try #require(cpus >= 2, "needs two CPUs")
        let rec = try MarkerLiveTests.Records()
        let k = 3_000
        // An instance of its own: suites run in parallel, and MarkerLiveTests' sessions take kvmscope-<pid>.
        var c = TraceConfig()
        c.events = ["kvm_exit", "kvm_entry"]
        c.injected = ["kvm_exit", "kvm_entry"]
        c.bufferKB = 4096
        c.onlyPid = getpid()
        c.instanceName = "kvmscopetest-catchup-\(getpid())"
        let s = try LiveSession(config: c)
        defer { s.stop() }
        let path = MarkerLiveTests.markerPath(s)
        let exit = rec.exit(reason: 30, vcpu: 0, rip: 0x100)
        let entry = rec.entry(vcpu: 0)
        // One thread per CPU, k exit/entry pairs each.
        let writers = (0..<2).map { cpu in
            MarkerLiveTests.onThread { () -> Int in
                guard MarkerLiveTests.pin(cpu) else { return -1 }
                return MarkerLiveTests.write(path, Array(repeating: [exit, entry], count: k).flatMap { $0 })
            }
        }
        #expect(writers.map(\.result) == [2 * k, 2 * k])
        // Past the commit margin the pairing watermark allows for (5 ms): the clock, not the load, decides.
        usleep(20_000)
        let snap = s.snapshot()
        let summary = try Summary(snap, filter: SummaryFilter(tids: Set(writers.map(\.tid))))
        #expect(summary.total(of: "kvm_exit") == UInt64(2 * k))
        #expect(summary.total(of: "kvm_entry") == UInt64(2 * k))
        #expect(snap.lostEvents == 0)
        #expect(snap.pairing.paired == UInt64(2 * k))
        // A second snapshot with nothing new written sees the same.
        let again = try Summary(s.snapshot(), filter: SummaryFilter(tids: Set(writers.map(\.tid))))
        #expect(again.total(of: "kvm_exit") == UInt64(2 * k))
    }
}
