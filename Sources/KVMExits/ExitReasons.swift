// Exit-reason names for kvm:kvm_exit (VMX, SVM, arm64) and kvm:kvm_userspace_exit.
//
// Names come from the running kernel's own `print fmt:` tables when we have them
// (they are exactly what the kernel itself prints), and from the built-in tables
// below otherwise. The built-in tables were written from the public Linux headers:
//   VMX:   arch/x86/include/uapi/asm/vmx.h   VMX_EXIT_REASONS / VMX_EXIT_REASON_FLAGS
//   SVM:   arch/x86/include/uapi/asm/svm.h   SVM_EXIT_REASONS
//   arm64: arch/arm64/include/asm/esr.h      ESR_ELx_EC_* (printed without the prefix,
//          as kvm_arm_exception_class does in arch/arm64/include/asm/kvm_arm.h)
//   userspace: include/uapi/linux/kvm.h      KVM_EXIT_*
// A unit test proves the VMX/SVM built-ins against a real 6.18 kernel's format file.

/// The instruction-set flavour recorded in kvm_exit's `isa` field (1 = VMX, 2 = SVM;
/// arm64 kvm_exit has no such field, the reader sets `.arm64`).
public enum ISA: UInt8, Sendable, Codable {
    case unknown = 0, vmx = 1, svm = 2, arm64 = 3

    /// The spelling used in JSON output, nil for `.unknown`.
    public var jsonName: String? {
        switch self {
        case .unknown: nil
        case .vmx: "vmx"
        case .svm: "svm"
        case .arm64: "arm64"
        }
    }
}

/// Names for kvm_exit reasons.
///
/// - VMX: the low 16 bits of `exit_reason` are the basic exit reason; the upper bits
///   are flags (bit 31 = FAILED_VMENTRY), reported separately by `flags(isa:rawReason:)`.
/// - SVM: `exit_reason` is the full VMCB exit code (e.g. 0x400 `npf`, 0x80000001
///   `vmgexit_mmio_read`, 0xffffffff `invalid_guest_state`).
/// - arm64: the reason is kvm_exit's `esr_ec` (the ESR exception class).
///
/// Lookup order: the kernel's table (if a print fmt was given and held one), then the
/// built-in table (which knows codes newer than an old kernel's table), then
/// `UNKNOWN(0x…)` (lowercase hex, no padding) — a code is never dropped.
public struct ExitReasonNames: Sendable, Equatable {
    public let vmx: SymbolTable
    public let svm: SymbolTable
    public let vmxFlags: SymbolTable
    public let arm64: SymbolTable
    /// arm64 kvm_exit `ret` (exception type: IRQ, SERROR, TRAP, HYP_GONE).
    public let arm64ExceptionTypes: SymbolTable
    /// True for each table that came from the kernel's print fmt rather than the built-ins.
    public let vmxFromKernel: Bool
    public let svmFromKernel: Bool
    public let arm64FromKernel: Bool

    /// - Parameter kvmExitTables: the symbol tables of kvm_exit's print fmt (events/kvm/kvm_exit/format)
    ///   as libtraceevent parsed them, in order; empty → built-in tables only.
    public init(kvmExitTables: [PrintFormatTable]) {
        var vmx: SymbolTable?
        var svm: SymbolTable?
        var arm: SymbolTable?
        var armType: SymbolTable?
        var flags: SymbolTable?
        for t in kvmExitTables where t.kind == .symbolic {
            let (expr, table) = (t.expression, t.table)
            if vmx == nil, table.contains(name: "EXCEPTION_NMI") || table.contains(name: "EPT_VIOLATION")
                || (expr.contains("0xffff") && table.contains(name: "HLT")) {
                vmx = table
            } else if svm == nil, table.contains(name: "npf") || table.contains(name: "vmrun")
                || table.contains(name: "read_cr0") {
                svm = table
            } else if arm == nil, table.contains(name: "WFx") || table.contains(name: "DABT_LOW") {
                arm = table
            } else if armType == nil, table.contains(name: "TRAP"), table.contains(name: "IRQ") {
                armType = table
            }
        }
        for t in kvmExitTables where t.kind == .flags && flags == nil && t.table.contains(name: "FAILED_VMENTRY") {
            flags = t.table
        }
        self.vmx = (vmx ?? Self.builtinVMX).truncatedTo32Bits()
        self.svm = (svm ?? Self.builtinSVM).truncatedTo32Bits()
        self.arm64 = (arm ?? Self.builtinARM64).truncatedTo32Bits()
        self.arm64ExceptionTypes = (armType ?? Self.builtinARM64ExceptionTypes).truncatedTo32Bits()
        self.vmxFlags = (flags ?? Self.builtinVMXFlags).truncatedTo32Bits()
        vmxFromKernel = vmx != nil
        svmFromKernel = svm != nil
        arm64FromKernel = arm != nil
    }

