import CKVMScope
import Foundation
import KVMExits
import KVMHost
import Synchronization

/// What to trace, and how: the options `stat`, `live`, `watch`, `serve` and `record` share.
public struct TraceConfig: Sendable {
    /// Events of the kvm system to enable; empty means all of them (as kvm_stat does).
    public var events: [String] = []
    /// Ring-buffer size per CPU, KiB.
    public var bufferKB: UInt32 = 1024
    /// Trace only this process and its descendants (tracefs set_event_pid with event-fork).
    public var onlyPid: Int32?
    /// Trace only these processes and their descendants too (`stat -p`/`-g`: the watched VMs), so that other
    /// VMs' events neither fill the shared buffers nor count as lost. With ``onlyPid``, both are traced.
    public var onlyPids: [Int32] = []
    /// Instance name; default kvmscope-<pid>.
    public var instanceName: String?
    /// Records written to the instance's `trace_marker_raw` (ftrace:raw_data) decode as these kvm events,
    /// told apart by their size (``EventFormats/markerSize(of:)``). The only way to drive kvm_exit/kvm_entry
    /// live on a backend where they never fire: tests and benchmarks set it (the executable reads it from the
    /// `KVMSCOPE_INJECT` environment variable); it costs nothing per event when empty.
    public var injected: [String] = []
    /// How full (percent of its buffer) a CPU's buffer must be before its reader wakes: the instance's
    /// `buffer_percent`. Readers take only the sub-buffers the kernel's writer has left, so between watermarks a
    /// busy CPU costs its reader nothing and an idle one never wakes it; a live session's readers also catch up
    /// (partial sub-buffer included) when a snapshot is taken. 25 leaves three quarters of the buffer to
    /// absorb the reader's wake-up latency; `record` uses 50.
    public var wakePercent: UInt32 = 25
    /// Also trace `sched:sched_process_exit` (after every kvm event in the catalog, role
    /// ``EventRole/threadExit``): each thread's exact end, for a live session that retires threads. Subject
    /// to the instance's set_event_pid like the kvm events. Best effort: a kernel without it (or refusing it)
    /// leaves the session without it (``TraceSession/threadExitEvent`` nil). `record` never sets it.
    public var threadExits = false

    public init() {}
}

/// The lifecycle that live tracing and recording share: a private ``TraceInstance`` with the chosen kvm
/// events, one ``CPUReader`` and one thread per CPU, and a ``stop()`` that turns tracing off, lets every
/// reader drain its buffer, joins the threads, closes the readers and removes the instance — in that order,
/// on every way out (the owner's end calls it too). What a reader thread does with the sub-buffers (count and
/// pair them, or append them to a file) is the caller's `body`.
public final class TraceSession: @unchecked Sendable {
    public let instance: TraceInstance
    public let readers: [CPUReader]
    public let formats: EventFormats
    /// The kvm events enabled.
    public let events: [String]
    /// The catalog index of `sched:sched_process_exit` when it is traced (``TraceConfig/threadExits``), nil
    /// otherwise.
    public let threadExitEvent: UInt16?
    public var cpus: [Int] { readers.map(\.cpu) }
    public var root: String { instance.root }
    private let threads = Mutex<[JoinableThread]>([])
    private let stopped = Mutex<Bool>(false)
    /// Per-CPU stats as they were when tracing stopped and the readers had drained the buffers (what a
    /// trace.dat saves).
    public private(set) var finalStats: [Int: String] = [:]
    /// Events lost per CPU when tracing stopped (exact: overrun + dropped events).
    public private(set) var finalLostPerCPU: [Int: UInt64] = [:]

