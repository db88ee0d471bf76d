import Foundation
import KVMExits
import Testing
import TestSupport

/// The pipeline's merge stage, offline (``EventMerge`` over per-CPU streams) and live (``PairingMerge``: lanes
/// with watermarks), against a reference that sorts every event and pairs with a dictionary.
@Suite struct PairingMergeTests {
    static let exitEvent: UInt16 = 0, entryEvent: UInt16 = 1, pioEvent: UInt16 = 2

    static func catalog() -> EventCatalog {
        var c = EventCatalog()
        c.add(system: "kvm", name: "kvm_exit")
        c.add(system: "kvm", name: "kvm_entry")
        c.add(system: "kvm", name: "kvm_pio")
        return c
    }

    /// A deterministic random trace: vCPU threads that migrate between host CPUs at every event, exits and
    /// entries (sometimes an exit with no entry, an entry with no exit), pio events, loss flags on any kind,
    /// equal timestamps across CPUs. Per CPU, in time order (the order each CPU's buffer has).
    static func trace(seed: UInt64, cpus: Int, threads: Int, events: Int) -> [[TraceEvent]] {
        var rng = SplitMix(seed)
        var perCPU = [[TraceEvent]](repeating: [], count: cpus)
        var open = [Bool](repeating: false, count: threads)
        var ts: UInt64 = 1_000
        for _ in 0..<events {
            ts += rng.next() % 4  // 0: a tie with the previous event (on another CPU, or the same)
            let t = Int(rng.next() % UInt64(threads))
            let cpu = Int(rng.next() % UInt64(cpus))
            let r = rng.next() % 100
            let flags: UInt8 = rng.next() % 50 == 0 ? TraceEvent.afterLoss : 0
            let event: UInt16
            if r < 10 {
                event = pioEvent
            } else if r < 13 {
                event = open[t] ? exitEvent : entryEvent  // the odd one: an orphan
            } else {
                event = open[t] ? entryEvent : exitEvent
            }
            if event == exitEvent { open[t] = true } else if event == entryEvent { open[t] = false }
            perCPU[cpu].append(TraceEvent(timestamp: ts, rip: rng.next() % 4, tid: Int32(100 + t), event: event,
                                          cpu: UInt16(cpu), reason: UInt32(rng.next() % 3) * 10 + 1, isa: 1,
                                          flags: flags))
        }
        return perCPU
    }

    struct Pair: Hashable, Comparable {
        var tid: Int32, reason: UInt32, exitAt: UInt64, latency: UInt64
        static func < (a: Pair, b: Pair) -> Bool {
            (a.exitAt, a.tid, a.reason, a.latency) < (b.exitAt, b.tid, b.reason, b.latency)
        }
    }

    struct Outcome: Equatable {
        var paired: UInt64 = 0, orphanExits: UInt64 = 0, orphanEntries: UInt64 = 0, openAtEnd: UInt64 = 0
        var invalidated: UInt64 = 0
        var exits: UInt64 = 0
        var pairs: [Pair] = []
    }

    /// The reference: every event sorted by (timestamp, CPU), stable; pairs by a dictionary of open exits;
    /// a pair is invalid when its exit's or entry's CPU had a loss-flagged event after the exit, up to the entry.
    static func reference(_ perCPU: [[TraceEvent]]) -> Outcome {
        var all: [(e: TraceEvent, cpu: Int, seq: Int)] = []
        for (c, list) in perCPU.enumerated() { for (i, e) in list.enumerated() { all.append((e, c, i)) } }
        all.sort { ($0.e.timestamp, $0.cpu, $0.seq) < ($1.e.timestamp, $1.cpu, $1.seq) }
        var out = Outcome()
        var open: [Int32: TraceEvent] = [:]
        var lastLoss: [UInt16: UInt64] = [:]
        for (e, _, _) in all {
            if e.flags & TraceEvent.afterLoss != 0 { lastLoss[e.cpu] = e.timestamp }
            switch e.event {
            case exitEvent:
                out.exits += 1
                if open[e.tid] != nil { out.orphanExits += 1 }
                open[e.tid] = e
            case entryEvent:
                guard let x = open.removeValue(forKey: e.tid) else {
                    out.orphanEntries += 1
                    continue
                }
                let lossX = lastLoss[x.cpu] ?? 0, lossE = lastLoss[e.cpu] ?? 0
                if (lossX > x.timestamp && lossX <= e.timestamp) || (lossE > x.timestamp && lossE <= e.timestamp) {
                    out.invalidated += 1
                } else {
                    out.paired += 1
                    out.pairs.append(Pair(tid: e.tid, reason: x.reason, exitAt: x.timestamp, latency: e.timestamp - x.timestamp))
                }
            default:
                break
            }
        }
        out.openAtEnd += UInt64(open.count)  // exits still open when the trace ends: not orphans
        out.pairs.sort()
        return out
    }

