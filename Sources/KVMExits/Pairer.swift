import Synchronization

/// Pairs each vCPU thread's `kvm_exit` with its next `kvm_entry` and records the gap as exit latency.
///
/// Feed it events in timestamp order (sources merge per-CPU streams first), so pairs whose exit and entry
/// sit in different CPUs' buffers (the thread migrated) pair like any other. Pairing is by thread id,
/// which works on every kernel and architecture. One thread owns a Pairer; the series and counters it
/// writes are readable from any thread.
public struct Pairer {
    /// Slots of a new pairer's thread table (it doubles when half full; no ceiling).
    public static let initialThreadCapacity = 1024

    struct Pending {
        var tid: Int32 = 0
        var used = false
        var open = false
        var ts: UInt64 = 0
        var reason: UInt32 = 0
        var isa: UInt8 = 0
        var cpu: UInt16 = 0
        var rip: UInt64 = 0
        /// The exit's series (index in the pairer's series slots), looked up once at the exit; -1 when none.
        var series: Int32 = -1
        /// The counter slot of the thread's entry key in the pipeline's ``ShardWriter`` (a hint; -1: none).
        var entryCounter: Int32 = -1
    }

    /// Per thread slot, 16 entries indexed by the exit reason's low 4 bits: the last series (and counter
    /// slot) that reason led to. Flat, keyed by the thread's slot: an exit whose reason is there finds its
    /// series without hashing. Checked by reason and isa; cleared whenever the thread table is rebuilt.
    struct ReasonSlot {
        var reason: UInt32 = 0
        var isa: UInt8 = 0
        var series: Int32 = -1
        /// The counter slot of this exit key in the pipeline's ``ShardWriter`` (a hint; -1: none).
        var counter: Int32 = -1
    }

