import KVMAnalysis
import KVMExits

/// kvm_stat's table: Event, Total, %Total, CurAvg/s, with reason children indented under their event.
public enum StatTable {
    /// - Parameters:
    ///   - current: the summary now.
    ///   - previous: the summary one interval ago, for CurAvg/s (nil: average since start).
    ///   - seconds: the interval length (or the time since start).
    ///   - kvmStatNames: children named as kvm_stat names them (`IO` under kvm_userspace_exit,
    ///     ``childName(_:)``: `stat`'s table), or as the trace's other tables name them (`KVM_EXIT_IO`: `report`'s,
    ///     beside its per-vCPU tables, CSV and JSON that do).
    public static func render(_ current: Summary, previous: Summary?, seconds: Double, children: Bool = true,
                              sortByTotal: Bool = false, limit: Int? = nil, kvmStatNames: Bool = true) -> [String] {
        var lines = [pad("Event", 40) + lpad("Total", 12) + lpad("%Total", 8) + lpad("CurAvg/s", 11)]
        let grand = current.events.reduce(0) { $0 + $1.total }
        let rate = { (now: UInt64, before: UInt64?) -> String in
            let d = Double(now &- (before ?? 0))
            return String(Int64(saturating: (d / max(seconds, 1e-9)).rounded()))
        }
        var rows = current.events.filter { $0.total > 0 }
        if sortByTotal {
            rows.sort { $0.total > $1.total }
        } else {
            rows.sort { a, b in
                let ra = a.total &- (previous?.total(of: a.name) ?? 0)
                let rb = b.total &- (previous?.total(of: b.name) ?? 0)
                return ra != rb ? ra > rb : a.total > b.total
            }
        }
        for e in rows.prefix(limit ?? .max) {
            lines.append(pad(e.name, 40) + lpad(String(e.total), 12) + lpad(percent(e.total, of: grand), 8)
                         + lpad(rate(e.total, previous?.total(of: e.name)), 11))
            guard children else { continue }
            let kids = current.children.filter { $0.event == e.name }.sorted { $0.total > $1.total }
            for c in kids {
                let before = previous?.children.first { $0.event == c.event && $0.reason == c.reason }?.total
                lines.append(pad("  " + (kvmStatNames ? childName(c.reason) : c.reason), 40) + lpad(String(c.total), 12) + lpad(percent(c.total, of: e.total), 8)
                             + lpad(rate(c.total, before), 11))
            }
        }
        lines.append(pad("Total", 40) + lpad(String(grand), 12) + lpad("", 8)
                     + lpad(rate(grand, previous.map { $0.events.reduce(0) { $0 + $1.total } }), 11))
        return lines
    }

    /// A reason as kvm_stat names its child (`kvm_userspace_exit(IO)`): `kvm_userspace_exit`'s `KVM_EXIT_*` names
    /// without the prefix (kvm_stat's USERSPACE_EXIT_REASONS table holds them so); kvm_exit's reasons as they are.
    public static func childName(_ reason: String) -> String {
        reason.hasPrefix("KVM_EXIT_") ? String(reason.dropFirst("KVM_EXIT_".count)) : reason
    }

    static func percent(_ part: UInt64, of whole: UInt64) -> String {
        whole == 0 ? "0.0" : String(format1(Double(part) * 100 / Double(whole)))
    }

    /// One decimal place, without Foundation.
    public static func format1(_ v: Double) -> String {
        let tenths = (v * 10).rounded()
        let whole = Int64(tenths / 10)
        let frac = Int64(abs(tenths.truncatingRemainder(dividingBy: 10)))
        return "\(tenths < 0 && whole == 0 ? "-" : "")\(whole).\(frac)"
    }

    public static func pad(_ s: String, _ n: Int) -> String {
        s.count >= n ? s + " " : s + String(repeating: " ", count: n - s.count)
    }

    public static func lpad(_ s: String, _ n: Int) -> String {
        s.count >= n ? " " + s : String(repeating: " ", count: n - s.count) + s
    }
}

