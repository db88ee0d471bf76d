import Synchronization

/// Pairs each vCPU thread's `kvm_exit` with its next `kvm_entry` and records the gap as exit latency.
///
/// Feed it events in timestamp order (sources merge per-CPU streams first), so pairs whose exit and entry
/// sit in different CPUs' buffers (the thread migrated) pair like any other. Pairing is by thread id,
/// which works on every kernel and architecture. One thread owns a Pairer; the series and counters it
/// writes are readable from any thread.
///
/// Memory per live thread: 32 bytes of pending exit, 512 bytes of reason slots and 16–32 of tid index, in flat
/// arrays that double as threads arrive and shrink when they retire (``maintain()``); plus its series. The
/// per-thread arrays are shared by copies of a Pairer: feed one copy only.
public struct Pairer {
    /// Threads a new pairer's tables hold before they first grow (they double; no ceiling).
    public static let initialThreadCapacity = 256

    /// A vCPU thread's exit waiting for its entry: 32 bytes, two to a cache line, one per thread in the
    /// pairer's flat thread array (indexed by the thread's dense index, ``pendingIndex(_:)``).
    struct Pending {
        var tid: Int32 = 0
        var reason: UInt32 = 0
        var ts: UInt64 = 0
        /// The waiting exit's latency histogram (its series'), set at the exit; read only while `open`.
        var histogram: Unmanaged<LatencyHistogram>?
        var cpu: UInt16 = 0
        var isa: UInt8 = 0
        var open = false
        /// The counter slot of the thread's entry key in the pipeline's ``ShardWriter`` (a hint; -1: none).
        var entryCounter: Int32 = -1
    }

    /// Per thread, ``reasonSets`` sets of 2 of these (one 64-byte cache line per set, the set chosen by a hash
    /// of the exit reason): the series (its histogram, unretained, and its top-RIP slots) and counter slot an exit
    /// reason led to last. An exit whose reason is there finds everything it writes in that line and the
    /// series' own; a miss (first sight, or a third reason in the set) looks the series up in
    /// ``SeriesSlots`` and becomes the set's first entry. 32 bytes.
    struct ReasonSlot {
        var reason: UInt32 = 0
        var isa: UInt8 = 0
        /// The series' top-RIP slots in use, as this pairer (their only writer) last left them.
        var ripsUsed: UInt8 = 0
        /// The counter slot of this exit key in the pipeline's ``ShardWriter`` (a hint; -1: none).
        var counter: Int32 = -1
        /// nil: an empty slot.
        var histogram: Unmanaged<LatencyHistogram>?
        /// The series' top-RIP slots (``TopRIPs/_words``): a RIP already held is counted in that line alone.
        var rips: UnsafeMutablePointer<Atomic<UInt64>>?
    }

    /// Sets of ``ReasonSlot`` pairs per thread (16 slots, 512 bytes).
    static let reasonSets = 8

    public let counters: PairingCounters
    /// `counters`, for the hot path: no retain/release per event (`counters` keeps the object alive).
    let countersRef: Unmanaged<PairingCounters>
    public let store: SeriesStore
    /// Owns the flat per-thread arrays below (``threads``, ``reasonSlots``).
    let storage: PairerStorage
    /// Per dense thread index: the thread's pending exit (``storage``'s memory, 64-byte aligned).
    var threads: UnsafeMutablePointer<Pending>
    /// Per dense thread index `d`: its ``ReasonSlot``s, `16d ..< 16d + 16` (64-byte aligned).
    var reasonSlots: UnsafeMutablePointer<ReasonSlot>
    /// Threads in ``threads`` (dense indices `0 ..< threadCount`).
    var threadCount = 0
    /// tid → dense index: open addressing, at most half full; an entry is `tid << 32 | (index + 1)`, 0 = empty.
    var threadIndex = [UInt64](repeating: 0, count: 2 * Pairer.initialThreadCapacity)
    var threadMask = 2 * Pairer.initialThreadCapacity - 1
    /// Per CPU: timestamp of the first event after the kernel last reported losses there.
    @usableFromInline var lastLoss = [UInt64](repeating: 0, count: 1024)
    var seriesSlots: SeriesSlots
    /// The last retirement request carried out (``maintain()``).
    var acked: UInt64 = 0
    /// Told of every exit and every recorded pair (the timeline's feed), when set. One nil check per exit and
    /// per pair when not.
    public var observer: (any PairObserver)?

