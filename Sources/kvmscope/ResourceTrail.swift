import Foundation
import KVMExits
import KVMHost
import KVMResources
import KVMScopeViews

/// What each VM cost the host over a `stat` run: resource samples at the start, every `every` seconds while
/// tracing (so a VM that ends keeps its last numbers), and at the end; each VM's growth from its first sample
/// to its last — or from zero, for a VM whose process started after the run did (a `stat -- CMD` guest: its
/// first second would be missed otherwise).
final class ResourceTrail {
    private let sampler = ResourceSampler()
    private var first: [Int32: VMSample] = [:]
    private var last: [Int32: VMSample] = [:]
    private var firstTime: [Int32: UInt64] = [:]
    private var lastTime: [Int32: UInt64] = [:]
    private var startVMs: Set<Int32> = []
    /// VMs whose process started after the run did: counted from zero.
    private var bornDuringRun: Set<Int32> = []
    /// Every vCPU thread seen, per VM: its counters at first and last sight (a thread that ended keeps them).
    private var threadFirst: [Int32: [Int32: ThreadTimes]] = [:]
    private var threadLast: [Int32: [Int32: ThreadSample]] = [:]
    private var sampledAt = Date()
    private var ticksPerSecond: UInt64 = 100
    /// Each VM's block devices (QMP): counters at first and last sight, by device name.
    private var diskFirst: [Int32: [String: DiskCounts]] = [:]
    private var diskLast: [Int32: [String: DiskSample]] = [:]
    /// Each VM's last QMP reading (its problem, memory, balloon).
    private var qmpLast: [Int32: QMPSample] = [:]

    private let every: Double
    /// libvirt (where its daemon listens), read at each sample for its domains' device addresses only: they
    /// name the I/O tables' rows (``VMSample/deviceMap``).
    private let libvirt: LibvirtConnection?
    private var libvirtProblem: String?
    private var libvirtDomains: [LibvirtDomain] = []
    private var libvirtRead = Date.distantPast
    /// When the run started, in clock ticks since boot (the unit of /proc/PID/stat's starttime).
    private let startTicks: UInt64

    /// - Parameters:
    ///   - every: seconds between samples while tracing (a VM that ends loses at most this much).
    ///   - qmp: QMP sockets (`--qmp`) read at each sample.
    ///   - libvirtDevices: whether to read libvirt's domains (their XML's device addresses), where a libvirt
    ///     daemon listens.
    init(every: Double = 1, qmp: [QMPMonitor] = [], libvirtDevices: Bool = false) {
        self.every = every
        libvirt = libvirtDevices && LibvirtConnection.daemonListening ? try? LibvirtConnection() : nil
        var boot = timespec()
        clock_gettime(CLOCK_BOOTTIME, &boot)
        let tck = UInt64(max(1, sysconf(Int32(_SC_CLK_TCK))))
        // Rounded down: a process born in the same tick counts as born after.
        startTicks = (UInt64(boot.tv_sec) * 1_000_000_000 + UInt64(boot.tv_nsec)) * tck / 1_000_000_000
        sampler.excluded = [getpid()]
        sampler.qmp = qmp
        record(sampler.sample())
        startVMs = Set(first.keys)
    }

    /// Each VM's own device map, from the PCI BARs and the memory tree its QMP reading (`--qmp`) gave last
    /// (``VMSample/deviceMap``): names the I/O tables' ports and MMIO addresses by device.
    func deviceMaps() -> [Int32: DeviceMap] {
        var maps: [Int32: DeviceMap] = [:]
        for (pid, vm) in last { if let map = vm.deviceMap { maps[pid] = map } }
        return maps
    }

    /// Samples when `every` seconds have passed since the last sample.
    func sampleIfDue() {
        if Date().timeIntervalSince(sampledAt) >= every { record(sampler.sample()) }
    }

    func finish() {
        libvirtRead = .distantPast  // the last sample reads libvirt whatever the time
        record(sampler.sample())
    }

