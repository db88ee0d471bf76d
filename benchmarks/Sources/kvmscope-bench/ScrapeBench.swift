import Foundation
import KVMAnalysis
import KVMExits
import KVMScopeViews

/// What one `/metrics` scrape costs on a busy host: an aggregate of `threads` live vCPU threads (VMs of 8
/// vCPUs) with `reasons` exit reasons each, 3 pairs per thread × reason, counted and paired as the live path
/// does (the same aggregate as the test `ScrapeCostTests`). A scrape is what `serve` runs per request, minus
/// the HTTP write and the /proc resource sample: a snapshot of the aggregate, its ``Summary``, and the
/// Prometheus text as the UTF-8 bytes serve sends (`renderUTF8`). Wall time of each stage and the thread's CPU
/// time for the whole scrape; median and best of `repeats` scrapes after one warm-up scrape (which names the
/// threads, as serve's first refresh does).
struct ScrapeBench {
    var threads = 1_000
    var reasons = 20
    var repeats = 10

    struct Timing {
        var snapshot: Double
        var summary: Double
        var render: Double
        /// CPU time of this thread over the three stages (steadier than wall time on a shared machine).
        var cpu: Double
        var total: Double { snapshot + summary + render }
    }

    struct Result {
        var series: Int
        var lines: Int
        var bytes: Int
        var timings: [Timing]
        func median(_ f: (Timing) -> Double) -> Double {
            let v = timings.map(f).sorted()
            return v[v.count / 2]
        }
        func best(_ f: (Timing) -> Double) -> Double { timings.map(f).min() ?? 0 }
    }

    static let vmxReasons: [UInt32] = [0, 1, 7, 9, 10, 12, 14, 18, 28, 30, 31, 32, 40, 44, 45, 48, 49, 52, 55, 56,
                                       2, 3, 8, 13, 15, 16, 19, 20, 21, 22]

    func aggregate() -> Aggregator {
        var catalog = EventCatalog()
        catalog.add(system: "kvm", name: "kvm_exit")
        catalog.add(system: "kvm", name: "kvm_entry")
        let agg = Aggregator(catalog: catalog, shardCount: 1) { tid in
            ThreadIdentity(vm: 10_000 + (tid - 10_000) / 8 * 8, vmName: "vm\((tid - 10_000) / 8)", vcpu: UInt32((tid - 10_000) % 8))
        }
        var writer = agg.writer(shard: 0)
        var pairer = agg.makePairer()
        let reasons = Array(Self.vmxReasons.prefix(reasons))
        var t: UInt64 = 1_000
        for round in 0..<3 {
            for tid in Int32(10_000)..<10_000 + Int32(threads) {
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

    func run() throws -> Result {
        let agg = aggregate()
        return try Self.measure(agg, repeats: repeats)
    }

    /// Scrapes `agg` once to warm up, then `repeats` times, timing each stage.
    static func measure(_ agg: Aggregator, repeats: Int) throws -> Result {
        let extras = ExpositionExtras(version: "bench", maxSeries: 1_000_000)
        var text = PrometheusExposition.renderUTF8(try Summary(agg.snapshot(timestamp: 1)), format: .prometheus, extras: extras)
        var timings: [Timing] = []
        var series = 0
        for _ in 0..<max(1, repeats) {
            let c0 = DecodeBench.threadCPU()
            let t0 = DecodeBench.monotonic()
            let snap = agg.snapshot(timestamp: 1)
            let t1 = DecodeBench.monotonic()
            let summary = try Summary(snap)
            let t2 = DecodeBench.monotonic()
            text = PrometheusExposition.renderUTF8(summary, format: .prometheus, extras: extras)
            let t3 = DecodeBench.monotonic()
            let c1 = DecodeBench.threadCPU()
            series = snap.series.count
            timings.append(Timing(snapshot: t1 - t0, summary: t2 - t1, render: t3 - t2, cpu: c1 - c0))
        }
        var lines = 0
        for b in text where b == UInt8(ascii: "\n") { lines += 1 }
        return Result(series: series, lines: lines, bytes: text.count, timings: timings)
    }
}
