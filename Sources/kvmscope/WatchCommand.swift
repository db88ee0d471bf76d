import ArgumentParser
import Foundation
import KVMAnalysis
import KVMExits
import KVMHost
import KVMResources
import KVMSources

struct WatchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "watch",
        abstract: "Watch for VM-exit storms: one JSON line when a rule fires and one when it resolves.",
        usage: "kvmscope watch --alert <rule> ... [<options>] [-- <command> ...]",
        discussion: """
            RULE := rate(REASON) > N/s | pNN(REASON) > LATENCY, then optionally `for DURATION` and `per vm|vcpu`; \
            `<` instead of `>` fires below the threshold (a rate that stops).

            REASON is a kvm_exit reason (EPT_MISCONFIG, MSR_WRITE, HLT), a KVM_EXIT_* reason, an event name \
            (kvm_pio, rates only) or * (every kvm_exit reason). pNN is p50, p90, p99 or p999. Units: /s; ns, us, \
            µs, ms, s; durations ms, s, m. Latency rules on * leave out HLT (time the guest sleeps) unless named.

            Resource rules read /proc: cpu(vm|vcpu) > N% (host CPU time, % of one CPU, as htop counts) and \
            wait(vm|vcpu) > N% (vCPU run-queue wait: steal seen from the host), optionally `for DURATION`; \
            disk_latency(vm) > LATENCY (mean time per read or write request of the VM's block devices, from \
            --qmp sockets or from libvirt for the domains it runs).

              kvmscope watch --alert 'rate(EPT_MISCONFIG) > 50000/s for 5s'
              kvmscope watch --alert 'p99(MSR_WRITE) > 20us for 10s per vcpu' \\
                  --exit-on-alert
              kvmscope watch --alert 'rate(kvm_pio) > 1000/s' \\
                  -- kvmscope storm --kind io --exits 100000
              kvmscope watch --alert 'wait(vcpu) > 10% for 1m' --alert 'cpu(vm) > 350%'
              kvmscope watch --alert 'disk_latency(vm) > 5ms for 30s'

            Exit status: 0 after Ctrl-C or when the watched process ends, 2 after the first alert with \
            --exit-on-alert, 1 on errors, 3 when the COMMAND after -- fails (as stat's).
            """)

    @Option(name: .customLong("alert"), help: "A storm rule (repeatable).")
    var alerts: [String] = []

    @Option(name: [.customShort("s"), .customLong("interval")], parsing: .unconditional, help: "Seconds between rule evaluations (0.1 to 60).")
    var interval: Double = 1

    @Flag(name: .customLong("exit-on-alert"), help: "Exit with status 2 after the first rule fires.")
    var exitOnAlert = false

    @Option(name: [.customShort("p"), .long], parsing: .unconditional,
            help: "Trace only this process and what it starts (a VMM); stop when it ends.")
    var pid: Int32?

    @OptionGroup(title: "Tracing") var trace: TraceOptions
    @OptionGroup(title: "QMP") var qmp: QMPOptions

    @Option(name: [.customShort("c"), .customLong("connect")],
            help: "libvirt URI whose domains' block statistics feed disk_latency rules (virt-top -c). Default: qemu:///system when libvirtd runs; 'none': never.")
    var connect: String?

    @Argument(parsing: .postTerminator, help: "Trace while this command runs, only its processes and threads.")
    var command: [String] = []

    static let alertStatus: Int32 = 2

    func validate() throws {
        guard !alerts.isEmpty else { throw ValidationError("give at least one --alert RULE") }
        guard (0.1...60).contains(interval) else { throw ValidationError("-s/--interval must be between 0.1 and 60") }
        if pid != nil && !command.isEmpty { throw ValidationError("-p/--pid and a COMMAND cannot be used together") }
        _ = try StormAlerts.rules(alerts)
    }

    func run() throws {
        let rules = try StormAlerts.rules(alerts)
        // Resource rules read libvirt too, when it runs (or --connect names it): a domain's block statistics
        // stand in for --qmp's.
        let libvirt = rules.contains { $0.function.isResource } ? try LibvirtReader.open(connect) : nil
        try StormAlerts.checkQMP(rules, sockets: qmp.sockets, libvirt: libvirt != nil)
        if let pid, !StormAlerts.isAlive(pid) { throw KVMScopeError.usage("no process with pid \(pid)") }
        let stop = StopSignal()
        // Runs for days: freed tables go back to the kernel as threads retire (as serve's).
        FreeMemory.followLiveMemory()
        // Runs as long as the host does: threads that exit retire into their VM's rows (rates per VM and vCPU
        // are unchanged), so memory follows the live threads.
        let session = try LiveSession(config: trace.config(onlyPid: pid ?? (command.isEmpty ? nil : getpid())),
                                      retireThreads: true)
        defer { session.stop() }
        try StormAlerts.check(rules, catalog: session.aggregator.catalog)
        let child = try TraceOptions.start(command)
        let what = pid.map { "process \($0)" } ?? (command.isEmpty ? "every VM" : "the command")
        writeStderr("kvmscope: watching \(what) for \(rules.count) rule(s)\n")
        var detector = StormDetector(rules: rules)
        // Resource rules (cpu, wait, disk_latency) read /proc (and QMP, libvirt) at each evaluation: -p's VM, the
        // command's VMs, or every VM.
        let sampler = detector.needsResources ? ResourceSampler() : nil
        sampler?.excluded = [getpid()]
        sampler?.qmp = qmp.monitors()
        func resources(_ summary: Summary) -> [ResourceUse] {
            guard let sampler else { return [] }
            var only = pid.map { Set([$0]) }
            if only == nil && !command.isEmpty {
                only = Set(summary.exits.map(\.vm) + summary.userspaceExits.map(\.vm) + summary.eventRows.map(\.vm))
            }
            var sample = sampler.sample()
            sampler.printWarnings()
            libvirt?.attach(to: &sample)
            return ResourceUse.of(sample, only: only)
        }
        func evaluate() throws -> Bool {
            let summary = try StormAlerts.summary(session)
            let alerts = detector.evaluate(time: Date().timeIntervalSince1970, summary: summary, resources: resources(summary))
            StormAlerts.print(alerts)
            return alerts.contains { $0.state == .firing }
        }
        /// The first firing with --exit-on-alert: a COMMAND is ended as at any other end (SIGINT, SIGTERM 5 s
        /// later, SIGKILL 2 s after that: it may shut down and print what it prints), then status 2, whatever its.
        func alertExit() -> ExitCode {
            session.stop()
            _ = try? TraceRun(stop: stop, child: child).endChild()
            return ExitCode(Self.alertStatus)
        }
        _ = try evaluate()
        // The traced process's end is handled here, not by TraceRun: its last interval must still count.
        try TraceRun(stop: stop).wait(every: interval) {
            if try evaluate() && exitOnAlert { throw alertExit() }
            let ended = (pid.map { !StormAlerts.isAlive($0) } ?? false) || (child.map { !$0.isRunning } ?? false)
            guard ended else { return true }
            // Every event the process caused is in the buffers now: stop drains them all. Then its last
            // interval is counted, and one interval later (nothing new can come) whatever still fires
            // resolves. Not before stopping: readers on a loaded host may trail by more than an interval.
            session.stop()
            for _ in 0..<2 {
                if stop.sleep(interval) { break }
                if try evaluate() && exitOnAlert { throw alertExit() }
            }
            return false
        }
        session.stop()
        // As stat and record: a command that failed is kvmscope's status 3 ("command exited with status N").
        try TraceRun.check(try TraceRun(stop: stop, child: child).endChild())
    }
}
