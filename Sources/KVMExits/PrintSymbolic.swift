// A small hand-written scanner for the symbolic tables inside a tracepoint's
// `print fmt:` line, as the kernel writes it to events/<system>/<event>/format:
//
//   __print_symbolic(EXPR, { v, "NAME" }, ...)
//   __print_flags(EXPR, "sep", { v, "NAME" }, ...)
//   (and the _u64 variants of both)
//
// Values are C constant expressions after macro expansion: decimal, hex, octal,
// negative (-1), parenthesised, or simple arithmetic such as `0x040 + 13` or
// `(1 << 0) | (1 << 1)`. Names may be split string literals (`"KVM_EXIT_" "IO"`),
// which are concatenated as C does.

/// An ordered code → name table, as found in one `__print_symbolic`/`__print_flags`
/// call (or built in). Lookup follows the kernel: the first entry with a matching
/// value wins.
public struct SymbolTable: Sendable, Equatable {
    public struct Entry: Sendable, Equatable {
        public var value: UInt64
        public var name: String
        public init(value: UInt64, name: String) {
            self.value = value
            self.name = name
        }
    }

    /// Entries in their original order.
    public let entries: [Entry]
    private let byValue: [UInt64: String]
    private let byName: [String: UInt64]

    public init(entries: [Entry]) {
        self.entries = entries
        var v: [UInt64: String] = [:]
        var n: [String: UInt64] = [:]
        for e in entries {
            if v[e.value] == nil { v[e.value] = e.name }
            if n[e.name] == nil { n[e.name] = e.value }
        }
        byValue = v
        byName = n
    }

    public init(_ pairs: [(UInt64, String)]) {
        self.init(entries: pairs.map { Entry(value: $0.0, name: $0.1) })
    }

    public static func == (a: SymbolTable, b: SymbolTable) -> Bool { a.entries == b.entries }

    public var count: Int { entries.count }
    public var isEmpty: Bool { entries.isEmpty }

    /// The name for `code`, or nil when the table has no such value.
    public func name(_ code: UInt64) -> String? { byValue[code] }

    /// The value for an exact (case-sensitive) `name`, or nil.
    public func value(forName name: String) -> UInt64? { byName[name] }

    /// Whether any entry carries `name`.
    public func contains(name: String) -> Bool { byName[name] != nil }

    /// A copy whose values are truncated to 32 bits (so `-1` matches a u32 field
    /// holding 0xffffffff, as it does for SVM's `invalid_guest_state`).
    public func truncatedTo32Bits() -> SymbolTable {
        SymbolTable(entries: entries.map { Entry(value: $0.value & 0xffff_ffff, name: $0.name) })
    }

    /// Decomposes `value` the way libtraceevent/`trace_print_flags_seq` do: each
    /// non-zero entry whose bits are all set is emitted (in table order) and its bits
    /// cleared; leftover bits are returned as one lowercase "0x…" string.
    public func flagNames(_ value: UInt64) -> [String] {
        var rest = value
        var out: [String] = []
        for e in entries where e.value != 0 && rest & e.value == e.value {
            out.append(e.name)
            rest &= ~e.value
        }
        if rest != 0 { out.append("0x" + String(rest, radix: 16)) }
        return out
    }

    // MARK: - Parsing print fmt

    /// Every `__print_symbolic`/`__print_symbolic_u64` call in a print-format string,
    /// in order of appearance, with its first argument's text (whitespace-trimmed).
    public static func symbolicTables(inPrintFormat fmt: String) -> [(expression: String, table: SymbolTable)] {
        PrintFormatScanner(fmt).calls(flags: false).map { ($0.expression, $0.table) }
    }

    /// Every `__print_flags`/`__print_flags_u64` call, with its expression, its
    /// separator literal and its table.
    public static func flagsTables(inPrintFormat fmt: String) -> [(expression: String, separator: String, table: SymbolTable)] {
        PrintFormatScanner(fmt).calls(flags: true).map { ($0.expression, $0.separator, $0.table) }
    }

    /// The text after `print fmt: ` in the contents of a kernel `format` file, or nil.
    public static func printFormat(inFormatFile text: String) -> String? {
        for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
            if line.hasPrefix("print fmt: ") { return String(line.dropFirst("print fmt: ".count)) }
        }
        return nil
    }
}

// MARK: - Scanner

private struct PrintFormatScanner {
    struct Call {
        var expression: String
        var separator: String
        var table: SymbolTable
    }

    let s: [UInt8]

    init(_ text: String) { s = Array(text.utf8) }

