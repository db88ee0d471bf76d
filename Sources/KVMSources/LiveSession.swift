import CKVMScope
import Foundation
import KVMExits
import KVMHost
import Logging
import Synchronization

/// What to trace, and how.
public struct LiveConfig: Sendable {
    /// Events of the kvm system to enable; empty means all of them (as kvm_stat does).
    public var events: [String] = []
    /// Ring-buffer size per CPU, KiB.
    public var bufferKB: UInt32 = 1024
    /// Sub-buffers read per C call.
    public var subbufsPerRead: UInt32 = 16
    /// Trace only this process and its descendants (tracefs set_event_pid with event-fork).
    public var onlyPid: Int32?
    /// Test and benchmark hook: decode ftrace:raw_data records (written to trace_marker_raw) as this event.
    public var markerAs: String?
    /// Test and benchmark hook: decode ftrace:raw_data records as each of these events, told apart by their
    /// size (``EventFormats/markerSize(of:)``; the sizes must differ, as kvm_exit's and kvm_entry's do). Write
    /// an event's record bytes 8..<size to trace_marker_raw to inject it. Never a product feature.
    public var markerEvents: [String] = []
    /// Instance name; default kvmscope-<pid>.
    public var instanceName: String?

    public init() {}
}

/// A running trace of the live kernel: a private tracefs instance, one reader thread per CPU (each the
/// single writer of its aggregate shard), and a pairing thread that merges the CPUs' exits and entries by
/// time. Stop it (or let it deinit) to flush and remove the instance.
public final class LiveSession: @unchecked Sendable {
    public let aggregator: Aggregator
    public let instance: String
    public let root: String
    public let cpus: [Int]
    let formats: EventFormats
    let logger: Logger
    let stopping = Atomic<Bool>(false)
    let stopped = Mutex<Bool>(false)
    var readerThreads: [Thread] = []
    var pairingThread: Thread?
    let lanes: [PairingLane]
    let readersDone = Atomic<Int>(0)
    let readerHandles: [ReaderHandle]
    let startedAt = MonotonicClock.now()

    /// Creates the instance, enables the events and starts reading. Throws the errors users see.
    public init(config: LiveConfig, logger: Logger = Logger(label: "kvmscope")) throws {
        self.logger = logger
        root = try TraceFS.root()
        TraceFS.removeStaleInstances(root: root)
        instance = config.instanceName ?? "\(TraceFS.instancePrefix)\(getpid())"

        let (wanted, formats) = try TraceFS.kvmFormats(events: config.events, root: root)
        var markerID: Int32?
        let markerTargets = (config.markerAs.map { [$0] } ?? []) + config.markerEvents
        if !markerTargets.isEmpty {
            let raw = try TraceFS.format(system: "ftrace", event: "raw_data", root: root)
            guard let id = EventFormats.value(of: "ID:", in: raw).flatMap({ Int32($0) }) else {
                throw KVMScopeError.badFormat("ftrace:raw_data has no ID")
            }
            var sizes: Set<Int> = []
            for target in markerTargets {
                guard formats.catalog.index(of: target) != nil, let size = formats.markerSize(of: target) else {
                    throw KVMScopeError.unknownEvent("marker alias: \(target) is not traced")
                }
                guard sizes.insert(size).inserted else {
                    throw KVMScopeError.badFormat("marker alias: \(target) has the size of another aliased event")
                }
                try formats.alias(kernelID: id, as: target, matchSize: markerTargets.count > 1 ? size : nil)
            }
            markerID = id
        }
        self.formats = formats

        var err = [CChar](repeating: 0, count: 512)
        guard ckvmscope_instance_create(instance, config.bufferKB, "mono", &err, err.count) == 0 else {
            throw KVMScopeError.instance(String(cMessage: err))
        }
        do {
            // The kernel keeps tid → tgid for traced threads: names threads that exit before we look.
            try? TraceFS.write("1", to: "options/record-tgid", instance: instance, root: root)
            if let pid = config.onlyPid {
                try TraceFS.write("1", to: "options/event-fork", instance: instance, root: root)
                try TraceFS.write("\(pid)", to: "set_event_pid", instance: instance, root: root)
            }
            for name in wanted where ckvmscope_instance_enable(instance, "kvm", name) != 0 {
                throw KVMScopeError.instance("cannot enable kvm:\(name) in \(instance): \(String(cString: strerror(errno)))")
            }
            _ = markerID
        } catch {
            ckvmscope_instance_destroy(instance)
            throw error
        }
        cpus = TraceFS.cpus(instance: instance, root: root)
        aggregator = Aggregator(catalog: formats.catalog, shardCount: cpus.count, resolver: ThreadDirectory.identity(of:))
        lanes = cpus.map { _ in PairingLane() }
        var handles: [ReaderHandle] = []
        for cpu in cpus {
            let decoder = formats.makeDecoder()
            guard let r = ckvmscope_reader_open(instance, Int32(cpu), decoder.handle, config.subbufsPerRead) else {
                let e = String(cString: strerror(errno))
                handles.forEach { ckvmscope_reader_close($0.reader) }
                ckvmscope_instance_destroy(instance)
                throw KVMScopeError.instance("cannot open cpu\(cpu)/trace_pipe_raw of \(instance): \(e)")
            }
            handles.append(ReaderHandle(reader: r, decoder: decoder, cpu: cpu, maxSubbufs: config.subbufsPerRead))
        }
        readerHandles = handles
        guard ckvmscope_instance_tracing_on(instance, 1) == 0 else {
            handles.forEach { ckvmscope_reader_close($0.reader) }
            ckvmscope_instance_destroy(instance)
            throw KVMScopeError.instance("cannot turn tracing on in \(instance)")
        }
        start()
    }

