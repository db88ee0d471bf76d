import KVMAnalysis
import KVMExits
import Testing

/// Device attribution of I/O exits: the standard PC map, a VM's own ranges laid over it, the bounded
/// per-address table, and perf's handling times measured by the offline pipeline.
@Suite struct IOAccessTableTests {
    @Test func standardPCMapNamesTheFixedDevices() {
        let m = DeviceMap.standardPC
        #expect(m.device(.port, 0x3f8) == "serial COM1")
        #expect(m.device(.port, 0x3ff) == "serial COM1")
        #expect(m.device(.port, 0x2f8) == "serial COM2")
        #expect(m.device(.port, 0x3e8) == "serial COM3")
        #expect(m.device(.port, 0x2e8) == "serial COM4")
        #expect(m.device(.port, 0x70) == "rtc0 cmos")
        #expect(m.device(.port, 0x71) == "rtc0 cmos")
        #expect(m.device(.port, 0x20) == "pic1")
        #expect(m.device(.port, 0xa1) == "pic2")
        #expect(m.device(.port, 0x43) == "pit timer0")
        #expect(m.device(.port, 0x60) == "keyboard")
        #expect(m.device(.port, 0x64) == "keyboard")
        #expect(m.device(.port, 0xcf8) == "pci conf")
        #expect(m.device(.port, 0xcfc) == "pci conf")
        // 0x80 sits inside the DMA page registers (0x80-0x8f): the narrower range names it.
        #expect(m.device(.port, 0x80) == "post")
        #expect(m.device(.port, 0x81) == "dma page reg")
        #expect(m.device(.port, 0x1f0) == "ide0")
        #expect(m.device(.port, 0x170) == "ide1")
        #expect(m.device(.port, 0x510) == "fw_cfg")
        #expect(m.device(.port, 0x604) == "acpi pm")
        #expect(m.device(.port, 0x3d4) == "vga")
        #expect(m.device(.port, 0x10) == "dma1")
        #expect(m.device(.port, 0x1234) == nil)
        #expect(m.device(.mmio, 0xfec0_0010) == "ioapic")
        #expect(m.device(.mmio, 0xfee0_00b0) == "local apic")
        #expect(m.device(.mmio, 0xfed0_00f0) == "hpet")
        #expect(m.device(.mmio, 0x1000_0000) == nil)
        // Spaces are apart: port 0x70 is no MMIO address.
        #expect(m.device(.mmio, 0x70) == nil)
    }

    @Test func aVMsOwnRangesWinOverTheFallback() {
        var own = DeviceMap()
        own.add(.mmio, 0xfebf_3000...0xfebf_3fff, "virtio-blk virtio-disk0 notify")
        own.add(.port, 0x3f8...0x3ff, "isa-serial serial0")
        own.add(.mmio, 0xfebf_0000...0xfebf_0fff, "virtio-blk virtio-disk0 common")
        #expect(own.names == ["virtio-blk virtio-disk0 notify", "isa-serial serial0", "virtio-blk virtio-disk0 common"])
        let m = own.merged(over: .standardPC)
        #expect(m.device(.mmio, 0xfebf_3004) == "virtio-blk virtio-disk0 notify")
        #expect(m.device(.mmio, 0xfebf_0000) == "virtio-blk virtio-disk0 common")
        #expect(m.device(.mmio, 0xfebf_4000) == nil)
        // Same range as the fallback's: the VM's name wins; the rest of the fallback stays.
        #expect(m.device(.port, 0x3f8) == "isa-serial serial0")
        #expect(m.device(.port, 0x70) == "rtc0 cmos")
        #expect(m.device(.mmio, 0xfec0_0000) == "ioapic")
    }

