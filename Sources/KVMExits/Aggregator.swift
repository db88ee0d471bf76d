import Dispatch
import Synchronization

/// The whole aggregate of one trace: one counting shard per writer thread, the latency series and
/// pairing counters of the pairer, and the identities of the threads seen. Lock-free for writers;
/// readers take snapshots without stopping them.
///
/// ## Thread lifecycle (long-running sessions)
///
/// Made with `retirement: true`, threads retire: ``retireExitedThreads()`` (snapshot side, off the hot path)
/// finds the threads that have exited — gone from /proc, or their tid now names a thread started later
/// (``ThreadStartTime``) — and ``retire(_:)`` posts them on the ``RetireBoard``. Each writer then drops their
/// keys and series between batches and hands their counts and histograms over; the next ``snapshot(timestamp:)``
/// folds them into one retired row per VM × vCPU (a synthetic negative tid whose identity is that VM and vCPU).
/// Every view sums rows by VM, vCPU and reason, so every total stays exactly what it was and keeps growing:
/// no count and no pair is discarded. Memory then follows the live threads, plus one row per retired VM × vCPU
/// for the last ``retiredVMCapacity`` stopped VMs; older stopped VMs fold into one `other` row (VM -1).
///
/// With `threadExits` (a live session that traces `sched:sched_process_exit`), the readers note each thread's
/// exit record (``noteThreadExit(_:timestamp:)``) and the snapshot side retires the known ones once every
/// event up to the exit's timestamp has been counted and paired (``takeThreadExits(through:)``, then
/// ``retire(_:onExit:)``): cost O(exits), no /proc read per live thread. ``retireExitedThreads()`` is then only
/// a safety net (exit records lost with the ring buffer's overflows), and no start time is read at first sight.
public final class Aggregator: Sendable {
    public let catalog: EventCatalog
    public let shards: [AggregateShard]
    public let series: SeriesStore
    public let pairing: PairingCounters
    /// Retirement requests to the writers; nil when threads never retire (offline traces).
    public let board: RetireBoard?
    /// Stopped VMs whose retired rows are kept apart; older ones fold into the `other` row.
    public let retiredVMCapacity: Int
    let threads = Mutex<[Int32: ThreadIdentity]>([:])
    /// Threads noted by the writers and not resolved yet: tid → vCPU number (``TraceEvent/noVCPU``: unknown).
    let pendingThreads = Mutex<[Int32: UInt32]>([:])
    /// Start time of each thread when first seen (``ThreadStartTime``), to tell a reused tid.
    let startTimes = Mutex<[Int32: UInt64]>([:])
    /// Threads the resolver did not know (gone before first sight): resolved later from the trace's own records.
    let unresolved = Mutex<Set<Int32>>([])
    /// When a retirement check first found each thread gone. A thread retires only once it has been gone for
    /// ``retireDelay`` (twice that while it has no name): its last events, still in the ring buffers or on the
    /// way to the pairer when it exited, are counted under it first, and the kernel's saved tgids can name it.
    let goneSince = Mutex<[Int32: ContinuousClock.Instant]>([:])
    /// How long a thread must have been gone before it retires.
    public let retireDelay: Duration
    let resolver: ThreadResolver?
    let startTime: ThreadStartTime?
    /// What retired threads left, and the snapshot lock: snapshots run one at a time (each takes the writers'
    /// hand-overs exactly once).
    let retired = Mutex<RetiredTotals>(RetiredTotals())
    /// Identities of retired threads that still have rows in the shards' ``IOAccessTable``s (those rows keep
    /// the tid): so their accesses stay their VM's. Pruned to the tids of the rows at each snapshot.
    let ioRetired = Mutex<[Int32: ThreadIdentity]>([:])
    /// Whether the source traces thread exits (``noteThreadExit(_:timestamp:)`` retires threads).
    public let threadExits: Bool
    /// Thread-exit records noted by the readers and not yet taken (tid, trace-clock ns), in no order.
    let exitNotes = Mutex<[(tid: Int32, timestamp: UInt64)]>([])
    /// Thread-exit records noted (every traced thread's, vCPU thread or not).
    let exitsSeen = Atomic<UInt64>(0)
    /// Signalled each time ``exitBacklog`` more exit records have been noted since the last take: a live
    /// session's retirer waits on it, so that under churn threads retire well before the next scrape or
    /// interval (memory follows the threads alive), while a quiet host never wakes it.
    public let exitWake = DispatchSemaphore(value: 0)
    /// With `wakeOnNewThreads`: signalled when a writer notes a thread not seen before (at most one signal
    /// outstanding, ``takeNewThreadSignal()`` re-arms it). A live session's namer thread waits on it and resolves
    /// the thread at once (``resolveNewThreads()``), while it still runs: named from /proc, not later from the
    /// kernel's saved cmdlines, which other processes overwrite on a busy host.
    public let newThreadWake: DispatchSemaphore?
    let newThreadSignalled = Atomic<Bool>(false)
    /// Held for the whole of ``resolveNewThreads()``: a caller returns once every thread noted before its call is
    /// resolved, even when the namer thread took them a moment before.
    let resolving = Mutex<Void>(())
    /// Exit records that wake ``exitWake``.
    public static let exitBacklog = 1024
    /// Bumped each time retired threads' hand-overs are taken or their carried-out requests forgotten
    /// (``snapshot(timestamp:)``, ``collectRetired()``): the memory their keys and series held is free then.
    let collections = Atomic<UInt64>(0)

