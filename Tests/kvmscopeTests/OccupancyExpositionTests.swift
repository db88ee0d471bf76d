import KVMAnalysis
import KVMExits
import KVMScopeViews
import Testing

/// Occupancy and retired VMs in `/metrics`: exact lines, totals unchanged by retirement.
@Suite struct OccupancyExpositionTests {
    static func lines(_ text: String, _ prefix: String) -> [String] {
        text.split(separator: "\n").map(String.init).filter { $0.hasPrefix(prefix) }
    }

    @Test func retiredVMsStayInTheirSeriesThenFoldIntoOther() throws {
        var catalog = EventCatalog()
        catalog.add(system: "kvm", name: "kvm_pio")
        catalog.add(system: "kvm", name: "kvm_userspace_exit")
        // Threads 101, 102 (VM 100, vCPUs 0 and 1) and 201 (VM 200); VM 300's thread 301.
        let agg = Aggregator(catalog: catalog, shardCount: 1,
                             resolver: { tid in ThreadIdentity(vm: tid / 100 * 100, vmName: "g\(tid / 100)", vcpu: UInt32(tid % 100 - 1)) },
                             retirement: true, retiredVMCapacity: 1)
        var w = agg.writer(shard: 0)
        for (tid, n) in [(101, 3), (102, 4), (201, 5), (301, 6)] as [(Int32, Int)] {
            for _ in 0..<n {
                w.add(TraceEvent(timestamp: 0, tid: tid, event: 0), hasReason: false)
                w.add(TraceEvent(timestamp: 0, tid: tid, event: 1, reason: 2), hasReason: true)
            }
        }
        let extras = ExpositionExtras(version: "test")
        func render() throws -> String {
            PrometheusExposition.render(try Summary(agg.snapshot(timestamp: 0)), format: .prometheus, extras: extras)
        }
        let before = try render()
        let userBefore = Self.lines(before, "kvmscope_userspace_exits_total")
        #expect(userBefore == [
            #"kvmscope_userspace_exits_total{vm="100",vm_name="g1",vcpu="0",reason="KVM_EXIT_IO"} 3"#,
            #"kvmscope_userspace_exits_total{vm="100",vm_name="g1",vcpu="1",reason="KVM_EXIT_IO"} 4"#,
            #"kvmscope_userspace_exits_total{vm="200",vm_name="g2",vcpu="0",reason="KVM_EXIT_IO"} 5"#,
            #"kvmscope_userspace_exits_total{vm="300",vm_name="g3",vcpu="0",reason="KVM_EXIT_IO"} 6"#,
        ])
        // VM 100 stops (both threads), then VM 200: one stopped VM's rows are kept, the older one folds.
        agg.retire([101, 102])
        w.maintain()
        let one = try render()
        #expect(Self.lines(one, "kvmscope_userspace_exits_total") == userBefore)
        #expect(Self.lines(one, "kvmscope_live_threads ") == ["kvmscope_live_threads 2"])
        #expect(Self.lines(one, "kvmscope_retired_threads_total ") == ["kvmscope_retired_threads_total 2"])
        #expect(Self.lines(one, "kvmscope_retired_rows ") == ["kvmscope_retired_rows 2"])
        agg.retire([201])
        w.maintain()
        let two = try render()
        #expect(Self.lines(two, "kvmscope_userspace_exits_total") == [
            #"kvmscope_userspace_exits_total{vm="other",vm_name="other",vcpu="",reason="KVM_EXIT_IO"} 7"#,
            #"kvmscope_userspace_exits_total{vm="200",vm_name="g2",vcpu="0",reason="KVM_EXIT_IO"} 5"#,
            #"kvmscope_userspace_exits_total{vm="300",vm_name="g3",vcpu="0",reason="KVM_EXIT_IO"} 6"#,
        ])
        #expect(Self.lines(two, "kvmscope_events_total") == Self.lines(before, "kvmscope_events_total"))
        #expect(Self.lines(two, "kvmscope_live_threads ") == ["kvmscope_live_threads 1"])
        #expect(Self.lines(two, "kvmscope_retired_threads_total ") == ["kvmscope_retired_threads_total 3"])
        #expect(Self.lines(two, "kvmscope_retired_rows ") == ["kvmscope_retired_rows 2"])
        #expect(Self.lines(two, "kvmscope_folded_vms_total ") == ["kvmscope_folded_vms_total 1"])
        #expect(SummaryJSON.occupancy(try Summary(agg.snapshot(timestamp: 0)).occupancy).serialized(pretty: false)
                == #"{"live_threads":1,"live_series":0,"retired_threads":3,"retired_rows":2,"folded_vms":1}"#)
    }
}
