import Testing
import Foundation
import KVMExits

private let formatsDir = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("Fixtures/formats")

private func printFormat(_ dir: String, _ event: String) throws -> String {
    let url = formatsDir.appendingPathComponent(dir).appendingPathComponent("\(event).format")
    let text = try String(contentsOf: url, encoding: .utf8)
    return try #require(SymbolTable.printFormat(inFormatFile: text))
}

@Suite struct PrintSymbolicTests {
    @Test func parsesValuesAndSplitNames() {
        let fmt = #""x %s", __print_symbolic(REC->a & 0xffff, { 0, "ZERO" }, { 0x040 + 13, "GP" "_excp" }, { -1, "neg" }, { (1 << 0) | (1 << 1), "three" }, { 010, "eight" }), __print_flags(REC->f, "|", { 0x1, "A" }, { 0x4, "C" })"#
        let sym = SymbolTable.symbolicTables(inPrintFormat: fmt)
        #expect(sym.count == 1)
        #expect(sym[0].expression == "REC->a & 0xffff")
        let t = sym[0].table
        #expect(t.name(0) == "ZERO")
        #expect(t.name(0x4d) == "GP_excp")
        #expect(t.name(UInt64.max) == "neg")
        #expect(t.name(3) == "three")
        #expect(t.name(8) == "eight")
        let fl = SymbolTable.flagsTables(inPrintFormat: fmt)
        #expect(fl.count == 1)
        #expect(fl[0].separator == "|")
        #expect(fl[0].table.flagNames(0x7) == ["A", "C", "0x2"])
    }

    @Test func realEmulateInsnFormat() throws {
        let t = try #require(SymbolTable.symbolicTables(inPrintFormat: printFormat("6.18-x86", "kvm_emulate_insn")).first?.table)
        #expect(t.name(3) == "vm16")
        #expect(t.name(1) == "prot16")
        #expect(t.name(9) == "prot64")
    }
}

@Suite struct ExitReasonNamesTests {
    static func checkCommon(_ n: ExitReasonNames) {
        #expect(n.name(isa: .vmx, rawReason: 12) == "HLT")
        #expect(n.name(isa: .vmx, rawReason: 0x8000_0021) == "INVALID_STATE")
        #expect(n.flags(isa: .vmx, rawReason: 0x8000_0021) == ["FAILED_VMENTRY"])
        #expect(n.flags(isa: .vmx, rawReason: 12) == [])
        #expect(n.flags(isa: .vmx, rawReason: 0x0800_0000) == ["0x8000000"])
        #expect(n.name(isa: .svm, rawReason: 0x400) == "npf")
        #expect(n.name(isa: .svm, rawReason: 0x7b) == "io")
        #expect(n.name(isa: .svm, rawReason: 0x4d) == "GP excp")
        #expect(n.name(isa: .svm, rawReason: 0x8000_0001) == "vmgexit_mmio_read")
        #expect(n.name(isa: .svm, rawReason: 0xffff_ffff) == "invalid_guest_state")
        #expect(n.name(isa: .vmx, rawReason: 0xfff) == "UNKNOWN(0xfff)")
        #expect(n.name(isa: .svm, rawReason: 0x1234) == "UNKNOWN(0x1234)")
        #expect(n.name(isa: .unknown, rawReason: 5) == "UNKNOWN(0x5)")
        #expect(n.flags(isa: .svm, rawReason: 0x8000_0001) == [])
    }

    @Test func kernel618() throws {
        let n = ExitReasonNames(kvmExitPrintFormat: try printFormat("6.18-x86", "kvm_exit"))
        #expect(n.vmxFromKernel && n.svmFromKernel)
        Self.checkCommon(n)
    }

    @Test func fallback() {
        let n = ExitReasonNames(kvmExitPrintFormat: nil)
        #expect(!n.vmxFromKernel && !n.svmFromKernel)
        Self.checkCommon(n)
    }

    @Test func olderKernels() throws {
        for dir in ["4.19-x86", "5.10-x86", "6.8-x86"] {
            let n = ExitReasonNames(kvmExitPrintFormat: try printFormat(dir, "kvm_exit"))
            #expect(n.vmxFromKernel && n.svmFromKernel, "\(dir)")
            Self.checkCommon(n)
        }
    }

    @Test func arm64() throws {
        let n = ExitReasonNames(kvmExitPrintFormat: try printFormat("5.15-arm64", "kvm_exit"))
        #expect(n.arm64FromKernel)
        for m in [n, ExitReasonNames(kvmExitPrintFormat: nil)] {
            #expect(m.name(isa: .arm64, rawReason: 0x01) == "WFx")
            #expect(m.name(isa: .arm64, rawReason: 0x24) == "DABT_LOW")
            #expect(m.name(isa: .arm64, rawReason: 0x16) == "HVC64")
            #expect(m.arm64ExceptionType(2) == "TRAP")
            #expect(m.code(isa: .arm64, name: "ESR_ELx_EC_SYS64") == 0x18)
        }
        #expect(ExitReasonNames.isBlocking(isa: .arm64, reasonName: "WFx"))
    }