    public init(store: SeriesStore = SeriesStore(), counters: PairingCounters = PairingCounters()) {
        self.store = store
        self.counters = counters
        countersRef = Unmanaged.passUnretained(counters)
        storage = PairerStorage(capacity: Self.initialThreadCapacity)
        threads = storage.pending
        reasonSlots = storage.slots
        seriesSlots = SeriesSlots(store: store)
        acked = store.acked
    }

    /// Notes a loss on a CPU (an event with ``TraceEvent/afterLoss``); call for every event so flagged.
    @inlinable
    public mutating func noteLoss(cpu: UInt16, at ts: UInt64) {
        lastLoss[Int(cpu) & 1023] = ts
    }

    /// The thread's dense index, created on first sight (cold path).
    @inline(__always)
    mutating func pendingIndex(_ tid: Int32) -> Int {
        let key = UInt64(UInt32(bitPattern: tid)) << 32
        var i = Self.hash(tid) & threadMask
        while true {
            let v = threadIndex[i]
            if v == 0 { break }
            if v & 0xFFFF_FFFF_0000_0000 == key { return Int(truncatingIfNeeded: v & 0xFFFF_FFFF) &- 1 }
            i = (i &+ 1) & threadMask
        }
        return newThread(tid, at: i)
    }

    /// A thread seen for the first time (cold path): the next dense index, entered at slot `i` of the index
    /// (or wherever it lands after the index doubled); the flat arrays double when full.
    @inline(never)
    mutating func newThread(_ tid: Int32, at i: Int) -> Int {
        var i = i
        if (threadCount + 1) * 2 > threadIndex.count {
            rebuildIndex(capacity: threadIndex.count * 2)
            i = Self.hash(tid) & threadMask
            while threadIndex[i] != 0 { i = (i + 1) & threadMask }
        }
        if threadCount == storage.capacity {
            storage.resize(to: storage.capacity * 2, keeping: threadCount)
            threads = storage.pending
            reasonSlots = storage.slots
        }
        let d = threadCount
        threadIndex[i] = UInt64(UInt32(bitPattern: tid)) << 32 | UInt64(d + 1)
        threadCount += 1
        threads[d] = Pending(tid: tid)
        (reasonSlots + d &<< 4).update(repeating: ReasonSlot(), count: 16)
        return d
    }

    static func hash(_ tid: Int32) -> Int {
        Int(truncatingIfNeeded: (UInt64(UInt32(bitPattern: tid)) &* 0x9E37_79B9_7F4A_7C15) >> 32)
    }

    /// The set of an exit reason in a thread's ``ReasonSlot``s (0 ..< ``reasonSets``). Spreads the common
    /// VMX codes (the corpus's twelve reasons share sets so that 1.4 % of their exits miss, against 14 % for
    /// the reason's low bits).
    @inline(__always)
    static func reasonSet(_ reason: UInt32) -> Int {
        Int(truncatingIfNeeded: (reason ^ reason &>> 3 ^ reason &>> 6 ^ reason &>> 10) & 7)
    }

    /// Rebuilds the tid index of the first ``threadCount`` threads with `capacity` slots.
    mutating func rebuildIndex(capacity: Int) {
        var table = [UInt64](repeating: 0, count: capacity)
        let mask = capacity - 1
        for d in 0..<threadCount {
            let tid = threads[d].tid
            var i = Self.hash(tid) & mask
            while table[i] != 0 { i = (i + 1) & mask }
            table[i] = UInt64(UInt32(bitPattern: tid)) << 32 | UInt64(d + 1)
        }
        threadIndex = table
        threadMask = mask
    }

