/// A copy of a ``LatencyHistogram``, or any sum of such copies: mergeable exactly, queried for percentiles.
///
/// ## Bucket layout (log-linear, HDR-style)
///
/// With `S = 6` sub-bucket bits (64 linear sub-buckets per power of two):
///
/// - values `0 ..< 128` each get their own bucket (index = value: exact);
/// - a value `v ≥ 128` with `e = ⌊log₂ v⌋` goes to bucket `(e − 5) · 64 + (v >> (e − 6))`, one of the 64
///   equal-width buckets splitting `[2^e, 2^(e+1))`. A bucket's width is at most 1/64 of its lower bound, so
///   its midpoint is within 1/128 (0.78 %) of any value in it;
/// - the regular buckets end with the one holding 100 s (`maxTrackable`, index 2013), whose upper bound is cut
///   to exactly 100 s; every larger value goes to the **overflow** bucket (index 2014,
///   `[maxTrackable + 1, UInt64.max]`), counted in ``overflowCount``.
///
/// That is ``bucketCount`` = 2015 buckets (a ``LatencyHistogram`` allocates them 64 at a time, as used). A
/// snapshot is sparse: it holds only the non-empty buckets (index and count, ascending), so copying, merging
/// and rendering one costs what it holds — a vCPU thread's exits of one reason typically fill a few dozen.
///
/// ## Exactness
///
/// `count`, `sum`, `min`, `max` and the sum of squares (kept as an exact `UInt128`) are integers, so merging is
/// exact and associative: `a + b == b + a`, and merging snapshots of histograms fed disjoint parts of a stream
/// is `==` to the snapshot of one histogram fed the whole stream.
public struct HistogramSnapshot: Sendable, Equatable {
    // MARK: Layout constants (computed properties, not `static let`: no lazy-global check on the hot path)

    /// Sub-bucket bits: 2^6 = 64 linear buckets per power of two.
    @inlinable public static var subBucketBits: Int { 6 }
    /// The largest value with a relative-error guarantee: 100 s in ns. Larger values count as overflow.
    @inlinable public static var maxTrackable: UInt64 { 100_000_000_000 }
    /// Index of the overflow bucket (the last one): values above ``maxTrackable``.
    @inlinable public static var overflowBucket: Int { 2014 }
    /// Number of buckets, the overflow bucket included.
    @inlinable public static var bucketCount: Int { 2015 }

    /// The bucket of a value in ns. Branch-free apart from the overflow select: one leading-zero count, a shift
    /// and an add; no loop, no floating point.
    @inlinable @inline(__always)
    public static func bucketIndex(for ns: UInt64) -> Int {
        // shift = max(⌊log₂ ns⌋, 6) − 6: OR-ing in bit 6 makes values below 128 use shift 0 (exact buckets).
        let shift = 57 &- (ns | 64).leadingZeroBitCount
        // For ns ≥ 128, ns >> shift is in [64, 128): 64 sub-buckets per octave, octaves laid end to end.
        let index = (shift &<< 6) &+ Int(truncatingIfNeeded: ns &>> UInt64(truncatingIfNeeded: shift))
        return ns > maxTrackable ? overflowBucket : index
    }

    /// The smallest value that lands in bucket `i`.
    @inlinable
    public static func lowerBound(ofBucket i: Int) -> UInt64 {
        precondition(i >= 0 && i < bucketCount, "bucket index out of range")
        if i == overflowBucket { return maxTrackable + 1 }
        let shift = Swift.max(i >> 6, 1) - 1
        let mantissa = UInt64(i - (shift << 6))
        return mantissa << UInt64(shift)
    }

    /// The largest value that lands in bucket `i` (inclusive).
    @inlinable
    public static func upperBound(ofBucket i: Int) -> UInt64 {
        precondition(i >= 0 && i < bucketCount, "bucket index out of range")
        if i == overflowBucket { return .max }
        if i == overflowBucket - 1 { return maxTrackable }
        let shift = Swift.max(i >> 6, 1) - 1
        let mantissa = UInt64(i - (shift << 6))
        return ((mantissa + 1) << UInt64(shift)) - 1
    }

    /// The value reported for a rank falling in bucket `i` (before clamping into `[min, max]`): its midpoint,
    /// within 1/128 of every value of the bucket relative to that value.
    @inlinable
    public static func representative(ofBucket i: Int) -> UInt64 {
        let lo = lowerBound(ofBucket: i)
        let hi = upperBound(ofBucket: i)
        return lo + (hi - lo) / 2
    }

    // MARK: Contents

