import Synchronization

/// A log-linear (HDR-style) histogram of nanosecond latencies, written by one thread and read by any.
///
/// - Resolution: ≤ 1/128 (0.78 %) relative error from 128 ns to 100 s, exact below 128 ns; values above 100 s
///   land in an overflow bucket (see ``HistogramSnapshot`` for the layout).
/// - Memory: fixed, allocated once in `init` inside the object: 2015 bucket counters (16,120 bytes) plus
///   8 words of statistics and range bits, about 16.2 KB per histogram. ``record(_:)`` never allocates.
///
/// ## Single-writer rule
///
/// Exactly one thread at a time may call ``record(_:)`` (the thread owning the histogram, e.g. the pairer of
/// one vCPU thread's exits). `count`, `sum`, `min`, `max` and the sum of squares are updated with plain atomic
/// loads and stores, not read-modify-writes, so two concurrent writers would lose updates. Handing the
/// histogram to another writer needs a happens-before edge (a lock, a join, an `await`) between the two.
/// Any number of threads may call ``snapshot()`` at any time, without stopping the writer.
///
/// ## Memory orderings
///
/// Writer, per value: (1) statistics with relaxed stores; the square sum's low word with a *releasing* store
/// (see below); (2) the bucket with one relaxed `singleWriterAdd` (load + store, no locked RMW); (3) `count`
/// with a releasing store.
/// Reader: buckets with relaxed loads, then `count` with an acquiring load, then the statistics.
///
/// - Each counter is monotonic and read-read coherent, so successive snapshots taken by one thread never see
///   a bucket (hence a snapshot's count, the bucket sum) go backwards.
/// - Once the writer has stopped and the reader is ordered after it (join, `await`, lock), a snapshot is exact.
/// - During writing, a snapshot's buckets and statistics may disagree by the few values in flight: on x86-64
///   (TSO, stores become visible in program order) the statistics cover every value visible in the buckets, so
///   `min`/`max` bracket the buckets; on weaker hardware that is only likely. The snapshot's `count` is the sum
///   of the buckets it read, so its percentiles are self-consistent.
/// - The exact 128-bit sum of squares spans three words: `sqLo` and two copies of the high word. The writer
///   only touches the high words when the low word carries (or a value ≥ 2^32 ns has a non-zero square high
///   word): it stores `sqHiA`, then `sqLo` (releasing), then `sqHiB` (releasing). The reader loads `sqHiB`,
///   `sqLo`, `sqHiA` (acquiring) and retries until both high copies agree, a one-word seqlock that costs the
///   writer nothing in the common case.
public final class LatencyHistogram: Sendable {
    // Statistics first, so they share the object's first cache lines.
    @usableFromInline let _count = Atomic<UInt64>(0)
    @usableFromInline let _sum = Atomic<UInt64>(0)
    @usableFromInline let _min = Atomic<UInt64>(.max)
    @usableFromInline let _max = Atomic<UInt64>(0)
    @usableFromInline let _sqLo = Atomic<UInt64>(0)
    @usableFromInline let _sqHiA = Atomic<UInt64>(0)
    @usableFromInline let _sqHiB = Atomic<UInt64>(0)
    /// Bit k set: some bucket in 64k ..< 64(k + 1) has been written (32 ranges of 64 buckets). Lets a snapshot
    /// read only the ranges in use. Set by the writer before the bucket's add; never cleared.
    @usableFromInline let _ranges = Atomic<UInt64>(0)
    /// Non-cumulative bucket counts, stored inline in the object (no second allocation, no indirection).
    @usableFromInline let _buckets: InlineArray<2015, Atomic<UInt64>>

    public init() {
        _buckets = InlineArray { _ in Atomic<UInt64>(0) }
        precondition(_buckets.count == HistogramSnapshot.bucketCount, "bucket storage does not match the layout")
    }

