import Synchronization

/// A log-linear (HDR-style) histogram of nanosecond latencies, written by one thread and read by any.
///
/// - Resolution: ≤ 1/128 (0.78 %) relative error from 128 ns to 100 s, exact below 128 ns; values above 100 s
///   land in an overflow bucket (see ``HistogramSnapshot`` for the layout).
/// - Memory: 7 words of statistics and 32 range pointers in the object; the 2015 bucket counters come in 32
///   ranges of 64 (512 bytes each), each allocated when the first value lands in it. Latencies of one exit
///   reason usually span a few ranges (a range is one power of two of nanoseconds above 128 ns): about 2 KB,
///   16.2 KB at most. ``record(_:)`` allocates only on a range's first value.
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
public final class LatencyHistogram: @unchecked Sendable {
    // Statistics first, so they share the object's first cache lines.
    @usableFromInline let _count = Atomic<UInt64>(0)
    @usableFromInline let _sum = Atomic<UInt64>(0)
    @usableFromInline let _min = Atomic<UInt64>(.max)
    @usableFromInline let _max = Atomic<UInt64>(0)
    @usableFromInline let _sqLo = Atomic<UInt64>(0)
    @usableFromInline let _sqHiA = Atomic<UInt64>(0)
    @usableFromInline let _sqHiB = Atomic<UInt64>(0)
    /// Range k (buckets 64k ..< 64k + 64): its 64 non-cumulative counters, allocated the first time a value
    /// lands in it (published with release), nil until then. Never freed before the histogram.
    @usableFromInline let _ranges: InlineArray<32, Atomic<UnsafeMutablePointer<Atomic<UInt64>>?>>

    public init() {
        _ranges = InlineArray { _ in Atomic(nil) }
        precondition(_ranges.count * 64 >= HistogramSnapshot.bucketCount, "bucket storage does not match the layout")
    }

    deinit {
        for k in 0..<32 {
            guard let p = _ranges[k].load(ordering: .acquiring) else { continue }
            p.deinitialize(count: 64)
            p.deallocate()
        }
    }

    /// The first value in range `k`: its counters, zeroed, published (cold path: at most 32 times per histogram).
    @usableFromInline @inline(never)
    func _allocateRange(_ k: Int) -> UnsafeMutablePointer<Atomic<UInt64>> {
        let p = UnsafeMutablePointer<Atomic<UInt64>>.allocate(capacity: 64)
        for i in 0..<64 { (p + i).initialize(to: Atomic(0)) }
        // Releasing: a reader that loads the pointer (acquiring) sees the zeroed counters.
        _ranges[k].store(p, ordering: .releasing)
        return p
    }

    /// Records one latency, ns. Single writer only (see the type's documentation). No allocation once the
    /// value's range exists; one relaxed atomic read-modify-write (the bucket); everything else is plain loads
    /// and stores.
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
        //     Its range's counters are allocated on the range's first value (cold path, ≤ 32 per histogram).
        let b = HistogramSnapshot.bucketIndex(for: ns)
        let range = _ranges[b &>> 6].load(ordering: .relaxed) ?? _allocateRange(b &>> 6)  // only this thread stores it
        range[b & 63].singleWriterAdd(1)
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
    /// only the ranges allocated, so its cost follows the spread of the values, not the 2015 buckets.
    public func snapshot() -> HistogramSnapshot {
        var indices: [UInt16] = []
        var counts: [UInt64] = []
        for k in 0..<32 {
            guard let range = _ranges[k].load(ordering: .acquiring) else { continue }
            for i in 0..<Swift.min(64, HistogramSnapshot.bucketCount - (k << 6)) {
                let c = range[i].load(ordering: .relaxed)
                if c > 0 {
                    indices.append(UInt16(k << 6 + i))
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
