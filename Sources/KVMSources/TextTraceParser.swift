import KVMExits

/// The line parser behind ``TextTraceReader``: bytes in, ``TraceEvent``s out.
///
/// A record line is found by its `TIMESTAMP: EVENT:` pair (``header(_:_:_:)``); before it come, as each mode
/// prints them, `COMM-TID [CPU] FLAGS?` (kernel, trace-cmd; `(TGID)` before `[CPU]` with record-tgid),
/// `COMM-TID CPU+FLAGS` (trace-cmd report -l), or perf script's `COMM PID/TID [CPU]` with any column left out.
/// COMM may hold spaces ("CPU 1/KVM"). Fields are the kernel's text, libtraceevent's kvm plugin text, or raw
/// `key=value` (-R, `[FAILED TO PARSE]`). Numbers that do not fit their field skip the line (counted, never
/// wrapped). Per record the work is index arithmetic on the buffer plus hash lookups (event name, and for
/// exits the reason name) that allocate nothing once a name has been seen.
struct TextTraceParser {
    var catalog = EventCatalog()
    /// Event token ("kvm_exit", "kvm:kvm_exit") → catalog index, or -1 for events that are not kvm's.
    var eventTable = ByteKeyTable<Int32>()
    var roles: [EventRole] = []
    /// Exit reason text → (isa, code).
    var reasonTable = ByteKeyTable<(UInt8, UInt32)>()
    var events: [TraceEvent] = []
    var threads: [Int32: ThreadInfo] = [:]
    var lastTid: Int32 = .min
    var lastTidNeedsVCPU = false
    var lossPending = [Bool](repeating: false, count: 1024)
    var lost: UInt64 = 0
    var lostUnknown: UInt64 = 0
    var records = 0
    var joined = 0
    /// Callchain lines (perf script -g, perf kvm stat record's samples): skipped, never joined to the record.
    var callchain = 0
    var skipped = 0
    var lastTS: UInt64 = 0
    var unordered = false
    var sawTGID = false
    var sawPerf = false
    var sawKernelText = false
    var defaultISA: ISA = .vmx
    /// Whether an unambiguous reason name or an `isa=` field has shown the trace's ISA.
    var isaSettled = false
    var unknownReasons: [String] = []
    var scratch: [UInt8] = []
    var resolver: ReasonResolver?
    /// 1-based number of the line being parsed, and of the record being read (a record is read once the
    /// line after it shows it is complete).
    var line = 0
    var recordLine = 0
    /// Lines neither records, comments, loss notes nor joined continuations.
    var prose = 0
    /// Record lines skipped because a number in them does not fit (a 20-digit tid, a CPU of 999999999999,
    /// a timestamp at or past 2^64 ns), by event name; the first such line and why.
    var malformed = 0
    var malformedByEvent: [String: Int] = [:]
    var firstMalformed: (line: Int, why: String)?
    /// The first line that was neither a record, a comment, a loss note nor a continuation.
    var firstUnreadable: (line: Int, text: String)?
    /// Threads of records without a thread id, told apart by comm: comm → synthetic (negative) tid.
    var commThreads = ByteKeyTable<Int32>()
    var nextSyntheticTID: Int32 = -2
    var missingTID = false
    var missingCPU = false
    var sawCounter = false
    var sawSeconds = false
    var sawLatency = false
    var sawRaw = false
    /// Counter ticks per second (`--ts2secs`), to turn integer counter timestamps into nanoseconds.
    var counterHz: UInt64?
    /// A number in the fields of the record being read did not fit.
    var fieldOverflow = false
    /// Reasons whose spelling exists in several ISAs, resolved before the trace showed its ISA: (the pick,
    /// every candidate).
    var ambiguous: [(pick: ReasonKey, all: [ReasonKey])] = []

    struct ThreadInfo {
        var tgid: Int32?
        var comm: String?
        var vcpu: UInt32?
    }

    /// Where the parts of a record line are (indices into the line's buffer).
    struct Header {
        var tid: Int32 = 0
        var hasTID = true
        var tgid: Int32 = -1
        /// The CPU column, -1 when the line has none.
        var cpu: Int = -1
        var ts: UInt64 = 0
        /// The timestamp is an integer counter value (`-C x86-tsc`, `counter`), not seconds.
        var counter = false
        /// trace-cmd report -l: CPU fused with the latency flags.
        var latency = false
        /// Why the line is unusable (a number out of range), or nil.
        var malformed: StaticString?
        var commStart = 0
        var commEnd = 0
        var nameStart = 0
        var nameEnd = 0
        var fieldsStart = 0
        var perf = false
        var flagsColumn = false
    }

    typealias Buffer = UnsafeBufferPointer<UInt8>

    // MARK: Lines