    /// Carries out the retirement requests posted since the last call (``RetireBoard``): the retired threads
    /// leave the thread table (an exit still waiting for its entry counts as open at end: the thread is gone)
    /// and their latency series go to the snapshot side, which folds them into their VM's retired row. A later
    /// exit of the same tid starts a new series. The flat arrays shrink with the threads left. Call between
    /// batches; one relaxed load when there is nothing.
    public mutating func maintain() {
        guard let board = store.board, board.latest > acked else { return }
        let (requests, latest) = board.requests(after: acked)
        var dropping: [Int32: UInt64] = [:]
        for r in requests where dropping[r.tid] == nil { dropping[r.tid] = r.seq }
        let handed = seriesSlots.retire(dropping)
        // The kept threads move down (their series, hence their slots' handles, stay).
        var n = 0
        for d in 0..<threadCount {
            if dropping[threads[d].tid] != nil {
                if threads[d].open { counters.openAtEndCount.singleWriterAdd(1) }
                continue
            }
            if n != d {
                threads[n] = threads[d]
                (reasonSlots + n &<< 4).update(from: reasonSlots + d &<< 4, count: 16)
            }
            n += 1
        }
        threadCount = n
        var capacity = Self.initialThreadCapacity
        while capacity < n * 2 { capacity *= 2 }
        if capacity < storage.capacity {
            storage.resize(to: capacity, keeping: n)
            threads = storage.pending
            reasonSlots = storage.slots
        }
        rebuildIndex(capacity: Swift.max(2 * Self.initialThreadCapacity, capacity * 2))
        store.retire(handed, keeping: seriesSlots.dense, acked: latest)
        acked = latest
    }

    /// Threads the flat per-thread arrays hold before they grow (``initialThreadCapacity`` at least; after
    /// ``maintain()``, the least power of two times that holding twice the threads kept).
    public var threadCapacity: Int { storage.capacity }
    /// Slots of the tid index (at least twice the threads; after ``maintain()``, twice ``threadCapacity``).
    public var threadIndexSlots: Int { threadIndex.count }
    /// Slots of the series index (at least twice the series; after ``maintain()``, the least power of two ≥
    /// 1,024 holding four times the series kept).
    public var seriesIndexSlots: Int { seriesSlots.keys.count }

    /// An exit: remembered until the thread's next entry.
    @inline(__always)
    public mutating func exit(_ e: TraceEvent) {
        exit(e, thread: pendingIndex(e.tid))
    }

    /// An exit of the thread with dense index `i` (``pendingIndex(_:)``). Returns the index of its
    /// ``ReasonSlot``. Hot path: no reference counting, no hashing when the reason is in the thread's slots
    /// (series and counters are reached through unretained handles that the pairer's own strong references
    /// keep alive); else one probe of the series index.
    @inline(__always) @discardableResult
    mutating func exit(_ e: TraceEvent, thread i: Int) -> Int {
        if e.flags & TraceEvent.afterLoss != 0 { noteLoss(cpu: e.cpu, at: e.timestamp) }
        if _slowPath(observer != nil) { observer!.exit(tid: e.tid, isa: e.isa, reason: e.reason, at: e.timestamp) }
        let t = threads + i
        if t.pointee.open { countersRef._withUnsafeGuaranteedRef { $0.orphanExitCount.singleWriterAdd(1) } }
        var c = i &<< 4 | Self.reasonSet(e.reason) &<< 1
        if !(reasonSlots[c].reason == e.reason && reasonSlots[c].isa == e.isa && reasonSlots[c].histogram != nil) {
            if reasonSlots[c + 1].reason == e.reason && reasonSlots[c + 1].isa == e.isa
                && reasonSlots[c + 1].histogram != nil {
                c += 1
            } else {
                fillReasonSlot(c, e)
            }
        }
        let slot = reasonSlots + c
        t.pointee.open = true
        t.pointee.ts = e.timestamp
        t.pointee.reason = e.reason
        t.pointee.isa = e.isa
        t.pointee.cpu = e.cpu
        t.pointee.histogram = slot.pointee.histogram
        TopRIPs.record(e.rip, words: slot.pointee.rips.unsafelyUnwrapped, used: &slot.pointee.ripsUsed)
        return c
    }

    /// A reason missing from its set (cold path): its series looked up (created on first use) and put in
    /// the set's first slot; the first slot's entry moves to the second.
    @inline(never)
    mutating func fillReasonSlot(_ c: Int, _ e: TraceEvent) {
        let si = seriesSlots.index(tid: e.tid, isa: e.isa, reason: e.reason)
        let h = seriesSlots.hot[si]
        reasonSlots[c + 1] = reasonSlots[c]
        let (used, rips) = h.topRIPs._withUnsafeGuaranteedRef { ($0._writerUsed, $0._words) }
        reasonSlots[c] = ReasonSlot(reason: e.reason, isa: e.isa, ripsUsed: used, counter: -1, histogram: h.histogram,
                                    rips: rips)
    }