    private func record(_ sample: ResourceSample) {
        sampler.printWarnings()
        var s = sample
        if let libvirt {
            do {
                // At most once a second (a COMMAND's run samples ten times a second), and at the last sample:
                // domains start and end seldom, and each one's XML is read once anyway.
                if Date().timeIntervalSince(libvirtRead) >= 1 {
                    libvirtDomains = try libvirt.domains()
                    libvirtRead = Date()
                }
                s.attach(libvirt: libvirtDomains)
                libvirtProblem = nil
            } catch {
                let problem = "\(error)"
                if problem != libvirtProblem { writeStderr("kvmscope: warning: \(problem); I/O exits not named by libvirt's devices\n") }
                libvirtProblem = problem
            }
        }
        sampledAt = Date()
        ticksPerSecond = s.ticksPerSecond
        for vm in s.vms {
            if vm.gone {
                // The last numbers read stay; the VM is marked ended.
                last[vm.pid]?.gone = true
                continue
            }
            if first[vm.pid] == nil {
                var base = vm
                if let born = ThreadDirectory.startTime(tid: vm.pid, vm: vm.pid), born >= startTicks {
                    // Born during the run: everything it used, it used while traced.
                    base.processTimes = ThreadTimes()
                    base.io = vm.io.map { _ in IOCounters() }
                    bornDuringRun.insert(vm.pid)
                }
                first[vm.pid] = base
                firstTime[vm.pid] = s.timestamp
            }
            last[vm.pid] = vm
            lastTime[vm.pid] = s.timestamp
            for t in vm.threads where !t.gone && t.vcpu != nil {
                // A thread first seen after its VM was, or of a VM born during the run, counts from 0 (it was
                // born in between).
                if threadFirst[vm.pid, default: [:]][t.tid] == nil {
                    let fromZero = firstTime[vm.pid] != s.timestamp || bornDuringRun.contains(vm.pid)
                    threadFirst[vm.pid, default: [:]][t.tid] = fromZero ? ThreadTimes() : t.times
                }
                threadLast[vm.pid, default: [:]][t.tid] = t
            }
            if let q = vm.qmp {
                // A reading with a problem keeps the last good counters (the VM is marked by `qmp.problem`).
                if q.problem == nil {
                    for d in q.disks {
                        if diskFirst[vm.pid, default: [:]][d.device] == nil {
                            // A device first seen after its VM's first QMP reading was added since, and a VM born
                            // during the run did all its I/O while traced: from 0.
                            let fromZero = diskLast[vm.pid] != nil || bornDuringRun.contains(vm.pid)
                            diskFirst[vm.pid, default: [:]][d.device] = fromZero ? DiskCounts() : d.total
                        }
                        diskLast[vm.pid, default: [:]][d.device] = d
                    }
                    qmpLast[vm.pid] = q
                } else {
                    qmpLast[vm.pid, default: q].problem = q.problem
                }
            }
        }
    }

    /// The `resources` section of `stat --json`: one object per VM of `vms` (nil: every VM seen), by pid
    /// (``VMResourceUse/json``).
    func json(vms: Set<Int32>?) -> JSONValue { .array(uses(vms: vms).map(\.json)) }

    /// What each VM of `vms` (nil: every VM seen) used, by pid: growth from the VM's first sample to its last —
    /// the whole process (threads that ended included), every vCPU thread seen (each from its first sight or
    /// birth), /proc/PID/io — and memory at the last sample, with its QMP disks and PCI BARs.
    func uses(vms: Set<Int32>?) -> [VMResourceUse] {
        let pids = last.keys.filter { vms?.contains($0) ?? true }.sorted()
        return pids.map { pid in
            let a = first[pid]!
            let b = last[pid]!
            let before = threadFirst[pid] ?? [:]
            let vcpus = (threadLast[pid] ?? [:]).values.sorted { ($0.vcpu ?? 0, $0.tid) < ($1.vcpu ?? 0, $1.tid) }
            let grown = vcpus.map { VMResourceUse.Thread(vcpu: $0.vcpu, tid: $0.tid, times: $0.times.subtracting(before[$0.tid] ?? ThreadTimes())) }
            let vcpuSum = grown.reduce(ThreadTimes()) { s, g in
                var t = s
                t.userTicks += g.times.userTicks
                t.systemTicks += g.times.systemTicks
                t.guestTicks += g.times.guestTicks
                t.waitNanoseconds += g.times.waitNanoseconds
                t.switches += g.times.switches
                return t
            }
            let disks = (diskLast[pid] ?? [:]).values.sorted { $0.device < $1.device }.map { d in
                VMResourceUse.Disk(device: d.device, drive: d.drive, qdev: d.qdev,
                                   counts: d.total.subtracting(diskFirst[pid]?[d.device] ?? DiskCounts()))
            }
            return VMResourceUse(
                vm: pid, name: b.name, ended: b.gone, seenFromStart: startVMs.contains(pid),
                bornDuringRun: bornDuringRun.contains(pid),
                sampledSeconds: Double((lastTime[pid] ?? 0) &- (firstTime[pid] ?? 0)) / 1e9,
                vcpus: Set(vcpus.compactMap(\.vcpu)).count, ticksPerSecond: ticksPerSecond,
                process: b.processTimes.subtracting(a.processTimes), vcpuTotal: vcpuSum,
                io: b.io.flatMap { bio in a.io.map { bio.subtracting($0) } },
                rssBytes: b.memory.rssBytes, swapBytes: b.memory.swapBytes, threads: grown,
                qmp: qmpLast[pid].map { VMResourceUse.QMP(socket: $0.socket, problem: $0.problem,
                                                          memoryConfiguredBytes: $0.configuredMemoryBytes,
                                                          balloonActualBytes: $0.balloonActualBytes) },
                disks: disks, pciRegions: b.qmp?.pciRegions ?? [],
                memoryTree: b.qmp.flatMap { $0.memoryTree.isEmpty ? nil : $0.memoryTree },
                libvirtDevices: b.libvirt.flatMap { $0.devices.isEmpty ? nil : $0.devices })
        }
    }
}

