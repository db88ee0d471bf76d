import Foundation
import KVMAnalysis
import KVMExits
import KVMHost
import KVMResources
import KVMScopeViews
import KVMSources
import KVMTerminal

/// The live view's loop: a snapshot and two summaries per refresh (cost independent of the event rate),
/// keys handled as they come, the screen redrawn after either.
struct LiveLoop {
    let session: LiveSession
    let terminal: Terminal
    let stop: StopSignal
    var state: LiveViewState

    /// `r`: later snapshots are shown minus this one.
    var baseline: AggregateSnapshot?
    var snapshot: AggregateSnapshot
    var previousSnapshot: AggregateSnapshot?
    var seconds = 1.0
    var frame = LiveFrame(current: Summary(), previous: nil, seconds: 1)
    /// The snapshot of the last sparkline sample. A sample is a rate over a whole refresh interval: a refresh
    /// that a key forces would otherwise add a rate over a few milliseconds (a false spike).
    var historyBase: AggregateSnapshot
    /// pid → kernel thread or not, asked of /proc once per pid.
    var kernelThread: [Int32: Bool] = [:]
    /// What each VM costs the host, sampled at each refresh, for the guest list's cpu and wait.
    let resources = ResourceSampler()
    var guestUse: [Int32: GuestResourceUse] = [:]
    /// Each VM's own device map from the PCI BARs its QMP socket (`--qmp`) gave last: the `i` screen's names
    /// (laid over the standard PC map).
    var deviceMaps: [Int32: DeviceMap] = [:]

    init(session: LiveSession, terminal: Terminal, stop: StopSignal, state: LiveViewState) {
        self.session = session
        self.terminal = terminal
        self.stop = stop
        self.state = state
        snapshot = session.snapshot()
        historyBase = snapshot
        resources.excluded = [getpid()]
        _ = resources.sample()
    }

    mutating func run() throws {
        try rebuild()
        markGuests()
        // kvm_stat shows the first numbers after 0.25 s, then every delay.
        var nextRefresh = Date().addingTimeInterval(0.25)
        var dirty = true
        while !stop.isRaised {
            if dirty {
                draw()
                dirty = false
            }
            let key = terminal.key(timeout: min(0.1, max(0, nextRefresh.timeIntervalSinceNow)))
            // The terminal went away (hangup, end of file, EIO): end in every state, as SIGHUP does.
            if key == .gone {
                stop.raise(SIGHUP)
                return
            }
            if let key {
                switch try handle(key) {
                case .quit: return
                case .refresh: nextRefresh = .distantPast
                case .redraw: break
                }
                dirty = true
            }
            if Date() >= nextRefresh {
                try refresh()
                nextRefresh = Date().addingTimeInterval(state.delay)
                dirty = true
            }
        }
    }

    func draw() {
        let size = terminal.size
        let screen = LiveView.render(frame, state: state, width: size.columns, height: size.rows)
        terminal.draw(screen.lines.map { line in
            (line.text, line.spans.map { ($0.column, $0.text, Self.attributes($0.style)) })
        }, cursor: screen.cursor.map { ($0.row, $0.column) })
    }

    static func attributes(_ s: ScreenStyle) -> Terminal.Attributes {
        var a: Terminal.Attributes = []
        if s.contains(.bold) { a.insert(.bold) }
        if s.contains(.reverse) { a.insert(.reverse) }
        if s.contains(.red) { a.insert(.red) }
        if s.contains(.underline) { a.insert(.underline) }
        return a
    }

    /// A new snapshot: rates over the time since the last one.
    mutating func refresh() throws {
        previousSnapshot = snapshot
        snapshot = session.snapshot()
        seconds = Double(snapshot.timestamp &- previousSnapshot!.timestamp) / 1e9
        sampleResources()
        checkGuest()
        try rebuild()
        markGuests()
        try recordHistory()
    }