    deinit { stop() }

    /// Pairing runs only when both halves are traced.
    var pairs: Bool { formats.catalog.index(of: "kvm_exit") != nil && formats.catalog.index(of: "kvm_entry") != nil }

    func start() {
        let roles = formats.catalog.entries.map(\.role)
        for (i, h) in readerHandles.enumerated() {
            let lane = lanes[i]
            let writer = ThreadOwned(aggregator.writer(shard: i))
            let pairs = self.pairs
            let t = Thread { [self] in
                ReaderLoop(handle: h, lane: lane, roles: roles, pairs: pairs).run(writer: &writer.value, stopping: stopping)
                readersDone.wrappingAdd(1, ordering: .releasing)
            }
            t.name = "kvmscope-cpu\(h.cpu)"
            readerThreads.append(t)
            t.start()
        }
        if pairs {
            let pairer = ThreadOwned(aggregator.makePairer())
            let lanes = self.lanes
            let t = Thread {
                PairingLoop(lanes: lanes, roles: roles).run(pairer: &pairer.value)
            }
            t.name = "kvmscope-pair"
            pairingThread = t
            t.start()
        }
    }

    /// Events the kernel lost on each CPU of the instance, from its per-CPU stats (exact).
    public func lostPerCPU() -> [Int: UInt64] {
        var out: [Int: UInt64] = [:]
        for cpu in cpus { out[cpu] = TraceFS.lostEvents(instance: instance, cpu: cpu, root: root) }
        return out
    }

    /// A snapshot, with losses taken from the kernel's per-CPU counters.
    public func snapshot() -> AggregateSnapshot {
        var snap = aggregator.snapshot(timestamp: MonotonicClock.now())
        if !stopped.withLock({ $0 }) {
            snap.lostEvents = max(snap.lostEvents, lostPerCPU().values.reduce(0, +))
        } else {
            snap.lostEvents = max(snap.lostEvents, finalLost)
        }
        return snap
    }

    var finalLost: UInt64 = 0
    public private(set) var finalLostPerCPU: [Int: UInt64] = [:]

    /// Stops reading, drains what is left in the buffers, and removes the instance. Idempotent.
    public func stop() {
        let first = stopped.withLock { s -> Bool in
            if s { return false }
            s = true
            return true
        }
        guard first else { return }
        ckvmscope_instance_tracing_on(instance, 0)
        finalLostPerCPU = lostPerCPU()
        finalLost = finalLostPerCPU.values.reduce(0, +)
        stopping.store(true, ordering: .releasing)
        for h in readerHandles { ckvmscope_reader_stop(h.reader) }
        while readersDone.load(ordering: .acquiring) < readerHandles.count { usleep(1000) }
        if let pairingThread {
            while !pairingThread.isFinished { usleep(1000) }
        }
        for h in readerHandles { ckvmscope_reader_close(h.reader) }
        let saved = TraceFS.savedThreads(root: root)
        aggregator.resolveUnresolved { tid in
            guard let tgid = saved.tgids[tid] else { return nil }
            let comm = saved.comms[tid]
            return ThreadIdentity(vm: tgid, vmName: ThreadDirectory.guestName(pid: tgid) ?? saved.comms[tgid],
                                  vcpu: comm.flatMap(ThreadIdentity.vcpu(fromThreadName:)), comm: comm)
        }
        for attempt in 0..<200 {
            if ckvmscope_instance_destroy(instance) == 0 || errno == ENOENT { break }
            if attempt == 199 { logger.error("could not remove tracefs instance \(instance): \(String(cString: strerror(errno)))") }
            usleep(10_000)
        }
    }

    public var elapsedSeconds: Double { Double(MonotonicClock.now() - startedAt) / 1e9 }
}

/// A value handed to the one thread that will own it from then on.
final class ThreadOwned<T>: @unchecked Sendable {
    var value: T
    init(_ value: T) { self.value = value }
}

/// A reader's C handle and its decoder (kept alive as long as the reader).
struct ReaderHandle: @unchecked Sendable {
    let reader: OpaquePointer
    let decoder: SubbufferDecoder
    let cpu: Int
    let maxSubbufs: UInt32
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
    let handle: ReaderHandle
    let lane: PairingLane
    let roles: [EventRole]
    let pairs: Bool

    func run(writer: inout ShardWriter, stopping: borrowing Atomic<Bool>) {
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
            if pairs { lane.hand(&pending, watermark: watermark) }
        }

        while !stopping.load(ordering: .acquiring) {
            // Everything stamped before `before` (less the commit margin) is in the buffer by now, so a read
            // that drains the buffer makes this CPU's stream complete up to there.
            let before = MonotonicClock.now()
            let subbufsBefore = stats.subbufs
            let n = Int(ckvmscope_reader_read(r, &records, 1, &stats))
            if n < 0 && errno != EINTR && errno != EAGAIN { break }
            let drained = stats.subbufs - subbufsBefore < UInt64(handle.maxSubbufs)
            let wm = drained ? before &- visibilityMargin : (n > 0 ? records[n - 1].ts : before &- visibilityMargin)
            consume(max(0, n), watermark: wm)
            if drained {
                // Let events gather for a few ms before the next read: one wake-up and a few syscalls then
                // carry hundreds of events, not a handful (a 1 MiB buffer takes far longer than that to fill).
                usleep(batchMicroseconds)
                if stopping.load(ordering: .acquiring) { break }
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
