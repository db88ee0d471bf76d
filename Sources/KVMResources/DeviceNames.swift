import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import KVMExits

/// One device of a libvirt domain's XML (`virDomainGetXMLDesc`, `<devices>`): the names libvirt gives it and
/// where it sits — what names a VM's I/O exits by the names a libvirt user knows (`vda`, `virtio-disk0`).
public struct LibvirtDevice: Sendable, Equatable, Codable {
    /// The element (`disk`, `interface`, `serial`, `panic`, `memballoon`, `controller`, …).
    public var element: String
    /// `<alias name=…>`: the id libvirt gives the device in QEMU (`-device …,id=virtio-disk0`); nil when the
    /// device has none (a `<panic>`).
    public var alias: String?
    /// `<target dev=…>`: the disk's guest name (`vda`) or the interface's host tap (`vnet0`).
    public var target: String?
    /// `<address type='pci' …>` as `BB:SS.F` (libvirt's bus index: the guest's bus number on bus 0 only).
    public var pciAddress: String?
    /// The first I/O port of an ISA device: `<address type='isa' iobase=…>`, else the standard COM port of
    /// `<target type='isa-serial' port='N'>` (0x3f8, 0x2f8, 0x3e8, 0x2e8).
    public var ioBase: UInt64?
    /// Ports from ``ioBase``: `<address type='isa' iosize=…>`, else 8 for a serial port (a 16550A's
    /// registers), 1 for the others (a pvpanic's one port).
    public var ioSize: UInt64?
    /// `<model type|name=…>` or the `<target type=…>` of a serial port (`virtio`, `isa-serial`, `isa`).
    public var model: String?

    public init(element: String, alias: String? = nil, target: String? = nil, pciAddress: String? = nil,
                ioBase: UInt64? = nil, ioSize: UInt64? = nil, model: String? = nil) {
        self.element = element
        self.alias = alias
        self.target = target
        self.pciAddress = pciAddress
        self.ioBase = ioBase
        self.ioSize = ioSize
        self.model = model
    }

    /// The devices of a domain's XML, in its order; a `<console>` (the serial port it shows again) left out.
    /// Read with Foundation's `XMLParser` (libxml2's SAX parser: nothing printed on bad input).
    /// - Returns: nil when the text is not XML with a `<domain><devices>` element.
    public static func devices(xml: String) -> [LibvirtDevice]? {
        let reader = DomainXMLReader()
        let parser = XMLParser(data: Data(xml.utf8))
        parser.delegate = reader
        guard parser.parse(), reader.sawDevices else { return nil }
        return reader.devices
    }
}

/// Collects `/domain/devices/*` and the attributes of their `alias`, `target`, `model` and `address` children.
private final class DomainXMLReader: NSObject, XMLParserDelegate {
    var devices: [LibvirtDevice] = []
    var sawDevices = false
    private var path: [String] = []
    private var element: String?
    private var attributes: [String: [String: String]] = [:]

    func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?,
                attributes: [String: String] = [:]) {
        path.append(name)
        if path == ["domain", "devices"] { sawDevices = true }
        if path.count == 3, path[0] == "domain", path[1] == "devices" {
            element = name
            self.attributes = ["": attributes]
        } else if path.count == 4, element != nil, self.attributes[name] == nil {
            self.attributes[name] = attributes
        }
    }

    func parser(_ parser: XMLParser, didEndElement name: String, namespaceURI: String?, qualifiedName: String?) {
        if path.count == 3, let e = element {
            if e != "console" && e != "emulator" { devices.append(Self.device(e, attributes)) }
            element = nil
        }
        path.removeLast()
    }

    static func device(_ name: String, _ a: [String: [String: String]]) -> LibvirtDevice {
        func number(_ s: String?) -> UInt64? {
            guard let s else { return nil }
            return s.hasPrefix("0x") ? UInt64(s.dropFirst(2), radix: 16) : UInt64(s)
        }
        var d = LibvirtDevice(element: name, alias: a["alias"]?["name"], target: a["target"]?["dev"])
        d.model = a["model"]?["type"] ?? a["model"]?["name"] ?? a["target"]?["type"] ?? a[""]?["model"]
        if let address = a["address"] {
            switch address["type"] {
            case "pci":
                if let bus = number(address["bus"]), let slot = number(address["slot"]),
                   let function = number(address["function"]), (number(address["domain"]) ?? 0) == 0 {
                    d.pciAddress = PCIRegion.address(bus: Int(bus), slot: Int(slot), function: Int(function))
                }
            case "isa":
                d.ioBase = number(address["iobase"])
                d.ioSize = number(address["iosize"])
            default: break
            }
        }
        if name == "serial", d.ioBase == nil, a["target"]?["type"] == "isa-serial",
           let port = number(a["target"]?["port"]), port < 4 {
            d.ioBase = [0x3f8, 0x2f8, 0x3e8, 0x2e8][Int(port)]
        }
        if d.ioBase != nil, d.ioSize == nil { d.ioSize = name == "serial" ? 8 : 1 }
        return d
    }
}

extension PCIRegion {
    /// `BB:SS.F` in hex, as ``address`` spells it.
    public static func address(bus: Int, slot: Int, function: Int) -> String {
        func hex(_ v: Int) -> String {
            let h = String(v, radix: 16)
            return h.count < 2 ? "0" + h : h
        }
        return "\(hex(bus)):\(hex(slot)).\(function)"
    }
}

