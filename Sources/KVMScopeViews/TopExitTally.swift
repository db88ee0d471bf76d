import KVMAnalysis
import KVMExits

/// Per-VM exit counts between summaries, for `top`: `kvm_exit` rows where the VM has them (every exit), else
/// `kvm_userspace_exit` rows (the exits that reach the VMM, the only ones counted on backends where kvm_exit
/// never fires); the interval's top reason and, where kvm_exit/kvm_entry pair, that reason's p99 handling time
/// and each vCPU's p99 over its reasons (halts left out: their time is the guest's idle, not handling).
public struct TopExitTally: Sendable {
    private var last: [Int32: Counts] = [:]
    /// Each VM's total at the first update: `total` counts from there, so it is the sum of the intervals.
    private var base: [Int32: UInt64]?

    struct Counts: Sendable {
        var total: UInt64 = 0
        var byVCPU: [UInt32: UInt64] = [:]
        var byReason: [String: UInt64] = [:]
        var histograms: [String: HistogramSnapshot] = [:]
        /// Every reason's handling times but halts', per vCPU number.
        var vcpuHistograms: [UInt32: HistogramSnapshot] = [:]

        mutating func add(_ vcpu: UInt32?, _ reason: String, _ n: UInt64, _ h: HistogramSnapshot?) {
            total &+= n
            if let vcpu { byVCPU[vcpu, default: 0] &+= n }
            byReason[reason, default: 0] &+= n
            if let h {
                if histograms[reason] == nil { histograms[reason] = h } else { histograms[reason]!.merge(h) }
                if let vcpu {
                    if vcpuHistograms[vcpu] == nil { vcpuHistograms[vcpu] = h } else { vcpuHistograms[vcpu]!.merge(h) }
                }
            }
        }
    }

    public init() {}

    static func counts(_ summary: Summary) -> [Int32: Counts] {
        var exits: [Int32: Counts] = [:]
        for r in summary.exits { exits[r.vm, default: Counts()].add(r.vcpu, r.reason, r.count, r.blocking ? nil : r.histogram) }
        var userspace: [Int32: Counts] = [:]
        for r in summary.userspaceExits where exits[r.vm] == nil {
            userspace[r.vm, default: Counts()].add(r.vcpu, r.reason, r.count, nil)
        }
        return exits.merging(userspace) { a, _ in a }
    }

    /// The exits of each VM since the previous update (the first update is the baseline: every VM's
    /// `interval` counts from the start of tracing, `total` from this update).
    @discardableResult
    public mutating func update(_ summary: Summary) -> [Int32: TopExits] {
        let now = Self.counts(summary)
        if base == nil { base = now.mapValues(\.total) }
        var out: [Int32: TopExits] = [:]
        for (vm, c) in now {
            let before = last[vm] ?? Counts()
            var byVCPU: [UInt32: UInt64] = [:]
            for (v, n) in c.byVCPU { byVCPU[v] = n &- min(n, before.byVCPU[v] ?? 0) }
            var top: (String, UInt64)?
            for (reason, n) in c.byReason {
                let d = n &- min(n, before.byReason[reason] ?? 0)
                if d > 0, d > top?.1 ?? 0 || (d == top?.1 && reason < top!.0) { top = (reason, d) }
            }
            var p99: UInt64?
            if let reason = top?.0, let h = c.histograms[reason] {
                let window = before.histograms[reason].map { h.subtracting($0) } ?? h
                if window.count > 0 { p99 = window.percentile(99) }
            }
            var p99ByVCPU: [UInt32: UInt64] = [:]
            for (v, h) in c.vcpuHistograms {
                let window = before.vcpuHistograms[v].map { h.subtracting($0) } ?? h
                if window.count > 0 { p99ByVCPU[v] = window.percentile(99) }
            }
            out[vm] = TopExits(total: c.total &- min(c.total, base?[vm] ?? 0), interval: c.total &- min(c.total, before.total),
                               intervalByVCPU: byVCPU, topReason: top?.0, topReasonP99Nanoseconds: p99, p99ByVCPU: p99ByVCPU)
        }
        for m in summary.vcpuMismatches {
            guard let traced = m.identity.tracedVCPU else { continue }
            out[m.identity.vm]?.vcpuMismatches[m.tid] = traced
        }
        last = now
        return out
    }
}