    /// Full: a new key's event is counted in the overflow of its space, never dropped; known keys still count.
    @Test func boundedTableCountsWhatDoesNotFit() {
        let t = IOAccessTable(capacity: 4)  // 2 keys
        #expect(t.add(tid: 7, space: .port, address: 0x3f8, direction: .write) >= 0)
        #expect(t.add(tid: 7, space: .mmio, address: 0xfee0_00b0, direction: .read) >= 0)
        #expect(t.add(tid: 7, space: .port, address: 0x70, direction: .write) == -1)
        #expect(t.add(tid: 8, space: .mmio, address: 0xfee0_00b0, direction: .read) == -1)
        #expect(t.add(tid: 8, space: .mmio, address: 0xfee0_00b0, direction: .read) == -1)
        let s = t.add(tid: 7, space: .port, address: 0x3f8, direction: .write)
        t.record(slot: s, nanoseconds: 300)
        t.record(slot: s, nanoseconds: 100)
        #expect(t.overflow(.port) == 1)
        #expect(t.overflow(.mmio) == 2)
        let rows = t.rows().sorted { $0.address < $1.address }
        #expect(rows.count == 2)
        #expect(rows[0].address == 0x3f8 && rows[0].direction == .write && rows[0].count == 2 && rows[0].tid == 7)
        #expect(rows[0].timed == 2 && rows[0].sum == 400 && rows[0].min == 100 && rows[0].max == 300)
        #expect(rows[0].sumOfSquares == 100_000)
        #expect(rows[1].address == 0xfee0_00b0 && rows[1].space == .mmio && rows[1].count == 1 && rows[1].timed == 0)
    }

    static func catalog() -> EventCatalog {
        var c = EventCatalog()
        c.add(system: "kvm", name: "kvm_exit")   // 0
        c.add(system: "kvm", name: "kvm_entry")  // 1
        c.add(system: "kvm", name: "kvm_pio")    // 2
        c.add(system: "kvm", name: "kvm_mmio")   // 3
        c.add(system: "kvm", name: "kvm_fpu")    // 4
        return c
    }

