import Foundation
import KVMExits
import KVMSources
import Testing

/// The tables of one fixture format, as `EventFormats` reads them from libtraceevent's parsed print args.
private func printTables(_ kernel: String, _ event: String) throws -> [PrintFormatTable] {
    try printTables(format: Fixtures.text("formats/\(kernel)/\(event).format"))
}

private func printTables(format text: String) throws -> [PrintFormatTable] {
    let f = EventFormats()
    try f.add(system: "kvm", format: text)
    let id = try #require(f.kernelIDs.values.first)
    return try f.printTables(kernelID: id)
}

/// What `EventFormats` makes of a fixture's kvm_exit: the reason names the product uses.
private func exitNames(_ kernel: String) throws -> ExitReasonNames {
    try Fixtures.formats(kernel, events: ["kvm_exit"]).catalog.exitReasons
}

/// The symbol tables of a print fmt, walked by the shim in libtraceevent's parsed arguments.
@Suite struct PrintFormatTablesTests {
    /// Values as C constant expressions (hex, octal, negative, arithmetic) and names split into literals.
    @Test func parsesValuesAndSplitNames() throws {
        let fmt = #""x %s", __print_symbolic(REC->a & 0xffff, { 0, "ZERO" }, { 0x040 + 13, "GP" "_excp" }, { -1, "neg" }, { (1 << 0) | (1 << 1), "three" }, { 010, "eight" }), __print_flags(REC->f, "|", { 0x1, "A" }, { 0x4, "C" })"#
        let all = try printTables(format: """
            name: synthetic
            ID: 4242
            format:
            \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
            \tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
            \tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
            \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

            \tfield:unsigned int a;\toffset:8;\tsize:4;\tsigned:0;
            \tfield:unsigned int f;\toffset:12;\tsize:4;\tsigned:0;

            print fmt: \(fmt)
            """)
        let sym = all.filter { $0.kind == .symbolic }
        #expect(sym.count == 1)
        #expect(sym[0].expression == "REC->a & 0xffff")
        #expect(sym[0].field == "a")
        let t = sym[0].table
        #expect(t.name(0) == "ZERO")
        #expect(t.name(0x4d) == "GP_excp")
        #expect(t.name(UInt64.max) == "neg")
        #expect(t.name(3) == "three")
        #expect(t.name(8) == "eight")
        let fl = all.filter { $0.kind == .flags }
        #expect(fl.count == 1)
        #expect(fl[0].separator == "|")
        #expect(fl[0].field == "f")
        #expect(fl[0].table.flagNames(0x7) == ["A", "C", "0x2"])
    }

    @Test func realEmulateInsnFormat() throws {
        let t = try #require(printTables("6.18-x86", "kvm_emulate_insn").first?.table)
        #expect(t.name(3) == "vm16")
        #expect(t.name(1) == "prot16")
        #expect(t.name(9) == "prot64")
    }

    /// kvm_exit's tables sit inside `?:` (VMX, SVM) and inside `&&`/`?:` (the VMX flags): all are found, in order,
    /// with the field each prints.
    @Test func nestedTablesOfKVMExit() throws {
        let t = try printTables("6.18-x86", "kvm_exit")
        #expect(t.map(\.kind) == [.symbolic, .symbolic, .flags])
        #expect(t.map(\.field) == ["exit_reason", "exit_reason", "exit_reason"])
        #expect(t.map(\.expression) == ["REC->exit_reason & 0xffff", "REC->exit_reason", "REC->exit_reason & ~0xffff"])
        #expect(t.map(\.table.count) == [65, 110, 1])
        #expect(t[2].separator == " ")
    }

    @Test func unknownEventID() throws {
        let f = try Fixtures.formats("6.18-x86", events: ["kvm_fpu"])
        #expect(throws: KVMScopeError.self) { try f.printTables(kernelID: 999_999) }
    }

    /// Every fixture format's tables, and the reason tables kvm_exit and kvm_userspace_exit resolve to, are exactly
    /// those that the hand-written print-fmt scanner found before libtraceevent's parsed arguments replaced it
    /// (Tests/Fixtures/formats/*/*.tables were written by that scanner).
    @Test func everyFixtureAsBefore() throws {
        let root = Fixtures.root.appendingPathComponent("formats")
        var checked = 0
        for kernel in ["4.19-x86", "5.10-x86", "5.15-arm64", "6.8-x86", "6.18-x86"] {
            let files = try FileManager.default.contentsOfDirectory(atPath: root.appendingPathComponent(kernel).path)
            for file in files.sorted() where file.hasSuffix(".format") {
                let event = String(file.dropLast(".format".count))
                let expected = (try? Fixtures.text("formats/\(kernel)/\(event).tables")) ?? ""
                #expect(try Self.dump(kernel, event) == expected, "\(kernel)/\(event)")
                if !expected.isEmpty { checked += 1 }
            }
        }
        #expect(checked == 9)
    }

