/// Offline, with many vCPU threads: ``ExitPipeline/run(_:from:to:)`` takes the merged events a window at a
/// time and counts and pairs them grouped by thread (a stable counting sort on a hash of the tid), so that
/// while one group is fed only its few threads' pairer lines, counter slots and histograms are touched; in
/// time order a 2,048-thread trace touches a different thread's lines at almost every event, most of them out of
/// the caches (README: "report with many threads").
///
/// The answer does not change: each thread's events keep their order, and what the pipeline keeps per thread
/// (its pending exit, reason slots, series, I/O timer) sees exactly the same sequence. What is shared between
/// threads is ordered too: a window that holds an event flagged as following a loss (the pairer's per-CPU loss
/// marks) goes in time order, and so does a window whose port and MMIO accesses could fill the I/O table (which
/// keys get in first would depend on the order). Never with a ``PairObserver`` (a timeline wants time order).
///
/// Without a from/to window, the window is filled straight from the per-CPU queues, a CPU at a time (the merge's
/// slices, no heap); the threads that came from two CPUs in one window (they migrated) have their groups sorted
/// by time after the grouping, stably, so ties go in CPU order as in the merge.
///
/// Memory: two windows of 512 events per thread (``Policy/window(threads:)``: 256 Ki to 1 Mi events), 48 bytes per
/// event and 2 more (its group): 24.5 MiB up to 512 threads, 98 MiB from 2,048, plus 2 MiB for the set of which
/// thread came from which CPU; allocated once the pairer holds ``Policy/minThreads`` threads and kept for the
/// pipeline's life. Measured on 20 M events of 2,048 threads × 2
/// CPUs, the larger window ran 2.16–2.37 s against 2.60–2.81 s with 256 Ki events (README: "report with many
/// threads").
public final class ThreadGrouping {
    /// When the pipeline regroups, and in windows of how many events.
    public struct Policy: Sendable {
        /// Threads the pairer must hold before windows are regrouped (below it, each thread's lines stay cached
        /// in time order and the sort would only cost).
        public var minThreads: Int
        /// Events between two checks of the threads, and the smallest window.
        public var windowEvents: Int
        /// The largest window.
        public var maxWindowEvents: Int
        /// Events per thread a window is sized for (between the smallest and the largest): the more of a
        /// thread's events a window holds, the more of them are fed while its lines are cached.
        public var eventsPerThread: Int

        public init(minThreads: Int = 128, windowEvents: Int = 1 << 18, maxWindowEvents: Int = 1 << 20,
                    eventsPerThread: Int = 512) {
            precondition(minThreads >= 0 && windowEvents >= 1 && maxWindowEvents >= windowEvents && eventsPerThread >= 0,
                         "minThreads ≥ 0, 1 ≤ windowEvents ≤ maxWindowEvents, eventsPerThread ≥ 0")
            self.minThreads = minThreads
            self.windowEvents = windowEvents
            self.maxWindowEvents = maxWindowEvents
            self.eventsPerThread = eventsPerThread
        }

        /// Events a window holds for `threads` threads: ``eventsPerThread`` each, from ``windowEvents`` to
        /// ``maxWindowEvents``.
        public func window(threads: Int) -> Int {
            let wanted = threads.multipliedReportingOverflow(by: eventsPerThread)
            return Swift.min(maxWindowEvents, Swift.max(windowEvents, wanted.overflow ? maxWindowEvents : wanted.partialValue))
        }
    }

    /// Threads per group, on average: a group's lines stay in the L1/L2 caches while it is fed.
    public static let perGroup = 8

    public let policy: Policy
    /// Events a window holds (``Policy/window(threads:)`` for the threads held when regrouping started).
    public let capacity: Int
    /// Events fed grouped by thread.
    public private(set) var regrouped: UInt64 = 0
    /// Events of windows fed in time order (a loss in the window, or the I/O table could fill).
    public private(set) var inOrder: UInt64 = 0
    /// Events of groups sorted by time after the grouping: a thread of theirs came from two CPUs in one window of
    /// slices (it migrated), or too many threads came to tell (see ``regroup(count:bits:lanes:)``).
    public private(set) var resorted: UInt64 = 0

    /// The window being filled, in time order: its events and what decides how it is fed. A value the pipeline
    /// holds (no reference counting per event); the memory is its ``ThreadGrouping``'s.
    struct Window {
        /// The events (``ThreadGrouping/window``'s memory); nil: no window.
        var events: UnsafeMutablePointer<TraceEvent>?
        /// Events in the window.
        var count = 0
        /// Events it holds when full; 0: no window (the pipeline feeds events as they come).
        var capacity = 0
        /// It holds an event flagged as following a loss.
        var sawLoss = false
        /// kvm_pio and kvm_mmio events in it: at most one new I/O key each.
        var ioEvents = 0

