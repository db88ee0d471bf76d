import CKVMScope
import Foundation
import KVMExits
import Synchronization

/// What to record, and where.
public struct RecordConfig: Sendable {
    /// kvm events to enable; empty means all of them.
    public var events: [String] = []
    public var bufferKB: UInt32 = 4096
    /// Record only this process and its descendants (set_event_pid with event-fork).
    public var onlyPid: Int32?
    /// Stop taking pages once this many bytes of trace data are written.
    public var maxBytes: UInt64?
    public var instanceName: String?
    /// trace.dat version 7 compression (`.none` writes version 6, which every trace-cmd reads).
    public var compression: TraceDatCompression = .zstd

    public init() {}
}

/// Live recording into a trace.dat: a private instance, one thread per CPU copying raw sub-buffers from
/// trace_pipe_raw into a per-CPU temporary file (no decoding while recording), then — after ``stop()`` —
/// ``write(to:)`` assembles the trace.dat (formats, saved cmdlines, per-CPU stats, pages).
public final class RecordSession: @unchecked Sendable {
    public let instance: String
    public let root: String
    public let cpus: [Int]
    public let events: [String]
    let config: RecordConfig
    let directory: String
    let formats: EventFormats
    var handles: [ReaderHandle] = []
    var threads: [Thread] = []
    let bytes = Atomic<UInt64>(0)
    /// Pages not written because --max-size was reached (their events are counted as lost).
    let droppedPages = Atomic<UInt64>(0)
    let full = Atomic<Bool>(false)
    let finished = Atomic<Int>(0)
    let stopped = Mutex<Bool>(false)
    public private(set) var finalStats: [Int: String] = [:]
    /// Comm per tid, read from /proc while the threads live.
    var comms: [Int32: String] = [:]
    /// Thread group per tid, seen in /proc while the threads live.
    var tgids: [Int32: Int32] = [:]

