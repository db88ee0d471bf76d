import KVMExits
/// A storm rule firing or resolving for one VM (or vCPU) and reason.
public struct StormAlert: Sendable, Equatable {
    public enum State: String, Sendable {
        case firing
        case resolved
    }

    /// The caller's clock at the evaluation, seconds (wall clock since 1970 in the commands).
    public var time: Double
    public var state: State
    public var rule: StormRule
    public var vm: Int32
    public var vmName: String?
    /// The vCPU, for `per vcpu` rules (nil when per VM, or the thread's vCPU is unknown).
    public var vcpu: UInt32?
    public var reason: String
    /// The measured value at this evaluation: per second for rates, ns for percentiles (nil: no data, e.g. no
    /// exit handled in the interval).
    public var value: Double?
    public var threshold: Double
    /// Guest RIPs causing the most exits of that reason so far (empty for events without RIPs).
    public var topRIPs: [RIPCount]
}

/// What a VM (or one vCPU thread) has cost the host so far, for resource rules (`cpu(vm) > 90%`): cumulative
/// counters from /proc (the commands fill them from KVMResources' samples).
public struct ResourceUse: Sendable, Equatable {
    public var vm: Int32
    public var vmName: String?
    /// nil: the whole VM (CPU of its process, wait summed over its vCPU threads); else one vCPU thread.
    public var vcpu: UInt32?
    /// Host CPU time, seconds.
    public var cpuSeconds: Double
    /// Run-queue wait of the vCPU thread(s), seconds.
    public var waitSeconds: Double
    /// Read and write requests completed by the VM's block devices (QMP `query-blockstats` rd_operations +
    /// wr_operations, or libvirt's rd.reqs + wr.reqs, summed over devices); nil when neither gave them this sample.
    public var diskRequests: UInt64?
    /// Those requests' total time, ns (rd_total_time_ns + wr_total_time_ns).
    public var diskNanoseconds: UInt64?

    public init(vm: Int32, vmName: String?, vcpu: UInt32?, cpuSeconds: Double, waitSeconds: Double) {
        self.vm = vm
        self.vmName = vmName
        self.vcpu = vcpu
        self.cpuSeconds = cpuSeconds
        self.waitSeconds = waitSeconds
    }
}

/// Whether a rule is firing for one VM × reason (× vCPU, for a per-vCPU rule): the gauge
/// `kvmscope_storm_active{vm,reason,rule}` (`vcpu` too for per-vCPU rules).
public struct StormActivity: Sendable, Equatable {
    public var rule: String
    public var vm: Int32
    public var vmName: String?
    public var reason: String
    public var active: Bool
    /// The vCPU of a per-vCPU rule (`rate(…, vcpu)`, `cpu(vcpu)`); nil for a per-VM rule.
    public var vcpu: UInt32?

    public init(rule: String, vm: Int32, vmName: String?, reason: String, active: Bool, vcpu: UInt32? = nil) {
        self.rule = rule
        self.vm = vm
        self.vmName = vmName
        self.reason = reason
        self.active = active
        self.vcpu = vcpu
    }
}

/// Evaluates storm rules over successive summaries of one trace.
///
/// Each ``evaluate(time:summary:)`` measures every rule over the interval since the previous evaluation (the
/// first call only records a baseline): a rate is the count delta over the time delta; a percentile is that of
/// the latency histogram delta (``HistogramSnapshot/subtracting(_:)``), so it covers exactly the exits handled
/// in the interval. A rule's condition is taken to hold over the whole interval it was measured on; the rule
/// fires once it has held for every interval since at least `for` seconds (with no `for`, at the first
/// interval that holds), and resolves at the first interval where it does not hold (no data counts as not
/// holding). Each fire and each resolve is returned once, so a sustained storm gives exactly one pair.
public struct StormDetector: Sendable {
    public let rules: [StormRule]

    struct Key: Hashable, Sendable {
        var vm: Int32
        var vcpu: UInt32?
    }

    /// One rule's measurement of one key at one instant.
    struct Measure: Sendable {
        var count: UInt64 = 0
        var histogram: HistogramSnapshot?
        var vmName: String?
        var topRIPs: [RIPCount] = []
        /// Resource rules: cumulative seconds (CPU or wait).
        var seconds: Double?
        /// `disk_latency`: cumulative requests and their time, ns.
        var requests: UInt64?
        var nanoseconds: UInt64?
    }

    struct KeyState: Sendable {
        var since: Double?
        var firing = false
        var everFired = false
        var vmName: String?
    }

    var previousTime: Double?
    var previous: [[Key: Measure]]
    var states: [[Key: KeyState]]

    public init(rules: [StormRule]) {
        self.rules = rules
        previous = rules.map { _ in [:] }
        states = rules.map { _ in [:] }
    }

    /// Tolerance on `for` durations: evaluation intervals measured by a real clock jitter by microseconds.
    static let forTolerance = 0.001

    /// Whether a rule reads /proc: then ``evaluate(time:summary:resources:)`` needs `resources`.
    public var needsResources: Bool { rules.contains { $0.function.isResource } }

