import Synchronization

/// One writer's counters: counts per (thread, event, isa, reason), in a fixed-size open-addressing table
/// of atomics. Exactly one thread writes a shard (through its ``ShardWriter``); any thread may read it.
///
/// Memory is fixed whatever the event count: ``capacity`` keys; events whose key finds no room are
/// counted in ``overflow`` and still counted in their event's total (``eventTotals``), never lost.
public final class AggregateShard: Sendable {
    public static let capacity = 4096
    @usableFromInline static let mask = capacity - 1
    public static let maxEvents = 256

    /// Key word A: tid << 32 | event << 16 | isa << 8 | 1 (0 = empty slot). Published last, with release.
    @usableFromInline let keyA: InlineArray<4096, Atomic<UInt64>>
    /// Key word B: the reason. Written before A.
    @usableFromInline let keyB: InlineArray<4096, Atomic<UInt64>>
    @usableFromInline let counts: InlineArray<4096, Atomic<UInt64>>
    /// Per-event totals, whatever happened to the key.
    @usableFromInline let eventTotals: InlineArray<256, Atomic<UInt64>>
    /// Events counted in eventTotals whose (tid, event, reason) key found no free slot.
    @usableFromInline let overflowCount = Atomic<UInt64>(0)
    /// Events the kernel reported lost in the sub-buffers this shard's writer read.
    @usableFromInline let lostCount = Atomic<UInt64>(0)
    /// Sub-buffers flagged as having lost events without saying how many.
    @usableFromInline let lostUnknownCount = Atomic<UInt64>(0)
    /// Sub-buffers rejected as malformed (their events are lost, number unknown).
    @usableFromInline let corruptCount = Atomic<UInt64>(0)
    /// Failed reads of the ring buffer (the reader stopped there; what followed is lost).
    @usableFromInline let readErrorCount = Atomic<UInt64>(0)

    public init() {
        keyA = InlineArray { _ in Atomic(0) }
        keyB = InlineArray { _ in Atomic(0) }
        counts = InlineArray { _ in Atomic(0) }
        eventTotals = InlineArray { _ in Atomic(0) }
    }

    @inlinable
    static func packA(tid: Int32, event: UInt16, isa: UInt8) -> UInt64 {
        UInt64(UInt32(bitPattern: tid)) << 32 | UInt64(event) << 16 | UInt64(isa) << 8 | 1
    }

    @inlinable
    static func slot(_ a: UInt64, _ b: UInt64) -> Int {
        // Fibonacci hashing of the mixed key words.
        let h = (a ^ (b &* 0x9E37_79B9_7F4A_7C15)) &* 0xBF58_476D_1CE4_E5B9
        return Int(truncatingIfNeeded: h >> 52) & mask
    }

    /// Reads every published counter. Safe while the writer runs: a key is visible only once complete
    /// (acquire on key A pairs with the writer's release), counts are monotonic (relaxed is enough).
    public func forEachCounter(_ body: (_ tid: Int32, _ event: UInt16, _ isa: UInt8, _ reason: UInt32, _ count: UInt64) -> Void) {
        for i in 0..<Self.capacity {
            let a = keyA[i].load(ordering: .acquiring)
            if a == 0 { continue }
            let b = keyB[i].load(ordering: .relaxed)
            let c = counts[i].load(ordering: .relaxed)
            if c == 0 { continue }
            body(Int32(bitPattern: UInt32(a >> 32)), UInt16(truncatingIfNeeded: a >> 16),
                 UInt8(truncatingIfNeeded: a >> 8), UInt32(truncatingIfNeeded: b), c)
        }
    }

    public func eventTotal(_ event: Int) -> UInt64 { eventTotals[event].load(ordering: .relaxed) }
    public var overflow: UInt64 { overflowCount.load(ordering: .relaxed) }
    public var lost: UInt64 { lostCount.load(ordering: .relaxed) }
    public var lostUnknown: UInt64 { lostUnknownCount.load(ordering: .relaxed) }
    public var corrupt: UInt64 { corruptCount.load(ordering: .relaxed) }
    public var readErrors: UInt64 { readErrorCount.load(ordering: .relaxed) }
}