    mutating func parse(_ p: Buffer) {
        let n = p.count
        var i = 0
        var pending: Header?
        var pendStart = 0
        var pendEnd = 0
        var pendJoined = false
        var pendLine = 0
        var inCallchain = false

        func flush(_ parser: inout TextTraceParser) {
            guard let h = pending else { return }
            parser.recordLine = pendLine
            if pendJoined {
                let bytes = parser.scratch
                bytes.withUnsafeBufferPointer { b in
                    if let h2 = Self.header(b, 0, b.count) { parser.record(b, h2, b.count) }
                }
            } else {
                parser.record(p, h, pendEnd)
            }
            pending = nil
            pendJoined = false
        }

        while i < n {
            var j = i
            while j < n && p[j] != 10 { j += 1 }
            line += 1
            var e = j
            if e > i && p[e - 1] == 13 { e -= 1 }
            var f = i
            while f < e && (p[f] == 32 || p[f] == 9) { f += 1 }
            let afterRecordOrChain = pending != nil || inCallchain
            inCallchain = false
            if f == e {
                flush(&self)
            } else if p[f] == 35 {  // '#': comment
                flush(&self)
                skipped += 1
            } else if Self.isLossNote(p, f, e) {
                flush(&self)
                lossNote(p, f, e)
            } else if let h = Self.header(p, i, e) {
                flush(&self)
                if let why = h.malformed {
                    malformedLine(p, h, why)
                } else {
                    pending = h
                    pendStart = i
                    pendEnd = e
                    pendLine = line
                }
            } else if afterRecordOrChain, f > i, Self.isCallchainLine(p, f, e) {
                // The record above is whole: its callchain follows, one frame a line.
                flush(&self)
                callchain += 1
                inCallchain = true
            } else if pending != nil, Self.continues(p, f, e) {
                if !pendJoined {
                    scratch.removeAll(keepingCapacity: true)
                    scratch.append(contentsOf: p[pendStart..<pendEnd])
                    pendJoined = true
                }
                scratch.append(32)
                scratch.append(contentsOf: p[f..<e])
                joined += 1
            } else {
                // Prose (a mail's text between pasted records): never glued onto a record.
                flush(&self)
                skipped += 1
                if !Self.isReportHeader(p, f, e) {
                    prose += 1
                    if firstUnreadable == nil { firstUnreadable = (line, String(decoding: p[f..<e], as: UTF8.self)) }
                }
            }
            i = j + 1
        }
        flush(&self)
        finish()
    }

    /// After the last line: exits whose reason name was ambiguous (`hlt`: SVM, or a 2.6-era VMX) and
    /// was read before the trace showed its ISA take the ISA the rest of the trace has.
    mutating func finish() {
        guard isaSettled, !ambiguous.isEmpty else { return }
        var remap: [ReasonKey: ReasonKey] = [:]
        for a in ambiguous where a.pick.isa != defaultISA {
            if let k = a.all.first(where: { $0.isa == defaultISA }) { remap[a.pick] = k }
        }
        guard !remap.isEmpty else { return }
        for i in events.indices {
            guard let isa = ISA(rawValue: events[i].isa),
                  let k = remap[ReasonKey(isa: isa, code: events[i].reason)] else { continue }
            events[i].isa = k.isa.rawValue
            events[i].reason = k.code
        }
    }

    /// trace-cmd report's header lines: `cpus=2`, `version = 6`.
    static func isReportHeader(_ p: Buffer, _ s: Int, _ e: Int) -> Bool {
        (e - s > 5 && tokenIs(p, s, s + 5, "cpus=")) || (e - s > 7 && tokenIs(p, s, s + 7, "version"))
    }

    /// Whether an indented line (from its first non-blank byte `s`) is a frame of a callchain that perf script
    /// prints under a sample (`-g`, perf kvm stat record): `ADDRESS SYMBOL (DSO)` with the address in lower-case
    /// hex (`%16lx`), e.g. `ffffffffc0a1b2c3 vmx_handle_exit+0x123 ([kvm_intel])`; without the DSO column, an
    /// address of 8 or more digits followed by a symbol that is no field keyword (a record broken after `rip`
    /// continues `ffffffff81064a4e info 0 0`, which stays a continuation).
    static func isCallchainLine(_ p: Buffer, _ s: Int, _ e: Int) -> Bool {
        var pos = s
        let (a, b) = nextToken(p, &pos, e)
        guard b > a, b - a <= 16 else { return false }
        for k in a..<b where !(isDigit(p[k]) || (p[k] >= 97 && p[k] <= 102)) { return false }
        let (c, d) = nextToken(p, &pos, e)
        guard d > c else { return false }
        var last = e
        while last > d && isSpace(p[last - 1]) { last -= 1 }
        if p[last - 1] == 41 {  // ')': the DSO column, `(…)`
            var k = last - 1
            while k > c && p[k] != 40 { k -= 1 }
            if p[k] == 40 && k > c && isSpace(p[k - 1]) { return true }
        }
        guard b - a >= 8 else { return false }
        for w in fieldKeywords where tokenIs(p, c, d, w) { return false }
        return true
    }

    /// Whether a line is the rest of a record that a mail client broke: every word of it is something a
    /// record's fields hold (a number, `key=value`, punctuation, an upper-case name, a field keyword, an exit
    /// reason's spelling). A line with a word of prose ("and so on.") is not joined.
    static func continues(_ p: Buffer, _ s: Int, _ e: Int) -> Bool {
        var pos = s
        while true {
            let (a, b) = nextToken(p, &pos, e)
            if a == b { return true }
            if !isFieldWord(p, a, b) { return false }
        }
    }

    static func isFieldWord(_ p: Buffer, _ a: Int, _ b: Int) -> Bool {
        var lower = false
        for k in a..<b {
            let c = p[k]
            if isDigit(c) { return true }
            switch c {
            case 61, 58, 40, 41, 91, 93, 123, 125, 44, 35, 60, 62, 95, 47: return true  // = : ( ) [ ] { } , # < > _ /
            default: break
            }
            if c >= 97 && c <= 122 { lower = true }
        }
        if !lower { return true }  // HLT, GP
        for w in fieldKeywords where tokenIs(p, a, b, w) { return true }
        let word = String(decoding: p[a..<b], as: UTF8.self)
        return !ReasonResolver.builtin.keys(for: word).isEmpty
    }

