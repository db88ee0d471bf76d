import CKVMScope
import Foundation
import KVMExits
import Synchronization
import SystemPackage

/// A private tracefs instance (`instances/kvmscope-<pid>`), owned: ``remove()`` — or the end of the owner —
/// turns tracing off, disables its events and removes it. kvmscope never touches the global buffer.
///
/// Its readers (``CPUReader``) must be closed before the instance can go (tracefs answers EBUSY while any
/// file of it is open); ``TraceSession`` orders that.
public final class TraceInstance: @unchecked Sendable {
    public let name: String
    public let root: String
    /// `struct ckvmscope_instance *`, freed by ``remove()``.
    private let handle: OpaquePointer
    private let removed = Atomic<Bool>(false)

    /// Creates the instance with tracing off.
    /// - Parameters:
    ///   - name: default `kvmscope-<pid>`.
    ///   - bufferKB: ring-buffer size per CPU, KiB.
    ///   - clock: the trace clock; "mono" so that timestamps compare with CLOCK_MONOTONIC.
    /// - Throws: ``KVMScopeError/instance(_:)`` with the kernel's reason.
    public init(name: String? = nil, bufferKB: UInt32, clock: String = "mono", root: String) throws {
        self.name = name ?? "\(TraceFS.instancePrefix)\(getpid())"
        self.root = root
        var err = [CChar](repeating: 0, count: 512)
        guard let h = ckvmscope_instance_create(self.name, bufferKB, clock, &err, err.count) else {
            throw KVMScopeError.instance(String(cMessage: err))
        }
        handle = h
    }

    /// The existing instance `name` (one a dead recording left), owned from now on: its end removes it.
    /// - Throws: ``KVMScopeError/instance(_:)`` with the kernel's reason ("No such file or directory").
    public init(existing name: String, root: String) throws {
        self.name = name
        self.root = root
        guard let h = ckvmscope_instance_attach(name) else {
            throw KVMScopeError.instance("cannot open tracefs instance \(name): \(Errno(rawValue: errno))")
        }
        handle = h
    }

    deinit { remove() }

    private func withHandle<T>(_ what: String, _ body: (OpaquePointer) -> T) throws -> T {
        guard !removed.load(ordering: .acquiring) else {
            throw KVMScopeError.instance("\(what): instance \(name) was removed")
        }
        return body(handle)
    }

    /// Enables one event (`system:event`).
    public func enable(system: String, event: String) throws {
        let rc = try withHandle("enable \(system):\(event)") { ckvmscope_instance_enable($0, system, event) }
        guard rc == 0 else {
            throw KVMScopeError.instance("cannot enable \(system):\(event) in \(name): \(Errno(rawValue: errno))")
        }
    }

    /// How full (percent, 0...100) a CPU's buffer must be before poll() of its trace_pipe_raw wakes the reader
    /// (the instance's `buffer_percent`; the kernel honours it in poll since Linux 6.1). 0 wakes on any data.
    public func wake(atPercent percent: UInt32) throws {
        let rc = try withHandle("buffer_percent") { ckvmscope_instance_wake_percent($0, percent) }
        guard rc == 0 else {
            throw KVMScopeError.instance("cannot set buffer_percent=\(percent) in \(name): \(Errno(rawValue: errno))")
        }
    }

    /// The record-tgid option: the kernel keeps tid → tgid of traced threads, which names threads that
    /// exit before kvmscope looks at them. Best effort (old kernels lack it).
    public func recordTGIDs() {
        _ = try? withHandle("record-tgid") { ckvmscope_instance_record_tgid($0) }
    }

    /// Traces only `pid` and what it forks from now on (set_event_pid with event-fork).
    /// With `keeping`, the processes followed so far stay followed (set_event_pid is appended to).
    public func follow(pid: Int32, keeping: Bool = false) throws {
        let rc = try withHandle("follow \(pid)") {
            keeping ? ckvmscope_instance_follow_another_pid($0, pid) : ckvmscope_instance_follow_pid($0, pid)
        }
        guard rc == 0 else { throw KVMScopeError.instance("cannot trace only pid \(pid) in \(name): \(Errno(rawValue: errno))") }
    }

    public func tracing(_ on: Bool) throws {
        let rc = try withHandle("tracing_on") { ckvmscope_instance_tracing_on($0, on ? 1 : 0) }
        guard rc == 0 else { throw KVMScopeError.instance("cannot turn tracing \(on ? "on" : "off") in \(name): \(Errno(rawValue: errno))") }
    }

    /// The CPUs that have a buffer in the instance.
    public var cpus: [Int] { TraceFS.cpus(instance: name, root: root) }

