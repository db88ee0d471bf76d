import KVMAnalysis
import KVMExits

/// `kvmscope report`'s tables, modelled on `perf kvm stat report`: per VM (or VM × vCPU), one row per exit
/// reason with Samples, Samples%, Time%, Min, Max, Avg ± stddev, p50, p99 and p99.9 (microseconds, two
/// decimals), sorted by samples. Blocking reasons (the guest halted: HLT, hlt, WFx) are marked `*`: the time
/// until their entry is the guest idling, so it stays out of the Time% total and is shown apart.
public enum ReportTable {
    /// `perf kvm stat report -k/--key`: what the rows are sorted by, largest first (ties by reason name).
    public enum SortKey: String, CaseIterable, Sendable {
        /// Samples (exits), perf's default.
        case sample
        /// Total handling time (the pairs' latencies summed).
        case time
        case max
        case min
        /// Average handling time.
        case mean

        /// The row's value for this key; a row without pairs has 0 for the times.
        func value(_ r: ExitRow) -> Double {
            guard self != .sample else { return Double(r.count) }
            guard let h = r.histogram, h.count > 0 else { return 0 }
            switch self {
            case .sample: return Double(r.count)
            case .time: return Double(h.sum)
            case .max: return Double(h.max)
            case .min: return Double(h.min)
            case .mean: return Double(h.sum) / Double(h.count)
            }
        }
    }

    public static let header = StatTable.pad("Reason", 24) + StatTable.lpad("Samples", 9) + StatTable.lpad("Samples%", 10)
        + StatTable.lpad("Time%", 9) + StatTable.lpad("Min", 10) + StatTable.lpad("Max", 12)
        + StatTable.lpad("Avg ± stddev", 26) + StatTable.lpad("p50", 10) + StatTable.lpad("p99", 11)
        + StatTable.lpad("p99.9", 12)

    /// The tables for every VM (byVCPU: every VM × vCPU) of a summary; at most `top` rows each.
    /// - Parameter none: the line when there is no row (a filtered report says what it kept nothing of).
    /// - Parameter onlyVCPU: `--vcpu N`: the tables hold that vCPU alone, and their titles say so.
    public static func render(_ s: Summary, byVCPU: Bool = false, top: Int? = nil, key: SortKey = .sample,
                              onlyVCPU: UInt32? = nil, none: String = "No kvm_exit events.") -> [String] {
        let tables = tables(byVCPU ? s.exits : s.exitsByVM(), byVCPU: byVCPU)
        var lines: [String] = []
        if tables.isEmpty { lines.append(none) }
        for g in tables {
            var title = "VM \(g[0].vm)"
            if let name = g[0].vmName { title += " (\(name.terminalSafe))" }
            if byVCPU {
                title += g[0].vcpu.map { ", vCPU \($0)" } ?? ", vCPU unknown"
            } else {
                title += onlyVCPU.map { ", vCPU \($0)" } ?? ", all vCPUs"
            }
            if !lines.isEmpty { lines.append("") }
            lines.append(title)
            lines.append(contentsOf: table(g, top: top, key: key))
        }
        return lines
    }

    /// `--by-vcpu` of a trace without kvm_exit events (a host whose KVM never fires it: the exit tables would
    /// be empty): one table per VM × vCPU of the kvm events counted on that vCPU's threads (``Summary/eventRows``),
    /// by total then name, `kvm_userspace_exit`'s `KVM_EXIT_*` reasons indented under it, at most `top` events
    /// each. Events without a vCPU (kvm_set_irq, kvm_write_tsc_offset from the VMM's other threads) make a
    /// "vCPU unknown" table after the vCPUs.
    public static func eventsByVCPU(_ s: Summary, top: Int? = nil) -> [String] {
        struct Key: Hashable, Comparable {
            var vm: Int32
            var vcpu: UInt32?
            static func < (a: Key, b: Key) -> Bool { (a.vm, a.vcpu ?? .max) < (b.vm, b.vcpu ?? .max) }
        }
        var groups: [Key: [EventRow]] = [:]
        for r in s.eventRows where r.count > 0 { groups[Key(vm: r.vm, vcpu: r.vcpu), default: []].append(r) }
        guard !groups.isEmpty else { return ["No kvm events."] }
        var lines = ["No kvm_exit events: the kvm events of each vCPU."]
        for key in groups.keys.sorted() {
            let rows = groups[key]!.sorted { ($0.count, $1.event) > ($1.count, $0.event) }
            let total = rows.reduce(0) { $0 + $1.count }
            lines.append("")
            lines.append("VM \(key.vm)" + (rows[0].vmName.map { " (\($0.terminalSafe))" } ?? "")
                         + (key.vcpu.map { ", vCPU \($0)" } ?? ", vCPU unknown"))
            lines.append(StatTable.pad("Event", 40) + StatTable.lpad("Total", 12) + StatTable.lpad("%Total", 8))
            for r in rows.prefix(top ?? .max) {
                lines.append(StatTable.pad(r.event, 40) + StatTable.lpad(String(r.count), 12)
                             + StatTable.lpad(StatTable.percent(r.count, of: total), 8))
                guard r.event == "kvm_userspace_exit" else { continue }
                let reasons = s.userspaceExits.filter { $0.vm == key.vm && $0.vcpu == key.vcpu && $0.count > 0 }
                for u in reasons.sorted(by: { ($0.count, $1.reason) > ($1.count, $0.reason) }) {
                    lines.append(StatTable.pad("  " + u.reason, 40) + StatTable.lpad(String(u.count), 12)
                                 + StatTable.lpad(StatTable.percent(u.count, of: r.count), 8))
                }
            }
            if let top, rows.count > top {
                let rest = rows.dropFirst(top).reduce(0) { $0 + $1.count }
                lines.append(StatTable.pad("(\(rows.count - top) more)", 40) + StatTable.lpad(String(rest), 12)
                             + StatTable.lpad(StatTable.percent(rest, of: total), 8))
            }
            lines.append(StatTable.pad("Total", 40) + StatTable.lpad(String(total), 12))
        }
        return lines
    }

