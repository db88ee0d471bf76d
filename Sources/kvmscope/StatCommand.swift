import ArgumentParser
import Foundation
import KVMAnalysis
import KVMExits
import KVMHost
import KVMScopeViews
import KVMSources
import SystemPackage

/// Options shared by every command that traces the live kernel.
struct TraceOptions: ParsableArguments {
    // stat's help says that its --event also takes perf kvm stat's analyses (ioport, mmio): the other commands'
    // --event does not.
    @Option(name: .customLong("event"), help: ArgumentHelp(
        "A kvm event to trace, as kvm_pio, kvm:kvm_pio or a glob (kvm_p*) (repeatable; default, or kvm: every kvm event, like kvm_stat)."))
    var events: [String] = []

    @Option(name: .customLong("buffer-kb"), parsing: .unconditional, help: "Ring-buffer size per CPU, KiB.")
    var bufferKB: UInt32 = 1024

    func validate() throws {
        guard bufferKB >= 4 else { throw ValidationError("--buffer-kb must be at least 4") }
    }

    func config(onlyPid: Int32? = nil) -> TraceConfig {
        var c = TraceConfig()
        c.events = Self.kvmEvents(events)
        c.bufferKB = bufferKB
        c.onlyPid = onlyPid
        c.injected = Self.injected()
        return c
    }

    /// Event names as trace-cmd and perf spell them too: `kvm:kvm_pio` is `kvm_pio`; `kvm` or `kvm:*` is every kvm
    /// event (the default, as an empty list); a glob (`kvm_p*`, `kvm:kvm_*exit`) is every kvm event of this
    /// kernel it matches (one that matches none stays as written, and fails as an unknown event).
    static func kvmEvents(_ names: [String], root: String = "/sys/kernel/tracing") -> [String] {
        var out: [String] = []
        for raw in names {
            let name = raw.hasPrefix("kvm:") ? String(raw.dropFirst(4)) : raw
            if name == "kvm" || name == "*" || name.isEmpty { return [] }  // kvm, kvm:*, kvm: — every kvm event
            guard name.contains(where: { "*?[".contains($0) }) else {
                out.append(name)
                continue
            }
            let all = ((try? FileManager.default.contentsOfDirectory(atPath: root + "/events/kvm")) ?? []).sorted()
            let matched = all.filter { fnmatch(name, $0, 0) == 0 && FileManager.default.fileExists(atPath: "\(root)/events/kvm/\($0)/format") }
            out += matched.isEmpty ? [name] : matched
        }
        var seen = Set<String>()
        return out.filter { seen.insert($0).inserted }
    }

    /// Tests and benchmarks drive kvm_exit/kvm_entry live through trace_marker_raw (the only way on a backend
    /// where they never fire): `KVMSCOPE_INJECT=kvm_exit[,kvm_entry]` names the events such records decode as
    /// (``TraceConfig/injected``). Not an option: users never need it.
    static func injected() -> [String] {
        guard let v = ProcessInfo.processInfo.environment["KVMSCOPE_INJECT"], !v.isEmpty else { return [] }
        return v.split(separator: ",").map(String.init)
    }

    /// Starts the command given after `--` (searched in PATH) with kvmscope's standard input and output;
    /// `stdoutToStderr`: its standard output is kvmscope's standard error (kvmscope's own stdout carries data).
    static func start(_ command: [String], stdoutToStderr: Bool = false) throws -> ChildProcess? {
        command.isEmpty ? nil : try ChildProcess(command, inheritOutput: true, stdoutToStderr: stdoutToStderr)
    }
}

/// kvm_stat's filters: -p, -g, -f.
struct FilterOptions: ParsableArguments {
    @Option(name: [.customShort("p"), .long], parsing: .unconditional, help: "Show only the VM with this process id.")
    var pid: Int32?

    @Option(name: [.customShort("g"), .long], help: "Show only the VM with this guest name (QEMU -name).")
    var guest: String?

