// Every spelling of a kvm_exit reason, and the one place that turns what a user (or a printer) wrote
// into (ISA, code).
//
// Printers spell the same exit differently:
//   the kernel (trace, trace_pipe):   VMX `EPT_VIOLATION`, SVM `npf`, `msr`, `GP excp`, arm64 `WFx`
//   libtraceevent (trace-cmd, perf):  SVM `EXIT_NPF`, `EXIT_MSR`, `EXIT_EXCP_GP`; VMX `PENDING_INTERRUPT`
//   2.6-era kernels (vmx_exit_reasons_str / svm_exit_reasons_str): `apic_access`, `io_instruction`,
//                                     `halt`, `wrmsr`, `ext_irq`, SVM `intr`
//   the headers:                      `EXIT_REASON_HLT`, `SVM_EXIT_NPF`, `ESR_ELx_EC_WFx`
//   people:                           any case, numbers (`0x7c`, `48`), `UNKNOWN(0x5d)`
// Output spells each reason once per ISA: VMX the kernel's uppercase names, SVM the kernel's lowercase
// names, arm64 the ESR class without prefix (`ExitReasonNames.name(isa:rawReason:)`).

/// One exit reason: ISA and code (VMX basic exit reason, SVM exit code, arm64 ESR class).
public struct ReasonKey: Hashable, Sendable, Comparable {
    public var isa: ISA
    public var code: UInt32

    public init(isa: ISA, code: UInt32) {
        self.isa = isa
        self.code = code
    }

    public static func < (a: ReasonKey, b: ReasonKey) -> Bool { (a.isa.rawValue, a.code) < (b.isa.rawValue, b.code) }
}

/// A reason name that matched nothing in a trace: the one line to print.
public struct ReasonNameError: Error, Equatable, CustomStringConvertible, Sendable {
    public var message: String
    public var description: String { message }
    public init(_ message: String) { self.message = message }
}

/// Resolves exit-reason names as users and printers write them.
///
/// Case-insensitive; knows every printer's spelling of every VMX, SVM and arm64 reason (see the file
/// comment), numeric codes (`0x7c`, `48`, `UNKNOWN(0x7c)`, meaning that code in any ISA) and, when built
/// from a trace's ``ExitReasonNames``, the kernel's own table of that trace. A name that exists in two ISAs
/// (`HLT`: VMX 12, SVM 0x78) means both until ``resolve(_:present:)`` narrows it to the trace's.
public struct ReasonResolver: Sendable {
    public let names: ExitReasonNames
    /// Upper-cased spelling → every (ISA, code) it names.
    let index: [String: [ReasonKey]]

    /// A resolver with the built-in tables plus those of `names` (a trace's or the running kernel's).
    public init(names: ExitReasonNames = ExitReasonNames(kvmExitTables: [])) {
        self.names = names
        var index: [String: [ReasonKey]] = [:]
        func add(_ spelling: String, _ isa: ISA, _ code: UInt64) {
            let k = ReasonKey(isa: isa, code: UInt32(truncatingIfNeeded: code))
            let u = Self.normalized(spelling)
            if !(index[u]?.contains(k) ?? false) { index[u, default: []].append(k) }
        }
        for t in [names.vmx, ExitReasonNames.builtinVMX, ExitReasonNames.vmxAliases] {
            for e in t.entries {
                add(e.name, .vmx, e.value)
                add("EXIT_REASON_" + e.name, .vmx, e.value)
            }
        }
        for (code, name) in Self.legacyVMX { add(name, .vmx, code) }
        for t in [names.svm, ExitReasonNames.builtinSVM32] {
            for e in t.entries { add(e.name, .svm, e.value) }
        }
        for e in ExitReasonNames.svmAliases.entries {
            add(e.name, .svm, e.value)
            add("SVM_" + e.name, .svm, e.value)
        }
        for (code, name) in Self.legacySVM { add(name, .svm, code) }
        for t in [names.arm64, ExitReasonNames.builtinARM64] {
            for e in t.entries {
                add(e.name, .arm64, e.value)
                add("ESR_ELx_EC_" + e.name, .arm64, e.value)
            }
        }
        self.index = index
    }

    /// Shared resolver over the built-in tables.
    public static let builtin = ReasonResolver()