    static let fieldKeywords: [StaticString] = [
        "reason", "rip", "vcpu", "info", "intr", "excp", "at", "size", "count", "val", "len", "gpa", "read",
        "write", "mmio", "errno", "isa", "unload", "load", "PC", "ret",
    ]

    /// A record line whose numbers do not fit: counted, never wrapped into a wrong value.
    mutating func malformedLine(_ p: Buffer, _ h: Header, _ why: StaticString) {
        malformed += 1
        let name = h.nameEnd > h.nameStart ? String(decoding: p[h.nameStart..<h.nameEnd], as: UTF8.self) : "?"
        malformedByEvent[name, default: 0] += 1
        if firstMalformed == nil { firstMalformed = (h.malformed != nil ? line : recordLine, why.description) }
    }

    /// `CPU:N [LOST n EVENTS]` (kernel), `CPU:N [n EVENTS DROPPED]`, `CPU:N [EVENTS DROPPED]` (trace-cmd).
    static func isLossNote(_ p: Buffer, _ s: Int, _ e: Int) -> Bool {
        guard e - s > 8, p[s] == 67, p[s + 1] == 80, p[s + 2] == 85, p[s + 3] == 58 else { return false }  // "CPU:"
        var k = s + 4
        while k < e && isDigit(p[k]) { k += 1 }
        return k > s + 4 && k < e - 1 && p[k] == 32 && p[k + 1] == 91  // " ["
    }

    mutating func lossNote(_ p: Buffer, _ s: Int, _ e: Int) {
        var k = s + 4
        var cpu = 0
        while k < e && Self.isDigit(p[k]) { cpu = cpu &* 10 &+ Int(p[k] - 48); k += 1 }
        k += 2
        if Self.tokenIs(p, k, min(e, k + 5), "LOST ") { k += 5 }
        var count: UInt64 = 0
        var digits = 0
        while k < e && Self.isDigit(p[k]) { count = count &* 10 &+ UInt64(p[k] - 48); k += 1; digits += 1 }
        if digits > 0 { lost &+= count } else { lostUnknown += 1 }
        lossPending[cpu & 1023] = true
    }

    // MARK: Record header

    @inline(__always) static func isDigit(_ c: UInt8) -> Bool { c &- 48 < 10 }
    @inline(__always) static func isSpace(_ c: UInt8) -> Bool { c == 32 || c == 9 }

    /// The previous whitespace-separated token ending at or before `pos` (start, end); start == end at `s`.
    @inline(__always)
    static func prevToken(_ p: Buffer, _ s: Int, _ pos: inout Int) -> (Int, Int) {
        var t = pos
        while t > s && isSpace(p[t - 1]) { t -= 1 }
        var a = t
        while a > s && !isSpace(p[a - 1]) { a -= 1 }
        pos = a
        return (a, t)
    }

    /// A decimal number of at most `limit`, or nil when it has no digits, another character or is larger.
    @inline(__always)
    static func decimal(_ p: Buffer, _ s: Int, _ e: Int, limit: UInt64) -> UInt64? {
        guard e > s, e - s <= 20 else { return nil }
        var v: UInt64 = 0
        for k in s..<e {
            guard isDigit(p[k]) else { return nil }
            let (m, o1) = v.multipliedReportingOverflow(by: 10)
            let (a, o2) = m.addingReportingOverflow(UInt64(p[k] - 48))
            if o1 || o2 { return nil }
            v = a
        }
        return v <= limit ? v : nil
    }

    @inline(__always)
    static func allDigits(_ p: Buffer, _ s: Int, _ e: Int) -> Bool {
        guard e > s else { return false }
        for k in s..<e where !isDigit(p[k]) { return false }
        return true
    }

    /// The latency format's flag characters (irqs-off, need-resched, hard/softirq, preempt depth).
    @inline(__always)
    static func isFlagChar(_ c: UInt8) -> Bool {
        switch c {
        case 46, 100, 68, 88, 78, 110, 112, 72, 104, 115, 83, 98, 66, 122, 90: true  // . d D X N n p H h s S b B z Z
        default: isDigit(c)
        }
    }