    /// The reason name; `UNKNOWN(0x…)` for codes no table knows.
    public func name(isa: ISA, rawReason: UInt32) -> String {
        switch isa {
        case .vmx:
            let basic = UInt64(rawReason & 0xffff)
            return vmx.name(basic) ?? Self.builtinVMX.name(basic) ?? Self.unknown(basic)
        case .svm:
            let code = UInt64(rawReason)
            return svm.name(code) ?? Self.builtinSVM32.name(code) ?? Self.unknown(code)
        case .arm64:
            let code = UInt64(rawReason)
            return arm64.name(code) ?? Self.builtinARM64.name(code) ?? Self.unknown(code)
        case .unknown:
            return Self.unknown(UInt64(rawReason))
        }
    }

    /// VMX flag names set in the upper 16 bits (e.g. ["FAILED_VMENTRY"]); unknown flag
    /// bits come back as one "0x…" string. Always empty for non-VMX.
    public func flags(isa: ISA, rawReason: UInt32) -> [String] {
        guard isa == .vmx else { return [] }
        return vmxFlags.flagNames(UInt64(rawReason & 0xffff_0000))
    }

    /// The arm64 exception type for kvm_exit's `ret` (IRQ, SERROR, TRAP, HYP_GONE).
    public func arm64ExceptionType(_ ret: Int32) -> String {
        let v = UInt64(UInt32(bitPattern: ret))
        return arm64ExceptionTypes.name(v) ?? Self.builtinARM64ExceptionTypes.name(v) ?? Self.unknown(v)
    }

    /// Maps a reason name from any spelling we know back to its code, so text traces
    /// can be counted under the canonical kernel name (`name(isa:rawReason:)` of the
    /// result). Accepts: the kernel's names (from the parsed table or the built-ins);
    /// libtraceevent kvm-plugin spellings (SVM "EXIT_NPF", "EXIT_IOIO", "EXIT_MSR",
    /// "EXIT_VMMCALL", "EXIT_EXCP_GP", "EXIT_ERR"…; VMX "PENDING_INTERRUPT");
    /// arm64 "ESR_ELx_EC_…" prefixed names; and "UNKNOWN(0x…)" / "UNKNOWN (decimal)".
    public func code(isa: ISA, name: String) -> UInt32? {
        if let v = Self.parseUnknown(name) { return v }
        let tables: [SymbolTable]
        var n = name
        switch isa {
        case .vmx: tables = [vmx, Self.builtinVMX, Self.vmxAliases]
        case .svm: tables = [svm, Self.builtinSVM32, Self.svmAliases]
        case .arm64:
            if n.hasPrefix("ESR_ELx_EC_") { n = String(n.dropFirst("ESR_ELx_EC_".count)) }
            tables = [arm64, Self.builtinARM64]
        case .unknown: return nil
        }
        for t in tables {
            if let v = t.value(forName: n) { return UInt32(truncatingIfNeeded: v) }
        }
        return nil
    }

    /// True when the exit means the guest is blocked in a halt/wait (VMX "HLT", SVM
    /// "hlt" and "idle-halt", arm64 "WFx"). Time between such an exit and the next
    /// entry is mostly the guest being idle (KVM blocks the vCPU until an interrupt),
    /// not exit-handling latency; callers should report it apart from latency.
    public static func isBlocking(isa: ISA, reasonName: String) -> Bool {
        switch isa {
        case .vmx: reasonName == "HLT"
        case .svm: reasonName == "hlt" || reasonName == "idle-halt"
        case .arm64: reasonName == "WFx"
        case .unknown: false
        }
    }