    @Option(name: [.customShort("f"), .long], help: "Show only events whose name matches this regular expression (help: list the kvm events).")
    var fields: String?

    func validate() throws {
        if pid != nil && guest != nil { throw ValidationError("-p/--pid and -g/--guest cannot be used together") }
        if let fields {
            do { _ = try Regex(fields) } catch { throw ValidationError("bad regular expression for -f/--fields: '\(fields)'") }
        }
    }

    /// kvm_stat's `-f help`: the kvm events of this kernel, one a line, indented as kvm_stat prints them; nil
    /// unless -f is `help`. Throws tracefs's one-line error.
    func fieldsHelp() throws -> String? {
        guard fields == "help" else { return nil }
        return try TraceFS.events(system: "kvm", root: TraceFS.root()).map { "  \($0)\n" }.joined()
    }

    /// Resolves -p/-g to VM pids; throws the one-line errors users see.
    func filter() throws -> SummaryFilter {
        var f = SummaryFilter(fields: fields)
        if let pid {
            guard ThreadDirectory.processExists(pid) else { throw KVMScopeError.usage("no process with pid \(pid)") }
            f.vms = [pid]
        }
        if let guest {
            let pids = ThreadDirectory.pids(ofGuest: guest)
            guard !pids.isEmpty else { throw KVMScopeError.usage("no guest named '\(guest)' is running") }
            // kvm_stat refuses an ambiguous name rather than adding two VMs' counts into one table.
            guard pids.count == 1 else {
                throw KVMScopeError.usage("several guests are named '\(guest)' (pids \(pids.map(String.init).joined(separator: ", "))): "
                                          + "choose one with -p")
            }
            f.vms = Set(pids)
        }
        return f
    }
}

