import Foundation

/// One range of QEMU's flat memory view (`info mtree -f -o`): the guest ports (address space `I/O`) or
/// guest-physical addresses (address space `memory`) that one memory region of QEMU answers — what a
/// `kvm_pio` port or a `kvm_mmio` address reaches in QEMU. Kept in recordings (``PCIRegion``'s neighbour).
public struct MemoryTreeRange: Sendable, Equatable, Codable {
    /// True for the `I/O` address space (ports, `kvm_pio`), false for `memory` (MMIO, `kvm_mmio`).
    public var isIO: Bool
    /// The first and the last port or address (both inclusive, as QEMU prints them).
    public var first: UInt64
    public var last: UInt64
    /// QEMU's name of the region (`virtio-pci-notify-virtio-blk`, `kvm-ioapic`, `rtc`), without the
    /// ` @OFFSET` QEMU adds to a range that starts inside its region.
    public var name: String
    /// QEMU's kind of region: `i/o` (emulated: every access exits), `rom` or `romd` (reads from memory,
    /// writes exit).
    public var kind: String
    /// The owning device's id (`-device …,id=virtio-disk0`, libvirt's alias); nil when it has none.
    public var owner: String?
    /// The owner's QOM path when it has no id (`/machine/fw_cfg`, `/machine/unattached/device[10]`).
    public var ownerPath: String?

    public init(isIO: Bool, first: UInt64, last: UInt64, name: String, kind: String, owner: String? = nil,
                ownerPath: String? = nil) {
        self.isIO = isIO
        self.first = first
        self.last = last
        self.name = name
        self.kind = kind
        self.owner = owner
        self.ownerPath = ownerPath
    }
}

/// QEMU's memory tree as the human monitor prints it, read through QMP's `human-monitor-command` (there is no
/// QMP command for it). The flat view (`-f`) is what the guest sees — overlaps and priorities resolved, one
/// range per address — and `-o` adds each region's owner, so a region names its device even where its name
/// is only its type (`virtio-pci-notify-virtio-blk` of `owner:{dev id=virtio-disk0}`).
public enum QEMUMemoryTree {
    /// The monitor command read.
    public static let command = "info mtree -f -o"

    /// The ranges of the flat views of the address spaces `memory` and `I/O`, in QEMU's order. Left out: RAM
    /// (`ram`, `ramd`: KVM maps it, no access exits), and the gaps of a root region that answers unassigned
    /// accesses itself (`io @0000000000000010`: the `I/O` space's root, named as the root).
    ///
    /// Lines look like (QEMU 7.2, x86_64; addresses are 16 hex digits there, fewer on 32-bit targets):
    /// ```
    /// FlatView #1
    ///  AS "memory", root: system
    ///  Root memory region: system
    ///   00000000febf7000-00000000febf7fff (prio 0, i/o): virtio-pci-notify-virtio-blk owner:{dev id=virtio-disk0}
    ///   0000000000000071-0000000000000071 (prio 0, i/o): rtc @0000000000000001 owner:{dev path=/machine/unattached/device[10]}
    ///   00000000fffc0000-00000000ffffffff (prio 0, rom): pc.bios parent:{obj path=/machine/unattached} KVM
    /// ```
    /// - Returns: nil when the text holds neither address space (an HMP error such as `unknown command`, an
    ///   older QEMU's different output, garbage); lines it does not understand inside them are skipped.
    public static func parse(_ text: String) -> [MemoryTreeRange]? {
        var out: [MemoryTreeRange] = []
        var spaces: [String] = []
        var root = ""
        var found = false
        for raw in text.split(whereSeparator: \.isNewline) {  // "\r\n" is one Character
            let line = Substring(raw)
            if line.hasPrefix("FlatView #") {
                spaces = []
                root = ""
                continue
            }
            let trimmed = line.drop { $0 == " " }
            if trimmed.hasPrefix("AS \"") {
                let rest = trimmed.dropFirst(4)
                if let q = rest.firstIndex(of: "\"") { spaces.append(String(rest[..<q])) }
                if spaces.last == "I/O" || spaces.last == "memory" { found = true }
                continue
            }
            if trimmed.hasPrefix("Root memory region: ") {
                root = String(trimmed.dropFirst("Root memory region: ".count))
                continue
            }
            let isIO: Bool
            if spaces.contains("I/O") { isIO = true } else if spaces.contains("memory") { isIO = false } else { continue }
            guard let range = self.range(trimmed, isIO: isIO), range.name != root,
                  !range.kind.hasSuffix("ram"), !range.kind.hasSuffix("ramd") else { continue }
            out.append(range)
        }
        return found ? out : nil
    }

    /// One range line (without its indent): `FIRST-LAST (prio P, KIND): NAME[ @OFFSET][ owner:{…}][ parent:{…}][ LISTENER…]`.
    static func range(_ line: Substring, isIO: Bool) -> MemoryTreeRange? {
        guard let dash = line.firstIndex(of: "-"), let first = UInt64(line[..<dash], radix: 16),
              let open = line.range(of: " (prio "), let last = UInt64(line[line.index(after: dash)..<open.lowerBound], radix: 16),
              first <= last, let close = line.range(of: "): ", range: open.upperBound..<line.endIndex),
              let comma = line[open.upperBound..<close.lowerBound].firstIndex(of: ",") else { return nil }
        let kind = line[line.index(after: comma)..<close.lowerBound].trimmingPrefix(" ")
        var rest = line[close.upperBound...]
        // The owner: `owner:{dev id=ID}`, `owner:{dev path=PATH}`, `owner:{obj path=PATH}`.
        var owner: String?
        var ownerPath: String?
        var end = rest.endIndex
        for marker in [" owner:{", " parent:{", " orphan"] {
            if let m = rest.range(of: marker), m.lowerBound < end { end = m.lowerBound }
        }
        if let m = rest.range(of: " owner:{"), let c = rest[m.upperBound...].firstIndex(of: "}") {
            let inner = rest[m.upperBound..<c]
            if let id = inner.range(of: "dev id=") {
                owner = String(inner[id.upperBound...])
            } else if let path = inner.range(of: "path=") {
                ownerPath = String(inner[path.upperBound...])
            }
        }
        rest = rest[..<end]
        // Without -o (an older QEMU): the listeners' names follow the region's name.
        if end == line.endIndex, rest.hasSuffix(" KVM") { rest = rest.dropLast(4) }
        if let at = rest.range(of: " @", options: .backwards),
           !rest[at.upperBound...].isEmpty, rest[at.upperBound...].allSatisfy(\.isHexDigit) {
            rest = rest[..<at.lowerBound]
        }
        guard !rest.isEmpty else { return nil }
        return MemoryTreeRange(isIO: isIO, first: first, last: last, name: String(rest), kind: String(kind),
                               owner: owner, ownerPath: ownerPath)
    }
}
