import Foundation
import KVMExits
import KVMSources
import Synchronization
import TestSupport
import Testing

extension SplitMix64 {
    /// Uniform in [0, 1).
    mutating func unit() -> Double { Double(next() >> 11) * 0x1p-53 }
}

/// A flag shared between test tasks.
final class HistTestDoneFlag: Sendable {
    private let flag = Atomic<Bool>(false)
    var isSet: Bool { flag.load(ordering: .acquiring) }
    func set() { flag.store(true, ordering: .releasing) }
}

enum HistTestSamples {
    /// Log-uniform from 10 ns to 100 s.
    static func logUniform(seed: UInt64, count: Int) -> [UInt64] {
        var rng = SplitMix64(seed: seed)
        let lo = log(10.0), hi = log(100e9)
        return (0..<count).map { _ in Swift.min(UInt64(exp(lo + rng.unit() * (hi - lo))), 100_000_000_000) }
    }

    /// 90 % fast exits around 300–900 ns, 10 % slow ones around 20–200 µs.
    static func bimodal(seed: UInt64, count: Int) -> [UInt64] {
        var rng = SplitMix64(seed: seed)
        return (0..<count).map { _ in
            rng.next() % 10 == 0 ? 20_000 + rng.next() % 180_000 : 300 + rng.next() % 600
        }
    }

    static func histogram(_ values: [UInt64]) -> LatencyHistogram {
        let h = LatencyHistogram()
        for v in values { h.record(v) }
        return h
    }
}

@Suite("LatencyHistogram")
struct LatencyHistogramTests {
    static let sampleSets: [(name: String, values: [UInt64])] =
        [1, 2, 3, 4, 5].map { ("log-uniform seed \($0)", HistTestSamples.logUniform(seed: $0, count: 100_000)) }
        + [11, 12].map { ("bimodal seed \($0)", HistTestSamples.bimodal(seed: $0, count: 100_000)) }
        + [("log-uniform small", HistTestSamples.logUniform(seed: 99, count: 1_000)),
           ("bimodal small", HistTestSamples.bimodal(seed: 98, count: 333))]

    @Test("percentiles within 1 %, count/sum/min/max exact, mean and stddev accurate",
          arguments: 0..<sampleSets.count)
    func property(_ set: Int) {
        let (name, values) = Self.sampleSets[set]
        let s = HistTestSamples.histogram(values).snapshot()
        let sorted = values.sorted()
        let n = UInt64(values.count)

        #expect(s.count == n, "\(name)")
        #expect(s.sum == values.reduce(0, +), "\(name)")
        #expect(s.min == sorted.first!, "\(name)")
        #expect(s.max == sorted.last!, "\(name)")
        #expect(s.percentile(0) == sorted.first!, "\(name)")
        #expect(s.percentile(100) == sorted.last!, "\(name)")
        #expect(s.overflowCount == 0)

        // Nearest rank in per-mille, integer arithmetic: element ⌈pm·n/1000⌉ − 1 of the sorted samples.
        for perMille: UInt64 in [500, 900, 990, 999] {
            let rank = (perMille * n + 999) / 1000
            let exact = sorted[Int(rank) - 1]
            let p = Double(perMille) / 10
            #expect(HistogramSnapshot.rank(forPercentile: p, count: n) == rank, "\(name) p\(p)")
            let got = s.percentile(p)
            let relative = abs(Double(got) - Double(exact)) / Double(exact)
            #expect(relative <= 0.01, "\(name) p\(p): got \(got), exact \(exact)")
            #expect(relative <= 1.0 / 128, "\(name) p\(p): got \(got), exact \(exact) (layout bound)")
        }

        let exactMean = Double(values.reduce(0, +)) / Double(n)
        #expect(abs(s.mean - exactMean) <= 1e-9 * exactMean, "\(name)")
        let m = values.reduce(0.0) { $0 + Double($1) } / Double(n)
        let exactStddev = (values.reduce(0.0) { $0 + (Double($1) - m) * (Double($1) - m) } / Double(n)).squareRoot()
        #expect(abs(s.stddev - exactStddev) <= 1e-6 * exactStddev, "\(name): \(s.stddev) vs \(exactStddev)")
        let exactSquares = values.reduce(0.0) { $0 + Double($1) * Double($1) }
        #expect(abs(s.sumOfSquares - exactSquares) <= 1e-9 * exactSquares, "\(name)")
    }