    /// - Parameters:
    ///   - resolver: who a thread is, asked once per new thread.
    ///   - retirement: whether threads retire (``retire(_:)``); writers then follow a ``RetireBoard``.
    ///   - startTime: a thread's start time, to tell when it has exited or its tid was reused
    ///     (``retireExitedThreads()``); nil: only ``retire(_:)`` retires.
    ///   - retiredVMCapacity: stopped VMs whose retired rows are kept apart (at least 1).
    ///   - retireDelay: how long ``retireExitedThreads()`` waits after first finding a thread gone.
    ///   - threadExits: the source notes thread exits (``noteThreadExit(_:timestamp:)``): `startTime` is read
    ///     only by ``retireExitedThreads()`` (the safety net), never at first sight.
    ///   - wakeOnNewThreads: signal ``newThreadWake`` when a writer notes a new thread.
    public init(catalog: EventCatalog, shardCount: Int, resolver: ThreadResolver? = nil, retirement: Bool = false,
                startTime: ThreadStartTime? = nil, retiredVMCapacity: Int = 1024, retireDelay: Duration = .seconds(1),
                threadExits: Bool = false, wakeOnNewThreads: Bool = false) {
        newThreadWake = wakeOnNewThreads ? DispatchSemaphore(value: 0) : nil
        self.retireDelay = retireDelay
        self.threadExits = threadExits
        precondition(catalog.count <= AggregateShard.maxEvents, "at most \(AggregateShard.maxEvents) events")
        self.catalog = catalog
        let board = retirement ? RetireBoard() : nil
        self.board = board
        let hasIO = catalog.entries.contains { $0.role == .pio || $0.role == .mmio }
        shards = (0..<max(1, shardCount)).map { _ in AggregateShard(board: board, io: hasIO ? IOAccessTable() : nil) }
        series = SeriesStore(board: board)
        pairing = PairingCounters()
        self.resolver = resolver
        self.startTime = startTime
        self.retiredVMCapacity = max(1, retiredVMCapacity)
    }

    /// The writer of shard i. Call once per shard, from the thread that will own it.
    public func writer(shard i: Int) -> ShardWriter {
        ShardWriter(shard: shards[i], roles: catalog.entries.map(\.role)) { [self] tid, vcpu in noteThread(tid, vcpu: vcpu) }
    }

    /// A pairer writing into this aggregate's series and pairing counters. Exactly one may exist.
    public func makePairer() -> Pairer {
        series.hasWriter.store(true, ordering: .relaxed)
        return Pairer(store: series, counters: pairing)
    }

    /// Notes a thread the first time a writer sees it (cold path: once per thread and writer), and again once
    /// its vCPU number shows up. On the readers' threads, so it only queues the tid: who the thread is (three
    /// /proc reads) is looked up on the snapshot side (``resolveNewThreads()``), never where the ring buffers
    /// are drained.
    public func noteThread(_ tid: Int32, vcpu: UInt32) {
        let known = threads.withLock { t -> Bool in
            guard t[tid] != nil else { return false }
            if vcpu != TraceEvent.noVCPU && t[tid]?.vcpu == nil { t[tid]?.vcpu = vcpu }
            return true
        }
        if known { return }
        let new = pendingThreads.withLock { p -> Bool in
            if let v = p[tid] {
                if v == TraceEvent.noVCPU { p[tid] = vcpu }
                return false
            }
            p[tid] = vcpu
            return true
        }
        if new, let wake = newThreadWake, !newThreadSignalled.exchange(true, ordering: .acquiringAndReleasing) {
            wake.signal()
        }
    }