    /// Each VM's CPU and vCPU wait over the interval since the last refresh.
    mutating func sampleResources() {
        let s = resources.sample()
        // A QMP socket's problem is the notice line (stderr would write over the screen).
        if let warning = resources.takeWarnings().last { state.notice = warning }
        for vm in s.vms where !vm.gone {
            if let map = vm.deviceMap { deviceMaps[vm.pid] = map }
        }
        guard s.intervalSeconds > 0 else { return }
        var use: [Int32: GuestResourceUse] = [:]
        for vm in s.vms where !vm.gone {
            guard let d = vm.processDelta else { continue }
            use[vm.pid] = GuestResourceUse(cpuPercent: s.seconds(d.cpuTicks) / s.intervalSeconds * 100,
                                           waitPercent: Double(vm.vcpuDelta?.waitNanoseconds ?? 0) / 1e9 / s.intervalSeconds * 100)
        }
        guestUse = use
    }

    /// One sparkline sample per refresh interval, for every row of every mode, under no VM filter (the whole
    /// host's sparklines) and under each VM chosen lately (theirs: ``LiveViewState/vmHistories``), so that
    /// choosing a VM and going back loses no history (``LiveView/historyRates(_:state:)``). Deltas need no
    /// baseline: `r` does not touch the history.
    mutating func recordHistory() throws {
        let elapsed = Double(snapshot.timestamp &- historyBase.timestamp) / 1e9
        guard elapsed >= state.delay * 0.9 else { return }
        let guests = try GuestTotal.of(snapshot), previousGuests = try GuestTotal.of(historyBase)
        for vm in [nil] + state.vmHistories.keys.sorted() as [Int32?] {
            let vms = SummaryFilter(vms: vm.map { [$0] }, fields: nil)
            let frame = LiveFrame(current: try Summary(snapshot, filter: vms), previous: try Summary(historyBase, filter: vms),
                                  seconds: elapsed, guests: guests, previousGuests: previousGuests)
            var shown = state
            shown.pid = vm
            state.record(LiveView.historyRates(frame, state: shown), vm: vm)
        }
        historyBase = snapshot
    }

    /// Which listed pids are kernel threads (never guests) or have exited (not offered by `p` and `g`).
    mutating func markGuests() {
        var exited: Set<Int32> = []
        for g in frame.guests {
            if kernelThread[g.pid] == nil { kernelThread[g.pid] = ThreadDirectory.isKernelThread(g.pid) }
            if !ThreadDirectory.processExists(g.pid) { exited.insert(g.pid) }
        }
        state.kernelThreads = Set(kernelThread.filter(\.value).keys)
        state.exited = exited
    }

    /// The frame for the current snapshots and filters.
    mutating func rebuild() throws {
        let current = baseline.map { snapshot.subtracting($0) } ?? snapshot
        let previous = previousSnapshot.map { p in baseline.map { p.subtracting($0) } ?? p }
        frame = LiveFrame(current: try Summary(current, filter: state.filter),
                          previous: try previous.map { try Summary($0, filter: state.filter) },
                          seconds: seconds, guests: try GuestTotal.of(current, filter: state.filter),
                          previousGuests: try previous.map { try GuestTotal.of($0, filter: state.filter) } ?? [])
        frame.guestResources = guestUse
        if !deviceMaps.isEmpty {
            frame.current.ioAccesses.name(devices: deviceMaps)
            frame.previous?.ioAccesses.name(devices: deviceMaps)
        }
    }

    /// kvm_stat: a guest that exits is DEAD until a process with its name appears again.
    mutating func checkGuest() {
        guard let pid = state.pid else {
            state.guestDead = false
            return
        }
        if ThreadDirectory.processExists(pid) {
            state.guestDead = false
            return
        }
        state.guestDead = true
        if let name = state.guestName {
            let pids = ThreadDirectory.pids(ofGuest: name).filter { $0 != pid }
            if pids.count == 1 {
                state.pid = pids[0]
                state.guestDead = false
            }
        }
    }

    enum Outcome { case quit, refresh, redraw }

