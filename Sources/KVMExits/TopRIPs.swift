import Synchronization

/// A guest RIP with its (over)estimated count.
public struct RIPCount: Sendable, Equatable, Codable {
    public var rip: UInt64
    /// Estimated occurrences; never below the true count.
    public var count: UInt64
    /// Overestimate bound: the true count is in `count - error ... count`.
    public var error: UInt64

    public init(rip: UInt64, count: UInt64, error: UInt64 = 0) {
        self.rip = rip
        self.count = count
        self.error = error
    }
}

/// The most frequent guest RIPs of a stream, in bounded memory: the space-saving algorithm (Metwally, Agrawal,
/// El Abbadi, 2005) over `capacity` slots.
///
/// ## Algorithm
///
/// Each slot holds a RIP, a count and an error. For each RIP:
/// - if a slot holds it, its count goes up by one;
/// - else if a slot is free, the RIP takes it with count 1, error 0;
/// - else the slot with the smallest count `m` is taken over: RIP replaced, count `m + 1`, error `m`.
///
/// Guarantees, with `N` RIPs recorded and `K` slots: the counts sum to `N`; for every slot
/// `count - error ≤ true count ≤ count`; every RIP occurring more than `N / K` times holds a slot; while at most
/// `K` distinct RIPs have been seen, counts are exact (error 0).
///
/// Cost per record: a linear scan of the used slots' RIPs (contiguous words, K ≤ 64), plus a scan of the counts
/// when a new RIP evicts one. No allocation, no read-modify-write (single writer).
///
/// ## Threads
///
/// One writer (``record(_:)``), any number of readers (``snapshot()``), like ``LatencyHistogram``. The writer
/// fills a slot's error (releasing) and count before its RIP (releasing), and the reader loads the RIP, then
/// the error (both acquiring), then the count, so a reader never pairs a RIP with counts older than its own
/// and never sees a count below its error. A snapshot racing an eviction may pair the evicted RIP with its
/// successor's `m + 1`/`m`, which still satisfies both bounds for the evicted RIP.
///
/// Memory: 3 words per slot (384 bytes at the default 16) in one 64-byte-aligned block, each slot's RIP and count
/// side by side (a record's scan and its count share cache lines), the errors after them; one line before them
/// points back to the object.
public final class TopRIPs: @unchecked Sendable {
    /// The largest capacity.
    public static let maxCapacity = 64

    public let capacity: Int
    @usableFromInline let _used = Atomic<Int>(0)
    /// Slot i: RIP at word 2i, count at 2i + 1, error at 2 × capacity + i.
    @usableFromInline let _words: UnsafeMutablePointer<Atomic<UInt64>>

    /// - Parameter capacity: slots, 1 ... ``maxCapacity``.
    public init(capacity: Int = 16) {
        precondition(capacity >= 1 && capacity <= Self.maxCapacity, "TopRIPs capacity must be in 1...64")
        self.capacity = capacity
        // One line before the slots holds the owner (``_owner(of:)``); the slots start on a line of their own.
        let base = UnsafeMutableRawPointer.allocate(byteCount: 64 + 3 * capacity * MemoryLayout<UInt64>.stride,
                                                    alignment: 64)
            .bindMemory(to: Atomic<UInt64>.self, capacity: 8 + 3 * capacity)
        for i in 0..<8 + 3 * capacity { (base + i).initialize(to: Atomic(0)) }
        _words = base + 8
        _words[-1].store(UInt64(UInt(bitPattern: Unmanaged.passUnretained(self).toOpaque())), ordering: .relaxed)
    }

    deinit {
        let base = _words - 8
        base.deinitialize(count: 8 + 3 * capacity)
        UnsafeMutableRawPointer(base).deallocate()
    }

    /// ``record(_:)`` for a writer that keeps the table's slots (``_words``) and the number in use (as this
    /// writer last left it) beside its own data, as the pairer's reason slots do: a RIP already held costs the
    /// scan and the count of one cache line, not the object's. Single writer only (the one that keeps `used`).
    @inline(__always)
    static func record(_ rip: UInt64, words w: UnsafeMutablePointer<Atomic<UInt64>>, used: inout UInt8) {
        var hit = -1
        for i in 0..<Int(used) where w[2 &* i].load(ordering: .relaxed) == rip { hit = i }
        if hit >= 0 {
            w[2 &* hit &+ 1].store(w[2 &* hit &+ 1].load(ordering: .relaxed) &+ 1, ordering: .relaxed)
            return
        }
        _owner(of: w)._withUnsafeGuaranteedRef { $0._recordNew(rip, used: &used) }
    }

    /// The table whose slots are `words` (its ``_words``).
    static func _owner(of words: UnsafeMutablePointer<Atomic<UInt64>>) -> Unmanaged<TopRIPs> {
        Unmanaged.fromOpaque(UnsafeRawPointer(bitPattern: UInt(words[-1].load(ordering: .relaxed))).unsafelyUnwrapped)
    }

    /// A RIP not held (cold path: a free slot taken or the minimum evicted), then the slots in use now.
    @inline(never)
    func _recordNew(_ rip: UInt64, used: inout UInt8) {
        record(rip)
        used = UInt8(truncatingIfNeeded: _used.load(ordering: .relaxed))
    }

