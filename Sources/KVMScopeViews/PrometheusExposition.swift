import KVMAnalysis
import KVMExits
import KVMResources

/// The two text formats `/metrics` speaks.
public enum ExpositionFormat: Sendable, Equatable {
    /// Prometheus text exposition format 0.0.4.
    case prometheus
    /// OpenMetrics 1.0.0 text.
    case openMetrics

    public var contentType: String {
        switch self {
        case .prometheus: "text/plain; version=0.0.4; charset=utf-8"
        case .openMetrics: "application/openmetrics-text; version=1.0.0; charset=utf-8"
        }
    }

    /// OpenMetrics when the request's Accept header lists `application/openmetrics-text`, else Prometheus text.
    public static func negotiate(accept: String?) -> ExpositionFormat {
        guard let accept else { return .prometheus }
        for item in accept.split(separator: ",") {
            let type = item.split(separator: ";").first.map { $0.filter { $0 != " " && $0 != "\t" }.lowercased() }
            if type == "application/openmetrics-text" { return .openMetrics }
        }
        return .prometheus
    }
}

/// What `/metrics` shows besides the summary.
public struct ExpositionExtras: Sendable {
    /// kvmscope's version, for `kvmscope_build_info`.
    public var version: String
    /// Events the kernel lost, per CPU (exact, from the instance's per-CPU stats).
    public var lostPerCPU: [Int: UInt64]
    /// Storm rules that have fired, for `kvmscope_storm_active`.
    public var storms: [StormActivity]
    /// Cap on the label sets of each per-VM family (`--max-series`); the rest fold into one `vm="other"` set.
    public var maxSeries: Int
    /// What each VM costs the host, for the resource families (``ResourceExposition``); none when nil.
    public var resources: ResourceSample?
    /// Only this VM's resource series (`serve -p`).
    public var resourcesPID: Int32?

    public init(version: String, lostPerCPU: [Int: UInt64] = [:], storms: [StormActivity] = [],
                maxSeries: Int = 10_000, resources: ResourceSample? = nil, resourcesPID: Int32? = nil) {
        self.version = version
        self.lostPerCPU = lostPerCPU
        self.storms = storms
        self.maxSeries = max(1, maxSeries)
        self.resources = resources
        self.resourcesPID = resourcesPID
    }
}