    /// Parses the header of a record line, or nil if the line does not start a record.
    ///
    /// The record is found by its `TIMESTAMP: EVENT:` pair (seconds with a fraction, or an integer counter
    /// value when a CPU column precedes it); what comes before is read from the right: latency flags fused
    /// with the CPU (`trace-cmd report -l`), flag columns after `[CPU]`, `[CPU]`, `(TGID)`, then `COMM-TID`
    /// (kernel, trace-cmd), `COMM PID/TID`, `COMM TID` or `COMM` alone (perf script with any `-F`).
    static func header(_ p: Buffer, _ s: Int, _ e: Int) -> Header? {
        var h = Header()
        // 1. "TIMESTAMP:" followed by "EVENT:" (perf may put a sample period between them).
        var pos = s
        var tsStart = -1
        var tsEnd = -1
        while true {
            let (a, b) = nextToken(p, &pos, e)
            if a == b { return nil }
            guard b - a >= 2, p[b - 1] == 58, isDigit(p[a]) else { continue }
            var dot = -1
            var ok = true
            for k in a..<(b - 1) {
                if p[k] == 46 && dot < 0 && k > a { dot = k } else if !isDigit(p[k]) { ok = false; break }
            }
            guard ok, dot != b - 2 else { continue }
            var look = pos
            var (x, y) = nextToken(p, &look, e)
            // perf's sample period, or trace-cmd report --ts-diff's "(+12)", may sit before the event.
            if x < y, allDigits(p, x, y) || (y - x >= 3 && p[x] == 40 && p[x + 1] == 43 && p[y - 1] == 41) {
                (x, y) = nextToken(p, &look, e)
            }
            guard y - x >= 2, p[y - 1] == 58, !isDigit(p[x]) else { continue }
            var clean = true
            for k in x..<(y - 1) where p[k] == 61 || p[k] == 40 { clean = false }  // '=' '('
            guard clean else { continue }
            tsStart = a
            tsEnd = b - 1
            h.counter = dot < 0
            h.nameStart = x
            h.nameEnd = y - 1
            h.fieldsStart = y
            if let d = dot >= 0 ? dot : nil {
                guard let sec = decimal(p, a, d, limit: 18_446_744_073) else { h.malformed = "timestamp out of range"; break }
                var frac: UInt64 = 0
                var digits = 0
                for k in (d + 1)..<tsEnd where digits < 9 { frac = frac * 10 + UInt64(p[k] - 48); digits += 1 }
                while digits < 9 { frac *= 10; digits += 1 }
                let (ns, o) = (sec * 1_000_000_000).addingReportingOverflow(frac)
                if o { h.malformed = "timestamp out of range" } else { h.ts = ns }
            } else {
                guard let v = decimal(p, a, tsEnd, limit: .max) else { h.malformed = "timestamp out of range"; break }
                h.ts = v
            }
            break
        }
        guard tsStart >= 0 else { return nil }
        // 2. What precedes the timestamp, from the right.
        var cur = tsStart
        var (x, y) = prevToken(p, s, &cur)
        var cpuFound = false
        var threadEnd = tsStart
        if x < y, isDigit(p[x]), !allDigits(p, x, y) {
            // trace-cmd report -l: the CPU fused with the latency flags ("0.....", "3d..1").
            var d = x
            while d < y && isDigit(p[d]) { d += 1 }
            var flags = true
            for k in d..<y where !isFlagChar(p[k]) { flags = false }
            if flags, y - d >= 3, d > x {
                guard let c = decimal(p, x, d, limit: 65535) else { h.malformed = "CPU out of range"; return h }
                h.cpu = Int(c)
                h.latency = true
                cpuFound = true
                threadEnd = x
            }
        }
        if !cpuFound {
            // Up to five flag columns after "[CPU]" (kernel irq-info, trace-cmd), then "[CPU]".
            var look = tsStart
            for _ in 0..<6 {
                let (a, b) = prevToken(p, s, &look)
                if a == b { break }
                if b - a >= 3, p[a] == 91, p[b - 1] == 93, allDigits(p, a + 1, b - 1) {
                    guard let c = decimal(p, a + 1, b - 1, limit: 65535) else { h.malformed = "CPU out of range"; return h }
                    h.cpu = Int(c)
                    cpuFound = true
                    h.flagsColumn = b != prevTokenEnd(p, s, tsStart)
                    threadEnd = a
                    break
                }
                var flagLike = true
                for k in a..<b where !isFlagChar(p[k]) { flagLike = false }
                if !flagLike || b - a > 8 { break }
            }
        }
        // 3. The thread: "(TGID)" then COMM-TID, COMM PID/TID, COMM TID or COMM.
        var b = threadEnd
        while b > s && isSpace(p[b - 1]) { b -= 1 }
        if b > s, p[b - 1] == 41 {  // ')': record-tgid column "(  1234)" or "(-------)"
            var o = b - 2
            while o > s && p[o] != 40 { o -= 1 }
            guard p[o] == 40 else { return nil }
            var d0 = o + 1
            while d0 < b - 1 && isSpace(p[d0]) { d0 += 1 }
            if allDigits(p, d0, b - 1) {
                guard let v = decimal(p, d0, b - 1, limit: UInt64(Int32.max)) else { h.malformed = "TGID out of range"; return h }
                h.tgid = Int32(v)
            }
            b = o
            while b > s && isSpace(p[b - 1]) { b -= 1 }
        }
        cur = b
        (x, y) = prevToken(p, s, &cur)
        var commEnd = b
        if x == y {
            // Nothing before (perf script -F time,event,trace) or only the CPU (-F cpu,time,…).
            h.hasTID = false
            h.perf = true
        } else {
            var dash = y - 1
            while dash > x && isDigit(p[dash]) { dash -= 1 }
            if dash < y - 1, p[dash] == 45, dash > x || cpuFound {  // COMM-TID
                guard let t = decimal(p, dash + 1, y, limit: UInt64(Int32.max)) else { h.malformed = "thread id out of range"; return h }
                h.tid = Int32(t)
                commEnd = dash
            } else if dash < y - 1, p[dash] == 47, dash > x, allDigits(p, x, dash) {  // perf PID/TID
                guard let t = decimal(p, dash + 1, y, limit: UInt64(Int32.max)),
                      let g = decimal(p, x, dash, limit: UInt64(Int32.max)) else { h.malformed = "thread id out of range"; return h }
                h.tid = Int32(t)
                h.tgid = Int32(g)
                h.perf = true
                commEnd = x
            } else if allDigits(p, x, y) {  // perf COMM TID
                guard let t = decimal(p, x, y, limit: UInt64(Int32.max)) else { h.malformed = "thread id out of range"; return h }
                h.tid = Int32(t)
                h.perf = true
                commEnd = x
            } else {
                // No thread id: perf script -F comm,time,… (a comm is at most 16 bytes).
                h.hasTID = false
                h.perf = true
                var c0 = s
                while c0 < b && isSpace(p[c0]) { c0 += 1 }
                guard b - c0 <= 16 else { return nil }
            }
            if !cpuFound && !h.perf && h.tgid < 0 { h.perf = true }
        }
        if h.counter && !cpuFound { return nil }  // an integer "timestamp" needs a CPU column to be one
        while commEnd > s && isSpace(p[commEnd - 1]) { commEnd -= 1 }
        var c = s
        while c < commEnd && isSpace(p[c]) { c += 1 }
        h.commStart = c
        h.commEnd = max(c, commEnd)
        return h
    }

