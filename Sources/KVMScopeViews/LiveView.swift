import KVMAnalysis
import KVMExits

/// What one refresh of the live view draws from: two summaries one interval apart.
public struct LiveFrame: Sendable {
    public var current: Summary
    /// One interval ago (nil: no rates yet).
    public var previous: Summary?
    /// The interval, seconds.
    public var seconds: Double
    public var guests: [GuestTotal]
    public var previousGuests: [GuestTotal]
    /// What each guest costs the host over the last interval (``GuestResourceUse``), by pid; shown in the
    /// guest list. Empty when not sampled.
    public var guestResources: [Int32: GuestResourceUse] = [:]

    public init(current: Summary, previous: Summary?, seconds: Double, guests: [GuestTotal] = [],
                previousGuests: [GuestTotal] = []) {
        self.current = current
        self.previous = previous
        self.seconds = seconds
        self.guests = guests
        self.previousGuests = previousGuests
    }
}

/// A guest's CPU in the guest list (`b`), from /proc (KVMResources).
public struct GuestResourceUse: Sendable, Equatable {
    /// htop's CPU%: the VM process's CPU time in the interval as a share of one CPU.
    public var cpuPercent: Double
    /// Run-queue wait of its vCPU threads in the interval, as a share of the interval, summed over vCPUs.
    public var waitPercent: Double

    public init(cpuPercent: Double, waitPercent: Double) {
        self.cpuPercent = cpuPercent
        self.waitPercent = waitPercent
    }
}

/// How a span of the screen looks (the terminal maps these to curses attributes).
public struct ScreenStyle: OptionSet, Sendable, Hashable {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }
    public static let bold = ScreenStyle(rawValue: 1)
    public static let reverse = ScreenStyle(rawValue: 2)
    public static let red = ScreenStyle(rawValue: 4)
    public static let underline = ScreenStyle(rawValue: 8)
}

/// One line of the screen: its text (no trailing blanks) and styled spans drawn over it.
public struct ScreenLine: Sendable, Equatable {
    public struct Span: Sendable, Equatable {
        public var column: Int
        public var text: String
        public var style: ScreenStyle
        public init(column: Int, text: String, style: ScreenStyle) {
            self.column = column
            self.text = text
            self.style = style
        }
    }

    public var text: String
    public var spans: [Span]

    public init(_ text: String, spans: [Span] = []) {
        self.text = text
        self.spans = spans
    }

    /// A whole line in one style.
    static func styled(_ text: String, _ style: ScreenStyle, width: Int? = nil) -> ScreenLine {
        let shown = width.map { LiveView.pad(text, $0) } ?? text
        return ScreenLine(trimmed(text), spans: [Span(column: 0, text: shown, style: style)])
    }

    static func trimmed(_ s: String) -> String {
        var s = Substring(s)
        while s.last == " " { s = s.dropLast() }
        return String(s)
    }
}

/// A whole screen: lines from the top, and where the cursor goes (prompts only).
public struct LiveScreen: Sendable, Equatable {
    public var lines: [ScreenLine]
    public var cursor: Cursor?
    public struct Cursor: Sendable, Equatable {
        public var row: Int
        public var column: Int
        public init(row: Int, column: Int) {
            self.row = row
            self.column = column
        }
    }

    public var text: [String] { lines.map(\.text) }
}

/// One row of the live view's body.
public struct LiveRow: Sendable, Equatable {
    public var id: String
    public var name: String
    public var isChild: Bool
    public var total: UInt64
    /// Share of the grand total (parents) or of the parent (children), percent.
    public var percent: Double
    /// Count during the last interval (nil: no previous summary).
    public var delta: UInt64?
    /// Exit handling time (or, when `blocked`, time the guest spent halted).
    public var latency: HistogramSnapshot?
    public var blocked: Bool
    /// The guest RIPs that caused these exits (exit reason rows only).
    public var rips: [RIPCount]
    /// The VM of a guest row.
    public var pid: Int32?
    /// A per-vCPU row whose thread's kvm_exit/kvm_entry carry another vCPU number than its name gives: its name
    /// says both and is drawn in red (``Summary/vcpuMismatches``).
    public var marked = false
    /// A guest row's CPU and vCPU wait in the interval (``GuestResourceUse``), shown in the CPU% and Wait%
    /// columns that take the latency columns' place in the guest list; nil before the first interval.
    public var resources: GuestResourceUse?
}

