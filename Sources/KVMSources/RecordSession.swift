import CKVMScope
import Foundation
import KVMExits
import KVMHost
import Synchronization
import SystemPackage

/// What to record: the options of a live trace, and where to stop.
public struct RecordConfig: Sendable {
    public var trace = TraceConfig()
    /// Stop taking pages once this many bytes of trace data are written.
    public var maxBytes: UInt64?
    /// trace.dat version 7 compression (`.none` writes version 6, which every trace-cmd reads).
    public var compression: TraceDatCompression = .zstd

    /// The reader of a CPU wakes when its buffer is half full (trace-cmd's default `buffer_percent`) and
    /// takes the full sub-buffers; the writer's partial one is read only at the end.
    public init() {
        trace.bufferKB = 4096
        trace.wakePercent = 50
    }
}

/// Live recording into a trace.dat: a ``TraceSession`` whose reader threads copy raw sub-buffers from
/// trace_pipe_raw into per-CPU spool files beside the output (no decoding while recording); after ``stop()``,
/// ``write(to:)`` assembles the trace.dat (formats, saved cmdlines, per-CPU stats, pages). The spool is
/// removed on every way out but one: SIGKILL. For that the spool is recoverable — it holds, besides the pages,
/// the file's header (`header`: a version 6 header whose statistics say the file was recovered), a `manifest`
/// naming the output, and a `reserve` of disk space — and ``recoverSpools(beside:)`` (run by the next `record`
/// or `report` in that directory) assembles a dead recording's spool into its output. On a full disk the
/// reserve is given back and the pages written so far are assembled into a valid file
/// (``write(to:)``, ``stoppedByFullDisk``).
public final class RecordSession: @unchecked Sendable {
    let trace: TraceSession
    public var instance: String { trace.instance.name }
    public var root: String { trace.root }
    public var cpus: [Int] { trace.cpus }
    public var events: [String] { trace.events }
    var formats: EventFormats { trace.formats }
    let config: RecordConfig
    /// The spool: one file per CPU, in the output's own directory.
    let directory: String
    let counters = RecordCounters()
    public var finalStats: [Int: String] { trace.finalStats }
    /// Comm per tid, read from /proc while the threads live.
    var comms: [Int32: String] = [:]
    /// Thread group per tid, seen in /proc while the threads live.
    var tgids: [Int32: Int32] = [:]
    /// Guest name per VM process (QEMU `-name`, else its comm), seen in /proc while the VM lives.
    var guestNames: [Int32: String] = [:]
    /// Makes the file's ``TraceDatMetadata/resourcesJSON`` from the VMs (tgids) of the threads in the file;
    /// called by ``write(to:)``.
    public var resources: ((Set<Int32>) -> String?)?
    /// The VM processes found so far (``noteVMs(refresh:rescan:)``), and the processes looked at that were none.
    var vms: Set<Int32> = []
    var looked: Set<Int32> = []
    var firstSeen: [Int32: Date] = [:]

    /// - Parameter output: the trace.dat to be written; the spool goes beside it (same file system: no
    ///   copy through /tmp, and the disk that fills is the one the user chose).
    public init(config: RecordConfig, output: String) throws {
        self.config = config
        directory = "\(PathComponents.directory(of: output))/.kvmscope-record-\(getpid())"
        try? FileManager.default.removeItem(atPath: directory)
        guard mkdir(directory, 0o700) == 0 else {
            // The spool is kvmscope's, the file the user's: the line names the file asked for.
            throw KVMScopeError.io("cannot write \(output): its spool \(directory) (beside it, on the same file system) "
                                   + "cannot be created: \(Errno(rawValue: errno))")
        }
        do {
            trace = try TraceSession(config: config.trace, subbufsPerRead: 1)
        } catch {
            try? FileManager.default.removeItem(atPath: directory)
            throw error
        }
        subbufSize = trace.readers.first?.subbufSize ?? 4096
        do {
            try writeRecoveryFiles(output: output)
        } catch {
            trace.stop()
            try? FileManager.default.removeItem(atPath: directory)
            throw error
        }
        let files = try trace.readers.map { try OutputFile(path: "\(directory)/cpu\($0.cpu)") }
        let counters = self.counters
        let maxBytes = config.maxBytes
        let byCPU = Dictionary(uniqueKeysWithValues: zip(trace.readers.map(\.cpu), files))
        do {
            try trace.start(threadName: "kvmscope-rec") { reader in
                RecordSession.copyPages(reader, to: byCPU[reader.cpu]!, counters: counters, maxBytes: maxBytes)
            }
        } catch {
            trace.stop()
            try? FileManager.default.removeItem(atPath: directory)
            throw error
        }
    }

