import KVMAnalysis
import KVMExits
import KVMScopeViews
import Testing

/// The JSON summary contract, golden: exits rows with latency_ns (every field), flags, top_rips, and the
/// top-level pairing counters.
@Suite struct SummaryJSONTests {
    @Test func goldenText() throws {
        var catalog = EventCatalog()
        let exit = catalog.add(system: "kvm", name: "kvm_exit")
        let entry = catalog.add(system: "kvm", name: "kvm_entry")
        let user = catalog.add(system: "kvm", name: "kvm_userspace_exit")
        let agg = Aggregator(catalog: catalog, shardCount: 1) { _ in ThreadIdentity(vm: 10, vmName: "web", vcpu: 0) }
        var w = agg.writer(shard: 0)
        var p = agg.makePairer()
        var t: UInt64 = 1_000_000
        func pair(_ reason: UInt32, rip: UInt64, latency: UInt64?) {
            let e = TraceEvent(timestamp: t, rip: rip, tid: 11, event: exit, reason: reason, vcpu: 0, isa: 1)
            w.add(e, hasReason: true)
            p.exit(e)
            if let latency {
                let n = TraceEvent(timestamp: t + latency, tid: 11, event: entry, vcpu: 0)
                w.add(n, hasReason: false)
                p.entry(n)
            }
            t += 100_000
        }
        pair(30, rip: 0x1000, latency: 100)
        pair(30, rip: 0x1008, latency: 300)
        pair(30, rip: 0x1000, latency: 200)
        pair(12, rip: 0x2000, latency: 5_000)
        for _ in 0..<2 { w.add(TraceEvent(timestamp: t, tid: 11, event: user, reason: 2), hasReason: true) }
        pair(0x8000_0021, rip: 0x3000, latency: nil)  // a failed VM entry, never entered: open at the end
        p.finish()
        w.addLost(3)
        let summary = try Summary(agg.snapshot(timestamp: t))
        let text = SummaryJSON.render(summary, durationSeconds: 1.5)
        #expect(text == """
        {
          "duration_s": 1.5,
          "lost_events": 3,
          "events": {
            "kvm_exit": 5,
            "kvm_entry": 4,
            "kvm_userspace_exit": 2
          },
          "exits": [
            {
              "vm": 10,
              "vm_name": "web",
              "vcpu": 0,
              "reason": "HLT",
              "isa": "vmx",
              "code": 12,
              "count": 1,
              "blocking": true,
              "latency_ns": {
                "count": 1,
                "min": 5000,
                "mean": 5000.0,
                "stddev": 0.0,
                "p50": 5000,
                "p90": 5000,
                "p99": 5000,
                "p999": 5000,
                "max": 5000
              },
              "top_rips": [
                {
                  "rip": "0x2000",
                  "count": 1
                }
              ]
            },
            {
              "vm": 10,
              "vm_name": "web",
              "vcpu": 0,
              "reason": "INVALID_STATE",
              "flags": [
                "FAILED_VMENTRY"
              ],
              "isa": "vmx",
              "code": 33,
              "count": 1,
              "blocking": false,
              "latency_ns": null,
              "top_rips": [
                {
                  "rip": "0x3000",
                  "count": 1
                }
              ]
            },
            {
              "vm": 10,
              "vm_name": "web",
              "vcpu": 0,
              "reason": "IO_INSTRUCTION",
              "isa": "vmx",
              "code": 30,
              "count": 3,
              "blocking": false,
              "latency_ns": {
                "count": 3,
                "min": 100,
                "mean": 200.0,
                "stddev": 81.6,
                "p50": 200,
                "p90": 300,
                "p99": 300,
                "p999": 300,
                "max": 300
              },
              "top_rips": [
                {
                  "rip": "0x1000",
                  "count": 2
                },
                {
                  "rip": "0x1008",
                  "count": 1
                }
              ]
            }
          ],
          "userspace_exits": [
            {
              "vm": 10,
              "vm_name": "web",
              "vcpu": 0,
              "reason": "KVM_EXIT_IO",
              "count": 2
            }
          ],
          "pairing": {
            "paired": 4,
            "orphan_exits": 0,
            "orphan_entries": 0,
            "open_at_end": 1,
            "invalidated_by_loss": 0,
            "negative_gaps": 0
          }
        }
        """)
    }
}