    /// The namer thread, woken by ``newThreadWake``, before it resolves: threads noted from now on wake it again.
    public func takeNewThreadSignal() { _ = newThreadSignalled.exchange(false, ordering: .acquiringAndReleasing) }

    /// Resolves the threads noted since the last call (``ThreadResolver``, and ``ThreadStartTime`` with
    /// retirement); a thread the resolver does not know is its own VM until ``resolveUnresolved(_:)`` names it.
    /// Snapshot side: ``snapshot(timestamp:)`` and ``retireExitedThreads()`` call it first.
    public func resolveNewThreads() {
        resolving.withLock { _ in resolvePending() }
    }

    private func resolvePending() {
        let pending = pendingThreads.withLock { p in
            defer { p = [:] }
            return p
        }
        for (tid, vcpu) in pending.sorted(by: { $0.key < $1.key }) {
            // The traced vcpu_id is kept beside a number the thread's name gave (tracedVCPU): a mismatch is shown.
            if threads.withLock({ $0[tid] != nil }) {
                if vcpu != TraceEvent.noVCPU {
                    threads.withLock {
                        if $0[tid]?.vcpu == nil { $0[tid]?.vcpu = vcpu }
                        if $0[tid]?.tracedVCPU == nil { $0[tid]?.tracedVCPU = vcpu }
                    }
                }
                continue
            }
            let resolved = resolver?(tid)
            if resolved == nil { unresolved.withLock { _ = $0.insert(tid) } }
            var identity = resolved ?? ThreadIdentity(vm: tid)
            if identity.vcpu == nil && vcpu != TraceEvent.noVCPU { identity.vcpu = vcpu }
            if vcpu != TraceEvent.noVCPU { identity.tracedVCPU = vcpu }
            if !threadExits, let startTime, let started = startTime(tid, identity.vm) {
                startTimes.withLock { $0[tid] = started }
            }
            threads.withLock { if $0[tid] == nil { $0[tid] = identity } }
        }
    }

    /// Resolves, with `lookup`, the threads that were already gone when first seen. Returns how many it named.
    @discardableResult
    public func resolveUnresolved(only: Set<Int32>? = nil, _ lookup: (Int32) -> ThreadIdentity?) -> Int {
        resolveNewThreads()
        var pending = unresolved.withLock { $0 }
        if let only { pending.formIntersection(only) }
        var named = 0
        for tid in pending {
            guard var identity = lookup(tid) else { continue }
            threads.withLock {
                if identity.vcpu == nil { identity.vcpu = $0[tid]?.vcpu }
                if identity.tracedVCPU == nil { identity.tracedVCPU = $0[tid]?.tracedVCPU }
                $0[tid] = identity
            }
            unresolved.withLock { _ = $0.remove(tid) }
            named += 1
        }
        return named
    }

    /// Threads the resolver did not know, not named yet (after resolving those noted since the last look).
    public var unresolvedCount: Int {
        resolveNewThreads()
        return unresolved.withLock { $0.count }
    }

    /// The unresolved threads that retirement checks have found gone for at least `duration`: the ones to name
    /// from the kernel's saved tgids now (a thread that just exited may not be recorded there yet).
    public func unresolvedGone(for duration: Duration) -> Set<Int32> {
        let now = ContinuousClock.now
        let since = goneSince.withLock { $0 }
        return unresolved.withLock { u in u.filter { tid in since[tid].map { now - $0 >= duration } ?? false } }
    }

    /// Sets identities known from elsewhere (a trace file's saved cmdlines and tgids).
    public func setIdentity(_ identity: ThreadIdentity, for tid: Int32) {
        threads.withLock {
            var identity = identity
            if identity.tracedVCPU == nil { identity.tracedVCPU = $0[tid]?.tracedVCPU }
            $0[tid] = identity
        }
    }