/// The single writer of an ``AggregateShard``. Not Sendable: it belongs to one thread.
public struct ShardWriter {
    public let shard: AggregateShard
    @usableFromInline var lastA: UInt64 = 0
    @usableFromInline var lastB: UInt64 = 0
    @usableFromInline var lastSlot: Int = -1
    /// Called with a thread id the first time this writer publishes a key for it.
    @usableFromInline let onNewThread: (Int32, UInt32) -> Void
    @usableFromInline var knownThreads = Set<Int32>()
    @usableFromInline var threadsWithVCPU = Set<Int32>()

    public init(shard: AggregateShard, onNewThread: @escaping (_ tid: Int32, _ vcpu: UInt32) -> Void = { _, _ in }) {
        self.shard = shard
        self.onNewThread = onNewThread
    }

    /// Counts one event. Hot path: a cached or probed slot, one relaxed add; no allocation once the key exists.
    @inlinable
    public mutating func add(_ e: TraceEvent, hasReason: Bool) {
        let isa = hasReason ? e.isa : 0
        let a = AggregateShard.packA(tid: e.tid, event: e.event, isa: isa)
        let b = hasReason ? UInt64(e.reason) : 0
        shard.eventTotals[Int(e.event) & (AggregateShard.maxEvents - 1)].singleWriterAdd(1)
        if a == lastA && b == lastB && lastSlot >= 0 {
            shard.counts[lastSlot].singleWriterAdd(1)
            return
        }
        var i = AggregateShard.slot(a, b)
        for _ in 0..<AggregateShard.capacity {
            let ka = shard.keyA[i].load(ordering: .relaxed)  // only this thread writes keys
            if ka == a && shard.keyB[i].load(ordering: .relaxed) == b {
                shard.counts[i].singleWriterAdd(1)
                lastA = a; lastB = b; lastSlot = i
                return
            }
            if ka == 0 {
                publish(slot: i, a: a, b: b, tid: e.tid, vcpu: e.vcpu)
                return
            }
            i = (i + 1) & AggregateShard.mask
        }
        shard.overflowCount.singleWriterAdd(1)
    }

    @usableFromInline
    mutating func publish(slot i: Int, a: UInt64, b: UInt64, tid: Int32, vcpu: UInt32) {
        // Tell the aggregator about a thread once, and again once its vCPU number shows up (4.19's kvm_exit has no
        // vcpu_id, its kvm_entry has one). Cold path: once per new key.
        if knownThreads.insert(tid).inserted {
            onNewThread(tid, vcpu)
            if vcpu != TraceEvent.noVCPU { threadsWithVCPU.insert(tid) }
        } else if vcpu != TraceEvent.noVCPU, threadsWithVCPU.insert(tid).inserted {
            onNewThread(tid, vcpu)
        }
        shard.keyB[i].store(b, ordering: .relaxed)
        shard.counts[i].store(1, ordering: .relaxed)
        // Release: a reader that sees key A also sees key B and the first count.
        shard.keyA[i].store(a, ordering: .releasing)
        lastA = a; lastB = b; lastSlot = i
    }

    /// Adds events the kernel reported lost.
    public func addLost(_ n: UInt64, unknownSubbuffers: UInt64 = 0) {
        if n > 0 { shard.lostCount.singleWriterAdd(n) }
        if unknownSubbuffers > 0 { shard.lostUnknownCount.singleWriterAdd(unknownSubbuffers) }
    }

    /// Adds sub-buffers rejected as malformed and failed reads: losses of an unknown number of events.
    public func addDamage(corruptSubbuffers: UInt64 = 0, readErrors: UInt64 = 0) {
        if corruptSubbuffers > 0 { shard.corruptCount.singleWriterAdd(corruptSubbuffers) }
        if readErrors > 0 { shard.readErrorCount.singleWriterAdd(readErrors) }
    }
}
