import Synchronization

/// Retirement requests, from the snapshot side to every writer of an ``Aggregator`` (its shard writers and
/// its pairer): "thread `tid` has exited". Each request has a sequence number; a writer carries out every
/// request newer than the last one it did (``ShardWriter/maintain()``, ``Pairer/maintain()``) between
/// batches, and says so (its ack). Requests every writer has carried out are pruned.
public final class RetireBoard: Sendable {
    @usableFromInline let latestSeq = Atomic<UInt64>(0)
    let list = Mutex<[(seq: UInt64, tid: Int32)]>([])

    public init() {}

    /// The newest request's number (0: none yet). One relaxed load: what a writer checks per batch.
    @inlinable public var latest: UInt64 { latestSeq.load(ordering: .relaxed) }

    /// Posts one request per tid; returns their numbers, in order.
    func post(_ tids: [Int32]) -> [UInt64] {
        list.withLock { l in
            var seq = latestSeq.load(ordering: .relaxed)
            var out: [UInt64] = []
            for tid in tids {
                seq += 1
                l.append((seq, tid))
                out.append(seq)
            }
            latestSeq.store(seq, ordering: .releasing)
            return out
        }
    }

    /// The requests newer than `after`, and the newest number.
    func requests(after: UInt64) -> (requests: [(seq: UInt64, tid: Int32)], latest: UInt64) {
        list.withLock { l in (l.filter { $0.seq > after }, latestSeq.load(ordering: .relaxed)) }
    }

    /// Forgets the requests up to `seq` (every writer has carried them out). Returns how many it forgot.
    @discardableResult
    func prune(through seq: UInt64) -> Int {
        list.withLock { l in
            let before = l.count
            l.removeAll { $0.seq <= seq }
            l.shrinkIfSparse()
            return before - l.count
        }
    }

    /// Requests not yet carried out by every writer.
    public var pending: Int { list.withLock { $0.count } }
}

/// How full the aggregate is: what `/metrics` and `stat --json` export as occupancy.
public struct Occupancy: Sendable, Equatable, Codable {
    /// Threads with counters of their own now (seen and not retired).
    public var liveThreads: Int = 0
    /// (thread × exit reason) latency series held now.
    public var liveSeries: Int = 0
    /// Threads retired since the start (exited, or their tid reused): their counts live on in their VM's
    /// retired rows.
    public var retiredThreads: UInt64 = 0
    /// Retired (VM × vCPU) rows kept.
    public var retiredRows: Int = 0
    /// VMs whose retired rows were folded into the `other` VM because more than the retired-VM history
    /// (``Aggregator/retiredVMCapacity``) had stopped.
    public var foldedVMs: UInt64 = 0
    /// Thread-exit records (`sched:sched_process_exit`) the readers saw, every traced thread's; nil when the
    /// source does not trace them (``Aggregator/threadExits``).
    public var threadExits: UInt64?
    /// Of ``retiredThreads``, those retired on their exit record (the others were found gone from /proc).
    public var retiredOnExit: UInt64 = 0

    public init(liveThreads: Int = 0, liveSeries: Int = 0, retiredThreads: UInt64 = 0, retiredRows: Int = 0,
                foldedVMs: UInt64 = 0, threadExits: UInt64? = nil, retiredOnExit: UInt64 = 0) {
        self.liveThreads = liveThreads
        self.liveSeries = liveSeries
        self.retiredThreads = retiredThreads
        self.retiredRows = retiredRows
        self.foldedVMs = foldedVMs
        self.threadExits = threadExits
        self.retiredOnExit = retiredOnExit
    }
}

/// What retired threads leave behind, owned by the snapshot side of an ``Aggregator`` (under its lock):
/// per VM × vCPU, the counters and latency histograms of every thread of that VM and vCPU that retired.
/// Each such row has a synthetic, negative tid, so snapshots carry it like a thread (its identity gives the
/// VM and vCPU) and every view sums it into the same rows as the live threads: totals never go down.
struct RetiredTotals {
    struct Bucket: Hashable {
        var vm: Int32
        var vcpu: UInt32?
    }

