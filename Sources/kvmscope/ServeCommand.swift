import ArgumentParser
import FlyingSocks
import Foundation
import KVMAnalysis
import KVMExits
import KVMHost
import KVMResources
import KVMScopeViews
import KVMServe
import KVMSources
import Synchronization

/// kvmscope's version, as `kvmscope_build_info{version}` shows it.
let kvmscopeVersion = "0.1.0"

struct ServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Trace continuously and serve Prometheus metrics on /metrics (and /healthz).",
        usage: "kvmscope serve [<options>]",
        discussion: """
            Serves the Prometheus text format 0.0.4, or OpenMetrics 1.0 when the scrape's Accept header asks for \
            application/openmetrics-text. Listens on loopback unless --listen names another address. Runs in the \
            foreground and logs to stderr (systemd: contrib/kvmscope.service). SIGHUP stops it like SIGTERM and \
            Ctrl-C (no reload: restart it to change options). A request head over 16 KiB is refused (431), one not \
            complete in time dropped (408); idle connections are closed.

            With --alert, each rule's fire and resolve is printed as one JSON line on stdout (see `kvmscope \
            watch`) and kvmscope_storm_active{vm,reason,rule} is 1 while it fires.

              kvmscope serve                     http://127.0.0.1:9477/metrics
              kvmscope serve --listen [::1]:9477 --max-series 2000
              kvmscope serve --listen :9477 \\
                  --alert 'rate(EPT_MISCONFIG) > 50000/s for 5s'
            """)

    @Option(help: "Address and port to listen on: IPv4:PORT, [IPv6]:PORT, HOSTNAME:PORT (its first address that binds), or :PORT for every address (IPv6 and IPv4).")
    var listen = "127.0.0.1:9477"

    @Option(name: .customLong("max-series"), parsing: .unconditional, help: ArgumentHelp(
        "Most label sets per exit family, vm=\"other\" included (at least 2): the rest are summed into it.",
        discussion: "A hard cap: kvmscope_exits_total, kvmscope_userspace_exits_total, kvmscope_io_exits_total and kvmscope_exit_latency_seconds each never export more than N series; with N = 2, the first VM × vCPU × reason keeps its own. The resource families (kvmscope_vm_*, kvmscope_vcpu_*) are not capped: one series per VM sampled (× vCPU number, however many threads were that vCPU)."))
    var maxSeries = 10_000

    @Option(name: .customLong("retired-vms"), parsing: .unconditional,
            help: "Stopped VMs whose counts stay apart; older ones are summed into vm=\"other\".")
    var retiredVMs = 1024

    @Option(name: .customLong("alert"), help: "A storm rule (repeatable; grammar in `kvmscope watch --help`).")
    var alerts: [String] = []

    @Option(name: [.customShort("s"), .customLong("interval")], parsing: .unconditional, help: "Seconds between storm rule evaluations (0.1 to 60).")
    var interval: Double = 1

    @Option(name: [.customShort("p"), .long], parsing: .unconditional, help: "Trace only this process and what it starts (a VMM).")
    var pid: Int32?

    @Option(name: .customLong("request-timeout"), parsing: .unconditional, help: "Seconds a request head may take once begun (then 408 and close).")
    var requestTimeout: Double = 10

    @Option(name: .customLong("idle-timeout"), parsing: .unconditional, help: "Seconds an open connection may wait for its next request.")
    var idleTimeout: Double = 30

    @OptionGroup(title: "Tracing") var trace: TraceOptions
    @OptionGroup(title: "QMP") var qmp: QMPOptions

    @Option(name: [.customShort("c"), .customLong("connect")],
            help: "libvirt URI for domain names, UUIDs and device statistics (virt-top -c). Default: qemu:///system when libvirtd runs; 'none': never.")
    var connect: String?

    func validate() throws {
        guard requestTimeout > 0, idleTimeout > 0 else { throw ValidationError("--request-timeout and --idle-timeout must be > 0") }
        guard retiredVMs >= 1 else { throw ValidationError("--retired-vms must be at least 1") }
        // N counts vm="other": with 1 every row would fold into it, and the cap would name no VM at all.
        guard maxSeries >= 2 else {
            throw ValidationError("--max-series must be at least 2: it counts the vm=\"other\" series the rest fold into")
        }
        guard (0.1...60).contains(interval) else { throw ValidationError("-s/--interval must be between 0.1 and 60") }
        do { _ = try ListenAddress.parse(listen) } catch { throw ValidationError(error.description) }
        _ = try StormAlerts.rules(alerts)
    }

    func run() throws {
        let rules = try StormAlerts.rules(alerts)
        if connect == "none" { try StormAlerts.checkQMP(rules, sockets: qmp.sockets, libvirt: false) }
        let addresses: [ListenAddress.Candidate]
        do { addresses = try ListenAddress.parse(listen) } catch { throw ValidationError(error.description) }
        if let pid, !StormAlerts.isAlive(pid) { throw KVMScopeError.usage("no process with pid \(pid)") }
        let stop = StopSignal()
        // A daemon: freed tables go back to the kernel rather than stay in malloc's arenas at a burst's size.
        FreeMemory.followLiveMemory()
        // A daemon: threads that exit retire into their VM's rows, so memory follows the live threads.
        let session = try LiveSession(config: trace.config(onlyPid: pid), retireThreads: true,
                                      retiredVMCapacity: retiredVMs)
        // The HTTP tasks hold the session too: stop it here, on every way out of this scope.
        defer { session.stop() }
        try StormAlerts.check(rules, catalog: session.aggregator.catalog)
        let state = MetricsState(session: session, maxSeries: maxSeries, resourcesPID: pid,
                                 qmpSockets: QMPOptions.unique(qmp.sockets), qmpTimeout: qmp.timeout, libvirtURI: connect)
        try state.openLibvirt()
        // disk_latency rules read --qmp sockets or libvirt's block statistics: refused with neither.
        try StormAlerts.checkQMP(rules, sockets: qmp.sockets, libvirt: state.hasLibvirt)
        // The first address that takes the socket (`:PORT`: [::] for both families, 0.0.0.0 where IPv6 is off).
        var bound: (server: MetricsServer, shown: String)?
        var firstError: (any Error)?
        for candidate in addresses where bound == nil {
            do {
                bound = (try MetricsServer(address: candidate.address, source: state, version: kvmscopeVersion,
                                           headSeconds: requestTimeout, idleSeconds: idleTimeout),
                         "http://\(candidate.shown)/metrics" + (candidate.resolved.map { " (\($0))" } ?? ""))
            } catch {
                firstError = firstError ?? error
            }
        }
        guard let (server, shown) = bound else {
            throw KVMScopeError.io("cannot listen on \(listen): \(firstError.map(ListenAddress.describe) ?? "no address")")
        }
        defer { server.stop() }
        server.start()
        writeStderr("kvmscope: serving \(shown)\n")

        var detector = StormDetector(rules: rules)
        // Resource rules (cpu, wait, disk_latency) read /proc (and the QMP sockets) at each evaluation, through
        // the scrapes' sampler: one connection per QMP socket (QEMU serves one client at a time on each).
        let needsResources = detector.needsResources
        func evaluate() {
            // Retire exited threads between scrapes too: their keys and series leave the readers' tables now.
            if rules.isEmpty { session.retireExited() }
            guard !rules.isEmpty, let summary = try? StormAlerts.summary(session) else { return }
            let resources = needsResources ? ResourceUse.of(state.sampleResources(), only: pid.map { Set([$0]) }) : []
            StormAlerts.print(detector.evaluate(time: Date().timeIntervalSince1970, summary: summary, resources: resources))
            state.storms.withLock { $0 = detector.activity }
        }
        evaluate()
        TraceRun(stop: stop).wait(every: interval) {
            evaluate()
            return true
        }
    }
}

