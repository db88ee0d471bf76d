import Foundation
import KVMAnalysis
import KVMExits
import KVMScopeViews
import KVMSources
import Testing

/// A known trace, aggregated exactly as the live path does (ShardWriter + Pairer), rendered as /metrics text.
@Suite("PrometheusExposition")
struct PrometheusExpositionTests {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/formats/6.18-x86")

    static let identities: [Int32: ThreadIdentity] = [
        101: ThreadIdentity(vm: 4242, vmName: "web \"01\"", vcpu: 0),
        102: ThreadIdentity(vm: 4242, vmName: "web \"01\"", vcpu: 1),
        201: ThreadIdentity(vm: 5000, vmName: "db\\prod\nX", vcpu: 0),
    ]

    static let msrWrite: UInt32 = 32, eptMisconfig: UInt32 = 49, hlt: UInt32 = 12, io: UInt32 = 30
    static let kvmExitIO: UInt32 = 2

    /// The trace: (tid, reason, latency ns) exits, each followed by its entry; plus pio and userspace exits.
    static func summary() throws -> Summary {
        let formats = EventFormats()
        for e in ["kvm_exit", "kvm_entry", "kvm_userspace_exit", "kvm_pio"] {
            try formats.add(system: "kvm", format: String(contentsOf: fixtures.appendingPathComponent("\(e).format"),
                                                          encoding: .utf8))
        }
        let catalog = formats.catalog
        let ids = identities
        let aggregator = Aggregator(catalog: catalog, shardCount: 1, resolver: { ids[$0] })
        var writer = aggregator.writer(shard: 0)
        var pairer = aggregator.makePairer()
        let exitEvent = try #require(catalog.index(of: "kvm_exit"))
        let entryEvent = try #require(catalog.index(of: "kvm_entry"))
        let userEvent = try #require(catalog.index(of: "kvm_userspace_exit"))
        let pioEvent = try #require(catalog.index(of: "kvm_pio"))
        var ts: UInt64 = 1_000_000
        func count(_ e: TraceEvent) { writer.add(e, hasReason: catalog[e.event].role.hasReasons) }
        let exits: [(Int32, UInt32, UInt64)] = [
            (101, msrWrite, 1_500), (101, msrWrite, 2_500), (101, msrWrite, 900), (101, eptMisconfig, 12_000),
            (101, hlt, 3_000_000), (102, msrWrite, 700), (201, io, 4_000), (201, io, 250_000),
        ]
        for (tid, reason, latency) in exits {
            let vcpu = ids[tid]!.vcpu!
            let exit = TraceEvent(timestamp: ts, rip: 0xffff_ffff_8100_0000 + UInt64(reason), tid: tid, event: exitEvent,
                                  reason: reason, vcpu: vcpu, isa: ISA.vmx.rawValue)
            count(exit)
            pairer.exit(exit)
            let entry = TraceEvent(timestamp: ts + latency, tid: tid, event: entryEvent, vcpu: vcpu)
            count(entry)
            pairer.entry(entry)
            ts += latency + 10_000
        }
        for _ in 0..<3 {
            count(TraceEvent(timestamp: ts, detail: 0x10, tid: 201, event: pioEvent, aux: 1))
            count(TraceEvent(timestamp: ts + 1, tid: 201, event: userEvent, reason: kvmExitIO))
            ts += 100
        }
        pairer.finish()
        return try Summary(aggregator.snapshot(timestamp: ts))
    }

    static let extras = ExpositionExtras(
        version: "0.1.0", lostPerCPU: [0: 0, 1: 7],
        storms: [StormActivity(rule: "p99(MSR_WRITE) > 1us", vm: 4242, vmName: "web \"01\"", reason: "MSR_WRITE",
                               active: true)])

    static let golden = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/exposition")

    /// Compares with a golden file (KVMSCOPE_UPDATE_GOLDEN=1 rewrites it; review the diff before committing).
    static func expectGolden(_ text: String, _ name: String) throws {
        let url = golden.appendingPathComponent(name)
        if ProcessInfo.processInfo.environment["KVMSCOPE_UPDATE_GOLDEN"] == "1" {
            try FileManager.default.createDirectory(at: golden, withIntermediateDirectories: true)
            try text.write(to: url, atomically: true, encoding: .utf8)
        }
        let expected = try String(contentsOf: url, encoding: .utf8)
        #expect(text == expected)
    }

    @Test func goldenPrometheusText() throws {
        let text = PrometheusExposition.render(try Self.summary(), format: .prometheus, extras: Self.extras)
        try Self.expectGolden(text, "known-trace.prom")
        // The hand-computed heart of it: MSR_WRITE of VM 4242 took 1500, 2500, 900 (vCPU 0) and 700 ns (vCPU 1).
        let msr = ##"kvmscope_exit_latency_seconds_bucket{vm="4242",vm_name="web \"01\"",reason="MSR_WRITE",blocking="false",le=""##
        #expect(text.contains(msr + #"5e-07"} 0"# + "\n" + msr + #"1e-06"} 2"# + "\n" + msr + #"2e-06"} 3"# + "\n"
                              + msr + #"5e-06"} 4"# + "\n"))
        #expect(text.contains(#"kvmscope_exit_latency_seconds_sum{vm="4242",vm_name="web \"01\"",reason="MSR_WRITE",blocking="false"} 5.6e-06"#))
        #expect(text.contains(#"kvmscope_exits_total{vm="4242",vm_name="web \"01\"",vcpu="1",reason="MSR_WRITE"} 1"#))
        #expect(text.contains(#"reason="HLT",blocking="true",le="0.005"} 1"#))
        #expect(text.contains(#"reason="HLT",blocking="true",le="0.002"} 0"#))
        #expect(text.contains("# TYPE kvmscope_events_total counter\n"))
        #expect(!text.contains("# EOF"))
        #expect(text.hasSuffix("kvmscope_storm_active{vm=\"4242\",vm_name=\"web \\\"01\\\"\",reason=\"MSR_WRITE\",rule=\"p99(MSR_WRITE) > 1us\"} 1\n"))
    }

