import Synchronization

/// The whole aggregate of one trace: one counting shard per writer thread, the latency series and
/// pairing counters of the pairer, and the identities of the threads seen. Lock-free for writers;
/// readers take snapshots without stopping them.
public final class Aggregator: Sendable {
    public let catalog: EventCatalog
    public let shards: [AggregateShard]
    public let series: SeriesStore
    public let pairing: PairingCounters
    let threads = Mutex<[Int32: ThreadIdentity]>([:])
    /// Threads the resolver did not know (gone before first sight): resolved later from the trace's own records.
    let unresolved = Mutex<Set<Int32>>([])
    let resolver: ThreadResolver?

    public init(catalog: EventCatalog, shardCount: Int, resolver: ThreadResolver? = nil) {
        precondition(catalog.count <= AggregateShard.maxEvents, "at most \(AggregateShard.maxEvents) events")
        self.catalog = catalog
        shards = (0..<max(1, shardCount)).map { _ in AggregateShard() }
        series = SeriesStore()
        pairing = PairingCounters()
        self.resolver = resolver
    }

    /// The writer of shard i. Call once per shard, from the thread that will own it.
    public func writer(shard i: Int) -> ShardWriter {
        ShardWriter(shard: shards[i]) { [self] tid, vcpu in noteThread(tid, vcpu: vcpu) }
    }

    /// A pairer writing into this aggregate's series and pairing counters. Exactly one may exist.
    public func makePairer() -> Pairer { Pairer(store: series, counters: pairing) }

    /// Records who a thread is, the first time it is seen (cold path: once per thread and writer).
    public func noteThread(_ tid: Int32, vcpu: UInt32) {
        if threads.withLock({ $0[tid] != nil }) {
            if vcpu != TraceEvent.noVCPU {
                threads.withLock { if $0[tid]?.vcpu == nil { $0[tid]?.vcpu = vcpu } }
            }
            return
        }
        let resolved = resolver?(tid)
        if resolved == nil { unresolved.withLock { _ = $0.insert(tid) } }
        var identity = resolved ?? ThreadIdentity(vm: tid)
        if identity.vcpu == nil && vcpu != TraceEvent.noVCPU { identity.vcpu = vcpu }
        threads.withLock { if $0[tid] == nil { $0[tid] = identity } }
    }

    /// Resolves, with `lookup`, the threads that were already gone when first seen. Returns how many it named.
    @discardableResult
    public func resolveUnresolved(_ lookup: (Int32) -> ThreadIdentity?) -> Int {
        let pending = unresolved.withLock { $0 }
        var named = 0
        for tid in pending {
            guard var identity = lookup(tid) else { continue }
            threads.withLock {
                if identity.vcpu == nil { identity.vcpu = $0[tid]?.vcpu }
                $0[tid] = identity
            }
            unresolved.withLock { _ = $0.remove(tid) }
            named += 1
        }
        return named
    }

    /// Sets identities known from elsewhere (a trace file's saved cmdlines and tgids).
    public func setIdentity(_ identity: ThreadIdentity, for tid: Int32) {
        threads.withLock { $0[tid] = identity }
    }

    /// Everything counted so far. `timestamp` is the caller's clock (ns), used for rates.
    public func snapshot(timestamp: UInt64) -> AggregateSnapshot {
        var snap = AggregateSnapshot(catalog: catalog, timestamp: timestamp)
        snap.eventTotals = [UInt64](repeating: 0, count: catalog.count)
        var merged: [CounterKey: UInt64] = [:]
        for shard in shards {
            for e in 0..<catalog.count { snap.eventTotals[e] += shard.eventTotal(e) }
            shard.forEachCounter { tid, event, isa, reason, count in
                merged[CounterKey(tid: tid, event: event, isa: isa, reason: reason), default: 0] += count
            }
            snap.lostEvents += shard.lost
            snap.lostUnknownSubbuffers += shard.lostUnknown
            snap.overflowEvents += shard.overflow
            snap.corruptSubbuffers += shard.corrupt
            snap.readErrors += shard.readErrors
        }
        snap.counters = merged.map { CounterRow(key: $0.key, count: $0.value) }
            .sorted { ($0.key.tid, $0.key.event, $0.key.reason) < ($1.key.tid, $1.key.event, $1.key.reason) }
        snap.threads = threads.withLock { $0 }
        snap.series = series.all.map {
            SeriesSnapshot(tid: $0.tid, isa: $0.isa, reason: $0.reason, histogram: $0.histogram.snapshot(),
                           topRIPs: $0.topRIPs.snapshot())
        }
        snap.pairing = pairing.snapshot
        return snap
    }
}

public struct CounterKey: Hashable, Sendable {
    public var tid: Int32
    public var event: UInt16
    public var isa: UInt8
    public var reason: UInt32
    public init(tid: Int32, event: UInt16, isa: UInt8, reason: UInt32) {
        self.tid = tid
        self.event = event
        self.isa = isa
        self.reason = reason
    }
}

public struct CounterRow: Sendable, Equatable {
    public var key: CounterKey
    public var count: UInt64
}

public struct SeriesSnapshot: Sendable {
    public var tid: Int32
    public var isa: UInt8
    public var reason: UInt32
    public var histogram: HistogramSnapshot
    public var topRIPs: [RIPCount]
}

/// A consistent-enough copy of an ``Aggregator``: each counter is exact at some instant during the copy.
public struct AggregateSnapshot: Sendable {
    public var catalog: EventCatalog
    /// The taker's clock, ns.
    public var timestamp: UInt64
    /// Per event index, every event counted (including those whose key overflowed).
    public var eventTotals: [UInt64] = []
    public var counters: [CounterRow] = []
    public var threads: [Int32: ThreadIdentity] = [:]
    public var series: [SeriesSnapshot] = []
    public var pairing = PairingStats()
    /// Events the kernel reported lost (exact counts from sub-buffer headers or per-CPU stats).
    public var lostEvents: UInt64 = 0
    /// Sub-buffers flagged as having lost an unknown number of events.
    public var lostUnknownSubbuffers: UInt64 = 0
    /// Events counted in totals but not in per-thread rows (table full).
    public var overflowEvents: UInt64 = 0
    /// Sub-buffers rejected as malformed: each lost an unknown number of events.
    public var corruptSubbuffers: UInt64 = 0
    /// Failed reads of a ring buffer: the reader of that CPU stopped there.
    public var readErrors: UInt64 = 0

    public init(catalog: EventCatalog, timestamp: UInt64) {
        self.catalog = catalog
        self.timestamp = timestamp
    }

    public func identity(of tid: Int32) -> ThreadIdentity { threads[tid] ?? ThreadIdentity(vm: tid) }
}
