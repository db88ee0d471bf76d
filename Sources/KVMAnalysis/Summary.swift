import KVMExits
/// Which threads and rows a summary keeps: kvm_stat's `-p`, `-g` and `-f`, plus `--vcpu` and `--reason`.
public struct SummaryFilter: Sendable {
    /// Keep only threads of these VM processes.
    public var vms: Set<Int32>?
    /// Keep only threads whose tid is in this set (`stat -- COMMAND` traces by tid).
    public var tids: Set<Int32>?
    public var vcpus: Set<UInt32>?
    /// kvm_stat's `-f`: keep events (and children) whose name matches.
    public var fields: String?
    public var reasons: Set<String>?

    public init(vms: Set<Int32>? = nil, tids: Set<Int32>? = nil, vcpus: Set<UInt32>? = nil, fields: String? = nil,
                reasons: Set<String>? = nil) {
        self.vms = vms
        self.tids = tids
        self.vcpus = vcpus
        self.fields = fields
        self.reasons = reasons
    }

    var isThreadFiltered: Bool { vms != nil || tids != nil || vcpus != nil }

    public func keeps(tid: Int32, identity: ThreadIdentity) -> Bool {
        if let tids, !tids.contains(tid) { return false }
        if let vms, !vms.contains(identity.vm) { return false }
        if let vcpus {
            guard let v = identity.vcpu, vcpus.contains(v) else { return false }
        }
        return true
    }

    /// kvm_stat's `-f` semantics: a regular expression searched in the event name.
    func keeps(field name: String) throws -> Bool {
        guard let fields else { return true }
        return try Regex(fields).firstMatch(in: name) != nil
    }

    /// `-f` on a child row `event(reason)`: the regular expression may name the reason in any printer's
    /// spelling (`kvm_exit\(EXIT_MSR\)` keeps the kernel's `kvm_exit(msr)`).
    public func keeps(event: String, reason: String) throws -> Bool {
        guard let fields else { return true }
        let regex = try Regex(fields)
        for spelling in ReasonResolver.builtin.spellings(ofOutputName: reason)
        where "\(event)(\(spelling))".firstMatch(of: regex) != nil {
            return true
        }
        return false
    }
}

/// A latency distribution as reported (nanoseconds).
public struct LatencySummary: Sendable, Equatable, Codable {
    public var count: UInt64
    public var min: UInt64
    public var mean: Double
    public var stddev: Double
    public var p50: UInt64
    public var p90: UInt64
    public var p99: UInt64
    public var p999: UInt64
    public var max: UInt64
    public var sum: UInt64

    public init(_ h: HistogramSnapshot) {
        count = h.count
        min = h.min
        mean = h.mean
        stddev = h.stddev
        p50 = h.percentile(50)
        p90 = h.percentile(90)
        p99 = h.percentile(99)
        p999 = h.percentile(99.9)
        max = h.max
        sum = h.sum
    }
}

/// One row of exits: a VM × vCPU × reason.
public struct ExitRow: Sendable, Equatable {
    public var vm: Int32
    public var vmName: String?
    public var vcpu: UInt32?
    public var reason: String
    /// VMX flag bits of the raw exit reason (e.g. ["FAILED_VMENTRY"]), masked off `reason` and kept apart: a
    /// failed VM entry is its own row. Empty for SVM, arm64 and ordinary VMX exits.
    public var flags: [String] = []
    public var isa: ISA
    /// The reason's code in its ISA (VMX basic exit reason without flag bits, SVM exit code, arm64 ESR
    /// class); nil for a reason a text trace printed with a name no table knows.
    public var code: UInt32?
    public var count: UInt64
    /// Whether the reason is the guest halting (time blocked, not handling time).
    public var blocking: Bool
    public var histogram: HistogramSnapshot?
    /// Every RIP the row's series tracked, merged (count descending, RIP ascending), not truncated: merging
    /// truncated lists (per vCPU, then per VM) would undercount RIPs cut from one side. Views show a prefix.
    public var topRIPs: [RIPCount]
    public var latency: LatencySummary? { histogram.flatMap { $0.count > 0 ? LatencySummary($0) : nil } }

    public init(vm: Int32, vmName: String?, vcpu: UInt32?, reason: String, flags: [String] = [], isa: ISA, count: UInt64,
                blocking: Bool, histogram: HistogramSnapshot?, topRIPs: [RIPCount], code: UInt32? = nil) {
        self.code = code
        self.vm = vm
        self.vmName = vmName
        self.vcpu = vcpu
        self.reason = reason
        self.flags = flags
        self.isa = isa
        self.count = count
        self.blocking = blocking
        self.histogram = histogram
        self.topRIPs = topRIPs
    }
}

