import Foundation
import KVMHost
import KVMResources
import KVMScopeViews
import KVMTerminal

/// `kvmscope top`'s full screen: virt-top's keys (P %CPU, M %MEM, T TIME, N ID, plus E EXITS/s and
/// name with `A`), the arrow keys to choose a VM, Enter for its threads (htop's view of one process), Esc
/// back, q to quit. A new sample every `delay` seconds; keys redraw at once.
struct TopScreen {
    let terminal: Terminal
    let stop: StopSignal
    var sort: TopSort
    /// Seconds between samples: `-d`, or virt-top's `d`/`s` key.
    var delay: Double
    let iterations: Int?
    /// `h`/`?`: the key help is up.
    var showingHelp = false
    /// `d`/`s`: the new delay being typed (nil: no prompt); `message` says why an answer was refused.
    var delayInput: String?
    var message: String?
    /// The VM chosen with the arrow keys, by pid; the thread view shows it.
    var selected: Int32?
    var showingThreads = false
    /// virt-top's `1`, `2`, `3` screens (nil: the VM list).
    var screen: TopOtherScreen?
    var frame: TopFrame?
    /// The last warning (a QMP socket that went away), shown above the keys until the next one.
    var warning: String?

    init(terminal: Terminal, stop: StopSignal, sort: TopSort, delay: Double, iterations: Int?, screen: TopOtherScreen? = nil) {
        self.terminal = terminal
        self.screen = screen
        self.stop = stop
        self.sort = sort
        self.delay = delay
        self.iterations = iterations
    }

    static let keysLine = "P %CPU M %MEM T TIME N ID A NAME E EXITS/s  1 CPUs 2 net 3 block 0 VMs  ↑↓ Enter threads  d delay  h help  q quit"

    /// `h`'s screen: every key, as virt-top's help lists them; every line fits 80 columns.
    static let helpLines = [
        "kvmscope top keys (virt-top's, plus htop's thread view)",
        "",
        "  P  sort by %CPU           M  sort by %MEM          T  sort by TIME",
        "  N  sort by ID (pid)       A  sort by NAME          E  sort by EXITS/s",
        "  1  host CPUs              2  network (taps)        3  block devices",
        "  0  the VMs again          Esc  back                h, ?  this help",
        "  ↑ ↓  choose a VM          Enter  the chosen VM's threads and devices",
        "  d, s  set the delay between samples (seconds)       q  quit",
    ]

    /// Applies a typed delay (virt-top's `d`): 0.1 to 3600 s, as `-d` takes it; nil, or why it was refused.
    mutating func setDelay(_ text: String) -> String? {
        guard let d = Double(text.trimmingCharacters(in: .whitespaces)), d.isFinite, (0.1...3600).contains(d) else {
            return "\"\(text)\": the delay must be between 0.1 and 3600 seconds"
        }
        delay = d
        return nil
    }

    mutating func run(_ source: inout TopSource) throws {
        var next = Date().addingTimeInterval(delay)
        draw()
        while !stop.isRaised {
            let key = terminal.key(timeout: min(0.1, max(0, next.timeIntervalSinceNow)))
            if key == .gone {
                stop.raise(SIGHUP)
                return
            }
            if let key {
                let before = delay
                if handle(key) { return }
                // A new delay counts from now.
                if delay != before { next = Date().addingTimeInterval(delay) }
                draw()
            }
            if Date() >= next {
                frame = try source.next()
                if let w = frame?.warnings.last { warning = w }
                next = Date().addingTimeInterval(delay)
                draw()
                if let iterations, let frame, frame.iteration >= iterations { return }
            }
        }
    }

    /// True to quit.
    mutating func handle(_ key: Terminal.Key) -> Bool {
        let pids = frame.map { TopView.rows($0, sort: sort).map(\.vm.pid) } ?? []
        let index = selected.flatMap { pids.firstIndex(of: $0) }
        message = nil
        if var input = delayInput {
            switch key {
            case .escape: delayInput = nil
            case .backspace:
                if !input.isEmpty { input.removeLast() }
                delayInput = input
            case .enter:
                message = setDelay(input)
                delayInput = nil
            case .character(let c) where c.isASCII && (c.isNumber || c == "."): delayInput = input + String(c)
            default: break
            }
            return false
        }
        if showingHelp {
            if key == .character("q") || key == .character("Q") { return true }
            showingHelp = false
            return false
        }
        switch key {
        case .character("q"), .character("Q"): return true
        case .character("P"): sort = .cpu
        case .character("M"): sort = .mem
        case .character("T"): sort = .time
        case .character("N"): sort = .id
        case .character("A"): sort = .name
        case .character("E"): sort = .exits
        // htop's cursor starts on the first row: with none chosen yet, ↓ goes to the second.
        case .up where !pids.isEmpty: selected = pids[max(0, (index ?? 0) - 1)]
        case .down where !pids.isEmpty: selected = pids[min(pids.count - 1, (index ?? 0) + 1)]
        case .enter where !pids.isEmpty:
            // htop's cursor starts on the first row: Enter with none chosen opens the top VM.
            if index == nil { selected = pids[0] }
            showingThreads = true
        case .character("h"), .character("?"): showingHelp = true
        case .character("d"), .character("s"): delayInput = ""
        case .escape, .backspace:
            showingThreads = false
            screen = nil
        case .character("0"):
            // virt-top's 0: the VM list, from any screen (the thread view included).
            screen = nil
            showingThreads = false
        case .character("1"): screen = screen == .hostCPUs ? nil : .hostCPUs
        case .character("2"): screen = screen == .network ? nil : .network
        case .character("3"): screen = screen == .block ? nil : .block
        default: break
        }
        return false
    }