    public let counters: PairingCounters
    /// `counters`, for the hot path: no retain/release per event (`counters` keeps the object alive).
    let countersRef: Unmanaged<PairingCounters>
    public let store: SeriesStore
    /// Open addressing on the tid, at most half full.
    var threads = [Pending](repeating: Pending(), count: Pairer.initialThreadCapacity)
    var threadMask = Pairer.initialThreadCapacity - 1
    /// 16 ``ReasonSlot``s per slot of `threads` (slot i: entries 16i ..< 16i + 16).
    var reasonSlots = [ReasonSlot](repeating: ReasonSlot(), count: Pairer.initialThreadCapacity * 16)
    var threadCount = 0
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
        seriesSlots = SeriesSlots(store: store)
        acked = store.acked
    }

    /// Notes a loss on a CPU (an event with ``TraceEvent/afterLoss``); call for every event so flagged.
    @inlinable
    public mutating func noteLoss(cpu: UInt16, at ts: UInt64) {
        lastLoss[Int(cpu) & 1023] = ts
    }

    /// The thread's slot, created on first sight; the table doubles when half full (cold path).
    @inline(__always)
    mutating func pendingIndex(_ tid: Int32) -> Int {
        var i = Self.hash(tid) & threadMask
        while true {
            if !threads[i].used { break }
            if threads[i].tid == tid { return i }
            i = (i + 1) & threadMask
        }
        return newPending(tid, at: i)
    }

    /// A thread seen for the first time (cold path): its slot `i`, or the slot after the table doubled.
    @inline(never)
    mutating func newPending(_ tid: Int32, at i: Int) -> Int {
        if (threadCount + 1) * 2 > threads.count {
            rebuildThreads(capacity: threads.count * 2, keeping: threads)
            return pendingIndex(tid)
        }
        threads[i].used = true
        threads[i].tid = tid
        threadCount += 1
        for c in i &<< 4 ..< (i &+ 1) &<< 4 { reasonSlots[c] = ReasonSlot() }
        return i
    }

    static func hash(_ tid: Int32) -> Int {
        Int(truncatingIfNeeded: (UInt64(UInt32(bitPattern: tid)) &* 0x9E37_79B9_7F4A_7C15) >> 32)
    }

    /// Replaces the thread table with one of `capacity` slots holding the used entries of `entries`.
    mutating func rebuildThreads(capacity: Int, keeping entries: [Pending]) {
        var table = [Pending](repeating: Pending(), count: capacity)
        let mask = capacity - 1
        var n = 0
        for p in entries where p.used {
            var i = Self.hash(p.tid) & mask
            while table[i].used { i = (i + 1) & mask }
            table[i] = p
            n += 1
        }
        threads = table
        threadMask = mask
        threadCount = n
        // Slots moved (and series indices may have): every cached series and counter slot is forgotten.
        reasonSlots = [ReasonSlot](repeating: ReasonSlot(), count: capacity * 16)
    }

    /// Carries out the retirement requests posted since the last call (``RetireBoard``): the retired threads
    /// leave the thread table (an exit still waiting for its entry counts as open at end: the thread is gone)
    /// and their latency series go to the snapshot side, which folds them into their VM's retired row. A later
    /// exit of the same tid starts a new series. Call between batches; one relaxed load when there is nothing.
    public mutating func maintain() {
        guard let board = store.board, board.latest > acked else { return }
        let (requests, latest) = board.requests(after: acked)
        var dropping: [Int32: UInt64] = [:]
        for r in requests where dropping[r.tid] == nil { dropping[r.tid] = r.seq }
        let (handed, remap) = seriesSlots.retire(dropping)
        var kept: [Pending] = []
        kept.reserveCapacity(threadCount)
        for var p in threads where p.used {
            if dropping[p.tid] != nil {
                if p.open { counters.openAtEndCount.singleWriterAdd(1) }
                continue
            }
            if p.series >= 0 { p.series = remap[Int(p.series)] }
            kept.append(p)
        }
        var capacity = Self.initialThreadCapacity
        while capacity < kept.count * 4 { capacity *= 2 }
        rebuildThreads(capacity: capacity, keeping: kept)
        store.retire(handed, keeping: seriesSlots.dense, acked: latest)
        acked = latest
    }

    /// An exit: remembered until the thread's next entry.
    @inline(__always)
    public mutating func exit(_ e: TraceEvent) {
        exit(e, thread: pendingIndex(e.tid))
    }

    /// An exit of the thread in slot `i` (``pendingIndex(_:)``). Returns the index of its ``ReasonSlot``.
    /// Hot path: no reference counting (series and counters are reached through unretained handles that the
    /// pairer's own strong references keep alive); the series comes from the thread's reason slots, else
    /// from one probe of the series index.
    @inline(__always) @discardableResult
    mutating func exit(_ e: TraceEvent, thread i: Int) -> Int {
        if e.flags & TraceEvent.afterLoss != 0 { noteLoss(cpu: e.cpu, at: e.timestamp) }
        if _slowPath(observer != nil) { observer!.exit(tid: e.tid, isa: e.isa, reason: e.reason, at: e.timestamp) }
        if threads[i].open { countersRef._withUnsafeGuaranteedRef { $0.orphanExitCount.singleWriterAdd(1) } }
        let c = i &<< 4 | Int(e.reason & 15)
        let si: Int
        if reasonSlots[c].series >= 0 && reasonSlots[c].reason == e.reason && reasonSlots[c].isa == e.isa {
            si = Int(reasonSlots[c].series)
        } else {
            si = seriesSlots.index(tid: e.tid, isa: e.isa, reason: e.reason)
            reasonSlots[c] = ReasonSlot(reason: e.reason, isa: e.isa, series: Int32(truncatingIfNeeded: si))
        }
        threads[i].open = true
        threads[i].ts = e.timestamp
        threads[i].reason = e.reason
        threads[i].isa = e.isa
        threads[i].cpu = e.cpu
        threads[i].rip = e.rip
        threads[i].series = Int32(truncatingIfNeeded: si)
        seriesSlots.hot[si].topRIPs._withUnsafeGuaranteedRef { $0.record(e.rip) }
        return c
    }

    /// An entry: closes the thread's pending exit, if any, and records the latency.
    @inline(__always)
    public mutating func entry(_ e: TraceEvent) {
        entry(e, thread: pendingIndex(e.tid))
    }

    /// An entry of the thread in slot `i` (``pendingIndex(_:)``).
    @inline(__always)
    mutating func entry(_ e: TraceEvent, thread i: Int) {
        if e.flags & TraceEvent.afterLoss != 0 { noteLoss(cpu: e.cpu, at: e.timestamp) }
        guard threads[i].open else {
            countersRef._withUnsafeGuaranteedRef { $0.orphanEntryCount.singleWriterAdd(1) }
            return
        }
        threads[i].open = false
        let x = threads[i]
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
        seriesSlots.hot[Int(x.series)].histogram._withUnsafeGuaranteedRef { $0.record(latency) }
        countersRef._withUnsafeGuaranteedRef { $0.pairedCount.singleWriterAdd(1) }
        if _slowPath(observer != nil) {
            observer!.pair(tid: e.tid, isa: x.isa, reason: x.reason, exitAt: x.ts, latency: latency)
        }
    }

    /// At the end of a trace: exits still waiting for an entry are counted as open at the end (the trace
    /// stopped, or the vCPU left for userspace and never came back), apart from orphans.
    public mutating func finish() {
        for i in threads.indices where threads[i].open {
            threads[i].open = false
            counters.openAtEndCount.singleWriterAdd(1)
        }
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
    /// with their request, and each old dense index's new one (-1: retired).
    mutating func retire(_ dropping: [Int32: UInt64]) -> (handed: [(request: UInt64, series: LatencySeries)], remap: [Int32]) {
        var handed: [(request: UInt64, series: LatencySeries)] = []
        var remap = [Int32](repeating: -1, count: dense.count)
        var kept: ContiguousArray<LatencySeries> = []
        kept.reserveCapacity(dense.count)
        for (d, s) in dense.enumerated() {
            if let r = dropping[s.tid] {
                handed.append((r, s))
            } else {
                remap[d] = Int32(kept.count)
                kept.append(s)
            }
        }
        dense = kept
        hot = ContiguousArray(kept.map(SeriesHandles.init))
        var capacity = 1024
        while capacity < dense.count * 4 { capacity *= 2 }
        reindex(capacity: capacity)
        return (handed, remap)
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
