import KVMExits
import KVMResources

/// Exits counted for one VM by the kvm:* tracepoints (`kvm_exit` where it fires, else `kvm_userspace_exit`).
public struct TopExits: Sendable, Equatable {
    /// Exits since `top` started.
    public var total: UInt64
    /// Exits in the last interval.
    public var interval: UInt64
    /// Exits in the last interval by vCPU number.
    public var intervalByVCPU: [UInt32: UInt64]
    /// The reason counted most in the last interval (`KVM_EXIT_IO`, `EPT_VIOLATION`), nil without exits.
    public var topReason: String?
    /// The 99th percentile of that reason's handling time (kvm_exit → kvm_entry) in the interval, ns; nil where
    /// exits do not pair (a userspace exit reason, or kvm_exit/kvm_entry do not fire).
    public var topReasonP99Nanoseconds: UInt64?
    /// The VM's threads whose name gives one vCPU number while kvm_exit/kvm_entry carry another
    /// (``Summary/vcpuMismatches``): tid → the traced vcpu_id. Their exits count under the name's number.
    public var vcpuMismatches: [Int32: UInt32] = [:]
    /// Per vCPU number: the 99th percentile of its exits' handling time (kvm_exit → kvm_entry, halts left out)
    /// in the last interval, ns; only vCPUs whose exits paired in it.
    public var p99ByVCPU: [UInt32: UInt64] = [:]

    public init(total: UInt64, interval: UInt64, intervalByVCPU: [UInt32: UInt64] = [:], topReason: String? = nil,
                topReasonP99Nanoseconds: UInt64? = nil, vcpuMismatches: [Int32: UInt32] = [:], p99ByVCPU: [UInt32: UInt64] = [:]) {
        self.total = total
        self.interval = interval
        self.intervalByVCPU = intervalByVCPU
        self.topReason = topReason
        self.topReasonP99Nanoseconds = topReasonP99Nanoseconds
        self.vcpuMismatches = vcpuMismatches
        self.p99ByVCPU = p99ByVCPU
    }
}

/// One screen of `kvmscope top`: a resource sample and, where tracing runs, each VM's exits.
public struct TopFrame: Sendable {
    public var sample: ResourceSample
    /// 1 for the first screen.
    public var iteration: Int
    /// Wall-clock time of the sample, ISO 8601 UTC (`2026-11-30T09:40:12Z`).
    public var time: String
    /// Exits by VM pid; nil when exits are not traced (then EXITS/s shows `-`).
    public var exits: [Int32: TopExits]?
    /// Warnings of this sample (a QMP socket that refused, closed, timed out or answered garbage), one line
    /// each without the `kvmscope: ` prefix: stderr in batch modes, the line above the keys on the screen.
    public var warnings: [String] = []
    /// Events the kernel dropped from top's trace since it started (its ring buffers were full), the
    /// instance's own per-CPU count; nil when exits are not traced. EXITS/s and exits_total are short by them.
    public var lostEvents: UInt64?

    public init(sample: ResourceSample, iteration: Int, time: String, exits: [Int32: TopExits]?) {
        self.sample = sample
        self.iteration = iteration
        self.time = time
        self.exits = exits
    }
}

/// virt-top's sort orders (its `-o`/`--sort` names and keys).
public enum TopSort: String, CaseIterable, Sendable {
    case cpu, mem, time, id, name, exits
}

/// One VM's row, computed from its sample: what every output of `top` shows.
public struct TopRow: Sendable {
    public var vm: VMSample
    /// virt-top's state letter: R (a vCPU thread running), P (paused: libvirt's paused or suspended state,
    /// QEMU's `query-status` not running through `--qmp`, or every thread stopped by SIGSTOP), D (a vCPU thread
    /// in uninterruptible wait), S (otherwise), `-` (the process ended).
    public var state: Character
    /// CPU seconds of the whole process, cumulative (utime + stime of /proc/PID/stat).
    public var cpuSeconds: Double
    /// CPU seconds in the interval; nil without a previous sample.
    public var intervalCPUSeconds: Double?
    /// virt-top's %CPU: the interval's CPU time as a share of all host CPUs' time.
    public var cpuPercent: Double?
    /// htop's CPU%: the interval's CPU time as a share of one CPU's time (up to 100 × threads).
    public var oneCPUPercent: Double?
    /// Run-queue wait of the vCPU threads in the interval, as a share of the interval, summed over vCPUs
    /// (the host-side view of steal: 100 means one vCPU waited the whole interval).
    public var vcpuWaitPercent: Double?
    /// %MEM: resident set size as a share of host memory.
    public var memPercent: Double
    public var exits: TopExits?
    public var exitsPerSecond: Double?

    public init(_ vm: VMSample, sample: ResourceSample, exits: TopExits?) {
        self.vm = vm
        let interval = sample.intervalSeconds
        state = Self.state(of: vm)
        cpuSeconds = sample.seconds(vm.processTimes.cpuTicks)
        if let d = vm.processDelta, interval > 0 {
            let s = sample.seconds(d.cpuTicks)
            intervalCPUSeconds = s
            oneCPUPercent = s / interval * 100
            cpuPercent = s / interval / Double(sample.hostCPUs) * 100
        }
        if let d = vm.vcpuDelta, interval > 0 { vcpuWaitPercent = Double(d.waitNanoseconds) / 1e9 / interval * 100 }
        memPercent = sample.hostMemoryBytes > 0 ? Double(vm.memory.rssBytes) / Double(sample.hostMemoryBytes) * 100 : 0
        self.exits = exits
        if let exits, interval > 0, vm.processDelta != nil { exitsPerSecond = Double(exits.interval) / interval }
    }