    @Test func mergingDisjointHalvesEqualsWhole() {
        for (_, values) in Self.sampleSets {
            let half = values.count / 2
            let a = HistTestSamples.histogram(Array(values[..<half])).snapshot()
            let b = HistTestSamples.histogram(Array(values[half...])).snapshot()
            let whole = HistTestSamples.histogram(values).snapshot()
            var merged = a
            merged.merge(b)
            #expect(merged == whole)
            #expect(b + a == whole)
            #expect(a + HistogramSnapshot() == a)
            #expect(HistogramSnapshot() + a == a)
            #expect(HistogramSnapshot(recording: values) == whole)
        }
        // Interleaved (odd/even) split too, including overflow values and 0.
        let values: [UInt64] = [0, 5, 1_000, 200_000_000_000, .max, 77, 100_000_000_000, 100_000_000_001]
        let odd = values.enumerated().filter { $0.offset % 2 == 1 }.map(\.element)
        let even = values.enumerated().filter { $0.offset % 2 == 0 }.map(\.element)
        let merged = HistTestSamples.histogram(odd).snapshot() + HistTestSamples.histogram(even).snapshot()
        #expect(merged == HistTestSamples.histogram(values).snapshot())
        #expect(merged.overflowCount == 3)
        #expect(merged.min == 0 && merged.max == .max)
    }