/// The live view's screens as pure functions of (frame, state, size): kvm_stat's layout, plus latency
/// columns, sparklines, lost events, per-guest and per-vCPU breakdowns and the selected reason's RIPs.
public enum LiveView {
    public static let minimumWidth = 60
    public static let minimumHeight = 12
    /// The key bar's items; h and q always show, the others as far as the width allows (h lists them all).
    static let keyItems = ["b guests", "v vCPUs", "f filter", "p pid", "g guest", "x children", "o sort", "r reset", "s delay"]

    /// The key bar for a width: `first` (Enter in the guest list), the optional items in order while they fit,
    /// then "h help  q quit".
    public static func keyBar(width: Int, first: String? = nil) -> String {
        let last = ["h help", "q quit"]
        var room = width - last.joined(separator: "  ").count - (first.map { $0.count + 2 } ?? 0)
        var items: [String] = first.map { [$0] } ?? []
        for item in keyItems where item.count + 2 <= room {
            items.append(item)
            room -= item.count + 2
        }
        return cut((items + last).joined(separator: "  "), width)
    }

    struct Layout {
        var name: Int
        var wide: Bool
        var spark: Int
        /// Whether the Avg/p99/Max (or CPU%/Wait%) columns are drawn: not on the I/O screen, which has no
        /// handling times live; its device names get their width.
        var latency: Bool
        init(width: Int, mode: LiveViewState.Mode = .events) {
            wide = width >= 100
            latency = mode != .io
            name = (wide ? 40 : 24) + (latency ? 0 : wide ? 28 : 18)
            spark = wide ? max(0, min(30, width - 98)) : max(0, min(30, width - 72))
        }
    }

    /// The screen for a frame.
    public static func render(_ frame: LiveFrame, state: LiveViewState, width: Int, height: Int) -> LiveScreen {
        if width < minimumWidth || height < minimumHeight {
            return LiveScreen(lines: [ScreenLine("terminal too small (\(width)x\(height)): kvmscope needs \(minimumWidth)x\(minimumHeight)")])
        }
        if state.showingHelp { return help(width: width) }
        if let p = state.prompt { return prompt(p, frame: frame, state: state, width: width, height: height) }

        let layout = Layout(width: width, mode: state.mode)
        var lines: [ScreenLine] = []
        lines.append(.styled(header(frame, state: state), .bold))
        lines.append(statusLine(frame, state: state, width: width))
        lines.append(.styled(columns(layout, state: state), .reverse, width: width))

        let rows = rows(frame, state: state, layout: layout)
        let selected = min(state.selected, max(0, rows.count - 1))
        var bottom: [ScreenLine] = []
        if rows.indices.contains(selected), !rows[selected].rips.isEmpty {
            bottom += ripLines(rows[selected], width: width)
        }
        if state.guestDead {
            bottom.append(.styled("Guest is DEAD" + (state.guestName.map { ": waiting for '\($0.terminalSafe)' to come back" } ?? ""), [.red, .bold]))
        }
        if let note = vcpuMismatchLine(frame.current) { bottom.append(.styled(cut(note, width), .bold)) }
        if let m = state.message { bottom.append(.styled(m, .bold)) }
        if let n = state.notice { bottom.append(ScreenLine(n)) }
        bottom.append(ScreenLine(keyBar(width: width, first: state.mode == .guests ? "Enter show guest" : nil)))

        if rows.isEmpty {
            lines.append(ScreenLine(" " + (state.mode == .vcpus && vcpuVM(frame, state: state) == nil
                ? "No guest selected: choose one with p, g or b"
                : "No matching events reported yet")))
        } else {
            let capacity = max(1, height - lines.count - 1 - bottom.count)
            let first = selected >= capacity ? selected - capacity + 1 : 0
            for (i, row) in rows.enumerated().dropFirst(first).prefix(capacity) {
                lines.append(rowLine(row, layout: layout, seconds: frame.seconds, selected: i == selected,
                                     history: state.history))
            }
            lines.append(totalLine(rows, layout: layout, seconds: frame.seconds, width: width))
        }
        while lines.count < height - bottom.count { lines.append(ScreenLine("")) }
        return LiveScreen(lines: Array((lines + bottom).prefix(height)), cursor: nil)
    }

