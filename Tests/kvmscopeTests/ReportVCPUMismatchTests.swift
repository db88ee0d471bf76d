import Foundation
import KVMAnalysis
import KVMScopeViews
import Testing

/// A thread whose name and whose kvm_exit/kvm_entry disagree on its vCPU number (JSON `vcpu_mismatches`) gets one
/// `note:` line under report's and stat's footers; none without one.
@Suite struct ReportVCPUMismatchTests {
    /// VM 300: `CPU 3/KVM` (tid 301) traced as vcpu_id 4 (QEMU's APIC ID of cpu-index 3 with 3 cores per socket),
    /// `CPU 2/KVM` (tid 302) traced as 2; one MSR_WRITE pair each.
    static let trace = """
               CPU 3/KVM-301     (    300) [001] d..1. 1.000000: kvm_exit: vcpu 4 reason MSR_WRITE rip 0xa info1 0x0 info2 0x0 intr_info 0x0 error_code 0x0
               CPU 3/KVM-301     (    300) [001] d..1. 1.000002: kvm_entry: vcpu 4, rip 0xa
               CPU 2/KVM-302     (    300) [002] d..1. 1.000010: kvm_exit: vcpu 2 reason MSR_WRITE rip 0xa info1 0x0 info2 0x0 intr_info 0x0 error_code 0x0
               CPU 2/KVM-302     (    300) [002] d..1. 1.000014: kvm_entry: vcpu 2, rip 0xa

        """

    static let note = "note: VM 300 tid 301: thread 'CPU 3/KVM' is vCPU 3 by its name but kvm_exit/kvm_entry carry vcpu_id 4; "
        + "rows use the name's number (QEMU's cpu-index; KVM's vcpu_id is the APIC ID on x86)"

    func report(_ args: [String]) throws -> [String] {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("vcpu-mismatch-\(getpid())-\(UUID().uuidString).txt").path
        defer { unlink(path) }
        try Self.trace.write(toFile: path, atomically: true, encoding: .utf8)
        let r = try CLI.run(["report"] + args + [path])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        return r.stdout.split(separator: "\n").map(String.init)
    }

    @Test func reportFooterNotesTheMismatch() throws {
        #expect(try report([]).suffix(3) == [
            "pairing: paired 2, orphan exits 0, orphan entries 0, open at end 0, invalidated by loss 0, negative gaps 0",
            "lost events: 0",
            Self.note,
        ])
        // --by-vcpu rows use the name's number 3, never 4; the ioport analysis has the same footer.
        let byVCPU = try report(["--by-vcpu"])
        #expect(byVCPU.contains("VM 300, vCPU 3"), "\(byVCPU)")
        #expect(!byVCPU.contains { $0.hasPrefix("VM 300, vCPU 4") })
        #expect(try report(["--event", "ioport"]).last == Self.note)
        // A filter that leaves the thread out leaves its note out.
        #expect(try report(["--vcpu", "2"]).last == "lost events: 0")
    }

    /// stat's one-line footer gets the same note on a line of its own; two mismatches: the first, and a count.
    @Test func statFooterNotesTheMismatch() throws {
        let summary = try Summary(VCPUNumberTests.handMade())
        #expect(StatTable.footer(summary) == "lost_events 0  paired 10 orphan_exits 0 orphan_entries 0 open_at_end 0 invalidated_by_loss 0\n"
                + "note: VM 300 (web) tid 301: thread 'CPU 3/KVM' is vCPU 3 by its name but kvm_exit/kvm_entry carry vcpu_id 4; "
                + "rows use the name's number (QEMU's cpu-index; KVM's vcpu_id is the APIC ID on x86)")
        #expect(try !StatTable.footer(Summary(VCPUNumberTests.handMade(), filter: SummaryFilter(tids: [302]))).contains("note:"))
        var two = summary
        two.vcpuMismatches.append(two.vcpuMismatches[0])
        #expect(ReportTable.vcpuMismatchNote(two)?.hasSuffix("on x86); 1 more thread (--json: vcpu_mismatches)") == true)
    }
}