    static func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }

    static func dump(_ kernel: String, _ event: String) throws -> String {
        let tables = try printTables(kernel, event)
        var out = ""
        for t in tables where t.kind == .symbolic {
            out += "symbolic \(t.expression)\n"
            for e in t.table.entries { out += "  \(hex(e.value)) \(e.name)\n" }
        }
        for t in tables where t.kind == .flags {
            out += "flags \(t.expression) separator \"\(t.separator)\"\n"
            for e in t.table.entries { out += "  \(hex(e.value)) \(e.name)\n" }
        }
        if event == "kvm_exit" {
            let n = try exitNames(kernel)
            out += "== ExitReasonNames\n"
            for (label, t, k) in [("vmx", n.vmx, n.vmxFromKernel), ("svm", n.svm, n.svmFromKernel),
                                  ("arm64", n.arm64, n.arm64FromKernel),
                                  ("arm64_exception_types", n.arm64ExceptionTypes, false), ("vmx_flags", n.vmxFlags, false)] {
                out += "\(label)\(k ? " from kernel" : "")\n"
                for e in t.entries { out += "  \(hex(e.value)) \(e.name)\n" }
            }
        }
        if event == "kvm_userspace_exit" {
            let u = try Fixtures.formats(kernel, events: [event]).catalog.userspaceExitReasons
            out += "== UserspaceExitNames\(u.fromKernel ? " from kernel" : "")\n"
            for e in u.table.entries { out += "  \(hex(e.value)) \(e.name)\n" }
        }
        return out
    }
}

/// Reason names from the kernel's own tables (through `EventFormats`), and from the built-ins.
@Suite struct KernelReasonNamesTests {
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
        let n = try exitNames("6.18-x86")
        #expect(n.vmxFromKernel && n.svmFromKernel)
        Self.checkCommon(n)
    }

    @Test func fallback() {
        let n = ExitReasonNames(kvmExitTables: [])
        #expect(!n.vmxFromKernel && !n.svmFromKernel)
        Self.checkCommon(n)
    }

    @Test func olderKernels() throws {
        for dir in ["4.19-x86", "5.10-x86", "6.8-x86"] {
            let n = try exitNames(dir)
            #expect(n.vmxFromKernel && n.svmFromKernel, "\(dir)")
            Self.checkCommon(n)
        }
    }

    @Test func arm64() throws {
        let n = try exitNames("5.15-arm64")
        #expect(n.arm64FromKernel)
        for m in [n, ExitReasonNames(kvmExitTables: [])] {
            #expect(m.name(isa: .arm64, rawReason: 0x01) == "WFx")
            #expect(m.name(isa: .arm64, rawReason: 0x24) == "DABT_LOW")
            #expect(m.name(isa: .arm64, rawReason: 0x16) == "HVC64")
            #expect(m.arm64ExceptionType(2) == "TRAP")
            #expect(m.code(isa: .arm64, name: "ESR_ELx_EC_SYS64") == 0x18)
        }
        #expect(ExitReasonNames.isBlocking(isa: .arm64, reasonName: "WFx"))
    }

    @Test func canonicalCodes() throws {
        for n in [try exitNames("6.18-x86"), ExitReasonNames(kvmExitTables: [])] {
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

    /// Proves the built-in tables against the real 6.18 kernel, code by code.
    @Test func fallbackMatchesKernel618() throws {
        let all = try printTables("6.18-x86", "kvm_exit")
        let tables = all.filter { $0.kind == .symbolic }
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
        let flags = try #require(all.first { $0.kind == .flags })
        #expect(flags.table == ExitReasonNames.builtinVMXFlags)
        #expect(flags.expression == "REC->exit_reason & ~0xffff")
    }

    @Test func userspaceKernel618() throws {
        let n = try Fixtures.formats("6.18-x86", events: ["kvm_userspace_exit"]).catalog.userspaceExitReasons
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
}

/// The running kernel's formats, read from tracefs as `live`, `stat` and `record` read them.
@Suite(.enabled(if: FileManager.default.fileExists(atPath: "/sys/kernel/tracing/events/kvm/kvm_exit/format")
                || ProcessInfo.processInfo.environment["KVMSCOPE_REQUIRE_KVM"] == "1"))
struct LiveFormatTablesTests {
    /// kvm_exit's format is longer than one tracefs read: its print fmt (the VMX and SVM tables) is read whole.
    @Test func kvmExitTablesFromTheRunningKernel() throws {
        let (_, formats) = try TraceFS.kvmFormats(events: ["kvm_exit", "kvm_userspace_exit"], root: "/sys/kernel/tracing")
        let text = try TraceFS.format(system: "kvm", event: "kvm_exit", root: "/sys/kernel/tracing")
        #expect(text.contains("\nprint fmt: "))
        let n = formats.catalog.exitReasons
        #expect(n.vmxFromKernel && n.svmFromKernel)
        #expect(n.name(isa: .vmx, rawReason: 30) == "IO_INSTRUCTION")
        #expect(n.name(isa: .svm, rawReason: 0x7b) == "io")
        #expect(n.flags(isa: .vmx, rawReason: 0x8000_0021) == ["FAILED_VMENTRY"])
        let u = formats.catalog.userspaceExitReasons
        #expect(u.fromKernel)
        #expect(u.name(2) == "KVM_EXIT_IO")
    }
}