    /// One table: header, rows (by `key`, largest first, then name), total, and the note on blocking time.
    /// Rows in tables: one per VM (byVCPU: per VM × vCPU), in the order of each table's first row.
    static func tables(_ rows: [ExitRow], byVCPU: Bool) -> [[ExitRow]] {
        struct GroupKey: Hashable { var vm: Int32; var vcpu: UInt32? }
        var order: [GroupKey] = []
        var groups: [GroupKey: [ExitRow]] = [:]
        for r in rows {
            let k = GroupKey(vm: r.vm, vcpu: byVCPU ? r.vcpu : nil)
            if groups[k] == nil { order.append(k) }
            groups[k, default: []].append(r)
        }
        return order.map { groups[$0]! }
    }

    /// A table's rows by `key`, largest first, ties by reason name.
    static func sorted(_ rows: [ExitRow], by key: SortKey) -> [ExitRow] {
        rows.sorted { (key.value($0), $1.reason) > (key.value($1), $0.reason) }
    }

    public static func table(_ rows: [ExitRow], top: Int? = nil, key: SortKey = .sample) -> [String] {
        let sorted = sorted(rows, by: key)
        let total = rows.reduce(0) { $0 + $1.count }
        var handling: UInt64 = 0
        var handlingPairs: UInt64 = 0
        var blocking: UInt64 = 0
        var blockingPairs: UInt64 = 0
        var hasBlocking = false
        for r in rows {
            if r.blocking { hasBlocking = true }
            guard let h = r.histogram, h.count > 0 else { continue }
            if r.blocking {
                blocking &+= h.sum
                blockingPairs += h.count
            } else {
                handling &+= h.sum
                handlingPairs += h.count
            }
        }
        var lines = [header]
        for r in sorted.prefix(top ?? .max) {
            lines.append(row(r, total: total, handling: handling))
        }
        if let top, sorted.count > top {
            let rest = sorted.dropFirst(top).reduce(0) { $0 + $1.count }
            lines.append(StatTable.pad("(\(sorted.count - top) more)", 24) + StatTable.lpad(String(rest), 9)
                         + StatTable.lpad(Durations.percent(Double(rest), of: Double(total)), 10))
        }
        lines.append(StatTable.pad("Total", 24) + StatTable.lpad(String(total), 9) + StatTable.lpad("100.00%", 10)
                     + StatTable.lpad(handling > 0 ? "100.00%" : "-", 9))
        var note = "handling time \(Durations.adaptive(handling)) over \(handlingPairs) paired exits"
        if hasBlocking {
            note += "; * blocking (guest halted): \(Durations.adaptive(blocking)) over \(blockingPairs) paired exits, not in Time%"
        }
        lines.append(note)
        return lines
    }

    static func row(_ r: ExitRow, total: UInt64, handling: UInt64) -> String {
        let name = r.reason + (r.blocking ? " *" : "")
        var line = StatTable.pad(name, 24) + StatTable.lpad(String(r.count), 9)
            + StatTable.lpad(Durations.percent(Double(r.count), of: Double(total)), 10)
        guard let l = r.latency else {
            return line + StatTable.lpad("-", 9) + StatTable.lpad("-", 10) + StatTable.lpad("-", 12)
                + StatTable.lpad("-", 26) + StatTable.lpad("-", 10) + StatTable.lpad("-", 11) + StatTable.lpad("-", 12)
        }
        line += StatTable.lpad(r.blocking ? "-" : Durations.percent(Double(l.sum), of: Double(handling)), 9)
        line += StatTable.lpad(Durations.us(Double(l.min)), 10) + StatTable.lpad(Durations.us(Double(l.max)), 12)
        line += StatTable.lpad(Durations.us(l.mean) + " ± " + Durations.us(l.stddev), 26)
        line += StatTable.lpad(Durations.us(Double(l.p50)), 10) + StatTable.lpad(Durations.us(Double(l.p99)), 11)
            + StatTable.lpad(Durations.us(Double(l.p999)), 12)
        return line
    }