    /// The rows of the current mode (what the arrow keys move over).
    public static func rows(_ frame: LiveFrame, state: LiveViewState, width: Int) -> [LiveRow] {
        rows(frame, state: state, layout: Layout(width: width, mode: state.mode))
    }

    /// Each row's rate this interval, for ``RateHistory/record(_:)``.
    public static func rates(_ frame: LiveFrame, state: LiveViewState) -> [String: Double] {
        var out: [String: Double] = [:]
        for r in rows(frame, state: state, layout: Layout(width: 120)) {
            out[r.id] = Double(r.delta ?? 0) / max(frame.seconds, 1e-9)
        }
        return out
    }

    /// The rates the sparklines record, one sample per refresh interval: every row of every mode (events with
    /// their children, guests, the VM's vCPUs) whatever the screen shows, so that a row hidden by `f`, `x` or
    /// another mode keeps its minute of history instead of a gap. `frame` must be built without the regex
    /// filter (`fields`); the VM filter (`p`, `g`) stays, as it changes what every row counts.
    public static func historyRates(_ frame: LiveFrame, state: LiveViewState) -> [String: Double] {
        var all = state
        all.fields = nil
        all.showChildren = true
        var out: [String: Double] = [:]
        for mode in [LiveViewState.Mode.events, .guests, .vcpus, .io] {
            all.mode = mode
            out.merge(rates(frame, state: all)) { a, _ in a }
        }
        return out
    }

    /// The VM the per-vCPU view shows: the pid filter, else the only VM traced.
    public static func vcpuVM(_ frame: LiveFrame, state: LiveViewState) -> Int32? {
        if let pid = state.pid { return pid }
        let vms = Set(frame.current.exits.map(\.vm)).union(frame.current.userspaceExits.map(\.vm))
        return vms.count == 1 ? vms.first : nil
    }

    // MARK: - Top of the screen

    static func header(_ frame: LiveFrame, state: LiveViewState) -> String {
        var h = "kvm statistics - "
        if let pid = state.pid {
            let name = state.guestName ?? frame.current.vms[pid] ?? nil
            h += "pid \(pid)" + (name.map { " (\(cut($0.terminalSafe, 48)))" } ?? "")
        } else if state.mode == .vcpus, let vm = vcpuVM(frame, state: state) {
            h += "pid \(vm)" + ((frame.current.vms[vm] ?? nil).map { " (\(cut($0.terminalSafe, 48)))" } ?? "")
        } else {
            h += "summary"
        }
        switch state.mode {
        case .events: break
        case .guests: h += " - by guest"
        case .vcpus: h += " - per vCPU"
        case .io: h += " - I/O by device"
        }
        return h
    }

