import KVMAnalysis
import KVMExits
import Testing

/// Storm rules on what a VM costs the host: `cpu(vm|vcpu)` and `wait(vm|vcpu)` over /proc counters.
@Suite struct ResourceRuleTests {
    @Test func parsesResourceRules() throws {
        let a = try StormRule(parsing: "cpu(vm) > 90% for 1m")
        #expect(a.function == .cpu)
        #expect(a.function.isResource)
        #expect(a.reason == "cpu")
        #expect(a.scope == .vm)
        #expect(a.threshold == 90)
        #expect(a.forSeconds == 60)
        let b = try StormRule(parsing: "wait(vcpu)<2.5%")
        #expect(b.function == .wait)
        #expect(b.reason == "wait")
        #expect(b.scope == .vcpu)
        #expect(b.comparison == .below)
        #expect(b.threshold == 2.5)
        #expect(b.forSeconds == 0)
        #expect(!(try StormRule(parsing: "rate(HLT) > 1/s")).function.isResource)
    }

    @Test(arguments: [
        ("cpu(HLT) > 5%", "bad rule 'cpu(HLT) > 5%': expected 'vm' or 'vcpu' at column 5"),
        ("cpu(vm) > 5/s", "bad rule 'cpu(vm) > 5/s': expected '%' after the percentage at column 12"),
        ("wait(vm) > 5", "bad rule 'wait(vm) > 5': expected '%' after the percentage at end of rule"),
        ("wait(vm) > 5% per vcpu",
         "bad rule 'wait(vm) > 5% per vcpu': expected 'for' or the end of the rule (the scope is cpu(vm|vcpu)'s argument) at column 15"),
        ("cpu(vm) > 5% for 1s for 2s", "bad rule 'cpu(vm) > 5% for 1s for 2s': 'for' given twice at column 21"),
        ("cpu(vm) = 5%", "bad rule 'cpu(vm) = 5%': expected a comparison '>' or '<' at column 9"),
    ])
    func malformedResourceRules(rule: String, message: String) {
        #expect(throws: StormRuleError(description: message)) { try StormRule(parsing: rule) }
    }

    @Test func parsesDiskLatency() throws {
        let r = try StormRule(parsing: "disk_latency(vm) > 5ms for 30s")
        #expect(r.function == .diskLatency)
        #expect(r.function.isResource)
        #expect(r.reason == "disk_latency")
        #expect(r.scope == .vm)
        #expect(r.threshold == 5_000_000)
        #expect(r.forSeconds == 30)
        #expect(throws: StormRuleError(description: "bad rule 'disk_latency(vcpu) > 5ms': disk_latency is per VM (its block devices): expected 'vm' at column 14")) {
            try StormRule(parsing: "disk_latency(vcpu) > 5ms")
        }
        #expect(throws: StormRuleError(description: "bad rule 'disk_latency(vm) > 5%': expected a latency unit (ns, us, µs, ms, s) at column 21")) {
            try StormRule(parsing: "disk_latency(vm) > 5%")
        }
    }

    /// Average time per request completed in each interval: Δtime / Δrequests; no request, no data.
    @Test func diskLatencyIsTimePerRequestOfTheInterval() throws {
        var d = StormDetector(rules: [try StormRule(parsing: "disk_latency(vm) > 5ms")])
        func use(_ requests: UInt64?, _ ns: UInt64?) -> [ResourceUse] {
            var u = ResourceUse(vm: 9, vmName: "db", vcpu: nil, cpuSeconds: 0, waitSeconds: 0)
            u.diskRequests = requests
            u.diskNanoseconds = ns
            return [u]
        }
        #expect(d.evaluate(time: 0, summary: Summary(), resources: use(1000, 2_000_000_000)).isEmpty)
        // 100 requests taking 700 ms together: 7 ms each.
        let fire = d.evaluate(time: 1, summary: Summary(), resources: use(1100, 2_700_000_000))
        #expect(fire.map(\.state) == [.firing])
        #expect(fire.first?.value == 7_000_000)
        #expect(fire.first?.threshold == 5_000_000)
        // No request completed: no data, the alert resolves.
        let idle = d.evaluate(time: 2, summary: Summary(), resources: use(1100, 2_700_000_000))
        #expect(idle.map(\.state) == [.resolved])
        #expect(idle.first?.value == nil)
        // 50 requests in 100 ms: 2 ms each, under the threshold; no QMP reading: no data.
        #expect(d.evaluate(time: 3, summary: Summary(), resources: use(1150, 2_800_000_000)).isEmpty)
        #expect(d.evaluate(time: 4, summary: Summary(), resources: use(nil, nil)).isEmpty)
    }

    /// CPU and wait as shares of each interval, firing and resolving once.
    @Test func detectorMeasuresSharesOfTheInterval() throws {
        var d = StormDetector(rules: [try StormRule(parsing: "cpu(vm) > 50%"), try StormRule(parsing: "wait(vcpu) > 10% for 2s")])
        #expect(d.needsResources)
        func use(_ cpu: Double, _ wait0: Double, _ wait1: Double) -> [ResourceUse] {
            [ResourceUse(vm: 7, vmName: "web", vcpu: nil, cpuSeconds: cpu, waitSeconds: wait0 + wait1),
             ResourceUse(vm: 7, vmName: "web", vcpu: 0, cpuSeconds: cpu / 2, waitSeconds: wait0),
             ResourceUse(vm: 7, vmName: "web", vcpu: 1, cpuSeconds: cpu / 2, waitSeconds: wait1)]
        }
        // Cumulative since the VM started: the first evaluation is only a baseline.
        #expect(d.evaluate(time: 0, summary: Summary(), resources: use(100, 5, 5)).isEmpty)
        // 1 s later: 0.8 s of CPU (80 %), vCPU 0 waited 0.2 s (20 %), vCPU 1 0.05 s.
        let first = d.evaluate(time: 1, summary: Summary(), resources: use(100.8, 5.2, 5.05))
        #expect(first.map(\.state) == [.firing])
        #expect(first.first?.reason == "cpu")
        #expect(first.first?.vcpu == nil)
        #expect(abs((first.first?.value ?? 0) - 80) < 1e-9)
        let second = d.evaluate(time: 2, summary: Summary(), resources: use(101.0, 5.4, 5.1))
        #expect(second.map(\.state) == [.resolved, .firing])
        #expect(second.map(\.reason) == ["cpu", "wait"])
        #expect(second.last?.vcpu == 0)
        #expect(abs((second.last?.value ?? 0) - 20) < 1e-9)
        // A VM that is gone gives no data: its alerts resolve.
        let third = d.evaluate(time: 3, summary: Summary(), resources: [])
        #expect(third.map(\.state) == [.resolved])
        #expect(d.activity.map(\.reason) == ["cpu", "wait"])
    }
}