    deinit {
        trace.stop()
        try? FileManager.default.removeItem(atPath: directory)
        unlink(Self.spoolLink(getpid()))
    }

    /// Where each recording's spool is, by pid: `/run/kvmscope/record-PID`, a symbolic link to the spool. A dead
    /// recording's instance removed by another command (`stat`, a `record` elsewhere) is first drained into its
    /// spool through it (``drainIntoSpool(ofDeadRecording:)``). /run is emptied at boot, as tracefs instances are.
    static let spoolLinkDirectory = "/run/kvmscope"
    static func spoolLink(_ pid: Int32) -> String { "\(spoolLinkDirectory)/record-\(pid)" }

    func cpuFile(_ cpu: Int) -> String { "\(directory)/cpu\(cpu)" }

    /// The spool's name prefix (the recording's pid follows).
    public static let spoolPrefix = ".kvmscope-record-"

    /// Writes the spool's `header` (what a recovered file begins with), its `manifest` and the `reserve`: room
    /// for the header, its options (comm and tgid tables, statistics) and the page alignment of each CPU's data,
    /// so that the pages already spooled can be assembled into a valid file when the disk fills.
    func writeRecoveryFiles(output: String) throws {
        var m = try TraceDatMetadata.fromTracefs(root: root, events: ["kvm": events])
        m.pageSize = subbufSize
        m.cpuStats[cpus.first ?? 0] = "kvmscope recovered: recording pid \(getpid()) was killed before it wrote this file;"
            + " it holds every complete page\n"
        recoveryMetadata = m
        let header = TraceDatWriter.header(m, cpuCount: cpus.count)
        let absolute = output.hasPrefix("/") ? output : FileManager.default.currentDirectoryPath + "/" + output
        let manifest = "output \(absolute)\npagesize \(subbufSize)\ncpus \(cpus.map(String.init).joined(separator: " "))\n"
        let h = try OutputFile(path: "\(directory)/header")
        try h.write(header)
        try h.close()
        let f = try OutputFile(path: "\(directory)/manifest")
        try f.write(Array(manifest.utf8))
        try f.close()
        // Best effort (a user who may trace but not write /run): without the link, only the next `record` or
        // `report` beside the output drains the instance.
        mkdir(Self.spoolLinkDirectory, 0o700)
        let link = Self.spoolLink(getpid())
        unlink(link)
        symlink(directory.hasPrefix("/") ? directory : FileManager.default.currentDirectoryPath + "/" + directory, link)
        let reserve = header.count + (cpus.count + 2) * subbufSize + 128 << 10
        let r = try OutputFile(path: "\(directory)/reserve")
        let rc = posix_fallocate(r.fd, 0, off_t(reserve))
        if rc != 0 { throw KVMScopeError.io("cannot reserve \(reserve) bytes for \(directory)/reserve: \(Errno(rawValue: rc))") }
        try r.close()
    }

    /// The spool header's metadata as first written (formats, the kernel's cmdlines and tgids at the start).
    var recoveryMetadata: TraceDatMetadata?