    static func statusLine(_ frame: LiveFrame, state: LiveViewState, width: Int) -> ScreenLine {
        let s = frame.current
        // "+": some losses have no count (flagged sub-buffers, corrupt ones, failed reads); the help says so.
        let uncounted = s.lostUnknownSubbuffers + s.corruptSubbuffers + s.readErrors
        let lost = "lost \(s.lostEvents)" + (uncounted > 0 ? "+" : "")
        // More VMs stopped than the retired-VM history keeps: the oldest ones' rows are one `other` row now.
        let folded = s.occupancy.foldedVMs > 0
            ? "\(s.occupancy.foldedVMs) stopped VM\(s.occupancy.foldedVMs == 1 ? "" : "s") in other  " : ""
        let right = folded + "sort: \(state.sortByTotal ? "Total" : "CurAvg/s")  delay: \(StatTable.format1(state.delay))s  " + lost
        var left = ""
        if let f = state.fields {
            // kvm_stat cuts the regex at 44 characters; here also where it would reach the status.
            let room = max(4, width - right.count - 2 - 17 - "regex filter: ".count)
            let shown = f.count <= min(44, room) ? f : String(f.prefix(max(1, min(44, room - 3)))) + "..."
            left = String(repeating: " ", count: 17) + "regex filter: " + shown
        }
        let text = pad(left, width - right.count) + right
        var spans: [ScreenLine.Span] = []
        if !folded.isEmpty {
            spans.append(.init(column: width - right.count, text: String(folded.dropLast(2)), style: .bold))
        }
        if s.lostEvents > 0 || uncounted > 0 {
            spans.append(.init(column: width - lost.count, text: lost, style: [.red, .bold]))
        }
        return ScreenLine(text, spans: spans)
    }

    static func columns(_ l: Layout, state: LiveViewState) -> String {
        let first = state.mode == .guests ? "Guest Name" : state.mode == .vcpus ? "vCPU / Event"
            : state.mode == .io ? "Port/Address  Device" : "Event"
        var s = " " + pad(first, l.name) + " " + lpad("Total", 10) + lpad("%Total", 7) + " " + lpad("CurAvg/s", 8)
        // Guests have no exit handling time of their own here: their slots show htop's CPU% and the vCPUs' wait.
        let guests = state.mode == .guests
        if l.latency {
            s += " " + lpad(guests ? "CPU%" : "Avg", 8) + " " + lpad(guests ? "Wait%" : "p99", 8)
            if l.wide { s += " " + lpad(guests ? "" : "Max", 8) + " " }
        }
        if l.spark > 0 { s += " " + (l.spark >= 8 ? "Rate 60s" : "") }
        return s
    }

    // MARK: - Rows

    static func rows(_ frame: LiveFrame, state: LiveViewState, layout: Layout) -> [LiveRow] {
        switch state.mode {
        case .events: return eventRows(frame, state: state, layout: layout)
        case .guests: return guestRows(frame, state: state, layout: layout)
        case .vcpus: return vcpuRows(frame, state: state, layout: layout)
        case .io: return ioRows(frame, state: state)
        }
    }

    static func sorted(_ rows: [LiveRow], byTotal: Bool) -> [LiveRow] {
        rows.sorted { a, b in
            if !byTotal, (a.delta ?? 0) != (b.delta ?? 0) { return (a.delta ?? 0) > (b.delta ?? 0) }
            return a.total != b.total ? a.total > b.total : a.name < b.name
        }
    }

    /// A child row's name as kvm_stat's screen shows it: `kvm_userspace_exit(IO)` (``StatTable/childName(_:)``),
    /// the reason alone where the screen is narrow.
    static func childName(event: String, reason: String, layout: Layout) -> String {
        let reason = StatTable.childName(reason)
        return layout.wide ? "  \(event)(\(reason))" : "  \(reason)"
    }

