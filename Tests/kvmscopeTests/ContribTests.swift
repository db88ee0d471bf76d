import Foundation
import KVMAnalysis
import KVMScopeViews
import Testing
import TestSupport

/// The fleet pieces: Prometheus rules that promtool accepts, and queries on metric names kvmscope exports.
@Suite("Contrib")
struct ContribTests {
    static let contrib = CLI.packageRoot.appendingPathComponent("contrib")
    static let golden = CLI.packageRoot.appendingPathComponent("Tests/Fixtures/exposition/known-trace.prom")

    /// Every `kvmscope_…` name a text uses.
    static func metricNames(in text: String) -> Set<String> {
        Set(text.matches(of: /kvmscope_[a-z_]+/).map { String($0.output) })
    }

    /// Sample names the exposition renders (from the golden text, and the resource families of a known sample).
    static func exported() throws -> Set<String> {
        let golden = try String(contentsOf: golden, encoding: .utf8)
        let resources = PrometheusExposition.render(Summary(), format: .prometheus,
                                                    extras: ExpositionExtras(version: "t", resources: ResourceKVMStatsTests.frame().sample))
        return Set((golden + resources).split(separator: "\n").filter { !$0.hasPrefix("#") }.compactMap {
            $0.split(whereSeparator: { $0 == "{" || $0 == " " }).first.map(String.init)
        })
    }

    @Test func promtoolAcceptsTheAlertRules() throws {
        let r = try Spawned.run("/usr/bin/promtool", ["check", "rules", Self.contrib.appendingPathComponent("prometheus/alerts.yml").path],
                                timeout: 60)
        let text = r.stdout + r.stderr
        #expect(r.status == 0, "\(text)")
        #expect(text.contains("SUCCESS: 11 rules found"))
    }

    @Test func rulesAndDashboardUseExportedMetrics() throws {
        let exported = try Self.exported()
        let rules = try String(contentsOf: Self.contrib.appendingPathComponent("prometheus/alerts.yml"), encoding: .utf8)
        let dashboard = try String(contentsOf: Self.contrib.appendingPathComponent("grafana/kvmscope.json"), encoding: .utf8)
        #expect(Self.metricNames(in: rules).subtracting(exported) == [])
        let json = try #require(JSONSerialization.jsonObject(with: Data(dashboard.utf8)) as? [String: Any])
        let panels = try #require(json["panels"] as? [[String: Any]])
        let exprs = panels.flatMap { ($0["targets"] as? [[String: Any]] ?? []).compactMap { $0["expr"] as? String } }
        #expect(exprs.count == 18)
        #expect(Self.metricNames(in: exprs.joined(separator: "\n")).subtracting(exported) == [])
        #expect(panels.compactMap { $0["title"] as? String } == [
            "Exit rate by reason", "Exits to the VMM by reason", "Exit latency heatmap (HLT excluded)",
            "p99 exit latency by reason", "Exits per vCPU (last 5 minutes, per second)", "Lost events",
            "Storm rules firing", "VM host CPU (cores)", "vCPU run-queue wait (steal seen from the host)",
            "VM disk bytes (storage layer)", "Disk latency per request (QMP)",
            "KVM remote TLB flushes and MMU page allocations", "I/O exits by device",
        ])
        #expect(panels.map { $0["type"] as? String } == ["timeseries", "timeseries", "heatmap", "timeseries", "table",
                                                         "timeseries", "stat", "timeseries", "timeseries", "timeseries",
                                                         "timeseries", "timeseries", "timeseries"])
    }
}
