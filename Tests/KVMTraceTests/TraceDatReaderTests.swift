import Foundation
import KVMExits
import Testing
@testable import KVMTrace

/// trace.dat files: the real corpus file, synthetic round trips, and bad input.
@Suite struct TraceDatReaderTests {
    static let corpus = "/work/shared/corpus/real/hip24_host_trace_v7_zlib.dat"

    static var corpusPath: String {
        let env = ProcessInfo.processInfo.environment["KVMSCOPE_CORPUS"] ?? "/work/shared/corpus"
        return env + "/real/hip24_host_trace_v7_zlib.dat"
    }

    @Test func corpusV7ZlibOpensWithExactCounts() throws {
        let r = try TraceDatReader(path: Self.corpusPath)
        #expect(r.version == 7)
        #expect(r.compression == "zlib")
        #expect(r.cpuCount == 20)
        #expect(r.traceClock == "x86-tsc")
        #expect(r.tsc2nsec?.mult == 735_842_807)
        #expect(r.tsc2nsec?.shift == 31)
        #expect(r.catalog.entries.map(\.name).sorted() == ["kvm_entry", "kvm_exit"])
        #expect(r.lostEvents == 0)
        let exit = try #require(r.catalog.index(of: "kvm_exit"))
        let entry = try #require(r.catalog.index(of: "kvm_entry"))
        var exits = 0, entries = 0, last: UInt64 = 0, ordered = true
        var reasons: [String: Int] = [:]
        try r.forEachEvent { e in
            if e.timestamp < last { ordered = false }
            last = e.timestamp
            if e.event == exit {
                exits += 1
                reasons[r.catalog.reasonName(event: e.event, reason: e.reason, isa: e.isa) ?? "?", default: 0] += 1
            } else if e.event == entry { entries += 1 }
        }
        #expect(ordered)
        print("corpus: exits \(exits) entries \(entries) reasons \(reasons.sorted { $0.value > $1.value })")
        #expect(exits == 5860)
        #expect(entries == 5861)
        #expect(reasons == ["APIC_WRITE": 3206, "HLT": 1665, "EPT_MISCONFIG": 431, "MSR_WRITE": 313,
                            "PREEMPTION_TIMER": 145, "EPT_VIOLATION": 40, "EXTERNAL_INTERRUPT": 18,
                            "EOI_INDUCED": 16, "CPUID": 10, "PAUSE_INSTRUCTION": 9, "MSR_READ": 7])
    }
}