    /// The end of the token right before `pos`.
    static func prevTokenEnd(_ p: Buffer, _ s: Int, _ pos: Int) -> Int {
        var t = pos
        while t > s && isSpace(p[t - 1]) { t -= 1 }
        return t
    }

    // MARK: Tokens

    @inline(__always)
    static func tokenIs(_ p: Buffer, _ s: Int, _ e: Int, _ lit: StaticString) -> Bool {
        let n = lit.utf8CodeUnitCount
        guard e - s == n else { return false }
        let l = lit.utf8Start
        for x in 0..<n where p[s + x] != l[x] { return false }
        return true
    }

    /// The next whitespace-separated token at or after `pos` (start, end); start == end at the end.
    @inline(__always)
    static func nextToken(_ p: Buffer, _ pos: inout Int, _ e: Int) -> (Int, Int) {
        var s = pos
        while s < e && isSpace(p[s]) { s += 1 }
        var t = s
        while t < e && !isSpace(p[t]) { t += 1 }
        pos = t
        return (s, t)
    }

    /// A number: "0x…" or bare hex (`hex` true), else decimal; stops at the first other character (",").
    /// A value wider than 64 bits sets `overflow` (the caller skips the line) instead of wrapping.
    @inline(__always)
    static func number(_ p: Buffer, _ s: Int, _ e: Int, hex: Bool, overflow: inout Bool) -> UInt64 {
        var k = s
        var v: UInt64 = 0
        if e - s > 2, p[s] == 48, p[s + 1] | 0x20 == 120 { k += 2 }  // "0x"
        else if !hex {
            while k < e && isDigit(p[k]) {
                let (m, o1) = v.multipliedReportingOverflow(by: 10)
                let (a, o2) = m.addingReportingOverflow(UInt64(p[k] - 48))
                if o1 || o2 { overflow = true }
                v = a
                k += 1
            }
            return v
        }
        while k < e {
            let c = p[k]
            let d: UInt8
            if isDigit(c) { d = c - 48 } else if c | 0x20 >= 97 && c | 0x20 <= 102 { d = (c | 0x20) - 87 } else { break }
            if v >> 60 != 0 { overflow = true }
            v = v &<< 4 | UInt64(d)
            k += 1
        }
        return v
    }

    @inline(__always)
    mutating func number(_ p: Buffer, _ s: Int, _ e: Int, hex: Bool) -> UInt64 {
        Self.number(p, s, e, hex: hex, overflow: &fieldOverflow)
    }

    /// A vCPU number: values past UInt32 (or the "no vCPU" marker) are out of range.
    @inline(__always)
    mutating func vcpuNumber(_ p: Buffer, _ s: Int, _ e: Int) -> UInt32 {
        let v = number(p, s, e, hex: false)
        if v >= UInt64(TraceEvent.noVCPU) { fieldOverflow = true }
        return UInt32(truncatingIfNeeded: v)
    }

    // MARK: Records

    mutating func record(_ p: Buffer, _ h: Header, _ e: Int) {
        var index: Int32
        if let i = eventTable.find(p, h.nameStart, h.nameEnd) {
            index = i
        } else {
            index = addEvent(p, h)
        }
        guard index >= 0 else {
            records += 1
            return
        }
        var tid = h.tid
        if !h.hasTID { tid = syntheticTID(p, h) }
        let cpu = UInt16(truncatingIfNeeded: max(h.cpu, 0))
        var ev = TraceEvent(timestamp: h.ts, tid: tid, event: UInt16(index), cpu: cpu)
        if h.counter, let hz = counterHz {
            // ticks × 10^9 / hz, in 128 bits: exact, and out of range is reported, not wrapped.
            let wide = h.ts.multipliedFullWidth(by: 1_000_000_000)
            guard wide.high < hz else { return malformedLine(p, h, "timestamp out of range") }
            ev.timestamp = hz.dividingFullWidth(wide).quotient
        }
        fieldOverflow = false
        switch roles[Int(index)] {
        case .exit: exitFields(p, h.fieldsStart, e, &ev)
        case .entry: entryFields(p, h.fieldsStart, e, &ev)
        case .userspaceExit: userspaceExitFields(p, h.fieldsStart, e, &ev)
        case .pio: pioFields(p, h.fieldsStart, e, &ev)
        case .mmio: mmioFields(p, h.fieldsStart, e, &ev)
        case .count, .threadExit: break
        }
        if fieldOverflow { return malformedLine(p, h, "field value out of range") }
        records += 1
        if h.perf { sawPerf = true }
        if h.flagsColumn || h.tgid >= 0 && !h.perf { sawKernelText = true }
        if h.latency { sawLatency = true }
        if h.counter { sawCounter = true } else { sawSeconds = true }
        if !h.hasTID { missingTID = true }
        if h.cpu < 0 { missingCPU = true }
        if h.cpu >= 0 && lossPending[h.cpu & 1023] {
            lossPending[h.cpu & 1023] = false
            ev.flags = TraceEvent.afterLoss
        }
        if tid != lastTid || (lastTidNeedsVCPU && ev.vcpu != TraceEvent.noVCPU) { noteThread(p, h, tid, ev.vcpu) }
        if ev.timestamp < lastTS { unordered = true }
        lastTS = ev.timestamp
        events.append(ev)
    }