    static func eventRows(_ frame: LiveFrame, state: LiveViewState, layout: Layout) -> [LiveRow] {
        let s = frame.current
        let parents = s.events.filter { $0.total > 0 }
        let grand = parents.reduce(0) { $0 + $1.total }
        var out: [LiveRow] = []
        let top = parents.map { e -> LiveRow in
            var latency: HistogramSnapshot?
            if e.name == "kvm_exit" {
                for r in s.exits where !r.blocking { if let h = r.histogram { latency = (latency ?? HistogramSnapshot()) + h } }
            }
            return LiveRow(id: "e:\(e.name)", name: e.name, isChild: false, total: e.total,
                           percent: pct(e.total, grand), delta: frame.previous.map { e.total &- $0.total(of: e.name) },
                           latency: latency, blocked: false, rips: [], pid: nil)
        }
        for parent in sorted(top, byTotal: state.sortByTotal) {
            out.append(parent)
            guard state.showChildren else { continue }
            let kids = s.children.filter { $0.event == parent.name && $0.total > 0 }.map { c -> LiveRow in
                let before = frame.previous?.children.first { $0.event == c.event && $0.reason == c.reason }?.total
                var latency: HistogramSnapshot?
                var rips: [RIPCount] = []
                var blocked = false
                if c.event == "kvm_exit" {
                    for r in s.exits where r.reason == c.reason {
                        if let h = r.histogram { latency = (latency ?? HistogramSnapshot()) + h }
                        rips = TopRIPs.merge(rips, r.topRIPs, limit: 10)
                        blocked = blocked || r.blocking
                    }
                }
                return LiveRow(id: "c:\(c.event)(\(c.reason))",
                               name: childName(event: c.event, reason: c.reason, layout: layout) + (blocked ? " (blocked)" : ""),
                               isChild: true, total: c.total, percent: pct(c.total, parent.total),
                               delta: frame.previous.map { _ in c.total &- (before ?? 0) }, latency: latency,
                               blocked: blocked, rips: rips, pid: nil)
            }
            out += sorted(kids, byTotal: state.sortByTotal)
        }
        return out
    }

    /// One row per guest: "NAME (pid N)", the name cut so that the pid stays in the column.
    static func guestRows(_ frame: LiveFrame, state: LiveViewState, layout: Layout) -> [LiveRow] {
        let guests = frame.guests.filter { !state.kernelThreads.contains($0.pid) }
        let grand = guests.reduce(0) { $0 + $1.total }
        let before = Dictionary(frame.previousGuests.map { ($0.pid, $0.total) }, uniquingKeysWith: +)
        let rows = guests.filter { $0.total > 0 }.map { g -> LiveRow in
            let pid = " (pid \(g.pid))"
            // A VM never named (gone before it was looked at): said in words; `?` stands for a control character.
            return LiveRow(id: "g:\(g.pid)", name: cut(g.name?.terminalSafe ?? "unnamed VM", layout.name - pid.count) + pid,
                    isChild: false, total: g.total,
                    percent: pct(g.total, grand), delta: frame.previous == nil ? nil : g.total &- (before[g.pid] ?? 0),
                    latency: nil, blocked: false, rips: [], pid: g.pid, resources: frame.guestResources[g.pid])
        }
        return sorted(rows, byTotal: state.sortByTotal)
    }

