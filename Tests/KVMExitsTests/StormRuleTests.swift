import KVMAnalysis
import KVMExits
import Testing

@Suite("StormRule")
struct StormRuleTests {
    // MARK: Grammar

    @Test func parsesRateRuleWithDuration() throws {
        let r = try StormRule(parsing: "rate(EPT_MISCONFIG) > 50000/s for 5s")
        #expect(r.function == .rate)
        #expect(r.reason == "EPT_MISCONFIG")
        #expect(r.comparison == .above)
        #expect(r.threshold == 50_000)
        #expect(r.forSeconds == 5)
        #expect(r.scope == .vm)
        #expect(r.text == "rate(EPT_MISCONFIG) > 50000/s for 5s")
    }

    /// Numbers with an exponent, as PromQL takes them: `1e3/s` is 1000/s, `2.5e-2s` 25 ms; `2e` alone is no number.
    @Test func numbersTakeAnExponent() throws {
        #expect(try StormRule(parsing: "rate(kvm_pio) > 1e3/s").threshold == 1_000)
        #expect(try StormRule(parsing: "rate(kvm_pio) > 1.5E+4/s").threshold == 15_000)
        #expect(try StormRule(parsing: "p99(HLT) > 2.5e-2s").threshold == 25_000_000)
        #expect(throws: (any Error).self) { try StormRule(parsing: "rate(kvm_pio) > 2e/s") }
    }

    @Test func parsesPercentileRule() throws {
        let r = try StormRule(parsing: "p99(MSR_WRITE) > 20us for 10s")
        #expect(r.function == .percentile(99))
        #expect(r.reason == "MSR_WRITE")
        #expect(r.threshold == 20_000)
        #expect(r.forSeconds == 10)
    }

    @Test func parsesWildcardWithoutDuration() throws {
        let r = try StormRule(parsing: "  rate(*) > 200000/s ")
        #expect(r.reason == "*")
        #expect(r.forSeconds == 0)
        #expect(r.scope == .vm)
        #expect(r.text == "rate(*) > 200000/s")
    }

    @Test func parsesClausesInAnyOrderAndEveryUnit() throws {
        let a = try StormRule(parsing: "p99(HLT)>1.5ms per vcpu for 500ms")
        #expect(a.threshold == 1_500_000)
        #expect(a.forSeconds == 0.5)
        #expect(a.scope == .vcpu)
        let b = try StormRule(parsing: "p999(IO_INSTRUCTION) < 3µs for 2m per vm")
        #expect(b.function == .percentile(99.9))
        #expect(b.comparison == .below)
        #expect(b.threshold == 3_000)
        #expect(b.forSeconds == 120)
        #expect(try StormRule(parsing: "p50(X) > 7ns").threshold == 7)
        #expect(try StormRule(parsing: "p90(X) > 2s").threshold == 2e9)
        #expect(try StormRule(parsing: "rate(kvm_pio) > 1000/s for 1s").reason == "kvm_pio")
    }