    /// A thread id for a record without one: one thread per comm (perf script -F comm,time,…), else one
    /// per CPU, else one for the whole trace. Negative, so it never collides with a real tid.
    mutating func syntheticTID(_ p: Buffer, _ h: Header) -> Int32 {
        if h.commEnd > h.commStart {
            if let t = commThreads.find(p, h.commStart, h.commEnd) { return t }
            let t = nextSyntheticTID
            nextSyntheticTID -= 1
            commThreads.insert(p, h.commStart, h.commEnd, t)
            return t
        }
        return h.cpu >= 0 ? -1_000_000 - Int32(h.cpu) : -1
    }

    /// First sight of an event token: a kvm event joins the catalog, anything else maps to -1.
    mutating func addEvent(_ p: Buffer, _ h: Header) -> Int32 {
        let token = String(decoding: p[h.nameStart..<h.nameEnd], as: UTF8.self)
        var system = "kvm"
        var name = token
        if let colon = token.firstIndex(of: ":") {
            system = String(token[..<colon])
            name = String(token[token.index(after: colon)...])
        }
        var index: Int32 = -1
        if system == "kvm" && name.hasPrefix("kvm_") && catalog.count < AggregateShard.maxEvents {
            index = Int32(catalog.add(system: "kvm", name: name))
            roles = catalog.entries.map(\.role)
        }
        eventTable.insert(p, h.nameStart, h.nameEnd, index)
        return index
    }

    mutating func noteThread(_ p: Buffer, _ h: Header, _ tid: Int32, _ vcpu: UInt32) {
        lastTid = tid
        if var t = threads[tid] {
            if t.vcpu == nil && vcpu != TraceEvent.noVCPU {
                t.vcpu = vcpu
                threads[tid] = t
            }
            lastTidNeedsVCPU = t.vcpu == nil
            return
        }
        let comm = String(decoding: p[h.commStart..<h.commEnd], as: UTF8.self)
        var t = ThreadInfo(tgid: h.tgid >= 0 ? h.tgid : nil, comm: comm == "<...>" || comm.isEmpty ? nil : comm)
        if h.tgid >= 0 { sawTGID = true }
        t.vcpu = t.comm.flatMap(Self.vcpu(fromComm:)) ?? (vcpu != TraceEvent.noVCPU ? vcpu : nil)
        threads[tid] = t
        lastTidNeedsVCPU = t.vcpu == nil
    }

    /// kernel: `vcpu N reason NAME [FLAGS] rip 0x… info1 0x… info2 …`; older kernels and libtraceevent:
    /// `reason NAME rip 0x… info A B`; arm64: `TRAP: HSR_EC: 0x0016 (HVC64), PC: 0x…`; raw fields
    /// (`trace-cmd report -R`, and the `[FAILED TO PARSE]` lines of trace-cmd 3.1 on newer kernels):
    /// `exit_reason=40 guest_rip=0x… isa=1 info1=2 … vcpu_id=0`, arm64 `esr_ec=22 ret=… vcpu_pc=…`.
    mutating func exitFields(_ p: Buffer, _ s: Int, _ e: Int, _ ev: inout TraceEvent) {
        var pos = s
        var rs = -1
        var re = -1
        var arm = false
        var rawReason: UInt64?
        var rawISA: UInt64?
        while true {
            let (a, b) = Self.nextToken(p, &pos, e)
            if a == b { break }
            if let eq = Self.equalSign(p, a, b) {
                // key=value (raw fields)
                let v = eq + 1
                if Self.tokenIs(p, a, eq, "exit_reason") { rawReason = number(p, v, b, hex: false) }
                else if Self.tokenIs(p, a, eq, "esr_ec") { rawReason = number(p, v, b, hex: false); arm = true }
                else if Self.tokenIs(p, a, eq, "isa") { rawISA = number(p, v, b, hex: false) }
                else if Self.tokenIs(p, a, eq, "guest_rip") || Self.tokenIs(p, a, eq, "vcpu_pc") {
                    ev.rip = number(p, v, b, hex: false)
                } else if Self.tokenIs(p, a, eq, "info1") { ev.detail = number(p, v, b, hex: false) }
                else if Self.tokenIs(p, a, eq, "vcpu_id") { ev.vcpu = vcpuNumber(p, v, b) }
                continue
            }
            if Self.tokenIs(p, a, b, "vcpu") {
                let (x, y) = Self.nextToken(p, &pos, e)
                if x < y { ev.vcpu = vcpuNumber(p, x, y) }
            } else if Self.tokenIs(p, a, b, "reason") {
                // The name runs to "rip" (SVM names like "DE excp" and VMX flags hold spaces).
                var look = pos
                while true {
                    let (x, y) = Self.nextToken(p, &look, e)
                    if x == y || Self.tokenIs(p, x, y, "rip") || Self.tokenIs(p, x, y, "info") { break }
                    if rs < 0 { rs = x }
                    re = y
                    pos = look
                }
            } else if Self.tokenIs(p, a, b, "rip") || Self.tokenIs(p, a, b, "PC:") {
                let (x, y) = Self.nextToken(p, &pos, e)
                ev.rip = number(p, x, y, hex: true)
            } else if Self.tokenIs(p, a, b, "info1") || Self.tokenIs(p, a, b, "info") {
                let (x, y) = Self.nextToken(p, &pos, e)
                ev.detail = number(p, x, y, hex: true)
            } else if Self.tokenIs(p, a, b, "HSR_EC:") || Self.tokenIs(p, a, b, "ESR_EC:") {
                _ = Self.nextToken(p, &pos, e)
                let (x, y) = Self.nextToken(p, &pos, e)
                var z = y
                while z > x && (p[z - 1] == 44 || p[z - 1] == 41) { z -= 1 }  // "),"
                if x < z && p[x] == 40 { rs = x + 1; re = z; arm = true }
            }
        }
        if rs < 0, let code = rawReason {
            // Raw fields: the code with the trace's ISA (isa=1 VMX, 2 SVM; arm64 esr_ec).
            let isa: ISA
            if arm { isa = .arm64 }
            else if let i = rawISA, let known = ISA(rawValue: UInt8(truncatingIfNeeded: i)), i <= 2, known != .unknown {
                isa = known
                defaultISA = known
                isaSettled = true
            } else { isa = defaultISA }
            if code > UInt64(UInt32.max) { fieldOverflow = true }
            ev.isa = isa.rawValue
            ev.reason = UInt32(truncatingIfNeeded: code)
            return
        }
        guard rs >= 0 else { return }
        let r: (UInt8, UInt32)
        if let known = reasonTable.find(p, rs, re) {
            r = known
        } else {
            r = resolveReason(String(decoding: p[rs..<re], as: UTF8.self), arm64: arm)
            reasonTable.insert(p, rs, re, r)
        }
        ev.isa = r.0
        ev.reason = r.1
    }