/// Renders a ``Summary`` as Prometheus text (0.0.4) or OpenMetrics 1.0.
///
/// Pure: the cost is one pass over the summary's rows, whatever the event rate.
///
/// ## Families
///
/// | name | type | labels |
/// |---|---|---|
/// | `kvmscope_build_info` | gauge (OpenMetrics: info) | `version` |
/// | `kvmscope_events_total` | counter | `event` |
/// | `kvmscope_exits_total` | counter | `vm`, `vm_name`, `vcpu`, `reason` (kvm_exit reasons) |
/// | `kvmscope_userspace_exits_total` | counter | `vm`, `vm_name`, `vcpu`, `reason` (KVM_EXIT_*) |
/// | `kvmscope_exit_latency_seconds` | histogram | `vm`, `vm_name`, `reason`, `blocking` |
/// | `kvmscope_exit_pairing_total` | counter | `result` |
/// | `kvmscope_lost_events_total` | counter | `cpu` |
/// | `kvmscope_lost_unknown_subbuffers_total` | counter | |
/// | `kvmscope_unattributed_events_total` | counter | |
/// | `kvmscope_series_overflow_total` | counter | |
/// | `kvmscope_storm_active` | gauge | `vm`, `vm_name`, `reason`, `rule` |
/// | `kvmscope_live_threads` | gauge | |
/// | `kvmscope_live_series` | gauge | |
/// | `kvmscope_retired_threads_total` | counter | |
/// | `kvmscope_retired_rows` | gauge | |
/// | `kvmscope_folded_vms_total` | counter | |
///
/// Occupancy (``Occupancy``): threads with rows of their own now, their (thread × reason) latency series, threads
/// retired since the start (exited or tid reused; their counts live on in their VM's rows), the VM × vCPU rows
/// kept for them, and stopped VMs beyond `serve --retired-vms` whose rows were summed into `vm="other"`.
///
/// VM -1 (stopped VMs beyond the retired-VM history, summed) is shown as `vm="other"`.
/// Only the two exit counters carry a `vcpu` label. A thread whose vCPU or VM name is unknown has `vcpu=""` or
/// `vm_name=""`.
///
/// ## Latency buckets
///
/// `le` bounds are fixed: 1, 2, 5 × 10ⁿ from 100 ns to 10 s (25 bounds, then `+Inf`). The internal log-linear
/// histogram's buckets are cumulated into them exactly: a bound counts every internal bucket whose values are
/// all ≤ the bound. An internal bucket straddling a bound (it is at most 1/64 of its lower edge wide) counts
/// at the next bound up, so a bound's count is the exact count of values ≤ the largest internal bucket edge
/// below it, which is within 1.6 % of the bound (e.g. `le="1e-06"` counts the values ≤ 999 ns). Values above
/// 100 s count only in `+Inf`. `_sum` is exact (ns / 1e9).
///
/// `blocking="true"` marks reasons where the guest waits rather than the host works (HLT): their "latency" is
/// time the vCPU slept. It is real data, exported, but storm latency rules ignore it unless they name it.
///
/// ## Cardinality
///
/// Each of the three per-VM families keeps at most `maxSeries` label sets: when there are more, the first
/// `maxSeries − 1` (ordered by VM, vCPU, reason) are kept and the rest are summed into one set whose labels are
/// all `"other"`: counted, never dropped. Rows are never removed during a trace, so that set's membership only
/// grows and its value is monotonic. `kvmscope_series_overflow_total` is the number of label sets folded.
public enum PrometheusExposition {
    /// The histogram's `le` bounds, ns.
    public static let latencyBoundsNs: [UInt64] = {
        var out: [UInt64] = []
        var decade: UInt64 = 100
        while decade <= 1_000_000_000 {
            out += [decade, decade * 2, decade * 5]
            decade *= 10
        }
        return out + [10_000_000_000]
    }()

    /// The `le` label of each bound, seconds, shortest round-trip spelling (`1e-07`, `0.0001`, `1.0`).
    static let latencyBoundLabels: [String] = latencyBoundsNs.map { "\(Double($0) / 1e9)" }

