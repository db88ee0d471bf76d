import ArgumentParser
import Foundation
import KVMAnalysis
import KVMExits
import KVMHost
import KVMResources
import KVMScopeViews
import KVMSources
import SystemPackage

struct ReportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "report",
        abstract: "Analyse recorded traces: trace.dat, kernel trace text, trace-cmd report or perf script output.",
        discussion: """
            Each FILE gets its own report (files are not merged: different recordings have different clocks). The \
            analysis is the live one: counts per event, exits per VM/vCPU/reason, exit→entry latencies (pairing by \
            thread), top RIPs, losses. Blocking exits (HLT) are marked * and kept out of Time%. In text traces \
            without a TGID column each thread counts as its own VM.

              kvmscope report trace.txt
              kvmscope report --by-vcpu --histogram MSR_WRITE trace.txt
              kvmscope report --json --from 1.5 --to 2.5 trace.dat
              kvmscope report --html exits.html trace.txt
              kvmscope report --event mmio trace.dat
            """)

    @Argument(help: ArgumentHelp("Trace files (trace.dat, or text: trace-cmd report, perf script, the kernel's trace); - or a "
                                 + "pipe: read from it. None: trace.dat, as trace-cmd report reads, or a pipe on standard input.", valueName: "file"))
    var paths: [String] = []

    @Option(name: [.customShort("i"), .long], help: ArgumentHelp("A trace file, as trace-cmd report -i and perf -i take it "
                                                                 + "(repeatable; before the files named without -i).", valueName: "file"))
    var input: [String] = []

    /// The files to report: -i's, then the others; when none is named, trace.dat (trace-cmd's default), or
    /// standard input when there is no trace.dat here and stdin is a pipe (`trace-cmd report | kvmscope report`,
    /// as perf report reads a pipe).
    var files: [String] {
        let all = input + paths
        guard all.isEmpty else { return all }
        var st = stat()
        if access("trace.dat", F_OK) != 0 && errno == ENOENT && fstat(STDIN_FILENO, &st) == 0
            && (st.st_mode & S_IFMT) == S_IFIFO {
            return ["-"]
        }
        return ["trace.dat"]
    }

    @Flag(help: "Print the JSON summary (the same as stat --json, plus a \"source\" object); an array for several files.")
    var json = false

    @Flag(help: "Print CSV: one row per file × VM × vCPU × reason.")
    var csv = false

    @Option(parsing: .unconditional, help: "Keep events from this many seconds after the trace's first event.")
    var from: Double?

    @Option(parsing: .unconditional, help: "Keep events until this many seconds after the trace's first event.")
    var to: Double?

    @Option(name: [.customShort("p"), .long], parsing: .unconditional,
            help: "Only this VM (its process id; the thread id when the trace has no tgids).")
    var pid: Int32?

    @Option(parsing: .unconditional, help: "Only this vCPU.")
    var vcpu: UInt32?

    @Option(help: ArgumentHelp("Only this exit reason, in any spelling (HLT, hlt, EXIT_MSR, msr, 0x7c, 48).",
                               discussion: "Case-insensitive; the ISA is the trace's when a name exists in two."))
    var reason: String?

    @Option(parsing: .unconditional, help: "At most N reasons per table (--csv: per VM × vCPU).")
    var top: Int?

    @Option(name: [.customShort("k"), .long], help: ArgumentHelp(
        "perf kvm stat's sort key: sample (exits, the default), time (total handling time), max, min or mean.",
        valueName: "key"))
    var key: ReportTable.SortKey = .sample

    @Flag(name: .customLong("by-vcpu"), help: "One table per VM × vCPU instead of per VM.")
    var byVCPU = false

    @Option(help: "Also print a histogram of this reason's latencies (any spelling, as --reason).")
    var histogram: String?

    @Option(name: .customLong("ts2secs"), parsing: .unconditional, help: ArgumentHelp(
        "Ticks per second of integer counter timestamps (-C x86-tsc, counter): report in nanoseconds.",
        discussion: "As trace-cmd report's --ts2secs. Without it such traces are reported in cycles.",
        valueName: "HZ"))
    var ts2secs: UInt64?

    @Option(help: "Write a self-contained HTML page (exit-rate timeline, latency heatmap) to this file.")
    var html: String?

    @Option(help: ArgumentHelp("perf kvm stat's analysis: vmexit (exits per reason), ioport (per I/O port) or mmio (per MMIO address).",
                               discussion: "ioport and mmio name each port and address by its device (the standard PC map).",
                               valueName: "vmexit|ioport|mmio"))
    var event: String = "vmexit"

    func validate() throws {
        if json && csv { throw ValidationError("--json and --csv cannot be used together") }
        // Seconds become nanoseconds in 64 bits: at most ~584 years; infinities and NaN are no times.
        if let from, !(from >= 0 && from < 1e10) { throw ValidationError("--from must be a number of seconds ≥ 0 (below 10^10)") }
        if let to, !(to > (from ?? 0) && to < 1e10) {
            throw ValidationError("--to must be a number of seconds greater than --from (below 10^10)")
        }
        if files.filter({ $0 == "-" }).count > 1 { throw ValidationError("standard input (-) can be read once") }
        if let top, top < 1 { throw ValidationError("--top must be ≥ 1") }
        if html == "" { throw ValidationError("--html needs a file name") }
        if html != nil && files.count != 1 { throw ValidationError("--html takes exactly one trace file") }
        if ts2secs == 0 { throw ValidationError("--ts2secs must be > 0") }
        guard let analysis = IOAnalysis(rawValue: event) else {
            throw ValidationError("--event must be vmexit, ioport or mmio (perf kvm stat's analyses), not '\(event)'")
        }
        if csv && analysis != .vmexit { throw ValidationError("--csv lists exits; --event \(event) prints a table or --json") }
    }

    /// The filter of one file: `--reason` resolved to the trace's own output names.
    func filter(_ file: String, _ source: TraceSource, _ snapshot: AggregateSnapshot) throws -> SummaryFilter {
        var f = SummaryFilter(vms: pid.map { [$0] }, vcpus: vcpu.map { [$0] })
        if let reason { f.reasons = Set(try Self.resolve(reason, option: "--reason", file, source, snapshot)) }
        return f
    }

    /// The output names in a trace that a spelling names, or one error line saying why none
    /// (``unresolved(_:option:_:_:userspace:hostISA:)``).
    static func resolve(_ spelling: String, option: String, _ file: String, _ source: TraceSource,
                        _ snapshot: AggregateSnapshot) throws -> [String] {
        let all = try Summary(snapshot)
        let resolver = ReasonResolver(names: source.catalog.exitReasons)
        let userspace = source.catalog.userspaceExitReasons
        do {
            return try resolver.resolve(spelling, present: Self.present(all), userspace: userspace)
        } catch {
            let why = unresolved(spelling, option: option, all, resolver, userspace: userspace, hostISA: StatCommand.hostISA())
            throw KVMScopeError.badFile("\(file): \(option) \(spelling): \(why)")
        }
    }

    /// The reasons of a summary as ``ReasonResolver/resolve(_:present:userspace:)`` takes them.
    static func present(_ s: Summary) -> [(isa: ISA, name: String)] {
        s.exits.map { (isa: $0.isa, name: $0.reason) } + s.userspaceExits.map { (isa: ISA.unknown, name: $0.reason) }
    }

    /// Why a spelling names no reason of a trace, in the trace's terms:
    /// - a storm rule's function around a reason (`rate(0x31)`): the option takes the reason alone;
    /// - a `KVM_EXIT_*` reason (or its kvm_stat name, `MMIO`) the trace has no userspace exit of: the userspace
    ///   exit reasons it has;
    /// - a reason of the trace's ISA that it has no exit of: its code, and the closest reasons in the trace;
    /// - a reason of another ISA only (`SVC64` in a VMX trace): that ISA, and the closest reasons in the trace;
    /// - a reason of no table (a typo): the closest names of the trace's ISA's table (the host's for a trace
    ///   without exits; those in the trace marked so) — never another ISA's.
    static func unresolved(_ spelling: String, option: String, _ s: Summary, _ resolver: ReasonResolver,
                           userspace: UserspaceExitNames, hostISA: ISA?) -> String {
        let present = Self.present(s)
        if ReasonResolver.number(spelling) == nil,
           let m = spelling.wholeMatch(of: /\s*[A-Za-z_][A-Za-z0-9_]*\s*\((.+)\)\s*/) {
            let inner = String(m.1).trimmingCharacters(in: .whitespaces)
            let found = (try? resolver.resolve(inner, present: present, userspace: userspace)).map { " (\($0.joined(separator: ", ")) in this trace)" }
            return "'\(spelling)' is not a reason: \(option) takes one alone, as '\(inner)'" + (found ?? "")
        }
        var isas = Set(s.exits.map(\.isa)).subtracting([.unknown])
        if isas.isEmpty, let hostISA { isas = [hostISA] }
        let order = isas.sorted { $0.rawValue < $1.rawValue }
        func label(_ isa: ISA) -> String { isa == .arm64 ? "arm64" : (isa.jsonName ?? "?").uppercased() }
        let isaLabel = order.map(label).joined(separator: "/")
        let known = resolver.keys(for: spelling)
        let inISA = known.filter { isas.contains($0.isa) }
        let presentNames = Array(Set(s.exits.map(\.reason)))
        let inTrace = presentNames.isEmpty ? "the trace has no exit reasons"
            : "closest in the trace: " + ReasonResolver.closest(to: spelling, among: presentNames, limit: 5).joined(separator: ", ")
        // A userspace exit reason (KVM_EXIT_MMIO, MMIO) that is no exit reason of the trace's ISA.
        let upper = spelling.trimmingCharacters(in: .whitespaces).uppercased()
        if ReasonResolver.number(spelling) == nil, inISA.isEmpty || upper.hasPrefix("KVM_EXIT_") || s.exits.isEmpty,
           let code = userspace.code(name: upper) {
            var totals: [String: UInt64] = [:]
            for r in s.userspaceExits { totals[r.reason, default: 0] += r.count }
            let kept = totals.filter { $0.value > 0 }.sorted { ($0.value, $1.key) > ($1.value, $0.key) }
            let theirs = kept.isEmpty ? "it has no kvm_userspace_exit events"
                : "its kvm_userspace_exit reasons: " + kept.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
            // HLT in a trace without kvm_exit: neither the exit nor the userspace exit of that name is there.
            return s.exits.isEmpty && !known.isEmpty && !upper.hasPrefix("KVM_EXIT_")
                ? "the trace has no kvm_exit events, and no \(userspace.name(code)) exits to user space (\(theirs))"
                : "no \(userspace.name(code)) exits to user space in the trace (\(theirs))"
        }
        if !inISA.isEmpty {
            let meant = inISA.sorted().map { k in
                let name = resolver.name(k)
                return name.hasPrefix("UNKNOWN(") ? "no \(label(k.isa)) reason has code 0x\(String(k.code, radix: 16))"
                    : "\(name): \(label(k.isa)) 0x\(String(k.code, radix: 16))"
            }
            let what = ReasonResolver.number(spelling) != nil ? "no exit reason with code \(spelling.trimmingCharacters(in: .whitespaces))"
                : "no '\(spelling)' exits"
            return "\(what) in the trace (\(meant.joined(separator: "; "))); \(inTrace)"
        }
        // A typo, or another ISA's reason: the closest names of the trace's own table(s).
        let other = known.isEmpty ? "unknown exit reason '\(spelling)'"
            : "'\(spelling)' names \(Set(known.map { label($0.isa) }).sorted().joined(separator: "/")) exit reasons only"
              + (isaLabel.isEmpty ? "" : "; the trace's are \(isaLabel)")
        guard !isas.isEmpty, known.isEmpty else { return "\(other); \(inTrace)" }
        var names = Set(presentNames)
        for isa in order {
            let table: SymbolTable = isa == .vmx ? resolver.names.vmx : isa == .svm ? resolver.names.svm : resolver.names.arm64
            for e in table.entries { names.insert(e.name) }
        }
        let closest = ReasonResolver.closest(to: spelling, among: Array(names), limit: 5)
            .map { presentNames.contains($0) ? "\($0) (in the trace)" : $0 }
        return "\(other); closest \(isaLabel) reasons: " + closest.joined(separator: ", ")
    }

    func run() throws {
        var heldFIFO: Int32 = -1
        // The page is written last: a path it cannot be written to is said before the report is printed.
        if let html {
            var isDirectory: ObjCBool = false
            let exists = FileManager.default.fileExists(atPath: html, isDirectory: &isDirectory)
            if exists && isDirectory.boolValue { throw KVMScopeError.io("cannot write \(html): \(Errno.isDirectory)") }
            let target = exists ? html : PathComponents.directory(of: html)
            if access(target, W_OK) != 0 { throw KVMScopeError.io("cannot write \(html): \(Errno(rawValue: errno))") }
            // A FIFO needs its reader now, and keeps it: held open until the page is written (its reader would
            // otherwise see an end at once), closed when the report is done.
            var fifo = stat()
            if stat(html, &fifo) == 0 && (fifo.st_mode & S_IFMT) == S_IFIFO { heldFIFO = try createOutputFile(html) }
        }
        defer { if heldFIFO >= 0 { close(heldFIFO) } }
        var jsonValues: [JSONValue] = []
        // What shapes the text tables only: said, not silently dropped.
        if json || csv {
            let textOnly = (json && top != nil ? ["--top"] : []) + (json && key != .sample ? ["-k/--key"] : [])
                + (histogram != nil ? ["--histogram"] : [])
            if !textOnly.isEmpty {
                warn("\(textOnly.joined(separator: ", ")) shape\(textOnly.count == 1 ? "s" : "") the text report; "
                     + "\(json ? "--json" : "--csv") holds every row, in its own order")
            }
        }
        if csv { writeStdout(ReportTable.csvHeader + "\n") }
        // As wc or grep do with several files: each bad file is one line on stderr, the others are reported,
        // and the status is 1 if any failed.
        var failed = false
        for (n, file) in files.enumerated() {
            do {
                try report(n, file, &jsonValues)
            } catch let e as KVMScopeError where files.count > 1 {
                writeStderr("kvmscope: \(e.description)\n")
                failed = true
            }
        }
        if json {
            let v = files.count == 1 ? jsonValues[0] : .array(jsonValues)
            writeStdout(v.serialized(pretty: true) + "\n")
        }
        if failed { throw ExitCode(1) }
    }

    /// One file's report, written as it is made (JSON collected in `jsonValues`).
    func report(_ n: Int, _ file: String, _ jsonValues: inout [JSONValue]) throws {
        // `-` and pipes (`<(perf script)`, `/dev/stdin`): read whole into a private file first (the readers map
        // their file, and a trace.dat is read out of order); it is removed when the report is done.
        if let copy = try Self.copyIfStream(file) {
            defer { unlink(copy) }
            do { return try report(n, file, at: copy, &jsonValues) } catch let e as KVMScopeError {
                // The errors name the copy: name what the user gave.
                let name = file == "-" ? "standard input" : file
                throw KVMScopeError.badFile(e.description.replacingOccurrences(of: copy, with: name))
            }
        }
        try report(n, file, at: file, &jsonValues)
    }

    /// A private copy of `file` when it is `-` (standard input), no regular file (a pipe, a character device),
    /// or a file of procfs, sysfs or tracefs (the kernel's own `trace`: size 0, read to its end); nil for a
    /// regular file (or a missing one: its error comes from the reader). A stream whose first bytes are binary
    /// but not trace.dat (`/dev/zero`, `/dev/urandom`) is refused at once, not copied without end.
    static func copyIfStream(_ file: String) throws -> String? {
        var st = stat()
        let statted = file != "-" && stat(file, &st) == 0
        let type = st.st_mode & S_IFMT
        let pseudo = statted && type == S_IFREG && st.st_size == 0 && FileSystems.isPseudo(file)
        guard file == "-" || (statted && type != S_IFREG && type != S_IFDIR) || pseudo else { return nil }
        let input = file == "-" ? STDIN_FILENO : open(file, O_RDONLY | O_CLOEXEC)
        guard input >= 0 else { throw KVMScopeError.badFile("cannot open \(file): \(Errno(rawValue: errno))") }
        defer { if input != STDIN_FILENO { close(input) } }
        var template = Array((NSTemporaryDirectory() + "/kvmscope-stdin-XXXXXX").utf8CString)
        let out = mkstemp(&template)
        guard out >= 0 else { throw KVMScopeError.io("cannot make a temporary file: \(Errno(rawValue: errno))") }
        let path = String(cMessage: template)
        defer { close(out) }
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        // The first 4 KiB, gathered over however many reads a pipe splits them into, is what the format is told by.
        var head: [UInt8] = []
        var checked = false
        while true {
            let n = buffer.withUnsafeMutableBytes { read(input, $0.baseAddress, $0.count) }
            if n == 0 { break }
            if n < 0 {
                if errno == EINTR { continue }
                let e = Errno(rawValue: errno)
                unlink(path)
                throw KVMScopeError.badFile("cannot read \(file == "-" ? "standard input" : file): \(e)")
            }
            if !checked {
                head += buffer.prefix(min(n, 4096 - head.count))
                if head.count == 4096 {
                    checked = true
                    do {
                        _ = try TraceFiles.kind(of: head, path: file == "-" ? "standard input" : file)
                    } catch {
                        unlink(path)
                        throw error
                    }
                }
            }
            var done = 0
            while done < n {
                let w = buffer.withUnsafeBytes { write(out, $0.baseAddress! + done, n - done) }
                if w < 0 && errno == EINTR { continue }
                guard w > 0 else {
                    let e = Errno(rawValue: errno)
                    unlink(path)
                    throw KVMScopeError.io("cannot write a temporary copy of \(file) in \(NSTemporaryDirectory()): \(e)")
                }
                done += w
            }
        }
        return path
    }

    /// The report of `file` (its name in the output), read from `path`.
    func report(_ n: Int, _ file: String, at path: String, _ jsonValues: inout [JSONValue]) throws {
        // An empty or missing file may be a recording killed before it wrote it: its spool is beside it.
        if file == path, ((try? FileManager.default.attributesOfItem(atPath: file)[.size] as? Int) ?? nil ?? 0) == 0 {
            for r in RecordSession.recoverSpools(beside: file) {
                writeStderr(r.error.map { "kvmscope: cannot recover \(r.path) from the spool of killed recording pid \(r.pid): \($0)\n" }
                ?? "kvmscope: recovered \(r.path) from the spool of killed recording pid \(r.pid): \(r.pages) complete pages\n")
            }
        }
        let source = try TraceFiles.open(path, counterHz: ts2secs)
        let text = source as? TextTraceReader
        if let warning = text?.malformedWarning { warn("\(file): \(warning)") }
        // --from/--to are seconds: a trace of counter values has none without its frequency.
        if text?.timestampUnit == .counterTicks && (from != nil || to != nil) {
            throw KVMScopeError.usage("\(file): --from/--to are seconds, and its timestamps are counter values: give --ts2secs HZ")
        }
        // A trace.dat's CPUs are decoded on the other cores while this one merges, pairs and aggregates; up to a
        // window of the regrouping ahead, so that the next window is decoded while this one is fed.
        let decoded: TraceSource = source is TraceDatReader && PrefetchedSource.pays
            ? PrefetchedSource(source, aheadEvents: ThreadGrouping.Policy().maxWindowEvents) : source
        let analysis = try ReportAnalysis.run(decoded, from: from, to: to, timelineBins: html == nil ? nil : 240)
        try checkFiltersMatch(file, source, analysis)
        let filter = try self.filter(file, source, analysis.snapshot)
        let histogramNames = try histogram.map { try Self.resolve($0, option: "--histogram", file, source, analysis.snapshot) }
        var summary = try Summary(analysis.snapshot, filter: filter)
        // What `record` sampled of each VM (its resources, its PCI BARs under --qmp), as stat --json shows it.
        let recorded = RecordedResources.read((source as? TraceDatReader)?.resourcesJSON)
        var maps: [Int32: DeviceMap] = [:]
        for vm in recorded?.vms ?? [] { if let map = vm.deviceMap { maps[vm.vm] = map } }
        if !maps.isEmpty { summary.ioAccesses.name(devices: maps) }
        // kvm_exit without kvm_entry: nothing can be paired, and no exit is an orphan (a trace gap).
        let traced = Self.traced(source, analysis)
        let pairingApplies = !(traced.exit && !traced.entry)
        let inCycles = text?.timestampUnit == .counterTicks
        let noExits = Self.total(of: "kvm_exit", analysis) == 0
        if noExits { for note in optionNotes(file, summary, reasons: filter.reasons, textMode: !json && !csv) { warn(note) } }
        if json {
            jsonValues.append(SummaryJSON.value(summary, durationSeconds: analysis.durationSeconds,
                                                extra: [("source", sourceJSON(file, source, analysis)),
                                                        ("resources", .array((recorded?.vms ?? []).filter { pid == nil || $0.vm == pid }.map(\.json)))],
                                                pairingScope: pairingScope == nil ? nil : "all threads",
                                                pairingApplies: pairingApplies))
        } else if csv {
            // -k and --top sort and cut each VM × vCPU's rows, as they do the text tables.
            let rows = ReportTable.csvRows(summary, file: file, top: top, key: key == .sample && top == nil ? nil : key)
            if !rows.isEmpty { writeStdout(rows.joined(separator: "\n") + "\n") }
        } else {
            if n > 0 { writeStdout("\n") }
            let lines = Durations.$inCycles.withValue(inCycles) {
                self.text(file, source, analysis, summary, histogramNames,
                          resources: (recorded?.vms ?? []).filter { pid == nil || $0.vm == pid })
            }
            writeStdout(lines.joined(separator: "\n") + "\n")
        }
        if let html, let timeline = analysis.timeline {
            // Without kvm_exit, the rate chart shows kvm_userspace_exit's reasons (KVM_EXIT_IO …) instead.
            let view = try noExits && !summary.userspaceExits.isEmpty
                ? ExitTimelineView(Self.userspaceExitTimeline(source, analysis, maxBins: 240), snapshot: analysis.snapshot,
                                   filter: filter, event: "kvm_userspace_exit")
                : ExitTimelineView(timeline, snapshot: analysis.snapshot, filter: filter)
            let page = HTMLReport.render(view, title: PathComponents.lastComponent(of: file),
                                         note: noExits ? Self.noExitsNote(summary) : nil)
            try writeOutputFile(html, page)
        }
    }

    /// The `kvm_userspace_exit` events of the kept window (the analysis' first to last event) binned by reason,
    /// as the pairer bins kvm_exit: the `--html` rate chart of a trace without kvm_exit. A second pass over the
    /// source, made only then.
    static func userspaceExitTimeline(_ source: TraceSource, _ a: ReportAnalysis, maxBins: Int) throws -> ExitTimeline {
        var t = ExitTimeline(maxBins: maxBins)
        guard let event = source.catalog.index(of: "kvm_userspace_exit"), a.eventsKept > 0 else { return t }
        t.begin(at: a.first)
        let (first, last) = (a.first, a.last)
        try source.forEachEvent { e in
            guard e.event == event, e.timestamp >= first, e.timestamp <= last else { return }
            t.exit(ExitTimeline.Key(tid: e.tid, isa: e.isa, reason: e.reason), at: e.timestamp)
        }
        return t
    }

    /// The `--html` page's line for a trace without kvm_exit events (recorded where KVM never fires it): why its
    /// exit charts are empty, and the kvm events and userspace exit reasons (`kvm_userspace_exit`'s
    /// `KVM_EXIT_*`) it has, by count.
    static func noExitsNote(_ s: Summary) -> String {
        let events = s.events.filter { $0.total > 0 }.sorted { ($0.total, $1.name) > ($1.total, $0.name) }
        var user: [String: UInt64] = [:]
        for r in s.userspaceExits { user[r.reason, default: 0] += r.count }
        let reasons = user.filter { $0.value > 0 }.sorted { ($0.value, $1.key) > ($1.value, $0.key) }
        return "No kvm_exit events in this trace (kvm_exit may not fire on the host where it was recorded): no exit "
            + "rate or exit→entry latency to chart" + (reasons.isEmpty ? "" : "; the rate chart shows its userspace exits")
            + ". Its kvm events: "
            + (events.isEmpty ? "none" : events.map { "\($0.name) \($0.total)" }.joined(separator: ", "))
            + (reasons.isEmpty ? "." : "; userspace exits (kvm_userspace_exit): "
               + reasons.map { "\($0.key) \($0.value)" }.joined(separator: ", ") + ".")
    }

    /// `-p`, `--vcpu` and `--from/--to` that keep nothing of a trace that has events: one error line naming what
    /// the trace has (its VMs, its vCPUs, the span of its events), as `--reason` names the reasons there are —
    /// never an empty report that says "No kvm_exit events." of a file that holds them. A trace with no event at
    /// all is reported as it is.
    func checkFiltersMatch(_ file: String, _ source: TraceSource, _ a: ReportAnalysis) throws {
        let window = [from.map { "--from \(Self.number($0))" }, to.map { "--to \(Self.number($0))" }].compactMap { $0 }
        if !window.isEmpty && a.eventsKept == 0 {
            let whole = try ReportAnalysis.run(source)
            guard whole.eventsKept > 0 else { return }
            throw KVMScopeError.badFile("\(file): \(window.joined(separator: " ")): no kvm events in that window; the trace's "
                                        + "\(whole.eventsKept) events span \(String(format: "%.6f", whole.durationSeconds))s from its first")
        }
        guard pid != nil || vcpu != nil else { return }
        let rows = try Summary(a.snapshot).eventRows.filter { $0.count > 0 }
        guard !rows.isEmpty else { return }
        let inTrace = window.isEmpty ? "in the trace" : "in the trace between \(window.joined(separator: " "))"
        /// At most 10 of a set's items, in order, then how many there are.
        func list<T: Comparable & Hashable>(_ items: [T], _ label: (T) -> String) -> String {
            let sorted = Set(items).sorted()
            return sorted.prefix(10).map(label).joined(separator: ", ") + (sorted.count > 10 ? ", … (\(sorted.count))" : "")
        }
        if let pid, !rows.contains(where: { $0.vm == pid }) {
            var names: [Int32: String] = [:]
            for r in rows where names[r.vm] == nil { if let n = r.vmName { names[r.vm] = n } }
            let vms = list(Array(Set(rows.map(\.vm)))) { "\($0)" + (names[$0].map { " (\($0.terminalSafe))" } ?? "") }
            throw KVMScopeError.badFile("\(file): -p \(pid): no VM \(pid) \(inTrace); its VMs: \(vms)")
        }
        if let vcpu {
            let scope = rows.filter { pid == nil || $0.vm == pid }
            guard !scope.contains(where: { $0.vcpu == vcpu }) else { return }
            let vcpus = Array(Set(scope.compactMap(\.vcpu)))
            let of = pid.map { "VM \($0)" } ?? "the trace"
            throw KVMScopeError.badFile("\(file): --vcpu \(vcpu): no vCPU \(vcpu) \(pid.map { "of VM \($0) " } ?? "")\(inTrace); "
                + (vcpus.isEmpty ? "\(of) has no vCPU numbers (no kvm_exit vcpu_id, no \"CPU N/KVM\" thread names)"
                                 : "\(of) has vCPU\(vcpus.count == 1 ? "" : "s") \(list(vcpus) { "\($0)" })"))
        }
    }

    /// A number of seconds as given (`100`, `1.5`).
    static func number(_ v: Double) -> String { v == v.rounded() && abs(v) < 1e15 ? String(Int64(v)) : String(v) }

    /// The events of `name` counted in the kept time window, every thread (0 when the trace has none).
    static func total(of name: String, _ a: ReportAnalysis) -> UInt64 {
        guard let i = a.snapshot.catalog.index(of: name), Int(i) < a.snapshot.eventTotals.count else { return 0 }
        return a.snapshot.eventTotals[Int(i)]
    }

    /// What `--by-vcpu` and `--reason` act on in a trace without kvm_exit events (recorded where KVM never fires
    /// it, or filtered to other events), one warning line each: `--by-vcpu` tables count each vCPU's kvm events
    /// (text output only: JSON and CSV rows are per vCPU anyway); `--reason` can only have named
    /// `kvm_userspace_exit` reasons (`KVM_EXIT_IO`), whose rows it keeps. perf kvm stat has no exits to report
    /// there; these say why the exit tables stay empty instead of printing them as if the option had worked.
    func optionNotes(_ file: String, _ s: Summary, reasons: Set<String>?, textMode: Bool) -> [String] {
        let events = s.events.filter { $0.total > 0 }.sorted { ($0.total, $1.name) > ($1.total, $0.name) }
        let total = events.reduce(0) { $0 + $1.total }
        let shown = events.prefix(3).map { "\($0.name) \($0.total)" } + (events.count > 3 ? ["…"] : [])
        let what = "\(file) has no kvm_exit events (\(total) kvm events" + (shown.isEmpty ? "" : ": " + shown.joined(separator: ", ")) + ")"
        var notes: [String] = []
        if byVCPU && textMode && IOAnalysis(rawValue: event)?.space == nil {
            notes.append("--by-vcpu: \(what); its tables count each vCPU's kvm events instead of exits")
        }
        if let reason {
            let names = (reasons ?? []).sorted()
            notes.append("--reason \(reason): \(what); it keeps only kvm_userspace_exit's " + names.joined(separator: ", "))
        }
        return notes
    }

    /// Whether kvm_exit and kvm_entry were traced: a trace.dat says by the formats it holds (an event enabled
    /// that never fired was traced); a text trace by its records of the event (in the kept time window).
    /// Exits without entries are counted, but no exit→entry latency can be measured.
    static func traced(_ source: TraceSource, _ a: ReportAnalysis) -> (exit: Bool, entry: Bool) {
        if let d = source as? TraceDatReader {
            return (d.allEvents.contains("kvm:kvm_exit"), d.allEvents.contains("kvm:kvm_entry"))
        }
        // A text trace's catalog holds the kvm events seen anywhere in the file (not only in a --from/--to window).
        if source is TextTraceReader {
            return (source.catalog.index(of: "kvm_exit") != nil, source.catalog.index(of: "kvm_entry") != nil)
        }
        let total = { (name: String) -> UInt64 in
            guard let i = a.snapshot.catalog.index(of: name), Int(i) < a.snapshot.eventTotals.count else { return 0 }
            return a.snapshot.eventTotals[Int(i)]
        }
        return (total("kvm_exit") > 0, total("kvm_entry") > 0)
    }

    static func describe(_ source: TraceSource) -> String {
        if let t = source as? TextTraceReader { return t.style.rawValue }
        return "trace.dat"
    }

    func sourceJSON(_ file: String, _ source: TraceSource, _ a: ReportAnalysis) -> JSONValue {
        var o: [(String, JSONValue)] = [("file", .string(file)), ("format", .string(Self.describe(source))),
                                        ("first_ns", .uint(a.first)), ("last_ns", .uint(a.last)),
                                        ("events_kept", .uint(a.eventsKept)),
                                        ("kvm_entry_traced", .bool(Self.traced(source, a).entry))]
        if let t = source as? TextTraceReader {
            o += [("records", .uint(UInt64(t.records))), ("joined_lines", .uint(UInt64(t.joinedLines))),
                  ("callchain_lines", .uint(UInt64(t.callchainLines))),
                  ("skipped_lines", .uint(UInt64(t.skippedLines))), ("prose_lines", .uint(UInt64(t.proseLines))),
                  ("malformed_lines", .uint(UInt64(t.malformedLines.values.reduce(0, +)))),
                  ("vm_is", .string(t.hasTGIDs ? "tgid" : t.missingThreadIDs ? "comm" : "tid")),
                  ("time_unit", .string(t.timestampUnit.rawValue))]
        }
        if let d = source as? TraceDatReader {
            // What kvmscope record noted: pages it did not write (--max-size, a failed write) hold events that no
            // count here includes; `truncated` says the file is short of the recording.
            o += [("dropped_pages", .uint(d.droppedPages)), ("truncated", .bool(d.droppedPages > 0 || d.truncatedByFullDisk)),
                  ("recorder_notes", .array(d.recorderNotes.map(JSONValue.string)))]
        }
        // Losses by CPU and kind, as the source counted them (-1: a text trace's losses with no CPU).
        o.append(("losses_by_cpu", .object(a.statistics.losses.sorted { $0.key < $1.key }.map { cpu, l in
            (String(cpu), .object([("overrun", .uint(l.overrun)), ("dropped", .uint(l.dropped)),
                                   ("flagged", .uint(l.flagged)), ("corrupt_subbuffers", .uint(l.corruptSubbuffers)),
                                   ("unknown_gaps", .uint(l.unknownGaps)), ("read_errors", .uint(l.readErrors))]))
        })))
        return .object(o)
    }

    func text(_ file: String, _ source: TraceSource, _ a: ReportAnalysis, _ s: Summary,
              _ histogramNames: [String]?, resources: [VMResourceUse] = []) -> [String] {
        let traced = Self.traced(source, a)
        let pairingApplies = !(traced.exit && !traced.entry)
        let t = source as? TextTraceReader
        // --from/--to: the window asked for (cut to the trace), what the rates divide by; else first to last event.
        let (first, last) = a.window ?? (a.first, a.last)
        let span = t?.timestampUnit == .counterTicks ? "(\(first) → \(last) cycles)" : "(\(seconds(first)) → \(seconds(last)))"
        var lines = ["\(file): \(Self.describe(source)), \(a.eventsKept) kvm events \(a.window == nil ? "over" : "in the window of") "
                     + "\(Durations.adaptive(last &- first)) \(span)"]
        if let t {
            var notes: [String] = []
            if t.timestampUnit == .counterTicks {
                notes.append("timestamps are counter values: times are in cycles (give --ts2secs HZ for nanoseconds)")
            }
            if t.missingThreadIDs {
                notes.append("records without a thread id: threads told apart by comm"
                             + (t.missingCPUs ? " (no CPU column either)" : "") + ", shown as negative VM ids")
            } else if !t.hasTGIDs {
                notes.append("no TGID column: each thread is its own VM")
            }
            if t.joinedLines > 0 { notes.append("\(t.joinedLines) split lines joined") }
            if t.callchainLines > 0 { notes.append("\(t.callchainLines) callchain lines skipped") }
            if t.proseLines > 0 { notes.append("\(t.proseLines) lines of other text skipped") }
            if t.reordered { notes.append("records were out of order and were sorted") }
            if !notes.isEmpty { lines.append("note: " + notes.joined(separator: "; ")) }
        }
        if traced.exit && !traced.entry { lines.append("note: kvm_entry not traced, no exit latency") }
        if let d = source as? TraceDatReader {
            // No kvm event in the whole file (a window that keeps none of a file that has some is refused before):
            // that is what happened, whoever wrote it — not a missing thread table, which only matters for events.
            if a.eventsKept == 0 && d.droppedPages > 0 {
                lines.append("note: the recording holds no kvm events: the pages that held them were not written (below)")
            } else if a.eventsKept == 0 {
                lines.append("note: the recording holds no kvm events: none fired in the threads it traced while it ran")
            } else if !d.hasTGIDs {
                lines.append("note: no thread → process table in the file (trace-cmd records none): each thread is its own VM")
            }
            // What kvmscope record wrote into the statistics: a recovered, truncated or --max-size-cut file.
            for note in d.recorderNotes {
                lines.append("note: " + note + (note.hasPrefix("dropped pages: ")
                    ? " (not written: --max-size reached or a write failed; their events are in no count here)" : ""))
            }
        }
        lines.append("")
        if let space = IOAnalysis(rawValue: event)?.space {
            // perf kvm stat report --event=ioport|mmio: only that analysis' tables, then losses and pairing.
            lines += IOAccessTableView.render(s, space: space, seconds: a.durationSeconds, top: top)
            lines.append("")
            lines += ReportTable.footer(s, pairingScope: pairingScope, pairingApplies: pairingApplies)
            return lines
        }
        // Its userspace exits named as the report's other tables, --reason and --json name them (KVM_EXIT_IO).
        lines += StatTable.render(s, previous: nil, seconds: max(a.durationSeconds, 1e-9), kvmStatNames: false)
        lines.append("")
        lines += Self.vmTable(s)
        lines.append("")
        if !resources.isEmpty {
            lines += Self.resourceTable(resources)
            lines.append("")
        }
        if byVCPU && Self.total(of: "kvm_exit", a) == 0 {
            lines += ReportTable.eventsByVCPU(s, top: top)
        } else {
            // A filter that keeps no exit of a trace that has some says so (not "No kvm_exit events.").
            let only = [pid.map { "-p \($0)" }, vcpu.map { "--vcpu \($0)" }, reason.map { "--reason \($0)" }].compactMap { $0 }
            let inTrace = Self.total(of: "kvm_exit", a)
            lines += ReportTable.render(s, byVCPU: byVCPU, top: top, key: key, onlyVCPU: vcpu,
                                        none: inTrace > 0 && !only.isEmpty
                ? "No kvm_exit events of \(only.joined(separator: " ")) (\(inTrace) of others in the trace)." : "No kvm_exit events.")
        }
        lines.append("")
        lines += ReportTable.footer(s, pairingScope: pairingScope, pairingApplies: pairingApplies)
        if let names = histogramNames {
            var h = HistogramSnapshot()
            for r in s.exits where names.contains(r.reason) { if let x = r.histogram { h.merge(x) } }
            lines.append("")
            lines += LatencyHistogramChart.render(h, title: "\(names.joined(separator: ", ")) exit→entry latency")
        }
        return lines
    }

    /// The pairing line counts every thread: with -p, --vcpu or --reason it says so (nil without them).
    var pairingScope: String? {
        let only = [pid.map { "-p \($0)" }, vcpu.map { "--vcpu \($0)" }, reason.map { "--reason \($0)" }].compactMap { $0 }
        return only.isEmpty ? nil : "all threads, not only " + only.joined(separator: " ")
    }

    /// One row per VM: its process id, guest name (QEMU `-name`, else the process's comm; `-` unknown), the
    /// vCPUs its events came from, its kvm events, exits (kvm_exit) and userspace exits (kvm_userspace_exit) —
    /// so a trace without kvm_exit still says which VM did what.
    static func vmTable(_ s: Summary) -> [String] {
        struct VM { var name: String?; var vcpus = Set<UInt32>(); var events: UInt64 = 0; var exits: UInt64 = 0; var user: UInt64 = 0 }
        var vms: [Int32: VM] = [:]
        for r in s.eventRows {
            vms[r.vm, default: VM(name: r.vmName)].events += r.count
            if let v = r.vcpu, r.count > 0 { vms[r.vm]!.vcpus.insert(v) }
        }
        for r in s.exits { vms[r.vm, default: VM(name: r.vmName)].exits += r.count }
        for r in s.userspaceExits { vms[r.vm, default: VM(name: r.vmName)].user += r.count }
        guard !vms.isEmpty else { return ["No VMs."] }
        var lines = [StatTable.lpad("VM", 8) + "  " + StatTable.pad("Name", 24) + StatTable.pad("vCPUs", 12)
                     + StatTable.lpad("Events", 12) + StatTable.lpad("Exits", 12) + StatTable.lpad("Userspace exits", 17)]
        var kernelThreads: [String] = []
        for (pid, vm) in vms.sorted(by: { ($0.value.events, $1.key) > ($1.value.events, $0.key) }) {
            let vcpus = vm.vcpus.sorted().map(String.init).joined(separator: ",")
            lines.append(StatTable.lpad(String(pid), 8) + "  " + StatTable.pad((vm.name ?? "-").terminalSafe, 24)
                         + StatTable.pad(vcpus.isEmpty ? "-" : vcpus, 12) + StatTable.lpad(String(vm.events), 12)
                         + StatTable.lpad(String(vm.exits), 12) + StatTable.lpad(String(vm.user), 17))
            if let name = vm.name, name.hasPrefix("["), name.hasSuffix("]") { kernelThreads.append("\(pid) \(name)".terminalSafe) }
        }
        // record names kernel threads in brackets (ps's habit): their kvm events are work the kernel did for some
        // VM (kdamond aging its pages: kvm_age_hva, kvm_test_age_hva), counted where the kernel attributed them.
        if !kernelThreads.isEmpty {
            lines.append("note: kernel threads, not VMs: " + kernelThreads.joined(separator: ", "))
        }
        return lines
    }

    /// What `record` sampled of each VM (kvmscope's option 0x4b02, `report --json`'s `resources`), one row per
    /// VM: seconds it was sampled, host CPU seconds (clock ticks: the process's, its vCPU threads', the rest:
    /// I/O threads, main loop), the vCPU threads' run-queue wait, RSS at the last sample, and bytes that reached
    /// storage (/proc/PID/io; `-` unreadable) — all growth over the recording. Then, for VMs recorded with
    /// `--qmp`, one row per block device: requests, bytes and average time per request (QEMU's
    /// `query-blockstats`; `-` without requests), or why the socket failed.
    static func resourceTable(_ vms: [VMResourceUse]) -> [String] {
        func secs(_ v: Double) -> String { String(format: "%.2fs", v) }
        func size(_ b: UInt64?) -> String {
            guard let b else { return "-" }
            if b < 1024 { return "\(b)B" }
            var v = Double(b) / 1024
            for unit in ["K", "M", "G", "T"] {
                if v < 1024 || unit == "T" { return String(format: "%.1f", v) + unit }
                v /= 1024
            }
            return "-"
        }
        func lat(_ ns: Double?) -> String { ns.map { Durations.adaptive(UInt64(saturating: $0.rounded())) } ?? "-" }
        var lines = ["Resources while recorded (/proc: host CPU time, vCPU run-queue wait, RSS at the end, storage bytes)",
                     StatTable.lpad("VM", 8) + "  " + StatTable.pad("Name", 24) + StatTable.lpad("Sampled", 8)
                     + StatTable.lpad("CPU", 9) + StatTable.lpad("vCPU", 9) + StatTable.lpad("Other", 9)
                     + StatTable.lpad("Wait", 10) + StatTable.lpad("RSS", 9) + StatTable.lpad("Read", 9)
                     + StatTable.lpad("Written", 9)]
        for vm in vms {
            let hz = Double(max(1, vm.ticksPerSecond))
            let cpu = vm.process.cpuTicks, vcpu = vm.vcpuTotal.cpuTicks
            var notes: [String] = []
            if vm.bornDuringRun { notes.append("started during the recording") }
            if vm.ended { notes.append("ended") }
            lines.append(StatTable.lpad(String(vm.vm), 8) + "  " + StatTable.pad(vm.name.terminalSafe, 24)
                         + StatTable.lpad(String(format: "%.1fs", vm.sampledSeconds), 8)
                         + StatTable.lpad(secs(Double(cpu) / hz), 9) + StatTable.lpad(secs(Double(vcpu) / hz), 9)
                         + StatTable.lpad(secs(Double(cpu.saturatingMinus(vcpu)) / hz), 9)
                         + StatTable.lpad(Durations.adaptive(vm.vcpuTotal.waitNanoseconds), 10)
                         + StatTable.lpad(size(vm.rssBytes), 9) + StatTable.lpad(size(vm.io?.readBytes), 9)
                         + StatTable.lpad(size(vm.io?.writeBytes), 9)
                         + (notes.isEmpty ? "" : "  " + notes.joined(separator: ", ")))
        }
        let qmp = vms.filter { $0.qmp != nil }
        guard !qmp.isEmpty else { return lines }
        lines += ["", "Block devices while recorded (QEMU's query-blockstats: requests, bytes, average time per request)",
                  StatTable.lpad("VM", 8) + "  " + StatTable.pad("Device", 24) + StatTable.lpad("RDRQ", 8)
                  + StatTable.lpad("WRRQ", 8) + StatTable.lpad("RDBY", 9) + StatTable.lpad("WRBY", 9)
                  + StatTable.lpad("RDLAT", 10) + StatTable.lpad("WRLAT", 10)]
        for vm in qmp {
            if let problem = vm.qmp?.problem {
                lines.append(StatTable.lpad(String(vm.vm), 8) + "  " + "(QMP: \(problem))".terminalSafe)
                continue
            }
            for d in vm.disks {
                let c = d.counts
                lines.append(StatTable.lpad(String(vm.vm), 8) + "  " + StatTable.pad(d.device.terminalSafe, 24)
                             + StatTable.lpad(String(c.readRequests), 8) + StatTable.lpad(String(c.writeRequests), 8)
                             + StatTable.lpad(size(c.readBytes), 9) + StatTable.lpad(size(c.writeBytes), 9)
                             + StatTable.lpad(lat(c.readLatencyNanoseconds), 10)
                             + StatTable.lpad(lat(c.writeLatencyNanoseconds), 10))
            }
        }
        return lines
    }

    func seconds(_ ns: UInt64) -> String {
        let frac = String(ns % 1_000_000_000)
        return "\(ns / 1_000_000_000)." + String(repeating: "0", count: 9 - frac.count) + frac
    }
}

/// `-k/--key` parsed once, from perf kvm stat's key names (`sample`, `time`, `max`, `min`, `mean`); any other
/// value is ArgumentParser's one line listing them.
extension ReportTable.SortKey: ExpressibleByArgument {}