    public init(config: RecordConfig) throws {
        self.config = config
        root = try TraceFS.root()
        TraceFS.removeStaleInstances(root: root)
        instance = config.instanceName ?? "\(TraceFS.instancePrefix)\(getpid())"
        (events, formats) = try TraceFS.kvmFormats(events: config.events, root: root)
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("kvmscope-record-\(getpid())").path
        try? FileManager.default.removeItem(atPath: directory)
        do { try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) } catch {
            throw KVMScopeError.io("cannot create \(directory): \(error.localizedDescription)")
        }
        var err = [CChar](repeating: 0, count: 512)
        guard ckvmscope_instance_create(instance, config.bufferKB, "mono", &err, err.count) == 0 else {
            throw KVMScopeError.instance(String(decoding: err.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        do {
            // The kernel keeps tid → tgid of traced threads (saved_tgids): the VM of threads gone before write.
            try? TraceFS.write("1", to: "options/record-tgid", instance: instance, root: root)
            if let pid = config.onlyPid {
                try TraceFS.write("1", to: "options/event-fork", instance: instance, root: root)
                try TraceFS.write("\(pid)", to: "set_event_pid", instance: instance, root: root)
            }
            for name in events where ckvmscope_instance_enable(instance, "kvm", name) != 0 {
                throw KVMScopeError.instance("cannot enable kvm:\(name) in \(instance): \(String(cString: strerror(errno)))")
            }
            cpus = TraceFS.cpus(instance: instance, root: root)
            for cpu in cpus {
                let decoder = formats.makeDecoder()
                guard let r = ckvmscope_reader_open(instance, Int32(cpu), decoder.handle, 1) else {
                    throw KVMScopeError.instance("cannot open cpu\(cpu)/trace_pipe_raw of \(instance): \(String(cString: strerror(errno)))")
                }
                handles.append(ReaderHandle(reader: r, decoder: decoder, cpu: cpu, maxSubbufs: 1))
            }
            if let h = handles.first { subbufSize = Int(ckvmscope_reader_subbuf_size(h.reader)) }
            guard ckvmscope_instance_tracing_on(instance, 1) == 0 else {
                throw KVMScopeError.instance("cannot turn tracing on in \(instance)")
            }
        } catch {
            handles.forEach { ckvmscope_reader_close($0.reader) }
            ckvmscope_instance_destroy(instance)
            try? FileManager.default.removeItem(atPath: directory)
            throw error
        }
        for h in handles {
            let path = cpuFile(h.cpu)
            let t = Thread { [self] in
                copyPages(h, to: path)
                finished.wrappingAdd(1, ordering: .releasing)
            }
            t.name = "kvmscope-rec\(h.cpu)"
            threads.append(t)
            t.start()
        }
    }

    deinit {
        stop()
        try? FileManager.default.removeItem(atPath: directory)
    }

    func cpuFile(_ cpu: Int) -> String { "\(directory)/cpu\(cpu)" }

    /// The reader thread: raw sub-buffers, whole pages, appended to the CPU's file.
    func copyPages(_ h: ReaderHandle, to path: String) {
        let size = Int(ckvmscope_reader_subbuf_size(h.reader))
        let page = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 4096)
        defer { page.deallocate() }
        guard let out = try? OutputFile(path: path) else { return }
        func put() {
            // Every page is written whole: the trace.dat's per-CPU data is an array of pages. Its bytes are
            // reserved before it is written, so two CPUs' threads never both take the last room under --max-size.
            let before = bytes.wrappingAdd(UInt64(size), ordering: .relaxed).oldValue
            if let max = config.maxBytes, full.load(ordering: .relaxed) || before + UInt64(size) > max {
                bytes.wrappingSubtract(UInt64(size), ordering: .relaxed)
                full.store(true, ordering: .relaxed)
                droppedPages.wrappingAdd(1, ordering: .relaxed)
                return
            }
            if (try? out.write(UnsafeRawBufferPointer(page))) == nil {
                bytes.wrappingSubtract(UInt64(size), ordering: .relaxed)
            }
        }
        while !stopped.withLock({ $0 }) {
            page.initializeMemory(as: UInt8.self, repeating: 0)
            let n = ckvmscope_reader_read_raw(h.reader, page.baseAddress, 0)
            if n < 0 {
                if errno == EINTR { continue }
                break
            }
            if n > 0 { put() }
        }
        while true {
            page.initializeMemory(as: UInt8.self, repeating: 0)
            let n = ckvmscope_reader_flush_raw(h.reader, page.baseAddress)
            if n <= 0 { break }
            put()
        }
        try? out.close()
    }

    /// The sub-buffer size of the instance's ring buffers (the trace.dat's page size).
    public private(set) var subbufSize = 4096

    /// Bytes of pages written so far.
    public var bytesWritten: UInt64 { bytes.load(ordering: .relaxed) }
    /// Whether --max-size was reached.
    public var isFull: Bool { full.load(ordering: .relaxed) }
    public var pagesDropped: UInt64 { droppedPages.load(ordering: .relaxed) }

    /// Progress from the kernel's per-CPU stats: events read from the buffers and events lost.
    public func progress() -> (events: UInt64, lost: UInt64) {
        var events: UInt64 = 0, lost: UInt64 = 0
        for cpu in cpus {
            let text = (try? String(contentsOfFile: "\(root)/instances/\(instance)/per_cpu/cpu\(cpu)/stats", encoding: .utf8)) ?? ""
            lost += TraceFS.lost(inStats: text)
            for line in text.split(separator: "\n") where line.hasPrefix("read events:") {
                events += UInt64(line.dropFirst("read events:".count).trimmingCharacters(in: .whitespaces)) ?? 0
            }
        }
        return (events, lost)
    }

    /// Notes the comm of threads that are alive now (call while the traced command runs). The latest name
    /// wins: a thread seen just after it was created still has its creator's comm, and renames itself
    /// ("CPU 0/KVM") a moment later.
    public func noteThreads(of pid: Int32) {
        let dir = "/proc/\(pid)/task"
        for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] {
            guard let tid = Int32(name),
                  let c = try? String(contentsOfFile: "\(dir)/\(name)/comm", encoding: .utf8) else { continue }
            comms[tid] = c.trimmingCharacters(in: .newlines)
            tgids[tid] = pid
        }
    }

