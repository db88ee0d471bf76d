import ArgumentParser
import Foundation
import KVMAnalysis
import KVMExits
import KVMHost
import KVMResources
import KVMScopeViews
import KVMSources
import KVMTerminal
import SystemPackage

struct TopCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "top",
        abstract: "virt-top's view: what each VM costs the host (CPU, memory, I/O, network) beside its exits.",
        usage: "kvmscope top [<options>]",
        discussion: """
            One row per VM (a process holding a KVM VM descriptor), from /proc and /sys only:

              ID S RDRQ WRRQ RXBY TXBY %CPU %MEM TIME EXITS/s TOP EXIT P99 NAME

            %CPU is virt-top's: the share of all host CPUs; the header and --json/--csv also give htop's share of \
            one CPU. RDRQ/WRRQ are block device requests where QMP or libvirt gives them (virt-top's), else read/write syscalls, and RXBY/TXBY the guest's tap bytes, per interval. EXITS/s \
            comes from the kvm:* tracepoints (kvm_exit, else kvm_userspace_exit).

              kvmscope top -b -n 3 -d 1       three screens, one second apart
              kvmscope top -b -3 -n 2         virt-top's block devices screen, twice
              kvmscope top --json -n 5        one JSON object per line per iteration
              kvmscope top -p 4242,4243       only these two VMs (htop -p)
              kvmscope top -b --csv top.csv   screens, and a CSV row per VM per iteration
            """)

    @Flag(name: [.customShort("b"), .long], help: "Batch mode: print screens one after another (virt-top -b).")
    var batch = false

    @Flag(name: .customShort("1"), help: "Show the host CPUs' screen (virt-top -1; the 1 key toggles it).")
    var hostCPUsScreen = false

    @Flag(name: .customShort("2"), help: "Show the network interfaces' screen (virt-top -2; the 2 key toggles it).")
    var networkScreen = false

    @Flag(name: .customShort("3"), help: "Show the block devices' screen (virt-top -3; the 3 key toggles it).")
    var blockScreen = false

    /// The screen `-1`, `-2` or `-3` chose (nil: the VM list).
    var otherScreen: TopOtherScreen? {
        hostCPUsScreen ? .hostCPUs : networkScreen ? .network : blockScreen ? .block : nil
    }

    @Option(name: [.customShort("n"), .customLong("iterations")], parsing: .unconditional, help: "Stop after this many iterations.")
    var iterations: Int?

    @Option(name: [.customShort("d"), .customLong("delay")], parsing: .unconditional, help: "Seconds between iterations.")
    var delay: Double = 3

    @Flag(help: "Stream mode: like -b (virt-top --stream).")
    var stream = false

    @Option(help: "Also write one CSV row per VM per iteration to this file (-: to stdout, instead of screens).")
    var csv: String?

    @Flag(help: "Print one JSON object per iteration, one per line, instead of screens.")
    var json = false

    @Option(name: [.customShort("o"), .customLong("sort")], help: "Sort by cpu, mem, time, id, name or exits.")
    var sort: String = "cpu"

    @Flag(name: .customLong("no-exits"), help: "Do not trace exits (no tracefs needed; EXITS/s shows -).")
    var noExits = false

    @Option(name: [.customShort("c"), .customLong("connect")],
            help: "libvirt URI to read domain names, UUIDs and statistics from (virt-top -c). Default: qemu:///system when libvirtd runs; 'none': never.")
    var connect: String?

    @Option(name: [.customShort("p"), .customLong("pid")],
            help: ArgumentHelp("Show only these VMs: PID[,PID…] (htop -p); only their threads are traced.", valueName: "pid"))
    var pid: String?

    @OptionGroup(title: "QMP") var qmp: QMPOptions

    /// The `-p` list: pids > 0, comma-separated (htop's spelling); nil without `-p`.
    static func pidList(_ text: String?) throws -> Set<Int32>? {
        guard let text else { return nil }
        var out: Set<Int32> = []
        for item in text.split(separator: ",", omittingEmptySubsequences: false) {
            guard let p = Int32(item.trimmingCharacters(in: .whitespaces)), p > 0 else {
                throw ValidationError("-p/--pid takes PID[,PID…] with each pid > 0 (got '\(text)')")
            }
            out.insert(p)
        }
        return out
    }

    func validate() throws {
        guard delay >= 0.1 && delay <= 3600 else { throw ValidationError("-d/--delay must be between 0.1 and 3600 seconds") }
        if let iterations, iterations < 1 { throw ValidationError("-n/--iterations must be at least 1") }
        if json && csv == "-" { throw ValidationError("--json and --csv - both write standard output: give --csv a file") }
        if [hostCPUsScreen, networkScreen, blockScreen].filter({ $0 }).count > 1 {
            throw ValidationError("-1, -2 and -3 each choose the screen shown: give one")
        }
        if otherScreen != nil && (json || csv == "-") {
            throw ValidationError("-1, -2 and -3 choose a screen; --json and --csv - print every VM's numbers instead of screens")
        }
        _ = try Self.pidList(pid)
        guard TopSort(rawValue: sort) != nil else {
            throw ValidationError("-o/--sort must be one of \(TopSort.allCases.map(\.rawValue).joined(separator: ", ")) (got '\(sort)')")
        }
    }

    func run() throws {
        let stop = StopSignal()
        let order = TopSort(rawValue: sort)!
        // Runs for days: freed tables go back to the kernel as threads retire (as serve's).
        FreeMemory.followLiveMemory()
        let batchMode = batch || stream || json || Terminal.unusableReason() != nil
        let only = try Self.pidList(pid)
        for p in only?.sorted() ?? [] where !ThreadDirectory.processExists(p) { throw KVMScopeError.usage("no process with pid \(p)") }
        // VMs that cannot be found are said, never an empty screen that looks like a host without VMs.
        for p in only?.sorted() ?? [] {
            if access("/proc/\(p)/fd", R_OK) != 0 {
                throw KVMScopeError.io("cannot tell whether pid \(p) runs a VM: /proc/\(p)/fd: \(Errno(rawValue: errno)) (run as root)")
            }
            if let note = StatCommand.noVMNote(pid: p, consequence: "top shows no row for it") { writeStderr("kvmscope: \(note)\n") }
        }
        if only == nil {
            let hidden = KVMProcesses.unreadable()
            if !hidden.isEmpty {
                writeStderr("kvmscope: the open files of \(hidden.count) process\(hidden.count == 1 ? "" : "es") cannot be read "
                            + "(/proc/\(hidden[0])/fd: Permission denied): a VM among them is not shown (run as root)\n")
            }
        }
        var source = try TopSource(traceExits: !noExits, libvirt: try LibvirtReader.open(connect), qmp: qmp.monitors(),
                                   only: only)
        defer { source.stop() }
        if !batchMode {
            let terminal: Terminal
            do { terminal = try Terminal() } catch {
                return try runBatch(source: &source, stop: stop, order: order, because: "\(error)")
            }
            defer { terminal.end() }
            var screen = TopScreen(terminal: terminal, stop: stop, sort: order, delay: delay, iterations: iterations,
                                   screen: otherScreen)
            try screen.run(&source)
            source.stop()
            return
        }
        try runBatch(source: &source, stop: stop, order: order, because: nil)
    }

    /// Screens (or JSON lines) one after another, and CSV rows.
    func runBatch(source: inout TopSource, stop: StopSignal, order: TopSort, because reason: String?) throws {
        if let reason { writeStderr("kvmscope: \(reason): showing batch screens (top -b) instead of the full screen\n") }
        var csvOut: Int32?
        let csvToStdout = csv == "-"
        if let csv {
            let fd = csvToStdout ? STDOUT_FILENO : try createOutputFile(csv)
            csvOut = fd
            try write(fd, TopView.csvHeader + "\n", path: csvToStdout ? nil : csv, stop: stop)
        }
        defer { if let csvOut, !csvToStdout { close(csvOut) } }
        try TraceRun(stop: stop).wait(every: delay) {
            let frame = try source.next()
            for w in frame.warnings { writeStderr("kvmscope: \(w)\n") }
            if csvToStdout {
                // The CSV rows are what stdout carries.
            } else if json {
                try write(STDOUT_FILENO, TopView.json(frame, sort: order).serialized() + "\n", path: nil, stop: stop)
            } else {
                let lines = otherScreen.map { TopView.render(frame, screen: $0, sort: order) } ?? TopView.render(frame, sort: order)
                let text = lines.joined(separator: "\n") + "\n"
                try write(STDOUT_FILENO, (frame.iteration > 1 ? "\n" : "") + text, path: nil, stop: stop)
            }
            if let csvOut, let csv {
                let lines = TopView.csvLines(frame, sort: order)
                if !lines.isEmpty {
                    try write(csvOut, lines.joined(separator: "\n") + "\n", path: csvToStdout ? nil : csv, stop: stop)
                }
            }
            return iterations.map { frame.iteration < $0 } ?? true
        }
        source.stop()
    }

    /// stdout that went away (EPIPE, EIO: a closed pipe, a hung-up terminal) ends top like SIGHUP; a file, or
    /// a stdout that cannot take a line (ENOSPC: a full disk or /dev/full), is an error.
    func write(_ fd: Int32, _ text: String, path: String?, stop: StopSignal) throws {
        guard let e = StandardDescriptors.write(fd, text) else { return }
        if let path { throw KVMScopeError.io("cannot write \(path): \(Errno(rawValue: e))") }
        guard e == EPIPE || e == EIO else { throw KVMScopeError.io("cannot write standard output: \(Errno(rawValue: e))") }
        stop.raise(SIGHUP)
    }
}

