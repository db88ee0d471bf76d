import HeapModule
import Synchronization

/// The head of one lane in the k-way merge: its next event's timestamp; ties go to the lower lane.
struct MergeHead: Comparable {
    var timestamp: UInt64
    var lane: Int

    init(_ timestamp: UInt64, _ lane: Int) {
        self.timestamp = timestamp
        self.lane = lane
    }

    static func < (a: MergeHead, b: MergeHead) -> Bool {
        a.timestamp < b.timestamp || (a.timestamp == b.timestamp && a.lane < b.lane)
    }
}

/// The one k-way merge of per-CPU runs: each lane's queue is in timestamp order; ``drain(upTo:refill:_:)``
/// emits every queued event in (timestamp, lane) order. A min-heap (swift-collections' `Heap`) holds one
/// head per lane with events; the lane at the top emits a whole run, up to the next lane's head, before the
/// heap is touched again (one `replaceMin` per run, not per event).
///
/// Offline, a lane that runs dry is refilled from its stream; live, it waits for its producer's next
/// hand-over (``PairingMerge``), and the caller bounds what may be emitted by the producers' watermarks.
struct RunMerge {
    var queues: [[TraceEvent]]
    /// Next event of each queue.
    var next: [Int]
    /// Whether a lane's head is in the heap.
    var queued: [Bool]
    var heap = Heap<MergeHead>()

    init(lanes: Int) {
        queues = Array(repeating: [], count: lanes)
        next = Array(repeating: 0, count: lanes)
        queued = Array(repeating: false, count: lanes)
    }

    /// Events queued and not yet emitted.
    var pending: Int {
        var n = 0
        for i in queues.indices { n += queues[i].count - next[i] }
        return n
    }

    /// Appends a lane's events (time order, none before what it appended earlier); takes `events`' storage
    /// when the lane's queue is spent, so the caller's buffer comes back empty with some capacity.
    mutating func append(_ lane: Int, _ events: inout [TraceEvent]) {
        guard !events.isEmpty else { return }
        if next[lane] >= queues[lane].count {
            // Spent: swap buffers instead of copying.
            swap(&queues[lane], &events)
            events.removeAll(keepingCapacity: true)
            next[lane] = 0
        } else {
            if next[lane] > 0 {
                queues[lane].removeFirst(next[lane])
                next[lane] = 0
            }
            queues[lane].append(contentsOf: events)
            events.removeAll(keepingCapacity: true)
        }
        if !queued[lane] {
            queued[lane] = true
            heap.insert(MergeHead(queues[lane][next[lane]].timestamp, lane))
        }
    }

    /// Emits, in (timestamp, lane) order, every queued event stamped ≤ `limit`. When a lane's queue is spent,
    /// `refill(lane, &queue)` may put that lane's next events in the (empty) queue and return true; false:
    /// the lane has nothing more for now. After a throw the merge is spent.
    /// Inlined into its callers, so their closures are inlined into the per-event loop.
    @inline(__always)
    mutating func drain(upTo limit: UInt64, refill: (Int, inout [TraceEvent]) throws -> Bool,
                        _ body: (TraceEvent) throws -> Void) rethrows {
        try drainWhile(upTo: limit, refill: refill) { e -> Bool in
            try body(e)
            return true
        }
    }

