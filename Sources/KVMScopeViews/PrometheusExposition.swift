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

    /// OpenMetrics when the request's Accept header weighs `application/openmetrics-text` at least as high as
    /// Prometheus text (`text/plain`, `text/*`, `*/*`) by their `q` values (1 when absent; `q=0` refuses), else
    /// Prometheus text — as Prometheus' own client libraries negotiate.
    public static func negotiate(accept: String?) -> ExpositionFormat {
        guard let accept else { return .prometheus }
        var openMetrics = 0.0, text = 0.0
        for item in accept.split(separator: ",") {
            let parts = item.split(separator: ";").map { $0.filter { $0 != " " && $0 != "\t" }.lowercased() }
            guard let type = parts.first else { continue }
            var q = 1.0
            for p in parts.dropFirst() where p.hasPrefix("q=") { q = Double(p.dropFirst(2)).map { min(max($0, 0), 1) } ?? 0 }
            if type == "application/openmetrics-text" {
                openMetrics = max(openMetrics, q)
            } else if type == "text/plain" || type == "text/*" || type == "*/*" {
                text = max(text, q)
            }
        }
        return openMetrics > 0 && openMetrics >= text ? .openMetrics : .prometheus
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
    /// The `kvmscope_vcpu_*` counters' values by pid and vCPU number: running totals over every thread that was
    /// that vCPU (``VCPUTimeTotals``), so they never go down when a thread is replaced. nil: each live vCPU
    /// thread's own times, as `resources` has them.
    public var vcpuTotals: [Int32: [UInt32: ThreadTimes]]?
    /// kvmscope's own process, for the `process_*` families Prometheus clients export; none when nil.
    public var process: ProcessSelf?

    public init(version: String, lostPerCPU: [Int: UInt64] = [:], storms: [StormActivity] = [],
                maxSeries: Int = 10_000, resources: ResourceSample? = nil, resourcesPID: Int32? = nil,
                vcpuTotals: [Int32: [UInt32: ThreadTimes]]? = nil, process: ProcessSelf? = nil) {
        self.vcpuTotals = vcpuTotals
        self.process = process
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
/// | `kvmscope_io_exits_total` | counter | `vm`, `vm_name`, `space` (`port`, `mmio`), `device` |
/// | `kvmscope_io_unattributed_events_total` | counter | `space` |
/// | `kvmscope_exit_latency_seconds` | histogram | `vm`, `vm_name`, `reason`, `blocking` |
/// | `kvmscope_exit_pairing_total` | counter | `result` |
/// | `kvmscope_lost_events_total` | counter | `cpu` |
/// | `kvmscope_lost_unknown_subbuffers_total` | counter | |
/// | `kvmscope_unattributed_events_total` | counter | |
/// | `kvmscope_series_overflow_total` | counter | |
/// | `kvmscope_storm_active` | gauge | `vm`, `vm_name`, `vcpu` (per-vCPU rules only), `reason`, `rule` |
/// | `kvmscope_live_threads` | gauge | |
/// | `kvmscope_live_series` | gauge | |
/// | `kvmscope_retired_threads_total` | counter | |
/// | `kvmscope_retired_rows` | gauge | |
/// | `kvmscope_thread_exits_total` | counter | |
/// | `kvmscope_retired_on_exit_total` | counter | |
/// | `kvmscope_folded_vms_total` | counter | |
/// | `process_cpu_seconds_total` | counter | | kvmscope's own CPU time (``ProcessSelf``), as client_golang's process collector |
/// | `process_resident_memory_bytes`, `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`, `process_start_time_seconds` | gauge | |
///
/// Occupancy (``Occupancy``): threads with rows of their own now, their (thread × reason) latency series, threads
/// retired since the start (exited or tid reused; their counts live on in their VM's rows), the VM × vCPU rows
/// kept for them, and stopped VMs beyond `serve --retired-vms` whose rows were summed into `vm="other"`. A session
/// that traces `sched:sched_process_exit` (serve, watch) adds the exit records seen and the threads retired on
/// them (``Occupancy/threadExits``, ``Occupancy/retiredOnExit``); no other source has these two.
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
/// `kvmscope_io_exits_total` sums ``IOAccessSummary/byDevice()``: every port and MMIO address named by the VM's
/// ``DeviceMap`` (the caller names the summary's rows: QMP BARs laid over ``DeviceMap/standardPC``); addresses
/// no range holds count under `device="unknown"`, so its label sets are bounded by devices, not addresses. A
/// retired thread's accesses stay its VM's (frozen under its VM's retired row when it retires, so a new thread
/// reusing the tid counts afresh), and a VM folded into `vm="other"` moves its rows there with its other counters.
///
/// Each of the four per-VM families keeps at most `maxSeries` label sets: when there are more, the first
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
    static let latencyBoundLabelBytes: [[UInt8]] = latencyBoundLabels.map { Array($0.utf8) }

    public static func render(_ s: Summary, format: ExpositionFormat, extras: ExpositionExtras) -> String {
        String(decoding: renderUTF8(s, format: format, extras: extras), as: UTF8.self)
    }

    /// ``render(_:format:extras:)``'s text as UTF-8 bytes, what `/metrics` sends (no String is made of it).
    public static func renderUTF8(_ s: Summary, format: ExpositionFormat, extras: ExpositionExtras) -> [UInt8] {
        let latency = LatencyBuckets(s.exits)
        // ~100 bytes per counter row and 29 lines of ~110 bytes per VM × reason: one allocation for most scrapes.
        var w = Writer(format: format, capacity: 8192 + (s.exits.count + s.userspaceExits.count) * 112
                                                 + latency.count * 29 * 120)
        let om = format == .openMetrics

        w.family("kvmscope_build", om ? "info" : "gauge", "kvmscope build information.", suffix: "_info")
        w.sample("kvmscope_build_info", [("version", extras.version)], "1")

        // kvmscope itself, under the names every Prometheus client's process collector uses.
        if let p = extras.process {
            w.family("process_cpu_seconds", "counter", "Total user and system CPU time spent in seconds.")
            w.sample("process_cpu_seconds_total", [], String(p.cpuSeconds))
            w.family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.")
            w.sample("process_resident_memory_bytes", [], String(p.residentBytes))
            w.family("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.")
            w.sample("process_virtual_memory_bytes", [], String(p.virtualBytes))
            w.family("process_open_fds", "gauge", "Number of open file descriptors.")
            w.sample("process_open_fds", [], String(p.openFDs))
            if let max = p.maxFDs {
                w.family("process_max_fds", "gauge", "Maximum number of open file descriptors.")
                w.sample("process_max_fds", [], String(max))
            }
            w.family("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.")
            w.sample("process_start_time_seconds", [], String(p.startTimeSeconds))
        }

        w.family("kvmscope_events", "counter", "kvm tracepoint events seen, by event.")
        for e in s.events { w.sample("kvmscope_events_total", [("event", e.name)], String(e.total)) }

        var folded: UInt64 = 0
        w.family("kvmscope_exits", "counter", "VM exits (kvm_exit), by VM, vCPU and exit reason.")
        folded += w.perVCPUCounters("kvmscope_exits_total", rows: s.exits.count, max: extras.maxSeries) {
            (s.exits[$0].vm, s.exits[$0].vmName, s.exits[$0].vcpu, s.exits[$0].reason, s.exits[$0].count)
        }

        w.family("kvmscope_userspace_exits", "counter",
                 "Exits to the VMM (kvm_userspace_exit), by VM, vCPU and KVM_EXIT reason.")
        let user = s.userspaceExits
        folded += w.perVCPUCounters("kvmscope_userspace_exits_total", rows: user.count, max: extras.maxSeries) {
            (user[$0].vm, user[$0].vmName, user[$0].vcpu, user[$0].reason, user[$0].count)
        }

        w.family("kvmscope_io_exits", "counter",
                 "I/O exits (kvm_pio, kvm_mmio), by VM, address space and the device owning the port or address.")
        folded += w.ioExits("kvmscope_io_exits_total", s.ioAccesses.byDevice(), max: extras.maxSeries)
        w.family("kvmscope_io_unattributed_events", "counter",
                 "kvm_pio/kvm_mmio events not counted per port or address (per-address table full), by space.")
        w.sample("kvmscope_io_unattributed_events_total", [("space", "port")], String(s.ioAccesses.overflow.port))
        w.sample("kvmscope_io_unattributed_events_total", [("space", "mmio")], String(s.ioAccesses.overflow.mmio))

        w.family("kvmscope_exit_latency_seconds", "histogram",
                 "Exit handling time, kvm_exit to the next kvm_entry of the thread; blocking=true: the guest halted.")
        if om { w.line("# UNIT kvmscope_exit_latency_seconds seconds") }
        folded += w.latencyHistograms("kvmscope_exit_latency_seconds", latency, max: extras.maxSeries)

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
        if let exits = o.threadExits {
            // Only from a live session that traces sched:sched_process_exit (serve, watch).
            w.family("kvmscope_thread_exits", "counter",
                     "Thread exit records (sched:sched_process_exit) of the traced processes, vCPU threads or not.")
            w.sample("kvmscope_thread_exits_total", [], String(exits))
            w.family("kvmscope_retired_on_exit", "counter",
                     "Threads of kvmscope_retired_threads_total retired on their exit record (the others found gone from /proc).")
            w.sample("kvmscope_retired_on_exit_total", [], String(o.retiredOnExit))
        }

        w.family("kvmscope_storm_active", "gauge", "1 while a storm rule fires for a VM, 0 after it resolved.")
        for a in extras.storms {
            // A per-vCPU rule's series carry the vCPU; a per-VM rule's have no vcpu label.
            let vcpu: [(String, String)] = a.vcpu.map { [("vcpu", String($0))] } ?? []
            w.sample("kvmscope_storm_active", [("vm", String(a.vm)), ("vm_name", a.vmName ?? "")] + vcpu
                                               + [("reason", a.reason), ("rule", a.rule)], a.active ? "1" : "0")
        }
        if let r = extras.resources { ResourceExposition.write(r, onlyPID: extras.resourcesPID, vcpuTotals: extras.vcpuTotals, into: &w) }
        if om { w.line("# EOF") }
        return w.bytes
    }

    static func otherLabels(_ names: [String]) -> [(String, String)] { names.map { ($0, "other") } }

    /// The `vm` label: the VM's pid, or "other" for VM -1 (retired VMs beyond the history, summed).
    static func vmLabel(_ vm: Int32) -> String { vm == -1 ? "other" : String(vm) }

    /// A label value with `\`, `"` and newline escaped (both formats). Byte by byte: a newline is escaped
    /// wherever it is, also as the second half of a CR LF pair.
    public static func escape(labelValue v: String) -> String {
        guard v.utf8.contains(where: { $0 == UInt8(ascii: "\\") || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\n") })
        else { return v }
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

    /// For each internal histogram bucket, the first `le` bound (index into ``latencyBoundsNs``) that counts it:
    /// the first bound ≥ the bucket's upper edge; `latencyBoundsNs.count` for buckets only `+Inf` counts.
    static let boundOfBucket: [UInt8] = (0..<HistogramSnapshot.bucketCount).map { i in
        let upper = HistogramSnapshot.upperBound(ofBucket: i)
        return UInt8(latencyBoundsNs.firstIndex { upper <= $0 } ?? latencyBoundsNs.count)
    }

    /// The exit rows' latency per VM × reason (× ISA × flags), as ``Summary/exitsByVM()`` groups them (same
    /// groups, same first-seen order), reduced to what the histogram family prints: per `le` bound the count of
    /// values it adds, the count and the sum. No histogram is merged or copied: each row's sparse buckets are
    /// added to its group's bound counts.
    struct LatencyBuckets {
        struct Group {
            var vm: Int32
            var vmName: String?
            var reason: String
            var blocking: Bool
            var count: UInt64 = 0
            var sum: UInt64 = 0
        }

        /// Groups with a non-empty histogram, ordered by VM then reason (stable: ``Summary/exitsByVM()``'s order
        /// among equals).
        var groups: [Group] = []
        /// `perBound[g * stride + j]`: values of group `g` that bound `j` adds (j = bounds count: `+Inf` only).
        var perBound: [UInt64] = []
        static var stride: Int { PrometheusExposition.latencyBoundsNs.count + 1 }
        var count: Int { groups.count }

        init(_ exits: [ExitRow]) {
            struct Key: Hashable {
                var vm: Int32
                var isa: UInt8
                var reason: String
                var flags: [String]
            }
            var index: [Key: Int] = [:]
            var all: [Group] = []
            var bounds: [UInt64] = []
            let table = PrometheusExposition.boundOfBucket
            let stride = Self.stride
            index.reserveCapacity(exits.count / 4)
            for r in exits.indices {
                let key = Key(vm: exits[r].vm, isa: exits[r].isa.rawValue, reason: exits[r].reason, flags: exits[r].flags)
                let g: Int
                if let i = index[key] {
                    g = i
                } else {
                    g = all.count
                    index[key] = g
                    all.append(Group(vm: exits[r].vm, vmName: exits[r].vmName, reason: exits[r].reason,
                                     blocking: exits[r].blocking))
                    bounds.append(contentsOf: repeatElement(0, count: stride))
                }
                guard let h = exits[r].histogram, h.count > 0 else { continue }
                all[g].count += h.count
                all[g].sum &+= h.sum
                let base = g * stride
                for (i, c) in zip(h.bucketIndices, h.counts) { bounds[base + Int(table[Int(i)])] += c }
            }
            let order = all.indices.filter { all[$0].count > 0 }.sorted {
                (all[$0].vm, all[$0].reason, $0) < (all[$1].vm, all[$1].reason, $1)
            }
            groups.reserveCapacity(order.count)
            perBound.reserveCapacity(order.count * stride)
            for g in order {
                groups.append(all[g])
                perBound.append(contentsOf: bounds[g * stride..<(g + 1) * stride])
            }
        }
    }

    /// The text, as UTF-8 bytes appended to one buffer: no String is built per line or label.
    struct Writer {
        let format: ExpositionFormat
        var bytes: [UInt8] = []
        /// A label set being assembled (reused).
        var scratch: [UInt8] = []

        init(format: ExpositionFormat, capacity: Int = 0) {
            self.format = format
            bytes.reserveCapacity(capacity)
        }

        mutating func append(_ s: String) { bytes.append(contentsOf: s.utf8) }

        mutating func append(ascii s: StaticString) {
            s.withUTF8Buffer { bytes.append(contentsOf: $0) }
        }

        mutating func line(_ s: String) {
            append(s)
            bytes.append(UInt8(ascii: "\n"))
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
            append(name)
            if !labels.isEmpty {
                bytes.append(UInt8(ascii: "{"))
                for (i, (k, v)) in labels.enumerated() {
                    if i > 0 { bytes.append(UInt8(ascii: ",")) }
                    append(k)
                    append(ascii: "=\"")
                    Self.escaped(v, into: &bytes)
                    bytes.append(UInt8(ascii: "\""))
                }
                bytes.append(UInt8(ascii: "}"))
            }
            bytes.append(UInt8(ascii: " "))
            append(value)
            bytes.append(UInt8(ascii: "\n"))
        }

        /// A label value, escaped as ``PrometheusExposition/escape(labelValue:)`` does.
        static func escaped(_ v: String, into out: inout [UInt8]) {
            let bs = UInt8(ascii: "\\"), quote = UInt8(ascii: "\""), nl = UInt8(ascii: "\n")
            guard v.utf8.contains(where: { $0 == bs || $0 == quote || $0 == nl }) else {
                out.append(contentsOf: v.utf8)
                return
            }
            for b in v.utf8 {
                switch b {
                case bs: out.append(contentsOf: [bs, bs])
                case quote: out.append(contentsOf: [bs, quote])
                case nl: out.append(contentsOf: [bs, UInt8(ascii: "n")])
                default: out.append(b)
                }
            }
        }

        /// Decimal digits of `v`, as `String(v)` spells them.
        static func decimal(_ v: UInt64, into out: inout [UInt8]) {
            if v < 10 {
                out.append(UInt8(ascii: "0") &+ UInt8(truncatingIfNeeded: v))
                return
            }
            var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)
            withUnsafeMutableBytes(of: &digits) { p in
                var i = p.count
                var x = v
                repeat {
                    i -= 1
                    p[i] = UInt8(ascii: "0") &+ UInt8(truncatingIfNeeded: x % 10)
                    x /= 10
                } while x > 0
                out.append(contentsOf: UnsafeRawBufferPointer(rebasing: p[i...]))
            }
        }

        /// `vm="…",vm_name="…"` (the `vm` label as ``PrometheusExposition/vmLabel(_:)`` spells it).
        static func vmLabels(_ vm: Int32, _ name: String?, into out: inout [UInt8]) {
            out.append(contentsOf: "vm=\"".utf8)
            if vm == -1 {
                out.append(contentsOf: "other".utf8)
            } else {
                if vm < 0 { out.append(UInt8(ascii: "-")) }
                decimal(UInt64(vm.magnitude), into: &out)
            }
            out.append(contentsOf: "\",vm_name=\"".utf8)
            if let name { escaped(name, into: &out) }
            out.append(UInt8(ascii: "\""))
        }

        /// A counter family with labels `vm`, `vm_name`, `vcpu`, `reason`, capped at `max` label sets: the
        /// first `max − 1` rows are kept and the rest summed into one set labelled `other`. Returns how many
        /// rows were folded.
        /// `fields(i)`: row i's labels and count.
        mutating func perVCPUCounters(_ name: String, rows: Int, max: Int,
                                      _ fields: (Int) -> (Int32, String?, UInt32?, String, UInt64)) -> UInt64 {
            let keep = rows > max ? max - 1 : rows
            for i in 0..<keep {
                let (vm, vmName, vcpu, reason, count) = fields(i)
                append(name)
                bytes.append(UInt8(ascii: "{"))
                Self.vmLabels(vm, vmName, into: &bytes)
                append(ascii: ",vcpu=\"")
                if let vcpu { Self.decimal(UInt64(vcpu), into: &bytes) }
                append(ascii: "\",reason=\"")
                Self.escaped(reason, into: &bytes)
                append(ascii: "\"} ")
                Self.decimal(count, into: &bytes)
                bytes.append(UInt8(ascii: "\n"))
            }
            guard keep < rows else { return 0 }
            let other = (keep..<rows).reduce(UInt64(0)) { $0 &+ fields($1).4 }
            sample(name, PrometheusExposition.otherLabels(["vm", "vm_name", "vcpu", "reason"]), String(other))
            return UInt64(rows - keep)
        }

        /// `kvmscope_io_exits_total`: labels `vm`, `vm_name`, `space` (`port`, `mmio`), `device`, capped at `max`
        /// label sets as ``perVCPUCounters(_:rows:max:_:)`` caps; returns how many were folded.
        mutating func ioExits(_ name: String, _ totals: [IOAccessSummary.DeviceTotal], max: Int) -> UInt64 {
            let keep = totals.count > max ? max - 1 : totals.count
            for t in totals[..<keep] {
                append(name)
                bytes.append(UInt8(ascii: "{"))
                Self.vmLabels(t.vm, t.vmName, into: &bytes)
                append(ascii: ",space=\"")
                append(ascii: t.space == .port ? "port" : "mmio")
                append(ascii: "\",device=\"")
                Self.escaped(t.device, into: &bytes)
                append(ascii: "\"} ")
                Self.decimal(t.count, into: &bytes)
                bytes.append(UInt8(ascii: "\n"))
            }
            guard keep < totals.count else { return 0 }
            let other = totals[keep...].reduce(UInt64(0)) { $0 &+ $1.count }
            sample(name, PrometheusExposition.otherLabels(["vm", "vm_name", "space", "device"]), String(other))
            return UInt64(totals.count - keep)
        }

        /// The latency histogram family, capped at `max` label sets like the counters; returns how many were
        /// folded. Each label set's text is assembled once and repeated on its 28 lines.
        mutating func latencyHistograms(_ name: String, _ latency: LatencyBuckets, max: Int) -> UInt64 {
            let stride = LatencyBuckets.stride
            let keep = latency.count > max ? max - 1 : latency.count
            for g in 0..<keep {
                let group = latency.groups[g]
                scratch.removeAll(keepingCapacity: true)
                Self.vmLabels(group.vm, group.vmName, into: &scratch)
                scratch.append(contentsOf: ",reason=\"".utf8)
                Self.escaped(group.reason, into: &scratch)
                scratch.append(contentsOf: (group.blocking ? "\",blocking=\"true\"" : "\",blocking=\"false\"").utf8)
                histogram(name, latency.perBound[g * stride..<(g + 1) * stride], count: group.count, sum: group.sum)
            }
            guard keep < latency.count else { return 0 }
            var other = [UInt64](repeating: 0, count: stride)
            var count: UInt64 = 0
            var sum: UInt64 = 0
            for g in keep..<latency.count {
                for j in 0..<stride { other[j] += latency.perBound[g * stride + j] }
                count += latency.groups[g].count
                sum &+= latency.groups[g].sum
            }
            scratch.removeAll(keepingCapacity: true)
            scratch.append(contentsOf: #"vm="other",vm_name="other",reason="other",blocking="other""#.utf8)
            histogram(name, other[...], count: count, sum: sum)
            return UInt64(latency.count - keep)
        }

        /// One histogram's lines, its label set (without braces) in ``scratch``.
        mutating func histogram(_ name: String, _ perBound: ArraySlice<UInt64>, count: UInt64, sum: UInt64) {
            let labels = PrometheusExposition.latencyBoundLabelBytes
            var cumulative: UInt64 = 0
            var j = perBound.startIndex
            for le in labels {
                cumulative += perBound[j]
                j += 1
                append(name)
                append(ascii: "_bucket{")
                bytes.append(contentsOf: scratch)
                append(ascii: ",le=\"")
                bytes.append(contentsOf: le)
                append(ascii: "\"} ")
                Self.decimal(cumulative, into: &bytes)
                bytes.append(UInt8(ascii: "\n"))
            }
            append(name)
            append(ascii: "_bucket{")
            bytes.append(contentsOf: scratch)
            append(ascii: ",le=\"+Inf\"} ")
            Self.decimal(count, into: &bytes)
            bytes.append(UInt8(ascii: "\n"))
            append(name)
            append(ascii: "_sum{")
            bytes.append(contentsOf: scratch)
            append(ascii: "} ")
            append("\(Double(sum) / 1e9)")
            bytes.append(UInt8(ascii: "\n"))
            append(name)
            append(ascii: "_count{")
            bytes.append(contentsOf: scratch)
            append(ascii: "} ")
            Self.decimal(count, into: &bytes)
            bytes.append(UInt8(ascii: "\n"))
        }
    }
}