    static func state(of vm: VMSample) -> Character {
        if vm.gone { return "-" }
        // libvirt's paused (3) and suspended by the guest (7): QEMU stopped its vCPUs, its threads only sleep.
        if let state = vm.libvirt?.state, state == 3 || state == 7 { return "P" }
        // QEMU's own word through --qmp: its vCPUs stopped (QMP stop, a migration's end, an I/O error, a panic).
        if let q = vm.qmp, q.problem == nil, q.running == false { return "P" }
        let live = vm.threads.filter { !$0.gone }
        let vcpus = live.filter { $0.vcpu != nil }
        if vcpus.contains(where: { $0.state == "R" }) { return "R" }
        if !live.isEmpty, live.allSatisfy({ $0.state == "T" || $0.state == "t" }) { return "P" }
        if vcpus.contains(where: { $0.state == "D" }) { return "D" }
        return "S"
    }

    /// RDRQ, WRRQ as virt-top counts them: the VM's block device read and write requests in the interval,
    /// summed over its disks (QMP `query-blockstats`, or libvirt's block stats in that shape); where neither
    /// was read, the VMM's read and write syscalls (/proc/PID/io syscr, syscw). ``requestsSource`` says which.
    public var readRequests: UInt64? { blockDeltas.map { $0.reduce(0) { $0 &+ $1.readRequests } } ?? vm.ioDelta?.readSyscalls }
    public var writeRequests: UInt64? { blockDeltas.map { $0.reduce(0) { $0 &+ $1.writeRequests } } ?? vm.ioDelta?.writeSyscalls }

    /// Where RDRQ/WRRQ come from: "block" (the disks' requests: QMP or libvirt) or "syscalls" (/proc/PID/io).
    public var requestsSource: String { blockDeltas == nil ? "syscalls" : "block" }

    /// Each disk's requests in the interval, when QMP or libvirt gave every disk of the VM a delta. A VM that
    /// they say has no disk made no block request (virt-top's 0), once it has an interval: its syscalls would
    /// count kvmscope's own QMP/libvirt queries (README, "QEMU's own numbers").
    var blockDeltas: [DiskCounts]? {
        guard let q = vm.qmp, q.problem == nil else { return nil }
        if q.disks.isEmpty { return vm.processDelta == nil ? nil : [] }
        let deltas = q.disks.compactMap(\.delta)
        return deltas.count == q.disks.count ? deltas : nil
    }
    /// Bytes the guest received (its taps' host-side tx_bytes) and sent (rx_bytes) in the interval: RXBY, TXBY.
    public var rxBytes: UInt64? { vm.processDelta == nil ? nil : vm.tapDeltas.reduce(0) { $0 &+ $1.txBytes } }
    public var txBytes: UInt64? { vm.processDelta == nil ? nil : vm.tapDeltas.reduce(0) { $0 &+ $1.rxBytes } }

    /// Rows sorted as virt-top sorts them (largest first; ID and NAME ascending).
    public static func sorted(_ rows: [TopRow], by sort: TopSort) -> [TopRow] {
        rows.sorted { a, b in
            switch sort {
            case .cpu: if (a.cpuPercent ?? -1) != (b.cpuPercent ?? -1) { return (a.cpuPercent ?? -1) > (b.cpuPercent ?? -1) }
            case .mem: if a.memPercent != b.memPercent { return a.memPercent > b.memPercent }
            case .time: if a.cpuSeconds != b.cpuSeconds { return a.cpuSeconds > b.cpuSeconds }
            case .exits:
                if (a.exitsPerSecond ?? -1) != (b.exitsPerSecond ?? -1) { return (a.exitsPerSecond ?? -1) > (b.exitsPerSecond ?? -1) }
            case .name: if a.vm.name != b.vm.name { return a.vm.name < b.vm.name }
            case .id: break
            }
            return a.vm.pid < b.vm.pid
        }
    }
}

/// `kvmscope top`'s outputs: virt-top's screen (`-b`), CSV (`--csv`) and JSON lines (`--json`).
public enum TopView {
    public static func rows(_ frame: TopFrame, sort: TopSort = .cpu) -> [TopRow] {
        // Where exits are traced, a VM without any had 0.
        TopRow.sorted(frame.sample.vms.map { vm in
            TopRow(vm, sample: frame.sample, exits: frame.exits.map { $0[vm.pid] ?? TopExits(total: 0, interval: 0) })
        }, by: sort)
    }

    /// The column header of the VM table.
    public static let header = "    ID S RDRQ WRRQ RXBY TXBY %CPU %MEM    TIME  EXITS/s TOP EXIT           P99 NAME"

