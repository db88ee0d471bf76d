/// One QMP socket given with `--qmp PATH`, read once per resource sample: its connection stays open across
/// samples; a connection that closes, times out or answers garbage is closed and opened again at the next
/// sample (a socket that cannot be connected to is tried again every ``retrySeconds``).
///
/// Each read asks `query-blockstats`, `query-memory-size-summary`, `query-balloon` (absent without a balloon),
/// `query-status` (the run state)
/// and `query-stats` for targets `vm` and `vcpu` (absent before QEMU 7.1 and then not asked again), and every
/// 10th `query-pci`, each bounded by the connection's timeout; QEMU's memory tree (`info mtree -f -o` through
/// `human-monitor-command`, some KiB of text) when the connection opens and again when the BARs change — not at
/// every read; `query-cpus-fast` (which thread runs which vCPU) when the connection opens and again when the
/// VM's thread set changed. The QEMU is known by the socket's peer pid (SO_PEERCRED). Not thread-safe: one caller
/// (the sampler).
public final class QMPMonitor {
    /// The socket's path.
    public let path: String
    /// Seconds each command may take (and connecting, with the greeting and capabilities).
    public let timeout: Double
    /// Seconds between attempts to connect to a socket that could not be connected to.
    public let retrySeconds: Double
    /// The QEMU's pid, from the last connection (kept while it is down: its VM's row is marked).
    public private(set) var pid: Int32?

    private var connection: QMPConnection?
    private var nextAttempt = 0.0
    /// Counters at the last successful read, by device name: the next read's deltas. Cleared by any failure,
    /// so that a delta always spans exactly one sample interval.
    private var previous: [String: DiskCounts]?
    private var hasStats = true
    /// The PCI regions last read, and reads on this connection (query-pci every 10th).
    private var pci: [PCIRegion] = []
    private var reads = 0
    private var warned: String?
    /// The memory tree last read, the BARs it was read with (nil: not read on this connection), and the
    /// warning about it not yet given (given once while the same problem lasts).
    private var tree: [MemoryTreeRange] = []
    private var treeFor: [PCIRegion]?
    private var treeWarning: String?
    private var treeWarned: String?
    /// tid → cpu-index from the last `query-cpus-fast` on this connection (nil: not read, or refused), the
    /// thread set it was asked with (nil: asked before the VM's threads were known), whether it was asked at
    /// all, and the problem last warned about (once while the same problem lasts).
    private var cpus: [Int32: UInt32]?
    private var cpusFor: Set<Int32>?
    private var cpusAsked = false
    private var hasCPUsFast = true
    private var cpusWarned: String?
    /// Warnings found by a read that succeeded (the memory tree's, query-cpus-fast's), given one per read.
    private var notes: [String] = []

    public init(path: String, timeout: Double = 1, retrySeconds: Double = 5) {
        self.path = path
        self.timeout = timeout
        self.retrySeconds = retrySeconds
    }

    /// One read: the QEMU's pid (nil when never connected), what it says, and a warning line (without the
    /// `kvmscope: ` prefix) the first time a problem appears — not again while it lasts (two problems of one
    /// read: the second at the next read).
    /// - Parameter threadsOf: the tids the sampler lists now for a pid (the VM's threads, without kernel
    ///   threads), nil when it knows no VM of that pid. `query-cpus-fast` is asked again when the set differs
    ///   from the one it was last asked with; without it (nil), only when the connection opens.
    public func read(threadsOf: (Int32) -> Set<Int32>? = { _ in nil }) -> (pid: Int32?, sample: QMPSample, warning: String?) {
        do {
            let s = try query(threadsOf: threadsOf)
            warned = nil
            if let treeWarning { notes.append(treeWarning) }
            treeWarning = nil
            return (pid, s, notes.isEmpty ? nil : notes.removeFirst())
        } catch {
            connection?.close()
            connection = nil
            previous = nil
            let warning = warned == error.description ? nil : "QMP \(path): \(error.description)"
            warned = error.description
            return (pid, QMPSample(socket: path, problem: error.description), warning)
        }
    }