    struct SeriesKey: Hashable {
        var tid: Int32
        var isa: UInt8
        var reason: UInt32
    }

    /// The tid of the `other` row: retired VMs beyond the history.
    static let otherTid: Int32 = -1
    /// The VM number of the `other` row (views show it as "other").
    public static let otherVM: Int32 = -1

    /// Retirement request → the thread it retired and its identity (until every writer has handed its counts).
    var retiring: [UInt64: (tid: Int32, identity: ThreadIdentity)] = [:]
    var buckets: [Bucket: Int32] = [:]
    var identities: [Int32: ThreadIdentity] = [:]
    /// VMs with retired rows, oldest retirement first.
    var vmOrder: [Int32] = []
    var vmsWithRows = Set<Int32>()
    var counters: [CounterKey: UInt64] = [:]
    var series: [SeriesKey: (histogram: HistogramSnapshot, topRIPs: [RIPCount])] = [:]
    var retiredThreads: UInt64 = 0
    var retiredOnExit: UInt64 = 0
    var foldedVMs: UInt64 = 0
    var nextTid: Int32 = -2

    /// A key of the shards' ``IOAccessTable``s (thread, space, address, direction).
    struct IOKey: Hashable {
        var tid: Int32
        var space: UInt8
        var address: UInt64
        var direction: UInt8
        init(_ r: IOAccessRow) {
            tid = r.tid
            space = r.space.rawValue
            address = r.address
            direction = r.direction.rawValue
        }
    }

    /// The I/O accesses of retired threads, frozen when they retired, under their retired row's tid (so the
    /// row's identity names their VM; a folded VM's go to the `other` row). The tables keep counting under the
    /// real tid, which a new thread may reuse: what was frozen is subtracted from it (``ioBaseline``).
    var ioFrozen: [IOKey: IOAccessRow] = [:]
    /// Per real tid and key, the counts already frozen (summed over the tid's retirements).
    var ioBaseline: [IOKey: IOAccessRow] = [:]

    /// Freezes the I/O rows of threads being retired: `current` holds each key's counts now (merged over the
    /// shards), `identities` who each tid was. The part not frozen before moves to the retired row.
    mutating func freezeIO(_ current: [IOKey: IOAccessRow], identities: [Int32: ThreadIdentity]) {
        for (k, now) in current {
            guard let id = identities[k.tid] else { continue }
            var part = ioBaseline[k].map { now.minus($0) } ?? now
            guard part.count > 0 || part.timed > 0 else { continue }
            ioBaseline[k] = now
            var owner = k
            owner.tid = tid(for: id)
            part.tid = owner.tid
            if ioFrozen[owner] == nil { ioFrozen[owner] = part } else { ioFrozen[owner]!.merge(part) }
        }
    }

    /// The synthetic tid of an identity's retired row, created on first use.
    mutating func tid(for identity: ThreadIdentity) -> Int32 {
        let key = Bucket(vm: identity.vm, vcpu: identity.vcpu)
        if let t = buckets[key] { return t }
        if vmsWithRows.insert(identity.vm).inserted { vmOrder.append(identity.vm) }
        let t = nextTid
        nextTid -= 1
        buckets[key] = t
        identities[t] = ThreadIdentity(vm: identity.vm, vmName: identity.vmName, vcpu: identity.vcpu)
        return t
    }

    /// The row a retirement request's counts go to (the `other` row when its identity is unknown).
    mutating func tid(forRequest request: UInt64) -> Int32 {
        guard let r = retiring[request] else { return otherRow() }
        return tid(for: r.identity)
    }

    mutating func otherRow() -> Int32 {
        if identities[Self.otherTid] == nil {
            identities[Self.otherTid] = ThreadIdentity(vm: Self.otherVM, vmName: "other")
        }
        return Self.otherTid
    }

    /// For each tid with a retirement under way, its requests (ascending) and the row each goes to: a writer
    /// whose ack is below a request still holds that thread's keys, which already count in its row.
    func retiringRows() -> [Int32: [(seq: UInt64, row: Int32)]] {
        var out: [Int32: [(seq: UInt64, row: Int32)]] = [:]
        for (seq, r) in retiring {
            guard let row = buckets[Bucket(vm: r.identity.vm, vcpu: r.identity.vcpu)] else { continue }
            out[r.tid, default: []].append((seq, row))
        }
        for k in out.keys { out[k]!.sort { $0.seq < $1.seq } }
        return out
    }

