import Foundation
import KVMExits
@testable import KVMTrace
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