    /// Indices of the non-empty buckets, ascending (sparse: no zero counts are stored).
    public private(set) var bucketIndices: [UInt16]
    /// Count of each bucket in ``bucketIndices`` (all > 0).
    public private(set) var counts: [UInt64]
    /// Number of values (the sum of the bucket counts).
    public private(set) var count: UInt64
    /// Sum of the values, ns (wrapping after 584 years of total latency).
    public private(set) var sum: UInt64
    /// Smallest value; 0 when empty.
    public private(set) var min: UInt64
    /// Largest value (exact, even in overflow); 0 when empty.
    public private(set) var max: UInt64
    /// Sum of the squared values, exact, ns².
    public private(set) var exactSumOfSquares: UInt128

    /// Non-cumulative count per bucket, dense: always ``bucketCount`` entries (built on each call).
    public var bucketCounts: [UInt64] {
        var out = [UInt64](repeating: 0, count: Self.bucketCount)
        for (i, c) in zip(bucketIndices, counts) { out[Int(i)] = c }
        return out
    }

    /// An empty snapshot.
    public init() {
        bucketIndices = []
        counts = []
        count = 0
        sum = 0
        min = 0
        max = 0
        exactSumOfSquares = 0
    }

    /// A snapshot of `values`, as a ``LatencyHistogram`` fed them would give.
    public init<S: Sequence<UInt64>>(recording values: S) {
        var dense = [UInt64](repeating: 0, count: Self.bucketCount)
        var n: UInt64 = 0
        var sum: UInt64 = 0
        var mn = UInt64.max
        var mx: UInt64 = 0
        var sq: UInt128 = 0
        for v in values {
            dense[Self.bucketIndex(for: v)] += 1
            n += 1
            sum &+= v
            mn = Swift.min(mn, v)
            mx = Swift.max(mx, v)
            let p = v.multipliedFullWidth(by: v)
            sq &+= UInt128(p.high) << 64 | UInt128(p.low)
        }
        self.init(bucketCounts: dense, sum: sum, min: mn, max: mx, sumOfSquares: sq)
    }

    /// Assembles a snapshot from dense counts (``bucketCount`` entries); `count` is their sum.
    init(bucketCounts: [UInt64], sum: UInt64, min: UInt64, max: UInt64, sumOfSquares: UInt128) {
        precondition(bucketCounts.count == Self.bucketCount)
        var indices: [UInt16] = []
        var counts: [UInt64] = []
        for (i, c) in bucketCounts.enumerated() where c > 0 {
            indices.append(UInt16(i))
            counts.append(c)
        }
        self.init(indices: indices, counts: counts, sum: sum, min: min, max: max, sumOfSquares: sumOfSquares)
    }

    /// Assembles a snapshot from sparse buckets (ascending indices, counts > 0); `count` is their sum.
    init(indices: [UInt16], counts: [UInt64], sum: UInt64, min: UInt64, max: UInt64, sumOfSquares: UInt128) {
        var n: UInt64 = 0
        for c in counts { n &+= c }
        bucketIndices = indices
        self.counts = counts
        count = n
        self.sum = sum
        self.min = n == 0 ? 0 : min
        self.max = n == 0 ? 0 : max
        exactSumOfSquares = sumOfSquares
    }

