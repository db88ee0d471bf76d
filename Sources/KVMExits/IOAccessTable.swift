import Synchronization

/// The direction of one I/O access, as `kvm_pio`'s `rw` and `kvm_mmio`'s `type` say it.
public enum IODirection: UInt8, Sendable {
    /// `kvm_pio` rw 0 (`in`), `kvm_mmio` type 1 (`KVM_TRACE_MMIO_READ`: a read completed, by the kernel or
    /// by the VMM).
    case read = 0
    /// `kvm_pio` rw 1 (`out`), `kvm_mmio` type 2 (`KVM_TRACE_MMIO_WRITE`).
    case write = 1
    /// `kvm_mmio` type 0 (`KVM_TRACE_MMIO_READ_UNSATISFIED`): a read the kernel could not serve, handed to the
    /// VMM; its completion is a later ``read`` of the same address.
    case readToVMM = 2

    /// The direction of a pio (`rw`) or mmio (`type`) event's ``TraceEvent/aux2``.
    @inlinable
    public static func of(_ space: DeviceMap.Space, aux2: UInt16) -> IODirection {
        if space == .port { return aux2 == 0 ? .read : .write }
        return aux2 == 2 ? .write : aux2 == 1 ? .read : .readToVMM
    }
}

/// One row of an ``IOAccessTable``: the accesses of one thread to one port or address in one direction, and
/// the handling time measured for them (``IOTimer``). Times in trace-clock nanoseconds.
public struct IOAccessRow: Sendable, Equatable {
    public var tid: Int32
    public var space: DeviceMap.Space
    /// The port (`kvm_pio` `port`) or guest-physical address (`kvm_mmio` `gpa`).
    public var address: UInt64
    public var direction: IODirection
    /// Events counted.
    public var count: UInt64
    /// Accesses with a measured time, and their sum, sum of squares (ns²), min and max (ns).
    public var timed: UInt64 = 0
    public var sum: UInt64 = 0
    public var sumOfSquares: Double = 0
    public var min: UInt64 = .max
    public var max: UInt64 = 0

    public init(tid: Int32, space: DeviceMap.Space, address: UInt64, direction: IODirection, count: UInt64) {
        self.tid = tid
        self.space = space
        self.address = address
        self.direction = direction
        self.count = count
    }

    /// This row without an earlier reading of the same key (`before`): its counts and times since then. The
    /// minimum and maximum stay this row's (they cannot be taken apart).
    public func minus(_ before: IOAccessRow) -> IOAccessRow {
        var r = self
        r.count = count &- Swift.min(count, before.count)
        r.timed = timed &- Swift.min(timed, before.timed)
        r.sum = sum &- Swift.min(sum, before.sum)
        r.sumOfSquares = Swift.max(0, sumOfSquares - before.sumOfSquares)
        return r
    }

    /// Adds another row's counts and times (same key, or rows being merged into one).
    public mutating func merge(_ o: IOAccessRow) {
        count += o.count
        timed += o.timed
        sum &+= o.sum
        sumOfSquares += o.sumOfSquares
        min = Swift.min(min, o.min)
        max = Swift.max(max, o.max)
    }
}

/// Per port and per MMIO address: how many `kvm_pio`/`kvm_mmio` events each thread caused, by direction, in a
/// bounded open-addressing table of atomics. One writer (a shard's reader thread, or the offline pipeline);
/// any thread reads (``rows()``).
///
/// Bounded: at most `capacity / 2` keys (thread × space × address × direction). An event whose key does not
/// fit is counted in ``overflow(_:)`` for its space, which every view shows: no access is lost silently. The
/// hot path allocates nothing: a cached or probed slot, one relaxed add.
public final class IOAccessTable: @unchecked Sendable {
    /// Default slots (a power of two): 512 keys, 64 KiB per shard (one shard per host CPU live).
    public static let defaultCapacity = 1024
    /// Atomics per slot: key B (0 = empty), key A (the address), count, timed, sum, sum of squares (Double
    /// bits), min, max.
    @usableFromInline static let stride = 8

    public let capacity: Int
    @usableFromInline let mask: Int
    @usableFromInline let maxKeys: Int
    @usableFromInline let words: UnsafeMutablePointer<Atomic<UInt64>>
    /// Events whose key found no room, per space (index: ``DeviceMap/Space`` raw value).
    @usableFromInline let overflowCounts: InlineArray<3, Atomic<UInt64>>
    /// Keys published (writer side only).
    @usableFromInline var used = 0

