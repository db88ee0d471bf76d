import Synchronization

/// The slots of one shard's counters: open addressing on (key word A, key word B), three atomics per slot
/// (A, B, count), never more than half full. Allocated once per size; a shard replaces its table (under its
/// lock) to grow it or to drop retired threads' keys, never in place.
public final class CounterTable: @unchecked Sendable {
    /// Slots (a power of two).
    public let capacity: Int
    @usableFromInline let mask: Int
    /// Slot i: words[3i] key A (0 = empty), words[3i + 1] key B, words[3i + 2] count.
    @usableFromInline let words: UnsafeMutablePointer<Atomic<UInt64>>

    init(capacity: Int) {
        precondition(capacity > 0 && capacity & (capacity - 1) == 0, "capacity must be a power of two")
        self.capacity = capacity
        mask = capacity - 1
        words = .allocate(capacity: capacity * 3)
        for i in 0..<capacity * 3 { (words + i).initialize(to: Atomic(0)) }
    }

    deinit {
        words.deinitialize(count: capacity * 3)
        words.deallocate()
    }

    /// The smallest table (≥ ``AggregateShard/initialCapacity``) that holds `keys` at most a quarter full.
    static func capacity(forKeys keys: Int) -> Int {
        var c = AggregateShard.initialCapacity
        while c < keys * 4 { c *= 2 }
        return c
    }

    /// Inserts a key with its count (writer side, table not yet published or under the shard's lock).
    func insert(_ a: UInt64, _ b: UInt64, count: UInt64) {
        var i = AggregateShard.slot(a, b) & mask
        while words[3 * i].load(ordering: .relaxed) != 0 { i = (i + 1) & mask }
        words[3 * i + 1].store(b, ordering: .relaxed)
        words[3 * i + 2].store(count, ordering: .relaxed)
        words[3 * i].store(a, ordering: .releasing)
    }
}

/// Counts of a thread that was retired, handed by a shard's writer to the snapshot side: the key's
/// counts and the retirement request (``RetireBoard``) they belong to.
public struct RetiredCount: Sendable, Equatable {
    public var request: UInt64
    public var key: CounterKey
    public var count: UInt64
}

/// One writer's counters: counts per (thread, event, isa, reason), in an open-addressing table of atomics
/// that grows with the keys (kept at most half full: no probe cliff, no ceiling). Exactly one thread writes a
/// shard (through its ``ShardWriter``); any thread may read it.
///
/// Memory follows the live keys: the writer doubles the table when it is half full, and when threads retire
/// (``ShardWriter/maintain()``) it rebuilds the table without their keys — at the same size, or, once the keys
/// kept use less than an eighth of it, at the least size they fill at most a quarter of — and hands their counts
/// to the snapshot side (``collect(_:)``), so a reader sees each count either in the table or handed over, never
/// both and never neither. Every event is also counted in its event's total (``eventTotals``).
public final class AggregateShard: Sendable {
    /// Slots of a new shard's table (it grows by doubling).
    public static let initialCapacity = 1024
    public static let maxEvents = 256

    struct State {
        var table: CounterTable
        /// Keys in the table.
        var used = 0
        /// Counts of retired threads not yet collected by a snapshot.
        var handoff: [RetiredCount] = []
        /// The last retirement request this shard's writer has carried out.
        var acked: UInt64 = 0
    }

    /// The table readers scan and its hand-over; the writer takes it only to replace the table (grow, retire).
    let state: Mutex<State>
    /// The retirement requests the writer follows; nil: threads never retire (offline traces).
    let board: RetireBoard?
    /// Per-event totals, whatever happened to the key.
    @usableFromInline let eventTotals: InlineArray<256, Atomic<UInt64>>
    /// Kept for the snapshot's `overflowEvents`: always 0 now that the table grows.
    @usableFromInline let overflowCount = Atomic<UInt64>(0)
    /// Events the kernel reported lost in the sub-buffers this shard's writer read.
    @usableFromInline let lostCount = Atomic<UInt64>(0)
    /// Sub-buffers flagged as having lost events without saying how many.
    @usableFromInline let lostUnknownCount = Atomic<UInt64>(0)
    /// Sub-buffers rejected as malformed (their events are lost, number unknown).
    @usableFromInline let corruptCount = Atomic<UInt64>(0)
    /// Failed reads of the ring buffer (the reader stopped there; what followed is lost).
    @usableFromInline let readErrorCount = Atomic<UInt64>(0)
    /// Accesses per port and MMIO address (``IOAccessTable``); nil when the catalog has neither kvm_pio nor kvm_mmio.
    public let io: IOAccessTable?