    /// An entry: closes the thread's pending exit, if any, and records the latency.
    @inline(__always)
    public mutating func entry(_ e: TraceEvent) {
        entry(e, thread: pendingIndex(e.tid))
    }

    /// An entry of the thread with dense index `i` (``pendingIndex(_:)``).
    @inline(__always)
    mutating func entry(_ e: TraceEvent, thread i: Int) {
        if e.flags & TraceEvent.afterLoss != 0 { noteLoss(cpu: e.cpu, at: e.timestamp) }
        let t = threads + i
        guard t.pointee.open else {
            countersRef._withUnsafeGuaranteedRef { $0.orphanEntryCount.singleWriterAdd(1) }
            return
        }
        t.pointee.open = false
        let x = t.pointee
        let lossOnExitCPU = lastLoss[Int(x.cpu) & 1023]
        let lossOnEntryCPU = lastLoss[Int(e.cpu) & 1023]
        if (lossOnExitCPU > x.ts && lossOnExitCPU <= e.timestamp)
            || (lossOnEntryCPU > x.ts && lossOnEntryCPU <= e.timestamp) {
            countersRef._withUnsafeGuaranteedRef { $0.invalidatedCount.singleWriterAdd(1) }
            return
        }
        guard e.timestamp >= x.ts else {
            countersRef._withUnsafeGuaranteedRef { $0.negativeCount.singleWriterAdd(1) }
            return
        }
        let latency = e.timestamp - x.ts
        x.histogram.unsafelyUnwrapped._withUnsafeGuaranteedRef { $0.record(latency) }
        countersRef._withUnsafeGuaranteedRef { $0.pairedCount.singleWriterAdd(1) }
        if _slowPath(observer != nil) {
            observer!.pair(tid: e.tid, isa: x.isa, reason: x.reason, exitAt: x.ts, latency: latency)
        }
    }

    /// At the end of a trace: exits still waiting for an entry are counted as open at the end (the trace
    /// stopped, or the vCPU left for userspace and never came back), apart from orphans.
    public mutating func finish() {
        for d in 0..<threadCount where threads[d].open {
            threads[d].open = false
            counters.openAtEndCount.singleWriterAdd(1)
        }
    }
}

/// The memory of a ``Pairer``'s flat per-thread arrays: per thread one ``Pairer/Pending`` (32 bytes) and
/// 16 ``Pairer/ReasonSlot``s (512 bytes), both 64-byte aligned so that a reason set is one cache line.
/// Holds plain values only (the handles are unretained).
final class PairerStorage {
    private(set) var pending: UnsafeMutablePointer<Pairer.Pending>
    private(set) var slots: UnsafeMutablePointer<Pairer.ReasonSlot>
    /// Threads the arrays hold.
    private(set) var capacity: Int

    init(capacity: Int) {
        self.capacity = capacity
        (pending, slots) = Self.allocate(capacity)
    }

    deinit {
        UnsafeMutableRawPointer(pending).deallocate()
        UnsafeMutableRawPointer(slots).deallocate()
    }

    static func allocate(_ capacity: Int) -> (UnsafeMutablePointer<Pairer.Pending>, UnsafeMutablePointer<Pairer.ReasonSlot>) {
        let p = UnsafeMutableRawPointer.allocate(byteCount: capacity * MemoryLayout<Pairer.Pending>.stride, alignment: 64)
            .bindMemory(to: Pairer.Pending.self, capacity: capacity)
        p.initialize(repeating: Pairer.Pending(), count: capacity)
        let s = UnsafeMutableRawPointer.allocate(byteCount: capacity * 16 * MemoryLayout<Pairer.ReasonSlot>.stride,
                                                 alignment: 64)
            .bindMemory(to: Pairer.ReasonSlot.self, capacity: capacity * 16)
        s.initialize(repeating: Pairer.ReasonSlot(), count: capacity * 16)
        return (p, s)
    }