    @Test func bucketBoundaries() {
        var sweep: [UInt64] = [0, 1, 2, 9, 10, 11, 63, 64, 65, 127, 128, 129, 1_000, 999_999,
                               99_999_999_999, 100_000_000_000, 100_000_000_001, .max - 1, .max]
        for k: UInt64 in 0..<64 {
            let p = UInt64(1) << k
            sweep += [p - 1, p, p + 1]
        }
        var rng = SplitMix64(seed: 7)
        for _ in 0..<100_000 { sweep.append(rng.next() >> (rng.next() % 64)) }
        sweep.sort()

        var previous = -1
        for v in sweep {
            let i = HistogramSnapshot.bucketIndex(for: v)
            #expect(i >= 0 && i < HistogramSnapshot.bucketCount)
            #expect(HistogramSnapshot.lowerBound(ofBucket: i) <= v, "\(v)")
            #expect(v <= HistogramSnapshot.upperBound(ofBucket: i), "\(v)")
            #expect(i >= previous, "index not monotonic at \(v)")
            #expect((v > HistogramSnapshot.maxTrackable) == (i == HistogramSnapshot.overflowBucket), "\(v)")
            previous = i
        }
        #expect(HistogramSnapshot.bucketIndex(for: 100_000_000_000) == HistogramSnapshot.overflowBucket - 1)
        #expect(HistogramSnapshot.bucketIndex(for: .max) == HistogramSnapshot.bucketCount - 1)
        for v: UInt64 in 0..<128 { #expect(HistogramSnapshot.bucketIndex(for: v) == Int(v)) }
    }

    @Test func bucketsTileTheRangeWithinResolution() {
        #expect(HistogramSnapshot.lowerBound(ofBucket: 0) == 0)
        #expect(HistogramSnapshot.upperBound(ofBucket: HistogramSnapshot.bucketCount - 1) == .max)
        for i in 0..<HistogramSnapshot.bucketCount {
            let lo = HistogramSnapshot.lowerBound(ofBucket: i)
            let hi = HistogramSnapshot.upperBound(ofBucket: i)
            #expect(lo <= hi)
            if i > 0 { #expect(lo == HistogramSnapshot.upperBound(ofBucket: i - 1) + 1, "gap before \(i)") }
            #expect(HistogramSnapshot.bucketIndex(for: lo) == i)
            #expect(HistogramSnapshot.bucketIndex(for: hi) == i)
            if i < HistogramSnapshot.overflowBucket {
                // Width at most lower/64: the midpoint is within 1/128 of every value of the bucket.
                #expect((hi - lo + 1) * 64 <= Swift.max(lo, 64), "bucket \(i) [\(lo), \(hi)] too wide")
                let mid = HistogramSnapshot.representative(ofBucket: i)
                if lo > 0 {
                    #expect(Double(mid - lo) / Double(lo) <= 1.0 / 128)
                    #expect(Double(hi - mid) / Double(hi) <= 1.0 / 128)
                }
            }
        }
    }

    /// Snapshots are sparse: only the non-empty buckets, ascending; merging and subtracting them equals the
    /// dense arithmetic.
    @Test func snapshotsHoldOnlyNonEmptyBuckets() {
        let h = LatencyHistogram()
        let values: [UInt64] = [5, 5, 700, 701, 1_000_000, 200_000_000_000]
        for v in values { h.record(v) }
        let s = h.snapshot()
        // 5: exact; 700 and 701: 3·64 + (700 >> 3) = 279; 10⁶: 13·64 + (10⁶ >> 13) = 954; 200 s: overflow.
        #expect(s.bucketIndices == [5, 279, 954, 2_014])
        #expect(s.counts == [2, 2, 1, 1])
        #expect(s.overflowCount == 1)
        #expect(s == HistogramSnapshot(recording: values))
        var dense = [UInt64](repeating: 0, count: HistogramSnapshot.bucketCount)
        for v in values { dense[HistogramSnapshot.bucketIndex(for: v)] += 1 }
        #expect(s.bucketCounts == dense)
        let more = HistogramSnapshot(recording: [5, 900, 1_000_000])
        let merged = s + more
        #expect(merged.bucketIndices == [5, 279, 304, 954, 2_014])  // 900: 3·64 + 112
        #expect(merged.counts == [3, 2, 1, 2, 1])
        #expect(merged.subtracting(s).bucketIndices == [5, 304, 954])
        #expect(merged.subtracting(s).counts == [1, 1, 1])
        #expect(LatencyHistogram().snapshot().bucketIndices.isEmpty)
    }

    @Test func emptyAndSmallSnapshots() {
        let empty = LatencyHistogram().snapshot()
        #expect(empty.isEmpty && empty.count == 0)
        #expect(empty == HistogramSnapshot())
        #expect(empty.min == 0 && empty.max == 0 && empty.sum == 0)
        #expect(empty.percentile(0) == 0 && empty.percentile(50) == 0 && empty.percentile(100) == 0)
        #expect(empty.mean == 0 && empty.stddev == 0)
        #expect(empty.nonEmptyBuckets().isEmpty)

        let h = LatencyHistogram()
        for v: UInt64 in [10, 10, 20, 1_000_000, 300_000_000_000] { h.record(v) }
        let s = h.snapshot()
        #expect(h.count == 5 && s.count == 5)
        #expect(s.min == 10 && s.max == 300_000_000_000)
        #expect(s.percentile(40) == 10)  // rank 2
        #expect(s.percentile(60) == 20)  // rank 3
        #expect(s.percentile(100) == 300_000_000_000)
        #expect(s.percentile(99) == 300_000_000_000)  // overflow bucket: clamped to the exact max
        #expect(s.overflowCount == 1)
        let squares: UInt128 = 200 + 400 + 1_000_000_000_000 + 90_000_000_000_000_000_000_000
        #expect(s.exactSumOfSquares == squares)
        let buckets = s.nonEmptyBuckets()
        #expect(buckets.map(\.count) == [2, 1, 1, 1])
        #expect(buckets.map(\.lower) == [10, 20, HistogramSnapshot.lowerBound(
            ofBucket: HistogramSnapshot.bucketIndex(for: 1_000_000)), 100_000_000_001])
        #expect(buckets.last!.upper == .max)
        #expect(buckets.allSatisfy { $0.lower <= $0.upper })
    }

    @Test func squareSumCarriesAcrossWords() {
        // Values ≥ 2^32 have squares with a non-zero high word; many of them carry the low word too.
        let values: [UInt64] = Array(repeating: 99_000_000_000, count: 1_000) + [.max, .max, 5]
        let s = HistTestSamples.histogram(values).snapshot()
        var exact: UInt128 = 0
        for v in values { exact &+= UInt128(v) * UInt128(v) }
        #expect(s.exactSumOfSquares == exact)
        #expect(s == HistogramSnapshot(recording: values))
    }

    @Test func rankForPercentile() {
        #expect(HistogramSnapshot.rank(forPercentile: 99.9, count: 1_000) == 999)
        #expect(HistogramSnapshot.rank(forPercentile: 99.9, count: 1_001) == 1_000)
        #expect(HistogramSnapshot.rank(forPercentile: 50, count: 3) == 2)
        #expect(HistogramSnapshot.rank(forPercentile: 0, count: 3) == 1)
        #expect(HistogramSnapshot.rank(forPercentile: 100, count: 3) == 3)
        #expect(HistogramSnapshot.rank(forPercentile: 0.0001, count: 3) == 1)
        #expect(HistogramSnapshot.rank(forPercentile: 50, count: 0) == 0)
    }

    @Test func concurrentSnapshotsWhileWriting() {
        let total = 1_000_000
        var rng = SplitMix64(seed: 1234)
        let values = (0..<total).map { _ in 50 + rng.next() % 5_000_000 }
        let h = LatencyHistogram()
        let done = HistTestDoneFlag()

        // (snapshots, monotonic, consistent) from the reader; the writer returns nil.
        let results = onThreads([{ @Sendable () -> (Int, Bool, Bool)? in
            var last: HistogramSnapshot? = nil
            var snapshots = 0
            var monotonic = true
            var consistent = true
            while !done.isSet || snapshots < 10 {
                let s = h.snapshot()
                if let last {
                    if s.count < last.count { monotonic = false }
                    for i in 0..<HistogramSnapshot.bucketCount where s.bucketCounts[i] < last.bucketCounts[i] {
                        monotonic = false
                    }
                }
                if s.count > 0 && !(s.min <= s.percentile(50) && s.percentile(50) <= s.max) { consistent = false }
                last = s
                snapshots += 1
            }
            return (snapshots, monotonic, consistent)
        }, { @Sendable () -> (Int, Bool, Bool)? in
            for v in values { h.record(v) }
            done.set()
            return nil
        }])
        let result = results[0]!
        let (snapshots, monotonic, consistent) = result
        #expect(monotonic)
        #expect(consistent)
        #expect(snapshots >= 10)
        #expect(h.snapshot() == HistogramSnapshot(recording: values))
        #expect(h.snapshot().count == UInt64(total))
    }
}
