import Foundation
import KVMAnalysis
import KVMExits
import KVMSources
import Testing

/// Traces as people paste them (../shared/corpus/pasted): each reproduces its `.expected.json`, worked out
/// independently of kvmscope.
@Suite struct PastedTraceTests {
    /// ../shared/corpus/pasted relative to the repository root (KVMSCOPE_CORPUS overrides the corpus).
    static var dir: String {
        if let c = ProcessInfo.processInfo.environment["KVMSCOPE_CORPUS"] { return c + "/pasted/" }
        return Fixtures.root.deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("../shared/corpus/pasted").standardized.path + "/"
    }

    static func analyse(_ name: String) throws -> (TextTraceReader, Summary) {
        let r = try TextTraceReader(path: dir + name)
        return (r, try Summary(ReportAnalysis.run(r).snapshot))
    }

    static func events(_ s: Summary) -> [String: UInt64] {
        Dictionary(uniqueKeysWithValues: s.events.filter { $0.total > 0 }.map { ($0.name, $0.total) })
    }

    /// (count, min, max, sum) of a reason's latencies over all rows.
    static func latency(_ s: Summary, _ reason: String) -> [UInt64] {
        var h = HistogramSnapshot()
        for r in s.exits where r.reason == reason { if let x = r.histogram { h.merge(x) } }
        return [h.count, h.min, h.max, h.sum]
    }

    /// Exits per reason, keyed by what a user types: resolved to the trace's output names first.
    static func exits(_ s: Summary, _ typed: String) throws -> UInt64 {
        let present = s.exits.map { (isa: $0.isa, name: $0.reason) }
        let names = try ReasonResolver().resolve(typed, present: present)
        return s.exits.filter { names.contains($0.reason) }.reduce(0) { $0 + $1.count }
    }