    /// A delay as typed back: `0.5`, `2`.
    static func seconds(_ d: Double) -> String { d == d.rounded() ? String(Int(d)) : String(d) }

    /// "1 vCPU thread", "2 vCPU threads".
    static func count(_ n: Int, _ noun: String) -> String { n == 1 ? "1 \(noun)" : "\(n) \(noun)s" }

    func draw() {
        typealias Line = (text: String, spans: [(column: Int, text: String, attributes: Terminal.Attributes)])
        let size = terminal.size
        var lines: [Line] = []
        guard let frame else {
            terminal.draw([("kvmscope top: first sample in \(delay) s…", []), ("", []), (Self.keysLine, [])])
            return
        }
        let screen = TopView.render(frame, sort: sort, width: size.columns)
        let rows = TopView.rows(frame, sort: sort)
        if let other = self.screen {
            let body = TopView.body(frame, screen: other, sort: sort)
            lines = screen.prefix(4).map { ($0, []) } + [("", [])]
            lines.append((body[0], [(0, body[0], .reverse)]))
            lines += body.dropFirst().map { ($0, []) }
        } else if showingThreads, let pid = selected, let row = rows.first(where: { $0.vm.pid == pid }) {
            lines = screen.prefix(4).map { ($0, []) }
            lines.append(("", []))
            let inferred = row.vm.vcpuSource == .guestTime ? ", numbers inferred" : ""
            lines.append(("VM \(pid) \(row.vm.name.terminalSafe): \(Self.count(row.vm.threads.filter { $0.vcpu != nil }.count, "vCPU thread"))\(inferred) (CPU% and WAIT% of one CPU, like htop; P99 exit handling)",
                          []))
            let threads = TopView.renderThreads(row, sample: frame.sample)
            lines.append((threads[0], [(0, threads[0], .reverse)]))
            // A vCPU thread traced under another number than its name's: its VCPU cell in red, as htop marks.
            let marked = TopView.markedThreadCells(row)
            for (i, text) in threads.enumerated().dropFirst() {
                guard marked.lines.contains(i) else {
                    lines.append((text, []))
                    continue
                }
                let cell = String(Array(text)[marked.columns.clamped(to: 0..<text.count)])
                lines.append((text, [(marked.columns.lowerBound, cell, Terminal.Attributes([.red, .bold]))]))
            }
            // Its devices under its threads (the 3 and 2 screens' rows of this VM).
            let devices = TopView.renderVMDevices(row)
            if !devices.isEmpty { lines += [("", [])] + devices.map { ($0, []) } }
        } else {
            for (i, text) in screen.enumerated() {
                if i == 5 {
                    lines.append((text, [(0, text.padding(toLength: max(text.count, size.columns), withPad: " ", startingAt: 0),
                                          .reverse)]))
                } else if i > 5, rows[i - 6].vm.pid == (selected ?? rows.first?.vm.pid) {
                    // htop's cursor bar: the chosen VM (the first row until one is chosen) in reverse video.
                    lines.append((text, [(0, text.padding(toLength: max(text.count, size.columns), withPad: " ", startingAt: 0),
                                          .reverse)]))
                } else {
                    lines.append((text, []))
                }
            }
        }
        if showingHelp { lines = Self.helpLines.map { ($0, []) } }
        // The bottom: the delay prompt or a refused answer, else the last warning; then the keys.
        let status = delayInput.map { "Change delay from \(Self.seconds(delay)) to: \($0)" } ?? message
            ?? warning.map { "kvmscope: " + $0.terminalSafe }
        let bodyRows = max(1, size.rows - (status == nil ? 1 : 2))
        var shown = Array(lines.prefix(bodyRows))
        while shown.count < bodyRows { shown.append(("", [])) }
        if let status { shown.append((status, [])) }
        shown.append((Self.keysLine, []))
        terminal.draw(shown.map { line in (String(line.text.prefix(size.columns)), line.spans) })
    }
}