    public init(board: RetireBoard? = nil, io: IOAccessTable? = nil) {
        state = Mutex(State(table: CounterTable(capacity: Self.initialCapacity)))
        self.board = board
        self.io = io
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
        return Int(truncatingIfNeeded: h >> 32)
    }

    static func key(_ a: UInt64, _ b: UInt64) -> CounterKey {
        CounterKey(tid: Int32(bitPattern: UInt32(a >> 32)), event: UInt16(truncatingIfNeeded: a >> 16),
                   isa: UInt8(truncatingIfNeeded: a >> 8), reason: UInt32(truncatingIfNeeded: b))
    }

    /// Reads every published counter. Safe while the writer runs: a key is visible only once complete
    /// (acquire on key A pairs with the writer's release), counts are monotonic (relaxed is enough).
    public func forEachCounter(_ body: (_ tid: Int32, _ event: UInt16, _ isa: UInt8, _ reason: UInt32, _ count: UInt64) -> Void) {
        state.withLock { st in Self.scan(st.table, body) }
    }

    /// Reads every counter of the table and takes the retired threads' counts handed over since the last
    /// call, in one step: a count is in exactly one of the two. Also returns the last retirement request the
    /// writer had carried out then (keys of threads retired later are still in the table). Cost ∝ the table's
    /// slots (< 8 × the live keys after a retirement).
    public func collect(_ body: (_ tid: Int32, _ event: UInt16, _ isa: UInt8, _ reason: UInt32, _ count: UInt64) -> Void)
        -> (handed: [RetiredCount], acked: UInt64) {
        state.withLock { st in
            Self.scan(st.table, body)
            defer { st.handoff = [] }
            return (st.handoff, st.acked)
        }
    }

    /// Takes the retired threads' counts handed over since the last call (``collect(_:)`` takes them too),
    /// without reading the table.
    public func takeHandoff() -> [RetiredCount] {
        state.withLock { st in
            defer { st.handoff = [] }
            return st.handoff
        }
    }

    static func scan(_ t: CounterTable, _ body: (Int32, UInt16, UInt8, UInt32, UInt64) -> Void) {
        for i in 0..<t.capacity {
            let a = t.words[3 * i].load(ordering: .acquiring)
            if a == 0 { continue }
            let b = t.words[3 * i + 1].load(ordering: .relaxed)
            let c = t.words[3 * i + 2].load(ordering: .relaxed)
            if c == 0 { continue }
            let k = key(a, b)
            body(k.tid, k.event, k.isa, k.reason, c)
        }
    }

    /// The last retirement request the writer has carried out.
    public var acked: UInt64 { state.withLock { $0.acked } }
    /// Keys in the table and its slots now.
    public var occupancy: (keys: Int, capacity: Int) { state.withLock { ($0.used, $0.table.capacity) } }

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
    /// The table this writer counts into (the shard's current one; only this writer replaces it).
    @usableFromInline var table: CounterTable
    @usableFromInline var words: UnsafeMutablePointer<Atomic<UInt64>>
    @usableFromInline var mask: Int
    @usableFromInline var used = 0
    @usableFromInline var lastA: UInt64 = 0
    @usableFromInline var lastB: UInt64 = 0
    @usableFromInline var lastSlot: Int = -1
    /// The last retirement request carried out.
    var acked: UInt64 = 0
    /// Called with a thread id the first time this writer publishes a key for it.
    @usableFromInline let onNewThread: (Int32, UInt32) -> Void
    @usableFromInline var knownThreads = Set<Int32>()
    @usableFromInline var threadsWithVCPU = Set<Int32>()
    /// Per event index: the address space of kvm_pio/kvm_mmio (``DeviceMap/Space`` raw value), 0 for others.
    @usableFromInline let ioSpaces: [UInt8]
    /// The ``IOAccessTable`` slot of the last pio/mmio event counted (-1: it overflowed), for ``IOTimer``.
    public var lastIOSlot: Int { ioSlot }
    /// Capacity of the writer's set of the threads it has told the aggregator about (it shrinks with them).
    public var knownThreadsCapacity: Int { knownThreads.capacity }
    @usableFromInline var ioSlot = -1
    /// The shard's ``AggregateShard/io`` table, unretained (the shard, which this writer holds, keeps it alive):
    /// binding the optional property per kvm_pio/kvm_mmio event cost a retain and a release.
    @usableFromInline let ioTable: Unmanaged<IOAccessTable>?