/// What the HTTP handler reads: the live session and the storm gauges the main loop writes.
final class MetricsState: MetricsSource {
    let session: LiveSession
    let maxSeries: Int
    let storms = Mutex<[StormActivity]>([])
    /// What each VM costs the host, sampled at each scrape (one scrape at a time samples).
    let resources = Mutex(ResourceSampler(keepDescriptors: false))
    let resourcesPID: Int32?
    /// Each VM × vCPU number's running times over the threads that were it, for the `kvmscope_vcpu_*` counters.
    let vcpuTotals = Mutex(VCPUTimeTotals())
    /// Each VM's device map from its last sample with PCI BARs, by pid (``render(_:)``).
    let deviceMaps = Mutex<[Int32: DeviceMap]>([:])

    /// libvirt, read at each resource sample beside /proc (its devices, memory and KVM statistics in `--qmp`'s
    /// shape); nil without a libvirt daemon or with `--connect none`.
    private let libvirt = Mutex<LibvirtReader?>(nil)
    private let libvirtURI: String?

    init(session: LiveSession, maxSeries: Int, resourcesPID: Int32?, qmpSockets: [String] = [], qmpTimeout: Double = 1,
         libvirtURI: String? = nil) {
        self.libvirtURI = libvirtURI
        self.session = session
        self.maxSeries = maxSeries
        self.resourcesPID = resourcesPID
        resources.withLock {
            $0.excluded = [getpid()]
            $0.qmp = qmpSockets.map { QMPMonitor(path: $0, timeout: qmpTimeout) }
            // With -p, only that VM is exported: only it is sampled.
            $0.only = resourcesPID.map { [$0] }
        }
    }