    public static func render(_ s: Summary, format: ExpositionFormat, extras: ExpositionExtras) -> String {
        var w = Writer(format: format)
        let om = format == .openMetrics

        w.family("kvmscope_build", om ? "info" : "gauge", "kvmscope build information.", suffix: "_info")
        w.sample("kvmscope_build_info", [("version", extras.version)], "1")

        w.family("kvmscope_events", "counter", "kvm tracepoint events seen, by event.")
        for e in s.events { w.sample("kvmscope_events_total", [("event", e.name)], String(e.total)) }

        var folded: UInt64 = 0
        w.family("kvmscope_exits", "counter", "VM exits (kvm_exit), by VM, vCPU and exit reason.")
        let exitRows = s.exits.map { r in
            (labels: [("vm", vmLabel(r.vm)), ("vm_name", r.vmName ?? ""), ("vcpu", r.vcpu.map(String.init) ?? ""),
                      ("reason", r.reason)], count: r.count)
        }
        folded += w.counters("kvmscope_exits_total", exitRows, max: extras.maxSeries)

        w.family("kvmscope_userspace_exits", "counter",
                 "Exits to the VMM (kvm_userspace_exit), by VM, vCPU and KVM_EXIT reason.")
        let userRows = s.userspaceExits.map { r in
            (labels: [("vm", vmLabel(r.vm)), ("vm_name", r.vmName ?? ""), ("vcpu", r.vcpu.map(String.init) ?? ""),
                      ("reason", r.reason)], count: r.count)
        }
        folded += w.counters("kvmscope_userspace_exits_total", userRows, max: extras.maxSeries)

        w.family("kvmscope_exit_latency_seconds", "histogram",
                 "Exit handling time, kvm_exit to the next kvm_entry of the thread; blocking=true: the guest halted.")
        if om { w.line("# UNIT kvmscope_exit_latency_seconds seconds") }
        var latencyRows: [(labels: [(String, String)], histogram: HistogramSnapshot)] = []
        for r in s.exitsByVM().sorted(by: { ($0.vm, $0.reason) < ($1.vm, $1.reason) }) {
            guard let h = r.histogram, h.count > 0 else { continue }
            latencyRows.append(([("vm", vmLabel(r.vm)), ("vm_name", r.vmName ?? ""), ("reason", r.reason),
                                 ("blocking", r.blocking ? "true" : "false")], h))
        }
        if latencyRows.count > extras.maxSeries {
            let keep = extras.maxSeries - 1
            var other = HistogramSnapshot()
            for r in latencyRows[keep...] { other.merge(r.histogram) }
            folded += UInt64(latencyRows.count - keep)
            latencyRows = Array(latencyRows[..<keep])
            latencyRows.append((Self.otherLabels(["vm", "vm_name", "reason", "blocking"]), other))
        }
        for r in latencyRows { w.histogram("kvmscope_exit_latency_seconds", r.labels, r.histogram) }

        w.family("kvmscope_exit_pairing", "counter", "How exits paired with entries, by result.")
        let p = s.pairing
        for (result, n) in [("paired", p.paired), ("orphan_exit", p.orphanExits), ("orphan_entry", p.orphanEntries),
                            ("open_at_end", p.openAtEnd),
                            ("invalidated_by_loss", p.invalidatedByLoss), ("negative_gap", p.negativeGaps),
                            ("overflow", p.overflow)] {
            w.sample("kvmscope_exit_pairing_total", [("result", result)], String(n))
        }

        w.family("kvmscope_lost_events", "counter", "Events the kernel dropped (ring buffer full), by CPU.")
        for (cpu, n) in extras.lostPerCPU.sorted(by: { $0.key < $1.key }) {
            w.sample("kvmscope_lost_events_total", [("cpu", String(cpu))], String(n))
        }
        w.family("kvmscope_lost_unknown_subbuffers", "counter",
                 "Sub-buffers the kernel flagged as having lost an unknown number of events.")
        w.sample("kvmscope_lost_unknown_subbuffers_total", [], String(s.lostUnknownSubbuffers))
        w.family("kvmscope_corrupt_subbuffers", "counter",
                 "Sub-buffers rejected as malformed; each lost an unknown number of events.")
        w.sample("kvmscope_corrupt_subbuffers_total", [], String(s.corruptSubbuffers))
        w.family("kvmscope_read_errors", "counter",
                 "Failed reads of a CPU's ring buffer; that CPU's reader stopped there.")
        w.sample("kvmscope_read_errors_total", [], String(s.readErrors))
        w.family("kvmscope_unattributed_events", "counter",
                 "Events counted in kvmscope_events_total but not per VM (per-thread table full).")
        w.sample("kvmscope_unattributed_events_total", [], String(s.overflowEvents))
        w.family("kvmscope_series_overflow", "counter",
                 "Label sets folded into the vm=other series by --max-series.")
        w.sample("kvmscope_series_overflow_total", [], String(folded))

        let o = s.occupancy
        w.family("kvmscope_live_threads", "gauge", "Threads with counters of their own now (seen, not retired).")
        w.sample("kvmscope_live_threads", [], String(o.liveThreads))
        w.family("kvmscope_live_series", "gauge", "Exit latency series (thread x exit reason) held now.")
        w.sample("kvmscope_live_series", [], String(o.liveSeries))
        w.family("kvmscope_retired_threads", "counter",
                 "Threads retired (exited or tid reused); their counts stay in their VM's series.")
        w.sample("kvmscope_retired_threads_total", [], String(o.retiredThreads))
        w.family("kvmscope_retired_rows", "gauge", "VM x vCPU rows kept for retired threads.")
        w.sample("kvmscope_retired_rows", [], String(o.retiredRows))
        w.family("kvmscope_folded_vms", "counter",
                 "Stopped VMs beyond --retired-vms whose counts were summed into vm=other.")
        w.sample("kvmscope_folded_vms_total", [], String(o.foldedVMs))

        w.family("kvmscope_storm_active", "gauge", "1 while a storm rule fires for a VM, 0 after it resolved.")
        for a in extras.storms {
            w.sample("kvmscope_storm_active", [("vm", String(a.vm)), ("vm_name", a.vmName ?? ""),
                                               ("reason", a.reason), ("rule", a.rule)], a.active ? "1" : "0")
        }
        if let r = extras.resources { ResourceExposition.write(r, onlyPID: extras.resourcesPID, into: &w) }
        if om { w.line("# EOF") }
        return w.out
    }