/// kvm_stat's log mode (`-l`, `-c`): a header of field names, then one line of per-interval counts. The fields
/// are fixed when the log starts (``fields(catalog:exitISA:filter:)``), as kvm_stat fixes its keys: every line of
/// one log has the same columns, zeros included.
public struct LogFormatter {
    public let fields: [String]
    public let csv: Bool

    public init(fields: [String], csv: Bool) {
        self.fields = fields
        self.csv = csv
    }

    public func header() -> String {
        csv ? (["timestamp"] + fields).joined(separator: ",")
            : StatTable.pad("timestamp", 20) + fields.map { StatTable.lpad($0, max(12, $0.count + 1)) }.joined()
    }

    /// The count of each field during one interval: `current` minus `previous` (events, from the summaries'
    /// event totals; children `event(reason)`, from their child rows), 0 for a field neither counts.
    public func values(current: Summary, previous: Summary?) -> [UInt64] {
        fields.map { f in
            let (event, reason) = Self.split(f)
            guard let reason else { return current.total(of: event) &- (previous?.total(of: event) ?? 0) }
            let now = current.children.first { $0.event == event && StatTable.childName($0.reason) == reason }?.total ?? 0
            let before = previous?.children.first { $0.event == event && StatTable.childName($0.reason) == reason }?.total ?? 0
            return now &- before
        }
    }

    public func line(timestamp: String, values: [UInt64]) -> String {
        if csv { return ([timestamp] + values.map(String.init)).joined(separator: ",") }
        return StatTable.pad(timestamp, 20) + zip(fields, values).map { StatTable.lpad(String($1), max(12, $0.count + 1)) }.joined()
    }

    public func line(timestamp: String, current: Summary, previous: Summary?) -> String {
        line(timestamp: timestamp, values: values(current: current, previous: previous))
    }

    /// kvm_stat's batch mode (`-1`): one line per field, sorted, zeros included — the name left-aligned in 42
    /// columns, then the count and the count of the last interval, 10 columns each (`%-42s%10d%10d`: a name of
    /// 42 characters or more is followed by the count's own padding, as printf's; a count of 10 digits or more
    /// keeps one space before it, where printf's would run into the name). One interval is read, so both
    /// numbers are its counts, as kvm_stat's are within a second.
    public func batchLines(values: [UInt64]) -> [String] {
        zip(fields, values).map { f, v in
            (f.count >= 42 ? f : StatTable.pad(f, 42)) + StatTable.lpad(String(v), 10) + StatTable.lpad(String(v), 10)
        }
    }

    /// "kvm_exit(HLT)" → ("kvm_exit", "HLT").
    static func split(_ f: String) -> (String, String?) {
        guard f.hasSuffix(")"), let open = f.firstIndex(of: "(") else { return (f, nil) }
        return (String(f[..<open]), String(f[f.index(after: open)..<f.index(before: f.endIndex)]))
    }

    /// A log's columns, known before its first event as kvm_stat's (its TracepointProvider's fields): every event
    /// of `catalog` (the traced events), and for each event with reasons one child `event(REASON)` per name of
    /// its reason table — `kvm_userspace_exit(IO)`… from kvm_userspace_exit's print fmt (the built-in KVM_EXIT_*
    /// table where the kernel gives none), named as kvm_stat names them (``StatTable/childName(_:)``);
    /// `kvm_exit(HLT)`… from kvm_exit's table for `exitISA`, the host's (kvm_stat's arch table: VMX, SVM or
    /// arm64; nil, none).
    ///
    /// `filter.fields` (-f) keeps, as kvm_stat's, the fields it matches (at the start of the name with
    /// ``SummaryFilter/fieldsAtStart``; a child also in its reason's other spellings,
    /// ``SummaryFilter/keeps(event:reason:)``), plus the event of each child kept: a
    /// parent's count is all its reasons', not only the kept children's. Sorted by name, as kvm_stat's keys.
    ///
    /// A reason outside the table (an `UNKNOWN(0x…)` code, a kvm_exit where `exitISA` is nil) has no column: its
    /// counts are in its event's column, which counts every reason.
    /// - Throws: a bad -f regular expression.
    public static func fields(catalog: EventCatalog, exitISA: ISA?, filter: SummaryFilter = SummaryFilter()) throws -> [String] {
        var kept = Set<String>()
        for (i, e) in catalog.entries.enumerated() {
            if try filter.keeps(field: e.name) { kept.insert(e.name) }
            for reason in reasonNames(catalog: catalog, event: UInt16(i), exitISA: exitISA)
            where try filter.keeps(event: e.name, reason: reason) {
                kept.insert(e.name)
                kept.insert("\(e.name)(\(StatTable.childName(reason)))")
            }
        }
        return kept.sorted()
    }