    /// Creates the instance, enables the events and opens one reader per CPU; tracing stays off until
    /// ``start(threadName:_:)``. Throws the errors users see; nothing is left in tracefs then.
    public init(config: TraceConfig, subbufsPerRead: UInt32) throws {
        let root = try TraceFS.root()
        TraceFS.removeStaleInstances(root: root)
        let (wanted, formats) = try TraceFS.kvmFormats(events: config.events, root: root)
        if !config.injected.isEmpty { try formats.injectThroughMarker(config.injected, root: root) }
        self.formats = formats
        events = wanted
        let instance = try TraceInstance(name: config.instanceName, bufferKB: config.bufferKB, root: root)
        self.instance = instance
        // From here on a throw releases `instance`, and its end removes it from tracefs.
        instance.recordTGIDs()
        try instance.wake(atPercent: config.wakePercent)
        for (i, pid) in ([config.onlyPid].compactMap { $0 } + config.onlyPids).enumerated() {
            try instance.follow(pid: pid, keeping: i > 0)
        }
        for name in wanted { try instance.enable(system: "kvm", event: name) }
        threadExitEvent = config.threadExits ? Self.traceThreadExits(instance, formats) : nil
        let cpus = instance.cpus
        Self.allowDescriptors(5 * cpus.count + 256)
        readers = try cpus.map {
            try CPUReader(instance: instance, cpu: $0, decoder: formats.makeDecoder(), maxSubbufs: subbufsPerRead)
        }
    }

    deinit { stop() }

    /// Adds `sched:sched_process_exit` to the formats (last, role ``EventRole/threadExit``) and enables it in
    /// the instance. Returns its catalog index, or nil when this kernel has no such event or refuses it (the
    /// session then finds exited threads in /proc, as without it).
    static func traceThreadExits(_ instance: TraceInstance, _ formats: EventFormats) -> UInt16? {
        guard let text = try? TraceFS.format(system: "sched", event: "sched_process_exit", root: instance.root),
              let index = try? formats.add(system: "sched", format: text, role: .threadExit),
              formats.catalog[index].role == .threadExit,
              (try? instance.enable(system: "sched", event: "sched_process_exit")) != nil else { return nil }
        return index
    }

    /// Each reader holds five descriptors (trace_pipe_raw, its wake pipe and its splice pipe): on a host with
    /// hundreds of CPUs that passes the usual soft limit of 1024 open files, so the soft limit is raised
    /// toward the hard one when `count` needs it.
    static func allowDescriptors(_ count: Int) {
        var limit = rlimit()
        let files = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
        guard getrlimit(files, &limit) == 0, limit.rlim_cur < rlim_t(count), limit.rlim_cur < limit.rlim_max else { return }
        limit.rlim_cur = min(limit.rlim_max, rlim_t(count))
        setrlimit(files, &limit)
    }

    /// Turns tracing on and starts one thread per reader running `body` (which returns once the reader is
    /// stopped and drained).
    public func start(threadName: String, _ body: @escaping @Sendable (CPUReader) -> Void) throws {
        for r in readers {
            let t = try JoinableThread(name: "\(threadName)\(r.cpu)") { body(r) }
            threads.withLock { $0.append(t) }
        }
        try instance.tracing(true)
    }

    /// Stops tracing, waits for every reader to drain and return, closes the readers and removes the
    /// instance. Idempotent.
    /// - Returns: the error text when tracefs refused to remove the instance (the next run's sweep will).
    @discardableResult
    public func stop() -> String? {
        // The whole stop under the lock: a second caller returns once the first is done.
        stopped.withLock { done -> String? in
            guard !done else { return nil }
            done = true
            return stopOnce()
        }
    }

    private func stopOnce() -> String? {
        try? instance.tracing(false)
        for r in readers { r.stop() }
        for t in threads.withLock({ $0 }) { t.join() }
        // Once drained, as trace-cmd saves them: "entries" (left unread) 0 and "read events" every event read —
        // taken before the drain, a trace.dat said its events were never read. Losses do not move once tracing
        // is off.
        var stats: [Int: String] = [:]
        for cpu in cpus { stats[cpu] = instance.stats(cpu: cpu) }
        finalStats = stats
        finalLostPerCPU = stats.mapValues(TraceFS.lost(inStats:))
        for r in readers { r.close() }
        return instance.remove()
    }

    public var isStopped: Bool { stopped.withLock { $0 } }
}
