import KVMExits
import Testing

/// The pipeline's per-thread shortcuts (an exit's series found in its thread's reason slots, two per set, the
/// set a hash of the reason; the writer's counter slot kept beside it) never mix keys: more reasons than a set
/// holds, reasons that share the low bits, the same reason under two ISAs, and a thread table that grows under
/// an open exit all count and pair exactly as the keys say.
@Suite struct PipelineHotPathTests {
    @Test func reasonsSharingSlotsCountAndPairApart() {
        var catalog = EventCatalog()
        let exit = catalog.add(system: "kvm", name: "kvm_exit")
        let entry = catalog.add(system: "kvm", name: "kvm_entry")
        var pipeline = ExitPipeline(catalog: catalog)
        // (reason, isa): 1, 17 and 33 share their low 4 bits; 33, 12, 40 and 30 share a set of 2 slots (so do
        // 1 under both ISAs); reason 1 comes under two ISAs.
        let keys: [(reason: UInt32, isa: UInt8)] = [(1, 1), (17, 1), (33, 1), (1, 2), (1, 1), (1, 1), (17, 1),
                                                    (12, 1), (40, 1), (30, 1), (12, 1), (33, 1), (30, 1)]
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

/// The merge of per-CPU streams emits every event once, in (timestamp, stream) order with each stream's own
/// order kept, for 1 to 12 streams: ties across streams, runs of one stream, batches of any size, empty
/// batches between.
@Suite struct EventMergeOrderTests {
    final class Batches: EventStream {
        var batches: [[TraceEvent]]
        init(_ batches: [[TraceEvent]]) { self.batches = batches }
        func next(_ batch: inout [TraceEvent]) throws -> Bool {
            batch.removeAll(keepingCapacity: true)
            while batch.isEmpty {
                guard !batches.isEmpty else { return false }
                batch.append(contentsOf: batches.removeFirst())
            }
            return true
        }
    }

    @Test(arguments: [1, 2, 3, 8, 9, 12])
    func mergedInTimestampThenStreamOrder(streams n: Int) throws {
        var x: UInt64 = 0x9E37_79B9 &* UInt64(n + 1)
        func random(_ m: UInt64) -> UInt64 {
            x = x &* 6364136223846793005 &+ 1442695040888963407
            return (x >> 33) % m
        }
        var lanes: [[TraceEvent]] = []
        for lane in 0..<n {
            var t: UInt64 = random(20)
            var events: [TraceEvent] = []
            for k in 0..<2_000 {
                // Small steps (often 0): long runs, ties within a stream and across streams.
                t += random(4) == 0 ? random(30) : random(2)
                events.append(TraceEvent(timestamp: t, tid: Int32(lane * 10_000 + k), event: 0, cpu: UInt16(lane)))
            }
            lanes.append(events)
        }
        let want = lanes.enumerated().flatMap { lane, events in events.enumerated().map { (lane, $0, $1) } }
            .sorted { ($0.2.timestamp, $0.0, $0.1) < ($1.2.timestamp, $1.0, $1.1) }.map(\.2.tid)
        let streams: [any EventStream] = lanes.map { events in
            var batches: [[TraceEvent]] = []
            var i = 0
            while i < events.count {
                let size = Int(random(40))  // 0: an empty batch in between
                batches.append(Array(events[i..<min(events.count, i + size)]))
                i += size
            }
            return Batches(batches)
        }
        var merge = EventMerge(streams: streams)
        var got: [Int32] = []
        try merge.run { got.append($0.tid) }
        #expect(got == want)
    }
}