    /// New arrays of `newCapacity` threads holding the first `count` threads of the old ones.
    func resize(to newCapacity: Int, keeping count: Int) {
        let (p, s) = Self.allocate(newCapacity)
        p.update(from: pending, count: count)
        s.update(from: slots, count: count * 16)
        UnsafeMutableRawPointer(pending).deallocate()
        UnsafeMutableRawPointer(slots).deallocate()
        pending = p
        slots = s
        capacity = newCapacity
    }
}

/// What the pairer tells an observer (``Pairer/observer``): every exit it is fed, and every pair it records
/// in a latency series — exactly the pairs the histograms hold (no orphan, no pair invalidated by a loss, no
/// negative gap). Called on the pairer's thread, in timestamp order.
public protocol PairObserver: AnyObject {
    /// The first event kept (any kind), before any exit: where a timeline starts. ``ExitPipeline`` calls it.
    func start(at timestamp: UInt64)
    /// An exit of thread `tid` (raw reason and ``ISA`` value), timestamp in ns.
    func exit(tid: Int32, isa: UInt8, reason: UInt32, at timestamp: UInt64)
    /// A recorded pair: the exit's key and timestamp, and the latency to its entry (ns).
    func pair(tid: Int32, isa: UInt8, reason: UInt32, exitAt timestamp: UInt64, latency: UInt64)
}

/// Every latency series, published for readers. Appending (a new thread × reason) takes the lock;
/// recording into a series does not. With a ``RetireBoard``, the pairer hands the series of retired threads
/// over here (``retire(_:keeping:acked:)``) and the snapshot side takes them (``collect()``).
public final class SeriesStore: Sendable {
    struct State {
        var list: [LatencySeries] = []
        var handoff: [(request: UInt64, series: LatencySeries)] = []
        var acked: UInt64 = 0
    }

    let state = Mutex<State>(State())
    /// Retirement requests the pairer follows; nil: series live as long as the store (offline traces).
    let board: RetireBoard?
    /// Set when a pairer writes here (its ack then counts before retirement requests are forgotten).
    let hasWriter = Atomic<Bool>(false)

    public init(board: RetireBoard? = nil) { self.board = board }

    public var all: [LatencySeries] { state.withLock { $0.list } }
    func append(_ s: LatencySeries) { state.withLock { $0.list.append(s) } }

    /// The live series and the retired ones handed over since the last call, in one step.
    /// Also returns the last retirement request the pairer had carried out then.
    /// The retired series handed over since the last call (``collect()`` takes them too).
    func takeHandoff() -> [(request: UInt64, series: LatencySeries)] {
        state.withLock { st in
            defer { st.handoff = [] }
            return st.handoff
        }
    }

    func collect() -> (live: [LatencySeries], handed: [(request: UInt64, series: LatencySeries)], acked: UInt64) {
        state.withLock { st in
            defer { st.handoff = [] }
            return (st.list, st.handoff, st.acked)
        }
    }

    /// The pairer's side of a retirement: `handed` leave the live list (now `keeping`), in one step.
    func retire(_ handed: [(request: UInt64, series: LatencySeries)], keeping: ContiguousArray<LatencySeries>,
                acked: UInt64) {
        state.withLock { st in
            st.list = Array(keeping)
            st.handoff.append(contentsOf: handed)
            st.acked = acked
        }
    }

    /// The last retirement request the pairer has carried out.
    public var acked: UInt64 { state.withLock { $0.acked } }
    /// Live series.
    public var count: Int { state.withLock { $0.list.count } }
}

/// The pairer's private index of its series: open addressing on (tid, isa, reason), at most half full
/// (it doubles; no ceiling).
struct SeriesSlots {
    let store: SeriesStore
    /// Open addressing on the key: the key, and the dense index + 1 of the series (0: empty).
    var keys = [UInt64](repeating: 0, count: 1024)
    var table = [Int32](repeating: 0, count: 1024)
    /// Every series, in creation order; keeps them alive for ``hot``.
    var dense: ContiguousArray<LatencySeries> = []
    /// Per series (same order as ``dense``): its key and unretained handles to its histogram and top RIPs,
    /// what the hot path reads (plain values: no reference counting, no optionals).
    var hot: ContiguousArray<SeriesHandles> = []
    var lastKey: UInt64 = 0
    var lastIndex = -1

