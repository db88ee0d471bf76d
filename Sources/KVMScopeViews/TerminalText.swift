extension String {
    /// The string as a terminal may show it: every control character (C0, DEL, C1: escape sequences, newlines,
    /// bells) becomes `?`, as ps and htop show them. A VM's name comes from its command line, which anyone who
    /// starts a VM chooses: printed raw, it could retitle or clear the operator's terminal. JSON, CSV and the
    /// exposition escape it instead and keep it whole.
    public var terminalSafe: String {
        guard unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else { return self }
        var out = ""
        out.unicodeScalars.append(contentsOf: unicodeScalars.map { $0.properties.generalCategory == .control ? "?" : $0 })
        return out
    }
}