    /// virt-top's screen: a summary header (what each percentage is of), the column header, one row per VM.
    /// The VM table's header without kvmscope's TOP EXIT and P99 (``render(_:sort:width:)`` on a narrow terminal).
    public static let compactHeader = "    ID S RDRQ WRRQ RXBY TXBY %CPU %MEM    TIME  EXITS/s NAME"

    /// - Parameter width: the terminal's columns: where a row's NAME would get fewer than 16 of them, the TOP
    ///   EXIT and P99 columns are left out (virt-top's columns and EXITS/s fit 80 with room for the name).
    public static func render(_ frame: TopFrame, sort: TopSort = .cpu, width: Int = .max) -> [String] {
        let narrow = width < header.count - 4 + 16
        let s = frame.sample
        let rows = rows(frame, sort: sort)
        let live = rows.filter { !$0.vm.gone }
        let running = live.filter { $0.state == "R" }.count
        let paused = live.filter { $0.state == "P" }.count
        let diskWait = live.filter { $0.state == "D" }.count
        let cpu = live.compactMap(\.intervalCPUSeconds).reduce(0, +)
        let interval = max(s.intervalSeconds, 1e-9)
        let clock = frame.time.split(separator: "T").last.map { String($0.prefix(8)) } ?? frame.time
        var lines = [
            "kvmscope top - \(clock) - \(live.count) VM\(live.count == 1 ? "" : "s"), \(running) running, "
                + "\(live.count - running - paused - diskWait) sleeping, \(paused) paused"
                + (diskWait > 0 ? ", \(diskWait) in disk wait" : ""),
            "Host: \(s.hostCPUs) CPUs, \(gib(s.hostMemoryBytes)) GiB memory; interval \(fixed(s.intervalSeconds, 2)) s"
                + (frame.lostEvents.map { $0 > 0 ? "; lost \($0) events: EXITS/s short" : "" } ?? ""),
            "CPU: \(fixed(cpu / interval / Double(s.hostCPUs) * 100, 1))% of all host CPUs (virt-top's %CPU), "
                + "\(fixed(cpu / interval * 100, 1))% of one CPU (htop's); sorted by \(sort.rawValue)",
            requestsLegend(rows.filter { !$0.vm.gone }) + ", RXBY/TXBY: guest's tap bytes, per interval; %MEM: RSS of host memory",
            "",
            narrow ? compactHeader : header,
        ]
        for r in rows {
            let name = r.vm.name.terminalSafe + (r.vm.accel == "kvm" ? "" : " [\(r.vm.accel)]") + (r.vm.gone ? " (gone)" : "")
            let exits: String = frame.exits == nil ? "-" : r.exitsPerSecond.map { compact($0) } ?? "-"
            let reason = String((r.exits?.topReason ?? "-").prefix(13))
            let p99 = r.exits?.topReasonP99Nanoseconds.map(Durations.adaptive) ?? "-"
            lines.append(lpad(String(r.vm.pid), 6) + " " + String(r.state)
                         + lpad(count(r.readRequests), 5) + lpad(count(r.writeRequests), 5)
                         + lpad(count(r.rxBytes), 5) + lpad(count(r.txBytes), 5)
                         + lpad(r.cpuPercent.map { fixed($0, 1) } ?? "-", 5) + lpad(fixed(r.memPercent, 1), 5)
                         + lpad(time(r.cpuSeconds), 8) + lpad(exits, 9)
                         + (narrow ? "" : " " + StatTable.pad(reason, 14) + lpad(p99, 8)) + " " + name)
        }
        return lines
    }

    /// What RDRQ/WRRQ count on this screen: block requests (virt-top's) where QMP or libvirt gave the VM's disks,
    /// else read/write syscalls; when the rows differ, the VMs counted by syscalls are named by pid.
    static func requestsLegend(_ rows: [TopRow]) -> String {
        let bySyscalls = rows.filter { $0.requestsSource == "syscalls" }
        if bySyscalls.isEmpty && !rows.isEmpty { return "RDRQ/WRRQ: block device requests (QMP/libvirt)" }
        if bySyscalls.count == rows.count { return "RDRQ/WRRQ: read/write syscalls" }
        let pids = bySyscalls.map { String($0.vm.pid) }.sorted { $0.count != $1.count ? $0.count < $1.count : $0 < $1 }
        return "RDRQ/WRRQ: block device requests (QMP/libvirt), read/write syscalls for \(pids.joined(separator: " "))"
    }