    static func unknown(_ v: UInt64) -> String { "UNKNOWN(0x" + String(v, radix: 16) + ")" }

    static func parseUnknown(_ name: String) -> UInt32? {
        if name.hasPrefix("UNKNOWN(0x"), name.hasSuffix(")") {
            return UInt32(name.dropFirst("UNKNOWN(0x".count).dropLast(), radix: 16)
        }
        if name.hasPrefix("UNKNOWN ("), name.hasSuffix(")") {
            return UInt32(name.dropFirst("UNKNOWN (".count).dropLast())
        }
        return nil
    }

    // MARK: - Built-in tables

    /// VMX basic exit reasons as named by VMX_EXIT_REASONS (Linux 6.18).
    public static let builtinVMX = SymbolTable([
        (0, "EXCEPTION_NMI"), (1, "EXTERNAL_INTERRUPT"), (2, "TRIPLE_FAULT"), (3, "INIT_SIGNAL"),
        (4, "SIPI_SIGNAL"), (7, "INTERRUPT_WINDOW"), (8, "NMI_WINDOW"), (9, "TASK_SWITCH"),
        (10, "CPUID"), (12, "HLT"), (13, "INVD"), (14, "INVLPG"), (15, "RDPMC"), (16, "RDTSC"),
        (18, "VMCALL"), (19, "VMCLEAR"), (20, "VMLAUNCH"), (21, "VMPTRLD"), (22, "VMPTRST"),
        (23, "VMREAD"), (24, "VMRESUME"), (25, "VMWRITE"), (26, "VMOFF"), (27, "VMON"),
        (28, "CR_ACCESS"), (29, "DR_ACCESS"), (30, "IO_INSTRUCTION"), (31, "MSR_READ"),
        (32, "MSR_WRITE"), (33, "INVALID_STATE"), (34, "MSR_LOAD_FAIL"), (36, "MWAIT_INSTRUCTION"),
        (37, "MONITOR_TRAP_FLAG"), (39, "MONITOR_INSTRUCTION"), (40, "PAUSE_INSTRUCTION"),
        (41, "MCE_DURING_VMENTRY"), (43, "TPR_BELOW_THRESHOLD"), (44, "APIC_ACCESS"),
        (45, "EOI_INDUCED"), (46, "GDTR_IDTR"), (47, "LDTR_TR"), (48, "EPT_VIOLATION"),
        (49, "EPT_MISCONFIG"), (50, "INVEPT"), (51, "RDTSCP"), (52, "PREEMPTION_TIMER"),
        (53, "INVVPID"), (54, "WBINVD"), (55, "XSETBV"), (56, "APIC_WRITE"), (57, "RDRAND"),
        (58, "INVPCID"), (59, "VMFUNC"), (60, "ENCLS"), (61, "RDSEED"), (62, "PML_FULL"),
        (63, "XSAVES"), (64, "XRSTORS"), (67, "UMWAIT"), (68, "TPAUSE"), (74, "BUS_LOCK"),
        (75, "NOTIFY"), (77, "TDCALL"), (84, "MSR_READ_IMM"), (85, "MSR_WRITE_IMM"),
    ])

    /// VMX_EXIT_REASON_FLAGS.
    public static let builtinVMXFlags = SymbolTable([(0x8000_0000, "FAILED_VMENTRY")])