    mutating func handle(_ key: Terminal.Key) throws -> Outcome {
        if state.showingHelp {
            state.showingHelp = false
            return .redraw
        }
        if state.prompt != nil { return try handlePrompt(key) }
        state.message = nil
        let rows = LiveView.rows(frame, state: state, width: terminal.size.columns)
        switch key {
        case .up: state.moveSelection(by: -1, count: rows.count)
        case .down: state.moveSelection(by: 1, count: rows.count)
        case .pageUp: state.moveSelection(by: -10, count: rows.count)
        case .pageDown: state.moveSelection(by: 10, count: rows.count)
        case .resize, .gone: break
        case .enter:
            if state.mode == .guests, rows.indices.contains(state.selected), let pid = rows[state.selected].pid {
                choose(pid: pid)
                state.mode = .events
                try rebuild()
            }
        case .escape, .backspace: return .refresh
        case .character(let c):
            switch c {
            case "b":
                state.mode = state.mode == .guests ? .events : .guests
                state.selected = 0
            case "c":
                state.clearFilters()
                try rebuild()
            case "f": state.prompt = .init(kind: .regex)
            case "g": state.prompt = .init(kind: .guest)
            case "p": state.prompt = .init(kind: .pid)
            case "s": state.prompt = .init(kind: .delay)
            case "h": state.showingHelp = true
            case "o": state.sortByTotal.toggle()
            case "q": return .quit
            case "r":
                snapshot = session.snapshot()
                baseline = snapshot
                previousSnapshot = snapshot
                try rebuild()
            case "x": state.showChildren.toggle()
            case "i":
                state.mode = state.mode == .io ? .events : .io
                state.selected = 0
            case "v":
                if state.mode == .vcpus {
                    state.mode = .events
                } else if state.mode == .guests, rows.indices.contains(state.selected), let pid = rows[state.selected].pid {
                    choose(pid: pid)
                    state.mode = .vcpus
                    try rebuild()
                } else if LiveView.vcpuVM(frame, state: state) != nil {
                    state.mode = .vcpus
                } else {
                    state.message = "v: choose a guest first (p, g, or b then Enter)"
                }
                state.selected = 0
            default: return .refresh
            }
        }
        return .redraw
    }

    mutating func choose(pid: Int32?) {
        state.pid = pid
        state.guestName = pid.flatMap(ThreadDirectory.guestName(pid:))
        state.guestDead = false
        state.selected = 0
    }

    mutating func handlePrompt(_ key: Terminal.Key) throws -> Outcome {
        guard var p = state.prompt else { return .redraw }
        switch key {
        case .escape:
            state.prompt = nil
            return .redraw
        case .backspace:
            if !p.input.isEmpty { p.input.removeLast() }
        case .character(let c):
            if c.isASCII, let v = c.asciiValue, v >= 32 { p.input.append(c) }
        case .enter:
            if let refused = submit(p) {
                p.message = refused
                p.input = ""
            } else {
                state.prompt = nil
                try rebuild()
                return .redraw
            }
        default: break
        }
        state.prompt = p
        return .redraw
    }

    /// Applies a prompt's answer, or says why not (kvm_stat's messages).
    mutating func submit(_ p: LiveViewState.Prompt) -> String? {
        let text = p.input.trimmingCharacters(in: .whitespaces)
        switch p.kind {
        case .regex: return state.setRegex(text)
        case .delay: return state.setDelay(text)
        case .pid:
            if text.isEmpty || text == "0" {
                choose(pid: nil)
                return nil
            }
            guard let pid = Int32(text), pid > 0 else { return "\"\(text)\": Not a valid pid" }
            guard ThreadDirectory.processExists(pid) else { return "\"\(text)\": Not a running process" }
            choose(pid: pid)
            return nil
        case .guest:
            if text.isEmpty {
                choose(pid: nil)
                return nil
            }
            var pids = ThreadDirectory.pids(ofGuest: text)
            if pids.isEmpty {
                pids = frame.guests.filter { $0.name == text && !state.kernelThreads.contains($0.pid) }.map(\.pid)
            }
            if pids.isEmpty { return "\"\(text)\": Not an active guest" }
            if pids.count > 1 { return "\"\(text)\": Multiple matches found, use pid filter instead" }
            choose(pid: pids[0])
            state.guestName = text
            return nil
        }
    }
}