    /// The htop-style thread table of one VM: its vCPU threads first. A thread whose kvm_exit/kvm_entry carry
    /// another vCPU number than its name gives (``TopExits/vcpuMismatches``) has its VCPU cell marked `*` (the
    /// name's number, which its EXITS/s counts under) and one `* tid N: …` note line under the table. vCPU
    /// numbers inferred from guest time (``VCPUSource/guestTime``) have their cells marked `~` and one
    /// ``inferredVCPUsNote`` line under the table.
    public static func renderThreads(_ row: TopRow, sample: ResourceSample) -> [String] {
        var lines = ["   TID VCPU S CPU  CPU%  WAIT%    TIME  EXITS/s     P99 COMMAND"]
        var notes: [String] = []
        let interval = sample.intervalSeconds
        for t in row.vm.threads {
            let cpu = t.delta.map { interval > 0 ? fixed(sample.seconds($0.cpuTicks) / interval * 100, 1) : "-" } ?? "-"
            let wait = t.delta.map { interval > 0 ? fixed(Double($0.waitNanoseconds) / 1e9 / interval * 100, 1) : "-" } ?? "-"
            let exits = t.vcpu.flatMap { v in row.exits.map { e in interval > 0 ? compact(Double(e.intervalByVCPU[v] ?? 0) / interval) : "-" } } ?? ""
            let p99 = t.vcpu.flatMap { v in row.exits.map { e in e.p99ByVCPU[v].map(Durations.adaptive) ?? "-" } } ?? ""
            let traced = row.exits?.vcpuMismatches[t.tid]
            if let traced {
                notes.append("* tid \(t.tid): " + SummaryJSON.vcpuMismatchNote(ThreadIdentity(vm: row.vm.pid, vcpu: t.vcpu, comm: t.comm,
                                                                                            tracedVCPU: traced)).terminalSafe)
            }
            let inferred = t.vcpu != nil && t.vcpuSource == .guestTime ? "~" : ""
            lines.append(lpad(String(t.tid), 6) + lpad(inferred + (t.vcpu.map { String($0) } ?? "") + (traced == nil ? "" : "*"), 5) + " "
                         + (t.gone ? "-" : String(t.state))
                         + lpad(t.processor >= 0 ? String(t.processor) : "-", 4) + lpad(cpu, 6) + lpad(wait, 7)
                         + lpad(time(sample.seconds(t.times.cpuTicks)), 8) + lpad(exits, 9) + lpad(p99, 8) + " " + t.comm
                         + (t.gone ? " (gone)" : ""))
        }
        if row.vm.threads.contains(where: { $0.vcpu != nil && $0.vcpuSource == .guestTime }) { notes.append(inferredVCPUsNote) }
        return lines + notes
    }

    /// The note under a thread table whose vCPU numbers are inferred (``VCPUSource/guestTime``).
    public static let inferredVCPUsNote = "~ vCPU numbers inferred: unnamed threads that ran the guest (guest_time), in thread-id order; "
        + "exact with -name …,debug-threads=on or --qmp"

    /// Under the thread table of one VM: its devices — block devices (QMP or libvirt: requests and bytes in the
    /// interval, average time per request) and taps (the guest's view: RXBY is what it received) — each
    /// table as the `3` and `2` screens show it, without the ID and NAME columns.
    public static func renderVMDevices(_ row: TopRow) -> [String] {
        var lines: [String] = []
        if let q = row.vm.qmp {
            lines.append("  DEVICE           RDRQ  WRRQ   RDBY   WRBY    RDLAT    WRLAT  (block: \(q.socket.terminalSafe))")
            if let problem = q.problem { lines.append("  (QMP: \(problem))".terminalSafe) }
            for disk in q.disks { lines.append("  " + diskCells(disk)) }
            if q.problem == nil && q.disks.isEmpty { lines.append("  (no block device)") }
        }
        if !row.vm.taps.isEmpty {
            if !lines.isEmpty { lines.append("") }
            lines.append("  DEVICE          RXBY   TXBY  RXPK  TXPK RXDROP TXDROP RXERR TXERR  (taps)")
            for tap in row.vm.taps { lines.append("  " + tapCells(tap, row.vm)) }
        }
        return lines
    }

    /// A block device's cells from DEVICE to WRLAT (the `3` screen's).
    static func diskCells(_ disk: DiskSample) -> String {
        let d = disk.delta
        func lat(_ ns: Double?) -> String { lpad(ns.map { Durations.adaptive(UInt64(saturating: $0.rounded())) } ?? "-", 9) }
        return StatTable.pad(disk.device.terminalSafe, 15) + lpad(count(d?.readRequests), 6) + lpad(count(d?.writeRequests), 6)
            + lpad(count(d?.readBytes), 7) + lpad(count(d?.writeBytes), 7) + lat(d?.readLatencyNanoseconds) + lat(d?.writeLatencyNanoseconds)
    }

    /// A tap's cells from DEVICE to TXERR (the `2` screen's): the guest's view, RX what the host's tap sent.
    static func tapCells(_ tap: TapCounters, _ vm: VMSample) -> String {
        let d = vm.tapDeltas.first { $0.fd == tap.fd && $0.device == tap.device }
        func c(_ v: UInt64?, _ w: Int) -> String { lpad(count(v), w) }
        let device = tap.gone ? tap.device + " (gone)" : tap.device
        return StatTable.pad(device, 14) + c(d?.txBytes, 6) + c(d?.rxBytes, 7) + c(d?.txPackets, 6) + c(d?.rxPackets, 6)
            + c(d?.txDropped, 7) + c(d?.rxDropped, 7) + c(d?.txErrors, 6) + c(d?.rxErrors, 6)
    }

    /// The rows of ``renderThreads(_:sample:)``'s lines (1 = its first thread) whose VCPU cell is marked, and
    /// the cell's columns: what the screen draws in red.
    public static func markedThreadCells(_ row: TopRow) -> (lines: [Int], columns: Range<Int>) {
        let marked = row.vm.threads.indices.filter { row.exits?.vcpuMismatches[row.vm.threads[$0].tid] != nil }
        return (marked.map { $0 + 1 }, 6..<11)
    }