    /// SVM exit codes as named by SVM_EXIT_REASONS (Linux 6.18). `-1` is SVM_EXIT_ERR.
    public static let builtinSVM: SymbolTable = {
        var t: [(UInt64, String)] = []
        for cr in [0, 2, 3, 4, 8] as [UInt64] { t.append((cr, "read_cr\(cr)")) }
        for cr in [0, 2, 3, 4, 8] as [UInt64] { t.append((0x10 + cr, "write_cr\(cr)")) }
        for dr in 0...7 as ClosedRange<UInt64> { t.append((0x20 + dr, "read_dr\(dr)")) }
        for dr in 0...7 as ClosedRange<UInt64> { t.append((0x30 + dr, "write_dr\(dr)")) }
        for (vec, name) in svmExceptionVectors { t.append((0x40 + vec, "\(name) excp")) }
        t += [
            (0x060, "interrupt"), (0x061, "nmi"), (0x062, "smi"), (0x063, "init"), (0x064, "vintr"),
            (0x065, "cr0_sel_write"), (0x066, "read_idtr"), (0x067, "read_gdtr"), (0x068, "read_ldtr"),
            (0x069, "read_rt"), (0x06a, "write_idtr"), (0x06b, "write_gdtr"), (0x06c, "write_ldtr"),
            (0x06d, "write_rt"), (0x06e, "rdtsc"), (0x06f, "rdpmc"), (0x070, "pushf"), (0x071, "popf"),
            (0x072, "cpuid"), (0x073, "rsm"), (0x074, "iret"), (0x075, "swint"), (0x076, "invd"),
            (0x077, "pause"), (0x078, "hlt"), (0x079, "invlpg"), (0x07a, "invlpga"), (0x07b, "io"),
            (0x07c, "msr"), (0x07d, "task_switch"), (0x07e, "ferr_freeze"), (0x07f, "shutdown"),
            (0x080, "vmrun"), (0x081, "hypercall"), (0x082, "vmload"), (0x083, "vmsave"),
            (0x084, "stgi"), (0x085, "clgi"), (0x086, "skinit"), (0x087, "rdtscp"), (0x088, "icebp"),
            (0x089, "wbinvd"), (0x08a, "monitor"), (0x08b, "mwait"), (0x08d, "xsetbv"),
            (0x08f, "write_efer_trap"), (0x090, "write_cr0_trap"), (0x094, "write_cr4_trap"),
            (0x098, "write_cr8_trap"), (0x0a2, "invpcid"), (0x0a5, "buslock"), (0x0a6, "idle-halt"),
            (0x400, "npf"), (0x401, "avic_incomplete_ipi"), (0x402, "avic_unaccelerated_access"),
            (0x403, "vmgexit"),
            (0x8000_0001, "vmgexit_mmio_read"), (0x8000_0002, "vmgexit_mmio_write"),
            (0x8000_0003, "vmgexit_nmi_complete"), (0x8000_0004, "vmgexit_ap_hlt_loop"),
            (0x8000_0005, "vmgexit_ap_jump_table"), (0x8000_0010, "vmgexit_page_state_change"),
            (0x8000_0011, "vmgexit_guest_request"), (0x8000_0012, "vmgexit_ext_guest_request"),
            (0x8000_0013, "vmgexit_ap_creation"), (0x8000_fffd, "vmgexit_hypervisor_feature"),
            (UInt64.max, "invalid_guest_state"),
        ]
        return SymbolTable(t)
    }()

    /// x86 exception vectors that SVM_EXIT_REASONS names as "XX excp" (XM is printed "XF").
    static let svmExceptionVectors: [(UInt64, String)] = [
        (0, "DE"), (1, "DB"), (3, "BP"), (4, "OF"), (5, "BR"), (6, "UD"), (7, "NM"), (8, "DF"),
        (10, "TS"), (11, "NP"), (12, "SS"), (13, "GP"), (14, "PF"), (16, "MF"), (17, "AC"),
        (18, "MC"), (19, "XF"),
    ]

    static let builtinSVM32 = builtinSVM.truncatedTo32Bits()

