import ArgumentParser
import Foundation
import KVMAnalysis
import KVMExits
import KVMHost
import KVMScopeViews
import KVMSources

/// The storm rules of `--alert`, shared by `watch` and `serve`.
enum StormAlerts {
    /// Parses every rule. Throws the parser's one-line error as a `ValidationError` (exit status 64).
    static func rules(_ texts: [String]) throws -> [StormRule] {
        try texts.map { text in
            // A bad argument, like ArgumentParser's own: exit status 64.
            do { return try StormRule(parsing: text) } catch let e as StormRuleError {
                throw ValidationError(e.description)
            }
        }
    }

    /// Checks that each rule names something that can happen in this session: `*`, an exit reason of any ISA in
    /// any printer's spelling or a code, a `KVM_EXIT_*` reason, or a kvm event the session traces. A rule
    /// on a misspelt reason would never fire and look like a quiet host; so would one on events `--event` leaves
    /// out (an exit reason without kvm_exit, `KVM_EXIT_*` without kvm_userspace_exit, a percentile without
    /// kvm_exit and kvm_entry).
    /// - Throws: `ValidationError` (exit status 64) naming the rule and the closest known names or the events it needs.
    static func check(_ rules: [StormRule], catalog: EventCatalog) throws {
        let events = catalog.entries.map(\.name)
        let traced = Set(events)
        func missing(_ needed: [String]) -> String? {
            let absent = needed.filter { !traced.contains($0) }
            return absent.isEmpty ? nil : absent.joined(separator: " and ")
        }
        for rule in rules where !rule.function.isResource {
            let r = rule.reason
            var asExit = r == "*"
            var asUserspace = false
            if r != "*" && !events.contains(r) {
                asExit = !ReasonResolver.builtin.keys(for: r).isEmpty || !ReasonResolver(names: catalog.exitReasons).keys(for: r).isEmpty
                asUserspace = catalog.userspaceExitReasons.code(name: r.uppercased()) != nil
                if !asExit && !asUserspace && Self.kernelHasEvent(r) {
                    throw ValidationError("--alert '\(rule.text)' needs \(r), which --event leaves out: it could never fire")
                }
                if !asExit && !asUserspace {
                    var known = events
                    for t in [catalog.exitReasons.vmx, catalog.exitReasons.svm, catalog.exitReasons.arm64,
                              catalog.userspaceExitReasons.table] {
                        known += t.entries.map(\.name)
                    }
                    let closest = ReasonResolver.closest(to: r, among: Array(Set(known)), limit: 5)
                    throw ValidationError("--alert '\(rule.text)': unknown reason '\(r)' (not an exit reason, a KVM_EXIT_* "
                                          + "reason or a traced kvm event); closest: \(closest.joined(separator: ", "))")
                }
            }
            // A rule on events the session does not trace (--event) could never fire.
            var needs: String?
            if case .percentile = rule.function {
                needs = missing(["kvm_exit", "kvm_entry"])
            } else if asExit && asUserspace {
                // A name of both kinds (IO, HLT) counts from either event.
                needs = traced.contains("kvm_exit") || traced.contains("kvm_userspace_exit") ? nil : "kvm_exit or kvm_userspace_exit"
            } else if asExit {
                needs = missing(["kvm_exit"])
            } else if asUserspace {
                needs = missing(["kvm_userspace_exit"])
            }
            if let needs {
                throw ValidationError("--alert '\(rule.text)' needs \(needs), which --event leaves out: it could never fire")
            }
        }
    }

    /// A `disk_latency` rule reads the VMs' block statistics: QEMU's `query-blockstats` through a `--qmp`
    /// socket, or libvirt's `block.N.rd.times`/`wr.times` (the same counters, read by libvirt from its own QMP
    /// monitor) when kvmscope reads libvirt. With neither it could never fire: a bad combination of arguments,
    /// `ValidationError` (exit status 64).
    static func checkQMP(_ rules: [StormRule], sockets: [String], libvirt: Bool) throws {
        guard sockets.isEmpty, !libvirt, let rule = rules.first(where: { $0.function == .diskLatency }) else { return }
        throw ValidationError("--alert '\(rule.text)' needs --qmp SOCKET or libvirt (--connect URI): per-request disk "
                              + "latency comes from QEMU's query-blockstats or libvirt's block statistics")
    }

    /// Whether this kernel has the kvm event `name` (traced or not).
    static func kernelHasEvent(_ name: String) -> Bool {
        name.hasPrefix("kvm_") && !name.contains("/") && ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"].contains {
            FileManager.default.fileExists(atPath: "\($0)/events/kvm/\(name)/format")
        }
    }

    /// The summary storm rules are measured on, attributed as `serve`'s scrapes and `stat` attribute it: threads
    /// not named yet (gone before their first /proc lookup: a short-lived vCPU thread) are held back until named
    /// from the kernel's saved tgids, then count in their VM. Measured at once, each would be a VM of its own
    /// (`vm` = its tid, no name) firing and resolving alone.
    static func summary(_ session: LiveSession) throws -> Summary {
        let snapshot = session.snapshot()
        return try Summary(snapshot, filter: SummaryFilter(excludedTids: snapshot.unnamedThreads))
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