    @Test func amdLibtraceeventNames() throws {
        let (r, s) = try Self.analyse("amd-vmware-gp-loop.txt")
        #expect(Self.events(s) == ["kvm_exit": 6, "kvm_msr": 2, "kvm_inj_exception": 5, "kvm_entry": 6,
                                   "kvm_emulate_insn": 2, "kvm_fpu": 1, "kvm_userspace_exit": 1])
        // The file's names, and the kernel's: both find the same rows.
        #expect(try Self.exits(s, "EXIT_MSR") == 2 && Self.exits(s, "EXIT_EXCP_GP") == 4)
        #expect(try Self.exits(s, "msr") == 2 && Self.exits(s, "gp EXCP") == 4 && Self.exits(s, "0x4d") == 4)
        #expect(s.exits.allSatisfy { $0.isa == .svm })
        #expect(Set(s.exits.map(\.reason)) == ["msr", "GP excp"])
        #expect(Set(s.exits.compactMap(\.code)) == [0x7c, 0x4d])
        #expect(s.pairing == PairingStats(paired: 5, orphanExits: 0, orphanEntries: 1, openAtEnd: 1))
        #expect(Self.latency(s, "msr") == [2, 3000, 7000, 10000])
        #expect(Self.latency(s, "GP excp") == [3, 2000, 7000, 12000])
        #expect(s.userspaceExits.map { "\($0.reason) \($0.count)" } == ["KVM_EXIT_SHUTDOWN 1"])
        // Two runs with prose between: "and so on." is never glued onto the entry before it.
        #expect(r.joinedLines == 0 && r.proseLines == 2)
        #expect(Set(s.exits.map(\.vm)) == [43752, 52213])
    }

    @Test func perfScriptWithoutCPUColumn() throws {
        let (r, s) = try Self.analyse("perf-script-no-cpu-column.txt")
        #expect(Self.events(s) == ["kvm_exit": 1, "kvm_entry": 1])
        #expect(s.exits.map { "\($0.vm) \($0.vcpu ?? 99) \($0.reason) \($0.count)" } == ["4242 0 VMCALL 1"])
        #expect(s.pairing == PairingStats(paired: 1))
        #expect(Self.latency(s, "VMCALL") == [1, 1000, 1000, 1000])
        #expect(r.style == .perf && r.missingCPUs && !r.missingThreadIDs)
    }

    @Test func perfScriptAsMailed() throws {
        let (r, s) = try Self.analyse("perf-script-preempt-timer.txt")
        #expect(Self.events(s) == ["kvm_exit": 2, "kvm_entry": 1, "kvm_vmx_debug": 4])
        #expect(T.exitReasons(s) == ["PREEMPTION_TIMER": 1, "VMCALL": 1])
        // The two captures run backwards in time: sorted, VMCALL pairs, PREEMPTION_TIMER is last and open.
        #expect(r.reordered)
        #expect(s.pairing == PairingStats(paired: 1, openAtEnd: 1))
        #expect(Self.latency(s, "VMCALL") == [1, 1000, 1000, 1000])
        #expect(Self.latency(s, "PREEMPTION_TIMER") == [0, 0, 0, 0])
        // No tid in the input: one thread, named preempt_test; vCPU 0 from the entry.
        #expect(r.missingThreadIDs && r.missingCPUs)
        #expect(r.identities.count == 1)
        #expect(r.identities.values.first?.comm == "preempt_test" && r.identities.values.first?.vcpu == 0)
        // Indented explanations and prose are skipped, never joined.
        #expect(r.joinedLines == 0 && r.proseLines == 24 - 7)
    }
    typealias T = TextTraceReaderTests

    @Test func lowercaseVMXOf2_6() throws {
        let (r, s) = try Self.analyse("old-2.6-lowercase-vmx-min.txt")
        #expect(Self.events(s) == ["kvm_exit": 1, "kvm_entry": 1])
        #expect(s.exits.map { "\($0.reason) \($0.isa) \($0.code ?? 0) \($0.count)" } == ["APIC_ACCESS vmx 44 1"])
        #expect(s.pairing == PairingStats(paired: 1))
        #expect(Self.latency(s, "APIC_ACCESS") == [1, 4000, 4000, 4000])
        #expect(r.unknownReasonNames.isEmpty)
    }

    @Test func traceCmdRawFields() throws {
        let (_, s) = try Self.analyse("tracecmd-R-raw-min.txt")
        #expect(Self.events(s) == ["kvm_exit": 1, "kvm_entry": 1])
        #expect(s.exits.map { "\($0.reason) \($0.isa) \($0.vcpu ?? 99) \($0.blocking)" } == ["PAUSE_INSTRUCTION vmx 0 false"])
        #expect(s.pairing == PairingStats(paired: 1))
        #expect(Self.latency(s, "PAUSE_INSTRUCTION") == [1, 1000, 1000, 1000])
    }

    @Test func traceCmdLatencyFormat() throws {
        let (r, s) = try Self.analyse("tracecmd-l-latency-min.txt")
        #expect(r.style == .traceCmdLatency)
        #expect(Self.events(s) == ["kvm_exit": 1, "kvm_entry": 1])
        #expect(s.exits.map { "\($0.reason) \($0.isa) \($0.code ?? 0) \($0.blocking)" } == ["HLT vmx 12 true"])
        #expect(s.pairing == PairingStats(paired: 1))
        #expect(Self.latency(s, "HLT") == [1, 1000, 1000, 1000])
        // "CPU 0/KV" is a vCPU thread cut to 8 characters, not the VM's name.
        #expect(r.identities[10000] == ThreadIdentity(vm: 10000, vmName: nil, vcpu: 0, comm: "CPU 0/KV"))
    }

    /// A name of two ISAs ("hlt": SVM's kernel name, a VMX halt in 2.6-era text) takes the ISA the rest of the
    /// trace shows, also when it comes first; alone, the ISA whose printer spells it so (SVM for "hlt").
    @Test func ambiguousNameTakesTheTraceISA() throws {
        let vmx = """
                     kvm-5664  [000] 1.000000: kvm_exit: reason hlt rip 0x1
                     kvm-5664  [000] 1.000010: kvm_entry: vcpu 0
                     kvm-5664  [000] 1.000020: kvm_exit: reason apic_access rip 0x2
                     kvm-5664  [000] 1.000030: kvm_exit: reason hlt rip 0x1
            """
        let r = try TextTraceReader(bytes: Array(vmx.utf8), name: "x")
        #expect(r.events.filter { $0.event == 0 }.map { "\($0.isa) \($0.reason)" } == ["1 12", "1 44", "1 12"])
        let alone = try TextTraceReader(bytes: Array(" q-1  [000] 1.0: kvm_exit: reason hlt rip 0x1\n".utf8), name: "x")
        #expect(alone.events.map { "\($0.isa) \($0.reason)" } == ["2 120"])
        // A name no table knows keeps its spelling, never an invented code.
        let odd = try TextTraceReader(bytes: Array(" q-1  [000] 1.0: kvm_exit: reason FANCY_NEW_EXIT rip 0x1\n".utf8), name: "x")
        let s = try Summary(ReportAnalysis.run(odd).snapshot)
        #expect(s.exits.map { "\($0.reason) \($0.isa) \($0.code.map(String.init) ?? "-")" } == ["FANCY_NEW_EXIT unknown -"])
    }

    /// Every line has an out-of-range number: all skipped and counted (3 exits, 3 entries), none wrapped.
    @Test func hugeNumbersAreSkippedNotWrapped() throws {
        #expect(throws: KVMScopeError.badFile(Self.dir + "malformed-huge-numbers.txt: no kvm events among its 0 trace records; "
            + "6 lines with out-of-range numbers skipped (3 kvm_entry, 3 kvm_exit); first: line 1, timestamp out of range")) {
            try TextTraceReader(path: Self.dir + "malformed-huge-numbers.txt")
        }
        // Line by line: what each is skipped for.
        let lines = try String(contentsOfFile: Self.dir + "malformed-huge-numbers.txt", encoding: .utf8)
            .split(separator: "\n").map(String.init)
        let good = "             kvm-5664  [000] 2.000000: kvm_exit: reason HLT rip 0x1\n"
        var whys: [String] = []
        for line in lines {
            let r = try TextTraceReader(bytes: Array((good + line + "\n").utf8), name: "x")
            #expect(r.events.count == 1 && r.records == 1)
            whys.append(r.firstMalformed.map { "\($0.line) \($0.why)" } ?? "-")
        }
        #expect(whys == ["2 timestamp out of range", "2 timestamp out of range", "2 thread id out of range",
                         "2 thread id out of range", "2 CPU out of range", "2 timestamp out of range"])
        // 2^64 − 1 ns is still a time; a vCPU of 2^32 and a 20-digit RIP are not numbers of their fields.
        let edge = """
             kvm-5664  [000] 18446744073.709551615: kvm_exit: reason HLT rip 0x1
             kvm-5664  [000] 1.000002: kvm_entry: vcpu 4294967296
             kvm-5664  [000] 1.000003: kvm_exit: reason HLT rip 0xffffffffffffffffffff
            """
        let r = try TextTraceReader(bytes: Array(edge.utf8), name: "x")
        #expect(r.events.map(\.timestamp) == [18_446_744_073_709_551_615])
        #expect(r.malformedLines == ["kvm_entry": 1, "kvm_exit": 1])
        #expect(r.malformedWarning == "2 lines with out-of-range numbers skipped (1 kvm_entry, 1 kvm_exit); first: line 2, field value out of range")
    }
}