    // MARK: CSV

    /// The CSV header: one row per VM per iteration follows (virt-top writes one wide row per iteration; one
    /// row per VM keeps the columns fixed).
    public static let csvHeader = "time,iteration,pid,name,state,gone,vcpus,cpu_seconds,cpu_percent,cpu_percent_one_cpu,"
        + "vcpu_wait_percent,mem_percent,rss_bytes,swap_bytes,rdrq,wrrq,read_bytes,write_bytes,rxby,txby,exits_per_second"

    public static func csvLines(_ frame: TopFrame, sort: TopSort = .cpu) -> [String] {
        rows(frame, sort: sort).map { r in
            let cells: [String] = [
                frame.time, String(frame.iteration), String(r.vm.pid), csvQuote(r.vm.name), String(r.state),
                String(r.vm.gone), String(r.vm.vcpuCount), decimal(r.cpuSeconds), opt(r.cpuPercent), opt(r.oneCPUPercent),
                opt(r.vcpuWaitPercent), decimal(r.memPercent), String(r.vm.memory.rssBytes), String(r.vm.memory.swapBytes),
                opt(r.readRequests), opt(r.writeRequests), opt(r.vm.ioDelta?.readBytes), opt(r.vm.ioDelta?.writeBytes),
                opt(r.rxBytes), opt(r.txBytes), opt(r.exitsPerSecond),
            ]
            return cells.joined(separator: ",")
        }
    }

    // MARK: JSON

    /// One JSON object per iteration (compact, one line). Field names and units: see the README's "top".
    public static func json(_ frame: TopFrame, sort: TopSort = .cpu) -> JSONValue {
        let s = frame.sample
        return .object([
            ("time", .string(frame.time)), ("iteration", .int(Int64(frame.iteration))),
            ("interval_seconds", .double(s.intervalSeconds)), ("host_cpus", .int(Int64(s.hostCPUs))),
            ("host_memory_bytes", .uint(s.hostMemoryBytes)), ("exits_traced", .bool(frame.exits != nil)),
            ("lost_events", frame.lostEvents.map { .uint($0) } ?? .null),
            ("vms", .array(rows(frame, sort: sort).map { vmJSON($0, sample: s) })),
        ])
    }