    /// ``drain(upTo:refill:_:)`` that stops right after an event for which `body` returns false; the merge can
    /// go on later (by a drain or, offline, by slices: ``beginSlices()``).
    @inline(__always)
    mutating func drainWhile(upTo limit: UInt64, refill: (Int, inout [TraceEvent]) throws -> Bool,
                        _ body: (TraceEvent) throws -> Bool) rethrows {
        guard var cur = heap.popMin() else { return }
        while true {
            let lane = cur.lane
            // The run of `lane` goes on while it stays before the next lane's head (ties: the lower lane first)
            // and within the limit: one compare per event. `cur` is the smallest head, so when this lane
            // loses ties the bound is above its head (≥ 1) and `bound - 1` does not wrap.
            let bound = heap.min ?? MergeHead(.max, .max)
            var runEnd = lane < bound.lane ? bound.timestamp : bound.timestamp &- 1
            if runEnd > limit { runEnd = limit }
            var i = next[lane]
            var stopped = false
            run: while true {
                // The run over the queue's storage: no bounds check or array access per event. The lane's array
                // is moved out for the run and back (a read in place would copy it: a retain and a release per
                // run, which with 8 CPUs' interleaved events is every few events).
                var q: [TraceEvent] = []
                swap(&q, &queues[lane])
                let ended = try q.withUnsafeBufferPointer { q -> Bool in
                    while i < q.count {
                        let e = q[i]
                        if e.timestamp > runEnd { return true }
                        i += 1
                        if try !body(e) {
                            stopped = true
                            return true
                        }
                    }
                    return false
                }
                swap(&q, &queues[lane])
                if ended && (!stopped || i < queues[lane].count) { break run }
                // Spent (maybe just as the body stopped): its next events, if any, before the lane goes on.
                queues[lane].removeAll(keepingCapacity: true)
                i = 0
                guard try refill(lane, &queues[lane]) else { break }
                if stopped { break }
            }
            next[lane] = i
            if i >= queues[lane].count {
                queued[lane] = false
                if stopped { return }
                guard let n = heap.popMin() else { return }
                cur = n
                continue
            }
            let head = MergeHead(queues[lane][i].timestamp, lane)
            if stopped || queues[lane][i].timestamp > limit {
                heap.insert(head)
                return
            }
            // The lane's head is now after the bound: the bound's lane takes over, this one goes in the heap.
            cur = heap.replaceMin(with: head)
        }
    }

    /// Offline: lanes whose stream has ended (``slice(capacity:counts:refill:_:)``); empty before ``beginSlices()``.
    var ended: [Bool] = []
    /// A lane's next batch, before it joins the lane's queue.
    var spare: [TraceEvent] = []

    /// Offline only (a `refill` that returns false has ended its stream): goes on from the heap's drain to
    /// slices. A lane not in the heap has ended.
    mutating func beginSlices() {
        ended = queued.map { !$0 }
        heap = Heap()
        for l in queued.indices { queued[l] = false }
    }

    /// The next events of the merge, a lane at a time (all of lane 0's, then lane 1's, …; `counts[lane]` says
    /// how many): at most `capacity`, and exactly the events that the heap's drain would emit next, in another
    /// order. Each lane's events keep their order, so a thread that stayed on one CPU keeps its order;
    /// ``ThreadGrouping`` sorts by time what came from more than one lane. Returns the events given to `body`;
    /// 0 once every lane has ended and been emitted. `capacity` must be at least the lanes. Offline only
    /// (after ``beginSlices()``); after a throw the merge is spent.
    ///
    /// How: every lane still streaming is refilled past `quota` = capacity / lanes events; the cut is the smallest
    /// (timestamp, lane) among the events `quota` past each lane's next one (a lane that holds fewer has ended
    /// and sets none); what is before the cut in (timestamp, lane) order is emitted: at most `quota` events a
    /// lane, and every one that is before the cut (a lane's later events are after its own candidate). The
    /// cut's lane emits exactly `quota`, so each slice makes progress.
    @inline(__always)
    mutating func slice(capacity: Int, counts: inout [Int], refill: (Int, inout [TraceEvent]) throws -> Bool,
                        _ body: (TraceEvent) throws -> Void) rethrows -> Int {
        let lanes = queues.count
        precondition(capacity >= lanes && ended.count == lanes, "a slice holds at least one event a lane, after beginSlices()")
        let quota = capacity / lanes
        for l in 0..<lanes where !ended[l] {
            while queues[l].count - next[l] <= quota {
                spare.removeAll(keepingCapacity: true)
                guard try refill(l, &spare) else {
                    ended[l] = true
                    break
                }
                if next[l] >= queues[l].count {
                    swap(&queues[l], &spare)
                } else {
                    if next[l] > 0 { queues[l].removeFirst(next[l]) }
                    queues[l].append(contentsOf: spare)
                }
                next[l] = 0
            }
        }
        var cutTimestamp = UInt64.max
        var cutLane = Int.max
        for l in 0..<lanes where queues[l].count - next[l] > quota {
            let t = queues[l][next[l] + quota].timestamp
            if t < cutTimestamp {  // strict: on a tie the lower lane, seen first, stays the cut
                cutTimestamp = t
                cutLane = l
            }
        }
        var total = 0
        for l in 0..<lanes {
            let start = next[l]
            var i = start
            var q: [TraceEvent] = []
            swap(&q, &queues[l])
            try q.withUnsafeBufferPointer { q in
                if l == cutLane {
                    while i < start + quota {
                        try body(q[i])
                        i += 1
                    }
                    return
                }
                // Before the cut: an earlier timestamp, or the same one on a lower lane.
                let tieTakes = l < cutLane
                while i < q.count {
                    let e = q[i]
                    if e.timestamp > cutTimestamp || (e.timestamp == cutTimestamp && !tieTakes) { return }
                    try body(e)
                    i += 1
                }
            }
            swap(&q, &queues[l])
            next[l] = i
            counts[l] = i - start
            total += i - start
        }
        return total
    }
}

