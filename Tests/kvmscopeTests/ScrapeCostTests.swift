import Foundation
import KVMAnalysis
import KVMExits
import KVMScopeViews
import Testing
import TestSupport

/// A scrape of a busy host: 1,000 live vCPU threads with 20 exit reasons each, rendered exactly.
///
/// What it costs is measured by the benchmark harness (`make bench ARGS='--only scrape'`, README
/// "Performance"), not here: tests assert output, not time.
@Suite struct ScrapeCostTests {
    /// 1,000 threads (125 VMs of 8 vCPUs) × 20 reasons, 3 pairs each, counted and paired as the live path does.
    static func aggregate() -> Aggregator {
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
        return agg
    }

    /// The snapshot, summary and text hold exactly 20,000 series and 20,000 exit rows; the text (both formats)
    /// is pinned by its length and FNV-1a hash, taken from the renderer before the byte-buffer writer.
    @Test func thousandThreadsTwentyReasons() throws {
        let agg = Self.aggregate()
        let snap = agg.snapshot(timestamp: 100_000_000)
        let summary = try Summary(snap)
        let extras = ExpositionExtras(version: "t", maxSeries: 100_000)
        let text = PrometheusExposition.render(summary, format: .prometheus, extras: extras)
        let om = PrometheusExposition.render(summary, format: .openMetrics, extras: extras)
        #expect(snap.series.count == 20_000)
        #expect(snap.occupancy.liveSeries == 20_000)
        #expect(summary.exits.count == 20_000)
        #expect(summary.pairing.paired == 60_000)
        #expect(text.split(separator: "\n").filter { $0.hasPrefix("kvmscope_exits_total{") }.count == 20_000)
        #expect(text.split(separator: "\n").count == 90_062)
        #expect((text.utf8.count, ExpositionBytesTests.fnv1a(text)) == (9_618_549, 5_889_794_091_026_072_708))
        #expect((om.utf8.count, ExpositionBytesTests.fnv1a(om)) == (9_618_421, 4_284_611_216_389_066_834))
        // Without the I/O families (no pio/mmio events here: their headers and two zero samples), the text of the
        // renderer before them, byte for byte.
        let withoutIO = text.split(separator: "\n", omittingEmptySubsequences: false)
            .filter { !$0.contains("kvmscope_io_exits") && !$0.contains("kvmscope_io_unattributed_events") }.joined(separator: "\n")
        #expect((withoutIO.utf8.count, ExpositionBytesTests.fnv1a(withoutIO)) == (9_618_086, 16_583_583_776_564_732_096))
        let lint = try Spawned.run("/usr/bin/promtool", ["check", "metrics"], input: Data(text.utf8), timeout: 120)
        #expect(lint.status == 0 && lint.stdout.isEmpty && lint.stderr.isEmpty, "promtool: \(lint.stdout + lint.stderr)")
        #expect(text.contains("\nkvmscope_exits_total{vm=\"10992\",vm_name=\"vm124\",vcpu=\"7\",reason=\"EXCEPTION_NMI\"} 3\n"))
    }
}