        /// No window.
        static var none: Window { Window(events: nil) }

        /// Adds an event (the window must have room); `io`: a kvm_pio or kvm_mmio event.
        @inline(__always)
        mutating func append(_ e: TraceEvent, io: Bool) {
            events.unsafelyUnwrapped[count] = e
            count &+= 1
            sawLoss = sawLoss || e.flags & TraceEvent.afterLoss != 0
            ioEvents &+= io ? 1 : 0
        }

        var isFull: Bool { count == capacity }

        /// Empties it.
        mutating func reset() {
            count = 0
            sawLoss = false
            ioEvents = 0
        }
    }

    /// The window's memory, in time order.
    let window: UnsafeMutablePointer<TraceEvent>
    /// The window regrouped.
    let grouped: UnsafeMutablePointer<TraceEvent>
    /// Per event of the window: its group.
    let groupOf: UnsafeMutablePointer<UInt16>
    /// Per group (+1): events, then where the group's next event goes.
    var starts: [Int] = []
    /// Windows of slices: (tid, lane + 1) per thread seen (``regroup(count:bits:lanes:)``), 2^``maxSlotBits`` words.
    let laneSeen: UnsafeMutablePointer<UInt64>
    /// Windows of slices: per group, a thread of it came from two lanes.
    let mixed: UnsafeMutablePointer<Bool>

    /// Windows for `threads` threads (``Policy/window(threads:)``).
    public init(policy: Policy = Policy(), threads: Int) {
        self.policy = policy
        capacity = policy.window(threads: threads)
        window = .allocate(capacity: capacity)
        grouped = .allocate(capacity: capacity)
        groupOf = .allocate(capacity: capacity)
        laneSeen = .allocate(capacity: 1 << Self.maxSlotBits)
        mixed = .allocate(capacity: 1 << 12)
    }

    deinit {
        window.deallocate()
        grouped.deallocate()
        groupOf.deallocate()
        laneSeen.deallocate()
        mixed.deallocate()
    }

    /// log2 of the groups for `threads` threads: about ``perGroup`` threads a group, 16 to 4,096 groups.
    public static func groupBits(threads: Int) -> Int {
        var bits = 4
        while bits < 12 && (1 << bits) * perGroup < threads { bits += 1 }
        return bits
    }

    /// The group of a tid among `1 << bits`.
    @inline(__always)
    static func group(_ tid: Int32, bits: Int) -> Int {
        Int(truncatingIfNeeded: hash(tid) >> UInt64(64 - bits))
    }

    /// The tid's hash (Fibonacci hashing: × 2^64 / φ); its top bits are the group, more of them a slot.
    @inline(__always)
    static func hash(_ tid: Int32) -> UInt64 { UInt64(UInt32(bitPattern: tid)) &* 0x9E37_79B9_7F4A_7C15 }
    /// log2 of the lane detector's slots at most (2 MiB of words).
    static let maxSlotBits = 18

    /// An empty window of this grouping's memory.
    var emptyWindow: Window { Window(events: window, capacity: capacity) }