    /// Rewrites the spool's `header` with what the recording has learnt since it started — each thread's comm
    /// and process, each VM's guest name (or a kernel thread's bracketed comm), the resources sampled so far — so
    /// that a file recovered after SIGKILL names its VMs and says what they cost as a finished recording does.
    /// Written beside and renamed over: a kill or a full disk mid-write leaves the previous header. Reads no
    /// tracefs file. Call it from the recording's loop (about once a second).
    /// - Parameter vms: the VMs whose resources go in (a COMMAND's process); nil: every VM noted.
    public func updateRecoveryHeader(vms: Set<Int32>? = nil) {
        guard var m = recoveryMetadata else { return }
        for (tid, comm) in comms { m.cmdlines[tid] = comm }
        for (tid, tgid) in tgids { m.tgids[tid] = tgid }
        for tgid in Set(tgids.values) {
            if m.cmdlines[tgid] == nil, let comm = comms[tgid] { m.cmdlines[tgid] = comm }
            if let name = guestNames[tgid] { m.guestNames[tgid] = name }
        }
        m.resourcesJSON = resources?(vms ?? Set(tgids.values))
        let header = TraceDatWriter.header(m, cpuCount: cpus.count)
        let next = "\(directory)/header.next"
        guard let f = try? OutputFile(path: next) else { return }
        let written = (try? f.write(header)) != nil
        let closed = (try? f.close()) != nil
        if written && closed { rename(next, "\(directory)/header") } else { unlink(next) }
    }

    /// Complete pages in the file ``write(to:)`` wrote.
    public private(set) var pagesInFile = 0
    /// The kvm events in the file ``write(to:)`` wrote (its pages decoded once to find the traced threads):
    /// what `report` counts, the end-of-run drain included.
    public private(set) var eventsInFile: UInt64 = 0

    /// Whether a reader stopped because the disk is full (ENOSPC): ``write(to:)`` then assembles the pages
    /// spooled so far.
    public var stoppedByFullDisk: Bool { counters.fullDisk.load(ordering: .relaxed) }

    /// A dead recording's spool assembled into a trace.dat.
    public struct Recovered: Sendable, Equatable {
        /// The file written.
        public var path: String
        /// The killed recording's pid.
        public var pid: Int32
        /// Complete pages in the file.
        public var pages: Int
        /// Why the file could not be written (the spool then stays for a later run), e.g.
        /// "cannot write t.dat: No space left on device".
        public var error: String?
    }

    /// Assembles the spool of every dead recording (its pid gone) in `output`'s directory into the file its
    /// manifest names — or, when that file is `output` itself (about to be recorded anew) or is not empty,
    /// into `FILE.recovered-PID` — and removes the spool. A spool without a header (killed before tracing
    /// started) holds no pages and is just removed.
    /// - Parameter output: a file whose directory is searched; `exclude`: a path never written (the recording
    ///   about to start).
    /// - Returns: the files written, and those that could not be (with the error).
    /// The pid of a running `kvmscope record` whose output is `path` (its spool beside it names it), else nil:
    /// what `report` says of the empty file such a recording holds until it ends.
    public static func recorder(of path: String) -> Int32? {
        let dir = PathComponents.directory(of: path)
        let absolute = URL(fileURLWithPath: path).standardizedFileURL.path
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        for name in names.sorted() where name.hasPrefix(spoolPrefix) {
            guard let pid = Int32(name.dropFirst(spoolPrefix.count)), kill(pid, 0) == 0, !TraceFS.isZombie(pid),
                  let manifest = try? String(contentsOfFile: "\(dir)/\(name)/manifest", encoding: .utf8),
                  let (named, _, _) = parseManifest(manifest),
                  URL(fileURLWithPath: named).standardizedFileURL.path == absolute else { continue }
            return pid
        }
        return nil
    }