    /// Retires the threads that have exited since they were first seen: ``ThreadStartTime`` finds no such
    /// thread in its VM for ``retireDelay`` (twice that for a thread without a name), or a thread started at
    /// another time (the tid was reused: at once). Snapshot side, off the hot path: one start-time lookup per
    /// live thread. Returns the tids retired. Does nothing without
    /// `retirement` and `startTime`.
    @discardableResult
    public func retireExitedThreads() -> [Int32] {
        guard board != nil, let startTime else { return [] }
        resolveNewThreads()
        let live = threads.withLock { $0 }
        let starts = startTimes.withLock { $0 }
        var gone: [Int32] = []
        let nameless = unresolved.withLock { $0 }
        let now = ContinuousClock.now
        var since = goneSince.withLock { $0 }
        var firstStarts: [Int32: UInt64] = [:]
        for (tid, identity) in live {
            let started = startTime(tid, identity.vm)
            if threadExits, let started, starts[tid] == nil {
                // Not read at first sight with exit records: the first check takes it.
                firstStarts[tid] = started
                since[tid] = nil
                continue
            }
            guard started == nil || started != starts[tid] else {
                since[tid] = nil
                continue
            }
            // A reused tid retires at once (the new thread's events are coming); a vanished one after the delay.
            let first = since[tid] ?? now
            since[tid] = first
            if started != nil || now - first >= (nameless.contains(tid) ? retireDelay * 2 : retireDelay) {
                gone.append(tid)
            }
        }
        for tid in since.keys where live[tid] == nil { since[tid] = nil }
        for tid in gone { since[tid] = nil }
        goneSince.withLock { $0 = since }
        if !firstStarts.isEmpty { startTimes.withLock { s in for (t, v) in firstStarts where live[t] != nil { s[t] = v } } }
        gone.sort()
        retire(gone)
        return gone
    }

    /// Notes a thread's exit record (`sched:sched_process_exit`, trace-clock ns): the reader's cold path, once
    /// per exiting thread of the traced processes (one locked append). Retired by the snapshot side once
    /// everything up to `timestamp` has been counted and paired (``takeThreadExits(through:)``).
    public func noteThreadExit(_ tid: Int32, timestamp: UInt64) {
        exitsSeen.wrappingAdd(1, ordering: .relaxed)
        let pending = exitNotes.withLock { n -> Int in
            n.append((tid, timestamp))
            return n.count
        }
        if pending % Self.exitBacklog == 0 { exitWake.signal() }
    }

    /// Takes the exit records noted at or before `bound` (trace-clock ns: every reader has counted, and the
    /// pairer has paired, every event up to it) whose threads are known, and returns those threads, ascending:
    /// the ones to ``retire(_:onExit:)``. A record of a thread not seen stays for ``exitGrace`` past `bound`
    /// (its thread's events may still come, late), then is dropped (no vCPU thread); later records stay.
    /// A tid is taken to be the thread that exited: a new thread reusing it within the time between the exit
    /// and the next call needs the pid space to wrap in that time.
    public func takeThreadExits(through bound: UInt64) -> [Int32] {
        resolveNewThreads()
        let known = threads.withLock { $0 }
        let due = exitNotes.withLock { notes -> [Int32] in
            var out: [Int32] = []
            notes.removeAll { n in
                guard n.timestamp <= bound else { return false }
                if known[n.tid] != nil {
                    out.append(n.tid)
                    return true
                }
                return n.timestamp &+ Self.exitGrace <= bound
            }
            notes.shrinkIfSparse()
            return out
        }
        return Set(due).sorted()
    }

    /// How long past a take's bound the exit record of a thread not seen is kept, ns: less than the pid space
    /// takes to wrap (32,768 tids at 21,000 new threads a second: 1.5 s), or a new thread reusing that tid
    /// would be retired on it.
    public static let exitGrace: UInt64 = 1_000_000_000

    /// Losses the writers have reported so far (events lost, sub-buffers with unknown losses, corrupt
    /// sub-buffers, read errors), summed: when it moves, exit records may have been lost too.
    public var lossesReported: UInt64 {
        shards.reduce(0) { $0 &+ $1.lost &+ $1.lostUnknown &+ $1.corrupt &+ $1.readErrors }
    }

    /// Exit records noted and not yet taken (``takeThreadExits(through:)``).
    public var pendingThreadExits: Int { exitNotes.withLock { $0.count } }

    /// The threads among `tids` that have no name yet (gone before the resolver looked): to name from the
    /// kernel's saved tgids before they retire.
    public func unresolved(among tids: [Int32]) -> Set<Int32> {
        unresolved.withLock { u in Set(tids.filter { u.contains($0) }) }
    }

