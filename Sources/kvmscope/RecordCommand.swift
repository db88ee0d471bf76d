import ArgumentParser
import Foundation
import KVMAnalysis
import KVMExits
import KVMHost
import KVMResources
import KVMSources
import SystemPackage

struct RecordCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "record",
        abstract: "Record kvm events into a trace.dat that trace-cmd report and KernelShark open.",
        usage: "kvmscope record [-o <output>] [<options>] [-- <command> ...]",
        discussion: """
            Copies the kernel's raw ring-buffer pages of a private tracefs instance into FILE (trace.dat version 7 \
            compressed with zstd, as trace-cmd 3.x records; version 6 with --compression none): no decoding while \
            recording. Each thread's process (tgid), each VM's name (QEMU -name, else its comm) and what each VM \
            cost the host (as stat --json samples it; --qmp adds QEMU's disks and PCI BARs) are kept, so report \
            names and costs each VM as the live run does. Ends on Ctrl-C, --duration, --max-size or when COMMAND \
            exits.

              kvmscope record -o t.dat --duration 10
              kvmscope record -o t.dat -e kvm_exit -e kvm_entry -- ./my-vmm
              kvmscope report t.dat        (or: trace-cmd report -i t.dat)
            """)

    @Option(name: [.customShort("o"), .customLong("output")],
            help: ArgumentHelp("The trace.dat file to write (default: trace.dat, as trace-cmd record's; -: standard output, as perf record -o -).",
                               valueName: "output"))
    var outputOption: String = "trace.dat"

    /// The file written: `-o -` is standard output (/dev/stdout), as perf record's `-o -`.
    var output: String { outputOption == "-" ? "/dev/stdout" : outputOption }

    @Option(parsing: .unconditional, help: "Stop after this many seconds.")
    var duration: Double?

    @Option(name: .customLong("max-size"), parsing: .unconditional, help: "Stop when this much trace data is written (bytes; K, M, G suffixes).")
    var maxSize: String?

    @Option(name: [.customShort("e"), .customLong("event")], help: "A kvm event to record, as kvm_pio, kvm:kvm_pio or a glob (kvm_p*) (repeatable; default, or kvm: every kvm event).")
    var events: [String] = []

    @Option(name: .customLong("buffer-kb"), parsing: .unconditional, help: "Ring-buffer size per CPU, KiB.")
    var bufferKB: UInt32 = 4096

    @Option(help: ArgumentHelp("zstd: trace.dat version 7, zstd-compressed (trace-cmd 3.x's default); none: version 6.",
                               valueName: "zstd|none"))
    var compression: String = "zstd"

    @OptionGroup(title: "QMP") var qmp: QMPOptions

    @Argument(parsing: .postTerminator, help: "Record while this command runs, only its processes and threads.")
    var command: [String] = []

    func validate() throws {
        if outputOption.isEmpty { throw ValidationError("-o/--output needs a file name") }
        if let duration, !(duration > 0 && duration.isFinite) { throw ValidationError("--duration must be a number of seconds > 0") }
        if let maxSize, Self.bytes(maxSize) == nil { throw ValidationError("--max-size: bad size '\(maxSize)' (e.g. 500M, 2G)") }
        guard bufferKB >= 4 else { throw ValidationError("--buffer-kb must be at least 4") }
        guard TraceDatCompression(rawValue: compression) != nil else {
            throw ValidationError("--compression: '\(compression)' is not zstd or none")
        }
    }

    static func bytes(_ s: String) -> UInt64? {
        let units: [Character: UInt64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40]
        var t = s.uppercased()
        if t.hasSuffix("IB") { t.removeLast(2) } else if t.hasSuffix("B") { t.removeLast() }
        var mult: UInt64 = 1
        if let u = t.last, let m = units[u] { mult = m; t.removeLast() }
        // A size past what a file can hold (or inf, nan) is a bad size, not a trap.
        guard let v = Double(t), v > 0, v * Double(mult) < 9.2e18 else { return nil }
        return UInt64(v * Double(mult))
    }

    func run() throws {
        let stop = StopSignal()
        var config = RecordConfig()
        config.trace.events = TraceOptions.kvmEvents(events)
        config.trace.bufferKB = bufferKB
        config.trace.onlyPid = command.isEmpty ? nil : getpid()
        config.trace.injected = TraceOptions.injected()
        config.compression = TraceDatCompression(rawValue: compression) ?? .zstd
        config.maxBytes = maxSize.flatMap(Self.bytes)
        // A recording killed before it wrote its file (SIGKILL) left its spool here: assemble it first.
        for r in RecordSession.recoverSpools(beside: output, excluding: output) {
            writeStderr(r.error.map { "kvmscope: cannot recover \(r.path) from the spool of killed recording pid \(r.pid): \($0)\n" }
                    ?? "kvmscope: recovered \(r.path) from the spool of killed recording pid \(r.pid): \(r.pages) complete pages\n")
        }
        let file = try OutputPath(output)
        let session = try RecordSession(config: config, output: output)
        // What each VM costs the host, sampled as stat --json does (at the start, every second — 0.1 s with a
        // COMMAND, whose VM may be short-lived — and at the end), kept in the file for report --json; --qmp adds
        // QEMU's disks, memory and PCI BARs (which name the I/O exits by device).
        let trail = ResourceTrail(every: command.isEmpty ? 1 : 0.1, qmp: qmp.monitors(), libvirtDevices: true)
        session.resources = { [command] vms in
            let recorded = RecordedResources(vms: trail.uses(vms: command.isEmpty ? nil : vms))
            return (try? JSONEncoder().encode(recorded)).map { String(decoding: $0, as: UTF8.self) }
        }
        // With -o -, the trace is standard output: COMMAND prints to standard error instead (perf record -o -).
        let child = try TraceOptions.start(command, stdoutToStderr: outputOption == "-")
        let tty = isatty(2) == 1
        // The progress line is redrawn in place (\r): COMMAND's output shares the terminal and would be glued onto
        // it, so with a COMMAND only the closing line is printed (perf record and trace-cmd record print none).
        let showProgress = tty && child == nil
        let start = Date()
        var lastPrint = Date.distantPast
        var ticks = 0
        var nextHeaderUpdate = start.addingTimeInterval(0.5)
        let run = TraceRun(stop: stop, seconds: duration, child: child)
        run.wait(every: 0.02) {
            if session.isFull || session.firstError != nil { return false }
            // --max-size ends the recording when what is written plus what waits in the buffers reaches it (the
            // readers wake only at the watermark: counting written bytes alone, a slow trace ran on long past
            // its size and its pages were dropped at the end). Every 0.1 s: a stats file per CPU each time.
            ticks += 1
            if let max = config.maxBytes, ticks % 5 == 0, session.bytesWritten + session.pendingBytes() >= max { return false }
            if let child { session.noteThreads(of: child.pid) }
            trail.sampleIfDue()
            // Every VM's threads and guest name while it lives (a VM gone before the end is still named): new
            // processes looked at every 0.1 s, the VMs' threads again every 0.5 s, every process again every 5 s.
            if ticks % 5 == 1 { session.noteVMs(refresh: ticks % 25 == 1, rescan: ticks % 250 == 1 && ticks > 1) }
            // What a SIGKILL would leave: the spool's header names the VMs and their resources so far (every second,
            // by the clock: a loaded host stretches the ticks).
            if Date() >= nextHeaderUpdate {
                session.updateRecoveryHeader(vms: child.map { [$0.pid] })
                nextHeaderUpdate = Date().addingTimeInterval(1)
            }
            if showProgress && Date().timeIntervalSince(lastPrint) >= 0.5 {
                lastPrint = Date()
                let p = session.progress()
                let secs = max(0.001, Date().timeIntervalSince(start))
                // Spooled and still in the kernel's buffers (the readers wake at its watermark: spooled alone
                // stayed at 0.0 MiB while a slow trace filled the buffers).
                let bytes = session.bytesWritten + session.pendingBytes()
                writeStderr(String(format: "\r  %.1fs  %llu events  %.1f MiB  %.0f events/s  lost %llu   ",
                                   secs, p.events, Double(bytes) / 1048576, Double(p.events) / secs, p.lost))
            }
            return true
        }
        // Stop tracing first (--max-size, --duration, Ctrl-C or a write error end the recording, not the command).
        session.stop()
        if let error = session.firstError {
            if showProgress { writeStderr("\n") }
            guard session.stoppedByFullDisk else { throw KVMScopeError.io(error) }
            // The disk is full: the pages spooled so far become the file, and the error says so.
            try session.write(to: file.path)
            file.keep()
            throw KVMScopeError.io("cannot write \(output): \(Errno.noSpace) (recording stopped; the file holds the "
                                   + "\(session.pagesInFile) complete pages recorded before)")
        }
        let status = try run.endChild()
        trail.finish()
        let result = try session.write(to: file.path)
        file.keep()
        let lost = session.finalStats.values.reduce(UInt64(0)) { $0 + TraceFS.lost(inStats: $1) }
        if tty {
            // The events in the file (its pages decoded once by write(to:)), the end-of-run drain included, and
            // the file's own size (compressed: the spooled pages' bytes were 6× more), as perf record says it.
            var st = stat()
            let fileBytes = stat(output, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG ? UInt64(st.st_size) : session.bytesWritten
            writeStderr(String(format: "%@  wrote %@: %llu events, %.1f MiB, lost %llu, %d threads%@\n",
                               showProgress ? "\r\u{1b}[K" : "", output, session.eventsInFile,
                               Double(fileBytes) / 1048576, lost,
                               result.tids.count, session.isFull ? " (--max-size reached)" : ""))
        }
        if session.pagesDropped > 0 {
            writeStderr("kvmscope: --max-size reached: \(session.pagesDropped) pages not written\n")
        }
        try TraceRun.check(status)
    }
}