    func calls(flags: Bool) -> [Call] {
        var out: [Call] = []
        var i = 0
        while i < s.count {
            let c = s[i]
            if c == UInt8(ascii: "\"") || c == UInt8(ascii: "'") {
                i = skipLiteral(i)
                continue
            }
            if c == UInt8(ascii: "_"), (i == 0 || !isIdent(s[i - 1])) {
                var j = i
                while j < s.count, isIdent(s[j]) { j += 1 }
                let word = String(decoding: s[i..<j], as: UTF8.self)
                let wanted = flags
                    ? (word == "__print_flags" || word == "__print_flags_u64")
                    : (word == "__print_symbolic" || word == "__print_symbolic_u64")
                var k = skipSpace(j)
                if wanted, k < s.count, s[k] == UInt8(ascii: "(") {
                    k += 1
                    if let (call, end) = parseCall(from: k, flags: flags) {
                        out.append(call)
                        i = end
                        continue
                    }
                }
                i = j
                continue
            }
            i += 1
        }
        return out
    }

    /// Parses the arguments of one call starting just after its "(".
    private func parseCall(from start: Int, flags: Bool) -> (Call, Int)? {
        // First argument: expression up to the top-level comma.
        guard let exprEnd = topLevelComma(from: start) else { return nil }
        let expr = trim(start, exprEnd)
        var i = exprEnd + 1
        var sep = ""
        if flags {
            i = skipSpace(i)
            guard let (lit, after) = stringLiterals(from: i) else { return nil }
            sep = lit
            i = skipSpace(after)
            guard i < s.count, s[i] == UInt8(ascii: ",") else { return nil }
            i += 1
        }
        var entries: [SymbolTable.Entry] = []
        while true {
            i = skipSpace(i)
            guard i < s.count else { return nil }
            if s[i] == UInt8(ascii: ")") { i += 1; break }
            if s[i] == UInt8(ascii: ",") { i += 1; continue }
            guard s[i] == UInt8(ascii: "{") else {
                // Not a brace list (e.g. an unexpanded macro); skip this argument.
                guard let e = topLevelComma(from: i, orClose: true) else { return nil }
                i = e
                continue
            }
            i += 1
            guard let valueEnd = topLevelComma(from: i) else { return nil }
            let valueText = trim(i, valueEnd)
            var j = skipSpace(valueEnd + 1)
            guard let (name, after) = stringLiterals(from: j) else { return nil }
            j = skipSpace(after)
            guard j < s.count, s[j] == UInt8(ascii: "}") else { return nil }
            i = j + 1
            if let v = ConstExpr.evaluate(valueText) {
                entries.append(.init(value: UInt64(bitPattern: v), name: name))
            }
        }
        return (Call(expression: expr, separator: sep, table: SymbolTable(entries: entries)), i)
    }

    /// Index of the first ',' at nesting depth 0 from `start` (skipping literals).
    /// With `orClose`, also stops at an unmatched ')' (returning its index).
    private func topLevelComma(from start: Int, orClose: Bool = false) -> Int? {
        var depth = 0
        var i = start
        while i < s.count {
            let c = s[i]
            switch c {
            case UInt8(ascii: "\""), UInt8(ascii: "'"):
                i = skipLiteral(i)
                continue
            case UInt8(ascii: "("), UInt8(ascii: "{"), UInt8(ascii: "["):
                depth += 1
            case UInt8(ascii: ")"), UInt8(ascii: "}"), UInt8(ascii: "]"):
                if depth == 0 { return orClose ? i : nil }
                depth -= 1
            case UInt8(ascii: ","):
                if depth == 0 { return i }
            default:
                break
            }
            i += 1
        }
        return nil
    }

    /// One or more adjacent C string literals starting at `i`, concatenated.
    private func stringLiterals(from start: Int) -> (String, Int)? {
        var i = start
        var bytes: [UInt8] = []
        var any = false
        while i < s.count, s[i] == UInt8(ascii: "\"") {
            any = true
            i += 1
            while i < s.count, s[i] != UInt8(ascii: "\"") {
                if s[i] == UInt8(ascii: "\\"), i + 1 < s.count {
                    let e = s[i + 1]
                    switch e {
                    case UInt8(ascii: "n"): bytes.append(10)
                    case UInt8(ascii: "t"): bytes.append(9)
                    default: bytes.append(e)
                    }
                    i += 2
                } else {
                    bytes.append(s[i])
                    i += 1
                }
            }
            guard i < s.count else { return nil }
            i += 1
            let next = skipSpace(i)
            if next < s.count, s[next] == UInt8(ascii: "\"") { i = next } else { break }
        }
        return any ? (String(decoding: bytes, as: UTF8.self), i) : nil
    }

    private func skipLiteral(_ start: Int) -> Int {
        let q = s[start]
        var i = start + 1
        while i < s.count, s[i] != q {
            i += s[i] == UInt8(ascii: "\\") ? 2 : 1
        }
        return min(i + 1, s.count)
    }

    private func skipSpace(_ start: Int) -> Int {
        var i = start
        while i < s.count, s[i] == 32 || s[i] == 9 || s[i] == 10 || s[i] == 13 { i += 1 }
        return i
    }

    private func trim(_ a: Int, _ b: Int) -> String {
        String(decoding: s[a..<b], as: UTF8.self).trimmingSpaces()
    }