    /// Adds one value (for building snapshots without a ``LatencyHistogram``; not thread-safe). Cost ∝ the
    /// non-empty buckets (an insertion in a sorted list).
    public mutating func record(_ ns: UInt64) {
        let b = UInt16(Self.bucketIndex(for: ns))
        var lo = 0
        var hi = bucketIndices.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if bucketIndices[mid] < b { lo = mid + 1 } else { hi = mid }
        }
        if lo < bucketIndices.count && bucketIndices[lo] == b {
            counts[lo] += 1
        } else {
            bucketIndices.insert(b, at: lo)
            counts.insert(1, at: lo)
        }
        min = count == 0 ? ns : Swift.min(min, ns)
        max = count == 0 ? ns : Swift.max(max, ns)
        count += 1
        sum &+= ns
        let sq = ns.multipliedFullWidth(by: ns)
        exactSumOfSquares &+= UInt128(sq.high) << 64 | UInt128(sq.low)
    }

    // MARK: Derived values

    public var isEmpty: Bool { count == 0 }

    /// Values above ``maxTrackable`` (100 s); they are in the last bucket and their percentiles are only
    /// bounded by ``max``.
    public var overflowCount: UInt64 {
        bucketIndices.last == UInt16(Self.overflowBucket) ? counts[counts.count - 1] : 0
    }

    /// Sum of squared values, ns², as a `Double`.
    public var sumOfSquares: Double { Double(exactSumOfSquares) }

    /// Arithmetic mean, ns; 0 when empty.
    public var mean: Double { count == 0 ? 0 : Double(sum) / Double(count) }

    /// Population standard deviation, ns; 0 when empty.
    public var stddev: Double {
        guard count > 0 else { return 0 }
        // n·Σx² − (Σx)² is exact in UInt128 unless n·Σx² overflows (≈ 10^38), then fall back to doubles.
        let n = UInt128(count)
        let s = UInt128(sum)
        let (nsq, overflow) = n.multipliedReportingOverflow(by: exactSumOfSquares)
        if !overflow {
            let s2 = s * s
            guard nsq > s2 else { return 0 }
            return (Double(nsq - s2) / (Double(count) * Double(count))).squareRoot()
        }
        let m = mean
        return Swift.max(0, sumOfSquares / Double(count) - m * m).squareRoot()
    }

    /// The nearest rank of percentile `p` among `count` values: ⌈p/100 · count⌉, clamped into `1...count`.
    /// Products within a relative 1e-12 of an integer count as that integer, so that p = 99.9 of 1000 values is
    /// rank 999 although 99.9/100·1000 is 999.0000000000001 in doubles.
    public static func rank(forPercentile p: Double, count: UInt64) -> UInt64 {
        guard count > 0 else { return 0 }
        guard p > 0 else { return 1 }
        guard p < 100 else { return count }
        let x = p / 100 * Double(count)
        let nearest = x.rounded()
        let r = Swift.abs(x - nearest) <= nearest * 1e-12 ? nearest : x.rounded(.up)
        return Swift.min(Swift.max(UInt64(r), 1), count)
    }

    /// The value at percentile `p` (0...100): a value of the bucket holding the nearest rank ⌈p/100 · count⌉,
    /// clamped into `[min, max]`. Within 1/128 relative of the exact nearest-rank percentile for values up to
    /// 100 s; p ≤ 0 gives `min` and p ≥ 100 gives `max` exactly. 0 when empty.
    public func percentile(_ p: Double) -> UInt64 {
        guard count > 0 else { return 0 }
        guard p > 0 else { return min }  // also NaN
        guard p < 100 else { return max }
        let rank = Self.rank(forPercentile: p, count: count)
        var cumulative: UInt64 = 0
        for (i, c) in zip(bucketIndices, counts) {
            cumulative += c
            if cumulative >= rank {
                return Swift.min(Swift.max(Self.representative(ofBucket: Int(i)), min), max)
            }
        }
        return max
    }

    /// The buckets holding values, ascending: inclusive bounds and count (for Prometheus buckets, heatmaps).
    public func nonEmptyBuckets() -> [(lower: UInt64, upper: UInt64, count: UInt64)] {
        var out: [(lower: UInt64, upper: UInt64, count: UInt64)] = []
        out.reserveCapacity(counts.count)
        for (i, c) in zip(bucketIndices, counts) {
            out.append((Self.lowerBound(ofBucket: Int(i)), Self.upperBound(ofBucket: Int(i)), c))
        }
        return out
    }

    // MARK: Merging

    /// Adds `other` into this snapshot, exactly. Cost ∝ the non-empty buckets of both.
    public mutating func merge(_ other: HistogramSnapshot) {
        guard other.count > 0 else { return }
        if count == 0 {
            self = other
            return
        }
        var indices: [UInt16] = []
        var merged: [UInt64] = []
        indices.reserveCapacity(bucketIndices.count + other.bucketIndices.count)
        merged.reserveCapacity(indices.capacity)
        var a = 0
        var b = 0
        while a < bucketIndices.count || b < other.bucketIndices.count {
            let ia = a < bucketIndices.count ? bucketIndices[a] : .max
            let ib = b < other.bucketIndices.count ? other.bucketIndices[b] : .max
            if ia == ib {
                indices.append(ia)
                merged.append(counts[a] + other.counts[b])
                a += 1
                b += 1
            } else if ia < ib {
                indices.append(ia)
                merged.append(counts[a])
                a += 1
            } else {
                indices.append(ib)
                merged.append(other.counts[b])
                b += 1
            }
        }
        bucketIndices = indices
        counts = merged
        count += other.count
        sum &+= other.sum
        min = Swift.min(min, other.min)
        max = Swift.max(max, other.max)
        exactSumOfSquares &+= other.exactSumOfSquares
    }

    public static func + (a: HistogramSnapshot, b: HistogramSnapshot) -> HistogramSnapshot {
        var r = a
        r.merge(b)
        return r
    }
}
