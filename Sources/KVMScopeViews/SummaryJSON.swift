import KVMAnalysis
import KVMExits

/// The JSON summary: the contract that scripts, tests and later features rely on. Extend, don't break.
public enum SummaryJSON {
    public static func render(_ s: Summary, durationSeconds: Double, pretty: Bool = true,
                              extra: [(String, JSONValue)] = []) -> String {
        value(s, durationSeconds: durationSeconds, extra: extra).serialized(pretty: pretty)
    }

    /// - Parameters:
    ///   - pairingScope: which threads `pairing` counts, given as its `scope` field when they are not the rows'
    ///     threads (`report -p/--vcpu/--reason` pair every thread: "all threads"); nil: no field.
    ///   - pairingApplies: false when the trace has kvm_exit but kvm_entry was not traced: nothing can be paired,
    ///     so `pairing` gets `"applicable": false` and its counts are 0 (types kept: every count stays a number;
    ///     an exit is then no "orphan", which would mean a gap in the trace). True: no field.
    public static func value(_ s: Summary, durationSeconds: Double, extra: [(String, JSONValue)] = [],
                             pairingScope: String? = nil, pairingApplies: Bool = true) -> JSONValue {
        var top: [(String, JSONValue)] = [
            // To the nanosecond (a 1 µs trace is not 0 s: rates divide by it).
            ("duration_s", .double((durationSeconds * 1e9).rounded() / 1e9)),
            ("lost_events", .uint(s.lostEvents)),
        ]
        if s.lostUnknownSubbuffers > 0 { top.append(("lost_unknown_subbuffers", .uint(s.lostUnknownSubbuffers))) }
        if s.overflowEvents > 0 { top.append(("overflow_events", .uint(s.overflowEvents))) }
        if s.corruptSubbuffers > 0 { top.append(("corrupt_subbuffers", .uint(s.corruptSubbuffers))) }
        if s.readErrors > 0 { top.append(("read_errors", .uint(s.readErrors))) }
        top.append(("events", .object(s.events.filter { $0.total > 0 }.map { ($0.name, .uint($0.total)) })))
        top.append(("exits", .array(s.exits.map(exitRow))))
        top.append(("userspace_exits", .array(s.userspaceExits.map { r in
            .object([("vm", .int(Int64(r.vm))), ("vm_name", .optional(r.vmName)), ("vcpu", .optional(r.vcpu)),
                     ("reason", .string(r.reason)), ("count", .uint(r.count))])
        })))
        // perf kvm stat's ioport and mmio tables: only when the trace has port or MMIO accesses.
        if !s.ioAccesses.rows.isEmpty || s.ioAccesses.overflow != (0, 0) {
            top.append(("io_accesses", IOAccessTableView.json(s.ioAccesses)))
        }
        // Threads whose name and whose kvm_exit/kvm_entry disagree on their vCPU number: only when there are some.
        if !s.vcpuMismatches.isEmpty { top.append(("vcpu_mismatches", .array(s.vcpuMismatches.map(vcpuMismatch)))) }
        let p = pairingApplies ? s.pairing : PairingStats()
        top.append(("pairing", .object([
            ("paired", .uint(p.paired)), ("orphan_exits", .uint(p.orphanExits)),
            ("orphan_entries", .uint(p.orphanEntries)), ("open_at_end", .uint(p.openAtEnd)),
            ("invalidated_by_loss", .uint(p.invalidatedByLoss)),
            ("negative_gaps", .uint(p.negativeGaps)),
        ] + (p.overflow > 0 ? [("overflow", .uint(p.overflow))] : [])
          + (pairingApplies ? [] : [("applicable", JSONValue.bool(false))])
          + (pairingScope.map { [("scope", JSONValue.string($0))] } ?? []))))
        top.append(contentsOf: extra)
        return .object(top)
    }

    public static func latency(_ l: LatencySummary?) -> JSONValue {
        guard let l else { return .null }
        return .object([
            ("count", .uint(l.count)), ("min", .uint(l.min)), ("mean", .double((l.mean * 10).rounded() / 10)),
            ("stddev", .double((l.stddev * 10).rounded() / 10)), ("p50", .uint(l.p50)), ("p90", .uint(l.p90)),
            ("p99", .uint(l.p99)), ("p999", .uint(l.p999)), ("max", .uint(l.max)),
        ])
    }

    /// One thread whose name gives vCPU `vcpu` while kvm_exit/kvm_entry carry `traced_vcpu`, with a note saying
    /// which number the rows use and why the two can differ.
    static func vcpuMismatch(_ m: (tid: Int32, identity: ThreadIdentity)) -> JSONValue {
        let id = m.identity
        return .object([
            ("vm", .int(Int64(id.vm))), ("vm_name", .optional(id.vmName)), ("tid", .int(Int64(m.tid))),
            ("comm", .optional(id.comm)), ("vcpu", .optional(id.vcpu)), ("traced_vcpu", .optional(id.tracedVCPU)),
            ("note", .string(vcpuMismatchNote(id))),
        ])
    }

    /// `thread 'CPU 3/KVM' is vCPU 3 by its name but kvm_exit/kvm_entry carry vcpu_id 4 …`.
    public static func vcpuMismatchNote(_ id: ThreadIdentity) -> String {
        "thread '\(id.comm ?? "?")' is vCPU \(id.vcpu.map(String.init) ?? "?") by its name but kvm_exit/kvm_entry carry vcpu_id "
            + "\(id.tracedVCPU.map(String.init) ?? "?"); rows use the name's number (QEMU's cpu-index; KVM's vcpu_id is the "
            + "APIC ID on x86)"
    }

    /// RIPs listed per exit row.
    public static let topRIPsShown = 10

    static func exitRow(_ r: ExitRow) -> JSONValue {
        var fields: [(String, JSONValue)] = [
            ("vm", .int(Int64(r.vm))), ("vm_name", .optional(r.vmName)), ("vcpu", .optional(r.vcpu)),
            ("reason", .string(r.reason)),
        ]
        // VMX flag bits (FAILED_VMENTRY) masked off the reason: only on rows that have them.
        if !r.flags.isEmpty { fields.append(("flags", .array(r.flags.map(JSONValue.string)))) }
        fields += [
            ("isa", .optional(r.isa.jsonName)), ("code", .optional(r.code)), ("count", .uint(r.count)),
            ("blocking", .bool(r.blocking)),
            ("latency_ns", latency(r.latency)),
            ("top_rips", .array(r.topRIPs.prefix(topRIPsShown).map { .object([("rip", .string("0x" + String($0.rip, radix: 16))),
                                                         ("count", .uint($0.count))]) })),
        ]
        return .object(fields)
    }
}