    /// A resource sample (one caller at a time); its warnings (QMP sockets) are logged on stderr.
    func sampleResources() -> ResourceSample {
        resources.withLock { sampler in
            var s = sampler.sample()
            sampler.printWarnings()
            libvirt.withLock { $0?.attach(to: &s) }
            return s
        }
    }

    /// Whether libvirt is read (``openLibvirt()`` opened it).
    var hasLibvirt: Bool { libvirt.withLock { $0 != nil } }

    /// Opens libvirt (`--connect`, or the default when its daemon runs). Throws when a URI given cannot be opened.
    func openLibvirt() throws {
        let reader = try LibvirtReader.open(libvirtURI)
        libvirt.withLock { $0 = reader }
    }

    /// Renders a scrape from a fresh snapshot and resource sample: cost ∝ series and VM threads, not events.
    func render(_ format: ExpositionFormat) throws -> [UInt8] {
        // Threads not named yet (gone before their first lookup: a guest of under a second) are held back until
        // they are: exported at once they would be series of `vm=<tid>, vcpu=""` that vanish a second later.
        let snapshot = try session.snapshot()
        var summary = try Summary(snapshot, filter: SummaryFilter(excludedTids: snapshot.unnamedThreads))
        let sample = sampleResources()
        let totals = vcpuTotals.withLock { $0.update(sample) }
        // Each port and MMIO address by the VM's devices: QEMU's memory tree and PCI BARs (QMP), libvirt's device
        // addresses, over the standard PC map (VMSample.deviceMap). A VM's last map is kept (its socket may fail
        // at one scrape, the VM may have exited): a device's counter never moves to `unknown` and back.
        let maps = deviceMaps.withLock { maps in
            for vm in sample.vms where !vm.gone {
                if let map = vm.deviceMap { maps[vm.pid] = map }
            }
            // Bounded by the VMs still sampled or still with I/O rows (what is named below).
            let keep = Set(summary.ioAccesses.rows.map(\.vm)).union(sample.vms.filter { !$0.gone }.map(\.pid))
            maps = maps.filter { keep.contains($0.key) }
            return maps
        }
        if !maps.isEmpty { summary.ioAccesses.name(devices: maps) }
        let extras = ExpositionExtras(version: kvmscopeVersion, lostPerCPU: session.lostPerCPU(),
                                      storms: storms.withLock { $0 }, maxSeries: maxSeries, resources: sample,
                                      resourcesPID: resourcesPID, vcpuTotals: totals, process: ProcessSelf.read())
        return PrometheusExposition.renderUTF8(summary, format: format, extras: extras)
    }
}

