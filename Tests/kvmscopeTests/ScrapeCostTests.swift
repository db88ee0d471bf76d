import Foundation
import KVMAnalysis
import KVMExits
import KVMScopeViews
import Testing

/// What one scrape costs on a busy host: 1,000 live vCPU threads with 20 exit reasons each.
@Suite struct ScrapeCostTests {
    /// 1,000 threads (125 VMs of 8 vCPUs) × 20 reasons, 3 pairs each: snapshot + summary + Prometheus text
    /// hold exactly 20,000 series and 20,000 exit rows. A guard against regressions, not the goal: measured on
    /// 2026-11-30 (2 vCPUs, release build, machine shared) the snapshot took 25 ms, the summary 153 ms and the
    /// text 261 ms (90,000 lines); the bound (2 s, 10 s in a debug build) leaves room for a loaded machine and
    /// still catches a quadratic turn.
    @Test func thousandThreadsTwentyReasons() throws {
        var catalog = EventCatalog()
        catalog.add(system: "kvm", name: "kvm_exit")
        catalog.add(system: "kvm", name: "kvm_entry")
        let agg = Aggregator(catalog: catalog, shardCount: 1) { tid in
            ThreadIdentity(vm: 10_000 + (tid - 10_000) / 8 * 8, vmName: "vm\((tid - 10_000) / 8)", vcpu: UInt32((tid - 10_000) % 8))
        }
        var writer = agg.writer(shard: 0)
        var pairer = agg.makePairer()
        let reasons: [UInt32] = [0, 1, 7, 9, 10, 12, 14, 18, 28, 30, 31, 32, 40, 44, 45, 48, 49, 52, 55, 56]
        var t: UInt64 = 1_000
        for round in 0..<3 {
            for tid in Int32(10_000)..<10_000 + 1_000 {
                for (k, r) in reasons.enumerated() {
                    let exit = TraceEvent(timestamp: t, tid: tid, event: 0, reason: r, isa: 1)
                    let entry = TraceEvent(timestamp: t + 500 + UInt64(k * 100 + round), tid: tid, event: 1)
                    writer.add(exit, hasReason: true)
                    writer.add(entry, hasReason: false)
                    pairer.exit(exit)
                    pairer.entry(entry)
                    t += 1_000
                }
            }
        }
        _ = agg.snapshot(timestamp: t)  // names the threads (once, as serve's first refresh does)
        let start = ContinuousClock.now
        let snap = agg.snapshot(timestamp: t)
        let t1 = ContinuousClock.now
        let summary = try Summary(snap)
        let t2 = ContinuousClock.now
        let text = PrometheusExposition.render(summary, format: .prometheus,
                                               extras: ExpositionExtras(version: "t", maxSeries: 100_000))
        let elapsed = ContinuousClock.now - start
        print("ScrapeCostTests: snapshot \(t1 - start), summary \(t2 - t1), render \(ContinuousClock.now - t2)")
        #expect(snap.series.count == 20_000)
        #expect(snap.occupancy.liveSeries == 20_000)
        #expect(summary.exits.count == 20_000)
        #expect(summary.pairing.paired == 60_000)
        #expect(text.split(separator: "\n").filter { $0.hasPrefix("kvmscope_exits_total{") }.count == 20_000)
        #if DEBUG
        let limit: Duration = .seconds(10)
        #else
        let limit: Duration = .seconds(2)
        #endif
        #expect(elapsed < limit, "scrape took \(elapsed)")
        print("ScrapeCostTests: one scrape of 20,000 series: \(elapsed)")
    }
}