struct StatCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stat",
        abstract: "kvm_stat's non-interactive modes, with exit latencies and per-vCPU rows.",
        discussion: """
            Without a mode, traces until --duration ends, COMMAND exits or Ctrl-C, then prints the summary. -1 is \
            kvm_stat's once mode (one interval: 1 s, or -s; its batch lines, every field sorted, zeros included; \
            --json gives the summary), -l its log mode. CurAvg/s and duration_s divide by \
            the reading window, from tracing on to tracing off: kvmscope's own start-up and end stay out.

            --event also takes perf kvm stat's analyses: ioport and mmio print the per-port and per-MMIO-address \
            tables after the summary.

            -f is kvm_stat's: a regular expression matched at the start of each field name (Python's re.match), \
            not searched in it: -f kvm_pio keeps kvm_pio, -f pio keeps nothing, -f '.*pio' keeps kvm_pio. Fields are \
            the kvm events (-f help lists them) and their reasons' children, named as kvm_stat names them: \
            kvm_exit(HLT), kvm_userspace_exit(IO); -f also takes kvm_userspace_exit(KVM_EXIT_IO), the kernel's \
            spelling, and a kvm_exit reason in any printer's spelling.

              kvmscope stat -1                  counts over one second, like kvm_stat -1
              kvmscope stat -1 -f '.*pio'       kvm_pio alone (-f pio keeps nothing)
              kvmscope stat -1 -s 5             counts over five seconds
              kvmscope stat -l -s 1             one line per second (kvm_stat --log)
              kvmscope stat -l -c -L exits.csv  a CSV log appended to a file
              kvmscope stat --json -o s.json -- kvmscope storm --kind io --exits 10000
            """)

    @Flag(name: [.customShort("1"), .long, .customLong("batch")],
          help: "kvm_stat's batch lines (field, count, count) after one interval: 1 s as kvm_stat --once, or -s SECONDS.")
    var once = false

    @Flag(name: [.customShort("l"), .long], help: "Log one line of counts per interval (kvm_stat --log).")
    var log = false

    @Option(name: [.customShort("L"), .customLong("log-to-file")], help: ArgumentHelp(
        "Log to this file instead of stdout, appending as kvm_stat -L does; SIGHUP reopens it (logrotate).", valueName: "file"))
    var logToFile: String?

    @Flag(name: [.customShort("c"), .long], help: "CSV log format (with -l or -L).")
    var csv = false

    @Flag(name: [.customShort("z"), .customLong("skip-zero-records")],
          help: "Omit log lines with only zeros (with -l or -L).")
    var skipZeroRecords = false

    @Option(name: [.customShort("s"), .customLong("set-delay")], parsing: .unconditional, help: ArgumentHelp(
        "Seconds, 0.1 to 25.5, between log lines (default 3) or of -1's one interval (default 1).",
        valueName: "seconds"))
    var delay: Double?

    @Flag(name: [.customShort("t"), .long], help: "Count the kvm tracepoints (kvm_stat -t): kvmscope's only source.")
    var tracepoints = false

    @Flag(name: [.customShort("d"), .long], help: "kvm_stat's debugfs source: not read by kvmscope (says what to use).")
    var debugfs = false

    @Flag(name: [.customShort("i"), .customLong("debugfs-include-past")],
          help: "kvm_stat's past debugfs counts: not read by kvmscope (says what to use).")
    var debugfsIncludePast = false

    @Option(parsing: .unconditional, help: "Stop after this many seconds.")
    var duration: Double?

    @Flag(help: "Print the JSON summary.")
    var json = false

    @Option(name: [.customShort("o"), .customLong("output")],
            help: "Write the summary (table or --json) to this file, not stdout, as perf stat -o does: what COMMAND prints stays apart.")
    var output: String?

    @OptionGroup(title: "Filters") var filters: FilterOptions
    @OptionGroup(title: "Tracing") var trace: TraceOptions
    @OptionGroup(title: "QMP") var qmp: QMPOptions

    @Argument(parsing: .postTerminator, help: "Trace while this command runs, counting only its processes and threads.")
    var command: [String] = []

    func validate() throws {
        // kvm_stat's other source: kvmscope reads tracepoints only, and says where debugfs's numbers are.
        if debugfs {
            throw ValidationError("-d/--debugfs: kvmscope counts the kvm:* tracepoints (-t, its only source), not debugfs's "
                                  + "kvm/ counters; KVM's own statistics per VM: kvmscope top --qmp SOCKET, or kvm_stat -d")
        }
        if debugfsIncludePast {
            throw ValidationError("-i/--debugfs-include-past: kvmscope counts the kvm:* tracepoints from its start; "
                                  + "counts from before it are only in debugfs's kvm/ counters (kvm_stat -d -i)")
        }
        if let delay, !(0.1...25.5).contains(delay) { throw ValidationError("-s/--set-delay must be between 0.1 and 25.5") }
        // With a COMMAND only its processes are traced: another pid would count nothing (watch refuses it too).
        if filters.pid != nil && !command.isEmpty { throw ValidationError("-p/--pid and a COMMAND cannot be used together") }
        if let duration, !(duration > 0 && duration.isFinite) { throw ValidationError("--duration must be a number of seconds > 0") }
        if once && log { throw ValidationError("-1/--once and -l/--log cannot be used together") }
        if once && duration != nil {
            throw ValidationError("-1/--once counts over one interval (-s, default 1 s): it does not combine with --duration")
        }
        let logging = log || logToFile != nil
        if csv && !logging { throw ValidationError("-c/--csv requires -l/--log or -L/--log-to-file") }
        if skipZeroRecords && !logging { throw ValidationError("-z/--skip-zero-records requires -l/--log or -L/--log-to-file") }
        if json && (log || logToFile != nil) { throw ValidationError("--json prints a summary; it does not combine with -l/-L") }
        if !qmp.sockets.isEmpty && !json && (IOAnalysis.analyses(trace.events).spaces.isEmpty || logging) {
            throw ValidationError("--qmp adds QEMU's numbers to the --json summary's resources and names the devices of "
                                  + "--event ioport|mmio's tables: give --json or --event ioport|mmio")
        }
        if output != nil && (log || logToFile != nil) { throw ValidationError("-o/--output is for the summary; logs go to -L/--log-to-file") }
    }

    func run() throws { try run(notice: nil) }

    /// - Parameter notice: a line for stderr once the trace runs (`live`'s fallback to this log says why; a
    ///   trace that cannot start is then one line, its error, not two).
    func run(notice: String?) throws {
        // kvm_stat's `-f help`: the events that can be counted here, one a line.
        if let help = try filters.fieldsHelp() { return writeStdout(help) }
        var filter = try filters.filter()
        // kvm_stat's -f is Python's re.match: anchored at the start of the field name.
        filter.fieldsAtStart = true
        // kvm_stat -p traces any process's threads, a VM's or not, and counts nothing for one that runs none:
        // kvmscope traces it too, and says why its counts will stay zero.
        if let pid = filters.pid, let note = Self.noVMNote(pid: pid) { writeStderr("kvmscope: \(note)\n") }
        // With -L, SIGHUP reopens the file (kvm_stat's habit: logrotate moves it and sends SIGHUP); it stops
        // every other run.
        let stop = logToFile == nil ? StopSignal() : StopSignal(signals: [SIGINT, SIGTERM])
        if logToFile != nil { try Hangups.install() }
        // perf kvm stat's `--event ioport|mmio|vmexit` (the analysis) shares --event with the traced events: no
        // kvm event has those names, so the value tells them apart.
        let analyses = IOAnalysis.analyses(trace.events)
        var config = trace.config(onlyPid: command.isEmpty ? nil : getpid())
        // -p/-g: only the watched VMs' threads are traced (set_event_pid), as watch -p does.
        config.onlyPids = filter.vms.map { $0.sorted() } ?? []
        config.events = TraceOptions.kvmEvents(IOAnalysis.tracedEvents(trace.events))
        let session = try LiveSession(config: config)
        defer { session.stop() }
        if let notice { writeStderr(notice) }
        // The reading window, what duration_s and CurAvg/s divide by: from tracing on (the session's last step)
        // to tracing off. Creating the instance before it and draining, removing and ending COMMAND after it take
        // their time on a loaded host, and see no event of the window: they stay out, as perf stat's do.
        let windowStart = ContinuousClock.now
        // stat --json: what each VM cost the host beside its exits (procfs and --qmp; a sample about once a second,
        // ten times a second with a COMMAND: its VMs end with it, and lose at most the last 0.1 s). Started before
        // the COMMAND, so that a VM the command starts is known as born during the run.
        // The text summary samples only to name its ioport/mmio tables' devices (--qmp's BARs and memory tree,
        // libvirt's device addresses).
        // With --event ioport|mmio, libvirt's domains (where its daemon listens) name them too.
        let trail = json || !analyses.spaces.isEmpty
            ? ResourceTrail(every: command.isEmpty ? 1 : 0.1, qmp: qmp.monitors(), libvirtDevices: !analyses.spaces.isEmpty) : nil
        let logging = log || logToFile != nil
        var out: FileHandle = .standardOutput
        // -L appends, as kvm_stat's does.
        var csvHeaderInFile: String?
        if let path = logToFile {
            let fd = try Self.appendToLogFile(path)
            out = FileHandle(fileDescriptor: fd, closeOnDealloc: true)
            if csv { csvHeaderInFile = Self.firstLine(of: path) }
        }

        // A log line that cannot be written ends the log: a terminal or pipe that went away (EIO, EPIPE)
        // like SIGHUP; a -L file or stdout that cannot take it (ENOSPC) with one line saying so.
        func emit(_ text: String) throws {
            guard let e = StandardDescriptors.write(out.fileDescriptor, text) else { return }
            if let path = logToFile { throw KVMScopeError.io("cannot write \(path): \(Errno(rawValue: e))") }
            StdoutFailure.note(e)
            stop.raise(SIGHUP)
        }

        // The log's first interval starts here, before COMMAND: none of its events is missed.
        let start = try session.snapshot()
        var previous = try Summary(start, filter: filter)
        // Columns fixed now, as kvm_stat fixes its fields: every traced event and its reasons' children that
        // -f keeps, zeros included (LogFormatter.fields). The header is printed now, and again every 20th line
        // outside CSV (kvm_stat's habit): a CSV log is one table, and -L -c appends only to a file that holds
        // the same table (or nothing).
        var formatter: LogFormatter?
        let fields = try LogFormatter.fields(catalog: start.catalog, exitISA: Self.hostISA(), filter: filter)
        // A -f that keeps no field: kvm_stat prints no line (its -1 prints nothing at all); kvmscope says why on
        // stderr, once, and traces on (a COMMAND still runs), its -1 printing no line either.
        if let regex = filters.fields, fields.isEmpty {
            writeStderr("kvmscope: -f '\(regex)' matches no kvm event or reason of this kernel (matched at the start of "
                        + "each name, as kvm_stat's -f: 'kvm_pio', '.*pio'; -f help lists the events)\n")
        }
        // -1's text is kvm_stat's batch lines, of the same fields.
        let batchFormatter = once && !json ? LogFormatter(fields: fields, csv: false) : nil
        if logging {
            let f = LogFormatter(fields: fields, csv: csv)
            if let path = logToFile, csv, Self.size(of: out.fileDescriptor) > 0 {
                guard csvHeaderInFile == f.header() else {
                    throw KVMScopeError.usage("\(path) starts with another header than this run's (\(f.fields.count == 1 ? "1 column" : "\(f.fields.count) columns")): "
                                              + "-L -c appends only to a log of the same columns; give another file")
                }
            } else {
                try emit(f.header() + "\n")
            }
            formatter = f
        }
        let child = try TraceOptions.start(command)
        // Opened before tracing starts: a path that cannot be written fails now, not after the run.
        let summaryFD = try output.map(createOutputFile)
        defer { if let summaryFD { close(summaryFD) } }
        func writeSummary(_ text: String) throws {
            guard let summaryFD else { return writeStdout(text) }
            if let e = StandardDescriptors.write(summaryFD, text) {
                throw KVMScopeError.io("cannot write \(output!): \(Errno(rawValue: e))")
            }
        }
        let timestamp = DateFormatter()
        timestamp.dateFormat = "yyyy-MM-dd HH:mm:ss"
        // -1 is one interval: 1 s as kvm_stat's, or -s's.
        // -p PID: the trace ends when that VM does (perf stat -p's habit), its summary printed as at any end.
        let run = TraceRun(stop: stop, seconds: once ? delay ?? 1 : duration, child: child, watched: filters.pid)

        var noted = Set<String>()
        var linesSinceHeader = 0
        var hangupsSeen = logToFile == nil ? 0 : Hangups.count
        /// After a SIGHUP, the -L file is opened again by its name (a new file where logrotate moved the old
        /// one) and starts with the header, as kvm_stat's does; a CSV file that already holds lines gets none
        /// (one table), and one with another header is refused as at start.
        func reopenAfterHangup(_ formatter: LogFormatter) throws {
            guard let path = logToFile, Hangups.count != hangupsSeen else { return }
            hangupsSeen = Hangups.count
            let fd = try Self.appendToLogFile(path)
            out = FileHandle(fileDescriptor: fd, closeOnDealloc: true)
            if csv, Self.size(of: fd) > 0 {
                guard Self.firstLine(of: path) == formatter.header() else {
                    throw KVMScopeError.usage("\(path) starts with another header than this run's (\(formatter.fields.count == 1 ? "1 column" : "\(formatter.fields.count) columns"))"
                                              + ": -L -c appends only to a log of the same columns; give another file")
                }
                return
            }
            try emit(formatter.header() + "\n")
            linesSinceHeader = 0
        }
        /// One log line: the counts since `previous`.
        func logLine(_ formatter: LogFormatter, _ current: Summary) throws {
            try reopenAfterHangup(formatter)
            // A reason no column names (outside its event's table at start) is said once: its counts are in its
            // event's column.
            for (field, note) in try formatter.uncolumned(in: current, filter: filter) where noted.insert(field).inserted {
                writeStderr("kvmscope: \(note)\n")
            }
            if linesSinceHeader >= 20 && !csv {
                try emit(formatter.header() + "\n")
                linesSinceHeader = 0
            }
            let values = formatter.values(current: current, previous: previous)
            if !(skipZeroRecords && values.allSatisfy { $0 == 0 }) {
                try emit(formatter.line(timestamp: timestamp.string(from: Date()), values: values) + "\n")
                linesSinceHeader += 1
            }
            previous = current
        }

        if let formatter {
            try run.wait(every: delay ?? 3) {
                trail?.sampleIfDue()
                // An interval cut by the end (COMMAND's, --duration's) is the last line, written once tracing
                // stopped and the ring buffers were drained.
                if run.isOver { return false }
                try logLine(formatter, try Summary(session.snapshot(), filter: filter))
                return true
            }
        } else {
            // Without a COMMAND the trail samples once a second: 4 wakeups a second, not 20, keep it on time.
            run.wait(every: command.isEmpty ? 0.25 : 0.05) {
                trail?.sampleIfDue()
                return true
            }
        }
        // Tracing stops first, then a COMMAND still running is ended (perf stat --timeout's order): what it
        // does while it winds down is outside the window, as the time it takes is.
        let window = ContinuousClock.now - windowStart
        if let failure = session.stop() { writeStderr("kvmscope: \(failure)\n") }
        let status = try run.endChild()
        if let formatter {
            // The last line: the events since the last one, up to the end (COMMAND's, --duration's, Ctrl-C's),
            // drained from the ring buffers: every event traced is in one line of the log.
            try logLine(formatter, try Summary(session.snapshot(), filter: filter))
            return try TraceRun.check(status)
        }
        var final = try Summary(session.snapshot(), filter: filter)
        let seconds = Double(window.components.seconds) + Double(window.components.attoseconds) / 1e18
        if json {
            let perCPU = session.finalLostPerCPU.sorted { $0.key < $1.key }
            // Resources of the VMs the summary counts (or -p/-g's); every VM seen when neither names any.
            trail?.finish()
            // Ports and MMIO addresses named by the VMs' own PCI BARs and memory trees where --qmp read them.
            if let maps = trail?.deviceMaps(), !maps.isEmpty { final.ioAccesses.name(devices: maps) }
            var vms = filter.vms ?? []
            vms.formUnion(final.exits.map(\.vm))
            vms.formUnion(final.userspaceExits.map(\.vm))
            let extra: [(String, JSONValue)] = [
                ("lost_by_cpu", .object(perCPU.map { (String($0.key), .uint($0.value)) })),
                ("occupancy", SummaryJSON.occupancy(final.occupancy)),
                ("resources", trail?.json(vms: vms.isEmpty && command.isEmpty ? nil : vms) ?? .array([])),
            ]
            try writeSummary(SummaryJSON.render(final, durationSeconds: seconds, extra: extra) + "\n")
        } else if let batch = batchFormatter {
            trail?.finish()
            // kvm_stat -1's lines on stdout, nothing else there (scripts read them); what was lost is said on stderr,
            // never silently.
            let lines = batch.batchLines(values: batch.values(current: final, previous: previous))
            try writeSummary(lines.map { $0 + "\n" }.joined())
            if final.lostEvents + final.lostUnknownSubbuffers + final.overflowEvents + final.corruptSubbuffers + final.readErrors > 0 {
                writeStderr("kvmscope: counts short: \(StatTable.footer(final).split(separator: "\n")[0])\n")
            }
        } else {
            trail?.finish()
            if let maps = trail?.deviceMaps(), !maps.isEmpty { final.ioAccesses.name(devices: maps) }
            var lines = StatTable.render(final, previous: nil, seconds: seconds)
            // Where exits were seen, the latency table of `kvmscope report` follows (per VM × vCPU).
            if !final.exits.isEmpty { lines += [""] + ReportTable.render(final, byVCPU: true) }
            for space in analyses.spaces { lines += [""] + IOAccessTableView.render(final, space: space, seconds: seconds) }
            // The pairer pairs every thread traced: with -p, -g or -f the footer says its counts are not the rows'.
            let only = [filters.pid.map { "-p \($0)" }, filters.guest.map { "-g \($0)" }, filters.fields.map { "-f \($0)" }]
                .compactMap { $0 }
            let scope = only.isEmpty ? nil : "all threads traced, not only " + only.joined(separator: " ")
            try writeSummary(lines.joined(separator: "\n") + "\n" + StatTable.footer(final, pairingScope: scope) + "\n")
        }
        try TraceRun.check(status)
    }

    /// What to say of `-p PID` when that process holds neither /dev/kvm nor a KVM VM open (its threads can fire
    /// no kvm event): `pid 1 (systemd) runs no KVM VM …`; nil for a process that does, or whose open files
    /// cannot be read (another user's, without root: nothing is known).
    static func noVMNote(pid: Int32,
                         consequence: String = "its threads are traced, as kvm_stat -p traces them, but will count nothing") -> String? {
        guard access("/proc/\(pid)/fd", R_OK) == 0, !KVMProcesses.holdsKVM(pid) else { return nil }
        let comm = (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8))?
            .trimmingCharacters(in: .newlines).terminalSafe
        return "pid \(pid)\(comm.map { " (\($0))" } ?? "") runs no KVM VM (neither /dev/kvm nor a kvm-vm file is open): "
            + consequence
    }

    /// Opens a -L file for appending (created 0640 when missing, as every file kvmscope writes). Throws the
    /// one-line io error.
    static func appendToLogFile(_ path: String) throws -> Int32 {
        switch OutputFiles.open(path, append: true) {
        case .success(let fd): return fd
        case .failure(let e): throw KVMScopeError.io("cannot write \(path): \(e)")
        }
    }

    /// The size of an open file in bytes (0 when fstat fails).
    static func size(of fd: Int32) -> Int {
        var st = stat()
        return fstat(fd, &st) == 0 ? Int(st.st_size) : 0
    }

    /// The ISA whose kvm_exit reason table gives a log's kvm_exit children, found as kvm_stat finds its arch: arm64
    /// on arm64, else the first `flags` line of /proc/cpuinfo (vmx: VMX, svm: SVM); nil when neither is there
    /// (a nested or paravirtual KVM such as PVM: kvm_exit's reasons are then counted in its column only).
    static func hostISA(cpuinfo: String = "/proc/cpuinfo") -> ISA? {
        #if arch(arm64)
        return .arm64
        #else
        guard let text = try? String(contentsOfFile: cpuinfo, encoding: .utf8),
              let flags = text.split(separator: "\n").first(where: { $0.hasPrefix("flags") })
        else { return nil }
        let words = flags.split(whereSeparator: { $0 == " " || $0 == "\t" })
        if words.contains("vmx") { return .vmx }
        if words.contains("svm") { return .svm }
        return nil
        #endif
    }

    /// The first line of a file (nil when it is empty or unreadable).
    static func firstLine(of path: String) -> String? {
        guard let h = FileHandle(forReadingAtPath: path) else { return nil }
        defer { try? h.close() }
        let head = (try? h.read(upToCount: 64 * 1024)) ?? Data()
        guard let end = head.firstIndex(of: UInt8(ascii: "\n")) else { return nil }
        return String(decoding: head[..<end], as: UTF8.self)
    }
}
