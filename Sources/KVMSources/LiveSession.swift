import CKVMScope
import Foundation
import KVMExits
import KVMHost
import Logging
import Synchronization

/// The options of a live trace (the same as a recording's).
public typealias LiveConfig = TraceConfig

/// A running trace of the live kernel: a ``TraceSession`` (private tracefs instance, one reader thread per
/// CPU, each the single writer of its aggregate shard) and a pairing thread that merges the CPUs' exits and
/// entries by time. ``stop()`` — or the end of the session — drains the buffers, joins every thread and
/// removes the instance.
public final class LiveSession: @unchecked Sendable {
    public let aggregator: Aggregator
    let trace: TraceSession
    public var instance: String { trace.instance.name }
    public var root: String { trace.root }
    public var cpus: [Int] { trace.cpus }
    var formats: EventFormats { trace.formats }
    let lanes: [PairingLane]
    private let pairingThread = Mutex<JoinableThread?>(nil)
    /// Set once ``stop()`` has run.
    private let stopping = Mutex<Bool>(false)
    /// nil while tracing; the kernel's per-CPU loss counts once stopped.
    private let final = Mutex<[Int: UInt64]?>(nil)
    let startedAt = MonotonicClock.now()

    /// Creates the instance, enables the events and starts reading. Throws the errors users see; nothing
    /// is left in tracefs then.
    ///
    /// - Parameters:
    ///   - retireThreads: threads that exit (or whose tid is reused) are retired at each ``snapshot()``: their
    ///     counts and histograms fold into their VM's retired rows (see ``Aggregator``), so memory follows the
    ///     live threads. For long-running sessions (`serve`, `live`); off, every thread keeps its own rows.
    ///   - retiredVMCapacity: stopped VMs whose retired rows are kept apart (older ones fold into `other`).
    public init(config: TraceConfig, subbufsPerRead: UInt32 = 16, retireThreads: Bool = false,
                retiredVMCapacity: Int = 1024) throws {
        trace = try TraceSession(config: config, subbufsPerRead: subbufsPerRead)
        let startTime: ThreadStartTime = { tid, vm in ThreadDirectory.startTime(tid: tid, vm: vm) }
        aggregator = Aggregator(catalog: trace.formats.catalog, shardCount: trace.readers.count,
                                resolver: ThreadDirectory.identity(of:), retirement: retireThreads,
                                startTime: retireThreads ? startTime : nil,
                                retiredVMCapacity: retiredVMCapacity)
        lanes = trace.readers.map { _ in PairingLane() }
        try start()
    }

    deinit { stop() }

    /// Pairing runs only when both halves are traced.
    var pairs: Bool { formats.catalog.index(of: "kvm_exit") != nil && formats.catalog.index(of: "kvm_entry") != nil }

    func start() throws {
        let roles = formats.catalog.entries.map(\.role)
        let pairs = self.pairs
        if pairs {
            let pairer = ThreadOwned(aggregator.makePairer())
            let lanes = self.lanes
            let t = try JoinableThread(name: "kvmscope-pair") {
                PairingLoop(lanes: lanes, roles: roles).run(pairer: &pairer.value)
            }
            pairingThread.withLock { $0 = t }
        }
        let writers = trace.readers.indices.map { ThreadOwned(aggregator.writer(shard: $0)) }
        let lanes = self.lanes
        let index = Dictionary(uniqueKeysWithValues: trace.readers.enumerated().map { ($1.cpu, $0) })
        try trace.start(threadName: "kvmscope-cpu") { reader in
            let i = index[reader.cpu]!
            ReaderLoop(handle: reader, lane: lanes[i], roles: roles, pairs: pairs).run(writer: &writers[i].value)
        }
    }

    /// Events the kernel lost on each CPU of the instance, from its per-CPU stats (exact).
    public func lostPerCPU() -> [Int: UInt64] {
        if let f = final.withLock({ $0 }) { return f }
        var out: [Int: UInt64] = [:]
        for cpu in cpus { out[cpu] = trace.instance.lost(cpu: cpu) }
        return out
    }

