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
        usage: "kvmscope live [<options>]",
        discussion: """
            Keys as in kvm_stat: b by guest, c clear filters, f regex filter, g guest by name, p pid, h help, o \
            sort by Total/CurAvg/s, q quit, r reset, s refresh delay, x child events; plus v per-vCPU rows and the \
            arrow keys to select a row (an exit reason shows its top guest RIPs).

            On a dumb terminal (or when stdout is not a terminal) it falls back to `stat -l`. --event also takes \
            perf kvm stat's analyses: ioport or mmio opens the view on that space's I/O rows (the i key), which --qmp \
            names by the VM's own PCI devices.

              kvmscope                        all VMs
              kvmscope live -p 1234 -s 1      one VM, refreshed every second
              kvmscope live --demo            a demo guest when no VM runs on this host
              kvmscope live --event mmio --qmp vm.qmp   MMIO rows named by PCI device
            """)

    @Option(name: [.customShort("s"), .customLong("set-delay")], parsing: .unconditional, help: "Refresh interval in seconds (0.1 to 25.5).")
    var delay: Double = 3

    @Flag(help: "When no other VM runs on this host, run demo guests (kvmscope storm) and show them.")
    var demo = false

    @OptionGroup(title: "Filters") var filters: FilterOptions
    @OptionGroup(title: "Tracing") var trace: TraceOptions
    /// `--qmp`: the `i` screen names each VM's ports and MMIO addresses by its own PCI BARs (query-pci).
    @OptionGroup(title: "QEMU") var qmp: QMPOptions

    func validate() throws {
        guard (0.1...25.5).contains(delay) else { throw ValidationError("-s/--set-delay must be between 0.1 and 25.5") }
    }

    func run() throws {
        if let help = try filters.fieldsHelp() { return writeStdout(help) }
        let filter = try filters.filter()
        // SIGHUP too: a closed terminal (tmux kill-session, ssh drop) must end the view and its trace.
        let stop = StopSignal()
        // Left open for days: freed tables go back to the kernel as threads retire (as serve's).
        FreeMemory.followLiveMemory()
        // Tests start the demo guests even beside other VMs (other tests' guests) with KVMSCOPE_DEMO_ALWAYS=1:
        // an environment variable, not an option users would see.
        let demoAlways = ProcessInfo.processInfo.environment["KVMSCOPE_DEMO_ALWAYS"] == "1"
        let demoGuests = demo || demoAlways ? DemoGuests.startIfNoVM(always: demoAlways) : nil
        defer { demoGuests?.stop() }

        if let reason = Terminal.unusableReason() {
            try logMode(because: reason)
            return
        }
        // perf kvm stat live's --event ioport|mmio: the view opens on `i`'s rows (see IOAnalysis).
        var config = trace.config()
        config.events = TraceOptions.kvmEvents(IOAnalysis.tracedEvents(trace.events))
        // A view left open for days on a host where VMs come and go: threads that exit retire into their VM × vCPU's
        // rows (the rows the view shows; `r`'s baseline follows them), so memory follows the threads alive, as
        // serve's does.
        let session = try LiveSession(config: config, retireThreads: true)
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
        loop.resources.qmp = qmp.monitors()
        let spaces = IOAnalysis.analyses(trace.events).spaces
        if !spaces.isEmpty { loop.state.mode = .io }
        loop.state.ioSpaces = Set(spaces)
        if let demoGuests {
            loop.state.notice = demoGuests.skipped ?? demoGuests.failure
                ?? "demo guest (kvmscope storm) running: no other VM on this host"
        }
        defer { terminal.end() }
        try loop.run()
    }

    /// kvm_stat's log mode instead of the full screen, with one line saying why once the trace runs (a trace that
    /// cannot start is its one error line).
    func logMode(because reason: String) throws {
        // The terminal's keys still count: q ends the log as it ends the view, and a terminal that goes
        // away (hangup, end of file, EIO) ends it like SIGHUP. Ctrl-C raises SIGINT as usual.
        if Terminal.beginKeys() {
            Thread.detachNewThread {
                while !StopSignals.wait(seconds: 0) {
                    switch Terminal.nextKey(timeout: 1) {
                    case .gone: StopSignals.raise(SIGHUP)
                    case .character("q"), .character("Q"): StopSignals.raise(SIGINT)
                    default: break
                    }
                }
            }
        }
        defer { Terminal.endKeys() }
        var args = ["-l", "-s", "\(delay)", "--buffer-kb", "\(trace.bufferKB)"]
        if let pid = filters.pid { args += ["-p", "\(pid)"] }
        if let guest = filters.guest { args += ["-g", guest] }
        if let fields = filters.fields { args += ["-f", fields] }
        for e in trace.events { args += ["--event", e] }
        for socket in qmp.sockets { args += ["--qmp", socket] }
        if !qmp.sockets.isEmpty { args += ["--qmp-timeout", "\(qmp.timeout)"] }
        let stat = try StatCommand.parse(args)
        try stat.run(notice: "kvmscope: \(reason): showing the log (kvmscope stat -l) instead of the full screen\n")
    }
}

/// The demo: guests started by `live --demo` when nothing else uses KVM, killed when the view ends — and by
/// the kernel when the view dies without ending (PR_SET_PDEATHSIG, see ``ChildProcess``).
final class DemoGuests {
    let processes: [ChildProcess]
    /// Why nothing was started, for the notice line (nil when guests run, or when starting them failed:
    /// then `failure` says why).
    let skipped: String?
    let failure: String?

    init(processes: [ChildProcess], skipped: String? = nil, failure: String? = nil) {
        self.processes = processes
        self.skipped = skipped
        self.failure = failure
    }

    /// Starts the demo guests from the calling thread (the main thread: the guests die with it).
    static func startIfNoVM(always: Bool = false) -> DemoGuests {
        let others = always ? [] : KVMProcesses.running(excluding: [getpid()])
        if !others.isEmpty {
            let pids = others.prefix(3).map(String.init).joined(separator: ", ") + (others.count > 3 ? ", …" : "")
            return DemoGuests(processes: [], skipped: "--demo: no demo guest started: another VM was running at start (pid \(pids))")
        }
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        var started: [ChildProcess] = []
        var failure: String?
        for (kind, vcpus) in [("io", 2), ("mmio", 1), ("hlt", 1)] {
            do {
                // Named by kind (`b` and `g` tell them apart: demo-io, demo-mmio, demo-hlt).
                started.append(try ChildProcess([exe, "storm", "--kind", kind, "--vcpus", "\(vcpus)", "--exits", "200000",
                                                 "--seconds", "100000", "--name", "demo-\(kind)"],
                                                stdoutTo: "/dev/null", stderrTo: "/dev/null"))
            } catch {
                failure = "--demo: \(error)"
            }
        }
        return DemoGuests(processes: started, failure: failure)
    }

    private var stopped = false

    func stop() {
        guard !stopped else { return }
        stopped = true
        for p in processes { p.signal(SIGKILL) }
        for p in processes { _ = try? p.wait() }
    }
}