    static func vcpuRows(_ frame: LiveFrame, state: LiveViewState, layout: Layout) -> [LiveRow] {
        guard let vm = vcpuVM(frame, state: state) else { return [] }
        // The same rule as stat -f and the event rows: the regex matched at the start of `event(reason)`, any
        // spelling.
        let filter = state.filter
        func keep(_ event: String, _ reason: String) -> Bool {
            (try? filter.keeps(event: event, reason: reason)) ?? true
        }
        struct Child { var event: String; var reason: String; var total: UInt64; var before: UInt64?
            var latency: HistogramSnapshot?; var blocking: Bool; var rips: [RIPCount] }
        var byVCPU: [UInt32: [Child]] = [:]
        let noVCPU = UInt32.max
        for r in frame.current.exits where r.vm == vm && keep("kvm_exit", r.reason) {
            let before = frame.previous.map { p in
                p.exits.first { $0.vm == vm && $0.vcpu == r.vcpu && $0.reason == r.reason && $0.isa == r.isa }?.count ?? 0
            }
            byVCPU[r.vcpu ?? noVCPU, default: []].append(Child(event: "kvm_exit", reason: r.reason, total: r.count, before: before,
                                                                latency: r.histogram, blocking: r.blocking, rips: r.topRIPs))
        }
        for r in frame.current.userspaceExits where r.vm == vm && keep("kvm_userspace_exit", r.reason) {
            let before = frame.previous.map { p in
                p.userspaceExits.first { $0.vm == vm && $0.vcpu == r.vcpu && $0.reason == r.reason }?.count ?? 0
            }
            byVCPU[r.vcpu ?? noVCPU, default: []].append(Child(event: "kvm_userspace_exit", reason: r.reason, total: r.count,
                                                                before: before, latency: nil, blocking: false, rips: []))
        }
        // vCPU number by the thread's name → the vcpu_id its kvm_exit/kvm_entry carry, where the two differ.
        var traced: [UInt32: UInt32] = [:]
        for m in frame.current.vcpuMismatches where m.identity.vm == vm {
            if let v = m.identity.vcpu, let t = m.identity.tracedVCPU, traced[v] == nil { traced[v] = t }
        }
        let grand = byVCPU.values.joined().reduce(0) { $0 + $1.total }
        var parents: [(LiveRow, [Child])] = []
        for (vcpu, kids) in byVCPU {
            let total = kids.reduce(0) { $0 + $1.total }
            let delta = frame.previous.map { _ in kids.reduce(0) { $0 + ($1.total &- ($1.before ?? 0)) } }
            var latency: HistogramSnapshot?
            for k in kids where !k.blocking { if let h = k.latency { latency = (latency ?? HistogramSnapshot()) + h } }
            let name = vcpu == noVCPU ? "vCPU ?" : "vCPU \(vcpu)"
            var row = LiveRow(id: "v:\(vm):\(vcpu)", name: name, isChild: false, total: total, percent: pct(total, grand),
                              delta: delta, latency: latency, blocked: false, rips: [], pid: vm)
            if let t = traced[vcpu] {
                row.name += " \u{2260} vcpu_id \(t)"
                row.marked = true
            }
            parents.append((row, kids))
        }
        func order(_ r: LiveRow) -> (Int, String) {
            let base = r.marked ? String(r.name.prefix { $0 != "\u{2260}" }.dropLast()) : r.name
            return (base.count, base)
        }
        var out: [LiveRow] = []
        for (parent, kids) in parents.sorted(by: { order($0.0) < order($1.0) }) {
            out.append(parent)
            guard state.showChildren else { continue }
            let rows = kids.map { k in
                LiveRow(id: "\(parent.id):\(k.event)(\(k.reason))",
                        name: childName(event: k.event, reason: k.reason, layout: layout) + (k.blocking ? " (blocked)" : ""),
                        isChild: true, total: k.total, percent: pct(k.total, parent.total),
                        delta: k.before.map { k.total &- $0 }, latency: k.latency, blocked: k.blocking, rips: k.rips, pid: vm)
            }
            out += sorted(rows, byTotal: state.sortByTotal)
        }
        return out
    }

    // MARK: - Lines

    static func rowLine(_ r: LiveRow, layout: LiveView.Layout, seconds: Double, selected: Bool,
                        history: RateHistory) -> ScreenLine {
        var s = (selected ? ">" : " ") + pad(cut(r.name, layout.name), layout.name) + " " + lpad(String(r.total), 10)
            + lpad(StatTable.format1(r.percent), 7) + " " + lpad(rate(r.delta, seconds), 8)
        let l = r.latency.flatMap { $0.count > 0 ? $0 : nil }
        if layout.latency {
            if let use = r.resources {
                s += " " + lpad(StatTable.format1(use.cpuPercent), 8) + " " + lpad(StatTable.format1(use.waitPercent), 8)
            } else {
                s += " " + lpad(l.map { duration(UInt64(saturating: $0.mean.rounded())) } ?? "", 8)
                s += " " + lpad(l.map { duration($0.percentile(99)) } ?? "", 8)
            }
            if layout.wide { s += " " + lpad(l.map { duration($0.max) } ?? "", 8) + " " }
        }
        if layout.spark > 0 { s += " " + history.sparkline(r.id, width: layout.spark) }
        // A vCPU traced under another number than its thread's name: its name in red, as htop marks a cell.
        let spans = r.marked ? [ScreenLine.Span(column: 1, text: cut(r.name, layout.name), style: [.red, .bold])] : []
        return ScreenLine(ScreenLine.trimmed(s), spans: spans)
    }

