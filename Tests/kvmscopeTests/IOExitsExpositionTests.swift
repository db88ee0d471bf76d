import Foundation
import KVMAnalysis
import KVMExits
import KVMResources
import KVMScopeViews
import Testing
import TestSupport

/// `/metrics`' `kvmscope_io_exits_total`: kvm_pio/kvm_mmio accesses per VM, space and device, each port and
/// address named by the VM's device map (PCI BARs over the standard PC map), the rest under `unknown`; the
/// counts stay where they were when threads retire, and move to `vm="other"` with a folded VM.
@Suite struct IOExitsExpositionTests {
    static let catalog: EventCatalog = {
        var c = EventCatalog()
        for e in ["kvm_exit", "kvm_entry", "kvm_pio", "kvm_mmio"] { c.add(system: "kvm", name: e) }
        return c
    }()
    static let pio: UInt16 = 2, mmio: UInt16 = 3

    static let identities: [Int32: ThreadIdentity] = [
        101: ThreadIdentity(vm: 100, vmName: "web", vcpu: 0, comm: "CPU 0/KVM"),
        102: ThreadIdentity(vm: 100, vmName: "web", vcpu: 1, comm: "CPU 1/KVM"),
        201: ThreadIdentity(vm: 200, vmName: "db", vcpu: 0, comm: "CPU 0/KVM"),
        301: ThreadIdentity(vm: 300, vmName: "old", vcpu: 0, comm: "CPU 0/KVM"),
    ]

    /// VM 100's virtio-blk: I/O BAR 0 at ports 0xc000-0xc03f, memory BAR 4 at 0xfe000000-0xfe003fff.
    static let web = DeviceMap(pciRegions: [
        PCIRegion(device: "virtio-disk0", address: "00:04.0", bar: 0, isIO: true, start: 0xc000, size: 0x40),
        PCIRegion(device: "virtio-disk0", address: "00:04.0", bar: 4, isIO: false, start: 0xfe00_0000, size: 0x4000),
    ])

    /// (tid, space event, address, aux2 direction, count): ports with rw 1 (out) or 0 (in); MMIO with type 2
    /// (write), 1 (read completed) or 0 (read handed to the VMM: its completion is the row's count).
    static let accesses: [(Int32, UInt16, UInt64, UInt16, Int)] = [
        (101, pio, 0xc010, 1, 7), (102, pio, 0xc000, 0, 3),             // virtio-disk0 BAR0: 10
        (101, pio, 0x3f8, 1, 5),                                        // serial COM1
        (101, pio, 0x1234, 1, 2), (102, pio, 0x5678, 0, 4),             // unknown: 6
        (101, mmio, 0xfe00_3000, 2, 11),                                // virtio-disk0 BAR4
        (102, mmio, 0xfee0_00b0, 2, 6),                                 // local apic
        (102, mmio, 0xdead_0000, 0, 3), (102, mmio, 0xdead_0000, 1, 3), // unknown: 3 reads
        (201, pio, 0xc010, 1, 9),                                       // VM 200 has no map: unknown
        (201, pio, 0x70, 1, 1),                                         // rtc0 cmos
        (301, pio, 0x10, 1, 8),                                         // dma1
    ]

    static func aggregator(retiredVMCapacity: Int = 1024) -> (Aggregator, ShardWriter) {
        let ids = identities
        let agg = Aggregator(catalog: catalog, shardCount: 1, resolver: { ids[$0] }, retirement: true,
                             retiredVMCapacity: retiredVMCapacity)
        var w = agg.writer(shard: 0)
        var ts: UInt64 = 1_000
        for (tid, event, address, direction, n) in accesses {
            for _ in 0..<n {
                w.add(TraceEvent(timestamp: ts, detail: address, tid: tid, event: event, aux2: direction), hasReason: false)
                ts += 100
            }
        }
        return (agg, w)
    }

    static func family(_ snap: AggregateSnapshot) throws -> [String] {
        var s = try Summary(snap)
        s.ioAccesses.name(devices: [100: web])
        return PrometheusExposition.render(s, format: .prometheus, extras: ExpositionExtras(version: "0"))
            .split(separator: "\n").map(String.init).filter { $0.hasPrefix("kvmscope_io_") || $0.contains(" kvmscope_io_") }
    }