    /// - Parameter capacity: slots, a power of two ≥ 2; half of them can hold keys.
    public init(capacity: Int = IOAccessTable.defaultCapacity) {
        precondition(capacity >= 2 && capacity & (capacity - 1) == 0, "capacity must be a power of two")
        self.capacity = capacity
        mask = capacity - 1
        maxKeys = capacity / 2
        words = .allocate(capacity: capacity * Self.stride)
        for i in 0..<capacity * Self.stride { (words + i).initialize(to: Atomic(0)) }
        overflowCounts = InlineArray { _ in Atomic(0) }
    }

    deinit {
        words.deinitialize(count: capacity * Self.stride)
        words.deallocate()
    }

    /// Key word B: never 0 (bit 63 set); thread, space and direction.
    @inlinable
    static func keyB(tid: Int32, space: DeviceMap.Space, direction: IODirection) -> UInt64 {
        1 << 63 | UInt64(space.rawValue) << 40 | UInt64(direction.rawValue) << 32 | UInt64(UInt32(bitPattern: tid))
    }

    @inlinable
    static func slot(_ a: UInt64, _ b: UInt64) -> Int {
        let h = (a &* 0x9E37_79B9_7F4A_7C15 ^ b) &* 0xBF58_476D_1CE4_E5B9
        return Int(truncatingIfNeeded: h >> 32)
    }

    /// Writer: counts one access. Returns its slot (for ``record(slot:nanoseconds:)``), or -1 when the table
    /// is full and the event went to ``overflow(_:)``.
    @inlinable
    public func add(tid: Int32, space: DeviceMap.Space, address a: UInt64, direction: IODirection) -> Int {
        let b = Self.keyB(tid: tid, space: space, direction: direction)
        let (i, found) = probe(a, b)
        guard found else { return publish(slot: i, a: a, b: b, space: space) }
        words[i * Self.stride + 2].singleWriterAdd(1)
        return i
    }

    /// Writer: the slot of key (`a`, `b`), or the empty slot where it would go (`found` false).
    @inlinable @inline(__always)
    func probe(_ a: UInt64, _ b: UInt64) -> (slot: Int, found: Bool) {
        var i = Self.slot(a, b) & mask
        while true {
            let base = i * Self.stride
            let kb = words[base].load(ordering: .relaxed)  // only this thread writes keys
            if kb == b && words[base + 1].load(ordering: .relaxed) == a { return (i, true) }
            if kb == 0 { return (i, false) }
            i = (i + 1) & mask
        }
    }

    @usableFromInline
    func publish(slot i: Int, a: UInt64, b: UInt64, space: DeviceMap.Space) -> Int {
        guard used < maxKeys else {
            overflowCounts[Int(space.rawValue)].singleWriterAdd(1)
            return -1
        }
        let base = i * Self.stride
        words[base + 1].store(a, ordering: .relaxed)
        words[base + 2].store(1, ordering: .relaxed)
        words[base + 6].store(.max, ordering: .relaxed)
        // Release: a reader that sees key B also sees the address, the first count and the min's start value.
        words[base].store(b, ordering: .releasing)
        used += 1
        return i
    }

    /// Writer: whether the access's key has a row already (so that ``add(tid:space:address:direction:)`` would
    /// publish no new one).
    func holds(tid: Int32, space: DeviceMap.Space, address a: UInt64, direction: IODirection) -> Bool {
        probe(a, Self.keyB(tid: tid, space: space, direction: direction)).found
    }

    /// Writer: one measured handling time of the access in `slot` (single writer: load and store).
    @inlinable
    public func record(slot: Int, nanoseconds t: UInt64) {
        guard slot >= 0 else { return }
        let base = slot * Self.stride
        words[base + 3].singleWriterAdd(1)
        words[base + 4].singleWriterAdd(t)
        let sq = Double(bitPattern: words[base + 5].load(ordering: .relaxed)) + Double(t) * Double(t)
        words[base + 5].store(sq.bitPattern, ordering: .relaxed)
        if t < words[base + 6].load(ordering: .relaxed) { words[base + 6].store(t, ordering: .relaxed) }
        if t > words[base + 7].load(ordering: .relaxed) { words[base + 7].store(t, ordering: .relaxed) }
    }

    /// Events of `space` that found no room in the table.
    public func overflow(_ space: DeviceMap.Space) -> UInt64 {
        overflowCounts[Int(space.rawValue)].load(ordering: .relaxed)
    }