/// The merge of a source's per-CPU streams by timestamp (ties: the earlier stream first), each stream read
/// a batch at a time: memory is one batch per CPU.
public struct EventMerge {
    let streams: [any EventStream]
    var merge: RunMerge
    var primed = false

    public init(streams: [any EventStream]) {
        self.streams = streams
        merge = RunMerge(lanes: streams.count)
    }

    /// Calls `body` for every event of every stream, in timestamp order. Throws what the streams throw.
    public mutating func run(_ body: (TraceEvent) throws -> Void) throws {
        try prime()
        let streams = self.streams
        try merge.drain(upTo: .max, refill: { lane, q in try streams[lane].next(&q) }, body)
    }

    /// Reads each stream's first batch (once).
    mutating func prime() throws {
        guard !primed else { return }
        primed = true
        var batch: [TraceEvent] = []
        for (i, s) in streams.enumerated() where try s.next(&batch) { merge.append(i, &batch) }
    }
}

/// What the pairer is fed: exits, entries, and any other event flagged as following a loss (the pairer must
/// know its CPU lost events there); and whether an event is counted per reason. One byte per event index.
struct PairingFeed {
    static let exit: UInt8 = 1
    static let entry: UInt8 = 2
    static let hasReason: UInt8 = 4
    /// The I/O timer (``IOTimer``) wants it: exits, entries, kvm_pio, kvm_mmio, when the catalog has pio or mmio.
    static let ioTimed: UInt8 = 8
    static let pio: UInt8 = 16
    static let mmio: UInt8 = 32
    /// Per event index (256 entries): exit, entry or neither (bits 0-1), hasReason (bit 2), ioTimed (bit 3),
    /// pio (bit 4), mmio (bit 5).
    let kinds: [UInt8]

    init(roles: [EventRole]) {
        var k = [UInt8](repeating: 0, count: 256)
        let hasIO = roles.contains { $0 == .pio || $0 == .mmio }
        for (i, r) in roles.enumerated() where i < 256 {
            k[i] = (r == .exit ? Self.exit : r == .entry ? Self.entry : 0) | (r.hasReasons ? Self.hasReason : 0)
            if hasIO && (r == .exit || r == .entry || r == .pio || r == .mmio) {
                k[i] |= Self.ioTimed | (r == .pio ? Self.pio : r == .mmio ? Self.mmio : 0)
            }
        }
        kinds = k
    }

    /// Feeds one event of kind `k` that has ``ioTimed``, or follows a loss (of any kind: what was pending may
    /// have lost its end), to the I/O timer, after the writer counted it.
    @inline(__always)
    static func feedIO(_ e: TraceEvent, kind k: UInt8, _ timer: inout IOTimer, _ writer: ShardWriter) {
        guard let io = writer.shard.io else { return }
        if e.flags & TraceEvent.afterLoss != 0 { timer.loss() }
        if k & ioTimed == 0 { return }
        if k & 3 == exit {
            timer.exit(e)
        } else if k & 3 == entry {
            timer.entry(e, io)
        } else {
            timer.access(e, space: k & pio != 0 ? .port : .mmio, slot: writer.lastIOSlot, io)
        }
    }