/// The resources of a recording's VMs (``ResourceTrail/uses(vms:)``), kept in its trace.dat as JSON (kvmscope's
/// option ``TraceDatMetadata/resourcesOption``); `report --json` prints them as `stat --json` does.
struct RecordedResources: Codable, Sendable, Equatable {
    /// The layout of this document; a reader skips a layout it does not know.
    var layout = 1
    var vms: [VMResourceUse]

    init(vms: [VMResourceUse]) { self.vms = vms }

    /// The resources a file holds: nil without them, or in a layout this kvmscope does not read.
    static func read(_ json: String?) -> RecordedResources? {
        guard let json, let r = try? JSONDecoder().decode(RecordedResources.self, from: Data(json.utf8)), r.layout == 1 else { return nil }
        return r
    }
}

/// The output file of `record`: checked writable before tracing starts, and removed again when the
/// recording ends without writing it (an error, a command that cannot start) — never a 0-byte file left.
/// Only a regular file is ever removed, and only the one opened here: `-o /dev/null` (or a FIFO) is left alone.
/// A FIFO must have a reader when the recording starts (else one line, at once: nothing waits for one), and is
/// held open until the file is written, so that its reader does not see an end before the trace comes.
final class OutputPath {
    let path: String
    private var kept = false
    /// Device and inode of the regular file opened here (nil: not a regular file).
    private let identity: (dev: UInt64, ino: UInt64)?
    /// The FIFO's descriptor, held until the end (-1: not a FIFO).
    private let held: Int32

    init(_ path: String) throws {
        self.path = path
        let fd: Int32
        switch OutputFiles.open(path) {
        case .success(let d): fd = d
        case .failure(let e): throw KVMScopeError.io("cannot write \(path): \(e)")
        }
        var st = stat()
        let isStat = fstat(fd, &st) == 0
        identity = isStat && (st.st_mode & S_IFMT) == S_IFREG ? (UInt64(st.st_dev), UInt64(st.st_ino)) : nil
        if isStat && (st.st_mode & S_IFMT) == S_IFIFO {
            held = fd
        } else {
            held = -1
            close(fd)
        }
    }

    func keep() { kept = true }

    deinit {
        if held >= 0 { close(held) }
        guard !kept, let identity else { return }
        var st = stat()
        if lstat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, UInt64(st.st_dev) == identity.dev,
           UInt64(st.st_ino) == identity.ino {
            unlink(path)
        }
    }
}
