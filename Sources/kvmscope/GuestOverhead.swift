import Foundation
import KVMAnalysis
import KVMExits
import KVMHost
import KVMScopeViews
import KVMSources

/// The guest-overhead benchmark: the storm guest's exit throughput untraced and under each tracer, every
/// tracer tracing every kvm event system-wide, as a separate process started before the storm and stopped
/// (SIGINT) after it. Tracer CPU is the tracer's whole process tree from start to exit (wait4), so
/// trace-cmd's recorder children and its final merge are included.
struct GuestOverhead {
    enum Tracer: String, CaseIterable {
        case none, kvmscope, perf, traceCmd = "trace-cmd"

        /// The row label, with the exact command.
        var label: String {
            switch self {
            case .none: "untraced"
            case .kvmscope: "kvmscope stat"
            case .perf: "perf stat -a -e 'kvm:*'"
            case .traceCmd: "trace-cmd record -d --no-filter -e kvm"
            }
        }
    }

    struct Row {
        var tracer: Tracer
        var available: Bool
        var note: String = ""
        var exitsPerSecond: [Double] = []
        var tracerCPU: [Double] = []
        var events: [UInt64] = []
        var lost: [UInt64] = []

        var medianRate: Double? { Self.median(exitsPerSecond) }
        var medianCPU: Double? { Self.median(tracerCPU) }
        var medianEvents: UInt64? { events.isEmpty ? nil : events.sorted()[events.count / 2] }
        var totalLost: UInt64? { lost.isEmpty ? nil : lost.reduce(0, +) }

        /// The slowest and fastest run's exits/s.
        var rateRange: (min: Double, max: Double)? {
            guard let lo = exitsPerSecond.min(), let hi = exitsPerSecond.max() else { return nil }
            return (lo, hi)
        }

        static func median(_ v: [Double]) -> Double? { v.isEmpty ? nil : v.sorted()[v.count / 2] }
    }

    /// kvmscope's exits/s ÷ trace-cmd's, round by round: the two runs of a round are back to back, so drift of the
    /// machine between rounds cancels. Sorted; empty when either row has no runs.
    func pairedRatios(_ rows: [Row]) -> [Double] {
        guard let ours = rows.first(where: { $0.tracer == .kvmscope && $0.available }),
              let peer = rows.first(where: { $0.tracer == .traceCmd && $0.available }) else { return [] }
        return zip(ours.exitsPerSecond, peer.exitsPerSecond).map { $0 / $1 }.sorted()
    }

    var kind: String
    var vcpus: UInt32
    var exits: UInt64
    var repeats: Int
    var tracers: [Tracer]
    /// Per-CPU ring-buffer size (KiB) given to kvmscope and trace-cmd alike; nil: each its own default.
    var bufferKB: UInt32?
    let selfPath = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
    let root = (try? TraceFS.root()) ?? "/sys/kernel/tracing"

    /// A row's label: the exact command, with the buffer size when one is set.
    func label(_ t: Tracer) -> String {
        guard let kb = bufferKB else { return t.label }
        switch t {
        case .kvmscope: return "kvmscope stat --buffer-kb \(kb)"
        case .traceCmd: return "trace-cmd record -d --no-filter -b \(kb) -e kvm"
        case .none, .perf: return t.label
        }
    }

    /// Runs every configuration `repeats` times, interleaved so drift hits them alike.
    func run(progress: (String) -> Void) throws -> [Row] {
        var rows = ([.none] + tracers.filter { $0 != .none }).map { t in
            Row(tracer: t, available: t == .none || t == .kvmscope || ChildProcess.which(t.rawValue) != nil,
                note: t == .none || t == .kvmscope || ChildProcess.which(t.rawValue) != nil ? "" : "not installed")
        }
        for r in 0..<repeats {
            for i in rows.indices where rows[i].available {
                progress("run \(r + 1)/\(repeats): \(label(rows[i].tracer))")
                do {
                    try measure(&rows[i])
                } catch {
                    rows[i].available = false
                    rows[i].note = "\(error)"
                }
            }
        }
        return rows
    }

    func stormArgs() -> [String] {
        [selfPath, "storm", "--kind", kind, "--vcpus", "\(vcpus)", "--exits", "\(exits)"]
    }