    /// The row a key of `tid` held by a writer that has carried out requests up to `acked` counts in: the
    /// retired row of the first later request for that tid, else the tid itself (a live thread).
    static func row(of tid: Int32, acked: UInt64, _ rows: [Int32: [(seq: UInt64, row: Int32)]]) -> Int32 {
        guard let list = rows[tid] else { return tid }
        for r in list where r.seq > acked { return r.row }
        return tid
    }

    mutating func fold(_ counts: [RetiredCount]) {
        for c in counts {
            var key = c.key
            key.tid = tid(forRequest: c.request)
            counters[key, default: 0] &+= c.count
        }
    }

    mutating func fold(series handed: [(request: UInt64, series: LatencySeries)]) {
        for (request, s) in handed {
            let key = SeriesKey(tid: tid(forRequest: request), isa: s.isa, reason: s.reason)
            let h = s.histogram.snapshot()
            let rips = s.topRIPs.snapshot()
            if var old = series[key] {
                old.histogram.merge(h)
                old.topRIPs = TopRIPs.merge(old.topRIPs, rips, limit: 16)
                series[key] = old
            } else {
                series[key] = (h, rips)
            }
        }
    }

    /// Folds the oldest stopped VMs' rows into the `other` row until at most `capacity` VMs have rows.
    /// `alive`: VMs with live threads (never folded: their rows would go down).
    mutating func evict(capacity: Int, alive: Set<Int32>) {
        guard vmOrder.count > capacity else { return }
        var excess = vmOrder.count - capacity
        var victims = Set<Int32>()
        for vm in vmOrder where excess > 0 && !alive.contains(vm) && vm != Self.otherVM {
            victims.insert(vm)
            excess -= 1
        }
        guard !victims.isEmpty else { return }
        let other = otherRow()
        let gone = Set(identities.filter { victims.contains($0.value.vm) }.map(\.key))
        var moved: [CounterKey: UInt64] = [:]
        counters = counters.filter { k, v in
            guard gone.contains(k.tid) else { return true }
            moved[CounterKey(tid: other, event: k.event, isa: k.isa, reason: k.reason), default: 0] &+= v
            return false
        }
        for (k, v) in moved { counters[k, default: 0] &+= v }
        var movedSeries: [SeriesKey: (histogram: HistogramSnapshot, topRIPs: [RIPCount])] = [:]
        series = series.filter { k, v in
            guard gone.contains(k.tid) else { return true }
            let o = SeriesKey(tid: other, isa: k.isa, reason: k.reason)
            if var m = movedSeries[o] {
                m.histogram.merge(v.histogram)
                m.topRIPs = TopRIPs.merge(m.topRIPs, v.topRIPs, limit: 16)
                movedSeries[o] = m
            } else {
                movedSeries[o] = v
            }
            return false
        }
        for (k, v) in movedSeries {
            if var m = series[k] {
                m.histogram.merge(v.histogram)
                m.topRIPs = TopRIPs.merge(m.topRIPs, v.topRIPs, limit: 16)
                series[k] = m
            } else {
                series[k] = v
            }
        }
        var movedIO: [IOKey: IOAccessRow] = [:]
        ioFrozen = ioFrozen.filter { k, v in
            guard gone.contains(k.tid) else { return true }
            var o = k
            o.tid = other
            var row = v
            row.tid = other
            if movedIO[o] == nil { movedIO[o] = row } else { movedIO[o]!.merge(row) }
            return false
        }
        for (k, v) in movedIO { if ioFrozen[k] == nil { ioFrozen[k] = v } else { ioFrozen[k]!.merge(v) } }
        for t in gone { identities[t] = nil }
        buckets = buckets.filter { !victims.contains($0.key.vm) }
        vmOrder.removeAll { victims.contains($0) }
        vmsWithRows.subtract(victims)
        foldedVMs += UInt64(victims.count)
    }
}