    /// Retires threads (see the type's documentation): from the next snapshot on, their counts and histograms
    /// are in their VM × vCPU's retired row; a later event of the same tid is a new thread (resolved anew, new
    /// keys, new series). Needs `retirement`; tids not seen are ignored. `onExit`: retired on their exit
    /// records (counted in ``Occupancy/retiredOnExit``).
    public func retire(_ tids: [Int32], onExit: Bool = false) {
        guard let board, !tids.isEmpty else { return }
        resolveNewThreads()
        retired.withLock { r in
            var identities: [(Int32, ThreadIdentity)] = []
            threads.withLock { t in
                for tid in tids { if let id = t.removeValue(forKey: tid) { identities.append((tid, id)) } }
                // Memory follows the live threads: a burst's capacity goes once it has retired.
                t.shrinkIfSparse()
            }
            startTimes.withLock { s in
                for (tid, _) in identities { s[tid] = nil }
                s.shrinkIfSparse()
            }
            unresolved.withLock { u in
                for (tid, _) in identities { u.remove(tid) }
                u.shrinkIfSparse()
            }
            let seqs = board.post(identities.map(\.0))
            for (seq, (tid, id)) in zip(seqs, identities) {
                r.retiring[seq] = (tid, id)
                _ = r.tid(for: id)
            }
            if shards.first?.io != nil, !identities.isEmpty {
                // Their I/O rows so far go to their retired rows now: a new thread reusing the tid counts afresh.
                let byTid = Dictionary(identities, uniquingKeysWith: { a, _ in a })
                r.freezeIO(mergedIORows(only: byTid), identities: byTid)
                ioRetired.withLock { for (tid, id) in identities { $0[tid] = id } }
            }
            r.retiredThreads += UInt64(identities.count)
            if onExit { r.retiredOnExit += UInt64(identities.count) }
            goneSince.withLock { g in
                for (tid, _) in identities { g[tid] = nil }
                g.shrinkIfSparse()
            }
            evict(&r)
        }
    }

    /// Folds the oldest stopped VMs beyond the history into `other`: only VMs without live threads and without
    /// retirements under way (their rows must never go down).
    func evict(_ r: inout RetiredTotals) {
        guard r.vmOrder.count > retiredVMCapacity else { return }
        var alive = Set(threads.withLock { $0.values.map(\.vm) })
        for x in r.retiring.values { alive.insert(x.identity.vm) }
        let before = Set(r.vmOrder)
        r.evict(capacity: retiredVMCapacity, alive: alive)
        // The folded VMs' retired threads' I/O accesses go with their counters: to the `other` VM.
        let folded = before.subtracting(r.vmOrder)
        guard !folded.isEmpty, shards.first?.io != nil else { return }
        ioRetired.withLock { io in
            for (tid, id) in io where folded.contains(id.vm) {
                io[tid] = ThreadIdentity(vm: RetiredTotals.otherVM, vmName: "other", vcpu: id.vcpu, comm: id.comm)
            }
        }
    }

    /// Forgets the retirement requests up to `done` (every writer has carried them out and handed their counts
    /// and series over, taken before this call) and folds stopped VMs beyond the history. Returns whether any
    /// request was forgotten.
    func forget(_ r: inout RetiredTotals, board: RetireBoard, through done: UInt64) -> Bool {
        guard done != .max, done > 0 else { return false }
        let before = r.retiring.count
        r.retiring = r.retiring.filter { $0.key > done }
        let pruned = board.prune(through: done)
        evict(&r)
        return pruned > 0 || r.retiring.count != before
    }

    /// Takes what the writers have handed over for retired threads (their counts and latency series) into the
    /// retired rows, and forgets the requests every writer has carried out, as ``snapshot(timestamp:)`` does but
    /// without a snapshot: a live session's retirement rounds call it, so that what retired threads held is freed
    /// (and can go back to the kernel) when they retire rather than at the next scrape, which may be minutes
    /// away. Every later snapshot sees each count and histogram exactly once, in its retired row. Returns whether
    /// anything was taken or forgotten. Cost ∝ the hand-overs and the requests under way.
    @discardableResult
    public func collectRetired() -> Bool {
        guard let board else { return false }
        return retired.withLock { r in
            // Acks first, as in a snapshot: every hand-over of a request up to the smallest ack is taken below.
            var done = UInt64.max
            for shard in shards { done = Swift.min(done, shard.acked) }
            if series.hasWriter.load(ordering: .relaxed) { done = Swift.min(done, series.acked) }
            var took = false
            for shard in shards {
                let handed = shard.takeHandoff()
                r.fold(handed)
                took = !handed.isEmpty || took
            }
            let handedSeries = series.takeHandoff()
            r.fold(series: handedSeries)
            took = !handedSeries.isEmpty || took
            took = forget(&r, board: board, through: done) || took
            if took { collections.wrappingAdd(1, ordering: .relaxed) }
            return took
        }
    }

