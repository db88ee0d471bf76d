/// Which device owns an I/O port or a guest-physical MMIO address: named ranges of the two x86 address
/// spaces that `kvm_pio` (port) and `kvm_mmio` (gpa) report.
///
/// A value: the standard PC map (``standardPC``) is the fallback for every VM; a source that knows a VM's
/// devices (QMP `query-pci` BARs, libvirt device addresses) builds that VM's own map with ``add(_:_:_:)``
/// and lays it over the fallback with ``merged(over:)``. Looked up once per table row (a summary's row per
/// port or address), never per event: a scan of a flat array of integer ranges, names interned once.
///
/// When ranges overlap, the narrowest range holding the address names it; between ranges of the same width
/// the one added last wins (so a VM's own map overrides the fallback for the same range).
public struct DeviceMap: Sendable, Equatable {
    /// The address space of a range: x86 I/O ports (`in`/`out`, `kvm_pio`) or guest-physical memory (`kvm_mmio`).
    public enum Space: UInt8, Sendable, Codable {
        case port = 1
        case mmio = 2
    }

    /// One named range, both ends inclusive; `device` indexes ``names``.
    public struct Range: Sendable, Equatable {
        public var space: Space
        public var first: UInt64
        public var last: UInt64
        public var device: Int32
    }

    /// Device names, each once.
    public private(set) var names: [String] = []
    /// Every range, in the order added.
    public private(set) var ranges: [Range] = []

    public init() {}

    /// Names `range` of `space` after `device` (e.g. "virtio-blk virtio-disk0 notify").
    public mutating func add(_ space: Space, _ range: ClosedRange<UInt64>, _ device: String) {
        let index: Int32
        if let i = names.firstIndex(of: device) {
            index = Int32(i)
        } else {
            names.append(device)
            index = Int32(names.count - 1)
        }
        ranges.append(Range(space: space, first: range.lowerBound, last: range.upperBound, device: index))
    }

    /// The device owning `address` in `space`, or nil when no range holds it.
    public func device(_ space: Space, _ address: UInt64) -> String? {
        var best: Range?
        for r in ranges where r.space == space && r.first <= address && address <= r.last {
            if let b = best, b.last - b.first < r.last - r.first { continue }
            best = r
        }
        return best.map { names[Int($0.device)] }
    }

    /// This map laid over `fallback`: the fallback's ranges, then this map's (which win ties).
    public func merged(over fallback: DeviceMap) -> DeviceMap {
        var m = fallback
        for r in ranges { m.add(r.space, r.first...r.last, names[Int(r.device)]) }
        return m
    }

    /// The devices a PC-compatible x86 machine (QEMU's `pc`/`q35`, firecracker, cloud-hypervisor) places at
    /// fixed addresses. Used when nothing better is known about a VM. Sources, by range:
    /// - Linux `arch/x86/kernel/setup.c` (`standard_io_resources`): dma1 0x00-0x1f, pic1 0x20-0x21,
    ///   timer0 0x40-0x43, timer1 0x50-0x53, keyboard 0x60 and 0x64, dma page reg 0x80-0x8f, pic2 0xa0-0xa1,
    ///   dma2 0xc0-0xdf, fpu 0xf0-0xff; POST codes at 0x80 (the BIOS's port 80h).
    /// - The IBM PC/AT map (as `/proc/ioports` lists it): rtc0 0x70-0x71 (CMOS), port 0x61 (speaker, NMI
    ///   status), 0x92 (system control port A), serial COM1-COM4 0x3f8/0x2f8/0x3e8/0x2e8 (8 ports each),
    ///   parallel 0x378-0x37a, floppy 0x3f0-0x3f5 and 0x3f7, IDE primary 0x1f0-0x1f7 + 0x3f6, secondary
    ///   0x170-0x177 + 0x376, VGA 0x3b0-0x3df, PCI configuration mechanism #1 0xcf8-0xcff (PCI Local Bus spec).
    /// - QEMU's x86 machines: fw_cfg 0x510-0x511 and its DMA 0x514-0x51b (`docs/specs/fw_cfg`), Bochs VBE
    ///   0x1ce-0x1cf, debug console 0x402, ACPI PM 0x600-0x67f (piix4 and ich9 PM base), ACPI PCI hotplug
    ///   0xae00-0xae17, CPU hotplug 0xaf00-0xaf1f, GPE0 0xafe0-0xafe3, vmport 0x5658.
    /// - MMIO: legacy VGA window 0xa0000-0xbffff; q35 PCIe ECAM 0xb0000000-0xbfffffff (QEMU's default
    ///   PCIEXBAR); IOAPIC 0xfec00000-0xfec00fff (Intel 82093AA datasheet, default base); HPET
    ///   0xfed00000-0xfed003ff (IA-PC HPET spec); TPM TIS 0xfed40000-0xfed44fff (TCG PC Client spec); local
    ///   APIC 0xfee00000-0xfee00fff (Intel SDM vol. 3, APIC base MSR default).
    public static let standardPC: DeviceMap = {
        var m = DeviceMap()
        let ports: [(ClosedRange<UInt64>, String)] = [
            (0x00...0x1f, "dma1"), (0x20...0x21, "pic1"), (0x40...0x43, "pit timer0"), (0x50...0x53, "timer1"),
            (0x60...0x60, "keyboard"), (0x61...0x61, "speaker/nmi port61"), (0x64...0x64, "keyboard"),
            (0x70...0x71, "rtc0 cmos"), (0x80...0x8f, "dma page reg"), (0x80...0x80, "post"),
            (0x92...0x92, "port92 a20"), (0xa0...0xa1, "pic2"), (0xc0...0xdf, "dma2"), (0xf0...0xff, "fpu"),
            (0x170...0x177, "ide1"), (0x1ce...0x1cf, "bochs vbe"), (0x1f0...0x1f7, "ide0"),
            (0x2e8...0x2ef, "serial COM4"), (0x2f8...0x2ff, "serial COM2"), (0x376...0x376, "ide1"),
            (0x378...0x37a, "parallel0"), (0x3b0...0x3df, "vga"), (0x3e8...0x3ef, "serial COM3"),
            (0x3f0...0x3f5, "floppy"), (0x3f6...0x3f6, "ide0"), (0x3f7...0x3f7, "floppy"),
            (0x3f8...0x3ff, "serial COM1"), (0x402...0x402, "debugcon"), (0x510...0x511, "fw_cfg"),
            (0x514...0x51b, "fw_cfg dma"), (0x600...0x67f, "acpi pm"), (0xcf8...0xcff, "pci conf"),
            (0x5658...0x5658, "vmport"), (0xae00...0xae17, "acpi pci hotplug"), (0xaf00...0xaf1f, "acpi cpu hotplug"),
            (0xafe0...0xafe3, "acpi gpe0"),
        ]
        for (r, name) in ports { m.add(.port, r, name) }
        let mmio: [(ClosedRange<UInt64>, String)] = [
            (0xa0000...0xbffff, "vga window"), (0xb000_0000...0xbfff_ffff, "pcie ecam"),
            (0xfec0_0000...0xfec0_0fff, "ioapic"), (0xfed0_0000...0xfed0_03ff, "hpet"),
            (0xfed4_0000...0xfed4_4fff, "tpm"), (0xfee0_0000...0xfee0_0fff, "local apic"),
        ]
        for (r, name) in mmio { m.add(.mmio, r, name) }
        return m
    }()
}