    /// libtraceevent kvm-plugin spellings of SVM reasons ("EXIT_" + SVM_EXIT_* suffix).
    static let svmAliases: SymbolTable = {
        var t: [(UInt64, String)] = []
        for cr in [0, 2, 3, 4, 8] as [UInt64] {
            t.append((cr, "EXIT_READ_CR\(cr)"))
            t.append((0x10 + cr, "EXIT_WRITE_CR\(cr)"))
        }
        for dr in 0...7 as ClosedRange<UInt64> {
            t.append((0x20 + dr, "EXIT_READ_DR\(dr)"))
            t.append((0x30 + dr, "EXIT_WRITE_DR\(dr)"))
        }
        for (vec, name) in svmExceptionVectors { t.append((0x40 + vec, "EXIT_EXCP_\(name)")) }
        t += [
            (0x040, "EXIT_EXCP_BASE"), (0x060, "EXIT_INTR"), (0x061, "EXIT_NMI"), (0x062, "EXIT_SMI"),
            (0x063, "EXIT_INIT"), (0x064, "EXIT_VINTR"), (0x065, "EXIT_CR0_SEL_WRITE"),
            (0x066, "EXIT_IDTR_READ"), (0x067, "EXIT_GDTR_READ"), (0x068, "EXIT_LDTR_READ"),
            (0x069, "EXIT_TR_READ"), (0x06a, "EXIT_IDTR_WRITE"), (0x06b, "EXIT_GDTR_WRITE"),
            (0x06c, "EXIT_LDTR_WRITE"), (0x06d, "EXIT_TR_WRITE"), (0x06e, "EXIT_RDTSC"),
            (0x06f, "EXIT_RDPMC"), (0x070, "EXIT_PUSHF"), (0x071, "EXIT_POPF"), (0x072, "EXIT_CPUID"),
            (0x073, "EXIT_RSM"), (0x074, "EXIT_IRET"), (0x075, "EXIT_SWINT"), (0x076, "EXIT_INVD"),
            (0x077, "EXIT_PAUSE"), (0x078, "EXIT_HLT"), (0x079, "EXIT_INVLPG"), (0x07a, "EXIT_INVLPGA"),
            (0x07b, "EXIT_IOIO"), (0x07c, "EXIT_MSR"), (0x07d, "EXIT_TASK_SWITCH"),
            (0x07e, "EXIT_FERR_FREEZE"), (0x07f, "EXIT_SHUTDOWN"), (0x080, "EXIT_VMRUN"),
            (0x081, "EXIT_VMMCALL"), (0x082, "EXIT_VMLOAD"), (0x083, "EXIT_VMSAVE"), (0x084, "EXIT_STGI"),
            (0x085, "EXIT_CLGI"), (0x086, "EXIT_SKINIT"), (0x087, "EXIT_RDTSCP"), (0x088, "EXIT_ICEBP"),
            (0x089, "EXIT_WBINVD"), (0x08a, "EXIT_MONITOR"), (0x08b, "EXIT_MWAIT"),
            (0x08c, "EXIT_MWAIT_COND"), (0x08d, "EXIT_XSETBV"), (0x08e, "EXIT_RDPRU"),
            (0x08f, "EXIT_EFER_WRITE_TRAP"), (0x090, "EXIT_CR0_WRITE_TRAP"),
            (0x094, "EXIT_CR4_WRITE_TRAP"), (0x098, "EXIT_CR8_WRITE_TRAP"), (0x0a2, "EXIT_INVPCID"),
            (0x0a5, "EXIT_BUS_LOCK"), (0x0a6, "EXIT_IDLE_HLT"), (0x400, "EXIT_NPF"),
            (0x401, "EXIT_AVIC_INCOMPLETE_IPI"), (0x402, "EXIT_AVIC_UNACCELERATED_ACCESS"),
            (0x403, "EXIT_VMGEXIT"), (0xffff_ffff, "EXIT_ERR"),
        ]
        return SymbolTable(t)
    }()

    /// libtraceevent kvm-plugin VMX names that differ from the kernel's.
    static let vmxAliases = SymbolTable([(7, "PENDING_INTERRUPT")])

    /// arm64 ESR exception classes (ESR_ELx_EC_* without the prefix).
    public static let builtinARM64 = SymbolTable([
        (0x00, "UNKNOWN"), (0x01, "WFx"), (0x03, "CP15_32"), (0x04, "CP15_64"), (0x05, "CP14_MR"),
        (0x06, "CP14_LS"), (0x07, "FP_ASIMD"), (0x08, "CP10_ID"), (0x09, "PAC"), (0x0c, "CP14_64"),
        (0x0d, "BTI"), (0x0e, "ILL"), (0x11, "SVC32"), (0x12, "HVC32"), (0x13, "SMC32"),
        (0x15, "SVC64"), (0x16, "HVC64"), (0x17, "SMC64"), (0x18, "SYS64"), (0x19, "SVE"),
        (0x1a, "ERET"), (0x1c, "FPAC"), (0x1d, "SME"), (0x1f, "IMP_DEF"), (0x20, "IABT_LOW"),
        (0x21, "IABT_CUR"), (0x22, "PC_ALIGN"), (0x24, "DABT_LOW"), (0x25, "DABT_CUR"),
        (0x26, "SP_ALIGN"), (0x27, "MOPS"), (0x28, "FP_EXC32"), (0x2c, "FP_EXC64"), (0x2d, "GCS"),
        (0x2f, "SERROR"), (0x30, "BREAKPT_LOW"), (0x31, "BREAKPT_CUR"), (0x32, "SOFTSTP_LOW"),
        (0x33, "SOFTSTP_CUR"), (0x34, "WATCHPT_LOW"), (0x35, "WATCHPT_CUR"), (0x38, "BKPT32"),
        (0x3a, "VECTOR32"), (0x3c, "BRK64"),
    ])

