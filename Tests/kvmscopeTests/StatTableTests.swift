import KVMAnalysis
import KVMExits
import KVMScopeViews
import Testing

/// kvm_stat's table and log lines, as golden text.
@Suite struct StatTableTests {
    static func summary(pio: Int, io: Int, hlt: Int) throws -> Summary {
        var c = EventCatalog()
        c.add(system: "kvm", name: "kvm_exit")
        c.add(system: "kvm", name: "kvm_pio")
        c.add(system: "kvm", name: "kvm_userspace_exit")
        let agg = Aggregator(catalog: c, shardCount: 1) { ThreadIdentity(vm: 500, vmName: "web", vcpu: UInt32($0 - 501)) }
        var w = agg.writer(shard: 0)
        for _ in 0..<pio { w.add(TraceEvent(timestamp: 0, tid: 501, event: 1), hasReason: false) }
        for _ in 0..<io { w.add(TraceEvent(timestamp: 0, tid: 501, event: 2, reason: 2), hasReason: true) }
        for _ in 0..<hlt { w.add(TraceEvent(timestamp: 0, tid: 502, event: 0, reason: 12, isa: 1), hasReason: true) }
        return try Summary(agg.snapshot(timestamp: 0))
    }

    @Test func tableWithChildren() throws {
        let now = try Self.summary(pio: 300, io: 300, hlt: 400)
        let before = try Self.summary(pio: 100, io: 100, hlt: 350)
        let lines = StatTable.render(now, previous: before, seconds: 2)
        #expect(lines == [
            "Event                                          Total  %Total   CurAvg/s",
            "kvm_pio                                          300    30.0        100",
            "kvm_userspace_exit                               300    30.0        100",
            "  KVM_EXIT_IO                                    300   100.0        100",
            "kvm_exit                                         400    40.0         25",
            "  HLT                                            400   100.0         25",
            "Total                                           1000                225",
        ])
        let byTotal = StatTable.render(now, previous: before, seconds: 2, children: false, sortByTotal: true)
        #expect(byTotal == [
            "Event                                          Total  %Total   CurAvg/s",
            "kvm_exit                                         400    40.0         25",
            "kvm_pio                                          300    30.0        100",
            "kvm_userspace_exit                               300    30.0        100",
            "Total                                           1000                225",
        ])
    }

    @Test func logAndCSVLines() throws {
        let now = try Self.summary(pio: 300, io: 300, hlt: 400)
        let before = try Self.summary(pio: 100, io: 100, hlt: 350)
        let fields = LogFormatter.fields(of: now, skipZero: true)
        #expect(fields == ["kvm_exit", "kvm_exit(HLT)", "kvm_pio", "kvm_userspace_exit", "kvm_userspace_exit(KVM_EXIT_IO)"])
        let csv = LogFormatter(fields: fields, csv: true)
        #expect(csv.header() == "timestamp,kvm_exit,kvm_exit(HLT),kvm_pio,kvm_userspace_exit,kvm_userspace_exit(KVM_EXIT_IO)")
        #expect(csv.line(timestamp: "T", current: now, previous: before) == "T,50,50,200,200,200")
        let text = LogFormatter(fields: ["kvm_pio", "kvm_exit(HLT)"], csv: false)
        #expect(text.header() == "timestamp                kvm_pio kvm_exit(HLT)")
        #expect(text.line(timestamp: "T", current: now, previous: nil) == "T                            300           400")
    }

    @Test func footerShowsLossesAndPairing() throws {
        var s = try Self.summary(pio: 1, io: 0, hlt: 0)
        s.lostEvents = 12
        #expect(StatTable.footer(s) == "lost_events 12")
        s.pairing = PairingStats(paired: 5, orphanExits: 1, orphanEntries: 2, invalidatedByLoss: 3)
        #expect(StatTable.footer(s) == "lost_events 12  paired 5 orphan_exits 1 orphan_entries 2 open_at_end 0 invalidated_by_loss 3")
        // stat -p/-g/-f: the pairer's counts are every thread's, and the footer says so.
        #expect(StatTable.footer(s, pairingScope: "all threads traced, not only -p 500")
                == "lost_events 12  paired 5 orphan_exits 1 orphan_entries 2 open_at_end 0 invalidated_by_loss 3"
                + " (all threads traced, not only -p 500)")
    }

    @Test func fieldsFilterAppliesToEventsAndChildren() throws {
        var c = EventCatalog()
        c.add(system: "kvm", name: "kvm_exit")
        c.add(system: "kvm", name: "kvm_pio")
        let agg = Aggregator(catalog: c, shardCount: 1)
        var w = agg.writer(shard: 0)
        w.add(TraceEvent(timestamp: 0, tid: 1, event: 1), hasReason: false)
        w.add(TraceEvent(timestamp: 0, tid: 1, event: 0, reason: 12, isa: 1), hasReason: true)
        let s = try Summary(agg.snapshot(timestamp: 0), filter: SummaryFilter(fields: "pio"))
        #expect(s.events.map(\.name) == ["kvm_pio"])
        let h = try Summary(agg.snapshot(timestamp: 0), filter: SummaryFilter(fields: "HLT"))
        #expect(h.events.map(\.name) == ["kvm_exit"])
        // -f may name the child's reason in another printer's spelling (2.6-era "halt", the header's name).
        for spelling in [#"kvm_exit\(halt\)"#, "EXIT_REASON_HLT", "0xc"] {
            let g = try Summary(agg.snapshot(timestamp: 0), filter: SummaryFilter(fields: spelling))
            #expect(g.events.map(\.name) == ["kvm_exit"], "\(spelling)")
            #expect(try GuestTotal.of(agg.snapshot(timestamp: 0), fields: spelling).map(\.total) == [1], "\(spelling)")
        }
        #expect(try Summary(agg.snapshot(timestamp: 0), filter: SummaryFilter(fields: "EXIT_MSR")).events.isEmpty)
    }
}