    public static func vmJSON(_ r: TopRow, sample s: ResourceSample) -> JSONValue {
        let vm = r.vm
        let interval: JSONValue = vm.processDelta.map { d in
            let v = vm.vcpuDelta ?? ThreadTimes()
            return .object([
                ("cpu_seconds", .double(s.seconds(d.cpuTicks))), ("vcpu_cpu_seconds", .double(s.seconds(v.cpuTicks))),
                ("other_cpu_seconds", .double(s.seconds(d.cpuTicks.saturatingMinus(v.cpuTicks)))),
                ("guest_seconds", .double(s.seconds(d.guestTicks))),
                ("vcpu_wait_seconds", .double(Double(v.waitNanoseconds) / 1e9)), ("switches", .uint(d.switches)),
                ("read_requests", optU(r.readRequests)), ("write_requests", optU(r.writeRequests)),
                ("requests_source", .string(r.requestsSource)),
                ("read_syscalls", optU(vm.ioDelta?.readSyscalls)), ("write_syscalls", optU(vm.ioDelta?.writeSyscalls)),
                ("read_chars", optU(vm.ioDelta?.readChars)), ("write_chars", optU(vm.ioDelta?.writeChars)),
                ("read_bytes", optU(vm.ioDelta?.readBytes)), ("write_bytes", optU(vm.ioDelta?.writeBytes)),
                ("rx_bytes", optU(r.rxBytes)), ("tx_bytes", optU(r.txBytes)), ("exits", optU(r.exits?.interval)),
            ])
        } ?? .null
        let interval0 = s.intervalSeconds
        let threads: [JSONValue] = vm.threads.map { t in
            .object([
                ("tid", .int(Int64(t.tid))), ("comm", .string(t.comm)), ("vcpu", .optional(t.vcpu)),
                ("vcpu_numbered_by", .optional(t.vcpuSource?.rawValue)),
                ("state", .string(String(t.state))), ("gone", .bool(t.gone)), ("kernel_thread", .bool(t.kernelThread)),
                ("processor", .int(Int64(t.processor))),
                ("cpu_seconds", .double(s.seconds(t.times.cpuTicks))), ("user_seconds", .double(s.seconds(t.times.userTicks))),
                ("system_seconds", .double(s.seconds(t.times.systemTicks))),
                ("guest_seconds", .double(s.seconds(t.times.guestTicks))),
                ("wait_seconds", .double(Double(t.times.waitNanoseconds) / 1e9)), ("switches", .uint(t.times.switches)),
                ("cpu_percent", t.delta.map { interval0 > 0 ? .double(s.seconds($0.cpuTicks) / interval0 * 100) : .null } ?? .null),
                ("wait_percent", t.delta.map { interval0 > 0 ? .double(Double($0.waitNanoseconds) / 1e9 / interval0 * 100) : .null }
                    ?? .null),
                ("exits", t.vcpu.flatMap { v in r.exits.map { .uint($0.intervalByVCPU[v] ?? 0) } } ?? .null),
                // The vcpu_id kvm_exit/kvm_entry carry, only where it contradicts the name's number (with a note).
                ("traced_vcpu", .optional(r.exits?.vcpuMismatches[t.tid])),
                ("note", r.exits?.vcpuMismatches[t.tid].map { traced in
                    .string(SummaryJSON.vcpuMismatchNote(ThreadIdentity(vm: vm.pid, vcpu: t.vcpu, comm: t.comm, tracedVCPU: traced)))
                } ?? .null),
            ])
        }
        let m = vm.memory
        return .object([
            ("pid", .int(Int64(vm.pid))), ("name", .string(vm.name)), ("uuid", .optional(vm.uuid)), ("accel", .string(vm.accel)),
            ("state", .string(String(r.state))), ("gone", .bool(vm.gone)),
            ("vcpus", .int(Int64(vm.vcpuCount))),
            // thread_name, qmp (exact) or guest_time (found by guest time, numbered in tid order: inferred); null without vCPUs.
            ("vcpus_numbered_by", .optional(vm.vcpuSource?.rawValue)),
            ("cpu_seconds", .double(r.cpuSeconds)), ("vcpu_cpu_seconds", .double(s.seconds(vm.vcpuTimes.cpuTicks))),
            ("guest_seconds", .double(s.seconds(vm.processTimes.guestTicks))),
            ("vcpu_wait_seconds", .double(Double(vm.vcpuTimes.waitNanoseconds) / 1e9)),
            ("vhost_cpu_seconds", .double(s.seconds(vm.vhostTimes.cpuTicks))),
            ("cpu_percent", optD(r.cpuPercent)), ("cpu_percent_one_cpu", optD(r.oneCPUPercent)),
            ("vcpu_wait_percent", optD(r.vcpuWaitPercent)),
            ("exits_per_second", optD(r.exitsPerSecond)), ("exits_total", optU(r.exits?.total)),
            ("top_exit_reason", .optional(r.exits?.topReason)),
            ("top_exit_reason_p99_ns", optU(r.exits?.topReasonP99Nanoseconds)),
            ("interval", interval),
            ("memory", .object([
                ("rss_bytes", .uint(m.rssBytes)), ("anon_bytes", .uint(m.anonBytes)), ("file_bytes", .uint(m.fileBytes)),
                ("shmem_bytes", .uint(m.shmemBytes)), ("swap_bytes", .uint(m.swapBytes)), ("percent", .double(r.memPercent)),
                ("configured_bytes", .optional(vm.qmp?.configuredMemoryBytes)),
                ("balloon_actual_bytes", .optional(vm.qmp?.balloonActualBytes)),
            ])),
            ("qmp", vm.qmp.map { q in
                .object([
                    ("socket", .string(q.socket)), ("problem", .optional(q.problem)),
                    ("run_state", .optional(q.runState)),
                    ("kvm_vm_stats", .object(q.kvmVMStats.sorted { $0.key < $1.key }.map { ($0.key, .uint($0.value)) })),
                    ("kvm_vcpu_stats", .object(q.kvmVCPUStats.sorted { $0.key < $1.key }.map { ($0.key, .uint($0.value)) })),
                    ("pci_regions", .array(q.pciRegions.map { r in
                        .object([("device", .string(r.device)), ("address", .string(r.address)), ("bar", .int(Int64(r.bar))),
                                 ("type", .string(r.isIO ? "io" : "memory")), ("start", .uint(r.start)), ("size", .uint(r.size))])
                    })),
                ])
            } ?? .null),
            ("disks", .array((vm.qmp?.disks ?? []).map { d in
                var o = diskFields(d, counts: d.total)
                o.append(("interval", d.delta.map { .object(countFields($0)) } ?? .null))
                return .object(o)
            })),
            ("io", vm.io.map { io in
                .object([
                    ("read_chars", .uint(io.readChars)), ("write_chars", .uint(io.writeChars)),
                    ("read_syscalls", .uint(io.readSyscalls)), ("write_syscalls", .uint(io.writeSyscalls)),
                    ("read_bytes", .uint(io.readBytes)), ("write_bytes", .uint(io.writeBytes)),
                    ("cancelled_write_bytes", .uint(io.cancelledWriteBytes)),
                ])
            } ?? .null),
            ("net", .array(vm.taps.map { t in
                .object([
                    ("device", .string(t.device)), ("fd", .int(Int64(t.fd))), ("gone", .bool(t.gone)),
                    ("host_rx_bytes", .uint(t.rxBytes)), ("host_tx_bytes", .uint(t.txBytes)),
                    ("host_rx_packets", .uint(t.rxPackets)), ("host_tx_packets", .uint(t.txPackets)),
                    ("host_rx_dropped", .uint(t.rxDropped)), ("host_tx_dropped", .uint(t.txDropped)),
                    ("host_rx_errors", .uint(t.rxErrors)), ("host_tx_errors", .uint(t.txErrors)),
                ])
            })),
            ("libvirt", LibvirtJSON.value(vm.libvirt)),
            ("threads", .array(threads)),
        ])
    }

    // MARK: Disks (QMP)