    /// Counts one event of kind `k` (a ``kinds`` byte) and feeds it to the pairer: an exit or entry is looked
    /// up once in the pairer's thread table, whose slot also holds where the writer counted that key last.
    @inline(__always)
    static func count(_ e: TraceEvent, kind k: UInt8, _ writer: inout ShardWriter, _ pairer: inout Pairer) {
        let hasReason = k & Self.hasReason != 0
        if k & 3 == exit {
            let c = pairer.exit(e, thread: pairer.pendingIndex(e.tid))
            writer.add(e, hasReason: hasReason, hint: &pairer.reasonSlots[c].counter)
        } else if k & 3 == entry {
            let t = pairer.pendingIndex(e.tid)
            writer.add(e, hasReason: hasReason, hint: &pairer.threads[t].entryCounter)
            pairer.entry(e, thread: t)
        } else {
            writer.add(e, hasReason: hasReason)
            if e.flags & TraceEvent.afterLoss != 0 { pairer.noteLoss(cpu: e.cpu, at: e.timestamp) }
        }
    }

    /// Feeds one event of kind `k` (a ``kinds`` byte) to the pairer.
    @inline(__always)
    static func feed(_ e: TraceEvent, kind k: UInt8, _ pairer: inout Pairer) {
        if k & 3 == exit {
            pairer.exit(e)
        } else if k & 3 == entry {
            pairer.entry(e)
        } else if e.flags & TraceEvent.afterLoss != 0 {
            pairer.noteLoss(cpu: e.cpu, at: e.timestamp)
        }
    }
}

/// The one pipeline of kvmscope: per-CPU streams merged by timestamp (``EventMerge``) → counted (a
/// ``ShardWriter``: per event, per VM/vCPU/reason) → paired (``Pairer``: exit latency, top RIPs, pairing
/// counters) → one ``AggregateSnapshot``. `report`, the offline analysis, the benchmarks and the tests run
/// sources through it; the live session feeds the same pairing through ``PairingMerge``, whose lanes its
/// per-CPU reader threads fill (they count on their own shards).
///
/// An optional ``PairObserver`` (a timeline) is told of every exit and every recorded pair: pictures are fed
/// by the pairer's own pairs, never by a second pairing.
///
/// With many threads and no observer, ``run(_:from:to:)`` counts and pairs the merged events a window at a time,
/// grouped by thread (``ThreadGrouping``): the same answer, fewer cache misses. Without a from/to window, the
/// windows are then taken from the CPUs' queues a CPU at a time (``RunMerge/slice(capacity:counts:refill:_:)``),
/// not through the merge's heap.
public struct ExitPipeline {
    public let aggregator: Aggregator
    var writer: ShardWriter
    public var pairer: Pairer
    let feed: PairingFeed
    /// Handling times of port and MMIO accesses (perf's ioport/mmio analyses), when the catalog has pio or mmio.
    var ioTimer = IOTimer()

    /// Timestamps (ns) of the first and last event kept; 0 when none was.
    public private(set) var first: UInt64 = 0
    public private(set) var last: UInt64 = 0
    /// Events kept (inside the window).
    public private(set) var eventsKept: UInt64 = 0
    /// With a window (`run`'s `from`/`to`): its bounds, ns — from trace start + `from` to trace start + `to`,
    /// cut to the trace's own first and last events: what rates over the window divide by. nil without one.
    public private(set) var window: (first: UInt64, last: UInt64)?
    /// When ``run(_:from:to:)`` feeds kept events grouped by thread (``ThreadGrouping``): with many threads, a
    /// window at a time, the answer unchanged. nil: always in time order.
    public var regrouping: ThreadGrouping.Policy? = ThreadGrouping.Policy()
    /// The regrouping's windows and counters, once the pairer held ``ThreadGrouping/Policy/minThreads``
    /// threads at a check (every ``ThreadGrouping/Policy/windowEvents`` events); nil before.
    public private(set) var grouping: ThreadGrouping?
    /// The window being filled (``ThreadGrouping/Window/none`` before regrouping starts).
    var pendingWindow = ThreadGrouping.Window.none
    /// Events to keep before the next check.
    var untilCheck = 0

    /// - Parameters:
    ///   - catalog: the events the source decodes.
    ///   - resolver: who a thread is (a source's saved cmdlines and tgids); nil: each thread its own VM.
    ///   - observer: told of every exit and recorded pair (a timeline); nil: nothing extra per event.
    public init(catalog: EventCatalog, resolver: ThreadResolver? = nil, observer: (any PairObserver)? = nil) {
        aggregator = Aggregator(catalog: catalog, shardCount: 1, resolver: resolver)
        writer = aggregator.writer(shard: 0)
        pairer = aggregator.makePairer()
        pairer.observer = observer
        feed = PairingFeed(roles: catalog.entries.map(\.role))
    }