    static let expected = [
        "# HELP kvmscope_io_exits_total I/O exits (kvm_pio, kvm_mmio), by VM, address space and the device owning the port or address.",
        "# TYPE kvmscope_io_exits_total counter",
        #"kvmscope_io_exits_total{vm="100",vm_name="web",space="port",device="serial COM1"} 5"#,
        #"kvmscope_io_exits_total{vm="100",vm_name="web",space="port",device="unknown"} 6"#,
        #"kvmscope_io_exits_total{vm="100",vm_name="web",space="port",device="virtio-disk0 BAR0 (00:04.0)"} 10"#,
        #"kvmscope_io_exits_total{vm="100",vm_name="web",space="mmio",device="local apic"} 6"#,
        #"kvmscope_io_exits_total{vm="100",vm_name="web",space="mmio",device="unknown"} 3"#,
        #"kvmscope_io_exits_total{vm="100",vm_name="web",space="mmio",device="virtio-disk0 BAR4 (00:04.0)"} 11"#,
        #"kvmscope_io_exits_total{vm="200",vm_name="db",space="port",device="rtc0 cmos"} 1"#,
        #"kvmscope_io_exits_total{vm="200",vm_name="db",space="port",device="unknown"} 9"#,
        #"kvmscope_io_exits_total{vm="300",vm_name="old",space="port",device="dma1"} 8"#,
        "# HELP kvmscope_io_unattributed_events_total kvm_pio/kvm_mmio events not counted per port or address (per-address table full), by space.",
        "# TYPE kvmscope_io_unattributed_events_total counter",
        #"kvmscope_io_unattributed_events_total{space="port"} 0"#,
        #"kvmscope_io_unattributed_events_total{space="mmio"} 0"#,
    ]

    @Test func eachAddressIsNamedByItsVMsDevices() throws {
        let (agg, _) = Self.aggregator()
        #expect(try Self.family(agg.snapshot(timestamp: 1)) == Self.expected)
    }

    /// Threads retire (VM 100's vCPU 1, all of VM 300): every row keeps its VM and value.
    @Test func retiredThreadsKeepTheirRows() throws {
        var (agg, w) = Self.aggregator()
        _ = agg.snapshot(timestamp: 1)
        agg.retire([102, 301])
        w.maintain()
        #expect(try Self.family(agg.snapshot(timestamp: 2)) == Self.expected)
        #expect(agg.snapshot(timestamp: 3).occupancy.retiredThreads == 2)
    }