    /// One block device as `stat --json` gives it: its names and `counts` (the growth over the run).
    public static func diskJSON(_ d: DiskSample, counts: DiskCounts) -> JSONValue { .object(diskFields(d, counts: counts)) }

    /// `device` (`virtio-disk0`), `drive` (`-drive id=`, empty for `-blockdev`), `qdev` (QOM path or null), then
    /// ``countFields(_:)``.
    static func diskFields(_ d: DiskSample, counts: DiskCounts) -> [(String, JSONValue)] {
        [("device", .string(d.device)), ("drive", .string(d.drive)), ("qdev", .optional(d.qdev))] + countFields(counts)
    }

    /// QMP `query-blockstats`' counters under kvmscope's names: `read_requests` (rd_operations),
    /// `write_requests`, `flush_requests`, `read_bytes` (rd_bytes), `write_bytes`, `read_time_seconds`
    /// (rd_total_time_ns / 1e9), `write_time_seconds`, `flush_time_seconds`, and the average time per request,
    /// `read_latency_seconds` (rd_total_time_ns / rd_operations / 1e9; null without requests),
    /// `write_latency_seconds`.
    static func countFields(_ c: DiskCounts) -> [(String, JSONValue)] {
        [
            ("read_requests", .uint(c.readRequests)), ("write_requests", .uint(c.writeRequests)),
            ("flush_requests", .uint(c.flushRequests)), ("read_bytes", .uint(c.readBytes)), ("write_bytes", .uint(c.writeBytes)),
            ("read_time_seconds", .double(Double(c.readTimeNanoseconds) / 1e9)),
            ("write_time_seconds", .double(Double(c.writeTimeNanoseconds) / 1e9)),
            ("flush_time_seconds", .double(Double(c.flushTimeNanoseconds) / 1e9)),
            ("read_latency_seconds", optD(c.readLatencyNanoseconds.map { $0 / 1e9 })),
            ("write_latency_seconds", optD(c.writeLatencyNanoseconds.map { $0 / 1e9 })),
        ]
    }

    // MARK: Formatting

    static func optU(_ v: UInt64?) -> JSONValue { v.map { .uint($0) } ?? .null }
    static func optD(_ v: Double?) -> JSONValue { v.map { .double($0) } ?? .null }
    static func opt(_ v: UInt64?) -> String { v.map { String($0) } ?? "" }
    static func opt(_ v: Double?) -> String { v.map { decimal($0) } ?? "" }
    static func decimal(_ v: Double) -> String { fixed(v, 2) }

    static func csvQuote(_ s: String) -> String {
        s.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" }) ? "\"" + s.replacingAll("\"", "\"\"") + "\"" : s
    }

    /// A count in at most 4 characters, virt-top's way: 1234, 12K, 123M, 12G; `-` for none.
    static func count(_ v: UInt64?) -> String {
        guard let v else { return "-" }
        switch v {
        case ..<10_000: return String(v)
        case ..<10_000_000: return "\(v / 1000)K"
        case ..<10_000_000_000: return "\(v / 1_000_000)M"
        default: return "\(v / 1_000_000_000)G"
        }
    }

    /// A rate with one decimal below 10 000, else 12.3k / 1.2M.
    static func compact(_ v: Double) -> String {
        if v < 10_000 { return fixed(v, 1) }
        if v < 10_000_000 { return fixed(v / 1000, 1) + "k" }
        return fixed(v / 1_000_000, 1) + "M"
    }

    /// CPU time as top's TIME+: minutes:seconds.hundredths (`12:03.45`).
    static func time(_ seconds: Double) -> String {
        let hundredths = Int64(saturating: (seconds * 100).rounded())
        let minutes = hundredths / 6000
        let rest = hundredths % 6000
        let s = rest / 100, h = rest % 100
        return "\(minutes):\(s < 10 ? "0" : "")\(s).\(h < 10 ? "0" : "")\(h)"
    }

    static func gib(_ bytes: UInt64) -> String { fixed(Double(bytes) / 1_073_741_824, 1) }

    /// `v` with `places` decimals, without Foundation.
    static func fixed(_ v: Double, _ places: Int) -> String {
        guard v.isFinite else { return "-" }
        var scale = 1.0
        for _ in 0..<places { scale *= 10 }
        let scaled = (abs(v) * scale).rounded()
        let whole = Int64(scaled / scale)
        var frac = String(Int64(scaled - Double(whole) * scale))
        while frac.count < places { frac = "0" + frac }
        return (v < 0 && scaled > 0 ? "-" : "") + String(whole) + (places > 0 ? "." + frac : "")
    }

    static func lpad(_ s: String, _ n: Int) -> String { StatTable.lpad(s, n) }
}

extension String {
    func replacingAll(_ a: Character, _ b: String) -> String {
        var out = ""
        for c in self { if c == a { out += b } else { out.append(c) } }
        return out
    }
}

/// virt-top's other screens: `1` host CPUs, `2` network, `3` block (its keys, and its `-1`/`-2`/`-3` options).
public enum TopOtherScreen: Sendable, Equatable {
    case hostCPUs, network, block
}