    /// - Parameter roles: the catalog's event roles; kvm_pio and kvm_mmio events are also counted per port and
    ///   address in the shard's ``AggregateShard/io`` table, when it has one.
    public init(shard: AggregateShard, roles: [EventRole] = [],
                onNewThread: @escaping (_ tid: Int32, _ vcpu: UInt32) -> Void = { _, _ in }) {
        self.shard = shard
        self.onNewThread = onNewThread
        var spaces = [UInt8](repeating: 0, count: AggregateShard.maxEvents)
        if shard.io != nil {
            for (i, r) in roles.enumerated() where i < spaces.count {
                spaces[i] = r == .pio ? DeviceMap.Space.port.rawValue : r == .mmio ? DeviceMap.Space.mmio.rawValue : 0
            }
        }
        ioSpaces = spaces
        ioTable = shard.io.map { Unmanaged.passUnretained($0) }
        let (t, used, acked) = shard.state.withLock { ($0.table, $0.used, $0.acked) }
        table = t
        words = t.words
        mask = t.mask
        self.used = used
        self.acked = acked
    }

    /// Counts one event. Hot path: a cached or probed slot, one relaxed add; no allocation once the key exists
    /// (the table is at most half full, so a probe ends after a few slots).
    @inlinable
    public mutating func add(_ e: TraceEvent, hasReason: Bool) {
        let isa = hasReason ? e.isa : 0
        let a = AggregateShard.packA(tid: e.tid, event: e.event, isa: isa)
        let b = hasReason ? UInt64(e.reason) : 0
        shard.eventTotals[Int(e.event) & (AggregateShard.maxEvents - 1)].singleWriterAdd(1)
        let space = ioSpaces[Int(e.event) & (AggregateShard.maxEvents - 1)]
        if space != 0, let io = ioTable { countIO(e, space: space, io) }
        if a == lastA && b == lastB && lastSlot >= 0 {
            words[3 * lastSlot + 2].singleWriterAdd(1)
            return
        }
        var i = AggregateShard.slot(a, b) & mask
        while true {
            let ka = words[3 * i].load(ordering: .relaxed)  // only this thread writes keys
            if ka == a && words[3 * i + 1].load(ordering: .relaxed) == b {
                words[3 * i + 2].singleWriterAdd(1)
                lastA = a; lastB = b; lastSlot = i
                return
            }
            if ka == 0 {
                publish(slot: i, a: a, b: b, tid: e.tid, vcpu: e.vcpu)
                return
            }
            i = (i + 1) & mask
        }
    }

    @inlinable
    mutating func countIO(_ e: TraceEvent, space raw: UInt8, _ io: Unmanaged<IOAccessTable>) {
        let space: DeviceMap.Space = raw == DeviceMap.Space.port.rawValue ? .port : .mmio
        ioSlot = io._withUnsafeGuaranteedRef {
            $0.add(tid: e.tid, space: space, address: e.detail, direction: IODirection.of(space, aux2: e.aux2))
        }
    }

    /// Counts one event whose key was, last time, in slot `hint` (the pairer keeps one per thread's entry
    /// and per thread × exit reason): one check of that slot's key, else ``add(_:hasReason:)``, and `hint`
    /// becomes the slot used. A stale hint (the table was replaced) only costs the check.
    @inline(__always)
    mutating func add(_ e: TraceEvent, hasReason: Bool, hint: inout Int32) {
        let isa = hasReason ? e.isa : 0
        let a = AggregateShard.packA(tid: e.tid, event: e.event, isa: isa)
        let b = hasReason ? UInt64(e.reason) : 0
        let h = Int(hint) & mask
        if hint >= 0 && words[3 * h].load(ordering: .relaxed) == a && words[3 * h + 1].load(ordering: .relaxed) == b {
            shard.eventTotals[Int(e.event) & (AggregateShard.maxEvents - 1)].singleWriterAdd(1)
            words[3 * h + 2].singleWriterAdd(1)
            return
        }
        add(e, hasReason: hasReason)
        hint = Int32(truncatingIfNeeded: lastSlot)
    }