    /// Upper case, runs of blanks as one space, trimmed.
    static func normalized(_ s: String) -> String {
        s.uppercased().split(whereSeparator: { $0 == " " || $0 == "\t" }).joined(separator: " ")
    }

    /// A number as people type it: `0x7c`, `0X7C`, `124`, `UNKNOWN(0x7c)`, `UNKNOWN (124)`.
    public static func number(_ spelling: String) -> UInt32? {
        let s = spelling.trimmingBlanks
        if let v = ExitReasonNames.parseUnknown(s) { return v }
        if s.count > 2, s.hasPrefix("0x") || s.hasPrefix("0X") { return UInt32(s.dropFirst(2), radix: 16) }
        if !s.isEmpty, s.allSatisfy({ $0.isASCII && $0.isNumber }) { return UInt32(s) }
        return nil
    }

    /// Every (ISA, code) a spelling can name, in any ISA; empty when no table knows it.
    public func keys(for spelling: String) -> [ReasonKey] {
        if let n = Self.number(spelling) {
            return [ReasonKey(isa: .vmx, code: n), ReasonKey(isa: .svm, code: n), ReasonKey(isa: .arm64, code: n)]
        }
        return index[Self.normalized(spelling)] ?? []
    }

    /// The (ISA, code) of a reason as a printer wrote it in a trace, preferring `isa` when the spelling
    /// exists in several ISAs (the trace's ISA, once known). nil when no table knows it.
    public func key(printed: String, prefer isa: ISA) -> ReasonKey? {
        let all = index[Self.normalized(printed)] ?? []
        return all.first { $0.isa == isa } ?? all.first
    }

    /// The one output spelling of a reason (the kernel's), `UNKNOWN(0x…)` for codes no table knows.
    public func name(_ key: ReasonKey) -> String { names.name(isa: key.isa, rawReason: key.code) }

    /// Every spelling of the reason a canonical output name denotes (in any ISA), upper-cased index keys
    /// excluded: the forms the printers use (`msr` → `msr`, `EXIT_MSR`, `SVM_EXIT_MSR`, `0x7c`).
    public func spellings(ofOutputName name: String) -> [String] {
        var out: [String] = [name]
        for isa in [ISA.vmx, .svm, .arm64] {
            guard let code = names.code(isa: isa, name: name), self.name(ReasonKey(isa: isa, code: code)) == name
            else { continue }
            out += Self.printerSpellings(ReasonKey(isa: isa, code: code))
        }
        var seen = Set<String>()
        return out.filter { seen.insert($0).inserted }
    }

    /// The printers' spellings of one reason (kernel, libtraceevent, 2.6-era, header names).
    public static func printerSpellings(_ k: ReasonKey) -> [String] {
        let c = UInt64(k.code)
        var out: [String] = []
        switch k.isa {
        case .vmx:
            for t in [ExitReasonNames.builtinVMX, ExitReasonNames.vmxAliases] { if let n = t.name(c) { out.append(n) } }
            out += legacyVMX.filter { $0.0 == c }.map(\.1)
            if let n = ExitReasonNames.builtinVMX.name(c) { out.append("EXIT_REASON_" + n) }
        case .svm:
            if let n = ExitReasonNames.builtinSVM32.name(c) { out.append(n) }
            if let n = ExitReasonNames.svmAliases.name(c) { out += [n, "SVM_" + n] }
            out += legacySVM.filter { $0.0 == c }.map(\.1)
        case .arm64:
            if let n = ExitReasonNames.builtinARM64.name(c) { out += [n, "ESR_ELx_EC_" + n] }
        case .unknown: break
        }
        out.append("0x" + String(c, radix: 16))
        return out
    }

    /// Whether a user's spelling names a row's reason (`isa`, output name as printed by views).
    public func matches(_ spelling: String, isa: ISA, name: String) -> Bool {
        if Self.normalized(spelling) == Self.normalized(name) { return true }
        guard isa != .unknown, let code = names.code(isa: isa, name: name) else { return false }
        return keys(for: spelling).contains(ReasonKey(isa: isa, code: code))
    }

