import Foundation
import Testing
import TestSupport

/// `report -p`, `--vcpu` and `--from/--to` that keep nothing of a trace with events: one error line naming what
/// the trace has, status 1, nothing on stdout (as `--reason` does) — before, an empty report that said "No
/// kvm_exit events." of a file holding 810, with status 0. A filter that keeps a VM without exits says so.
@Suite struct ReportFilterMatchTests {
    static let host = ReportCommandTests.host

    @Test(arguments: [
        (["-p", "1"], "-p 1: no VM 1 in the trace; its VMs: 150742 (qemu-system-x86), 150750 (qemu-system-x86), 150787 (vhost-150742)"),
        (["--vcpu", "99"], "--vcpu 99: no vCPU 99 in the trace; the trace has vCPU 0"),
        (["-p", "150750", "--vcpu", "3"], "--vcpu 3: no vCPU 3 of VM 150750 in the trace; VM 150750 has vCPU 0"),
        (["--from", "100"], "--from 100: no kvm events in that window; the trace's 4463 events span 4.737146s from its first"),
        (["--from", "1", "--to", "1.00001"],
         "--from 1 --to 1.00001: no kvm events in that window; the trace's 4463 events span 4.737146s from its first"),
    ])
    func filterThatKeepsNothingIsAnError(options: [String], message: String) throws {
        for mode in [[], ["--json"], ["--csv"]] {
            let r = try CLI.run(["report"] + mode + options + [Self.host])
            #expect(r.status == 1, "\(mode) \(options)")
            #expect(r.stdout == (mode == ["--csv"] ? "file,vm,vm_name,vcpu,reason,isa,blocking,count,paired,min_ns,mean_ns,"
                                 + "stddev_ns,p50_ns,p90_ns,p99_ns,p999_ns,max_ns,total_ns\n" : ""), "\(mode) \(options)")
            #expect(r.stderr == "kvmscope: \(Self.host): \(message)\n", "\(mode) \(options)")
        }
    }

    /// A VM that is in the trace but has no kvm_exit (the vhost thread): its report says so, not "No kvm_exit
    /// events." of the whole file.
    @Test func vmWithoutExitsIsNotATraceWithoutExits() throws {
        let r = try CLI.run(["report", "-p", "150787", Self.host])
        #expect(r.status == 0, "\(r.stderr)")
        let lines = r.stdout.split(separator: "\n", omittingEmptySubsequences: false)
        #expect(lines.contains("No kvm_exit events of -p 150787 (810 of others in the trace)."), "\(r.stdout)")
        #expect(!lines.contains("No kvm_exit events."))
    }

    /// The filters that match still report (exit counts of VM 150750's vCPU 0 and of the first second).
    @Test func matchingFiltersStillReport() throws {
        let vcpu = try CLI.json(try CLI.run(["report", "--json", "-p", "150750", "--vcpu", "0", Self.host]).stdout)
        let exits = try #require(vcpu["exits"] as? [[String: Any]])
        #expect(exits.reduce(0) { $0 + ($1["count"] as? Int ?? 0) } == 810)
        let window = try CLI.run(["report", "--json", "--from", "0", "--to", "1", Self.host])
        #expect(window.status == 0, "\(window.stderr)")
    }

    /// Rates over --from/--to divide by the window asked for (cut to the trace), not by the span of the events
    /// in it: the second from 1 s holds 92 exits (counted independently of kvmscope), 92/s; the 38 ms between its
    /// first and last event had given 2419/s.
    @Test func windowRatesDivideByTheWindow() throws {
        let r = try CLI.run(["report", "--from", "1", "--to", "2", Self.host])
        #expect(r.status == 0, "\(r.stderr)")
        let lines = r.stdout.split(separator: "\n").map(String.init)
        #expect(lines.first == "\(Self.host): trace-cmd report, 497 kvm events in the window of 1.00s (16063.943940000 → 16064.943940000)")
        #expect(lines.contains("kvm_exit                                          92    18.5         92"))
        let j = try CLI.json(try CLI.run(["report", "--json", "--from", "1", "--to", "2", Self.host]).stdout)
        #expect(j["duration_s"] as? Double == 1.0)
        // Past the trace's end the window is cut there: from 4 s to its last event, 0.737146 s after.
        let tail = try CLI.json(try CLI.run(["report", "--json", "--from", "4", "--to", "100", Self.host]).stdout)
        #expect(tail["duration_s"] as? Double == 0.737146)  // to the ns
    }
}