    /// What to say of the children `s` counts that are no column (a reason outside its table at the start), one
    /// line each, `field` → the line (without `kvmscope: ` and newline): their counts are in their event's column
    /// (or in none, where -f kept no column of that event). Children -f does not keep are not listed.
    /// - Throws: a bad -f regular expression.
    public func uncolumned(in s: Summary, filter: SummaryFilter = SummaryFilter()) throws -> [(field: String, note: String)] {
        var out: [(field: String, note: String)] = []
        for c in s.children where c.total > 0 {
            let field = "\(c.event)(\(StatTable.childName(c.reason)))"
            guard !fields.contains(field), try filter.keeps(event: c.event, reason: c.reason) else { continue }
            out.append((field, "\(field) is not a column of this log (not in \(c.event)'s reasons at its start): "
                        + (fields.contains(c.event) ? "its counts are in the \(c.event) column"
                           : "-f kept no \(c.event) column, so its counts are in none")))
        }
        return out
    }

    /// The names of an event's reason table, in table order, each once (empty for events without reasons).
    static func reasonNames(catalog: EventCatalog, event: UInt16, exitISA: ISA?) -> [String] {
        let table: SymbolTable
        switch catalog[event].role {
        case .userspaceExit: table = catalog.userspaceExitReasons.table
        case .exit:
            switch exitISA {
            case .vmx: table = catalog.exitReasons.vmx
            case .svm: table = catalog.exitReasons.svm
            case .arm64: table = catalog.exitReasons.arm64
            case .unknown, nil: return []
            }
        default: return []
        }
        var seen = Set<String>()
        return table.entries.map(\.name).filter { seen.insert($0).inserted }
    }
}

extension StatTable {
    /// The line under a table: losses and pairing, never hidden; then, when a thread's name and its
    /// kvm_exit/kvm_entry disagree on its vCPU number, a `note:` line (``ReportTable/vcpuMismatchNote(_:)``).
    /// - Parameter pairingScope: what the pairing counts cover when the table shows fewer rows than were traced
    ///   (the pairer counts every thread): `all threads traced, not only -p 4242` follows them in parentheses.
    public static func footer(_ s: Summary, pairingScope: String? = nil) -> String {
        var parts = ["lost_events \(s.lostEvents)"]
        if s.lostUnknownSubbuffers > 0 { parts.append("lost_unknown_subbuffers \(s.lostUnknownSubbuffers)") }
        if s.overflowEvents > 0 { parts.append("overflow_events \(s.overflowEvents)") }
        if s.corruptSubbuffers > 0 { parts.append("corrupt_subbuffers \(s.corruptSubbuffers)") }
        if s.readErrors > 0 { parts.append("read_errors \(s.readErrors)") }
        let p = s.pairing
        if p.paired + p.orphanExits + p.orphanEntries + p.openAtEnd > 0 {
            parts.append("paired \(p.paired) orphan_exits \(p.orphanExits) orphan_entries \(p.orphanEntries) open_at_end \(p.openAtEnd) invalidated_by_loss \(p.invalidatedByLoss)"
                         + (pairingScope.map { " (\($0))" } ?? ""))
        }
        // A thread whose name and kvm_exit/kvm_entry disagree on its vCPU number: one note line, as report's.
        return parts.joined(separator: "  ") + (ReportTable.vcpuMismatchNote(s).map { "\n" + $0 } ?? "")
    }
}