    /// The lines under the tables, always shown: pairing and losses; then a `note:` line when a thread's name and
    /// its kvm_exit/kvm_entry disagree on its vCPU number (``vcpuMismatchNote(_:)``).
    /// - Parameters:
    ///   - pairingScope: what the pairing counts cover when the tables show fewer rows (the pairer counts every
    ///     thread of the trace): `all threads, not only -p 4242` reads `pairing (all threads, not only -p 4242):`.
    ///   - pairingApplies: false when kvm_exit was traced without kvm_entry: the line then says pairing does not
    ///     apply (`pairing: not applicable, kvm_entry not traced (N exits, none paired)`) instead of counting every
    ///     exit as an orphan (a trace gap).
    public static func footer(_ s: Summary, pairingScope: String? = nil, pairingApplies: Bool = true) -> [String] {
        let p = s.pairing
        var lost = "lost events: \(s.lostEvents)"
        if s.lostUnknownSubbuffers > 0 { lost += ", loss notes without a count: \(s.lostUnknownSubbuffers)" }
        if s.overflowEvents > 0 { lost += ", events beyond the row table: \(s.overflowEvents)" }
        if s.corruptSubbuffers > 0 { lost += ", corrupt sub-buffers: \(s.corruptSubbuffers)" }
        if s.readErrors > 0 { lost += ", read errors: \(s.readErrors)" }
        let exits = s.exits.reduce(UInt64(0)) { $0 + $1.count }
        return [
            pairingApplies
                ? "pairing\(pairingScope.map { " (\($0))" } ?? ""): paired \(p.paired), orphan exits \(p.orphanExits), orphan entries \(p.orphanEntries), "
                    + "open at end \(p.openAtEnd), invalidated by loss \(p.invalidatedByLoss), negative gaps \(p.negativeGaps)"
                : "pairing: not applicable, kvm_entry not traced (\(exits) exits, none paired)",
            lost,
        ] + (vcpuMismatchNote(s).map { [$0] } ?? [])
    }

    /// One `note:` line when a thread's name and its kvm_exit/kvm_entry disagree on its vCPU number
    /// (``Summary/vcpuMismatches``, the JSON's `vcpu_mismatches`): the first such thread's VM, tid and why, and how
    /// many more there are; nil when there is none.
    public static func vcpuMismatchNote(_ s: Summary) -> String? {
        guard let first = s.vcpuMismatches.first else { return nil }
        let id = first.identity
        let more = s.vcpuMismatches.count - 1
        return "note: VM \(id.vm)\(id.vmName.map { " (\($0.terminalSafe))" } ?? "") tid \(first.tid): "
            + SummaryJSON.vcpuMismatchNote(id).terminalSafe
            + (more > 0 ? "; \(more) more thread\(more == 1 ? "" : "s") (--json: vcpu_mismatches)" : "")
    }

    /// CSV: one row per VM × vCPU × reason, latencies in ns: exit reasons from `kvm_exit` (isa `vmx`, `svm`,
    /// `arm64`), then the `KVM_EXIT_*` reasons of `kvm_userspace_exit` (isa `userspace`: a count, no latency).
    public static let csvHeader = "file,vm,vm_name,vcpu,reason,isa,blocking,count,paired,min_ns,mean_ns,stddev_ns,p50_ns,p90_ns,p99_ns,p999_ns,max_ns,total_ns"

    /// The CSV rows of a summary: its exit rows (one per VM × vCPU × reason), then its userspace exits.
    /// - Parameters:
    ///   - top: at most this many exit rows per VM × vCPU (as `--top` cuts each text table); nil: all.
    ///   - key: the exit rows of each VM × vCPU sorted by it, largest first (as the text tables); nil: the
    ///     summary's order.
    public static func csvRows(_ s: Summary, file: String, top: Int? = nil, key: SortKey? = nil) -> [String] {
        var exits = s.exits
        if top != nil || key != nil {
            exits = tables(exits, byVCPU: true).flatMap { g in (key.map { sorted(g, by: $0) } ?? g).prefix(top ?? .max) }
        }
        return exits.map { r in
            var f = [csvField(file), String(r.vm), csvField(r.vmName ?? ""), r.vcpu.map(String.init) ?? "",
                     csvField(r.reason), r.isa.jsonName ?? "", r.blocking ? "1" : "0", String(r.count)]
            if let l = r.latency {
                f += [String(l.count), String(l.min), Durations.fixed2(l.mean), Durations.fixed2(l.stddev),
                      String(l.p50), String(l.p90), String(l.p99), String(l.p999), String(l.max), String(l.sum)]
            } else {
                f += ["0"] + Array(repeating: "", count: 9)
            }
            return f.joined(separator: ",")
        } + s.userspaceExits.map { r in
            ([csvField(file), String(r.vm), csvField(r.vmName ?? ""), r.vcpu.map(String.init) ?? "",
              csvField(r.reason), "userspace", "0", String(r.count), "0"] + Array(repeating: "", count: 9))
                .joined(separator: ",")
        }
    }

    static func csvField(_ s: String) -> String {
        s.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" })
            ? "\"" + s.map { $0 == "\"" ? "\"\"" : String($0) }.joined() + "\"" : s
    }
}