    @Test func canonicalCodes() throws {
        for n in [ExitReasonNames(kvmExitPrintFormat: try printFormat("6.18-x86", "kvm_exit")),
                  ExitReasonNames(kvmExitPrintFormat: nil)] {
            #expect(n.code(isa: .svm, name: "EXIT_NPF") == 0x400)
            #expect(n.code(isa: .svm, name: "npf") == 0x400)
            #expect(n.code(isa: .svm, name: "EXIT_IOIO") == 0x7b)
            #expect(n.code(isa: .svm, name: "EXIT_MSR") == 0x7c)
            #expect(n.code(isa: .svm, name: "EXIT_VMMCALL").map { n.name(isa: .svm, rawReason: $0) } == "hypercall")
            #expect(n.code(isa: .svm, name: "EXIT_EXCP_GP") == 0x4d)
            #expect(n.code(isa: .svm, name: "EXIT_ERR") == 0xffff_ffff)
            #expect(n.code(isa: .vmx, name: "HLT") == 12)
            #expect(n.code(isa: .vmx, name: "PENDING_INTERRUPT").map { n.name(isa: .vmx, rawReason: $0) } == "INTERRUPT_WINDOW")
            #expect(n.code(isa: .vmx, name: "UNKNOWN(0xfff)") == 0xfff)
            #expect(n.code(isa: .vmx, name: "nonsense") == nil)
        }
    }

    @Test func blocking() {
        #expect(ExitReasonNames.isBlocking(isa: .vmx, reasonName: "HLT"))
        #expect(ExitReasonNames.isBlocking(isa: .svm, reasonName: "hlt"))
        #expect(ExitReasonNames.isBlocking(isa: .svm, reasonName: "idle-halt"))
        #expect(!ExitReasonNames.isBlocking(isa: .vmx, reasonName: "hlt"))
        #expect(!ExitReasonNames.isBlocking(isa: .svm, reasonName: "io"))
    }

    /// Proves the built-in tables against the real 6.18 kernel, code by code.
    @Test func fallbackMatchesKernel618() throws {
        let fmt = try printFormat("6.18-x86", "kvm_exit")
        let tables = SymbolTable.symbolicTables(inPrintFormat: fmt)
        #expect(tables.count == 2)
        let kernelVMX = tables[0].table, kernelSVM = tables[1].table
        var shared = 0
        for e in ExitReasonNames.builtinVMX.entries {
            if let k = kernelVMX.name(e.value) { #expect(k == e.name, "VMX \(e.value)"); shared += 1 }
        }
        for e in kernelVMX.entries { #expect(ExitReasonNames.builtinVMX.name(e.value) == e.name, "VMX \(e.value)") }
        for e in ExitReasonNames.builtinSVM.entries {
            if let k = kernelSVM.name(e.value) { #expect(k == e.name, "SVM \(e.value)"); shared += 1 }
        }
        for e in kernelSVM.entries { #expect(ExitReasonNames.builtinSVM.name(e.value) == e.name, "SVM \(e.value)") }
        #expect(shared == kernelVMX.count + kernelSVM.count)
        #expect(ExitReasonNames.builtinVMX == kernelVMX)
        #expect(ExitReasonNames.builtinSVM == kernelSVM)
        let flags = try #require(SymbolTable.flagsTables(inPrintFormat: fmt).first)
        #expect(flags.table == ExitReasonNames.builtinVMXFlags)
        #expect(flags.expression == "REC->exit_reason & ~0xffff")
    }

    @Test func isaJSON() {
        #expect(ISA.vmx.jsonName == "vmx")
        #expect(ISA.unknown.jsonName == nil)
        #expect(ISA(rawValue: 3) == .arm64)
    }
}

@Suite struct UserspaceExitNamesTests {
    @Test func kernel618() throws {
        let n = UserspaceExitNames(kvmUserspaceExitPrintFormat: try printFormat("6.18-x86", "kvm_userspace_exit"))
        #expect(n.fromKernel)
        #expect(n.name(2) == "KVM_EXIT_IO")
        #expect(n.name(6) == "KVM_EXIT_MMIO")
        #expect(n.name(39) == "KVM_EXIT_MEMORY_FAULT")  // beyond the kernel's table: built-in
        #expect(n.name(999) == "UNKNOWN(0x3e7)")
        #expect(n.code(name: "KVM_EXIT_HLT") == 5)
        #expect(n.code(name: "MMIO") == 6)
        // The kernel's table agrees with the built-in one wherever both name a code.
        for e in n.table.entries { #expect(UserspaceExitNames.builtin.name(e.value) == e.name) }
    }

    @Test func fallback() {
        let n = UserspaceExitNames(kvmUserspaceExitPrintFormat: nil)
        #expect(n.name(2) == "KVM_EXIT_IO")
        #expect(n.name(29) == "KVM_EXIT_X86_RDMSR")
        #expect(n.name(37) == "KVM_EXIT_NOTIFY")
        #expect(n.name(40) == "KVM_EXIT_TDX")
    }
}
