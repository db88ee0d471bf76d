import KVMExits

/// The line parser behind ``TextTraceReader``: bytes in, ``TraceEvent``s out.
///
/// A record line is `COMM-TID [CPU] FLAGS? SECONDS.FRACTION: EVENT: FIELDS` (kernel, trace-cmd), with an
/// optional TGID column `(  1234)` before `[CPU]`, or `COMM TID [CPU] SECONDS.FRACTION: SYSTEM:EVENT: FIELDS`
/// (perf script; `PID/TID` too). COMM may hold spaces ("CPU 1/KVM"): the TID is the number right before the
/// CPU column. Per record the work is index arithmetic on the buffer plus two hash lookups (event name, and
/// for exits the reason name) that allocate nothing once a name has been seen.
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
    var skipped = 0
    var lastTS: UInt64 = 0
    var unordered = false
    var sawTGID = false
    var sawPerf = false
    var sawKernelText = false
    var defaultISA: ISA = .vmx
    var unknownReasons: [String] = []
    var scratch: [UInt8] = []

    struct ThreadInfo {
        var tgid: Int32?
        var comm: String?
        var vcpu: UInt32?
    }

    /// Where the parts of a record line are (indices into the line's buffer).
    struct Header {
        var tid: Int32 = 0
        var tgid: Int32 = -1
        var cpu: Int = 0
        var ts: UInt64 = 0
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

        func flush(_ parser: inout TextTraceParser) {
            guard let h = pending else { return }
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
            var e = j
            if e > i && p[e - 1] == 13 { e -= 1 }
            var f = i
            while f < e && (p[f] == 32 || p[f] == 9) { f += 1 }
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
                pending = h
                pendStart = i
                pendEnd = e
            } else if pending != nil {
                if !pendJoined {
                    scratch.removeAll(keepingCapacity: true)
                    scratch.append(contentsOf: p[pendStart..<pendEnd])
                    pendJoined = true
                }
                scratch.append(32)
                scratch.append(contentsOf: p[f..<e])
                joined += 1
            } else {
                skipped += 1
            }
            i = j + 1
        }
        flush(&self)
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

    /// Parses the header of a record line, or nil if the line does not start a record.
    static func header(_ p: Buffer, _ s: Int, _ e: Int) -> Header? {
        var h = Header()
        var k = s
        var after = -1
        // The CPU column: the first " [digits]" preceded by a TID.
        while k < e {
            if p[k] == 91, k > s, isSpace(p[k - 1]) {
                var m = k + 1
                var cpu = 0
                while m < e && isDigit(p[m]) { cpu = cpu &* 10 &+ Int(p[m] - 48); m += 1 }
                if m > k + 1, m < e, p[m] == 93, threadColumns(p, s, k, &h) {
                    h.cpu = cpu
                    after = m + 1
                    break
                }
            }
            k += 1
        }
        guard after >= 0 else { return nil }
        // Flags columns (zero or more), then the timestamp "SECONDS.FRACTION:".
        var t = after
        var found = false
        for _ in 0..<6 {
            while t < e && isSpace(p[t]) { t += 1 }
            let ts = t
            while t < e && !isSpace(p[t]) { t += 1 }
            if t == ts { return nil }
            if p[t - 1] == 58, let ns = timestamp(p, ts, t - 1) {
                h.ts = ns
                found = true
                break
            }
            h.flagsColumn = true
        }
        guard found else { return nil }
        // perf may print a sample period before the event name.
        while t < e && isSpace(p[t]) { t += 1 }
        var q = t
        while q < e && isDigit(p[q]) { q += 1 }
        if q > t, q < e, isSpace(p[q]) {
            t = q
            while t < e && isSpace(p[t]) { t += 1 }
        }
        // The event name: up to the ':' followed by a space or the end of the line.
        h.nameStart = t
        while t < e {
            if p[t] == 58 && (t + 1 == e || isSpace(p[t + 1])) { break }
            if isSpace(p[t]) { return nil }
            t += 1
        }
        guard t < e, t > h.nameStart else { return nil }
        h.nameEnd = t
        h.fieldsStart = t + 1
        return h
    }

    /// Parses `COMM-TID`, `COMM TID`, `COMM PID/TID`, each optionally followed by `(TGID)`, ending at `bracket`.
    static func threadColumns(_ p: Buffer, _ s: Int, _ bracket: Int, _ h: inout Header) -> Bool {
        var b = bracket - 1
        while b > s && isSpace(p[b]) { b -= 1 }
        if p[b] == 41 {  // ')': record-tgid column "(  1234)" or "(-------)"
            var o = b - 1
            while o > s && p[o] != 40 { o -= 1 }
            guard p[o] == 40 else { return false }
            var v: Int32 = 0
            var digits = 0
            for x in (o + 1)..<b where isDigit(p[x]) { v = v &* 10 &+ Int32(p[x] - 48); digits += 1 }
            h.tgid = digits > 0 ? v : -1
            b = o - 1
            while b > s && isSpace(p[b]) { b -= 1 }
        }
        let tidEnd = b + 1
        while b >= s && isDigit(p[b]) { b -= 1 }
        guard b + 1 < tidEnd, b >= s else { return false }
        var tid: Int32 = 0
        for x in (b + 1)..<tidEnd { tid = tid &* 10 &+ Int32(p[x] - 48) }
        h.tid = tid
        switch p[b] {
        case 45:  // '-': kernel and trace-cmd
            h.commEnd = b
        case 47:  // '/': perf PID/TID
            var c = b - 1
            let pidEnd = b
            while c >= s && isDigit(p[c]) { c -= 1 }
            guard c + 1 < pidEnd, c >= s, isSpace(p[c]) else { return false }
            var pid: Int32 = 0
            for x in (c + 1)..<pidEnd { pid = pid &* 10 &+ Int32(p[x] - 48) }
            h.tgid = pid
            h.perf = true
            while c > s && isSpace(p[c]) { c -= 1 }
            h.commEnd = c + 1
        case 32, 9:  // perf COMM TID
            h.perf = true
            var c = b
            while c > s && isSpace(p[c]) { c -= 1 }
            h.commEnd = c + 1
        default:
            return false
        }
        var c = s
        while c < h.commEnd && isSpace(p[c]) { c += 1 }
        h.commStart = c
        return true
    }

    /// "SECONDS.FRACTION" (micro- or nanoseconds) → ns, or nil.
    @inline(__always)
    static func timestamp(_ p: Buffer, _ s: Int, _ e: Int) -> UInt64? {
        var k = s
        var sec: UInt64 = 0
        while k < e && isDigit(p[k]) { sec = sec &* 10 &+ UInt64(p[k] - 48); k += 1 }
        guard k > s, k < e, p[k] == 46 else { return nil }
        k += 1
        var frac: UInt64 = 0
        var digits = 0
        while k < e && isDigit(p[k]) {
            if digits < 9 { frac = frac &* 10 &+ UInt64(p[k] - 48); digits += 1 }
            k += 1
        }
        guard k == e, digits > 0 else { return nil }
        while digits < 9 { frac &*= 10; digits += 1 }
        return sec &* 1_000_000_000 &+ frac
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
    @inline(__always)
    static func number(_ p: Buffer, _ s: Int, _ e: Int, hex: Bool) -> UInt64 {
        var k = s
        var v: UInt64 = 0
        if e - s > 2, p[s] == 48, p[s + 1] | 0x20 == 120 { k += 2 }  // "0x"
        else if !hex {
            while k < e && isDigit(p[k]) { v = v &* 10 &+ UInt64(p[k] - 48); k += 1 }
            return v
        }
        while k < e {
            let c = p[k]
            let d: UInt8
            if isDigit(c) { d = c - 48 } else if c | 0x20 >= 97 && c | 0x20 <= 102 { d = (c | 0x20) - 87 } else { break }
            v = v &<< 4 | UInt64(d)
            k += 1
        }
        return v
    }

    // MARK: Records

    mutating func record(_ p: Buffer, _ h: Header, _ e: Int) {
        records += 1
        var index: Int32
        if let i = eventTable.find(p, h.nameStart, h.nameEnd) {
            index = i
        } else {
            index = addEvent(p, h)
        }
        guard index >= 0 else { return }
        if h.perf { sawPerf = true }
        if h.flagsColumn || h.tgid >= 0 && !h.perf { sawKernelText = true }
        let cpu = UInt16(truncatingIfNeeded: h.cpu)
        var ev = TraceEvent(timestamp: h.ts, tid: h.tid, event: UInt16(index), cpu: cpu)
        if lossPending[h.cpu & 1023] {
            lossPending[h.cpu & 1023] = false
            ev.flags = TraceEvent.afterLoss
        }
        switch roles[Int(index)] {
        case .exit: exitFields(p, h.fieldsStart, e, &ev)
        case .entry: entryFields(p, h.fieldsStart, e, &ev)
        case .userspaceExit: userspaceExitFields(p, h.fieldsStart, e, &ev)
        case .pio: pioFields(p, h.fieldsStart, e, &ev)
        case .mmio: mmioFields(p, h.fieldsStart, e, &ev)
        case .count: break
        }
        if h.tid != lastTid || (lastTidNeedsVCPU && ev.vcpu != TraceEvent.noVCPU) { noteThread(p, h, ev.vcpu) }
        if h.ts < lastTS { unordered = true }
        lastTS = h.ts
        events.append(ev)
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

    mutating func noteThread(_ p: Buffer, _ h: Header, _ vcpu: UInt32) {
        lastTid = h.tid
        if var t = threads[h.tid] {
            if t.vcpu == nil && vcpu != TraceEvent.noVCPU {
                t.vcpu = vcpu
                threads[h.tid] = t
            }
            lastTidNeedsVCPU = t.vcpu == nil
            return
        }
        let comm = String(decoding: p[h.commStart..<h.commEnd], as: UTF8.self)
        var t = ThreadInfo(tgid: h.tgid >= 0 ? h.tgid : nil, comm: comm == "<...>" || comm.isEmpty ? nil : comm)
        if h.tgid >= 0 { sawTGID = true }
        t.vcpu = t.comm.flatMap(ThreadIdentity.vcpu(fromThreadName:)) ?? (vcpu != TraceEvent.noVCPU ? vcpu : nil)
        threads[h.tid] = t
        lastTidNeedsVCPU = t.vcpu == nil
    }

    /// kernel: `vcpu N reason NAME [FLAGS] rip 0x… info1 0x… info2 …`; older kernels and libtraceevent:
    /// `reason NAME rip 0x… info A B`; arm64: `TRAP: HSR_EC: 0x0016 (HVC64), PC: 0x…`.
    mutating func exitFields(_ p: Buffer, _ s: Int, _ e: Int, _ ev: inout TraceEvent) {
        var pos = s
        var rs = -1
        var re = -1
        var arm = false
        while true {
            let (a, b) = Self.nextToken(p, &pos, e)
            if a == b { break }
            if Self.tokenIs(p, a, b, "vcpu") {
                let (x, y) = Self.nextToken(p, &pos, e)
                if x < y { ev.vcpu = UInt32(truncatingIfNeeded: Self.number(p, x, y, hex: false)) }
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
                ev.rip = Self.number(p, x, y, hex: true)
            } else if Self.tokenIs(p, a, b, "info1") || Self.tokenIs(p, a, b, "info") {
                let (x, y) = Self.nextToken(p, &pos, e)
                ev.detail = Self.number(p, x, y, hex: true)
            } else if Self.tokenIs(p, a, b, "HSR_EC:") || Self.tokenIs(p, a, b, "ESR_EC:") {
                _ = Self.nextToken(p, &pos, e)
                let (x, y) = Self.nextToken(p, &pos, e)
                var z = y
                while z > x && (p[z - 1] == 44 || p[z - 1] == 41) { z -= 1 }  // "),"
                if x < z && p[x] == 40 { rs = x + 1; re = z; arm = true }
            }
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

    /// Maps a printed reason to (isa, code): VMX names are uppercase without `EXIT_`; SVM names are the
    /// kernel's lowercase ones or libtraceevent's `EXIT_…`; numbers are codes of the trace's ISA.
    mutating func resolveReason(_ text: String, arm64: Bool) -> (UInt8, UInt32) {
        let names = catalog.exitReasons
        if arm64 {
            if let c = names.code(isa: .arm64, name: text) { return (ISA.arm64.rawValue, c) }
        }
        let words = text.split(separator: " ").map(String.init)
        let first = words.first ?? text
        let looksSVM = first.hasPrefix("EXIT_") || text.contains(" excp") || first.first.map { $0.isLowercase } == true
        if !looksSVM, var c = names.code(isa: .vmx, name: first) {
            for flag in words.dropFirst() {
                if let v = names.vmxFlags.value(forName: flag) { c |= UInt32(truncatingIfNeeded: v) }
            }
            defaultISA = .vmx
            return (ISA.vmx.rawValue, c)
        }
        if let c = names.code(isa: .svm, name: text) ?? names.code(isa: .svm, name: first) {
            defaultISA = .svm
            return (ISA.svm.rawValue, c)
        }
        if let c = names.code(isa: .vmx, name: first) { return (ISA.vmx.rawValue, c) }
        if first.hasPrefix("0x"), let c = UInt32(first.dropFirst(2), radix: 16) { return (defaultISA.rawValue, c) }
        if let c = UInt32(first) { return (defaultISA.rawValue, c) }
        unknownReasons.append(text)
        return (ISA.unknown.rawValue, 0xffff_0000 | UInt32(unknownReasons.count - 1))
    }

    /// `vcpu N, rip 0x…` (kernel), `vcpu N rip 0x…` (libtraceevent); arm64 `PC: 0x…`.
    func entryFields(_ p: Buffer, _ s: Int, _ e: Int, _ ev: inout TraceEvent) {
        var pos = s
        while true {
            let (a, b) = Self.nextToken(p, &pos, e)
            if a == b { break }
            if Self.tokenIs(p, a, b, "vcpu") {
                let (x, y) = Self.nextToken(p, &pos, e)
                if x < y { ev.vcpu = UInt32(truncatingIfNeeded: Self.number(p, x, y, hex: false)) }
            } else if Self.tokenIs(p, a, b, "rip") || Self.tokenIs(p, a, b, "PC:") {
                let (x, y) = Self.nextToken(p, &pos, e)
                ev.rip = Self.number(p, x, y, hex: true)
                break
            }
        }
    }

    /// `reason KVM_EXIT_IO (2)`, `reason restart (5)`: the code is the number in parentheses.
    func userspaceExitFields(_ p: Buffer, _ s: Int, _ e: Int, _ ev: inout TraceEvent) {
        var pos = s
        while true {
            let (a, b) = Self.nextToken(p, &pos, e)
            if a == b { break }
            if p[a] == 40 {
                ev.reason = UInt32(truncatingIfNeeded: Self.number(p, a + 1, b, hex: false))
                break
            }
        }
    }

    /// `pio_write at 0x10 size 1 count 1 val 0x0`.
    func pioFields(_ p: Buffer, _ s: Int, _ e: Int, _ ev: inout TraceEvent) {
        var pos = s
        while true {
            let (a, b) = Self.nextToken(p, &pos, e)
            if a == b { break }
            if Self.tokenIs(p, a, b, "pio_write") { ev.aux2 = 1 }
            else if Self.tokenIs(p, a, b, "at") {
                let (x, y) = Self.nextToken(p, &pos, e)
                ev.detail = Self.number(p, x, y, hex: true)
            } else if Self.tokenIs(p, a, b, "size") {
                let (x, y) = Self.nextToken(p, &pos, e)
                ev.aux = UInt32(truncatingIfNeeded: Self.number(p, x, y, hex: false))
                break
            }
        }
    }

    /// `mmio write len 4 gpa 0x… val 0x…`.
    func mmioFields(_ p: Buffer, _ s: Int, _ e: Int, _ ev: inout TraceEvent) {
        var pos = s
        while true {
            let (a, b) = Self.nextToken(p, &pos, e)
            if a == b { break }
            if Self.tokenIs(p, a, b, "len") {
                let (x, y) = Self.nextToken(p, &pos, e)
                ev.aux = UInt32(truncatingIfNeeded: Self.number(p, x, y, hex: false))
            } else if Self.tokenIs(p, a, b, "gpa") {
                let (x, y) = Self.nextToken(p, &pos, e)
                ev.detail = Self.number(p, x, y, hex: true)
                break
            }
        }
    }

    /// Thread identities: vm = tgid when known, else the tid; the VM's name is its main thread's comm
    /// (or the thread's own comm when it is not a "CPU N/KVM" thread).
    func identities() -> [Int32: ThreadIdentity] {
        var out: [Int32: ThreadIdentity] = [:]
        for (tid, t) in threads {
            let vm = t.tgid ?? tid
            // The main thread's comm names the VM; a vCPU thread's own "CPU N/KVM" does not.
            var name: String? = threads[vm]?.comm
            if let n = name, ThreadIdentity.vcpu(fromThreadName: n) != nil { name = nil }
            out[tid] = ThreadIdentity(vm: vm, vmName: name, vcpu: t.vcpu, comm: t.comm)
        }
        return out
    }
}
