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
    /// Whether `fields` must match at the start of a name (kvm_stat's `re.match`: `-f pio` keeps nothing,
    /// `-f kvm_pio` keeps kvm_pio, `-f '.*exit'` keeps kvm_exit) rather than anywhere in it (a search: `-f pio`
    /// keeps kvm_pio). `stat` matches as kvm_stat does; the default is the search.
    public var fieldsAtStart = false
    public var reasons: Set<String>?
    /// Threads whose rows are held back (`serve`: threads not named yet, ``AggregateSnapshot/unnamedThreads``);
    /// the event totals still count their events.
    public var excludedTids: Set<Int32> = []

    public init(vms: Set<Int32>? = nil, tids: Set<Int32>? = nil, vcpus: Set<UInt32>? = nil, fields: String? = nil,
                reasons: Set<String>? = nil, excludedTids: Set<Int32> = []) {
        self.excludedTids = excludedTids
        self.vms = vms
        self.tids = tids
        self.vcpus = vcpus
        self.fields = fields
        self.reasons = reasons
    }

    var isThreadFiltered: Bool { vms != nil || tids != nil || vcpus != nil }

    public func keeps(tid: Int32, identity: ThreadIdentity) -> Bool {
        if excludedTids.contains(tid) { return false }
        if let tids, !tids.contains(tid) { return false }
        if let vms, !vms.contains(identity.vm) { return false }
        if let vcpus {
            guard let v = identity.vcpu, vcpus.contains(v) else { return false }
        }
        return true
    }

    /// kvm_stat's `-f` semantics: a regular expression matched in the event name, at its start with
    /// ``fieldsAtStart`` (kvm_stat's `re.match`), else anywhere.
    public func keeps(field name: String) throws -> Bool {
        guard let fields else { return true }
        return matches(name, try Regex(fields))
    }

    /// `-f` on a child row `event(reason)`: the regular expression may name the reason in any printer's
    /// spelling (`kvm_exit\(EXIT_MSR\)` keeps the kernel's `kvm_exit(msr)`), and a userspace exit with or
    /// without the `KVM_EXIT_` prefix (`kvm_userspace_exit\(IO\)`, kvm_stat's name, and
    /// `kvm_userspace_exit\(KVM_EXIT_IO\)`, the kernel's, both keep it), whichever of the two `reason` is.
    public func keeps(event: String, reason: String) throws -> Bool {
        guard let fields else { return true }
        return keeps(event: event, reason: reason, regex: try Regex(fields))
    }

    /// ``keeps(event:reason:)`` with the `-f` regular expression compiled.
    public func keeps(event: String, reason: String, regex: Regex<AnyRegexOutput>) -> Bool {
        var spellings = ReasonResolver.builtin.spellings(ofOutputName: reason)
        if reason.hasPrefix("KVM_EXIT_") {
            spellings.append(String(reason.dropFirst("KVM_EXIT_".count)))
        } else if event == "kvm_userspace_exit" {
            spellings.append("KVM_EXIT_" + reason)
        }
        for spelling in spellings where matches("\(event)(\(spelling))", regex) {
            return true
        }
        return false
    }

    /// Whether `name` matches the compiled `-f` expression: at its start with ``fieldsAtStart``, else anywhere.
    public func matches(_ name: String, _ regex: Regex<AnyRegexOutput>) -> Bool {
        fieldsAtStart ? name.prefixMatch(of: regex) != nil : name.firstMatch(of: regex) != nil
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
    /// kvm_stat-style children: (parent event, reason, total) across all VMs; with `-f`, those it matches
    /// (`event(reason)`), as kvm_stat's: an event kept for one child does not bring its other children.
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
    /// Threads kept whose name gives one vCPU number and whose kvm_exit/kvm_entry carry another
    /// (``ThreadIdentity/vcpuMismatch``), by VM and tid: their rows use the name's number.
    public var vcpuMismatches: [(tid: Int32, identity: ThreadIdentity)] = []

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
        vcpuMismatches = snap.threads.filter { $0.value.vcpuMismatch && filter.keeps(tid: $0.key, identity: $0.value) }
            .map { (tid: $0.key, identity: $0.value) }.sorted { ($0.identity.vm, $0.tid) < ($1.identity.vm, $1.tid) }

        var totals = filter.isThreadFiltered ? [UInt64](repeating: 0, count: catalog.count) : snap.eventTotals
        // Rows are keyed by integers: each distinct reason (event × ISA × raw code) is named once, and names and
        // flag sets are interned, so no string is built, hashed or compared per counter or series.
        var names = Interner<String>()
        var flagSets = Interner<[String]>()
        let noFlags = flagSets.id([])
        var infos: [ReasonInfo] = []
        var slots: [ReasonKey: Int] = [:]
        // Codes below 1024 (every VMX basic reason, most SVM codes, every KVM_EXIT_*) of each event with reasons
        // × ISA: a direct table, no hashing per row.
        var tableOf = [Int](repeating: -1, count: catalog.count)
        var tables = 0
        for (i, e) in catalog.entries.enumerated() where e.role.hasReasons {
            tableOf[i] = tables
            tables += 1
        }
        var direct = [Int32](repeating: -1, count: tables * 4 * 1024)
        var childSlots: [ChildKey: Int] = [:]
        var childKeys: [ChildKey] = []
        var childTotals: [UInt64] = []
        var childUsed: [Bool] = []
        /// Index in `infos` of a reason, worked out on its first sight.
        func reason(event: UInt16, isa: UInt8, raw: UInt32) -> Int {
            let t = Int(event) < tableOf.count ? tableOf[Int(event)] : -1
            let d = t >= 0 && raw < 1024 && isa < 4 ? (t &* 4 &+ Int(isa)) &* 1024 &+ Int(raw) : -1
            if d >= 0 && direct[d] >= 0 { return Int(direct[d]) }
            let k = ReasonKey(event: event, isa: isa, raw: raw)
            if d < 0, let r = slots[k] { return r }
            var info = ReasonInfo()
            if let name = catalog.reasonName(event: event, reason: raw, isa: isa) {
                info.name = name
                info.nameID = names.id(name)
                info.kept = filter.reasons.map { $0.contains(name) } ?? true
                if catalog[event].role == .exit {
                    let i = ISA(rawValue: isa) ?? .unknown
                    info.flags = catalog.exitReasons.flags(isa: i, rawReason: raw)
                    info.flagsID = flagSets.id(info.flags)
                    info.code = Self.code(isa: i, raw: raw, catalog)
                    info.blocking = ExitReasonNames.isBlocking(isa: i, reasonName: name)
                } else {
                    info.flagsID = noFlags
                }
                let ck = ChildKey(event: event, name: info.nameID)
                if let c = childSlots[ck] {
                    info.child = c
                } else {
                    info.child = childKeys.count
                    childSlots[ck] = info.child
                    childKeys.append(ck)
                    childTotals.append(0)
                    childUsed.append(false)
                }
            }
            infos.append(info)
            if d >= 0 { direct[d] = Int32(infos.count - 1) } else { slots[k] = infos.count - 1 }
            return infos.count - 1
        }
        let eventNames = catalog.entries.map { names.id($0.name) }
        var exitRows: [ExitRow] = []
        var exitIndex: [RowKey: Int] = [:]
        var exitIDs: [(name: Int32, flags: Int32)] = []
        var userRows: [UserspaceExitRow] = []
        var userIndex: [RowKey: Int] = [:]
        var userNames: [Int32] = []
        var eventRowList: [EventRow] = []
        var eventIndex: [RowKey: Int] = [:]
        var eventRowNames: [Int32] = []
        exitIndex.reserveCapacity(snap.counters.count)
        eventIndex.reserveCapacity(snap.counters.count / 4)

        var lastTid: Int32?
        var id = ThreadIdentity(vm: 0)
        var kept = false
        // Counters come sorted by thread, then event: a thread's rows of one event share one event row.
        var lastEvent: UInt16?
        var eventRow = 0
        for row in snap.counters {
            let tid = row.key.tid
            if tid != lastTid {
                lastTid = tid
                lastEvent = nil
                id = snap.identity(of: tid)
                kept = filter.keeps(tid: tid, identity: id)
                if kept { vms[id.vm] = id.vmName }
            }
            guard kept else { continue }
            let eventIndexInCatalog = Int(row.key.event)
            let event = catalog[row.key.event]
            if filter.isThreadFiltered { totals[eventIndexInCatalog] += row.count }
            if row.key.event != lastEvent {
                lastEvent = row.key.event
                let ek = RowKey(vm: id.vm, vcpu: id.vcpu, isa: 0, name: eventNames[eventIndexInCatalog], flags: noFlags)
                if let i = eventIndex[ek] {
                    eventRow = i
                } else {
                    eventRow = eventRowList.count
                    eventIndex[ek] = eventRow
                    eventRowList.append(EventRow(vm: id.vm, vmName: id.vmName, vcpu: id.vcpu, event: event.name, count: 0))
                    eventRowNames.append(ek.name)
                }
            }
            eventRowList[eventRow].count += row.count
            guard event.role.hasReasons else { continue }
            let r = reason(event: row.key.event, isa: row.key.isa, raw: row.key.reason)
            guard let name = infos[r].name, infos[r].kept else { continue }
            childTotals[infos[r].child] += row.count
            childUsed[infos[r].child] = true
            if event.role == .exit {
                let key = RowKey(vm: id.vm, vcpu: id.vcpu, isa: row.key.isa, name: infos[r].nameID, flags: infos[r].flagsID)
                if let i = exitIndex[key] {
                    exitRows[i].count += row.count
                } else {
                    exitIndex[key] = exitRows.count
                    exitRows.append(ExitRow(vm: id.vm, vmName: id.vmName, vcpu: id.vcpu, reason: name, flags: infos[r].flags,
                                            isa: ISA(rawValue: row.key.isa) ?? .unknown, count: row.count,
                                            blocking: infos[r].blocking, histogram: nil, topRIPs: [], code: infos[r].code))
                    exitIDs.append((infos[r].nameID, infos[r].flagsID))
                }
            } else {
                let key = RowKey(vm: id.vm, vcpu: id.vcpu, isa: row.key.isa, name: infos[r].nameID, flags: noFlags)
                if let i = userIndex[key] {
                    userRows[i].count += row.count
                } else {
                    userIndex[key] = userRows.count
                    userRows.append(UserspaceExitRow(vm: id.vm, vmName: id.vmName, vcpu: id.vcpu, reason: name,
                                                     count: row.count))
                    userNames.append(infos[r].nameID)
                }
            }
        }
        if let exitEvent = catalog.index(of: "kvm_exit") {
            lastTid = nil
            for s in snap.series {
                if s.tid != lastTid {
                    lastTid = s.tid
                    id = snap.identity(of: s.tid)
                    kept = filter.keeps(tid: s.tid, identity: id)
                }
                guard kept else { continue }
                let r = reason(event: exitEvent, isa: s.isa, raw: s.reason)
                guard infos[r].name != nil,
                      let i = exitIndex[RowKey(vm: id.vm, vcpu: id.vcpu, isa: s.isa, name: infos[r].nameID,
                                               flags: infos[r].flagsID)]
                else { continue }
                if exitRows[i].histogram == nil {
                    exitRows[i].histogram = s.histogram
                } else {
                    exitRows[i].histogram!.merge(s.histogram)
                }
                exitRows[i].topRIPs = TopRIPs.merge(exitRows[i].topRIPs, s.topRIPs, limit: .max)
            }
        }

        // Names and flag sets ranked once (the order of their strings), rows sorted by those ranks.
        let nameRank = names.ranks { $0 < $1 }
        let flagRank = flagSets.ranks { $0.joined(separator: "|") < $1.joined(separator: "|") }
        var childrenOf = [[(name: Int32, total: UInt64)]](repeating: [], count: catalog.count)
        for (c, k) in childKeys.enumerated() where childUsed[c] { childrenOf[Int(k.event)].append((k.name, childTotals[c])) }
        for (i, entry) in catalog.entries.enumerated() {
            let mine = childrenOf[i]
            guard try filter.keeps(field: entry.name) || mine.contains(where: {
                (try? filter.keeps(event: entry.name, reason: names.values[Int($0.name)])) ?? false }) else { continue }
            events.append((entry.name, totals[i]))
            // kvm_stat's -f: a child is kept when it matches, not because its event or a sibling does.
            for c in mine.sorted(by: { nameRank[Int($0.name)] < nameRank[Int($1.name)] })
            where try filter.keeps(event: entry.name, reason: names.values[Int(c.name)]) {
                children.append((entry.name, names.values[Int(c.name)], c.total))
            }
        }
        func vcpuOrder(_ v: UInt32?) -> UInt32 { v ?? .max }
        // (VM, vCPU, reason, flags joined by "|"): flags only break ties.
        let exitKeys = exitRows.indices.map {
            (exitRows[$0].vm, vcpuOrder(exitRows[$0].vcpu), nameRank[Int(exitIDs[$0].name)], flagRank[Int(exitIDs[$0].flags)])
        }
        Self.permute(&exitRows, to: exitKeys.indices.sorted { exitKeys[$0] < exitKeys[$1] })
        exits = exitRows
        let userKeys = userRows.indices.map { (userRows[$0].vm, vcpuOrder(userRows[$0].vcpu), nameRank[Int(userNames[$0])]) }
        Self.permute(&userRows, to: userKeys.indices.sorted { userKeys[$0] < userKeys[$1] })
        userspaceExits = userRows
        let eventKeys = eventRowList.indices.map {
            (eventRowList[$0].vm, vcpuOrder(eventRowList[$0].vcpu), nameRank[Int(eventRowNames[$0])])
        }
        Self.permute(&eventRowList, to: eventKeys.indices.sorted { eventKeys[$0] < eventKeys[$1] })
        eventRows = eventRowList
    }

    /// Reorders `a` in place so that `a[k]` is the old `a[order[k]]` (`order` a permutation of its indices):
    /// swaps along each cycle, so no row is copied (nor its strings and arrays retained).
    static func permute<T>(_ a: inout [T], to order: [Int]) {
        var done = [Bool](repeating: false, count: a.count)
        for start in a.indices where !done[start] {
            var k = start
            while true {
                done[k] = true
                let from = order[k]
                if from == start { break }
                a.swapAt(k, from)
                k = from
            }
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

/// A reason as the kernel numbers it: the event, the ISA and the raw code.
private struct ReasonKey: Hashable {
    var event: UInt16
    var isa: UInt8
    var raw: UInt32
}

/// What a summary needs of a reason, worked out once per distinct ``ReasonKey``.
private struct ReasonInfo {
    /// The child-row name; nil for events without reasons.
    var name: String?
    var nameID: Int32 = 0
    /// Whether `--reason` keeps it.
    var kept = false
    var flags: [String] = []
    var flagsID: Int32 = 0
    var code: UInt32?
    var blocking = false
    /// Its (event, name) child row's slot.
    var child = 0
}

/// A summary row: VM × vCPU × ISA × (interned) name × (interned) flag set.
private struct RowKey: Hashable {
    var vm: Int32
    var vcpu: UInt32?
    var isa: UInt8
    var name: Int32
    var flags: Int32
}

private struct ChildKey: Hashable {
    var event: UInt16
    var name: Int32
}

/// Distinct values numbered in order of first sight.
private struct Interner<T: Hashable> {
    var ids: [T: Int32] = [:]
    var values: [T] = []

    mutating func id(_ v: T) -> Int32 {
        if let i = ids[v] { return i }
        let i = Int32(values.count)
        ids[v] = i
        values.append(v)
        return i
    }

    /// Each id's rank in the order `less` gives the values (dense: values neither less than the other share a rank).
    func ranks(_ less: (T, T) -> Bool) -> [Int32] {
        let order = values.indices.sorted { less(values[$0], values[$1]) }
        var rank = [Int32](repeating: 0, count: values.count)
        var r: Int32 = 0
        for (n, i) in order.enumerated() {
            if n > 0 && less(values[order[n - 1]], values[i]) { r += 1 }
            rank[i] = r
        }
        return rank
    }
}