    /// Every published row. Safe while the writer runs: acquire on key B pairs with the writer's release;
    /// each count is exact at some instant of the read (the time fields may be one access apart).
    public func rows() -> [IOAccessRow] {
        var out: [IOAccessRow] = []
        for i in 0..<capacity {
            let base = i * Self.stride
            let b = words[base].load(ordering: .acquiring)
            if b == 0 { continue }
            let space = DeviceMap.Space(rawValue: UInt8(truncatingIfNeeded: b >> 40)) ?? .port
            let direction = IODirection(rawValue: UInt8(truncatingIfNeeded: b >> 32)) ?? .read
            var r = IOAccessRow(tid: Int32(bitPattern: UInt32(truncatingIfNeeded: b)), space: space,
                                address: words[base + 1].load(ordering: .relaxed), direction: direction,
                                count: words[base + 2].load(ordering: .relaxed))
            r.timed = words[base + 3].load(ordering: .relaxed)
            r.sum = words[base + 4].load(ordering: .relaxed)
            r.sumOfSquares = Double(bitPattern: words[base + 5].load(ordering: .relaxed))
            r.min = words[base + 6].load(ordering: .relaxed)
            r.max = words[base + 7].load(ordering: .relaxed)
            out.append(r)
        }
        return out
    }
}

/// `perf kvm stat`'s handling time of I/O accesses, measured per thread on events in timestamp order
/// (the offline pipeline; live, the readers see one CPU each and no time is measured):
/// - a port access, from its `kvm_pio` to the thread's next `kvm_entry`;
/// - an MMIO write, from its `kvm_mmio` (write) to the next `kvm_entry`;
/// - an MMIO read, from the thread's `kvm_exit` to the `kvm_mmio` (read) that completes it.
/// As perf's `ioport`/`mmio` analyses do (tools/perf/arch/x86/util/kvm-stat.c, `ioport_event_*` and
/// `mmio_event_*`). An access without its begin or end (a trace without kvm_exit/kvm_entry, as on backends
/// where they never fire, or cut by a loss) is counted but not timed.
public struct IOTimer {
    struct Pending {
        var tid: Int32 = 0
        var used = false
        /// The slot of the access waiting for the next entry, or -1.
        var slot = -1
        var since: UInt64 = 0
        /// The last exit not yet followed by an entry (0: none).
        var exitAt: UInt64 = 0
    }

    var threads = [Pending](repeating: Pending(), count: 256)
    var count = 0

    public init() {}

    mutating func index(_ tid: Int32) -> Int {
        var mask = threads.count - 1
        var i = Int(truncatingIfNeeded: (UInt64(UInt32(bitPattern: tid)) &* 0x9E37_79B9_7F4A_7C15) >> 40) & mask
        while threads[i].used {
            if threads[i].tid == tid { return i }
            i = (i + 1) & mask
        }
        if (count + 1) * 2 > threads.count {
            // Half full: twice the slots (cold path, once per doubling).
            let old = threads
            threads = [Pending](repeating: Pending(), count: old.count * 2)
            count = 0
            mask = threads.count - 1
            for p in old where p.used { threads[index(p.tid)] = p }
            return index(tid)
        }
        threads[i].used = true
        threads[i].tid = tid
        count += 1
        return i
    }

    /// A `kvm_exit`: an MMIO read completed before the next entry is timed from here.
    public mutating func exit(_ e: TraceEvent) {
        let i = index(e.tid)
        threads[i].exitAt = e.timestamp
        threads[i].slot = -1
    }

    /// A `kvm_entry`: ends the thread's pending port access or MMIO write.
    public mutating func entry(_ e: TraceEvent, _ table: IOAccessTable) {
        let i = index(e.tid)
        if threads[i].slot >= 0, e.timestamp >= threads[i].since {
            table.record(slot: threads[i].slot, nanoseconds: e.timestamp - threads[i].since)
        }
        threads[i].slot = -1
        threads[i].exitAt = 0
    }

    /// A counted `kvm_pio` or `kvm_mmio` (its slot in `table`, -1 when it overflowed).
    public mutating func access(_ e: TraceEvent, space: DeviceMap.Space, slot: Int, _ table: IOAccessTable) {
        let i = index(e.tid)
        switch IODirection.of(space, aux2: e.aux2) {
        case .read where space == .mmio:
            if threads[i].exitAt != 0, slot >= 0, e.timestamp >= threads[i].exitAt {
                table.record(slot: slot, nanoseconds: e.timestamp - threads[i].exitAt)
            }
            threads[i].exitAt = 0
        case .readToVMM:
            break
        default:
            threads[i].slot = slot
            threads[i].since = e.timestamp
        }
    }

    /// The kernel lost events: nothing pending can be timed any more (cold path).
    public mutating func loss() {
        for i in threads.indices where threads[i].used {
            threads[i].slot = -1
            threads[i].exitAt = 0
        }
    }
}