    /// Whether a spelling names a `kvm_userspace_exit` reason (`KVM_EXIT_IO`, `kvm_exit_io`, `IO`, `2`).
    public static func sameUserspaceReason(_ spelling: String, _ name: String,
                                           _ names: UserspaceExitNames = UserspaceExitNames(kvmUserspaceExitTables: [])) -> Bool {
        if normalized(spelling) == normalized(name) { return true }
        guard let c = names.code(name: name) else { return false }
        if let n = number(spelling) { return n == c }
        return names.code(name: normalized(spelling)) == c
    }

    /// The output names, among the reasons present in a trace, that a user's spelling names.
    ///
    /// - Parameters:
    ///   - spelling: what the user typed (`EXIT_MSR`, `msr`, `0x7c`, `hlt`, `KVM_EXIT_IO`).
    ///   - present: the reasons of the trace as output (`isa` `.unknown` for userspace exit reasons and
    ///     reasons kept by their printed spelling).
    ///   - userspace: names of `kvm_userspace_exit` reasons, for `KVM_EXIT_IO` or `IO`.
    /// - Returns: the matching output names (never empty).
    /// - Throws: ``ReasonNameError`` naming the spelling and the closest names present (at most 5).
    public func resolve(_ spelling: String, present: [(isa: ISA, name: String)],
                        userspace: UserspaceExitNames = UserspaceExitNames(kvmUserspaceExitTables: [])) throws(ReasonNameError) -> [String] {
        var out: [String] = []
        for p in present where !out.contains(p.name) {
            if matches(spelling, isa: p.isa, name: p.name) {
                out.append(p.name)
            } else if p.isa == .unknown, Self.number(spelling) == nil, Self.sameUserspaceReason(spelling, p.name, userspace) {
                out.append(p.name)
            }
        }
        if !out.isEmpty { return out }
        let names = Array(Set(present.map(\.name)))
        let closest = Self.closest(to: spelling, among: names, limit: 5)
        let known = keys(for: spelling)
        let what: String
        if Self.number(spelling) != nil {
            what = "no exit reason with code \(spelling.trimmingBlanks)"
        } else if known.isEmpty {
            what = "unknown exit reason '\(spelling)'"
        } else {
            let meant = known.sorted().map { "\(name($0)) (\($0.isa.jsonName ?? "?") 0x\(String($0.code, radix: 16)))" }
            what = "no '\(spelling)' exits (\(meant.joined(separator: " or ")))"
        }
        let tail = closest.isEmpty ? "the trace has no exit reasons" : "closest in the trace: " + closest.joined(separator: ", ")
        throw ReasonNameError("\(what); \(tail)")
    }

    /// Names ordered by edit distance to `spelling` (case-insensitive, also against their other spellings).
    public static func closest(to spelling: String, among names: [String], limit: Int) -> [String] {
        let u = Array(normalized(spelling).utf8)
        let scored = names.map { n -> (Int, String) in
            var best = editDistance(u, Array(normalized(n).utf8))
            for s in ReasonResolver.builtin.spellings(ofOutputName: n) {
                best = min(best, editDistance(u, Array(normalized(s).utf8)))
            }
            return (best, n)
        }
        return scored.sorted { ($0.0, $0.1) < ($1.0, $1.1) }.prefix(limit).map(\.1)
    }

    static func editDistance(_ a: [UInt8], _ b: [UInt8]) -> Int {
        if a.isEmpty { return b.count }
        if b.isEmpty { return a.count }
        var prev = Array(0...b.count)
        var cur = [Int](repeating: 0, count: b.count + 1)
        for i in 1...a.count {
            cur[0] = i
            for j in 1...b.count {
                cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            swap(&prev, &cur)
        }
        return prev[b.count]
    }

    /// VMX names of 2.6-era kernels (vmx_exit_reasons_str, Linux 2.6.3x), where they differ from today's
    /// beyond case.
    static let legacyVMX: [(UInt64, String)] = [
        (0, "exception"), (1, "ext_irq"), (7, "interrupt_window"), (12, "halt"), (18, "hypercall"),
        (31, "rdmsr"), (32, "wrmsr"), (43, "tpr_below_thres"),
    ]

    /// SVM names of 2.6-era kernels (svm_exit_reasons_str) that differ from today's.
    static let legacySVM: [(UInt64, String)] = [(0x060, "intr"), (0x081, "vmmcall")]
}

extension String {
    /// Without leading and trailing spaces and tabs.
    var trimmingBlanks: String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" { s = s.dropLast() }
        return String(s)
    }
}
