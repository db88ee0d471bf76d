import KVMAnalysis
import KVMResources
import KVMScopeViews
import Testing

/// `serve`'s `kvmscope_vcpu_*` counters over a VMM that replaces its vCPU threads: each (vm, vcpu) series sums
/// every thread that has been that vCPU (``VCPUTimeTotals``), so it never goes down between scrapes.
@Suite struct VCPUCounterTests {
    static func thread(_ tid: Int32, vcpu: UInt32, user: UInt64, system: UInt64 = 0, switches: UInt64,
                       gone: Bool = false) -> ThreadSample {
        var t = ThreadTimes()
        t.userTicks = user
        t.systemTicks = system
        t.guestTicks = user
        t.waitNanoseconds = 1_000_000 * switches
        t.switches = switches
        return ThreadSample(tid: tid, comm: "CPU \(vcpu)/KVM", vcpu: vcpu, gone: gone, times: t)
    }

    /// The vCPU families' samples of one scrape of `threads` (VM 100, "g"), through `totals`.
    static func scrape(_ totals: inout VCPUTimeTotals, _ threads: [ThreadSample]) -> [String] {
        var vm = VMSample(pid: 100, name: "g")
        vm.threads = threads
        let sample = ResourceSample(timestamp: 0, intervalSeconds: 1, ticksPerSecond: 100, hostCPUs: 2,
                                    hostMemoryBytes: 1 << 30, vms: [vm])
        let text = PrometheusExposition.render(Summary(), format: .prometheus,
                                               extras: ExpositionExtras(version: "t", resources: sample,
                                                                        vcpuTotals: totals.update(sample)))
        return text.split(separator: "\n").map(String.init).filter {
            $0.hasPrefix("kvmscope_vcpu_cpu_seconds_total") || $0.hasPrefix("kvmscope_vcpu_context_switches_total")
        }
    }

    @Test func countersNeverGoDownWhenAThreadIsReplaced() {
        var totals = VCPUTimeTotals()
        func lines(_ cpu0: String, _ cpu1: String, _ sw0: Int, _ sw1: Int) -> [String] {
            ["kvmscope_vcpu_cpu_seconds_total{vm=\"100\",vm_name=\"g\",vcpu=\"0\"} \(cpu0)",
             "kvmscope_vcpu_cpu_seconds_total{vm=\"100\",vm_name=\"g\",vcpu=\"1\"} \(cpu1)",
             "kvmscope_vcpu_context_switches_total{vm=\"100\",vm_name=\"g\",vcpu=\"0\"} \(sw0)",
             "kvmscope_vcpu_context_switches_total{vm=\"100\",vm_name=\"g\",vcpu=\"1\"} \(sw1)"]
        }
        // vCPU 0 is thread 101 (7 ticks), vCPU 1 thread 102.
        #expect(Self.scrape(&totals, [Self.thread(101, vcpu: 0, user: 5, system: 2, switches: 10),
                                      Self.thread(102, vcpu: 1, user: 1, switches: 4)]) == lines("0.07", "0.01", 10, 4))
        // 101 ended at 9 ticks (its last reading), 103 replaced it: 9 + 3, not 103's 3 alone (0.03).
        #expect(Self.scrape(&totals, [Self.thread(101, vcpu: 0, user: 6, system: 3, switches: 12, gone: true),
                                      Self.thread(102, vcpu: 1, user: 1, switches: 4),
                                      Self.thread(103, vcpu: 0, user: 3, switches: 2)]) == lines("0.12", "0.01", 14, 4))
        // 101 no longer listed: counted once. 102 vanished without a gone mark: its last reading stays.
        #expect(Self.scrape(&totals, [Self.thread(103, vcpu: 0, user: 4, switches: 3)]) == lines("0.13", "0.01", 15, 4))
        // Tid 103 reused by a new vCPU 0 thread (its times start again): the old thread's 4 ticks stay in (9 + 4 + 1).
        #expect(Self.scrape(&totals, [Self.thread(103, vcpu: 0, user: 1, switches: 1),
                                      Self.thread(104, vcpu: 1, user: 2, switches: 1)]) == lines("0.14", "0.03", 16, 5))
    }
}