    public static func recoverSpools(beside output: String, excluding exclude: String? = nil) -> [Recovered] {
        let dir = PathComponents.directory(of: output)
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        let excluded = exclude.map { URL(fileURLWithPath: $0).standardizedFileURL.path }
        var out: [Recovered] = []
        for name in names.sorted() where name.hasPrefix(spoolPrefix) {
            guard let pid = Int32(name.dropFirst(spoolPrefix.count)), pid != getpid(),
                  (kill(pid, 0) != 0 && errno == ESRCH) || TraceFS.isZombie(pid) else { continue }
            let spool = "\(dir)/\(name)"
            // Only a spool this user made (a directory it owns) is trusted, and its file goes into the same
            // directory whatever the manifest says: a planted manifest cannot name /etc/passwd.
            var st = stat()
            guard lstat(spool, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR, st.st_uid == geteuid() else { continue }
            let remove = { _ = try? FileManager.default.removeItem(atPath: spool) }
            // Killed before it wrote its header: it holds no pages.
            guard let manifest = try? String(contentsOfFile: "\(spool)/manifest", encoding: .utf8),
                  let spooledHeader = try? FileBytes.read("\(spool)/header") else { remove(); continue }
            guard let (named, pageSize, cpus) = parseManifest(manifest) else { remove(); continue }
            var target = "\(dir)/\(PathComponents.lastComponent(of: named))"
            // Into the empty file the recording left, else beside it (never through a symlink, never over data).
            if lstat(target, &st) == 0 && ((st.st_mode & S_IFMT) != S_IFREG || st.st_size > 0)
                || URL(fileURLWithPath: target).standardizedFileURL.path == excluded {
                target += ".recovered-\(pid)"
                guard lstat(target, &st) != 0 else { continue }  // the spool stays for a later run
            }
            // The reserve goes first: on a full disk it is the room the header needs.
            unlink("\(spool)/reserve")
            let files = cpus.map { "\(spool)/cpu\($0)" }
            // What the dead recording's instance still holds goes into the spool before it is assembled, and its
            // per-CPU stats (events lost, overrun) into the file's.
            var header = spooledHeader
            let stats = drainDeadInstance(pid: pid, pageSize: pageSize, files: Dictionary(uniqueKeysWithValues: zip(cpus, files)))
            if !stats.isEmpty { header = TraceDatWriter.header(header, withCPUStats: stats) }
            let pages = files.reduce(0) { n, f in
                n + ((try? FileManager.default.attributesOfItem(atPath: f)[.size] as? Int) ?? nil ?? 0) / pageSize
            }
            do {
                try TraceDatWriter.write(path: target, header: header, pageSize: pageSize, cpus: files.map { .file($0) })
                out.append(Recovered(path: target, pid: pid, pages: pages))
                remove()
                unlink(spoolLink(pid))
            } catch {
                unlink(target)
                out.append(Recovered(path: target, pid: pid, pages: 0, error: "\(error)"))
            }
        }
        return out
    }

    /// Removes the spool links (``spoolLink(_:)``) of recordings that are gone and whose instance is gone too
    /// (removed by an older kvmscope, or never made): nothing is left to drain through them.
    static func removeDeadSpoolLinks() {
        for name in (try? FileManager.default.contentsOfDirectory(atPath: spoolLinkDirectory)) ?? [] {
            guard name.hasPrefix("record-"), let pid = Int32(name.dropFirst("record-".count)), pid != getpid(),
                  (kill(pid, 0) != 0 && errno == ESRCH) || TraceFS.isZombie(pid),
                  let root = try? TraceFS.root(),
                  !FileManager.default.fileExists(atPath: "\(root)/instances/\(TraceFS.instancePrefix)\(pid)") else { continue }
            unlink("\(spoolLinkDirectory)/\(name)")
        }
    }

    /// A spool's manifest: the output it names, the page size, the CPUs; nil when malformed.
    static func parseManifest(_ text: String) -> (output: String, pageSize: Int, cpus: [Int])? {
        var fields: [String: String] = [:]
        for line in text.split(separator: "\n") {
            guard let sp = line.firstIndex(of: " ") else { continue }
            fields[String(line[..<sp])] = String(line[line.index(after: sp)...])
        }
        guard let named = fields["output"], let pageSize = fields["pagesize"].flatMap(Int.init), pageSize > 0,
              let cpus = fields["cpus"]?.split(separator: " ").compactMap({ Int($0) }) else { return nil }
        return (named, pageSize, cpus)
    }

    /// Drains the instance of dead recording `pid` into its spool, found through ``spoolLink(_:)``, and removes
    /// the link: what the kernel still held is then in the file the next `record` or `report` beside it
    /// recovers. Called before a dead instance is removed (``TraceFS/removeStaleInstances(root:)``). Only a
    /// spool this user owns (a directory) is written.
    static func drainIntoSpool(ofDeadRecording pid: Int32) {
        let link = spoolLink(pid)
        defer { unlink(link) }
        var st = stat()
        guard lstat(link, &st) == 0, (st.st_mode & S_IFMT) == S_IFLNK, st.st_uid == geteuid(),
              let spool = try? FileManager.default.destinationOfSymbolicLink(atPath: link),
              lstat(spool, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR, st.st_uid == geteuid(),
              let text = try? String(contentsOfFile: "\(spool)/manifest", encoding: .utf8),
              let (_, pageSize, cpus) = parseManifest(text) else { return }
        drainDeadInstance(pid: pid, pageSize: pageSize,
                          files: Dictionary(uniqueKeysWithValues: cpus.map { ($0, "\(spool)/cpu\($0)") }))
    }

    /// Drains the tracefs instance of dead recording `pid` (`kvmscope-PID`), if it is still there, into its
    /// spool: tracing off, then each CPU's trace_pipe_raw read to its end — whole sub-buffers, the writer's
    /// partial one last, appended to the CPU's spool file as the recorder appends them — and the instance
    /// removed. A CPU whose sub-buffer size is not the spool's `pageSize` is left out (its pages would not
    /// fit the file). Returns each CPU's stats (`per_cpu/cpuN/stats`) once drained; empty when there was no
    /// instance. Best effort: a spool that cannot be drained is assembled with what it holds.
    @discardableResult
    static func drainDeadInstance(pid: Int32, pageSize: Int, files: [Int: String]) -> [Int: String] {
        guard let root = try? TraceFS.root(),
              let instance = try? TraceInstance(existing: "\(TraceFS.instancePrefix)\(pid)", root: root) else { return [:] }
        defer { instance.remove() }
        try? instance.tracing(false)
        guard let formats = try? TraceFS.kvmFormats(events: [], root: root).formats else { return [:] }
        var pages = [UInt8](repeating: 0, count: pageSize)
        for (cpu, path) in files.sorted(by: { $0.key < $1.key }) {
            guard let reader = try? CPUReader(instance: instance, cpu: cpu, decoder: formats.makeDecoder(), maxSubbufs: 1),
                  reader.subbufSize == pageSize else { continue }
            defer { reader.close() }
            let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
            guard fd >= 0 else { continue }
            defer { close(fd) }
            // Whole pages: a spool file of a recording killed mid-write may end in part of one.
            var st = stat()
            if fstat(fd, &st) == 0, Int(st.st_size) % pageSize != 0 { ftruncate(fd, st.st_size - st.st_size % off_t(pageSize)) }
            for flush in [false, true] {
                while true {
                    let bytes = pages.withUnsafeMutableBytes { buf -> Int32 in
                        memset(buf.baseAddress!, 0, pageSize)
                        return flush ? ckvmscope_reader_flush_raw(reader.reader, buf.baseAddress!)
                            : ckvmscope_reader_read_raw(reader.reader, buf.baseAddress!, 1)
                    }
                    guard bytes > 0 else { break }
                    guard pages.withUnsafeBytes({ Glibc.write(fd, $0.baseAddress!, pageSize) }) == pageSize else { break }
                }
            }
        }
        return files.keys.reduce(into: [:]) { $0[$1] = instance.stats(cpu: $1) }
    }

    /// Sub-buffers a reader thread appends to its spool file with one write.
    static let batchPages = 16

    /// A reader thread: raw sub-buffers, whole pages, appended to the CPU's spool file. The thread sleeps until
    /// its CPU's buffer is half full (``TraceConfig/wakePercent``) and takes only the sub-buffers the writer has
    /// left, so each page in the file is full; the writer's partial page is read once, at the end. A page that
    /// cannot be written (disk full) is counted, and the first error is kept for the command to report at once.
    static func copyPages(_ h: CPUReader, to out: OutputFile, counters: RecordCounters, maxBytes: UInt64?) {
        let size = h.subbufSize
        var pages = [UInt8](repeating: 0, count: size * batchPages)
        /// Appends the first `count` pages of `pages`.
        func put(_ count: Int) {
            // Every page is written whole: the trace.dat's per-CPU data is an array of pages. Its bytes are
            // reserved before it is written, so two CPUs' threads never both take the last room under --max-size.
            var fit = 0
            for _ in 0..<count {
                let before = counters.bytes.wrappingAdd(UInt64(size), ordering: .relaxed).oldValue
                if let max = maxBytes, counters.full.load(ordering: .relaxed) || before + UInt64(size) > max {
                    counters.bytes.wrappingSubtract(UInt64(size), ordering: .relaxed)
                    counters.full.store(true, ordering: .relaxed)
                    counters.droppedPages.wrappingAdd(1, ordering: .relaxed)
                } else {
                    fit += 1
                }
            }
            guard fit > 0 else { return }
            let start = out.offset
            do {
                try pages.withUnsafeBytes { try out.write(UnsafeRawBufferPointer(rebasing: $0[0..<fit * size])) }
            } catch {
                // The whole pages that reached the file before the error stay counted; the rest failed.
                let landed = max(0, (Int(lseek(out.fd, 0, SEEK_CUR)) - start) / size)
                let failed = fit - min(fit, landed)
                out.offset = start + landed * size
                counters.bytes.wrappingSubtract(UInt64(failed * size), ordering: .relaxed)
                counters.failedPages.wrappingAdd(UInt64(failed), ordering: .relaxed)
                if "\(error)".hasSuffix("\(Errno.noSpace)") { counters.fullDisk.store(true, ordering: .relaxed) }
                counters.error.withLock { if $0 == nil { $0 = "\(error)" } }
            }
        }
        /// Reads up to ``batchPages`` sub-buffers (full ones, or with `flush` the rest of the buffer) into
        /// `pages`, waiting for the first unless `flush`. Returns their count, or nil on a read error.
        func fill(flush: Bool) -> Int? {
            var n = 0
            while n < batchPages {
                let bytes = pages.withUnsafeMutableBytes { buf -> Int32 in
                    let slot = buf.baseAddress! + n * size
                    memset(slot, 0, size)
                    return flush ? ckvmscope_reader_flush_raw(h.reader, slot)
                        : ckvmscope_reader_read_raw(h.reader, slot, n == 0 ? 0 : 1)
                }
                if bytes < 0 {
                    if errno == EINTR || errno == EAGAIN { break }
                    counters.readErrors.wrappingAdd(1, ordering: .relaxed)
                    counters.error.withLock { if $0 == nil { $0 = "cannot read cpu\(h.cpu)/trace_pipe_raw: \(Errno(rawValue: errno))" } }
                    put(n)
                    return nil
                }
                if bytes == 0 { break }
                n += 1
            }
            return n
        }
        while !h.isStopping {
            guard let n = fill(flush: false) else { break }
            put(n)
        }
        // Stopped (or the buffer cannot be read any more): what is left, the writer's partial page included.
        while let n = fill(flush: true), n > 0 { put(n) }
        try? out.close()
    }

    /// The sub-buffer size of the instance's ring buffers (the trace.dat's page size).
    public private(set) var subbufSize = 4096

    /// Bytes of pages written so far.
    public var bytesWritten: UInt64 { counters.bytes.load(ordering: .relaxed) }
    /// Whether --max-size was reached.
    public var isFull: Bool { counters.full.load(ordering: .relaxed) }
    /// Pages not written because --max-size was reached (their events are counted as lost).
    public var pagesDropped: UInt64 { counters.droppedPages.load(ordering: .relaxed) }
    /// Pages that could not be written (disk full, I/O error): lost, and reported.
    public var pagesFailed: UInt64 { counters.failedPages.load(ordering: .relaxed) }
    /// The first write or read error of a reader thread (e.g. "cannot write …: No space left on device").
    public var firstError: String? { counters.error.withLock { $0 } }

    /// Progress from the kernel's per-CPU stats: events traced so far — read from the buffers (`read events`)
    /// plus those still waiting in them (`entries`: a reader sleeps until its buffer is half full, so the read
    /// ones alone stay 0 for the first seconds of a storm) — and events lost. Not the file's count: pages past
    /// --max-size are counted here too (``eventsInFile`` is the file's).
    public func progress() -> (events: UInt64, lost: UInt64) {
        var events: UInt64 = 0, lost: UInt64 = 0
        for cpu in cpus {
            let text = trace.isStopped ? (finalStats[cpu] ?? "") : trace.instance.stats(cpu: cpu)
            lost += TraceFS.lost(inStats: text)
            for line in text.split(separator: "\n") {
                for key in ["read events:", "entries:"] where line.hasPrefix(key) {
                    events += UInt64(line.dropFirst(key.count).trimmingCharacters(in: .whitespaces)) ?? 0
                }
            }
        }
        return (events, lost)
    }

    /// Bytes of events waiting in the ring buffers, not read yet (the kernel's per-CPU `bytes:` stat); 0 once
    /// stopped. With ``bytesWritten``, what the file would hold if tracing stopped now (page headers aside).
    public func pendingBytes() -> UInt64 {
        guard !trace.isStopped else { return 0 }
        var bytes: UInt64 = 0
        for cpu in cpus {
            for line in trace.instance.stats(cpu: cpu).split(separator: "\n") where line.hasPrefix("bytes:") {
                bytes += UInt64(line.dropFirst("bytes:".count).trimmingCharacters(in: .whitespaces)) ?? 0
            }
        }
        return bytes
    }

    /// Notes the comm of threads that are alive now (call while the traced command runs). The latest name
    /// wins: a thread seen just after it was created still has its creator's comm, and renames itself
    /// ("CPU 0/KVM") a moment later.
    public func noteThreads(of pid: Int32) {
        if let name = ThreadDirectory.guestName(pid: pid) { guestNames[pid] = name }
        let dir = "/proc/\(pid)/task"
        for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] {
            guard let tid = Int32(name),
                  let c = try? String(contentsOfFile: "\(dir)/\(name)/comm", encoding: .utf8) else { continue }
            comms[tid] = c.trimmingCharacters(in: .newlines)
            tgids[tid] = pid
        }
    }

    /// Finds new VM processes and notes their threads and guest name (``noteThreads(of:)``), so a recording
    /// names its VMs, also those gone before it ends. A VM is a process holding /dev/kvm or a KVM VM descriptor
    /// (``KVMProcesses``); only processes not looked at before have their descriptors read (a listing of /proc
    /// otherwise), except with `rescan`, which looks at every process again (one that opened /dev/kvm after it
    /// was first looked at: a shell that exec'd QEMU). With `refresh`, every VM found so far is noted again
    /// (threads started or renamed since, "CPU 0/KVM").
    public func noteVMs(refresh: Bool, rescan: Bool) {
        if rescan { looked = [] }
        let now = Date()
        let all = Set(((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap(Int32.init))
        let fresh = all.subtracting(looked).subtracting(vms)
        if !fresh.isEmpty {
            let found = Set(KVMProcesses.running(excluding: all.subtracting(fresh).union([getpid()])))
            // A process is looked at for 2 s from when it was first seen (a VMM opens /dev/kvm a moment after
            // it starts), then left to the rescan.
            for pid in fresh.subtracting(found) {
                let seen = firstSeen[pid] ?? now
                firstSeen[pid] = seen
                if now.timeIntervalSince(seen) >= 2 { looked.insert(pid) }
            }
            for pid in found.subtracting(vms).sorted() { noteThreads(of: pid) }
            vms.formUnion(found)
        }
        // Pids that are gone are forgotten (a reused pid is looked at anew).
        looked.formIntersection(all)
        vms.formIntersection(all)
        firstSeen = firstSeen.filter { all.contains($0.key) && !looked.contains($0.key) }
        if refresh { for pid in vms.sorted() { noteThreads(of: pid) } }
    }

    /// Stops tracing, drains the buffers into the spool, saves the per-CPU stats, removes the instance.
    /// Idempotent.
    public func stop() { trace.stop() }

    /// After ``stop()``: writes the trace.dat. The comm of every traced tid comes from what
    /// ``noteThreads(of:)`` last saw, else from /proc (threads still alive), else from the kernel's
    /// saved_cmdlines. Returns the tids without a comm.
    @discardableResult
    public func write(to path: String) throws -> (tids: Set<Int32>, unnamed: Set<Int32>) {
        stop()
        var tids = Set<Int32>()
        var decoded: UInt64 = 0
        let decoder = formats.makeDecoder()
        for cpu in cpus {
            guard let block = try? ByteBlock(mapping: cpuFile(cpu)) else { continue }
            let ps = subbufSize
            var off = 0
            while off + ps <= block.count {
                decoder.decode(UnsafeRawBufferPointer(rebasing: block.bytes[off..<off + ps]), cpu: UInt16(cpu)) {
                    tids.insert($0.tid)
                    decoded &+= 1
                }
                off += ps
            }
        }
        eventsInFile = decoded
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
        // The kernel keeps tid → tgid of traced threads (record-tgid): the VM of threads gone before this.
        let kernelTGIDs = TraceFS.savedThreads(root: root).tgids
        for tid in tids { m.tgids[tid] = tgids[tid] ?? kernelTGIDs[tid] ?? ThreadDirectory.identity(of: tid)?.vm }
        // Each VM process by name: its comm in the saved cmdlines (what trace-cmd shows; a VM's main thread
        // rarely causes a kvm event of its own) and its guest name in kvmscope's option.
        for tgid in Set(m.tgids.values) {
            if m.cmdlines[tgid] == nil {
                m.cmdlines[tgid] = comms[tgid] ?? saved[tgid]
                    ?? (try? String(contentsOfFile: "/proc/\(tgid)/comm", encoding: .utf8))?.trimmingCharacters(in: .newlines)
            }
            if guestNames[tgid] == nil, ThreadDirectory.isKernelThread(tgid), let comm = m.cmdlines[tgid] {
                // A kernel thread (kdamond.0 aging a guest's pages, kvm-pit/PID) is no guest: named in brackets,
                // as ps names kernel threads, so that report says so.
                m.guestNames[tgid] = "[\(comm)]"
            } else if let name = guestNames[tgid] ?? ThreadDirectory.guestName(pid: tgid) {
                m.guestNames[tgid] = name
            }
        }
        m.pageSize = subbufSize
        m.resourcesJSON = resources?(Set(m.tgids.values))
        m.cpuStats = finalStats
        let dropped = pagesDropped + pagesFailed
        if dropped > 0 {
            // Pages beyond --max-size or that could not be written: say so in the stats of the first CPU
            // (their events are not in the file).
            m.cpuStats[cpus.first ?? 0, default: ""] += "kvmscope dropped pages: \(dropped)\n"
        }
        if stoppedByFullDisk {
            m.cpuStats[cpus.first ?? 0, default: ""] += "kvmscope truncated: the disk was full: pages after the last"
                + " complete one were not written\n"
        }
        let version = config.compression == .none ? 6 : 7
        pagesInFile = cpus.reduce(0) { n, cpu in
            n + ((try? FileManager.default.attributesOfItem(atPath: cpuFile(cpu))[.size] as? Int) ?? nil ?? 0) / subbufSize
        }
        do {
            if stoppedByFullDisk { throw KVMScopeError.io("No space left on device") }
            try TraceDatWriter.write(path: path, metadata: m, cpus: cpus.map { .file(cpuFile($0)) },
                                     version: version, compression: config.compression)
        } catch let e as KVMScopeError where e.description.hasSuffix("\(Errno.noSpace)") {
            // The disk is full: the file is assembled from the pages in memory, each spool file removed once
            // read and the reserve given back, so the spool's room is the file's.
            var pages: [TraceDatCPUData] = []
            for cpu in cpus {
                let bytes = (try? FileBytes.read(cpuFile(cpu))) ?? []
                unlink(cpuFile(cpu))
                pages.append(.pages([Array(bytes.prefix(bytes.count / subbufSize * subbufSize))]))
            }
            for name in ["reserve", "header", "manifest"] { unlink("\(directory)/\(name)") }
            try TraceDatWriter.write(path: path, metadata: m, cpus: pages, version: version, compression: config.compression)
        }
        return (tids, unnamed)
    }

    static func savedCmdlines(root: String) -> [Int32: String] {
        var out: [Int32: String] = [:]
        let text = TraceFS.text("\(root)/saved_cmdlines") ?? ""
        for line in text.split(separator: "\n") {
            guard let sp = line.firstIndex(of: " "), let pid = Int32(line[..<sp]) else { continue }
            out[pid] = String(line[line.index(after: sp)...])
        }
        return out
    }
}

/// What the reader threads of a recording count, shared with the command's loop.
final class RecordCounters: Sendable {
    let bytes = Atomic<UInt64>(0)
    let droppedPages = Atomic<UInt64>(0)
    let failedPages = Atomic<UInt64>(0)
    let readErrors = Atomic<UInt64>(0)
    let full = Atomic<Bool>(false)
    let fullDisk = Atomic<Bool>(false)
    let error = Mutex<String?>(nil)
}