    private func query(threadsOf: (Int32) -> Set<Int32>?) throws(QMPError) -> QMPSample {
        if connection == nil {
            let now = QMPConnection.now()
            guard now >= nextAttempt else { throw QMPError(.unreachable, warned ?? "not connected") }
            let c: QMPConnection
            do { c = try QMPConnection(path: path, timeout: timeout) } catch {
                // Not reachable (or no greeting in time): tried again later, not at every sample. A connection
                // that worked and then closed is opened again at the next sample.
                nextAttempt = now + retrySeconds
                throw error
            }
            connection = c
            if c.peerPID != pid { previous = nil }
            pid = c.peerPID
            hasStats = true
            pci = []
            reads = 0
            tree = []
            treeFor = nil
            cpus = nil
            cpusFor = nil
            cpusAsked = false
            hasCPUsFast = true
        }
        let c = connection!
        var s = QMPSample(socket: path)
        // Every command sent at once, the answers read in order: one wait for QEMU's main loop, not one each.
        let deadline = c.deadline()
        let blocksID = try c.send("query-blockstats", deadline: deadline)
        let memoryID = try c.send("query-memory-size-summary", deadline: deadline)
        let balloonID = try c.send("query-balloon", deadline: deadline)
        let statusID = try c.send("query-status", deadline: deadline)
        let statsIDs = hasStats
            ? try ["vm", "vcpu"].map { (target: String) throws(QMPError) in
                // Every provider (KVM is the only one of these targets), the kvm one kept below: QEMU reads a
                // command byte by byte, about one read and four write syscalls of its own per byte, which land
                // in the VM's /proc/PID/io counters; the `providers` filter would add 33 bytes each.
                try c.send("query-stats", arguments: "{\"target\":\"\(target)\"}",
                           deadline: deadline)
            }
            : []
        let pciID = reads % 10 == 0 || pci.isEmpty ? try c.send("query-pci", deadline: deadline) : nil
        let threads = pid.flatMap(threadsOf)
        let cpusID = hasCPUsFast && (!cpusAsked || (threads != nil && threads != cpusFor))
            ? try c.send("query-cpus-fast", deadline: deadline) : nil

        let blocks: [QMPReplies.BlockStats] = try c.receive(blocksID, command: "query-blockstats", deadline: deadline)
        var now: [String: DiskCounts] = [:]
        for b in blocks {
            var name = b.name
            // Two entries of one name (a drive without a device, named by its id twice) stay apart.
            while now[name] != nil { name += "'" }
            let counts = DiskCounts(b.stats)
            now[name] = counts
            s.disks.append(DiskSample(device: name, drive: b.device ?? "", qdev: b.qdev, total: counts,
                                      delta: previous?[name].map { counts.subtracting($0) }))
        }
        if let m: QMPReplies.MemorySizeSummary = try optional({ () throws(QMPError) in
            try c.receive(memoryID, command: "query-memory-size-summary", deadline: deadline)
        }) {
            s.configuredMemoryBytes = m.baseMemory &+ (m.pluggedMemory ?? 0)
        }
        if let b: QMPReplies.Balloon = try optional({ () throws(QMPError) in
            try c.receive(balloonID, command: "query-balloon", deadline: deadline)
        }) {
            s.balloonActualBytes = b.actual
        }
        if let status: QMPReplies.Status = try optional({ () throws(QMPError) in
            try c.receive(statusID, command: "query-status", deadline: deadline)
        }) {
            s.runState = status.status
            s.running = status.running
        }
        for (i, id) in statsIDs.enumerated() {
            guard let results: [QMPReplies.StatsResult] = try optional({ () throws(QMPError) in
                try c.receive(id, command: "query-stats", deadline: deadline)
            }) else {
                // Before QEMU 7.1 (or without KVM's statistics): not asked again on this connection.
                hasStats = false
                continue
            }
            var sums: [String: UInt64] = [:]
            for r in results where r.provider == "kvm" {
                for stat in r.stats { if let v = stat.value { sums[stat.name, default: 0] &+= v } }
            }
            if i == 1 { s.kvmVCPUStats = sums } else { s.kvmVMStats = sums }
        }
        if let pciID, let buses: [QMPReplies.PCIBus] = try optional({ () throws(QMPError) in
            try c.receive(pciID, command: "query-pci", deadline: deadline)
        }) {
            pci = PCIRegion.of(buses)
        }
        if let cpusID {
            cpusAsked = true
            cpusFor = threads
            try readCPUs(c, cpusID, deadline: deadline)
        }
        if treeFor != pci {
            treeFor = pci
            try readTree(c)
        }
        reads += 1
        s.pciRegions = pci
        s.memoryTree = tree
        s.vcpuThreads = cpus
        previous = now
        return s
    }

