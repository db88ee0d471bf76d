import Testing
import KVMExits

// The names fed by kernels' own tables (parsed by libtraceevent) are tested in
// Tests/KVMTraceTests/PrintFormatTablesTests.swift; here only what needs no format.

@Suite struct ExitReasonNamesTests {
    @Test func blocking() {
        #expect(ExitReasonNames.isBlocking(isa: .vmx, reasonName: "HLT"))
        #expect(ExitReasonNames.isBlocking(isa: .svm, reasonName: "hlt"))
        #expect(ExitReasonNames.isBlocking(isa: .svm, reasonName: "idle-halt"))
        #expect(!ExitReasonNames.isBlocking(isa: .vmx, reasonName: "hlt"))
        #expect(!ExitReasonNames.isBlocking(isa: .svm, reasonName: "io"))
    }

    @Test func isaJSON() {
        #expect(ISA.vmx.jsonName == "vmx")
        #expect(ISA.unknown.jsonName == nil)
        #expect(ISA(rawValue: 3) == .arm64)
    }
}

@Suite struct UserspaceExitNamesTests {
    @Test func fallback() {
        let n = UserspaceExitNames(kvmUserspaceExitTables: [])
        #expect(n.name(2) == "KVM_EXIT_IO")
        #expect(n.name(29) == "KVM_EXIT_X86_RDMSR")
        #expect(n.name(37) == "KVM_EXIT_NOTIFY")
        #expect(n.name(40) == "KVM_EXIT_TDX")
    }
}