    /// A tid reused by a thread of another VM after the first retired: the first VM's rows keep their values
    /// (frozen at retirement), the new thread's accesses count for its own VM only.
    @Test func aReusedTidCountsAfresh() throws {
        let names = Locked(Self.identities)
        let agg = Aggregator(catalog: Self.catalog, shardCount: 2, resolver: { tid in names.get()[tid] }, retirement: true)
        var writers = [agg.writer(shard: 0), agg.writer(shard: 1)]
        var ts: UInt64 = 1_000
        func add(_ shard: Int, _ tid: Int32, _ address: UInt64, _ n: Int) {
            for _ in 0..<n {
                writers[shard].add(TraceEvent(timestamp: ts, detail: address, tid: tid, event: Self.pio, aux2: 1), hasReason: false)
                ts += 100
            }
        }
        // 101 of VM 100 writes COM1 on both CPUs; then it exits and retires; 101 comes back as a thread of VM 200.
        add(0, 101, 0x3f8, 5)
        add(1, 101, 0x3f8, 2)
        add(0, 201, 0x3f8, 1)
        _ = agg.snapshot(timestamp: 1)
        agg.retire([101])
        for i in writers.indices { writers[i].maintain() }
        names.set(names.get().merging([101: ThreadIdentity(vm: 200, vmName: "db", vcpu: 1, comm: "CPU 1/KVM")]) { _, b in b })
        func rows() throws -> [String] {
            let s = try Summary(agg.snapshot(timestamp: 2))
            return PrometheusExposition.render(s, format: .prometheus, extras: ExpositionExtras(version: "0"))
                .split(separator: "\n").map(String.init).filter { $0.hasPrefix("kvmscope_io_exits_total{") }
        }
        #expect(try rows() == [
            #"kvmscope_io_exits_total{vm="100",vm_name="web",space="port",device="serial COM1"} 7"#,
            #"kvmscope_io_exits_total{vm="200",vm_name="db",space="port",device="serial COM1"} 1"#,
        ])
        add(1, 101, 0x3f8, 4)
        add(0, 101, 0x70, 3)
        #expect(try rows() == [
            #"kvmscope_io_exits_total{vm="100",vm_name="web",space="port",device="serial COM1"} 7"#,
            #"kvmscope_io_exits_total{vm="200",vm_name="db",space="port",device="rtc0 cmos"} 3"#,
            #"kvmscope_io_exits_total{vm="200",vm_name="db",space="port",device="serial COM1"} 5"#,
        ])
        // The new thread retires too: nothing moves.
        agg.retire([101])
        for i in writers.indices { writers[i].maintain() }
        #expect(try rows() == [
            #"kvmscope_io_exits_total{vm="100",vm_name="web",space="port",device="serial COM1"} 7"#,
            #"kvmscope_io_exits_total{vm="200",vm_name="db",space="port",device="rtc0 cmos"} 3"#,
            #"kvmscope_io_exits_total{vm="200",vm_name="db",space="port",device="serial COM1"} 5"#,
        ])
    }

    /// A history of one stopped VM: VM 300 stops, then VM 200: VM 300 folds into `other`, its I/O row with it
    /// (the row's value unchanged); VM 200 stays apart.
    @Test func aFoldedVMsRowsGoToOther() throws {
        var (agg, w) = Self.aggregator(retiredVMCapacity: 1)
        _ = agg.snapshot(timestamp: 1)
        for tid: Int32 in [301, 201] {
            agg.retire([tid])
            w.maintain()
            _ = agg.snapshot(timestamp: 2)
        }
        let snap = agg.snapshot(timestamp: 3)
        #expect(snap.occupancy.foldedVMs == 1)
        let lines = try Self.family(snap)
        #expect(lines.filter { $0.hasPrefix("kvmscope_io_exits_total{") && !$0.contains(#"vm="100""#) } == [
            #"kvmscope_io_exits_total{vm="other",vm_name="other",space="port",device="dma1"} 8"#,
            #"kvmscope_io_exits_total{vm="200",vm_name="db",space="port",device="rtc0 cmos"} 1"#,
            #"kvmscope_io_exits_total{vm="200",vm_name="db",space="port",device="unknown"} 9"#,
        ])
    }

    /// `--max-series 3`: two rows kept, the other seven summed into one `other` set and counted as folded.
    @Test func maxSeriesFoldsTheRest() throws {
        let (agg, _) = Self.aggregator()
        var s = try Summary(agg.snapshot(timestamp: 1))
        s.ioAccesses.name(devices: [100: Self.web])
        let text = PrometheusExposition.render(s, format: .prometheus, extras: ExpositionExtras(version: "0", maxSeries: 3))
        let rows = text.split(separator: "\n").filter { $0.hasPrefix("kvmscope_io_exits_total{") }
        #expect(rows == [
            #"kvmscope_io_exits_total{vm="100",vm_name="web",space="port",device="serial COM1"} 5"#,
            #"kvmscope_io_exits_total{vm="100",vm_name="web",space="port",device="unknown"} 6"#,
            #"kvmscope_io_exits_total{vm="other",vm_name="other",space="other",device="other"} 48"#,
        ])
        #expect(text.contains("kvmscope_series_overflow_total 7\n"))
    }

    /// The PCI BARs QMP gives, one info series each, `device` as the I/O family names them (they join on it).
    @Test func pciRegionsAreAnInfoFamily() throws {
        var vm = VMSample(pid: 100, name: "web")
        var q = QMPSample(socket: "/run/web.qmp")
        q.pciRegions = [
            PCIRegion(device: "virtio-disk0", address: "00:04.0", bar: 0, isIO: true, start: 0xc000, size: 0x40),
            PCIRegion(device: "virtio-disk0", address: "00:04.0", bar: 4, isIO: false, start: 0xfe00_0000, size: 0x4000),
        ]
        vm.qmp = q
        let sample = ResourceSample(timestamp: 0, intervalSeconds: 1, ticksPerSecond: 100, hostCPUs: 2, hostMemoryBytes: 1 << 30,
                                    vms: [vm])
        for format in [ExpositionFormat.prometheus, .openMetrics] {
            let text = PrometheusExposition.render(Summary(), format: format, extras: ExpositionExtras(version: "0", resources: sample))
            let lines = text.split(separator: "\n").map(String.init).filter { $0.contains("kvmscope_vm_pci_region") }
            #expect(lines == [
                "# HELP \(format == .prometheus ? "kvmscope_vm_pci_region_info" : "kvmscope_vm_pci_region") A PCI BAR mapped in the "
                    + "guest's port or memory space (QMP query-pci), as kvmscope_io_exits_total names it.",
                format == .prometheus ? "# TYPE kvmscope_vm_pci_region_info gauge" : "# TYPE kvmscope_vm_pci_region info",
                #"kvmscope_vm_pci_region_info{vm="100",vm_name="web",device="virtio-disk0 BAR0 (00:04.0)",pci_device="virtio-disk0","#
                    + #"pci_address="00:04.0",bar="0",space="port",start="0xc000",end="0xc03f"} 1"#,
                #"kvmscope_vm_pci_region_info{vm="100",vm_name="web",device="virtio-disk0 BAR4 (00:04.0)",pci_device="virtio-disk0","#
                    + #"pci_address="00:04.0",bar="4",space="mmio",start="0xfe000000",end="0xfe003fff"} 1"#,
            ])
        }
    }
}
