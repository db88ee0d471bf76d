import KVMExits
/// A storm rule, as given to `--alert`: a rate or a latency percentile of one exit reason, compared with a
/// threshold, per VM or per vCPU, optionally for a sustained time.
///
/// ## Grammar
///
/// ```
/// rule      := function '(' reason ')' compare threshold clause*
///            | resource '(' ('vm'|'vcpu') ')' compare NUMBER '%' clause*
///            | 'disk_latency' '(' 'vm' ')' compare NUMBER ('ns'|'us'|'µs'|'ms'|'s') clause*
/// function  := 'rate' | 'p50' | 'p90' | 'p99' | 'p999'
/// resource  := 'cpu' | 'wait'
/// reason    := '*' | NAME | CODE                NAME: letters, digits, '_' (any spelling); CODE: decimal
/// compare   := '>' | '<'
/// threshold := NUMBER '/s'                      for rate
///            | NUMBER ('ns'|'us'|'µs'|'ms'|'s') for a percentile
/// clause    := 'for' NUMBER ('ms'|'s'|'m')      sustained this long (default 0: the first evaluation)
///            | 'per' ('vm'|'vcpu')              scope (default: per vm)
/// ```
///
/// NUMBER is decimal (`50000`, `2.5`, `1e3`); spaces between tokens are optional. A reason is a kvm_exit reason
/// (`EPT_MISCONFIG`, `MSR_WRITE`, `HLT`), a userspace exit reason (`KVM_EXIT_IO`) or an event name (`kvm_pio`,
/// rates only); `*` is every kvm_exit reason. Latency percentiles are of exit-handling time (kvm_exit → next
/// kvm_entry); `*` leaves out blocking reasons (HLT and the like: time the guest sleeps, not time the host
/// works), which count only when the rule names them.
///
/// Resource conditions read /proc, not the trace: `cpu(vm)` is the VM process's host CPU time over the interval
/// as a share of one CPU (htop's %: 200 = two CPUs busy), `cpu(vcpu)` one vCPU thread's; `wait(vm)` is its vCPU
/// threads' run-queue wait (runnable, waiting for a host CPU: steal seen from the host) over the interval, summed
/// over vCPUs, `wait(vcpu)` one vCPU thread's. Their alerts carry the reason `cpu` or `wait`.
/// `disk_latency(vm)` is the average time per read or write request completed by the VM's block devices over
/// the interval (QEMU's `query-blockstats` through `--qmp`, or libvirt's `block.N.rd.times`/`wr.times` for the
/// domains it runs: Δ(rd_total_time_ns + wr_total_time_ns) / Δ(rd_operations + wr_operations)); an interval
/// without requests has no data. Its alerts carry the reason
/// `disk_latency`.
///
/// Examples: `rate(EPT_MISCONFIG) > 50000/s for 5s`, `p99(MSR_WRITE) > 20us for 10s per vcpu`,
/// `rate(*) > 200000/s`, `rate(kvm_pio) > 1000/s for 1s`, `cpu(vm) > 90% for 1m`, `wait(vcpu) > 10%`,
/// `disk_latency(vm) > 5ms for 30s`.
public struct StormRule: Sendable, Equatable, CustomStringConvertible {
    public enum Function: Sendable, Equatable {
        /// Events per second over the evaluation interval.
        case rate
        /// A latency percentile (0...100) of the exits handled during the evaluation interval, ns.
        case percentile(Double)
        /// Host CPU time over the interval, % of one CPU (from /proc, not the trace).
        case cpu
        /// vCPU run-queue wait over the interval, % of the interval (from /proc, not the trace).
        case wait
        /// Average time per disk request over the interval, ns (from QMP, not the trace).
        case diskLatency

        /// Whether the rule reads /proc or QMP (``ResourceUse``) rather than the trace.
        public var isResource: Bool { self == .cpu || self == .wait || self == .diskLatency }
    }

    public enum Comparison: String, Sendable {
        case above = ">"
        case below = "<"
    }

    public enum Scope: String, Sendable {
        case vm
        case vcpu
    }

    /// The rule as written (trimmed).
    public var text: String
    public var function: Function
    /// `*` or a reason / event name.
    public var reason: String
    public var comparison: Comparison
    /// Per second for rates, nanoseconds for percentiles and `disk_latency`, % for `cpu` and `wait`.
    public var threshold: Double
    /// How long the condition must hold before the rule fires; 0 fires on the first evaluation that holds.
    public var forSeconds: Double
    public var scope: Scope

    public var description: String { text }

    /// Whether `value` meets the condition.
    public func holds(_ value: Double) -> Bool {
        switch comparison {
        case .above: value > threshold
        case .below: value < threshold
        }
    }

    /// Parses a rule; throws one line naming the problem and its column.
    public init(parsing source: String) throws(StormRuleError) {
        var p = Parser(source)
        self = try p.rule()
    }

    init(text: String, function: Function, reason: String, comparison: Comparison, threshold: Double,
         forSeconds: Double, scope: Scope) {
        self.text = text
        self.function = function
        self.reason = reason
        self.comparison = comparison
        self.threshold = threshold
        self.forSeconds = forSeconds
        self.scope = scope
    }
}

