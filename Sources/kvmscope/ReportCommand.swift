import ArgumentParser
import Foundation
import KVMAnalysis
import KVMExits
import KVMHost
import KVMScopeViews
import KVMSources

struct ReportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "report",
        abstract: "Analyse recorded traces: trace.dat, kernel trace text, trace-cmd report or perf script output.",
        discussion: """
            Each FILE gets its own report (files are not merged: different recordings have different clocks).
            The analysis is the live one: counts per event, exits per VM/vCPU/reason, exit→entry latencies
            (pairing by thread), top RIPs, losses. Blocking exits (HLT) are marked * and kept out of Time%.
            In text traces without a TGID column each thread counts as its own VM.
              kvmscope report trace.txt
              kvmscope report --by-vcpu --histogram MSR_WRITE trace.txt
              kvmscope report --json --from 1.5 --to 2.5 trace.dat
              kvmscope report --html exits.html trace.txt
            """)

    @Argument(help: "Trace files.")
    var files: [String]

    @Flag(help: "Print the JSON summary (the same as stat --json, plus a \"source\" object); an array for several files.")
    var json = false

    @Flag(help: "Print CSV: one row per file × VM × vCPU × reason.")
    var csv = false

    @Option(help: "Keep events from this many seconds after the trace's first event.")
    var from: Double?

    @Option(help: "Keep events until this many seconds after the trace's first event.")
    var to: Double?

    @Option(name: [.customShort("p"), .long], help: "Only this VM (its process id; the thread id when the trace has no tgids).")
    var pid: Int32?

    @Option(help: "Only this vCPU.")
    var vcpu: UInt32?

    @Option(help: "Only this exit reason (as printed, e.g. HLT, MSR_WRITE, npf).")
    var reason: String?

    @Option(help: "At most N reasons per table.")
    var top: Int?

    @Flag(name: .customLong("by-vcpu"), help: "One table per VM × vCPU instead of per VM.")
    var byVCPU = false

    @Option(help: "Also print a histogram of this reason's latencies.")
    var histogram: String?

    @Option(help: "Write a self-contained HTML page (exit-rate timeline, latency heatmap) to this file.")
    var html: String?

    func validate() throws {
        if json && csv { throw ValidationError("--json and --csv cannot be used together") }
        if let from, from < 0 { throw ValidationError("--from must be ≥ 0") }
        if let to, to <= (from ?? 0) { throw ValidationError("--to must be greater than --from") }
        if let top, top < 1 { throw ValidationError("--top must be ≥ 1") }
        if html != nil && files.count != 1 { throw ValidationError("--html takes exactly one trace file") }
    }

    var filter: SummaryFilter {
        SummaryFilter(vms: pid.map { [$0] }, vcpus: vcpu.map { [$0] }, reasons: reason.map { [$0] })
    }

    func run() {
        var jsonValues: [JSONValue] = []
        if csv { writeStdout(ReportTable.csvHeader + "\n") }
        for (n, file) in files.enumerated() {
            let source = reportingErrors { try TraceFiles.open(file) }
            let analysis = reportingErrors {
                try ReportAnalysis.run(source, from: from, to: to, timelineBins: html == nil ? nil : 240)
            }
            let summary = reportingErrors { try Summary(analysis.snapshot, filter: filter) }
            if json {
                jsonValues.append(SummaryJSON.value(summary, durationSeconds: analysis.durationSeconds,
                                                    extra: [("source", sourceJSON(file, source, analysis))]))
            } else if csv {
                let rows = ReportTable.csvRows(summary, file: file)
                if !rows.isEmpty { writeStdout(rows.joined(separator: "\n") + "\n") }
            } else {
                if n > 0 { writeStdout("\n") }
                writeStdout(text(file, source, analysis, summary).joined(separator: "\n") + "\n")
            }
            if let html, let timeline = analysis.timeline {
                let page = HTMLReport.render(ExitTimelineView(timeline, snapshot: analysis.snapshot, filter: filter),
                                             title: (file as NSString).lastPathComponent)
                guard FileManager.default.createFile(atPath: html, contents: Data(page.utf8)) else {
                    fail("cannot write \(html)")
                }
            }
        }
        if json {
            let v = jsonValues.count == 1 ? jsonValues[0] : .array(jsonValues)
            writeStdout(v.serialized(pretty: true) + "\n")
        }
    }

    static func describe(_ source: TraceSource) -> String {
        if let t = source as? TextTraceReader { return t.style.rawValue }
        return "trace.dat"
    }

    func sourceJSON(_ file: String, _ source: TraceSource, _ a: ReportAnalysis) -> JSONValue {
        var o: [(String, JSONValue)] = [("file", .string(file)), ("format", .string(Self.describe(source))),
                                        ("first_ns", .uint(a.first)), ("last_ns", .uint(a.last)),
                                        ("events_kept", .uint(a.eventsKept))]
        if let t = source as? TextTraceReader {
            o += [("records", .uint(UInt64(t.records))), ("joined_lines", .uint(UInt64(t.joinedLines))),
                  ("skipped_lines", .uint(UInt64(t.skippedLines))), ("vm_is", .string(t.hasTGIDs ? "tgid" : "tid"))]
        }
        return .object(o)
    }

    func text(_ file: String, _ source: TraceSource, _ a: ReportAnalysis, _ s: Summary) -> [String] {
        var lines = ["\(file): \(Self.describe(source)), \(a.eventsKept) kvm events over "
                     + "\(Durations.adaptive(a.last &- a.first)) (\(seconds(a.first)) → \(seconds(a.last)))"]
        if let t = source as? TextTraceReader {
            var notes: [String] = []
            if !t.hasTGIDs { notes.append("no TGID column: each thread is its own VM") }
            if t.joinedLines > 0 { notes.append("\(t.joinedLines) split lines joined") }
            if t.reordered { notes.append("records were out of order and were sorted") }
            if !notes.isEmpty { lines.append("note: " + notes.joined(separator: "; ")) }
        }
        lines.append("")
        lines += StatTable.render(s, previous: nil, seconds: max(a.durationSeconds, 1e-9), children: false)
        lines.append("")
        lines += ReportTable.render(s, byVCPU: byVCPU, top: top)
        lines.append("")
        lines += ReportTable.footer(s)
        if let name = histogram {
            var h = HistogramSnapshot()
            for r in s.exits where r.reason == name { if let x = r.histogram { h.merge(x) } }
            lines.append("")
            lines += LatencyHistogramChart.render(h, title: "\(name) exit→entry latency")
        }
        return lines
    }

    func seconds(_ ns: UInt64) -> String {
        let frac = String(ns % 1_000_000_000)
        return "\(ns / 1_000_000_000)." + String(repeating: "0", count: 9 - frac.count) + frac
    }
}
