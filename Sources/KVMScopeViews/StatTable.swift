import KVMAnalysis
import KVMExits

/// kvm_stat's table: Event, Total, %Total, CurAvg/s, with reason children indented under their event.
public enum StatTable {
    /// - Parameters:
    ///   - current: the summary now.
    ///   - previous: the summary one interval ago, for CurAvg/s (nil: average since start).
    ///   - seconds: the interval length (or the time since start).
    public static func render(_ current: Summary, previous: Summary?, seconds: Double, children: Bool = true,
                              sortByTotal: Bool = false, limit: Int? = nil) -> [String] {
        var lines = [pad("Event", 40) + lpad("Total", 12) + lpad("%Total", 8) + lpad("CurAvg/s", 11)]
        let grand = current.events.reduce(0) { $0 + $1.total }
        let rate = { (now: UInt64, before: UInt64?) -> String in
            let d = Double(now &- (before ?? 0))
            return String(Int((d / max(seconds, 1e-9)).rounded()))
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
                lines.append(pad("  " + c.reason, 40) + lpad(String(c.total), 12) + lpad(percent(c.total, of: e.total), 8)
                             + lpad(rate(c.total, before), 11))
            }
        }
        lines.append(pad("Total", 40) + lpad(String(grand), 12) + lpad("", 8)
                     + lpad(rate(grand, previous.map { $0.events.reduce(0) { $0 + $1.total } }), 11))
        return lines
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

/// kvm_stat's log mode (`-l`, `-c`): a header of event names, then one line of per-interval counts.
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

    public func line(timestamp: String, current: Summary, previous: Summary?) -> String {
        let values = fields.map { f -> String in
            let (event, reason) = Self.split(f)
            let now: UInt64
            let before: UInt64
            if let reason {
                now = current.children.first { $0.event == event && $0.reason == reason }?.total ?? 0
                before = previous?.children.first { $0.event == event && $0.reason == reason }?.total ?? 0
            } else {
                now = current.total(of: event)
                before = previous?.total(of: event) ?? 0
            }
            return String(now &- before)
        }
        if csv { return ([timestamp] + values).joined(separator: ",") }
        return StatTable.pad(timestamp, 20) + zip(fields, values).map { StatTable.lpad($1, max(12, $0.count + 1)) }.joined()
    }

    /// "kvm_exit(HLT)" → ("kvm_exit", "HLT").
    static func split(_ f: String) -> (String, String?) {
        guard f.hasSuffix(")"), let open = f.firstIndex(of: "(") else { return (f, nil) }
        return (String(f[..<open]), String(f[f.index(after: open)..<f.index(before: f.endIndex)]))
    }

    /// The fields of a summary in kvm_stat's naming: events, then `event(reason)` children.
    public static func fields(of s: Summary, skipZero: Bool) -> [String] {
        var out: [String] = []
        for e in s.events where !(skipZero && e.total == 0) {
            out.append(e.name)
            for c in s.children where c.event == e.name && !(skipZero && c.total == 0) {
                out.append("\(c.event)(\(c.reason))")
            }
        }
        return out
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