    /// The index of the first '=' in a token, or nil.
    @inline(__always)
    static func equalSign(_ p: Buffer, _ a: Int, _ b: Int) -> Int? {
        var k = a
        while k < b {
            if p[k] == 61 { return k > a ? k : nil }
            k += 1
        }
        return nil
    }

    /// Maps a printed reason to (isa, code) with ``ReasonResolver``: every printer's spelling (kernel,
    /// libtraceevent `EXIT_…`, 2.6-era lowercase VMX, numbers as codes of the trace's ISA). A name in two
    /// ISAs (`hlt`) takes the trace's ISA once a name or an `isa=` field has shown it, else the ISA whose
    /// printers spell it exactly so. A name no table knows keeps its spelling (``EventCatalog/spelledReasons``).
    mutating func resolveReason(_ text: String, arm64: Bool) -> (UInt8, UInt32) {
        if resolver == nil { resolver = ReasonResolver(names: catalog.exitReasons) }
        let resolver = resolver!
        if arm64, let c = catalog.exitReasons.code(isa: .arm64, name: text) { return (ISA.arm64.rawValue, c) }
        if let n = ReasonResolver.number(text) { return (defaultISA.rawValue, n) }
        var keys = resolver.keys(for: text).filter { $0.isa != .arm64 || arm64 }
        var flagBits: UInt32 = 0
        if keys.isEmpty {
            // VMX name followed by flags: "INVALID_STATE FAILED_VMENTRY".
            let words = text.split(separator: " ").map(String.init)
            if words.count > 1 {
                let vmx = resolver.keys(for: words[0]).filter { $0.isa == .vmx }
                var bits: UInt32 = 0
                var allFlags = true
                for flag in words.dropFirst() {
                    if let v = catalog.exitReasons.vmxFlags.value(forName: flag) { bits |= UInt32(truncatingIfNeeded: v) }
                    else { allFlags = false }
                }
                if !vmx.isEmpty && allFlags {
                    keys = vmx
                    flagBits = bits
                }
            }
        }
        guard !keys.isEmpty else {
            catalog.spelledReasons.append(text)
            unknownReasons.append(text)
            return (ISA.unknown.rawValue, EventCatalog.spelledReasonBase | UInt32(catalog.spelledReasons.count - 1))
        }
        var pick = keys[0]
        if keys.count > 1 {
            if isaSettled, let k = keys.first(where: { $0.isa == defaultISA }) {
                pick = k
            } else {
                if let k = keys.first(where: { ReasonResolver.printerSpellings($0).contains(text) }) { pick = k }
                // Decided again in finish() if a later name shows the trace's ISA.
                ambiguous.append((ReasonKey(isa: pick.isa, code: pick.code | flagBits),
                                  keys.map { ReasonKey(isa: $0.isa, code: $0.code | flagBits) }))
            }
        } else {
            isaSettled = true
            defaultISA = pick.isa
        }
        return (pick.isa.rawValue, pick.code | flagBits)
    }

    /// `vcpu N, rip 0x…` (kernel), `vcpu N rip 0x…` (libtraceevent); arm64 `PC: 0x…`; raw `vcpu_id=N rip=0x…`.
    mutating func entryFields(_ p: Buffer, _ s: Int, _ e: Int, _ ev: inout TraceEvent) {
        var pos = s
        while true {
            let (a, b) = Self.nextToken(p, &pos, e)
            if a == b { break }
            if let eq = Self.equalSign(p, a, b) {
                sawRaw = true  // only -R prints kvm_entry (and the events below) as key=value
                if Self.tokenIs(p, a, eq, "vcpu_id") { ev.vcpu = vcpuNumber(p, eq + 1, b) }
                else if Self.tokenIs(p, a, eq, "rip") || Self.tokenIs(p, a, eq, "vcpu_pc") {
                    ev.rip = number(p, eq + 1, b, hex: false)
                }
            } else if Self.tokenIs(p, a, b, "vcpu") {
                let (x, y) = Self.nextToken(p, &pos, e)
                if x < y { ev.vcpu = vcpuNumber(p, x, y) }
            } else if Self.tokenIs(p, a, b, "rip") || Self.tokenIs(p, a, b, "PC:") {
                let (x, y) = Self.nextToken(p, &pos, e)
                ev.rip = number(p, x, y, hex: true)
                break
            }
        }
    }

