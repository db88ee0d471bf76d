import Synchronization

/// Pairs each vCPU thread's `kvm_exit` with its next `kvm_entry` and records the gap as exit latency.
///
/// Feed it events in timestamp order (sources merge per-CPU streams first), so pairs whose exit and entry
/// sit in different CPUs' buffers (the thread migrated) pair like any other. Pairing is by thread id,
/// which works on every kernel and architecture. One thread owns a Pairer; the series and counters it
/// writes are readable from any thread.
public struct Pairer {
    public static let threadCapacity = 8192
    static let threadMask = threadCapacity - 1
    public static let seriesCapacity = 4096

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
    }

    public let counters: PairingCounters
    public let store: SeriesStore
    var threads = [Pending](repeating: Pending(), count: Pairer.threadCapacity)
    /// Per CPU: timestamp of the first event after the kernel last reported losses there.
    @usableFromInline var lastLoss = [UInt64](repeating: 0, count: 1024)
    var seriesSlots: SeriesSlots
    /// Told of every exit and every recorded pair (the timeline's feed), when set. One nil check per exit and
    /// per pair when not.
    public var observer: (any PairObserver)?

    public init(store: SeriesStore = SeriesStore(), counters: PairingCounters = PairingCounters()) {
        self.store = store
        self.counters = counters
        seriesSlots = SeriesSlots(store: store)
    }

    /// Notes a loss on a CPU (an event with ``TraceEvent/afterLoss``); call for every event so flagged.
    @inlinable
    public mutating func noteLoss(cpu: UInt16, at ts: UInt64) {
        lastLoss[Int(cpu) & 1023] = ts
    }

    mutating func pendingIndex(_ tid: Int32) -> Int? {
        if let i = probe(tid) { return i }
        // The table is crowded (threads come and go on a long-running host): keep only the threads with an
        // exit waiting for its entry, and try again. Memory stays fixed; a closed thread loses nothing.
        compact()
        return probe(tid)
    }

    mutating func probe(_ tid: Int32) -> Int? {
        var i = Int(truncatingIfNeeded: UInt32(bitPattern: tid) &* 0x9E37_79B9) & Self.threadMask
        for _ in 0..<64 {
            if threads[i].used {
                if threads[i].tid == tid { return i }
            } else {
                threads[i].used = true
                threads[i].tid = tid
                return i
            }
            i = (i + 1) & Self.threadMask
        }
        return nil
    }

    mutating func compact() {
        let open = threads.filter { $0.used && $0.open }
        for i in threads.indices { threads[i] = Pending() }
        for p in open {
            guard let i = probe(p.tid) else { continue }
            threads[i] = p
        }
    }

    /// An exit: remembered until the thread's next entry.
    public mutating func exit(_ e: TraceEvent) {
        if e.flags & TraceEvent.afterLoss != 0 { noteLoss(cpu: e.cpu, at: e.timestamp) }
        if let observer { observer.exit(tid: e.tid, isa: e.isa, reason: e.reason, at: e.timestamp) }
        guard let i = pendingIndex(e.tid) else {
            counters.overflowCount.singleWriterAdd(1)
            return
        }
        if threads[i].open { counters.orphanExitCount.singleWriterAdd(1) }
        threads[i].open = true
        threads[i].ts = e.timestamp
        threads[i].reason = e.reason
        threads[i].isa = e.isa
        threads[i].cpu = e.cpu
        threads[i].rip = e.rip
        let si = seriesSlots.index(tid: e.tid, isa: e.isa, reason: e.reason)
        threads[i].series = Int32(si)
        if si >= 0 { seriesSlots.dense[si].topRIPs.record(e.rip) }
    }

    /// An entry: closes the thread's pending exit, if any, and records the latency.
    public mutating func entry(_ e: TraceEvent) {
        if e.flags & TraceEvent.afterLoss != 0 { noteLoss(cpu: e.cpu, at: e.timestamp) }
        guard let i = pendingIndex(e.tid) else {
            counters.overflowCount.singleWriterAdd(1)
            return
        }
        guard threads[i].open else {
            counters.orphanEntryCount.singleWriterAdd(1)
            return
        }
        threads[i].open = false
        let x = threads[i]
        let lossOnExitCPU = lastLoss[Int(x.cpu) & 1023]
        let lossOnEntryCPU = lastLoss[Int(e.cpu) & 1023]
        if (lossOnExitCPU > x.ts && lossOnExitCPU <= e.timestamp)
            || (lossOnEntryCPU > x.ts && lossOnEntryCPU <= e.timestamp) {
            counters.invalidatedCount.singleWriterAdd(1)
            return
        }
        guard e.timestamp >= x.ts else {
            counters.negativeCount.singleWriterAdd(1)
            return
        }
        guard x.series >= 0 else {
            counters.overflowCount.singleWriterAdd(1)
            return
        }
        seriesSlots.dense[Int(x.series)].histogram.record(e.timestamp - x.ts)
        counters.pairedCount.singleWriterAdd(1)
        if let observer {
            observer.pair(tid: e.tid, isa: x.isa, reason: x.reason, exitAt: x.ts, latency: e.timestamp - x.ts)
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
/// recording into a series does not.
public final class SeriesStore: Sendable {
    let list = Mutex<[LatencySeries]>([])
    let droppedCount = Atomic<UInt64>(0)

    public init() {}

    public var all: [LatencySeries] { list.withLock { $0 } }
    func append(_ s: LatencySeries) { list.withLock { $0.append(s) } }
}

/// The pairer's private index of its series: open addressing on (tid, isa, reason).
struct SeriesSlots {
    let store: SeriesStore
    /// Open addressing on the key: the dense index + 1 of the series (0: empty).
    var keys = [UInt64](repeating: 0, count: Pairer.seriesCapacity * 2)
    var table = [Int32](repeating: 0, count: Pairer.seriesCapacity * 2)
    /// Every series, in creation order; what the hot path indexes (no optionals, no copies of references).
    var dense: ContiguousArray<LatencySeries> = []
    var lastKey: UInt64 = 0
    var lastIndex = -1

    init(store: SeriesStore) {
        self.store = store
        dense.reserveCapacity(Pairer.seriesCapacity)
    }

    /// The dense index of the (tid, isa, reason) series, created on first use; -1 when the table is full.
    mutating func index(tid: Int32, isa: UInt8, reason: UInt32) -> Int {
        // tid (32) | isa (8, high byte of the reason word is never used by VMX/SVM/arm64 codes shown) | reason
        let key = UInt64(UInt32(bitPattern: tid)) << 32 ^ UInt64(reason) ^ UInt64(isa) << 24 | 1 << 63
        // The key mixes tid, isa and reason (it can collide), so even the cached index is checked field by field.
        if key == lastKey, lastIndex >= 0, matches(lastIndex, tid, isa, reason) { return lastIndex }
        let mask = keys.count - 1
        var i = Int(truncatingIfNeeded: (key &* 0x9E37_79B9_7F4A_7C15) >> 40) & mask
        for _ in 0..<keys.count {
            if keys[i] == 0 {
                guard dense.count < Pairer.seriesCapacity else { return -1 }
                let s = LatencySeries(tid: tid, isa: isa, reason: reason)
                keys[i] = key
                dense.append(s)
                table[i] = Int32(dense.count)
                store.append(s)
                lastKey = key
                lastIndex = dense.count - 1
                return lastIndex
            }
            if keys[i] == key, matches(Int(table[i]) - 1, tid, isa, reason) {
                lastKey = key
                lastIndex = Int(table[i]) - 1
                return lastIndex
            }
            i = (i + 1) & mask
        }
        return -1
    }

    func matches(_ d: Int, _ tid: Int32, _ isa: UInt8, _ reason: UInt32) -> Bool {
        dense[d].tid == tid && dense[d].reason == reason && dense[d].isa == isa
    }
}
