import Foundation
import KVMAnalysis
import KVMExits
import KVMSources
import Testing

/// Text traces: the real corpus (exact counts from ../shared/corpus/README.md) and golden inputs per format.
@Suite struct TextTraceReaderTests {
    static let corpus = "/work/shared/corpus/real/"

    /// Per-reason kvm_exit counts of a summary.
    static func exitReasons(_ s: Summary) -> [String: UInt64] {
        var out: [String: UInt64] = [:]
        for c in s.children where c.event == "kvm_exit" { out[c.reason] = c.total }
        return out
    }

    static func analyse(_ text: String) throws -> (TextTraceReader, Summary) {
        let r = try TextTraceReader(bytes: Array(text.utf8), name: "test")
        return (r, try Summary(ReportAnalysis.run(r).snapshot))
    }

    struct CorpusRow: Sendable, CustomTestStringConvertible {
        var file: String
        var exits: UInt64
        var entries: UInt64
        var reasons: [String: UInt64]
        var testDescription: String { file }
    }

    static let rows: [CorpusRow] = [
        CorpusRow(file: "hip24_sigmatek_test_host_report.txt", exits: 810, entries: 806, reasons: [
            "MSR_WRITE": 506, "HLT": 217, "EPT_MISCONFIG": 66, "PREEMPTION_TIMER": 13, "EXTERNAL_INTERRUPT": 5,
            "EOI_INDUCED": 3]),
        CorpusRow(file: "hip24_sigmatek_default_kvm_exit.txt", exits: 14132, entries: 0, reasons: [
            "APIC_WRITE": 8445, "HLT": 3778, "EPT_MISCONFIG": 1289, "EXTERNAL_INTERRUPT": 207, "PREEMPTION_TIMER": 163,
            "EPT_VIOLATION": 90, "IO_INSTRUCTION": 78, "EOI_INDUCED": 38, "PAUSE_INSTRUCTION": 33, "CPUID": 10,
            "MSR_READ": 1]),
        CorpusRow(file: "hip24_sigmatek_vapic_kvm_exit.txt", exits: 1333, entries: 0, reasons: [
            "MSR_WRITE": 820, "HLT": 337, "EPT_MISCONFIG": 108, "PREEMPTION_TIMER": 39, "EXTERNAL_INTERRUPT": 28,
            "MSR_READ": 1]),
        CorpusRow(file: "hip24_sigmatek_taskset_kvm_exit.txt", exits: 13843, entries: 0, reasons: [
            "APIC_WRITE": 8448, "HLT": 3482, "EPT_MISCONFIG": 1214, "EXTERNAL_INTERRUPT": 206, "PREEMPTION_TIMER": 189,
            "EPT_VIOLATION": 148, "IO_INSTRUCTION": 78, "EOI_INDUCED": 42, "PAUSE_INSTRUCTION": 25, "CPUID": 10,
            "MSR_READ": 1]),
        CorpusRow(file: "hip24_sigmatek_noapic_kvm_exit.txt", exits: 29514, entries: 0, reasons: [
            "MSR_WRITE": 14096, "PREEMPTION_TIMER": 7527, "EXTERNAL_INTERRUPT": 4067, "PAUSE_INSTRUCTION": 2295,
            "EPT_MISCONFIG": 1290, "EPT_VIOLATION": 117, "IO_INSTRUCTION": 78, "EOI_INDUCED": 26, "CPUID": 12,
            "MSR_READ": 6]),
        CorpusRow(file: "hip24_sigmatek_test_kvm_exit_test.txt", exits: 11496, entries: 0, reasons: [
            "MSR_WRITE": 6885, "HLT": 2850, "EPT_MISCONFIG": 1087, "EXTERNAL_INTERRUPT": 225, "PREEMPTION_TIMER": 165,
            "EPT_VIOLATION": 153, "IO_INSTRUCTION": 78, "EOI_INDUCED": 36, "CPUID": 12, "MSR_READ": 5]),
    ]

    @Test(arguments: rows)
    func corpusCounts(_ row: CorpusRow) throws {
        let source = try TraceFiles.open(Self.corpus + row.file)
        let s = try Summary(ReportAnalysis.run(source).snapshot)
        #expect(s.total(of: "kvm_exit") == row.exits)
        #expect(s.total(of: "kvm_entry") == row.entries)
        #expect(Self.exitReasons(s) == row.reasons)
        #expect(s.exits.allSatisfy { $0.isa == .vmx })
    }