    /// The capacities of the per-thread tables now: they grow with the live threads and shrink once they
    /// retire (see ``AggregatorCapacities``).
    public var capacities: AggregatorCapacities {
        AggregatorCapacities(threads: threads.withLock { $0.capacity }, unresolved: unresolved.withLock { $0.capacity },
                             exitNotes: exitNotes.withLock { $0.capacity },
                             retirementRequests: board?.list.withLock { $0.capacity } ?? 0,
                             counterSlots: shards.map { $0.occupancy.capacity })
    }

    /// How many times retired threads' hand-overs were taken or their requests forgotten so far
    /// (``collectRetired()`` and snapshots): when it moves, memory was freed.
    public var retiredCollections: UInt64 { collections.load(ordering: .relaxed) }

    /// Everything counted so far. `timestamp` is the caller's clock (ns), used for rates. Cost ∝ the live keys
    /// and series plus the retired rows, whatever was ever seen.
    public func snapshot(timestamp: UInt64) -> AggregateSnapshot {
        resolveNewThreads()
        return retired.withLock { r in
            var snap = AggregateSnapshot(catalog: catalog, timestamp: timestamp)
            // Acks first: every hand-over of a request up to the smallest ack is taken below.
            var done = UInt64.max
            if board != nil {
                for shard in shards { done = Swift.min(done, shard.acked) }
                if series.hasWriter.load(ordering: .relaxed) { done = Swift.min(done, series.acked) }
            }
            snap.eventTotals = [UInt64](repeating: 0, count: catalog.count)
            // Keys and series of a thread whose retirement a writer has not carried out yet count in its retired
            // row already (the writer hands them over there later): a reused tid's new thread never gets them.
            let rows = r.retiringRows()
            var merged: [CounterKey: UInt64] = [:]
            merged.reserveCapacity(r.counters.count + shards.reduce(0) { $0 + $1.occupancy.keys })
            // Whether retired threads' hand-overs were taken or requests forgotten (memory freed).
            var took = false
            for shard in shards {
                for e in 0..<catalog.count { snap.eventTotals[e] += shard.eventTotal(e) }
                // A shard's table holds each key once: a list, not a dictionary.
                var held: [(CounterKey, UInt64)] = []
                held.reserveCapacity(shard.occupancy.keys)
                let (handed, acked) = shard.collect { tid, event, isa, reason, count in
                    held.append((CounterKey(tid: tid, event: event, isa: isa, reason: reason), count))
                }
                for (k, v) in held {
                    var key = k
                    key.tid = RetiredTotals.row(of: k.tid, acked: acked, rows)
                    merged[key, default: 0] += v
                }
                r.fold(handed)
                took = !handed.isEmpty || took
                snap.lostEvents += shard.lost
                snap.lostUnknownSubbuffers += shard.lostUnknown
                snap.overflowEvents += shard.overflow
                snap.corruptSubbuffers += shard.corrupt
                snap.readErrors += shard.readErrors
            }
            let (live, handedSeries, seriesAcked) = series.collect()
            r.fold(series: handedSeries)
            took = !handedSeries.isEmpty || took
            if let board { took = forget(&r, board: board, through: done) || took }
            if took { collections.wrappingAdd(1, ordering: .relaxed) }
            for (k, v) in r.counters { merged[k, default: 0] += v }
            // Every key read above was published after its thread was noted: resolve those noted meanwhile.
            resolveNewThreads()
            snap.counters = merged.map { CounterRow(key: $0.key, count: $0.value) }
                .sorted { ($0.key.tid, $0.key.event, $0.key.reason) < ($1.key.tid, $1.key.event, $1.key.reason) }
            snap.threads = threads.withLock { $0 }
            snap.unnamedThreads = unresolved.withLock { $0 }.filter { snap.threads[$0] != nil }
            snap.occupancy = Occupancy(liveThreads: snap.threads.count, liveSeries: live.count,
                                       retiredThreads: r.retiredThreads, retiredRows: r.identities.count,
                                       foldedVMs: r.foldedVMs)
            if threadExits {
                snap.occupancy.threadExits = exitsSeen.load(ordering: .relaxed)
                snap.occupancy.retiredOnExit = r.retiredOnExit
            }
            for (t, id) in r.identities { snap.threads[t] = id }
            snap.series = live.map {
                SeriesSnapshot(tid: RetiredTotals.row(of: $0.tid, acked: seriesAcked, rows), isa: $0.isa,
                               reason: $0.reason, histogram: $0.histogram.snapshot(), topRIPs: $0.topRIPs.snapshot())
            }
            for (k, v) in r.series.sorted(by: { ($0.key.tid, $0.key.reason) > ($1.key.tid, $1.key.reason) }) {
                snap.series.append(SeriesSnapshot(tid: k.tid, isa: k.isa, reason: k.reason, histogram: v.histogram,
                                                  topRIPs: v.topRIPs))
            }
            snap.pairing = pairing.snapshot
            (snap.ioAccesses, snap.ioOverflow, snap.ioRetiredThreads) = ioAccesses(r)
            return snap
        }
    }
}