    @Test func goldenOpenMetricsText() throws {
        let text = PrometheusExposition.render(try Self.summary(), format: .openMetrics, extras: Self.extras)
        try Self.expectGolden(text, "known-trace.openmetrics")
        #expect(text.hasSuffix("} 1\n# EOF\n"))
        #expect(text.contains("# TYPE kvmscope_events counter\nkvmscope_events_total{event=\"kvm_exit\"} 8\n"))
        #expect(text.contains("# TYPE kvmscope_build info\nkvmscope_build_info{version=\"0.1.0\"} 1\n"))
        #expect(text.contains("# UNIT kvmscope_exit_latency_seconds seconds\n"))
        // Same samples as the Prometheus text: only the metadata lines and # EOF differ.
        let prom = PrometheusExposition.render(try Self.summary(), format: .prometheus, extras: Self.extras)
        #expect(text.split(separator: "\n").filter { !$0.hasPrefix("#") }
                == prom.split(separator: "\n").filter { !$0.hasPrefix("#") })
    }

    @Test func labelValuesAreEscaped() {
        #expect(PrometheusExposition.escape(labelValue: #"a\b"c"#) == #"a\\b\"c"#)
        #expect(PrometheusExposition.escape(labelValue: "line1\nline2") == #"line1\nline2"#)
        #expect(PrometheusExposition.escape(labelValue: "plain µs") == "plain µs")
    }

    @Test func acceptHeaderChoosesTheFormat() {
        #expect(ExpositionFormat.negotiate(accept: nil) == .prometheus)
        #expect(ExpositionFormat.negotiate(accept: "text/plain;version=0.0.4;q=0.5,*/*;q=0.1") == .prometheus)
        // What Prometheus 2.x sends.
        #expect(ExpositionFormat.negotiate(accept: "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1") == .openMetrics)
        // q-values weigh: text preferred over OpenMetrics is text; q=0 refuses; a tie goes to OpenMetrics.
        #expect(ExpositionFormat.negotiate(accept: "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.9") == .prometheus)
        #expect(ExpositionFormat.negotiate(accept: "application/openmetrics-text;q=0, text/plain") == .prometheus)
        #expect(ExpositionFormat.negotiate(accept: "application/openmetrics-text; version=1.0.0, text/plain") == .openMetrics)
        #expect(ExpositionFormat.negotiate(accept: "*/*") == .prometheus)
        #expect(ExpositionFormat.openMetrics.contentType == "application/openmetrics-text; version=1.0.0; charset=utf-8")
        #expect(ExpositionFormat.prometheus.contentType == "text/plain; version=0.0.4; charset=utf-8")
    }

    @Test func latencyBoundsAreOneTwoFivePerDecade() {
        #expect(PrometheusExposition.latencyBoundsNs.count == 25)
        #expect(PrometheusExposition.latencyBoundsNs.prefix(4) == [100, 200, 500, 1_000])
        #expect(PrometheusExposition.latencyBoundsNs.last == 10_000_000_000)
    }

    @Test func maxSeriesFoldsTheRestIntoOneCountedSeries() throws {
        var extras = Self.extras
        extras.maxSeries = 2
        let text = PrometheusExposition.render(try Self.summary(), format: .prometheus, extras: extras)
        let exits = text.split(separator: "\n").filter { $0.hasPrefix("kvmscope_exits_total") }
        // 5 rows: the first is kept, the other 4 (1 HLT + 3 + 1 MSR_WRITE + 2 IO_INSTRUCTION = 7 exits) fold.
        #expect(exits == [
            #"kvmscope_exits_total{vm="4242",vm_name="web \"01\"",vcpu="0",reason="EPT_MISCONFIG"} 1"#,
            #"kvmscope_exits_total{vm="other",vm_name="other",vcpu="other",reason="other"} 7"#,
        ])
        // 4 latency label sets: 1 kept, 3 folded (HLT 1 + MSR_WRITE 4 + IO_INSTRUCTION 2 values).
        let latencyCounts = text.split(separator: "\n").filter { $0.hasPrefix("kvmscope_exit_latency_seconds_count") }
        #expect(latencyCounts == [
            #"kvmscope_exit_latency_seconds_count{vm="4242",vm_name="web \"01\"",reason="EPT_MISCONFIG",blocking="false"} 1"#,
            #"kvmscope_exit_latency_seconds_count{vm="other",vm_name="other",reason="other",blocking="other"} 7"#,
        ])
        #expect(text.contains(#"kvmscope_exit_latency_seconds_sum{vm="other",vm_name="other",reason="other",blocking="other"} 0.0032596"#))
        // One userspace row: under the cap, untouched. Folded: 4 exit rows + 3 latency sets.
        #expect(text.contains("kvmscope_series_overflow_total 7\n"))
        extras.maxSeries = 5
        let exact = PrometheusExposition.render(try Self.summary(), format: .prometheus, extras: extras)
        #expect(exact.contains("kvmscope_series_overflow_total 0\n"))
        #expect(!exact.contains(#"vm="other""#))
    }
}