    /// README: "4 entries have no preceding exit and 8 exits are followed by another exit with no entry".
    @Test func hostReportPairing() throws {
        let r = try TextTraceReader(path: Self.corpus + "hip24_sigmatek_test_host_report.txt")
        let s = try Summary(ReportAnalysis.run(r).snapshot)
        #expect(s.pairing.orphanEntries == 4)
        #expect(s.pairing.orphanExits == 8)
        #expect(s.pairing.paired == 802)
        #expect(r.style == .traceCmd)
        #expect(r.identities[150750] == ThreadIdentity(vm: 150750, vmName: "qemu-system-x86", vcpu: 0,
                                                        comm: "qemu-system-x86"))
    }
}

/// Golden inputs, one per format variant.
@Suite struct TextTraceFormatTests {
    typealias T = TextTraceReaderTests

    /// The kernel's trace file: header comments, flags column, comms with spaces, kvm_entry with a comma.
    @Test func kernelTextWithFlags() throws {
        let text = """
            # tracer: nop
            #
            #                                _-----=> irqs-off/BH-disabled
            #           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
            #              | |         |   |||||     |         |
                   CPU 0/KVM-1234    [003] d..1.  100.000001: kvm_exit: vcpu 0 reason HLT rip 0xffffffff81001234 info1 0x0000000000000000 info2 0x0000000000000000 intr_info 0x00000000 error_code 0x00000000
                   CPU 0/KVM-1234    [003] d..1.  100.000011: kvm_entry: vcpu 0, rip 0xffffffff81001235
                   CPU 1/KVM-1235    [005] d..1.  100.000020: kvm_exit: vcpu 1 reason MSR_WRITE rip 0xffffffff81000010 info1 0x0000000000000000 info2 0x0000000000000000 intr_info 0x00000000 error_code 0x00000000
                   CPU 1/KVM-1235    [005] d..1.  100.000022: kvm_entry: vcpu 1, rip 0xffffffff81000012
                 qemu-system-x86-1200    [001] .....  100.000030: kvm_userspace_exit: reason KVM_EXIT_IO (2)
            """
        let (r, s) = try T.analyse(text)
        #expect(r.style == .kernel)
        #expect(r.hasTGIDs == false)
        #expect(r.skippedLines == 5)
        #expect(r.events.map(\.timestamp) == [100_000_001_000, 100_000_011_000, 100_000_020_000, 100_000_022_000,
                                               100_000_030_000])
        #expect(r.events[0] == TraceEvent(timestamp: 100_000_001_000, rip: 0xffffffff81001234, tid: 1234, event: 0,
                                          cpu: 3, reason: 12, vcpu: 0, isa: ISA.vmx.rawValue))
        #expect(r.events[1].rip == 0xffffffff81001235 && r.events[1].vcpu == 0)
        #expect(T.exitReasons(s) == ["HLT": 1, "MSR_WRITE": 1])
        #expect(s.pairing.paired == 2 && s.pairing.orphanExits == 0 && s.pairing.orphanEntries == 0)
        // No TGID column: each thread is its own VM; the vCPU comes from the comm.
        #expect(r.identities[1235] == ThreadIdentity(vm: 1235, vmName: nil, vcpu: 1, comm: "CPU 1/KVM"))
        #expect(r.identities[1200] == ThreadIdentity(vm: 1200, vmName: "qemu-system-x86", vcpu: nil,
                                                      comm: "qemu-system-x86"))
        #expect(s.userspaceExits.map(\.reason) == ["KVM_EXIT_IO"])
        let hlt = try #require(s.exits.first { $0.reason == "HLT" })
        #expect(hlt.blocking && hlt.histogram?.max == 10_000 && hlt.vcpu == 0)
    }

    /// trace_pipe with `record-tgid`: the TGID column makes the VM; no flags column; nanosecond timestamps;
    /// a `<...>` comm; a loss note flags the next event of its CPU.
    @Test func kernelTextWithTGIDAndNoFlags() throws {
        let text = """
                   CPU 0/KVM-1234    (   1200) [003]  100.000001000: kvm_exit: vcpu 0 reason EPT_VIOLATION rip 0x10 info1 0x181 info2 0x0 intr_info 0x0 error_code 0x0
                       <...>-1234    (   1200) [003]  100.000001500: kvm_entry: vcpu 0, rip 0x10
            CPU:3 [LOST 7 EVENTS]
                   CPU 1/KVM-1235    (   1200) [003]  100.000002000: kvm_exit: vcpu 1 reason HLT rip 0x20 info1 0x0 info2 0x0 intr_info 0x0 error_code 0x0
                 qemu-system-x86-1200 (   1200) [001]  100.000003000: kvm_pio: pio_write at 0x10 size 1 count 1 val 0x0
            """
        let (r, s) = try T.analyse(text)
        #expect(r.style == .kernel)
        #expect(r.hasTGIDs)
        #expect(r.lostEvents == 7 && s.lostEvents == 7)
        #expect(r.events.map(\.flags) == [0, 0, TraceEvent.afterLoss, 0])
        #expect(r.events[0].detail == 0x181 && r.events[0].reason == 48)
        #expect(r.events[3].detail == 0x10 && r.events[3].aux == 1 && r.events[3].aux2 == 1)
        #expect(r.identities[1234] == ThreadIdentity(vm: 1200, vmName: "qemu-system-x86", vcpu: 0, comm: "CPU 0/KVM"))
        #expect(r.identities[1235]?.vm == 1200)
        #expect(Set(s.exits.map(\.vm)) == [1200])
        #expect(s.pairing.paired == 1 && s.pairing.orphanExits == 0 && s.pairing.openAtEnd == 1)
        #expect(s.exits.first { $0.reason == "EPT_VIOLATION" }?.histogram?.max == 500)
    }

    /// trace-cmd report (libtraceevent's kvm plugin): no vcpu on kvm_exit, entry without comma, SVM names.
    @Test func traceCmdReportSVM() throws {
        let text = """
            version = 7
            cpus=4
             qemu-system-x86-2001  [002]  50.000100: kvm_exit:             reason EXIT_NPF rip 0xffffffff8100aaaa info 100000004 fee000b0
             qemu-system-x86-2001  [002]  50.000104: kvm_entry:            vcpu 0 rip 0xffffffff8100aaaa
             qemu-system-x86-2001  [002]  50.000200: kvm_exit:             reason EXIT_IOIO rip 0xffffffff8100bbbb info 3f80210 ffffffff8100bbbd
             qemu-system-x86-2001  [002]  50.000210: kvm_entry:            vcpu 0 rip 0xffffffff8100bbbd
             qemu-system-x86-2001  [002]  50.000300: kvm_exit:             reason EXIT_MSR rip 0xffffffff8100cccc info 1 0
             qemu-system-x86-2001  [002]  50.000303: kvm_entry:            vcpu 0, rip 0xffffffff8100ccce
             qemu-system-x86-2001  [002]  50.000400: kvm_exit:             reason EXIT_HLT rip 0xffffffff8100dddd info 0 0
            CPU:2 [12 EVENTS DROPPED]
             qemu-system-x86-2001  [002]  50.000900: kvm_entry:            vcpu 0 rip 0xffffffff8100ddde
            """
        let (r, s) = try T.analyse(text)
        #expect(r.style == .traceCmd)
        #expect(r.skippedLines == 2)
        #expect(T.exitReasons(s) == ["npf": 1, "io": 1, "msr": 1, "hlt": 1])
        #expect(s.exits.allSatisfy { $0.isa == .svm && $0.vcpu == 0 })
        #expect(s.exits.first { $0.reason == "hlt" }?.blocking == true)
        #expect(r.events[0].detail == 0x100000004 && r.events[0].reason == 0x400)
        #expect(s.lostEvents == 12)
        // The HLT pair spans the loss: invalidated, not measured.
        #expect(s.pairing.paired == 3 && s.pairing.invalidatedByLoss == 1)
    }

    /// The kernel's own SVM names (lowercase, "DE excp" with a space) and VMX flags after the name.
    @Test func kernelSVMNamesAndVMXFlags() throws {
        let text = """
             qemu-3000  [000] .... 1.000000: kvm_exit: vcpu 0 reason npf rip 0x1 info1 0x0 info2 0x0 intr_info 0x0 error_code 0x0
             qemu-3000  [000] .... 1.000001: kvm_exit: vcpu 0 reason DE excp rip 0x2 info1 0x0 info2 0x0 intr_info 0x0 error_code 0x0
             qemu-3001  [000] .... 1.000002: kvm_exit: vcpu 0 reason INVALID_STATE FAILED_VMENTRY rip 0x3 info1 0x0 info2 0x0 intr_info 0x0 error_code 0x0
            """
        let (r, s) = try T.analyse(text)
        #expect(r.events.map(\.reason) == [0x400, 0x40, 0x8000_0021])
        #expect(r.events.map(\.isa) == [2, 2, 1])
        #expect(T.exitReasons(s) == ["npf": 1, "DE excp": 1, "INVALID_STATE": 1])
    }

    /// perf script: `kvm:kvm_exit:` names, `COMM TID` and `COMM PID/TID` thread columns.
    @Test func perfScript() throws {
        let text = """
                   CPU 0/KVM  4001 [007]   700.123456: kvm:kvm_exit: reason EXTERNAL_INTERRUPT rip 0xffffffff81000100 info 0 800000fd
                   CPU 0/KVM  4001 [007]   700.123459: kvm:kvm_entry: vcpu 0 rip 0xffffffff81000100
             qemu-system-x86 4000/4002 [001]   700.123500: kvm:kvm_exit: reason IO_INSTRUCTION rip 0x10 info 100008 0
             qemu-system-x86 4000/4002 [001]   700.123520: kvm:kvm_entry: vcpu 1 rip 0x12
             qemu-system-x86 4000/4002 [001]   700.123530: sched:sched_switch: prev_comm=x
            """
        let (r, s) = try T.analyse(text)
        #expect(r.style == .perf)
        #expect(r.records == 5 && r.events.count == 4)
        #expect(r.catalog.entries.map(\.name) == ["kvm_exit", "kvm_entry"])
        #expect(r.identities[4001] == ThreadIdentity(vm: 4001, vmName: nil, vcpu: 0, comm: "CPU 0/KVM"))
        #expect(r.identities[4002] == ThreadIdentity(vm: 4000, vmName: nil, vcpu: 1, comm: "qemu-system-x86"))
        #expect(T.exitReasons(s) == ["EXTERNAL_INTERRUPT": 1, "IO_INSTRUCTION": 1])
        #expect(s.pairing.paired == 2)
        #expect(s.exits.first { $0.reason == "IO_INSTRUCTION" }?.histogram?.max == 20_000)
    }

    /// perf script -g (and perf kvm stat record's samples) prints each sample's callchain under it, one
    /// `ADDRESS SYMBOL (DSO)` frame a line, indented: skipped and counted as callchain lines — they were joined
    /// to the record as if a mail client had broken it. A record really broken after `rip` is still joined,
    /// even with its callchain (without the DSO column) under it.
    static let perfCallchains = """
        qemu-system-x86 12345/12350 [002]  1000.000001: kvm:kvm_exit: reason MSR_WRITE rip 0xffffffff81064a4e info 0 0
        \tffffffffc0a1b2c3 vmx_handle_exit+0x123 ([kvm_intel])
        \tffffffffc09a8b7c vcpu_enter_guest+0x45c ([kvm])
        \t    7f0b2c3a1b2c ioctl+0xb (/usr/lib/x86_64-linux-gnu/libc.so.6)

        qemu-system-x86 12345/12350 [002]  1000.000004: kvm:kvm_entry: vcpu 0, rip 0xffffffff81064a51
        \tffffffffc09a8f00 vcpu_enter_guest+0x7e0 ([kvm])
        \t               0 [unknown] ([unknown])

        qemu-system-x86 12345/12351 [003]  1000.000010: kvm:kvm_exit: reason HLT rip
          0xffffffff81064b00 info 0 0
        \tffffffffc0a1b2c3 vmx_handle_exit
        \tffffffffc09a8b7c vcpu_enter_guest

        qemu-system-x86 12345/12351 [003]  1000.000110: kvm:kvm_entry: vcpu 1, rip 0xffffffff81064b01

        """

    @Test func perfCallchainLinesAreSkippedNotJoined() throws {
        let (r, s) = try T.analyse(Self.perfCallchains)
        #expect(r.records == 4)
        #expect(r.callchainLines == 7)
        #expect(r.joinedLines == 1)
        #expect(r.proseLines == 0 && r.skippedLines == 0)
        #expect(r.events.map(\.rip) == [0xffffffff81064a4e, 0xffffffff81064a51, 0xffffffff81064b00, 0xffffffff81064b01])
        #expect(T.exitReasons(s) == ["MSR_WRITE": 1, "HLT": 1])
        #expect(s.pairing.paired == 2)
    }

    /// Lines broken by a mail client (CRLF endings too) are joined back; a break may fall anywhere after
    /// the event name's colon.
    @Test func splitLinesAndCRLF() throws {
        let text = " qemu-5000  [001] 2.000000: kvm_exit:             reason MSR_WRITE rip\r\n"
            + "0xffffffff81000010 info 0 0\r\n"
            + " qemu-5000  [001] 2.000004: kvm_entry:\r\n"
            + "vcpu 3 rip 0xffffffff81000012\r\n"
            + " qemu-5000  [001] 2.000010: kvm_exit:             reason\r\n"
            + "  HLT rip 0x5 info 0\r\n"
            + "0\r\n"
            + " qemu-5000  [001] 2.000110: kvm_entry: vcpu 3 rip 0x6\r\n"
        let (r, s) = try T.analyse(text)
        #expect(r.joinedLines == 4)
        #expect(r.records == 4)
        #expect(r.events.map(\.rip) == [0xffffffff81000010, 0xffffffff81000012, 0x5, 0x6])
        #expect(r.events.map(\.vcpu) == [TraceEvent.noVCPU, 3, TraceEvent.noVCPU, 3])
        #expect(T.exitReasons(s) == ["MSR_WRITE": 1, "HLT": 1])
        #expect(s.pairing.paired == 2)
        #expect(r.identities[5000]?.vcpu == 3)
    }

    /// Records out of order (two files concatenated) come out sorted, equal timestamps in file order.
    @Test func unorderedIsSorted() throws {
        let text = """
             a-1  [000] 5.000000: kvm_exit: reason HLT rip 0x1 info 0 0
             a-1  [000] 5.000002: kvm_entry: vcpu 0 rip 0x1
             a-1  [000] 4.000000: kvm_exit: reason CPUID rip 0x2 info 0 0
             a-1  [000] 4.000001: kvm_entry: vcpu 0 rip 0x3
            """
        let (r, s) = try T.analyse(text)
        #expect(r.reordered)
        #expect(r.events.map(\.rip) == [2, 3, 1, 1])
        #expect(s.pairing.paired == 2)
    }

    @Test func badInputs() throws {
        #expect(throws: KVMScopeError.badFile("x: empty file")) { try TextTraceReader(bytes: [], name: "x") }
        // Point 6 of the trace-formats issue: what was looked for, and the first line that is none of it.
        #expect(throws: KVMScopeError.badFile(
            "x: unknown format (no trace records; looked for trace.dat, kernel trace text (COMM-TID [CPU] SECONDS: EVENT: FIELDS), "
            + "trace-cmd report (also -R, -l) or perf script (COMM TID [CPU] SECONDS: EVENT: FIELDS, any -F)); "
            + "line 2 is not one: \"hello\"")) {
            try TextTraceReader(bytes: Array("# comment\nhello\nworld\n".utf8), name: "x")
        }
        let long = String(repeating: "0123456789", count: 8)
        #expect(throws: KVMScopeError.badFile(
            "x: unknown format (no trace records; looked for \(TextTraceReader.expected)); line 1 is not one: "
            + "\"\(long.prefix(60))…\"")) {
            try TextTraceReader(bytes: Array((long + "\n").utf8), name: "x")
        }
        #expect(throws: KVMScopeError.badFile("x: no kvm events among its 1 trace records")) {
            try TextTraceReader(bytes: Array(" a-1 [000] 1.0: sched_switch: x\n".utf8), name: "x")
        }
        #expect(throws: KVMScopeError.badFile("/nonexistent/t.txt: No such file or directory")) {
            try TraceFiles.open("/nonexistent/t.txt")
        }
        #expect(try TraceFiles.kind(of: TraceFiles.traceDatMagic + [0, 6], path: "x") == .traceDat)
        #expect(throws: KVMScopeError.badFile(
            "x: unknown format (binary, not trace.dat; expected trace.dat, kernel trace text, trace-cmd report or perf script output)")) {
            try TraceFiles.kind(of: [0x7f, 0x45, 0x4c, 0x46, 0], path: "x")
        }
    }
}