    /// The slots in use as this table's writer left them (the writer's thread only).
    var _writerUsed: UInt8 { UInt8(truncatingIfNeeded: _used.load(ordering: .relaxed)) }

    /// Counts one occurrence of `rip`. Single writer only.
    @inlinable
    public func record(_ rip: UInt64) {
        let used = _used.load(ordering: .relaxed)
        // Hit: bump the count. Relaxed: the RIP is not changing, nothing to order. The scan has no early exit
        // (a conditional move per slot) so that which slot hits costs no branch misprediction.
        var hit = -1
        for i in 0..<used where _words[2 &* i].load(ordering: .relaxed) == rip { hit = i }
        if hit >= 0 {
            _words[2 &* hit &+ 1].store(_words[2 &* hit &+ 1].load(ordering: .relaxed) &+ 1, ordering: .relaxed)
            return
        }
        if used < capacity {
            // Free slot: fill it, then publish it by the releasing store of `used`.
            _words[2 &* used &+ 1].store(1, ordering: .relaxed)
            _words[2 &* capacity &+ used].store(0, ordering: .relaxed)
            _words[2 &* used].store(rip, ordering: .relaxed)
            _used.store(used + 1, ordering: .releasing)
        } else {
            _evictMinimum(for: rip)
        }
    }

    /// Space-saving replacement: the slot with the smallest count (the first such) goes to `rip`.
    @usableFromInline
    func _evictMinimum(for rip: UInt64) {
        var slot = 0
        var minimum = _words[1].load(ordering: .relaxed)
        for i in 1..<capacity {
            let c = _words[2 &* i &+ 1].load(ordering: .relaxed)
            if c < minimum {
                minimum = c
                slot = i
            }
        }
        // Releasing: a reader that sees this error also sees every count stored before it (≥ minimum).
        _words[2 &* capacity &+ slot].store(minimum, ordering: .releasing)
        _words[2 &* slot &+ 1].store(minimum &+ 1, ordering: .relaxed)
        // Releasing: a reader seeing the new RIP sees its count and error.
        _words[2 &* slot].store(rip, ordering: .releasing)
    }

    /// The slots, by count descending then RIP ascending. Callable from any thread while the writer runs.
    public func snapshot() -> [RIPCount] {
        let used = _used.load(ordering: .acquiring)
        var out: [RIPCount] = []
        out.reserveCapacity(used)
        for i in 0..<used {
            let rip = _words[2 &* i].load(ordering: .acquiring)
            // Error before count: a slot's count never goes down (an eviction sets it to the old count + 1)
            // and is never below its error, so a count loaded after the error is at least that error.
            // Count first could pair an old count with the error of a later eviction (count < error).
            let error = _words[2 &* capacity &+ i].load(ordering: .acquiring)
            let count = _words[2 &* i &+ 1].load(ordering: .relaxed)
            // A racing eviction can momentarily show one RIP in two slots: keep the larger count.
            if let j = out.firstIndex(where: { $0.rip == rip }) {
                if count > out[j].count { out[j] = RIPCount(rip: rip, count: count, error: error) }
            } else {
                out.append(RIPCount(rip: rip, count: count, error: error))
            }
        }
        out.sort(by: Self.ranksBefore)
        return out
    }

    /// Combines two snapshots (e.g. of several vCPUs): counts and errors summed per RIP, top `limit` kept, by
    /// count descending then RIP ascending. A RIP missing from one side contributes nothing from it, so its
    /// merged count is a lower bound there: `count - error ≤ true` still holds, `true ≤ count` only holds when
    /// each side tracked the RIP (or never filled up).
    public static func merge(_ a: [RIPCount], _ b: [RIPCount], limit: Int) -> [RIPCount] {
        // One side empty (a row's first series): the other is the answer when it is already ranked with one
        // entry per RIP, as every snapshot and merge result is.
        if a.isEmpty || b.isEmpty {
            let only = a.isEmpty ? b : a
            if only.count <= limit && isRankedOncePerRIP(only) { return only }
        }
        var byRIP: [UInt64: RIPCount] = [:]
        byRIP.reserveCapacity(a.count + b.count)
        for r in a + b {
            if var m = byRIP[r.rip] {
                m.count &+= r.count
                m.error &+= r.error
                byRIP[r.rip] = m
            } else {
                byRIP[r.rip] = r
            }
        }
        var out = Array(byRIP.values)
        out.sort(by: ranksBefore)
        return Array(out.prefix(Swift.max(0, limit)))
    }

    /// Whether `list` is in rank order with no RIP twice.
    static func isRankedOncePerRIP(_ list: [RIPCount]) -> Bool {
        for i in list.indices.dropFirst() where !ranksBefore(list[i - 1], list[i]) { return false }
        guard list.count > 1 else { return true }
        if list.count <= 32 {
            for i in list.indices { for j in list.indices[(i + 1)...] where list[i].rip == list[j].rip { return false } }
            return true
        }
        return Set(list.map(\.rip)).count == list.count
    }

    static func ranksBefore(_ x: RIPCount, _ y: RIPCount) -> Bool {
        x.count != y.count ? x.count > y.count : x.rip < y.rip
    }
}