    /// The kernel's per-CPU loss counts when tracing stopped (empty before).
    public var finalLostPerCPU: [Int: UInt64] { final.withLock { $0 } ?? [:] }

    /// A snapshot, with losses taken from the kernel's per-CPU counters. With `retireThreads`, first retires
    /// the threads that have exited (``retireExited()``).
    public func snapshot() -> AggregateSnapshot {
        retireExited()
        var snap = aggregator.snapshot(timestamp: MonotonicClock.now())
        snap.lostEvents = max(snap.lostEvents, lostPerCPU().values.reduce(0, +))
        return snap
    }

    /// With `retireThreads`: names the threads that were gone before they were looked at from the kernel's
    /// saved tgids and cmdlines, then retires every thread that has exited (``Aggregator/retireExitedThreads()``).
    /// Off the readers' threads; one /proc lookup per live thread. Returns the tids retired.
    @discardableResult
    public func retireExited() -> [Int32] {
        guard aggregator.board != nil else { return [] }
        aggregator.resolveNewThreads()
        // Named from the kernel's saved tgids once gone for a while: the kernel records a thread's tgid at a
        // later context switch, and until then the entry may still name the tid's previous owner.
        let due = aggregator.unresolvedGone(for: aggregator.retireDelay)
        if !due.isEmpty { resolveFromSavedThreads(only: due) }
        return aggregator.retireExitedThreads()
    }

    func resolveFromSavedThreads(only: Set<Int32>? = nil) {
        let saved = TraceFS.savedThreads(root: root)
        aggregator.resolveUnresolved(only: only) { tid in
            guard let tgid = saved.tgids[tid] else { return nil }
            let comm = saved.comms[tid]
            return ThreadIdentity(vm: tgid, vmName: ThreadDirectory.guestName(pid: tgid) ?? saved.comms[tgid],
                                  vcpu: comm.flatMap(ThreadIdentity.vcpu(fromThreadName:)), comm: comm)
        }
    }

    /// Stops reading, drains what is left in the buffers, joins every thread and removes the instance.
    /// Idempotent. Returns the error text when tracefs refused to remove the instance.
    @discardableResult
    public func stop() -> String? {
        // One stop at a time, whole: a second caller returns once the first is done.
        stopping.withLock { done -> String? in
            guard !done else { return nil }
            done = true
            let failure = trace.stop()
            final.withLock { $0 = trace.finalLostPerCPU }
            pairingThread.withLock { $0 }?.join()
            resolveFromSavedThreads()
            return failure
        }
    }

    public var elapsedSeconds: Double { Double(MonotonicClock.now() - startedAt) / 1e9 }
}

extension LiveSession {
    /// Runs the live reader's loop over one ``CPUReader`` on the calling thread, counting into shard `shard` of
    /// `aggregator` (no pairing), until the reader is stopped (``CPUReader/stop()``) or cannot be read: what the
    /// live session's reader threads do, for any descriptor that reads like trace_pipe_raw (a saved dump, a
    /// pipe). Corrupt sub-buffers and read errors are counted as they are live.
    public static func count(_ reader: CPUReader, into aggregator: Aggregator, shard: Int) {
        var writer = aggregator.writer(shard: shard)
        ReaderLoop(handle: reader, lane: PairingLane(), roles: aggregator.catalog.entries.map(\.role), pairs: false)
            .run(writer: &writer)
    }
}

/// A value handed to the one thread that will own it from then on.
final class ThreadOwned<T>: @unchecked Sendable {
    var value: T
    init(_ value: T) { self.value = value }
}

/// What a reader hands the pairing thread: its exits, entries and loss-flagged events in time order, and how
/// far its CPU's stream is complete (the watermark).
typealias PairingLane = PairingMerge.Lane

enum MonotonicClock {
    static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}

/// How long a reader that drained its buffer waits before reading again.
let batchMicroseconds: UInt32 = 5_000

/// How long after "now" an event may still become visible in a buffer (commit in flight, wake-up delay).
let visibilityMargin: UInt64 = 5_000_000

struct ReaderLoop {
    let handle: CPUReader
    let lane: PairingLane
    let roles: [EventRole]
    let pairs: Bool

