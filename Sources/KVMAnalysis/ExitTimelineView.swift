import KVMExits

/// One selectable view of the exit timeline: exits per bin per reason, and the latency heatmap (blocking
/// reasons excluded).
public struct TimelineGroup: Sendable {
    public var label: String
    /// Per reason (as printed), exits per bin; reasons by total, descending.
    public var series: [(reason: String, counts: [UInt64])]
    /// bins × ExitTimeline.latencyBuckets, bin-major: recorded pairs per (bin of the exit, latency bucket).
    public var heat: [UInt64]
}

/// What the HTML timeline shows, computed from an ``ExitTimeline`` (fed by the pairer) and the snapshot of the
/// same run (identities, reason names): views read this, never the snapshot.
public struct ExitTimelineView: Sendable {
    /// Bin width, ns, and bins in use.
    public var binWidth: UInt64
    public var binCount: Int
    /// "All VMs", then each VM, then each VM × vCPU; only rows the filter keeps.
    public var groups: [TimelineGroup]

    /// - Parameter event: the event whose reasons the timeline counts and names: `kvm_exit` (fed by the pairer),
    ///   or `kvm_userspace_exit` (its `KVM_EXIT_*` reasons, for a trace without kvm_exit; no latencies).
    public init(_ t: ExitTimeline, snapshot: AggregateSnapshot, filter: SummaryFilter = SummaryFilter(),
                event: String = "kvm_exit") {
        binWidth = t.binWidth
        binCount = t.binCount
        groups = Self.groups(t, snapshot: snapshot, filter: filter, event: event)
    }

    static func groups(_ t: ExitTimeline, snapshot: AggregateSnapshot, filter: SummaryFilter,
                       event: String = "kvm_exit") -> [TimelineGroup] {
        guard let exitEvent = snapshot.catalog.index(of: event) else { return [] }
        struct GKey: Hashable, Comparable {
            var vm: Int32
            var vcpu: Int64  // -1: all vCPUs; -2: all VMs
            static func < (a: GKey, b: GKey) -> Bool { (a.vm, a.vcpu) < (b.vm, b.vcpu) }
        }
        var names: [GKey: String] = [GKey(vm: .min, vcpu: -2): "All VMs"]
        var series: [GKey: [String: [UInt64]]] = [:]
        var heat: [GKey: [UInt64]] = [:]
        let lb = ExitTimeline.latencyBuckets
        let keys = Set(t.exits.keys).union(t.latencies.keys).sorted()
        for k in keys {
            let id = snapshot.identity(of: k.tid)
            guard filter.keeps(tid: k.tid, identity: id),
                  let reason = snapshot.catalog.reasonName(event: exitEvent, reason: k.reason, isa: k.isa) else { continue }
            if let reasons = filter.reasons, !reasons.contains(reason) { continue }
            let blocking = ExitReasonNames.isBlocking(isa: ISA(rawValue: k.isa) ?? .unknown, reasonName: reason)
            let vmLabel = "VM \(id.vm)" + (id.vmName.map { " (\($0))" } ?? "")
            let targets = [GKey(vm: .min, vcpu: -2), GKey(vm: id.vm, vcpu: -1),
                           GKey(vm: id.vm, vcpu: id.vcpu.map { Int64($0) } ?? Int64(Int32.max))]
            names[targets[1]] = vmLabel + ", all vCPUs"
            names[targets[2]] = vmLabel + (id.vcpu.map { ", vCPU \($0)" } ?? ", vCPU unknown")
            let counts = t.exitCounts(k)
            let lat = t.latencyCounts(k)
            for g in targets {
                var s = series[g, default: [:]][reason] ?? [UInt64](repeating: 0, count: t.binCount)
                for (i, c) in counts.enumerated() { s[i] += UInt64(c) }
                series[g, default: [:]][reason] = s
                var h = heat[g] ?? [UInt64](repeating: 0, count: t.binCount * lb)
                if !blocking { for (i, c) in lat.enumerated() { h[i] += UInt64(c) } }
                heat[g] = h
            }
        }
        return names.keys.sorted().compactMap { g in
            guard let s = series[g] else { return nil }
            let ordered = s.map { ($0.key, $0.value) }.sorted {
                ($0.1.reduce(0, +), $1.0) > ($1.1.reduce(0, +), $0.0)
            }
            return TimelineGroup(label: names[g]!, series: ordered, heat: heat[g] ?? [])
        }
    }
}