/// A malformed rule: `bad rule 'TEXT': PROBLEM at column N` (or `at end of rule`).
public struct StormRuleError: Error, Sendable, Equatable, CustomStringConvertible {
    public var description: String
    public init(description: String) { self.description = description }
}

/// The rule parser: a hand-written lexer over Unicode scalars (so `µs` is one unit) and a recursive descent.
struct Parser {
    enum Token: Equatable {
        case word(String)  // letters, digits, '_', 'µ' (starting with a letter, '_' or 'µ')
        case number(Double)
        case symbol(String)  // ( ) * /
        case compare(String)  // a run of < > = !
        case end
    }

    let text: String
    let scalars: [Unicode.Scalar]
    var pos = 0

    init(_ source: String) {
        var t = Substring(source)
        while let f = t.first, f.isWhitespace { t.removeFirst() }
        while let l = t.last, l.isWhitespace { t.removeLast() }
        text = String(t)
        scalars = Array(text.unicodeScalars)
    }

    static func isWordStart(_ c: Unicode.Scalar) -> Bool {
        (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") || c == "_" || c == "µ" || c == "\u{03BC}"
    }

    static func isWord(_ c: Unicode.Scalar) -> Bool { isWordStart(c) || (c >= "0" && c <= "9") }
    static func isDigit(_ c: Unicode.Scalar) -> Bool { c >= "0" && c <= "9" }

    /// Reads the next token: its 1-based column (nil at the end of the rule).
    mutating func next() -> (Token, Int?) {
        while pos < scalars.count, scalars[pos] == " " || scalars[pos] == "\t" { pos += 1 }
        let start = pos
        guard start < scalars.count else { return (.end, nil) }
        let c = scalars[start]
        pos += 1
        func take(while keep: (Unicode.Scalar) -> Bool) {
            while pos < scalars.count, keep(scalars[pos]) { pos += 1 }
        }
        let token: Token
        if Self.isDigit(c) {
            take(while: Self.isDigit)
            if pos < scalars.count, scalars[pos] == "." {
                pos += 1
                take(while: Self.isDigit)
            }
            // An exponent, as PromQL and printf write one (`1e3`, `2.5E-2`): only with its digits (no unit
            // starts with e).
            if pos < scalars.count, scalars[pos] == "e" || scalars[pos] == "E" {
                var end = pos + 1
                if end < scalars.count, scalars[end] == "+" || scalars[end] == "-" { end += 1 }
                if end < scalars.count, Self.isDigit(scalars[end]) {
                    pos = end
                    take(while: Self.isDigit)
                }
            }
            token = .number(Double(lexeme(from: start)) ?? 0)
        } else if Self.isWordStart(c) {
            take(while: Self.isWord)
            token = .word(lexeme(from: start))
        } else if Self.isCompare(c) {
            take(while: Self.isCompare)
            token = .compare(lexeme(from: start))
        } else {
            token = .symbol(String(c))
        }
        return (token, start + 1)
    }

    func lexeme(from start: Int) -> String {
        var s = ""
        s.unicodeScalars.append(contentsOf: scalars[start..<pos])
        return s
    }

    static func isCompare(_ c: Unicode.Scalar) -> Bool { c == "<" || c == ">" || c == "=" || c == "!" }

    func error(_ problem: String, _ column: Int?) -> StormRuleError {
        let at = column.map { "at column \($0)" } ?? "at end of rule"
        // The rule is echoed with control characters escaped: the error stays one line.
        var shown = ""
        for c in text.unicodeScalars {
            shown += c.properties.generalCategory == .control ? c.escaped(asASCII: true) : String(c)
        }
        return StormRuleError(description: "bad rule '\(shown)': \(problem) \(at)")
    }

    mutating func expectSymbol(_ s: String, _ problem: String) throws(StormRuleError) {
        let (t, col) = next()
        guard t == .symbol(s) else { throw error(problem, col) }
    }

    mutating func rule() throws(StormRuleError) -> StormRule {
        let functionProblem = "expected 'rate', a percentile (p50, p90, p99, p999), 'cpu', 'wait' or 'disk_latency'"
        let (f, fcol) = next()
        let function: StormRule.Function
        switch f {
        case .word("cpu"), .word("wait"): return try resourceRule(f == .word("cpu") ? .cpu : .wait)
        case .word("disk_latency"): return try resourceRule(.diskLatency)
        case .word("rate"): function = .rate
        case .word("p50"): function = .percentile(50)
        case .word("p90"): function = .percentile(90)
        case .word("p99"): function = .percentile(99)
        case .word("p999"): function = .percentile(99.9)
        default: throw error(functionProblem, fcol)
        }
        try expectSymbol("(", "expected '('")
        let (r, rcol) = next()
        let reason: String
        switch r {
        case .symbol("*"): reason = "*"
        case .word(let w): reason = w
        case .number(let n) where n >= 0 && n < 4_294_967_296 && n == n.rounded(): reason = String(UInt32(n))  // a code
        default: throw error("expected an exit reason, an event name or '*'", rcol)
        }
        if case .percentile = function, reason.hasPrefix("kvm_") || reason.hasPrefix("KVM_EXIT_") {
            throw error("a percentile needs a kvm_exit reason (exit latency), not '\(reason)',", rcol)
        }
        try expectSymbol(")", "expected ')'")
        let comparison = try self.comparison()
        let threshold: Double
        switch function {
        case .rate:
            let n = try number("expected a rate (e.g. 50000/s)")
            let (slash, scol) = next()
            let (s, _) = next()
            guard slash == .symbol("/"), s == .word("s") else { throw error("expected '/s' after the rate", scol) }
            threshold = n
        case .cpu, .wait, .diskLatency:
            threshold = 0  // parsed by resourceRule
        case .percentile:
            let n = try number("expected a latency (e.g. 20us)")
            let (u, ucol) = next()
            guard case .word(let unit) = u, let scale = Self.latencyUnits[unit] else {
                throw error("expected a latency unit (ns, us, µs, ms, s)", ucol)
            }
            threshold = n * scale
        }
        var forSeconds: Double?
        var scope: StormRule.Scope?
        while true {
            let (k, kcol) = next()
            switch k {
            case .end:
                return StormRule(text: text, function: function, reason: reason, comparison: comparison,
                                 threshold: threshold, forSeconds: forSeconds ?? 0, scope: scope ?? .vm)
            case .word("for"):
                guard forSeconds == nil else { throw error("'for' given twice", kcol) }
                forSeconds = try duration()
            case .word("per"):
                guard scope == nil else { throw error("'per' given twice", kcol) }
                scope = try scopeWord()
            default:
                throw error("expected 'for', 'per' or the end of the rule", kcol)
            }
        }
    }

    /// `>` or `<`.
    mutating func comparison() throws(StormRuleError) -> StormRule.Comparison {
        let (c, col) = next()
        switch c {
        case .compare(">"): return .above
        case .compare("<"): return .below
        default: throw error("expected a comparison '>' or '<'", col)
        }
    }

    /// `vm` or `vcpu` (after `per`, or a resource rule's argument).
    mutating func scopeWord() throws(StormRuleError) -> StormRule.Scope {
        let (t, col) = next()
        switch t {
        case .word("vm"): return .vm
        case .word("vcpu"): return .vcpu
        default: throw error("expected 'vm' or 'vcpu'", col)
        }
    }

    /// The duration after `for`, seconds.
    mutating func duration() throws(StormRuleError) -> Double {
        let n = try number("expected a duration (e.g. 5s)")
        let (u, col) = next()
        guard case .word(let unit) = u, let scale = Self.durationUnits[unit] else {
            throw error("expected a duration unit (ms, s, m)", col)
        }
        return n * scale
    }

    /// `cpu(vm) > 90% for 1m`, `wait(vcpu) > 10%`: the scope is the argument; a threshold in %.
    mutating func resourceRule(_ function: StormRule.Function) throws(StormRuleError) -> StormRule {
        try expectSymbol("(", "expected '('")
        let scopeColumn = pos + 1
        let scope = try scopeWord()
        if function == .diskLatency && scope != .vm {
            throw error("disk_latency is per VM (its block devices): expected 'vm'", scopeColumn)
        }
        try expectSymbol(")", "expected ')'")
        let comparison = try self.comparison()
        let threshold: Double
        if function == .diskLatency {
            let n = try number("expected a latency (e.g. 5ms)")
            let (u, ucol) = next()
            guard case .word(let unit) = u, let scale = Self.latencyUnits[unit] else {
                throw error("expected a latency unit (ns, us, µs, ms, s)", ucol)
            }
            threshold = n * scale
        } else {
            threshold = try number("expected a percentage (e.g. 90%)")
            try expectSymbol("%", "expected '%' after the percentage")
        }
        let reason = switch function {
        case .cpu: "cpu"
        case .diskLatency: "disk_latency"
        default: "wait"
        }
        var forSeconds: Double?
        while true {
            let (k, kcol) = next()
            switch k {
            case .end:
                return StormRule(text: text, function: function, reason: reason, comparison: comparison,
                                 threshold: threshold, forSeconds: forSeconds ?? 0, scope: scope)
            case .word("for"):
                guard forSeconds == nil else { throw error("'for' given twice", kcol) }
                forSeconds = try duration()
            default:
                throw error("expected 'for' or the end of the rule (the scope is cpu(vm|vcpu)'s argument)", kcol)
            }
        }
    }

    mutating func number(_ problem: String) throws(StormRuleError) -> Double {
        let (t, col) = next()
        guard case .number(let n) = t else { throw error(problem, col) }
        return n
    }

    static let latencyUnits: [String: Double] = ["ns": 1, "us": 1e3, "µs": 1e3, "\u{03BC}s": 1e3, "ms": 1e6, "s": 1e9]
    static let durationUnits: [String: Double] = ["ms": 1e-3, "s": 1, "m": 60]
}
