/// Each VM × vCPU number's times, summed over every thread that has been that vCPU: a running total that never
/// goes down when a vCPU thread is replaced (a VMM that recreates its vCPU threads, `kvmscope storm --seconds`),
/// as Prometheus counters must not.
///
/// ``update(_:)`` takes successive samples of one sampler. A thread that ends (``ThreadSample/gone``, or missing
/// from a later sample) has its last times folded into its vCPU's retired total; a tid whose times went back
/// (reused by a new thread) folds its previous thread's. Each total is also held at its largest value so far.
/// Memory: one entry per vCPU number of each VM still sampled, plus its live threads.
public struct VCPUTimeTotals: Sendable {
    struct Key: Hashable, Sendable {
        var vm: Int32
        var vcpu: UInt32
    }

    private var retired: [Key: ThreadTimes] = [:]
    /// Each vCPU's live threads at the last sample, by tid: their times then.
    private var live: [Key: [Int32: ThreadTimes]] = [:]
    /// Threads a sample marked gone (already folded): a later sample may show them gone again.
    private var folded: [Key: Set<Int32>] = [:]
    private var exported: [Key: ThreadTimes] = [:]

    public init() {}

    /// Folds `sample` in and returns each sampled VM's vCPU totals, by pid then vCPU number: its retired threads'
    /// times plus its live threads' (a vCPU number with several live threads sums them). VMs gone from the
    /// sample are forgotten.
    public mutating func update(_ sample: ResourceSample) -> [Int32: [UInt32: ThreadTimes]] {
        var seen: [Key: [ThreadSample]] = [:]
        var vms = Set<Int32>()
        for vm in sample.vms where !vm.gone {
            vms.insert(vm.pid)
            for t in vm.threads where !t.kernelThread {
                guard let vcpu = t.vcpu else { continue }
                seen[Key(vm: vm.pid, vcpu: vcpu), default: []].append(t)
            }
        }
        // Threads no longer listed: their last times are their vCPU's for good.
        for (key, threads) in live {
            let now = Set((seen[key] ?? []).map(\.tid))
            for (tid, times) in threads where !now.contains(tid) { retired[key] = (retired[key] ?? ThreadTimes()) + times }
        }
        var nextLive: [Key: [Int32: ThreadTimes]] = [:]
        var nextFolded: [Key: Set<Int32>] = [:]
        var out: [Int32: [UInt32: ThreadTimes]] = [:]
        for (key, threads) in seen {
            var total = retired[key] ?? ThreadTimes()
            for t in threads {
                let before = live[key]?[t.tid]
                if let before, before.cpuTicks > t.times.cpuTicks || before.switches > t.times.switches {
                    // A reused tid: the previous thread's times are retired, the new one counts from its own.
                    total = total + before
                }
                if t.gone {
                    if !(folded[key]?.contains(t.tid) ?? false) { total = total + t.times }
                    nextFolded[key, default: []].insert(t.tid)
                } else {
                    nextLive[key, default: [:]][t.tid] = t.times
                }
            }
            // What the gone threads added is retired now; the live ones count on top.
            let retiredNow = total
            retired[key] = retiredNow
            for (_, times) in nextLive[key] ?? [:] { total = total + times }
            let shown = Self.max(exported[key], total)
            exported[key] = shown
            out[key.vm, default: [:]][key.vcpu] = shown
        }
        // Keys of VMs still sampled keep their totals (a vCPU between threads); a VM that ended is forgotten.
        for key in exported.keys where !vms.contains(key.vm) {
            exported[key] = nil
            retired[key] = nil
        }
        for (key, shown) in exported where seen[key] == nil { out[key.vm, default: [:]][key.vcpu] = shown }
        live = nextLive
        folded = nextFolded
        return out
    }

    static func max(_ a: ThreadTimes?, _ b: ThreadTimes) -> ThreadTimes {
        guard let a else { return b }
        var m = b
        m.userTicks = Swift.max(a.userTicks, b.userTicks)
        m.systemTicks = Swift.max(a.systemTicks, b.systemTicks)
        m.guestTicks = Swift.max(a.guestTicks, b.guestTicks)
        m.waitNanoseconds = Swift.max(a.waitNanoseconds, b.waitNanoseconds)
        m.switches = Swift.max(a.switches, b.switches)
        return m
    }
}
