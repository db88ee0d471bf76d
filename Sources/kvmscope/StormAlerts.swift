import Foundation
import KVMAnalysis
import KVMExits
import KVMHost
import KVMScopeViews

/// The storm rules of `--alert`, shared by `watch` and `serve`.
enum StormAlerts {
    /// Parses every rule. Throws the parser's one-line error.
    static func rules(_ texts: [String]) throws -> [StormRule] {
        try texts.map { text in
            do { return try StormRule(parsing: text) } catch let e as StormRuleError {
                throw KVMScopeError.usage(e.description)
            }
        }
    }

    /// Checks that each rule names something that can happen in this session: `*`, an exit reason of any ISA in
    /// any printer's spelling or a code, a `KVM_EXIT_*` reason, or a kvm event the session traces. A rule
    /// on a misspelt reason would never fire and look like a quiet host.
    /// - Throws: `KVMScopeError.usage` naming the rule and the closest known names.
    static func check(_ rules: [StormRule], catalog: EventCatalog) throws {
        let events = catalog.entries.map(\.name)
        for rule in rules where rule.reason != "*" && !rule.function.isResource {
            let r = rule.reason
            if events.contains(r) { continue }
            if !ReasonResolver.builtin.keys(for: r).isEmpty { continue }
            if catalog.userspaceExitReasons.code(name: r.uppercased()) != nil { continue }
            if ReasonResolver(names: catalog.exitReasons).keys(for: r).isEmpty == false { continue }
            var known = events
            for t in [catalog.exitReasons.vmx, catalog.exitReasons.svm, catalog.exitReasons.arm64,
                      catalog.userspaceExitReasons.table] {
                known += t.entries.map(\.name)
            }
            let closest = ReasonResolver.closest(to: r, among: Array(Set(known)), limit: 5)
            throw KVMScopeError.usage("--alert '\(rule.text)': unknown reason '\(r)' (not an exit reason, a KVM_EXIT_* "
                                      + "reason or a traced kvm event); closest: \(closest.joined(separator: ", "))")
        }
    }

    /// Prints each alert as one JSON line on stdout (cold path: alerts are rare).
    static func print(_ alerts: [StormAlert]) {
        let timestamp = ISO8601DateFormatter()
        timestamp.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        for a in alerts {
            let ts = timestamp.string(from: Date(timeIntervalSince1970: a.time))
            writeStdout(StormAlertJSON.line(a, timestamp: ts) + "\n")
        }
    }

    /// Whether a process is alive (not gone, not a zombie).
    static func isAlive(_ pid: Int32) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return false }
        let state = stat[stat.index(after: close)...].drop { $0 == " " }.first
        return state != "Z" && state != "X"
    }
}