    /// `reason KVM_EXIT_IO (2)`, `reason restart (5)`: the code is the number in parentheses.
    mutating func userspaceExitFields(_ p: Buffer, _ s: Int, _ e: Int, _ ev: inout TraceEvent) {
        var pos = s
        while true {
            let (a, b) = Self.nextToken(p, &pos, e)
            if a == b { break }
            if p[a] == 40 {
                ev.reason = UInt32(truncatingIfNeeded: number(p, a + 1, b, hex: false))
                break
            }
            if let eq = Self.equalSign(p, a, b), Self.tokenIs(p, a, eq, "reason") {  // raw: reason=2 errno=0
                sawRaw = true
                ev.reason = UInt32(truncatingIfNeeded: number(p, eq + 1, b, hex: false))
                break
            }
        }
    }

    /// `pio_write at 0x10 size 1 count 1 val 0x0`; raw `rw=1 port=0x10 size=1 count=1 val=0x0`.
    mutating func pioFields(_ p: Buffer, _ s: Int, _ e: Int, _ ev: inout TraceEvent) {
        var pos = s
        while true {
            let (a, b) = Self.nextToken(p, &pos, e)
            if a == b { break }
            if let eq = Self.equalSign(p, a, b) {
                sawRaw = true
                if Self.tokenIs(p, a, eq, "rw") { ev.aux2 = UInt16(truncatingIfNeeded: number(p, eq + 1, b, hex: false)) }
                else if Self.tokenIs(p, a, eq, "port") { ev.detail = number(p, eq + 1, b, hex: false) }
                else if Self.tokenIs(p, a, eq, "size") { ev.aux = UInt32(truncatingIfNeeded: number(p, eq + 1, b, hex: false)) }
                continue
            }
            if Self.tokenIs(p, a, b, "pio_write") { ev.aux2 = 1 }
            else if Self.tokenIs(p, a, b, "at") {
                let (x, y) = Self.nextToken(p, &pos, e)
                ev.detail = number(p, x, y, hex: true)
            } else if Self.tokenIs(p, a, b, "size") {
                let (x, y) = Self.nextToken(p, &pos, e)
                ev.aux = UInt32(truncatingIfNeeded: number(p, x, y, hex: false))
                break
            }
        }
    }

    /// `mmio write len 4 gpa 0x… val 0x…` (also `read`, `unsatisfied-read`); raw `type=1 len=4 gpa=0x… val=0x…`.
    mutating func mmioFields(_ p: Buffer, _ s: Int, _ e: Int, _ ev: inout TraceEvent) {
        var pos = s
        while true {
            let (a, b) = Self.nextToken(p, &pos, e)
            if a == b { break }
            if let eq = Self.equalSign(p, a, b) {
                sawRaw = true
                if Self.tokenIs(p, a, eq, "type") { ev.aux2 = UInt16(truncatingIfNeeded: number(p, eq + 1, b, hex: false)) }
                else if Self.tokenIs(p, a, eq, "gpa") { ev.detail = number(p, eq + 1, b, hex: false) }
                else if Self.tokenIs(p, a, eq, "len") { ev.aux = UInt32(truncatingIfNeeded: number(p, eq + 1, b, hex: false)) }
                continue
            }
            // The type as the kernel's print fmt spells it (KVM_TRACE_MMIO_READ_UNSATISFIED 0, READ 1, WRITE 2).
            if Self.tokenIs(p, a, b, "unsatisfied-read") { ev.aux2 = 0 }
            else if Self.tokenIs(p, a, b, "read") { ev.aux2 = 1 }
            else if Self.tokenIs(p, a, b, "write") { ev.aux2 = 2 }
            else if Self.tokenIs(p, a, b, "len") {
                let (x, y) = Self.nextToken(p, &pos, e)
                ev.aux = UInt32(truncatingIfNeeded: number(p, x, y, hex: false))
            } else if Self.tokenIs(p, a, b, "gpa") {
                let (x, y) = Self.nextToken(p, &pos, e)
                ev.detail = number(p, x, y, hex: true)
                break
            }
        }
    }

    /// The vCPU in a QEMU thread name, also as `trace-cmd report -l` cuts it to 8 characters ("CPU 0/KV").
    static func vcpu(fromComm comm: String) -> UInt32? {
        if let v = ThreadIdentity.vcpu(fromThreadName: comm) { return v }
        guard comm.utf8.count == 8, comm.hasPrefix("CPU "), let slash = comm.firstIndex(of: "/"),
              "/KVM".hasPrefix(comm[slash...]) else { return nil }
        return UInt32(comm[comm.index(comm.startIndex, offsetBy: 4)..<slash])
    }

    /// Thread identities: vm = tgid when known, else the tid; the VM's name is its main thread's comm
    /// (or the thread's own comm when it is not a "CPU N/KVM" thread).
    func identities() -> [Int32: ThreadIdentity] {
        var out: [Int32: ThreadIdentity] = [:]
        for (tid, t) in threads {
            let vm = t.tgid ?? tid
            // The main thread's comm names the VM; a vCPU thread's own "CPU N/KVM" does not.
            var name: String? = threads[vm]?.comm
            if let n = name, Self.vcpu(fromComm: n) != nil { name = nil }
            out[tid] = ThreadIdentity(vm: vm, vmName: name, vcpu: t.vcpu, comm: t.comm)
        }
        return out
    }
}