/// What one VM cost the host over a run (``ResourceTrail/uses(vms:)``), as `stat --json` prints it and a
/// recording keeps it (``RecordedResources``): Codable, so `report` prints a recording's VMs with `stat`'s
/// very fields.
struct VMResourceUse: Codable, Sendable, Equatable {
    struct Thread: Codable, Sendable, Equatable {
        var vcpu: UInt32?
        var tid: Int32
        /// Growth over the run.
        var times: ThreadTimes
    }
    struct QMP: Codable, Sendable, Equatable {
        var socket: String
        var problem: String?
        var memoryConfiguredBytes: UInt64?
        var balloonActualBytes: UInt64?
    }
    struct Disk: Codable, Sendable, Equatable {
        var device: String
        var drive: String
        var qdev: String?
        /// Growth over the run.
        var counts: DiskCounts
    }
    var vm: Int32
    var name: String
    var ended: Bool
    var seenFromStart: Bool
    var bornDuringRun: Bool
    var sampledSeconds: Double
    var vcpus: Int
    /// Clock ticks per second of the times (USER_HZ).
    var ticksPerSecond: UInt64
    var process: ThreadTimes
    /// The sum over ``threads``.
    var vcpuTotal: ThreadTimes
    var io: IOCounters?
    var rssBytes: UInt64
    var swapBytes: UInt64
    var threads: [Thread]
    var qmp: QMP?
    var disks: [Disk]
    /// The VM's mapped PCI BARs at the last QMP reading (names I/O exits by device).
    var pciRegions: [PCIRegion]
    /// QEMU's memory tree at the last QMP reading (names I/O exits by device and role); nil in recordings
    /// made before it was kept, and where QEMU did not give it.
    var memoryTree: [MemoryTreeRange]? = nil
    /// The devices of the VM's libvirt domain (its XML: aliases, targets, ISA ports); nil without libvirt.
    var libvirtDevices: [LibvirtDevice]? = nil

    /// This VM's device map (``DeviceMap/init(pciRegions:memoryTree:libvirt:)``); nil when QMP and libvirt
    /// gave nothing.
    var deviceMap: DeviceMap? {
        let tree = memoryTree ?? [], devices = libvirtDevices ?? []
        guard !pciRegions.isEmpty || !tree.isEmpty || devices.contains(where: { $0.ioBase != nil }) else { return nil }
        return DeviceMap(pciRegions: pciRegions, memoryTree: tree, libvirt: devices)
    }

    /// `stat --json`'s resource object: `cpu_seconds`, `guest_seconds` (the whole process, threads that ended
    /// included), `vcpu_*` (every vCPU thread seen, each from its first sight or birth), `read_bytes`…
    /// (/proc/PID/io); `rss_bytes`, `swap_bytes` at the last sample; `qmp`; `disks` (TopView's disk fields).
    var json: JSONValue {
        func seconds(_ ticks: UInt64) -> JSONValue { .double(Double(ticks) / Double(max(1, ticksPerSecond))) }
        var o: [(String, JSONValue)] = [
            ("vm", .int(Int64(vm))), ("vm_name", .string(name)), ("ended", .bool(ended)),
            ("seen_from_start", .bool(seenFromStart)), ("born_during_run", .bool(bornDuringRun)),
        ]
        o.append(("sampled_seconds", .double(sampledSeconds)))
        o.append(("vcpus", .int(Int64(vcpus))))
        o.append(("cpu_seconds", seconds(process.cpuTicks)))
        o.append(("vcpu_cpu_seconds", seconds(vcpuTotal.cpuTicks)))
        o.append(("guest_seconds", seconds(process.guestTicks)))
        o.append(("vcpu_wait_seconds", .double(Double(vcpuTotal.waitNanoseconds) / 1e9)))
        o.append(("vcpu_switches", .uint(vcpuTotal.switches)))
        let ioFields: [(String, UInt64?)] = [("read_bytes", io?.readBytes), ("write_bytes", io?.writeBytes),
                                             ("read_syscalls", io?.readSyscalls), ("write_syscalls", io?.writeSyscalls)]
        for (k, v) in ioFields { o.append((k, v.map { JSONValue.uint($0) } ?? .null)) }
        o.append(("rss_bytes", .uint(rssBytes)))
        o.append(("swap_bytes", .uint(swapBytes)))
        o.append(("vcpu_threads", .array(threads.map { t in
            .object([
                ("vcpu", .optional(t.vcpu)), ("tid", .int(Int64(t.tid))), ("cpu_seconds", seconds(t.times.cpuTicks)),
                ("guest_seconds", seconds(t.times.guestTicks)), ("wait_seconds", .double(Double(t.times.waitNanoseconds) / 1e9)),
                ("switches", .uint(t.times.switches)),
            ])
        })))
        o.append(("qmp", qmp.map { q in
            .object([("socket", .string(q.socket)), ("problem", .optional(q.problem)),
                     ("memory_configured_bytes", .optional(q.memoryConfiguredBytes)),
                     ("balloon_actual_bytes", .optional(q.balloonActualBytes))])
        } ?? .null))
        o.append(("disks", .array(disks.map { d in
            TopView.diskJSON(DiskSample(device: d.device, drive: d.drive, qdev: d.qdev, total: d.counts), counts: d.counts)
        })))
        return .object(o)
    }
}