    /// One line under the body when a thread of the VMs shown is vCPU n by its name but kvm_exit/kvm_entry
    /// carry another vcpu_id (``Summary/vcpuMismatches``): the first such thread, and how many more
    /// (`stat --json`'s `vcpu_mismatches` lists them all). Short enough for 80 columns with a 3-digit pid.
    static func vcpuMismatchLine(_ s: Summary) -> String? {
        guard let first = s.vcpuMismatches.first, let traced = first.identity.tracedVCPU else { return nil }
        let more = s.vcpuMismatches.count - 1
        let name = first.identity.vcpu.map(String.init) ?? "?"
        return "note: VM \(first.identity.vm) tid \(first.tid) '\((first.identity.comm ?? "?").terminalSafe)': kvm_exit says "
            + "vcpu_id \(traced), rows use the name's \(name)" + (more > 0 ? " (+\(more) more)" : "")
    }

    static func totalLine(_ rows: [LiveRow], layout: Layout, seconds: Double, width: Int) -> ScreenLine {
        let parents = rows.filter { !$0.isChild }
        let total = parents.reduce(0) { $0 + $1.total }
        let delta: UInt64? = parents.contains { $0.delta != nil } ? parents.reduce(0) { $0 + ($1.delta ?? 0) } : nil
        let s = " " + pad("Total", layout.name) + " " + lpad(String(total), 10) + lpad("", 7) + " " + lpad(rate(delta, seconds), 8)
        return .styled(s, .bold)
    }

    static func ripLines(_ r: LiveRow, width: Int) -> [ScreenLine] {
        let name = r.name.trimmingPrefix("  ")
        var line = "Top guest RIPs of \(name):"
        var lines: [ScreenLine] = []
        let count = max(1, r.rips.reduce(0) { $0 + $1.count })
        for rip in r.rips.prefix(8) {
            let item = "  0x" + String(rip.rip, radix: 16) + " " + StatTable.format1(pct(rip.count, count)) + "%"
            if line.count + item.count > width {
                lines.append(ScreenLine(line))
                if lines.count == 2 { break }
                line = " "
            }
            line += item
        }
        if lines.count < 2 { lines.append(ScreenLine(line)) }
        return lines
    }

    // MARK: - Other screens

    /// kvm_stat's help screen: every line fits 80 columns and the whole screen 24 rows.
    static func help(width: Int) -> LiveScreen {
        let keys = [
            "   b     toggle events by guests (Enter on a guest shows only that guest);",
            "         CPU%: host CPU, % of one CPU (htop's); Wait%: vCPUs' wait for a CPU",
            "   c     clear filter",
            "   f     filter by regular expression",
            "   g     filter by guest name",
            "   h     display interactive commands reference",
            "   i     toggle I/O exits per port and MMIO address, by device (perf's ioport)",
            "   o     toggle sorting order (Total vs CurAvg/s)",
            "   p     filter by PID",
            "   q     quit",
            "   r     reset stats",
            "   s     set update interval",
            "   v     toggle per-vCPU rows of the selected guest",
            "   x     toggle reporting of stats for individual child trace events",
            "   ↑ ↓   select a row (an exit reason shows its top guest RIPs)",
            "Avg, p99, Max: exit handling time (kvm_exit to the next kvm_entry of the vCPU).",
            "Rows marked (blocked) are halts: that time is the guest idle, not handling.",
            "Any other key refreshes statistics immediately",
            "lost N: events dropped, the kernel's ring buffer full (raise --buffer-kb);",
            "lost N+: at least N, as some buffers said events were lost but not how many.",
        ]
        var lines = [ScreenLine.styled("Interactive commands reference", .bold), ScreenLine(""),
                     .styled("Press any key to exit", .reverse), ScreenLine("")]
        lines += keys.map { ScreenLine(cut($0, width)) }
        return LiveScreen(lines: lines, cursor: nil)
    }