    @Test(arguments: [
        ("rate(HLT) >> 5", "bad rule 'rate(HLT) >> 5': expected a comparison '>' or '<' at column 11"),
        ("rat(HLT) > 5/s", "bad rule 'rat(HLT) > 5/s': expected 'rate', a percentile (p50, p90, p99, p999), 'cpu', 'wait' or 'disk_latency' at column 1"),
        ("", "bad rule '': expected 'rate', a percentile (p50, p90, p99, p999), 'cpu', 'wait' or 'disk_latency' at end of rule"),
        ("rate HLT > 5/s", "bad rule 'rate HLT > 5/s': expected '(' at column 6"),
        ("rate(>) > 5/s", "bad rule 'rate(>) > 5/s': expected an exit reason, an event name or '*' at column 6"),
        ("rate(HLT > 5/s", "bad rule 'rate(HLT > 5/s': expected ')' at column 10"),
        ("rate(HLT) > 5", "bad rule 'rate(HLT) > 5': expected '/s' after the rate at end of rule"),
        ("rate(HLT) > 5us", "bad rule 'rate(HLT) > 5us': expected '/s' after the rate at column 14"),
        ("rate(HLT) > fast", "bad rule 'rate(HLT) > fast': expected a rate (e.g. 50000/s) at column 13"),
        ("p99(HLT) > 5 parsecs", "bad rule 'p99(HLT) > 5 parsecs': expected a latency unit (ns, us, µs, ms, s) at column 14"),
        ("p99(HLT) > 5", "bad rule 'p99(HLT) > 5': expected a latency unit (ns, us, µs, ms, s) at end of rule"),
        ("rate(HLT) > 5/s for 5", "bad rule 'rate(HLT) > 5/s for 5': expected a duration unit (ms, s, m) at end of rule"),
        ("rate(HLT) > 5/s for ever", "bad rule 'rate(HLT) > 5/s for ever': expected a duration (e.g. 5s) at column 21"),
        ("rate(HLT) > 5/s per host", "bad rule 'rate(HLT) > 5/s per host': expected 'vm' or 'vcpu' at column 21"),
        ("rate(HLT) > 5/s every 5s", "bad rule 'rate(HLT) > 5/s every 5s': expected 'for', 'per' or the end of the rule at column 17"),
        ("rate(HLT) > 5/s for 1s for 2s", "bad rule 'rate(HLT) > 5/s for 1s for 2s': 'for' given twice at column 24"),
        ("p99(kvm_pio) > 5us", "bad rule 'p99(kvm_pio) > 5us': a percentile needs a kvm_exit reason (exit latency), not 'kvm_pio', at column 5"),
    ])
    func malformedRulesNameTheProblem(rule: String, message: String) {
        #expect(throws: StormRuleError(description: message)) { try StormRule(parsing: rule) }
    }

    // MARK: Detector: rates

    /// A summary where VM 100's vCPUs have done `pio[i]` kvm_pio events and as many KVM_EXIT_IO exits.
    static func ioSummary(_ pio: [UInt64]) -> Summary {
        var s = Summary()
        for (i, n) in pio.enumerated() {
            s.eventRows.append(EventRow(vm: 100, vmName: "guest", vcpu: UInt32(i), event: "kvm_pio", count: n))
            s.userspaceExits.append(UserspaceExitRow(vm: 100, vmName: "guest", vcpu: UInt32(i), reason: "KVM_EXIT_IO",
                                                     count: n))
        }
        return s
    }

    static func run(_ rule: String, _ samples: [(Double, Summary)]) throws -> [StormAlert] {
        var d = StormDetector(rules: [try StormRule(parsing: rule)])
        return samples.flatMap { d.evaluate(time: $0.0, summary: $0.1) }
    }

    static func brief(_ a: StormAlert) -> String {
        "\(a.time) \(a.state.rawValue) vm=\(a.vm) vcpu=\(a.vcpu.map(String.init) ?? "-") \(a.reason) "
            + "value=\(a.value.map { String($0) } ?? "nil")"
    }