    /// Measures every rule on `summary` (taken at `time`, seconds) and, for resource rules, on `resources`
    /// (cumulative, taken at the same time), and returns the alerts that fire or resolve.
    public mutating func evaluate(time: Double, summary: Summary, resources: [ResourceUse] = []) -> [StormAlert] {
        var alerts: [StormAlert] = []
        for (i, rule) in rules.enumerated() {
            let now = rule.function.isResource ? Self.measure(rule, resources) : Self.measure(rule, summary)
            defer { previous[i] = now }
            guard let start = previousTime, time > start else { continue }
            let keys = Set(now.keys).union(states[i].keys)
            for key in keys.sorted(by: { ($0.vm, $0.vcpu ?? .max) < ($1.vm, $1.vcpu ?? .max) }) {
                let m = now[key]
                let value = m.flatMap { Self.value(rule, now: $0, before: previous[i][key], seconds: time - start) }
                var st = states[i][key] ?? KeyState()
                if let name = m?.vmName { st.vmName = name }
                let holds = value.map(rule.holds) ?? false
                var state: StormAlert.State?
                if holds {
                    let since = st.since ?? start
                    st.since = since
                    if !st.firing && time - since + Self.forTolerance >= rule.forSeconds {
                        st.firing = true
                        st.everFired = true
                        state = .firing
                    }
                } else {
                    st.since = nil
                    if st.firing {
                        st.firing = false
                        state = .resolved
                    }
                }
                states[i][key] = st
                if let state {
                    alerts.append(StormAlert(time: time, state: state, rule: rule, vm: key.vm, vmName: st.vmName,
                                             vcpu: key.vcpu, reason: rule.reason, value: value,
                                             threshold: rule.threshold, topRIPs: m?.topRIPs ?? []))
                }
            }
        }
        previousTime = time
        return alerts
    }

    /// Every VM (× vCPU, for a per-vCPU rule) × reason × rule that has fired at least once: active now or not
    /// (for gauges). A per-vCPU rule's vCPUs stay apart: which one fires is what the alert is about.
    public var activity: [StormActivity] {
        var out: [StormActivity] = []
        for (i, rule) in rules.enumerated() {
            var byKey: [Key: StormActivity] = [:]
            for (key, st) in states[i] where st.everFired {
                var a = byKey[key] ?? StormActivity(rule: rule.text, vm: key.vm, vmName: st.vmName,
                                                    reason: rule.reason, active: false, vcpu: key.vcpu)
                a.active = a.active || st.firing
                byKey[key] = a
            }
            out.append(contentsOf: byKey.values.sorted { ($0.vm, $0.vcpu ?? 0) < ($1.vm, $1.vcpu ?? 0) })
        }
        return out
    }

    static func value(_ rule: StormRule, now: Measure, before: Measure?, seconds: Double) -> Double? {
        switch rule.function {
        case .rate:
            let delta = now.count &- (before?.count ?? 0)
            return Double(delta) / seconds
        case .percentile(let p):
            guard let h = now.histogram else { return nil }
            let window = before?.histogram.map { h.subtracting($0) } ?? h
            return window.count > 0 ? Double(window.percentile(p)) : nil
        case .cpu, .wait:
            // Counted since the VM (thread) started: only a measured interval gives a share.
            guard let s = now.seconds, let b = before?.seconds else { return nil }
            return max(0, s - b) / seconds * 100
        case .diskLatency:
            // The requests completed in the interval, and their average time; none completed: no data.
            guard let n = now.requests, let t = now.nanoseconds, let bn = before?.requests, let bt = before?.nanoseconds,
                  n > bn, t >= bt else { return nil }
            return Double(t - bt) / Double(n - bn)
        }
    }

    /// What a resource rule looks at, per key: whole VMs or vCPU threads.
    static func measure(_ rule: StormRule, _ resources: [ResourceUse]) -> [Key: Measure] {
        var out: [Key: Measure] = [:]
        for r in resources where (rule.scope == .vcpu) == (r.vcpu != nil) {
            out[Key(vm: r.vm, vcpu: r.vcpu)] = Measure(vmName: r.vmName,
                                                       seconds: rule.function == .cpu ? r.cpuSeconds : r.waitSeconds,
                                                       requests: r.diskRequests, nanoseconds: r.diskNanoseconds)
        }
        return out
    }

    /// What a rule looks at in a summary, per key.
    static func measure(_ rule: StormRule, _ s: Summary) -> [Key: Measure] {
        var out: [Key: Measure] = [:]
        func key(_ vm: Int32, _ vcpu: UInt32?) -> Key { Key(vm: vm, vcpu: rule.scope == .vcpu ? vcpu : nil) }
        let all = rule.reason == "*"
        let resolver = ReasonResolver.builtin
        for r in s.exits where all || resolver.matches(rule.reason, isa: r.isa, name: r.reason) {
            var m = out[key(r.vm, r.vcpu)] ?? Measure(vmName: r.vmName)
            switch rule.function {
            case .rate:
                m.count += r.count
            case .percentile, .cpu, .wait, .diskLatency:
                // Blocking reasons (HLT: the guest sleeping) only when the rule names them.
                if let h = r.histogram, !(all && r.blocking) {
                    if m.histogram == nil { m.histogram = h } else { m.histogram!.merge(h) }
                }
            }
            m.topRIPs = TopRIPs.merge(m.topRIPs, r.topRIPs, limit: 5)
            out[key(r.vm, r.vcpu)] = m
        }
        guard case .rate = rule.function, !all else { return out }
        for r in s.userspaceExits where ReasonResolver.sameUserspaceReason(rule.reason, r.reason) {
            out[key(r.vm, r.vcpu), default: Measure(vmName: r.vmName)].count += r.count
        }
        for r in s.eventRows where r.event == rule.reason {
            out[key(r.vm, r.vcpu), default: Measure(vmName: r.vmName)].count += r.count
        }
        return out
    }
}
