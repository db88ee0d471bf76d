// The symbol tables of a tracepoint's `print fmt:` line, as the kernel writes it to
// events/<system>/<event>/format:
//
//   __print_symbolic(EXPR, { v, "NAME" }, ...)
//   __print_flags(EXPR, "sep", { v, "NAME" }, ...)
//   (and the _u64 variants of both)
//
// libtraceevent parses them (KVMTrace's EventFormats hands them over as `PrintFormatTable`s); this module
// only keeps them as ordered code → name tables, next to the built-in ones.

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
}

/// One `__print_symbolic`/`__print_flags` table of an event's print fmt, as libtraceevent parsed it
/// (`tep_event->print_fmt.args`; KVMTrace's `EventFormats` reads them).
public struct PrintFormatTable: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        case symbolic, flags
    }

    public var kind: Kind
    /// The first field the printed expression reads (`exit_reason`), or "" when it reads none.
    public var field: String
    /// The printed expression as C, e.g. `REC->exit_reason & 0xffff` (libtraceevent keeps no parentheses
    /// that precedence does not need).
    public var expression: String
    /// `__print_flags`' separator; "" for symbolic tables.
    public var separator: String
    public var table: SymbolTable

    public init(kind: Kind, field: String, expression: String, separator: String = "", table: SymbolTable) {
        self.kind = kind
        self.field = field
        self.expression = expression
        self.separator = separator
        self.table = table
    }
}
