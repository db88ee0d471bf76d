import Foundation
import KVMExits
import KVMResources
import Testing
import TestSupport

/// QEMU's memory tree, query-pci and libvirt's domain XML, captured from one libvirt domain on this machine's
/// QEMU 7.2 (the boot-sector guest with a serial port and an ISA pvpanic; Tests/Fixtures/qemu/README.md says
/// how), parsed and joined into the names of a VM's ports and MMIO addresses.
@Suite struct MemoryTreeTests {
    static func fixture(_ name: String) throws -> String {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/qemu/\(name)")
        return try String(contentsOf: url, encoding: .utf8)
    }

    static func tree() throws -> [MemoryTreeRange] { try #require(QEMUMemoryTree.parse(try fixture("mtree-flat-owners-7.2.txt"))) }

    static func bars() throws -> [PCIRegion] {
        PCIRegion.of(try JSONDecoder().decode([QMPReplies.PCIBus].self, from: Data(try fixture("query-pci-7.2.json").utf8)))
    }

    @Test func flatViewGivesEachRegionOfMemoryAndIO() throws {
        let t = try Self.tree()
        // 16 ranges of `memory` (RAM left out), 44 of `I/O` (the root's unassigned gaps left out).
        #expect(t.count == 60)
        #expect(t.filter(\.isIO).count == 44)
        #expect(t.first == MemoryTreeRange(isIO: false, first: 0xc3000, last: 0xe7fff, name: "pc.ram", kind: "rom",
                                           ownerPath: "/objects/pc.ram"))
        #expect(t.first { $0.name == "virtio-pci-notify-virtio-blk" }
                == MemoryTreeRange(isIO: false, first: 0xfebf_7000, last: 0xfebf_7fff, name: "virtio-pci-notify-virtio-blk",
                                   kind: "i/o", owner: "virtio-disk0"))
        #expect(t.first { $0.name == "kvm-ioapic" }
                == MemoryTreeRange(isIO: false, first: 0xfec0_0000, last: 0xfec0_0fff, name: "kvm-ioapic", kind: "i/o",
                                   ownerPath: "/machine/i440fx/ioapic"))
        // ` @0000000000000001`: the range starts inside its region; the name is the region's.
        #expect(t.first { $0.first == 0x71 } == MemoryTreeRange(isIO: true, first: 0x71, last: 0x71, name: "rtc", kind: "i/o",
                                                                ownerPath: "/machine/unattached/device[10]"))
        #expect(t.first { $0.first == 0x3f8 } == MemoryTreeRange(isIO: true, first: 0x3f8, last: 0x3ff, name: "serial",
                                                                 kind: "i/o", owner: "serial0"))
        #expect(t.last == MemoryTreeRange(isIO: true, first: 0xc0ec, last: 0xc0ef, name: "bmdma", kind: "i/o",
                                          ownerPath: "/machine/unattached/device[18]"))
        #expect(!t.contains { $0.name == "io" || $0.kind == "ram" })
    }

    @Test func textThatIsNoMemoryTreeIsNil() {
        #expect(QEMUMemoryTree.parse("unknown command: 'info mtree'\r\n") == nil)
        #expect(QEMUMemoryTree.parse("") == nil)
        #expect(QEMUMemoryTree.parse("\u{1b}[2J<html>FlatView #0</html>") == nil)
        // A known space with lines that are not ranges: the space is there, empty.
        #expect(QEMUMemoryTree.parse("FlatView #0\r\n AS \"I/O\", root: io\r\n Root memory region: io\r\n  zz-yy (prio 0, i/o): x\r\n") == [])
    }

    @Test func libvirtDeviceAddressesFromTheDomainXML() throws {
        let devices = try #require(LibvirtDevice.devices(xml: try Self.fixture("libvirt-domain-devices.xml")))
        #expect(devices.map { "\($0.element) \($0.alias ?? "-") \($0.target ?? "-") \($0.pciAddress ?? "-") "
            + "\($0.ioBase.map { String($0, radix: 16) } ?? "-")+\($0.ioSize ?? 0) \($0.model ?? "-")" } == [
            "disk virtio-disk0 vda 00:02.0 -+0 -",
            "controller usb - 00:01.2 -+0 piix3-uhci",
            "controller pci.0 - - -+0 pci-root",
            "serial serial0 - - 3f8+8 isa-serial",
            "input input0 - - -+0 -",
            "input input1 - - -+0 -",
            "audio - - - -+0 -",
            "memballoon balloon0 - 00:03.0 -+0 virtio",
            "panic - - - 505+1 isa",
        ])
        #expect(LibvirtDevice.devices(xml: "<html>") == nil)
        #expect(LibvirtDevice.devices(xml: "<domain><name>x</name></domain>") == nil)
        #expect(LibvirtDevice.devices(xml: "<domain><devices/></domain>") == [])
    }

    /// Every source joined: the tree's role, query-pci's place, libvirt's target; the narrowest range wins.
    @Test func namesJoinTreeBARsAndLibvirt() throws {
        let libvirt = try #require(LibvirtDevice.devices(xml: try Self.fixture("libvirt-domain-devices.xml")))
        let map = DeviceMap(pciRegions: try Self.bars(), memoryTree: try Self.tree(), libvirt: libvirt).merged(over: .standardPC)
        let mmio: [(UInt64, String)] = [
            (0xfebf_7000, "virtio-disk0 vda notify (virtio-blk 00:02.0 BAR4)"),
            (0xfebf_5000, "virtio-disk0 vda isr (virtio-blk 00:02.0 BAR4)"),
            (0xfebf_4010, "virtio-disk0 vda common (virtio-blk 00:02.0 BAR4)"),
            (0xfebf_f000, "virtio-disk0 vda msix-table (virtio-blk 00:02.0 BAR1)"),
            (0xfebf_f100, "virtio-disk0 vda (virtio-blk 00:02.0 BAR1)"),
            (0xfebf_b004, "balloon0 notify (virtio-balloon 00:03.0 BAR4)"),
            (0xfec0_0010, "kvm-ioapic"), (0xfed0_00f0, "hpet"), (0xfee0_1000, "kvm-apic-msi"), (0xffff_fff0, "pc.bios"),
            // The local APIC's page inside QEMU's MSI window: the standard map's narrower range names it (KVM's
            // in-kernel APIC answers the vCPU's accesses there).
            (0xfee0_0300, "local apic"),
        ]
        for (address, name) in mmio { #expect(map.device(.mmio, address) == name, "\(String(address, radix: 16))") }
        let ports: [(UInt64, String)] = [
            (0xc010, "virtio-disk0 vda legacy notify (virtio-blk 00:02.0 BAR0)"),
            (0xc012, "virtio-disk0 vda legacy (virtio-blk 00:02.0 BAR0)"),
            (0xc090, "balloon0 legacy notify (virtio-balloon 00:03.0 BAR0)"),
            (0xc0c0, "usb uhci (00:01.2 BAR4)"), (0xc0e4, "IDE controller bmdma (00:01.1 BAR4)"),
            (0x3fd, "serial0 serial"), (0x505, "pvpanic"), (0x70, "rtc-index"), (0x71, "rtc"), (0x92, "port92"),
            (0x20, "kvm-pic"), (0x510, "fwcfg"), (0xcfc, "pci-conf-data"),
            // Not in the tree (unassigned in this guest): the standard PC map's name.
            (0x2f8, "serial COM2"),
        ]
        for (port, name) in ports { #expect(map.device(.port, port) == name, "\(String(port, radix: 16))") }
        #expect(map.device(.port, 0x1234) == nil)
    }

    /// libvirt alone (its domain's monitor is libvirt's: no BARs, no tree): the ISA devices by their XML.
    @Test func libvirtAloneNamesISAPorts() throws {
        let libvirt = try #require(LibvirtDevice.devices(xml: try Self.fixture("libvirt-domain-devices.xml")))
        let map = DeviceMap(pciRegions: [], memoryTree: [], libvirt: libvirt)
        #expect(map.device(.port, 0x3f8) == "serial0 isa-serial")
        #expect(map.device(.port, 0x3ff) == "serial0 isa-serial")
        #expect(map.device(.port, 0x400) == nil)
        #expect(map.device(.port, 0x505) == "pvpanic")
        #expect(map.device(.mmio, 0xfebf_7000) == nil)
        #expect(map.ranges.count == 2)
    }

    /// QMPMonitor reads the tree when the connection opens, not at every read; a QEMU whose human monitor
    /// answers something else is one warning, and the BARs still come.
    @Test func monitorReadsTheTreeOnceAndWarnsOnce() throws {
        let text = try Self.fixture("mtree-flat-owners-7.2.txt")
        let pci = try Self.fixture("query-pci-7.2.json").trimmingCharacters(in: .whitespacesAndNewlines)
        let treeJSON = String(decoding: try JSONEncoder().encode(text), as: UTF8.self)
        let good = socketPath("mtree-ok"), bad = socketPath("mtree-bad"), slow = socketPath("mtree-slow")
        let asked = Locked<[String: Int]>([:])
        let done = Locked(false)
        func script(_ path: String, tree: String, delay: useconds_t = 0) -> @Sendable () -> [String] {
            { @Sendable () -> [String] in
                serve(path, until: done) { _, fd in
                    sendLine(fd, QMPMonitorTests.greeting)
                    while QMPMonitorTests.answer(fd, { c in
                        asked.set(asked.get().merging(["\(path) \(c)": 1], uniquingKeysWith: +))
                        switch c {
                        case "qmp_capabilities": return "{}"
                        case "query-blockstats": return "[]"
                        case "query-pci": return pci
                        case "query-cpus-fast": return QMPMonitorTests.cpusFast
                        case "human-monitor-command":
                            usleep(delay)
                            return tree
                        default: return nil
                        }
                    }) {}
                }
                return []
            }
        }
        let out = onThreads([
            script(good, tree: treeJSON),
            script(bad, tree: #""unknown command: 'info mtree'\r\n""#),
            // The tree after 1.3 s: past the 1 s timeout; its late answer is skipped by id at the next read.
            script(slow, tree: treeJSON, delay: 1_300_000),
            { @Sendable () -> [String] in
                defer { done.set(true) }
                guard waitForSocket(good), waitForSocket(bad), waitForSocket(slow) else { return ["no sockets"] }
                var lines: [String] = []
                for path in [good, bad, slow] {
                    let m = QMPMonitor(path: path, timeout: path == slow ? 1 : 5)
                    for _ in 0..<3 {
                        let r = m.read()
                        lines.append("\(r.sample.problem ?? "-") | \(r.warning ?? "-") | \(r.sample.pciRegions.count) BARs | "
                                     + "\(r.sample.memoryTree.count) tree | \(r.sample.memoryTree.first { $0.owner == "virtio-disk0" }?.name ?? "-")")
                    }
                }
                return lines
            },
        ], timeout: 60)
        #expect(out[3] == [
            "- | - | 7 BARs | 60 tree | virtio-pci-common-virtio-blk",
            "- | - | 7 BARs | 60 tree | virtio-pci-common-virtio-blk",
            "- | - | 7 BARs | 60 tree | virtio-pci-common-virtio-blk",
            "- | QMP \(bad): info mtree -f -o: not a memory tree: 'unknown command: 'info mtree''; I/O exits named by PCI BARs only | 7 BARs | 0 tree | -",
            "- | - | 7 BARs | 0 tree | -",
            "- | - | 7 BARs | 0 tree | -",
            "- | QMP \(slow): info mtree -f -o: no answer in 1.0 s; I/O exits named by PCI BARs only | 7 BARs | 0 tree | -",
            "- | - | 7 BARs | 0 tree | -",
            "- | - | 7 BARs | 0 tree | -",
        ])
        // Once per connection (the BARs did not change), though query-pci was asked at the first read only.
        #expect(asked.get()["\(good) human-monitor-command"] == 1)
        #expect(asked.get()["\(bad) human-monitor-command"] == 1)
        #expect(asked.get()["\(good) query-pci"] == 1)
    }
}
