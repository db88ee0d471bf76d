import Foundation
import KVMAnalysis
import KVMExits
import KVMScopeViews
import KVMSources
import Testing

/// `kvmscope report`: golden tables, histogram, CSV and HTML data from a small kernel trace whose latencies
/// are known (MSR_WRITE 2 µs and 4 µs, HLT 100 µs, EPT_MISCONFIG 6 µs, one MSR_WRITE never re-entered).
@Suite struct ReportTableTests {
    static let golden = """
               CPU 0/KVM-100     (     50) [001] d..1. 1.000000: kvm_exit: vcpu 0 reason MSR_WRITE rip 0xa info1 0x0 info2 0x0 intr_info 0x0 error_code 0x0
               CPU 0/KVM-100     (     50) [001] d..1. 1.000002: kvm_entry: vcpu 0, rip 0xa
               CPU 0/KVM-100     (     50) [001] d..1. 1.000010: kvm_exit: vcpu 0 reason MSR_WRITE rip 0xa info1 0x0 info2 0x0 intr_info 0x0 error_code 0x0
               CPU 0/KVM-100     (     50) [001] d..1. 1.000014: kvm_entry: vcpu 0, rip 0xa
               CPU 0/KVM-100     (     50) [001] d..1. 1.000020: kvm_exit: vcpu 0 reason HLT rip 0xb info1 0x0 info2 0x0 intr_info 0x0 error_code 0x0
               CPU 0/KVM-100     (     50) [001] d..1. 1.000120: kvm_entry: vcpu 0, rip 0xb
               CPU 1/KVM-101     (     50) [002] d..1. 1.000200: kvm_exit: vcpu 1 reason EPT_MISCONFIG rip 0xc info1 0x0 info2 0x0 intr_info 0x0 error_code 0x0
               CPU 1/KVM-101     (     50) [002] d..1. 1.000206: kvm_entry: vcpu 1, rip 0xc
               CPU 1/KVM-101     (     50) [002] d..1. 1.000300: kvm_exit: vcpu 1 reason MSR_WRITE rip 0xa info1 0x0 info2 0x0 intr_info 0x0 error_code 0x0

        """

    static func analysis(timeline: Bool = false) throws -> ReportAnalysis {
        let r = try TextTraceReader(bytes: Array(golden.utf8), name: "golden")
        return try ReportAnalysis.run(r, timelineBins: timeline ? 8 : nil)
    }