    /// Collects what the pairer reports.
    final class Recorder: PairObserver, @unchecked Sendable {
        var exits: UInt64 = 0
        var pairs: [Pair] = []
        var started: UInt64?
        func start(at timestamp: UInt64) { started = timestamp }
        func exit(tid: Int32, isa: UInt8, reason: UInt32, at timestamp: UInt64) { exits += 1 }
        func pair(tid: Int32, isa: UInt8, reason: UInt32, exitAt timestamp: UInt64, latency: UInt64) {
            pairs.append(Pair(tid: tid, reason: reason, exitAt: timestamp, latency: latency))
        }
    }

    static func outcome(_ agg: Aggregator, _ rec: Recorder) -> Outcome {
        let p = agg.pairing.snapshot
        var pairs = rec.pairs
        pairs.sort()
        return Outcome(paired: p.paired, orphanExits: p.orphanExits, orphanEntries: p.orphanEntries, openAtEnd: p.openAtEnd,
                       invalidated: p.invalidatedByLoss, exits: rec.exits, pairs: pairs)
    }

    /// Offline: per-CPU streams of random batch sizes through ``ExitPipeline``: the merged order is the stable
    /// sort's, and the pairing is the reference's, pair for pair.
    @Test(arguments: [(1, 1), (2, 3), (3, 8), (6, 5)])
    func pipelineMatchesReference(cpus: Int, threads: Int) throws {
        for seed in 0..<20 as Range<UInt64> {
            let perCPU = Self.trace(seed: seed * 7 + UInt64(cpus), cpus: cpus, threads: threads, events: 2_000)
            var rng = SplitMix(seed)
            let streams = perCPU.map { ArrayEventStream($0, batchSize: 1 + Int(rng.next() % 40)) }
            var merged: [TraceEvent] = []
            var merge = EventMerge(streams: streams)
            try merge.run { merged.append($0) }
            var expected: [(e: TraceEvent, cpu: Int, seq: Int)] = []
            for (c, list) in perCPU.enumerated() { for (i, e) in list.enumerated() { expected.append((e, c, i)) } }
            expected.sort { ($0.e.timestamp, $0.cpu, $0.seq) < ($1.e.timestamp, $1.cpu, $1.seq) }
            #expect(merged == expected.map(\.e), "seed \(seed): merged order")

            let rec = Recorder()
            var pipeline = ExitPipeline(catalog: Self.catalog(), observer: rec)
            let kept = try pipeline.run(perCPU.map { ArrayEventStream($0, batchSize: 1 + Int(rng.next() % 40)) })
            let snap = pipeline.finish(statistics: SourceStatistics())
            #expect(kept == UInt64(expected.count) && snap.eventTotals.reduce(0, +) == kept)
            #expect(rec.started == expected.first?.e.timestamp)
            #expect(Self.outcome(pipeline.aggregator, rec) == Self.reference(perCPU), "seed \(seed)")
        }
    }

    /// Live, on one thread: lanes hand over random prefixes with random watermarks (never past an event not yet
    /// handed over), the consumer steps in between; the pairing is the reference's, pair for pair, and nothing
    /// is paired before every lane's watermark passed it.
    @Test(arguments: [1, 2, 4, 7])
    func lanesMatchReference(cpus: Int) {
        for seed in 0..<25 as Range<UInt64> {
            let perCPU = Self.trace(seed: seed &* 31 &+ UInt64(cpus), cpus: cpus, threads: 6, events: 3_000)
            var rng = SplitMix(seed ^ 0xabc)
            let lanes = perCPU.map { _ in PairingMerge.Lane() }
            let agg = Aggregator(catalog: Self.catalog(), shardCount: 1)
            let rec = Recorder()
            var pairer = agg.makePairer()
            pairer.observer = rec
            var merge = PairingMerge(lanes: lanes, roles: Self.catalog().entries.map(\.role))
            var handed = [Int](repeating: 0, count: cpus)
            var watermark = [UInt64](repeating: 0, count: cpus)
            var finished = [Bool](repeating: false, count: cpus)
            var batch: [TraceEvent] = []
            while finished.contains(false) {
                let c = Int(rng.next() % UInt64(cpus))
                guard !finished[c] else { continue }
                let left = perCPU[c].count - handed[c]
                if left == 0 {
                    lanes[c].finish()
                    finished[c] = true
                } else {
                    let n = Int(rng.next() % UInt64(min(left, 50) + 1))
                    batch.append(contentsOf: perCPU[c][handed[c]..<handed[c] + n])
                    handed[c] += n
                    // Complete up to just before the next event not handed over (or anywhere past the last).
                    let ceiling = handed[c] < perCPU[c].count ? perCPU[c][handed[c]].timestamp - 1 : .max - 1
                    if ceiling > watermark[c] { watermark[c] += rng.next() % (ceiling - watermark[c] + 1) }
                    lanes[c].hand(&batch, watermark: watermark[c])
                    #expect(batch.isEmpty)
                }
                if rng.next() % 3 == 0 {
                    let before = rec.pairs.count
                    let done = merge.step(&pairer)
                    #expect(!done || !finished.contains(false))
                    // What was paired in this round is covered by every lane's watermark.
                    let limit = watermark.enumerated().map { finished[$0.offset] ? .max : $0.element }.min()!
                    #expect(rec.pairs[before...].allSatisfy { $0.exitAt + $0.latency <= limit })
                }
            }
            let done = merge.step(&pairer)
            #expect(done && merge.pending == 0)
            let again = merge.step(&pairer)
            #expect(again, "idempotent once finished")
            #expect(Self.outcome(agg, rec) == Self.reference(perCPU), "seed \(seed)")
        }
    }