    func run(writer: inout ShardWriter) {
        let r = handle.reader
        let cap = Int(ckvmscope_reader_capacity(r))
        var records = [ckvmscope_record](repeating: ckvmscope_record(), count: cap)
        var stats = ckvmscope_decode_stats()
        var pending: [TraceEvent] = []
        pending.reserveCapacity(cap)
        var hasReason = roles.map(\.hasReasons)
        var isPairing = roles.map { $0 == .exit || $0 == .entry }
        hasReason.append(contentsOf: repeatElement(false, count: 256 - hasReason.count))
        isPairing.append(contentsOf: repeatElement(false, count: 256 - isPairing.count))
        var lastMissed: UInt64 = 0
        var lastUnknown: UInt64 = 0
        var lastCorrupt: UInt64 = 0

        func consume(_ n: Int, watermark: UInt64) {
            records.withUnsafeBufferPointer { buf in
                for i in 0..<n {
                    let e = TraceEvent(buf[i])
                    let k = Int(e.event) & 255
                    writer.add(e, hasReason: hasReason[k])
                    // Exits and entries go to the pairer, and so does any event flagged as following a loss
                    // (whatever its kind): the pairer must know the CPU lost events there.
                    if pairs && (isPairing[k] || e.flags & TraceEvent.afterLoss != 0) { pending.append(e) }
                }
            }
            if stats.missed_events != lastMissed || stats.missed_unknown != lastUnknown {
                writer.addLost(stats.missed_events - lastMissed, unknownSubbuffers: stats.missed_unknown - lastUnknown)
                lastMissed = stats.missed_events
                lastUnknown = stats.missed_unknown
            }
            if stats.corrupt != lastCorrupt {
                writer.addDamage(corruptSubbuffers: stats.corrupt - lastCorrupt)
                lastCorrupt = stats.corrupt
            }
            if pairs { lane.hand(&pending, watermark: watermark) }
        }

        while !handle.isStopping {
            // Retirements first (one relaxed load when none): later events of a retired tid are a new thread.
            writer.maintain()
            // Everything stamped before `before` (less the commit margin) is in the buffer by now, so a read
            // that drains the buffer makes this CPU's stream complete up to there.
            let before = MonotonicClock.now()
            let subbufsBefore = stats.subbufs
            let n = Int(ckvmscope_reader_read(r, &records, 1, &stats))
            if n < 0 && errno != EINTR && errno != EAGAIN {
                // The ring buffer cannot be read any more: counted (every view shows it), and this CPU's
                // reader stops here; what is still buffered is drained below.
                writer.addDamage(readErrors: 1)
                break
            }
            let drained = stats.subbufs - subbufsBefore < UInt64(handle.maxSubbufs)
            let wm = drained ? before &- visibilityMargin : (n > 0 ? records[n - 1].ts : before &- visibilityMargin)
            consume(max(0, n), watermark: wm)
            if drained {
                // Let events gather for a few ms before the next read: one wake-up and a few syscalls then
                // carry hundreds of events, not a handful (a 1 MiB buffer takes far longer than that to fill).
                usleep(batchMicroseconds)
                if handle.isStopping { break }
                // An idle CPU still wakes every 50 ms to move its watermark on: pairing never waits on it long.
                if ckvmscope_reader_wait(r, 50) < 0 { break }
            }
        }
        // Stopped: drain what is left, including partial sub-buffers.
        while true {
            let subbufsBefore = stats.subbufs
            let n = Int(ckvmscope_reader_flush(r, &records, &stats))
            consume(max(0, n), watermark: .max)
            if stats.subbufs == subbufsBefore { break }
        }
        lane.finish()
    }
}

/// The pairing thread: the pipeline's merge stage (``PairingMerge``) over the readers' lanes, one round every
/// 10 ms, until every reader has finished and everything is paired.
struct PairingLoop {
    let lanes: [PairingLane]
    let roles: [EventRole]

    func run(pairer: inout Pairer) {
        var merge = PairingMerge(lanes: lanes, roles: roles)
        while !merge.step(&pairer) { usleep(10_000) }
    }
}
