import KVMAnalysis
import KVMExits
import Testing

/// Every printer's spelling of a reason, numbers, the trace's ISA, and the one-line error.
@Suite struct ReasonResolverTests {
    let r = ReasonResolver()

    func keys(_ s: String) -> [String] { r.keys(for: s).sorted().map { "\($0.isa.jsonName!) \($0.code)" } }

    @Test func everyPrinterSpelling() {
        // SVM: libtraceevent (trace-cmd, perf), the kernel, the header name, any case.
        for s in ["EXIT_MSR", "msr", "MSR", "SVM_EXIT_MSR", "exit_msr"] { #expect(keys(s) == ["svm 124"], "\(s)") }
        for s in ["EXIT_EXCP_GP", "GP excp", "gp  EXCP"] { #expect(keys(s) == ["svm 77"], "\(s)") }
        for s in ["EXIT_NPF", "npf"] { #expect(keys(s) == ["svm 1024"], "\(s)") }
        for s in ["EXIT_IOIO", "io"] { #expect(keys(s) == ["svm 123"], "\(s)") }
        // VMX: today's, 2.6-era lowercase and renamed ones, the header name.
        for s in ["EPT_VIOLATION", "ept_violation", "EXIT_REASON_EPT_VIOLATION"] { #expect(keys(s) == ["vmx 48"], "\(s)") }
        for s in ["apic_access", "APIC_ACCESS"] { #expect(keys(s) == ["vmx 44"], "\(s)") }
        for s in ["io_instruction", "IO_INSTRUCTION"] { #expect(keys(s) == ["vmx 30"], "\(s)") }
        #expect(keys("wrmsr") == ["vmx 32"] && keys("halt") == ["vmx 12"] && keys("ext_irq") == ["vmx 1"])
        #expect(keys("PENDING_INTERRUPT") == ["vmx 7"] && keys("interrupt_window") == ["vmx 7"])
        // A name in two ISAs means both until a trace says which.
        #expect(keys("HLT") == ["vmx 12", "svm 120"] && keys("hlt") == ["vmx 12", "svm 120"])
        #expect(keys("EXIT_HLT") == ["svm 120"])
        // arm64 with and without the header prefix.
        #expect(keys("WFx") == ["arm64 1"] && keys("ESR_ELx_EC_WFx") == ["arm64 1"] && keys("hvc64") == ["arm64 22"])
        // Numbers mean that code in any ISA.
        #expect(keys("0x7c") == ["vmx 124", "svm 124", "arm64 124"] && keys("48") == ["vmx 48", "svm 48", "arm64 48"])
        #expect(keys("UNKNOWN(0x5d)") == ["vmx 93", "svm 93", "arm64 93"])
        #expect(keys("NO_SUCH_REASON").isEmpty)
    }

    @Test func resolvesAgainstTheTrace() throws {
        let svm: [(isa: ISA, name: String)] = [(.svm, "msr"), (.svm, "GP excp"), (.svm, "hlt"), (.unknown, "KVM_EXIT_IO")]
        #expect(try r.resolve("EXIT_MSR", present: svm) == ["msr"])
        #expect(try r.resolve("0x7c", present: svm) == ["msr"])
        #expect(try r.resolve("HLT", present: svm) == ["hlt"])  // the trace's ISA
        #expect(try r.resolve("kvm_exit_io", present: svm) == ["KVM_EXIT_IO"])
        let vmx: [(isa: ISA, name: String)] = [(.vmx, "HLT"), (.vmx, "EPT_VIOLATION")]
        #expect(try r.resolve("hlt", present: vmx) == ["HLT"])
        #expect(try r.resolve("48", present: vmx) == ["EPT_VIOLATION"])
        // A reason kept by its printed spelling (no table knows it) matches that spelling, any case.
        #expect(try r.resolve("my_new_exit", present: [(.unknown, "MY_NEW_EXIT")]) == ["MY_NEW_EXIT"])
    }

    @Test func aNameThatMatchesNothingIsOneLine() {
        let present: [(isa: ISA, name: String)] = [(.svm, "msr"), (.svm, "GP excp"), (.svm, "npf")]
        #expect(throws: ReasonNameError("unknown exit reason 'EXIT_MRS'; closest in the trace: msr, npf, GP excp")) {
            try r.resolve("EXIT_MRS", present: present)
        }
        #expect(throws: ReasonNameError("no 'EPT_VIOLATION' exits (EPT_VIOLATION (vmx 0x30)); closest in the trace: GP excp, msr, npf")) {
            try r.resolve("EPT_VIOLATION", present: present)
        }
        // For a code, the closest are those whose codes are spelled alike (0x4d, 0x7c, 0x400).
        #expect(throws: ReasonNameError("no exit reason with code 0x30; closest in the trace: GP excp, msr, npf")) {
            try r.resolve("0x30", present: present)
        }
        #expect(throws: ReasonNameError("unknown exit reason 'x'; the trace has no exit reasons")) {
            try r.resolve("x", present: [])
        }
    }

    @Test func outputSpellingAndOtherSpellings() {
        #expect(r.name(ReasonKey(isa: .svm, code: 0x7c)) == "msr")
        #expect(r.name(ReasonKey(isa: .vmx, code: 44)) == "APIC_ACCESS")
        #expect(r.name(ReasonKey(isa: .arm64, code: 1)) == "WFx")
        #expect(r.spellings(ofOutputName: "msr") == ["msr", "EXIT_MSR", "SVM_EXIT_MSR", "0x7c"])
        #expect(r.spellings(ofOutputName: "HLT") == ["HLT", "halt", "EXIT_REASON_HLT", "0xc"])
        #expect(r.matches("exit_excp_gp", isa: .svm, name: "GP excp"))
        #expect(!r.matches("EXIT_EXCP_GP", isa: .vmx, name: "EXCEPTION_NMI"))
    }

    /// Storm rules name reasons in any spelling too: the rate of the kernel's `msr` rows fires for each.
    @Test func stormRulesAcceptEverySpelling() throws {
        func summary(_ n: UInt64) -> Summary {
            var s = Summary()
            s.exits = [ExitRow(vm: 1, vmName: nil, vcpu: 0, reason: "msr", isa: .svm, count: n, blocking: false,
                               histogram: nil, topRIPs: [], code: 0x7c)]
            s.userspaceExits = [UserspaceExitRow(vm: 1, vmName: nil, vcpu: 0, reason: "KVM_EXIT_IO", count: n)]
            return s
        }
        for spelling in ["EXIT_MSR", "msr", "124", "kvm_exit_io"] {
            var d = StormDetector(rules: [try StormRule(parsing: "rate(\(spelling)) > 1/s")])
            _ = d.evaluate(time: 0, summary: summary(0))
            let alerts = d.evaluate(time: 1, summary: summary(10))
            #expect(alerts.map { "\($0.state.rawValue) \($0.vm) \($0.value ?? -1)" } == ["firing 1 10.0"], "\(spelling)")
        }
    }
}
