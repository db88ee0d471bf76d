import ArgumentParser
import Foundation
import KVMAnalysis
import KVMExits
import KVMHost
import KVMScopeViews
import KVMSources
import KVMTerminal

/// `kvmscope` / `kvmscope live`: kvm_stat's full-screen view, with latencies, per-guest and per-vCPU rows.
struct LiveCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "live",
        abstract: "kvm_stat's full-screen view, with exit latencies, sparklines, per-guest and per-vCPU rows.",
        discussion: """
            Keys as in kvm_stat: b by guest, c clear filters, f regex filter, g guest by name, p pid, h help,
            o sort by Total/CurAvg/s, q quit, r reset, s refresh delay, x child events; plus v per-vCPU rows
            and the arrow keys to select a row (an exit reason shows its top guest RIPs).
            On a dumb terminal (or when stdout is not a terminal) it falls back to `stat -l`.
              kvmscope                           all VMs
              kvmscope live -p 1234 -s 1         one VM, refreshed every second
              kvmscope live --demo               starts a demo guest when no VM runs on this host
            """)

    @Option(name: [.customShort("s"), .customLong("set-delay")], help: "Refresh interval in seconds (0.1 to 25.5).")
    var delay: Double = 3

    @Flag(help: "When no other VM runs on this host, run demo guests (kvmscope storm) and show them.")
    var demo = false

    @OptionGroup(title: "Filters") var filters: FilterOptions
    @OptionGroup(title: "Tracing") var trace: TraceOptions

    func validate() throws {
        guard (0.1...25.5).contains(delay) else { throw ValidationError("-s/--set-delay must be between 0.1 and 25.5") }
    }

    func run() throws {
        let filter = try filters.filter()
        // SIGHUP too: a closed terminal (tmux kill-session, ssh drop) must end the view and its trace.
        let stop = StopSignal(signals: [SIGINT, SIGTERM, SIGHUP])
        let demoGuests = demo ? DemoGuests.startIfNoVM() : nil
        defer { demoGuests?.stop() }

        if let reason = Terminal.unusableReason() {
            try logMode(because: reason)
            return
        }
        let session = try LiveSession(config: trace.config())
        defer { session.stop() }
        let terminal: Terminal
        do { terminal = try Terminal() } catch {
            session.stop()
            try logMode(because: "\(error)")
            return
        }
        let size = terminal.size
        if size.columns < LiveView.minimumWidth || size.rows < LiveView.minimumHeight {
            terminal.end()
            session.stop()
            try logMode(because: "terminal is \(size.columns)x\(size.rows), smaller than \(LiveView.minimumWidth)x\(LiveView.minimumHeight)")
            return
        }
        var loop = LiveLoop(session: session, terminal: terminal, stop: stop,
                            state: LiveViewState(fields: filters.fields, pid: filter.vms?.min(),
                                                 guestName: filters.guest ?? filter.vms?.min().flatMap(ThreadDirectory.guestName(pid:)),
                                                 delay: delay))
        if let demoGuests, !demoGuests.processes.isEmpty {
            loop.state.notice = "demo guest (kvmscope storm) running: no other VM on this host"
        }
        defer { terminal.end() }
        try loop.run()
    }

    /// kvm_stat's log mode instead of the full screen, with one line saying why.
    func logMode(because reason: String) throws {
        FileHandle.standardError.write(Data("kvmscope: \(reason): showing the log (kvmscope stat -l) instead of the full screen\n".utf8))
        var args = ["-l", "-s", "\(delay)", "--buffer-kb", "\(trace.bufferKB)"]
        if let pid = filters.pid { args += ["-p", "\(pid)"] }
        if let guest = filters.guest { args += ["-g", guest] }
        if let fields = filters.fields { args += ["-f", fields] }
        for e in trace.events { args += ["--event", e] }
        let stat = try StatCommand.parse(args)
        try stat.run()
    }
}

/// The demo: guests started by `live --demo` when nothing else uses KVM, killed when the view ends.
final class DemoGuests {
    let processes: [Process]

    init(processes: [Process]) { self.processes = processes }

    static func startIfNoVM() -> DemoGuests {
        guard KVMProcesses.running(excluding: [getpid()]).isEmpty else { return DemoGuests(processes: []) }
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        var started: [Process] = []
        for (kind, vcpus) in [("io", 2), ("mmio", 1), ("hlt", 1)] {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: exe)
            p.arguments = ["storm", "--kind", kind, "--vcpus", "\(vcpus)", "--exits", "200000", "--seconds", "100000"]
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            if (try? p.run()) != nil { started.append(p) }
        }
        return DemoGuests(processes: started)
    }

    private var stopped = false

    func stop() {
        guard !stopped else { return }
        stopped = true
        for p in processes where p.isRunning { kill(p.processIdentifier, SIGKILL) }
        for p in processes { p.waitUntilExit() }
    }
}