    /// Live, with real threads: one producer per CPU handing batches as a reader thread would, the consumer
    /// stepping concurrently; the result is the reference's.
    @Test func lanesOnThreads() {
        let cpus = 4
        let perCPU = Self.trace(seed: 99, cpus: cpus, threads: 12, events: 200_000)
        let lanes = perCPU.map { _ in PairingMerge.Lane() }
        let agg = Aggregator(catalog: Self.catalog(), shardCount: 1)
        let rec = Recorder()
        let roles = Self.catalog().entries.map(\.role)
        var bodies: [@Sendable () -> Int] = []
        for c in 0..<cpus {
            let lane = lanes[c], events = perCPU[c]
            bodies.append {
                var batch: [TraceEvent] = []
                var i = 0
                while i < events.count {
                    let n = min(events.count - i, 1 + (i * 7919) % 300)
                    batch.append(contentsOf: events[i..<i + n])
                    i += n
                    lane.hand(&batch, watermark: i < events.count ? events[i].timestamp - 1 : .max)
                    if i % 5 == 0 { sched_yield() }
                }
                lane.finish()
                return i
            }
        }
        bodies.append {
            var pairer = agg.makePairer()
            pairer.observer = rec
            var merge = PairingMerge(lanes: lanes, roles: roles)
            var rounds = 0
            while !merge.step(&pairer) {
                rounds += 1
                usleep(100)
            }
            return rounds
        }
        let counts = onThreads(bodies, timeout: 120)
        #expect(Array(counts[0..<cpus]) == perCPU.map(\.count))
        #expect(Self.outcome(agg, rec) == Self.reference(perCPU))
    }

    /// The watermark holds events back: an exit on CPU 0 waits until CPU 1 has told that nothing older can come,
    /// then pairs with an entry of the same thread that migrated to CPU 1.
    @Test func watermarkHoldsBackUntilEveryCPUIsComplete() {
        let lanes = [PairingMerge.Lane(), PairingMerge.Lane()]
        let agg = Aggregator(catalog: Self.catalog(), shardCount: 1)
        var pairer = agg.makePairer()
        var merge = PairingMerge(lanes: lanes, roles: Self.catalog().entries.map(\.role))
        var b = [TraceEvent(timestamp: 100, tid: 7, event: Self.exitEvent, cpu: 0, reason: 12, isa: 1)]
        lanes[0].hand(&b, watermark: 150)
        let s1 = merge.step(&pairer)
        #expect(!s1 && merge.pending == 1, "CPU 1 has said nothing yet")
        lanes[1].hand(&b, watermark: 99)
        let s2 = merge.step(&pairer)
        #expect(!s2 && merge.pending == 1, "CPU 1 may still hold something before 100")
        b = [TraceEvent(timestamp: 140, tid: 7, event: Self.entryEvent, cpu: 1)]
        lanes[1].hand(&b, watermark: 200)
        let s3 = merge.step(&pairer)
        #expect(!s3 && merge.pending == 0 && agg.pairing.snapshot.paired == 1)
        #expect(agg.series.all.map { $0.histogram.snapshot().max } == [40])
        b = [TraceEvent(timestamp: 300, tid: 7, event: Self.exitEvent, cpu: 0, reason: 12, isa: 1)]
        lanes[0].hand(&b, watermark: 300)
        lanes[0].finish()
        let s4 = merge.step(&pairer)
        #expect(!s4 && merge.pending == 1)
        lanes[1].finish()
        let s5 = merge.step(&pairer)
        #expect(s5 && merge.pending == 0)
        #expect(agg.pairing.snapshot.openAtEnd == 1, "the last exit, left open at the end")
        #expect(agg.pairing.snapshot.orphanExits == 0)
    }
}

/// splitmix64: a small deterministic generator for the tests' random traces.
struct SplitMix {
    var state: UInt64
    init(_ seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