public struct UserspaceExitRow: Sendable, Equatable {
    public var vm: Int32
    public var vmName: String?
    public var vcpu: UInt32?
    public var reason: String
    public var count: UInt64

    public init(vm: Int32, vmName: String?, vcpu: UInt32?, reason: String, count: UInt64) {
        self.vm = vm
        self.vmName = vmName
        self.vcpu = vcpu
        self.reason = reason
        self.count = count
    }
}

/// One event's count for a VM × vCPU (every event, with or without reasons: `kvm_pio` per vCPU).
public struct EventRow: Sendable, Equatable {
    public var vm: Int32
    public var vmName: String?
    public var vcpu: UInt32?
    public var event: String
    public var count: UInt64

    public init(vm: Int32, vmName: String?, vcpu: UInt32?, event: String, count: UInt64) {
        self.vm = vm
        self.vmName = vmName
        self.vcpu = vcpu
        self.event = event
        self.count = count
    }
}

/// The reduced view of a snapshot that every output (stat, live view, report, /metrics) prints.
public struct Summary: Sendable {
    /// (event name, total), in catalog order, only events with a non-zero total or a filter match.
    public var events: [(name: String, total: UInt64)] = []
    /// kvm_stat-style children: (parent event, reason, total) across all VMs.
    public var children: [(event: String, reason: String, total: UInt64)] = []
    public var exits: [ExitRow] = []
    public var userspaceExits: [UserspaceExitRow] = []
    public var pairing = PairingStats()
    public var lostEvents: UInt64 = 0
    public var lostUnknownSubbuffers: UInt64 = 0
    public var overflowEvents: UInt64 = 0
    /// Sub-buffers rejected as malformed (each lost an unknown number of events).
    public var corruptSubbuffers: UInt64 = 0
    /// Failed ring-buffer reads (the reader of that CPU stopped there).
    public var readErrors: UInt64 = 0
    public var timestamp: UInt64 = 0
    /// VM pid → name, for every VM kept.
    public var vms: [Int32: String?] = [:]
    /// Every event counted per VM × vCPU, sorted by VM, vCPU, event (storm rules on event names per VM).
    public var eventRows: [EventRow] = []
    /// How full the aggregate was (live threads and series, retired threads, folded VMs), unfiltered.
    public var occupancy = Occupancy()
    /// perf kvm stat's ioport and mmio tables: accesses per VM × port/MMIO address × direction, devices named.
    public var ioAccesses = IOAccessSummary()

    public init() {}