    /// Reads QEMU's memory tree, bounded by the connection's timeout. A refusal (no human monitor), a timeout
    /// (its late answer is skipped by id) or text that is no memory tree leaves the tree empty — the BARs
    /// still name the exits — with one warning; only a connection that broke throws.
    private func readTree(_ c: QMPConnection) throws(QMPError) {
        let problem: String
        do {
            let text: String = try c.execute("human-monitor-command",
                                             arguments: "{\"command-line\":\"\(QEMUMemoryTree.command)\"}")
            if let ranges = QEMUMemoryTree.parse(text) {
                tree = ranges
                treeWarned = nil
                return
            }
            let first = text.split(whereSeparator: \.isNewline).first.map { String($0.prefix(60)) } ?? ""
            problem = "not a memory tree: '\(first.filter { !$0.isASCII || $0 >= " " })'"
        } catch where error.connectionUsable || error.kind == .timeout {
            problem = error.description
        }
        tree = []
        if problem != treeWarned {
            treeWarning = "QMP \(path): \(QEMUMemoryTree.command): \(problem); I/O exits named by PCI BARs only"
        }
        treeWarned = problem
    }

    /// Reads the answer to `query-cpus-fast` sent with `id`: tid → cpu-index. A refusal (QEMU before 2.12) is
    /// not asked again on this connection; a reply of another shape (its line read: later answers stay in
    /// order) leaves the map unknown until the thread set changes. Either gives one warning — the sampler
    /// then finds vCPU threads by name or guest time — and only a connection that broke throws.
    private func readCPUs(_ c: QMPConnection, _ id: UInt64, deadline: Double) throws(QMPError) {
        let problem: String
        do {
            let list: [QMPReplies.CPUInfoFast] = try c.receive(id, command: "query-cpus-fast", deadline: deadline)
            var map: [Int32: UInt32] = [:]
            for cpu in list { map[cpu.threadID] = min(map[cpu.threadID] ?? .max, cpu.cpuIndex) }
            cpus = map
            cpusWarned = nil
            return
        } catch where error.connectionUsable || error.kind == .garbage {
            if error.connectionUsable { hasCPUsFast = false }
            problem = error.description
        }
        cpus = nil
        if problem != cpusWarned {
            notes.append("QMP \(path): \(problem.hasPrefix("query-cpus-fast") ? "" : "query-cpus-fast: ")\(problem); "
                         + "vCPU threads found by their names, else by guest time (numbers inferred)")
        }
        cpusWarned = problem
    }

    /// The value of a command QEMU may refuse (no balloon device, a command older QEMUs lack): nil then.
    private func optional<T>(_ body: () throws(QMPError) -> T) throws(QMPError) -> T? {
        do { return try body() } catch where error.connectionUsable { return nil }
    }

    /// Closes the connection (the next read opens it again).
    public func close() {
        connection?.close()
        connection = nil
    }
}