    /// Counts and pairs one event; feed events in timestamp order.
    public mutating func add(_ e: TraceEvent) {
        let k = feed.kinds[Int(e.event) & 255]
        PairingFeed.count(e, kind: k, &writer, &pairer)
        if k & PairingFeed.ioTimed != 0 || e.flags & TraceEvent.afterLoss != 0 { PairingFeed.feedIO(e, kind: k, &ioTimer, writer) }
    }

    /// Runs streams through the pipeline: merged by timestamp, then kept when trace start + `from` ≤
    /// timestamp < trace start + `to` (ns from the first event of all streams; nil: no bound), counted and
    /// paired. Returns the events kept. Throws what the streams throw.
    @discardableResult
    public mutating func run(_ streams: [any EventStream], from: UInt64? = nil, to: UInt64? = nil) throws -> UInt64 {
        var merge = EventMerge(streams: streams)
        try merge.prime()
        let kinds = feed.kinds
        if grouping == nil { untilCheck = regrouping?.windowEvents ?? .max }
        // The drain is called here, not through EventMerge.run, so that these closures are inlined into its loop.
        let refill = { (lane: Int, q: inout [TraceEvent]) throws -> Bool in try streams[lane].next(&q) }
        guard from != nil || to != nil else {
            // No window: every event is kept; the first is the smallest head.
            guard let head = merge.merge.heap.min else { return 0 }
            if eventsKept == 0 {
                first = head.timestamp
                pairer.observer?.start(at: head.timestamp)
            }
            var last = self.last
            var kept: UInt64 = 0
            // In time order until regrouping starts (the drain stops there), then in slices.
            try merge.merge.drainWhile(upTo: .max, refill: refill) { e -> Bool in
                last = e.timestamp
                kept &+= 1
                keep(e, kinds)
                return pendingWindow.capacity == 0
            }
            if pendingWindow.capacity >= streams.count {
                // Each window straight from the lanes' queues, a lane at a time (no heap): the same events the
                // drain would give next, and each thread's in order once grouped (``ThreadGrouping``).
                // A slice takes up to room / CPUs events a CPU, so a window takes slices until it is three
                // quarters full (one slice fills it when the CPUs are about as busy; with one busy CPU of 8, 11).
                merge.merge.beginSlices()
                let lanes = streams.count
                var counts = [Int](repeating: 0, count: lanes)
                var segments: [Int] = []
                var more = true
                while more {
                    segments.removeAll(keepingCapacity: true)
                    repeat {
                        let room = pendingWindow.capacity - pendingWindow.count
                        let n = try merge.merge.slice(capacity: room, counts: &counts, refill: refill) { e in
                            if e.timestamp > last { last = e.timestamp }
                            pendingWindow.append(e, io: kinds[Int(e.event) & 255] & (PairingFeed.pio | PairingFeed.mmio) != 0)
                        }
                        more = n > 0
                        kept &+= UInt64(n)
                        segments.append(contentsOf: counts)
                    } while more && pendingWindow.capacity - pendingWindow.count >= Swift.max(lanes, pendingWindow.capacity / 4)
                    flushWindow(lanes: segments, laneCount: lanes)
                }
            } else {
                try merge.merge.drain(upTo: .max, refill: refill) { e in
                    last = e.timestamp
                    kept &+= 1
                    keep(e, kinds)
                }
                flushWindow()
            }
            self.last = last
            eventsKept &+= kept
            return kept
        }
        var started = eventsKept > 0
        var lo: UInt64 = 0
        var hi: UInt64 = .max
        var seen: UInt64 = 0
        let before = eventsKept
        try merge.merge.drain(upTo: .max, refill: refill) { e in
            if !started {
                started = true
                lo = from.map { e.timestamp &+ $0 } ?? e.timestamp
                if let to { hi = e.timestamp &+ to }
            }
            seen = e.timestamp
            guard e.timestamp >= lo && e.timestamp < hi else { return }
            if eventsKept == 0 {
                first = e.timestamp
                pairer.observer?.start(at: e.timestamp)
            }
            last = e.timestamp
            eventsKept &+= 1
            keep(e, kinds)
        }
        flushWindow()
        if started, seen >= lo { window = (lo, Swift.min(hi, seen)) }
        return eventsKept - before
    }