    public init(_ snap: AggregateSnapshot, filter: SummaryFilter = SummaryFilter()) throws {
        let catalog = snap.catalog
        timestamp = snap.timestamp
        lostEvents = snap.lostEvents
        lostUnknownSubbuffers = snap.lostUnknownSubbuffers
        overflowEvents = snap.overflowEvents
        corruptSubbuffers = snap.corruptSubbuffers
        readErrors = snap.readErrors
        pairing = snap.pairing
        occupancy = snap.occupancy
        ioAccesses = IOAccessSummary(snap, filter: filter)

        var totals = filter.isThreadFiltered ? [UInt64](repeating: 0, count: catalog.count) : snap.eventTotals
        var childTotals: [String: [String: UInt64]] = [:]
        struct RowKey: Hashable { var vm: Int32; var vcpu: UInt32?; var isa: UInt8; var reason: String; var flags = [String]() }
        var exitRows: [RowKey: ExitRow] = [:]
        var userRows: [RowKey: UserspaceExitRow] = [:]
        var perThreadEvents: [RowKey: EventRow] = [:]

        for row in snap.counters {
            let tid = row.key.tid
            let id = snap.identity(of: tid)
            guard filter.keeps(tid: tid, identity: id) else { continue }
            let event = catalog[row.key.event]
            if filter.isThreadFiltered { totals[Int(row.key.event)] += row.count }
            vms[id.vm] = id.vmName
            perThreadEvents[RowKey(vm: id.vm, vcpu: id.vcpu, isa: 0, reason: event.name), default: EventRow(
                vm: id.vm, vmName: id.vmName, vcpu: id.vcpu, event: event.name, count: 0)].count += row.count
            guard event.role.hasReasons,
                  let reason = catalog.reasonName(event: row.key.event, reason: row.key.reason, isa: row.key.isa)
            else { continue }
            if let reasons = filter.reasons, !reasons.contains(reason) { continue }
            childTotals[event.name, default: [:]][reason, default: 0] += row.count
            if event.role == .exit {
                let isa = ISA(rawValue: row.key.isa) ?? .unknown
                let flags = catalog.exitReasons.flags(isa: isa, rawReason: row.key.reason)
                let key = RowKey(vm: id.vm, vcpu: id.vcpu, isa: row.key.isa, reason: reason, flags: flags)
                exitRows[key, default: ExitRow(vm: id.vm, vmName: id.vmName, vcpu: id.vcpu, reason: reason, flags: flags, isa: isa,
                                               count: 0, blocking: ExitReasonNames.isBlocking(isa: isa, reasonName: reason),
                                               histogram: nil, topRIPs: [],
                                               code: Self.code(isa: isa, raw: row.key.reason, catalog))].count += row.count
            } else {
                let key = RowKey(vm: id.vm, vcpu: id.vcpu, isa: row.key.isa, reason: reason)
                userRows[key, default: UserspaceExitRow(vm: id.vm, vmName: id.vmName, vcpu: id.vcpu, reason: reason,
                                                        count: 0)].count += row.count
            }
        }
        for s in snap.series {
            let id = snap.identity(of: s.tid)
            guard filter.keeps(tid: s.tid, identity: id),
                  let exitEvent = catalog.index(of: "kvm_exit"),
                  let reason = catalog.reasonName(event: exitEvent, reason: s.reason, isa: s.isa) else { continue }
            let flags = catalog.exitReasons.flags(isa: ISA(rawValue: s.isa) ?? .unknown, rawReason: s.reason)
            let key = RowKey(vm: id.vm, vcpu: id.vcpu, isa: s.isa, reason: reason, flags: flags)
            guard exitRows[key] != nil else { continue }
            if exitRows[key]!.histogram == nil {
                exitRows[key]!.histogram = s.histogram
            } else {
                exitRows[key]!.histogram!.merge(s.histogram)
            }
            exitRows[key]!.topRIPs = TopRIPs.merge(exitRows[key]!.topRIPs, s.topRIPs, limit: .max)
        }

        for (i, entry) in catalog.entries.enumerated() {
            guard try filter.keeps(field: entry.name) || (childTotals[entry.name]?.keys.contains {
                (try? filter.keeps(event: entry.name, reason: $0)) ?? false } ?? false) else { continue }
            events.append((entry.name, totals[i]))
            for (reason, total) in (childTotals[entry.name] ?? [:]).sorted(by: { $0.key < $1.key }) {
                children.append((entry.name, reason, total))
            }
        }
        // Flags are joined only to break ties (rare): no string built per comparison of 100,000s of rows.
        exits = exitRows.values.sorted {
            if ($0.vm, $0.vcpu ?? .max, $0.reason) != ($1.vm, $1.vcpu ?? .max, $1.reason) {
                return ($0.vm, $0.vcpu ?? .max, $0.reason) < ($1.vm, $1.vcpu ?? .max, $1.reason)
            }
            return $0.flags.joined(separator: "|") < $1.flags.joined(separator: "|")
        }
        userspaceExits = userRows.values.sorted {
            ($0.vm, $0.vcpu ?? .max, $0.reason) < ($1.vm, $1.vcpu ?? .max, $1.reason)
        }
        eventRows = perThreadEvents.values.sorted {
            ($0.vm, $0.vcpu ?? .max, $0.event) < ($1.vm, $1.vcpu ?? .max, $1.event)
        }
    }

    /// The code an exit row shows: VMX without flag bits; nil for reasons kept by their printed name.
    static func code(isa: ISA, raw: UInt32, _ catalog: EventCatalog) -> UInt32? {
        switch isa {
        case .vmx: return raw & 0xffff
        case .unknown:
            let spelled = raw >= EventCatalog.spelledReasonBase
                && Int(raw - EventCatalog.spelledReasonBase) < catalog.spelledReasons.count
            return spelled ? nil : raw
        default: return raw
        }
    }

    public func total(of event: String) -> UInt64 { events.first { $0.name == event }?.total ?? 0 }

    /// Exit rows summed over vCPUs: one row per VM × reason.
    public func exitsByVM() -> [ExitRow] {
        var merged: [String: ExitRow] = [:]
        var order: [String] = []
        for r in exits {
            let k = "\(r.vm)\u{0}\(r.isa.rawValue)\u{0}\(r.reason)\u{0}\(r.flags.joined(separator: "|"))"
            if var m = merged[k] {
                m.count += r.count
                if let h = r.histogram {
                    if m.histogram == nil { m.histogram = h } else { m.histogram!.merge(h) }
                }
                m.topRIPs = TopRIPs.merge(m.topRIPs, r.topRIPs, limit: .max)
                merged[k] = m
            } else {
                var m = r
                m.vcpu = nil
                merged[k] = m
                order.append(k)
            }
        }
        return order.map { merged[$0]! }
    }
}
