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
            "  IO                                             300   100.0        100",
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

    /// A catalog as a live session builds it: kvm_exit's and kvm_userspace_exit's reason tables from their print
    /// fmts (here small ones, so that the golden field lists stay short).
    static func catalog() -> EventCatalog {
        var c = EventCatalog()
        for name in ["kvm_exit", "kvm_pio", "kvm_userspace_exit", "kvm_fpu"] { c.add(system: "kvm", name: name) }
        c.exitReasons = ExitReasonNames(kvmExitTables: [
            PrintFormatTable(kind: .symbolic, field: "exit_reason", expression: "REC->exit_reason & 0xffff",
                             table: SymbolTable([(0, "EXCEPTION_NMI"), (12, "HLT"), (30, "IO_INSTRUCTION")])),
            PrintFormatTable(kind: .symbolic, field: "exit_reason", expression: "REC->exit_reason",
                             table: SymbolTable([(0x78, "hlt"), (0x400, "npf")])),
        ])
        c.userspaceExitReasons = UserspaceExitNames(kvmUserspaceExitTables: [
            PrintFormatTable(kind: .symbolic, field: "reason", expression: "REC->reason",
                             table: SymbolTable([(2, "KVM_EXIT_IO"), (6, "KVM_EXIT_MMIO")])),
        ])
        return c
    }

    /// Counts on `catalog()`: kvm_pio, KVM_EXIT_IO and KVM_EXIT_MMIO exits to user space, VMX HLT exits and VMX
    /// EPT_VIOLATION exits (code 48: a reason the kernel table above does not have).
    static func logSummary(pio: Int, io: Int, mmio: Int, hlt: Int, ept: Int = 0,
                           filter: SummaryFilter = SummaryFilter()) throws -> Summary {
        let agg = Aggregator(catalog: catalog(), shardCount: 1) { ThreadIdentity(vm: 500, vmName: "web", vcpu: UInt32($0 - 501)) }
        var w = agg.writer(shard: 0)
        for _ in 0..<pio { w.add(TraceEvent(timestamp: 0, tid: 501, event: 1), hasReason: false) }
        for _ in 0..<io { w.add(TraceEvent(timestamp: 0, tid: 501, event: 2, reason: 2), hasReason: true) }
        for _ in 0..<mmio { w.add(TraceEvent(timestamp: 0, tid: 502, event: 2, reason: 6), hasReason: true) }
        for _ in 0..<hlt { w.add(TraceEvent(timestamp: 0, tid: 502, event: 0, reason: 12, isa: 1), hasReason: true) }
        for _ in 0..<ept { w.add(TraceEvent(timestamp: 0, tid: 502, event: 0, reason: 48, isa: 1), hasReason: true) }
        return try Summary(agg.snapshot(timestamp: 0), filter: filter)
    }

    /// kvm_stat's fields: every traced event, and one child per name of its event's reason table (kvm_exit's
    /// for the host's ISA), zeros included, sorted by name.
    @Test func logFieldsAreEveryEventAndEveryReasonOfTheTables() throws {
        let c = Self.catalog()
        #expect(try LogFormatter.fields(catalog: c, exitISA: .vmx) == [
            "kvm_exit", "kvm_exit(EXCEPTION_NMI)", "kvm_exit(HLT)", "kvm_exit(IO_INSTRUCTION)", "kvm_fpu", "kvm_pio",
            "kvm_userspace_exit", "kvm_userspace_exit(IO)", "kvm_userspace_exit(MMIO)",
        ])
        #expect(try LogFormatter.fields(catalog: c, exitISA: .svm) == [
            "kvm_exit", "kvm_exit(hlt)", "kvm_exit(npf)", "kvm_fpu", "kvm_pio",
            "kvm_userspace_exit", "kvm_userspace_exit(IO)", "kvm_userspace_exit(MMIO)",
        ])
        // A host whose ISA is neither (PVM, nested without vmx/svm): kvm_exit without children.
        #expect(try LogFormatter.fields(catalog: c, exitISA: nil) == [
            "kvm_exit", "kvm_fpu", "kvm_pio", "kvm_userspace_exit", "kvm_userspace_exit(IO)",
            "kvm_userspace_exit(MMIO)",
        ])
        // Only the events traced: no kvm_userspace_exit, no children of it.
        var pioOnly = EventCatalog()
        pioOnly.add(system: "kvm", name: "kvm_pio")
        #expect(try LogFormatter.fields(catalog: pioOnly, exitISA: .vmx) == ["kvm_pio"])
    }

    /// With nothing running the log has its columns from the first line, each 0; counts, whichever interval
    /// they come in, land in the same columns.
    @Test func logLinesKeepTheirColumns() throws {
        let fields = try LogFormatter.fields(catalog: Self.catalog(), exitISA: .vmx)
        let csv = LogFormatter(fields: fields, csv: true)
        #expect(csv.header() == "timestamp,kvm_exit,kvm_exit(EXCEPTION_NMI),kvm_exit(HLT),kvm_exit(IO_INSTRUCTION),kvm_fpu,"
                + "kvm_pio,kvm_userspace_exit,kvm_userspace_exit(IO),kvm_userspace_exit(MMIO)")
        let idle = try Self.logSummary(pio: 0, io: 0, mmio: 0, hlt: 0)
        #expect(csv.line(timestamp: "T0", current: idle, previous: idle) == "T0,0,0,0,0,0,0,0,0,0")
        let first = try Self.logSummary(pio: 100, io: 100, mmio: 0, hlt: 350)
        #expect(csv.line(timestamp: "T1", current: first, previous: idle) == "T1,350,0,350,0,0,100,100,100,0")
        // MMIO exits appear later: their column was there from the start.
        let second = try Self.logSummary(pio: 300, io: 300, mmio: 7, hlt: 400)
        #expect(csv.line(timestamp: "T2", current: second, previous: first) == "T2,50,0,50,0,0,200,207,200,7")
        // EPT_VIOLATION is not in the kernel table of this catalog: no column, but counted in kvm_exit's.
        let third = try Self.logSummary(pio: 300, io: 300, mmio: 7, hlt: 400, ept: 9)
        #expect(third.children.contains { $0.event == "kvm_exit" && $0.reason == "EPT_VIOLATION" && $0.total == 9 })
        #expect(csv.line(timestamp: "T3", current: third, previous: second) == "T3,9,0,0,0,0,0,0,0,0")
        // … and said (stat -l writes it once on stderr).
        #expect(try csv.uncolumned(in: second).isEmpty)
        #expect(try csv.uncolumned(in: third).map(\.note) == [
            "kvm_exit(EPT_VIOLATION) is not a column of this log (not in kvm_exit's reasons at its start): "
            + "its counts are in the kvm_exit column",
        ])
        let hltOnly = LogFormatter(fields: ["kvm_exit(HLT)"], csv: true)
        #expect(try hltOnly.uncolumned(in: third, filter: SummaryFilter(fields: "EPT|HLT")).map(\.note) == [
            "kvm_exit(EPT_VIOLATION) is not a column of this log (not in kvm_exit's reasons at its start): "
            + "-f kept no kvm_exit column, so its counts are in none",
        ])
        #expect(try hltOnly.uncolumned(in: third, filter: SummaryFilter(fields: "HLT")).isEmpty)
        let text = LogFormatter(fields: ["kvm_pio", "kvm_exit(HLT)"], csv: false)
        #expect(text.header() == "timestamp                kvm_pio kvm_exit(HLT)")
        #expect(text.line(timestamp: "T", current: second, previous: nil) == "T                            300           400")
        #expect(text.values(current: second, previous: first) == [200, 50])
    }

    /// -f as kvm_stat's: a child is a column when it matches (in any spelling of its reason), and pulls in its
    /// event; siblings that do not match are not columns. The event's count is all its reasons'.
    @Test func logFieldsFilterKeepsMatchingChildrenOnly() throws {
        let c = Self.catalog()
        func fields(_ regex: String) throws -> [String] {
            try LogFormatter.fields(catalog: c, exitISA: .vmx, filter: SummaryFilter(fields: regex))
        }
        #expect(try fields("KVM_EXIT_MMIO") == ["kvm_userspace_exit", "kvm_userspace_exit(MMIO)"])
        #expect(try fields("pio|userspace") == ["kvm_pio", "kvm_userspace_exit", "kvm_userspace_exit(IO)",
                                                "kvm_userspace_exit(MMIO)"])
        #expect(try fields("kvm_userspace_exit$") == ["kvm_userspace_exit"])
        #expect(try fields(#"kvm_exit\(halt\)"#) == ["kvm_exit", "kvm_exit(HLT)"])
        #expect(try fields("EXIT_MSR").isEmpty)
        let filter = SummaryFilter(fields: "KVM_EXIT_MMIO")
        let mmio = LogFormatter(fields: try fields("KVM_EXIT_MMIO"), csv: true)
        let before = try Self.logSummary(pio: 5, io: 10, mmio: 1, hlt: 0, filter: filter)
        let now = try Self.logSummary(pio: 5, io: 30, mmio: 4, hlt: 0, filter: filter)
        #expect(mmio.header() == "timestamp,kvm_userspace_exit,kvm_userspace_exit(MMIO)")
        #expect(mmio.line(timestamp: "T", current: now, previous: before) == "T,23,3")
        // The table too: the sibling KVM_EXIT_IO is not a row; the event's total is all its reasons'.
        #expect(StatTable.render(now, previous: before, seconds: 1) == [
            "Event                                          Total  %Total   CurAvg/s",
            "kvm_userspace_exit                                34   100.0         23",
            "  MMIO                                             4    11.8          3",
            "Total                                             34                 23",
        ])
    }

    /// stat's -f is kvm_stat's `re.match`: anchored at the start of the field name, not searched in it; a
    /// userspace exit's child is named as kvm_stat names it (`kvm_userspace_exit(IO)`), and -f takes it in that
    /// spelling or the kernel's (`KVM_EXIT_IO`).
    @Test func statFieldsMatchAtTheStartInEitherSpelling() throws {
        let c = Self.catalog()
        func fields(_ regex: String) throws -> [String] {
            var f = SummaryFilter(fields: regex)
            f.fieldsAtStart = true
            return try LogFormatter.fields(catalog: c, exitISA: .vmx, filter: f)
        }
        #expect(try fields("pio").isEmpty)
        #expect(try fields("HLT").isEmpty)
        #expect(try fields("kvm_pio") == ["kvm_pio"])
        #expect(try fields(".*pio") == ["kvm_pio"])
        #expect(try fields("kvm_exit") == ["kvm_exit", "kvm_exit(EXCEPTION_NMI)", "kvm_exit(HLT)", "kvm_exit(IO_INSTRUCTION)"])
        #expect(try fields(#"kvm_userspace_exit\(IO\)"#) == ["kvm_userspace_exit", "kvm_userspace_exit(IO)"])
        #expect(try fields(#"kvm_userspace_exit\(KVM_EXIT_IO\)"#) == ["kvm_userspace_exit", "kvm_userspace_exit(IO)"])
        #expect(try fields(#"kvm_userspace_exit\((KVM_EXIT_)?MMIO"#) == ["kvm_userspace_exit", "kvm_userspace_exit(MMIO)"])
        // The summary (stat's table) keeps the same rows.
        var filter = SummaryFilter(fields: "pio")
        filter.fieldsAtStart = true
        #expect(try Self.logSummary(pio: 5, io: 1, mmio: 0, hlt: 1, filter: filter).events.isEmpty)
        filter.fields = ".*pio"
        #expect(try Self.logSummary(pio: 5, io: 1, mmio: 0, hlt: 1, filter: filter).events.map(\.name) == ["kvm_pio"])
    }

    /// kvm_stat -1's `%-42s%10d%10d`: with kvm_stat's names every field of the built-in KVM_EXIT_* table (kvm_stat's
    /// USERSPACE_EXIT_REASONS) fits the 42 columns — with the prefix, kvm_userspace_exit(KVM_EXIT_IRQ_WINDOW_OPEN)
    /// and three others did not; a longer name is followed by the counts' own padding, as printf's (a count of 10 digits keeps one space
    /// before it: printf's would run into the name).
    @Test func batchLinesKeepKvmStatsColumns() throws {
        var c = EventCatalog()
        c.add(system: "kvm", name: "kvm_userspace_exit")
        let fields = try LogFormatter.fields(catalog: c, exitISA: nil)
        #expect(fields.count > 30)
        #expect(fields.allSatisfy { $0.count < 42 }, "\(fields.filter { $0.count >= 42 })")
        #expect(fields.filter { $0.hasPrefix("kvm_userspace_exit(IRQ") } == ["kvm_userspace_exit(IRQ_WINDOW_OPEN)"])
        let batch = LogFormatter(fields: fields, csv: false).batchLines(values: fields.map { _ in 7 })
        #expect(batch.allSatisfy { $0.count == 62 })
        #expect(batch.first { $0.hasPrefix("kvm_userspace_exit(IRQ_WINDOW_OPEN)") }
                == "kvm_userspace_exit(IRQ_WINDOW_OPEN)                7         7")
        let long = String(repeating: "x", count: 42)
        #expect(LogFormatter(fields: [long, long + "y"], csv: false).batchLines(values: [5, 1234567890]) == [
            long + "         5         5",
            long + "y 1234567890 1234567890",
        ])
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
            #expect(try GuestTotal.of(agg.snapshot(timestamp: 0), filter: SummaryFilter(fields: spelling)).map(\.total) == [1], "\(spelling)")
        }
        #expect(try Summary(agg.snapshot(timestamp: 0), filter: SummaryFilter(fields: "EXIT_MSR")).events.isEmpty)
    }
}