extension TopView {
    /// One of virt-top's other screens as a batch screen prints it: the VM list's four header lines, a blank line,
    /// then the screen's table (its column header first).
    public static func render(_ frame: TopFrame, screen: TopOtherScreen, sort: TopSort = .cpu, width: Int = .max) -> [String] {
        Array(render(frame, sort: sort, width: width).prefix(4)) + [""] + body(frame, screen: screen, sort: sort)
    }

    /// The table of one of the other screens (its column header first).
    public static func body(_ frame: TopFrame, screen: TopOtherScreen, sort: TopSort = .cpu) -> [String] {
        switch screen {
        case .hostCPUs: renderHostCPUs(frame)
        case .network: renderNetwork(frame, sort: sort)
        case .block: renderBlock(frame, sort: sort)
        }
    }

    /// `1`: each host CPU's time in the interval (/proc/stat: user without guest, system with irq and softirq,
    /// guest, steal, idle with iowait, as shares of the CPU), and the vCPU threads that last ran there
    /// (`NAME/N`, their stat field 39).
    public static func renderHostCPUs(_ frame: TopFrame) -> [String] {
        let s = frame.sample
        var lines = ["   CPU  %USR  %SYS %GUEST %STEAL %IDLE VCPUS (last ran here)"]
        for c in s.hostCPUDeltas {
            let total = Double(max(c.total, 1))
            func pct(_ v: UInt64) -> String { lpad(fixed(Double(v) / total * 100, 1), 6) }
            let guest = c.guest &+ c.guestNice
            let user = (c.user &+ c.nice).saturatingMinus(guest)
            var here: [String] = []
            for vm in s.vms where !vm.gone {
                for t in vm.threads where !t.gone && t.vcpu != nil && t.processor == Int32(c.cpu) {
                    here.append("\(vm.name.terminalSafe)/\(t.vcpu!)")
                }
            }
            lines.append(lpad(String(c.cpu), 6) + pct(user) + pct(c.system &+ c.irq &+ c.softirq) + " " + pct(guest)
                         + " " + pct(c.steal) + pct(c.idle &+ c.iowait) + " " + here.joined(separator: " "))
        }
        if s.hostCPUDeltas.isEmpty { lines.append("(no /proc/stat)") }
        return lines
    }

    /// `2`: one row per tap of each VM, the guest's view, bytes and packets in the interval.
    public static func renderNetwork(_ frame: TopFrame, sort: TopSort = .cpu) -> [String] {
        var lines = ["    ID DEVICE          RXBY   TXBY  RXPK  TXPK RXDROP TXDROP RXERR TXERR NAME"]
        for r in rows(frame, sort: sort) where !r.vm.gone {
            for tap in r.vm.taps {
                lines.append(lpad(String(r.vm.pid), 6) + " " + tapCells(tap, r.vm) + " " + r.vm.name.terminalSafe)
            }
        }
        if lines.count == 1 { lines.append("(no VM holds a tap device: /dev/net/tun descriptors with iff:)") }
        return lines
    }

    /// `3`: per VM, from /proc/PID/io in the interval: bytes that reached storage and read/write syscalls;
    /// then, for VMs with a QMP socket (`--qmp`), one row per block device as virt-top's block view shows it:
    /// requests and bytes in the interval and the average time per request (``renderDevices(_:sort:)``).
    public static func renderBlock(_ frame: TopFrame, sort: TopSort = .cpu) -> [String] {
        var lines = ["    ID   RDBY   WRBY  RDSC  WRSC   RDCH   WRCH NAME"]
        for r in rows(frame, sort: sort) where !r.vm.gone {
            let d = r.vm.ioDelta
            lines.append(lpad(String(r.vm.pid), 6) + lpad(count(d?.readBytes), 7) + lpad(count(d?.writeBytes), 7)
                         + lpad(count(d?.readSyscalls), 6) + lpad(count(d?.writeSyscalls), 6)
                         + lpad(count(d?.readChars), 7) + lpad(count(d?.writeChars), 7) + " " + r.vm.name.terminalSafe)
        }
        let devices = renderDevices(frame, sort: sort)
        if devices.count > 1 { lines += [""] + devices }
        return lines
    }

    /// One row per block device of each VM with a QMP socket: RDRQ/WRRQ requests, RDBY/WRBY bytes in the
    /// interval (QMP `query-blockstats`), RDLAT/WRLAT the average time per request over the interval
    /// (rd_total_time_ns / rd_operations). A VM whose socket failed shows one marked row with the reason.
    public static func renderDevices(_ frame: TopFrame, sort: TopSort = .cpu) -> [String] {
        var lines = ["    ID DEVICE           RDRQ  WRRQ   RDBY   WRBY    RDLAT    WRLAT NAME"]
        for r in rows(frame, sort: sort) where !r.vm.gone {
            guard let q = r.vm.qmp else { continue }
            if let problem = q.problem {
                lines.append(lpad(String(r.vm.pid), 6) + " " + StatTable.pad("(QMP: \(problem))".terminalSafe, 59) + " "
                             + r.vm.name.terminalSafe)
                continue
            }
            for disk in q.disks {
                lines.append(lpad(String(r.vm.pid), 6) + " " + diskCells(disk) + " " + r.vm.name.terminalSafe)
            }
        }
        return lines
    }
}
