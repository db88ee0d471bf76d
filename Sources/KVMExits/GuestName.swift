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
}