    func measure(_ row: inout Row) throws {
        let tag = "kvmbench-\(getpid())"
        let datPath = "\(NSTemporaryDirectory())\(tag).dat"
        var tracer: ChildProcess?
        switch row.tracer {
        case .none: break
        case .kvmscope:
            let t = try ChildProcess([selfPath, "stat", "--json"] + (bufferKB.map { ["--buffer-kb", "\($0)"] } ?? []))
            try waitForInstance("\(TraceFS.instancePrefix)\(t.pid)", of: t)
            tracer = t
        case .perf:
            let t = try ChildProcess(["perf", "stat", "-a", "-e", "kvm:*"])
            usleep(1_500_000)  // perf has no readiness signal; it opens every kvm tracepoint within this
            guard t.isRunning else { throw KVMScopeError.usage("perf stat failed: \(t.stderr.prefix(200))") }
            tracer = t
        case .traceCmd:
            // Its own instance (-B), never the global buffer; -d --no-filter: the kernel here is locked down.
            let t = try ChildProcess(["trace-cmd", "record", "-B", tag, "-d", "--no-filter"]
                                     + (bufferKB.map { ["-b", "\($0)"] } ?? []) + ["-e", "kvm", "-o", datPath])
            try waitForInstance(tag, of: t)
            tracer = t
        }
        let storm = try ChildProcess(stormArgs())
        let st = try storm.wait()
        guard st.status == 0, let json = Self.jsonObject(storm.stdout),
              let rate = (json["exits_per_second"] as? NSNumber)?.doubleValue else {
            tracer?.signal(SIGINT)
            _ = try? tracer?.wait()
            if row.tracer == .traceCmd { TraceFS.removeInstance(tag, root: root) }
            throw KVMScopeError.usage("storm failed: \(storm.stderr.prefix(200))")
        }
        row.exitsPerSecond.append(rate)
        guard let tracer else { return }
        tracer.signal(SIGINT)
        let t = try tracer.wait()
        row.tracerCPU.append(t.cpuSeconds)
        switch row.tracer {
        case .kvmscope:
            if let j = Self.jsonObject(tracer.stdout) {
                let events = (j["events"] as? [String: Any])?.values.compactMap { ($0 as? NSNumber)?.uint64Value } ?? []
                row.events.append(events.reduce(0, +))
                row.lost.append((j["lost_events"] as? NSNumber)?.uint64Value ?? 0)
            }
        case .perf:
            // "      400000      kvm:kvm_fpu"
            var sum: UInt64 = 0
            for line in tracer.stderr.split(separator: "\n") where line.contains("kvm:") {
                sum += UInt64(line.split(separator: " ").first?.replacingOccurrences(of: ",", with: "") ?? "") ?? 0
            }
            row.events.append(sum)
        case .traceCmd:
            let stat = try ChildProcess(["trace-cmd", "report", "--stat", datPath])
            _ = try stat.wait()
            var read: UInt64 = 0
            var lost: UInt64 = 0
            for line in stat.stdout.split(separator: "\n") {
                if line.hasPrefix("read events:") { read += UInt64(line.split(separator: " ").last ?? "") ?? 0 }
                if line.hasPrefix("overrun:") || line.hasPrefix("dropped events:") {
                    lost += UInt64(line.split(separator: " ").last ?? "") ?? 0
                }
            }
            row.events.append(read)
            row.lost.append(lost)
            unlink(datPath)
            TraceFS.removeInstance(tag, root: root)
        case .none: break
        }
    }

    /// Waits until the tracer's instance exists and is tracing (at most 10 s).
    func waitForInstance(_ name: String, of t: ChildProcess) throws {
        let path = "\(root)/instances/\(name)/tracing_on"
        for _ in 0..<1000 {
            if let on = try? String(contentsOfFile: path, encoding: .utf8), on.hasPrefix("1") {
                usleep(200_000)  // its readers open their buffers right after
                return
            }
            guard t.isRunning else { throw KVMScopeError.usage("\(t.argv[0]) ended: \(t.stderr.prefix(200))") }
            usleep(10_000)
        }
        t.signal(SIGKILL)
        _ = try? t.wait()
        TraceFS.removeInstance(name, root: root)
        throw KVMScopeError.usage("\(t.argv[0]) did not start tracing within 10 s")
    }

