import KVMAnalysis
import KVMExits
import KVMScopeViews
import Testing

/// Whole JSON documents, golden: every optional field, escaping, null, UInt64 extremes, doubles, empty
/// containers, and the one-line storm alert. Field names and their order are the contract.
@Suite struct JSONDocumentsTests {
    static func fullSummary() -> Summary {
        var s = Summary()
        s.events = [("kvm_exit", 3), ("kvm_entry", 0), ("kvm_userspace_exit", UInt64.max)]
        s.exits = [
            ExitRow(vm: 7, vmName: nil, vcpu: nil, reason: "we\"ird\\ \n\t\u{1}é", flags: ["FAILED_VMENTRY", "0x8000000"],
                    isa: .svm, count: 3, blocking: false, histogram: nil,
                    topRIPs: (1...12).map { RIPCount(rip: 0xffff_ffff_8100_0000 + UInt64($0), count: UInt64(13 - $0)) }),
            ExitRow(vm: -1, vmName: "a/b", vcpu: 4_294_967_295, reason: "UNKNOWN(0x5)", isa: .unknown, count: 0,
                    blocking: true, histogram: nil, topRIPs: []),
        ]
        s.userspaceExits = [UserspaceExitRow(vm: 7, vmName: nil, vcpu: nil, reason: "KVM_EXIT_IO", count: 1)]
        s.pairing = PairingStats(paired: 1, orphanExits: 2, orphanEntries: 3, invalidatedByLoss: 4, negativeGaps: 5,
                                 overflow: 6, openAtEnd: 7)
        s.lostEvents = 8
        s.lostUnknownSubbuffers = 9
        s.overflowEvents = 10
        s.corruptSubbuffers = 11
        s.readErrors = 12
        return s
    }

    @Test func summaryWithEveryOptionalField() {
        let text = SummaryJSON.render(Self.fullSummary(), durationSeconds: 2.0004, extra: [
            ("lost_by_cpu", .object([("0", .uint(0)), ("1", .uint(UInt64.max))])),
            ("numbers", .array([.double(0.1), .double(1e20), .double(1234567.125), .double(-3), .double(.nan), .int(-5),
                                .int(Int64.min)])),
            ("empty", .array([])), ("nothing", .object([])), ("flag", .bool(false)), ("none", .null),
        ])
        #expect(text == #"""
        {
          "duration_s": 2.0004,
          "lost_events": 8,
          "lost_unknown_subbuffers": 9,
          "overflow_events": 10,
          "corrupt_subbuffers": 11,
          "read_errors": 12,
          "events": {
            "kvm_exit": 3,
            "kvm_userspace_exit": 18446744073709551615
          },
          "exits": [
            {
              "vm": 7,
              "vm_name": null,
              "vcpu": null,
              "reason": "we\"ird\\ \n\t\u0001é",
              "flags": [
                "FAILED_VMENTRY",
                "0x8000000"
              ],
              "isa": "svm",
              "code": null,
              "count": 3,
              "blocking": false,
              "latency_ns": null,
              "top_rips": [
                {
                  "rip": "0xffffffff81000001",
                  "count": 12
                },
                {
                  "rip": "0xffffffff81000002",
                  "count": 11
                },
                {
                  "rip": "0xffffffff81000003",
                  "count": 10
                },
                {
                  "rip": "0xffffffff81000004",
                  "count": 9
                },
                {
                  "rip": "0xffffffff81000005",
                  "count": 8
                },
                {
                  "rip": "0xffffffff81000006",
                  "count": 7
                },
                {
                  "rip": "0xffffffff81000007",
                  "count": 6
                },
                {
                  "rip": "0xffffffff81000008",
                  "count": 5
                },
                {
                  "rip": "0xffffffff81000009",
                  "count": 4
                },
                {
                  "rip": "0xffffffff8100000a",
                  "count": 3
                }
              ]
            },
            {
              "vm": -1,
              "vm_name": "a/b",
              "vcpu": 4294967295,
              "reason": "UNKNOWN(0x5)",
              "isa": null,
              "code": null,
              "count": 0,
              "blocking": true,
              "latency_ns": null,
              "top_rips": []
            }
          ],
          "userspace_exits": [
            {
              "vm": 7,
              "vm_name": null,
              "vcpu": null,
              "reason": "KVM_EXIT_IO",
              "count": 1
            }
          ],
          "pairing": {
            "paired": 1,
            "orphan_exits": 2,
            "orphan_entries": 3,
            "open_at_end": 7,
            "invalidated_by_loss": 4,
            "negative_gaps": 5,
            "overflow": 6
          },
          "lost_by_cpu": {
            "0": 0,
            "1": 18446744073709551615
          },
          "numbers": [
            0.1,
            1e+20,
            1234567.125,
            -3.0,
            null,
            -5,
            -9223372036854775808
          ],
          "empty": [],
          "nothing": {},
          "flag": false,
          "none": null
        }
        """#)
    }

    @Test func compactSummary() {
        #expect(SummaryJSON.render(Summary(), durationSeconds: 0, pretty: false) == #"{"duration_s":0.0,"lost_events":0,"events":{},"exits":[],"userspace_exits":[],"pairing":{"paired":0,"orphan_exits":0,"orphan_entries":0,"open_at_end":0,"invalidated_by_loss":0,"negative_gaps":0}}"#)
    }

    @Test func stormAlertLines() throws {
        var d = StormDetector(rules: [try StormRule(parsing: "rate(kvm_pio) > 1000/s for 1s"),
                                      try StormRule(parsing: "rate(kvm_pio) > 2500.5/s per vcpu")])
        func summary(_ n: UInt64) -> Summary {
            var s = Summary()
            s.eventRows = [EventRow(vm: 4242, vmName: "web\"01", vcpu: 0, event: "kvm_pio", count: n)]
            return s
        }
        var lines: [String] = []
        for (t, n) in [(0.0, 0), (0.3, 1000), (0.6, 2000), (0.9, 3000), (1.2, 4000), (1.5, 4000), (2.7, 4000)] as [(Double, UInt64)] {
            lines += d.evaluate(time: t, summary: summary(n)).map { StormAlertJSON.line($0, timestamp: "2026-11-26T21:14:47.759Z") }
        }
        #expect(lines == [
            #"{"ts":"2026-11-26T21:14:47.759Z","state":"firing","rule":"rate(kvm_pio) > 2500.5/s per vcpu","vm":4242,"vm_name":"web\"01","vcpu":0,"reason":"kvm_pio","value":3333.333,"threshold":2500.5,"unit":"/s","top_rips":[]}"#,
            #"{"ts":"2026-11-26T21:14:47.759Z","state":"firing","rule":"rate(kvm_pio) > 1000/s for 1s","vm":4242,"vm_name":"web\"01","vcpu":null,"reason":"kvm_pio","value":3333.333,"threshold":1000.0,"unit":"/s","top_rips":[]}"#,
            #"{"ts":"2026-11-26T21:14:47.759Z","state":"resolved","rule":"rate(kvm_pio) > 1000/s for 1s","vm":4242,"vm_name":"web\"01","vcpu":null,"reason":"kvm_pio","value":0.0,"threshold":1000.0,"unit":"/s","top_rips":[]}"#,
            #"{"ts":"2026-11-26T21:14:47.759Z","state":"resolved","rule":"rate(kvm_pio) > 2500.5/s per vcpu","vm":4242,"vm_name":"web\"01","vcpu":0,"reason":"kvm_pio","value":0.0,"threshold":2500.5,"unit":"/s","top_rips":[]}"#,
        ])
    }
}