    @Test func tablesByVCPU() throws {
        let s = try Summary(Self.analysis().snapshot)
        #expect(ReportTable.render(s, byVCPU: true) == [
            "VM 50, vCPU 0",
            "Reason                    Samples  Samples%    Time%       Min         Max              Avg ± stddev       p50        p99       p99.9",
            "MSR_WRITE                       2    66.67%  100.00%    2.00us      4.00us           3.00us ± 1.00us    2.01us     4.00us      4.00us",
            "HLT *                           1    33.33%        -  100.00us    100.00us         100.00us ± 0.00us  100.00us   100.00us    100.00us",
            "Total                           3   100.00%  100.00%",
            "handling time 6.00us over 2 paired exits; * blocking (guest halted): 100.00us over 1 paired exits, not in Time%",
            "",
            "VM 50, vCPU 1",
            "Reason                    Samples  Samples%    Time%       Min         Max              Avg ± stddev       p50        p99       p99.9",
            "EPT_MISCONFIG                   1    50.00%  100.00%    6.00us      6.00us           6.00us ± 0.00us    6.00us     6.00us      6.00us",
            "MSR_WRITE                       1    50.00%        -         -           -                         -         -          -           -",
            "Total                           2   100.00%  100.00%",
            "handling time 6.00us over 1 paired exits",
        ])
        #expect(ReportTable.footer(s) == [
            "pairing: paired 4, orphan exits 0, orphan entries 0, open at end 1, invalidated by loss 0, negative gaps 0",
            "lost events: 0",
        ])
    }

    @Test func tablePerVMWithTop() throws {
        let s = try Summary(Self.analysis().snapshot)
        #expect(ReportTable.render(s, top: 1) == [
            "VM 50, all vCPUs",
            ReportTable.header,
            "MSR_WRITE                       3    60.00%   50.00%    2.00us      4.00us           3.00us ± 1.00us    2.01us     4.00us      4.00us",
            "(2 more)                        2    40.00%",
            "Total                           5   100.00%  100.00%",
            "handling time 12.00us over 3 paired exits; * blocking (guest halted): 100.00us over 1 paired exits, not in Time%",
        ])
    }

    @Test func histogramChart() throws {
        let s = try Summary(Self.analysis().snapshot)
        var h = HistogramSnapshot()
        for r in s.exits where r.reason == "MSR_WRITE" { if let x = r.histogram { h.merge(x) } }
        #expect(LatencyHistogramChart.render(h, title: "MSR_WRITE", width: 8) == [
            "MSR_WRITE",
            "   1.02us -    2.05us │████████        1   50.00%",
            "   2.05us -    4.10us │████████        1   50.00%",
            "  2 exits; min 2.00us, p50 2.01us, p99 4.00us, max 4.00us",
        ])
        #expect(LatencyHistogramChart.render(HistogramSnapshot(), title: "HLT") == ["HLT", "  no paired exits: no latencies"])
    }

    @Test func csv() throws {
        let s = try Summary(Self.analysis().snapshot)
        #expect(ReportTable.csvRows(s, file: "t,1.txt") == [
            "\"t,1.txt\",50,,0,HLT,vmx,1,1,1,100000,100000.00,0.00,100000,100000,100000,100000,100000,100000",
            "\"t,1.txt\",50,,0,MSR_WRITE,vmx,0,2,2,2000,3000.00,1000.00,2007,4000,4000,4000,4000,6000",
            "\"t,1.txt\",50,,1,EPT_MISCONFIG,vmx,0,1,1,6000,6000.00,0.00,6000,6000,6000,6000,6000,6000",
            "\"t,1.txt\",50,,1,MSR_WRITE,vmx,0,1,0,,,,,,,,,",
        ])
    }

    /// Timeline bins: 100 µs wide from the first event; exits counted in their bin, latencies in the exit's bin.
    @Test func htmlData() throws {
        let a = try Self.analysis(timeline: true)
        let t = try #require(a.timeline)
        #expect(t.binWidth == 100_000 && t.binCount == 4)
        let groups = HTMLReport.groups(t, snapshot: a.snapshot, filter: SummaryFilter())
        #expect(groups.map(\.label) == ["All VMs", "VM 50, all vCPUs", "VM 50, vCPU 0", "VM 50, vCPU 1"])
        let all = groups[0]
        #expect(all.series.map(\.reason) == ["MSR_WRITE", "EPT_MISCONFIG", "HLT"])
        #expect(all.series[0].counts == [2, 0, 0, 1])
        #expect(all.series[1].counts == [0, 0, 1, 0])
        // Non-blocking latencies: 2 µs and 4 µs (bucket 4: [2048, 4096) and 3: [1024, 2048)), 6 µs (bucket 5).
        var cells: [Int: UInt64] = [:]
        for (i, c) in all.heat.enumerated() where c > 0 { cells[i] = c }
        let lb = ExitTimeline.latencyBuckets
        #expect(cells == [0 * lb + 3: 1, 0 * lb + 4: 1, 2 * lb + 5: 1])
        let html = HTMLReport.render(timeline: t, snapshot: a.snapshot, filter: SummaryFilter(vcpus: [1]), title: "g<1>")
        #expect(html.contains(#"{"label":"VM 50, vCPU 1","series":{"EPT_MISCONFIG":[0,0,1,0],"MSR_WRITE":[0,0,0,1]}"#))
        #expect(html.contains("<title>kvmscope: g&lt;1&gt;</title>"))
        // Self-contained: the only URL is the SVG namespace; no src= or href= to fetch.
        #expect(html.components(separatedBy: "http").count == 2 && html.contains("'http://www.w3.org/2000/svg'"))
        #expect(!html.contains("src=") && !html.contains("href="))
    }

    @Test func exitTimelineCoalesces() {
        var t = ExitTimeline(maxBins: 4)
        for i in 0..<10 {
            t.add(TraceEvent(timestamp: UInt64(i) * 100_000, tid: 1, event: 0, reason: 12, isa: 1), role: .exit)
        }
        #expect(t.binWidth == 400_000 && t.binCount == 3)
        #expect(t.exitCounts(ExitTimeline.Key(tid: 1, isa: 1, reason: 12)) == [4, 4, 2])
        #expect(ExitTimeline.latencyBucket(255) == 0 && ExitTimeline.latencyBucket(256) == 1
                && ExitTimeline.latencyBucket(1 << 40) == 23)
    }
}
