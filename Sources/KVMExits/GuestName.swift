/// Guest names as kvm_stat and libvirt users know them.
public enum GuestName {
    /// The name in a QEMU command line: `-name guest=NAME,debug-threads=on` (libvirt), `-name NAME,process=…`,
    /// or `-name NAME`; `,,` stands for a literal comma.
    public static func fromQEMUArguments(_ args: [String]) -> String? {
        guard let i = args.firstIndex(where: { $0 == "-name" || $0 == "--name" }), i + 1 < args.count else { return nil }
        let value = args[i + 1]
        // Split on single commas; ",," is an escaped comma.
        var parts: [String] = []
        var current = ""
        var chars = Array(value)[...]
        while let c = chars.popFirst() {
            if c == "," {
                if chars.first == "," {
                    current.append(",")
                    chars.removeFirst()
                } else {
                    parts.append(current)
                    current = ""
                }
            } else {
                current.append(c)
            }
        }
        parts.append(current)
        for p in parts where p.hasPrefix("guest=") { return String(p.dropFirst(6)) }
        guard let first = parts.first, !first.contains("=") || first.hasPrefix("guest=") else { return nil }
        return first.isEmpty ? nil : first
    }

    /// The UUID in a QEMU command line: `-uuid 8-4-4-4-12 hex digits` (libvirt passes its domain's; `--uuid` and
    /// `-uuid=…` are QEMU's other spellings), lowercased as libvirt prints UUIDs; nil without one or when the
    /// value is no UUID (QEMU would have refused it).
    public static func uuidFromQEMUArguments(_ args: [String]) -> String? {
        var value: String?
        for (i, a) in args.enumerated() {
            if a == "-uuid" || a == "--uuid" {
                value = i + 1 < args.count ? args[i + 1] : nil
                break
            }
            if a.hasPrefix("-uuid=") || a.hasPrefix("--uuid=") {
                value = String(a.drop { $0 == "-" }.dropFirst(5))
                break
            }
        }
        guard let value else { return nil }
        let groups = value.split(separator: "-", omittingEmptySubsequences: false)
        guard groups.map(\.count) == [8, 4, 4, 4, 12], groups.allSatisfy({ $0.allSatisfy(\.isHexDigit) }) else { return nil }
        return value.lowercased()
    }
}