    /// Counts and pairs one event of kind `k` (its ``PairingFeed/kinds`` byte).
    @inline(__always)
    mutating func process(_ e: TraceEvent, _ k: UInt8) {
        PairingFeed.count(e, kind: k, &writer, &pairer)
        if k & PairingFeed.ioTimed != 0 || e.flags & TraceEvent.afterLoss != 0 { PairingFeed.feedIO(e, kind: k, &ioTimer, writer) }
    }

    /// One kept event of ``run(_:from:to:)``: processed now, or, once regrouping, added to the window (which is
    /// fed when full, and at the end of the run).
    @inline(__always)
    mutating func keep(_ e: TraceEvent, _ kinds: [UInt8]) {
        let k = kinds[Int(e.event) & 255]
        if pendingWindow.capacity != 0 {
            pendingWindow.append(e, io: k & (PairingFeed.pio | PairingFeed.mmio) != 0)
            if pendingWindow.isFull { flushWindow() }
            return
        }
        process(e, k)
        untilCheck &-= 1
        if untilCheck == 0 { checkRegrouping() }
    }

    /// Every ``ThreadGrouping/Policy/windowEvents`` events in time order: starts regrouping once the pairer
    /// holds enough threads (and no observer wants time order).
    @inline(never)
    mutating func checkRegrouping() {
        guard let policy = regrouping else {
            untilCheck = .max
            return
        }
        untilCheck = policy.windowEvents
        if pairer.observer == nil && pairer.threadCount >= policy.minThreads {
            let g = ThreadGrouping(policy: policy, threads: pairer.threadCount)
            grouping = g
            pendingWindow = g.emptyWindow
        }
    }

    /// Feeds the window: grouped by thread, or in time order when it holds a loss-flagged event or its port and
    /// MMIO accesses could fill the I/O table (``ThreadGrouping``); then empties it.
    /// `lanes`: the window holds the merge's slices, so many events of each lane in turn, lane by lane and slice
    /// by slice (segment k is lane k % lanes; ``RunMerge/slice(capacity:counts:refill:_:)``); nil: it is in time order.
    @inline(never)
    mutating func flushWindow(lanes: [Int]? = nil, laneCount: Int = 1) {
        guard let g = grouping, pendingWindow.count > 0 else { return }
        let n = pendingWindow.count
        let events: UnsafeMutablePointer<TraceEvent>
        if pendingWindow.sawLoss || ioTableCouldFill(pendingWindow) {
            if lanes != nil {
                events = g.timeOrder(count: n)
            } else {
                g.noteInOrder(n)
                events = pendingWindow.events.unsafelyUnwrapped
            }
        } else {
            events = g.regroup(count: n, bits: ThreadGrouping.groupBits(threads: pairer.threadCount), lanes: lanes,
                               laneCount: laneCount)
        }
        pendingWindow.reset()
        let kinds = feed.kinds
        for i in 0..<n {
            let e = events[i]
            process(e, kinds[Int(e.event) & 255])
        }
    }

    /// The window's port and MMIO accesses could fill the I/O table: more accesses whose key has no row yet than
    /// the table has room for (each adds at most one key; usually every key has its row and none is new). Once
    /// the table is full, which keys are in no longer depends on the order.
    func ioTableCouldFill(_ w: ThreadGrouping.Window) -> Bool {
        guard let io = writer.shard.io, io.used < io.maxKeys, io.used + w.ioEvents > io.maxKeys else { return false }
        let room = io.maxKeys - io.used
        var new = 0
        for i in 0..<w.count {
            let e = w.events.unsafelyUnwrapped[i]
            let k = feed.kinds[Int(e.event) & 255]
            guard k & (PairingFeed.pio | PairingFeed.mmio) != 0 else { continue }
            let space: DeviceMap.Space = k & PairingFeed.pio != 0 ? .port : .mmio
            if !io.holds(tid: e.tid, space: space, address: e.detail, direction: IODirection.of(space, aux2: e.aux2)) {
                new += 1
                if new > room { return true }
            }
        }
        return false
    }

