import KVMExits
import Testing

/// The pipeline's per-thread shortcuts (an exit's series found in its thread's reason slots, indexed by the
/// reason's low 4 bits; the writer's counter slot kept beside it) never mix keys: reasons that share those
/// bits, the same reason under two ISAs, and a thread table that grows under an open exit all count and pair
/// exactly as the keys say.
@Suite struct PipelineHotPathTests {
    @Test func reasonsSharingSlotsCountAndPairApart() {
        var catalog = EventCatalog()
        let exit = catalog.add(system: "kvm", name: "kvm_exit")
        let entry = catalog.add(system: "kvm", name: "kvm_entry")
        var pipeline = ExitPipeline(catalog: catalog)
        // (reason, isa): 1, 17 and 33 share a slot; reason 1 comes under two ISAs.
        let keys: [(reason: UInt32, isa: UInt8)] = [(1, 1), (17, 1), (33, 1), (1, 2), (1, 1), (1, 1), (17, 1)]
        var want: [Int32: [String: (count: UInt64, sum: UInt64)]] = [:]
        var t: UInt64 = 1_000
        for round in 0..<50 {
            for (k, key) in keys.enumerated() {
                for tid: Int32 in [7, 8] {
                    let latency = UInt64(100 + k * 10 + Int(tid) + round)
                    pipeline.add(TraceEvent(timestamp: t, rip: 0x1000 + UInt64(k), tid: tid, event: exit,
                                            reason: key.reason, isa: key.isa))
                    pipeline.add(TraceEvent(timestamp: t + latency, tid: tid, event: entry))
                    let name = "\(key.reason)/\(key.isa)"
                    want[tid, default: [:]][name, default: (0, 0)].count += 1
                    want[tid, default: [:]][name, default: (0, 0)].sum += latency
                    t += latency + 50
                }
            }
            if round == 25 {
                // 3,000 other threads: the thread table is rebuilt (twice) while 7 and 8 have exits open.
                pipeline.add(TraceEvent(timestamp: t, tid: 7, event: exit, reason: 33, isa: 1))
                pipeline.add(TraceEvent(timestamp: t, tid: 8, event: exit, reason: 1, isa: 2))
                for other in 0..<3_000 {
                    let tid = Int32(100_000 + other)
                    pipeline.add(TraceEvent(timestamp: t + 1, tid: tid, event: exit, reason: 17, isa: 1))
                    pipeline.add(TraceEvent(timestamp: t + 2, tid: tid, event: entry))
                }
                pipeline.add(TraceEvent(timestamp: t + 500, tid: 7, event: entry))
                pipeline.add(TraceEvent(timestamp: t + 700, tid: 8, event: entry))
                want[7, default: [:]]["33/1", default: (0, 0)].count += 1
                want[7, default: [:]]["33/1", default: (0, 0)].sum += 500
                want[8, default: [:]]["1/2", default: (0, 0)].count += 1
                want[8, default: [:]]["1/2", default: (0, 0)].sum += 700
                t += 1_000
            }
        }
        let snap = pipeline.finish(statistics: SourceStatistics())
        #expect(snap.pairing.paired == UInt64(50 * keys.count * 2 + 2 + 3_000))
        #expect(snap.pairing.orphanExits == 0 && snap.pairing.orphanEntries == 0)
        for tid: Int32 in [7, 8] {
            let series = snap.series.filter { $0.tid == tid }
            var got: [String: (count: UInt64, sum: UInt64)] = [:]
            for s in series { got["\(s.reason)/\(s.isa)"] = (s.histogram.count, s.histogram.sum) }
            #expect(got.keys.sorted() == want[tid]!.keys.sorted())
            for (name, w) in want[tid]! {
                #expect(got[name]?.count == w.count, "tid \(tid) \(name)")
                #expect(got[name]?.sum == w.sum, "tid \(tid) \(name)")
            }
            var counted: [String: UInt64] = [:]
            for row in snap.counters where row.key.tid == tid && row.key.event == exit {
                counted["\(row.key.reason)/\(row.key.isa)", default: 0] += row.count
            }
            #expect(counted.mapValues { $0 } == want[tid]!.mapValues(\.count), "tid \(tid)")
            let entries = snap.counters.filter { $0.key.tid == tid && $0.key.event == entry }.map(\.count)
            #expect(entries == [want[tid]!.values.reduce(0) { $0 + $1.count }])
        }
    }
}
