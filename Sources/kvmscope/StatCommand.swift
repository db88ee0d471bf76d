import ArgumentParser
import Foundation
import KVMExits
import KVMScopeViews
import KVMTrace

/// Options shared by every command that traces the live kernel.
struct TraceOptions: ParsableArguments {
    @Option(name: .customLong("event"), help: "A kvm event to trace (repeatable; default: every kvm event, like kvm_stat).")
    var events: [String] = []

    @Option(name: .customLong("buffer-kb"), help: "Ring-buffer size per CPU, KiB.")
    var bufferKB: UInt32 = 1024

    @Option(name: .customLong("marker-as"), help: .hidden)
    var markerAs: String?

    func validate() throws {
        guard bufferKB >= 4 else { throw ValidationError("--buffer-kb must be at least 4") }
    }

    func config(onlyPid: Int32? = nil) -> LiveConfig {
        var c = LiveConfig()
        c.events = events
        c.bufferKB = bufferKB
        c.markerAs = markerAs
        c.onlyPid = onlyPid
        return c
    }
}

/// kvm_stat's filters: -p, -g, -f.
struct FilterOptions: ParsableArguments {
    @Option(name: [.customShort("p"), .long], help: "Show only the VM with this process id.")
    var pid: Int32?

    @Option(name: [.customShort("g"), .long], help: "Show only the VM with this guest name (QEMU -name).")
    var guest: String?

    @Option(name: [.customShort("f"), .long], help: "Show only events whose name matches this regular expression.")
    var fields: String?

