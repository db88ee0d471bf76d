import KVMAnalysis
/// A JSON value whose objects keep their keys in the order written, so output is stable and readable.
public indirect enum JSONValue: Sendable, Equatable {
    case null
    case bool(Bool)
    case int(Int64)
    case uint(UInt64)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object([(String, JSONValue)])

    public static func == (a: JSONValue, b: JSONValue) -> Bool { a.serialized() == b.serialized() }

    public static func optional(_ s: String?) -> JSONValue { s.map(JSONValue.string) ?? .null }
    public static func optional(_ v: UInt32?) -> JSONValue { v.map { .uint(UInt64($0)) } ?? .null }
    public static func optional(_ v: UInt64?) -> JSONValue { v.map { .uint($0) } ?? .null }

    /// Compact JSON, or indented with two spaces.
    public func serialized(pretty: Bool = false) -> String {
        var out = ""
        write(to: &out, pretty: pretty, indent: 0)
        return out
    }

    func write(to out: inout String, pretty: Bool, indent: Int) {
        switch self {
        case .null: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .int(let i): out += String(i)
        case .uint(let u): out += String(u)
        case .double(let d):
            if d.isFinite {
                if d == d.rounded() && abs(d) < 1e15 { out += String(Int64(d)) + ".0" } else { out += "\(d)" }
            } else {
                out += "null"
            }
        case .string(let s): Self.quote(s, into: &out)
        case .array(let items):
            if items.isEmpty { out += "[]"; return }
            out += "["
            for (i, v) in items.enumerated() {
                if i > 0 { out += "," }
                if pretty { Self.newline(indent + 2, into: &out) }
                v.write(to: &out, pretty: pretty, indent: indent + 2)
            }
            if pretty { Self.newline(indent, into: &out) }
            out += "]"
        case .object(let pairs):
            if pairs.isEmpty { out += "{}"; return }
            out += "{"
            for (i, (k, v)) in pairs.enumerated() {
                if i > 0 { out += "," }
                if pretty { Self.newline(indent + 2, into: &out) }
                Self.quote(k, into: &out)
                out += pretty ? ": " : ":"
                v.write(to: &out, pretty: pretty, indent: indent + 2)
            }
            if pretty { Self.newline(indent, into: &out) }
            out += "}"
        }
    }

    /// A newline and `indent` spaces (built once for the usual depths).
    static func newline(_ indent: Int, into out: inout String) {
        out += indent < newlines.count ? newlines[indent] : "\n" + String(repeating: " ", count: indent)
    }

    static let newlines: [String] = (0..<64).map { "\n" + String(repeating: " ", count: $0) }

    static func quote(_ s: String, into out: inout String) {
        out += "\""
        // Most strings (names, reasons) need no escape: appended whole, not scalar by scalar.
        if !s.utf8.contains(where: { $0 < 0x20 || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\\") }) {
            out += s
            out += "\""
            return
        }
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if u.value < 0x20 {
                    let hex = String(u.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        out += "\""
    }
}