/// How many entries an ``Aggregator``'s per-thread tables hold before they grow (``Aggregator/capacities``).
/// Each follows the live threads: it grows as they arrive, and once fewer than an eighth of it is used after
/// retirements, it is rebuilt with room for four times its entries (at least 64; Swift rounds a dictionary's or
/// set's room up to three quarters of a power of two). A shard's counter table is at most a quarter full after
/// a retirement (``CounterTable``).
public struct AggregatorCapacities: Sendable, Equatable {
    /// Identities of the live threads.
    public var threads: Int
    /// Live threads not named yet.
    public var unresolved: Int
    /// Thread-exit records noted and not yet taken.
    public var exitNotes: Int
    /// Retirement requests not yet carried out by every writer.
    public var retirementRequests: Int
    /// Slots of each shard's counter table.
    public var counterSlots: [Int]

    public init(threads: Int, unresolved: Int, exitNotes: Int, retirementRequests: Int, counterSlots: [Int]) {
        self.threads = threads
        self.unresolved = unresolved
        self.exitNotes = exitNotes
        self.retirementRequests = retirementRequests
        self.counterSlots = counterSlots
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
    /// Live threads whose identity is provisional: gone when first looked up in /proc, so each is its own VM
    /// (`vm` = its tid, no vCPU) until named from the kernel's saved tgids (about a second later) or retired.
    public var unnamedThreads: Set<Int32> = []
    public var series: [SeriesSnapshot] = []
    public var pairing = PairingStats()
    /// Live threads and series, retired threads and folded VMs when the snapshot was taken.
    public var occupancy = Occupancy()
    /// Events the kernel reported lost (exact counts from sub-buffer headers or per-CPU stats).
    public var lostEvents: UInt64 = 0
    /// Sub-buffers flagged as having lost an unknown number of events.
    public var lostUnknownSubbuffers: UInt64 = 0
    /// Events counted in totals but not in per-thread rows (0: the shards' tables grow with the keys).
    public var overflowEvents: UInt64 = 0
    /// Sub-buffers rejected as malformed: each lost an unknown number of events.
    public var corruptSubbuffers: UInt64 = 0
    /// Failed reads of a ring buffer: the reader of that CPU stopped there.
    public var readErrors: UInt64 = 0
    /// Accesses per thread × port or MMIO address × direction, summed over shards (``IOAccessTable``).
    public var ioAccesses: [IOAccessRow] = []
    /// kvm_pio (port) and kvm_mmio (mmio) events that found no room in an ``IOAccessTable``.
    public var ioOverflow: (port: UInt64, mmio: UInt64) = (0, 0)
    /// Identities of retired threads that ``ioAccesses`` rows name (their tids are no longer in ``threads``).
    public var ioRetiredThreads: [Int32: ThreadIdentity] = [:]

    public init(catalog: EventCatalog, timestamp: UInt64) {
        self.catalog = catalog
        self.timestamp = timestamp
    }

    public func identity(of tid: Int32) -> ThreadIdentity { threads[tid] ?? ThreadIdentity(vm: tid) }

    /// Who the thread of an ``ioAccesses`` row is: a live thread, else a retired one, else its own VM.
    public func ioIdentity(of tid: Int32) -> ThreadIdentity {
        threads[tid] ?? ioRetiredThreads[tid] ?? ThreadIdentity(vm: tid)
    }
}