    func validate() throws {
        if pid != nil && guest != nil { throw ValidationError("-p/--pid and -g/--guest cannot be used together") }
        if let fields {
            do { _ = try Regex(fields) } catch { throw ValidationError("bad regular expression for -f/--fields: '\(fields)'") }
        }
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
            Without a mode, traces until --duration ends, COMMAND exits or Ctrl-C, then prints the summary.
              kvmscope stat -1                      counts over one second, like kvm_stat -1
              kvmscope stat -l -s 1                 one line per second (kvm_stat --log)
              kvmscope stat -l -c -L exits.csv      CSV log to a file
              kvmscope stat --json -- kvmscope storm --kind io --vcpus 2 --exits 10000
            """)

    @Flag(name: [.customShort("1"), .long], help: "One summary after one interval (kvm_stat --once).")
    var once = false

    @Flag(name: [.customShort("l"), .long], help: "Log one line of counts per interval (kvm_stat --log).")
    var log = false

    @Option(name: [.customShort("L"), .customLong("log-to-file")], help: "Log to this file instead of stdout.")
    var logToFile: String?

    @Flag(name: [.customShort("c"), .long], help: "CSV log format.")
    var csv = false

    @Flag(name: [.customShort("z"), .customLong("skip-zero-records")], help: "Omit log lines (and fields) with only zeros.")
    var skipZeroRecords = false

    @Option(name: [.customShort("s"), .customLong("set-delay")], help: "Interval in seconds (0.1 to 25.5).")
    var delay: Double = 3

    @Option(help: "Stop after this many seconds.")
    var duration: Double?

    @Flag(help: "Print the JSON summary.")
    var json = false

    @OptionGroup(title: "Filters") var filters: FilterOptions
    @OptionGroup(title: "Tracing") var trace: TraceOptions

    @Argument(parsing: .postTerminator, help: "Trace while this command runs, counting only its processes and threads.")
    var command: [String] = []

    func validate() throws {
        guard (0.1...25.5).contains(delay) else { throw ValidationError("-s/--set-delay must be between 0.1 and 25.5") }
        if let duration, duration <= 0 { throw ValidationError("--duration must be > 0") }
        if once && log { throw ValidationError("-1/--once and -l/--log cannot be used together") }
        if json && (log || logToFile != nil) { throw ValidationError("--json prints a summary; it does not combine with -l/-L") }
    }

    func run() {
        let filter = reportingErrors { try filters.filter() }
        let stop = StopSignal()
        let session = reportingErrors {
            try LiveSession(config: trace.config(onlyPid: command.isEmpty ? nil : getpid()))
        }
        var child: Process?
        if !command.isEmpty {
            child = reportingErrors { try spawn(command) }
        }
        let logging = log || logToFile != nil
        var out: FileHandle = .standardOutput
        if let path = logToFile {
            guard FileManager.default.createFile(atPath: path, contents: nil), let h = FileHandle(forWritingAtPath: path) else {
                session.stop()
                fail("cannot write \(path)")
            }
            out = h
        }

        // A log line that cannot be written ends the log: a terminal or pipe that went away (EIO, EPIPE)
        // like SIGHUP; a -L file that cannot take it (ENOSPC) with one line saying so.
        func emit(_ text: String) {
            guard let e = StandardDescriptors.write(out.fileDescriptor, text) else { return }
            if let path = logToFile {
                session.stop()
                fail("cannot write \(path): \(String(cString: strerror(e)))")
            }
            stop.raise(SIGHUP)
        }

        var previous = reportingErrors { try Summary(session.snapshot(), filter: filter) }
        var formatter: LogFormatter?
        var linesSinceHeader = 0
        let deadline = duration.map { Date().addingTimeInterval($0) }
        let timestamp = DateFormatter()
        timestamp.dateFormat = "yyyy-MM-dd HH:mm:ss"

        func finished() -> Bool {
            if stop.isRaised { return true }
            if let deadline, Date() >= deadline { return true }
            if let child, !child.isRunning { return true }
            return false
        }

        if once {
            _ = stop.sleep(1)
        } else if logging {
            while !finished() {
                _ = stop.sleep(min(delay, deadline.map { max(0.01, $0.timeIntervalSinceNow) } ?? delay))
                let current = reportingErrors { try Summary(session.snapshot(), filter: filter) }
                // Columns: with --event or -f, every chosen event from the start (kvm_stat shows its fields
                // whether or not they fire); otherwise the events seen so far, not all ~90 kvm events. A new
                // column re-prints the header, as does every 20th line (kvm_stat's habit) outside CSV.
                let chosen = !trace.events.isEmpty || filters.fields != nil
                let seen = LogFormatter.fields(of: current, skipZero: !chosen)
                let known = formatter?.fields ?? []
                let added = seen.filter { !known.contains($0) }
                if formatter == nil || !added.isEmpty || (linesSinceHeader >= 20 && !csv) {
                    formatter = LogFormatter(fields: known + added, csv: csv)
                    emit(formatter!.header() + "\n")
                    linesSinceHeader = 0
                }
                let line = formatter!.line(timestamp: timestamp.string(from: Date()), current: current, previous: previous)
                let allZero = formatter!.fields.allSatisfy { f in
                    LogFormatter(fields: [f], csv: true).line(timestamp: "", current: current, previous: previous) == ",0"
                }
                if !(skipZeroRecords && allZero) {
                    emit(line + "\n")
                    linesSinceHeader += 1
                }
                previous = current
            }
        } else {
            while !finished() { _ = stop.sleep(0.05) }
        }
        if let child {
            if child.isRunning && stop.isRaised { child.interrupt() }
            child.waitUntilExit()
        }
        session.stop()
        if logging && !json { return }
        let final = reportingErrors { try Summary(session.snapshot(), filter: filter) }
        let seconds = session.elapsedSeconds
        if json {
            let perCPU = session.finalLostPerCPU.sorted { $0.key < $1.key }
            let extra: [(String, JSONValue)] = [
                ("lost_by_cpu", .object(perCPU.map { (String($0.key), .uint($0.value)) })),
            ]
            writeStdout(SummaryJSON.render(final, durationSeconds: seconds, extra: extra) + "\n")
        } else {
            var lines = StatTable.render(final, previous: nil, seconds: seconds)
            // Where exits were seen, the latency table of `kvmscope report` follows (per VM × vCPU).
            if !final.exits.isEmpty { lines += [""] + ReportTable.render(final, byVCPU: true) }
            writeStdout(lines.joined(separator: "\n") + "\n")
            writeStdout(StatTable.footer(final) + "\n")
        }
        if let child, child.terminationStatus != 0 {
            fail("command exited with status \(child.terminationStatus)", code: 3)
        }
    }

    func spawn(_ argv: [String]) throws -> Process {
        let p = Process()
        let path = argv[0].contains("/") ? argv[0] : (Self.which(argv[0]) ?? argv[0])
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = Array(argv.dropFirst())
        do { try p.run() } catch { throw KVMScopeError.usage("cannot run \(argv[0]): \(error.localizedDescription)") }
        return p
    }

    static func which(_ name: String) -> String? {
        for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
            let p = "\(dir)/\(name)"
            if FileManager.default.isExecutableFile(atPath: p) { return p }
        }
        return nil
    }
}