    /// Records one latency, ns. Single writer only (see the type's documentation). No allocation, one relaxed
    /// atomic read-modify-write (the bucket); everything else is plain loads and stores.
    @inlinable
    public func record(_ ns: UInt64) {
        // (1) Statistics. Single writer: load + store is enough and avoids locked instructions.
        _sum.store(_sum.load(ordering: .relaxed) &+ ns, ordering: .relaxed)
        if ns < _min.load(ordering: .relaxed) { _min.store(ns, ordering: .relaxed) }
        if ns > _max.load(ordering: .relaxed) { _max.store(ns, ordering: .relaxed) }
        let square = ns.multipliedFullWidth(by: ns)
        let (lo, carry) = _sqLo.load(ordering: .relaxed).addingReportingOverflow(square.low)
        let hiDelta = square.high &+ (carry ? 1 : 0)
        if _fastPath(hiDelta == 0) {
            // Releasing: a reader that sees this low word sees the high words stored before it.
            _sqLo.store(lo, ordering: .releasing)
        } else {
            _addSquareHigh(hiDelta, low: lo)
        }
        // (2) The bucket: the one read-modify-write. Relaxed: it orders nothing, readers only need atomicity.
        //     Its range's bit first (a load, and a store the first time only): a reader that sees the bucket's
        //     count without the bit skips it this time, and sees it next time.
        let b = HistogramSnapshot.bucketIndex(for: ns)
        let ranges = _ranges.load(ordering: .relaxed)
        let bit = UInt64(1) &<< UInt64(b &>> 6)
        if ranges & bit == 0 { _ranges.store(ranges | bit, ordering: .relaxed) }
        _buckets[b].singleWriterAdd(1)
        // (3) Publish: a reader acquiring this count sees all of this value's statistics and bucket.
        _count.store(_count.load(ordering: .relaxed) &+ 1, ordering: .releasing)
    }

    /// The rare path of the square sum: the high word changes. See "Memory orderings".
    @usableFromInline @inline(never)
    func _addSquareHigh(_ delta: UInt64, low: UInt64) {
        let hi = _sqHiA.load(ordering: .relaxed) &+ delta
        _sqHiA.store(hi, ordering: .relaxed)
        _sqLo.store(low, ordering: .releasing)  // orders the sqHiA store before it
        _sqHiB.store(hi, ordering: .releasing)  // orders the sqLo store before it
    }

    /// Values recorded so far (a cheap single load; may trail a concurrent ``snapshot()`` by values in flight).
    public var count: UInt64 { _count.load(ordering: .acquiring) }

    /// A copy of the histogram, taken without stopping the writer (see "Memory orderings"): sparse, reading
    /// only the 64-bucket ranges in use, so its cost follows the spread of the values, not the 2015 buckets.
    public func snapshot() -> HistogramSnapshot {
        var indices: [UInt16] = []
        var counts: [UInt64] = []
        var ranges = _ranges.load(ordering: .relaxed)
        while ranges != 0 {
            let r = ranges.trailingZeroBitCount
            ranges &= ranges - 1
            for i in (r << 6)..<Swift.min((r + 1) << 6, HistogramSnapshot.bucketCount) {
                let c = _buckets[i].load(ordering: .relaxed)
                if c > 0 {
                    indices.append(UInt16(i))
                    counts.append(c)
                }
            }
        }
        _ = _count.load(ordering: .acquiring)
        let sum = _sum.load(ordering: .relaxed)
        let mn = _min.load(ordering: .relaxed)
        let mx = _max.load(ordering: .relaxed)
        var sumOfSquares: UInt128
        while true {
            let hiB = _sqHiB.load(ordering: .acquiring)
            let lo = _sqLo.load(ordering: .acquiring)
            let hiA = _sqHiA.load(ordering: .relaxed)
            if hiA == hiB {
                sumOfSquares = UInt128(hiA) << 64 | UInt128(lo)
                break
            }
        }
        return HistogramSnapshot(indices: indices, counts: counts, sum: sum, min: Swift.min(mn, mx), max: mx,
                                 sumOfSquares: sumOfSquares)
    }
}
