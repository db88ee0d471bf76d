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
    let pairing = PairingSignal()
    private let pairingThread = Mutex<JoinableThread?>(nil)
    /// The retirer thread (with exit records), its end, and its pause between rounds (cut short by the end).
    private let retirer = Mutex<JoinableThread?>(nil)
    private let retirerStopped = Atomic<Bool>(false)
    private let retirerPause = DispatchSemaphore(value: 0)
    /// The namer thread (``startNamer()``) and its end.
    private let namer = Mutex<JoinableThread?>(nil)
    private let namerStopped = Atomic<Bool>(false)
    /// Set once ``stop()`` has run.
    private let stopping = Mutex<Bool>(false)
    /// nil while tracing; the kernel's per-CPU loss counts once stopped.
    private let final = Mutex<[Int: UInt64]?>(nil)
    let startedAt = MonotonicClock.now()
    /// The one process traced with its descendants (`-p PID`: set_event_pid with event-fork), nil otherwise: a
    /// thread gone before it was looked at and unknown to the kernel's saved tgids can only be of its tree, and
    /// counts in its VM rather than as a VM of its own (its tid, no name) that alerts would evaluate alone —
    /// once PID has been seen holding KVM open (``tracedVM``): a PID that only starts VMs (a shell running
    /// guests) is no VM to count them in.
    let tracedProcess: Int32?
    private let tracedProcessIsVM = Mutex<Bool>(false)

    /// ``tracedProcess`` once it has been seen holding KVM open (looked at each retirement until then).
    var tracedVM: Int32? {
        guard let pid = tracedProcess else { return nil }
        return tracedProcessIsVM.withLock { seen in
            if !seen {
                seen = KVMProcesses.holdsKVM(pid)
                if seen, let name = ThreadDirectory.guestName(pid: pid) { tracedName.withLock { $0 = name } }
            }
            return seen ? pid : nil
        }
    }
    /// ``tracedProcess``'s guest name as last seen alive (at the start, and when first seen holding KVM): a VM
    /// gone before its threads were named from the kernel's saved tgids keeps it (its comm otherwise).
    private let tracedName = Mutex<String?>(nil)

    /// Creates the instance, enables the events and starts reading. Throws the errors users see; nothing
    /// is left in tracefs then.
    ///
    /// - Parameters:
    ///   - retireThreads: threads that exit (or whose tid is reused) are retired at each ``snapshot()``: their
    ///     counts and histograms fold into their VM's retired rows (see ``Aggregator``), so memory follows the
    ///     live threads. For long-running sessions (`serve`, `live`); off, every thread keeps its own rows.
    ///   - retiredVMCapacity: stopped VMs whose retired rows are kept apart (older ones fold into `other`).
    ///   - threadExitEvents: with `retireThreads`, also trace `sched:sched_process_exit` and retire each thread
    ///     on its exit record (``retireExited()``); /proc is then read only as a safety net, every
    ///     ``safetyCheckInterval`` or after losses. Falls back to /proc alone when the kernel lacks the event.
    public init(config: TraceConfig, subbufsPerRead: UInt32 = 16, retireThreads: Bool = false,
                retiredVMCapacity: Int = 1024, threadExitEvents: Bool = true) throws {
        var config = config
        config.threadExits = config.threadExits || (retireThreads && threadExitEvents)
        trace = try TraceSession(config: config, subbufsPerRead: subbufsPerRead)
        // A COMMAND is traced as kvmscope's own descendants (onlyPid = our pid): its VMs are not ours.
        let traced = Set((config.onlyPid.map { [$0] } ?? []) + config.onlyPids).subtracting([getpid()])
        tracedProcess = traced.count == 1 && !(config.onlyPid == getpid()) ? traced.first : nil
        let startName = tracedProcess.flatMap(ThreadDirectory.guestName(pid:))
        let startTime: ThreadStartTime = { tid, vm in ThreadDirectory.startTime(tid: tid, vm: vm) }
        // The aggregate (and every view) sees the kvm events only: the thread-exit event, last, is left out.
        aggregator = Aggregator(catalog: trace.formats.catalog.withoutThreadExits, shardCount: trace.readers.count,
                                resolver: ThreadDirectory.identity(of:), retirement: retireThreads,
                                startTime: retireThreads ? startTime : nil,
                                retiredVMCapacity: retiredVMCapacity,
                                threadExits: retireThreads && trace.threadExitEvent != nil, wakeOnNewThreads: true)
        lanes = trace.readers.map { _ in PairingLane() }
        tracedName.withLock { $0 = startName }
        try start()
    }

    deinit { stop() }

    /// Pairing runs only when both halves are traced.
    var pairs: Bool { formats.catalog.index(of: "kvm_exit") != nil && formats.catalog.index(of: "kvm_entry") != nil }

    func start() throws {
        let roles = formats.catalog.entries.map(\.role)
        let pairs = self.pairs
        let signal = pairing
        if pairs {
            let pairer = ThreadOwned(aggregator.makePairer())
            let lanes = self.lanes
            let readers = trace.readers
            let t = try JoinableThread(name: "kvmscope-pair") {
                PairingLoop(lanes: lanes, readers: readers, roles: roles, signal: signal).run(pairer: &pairer.value)
            }
            pairingThread.withLock { $0 = t }
        }
        let aggregator = self.aggregator
        if aggregator.threadExits {
            // The retirer: a round each time a backlog of exit records has built up (at most every
            // retirerInterval), besides those of scrapes and intervals. Holds the session weakly; stop() ends and
            // joins it.
            let t = try JoinableThread(name: "kvmscope-retire") { [weak self] in
                while true {
                    let woken = aggregator.exitWake.wait(timeout: .now() + .seconds(60)) == .success
                    guard let session = self, !session.retirerStopped.load(ordering: .acquiring) else { return }
                    guard woken else { continue }
                    session.retireExited()
                    _ = session.retirerPause.wait(timeout: .now() + .microseconds(Int(Self.retirerInterval)))
                }
            }
            retirer.withLock { $0 = t }
        }
        try startNamer()
        let writers = trace.readers.indices.map { ThreadOwned(aggregator.writer(shard: $0)) }
        let lanes = self.lanes
        let index = Dictionary(uniqueKeysWithValues: trace.readers.enumerated().map { ($1.cpu, $0) })
        try trace.start(threadName: "kvmscope-cpu") { reader in
            let i = index[reader.cpu]!
            ReaderLoop(handle: reader, lane: lanes[i], roles: roles, pairs: pairs, signal: signal, aggregator: aggregator)
                .run(writer: &writers[i].value)
        }
    }

    /// Starts the namer: a thread that resolves each new thread (its VM, guest name and vCPU number, from /proc)
    /// as soon as a reader first sees it, while it still runs. Otherwise a thread is named at the next snapshot
    /// (a scrape, an interval, the end of `stat`), and one that exited before then can only be named from the
    /// kernel's saved tgids and cmdlines, which other processes' threads overwrite on a busy host: its rows then
    /// lose their vCPU number. Cold path: one wake-up per burst of new threads, never per event; the readers
    /// only note the tid. Holds the session weakly; ``stop()`` ends and joins it.
    func startNamer() throws {
        guard let wake = aggregator.newThreadWake else { return }
        let t = try JoinableThread(name: "kvmscope-name") { [weak self] in
            while true {
                let woken = wake.wait(timeout: .now() + .seconds(60)) == .success
                guard let session = self, !session.namerStopped.load(ordering: .acquiring) else { return }
                guard woken else { continue }
                session.aggregator.takeNewThreadSignal()
                session.aggregator.resolveNewThreads()
            }
        }
        namer.withLock { $0 = t }
    }

    /// How long ``catchUp()`` waits for the reader threads, then for the pairing thread, at most.
    static let catchUpDeadline: UInt64 = 2_000_000_000

    /// The refresh/scrape boundary: asks every reader to read what its buffer holds now (the writer's partial
    /// sub-buffer included) and waits until each has, then lets the pairing thread pair what that completed.
    /// Afterwards the aggregate holds every event written before the call (and committed; see
    /// `visibilityMargin`) and every pair whose entry is that old. Readers otherwise sleep until their CPU's
    /// buffer crosses the watermark, so this is what keeps every view exact at its refresh. Does nothing once
    /// stopped (``stop()`` drains everything). Bounded: a reader that does not answer within 2 s (a stopped
    /// process) is not waited for any longer.
    /// - Returns: the trace-clock time (ns) up to which every event has been counted and paired, when every
    ///   reader and the pairing thread answered in time; nil otherwise (or once stopped).
    @discardableResult
    public func catchUp() -> UInt64? {
        guard !stopping.withLock({ $0 }) else { return nil }
        let start = MonotonicClock.now()
        let deadline = start + Self.catchUpDeadline
        let asked = trace.readers.map { $0.requestCatchUp() }
        var complete = true
        for (r, n) in zip(trace.readers, asked) {
            while r.catchUpServed.load(ordering: .acquiring) < n && !r.isStopping && MonotonicClock.now() < deadline {
                usleep(100)
            }
            if r.catchUpServed.load(ordering: .acquiring) < n { complete = false }
        }
        if pairs {
            let n = pairing.request()
            while pairing.served.load(ordering: .acquiring) < n && MonotonicClock.now() < deadline { usleep(100) }
            if pairing.served.load(ordering: .acquiring) < n { complete = false }
        }
        // Each reader read up to its own "now" (after `start`) less the commit margin, and handed that watermark.
        return complete && start > visibilityMargin ? start - visibilityMargin : nil
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

    /// A snapshot, with losses taken from the kernel's per-CPU counters, after a ``catchUp()``: every event
    /// written before the call is in it. With `retireThreads`, the threads that have exited are then retired
    /// (``retireExited()``).
    public func snapshot() -> AggregateSnapshot {
        let bound = catchUp()
        retireExited(caughtUpTo: bound)
        var snap = aggregator.snapshot(timestamp: MonotonicClock.now())
        snap.lostEvents = max(snap.lostEvents, lostPerCPU().values.reduce(0, +))
        return snap
    }

    /// With `retireThreads`: retires every thread that has exited. Off the readers' threads. Returns the tids
    /// retired.
    ///
    /// With exit records (``Aggregator/threadExits``): a ``catchUp()`` first, then every thread whose exit record
    /// is stamped at least ``exitSettle`` before what that caught up is retired (named first from the kernel's
    /// saved tgids and cmdlines when it was gone before it was looked at): its last events on every CPU are
    /// counted under it, and its tid's next thread is a new one. Cost O(exits). The catch-up is skipped when no
    /// exit record has been read (a quiet host: no reader woken). The /proc check below runs too, as a safety
    /// net, every ``safetyCheckInterval`` and whenever the readers reported losses since the last one.
    ///
    /// Without: names the threads that were gone before they were looked at from the kernel's saved tgids and
    /// cmdlines, then retires every thread found gone from /proc (``Aggregator/retireExitedThreads()``): one
    /// /proc lookup per live thread.
    @discardableResult
    public func retireExited() -> [Int32] {
        guard aggregator.board != nil else { return [] }
        // No exit record read since the last round and no retirement under way (a quiet host): nothing to catch
        // up for, no reader woken. A retirement under way is carried out by the writers at the catch-up.
        guard aggregator.threadExits, aggregator.pendingThreadExits > 0 || (aggregator.board?.pending ?? 0) > 0
        else { return retireExited(caughtUpTo: nil) }
        return retireExited(caughtUpTo: catchUp())
    }

    /// How long before what a catch-up read an exit record must be stamped to retire its thread, ns: an event
    /// stamped before the catch-up's bound but committed after it (a writer stalled past the commit margin, as
    /// a descheduled VM's CPU can be) is still counted and paired under its thread.
    static let exitSettle: UInt64 = 100_000_000

    /// Least time between two of the retirer's rounds, µs.
    static let retirerInterval: UInt32 = 200_000

    /// How often the /proc check runs as a safety net when threads retire on their exit records, ns.
    static let safetyCheckInterval: UInt64 = 30_000_000_000
    /// When the safety net last ran, and the losses the readers had reported then.
    private let safetyCheck = Mutex<(at: UInt64, losses: UInt64)>((0, 0))

    /// ``retireExited()`` after a ``catchUp()`` that returned `bound` (nil: it did not complete, so no exit
    /// record retires this time).
    @discardableResult
    func retireExited(caughtUpTo bound: UInt64?) -> [Int32] {
        guard aggregator.board != nil else { return [] }
        aggregator.resolveNewThreads()
        var retired: [Int32] = []
        if aggregator.threadExits {
            if let bound, bound > Self.exitSettle {
                let exited = aggregator.takeThreadExits(through: bound - Self.exitSettle)
                let unnamed = aggregator.unresolved(among: exited)
                if !unnamed.isEmpty { resolveFromSavedThreads(only: unnamed) }
                aggregator.retire(exited, onExit: true)
                retired = exited
            }
            let now = MonotonicClock.now()
            let losses = aggregator.lossesReported
            let due = safetyCheck.withLock { last -> Bool in
                guard now &- last.at >= Self.safetyCheckInterval || losses != last.losses else { return false }
                last = (now, losses)
                return true
            }
            if due { retired += retireFoundGone() }
        } else {
            retired = retireFoundGone()
        }
        // What the writers handed over for the threads retired before (carried out at this round's catch-up) is
        // taken now, not at the next scrape: their series and tables are freed here.
        aggregator.collectRetired()
        releaseFreedMemory()
        return retired.sorted()
    }

    /// The /proc check: names the threads gone for a while from the kernel's saved tgids, then retires the
    /// threads found gone (``Aggregator/retireExitedThreads()``). One /proc lookup per live thread.
    private func retireFoundGone() -> [Int32] {
        // Named from the kernel's saved tgids once gone for a while: the kernel records a thread's tgid at a
        // later context switch, and until then the entry may still name the tid's previous owner.
        _ = tracedVM
        let due = aggregator.unresolvedGone(for: aggregator.retireDelay)
        if !due.isEmpty { resolveFromSavedThreads(only: due) }
        return aggregator.retireExitedThreads()
    }

    /// When retired threads' memory was freed (``Aggregator/retiredCollections`` moved: their series and
    /// tables, once every writer carried the retirement out and its hand-over was taken): it goes back to the
    /// kernel, at most once per ``trimInterval`` nanoseconds (a daemon's RSS then follows the threads alive,
    /// not the most it ever held; measured in ServeChurnLiveTests). Memory freed within an interval of the
    /// last release is released by the first round after it, whether or not that round frees anything: the
    /// last of a burst too (rounds go on while retirements are under way, ``retireExited()``).
    private func releaseFreedMemory() {
        let now = MonotonicClock.now()
        let freed = aggregator.retiredCollections
        let due = lastTrim.withLock { t -> Bool in
            guard freed != t.freed, now &- t.last >= Self.trimInterval || t.last == 0 else { return false }
            t = (now, freed)
            return true
        }
        if due { FreeMemory.release() }
    }

    /// The last release of freed memory, and ``Aggregator/retiredCollections`` then.
    private let lastTrim = Mutex<(last: UInt64, freed: UInt64)>((0, 0))
    static let trimInterval: UInt64 = 1_000_000_000

    func resolveFromSavedThreads(only: Set<Int32>? = nil) {
        let saved = TraceFS.savedThreads(root: root, only: only)
        let owner = tracedVM
        // One name per VM, however many of its threads are named here (thousands a second under churn).
        var names: [Int32: String?] = [:]
        aggregator.resolveUnresolved(only: only) { tid in
            let comm = saved.comms[tid]
            guard let tgid = saved.tgids[tid] ?? owner else { return nil }
            let name: String?
            if let known = names[tgid] {
                name = known
            } else {
                name = ThreadDirectory.guestName(pid: tgid) ?? (tgid == tracedProcess ? tracedName.withLock { $0 } : nil)
                    ?? saved.comms[tgid]
                names[tgid] = name
            }
            return ThreadIdentity(vm: tgid, vmName: name, vcpu: comm.flatMap(ThreadIdentity.vcpu(fromThreadName:)),
                                  comm: comm)
        }
    }

    /// Stops reading, drains what is left in the buffers, joins every thread and removes the instance.
    /// Idempotent. Returns the error text when tracefs refused to remove the instance.
    @discardableResult
    public func stop() -> String? {
        // The retirer first, outside the lock: a round it is in may be catching up (which takes the lock).
        if !retirerStopped.exchange(true, ordering: .acquiringAndReleasing) {
            aggregator.exitWake.signal()
            retirerPause.signal()
        }
        retirer.withLock { $0 }?.join()
        if !namerStopped.exchange(true, ordering: .acquiringAndReleasing) { aggregator.newThreadWake?.signal() }
        namer.withLock { $0 }?.join()
        // One stop at a time, whole: a second caller returns once the first is done.
        return stopping.withLock { done -> String? in
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
        ReaderLoop(handle: reader, lane: PairingLane(), roles: aggregator.catalog.entries.map(\.role), pairs: false,
                   signal: PairingSignal())
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

/// How long a reader of a plain descriptor (a file or pipe, which poll() calls readable at its end) sleeps
/// after a read that found nothing.
let batchMicroseconds: UInt32 = 5_000

/// How long after "now" an event may still become visible in a buffer (commit in flight, wake-up delay).
let visibilityMargin: UInt64 = 5_000_000

/// Wakes the pairing thread: readers signal it when they hand events or move their watermark, ``LiveSession/
/// catchUp()`` when it wants the pairs of what the readers just read. It never wakes on a timer while nothing
/// waits to be paired.
final class PairingSignal: Sendable {
    let semaphore = DispatchSemaphore(value: 0)
    /// Set by a signal, cleared by the pairing thread before each round: at most one wake-up is outstanding,
    /// however many hand-overs came in between (a reader's signal is then one atomic exchange, no syscall).
    let wanted = Atomic<Bool>(false)
    /// Pairing rounds asked for (``request()``) and the last one the pairing thread has finished: a round
    /// started after the request (its number loaded before its step) pairs what the lanes held then.
    let asked = Atomic<UInt64>(0)
    let served = Atomic<UInt64>(0)

    func signal() {
        // Acquire/release: a round that clears the flag after this exchange sees what was handed before it.
        if !wanted.exchange(true, ordering: .acquiringAndReleasing) { semaphore.signal() }
    }

    func request() -> UInt64 {
        let n = asked.wrappingAdd(1, ordering: .releasing).newValue
        signal()
        return n
    }

    /// The pairing thread, before a round: later signals wake it again. An exchange (acquire) that reads a
    /// signal's `true` synchronizes with it, so the round sees what that reader handed before signalling.
    func clear() { _ = wanted.exchange(false, ordering: .acquiringAndReleasing) }
}

struct ReaderLoop {
    let handle: CPUReader
    let lane: PairingLane
    let roles: [EventRole]
    let pairs: Bool
    let signal: PairingSignal
    /// Told of thread-exit records (``EventRole/threadExit``), when the catalog has them.
    var aggregator: Aggregator? = nil

    /// Events handed over and not yet taken by the pairing thread at which a reader wakes it while it keeps
    /// reading; otherwise it is woken once, when the reader goes back to sleep (or at a catch-up or the end).
    static let wakeThreshold = 8192

    func run(writer: inout ShardWriter) {
        let r = handle.reader
        let cap = Int(ckvmscope_reader_capacity(r))
        let records = UnsafeMutablePointer<ckvmscope_record>.allocate(capacity: cap)
        records.initialize(repeating: ckvmscope_record(), count: cap)
        defer { records.deallocate() }
        var batch = ReaderBatch(lane: lane, signal: signal, roles: roles, pairs: pairs, aggregator: aggregator)
        batch.pending.reserveCapacity(cap)
        var transient = TransientReadFailures()
        // Set when the loop stopped at a read error (counted there): the drain's own failure is then the same one.
        var failed = false

        while !handle.isStopping {
            // Retirements first (one relaxed load when none): later events of a retired tid are a new thread.
            writer.maintain()
            // A catch-up asked for (a snapshot, or the pairing thread waiting on this CPU) is served first.
            let asked = handle.catchUpAsked.load(ordering: .acquiring)
            if asked != handle.catchUpServed.load(ordering: .relaxed) {
                let ok = batch.catchUp(r, records, &writer)
                let error = errno
                batch.wake()
                // Out of memory for a moment: asked again (not served yet), as a read below is.
                if !ok && error == ENOMEM && transient.retry() { continue }
                handle.catchUpServed.store(asked, ordering: .releasing)
                if !ok {
                    writer.addDamage(readErrors: 1)
                    failed = true
                    break
                }
            }
            // The full sub-buffers, as many as there are: the writer's partial one is left to it.
            let subbufsBefore = batch.stats.subbufs
            let n = Int(ckvmscope_reader_read(r, records, 1, &batch.stats))
            if n < 0 && errno != EINTR && errno != EAGAIN {
                // The kernel could not allocate the page a sub-buffer is handed over in (it asks with
                // __GFP_NORETRY; a sub-buffer larger than a page needs contiguous pages, which a fragmented host
                // may lack for a moment): nothing was taken from the ring buffer, so the read is tried again
                // shortly; what the writer overwrites meanwhile is counted by the kernel as lost.
                if errno == ENOMEM && transient.retry() { continue }
                // The ring buffer cannot be read any more: counted (every view shows it), and this CPU's
                // reader stops here; what is still buffered is drained below.
                writer.addDamage(readErrors: 1)
                failed = true
                break
            }
            if n > 0 { transient.reset() }
            // Everything on full sub-buffers up to the last record read is complete.
            batch.consume(records, max(0, n), watermark: n > 0 ? records[n - 1].ts : 0, &writer)
            if batch.stats.subbufs - subbufsBefore >= UInt64(handle.maxSubbufs) { continue }
            // Going back to sleep: the pairing thread gets what this wake-up handed over.
            batch.wake()
            if handle.isStopping { break }
            if handle.watermarked {
                // Caught up with the writer: sleep until the buffer crosses the watermark or someone asks.
                _ = ckvmscope_reader_wait(r, -1)
            } else {
                // A file or pipe: poll() calls its end readable, so sleep between reads.
                usleep(batchMicroseconds)
                _ = ckvmscope_reader_wait(r, 50)
            }
        }
        // Stopped: drain what is left, including partial sub-buffers (a watermark's worth may be there: the
        // stream is complete only up to the last record read until the buffer is empty, then finished).
        while true {
            let subbufsBefore = batch.stats.subbufs
            let n = Int(ckvmscope_reader_flush(r, records, &batch.stats))
            if n < 0 {
                // What was left in the buffer cannot be read: counted, never a silent end.
                if !failed { writer.addDamage(readErrors: 1) }
                break
            }
            batch.consume(records, n, watermark: n > 0 ? records[n - 1].ts : 0, &writer)
            if batch.stats.subbufs == subbufsBefore { break }
        }
        lane.finish()
        handle.catchUpServed.store(.max, ordering: .releasing)
        signal.signal()
    }
}

/// A reader's consecutive reads that failed for want of memory (ENOMEM): each is retried after a pause, up to
/// ``limit`` in a row (about a second); past that the read error is counted and the reader stops as at any other.
struct TransientReadFailures {
    static let limit = 200
    static let pause: UInt32 = 5_000
    var consecutive = 0

    mutating func retry() -> Bool {
        guard consecutive < Self.limit else { return false }
        consecutive += 1
        usleep(Self.pause)
        return true
    }

    mutating func reset() { consecutive = 0 }
}

/// A reader thread's state between reads: the decode counters, what it counts and hands the pairing thread.
/// A plain struct of the reader's own (mutating methods, no captured variables): the per-event loop runs over
/// raw pointers with no exclusivity checks, reference counting or per-event appends.
struct ReaderBatch {
    let lane: PairingLane
    let signal: PairingSignal
    let pairs: Bool
    let aggregator: Aggregator?
    /// Per event index (256 entries): ``hasReason``, ``forPairer`` (exit, entry), ``threadExit``.
    let kinds: [UInt8]
    let hasThreadExits: Bool
    static let hasReason: UInt8 = 1
    static let forPairer: UInt8 = 2
    static let threadExit: UInt8 = 4
    /// Whether the C record is a ``TraceEvent`` field for field (checked once): records are then copied in bulk.
    let recordIsEvent = SubbufferDecoder.recordIsEvent
    var stats = ckvmscope_decode_stats()
    var lastMissed: UInt64 = 0
    var lastUnknown: UInt64 = 0
    var lastCorrupt: UInt64 = 0
    /// The highest watermark handed over.
    var handed: UInt64 = 0
    /// Whether something was handed over since the pairing thread was last woken.
    var unsignalled = false
    /// Exits, entries and loss-flagged events of the batch being handed over.
    var pending: [TraceEvent] = []

    init(lane: PairingLane, signal: PairingSignal, roles: [EventRole], pairs: Bool, aggregator: Aggregator?) {
        self.lane = lane
        self.signal = signal
        self.pairs = pairs
        self.aggregator = aggregator
        var k = [UInt8](repeating: 0, count: 256)
        for (i, role) in roles.enumerated() where i < 256 {
            k[i] = (role.hasReasons ? Self.hasReason : 0) | (role == .exit || role == .entry ? Self.forPairer : 0)
                | (role == .threadExit ? Self.threadExit : 0)
        }
        kinds = k
        hasThreadExits = aggregator != nil && roles.contains(.threadExit)
    }

    /// Counts `n` decoded records, hands the pairer's share to the lane with `watermark`, and notes the
    /// decoder's loss and damage counters.
    mutating func consume(_ records: UnsafeMutablePointer<ckvmscope_record>, _ n: Int, watermark: UInt64,
                          _ writer: inout ShardWriter) {
        if n > 0 {
            // The records go into the hand-over batch in one copy; the pairer's events are then kept in place.
            var out: [TraceEvent] = []
            swap(&out, &pending)
            let base = out.count
            if recordIsEvent {
                UnsafeMutableRawPointer(records).withMemoryRebound(to: TraceEvent.self, capacity: n) { events in
                    out.append(contentsOf: UnsafeBufferPointer(start: events, count: n))
                }
            } else {
                for i in 0..<n { out.append(TraceEvent(records[i])) }
            }
            let pairs = self.pairs
            let threadExits = hasThreadExits
            let aggregator = self.aggregator
            let kept = kinds.withUnsafeBufferPointer { kinds in
                out.withUnsafeMutableBufferPointer { p -> Int in
                    var j = base
                    for i in base..<base + n {
                        let e = p[i]
                        let k = kinds[Int(e.event) & 255]
                        if threadExits && k & Self.threadExit != 0 {
                            // Cold path: once per exiting thread. Its pid field is the thread's tid.
                            aggregator?.noteThreadExit(Int32(truncatingIfNeeded: e.detail), timestamp: e.timestamp)
                            if e.flags & TraceEvent.afterLoss != 0 {
                                p[j] = e
                                j += 1
                            }
                            continue
                        }
                        writer.add(e, hasReason: k & Self.hasReason != 0)
                        // Exits and entries go to the pairer, and so does any event flagged as following a loss
                        // (whatever its kind): the pairer must know the CPU lost events there.
                        if k & Self.forPairer != 0 || e.flags & TraceEvent.afterLoss != 0 {
                            p[j] = e
                            j += 1
                        }
                    }
                    return pairs ? j : base
                }
            }
            out.removeLast(out.count - kept)
            swap(&out, &pending)
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
        if pairs && (!pending.isEmpty || watermark > handed) {
            let waiting = lane.hand(&pending, watermark: watermark)
            handed = max(handed, watermark)
            unsignalled = true
            // A backlog wakes the pairing thread at once; else it is woken when this reader sleeps.
            if waiting >= ReaderLoop.wakeThreshold { wake() }
        }
    }

    /// Wakes the pairing thread when something was handed over since it was last woken.
    mutating func wake() {
        guard unsignalled else { return }
        unsignalled = false
        signal.signal()
    }

    /// Reads what the buffer holds now, the writer's partial sub-buffer included: afterwards this CPU's
    /// stream is complete up to `before` less the commit margin. Returns false on a read error.
    mutating func catchUp(_ r: OpaquePointer, _ records: UnsafeMutablePointer<ckvmscope_record>,
                          _ writer: inout ShardWriter) -> Bool {
        let before = MonotonicClock.now()
        var more: Int32 = 1
        while more != 0 {
            let n = Int(ckvmscope_reader_catch_up(r, records, before, &stats, &more))
            if n < 0 && errno != EINTR && errno != EAGAIN { return false }
            consume(records, max(0, n), watermark: more != 0 && n > 0 ? records[n - 1].ts : before &- visibilityMargin,
                    &writer)
        }
        return true
    }
}

/// The pairing thread: the pipeline's merge stage (``PairingMerge``) over the readers' lanes, one round each
/// time a reader hands something or a snapshot asks, until every reader has finished and everything is
/// paired. While events wait for a CPU whose stream is not known complete that far (its reader sleeps below
/// the watermark) and has handed nothing for 50 ms, that CPU's reader is asked to catch up — at most every
/// 50 ms each, and only then: an idle host wakes nothing.
struct PairingLoop {
    let lanes: [PairingLane]
    let readers: [CPUReader]
    let roles: [EventRole]
    let signal: PairingSignal

    /// Least time between two catch-up requests to one reader, ns.
    static let askInterval: UInt64 = 50_000_000

    func run(pairer: inout Pairer) {
        var merge = PairingMerge(lanes: lanes, roles: roles)
        var lastAsk = [UInt64](repeating: 0, count: lanes.count)
        var lastMark = [UInt64](repeating: 0, count: lanes.count)
        var moved = [UInt64](repeating: 0, count: lanes.count)
        while true {
            signal.clear()
            let asked = signal.asked.load(ordering: .acquiring)
            if merge.step(&pairer) { break }
            signal.served.store(asked, ordering: .releasing)
            guard merge.pending > 0 else {
                signal.semaphore.wait()
                continue
            }
            // The lanes behind the others hold the round up; when none is behind, the events wait for every
            // lane's next catch-up (they were handed within the commit margin of the last one).
            // A lane whose reader handed something within the interval is busy and will hand more at its
            // watermark: only a quiet one is asked (a catch-up reads the writer's partial page).
            let marks = lanes.map(\.currentWatermark)
            let top = marks.max() ?? 0, low = marks.min() ?? 0
            let now = MonotonicClock.now()
            for i in lanes.indices {
                if marks[i] != lastMark[i] { (lastMark[i], moved[i]) = (marks[i], now) }
                guard low == top || marks[i] < top, now &- moved[i] >= Self.askInterval,
                      now &- lastAsk[i] >= Self.askInterval else { continue }
                readers[i].requestCatchUp()
                lastAsk[i] = now
            }
            _ = signal.semaphore.wait(timeout: .now() + .milliseconds(Int(Self.askInterval / 1_000_000)))
        }
        signal.served.store(.max, ordering: .releasing)
    }
}