    /// arm64 kvm_exit `ret` (kvm_arm_exception_type in asm/kvm_asm.h; HYP_GONE = HVC_STUB_ERR).
    public static let builtinARM64ExceptionTypes = SymbolTable([
        (0, "IRQ"), (1, "SERROR"), (2, "TRAP"), (0xbadca11, "HYP_GONE"),
    ])
}

/// Names for kvm_userspace_exit's `reason` (KVM_EXIT_*), e.g. 2 → "KVM_EXIT_IO".
/// Same lookup order as `ExitReasonNames`: kernel table, built-in, `UNKNOWN(0x…)`.
public struct UserspaceExitNames: Sendable, Equatable {
    public let table: SymbolTable
    public let fromKernel: Bool

    /// - Parameter kvmUserspaceExitTables: the symbol tables of kvm_userspace_exit's print fmt
    ///   (events/kvm/kvm_userspace_exit/format) as libtraceevent parsed them; empty → built-in table only.
    public init(kvmUserspaceExitTables: [PrintFormatTable]) {
        let found = kvmUserspaceExitTables
            .first { $0.kind == .symbolic && $0.table.entries.contains { $0.name.hasPrefix("KVM_EXIT_") } }?.table
        table = (found ?? Self.builtin).truncatedTo32Bits()
        fromKernel = found != nil
    }

    public func name(_ reason: UInt32) -> String {
        let v = UInt64(reason)
        return table.name(v) ?? Self.builtin.name(v) ?? ExitReasonNames.unknown(v)
    }

    /// The code for "KVM_EXIT_IO", "IO" (prefix optional) or "UNKNOWN(0x…)".
    public func code(name: String) -> UInt32? {
        if let v = ExitReasonNames.parseUnknown(name) { return v }
        let full = name.hasPrefix("KVM_EXIT_") ? name : "KVM_EXIT_" + name
        for t in [table, Self.builtin] {
            if let v = t.value(forName: full) { return UInt32(truncatingIfNeeded: v) }
        }
        return nil
    }

    /// KVM_EXIT_* from include/uapi/linux/kvm.h (0…41).
    public static let builtin: SymbolTable = {
        let names = [
            "UNKNOWN", "EXCEPTION", "IO", "HYPERCALL", "DEBUG", "HLT", "MMIO", "IRQ_WINDOW_OPEN",
            "SHUTDOWN", "FAIL_ENTRY", "INTR", "SET_TPR", "TPR_ACCESS", "S390_SIEIC", "S390_RESET",
            "DCR", "NMI", "INTERNAL_ERROR", "OSI", "PAPR_HCALL", "S390_UCONTROL", "WATCHDOG",
            "S390_TSCH", "EPR", "SYSTEM_EVENT", "S390_STSI", "IOAPIC_EOI", "HYPERV", "ARM_NISV",
            "X86_RDMSR", "X86_WRMSR", "DIRTY_RING_FULL", "AP_RESET_HOLD", "X86_BUS_LOCK", "XEN",
            "RISCV_SBI", "RISCV_CSR", "NOTIFY", "LOONGARCH_IOCSR", "MEMORY_FAULT", "TDX", "ARM_SEA",
        ]
        return SymbolTable(names.enumerated().map { (UInt64($0.offset), "KVM_EXIT_" + $0.element) })
    }()
}