    static func prompt(_ p: LiveViewState.Prompt, frame: LiveFrame, state: LiveViewState, width: Int, height: Int) -> LiveScreen {
        var lines: [ScreenLine] = []
        let label: String
        let inputRow: Int
        switch p.kind {
        case .regex:
            lines = [.styled("Show statistics for events matching a regex.", .bold), ScreenLine(""),
                     ScreenLine("Current regex: \(state.fields ?? "")")]
            label = "New regex: "
            inputRow = 3
        case .pid, .guest:
            lines = [.styled(p.kind == .pid ? "Show statistics for specific pid." : "Show statistics for specific guest.", .bold),
                     ScreenLine(""), ScreenLine("")]
            label = p.kind == .pid ? "Pid [0 or pid]: " : "Guest [ENTER or guest]: "
            inputRow = 3
        case .delay:
            lines = [.styled("Set update interval (defaults to 3.0s).", .bold), ScreenLine("")]
            label = "Change delay from \(StatTable.format1(state.delay))s to "
            inputRow = 2
        }
        while lines.count < inputRow { lines.append(ScreenLine("")) }
        lines.append(ScreenLine(label + p.input))
        lines.append(ScreenLine(""))
        lines.append(p.message.isEmpty ? ScreenLine("") : .styled(p.message, .bold))
        if p.kind == .pid || p.kind == .guest {
            lines.append(ScreenLine(""))
            lines.append(.styled("  " + lpad("Pid", 8) + "  " + "Guest Name", .underline))
            let offered = frame.guests.filter { !state.kernelThreads.contains($0.pid) && !state.exited.contains($0.pid) }
            for g in offered.prefix(max(0, height - lines.count)) {
                lines.append(ScreenLine("  " + lpad(String(g.pid), 8) + "  " + (g.name?.terminalSafe ?? "")))
            }
        }
        return LiveScreen(lines: lines.map { ScreenLine(ScreenLine.trimmed($0.text), spans: $0.spans) },
                          cursor: .init(row: inputRow, column: label.count + p.input.count))
    }

    // MARK: - Formatting

    static func pct(_ part: UInt64, _ whole: UInt64) -> Double { whole == 0 ? 0 : Double(part) * 100 / Double(whole) }

    /// kvm_stat's CurAvg/s: blank when nothing happened in the interval.
    static func rate(_ delta: UInt64?, _ seconds: Double) -> String {
        guard let delta, delta > 0 else { return "" }
        return String(Int64(saturating: (Double(delta) / max(seconds, 1e-9)).rounded()))
    }

    /// 850ns, 12.3us, 1.2ms, 2.5s.
    public static func duration(_ ns: UInt64) -> String {
        if ns < 1000 { return "\(ns)ns" }
        if ns < 1_000_000 { return StatTable.format1(Double(ns) / 1e3) + "us" }
        if ns < 1_000_000_000 { return StatTable.format1(Double(ns) / 1e6) + "ms" }
        return StatTable.format1(Double(ns) / 1e9) + "s"
    }

    static func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s : s + String(repeating: " ", count: n - s.count) }
    static func lpad(_ s: String, _ n: Int) -> String { s.count >= n ? s : String(repeating: " ", count: n - s.count) + s }
    /// At most n characters, ending in "…" when cut.
    static func cut(_ s: String, _ n: Int) -> String { s.count <= n ? s : String(s.prefix(max(0, n - 1))) + "…" }
}