    private func isIdent(_ c: UInt8) -> Bool {
        (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || c == 0x5f
    }
}

extension String {
    fileprivate func trimmingSpaces() -> String {
        var sub = Substring(self)
        while let f = sub.first, f == " " || f == "\t" || f == "\n" { sub.removeFirst() }
        while let l = sub.last, l == " " || l == "\t" || l == "\n" { sub.removeLast() }
        return String(sub)
    }
}

// MARK: - Constant expressions

/// Evaluates the integer constant expressions that appear as table values:
/// literals (decimal, 0x hex, 0 octal, with u/l suffixes), parentheses, unary
/// `- ~ + !`, and binary `* / % + - << >> & ^ |` with C precedence. Arithmetic wraps
/// in 64 bits. Returns nil for anything else (identifiers, casts).
enum ConstExpr {
    static func evaluate(_ text: String) -> Int64? {
        var p = Parser(Array(text.utf8))
        guard let v = p.parseBinary(0) else { return nil }
        p.skip()
        return p.i == p.s.count ? v : nil
    }

    private struct Parser {
        let s: [UInt8]
        var i = 0
        init(_ s: [UInt8]) { self.s = s }

        mutating func skip() {
            while i < s.count, s[i] == 32 || s[i] == 9 || s[i] == 10 { i += 1 }
        }

        // Binary operators by precedence level (low → high).
        static let levels: [[String]] = [["|"], ["^"], ["&"], ["<<", ">>"], ["+", "-"], ["*", "/", "%"]]

        mutating func matchOp(_ ops: [String]) -> String? {
            skip()
            for op in ops {
                let b = Array(op.utf8)
                guard i + b.count <= s.count, Array(s[i..<(i + b.count)]) == b else { continue }
                // Do not take '&' of "&&", '|' of "||", '<' of "<=".
                if b.count == 1, i + 1 < s.count, s[i + 1] == b[0] { continue }
                i += b.count
                return op
            }
            return nil
        }

        mutating func parseBinary(_ level: Int) -> Int64? {
            if level == Self.levels.count { return parseUnary() }
            guard var lhs = parseBinary(level + 1) else { return nil }
            while let op = matchOp(Self.levels[level]) {
                guard let rhs = parseBinary(level + 1) else { return nil }
                switch op {
                case "|": lhs |= rhs
                case "^": lhs ^= rhs
                case "&": lhs &= rhs
                case "<<": lhs = rhs >= 0 && rhs < 64 ? lhs << rhs : 0
                case ">>": lhs = rhs >= 0 && rhs < 64 ? Int64(bitPattern: UInt64(bitPattern: lhs) >> UInt64(rhs)) : 0
                case "+": lhs = lhs &+ rhs
                case "-": lhs = lhs &- rhs
                case "*": lhs = lhs &* rhs
                case "/": guard rhs != 0 else { return nil }; lhs = lhs / rhs
                case "%": guard rhs != 0 else { return nil }; lhs = lhs % rhs
                default: return nil
                }
            }
            return lhs
        }

        mutating func parseUnary() -> Int64? {
            skip()
            guard i < s.count else { return nil }
            switch s[i] {
            case UInt8(ascii: "-"): i += 1; return parseUnary().map { 0 &- $0 }
            case UInt8(ascii: "~"): i += 1; return parseUnary().map { ~$0 }
            case UInt8(ascii: "+"): i += 1; return parseUnary()
            case UInt8(ascii: "!"): i += 1; return parseUnary().map { $0 == 0 ? 1 : 0 }
            case UInt8(ascii: "("):
                i += 1
                guard let v = parseBinary(0) else { return nil }
                skip()
                guard i < s.count, s[i] == UInt8(ascii: ")") else { return nil }
                i += 1
                return v
            default:
                return parseNumber()
            }
        }

        mutating func parseNumber() -> Int64? {
            skip()
            var radix: UInt64 = 10
            if i + 1 < s.count, s[i] == UInt8(ascii: "0"), s[i + 1] | 0x20 == UInt8(ascii: "x") {
                radix = 16
                i += 2
            } else if i < s.count, s[i] == UInt8(ascii: "0") {
                radix = 8
            }
            var v: UInt64 = 0
            var digits = 0
            while i < s.count {
                let c = s[i] | 0x20
                let d: UInt64
                if s[i] >= 0x30, s[i] <= 0x39 { d = UInt64(s[i] - 0x30) }
                else if c >= UInt8(ascii: "a"), c <= UInt8(ascii: "f") { d = UInt64(c - UInt8(ascii: "a") + 10) }
                else { break }
                guard d < radix else { break }
                v = v &* radix &+ d
                digits += 1
                i += 1
            }
            guard digits > 0 else { return nil }
            while i < s.count, s[i] | 0x20 == UInt8(ascii: "u") || s[i] | 0x20 == UInt8(ascii: "l") { i += 1 }
            return Int64(bitPattern: v)
        }
    }
}