    /// The text of `per_cpu/cpuN/stats` (entries, overrun, dropped events, read events…); "" when unreadable.
    public func stats(cpu: Int) -> String {
        TraceFS.text("\(root)/instances/\(name)/per_cpu/cpu\(cpu)/stats") ?? ""
    }

    /// Events the kernel lost on a CPU: `overrun` + `dropped events` of its stats (exact).
    public func lost(cpu: Int) -> UInt64 { TraceFS.lost(inStats: stats(cpu: cpu)) }

    /// Opens the reader of one CPU's trace_pipe_raw.
    func handleForReader() throws -> OpaquePointer { try withHandle("open reader") { $0 } }

    /// Removes the instance from tracefs. Idempotent. Returns the error text when tracefs refused.
    @discardableResult
    public func remove() -> String? {
        guard !removed.exchange(true, ordering: .acquiringAndReleasing) else { return nil }
        guard ckvmscope_instance_destroy(handle) == 0 else {
            return "could not remove tracefs instance \(name): \(Errno(rawValue: errno))"
        }
        return nil
    }
}

/// One CPU's reader of an instance's ring buffer (or of any descriptor that reads like trace_pipe_raw), with
/// its decoder. Closed when its owner lets it go; used by one thread at a time.
public final class CPUReader: @unchecked Sendable {
    public let cpu: Int
    let reader: OpaquePointer
    public let decoder: SubbufferDecoder
    public let maxSubbufs: UInt32
    public let subbufSize: Int
    /// The owner asked this reader to stop (set before ``wake()``).
    let stopping = Atomic<Bool>(false)
    /// Whether waiting is the kernel's watermark (trace_pipe_raw): a descriptor of another kind (a file, a
    /// pipe) polls readable at its end, and its loop sleeps between reads instead.
    public let watermarked: Bool
    /// Catch-up requests made (``requestCatchUp()``) and the last one the reader's thread has served: once
    /// `catchUpServed` ≥ a request's number, every event written before the request was made has been read.
    let catchUpAsked = Atomic<UInt64>(0)
    let catchUpServed = Atomic<UInt64>(0)

    /// A reader of `cpu`'s `trace_pipe_raw` in `instance`.
    init(instance: TraceInstance, cpu: Int, decoder: SubbufferDecoder, maxSubbufs: UInt32) throws {
        guard let r = ckvmscope_reader_open(try instance.handleForReader(), Int32(cpu), decoder.handle, maxSubbufs) else {
            throw KVMScopeError.instance("cannot open cpu\(cpu)/trace_pipe_raw of \(instance.name): \(Errno(rawValue: errno))")
        }
        self.cpu = cpu
        reader = r
        self.decoder = decoder
        self.maxSubbufs = maxSubbufs
        subbufSize = Int(ckvmscope_reader_subbuf_size(r))
        watermarked = true
    }

    /// A reader over a descriptor that reads like trace_pipe_raw: sub-buffers of `subbufSize` bytes (a saved
    /// ring-buffer dump, or a pipe). The reader takes `fd` over. This is how tests drive the live reader with
    /// sub-buffers the kernel would never write (corrupt ones) and with read errors.
    public init(fd: Int32, subbufSize: Int, cpu: Int, decoder: SubbufferDecoder, maxSubbufs: UInt32 = 1) throws {
        guard let r = ckvmscope_reader_open_fd(fd, UInt32(subbufSize), Int32(cpu), decoder.handle, maxSubbufs) else {
            throw KVMScopeError.io("cannot read sub-buffers from descriptor \(fd): \(Errno(rawValue: errno))")
        }
        self.cpu = cpu
        reader = r
        self.decoder = decoder
        self.maxSubbufs = maxSubbufs
        self.subbufSize = subbufSize
        watermarked = false
    }

    deinit { close() }

    private let closed = Atomic<Bool>(false)

    /// Closes the descriptor. Idempotent; only once no thread reads any more (``TraceSession`` joins them first).
    func close() {
        guard !closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        ckvmscope_reader_close(reader)
    }

    var isStopping: Bool { stopping.load(ordering: .acquiring) }

    /// Asks the reader's thread to finish: it drains what is left and returns.
    public func stop() {
        stopping.store(true, ordering: .releasing)
        ckvmscope_reader_stop(reader)
    }

    /// Asks the reader's thread to read what its buffer holds now, the writer's partial sub-buffer included,
    /// and wakes it. Returns the request's number (see `catchUpServed`).
    @discardableResult
    func requestCatchUp() -> UInt64 {
        // Release: the reader that sees the number also sees what the requester wrote before.
        let n = catchUpAsked.wrappingAdd(1, ordering: .releasing).newValue
        ckvmscope_reader_wake(reader)
        return n
    }
}