    @usableFromInline
    mutating func publish(slot: Int, a: UInt64, b: UInt64, tid: Int32, vcpu: UInt32) {
        // Tell the aggregator about a thread once, and again once its vCPU number shows up (4.19's kvm_exit has no
        // vcpu_id, its kvm_entry has one). Cold path: once per new key.
        if knownThreads.insert(tid).inserted {
            onNewThread(tid, vcpu)
            if vcpu != TraceEvent.noVCPU { threadsWithVCPU.insert(tid) }
        } else if vcpu != TraceEvent.noVCPU, threadsWithVCPU.insert(tid).inserted {
            onNewThread(tid, vcpu)
        }
        var i = slot
        if (used + 1) * 2 > table.capacity {
            // Half full: a table twice the size, swapped in under the lock (readers never see a half copy).
            replaceTable(capacity: table.capacity * 2, dropping: [:])
            i = AggregateShard.slot(a, b) & mask
            while words[3 * i].load(ordering: .relaxed) != 0 { i = (i + 1) & mask }
        }
        words[3 * i + 1].store(b, ordering: .relaxed)
        words[3 * i + 2].store(1, ordering: .relaxed)
        // Release: a reader that sees key A also sees key B and the first count.
        words[3 * i].store(a, ordering: .releasing)
        used += 1
        shard.state.withLock { $0.used = used }
        lastA = a; lastB = b; lastSlot = i
    }

    /// Copies the table into a new one of `capacity` slots, leaving out the keys of the threads in `dropping`
    /// (tid → retirement request), whose counts go to the shard's hand-over; swaps it in under the lock.
    mutating func replaceTable(capacity: Int, dropping: [Int32: UInt64], acked newAck: UInt64? = nil) {
        let old = table
        let fresh = CounterTable(capacity: capacity)
        var kept = 0
        var handed: [RetiredCount] = []
        shard.state.withLock { st in
            for i in 0..<old.capacity {
                let a = old.words[3 * i].load(ordering: .relaxed)
                if a == 0 { continue }
                let b = old.words[3 * i + 1].load(ordering: .relaxed)
                let c = old.words[3 * i + 2].load(ordering: .relaxed)
                if let request = dropping[Int32(bitPattern: UInt32(a >> 32))] {
                    handed.append(RetiredCount(request: request, key: AggregateShard.key(a, b), count: c))
                } else {
                    fresh.insert(a, b, count: c)
                    kept += 1
                }
            }
            st.table = fresh
            st.used = kept
            st.handoff.append(contentsOf: handed)
            if let newAck { st.acked = newAck }
        }
        table = fresh
        words = fresh.words
        mask = fresh.mask
        used = kept
        lastSlot = -1
    }

    /// Carries out the retirement requests posted since the last call (``RetireBoard``): the retired threads'
    /// keys leave the table (their counts go to the snapshot side), and a later event of the same tid starts a
    /// new key and a new identity. Call between batches; one relaxed load when there is nothing to do.
    public mutating func maintain() {
        guard let board = shard.board, board.latest > acked else { return }
        let (requests, latest) = board.requests(after: acked)
        var dropping: [Int32: UInt64] = [:]
        for r in requests where dropping[r.tid] == nil { dropping[r.tid] = r.seq }
        // The table keeps its size (it is less than half full) unless the keys kept use less than an eighth of
        // it: then it shrinks to the least size they fill at most a quarter of.
        var kept = 0
        for i in 0..<table.capacity {
            let a = words[3 * i].load(ordering: .relaxed)
            if a != 0 && dropping[Int32(bitPattern: UInt32(a >> 32))] == nil { kept += 1 }
        }
        let capacity = kept * 8 < table.capacity ? CounterTable.capacity(forKeys: kept) : table.capacity
        replaceTable(capacity: capacity, dropping: dropping, acked: latest)
        acked = latest
        for tid in dropping.keys {
            knownThreads.remove(tid)
            threadsWithVCPU.remove(tid)
        }
        knownThreads.shrinkIfSparse()
        threadsWithVCPU.shrinkIfSparse()
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