extension DeviceMap {
    /// A VM's own device map from every source that knows its devices, each range named
    /// `ID [TARGET] ROLE (TYPE BB:SS.F BARn)` — `virtio-disk0 vda notify (virtio-blk 00:02.0 BAR4)`:
    /// - `memoryTree` (QMP `info mtree -f -o`): QEMU's regions, each named by its role — a modern virtio
    ///   device's `common`, `isr`, `device`, `notify` (the doorbell: one write per request), `msix-table`; a
    ///   transitional virtio device's I/O BAR as `legacy`, with its queue-notify register (offset 16, 2
    ///   bytes: the virtio spec's legacy layout) as `legacy notify`; other regions by QEMU's name (`kvm-ioapic`,
    ///   `hpet`, `rtc-index`, `fwcfg`), after their owner's id where it has one (`serial0 serial`).
    /// - `pciRegions` (QMP `query-pci`): each mapped BAR, named by its device (id, else class) and
    ///   `(BB:SS.F BARn)`; the tree's ranges inside a BAR get that place too.
    /// - `libvirt` (the domain XML): the disk's or interface's target (`vda`, `vnet0`) after the alias QEMU
    ///   knows as the device's id; ISA devices (`<address type='isa' iobase=…>`, an isa-serial's COM port) as
    ///   port ranges, also without QMP.
    /// Laid over the standard PC map when tables are named (``merged(over:)``): the narrowest range names
    /// an address, so a region of the tree beats the BAR holding it, and both beat the fallback.
    public init(pciRegions: [PCIRegion], memoryTree: [MemoryTreeRange], libvirt: [LibvirtDevice] = []) {
        self.init()
        var targets: [String: String] = [:]
        for d in libvirt { if let alias = d.alias, let target = d.target { targets[alias] = target } }
        // A virtio device's type, from its regions' names (`virtio-pci-common-virtio-blk` → virtio-blk).
        var types: [String: String] = [:]
        for r in memoryTree {
            if let owner = r.owner, let role = Self.virtioRole(r.name), role.type != nil { types[owner] = role.type }
        }
        func label(_ device: String?, _ role: String?, _ bar: PCIRegion?) -> String {
            var parts: [String] = []
            if let device { parts.append(device) }
            if let device, let target = targets[device] { parts.append(target) }
            if let role { parts.append(role) }
            if let bar {
                let type = types[bar.device].map { $0 + " " } ?? ""
                parts.append("(\(type)\(bar.address) BAR\(bar.bar))")
            }
            return parts.joined(separator: " ")
        }
        for d in libvirt {
            guard let base = d.ioBase, let size = d.ioSize, size > 0, base <= 0xffff else { continue }
            let kind = d.element == "panic" ? "pvpanic" : d.model ?? d.element
            add(.port, base...(base + size - 1), d.alias.map { "\($0) \(kind)" } ?? kind)
        }
        let bars = pciRegions.filter { $0.size > 0 && $0.start <= UInt64.max - ($0.size - 1) }
        for r in bars { add(r.isIO ? .port : .mmio, r.start...(r.start + r.size - 1), label(r.device, nil, r)) }
        for r in memoryTree {
            let bar = bars.first { $0.isIO == r.isIO && $0.start <= r.first && r.last <= $0.start + ($0.size - 1) }
            let device = r.owner ?? bar?.device
            let space: Space = r.isIO ? .port : .mmio
            if r.name == "virtio-pci" && r.isIO {
                // A transitional virtio device's legacy I/O BAR (no subregions in QEMU's tree).
                add(space, r.first...r.last, label(device, "legacy", bar))
                if r.last - r.first >= 17 { add(space, (r.first + 16)...(r.first + 17), label(device, "legacy notify", bar)) }
                continue
            }
            let role = Self.virtioRole(r.name)?.role ?? r.name
            add(space, r.first...r.last, device == nil ? role : label(device, role, bar))
        }
    }

    /// The role and device type of a virtio-pci region's name: `virtio-pci-ROLE-TYPE` (QEMU's
    /// `virtio_pci_modern_regions_init`: roles common, isr, device, notify, notify-pio).
    static func virtioRole(_ name: String) -> (role: String, type: String?)? {
        guard name.hasPrefix("virtio-pci-") else { return nil }
        let rest = name.dropFirst("virtio-pci-".count)
        for role in ["notify-pio", "common", "isr", "device", "notify"] where rest.hasPrefix(role + "-") {
            return (role, String(rest.dropFirst(role.count + 1)))
        }
        return nil
    }
}

extension VMSample {
    /// This VM's own device map from what its sources gave in this sample (``DeviceMap/init(pciRegions:memoryTree:libvirt:)``):
    /// QMP's BARs and memory tree (`--qmp`), libvirt's device addresses; nil when none gave anything.
    public var deviceMap: DeviceMap? {
        let bars = qmp?.pciRegions ?? [], tree = qmp?.memoryTree ?? [], devices = libvirt?.devices ?? []
        guard !bars.isEmpty || !tree.isEmpty || devices.contains(where: { $0.ioBase != nil }) else { return nil }
        return DeviceMap(pciRegions: bars, memoryTree: tree, libvirt: devices)
    }
}