/// What `top` shows, iteration after iteration: the resource sampler and, unless told not to, the live
/// exit trace (one tracefs instance for the whole run).
struct TopSource {
    let sampler = ResourceSampler()
    let session: LiveSession?
    var exits = TopExitTally()
    var iteration = 0
    let clock = ISO8601DateFormatter()
    var libvirt: LibvirtReader?

    /// Starts the trace (throws its one-line errors) and takes the first sample: the first frame has deltas.
    /// - Parameter only: `-p`: the only VMs sampled, and the only processes (with their threads) traced.
    init(traceExits: Bool, libvirt: LibvirtReader? = nil, qmp: [QMPMonitor] = [], only: Set<Int32>? = nil) throws {
        self.libvirt = libvirt
        sampler.excluded = [getpid()]
        sampler.qmp = qmp
        sampler.only = only
        var config = TraceConfig()
        config.onlyPids = only?.sorted() ?? []
        do {
            // Threads that exit retire into their VM's rows (memory follows the threads alive, as serve's does).
            session = traceExits ? try LiveSession(config: config, retireThreads: true) : nil
        } catch let e as KVMScopeError {
            // The resources need no tracing: say how to see them anyway.
            throw KVMScopeError.usage("\(e.description); `kvmscope top --no-exits` shows the resources without exits")
        }
        if let session { exits.update(try Summary(session.snapshot())) }
        // libvirt read with it too: the first frame's block devices have their growth (virt-top's RDRQ/WRRQ), as
        // a --qmp socket's have.
        var first = sampler.sample()
        libvirt?.attach(to: &first)
        sampler.printWarnings()
    }

    /// The next frame: growth since the previous one.
    mutating func next() throws -> TopFrame {
        iteration += 1
        var sample = sampler.sample()
        libvirt?.attach(to: &sample)
        var perVM: [Int32: TopExits]?
        var lost: UInt64?
        if let session {
            let summary = try Summary(session.snapshot())
            perVM = exits.update(summary)
            lost = summary.lostEvents
        }
        var frame = TopFrame(sample: sample, iteration: iteration, time: clock.string(from: Date()), exits: perVM)
        frame.lostEvents = lost
        frame.warnings = sampler.takeWarnings()
        return frame
    }

    private var stopped = false

    /// Ends the trace (idempotent); a failure of its readers is one line on stderr.
    mutating func stop() {
        guard !stopped else { return }
        stopped = true
        if let failure = session?.stop() { writeStderr("kvmscope: \(failure)\n") }
    }
}