    /// Ends the trace: exits still waiting become orphans, the source's losses are counted. Returns the
    /// aggregate, stamped with the last event's timestamp.
    public mutating func finish(statistics: SourceStatistics) -> AggregateSnapshot {
        pairer.finish()
        // Each kind where every view shows it: exact counts, flagged gaps without a count, corrupt
        // sub-buffers, failed reads.
        let total = statistics.total
        writer.addLost(statistics.lostEvents, unknownSubbuffers: total.unknownGaps)
        writer.addDamage(corruptSubbuffers: total.corruptSubbuffers, readErrors: total.readErrors)
        return aggregator.snapshot(timestamp: last)
    }
}

/// The live pipeline's merge stage: N producers (the per-CPU reader threads), one ``Lane`` each, and one
/// consumer (the pairing thread) that merges what the lanes handed over, up to the smallest watermark, and
/// feeds the pairer. When every lane has finished it drains everything and finishes the pairer.
///
/// Each lane carries one CPU's exits, entries and loss-flagged events in time order, in batches, plus a
/// watermark: every event of that CPU stamped ≤ the watermark has been handed over. So an event at or below
/// the smallest watermark can be paired: nothing older can still come. Memory is bounded by the events not
/// yet complete on every CPU; no sorting.
///
/// Batches move between the threads by reference, never element by element: a hand-over queues the producer's
/// buffer and gives it a spent one back (``Lane/hand(_:watermark:)``), the consumer merges each lane's batches
/// one after the other in place (a spent batch goes back to its lane for reuse), so an event is written once
/// by its producer and read once by the merge.
public struct PairingMerge {
    /// What one producer hands the consumer. Producer side: ``hand(_:watermark:)`` and ``finish()``.
    public final class Lane: Sendable {
        /// Batches handed over and not yet taken (oldest first), their events, and spent buffers the consumer
        /// gave back (empty, capacity kept) for the producer's next batches.
        struct Outbox {
            var batches: [[TraceEvent]] = []
            var events = 0
            var spare: [[TraceEvent]] = []
        }
        let outbox = Mutex<Outbox>(Outbox())
        /// Every event of this lane stamped ≤ watermark has been handed over. Release on store, acquire on load:
        /// a consumer that sees a watermark then finds the events it covers in the outbox.
        let watermark = Atomic<UInt64>(0)
        /// Set (release) after the producer's last hand-over.
        let finished = Atomic<Bool>(false)

        public init() {}

        /// Hands over `events` (time order, none before what was handed earlier; `events` comes back empty, with
        /// the capacity of a buffer the consumer gave back when there is one) and moves the watermark: every event
        /// of this lane stamped ≤ `watermark` is now handed over. The watermark never moves back. The batch is
        /// queued as it is: no copy. Returns the events handed over and not yet taken by the consumer.
        @discardableResult
        public func hand(_ events: inout [TraceEvent], watermark wm: UInt64) -> Int {
            var waiting = 0
            if !events.isEmpty {
                outbox.withLock { box in
                    var batch = box.spare.popLast() ?? []
                    swap(&batch, &events)
                    box.events += batch.count
                    box.batches.append(batch)
                    waiting = box.events
                }
            }
            watermark.store(Swift.max(wm, watermark.load(ordering: .relaxed)), ordering: .releasing)
            return waiting
        }

        /// No more events will come from this lane (its watermark becomes infinite).
        public func finish() {
            watermark.store(.max, ordering: .releasing)
            finished.store(true, ordering: .releasing)
        }

        /// The producer's watermark (ns).
        public var currentWatermark: UInt64 { watermark.load(ordering: .acquiring) }
    }

    public let lanes: [Lane]
    var merge: RunMerge
    let feed: PairingFeed
    /// Per lane: batches taken from its outbox behind the one the merge is reading (oldest first); the merge's
    /// queue of a lane is spent only when this is empty.
    var waiting: [[[TraceEvent]]]
    /// Events in ``waiting``.
    var waitingEvents = 0
    /// Per lane: spent buffers to give back at the next take.
    var spent: [[[TraceEvent]]]
    var taken: [[TraceEvent]] = []
    public private(set) var isFinished = false

    /// - Parameters:
    ///   - lanes: one per producer (CPU).
    ///   - roles: the catalog's event roles (which indices are kvm_exit and kvm_entry).
    public init(lanes: [Lane], roles: [EventRole]) {
        self.lanes = lanes
        merge = RunMerge(lanes: lanes.count)
        feed = PairingFeed(roles: roles)
        waiting = Array(repeating: [], count: lanes.count)
        spent = Array(repeating: [], count: lanes.count)
    }