    @Test func sustainedRateFiresOnceAndResolvesAfter() throws {
        // 1000 events per vCPU every 0.5 s (4000/s for the VM) from t = 0 to 2, then nothing.
        let counts: [UInt64] = [0, 1000, 2000, 3000, 4000, 4000, 4000]
        let samples = counts.enumerated().map { (Double($0.offset) * 0.5, Self.ioSummary([$0.element, $0.element])) }
        let alerts = try Self.run("rate(kvm_pio) > 1000/s for 1s", samples)
        #expect(alerts.map(Self.brief) == [
            "1.0 firing vm=100 vcpu=- kvm_pio value=4000.0",
            "2.5 resolved vm=100 vcpu=- kvm_pio value=0.0",
        ])
        #expect(alerts[0].vmName == "guest")
        #expect(alerts[0].threshold == 1000)
        #expect(alerts[0].topRIPs == [])
    }

    @Test func userspaceReasonRatePerVCPU() throws {
        // Only vCPU 1 storms.
        let samples = (0...3).map { (Double($0), Self.ioSummary([UInt64($0) * 10, UInt64($0) * 5000])) }
        let alerts = try Self.run("rate(KVM_EXIT_IO) > 1000/s per vcpu", samples)
        #expect(alerts.map(Self.brief) == ["1.0 firing vm=100 vcpu=1 KVM_EXIT_IO value=5000.0"])
    }

    @Test func belowThresholdNothingFires() throws {
        let samples = (0...10).map { (Double($0) * 0.5, Self.ioSummary([UInt64($0) * 250, UInt64($0) * 250])) }
        // 1000/s for the VM: equal to the threshold is not above it.
        #expect(try Self.run("rate(kvm_pio) > 1000/s", samples).isEmpty)
        #expect(try Self.run("rate(kvm_pio) > 999/s", samples).map(Self.brief) == [
            "0.5 firing vm=100 vcpu=- kvm_pio value=1000.0",
        ])
    }

    @Test func forDurationMustHoldContinuously() throws {
        // Above (2000/s) in the intervals ending at 1, 2, then below at 3, then above at 4, 5, 6.
        let counts: [UInt64] = [0, 1000, 2000, 2000, 3000, 4000, 5000]
        let samples = counts.enumerated().map { (Double($0.offset), Self.ioSummary([$0.element, $0.element])) }
        // Held 2 s (0 → 2), broken, then held 3 s (3 → 6): fires only in the second run, at 6.
        #expect(try Self.run("rate(kvm_pio) > 1000/s for 2.5s", samples).map(Self.brief) == [
            "6.0 firing vm=100 vcpu=- kvm_pio value=2000.0",
        ])
        // Without `for`: fires on the first interval above, resolves, fires again.
        #expect(try Self.run("rate(kvm_pio) > 1000/s", samples).map(Self.brief) == [
            "1.0 firing vm=100 vcpu=- kvm_pio value=2000.0",
            "3.0 resolved vm=100 vcpu=- kvm_pio value=0.0",
            "4.0 firing vm=100 vcpu=- kvm_pio value=2000.0",
        ])
        // A `for` longer than the whole storm never fires.
        #expect(try Self.run("rate(kvm_pio) > 1000/s for 10s", samples).isEmpty)
    }

    @Test func firstEvaluationIsOnlyABaseline() throws {
        // Counts already high at the first sample (a VM running before the trace) do not make a rate.
        let samples = [(0.0, Self.ioSummary([1_000_000])), (1.0, Self.ioSummary([1_000_010]))]
        #expect(try Self.run("rate(kvm_pio) > 100/s", samples).isEmpty)
    }

    // MARK: Detector: latency

    static func exitRow(vcpu: UInt32, reason: String, blocking: Bool = false, latencies: [UInt64]) -> ExitRow {
        ExitRow(vm: 200, vmName: "db", vcpu: vcpu, reason: reason, isa: .vmx, count: UInt64(latencies.count),
                blocking: blocking, histogram: HistogramSnapshot(recording: latencies),
                topRIPs: [RIPCount(rip: 0xffff_ffff_8100_0010, count: UInt64(latencies.count))])
    }

    static func summary(_ rows: [ExitRow]) -> Summary {
        var s = Summary()
        s.exits = rows
        return s
    }

    @Test func subtractingGivesTheValuesInBetween() {
        let old = (0..<1000).map { UInt64(40_000 + $0) }
        let new = (0..<997).map { _ in UInt64(1_000) } + [100_000, 150_000, 3_000_000]
        let delta = HistogramSnapshot(recording: old + new).subtracting(HistogramSnapshot(recording: old))
        let direct = HistogramSnapshot(recording: new)
        #expect(delta.bucketCounts == direct.bucketCounts)
        #expect(delta.count == 1000)
        #expect(delta.sum == direct.sum)
        #expect(delta.exactSumOfSquares == direct.exactSumOfSquares)
        #expect(delta.max == 3_000_000)
        #expect(delta.min == 1_000)
        for p in [50.0, 90, 99, 99.7, 99.8, 99.9] { #expect(delta.percentile(p) == direct.percentile(p)) }
        #expect(HistogramSnapshot(recording: old).subtracting(HistogramSnapshot(recording: old)).isEmpty)
    }

    @Test func percentileRuleUsesTheIntervalNotTheWholeTrace() throws {
        let past = Array(repeating: UInt64(50_000), count: 1000)  // an old MSR storm: 50 µs
        let quiet = Array(repeating: UInt64(1_000), count: 1000)  // 1 µs
        let spike = Array(repeating: UInt64(100_000), count: 20) + Array(repeating: UInt64(1_000), count: 980)
        let samples = [
            (0.0, Self.summary([Self.exitRow(vcpu: 0, reason: "MSR_WRITE", latencies: past)])),
            // Cumulative p99 would still be 50 µs; the interval's is 1 µs.
            (1.0, Self.summary([Self.exitRow(vcpu: 0, reason: "MSR_WRITE", latencies: past + quiet)])),
            (2.0, Self.summary([Self.exitRow(vcpu: 0, reason: "MSR_WRITE", latencies: past + quiet + spike)])),
            (3.0, Self.summary([Self.exitRow(vcpu: 0, reason: "MSR_WRITE", latencies: past + quiet + spike + quiet)])),
        ]
        let alerts = try Self.run("p99(MSR_WRITE) > 20us", samples)
        // p99 of the spike interval: rank 990 of 1000 is one of the 20 values of 100 µs, reported as the
        // midpoint of their bucket [99328, 100351]: 99839 ns. Then the quiet interval's p99 is the midpoint of
        // the bucket of 1000 ns, [1000, 1007]: 1003 (a delta's min is only known to its bucket).
        #expect(HistogramSnapshot(recording: spike).percentile(99) == 99_839)
        #expect(alerts.map(Self.brief) == [
            "2.0 firing vm=200 vcpu=- MSR_WRITE value=99839.0",
            "3.0 resolved vm=200 vcpu=- MSR_WRITE value=1003.0",
        ])
        #expect(alerts[0].threshold == 20_000)
        #expect(alerts[0].topRIPs == [RIPCount(rip: 0xffff_ffff_8100_0010, count: 3000)])
    }

    @Test func haltTimeNeverTriggersALatencyRuleUnlessNamed() throws {
        let sleeping = Array(repeating: UInt64(5_000_000), count: 500)  // the guest halted 5 ms each time
        let fast = Array(repeating: UInt64(800), count: 500)
        let samples = [
            (0.0, Self.summary([Self.exitRow(vcpu: 0, reason: "HLT", blocking: true, latencies: []),
                                Self.exitRow(vcpu: 0, reason: "MSR_WRITE", latencies: [])])),
            (1.0, Self.summary([Self.exitRow(vcpu: 0, reason: "HLT", blocking: true, latencies: sleeping),
                                Self.exitRow(vcpu: 0, reason: "MSR_WRITE", latencies: fast)])),
        ]
        #expect(try Self.run("p99(*) > 20us", samples).isEmpty)
        #expect(try Self.run("p50(*) > 1us", samples).isEmpty)
        #expect(try Self.run("p99(HLT) > 20us", samples).map(Self.brief) == [
            "1.0 firing vm=200 vcpu=- HLT value=5000000.0",
        ])
        // Rates still count halts: they are exits.
        #expect(try Self.run("rate(*) > 999/s", samples).map(Self.brief) == [
            "1.0 firing vm=200 vcpu=- * value=1000.0",
        ])
    }

    @Test func activityReportsFiringAndResolvedKeys() throws {
        var d = StormDetector(rules: [try StormRule(parsing: "rate(kvm_pio) > 10/s")])
        #expect(d.evaluate(time: 0, summary: Self.ioSummary([0])).isEmpty)
        #expect(d.activity == [])
        _ = d.evaluate(time: 1, summary: Self.ioSummary([100]))
        #expect(d.activity == [StormActivity(rule: "rate(kvm_pio) > 10/s", vm: 100, vmName: "guest", reason: "kvm_pio",
                                             active: true)])
        _ = d.evaluate(time: 2, summary: Self.ioSummary([100]))
        #expect(d.activity.map(\.active) == [false])
    }

    /// A per-vCPU rule's activity keeps its vCPUs apart (the gauge's vcpu label): which one fires is the point.
    @Test func perVCPUActivityKeepsTheVCPU() throws {
        var d = StormDetector(rules: [try StormRule(parsing: "rate(kvm_pio) > 10/s per vcpu")])
        _ = d.evaluate(time: 0, summary: Self.ioSummary([0, 0]))
        _ = d.evaluate(time: 1, summary: Self.ioSummary([100, 5]))
        #expect(d.activity == [StormActivity(rule: "rate(kvm_pio) > 10/s per vcpu", vm: 100, vmName: "guest",
                                             reason: "kvm_pio", active: true, vcpu: 0)])
        _ = d.evaluate(time: 2, summary: Self.ioSummary([100, 100]))
        #expect(d.activity.map { "\($0.vcpu.map(String.init) ?? "-") \($0.active)" } == ["0 false", "1 true"])
    }
}
