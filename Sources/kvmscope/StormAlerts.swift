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
