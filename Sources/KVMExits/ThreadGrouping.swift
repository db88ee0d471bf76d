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
/// Memory: two windows of 512 events per thread (``Policy/window(threads:)``: 256 Ki to 1 Mi events), 48 bytes per
/// event and 2 more (its group): 24.5 MiB up to 512 threads, 98 MiB from 2,048, allocated once the pairer holds
/// ``Policy/minThreads`` threads and kept for the pipeline's life. Measured on 20 M events of 2,048 threads × 2
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

    /// Windows for `threads` threads (``Policy/window(threads:)``).
    public init(policy: Policy = Policy(), threads: Int) {
        self.policy = policy
        capacity = policy.window(threads: threads)
        window = .allocate(capacity: capacity)
        grouped = .allocate(capacity: capacity)
        groupOf = .allocate(capacity: capacity)
    }

    deinit {
        window.deallocate()
        grouped.deallocate()
        groupOf.deallocate()
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
        Int(truncatingIfNeeded: (UInt64(UInt32(bitPattern: tid)) &* 0x9E37_79B9_7F4A_7C15) >> UInt64(64 - bits))
    }

    /// An empty window of this grouping's memory.
    var emptyWindow: Window { Window(events: window, capacity: capacity) }

    /// The `count` events of the window grouped by thread, `1 << bits` groups, each group's events in time order.
    func regroup(count: Int, bits: Int) -> UnsafeMutablePointer<TraceEvent> {
        let groups = 1 << bits
        if starts.count < groups + 1 { starts = [Int](repeating: 0, count: groups + 1) }
        starts.withUnsafeMutableBufferPointer { s in
            for g in 0...groups { s[g] = 0 }
            for i in 0..<count {
                let g = Self.group(window[i].tid, bits: bits)
                groupOf[i] = UInt16(truncatingIfNeeded: g)
                s[g &+ 1] &+= 1
            }
            for g in 0..<groups { s[g &+ 1] &+= s[g] }
            for i in 0..<count {
                let g = Int(groupOf[i])
                grouped[s[g]] = window[i]
                s[g] &+= 1
            }
        }
        regrouped &+= UInt64(count)
        return grouped
    }

    /// Notes a window of `count` events fed in time order.
    func noteInOrder(_ count: Int) { inOrder &+= UInt64(count) }
}