    /// Events handed over and not yet paired (complete on some CPUs, not on all).
    public var pending: Int { merge.pending + waitingEvents }

    /// One round of the consumer: takes what the lanes handed over and feeds `pairer` every event up to the
    /// smallest watermark, in timestamp order. When every lane had finished, feeds everything left, finishes
    /// the pairer (exits still waiting become orphans) and returns true; later calls do nothing and return true.
    @discardableResult
    public mutating func step(_ pairer: inout Pairer) -> Bool {
        guard !isFinished else { return true }
        // Retirements first: exits of a retired tid after this point belong to a new thread.
        pairer.maintain()
        // Finished flags, then watermarks, then outboxes: everything at or below what was loaded is in hand.
        var allFinished = true
        for lane in lanes where !lane.finished.load(ordering: .acquiring) { allFinished = false }
        var limit = UInt64.max
        for lane in lanes { limit = Swift.min(limit, lane.watermark.load(ordering: .acquiring)) }
        for (i, lane) in lanes.enumerated() {
            var giveBack: [[TraceEvent]] = []
            swap(&giveBack, &spent[i])
            lane.outbox.withLock { box in
                swap(&box.batches, &taken)
                box.events = 0
                box.spare.append(contentsOf: giveBack)
            }
            giveBack.removeAll(keepingCapacity: true)
            swap(&giveBack, &spent[i])
            for var batch in taken {
                if waiting[i].isEmpty && merge.next[i] >= merge.queues[i].count {
                    // The lane's queue is spent: the batch becomes it (swapped in), the old buffer goes back.
                    merge.append(i, &batch)
                    spent[i].append(batch)
                } else {
                    waitingEvents += batch.count
                    waiting[i].append(batch)
                }
            }
            taken.removeAll(keepingCapacity: true)
        }
        let kinds = feed.kinds
        // A lane whose queue is spent in the drain goes on with its next waiting batch (swapped in, not copied).
        var waiting: [[[TraceEvent]]] = []
        var spent: [[[TraceEvent]]] = []
        swap(&waiting, &self.waiting)
        swap(&spent, &self.spent)
        var waitingEvents = self.waitingEvents
        merge.drain(upTo: allFinished ? .max : limit, refill: { lane, q in
            guard !waiting[lane].isEmpty else { return false }
            var next = waiting[lane].removeFirst()
            waitingEvents -= next.count
            swap(&q, &next)
            spent[lane].append(next)
            return true
        }) { e in
            PairingFeed.feed(e, kind: kinds[Int(e.event) & 255], &pairer)
        }
        swap(&waiting, &self.waiting)
        swap(&spent, &self.spent)
        self.waitingEvents = waitingEvents
        if allFinished {
            pairer.finish()
            isFinished = true
        } else if merge.pending == 0 {
            releaseBacklogBuffers()
        }
        return allFinished
    }

    /// Room (events) a buffer of the merge keeps once everything handed over is paired: a backlog's buffers
    /// (they circulate between the readers, the outboxes and the merge, keeping their largest size) go then.
    /// Above a read's worth of events (16 sub-buffers of 4 KiB).
    static let keptEvents = 16_384

    /// With nothing pending: the spent buffers (the consumer's, and those waiting in the outboxes for their
    /// readers) and the queues holding room for more than ``keptEvents`` events get a buffer of that room
    /// instead (cold: only after a backlog). A reader's own buffer comes here at its next hand-over.
    mutating func releaseBacklogBuffers() {
        func shrink(_ b: inout [TraceEvent]) {
            guard b.isEmpty, b.capacity > Self.keptEvents else { return }
            b = []
            b.reserveCapacity(Self.keptEvents)
        }
        for i in spent.indices { for j in spent[i].indices { shrink(&spent[i][j]) } }
        for lane in lanes { lane.outbox.withLock { box in for j in box.spare.indices { shrink(&box.spare[j]) } } }
        for i in merge.queues.indices where merge.next[i] >= merge.queues[i].count {
            merge.next[i] = 0
            merge.queues[i].removeAll(keepingCapacity: true)
            shrink(&merge.queues[i])
        }
    }
}
