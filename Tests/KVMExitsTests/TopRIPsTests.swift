import KVMExits
import KVMSources
import Synchronization
import TestSupport
import Testing

@Suite("TopRIPs")
struct TopRIPsTests {
    static let a: UInt64 = 0xFFFF_FFFF_8100_0010
    static let b: UInt64 = 0xFFFF_FFFF_8100_0020
    static let c: UInt64 = 0x0000_7F00_0000_1234

    /// A 5000×, B 3000×, C 1000×, plus 2000 distinct singletons, shuffled with a seeded Fisher–Yates.
    static func heavyHitterStream(seed: UInt64) -> [UInt64] {
        var stream = Array(repeating: a, count: 5_000) + Array(repeating: b, count: 3_000)
            + Array(repeating: c, count: 1_000) + (0..<2_000).map { 0x1000 + UInt64($0) * 3 }
        var rng = SplitMix64(seed: seed)
        for i in stride(from: stream.count - 1, to: 0, by: -1) {
            stream.swapAt(i, Int(rng.next() % UInt64(i + 1)))
        }
        return stream
    }

    @Test("heavy hitters first, true counts within the space-saving bounds", arguments: [1, 2, 3] as [UInt64])
    func heavyHitters(seed: UInt64) {
        let stream = Self.heavyHitterStream(seed: seed)
        var truth: [UInt64: UInt64] = [:]
        for r in stream { truth[r, default: 0] += 1 }
        let top = TopRIPs(capacity: 16)
        for r in stream { top.record(r) }
        let snap = top.snapshot()

        #expect(snap.count == 16)
        #expect(snap.prefix(3).map(\.rip) == [Self.a, Self.b, Self.c])
        for e in snap {
            let t = truth[e.rip] ?? 0
            #expect(e.count >= e.error)
            #expect(e.count - e.error <= t && t <= e.count, "rip \(e.rip): \(e.count) − \(e.error) vs \(t)")
        }
        // Space-saving invariant: once full, the counts sum to the stream length.
        #expect(snap.reduce(0) { $0 + $1.count } == UInt64(stream.count))
        // Sorted by count descending, then RIP ascending.
        for (x, y) in zip(snap, snap.dropFirst()) {
            #expect(x.count > y.count || (x.count == y.count && x.rip < y.rip))
        }
    }

    @Test func exactWhenFewDistinct() {
        let top = TopRIPs(capacity: 16)
        var truth: [UInt64: UInt64] = [:]
        var rng = SplitMix64(seed: 5)
        for _ in 0..<50_000 {
            let rip = 0x4000 + (rng.next() % 16) * 8  // 16 distinct ≤ K
            truth[rip, default: 0] += 1
            top.record(rip)
        }
        top.record(0)  // RIP 0 is a valid RIP, not an empty marker
        truth[0, default: 0] += 1
        let snap = top.snapshot()
        #expect(snap.count == 16)
        // 17 distinct now: only the last one may carry an error; the others stay exact.
        let exact = TopRIPs(capacity: 16)
        for (rip, n) in truth where rip != 0 { for _ in 0..<n { exact.record(rip) } }
        let exactSnap = exact.snapshot()
        #expect(exactSnap.allSatisfy { $0.error == 0 && $0.count == truth[$0.rip] })
        #expect(exactSnap.count == 16)
        let expected = truth.filter { $0.key != 0 }.map { RIPCount(rip: $0.key, count: $0.value) }
            .sorted { $0.count != $1.count ? $0.count > $1.count : $0.rip < $1.rip }
        #expect(exactSnap == expected)
    }

    @Test func smallStreamsAndOrdering() {
        let top = TopRIPs(capacity: 4)
        #expect(top.snapshot().isEmpty)
        for r: UInt64 in [7, 3, 7, 5, 3, 7, 0] { top.record(r) }
        #expect(top.snapshot() == [RIPCount(rip: 7, count: 3), RIPCount(rip: 3, count: 2),
                                   RIPCount(rip: 0, count: 1), RIPCount(rip: 5, count: 1)])
        top.record(9)  // evicts the first slot with the minimum count: 5 (slot 2) has count 1, as has 0 (slot 3)
        #expect(top.snapshot() == [RIPCount(rip: 7, count: 3), RIPCount(rip: 3, count: 2),
                                   RIPCount(rip: 9, count: 2, error: 1), RIPCount(rip: 0, count: 1)])
    }

    @Test func mergeSumsByRIPAndKeepsTheTop() {
        let x = [RIPCount(rip: 1, count: 10), RIPCount(rip: 2, count: 5, error: 1), RIPCount(rip: 3, count: 4)]
        let y = [RIPCount(rip: 2, count: 6, error: 2), RIPCount(rip: 4, count: 9), RIPCount(rip: 5, count: 4)]
        #expect(TopRIPs.merge(x, y, limit: 3) == [RIPCount(rip: 2, count: 11, error: 3), RIPCount(rip: 1, count: 10),
                                                  RIPCount(rip: 4, count: 9)])
        #expect(TopRIPs.merge(x, y, limit: 10).map(\.rip) == [2, 1, 4, 3, 5])
        #expect(TopRIPs.merge(x, [], limit: 10) == x)
        #expect(TopRIPs.merge([], [], limit: 10).isEmpty)
        #expect(TopRIPs.merge(x, y, limit: 0).isEmpty)
        // Merging per-half summaries of a stream keeps the heavy hitters in order.
        let stream = Self.heavyHitterStream(seed: 9)
        let t1 = TopRIPs(capacity: 16), t2 = TopRIPs(capacity: 16)
        for r in stream[..<(stream.count / 2)] { t1.record(r) }
        for r in stream[(stream.count / 2)...] { t2.record(r) }
        let merged = TopRIPs.merge(t1.snapshot(), t2.snapshot(), limit: 10)
        #expect(merged.count == 10)
        #expect(merged.prefix(3).map(\.rip) == [Self.a, Self.b, Self.c])
        #expect(merged.prefix(3).map { $0.count - $0.error }.elementsEqual([5_000, 3_000, 1_000]) { $0 <= $1 })
    }

    @Test func concurrentSnapshotsWhileWriting() {
        let stream = Self.heavyHitterStream(seed: 4) + Self.heavyHitterStream(seed: 6)
        let top = TopRIPs(capacity: 16)
        let done = HistTestDoneFlag()
        let ok = onThreads([{ @Sendable () -> Bool in
            var ok = true
            var rounds = 0
            while !done.isSet || rounds < 10 {
                let s = top.snapshot()
                if Set(s.map(\.rip)).count != s.count || s.contains(where: { $0.count < $0.error }) { ok = false }
                rounds += 1
            }
            return ok
        }, { @Sendable () -> Bool in
            for r in stream { top.record(r) }
            done.set()
            return true
        }])
        #expect(ok == [true, true])
        let reference = TopRIPs(capacity: 16)
        for r in stream { reference.record(r) }
        #expect(top.snapshot() == reference.snapshot())
    }
}