    static func otherLabels(_ names: [String]) -> [(String, String)] { names.map { ($0, "other") } }

    /// The `vm` label: the VM's pid, or "other" for VM -1 (retired VMs beyond the history, summed).
    static func vmLabel(_ vm: Int32) -> String { vm == -1 ? "other" : String(vm) }

    /// A label value with `\`, `"` and newline escaped (both formats).
    public static func escape(labelValue v: String) -> String {
        guard v.contains(where: { $0 == "\\" || $0 == "\"" || $0 == "\n" }) else { return v }
        var out = ""
        for c in v.unicodeScalars {
            switch c {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.unicodeScalars.append(c)
            }
        }
        return out
    }

    struct Writer {
        let format: ExpositionFormat
        var out = ""

        mutating func line(_ s: String) {
            out += s
            out += "\n"
        }

        /// `# HELP` and `# TYPE` of a family. Prometheus text names counters with their `_total` (and the info
        /// gauge with `_info`); OpenMetrics names the family without the suffix.
        mutating func family(_ name: String, _ type: String, _ help: String, suffix: String? = nil) {
            let full: String
            switch format {
            case .openMetrics: full = name
            case .prometheus: full = name + (suffix ?? (type == "counter" ? "_total" : ""))
            }
            line("# HELP \(full) \(help)")
            line("# TYPE \(full) \(type)")
        }

        mutating func sample(_ name: String, _ labels: [(String, String)], _ value: String) {
            out += name
            if !labels.isEmpty {
                out += "{"
                for (i, (k, v)) in labels.enumerated() {
                    if i > 0 { out += "," }
                    out += k
                    out += "=\""
                    out += PrometheusExposition.escape(labelValue: v)
                    out += "\""
                }
                out += "}"
            }
            out += " "
            out += value
            out += "\n"
        }

        /// Counter samples, capped at `max` label sets; returns how many were folded into the "other" set.
        mutating func counters(_ name: String, _ rows: [(labels: [(String, String)], count: UInt64)], max: Int) -> UInt64 {
            var rows = rows
            var folded: UInt64 = 0
            if rows.count > max {
                let keep = max - 1
                let other = rows[keep...].reduce(UInt64(0)) { $0 &+ $1.count }
                folded = UInt64(rows.count - keep)
                let names = rows[0].labels.map(\.0)
                rows = Array(rows[..<keep])
                rows.append((PrometheusExposition.otherLabels(names), other))
            }
            for r in rows { sample(name, r.labels, String(r.count)) }
            return folded
        }

        mutating func histogram(_ name: String, _ labels: [(String, String)], _ h: HistogramSnapshot) {
            let bounds = PrometheusExposition.latencyBoundsNs
            let names = PrometheusExposition.latencyBoundLabels
            var cumulative: UInt64 = 0
            var buckets = h.nonEmptyBuckets()[...]
            for (i, bound) in bounds.enumerated() {
                while let b = buckets.first, b.upper <= bound {
                    cumulative += b.count
                    buckets = buckets.dropFirst()
                }
                sample(name + "_bucket", labels + [("le", names[i])], String(cumulative))
            }
            sample(name + "_bucket", labels + [("le", "+Inf")], String(h.count))
            sample(name + "_sum", labels, "\(Double(h.sum) / 1e9)")
            sample(name + "_count", labels, String(h.count))
        }
    }
}