    /// The `count` events of the window grouped by thread, `1 << bits` groups, each group's events in time order.
    ///
    /// `lanes` nil: the window is in time order (the merge's), and a stable sort by group keeps each thread's order.
    /// Otherwise the window holds `lanes[0]` events of the first of `laneCount` CPUs, then `lanes[1]` of the second,
    /// …, slice after slice (segment k is of CPU k % `laneCount`; the merge's slices: ``RunMerge``): a thread seen
    /// on one CPU only keeps its order; a group with a thread seen on two (it
    /// migrated inside the window) is sorted by time after the grouping (stable: ties in CPU order, as the merge).
    func regroup(count: Int, bits: Int, lanes: [Int]? = nil, laneCount: Int = 1) -> UnsafeMutablePointer<TraceEvent> {
        let groups = 1 << bits
        if starts.count < groups + 1 { starts = [Int](repeating: 0, count: groups + 1) }
        // Slices: which thread came from which lane, in an open-addressed set of (tid, lane + 1) words, 64 slots a
        // group (about 8 per thread), cleared per window; a group holding a thread seen on two lanes is mixed.
        // Past half the slots, every group counts as mixed (sorted: still exact).
        let slotBits = Swift.min(bits &+ 6, Self.maxSlotBits)
        let slotMask = (1 << slotBits) &- 1
        var used = 0
        var all = false
        if lanes != nil {
            laneSeen.update(repeating: 0, count: slotMask &+ 1)
            mixed.update(repeating: false, count: groups)
        }
        starts.withUnsafeMutableBufferPointer { s in
            for g in 0...groups { s[g] = 0 }
            if let lanes {
                var i = 0
                for (k, n) in lanes.enumerated() {
                    let tag = UInt64(k % laneCount &+ 1)
                    var lastTid: Int32 = 0
                    var lastKnown = false
                    for _ in 0..<n {
                        let tid = window[i].tid
                        let h = Self.hash(tid)
                        let g = Int(truncatingIfNeeded: h >> UInt64(64 &- bits))
                        groupOf[i] = UInt16(truncatingIfNeeded: g)
                        s[g &+ 1] &+= 1
                        i &+= 1
                        if lastKnown && tid == lastTid || all { continue }
                        lastTid = tid
                        lastKnown = true
                        let key = UInt64(UInt32(bitPattern: tid)) << 32
                        var j = Int(truncatingIfNeeded: h >> UInt64(64 &- slotBits))
                        while true {
                            let v = laneSeen[j]
                            if v == 0 {
                                laneSeen[j] = key | tag
                                used &+= 1
                                if used > slotMask >> 1 { all = true }
                                break
                            }
                            if v & 0xffff_ffff_0000_0000 == key {
                                if v & 0xffff_ffff != tag { mixed[g] = true }
                                break
                            }
                            j = (j &+ 1) & slotMask
                        }
                    }
                }
            } else {
                for i in 0..<count {
                    let g = Self.group(window[i].tid, bits: bits)
                    groupOf[i] = UInt16(truncatingIfNeeded: g)
                    s[g &+ 1] &+= 1
                }
            }
            for g in 0..<groups { s[g &+ 1] &+= s[g] }
            for i in 0..<count {
                let g = Int(groupOf[i])
                grouped[s[g]] = window[i]
                s[g] &+= 1
            }
            // s[g] is now the end of group g.
            guard lanes != nil else { return }
            for g in 0..<groups where all || mixed[g] {
                let begin = g == 0 ? 0 : s[g &- 1]
                let n = s[g] &- begin
                guard n > 1 else { continue }
                if Self.sortByTime(grouped + begin, scratch: window + begin, count: n, runs: &runs) != grouped + begin {
                    (grouped + begin).update(from: window + begin, count: n)
                }
                resorted &+= UInt64(n)
            }
        }
        regrouped &+= UInt64(count)
        return grouped
    }

    /// The window of slices (see ``regroup(count:bits:lanes:)``) in the merge's time order, for the windows fed in
    /// time order. Returns where the events are (the window's memory or the grouped one).
    func timeOrder(count: Int) -> UnsafeMutablePointer<TraceEvent> {
        inOrder &+= UInt64(count)
        return Self.sortByTime(window, scratch: grouped, count: count, runs: &runs)
    }

    /// Run boundaries of ``sortByTime(_:scratch:count:runs:)``, kept between calls.
    var runs: [Int] = []

    /// Sorts `count` events by timestamp, stably (equal timestamps keep their order), by merging their ascending
    /// runs pairwise (a window of slices is one run per CPU, so log2(CPUs) passes); `scratch` holds as many.
    /// Returns `events` or `scratch`: where the sorted events ended up.
    static func sortByTime(_ events: UnsafeMutablePointer<TraceEvent>, scratch: UnsafeMutablePointer<TraceEvent>,
                           count: Int, runs: inout [Int]) -> UnsafeMutablePointer<TraceEvent> {
        runs.removeAll(keepingCapacity: true)
        runs.append(0)
        for i in 1..<Swift.max(1, count) where events[i].timestamp < events[i &- 1].timestamp { runs.append(i) }
        runs.append(count)
        var src = events
        var dst = scratch
        while runs.count > 2 {
            var merged = 0
            var r = 0
            while r + 1 < runs.count {
                let lo = runs[r]
                let mid = runs[r + 1]
                let hi = r + 2 < runs.count ? runs[r + 2] : mid
                var i = lo, j = mid, k = lo
                while i < mid && j < hi {
                    // Stable: on a tie, the earlier run's event first.
                    if src[j].timestamp < src[i].timestamp {
                        dst[k] = src[j]
                        j &+= 1
                    } else {
                        dst[k] = src[i]
                        i &+= 1
                    }
                    k &+= 1
                }
                if i < mid { (dst + k).update(from: src + i, count: mid &- i) }
                if j < hi { (dst + k + (mid &- i)).update(from: src + j, count: hi &- j) }
                runs[merged] = lo
                merged &+= 1
                r &+= 2
            }
            runs[merged] = count
            runs.removeLast(runs.count &- merged &- 1)
            swap(&src, &dst)
        }
        return src
    }

    /// Notes a window of `count` events fed in time order.
    func noteInOrder(_ count: Int) { inOrder &+= UInt64(count) }
}