    /// Stops tracing, drains the buffers into the files, saves the per-CPU stats, removes the instance.
    public func stop() {
        let first = stopped.withLock { s -> Bool in
            defer { s = true }
            return !s
        }
        guard first else { return }
        ckvmscope_instance_tracing_on(instance, 0)
        for cpu in cpus {
            finalStats[cpu] = (try? String(contentsOfFile: "\(root)/instances/\(instance)/per_cpu/cpu\(cpu)/stats", encoding: .utf8)) ?? ""
        }
        for h in handles { ckvmscope_reader_stop(h.reader) }
        while finished.load(ordering: .acquiring) < handles.count { usleep(1000) }
        for h in handles { ckvmscope_reader_close(h.reader) }
        for attempt in 0..<200 {
            if ckvmscope_instance_destroy(instance) == 0 || errno == ENOENT { break }
            if attempt == 199 { break }
            usleep(10_000)
        }
    }

    /// After ``stop()``: writes the trace.dat. The comm of every traced tid comes from what
    /// ``noteThreads(of:)`` last saw, else from /proc (threads still alive), else from the kernel's
    /// saved_cmdlines. Returns the tids without a comm.
    @discardableResult
    public func write(to path: String) throws -> (tids: Set<Int32>, unnamed: Set<Int32>) {
        stop()
        var tids = Set<Int32>()
        let decoder = formats.makeDecoder()
        for cpu in cpus {
            guard let block = try? ByteBlock(mapping: cpuFile(cpu)) else { continue }
            let ps = subbufSize
            var off = 0
            while off + ps <= block.count {
                decoder.decode(UnsafeRawBufferPointer(rebasing: block.bytes[off..<off + ps]), cpu: UInt16(cpu)) { tids.insert($0.tid) }
                off += ps
            }
        }
        let saved = Self.savedCmdlines(root: root)
        var m = try TraceDatMetadata.fromTracefs(root: root, events: ["kvm": events])
        var unnamed = Set<Int32>()
        for tid in tids {
            if let c = comms[tid] {
                m.cmdlines[tid] = c
            } else if let c = try? String(contentsOfFile: "/proc/\(tid)/comm", encoding: .utf8) {
                m.cmdlines[tid] = c.trimmingCharacters(in: .newlines)
            } else if let c = saved[tid] {
                m.cmdlines[tid] = c
            } else {
                unnamed.insert(tid)
            }
        }
        let kernelTGIDs = TraceFS.savedThreads(root: root).tgids
        for tid in tids { m.tgids[tid] = tgids[tid] ?? kernelTGIDs[tid] ?? ThreadDirectory.identity(of: tid)?.vm }
        m.pageSize = subbufSize
        m.cpuStats = finalStats
        let dropped = pagesDropped
        if dropped > 0 {
            // Pages beyond --max-size: say so in the stats of the first CPU (their events are not in the file).
            m.cpuStats[cpus.first ?? 0, default: ""] += "kvmscope dropped pages: \(dropped)\n"
        }
        try TraceDatWriter.write(path: path, metadata: m, cpus: cpus.map { .file(cpuFile($0)) },
                                 version: config.compression == .none ? 6 : 7, compression: config.compression)
        return (tids, unnamed)
    }

    static func savedCmdlines(root: String) -> [Int32: String] {
        var out: [Int32: String] = [:]
        let text = (try? String(contentsOfFile: "\(root)/saved_cmdlines", encoding: .utf8)) ?? ""
        for line in text.split(separator: "\n") {
            guard let sp = line.firstIndex(of: " "), let pid = Int32(line[..<sp]) else { continue }
            out[pid] = String(line[line.index(after: sp)...])
        }
        return out
    }
}