    init(store: SeriesStore) {
        self.store = store
    }

    static func key(_ tid: Int32, _ isa: UInt8, _ reason: UInt32) -> UInt64 {
        // tid (32) | isa (8, high byte of the reason word is never used by VMX/SVM/arm64 codes shown) | reason
        UInt64(UInt32(bitPattern: tid)) << 32 ^ UInt64(reason) ^ UInt64(isa) << 24 | 1 << 63
    }

    static func slot(_ key: UInt64) -> Int { Int(truncatingIfNeeded: (key &* 0x9E37_79B9_7F4A_7C15) >> 40) }

    /// The dense index of the (tid, isa, reason) series, created on first use.
    mutating func index(tid: Int32, isa: UInt8, reason: UInt32) -> Int {
        let key = Self.key(tid, isa, reason)
        // The key mixes tid, isa and reason (it can collide), so even the cached index is checked field by field.
        if key == lastKey, lastIndex >= 0, matches(lastIndex, tid, isa, reason) { return lastIndex }
        let mask = keys.count - 1
        var i = Self.slot(key) & mask
        while true {
            if keys[i] == 0 { break }
            if keys[i] == key, matches(Int(table[i]) - 1, tid, isa, reason) {
                lastKey = key
                lastIndex = Int(table[i]) - 1
                return lastIndex
            }
            i = (i + 1) & mask
        }
        // A new series (cold path: once per thread × reason).
        let s = LatencySeries(tid: tid, isa: isa, reason: reason)
        dense.append(s)
        hot.append(SeriesHandles(s))
        store.append(s)
        if dense.count * 2 > keys.count {
            reindex(capacity: keys.count * 2)
        } else {
            keys[i] = key
            table[i] = Int32(dense.count)
        }
        lastKey = key
        lastIndex = dense.count - 1
        return lastIndex
    }

    /// Rebuilds the index of `dense` with `capacity` slots.
    mutating func reindex(capacity: Int) {
        keys = [UInt64](repeating: 0, count: capacity)
        table = [Int32](repeating: 0, count: capacity)
        let mask = capacity - 1
        for (d, s) in dense.enumerated() {
            let key = Self.key(s.tid, s.isa, s.reason)
            var i = Self.slot(key) & mask
            while keys[i] != 0 { i = (i + 1) & mask }
            keys[i] = key
            table[i] = Int32(d + 1)
        }
        lastIndex = -1
    }

    /// Takes the series of the threads in `dropping` (tid → retirement request) out of the index. Returns them
    /// with their request.
    mutating func retire(_ dropping: [Int32: UInt64]) -> [(request: UInt64, series: LatencySeries)] {
        var handed: [(request: UInt64, series: LatencySeries)] = []
        // Grown as it fills (at most twice the series kept): the old capacity is the burst's, not the threads'.
        var kept: ContiguousArray<LatencySeries> = []
        for s in dense {
            if let r = dropping[s.tid] {
                handed.append((r, s))
            } else {
                kept.append(s)
            }
        }
        dense = kept
        hot = ContiguousArray(kept.map(SeriesHandles.init))
        var capacity = 1024
        while capacity < dense.count * 4 { capacity *= 2 }
        reindex(capacity: capacity)
        return handed
    }

    func matches(_ d: Int, _ tid: Int32, _ isa: UInt8, _ reason: UInt32) -> Bool {
        hot[d].tid == tid && hot[d].reason == reason && hot[d].isa == isa
    }
}

/// A series' key and its histogram and top RIPs, unretained: valid while the ``LatencySeries`` lives (the
/// pairer's ``SeriesSlots/dense`` holds it for as long as the handles are indexed).
struct SeriesHandles {
    let tid: Int32
    let isa: UInt8
    let reason: UInt32
    let histogram: Unmanaged<LatencyHistogram>
    let topRIPs: Unmanaged<TopRIPs>

    init(_ s: LatencySeries) {
        tid = s.tid
        isa = s.isa
        reason = s.reason
        histogram = .passUnretained(s.histogram)
        topRIPs = .passUnretained(s.topRIPs)
    }
}