    static func jsonObject(_ text: String) -> [String: Any]? {
        guard let data = text.data(using: .utf8),
              let o = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return nil }
        return o
    }

    // MARK: output

    func markdown(_ rows: [Row]) -> [String] {
        let base = rows.first { $0.tracer == .none }?.medianRate
        var out = ["| tracer | exits/s | runs: slowest–fastest | vs untraced | tracer CPU s | tracer CPU ns/event | events traced | lost |",
                   "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows {
            guard r.available, let rate = r.medianRate, let range = r.rateRange else {
                out.append("| \(label(r.tracer)) | — | — | — | — | — | — | \(r.note.isEmpty ? "n/a" : r.note) |")
                continue
            }
            let ratio = base.map { String(format: "%.2f×", rate / $0) } ?? "—"
            let cpu = r.medianCPU.map { String(format: "%.2f", $0) } ?? "—"
            let perEvent = r.medianCPU.flatMap { c in r.medianEvents.flatMap { $0 > 0 ? String(format: "%.0f", c * 1e9 / Double($0)) : nil } } ?? "—"
            out.append("| \(label(r.tracer)) | \(Int(rate)) | \(Int(range.min))–\(Int(range.max)) | \(ratio) | \(cpu) | \(perEvent) | \(r.medianEvents.map(String.init) ?? "—") | \(r.totalLost.map(String.init) ?? "—") |")
        }
        return out
    }

    /// What the spread says of the kvmscope-vs-trace-cmd difference, as one line (nil without both rows): the
    /// round-by-round ratio's median and range, and the untraced runs' own spread (slowest and fastest against
    /// their median).
    func spreadNote(_ rows: [Row]) -> String? {
        let paired = pairedRatios(rows)
        guard let mid = GuestOverhead.Row.median(paired), let lo = paired.first, let hi = paired.last else { return nil }
        var line = String(format: "kvmscope ÷ trace-cmd, round by round (%d rounds): median %.3f, slowest–fastest %.3f–%.3f",
                          paired.count, mid, lo, hi)
        if let none = rows.first(where: { $0.tracer == .none }), let m = none.medianRate, let r = none.rateRange, m > 0 {
            line += String(format: "; untraced runs %+.1f %% to %+.1f %% of their median", (r.min / m - 1) * 100, (r.max / m - 1) * 100)
        }
        if lo < 1 && hi >= 1 { line += ": the rounds disagree on which is faster, the difference is within the machine's spread" }
        return line + "."
    }

    /// The one-line verdict in the harness's table format: kvmscope's slowdown against trace-cmd's.
    func verdict(_ rows: [Row]) -> String {
        let base = rows.first { $0.tracer == .none }?.medianRate
        let ours = rows.first { $0.tracer == .kvmscope }?.medianRate
        let peer = rows.first { $0.tracer == .traceCmd && $0.available }?.medianRate
        guard let base, let ours else { return "| guest overhead | — | — | — | ≤ trace-cmd | pending |" }
        let o = ours / base
        guard let peer else {
            return String(format: "| guest overhead (exits/s vs untraced) | %.2f× | n/a | — | ≤ trace-cmd | n/a |", o)
        }
        let p = peer / base
        let paired = pairedRatios(rows)
        let met = o >= p * 0.98 ? "yes" : (paired.last ?? 0) >= 1 ? "not settled (within the spread)" : "no"
        return String(format: "| guest overhead (exits/s vs untraced) | %.2f× | %.2f× (trace-cmd) | %.2f | ≥ trace-cmd | %@ |",
                      o, p, o / p, met)
    }

    func json(_ rows: [Row]) -> JSONValue {
        let base = rows.first { $0.tracer == .none }?.medianRate
        let paired = pairedRatios(rows)
        return .object([
            ("kind", .string(kind)), ("vcpus", .uint(UInt64(vcpus))), ("exits_per_vcpu", .uint(exits)),
            ("repeat", .uint(UInt64(repeats))),
            ("results", .array(rows.map { r in
                var o: [(String, JSONValue)] = [("tracer", .string(r.tracer.rawValue)), ("command", .string(label(r.tracer))),
                                                ("available", .bool(r.available && r.medianRate != nil))]
                if !r.note.isEmpty { o.append(("note", .string(r.note))) }
                if let rate = r.medianRate {
                    o.append(("exits_per_second", .double(rate.rounded())))
                    if let base { o.append(("ratio_to_untraced", .double((rate / base * 1000).rounded() / 1000))) }
                    o.append(("runs_exits_per_second", .array(r.exitsPerSecond.map { .double($0.rounded()) })))
                    if r.tracer == .kvmscope, !paired.isEmpty {
                        // Round by round against trace-cmd's run of the same round (sorted).
                        o.append(("runs_ratio_to_trace_cmd", .array(paired.map { .double(($0 * 1000).rounded() / 1000) })))
                    }
                }
                if let c = r.medianCPU { o.append(("tracer_cpu_s", .double((c * 1000).rounded() / 1000))) }
                if let e = r.medianEvents { o.append(("events", .uint(e))) }
                if let l = r.totalLost { o.append(("lost", .uint(l))) }
                return .object(o)
            })),
        ])
    }
}