/// `--listen` values: `127.0.0.1:9477`, `[::1]:9477`, `localhost:9477`, `0.0.0.0:9477`, a host name (its
/// resolved addresses, the first that binds), and `:9477` for every address, as Prometheus exporters' `--web.listen-address=:9100` (IPv6 and IPv4 on one socket: [::] without
/// IPV6_V6ONLY; 0.0.0.0 where the host has no IPv6).
enum ListenAddress {
    struct Bad: Error, CustomStringConvertible {
        var description: String
    }

    /// An address to bind and how the log line shows it.
    struct Candidate {
        var address: any SocketAddress
        var shown: String
        /// The address a host name resolved to (said after the URL).
        var resolved: String?
    }

    /// The addresses to try in turn (two for `:PORT`, else one). Throws one line for a malformed value.
    static func parse(_ text: String) throws(Bad) -> [Candidate] {
        let bad = { (why: String) in Bad(description: "bad --listen address '\(text)': \(why)") }
        guard let colon = text.lastIndex(of: ":") else { throw bad("expected HOST:PORT or :PORT") }
        var host = String(text[..<colon])
        guard let port = UInt16(text[text.index(after: colon)...]), port > 0 else {
            throw bad("the port must be a number from 1 to 65535")
        }
        if host.isEmpty {
            do {
                return [Candidate(address: try sockaddr_in6.inet6(ip6: "::", port: port), shown: "[::]:\(port)"),
                        Candidate(address: try sockaddr_in.inet(ip4: "0.0.0.0", port: port), shown: "0.0.0.0:\(port)")]
            } catch {
                throw bad("no wildcard address")
            }
        }
        if host.hasPrefix("[") && host.hasSuffix("]") {
            host = String(host.dropFirst().dropLast())
            do { return [Candidate(address: try sockaddr_in6.inet6(ip6: host, port: port), shown: text)] } catch {
                throw bad("'\(host)' is not an IPv6 address")
            }
        }
        if host == "localhost" { host = "127.0.0.1" }
        if let address = try? sockaddr_in.inet(ip4: host, port: port) { return [Candidate(address: address, shown: text)] }
        // A host name, as exporters' --web.listen-address takes one: its addresses in the resolver's order.
        let resolved = resolve(host, port: port)
        guard !resolved.isEmpty else {
            throw bad("'\(host)' is neither an IPv4 address nor a host name that resolves (IPv6: [ADDRESS]:PORT)")
        }
        return resolved
    }

    /// The IPv4 and IPv6 addresses of a host name (getaddrinfo, numeric forms excluded), shown as `name (address)`.
    static func resolve(_ host: String, port: UInt16) -> [Candidate] {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_ADDRCONFIG
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, nil, &hints, &list) == 0, let first = list else { return [] }
        defer { freeaddrinfo(first) }
        var out: [Candidate] = []
        var seen = Set<String>()
        var node: UnsafeMutablePointer<addrinfo>? = first
        while let n = node {
            defer { node = n.pointee.ai_next }
            guard let sa = n.pointee.ai_addr else { continue }
            var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
            if n.pointee.ai_family == AF_INET {
                var a = sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_addr }
                guard inet_ntop(AF_INET, &a, &text, socklen_t(text.count)) != nil else { continue }
                let ip = String(cString: text)
                guard seen.insert(ip).inserted, let address = try? sockaddr_in.inet(ip4: ip, port: port) else { continue }
                out.append(Candidate(address: address, shown: "\(host):\(port)", resolved: ip))
            } else if n.pointee.ai_family == AF_INET6 {
                var a = sa.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { $0.pointee.sin6_addr }
                guard inet_ntop(AF_INET6, &a, &text, socklen_t(text.count)) != nil else { continue }
                let ip = String(cString: text)
                guard seen.insert(ip).inserted, let address = try? sockaddr_in6.inet6(ip6: ip, port: port) else { continue }
                out.append(Candidate(address: address, shown: "\(host):\(port)", resolved: ip))
            }
        }
        return out
    }

    /// A socket error as users read it: "Address already in use".
    static func describe(_ error: any Error) -> String {
        if let e = error as? SocketError, case .failed(_, _, let message) = e { return message }
        return "\(error)"
    }
}