    /// perf's begin/end events: pio → entry, mmio write → entry, exit → mmio read; an access without its end is
    /// counted, not timed; a loss drops what was pending.
    @Test func pipelineTimesAccessesAsPerfDoes() throws {
        var p = ExitPipeline(catalog: Self.catalog()) { ThreadIdentity(vm: 1000, vcpu: UInt32($0 - 7)) }
        func pio(_ ts: UInt64, _ port: UInt64, out: Bool, tid: Int32 = 7) -> TraceEvent {
            TraceEvent(timestamp: ts, detail: port, tid: tid, event: 2, aux: 1, aux2: out ? 1 : 0)
        }
        func mmio(_ ts: UInt64, _ gpa: UInt64, type: UInt16, tid: Int32 = 7) -> TraceEvent {
            TraceEvent(timestamp: ts, detail: gpa, tid: tid, event: 3, aux: 4, aux2: type)
        }
        func exit(_ ts: UInt64, tid: Int32 = 7) -> TraceEvent { TraceEvent(timestamp: ts, tid: tid, event: 0, reason: 30, isa: 1) }
        func entry(_ ts: UInt64, tid: Int32 = 7) -> TraceEvent { TraceEvent(timestamp: ts, tid: tid, event: 1) }
        let events = [
            exit(1000), pio(1100, 0x3f8, out: true), entry(1350),                            // 250
            exit(2000), pio(2100, 0x3f8, out: true), entry(2500),                            // 400
            exit(3000), pio(3050, 0x3fd, out: false), entry(3100),                           // 50
            exit(4000), mmio(4010, 0xfee0_00b0, type: 0), mmio(4700, 0xfee0_00b0, type: 1), entry(4750),  // read 700
            exit(5000), mmio(5020, 0x1000_0000, type: 2), entry(5120),                       // write 100
            exit(5500, tid: 8), pio(5600, 0x70, out: true, tid: 8),                          // never re-entered
            exit(6000), pio(6010, 0x3f8, out: true),
            TraceEvent(timestamp: 6020, tid: 9, event: 2, cpu: 1, aux2: 1, flags: TraceEvent.afterLoss),
            entry(6500),                                                                     // cut by the loss
            // A loss flagged on an event of another kind (kvm_fpu, index 4) also cuts what was pending.
            exit(7000), pio(7010, 0x3f8, out: true),
            TraceEvent(timestamp: 7020, tid: 9, event: 4, cpu: 1, flags: TraceEvent.afterLoss),
            entry(7500),
        ]
        for e in events { p.add(e) }
        let snap = p.finish(statistics: SourceStatistics())
        let s = IOAccessSummary(snap)
        let got = s.rows.map { ($0.vm, $0.key, $0.device ?? "unknown", $0.count, $0.toVMM, $0.timed, $0.sum, $0.min, $0.max) }
        let want: [(Int32, String, String, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64)] = [
            (1000, "0x0:POUT", "dma1", 1, 0, 0, 0, .max, 0),
            (1000, "0x70:POUT", "rtc0 cmos", 1, 0, 0, 0, .max, 0),
            (1000, "0x3f8:POUT", "serial COM1", 4, 0, 2, 650, 250, 400),
            (1000, "0x3fd:PIN", "serial COM1", 1, 0, 1, 50, 50, 50),
            (1000, "0x10000000:W", "unknown", 1, 0, 1, 100, 100, 100),
            (1000, "0xfee000b0:R", "local apic", 1, 1, 1, 700, 700, 700),
        ]
        #expect(got.count == want.count)
        for (g, w) in zip(got, want) {
            #expect(g.0 == w.0 && g.1 == w.1 && g.2 == w.2 && g.3 == w.3 && g.4 == w.4 && g.5 == w.5 && g.6 == w.6
                    && g.7 == w.7 && g.8 == w.8, "\(g) != \(w)")
        }
        #expect(s.overflow == (0, 0))
        // -p of another VM keeps none of them.
        #expect(IOAccessSummary(snap, filter: SummaryFilter(vms: [1])).rows.isEmpty)
        // vCPU 1 (tid 8) only: its one port access.
        #expect(IOAccessSummary(snap, filter: SummaryFilter(vcpus: [1])).rows.map(\.key) == ["0x70:POUT"])
        // A VM's own map names the unknown address.
        var own = DeviceMap()
        own.add(.mmio, 0x1000_0000...0x1000_0fff, "storm mmio")
        var named = s
        named.name(devices: [1000: own])
        #expect(named.rows.map { $0.device ?? "unknown" }
                == ["dma1", "rtc0 cmos", "serial COM1", "serial COM1", "storm mmio", "local apic"])
    }

    /// A retired thread's port accesses stay its VM's (its tid is no longer a live thread); the identities kept
    /// for that are only those of tids the tables still hold.
    @Test func retiredThreadsAccessesStayTheirVMs() throws {
        let agg = Aggregator(catalog: Self.catalog(), shardCount: 1,
                             resolver: { ThreadIdentity(vm: $0 == 7 ? 1000 : 2000, vmName: $0 == 7 ? "web" : "db") },
                             retirement: true)
        var w = agg.writer(shard: 0)
        for _ in 0..<3 { w.add(TraceEvent(timestamp: 1, detail: 0x3f8, tid: 7, event: 2, aux2: 1), hasReason: false) }
        w.add(TraceEvent(timestamp: 2, tid: 9, event: 0, reason: 30, isa: 1), hasReason: true)
        _ = agg.snapshot(timestamp: 3)
        agg.retire([7, 9])
        w.maintain()
        let snap = agg.snapshot(timestamp: 4)
        #expect(snap.threads[7] == nil)
        #expect(snap.ioRetiredThreads.keys.sorted() == [7])
        let s = IOAccessSummary(snap)
        #expect(s.rows.map { "\($0.vm) \($0.vmName ?? "-") \($0.key) \($0.count)" } == ["1000 web 0x3f8:POUT 3"])
    }
}
