/// The CPU time counters of one thread (or the sum over a VM's vCPU threads), cumulative since it started.
public struct ThreadTimes: Sendable, Equatable, Codable {
    /// Time in user mode, clock ticks (`/proc/PID/task/TID/stat` field 14, utime; guest time is part of it).
    public var userTicks: UInt64 = 0
    /// Time in kernel mode, clock ticks (stat field 15, stime).
    public var systemTicks: UInt64 = 0
    /// Time running the guest (in KVM_RUN's guest mode), clock ticks (stat field 43, guest_time).
    public var guestTicks: UInt64 = 0
    /// Time runnable on a run queue but not running — the host's view of the guest's steal time, nanoseconds
    /// (`/proc/PID/task/TID/schedstat` field 2, run_delay).
    public var waitNanoseconds: UInt64 = 0
    /// Times the thread was switched onto a CPU (schedstat field 3, pcount): voluntary and involuntary
    /// context switches together.
    public var switches: UInt64 = 0

    public init() {}

    /// `userTicks + systemTicks`: the host CPU time used.
    public var cpuTicks: UInt64 { userTicks &+ systemTicks }

    /// The counters' growth since `earlier` (a counter that went back counts 0, never a huge number).
    public func subtracting(_ earlier: ThreadTimes) -> ThreadTimes {
        var d = ThreadTimes()
        d.userTicks = userTicks.saturatingMinus(earlier.userTicks)
        d.systemTicks = systemTicks.saturatingMinus(earlier.systemTicks)
        d.guestTicks = guestTicks.saturatingMinus(earlier.guestTicks)
        d.waitNanoseconds = waitNanoseconds.saturatingMinus(earlier.waitNanoseconds)
        d.switches = switches.saturatingMinus(earlier.switches)
        return d
    }

    static func + (a: ThreadTimes, b: ThreadTimes) -> ThreadTimes {
        var s = a
        s.userTicks &+= b.userTicks
        s.systemTicks &+= b.systemTicks
        s.guestTicks &+= b.guestTicks
        s.waitNanoseconds &+= b.waitNanoseconds
        s.switches &+= b.switches
        return s
    }
}

/// A process's I/O counters, cumulative (`/proc/PID/io`; reading another user's needs root).
public struct IOCounters: Sendable, Equatable, Codable {
    /// Bytes the process asked to read by any read-like syscall (rchar: files, sockets, eventfds).
    public var readChars: UInt64 = 0
    /// Bytes passed to write-like syscalls (wchar).
    public var writeChars: UInt64 = 0
    /// Read-like syscalls (syscr).
    public var readSyscalls: UInt64 = 0
    /// Write-like syscalls (syscw).
    public var writeSyscalls: UInt64 = 0
    /// Bytes fetched from the storage layer (read_bytes; 0 for page-cache hits and for tmpfs).
    public var readBytes: UInt64 = 0
    /// Bytes sent (dirtied) to the storage layer (write_bytes).
    public var writeBytes: UInt64 = 0
    /// Bytes of writes later cancelled by truncation (cancelled_write_bytes).
    public var cancelledWriteBytes: UInt64 = 0

    public init() {}

    public func subtracting(_ e: IOCounters) -> IOCounters {
        var d = IOCounters()
        d.readChars = readChars.saturatingMinus(e.readChars)
        d.writeChars = writeChars.saturatingMinus(e.writeChars)
        d.readSyscalls = readSyscalls.saturatingMinus(e.readSyscalls)
        d.writeSyscalls = writeSyscalls.saturatingMinus(e.writeSyscalls)
        d.readBytes = readBytes.saturatingMinus(e.readBytes)
        d.writeBytes = writeBytes.saturatingMinus(e.writeBytes)
        d.cancelledWriteBytes = cancelledWriteBytes.saturatingMinus(e.cancelledWriteBytes)
        return d
    }
}

/// A process's memory, a gauge (`/proc/PID/status`, kB there, bytes here).
public struct MemoryUsage: Sendable, Equatable {
    /// Resident set size, bytes (VmRSS).
    public var rssBytes: UInt64 = 0
    /// Resident anonymous memory — for a VMM mostly the guest's RAM it touched — bytes (RssAnon).
    public var anonBytes: UInt64 = 0
    /// Resident file-backed memory, bytes (RssFile).
    public var fileBytes: UInt64 = 0
    /// Resident shared memory (shmem, memfd guest RAM), bytes (RssShmem).
    public var shmemBytes: UInt64 = 0
    /// Swapped-out anonymous memory, bytes (VmSwap).
    public var swapBytes: UInt64 = 0

    public init() {}
}

/// A tap device's counters as the host sees them (`/sys/class/net/TAP/statistics/*`), cumulative. The host's
/// receive is the guest's transmit: virt-top and libvirt show `rx_*` of the guest, which is `tx_*` here.
public struct TapCounters: Sendable, Equatable {
    /// The interface name, from `iff:` in `/proc/PID/fdinfo/FD` of a `/dev/net/tun` descriptor.
    public var device: String
    /// The descriptor holding it.
    public var fd: Int32
    /// True when the interface's statistics could not be read this sample (the device went away).
    public var gone = false
    public var rxBytes: UInt64 = 0
    public var txBytes: UInt64 = 0
    public var rxPackets: UInt64 = 0
    public var txPackets: UInt64 = 0
    public var rxDropped: UInt64 = 0
    public var txDropped: UInt64 = 0
    public var rxErrors: UInt64 = 0
    public var txErrors: UInt64 = 0

    public init(device: String, fd: Int32) {
        self.device = device
        self.fd = fd
    }

    public func subtracting(_ e: TapCounters) -> TapCounters {
        var d = self
        d.rxBytes = rxBytes.saturatingMinus(e.rxBytes)
        d.txBytes = txBytes.saturatingMinus(e.txBytes)
        d.rxPackets = rxPackets.saturatingMinus(e.rxPackets)
        d.txPackets = txPackets.saturatingMinus(e.txPackets)
        d.rxDropped = rxDropped.saturatingMinus(e.rxDropped)
        d.txDropped = txDropped.saturatingMinus(e.txDropped)
        d.rxErrors = rxErrors.saturatingMinus(e.rxErrors)
        d.txErrors = txErrors.saturatingMinus(e.txErrors)
        return d
    }
}

/// One block device's counters as QEMU counts them (QMP `query-blockstats`), cumulative since QEMU started or
/// grown over an interval. Requests are guest requests completed (after QEMU's merging); times are the sum of
/// each request's time from submission to completion, ns.
public struct DiskCounts: Sendable, Equatable, Codable {
    public var readRequests: UInt64 = 0
    public var writeRequests: UInt64 = 0
    public var flushRequests: UInt64 = 0
    public var readBytes: UInt64 = 0
    public var writeBytes: UInt64 = 0
    public var readTimeNanoseconds: UInt64 = 0
    public var writeTimeNanoseconds: UInt64 = 0
    public var flushTimeNanoseconds: UInt64 = 0

    public init() {}

    /// The counters of a `query-blockstats` entry: `rd_operations`, `wr_operations`, `flush_operations`,
    /// `rd_bytes`, `wr_bytes`, `rd_total_time_ns`, `wr_total_time_ns`, `flush_total_time_ns`.
    public init(_ c: QMPReplies.BlockStats.Counters) {
        readRequests = c.rdOperations
        writeRequests = c.wrOperations
        flushRequests = c.flushOperations
        readBytes = c.rdBytes
        writeBytes = c.wrBytes
        readTimeNanoseconds = c.rdTotalTimeNs
        writeTimeNanoseconds = c.wrTotalTimeNs
        flushTimeNanoseconds = c.flushTotalTimeNs
    }

    public func subtracting(_ e: DiskCounts) -> DiskCounts {
        var d = DiskCounts()
        d.readRequests = readRequests.saturatingMinus(e.readRequests)
        d.writeRequests = writeRequests.saturatingMinus(e.writeRequests)
        d.flushRequests = flushRequests.saturatingMinus(e.flushRequests)
        d.readBytes = readBytes.saturatingMinus(e.readBytes)
        d.writeBytes = writeBytes.saturatingMinus(e.writeBytes)
        d.readTimeNanoseconds = readTimeNanoseconds.saturatingMinus(e.readTimeNanoseconds)
        d.writeTimeNanoseconds = writeTimeNanoseconds.saturatingMinus(e.writeTimeNanoseconds)
        d.flushTimeNanoseconds = flushTimeNanoseconds.saturatingMinus(e.flushTimeNanoseconds)
        return d
    }

    /// Average time per read request, ns: `rd_total_time_ns / rd_operations` (of an interval's growth: the
    /// requests completed in it); nil without requests.
    public var readLatencyNanoseconds: Double? {
        readRequests > 0 ? Double(readTimeNanoseconds) / Double(readRequests) : nil
    }

    /// Average time per write request, ns; nil without requests.
    public var writeLatencyNanoseconds: Double? {
        writeRequests > 0 ? Double(writeTimeNanoseconds) / Double(writeRequests) : nil
    }

    /// Average time per read or write request, ns (flushes left out, as libvirt's block latency does); nil
    /// without requests.
    public var latencyNanoseconds: Double? {
        let n = readRequests &+ writeRequests
        return n > 0 ? Double(readTimeNanoseconds &+ writeTimeNanoseconds) / Double(n) : nil
    }
}

/// One block device of a VM in one sample (QMP `query-blockstats`).
public struct DiskSample: Sendable, Equatable {
    /// The device's name: the id of the guest device using the drive (`virtio-disk0`), else the drive's id,
    /// else the block node's name (``QMPReplies/BlockStats/name``).
    public var device: String
    /// The drive's id (`-drive id=…`), empty for a `-blockdev`.
    public var drive: String
    /// The QOM path of the device using it (`/machine/peripheral/virtio-disk0/virtio-backend`), nil when
    /// no device uses the drive.
    public var qdev: String?
    /// Cumulative counters.
    public var total: DiskCounts
    /// Growth since the previous sample; nil for a device first seen now (or a VM first sampled now).
    public var delta: DiskCounts?

    public init(device: String, drive: String, qdev: String?, total: DiskCounts, delta: DiskCounts? = nil) {
        self.device = device
        self.drive = drive
        self.qdev = qdev
        self.total = total
        self.delta = delta
    }
}

/// One mapped BAR of a VM's PCI device (QMP `query-pci`): which guest ports or guest-physical addresses reach
/// which device — what names a `kvm_pio` port or a `kvm_mmio` address.
public struct PCIRegion: Sendable, Equatable, Codable {
    /// The device's id (`virtio-disk0`), else QEMU's class name (`SCSI controller`), else `VVVV:DDDD`.
    public var device: String
    /// `BB:SS.F`, the device's PCI address.
    public var address: String
    public var bar: Int
    /// True for an I/O port range (`kvm_pio`), false for memory (MMIO, `kvm_mmio`).
    public var isIO: Bool
    /// The first port or guest-physical address, and the region's length.
    public var start: UInt64
    public var size: UInt64

    public init(device: String, address: String, bar: Int, isIO: Bool, start: UInt64, size: UInt64) {
        self.device = device
        self.address = address
        self.bar = bar
        self.isIO = isIO
        self.start = start
        self.size = size
    }

    /// The regions of `query-pci`'s buses that the guest has mapped (bridges' devices included), in QEMU's order.
    public static func of(_ buses: [QMPReplies.PCIBus]) -> [PCIRegion] {
        var out: [PCIRegion] = []
        func hex(_ v: Int, _ width: Int) -> String {
            let h = String(v, radix: 16)
            return String(repeating: "0", count: max(0, width - h.count)) + h
        }
        func visit(_ devices: [QMPReplies.PCIDevice]) {
            for d in devices {
                let name = !d.qdevID.isEmpty ? d.qdevID : d.classInfo.desc ?? "\(hex(d.id.vendor, 4)):\(hex(d.id.device, 4))"
                let address = "\(hex(d.bus, 2)):\(hex(d.slot, 2)).\(d.function)"
                for r in d.regions where r.address >= 0 && r.size > 0 {
                    out.append(PCIRegion(device: name, address: address, bar: r.bar, isIO: r.type == "io", start: UInt64(r.address), size: r.size))
                }
                visit(d.pciBridge?.devices ?? [])
            }
        }
        visit(buses.flatMap(\.devices))
        return out
    }
}

/// What QEMU itself says about a VM through its QMP socket (`--qmp PATH`), in one sample — or through libvirt,
/// which reads the same counters from its own QMP monitor (``LibvirtDomain/qmpSample(previous:)``).
public struct QMPSample: Sendable, Equatable {
    /// The socket's path; `libvirt:URI` when libvirt gave the numbers.
    public var socket: String
    /// Why QMP could not be read this sample (`connection closed by the peer`, `no answer in 1.0 s`, …): the
    /// row is marked and nothing else here is filled (never an old number shown as new).
    public var problem: String?
    /// Block devices, as `query-blockstats` lists them.
    public var disks: [DiskSample] = []
    /// QEMU's run state (`query-status`): `running`, `paused` (QMP `stop`, `virsh suspend`), `suspended` (the
    /// guest's S3), `inmigrate`, `postmigrate`, `io-error`, `guest-panicked`, `shutdown`, …; nil where it was not
    /// read (through libvirt, whose own state is ``LibvirtDomain/state``).
    public var runState: String?
    /// Whether QEMU runs the guest's vCPUs (`query-status` `running`); nil where it was not read.
    public var running: Bool?
    /// The guest's configured RAM, bytes: `base-memory + plugged-memory` of `query-memory-size-summary`
    /// (`-m`, plus hot-plugged DIMMs).
    public var configuredMemoryBytes: UInt64?
    /// The guest's RAM after the balloon (`query-balloon` actual), bytes; nil without a balloon device.
    public var balloonActualBytes: UInt64?
    /// KVM's binary statistics of the VM (`query-stats` target `vm`, provider kvm), numeric ones by name
    /// (`remote_tlb_flush`, `mmu_cache_miss`, `pages_4k`, …); empty where QEMU or KVM has none (QEMU < 7.1).
    public var kvmVMStats: [String: UInt64] = [:]
    /// KVM's statistics of the vCPUs (`query-stats` target `vcpu`), numeric ones summed over every vCPU
    /// (`exits`, `halt_exits`, `halt_successful_poll`, `halt_wait_ns`, `insn_emulation`, `io_exits`, …).
    public var kvmVCPUStats: [String: UInt64] = [:]
    /// The guest's mapped PCI BARs (`query-pci`, read when the connection opens and every 10th read after:
    /// firmware and guests map BARs at boot): the port and MMIO ranges of each device.
    public var pciRegions: [PCIRegion] = []
    /// QEMU's memory tree (`info mtree -f -o`, read when the connection opens and again when ``pciRegions``
    /// change): the regions behind the guest's ports and MMIO addresses, by role (a virtio device's `notify`).
    /// Empty where QEMU did not give it (a warning said why): the BARs still name the exits then.
    public var memoryTree: [MemoryTreeRange] = []
    /// The vCPU each host thread runs, tid → `cpu-index` (`query-cpus-fast`, asked when the connection opens
    /// and again when the VM's thread set changed — not at every read): the exact vCPU numbers of threads that
    /// their names do not give (QEMU without `-name …,debug-threads=on`). Where several vCPUs share a thread
    /// (single-threaded TCG) the lowest index. Nil where QEMU did not give it (a warning said why).
    public var vcpuThreads: [Int32: UInt32]?

    public init(socket: String, problem: String? = nil) {
        self.socket = socket
        self.problem = problem
    }
}

/// One thread of a VM in one sample.
public struct ThreadSample: Sendable, Equatable {
    public var tid: Int32
    /// The thread's name (`/proc/PID/task/TID/comm`, read when the thread is first seen).
    public var comm: String
    /// Its vCPU number, nil for the VMM's other threads; ``vcpuSource`` says where it comes from (the thread's
    /// name, QMP, or an inference from guest time).
    public var vcpu: UInt32?
    /// Where ``vcpu`` comes from; nil when it is nil.
    public var vcpuSource: VCPUSource?
    /// True when the thread ended between the last sample and this one (its counters are the last read,
    /// `delta` is nil): a marked row, never a zero.
    public var gone = false
    /// The scheduler state letter (stat field 3: R running, S sleeping, D disk wait, …).
    public var state: Character = "?"
    /// The host CPU it last ran on (stat field 39).
    public var processor: Int32 = -1
    /// Cumulative counters.
    public var times = ThreadTimes()
    /// Growth since the previous sample; nil on the first sample of the thread's VM and when gone. A thread
    /// born since the previous sample counts from 0.
    public var delta: ThreadTimes?
    /// A kernel thread working for the VM, not one of its process's threads: a vhost worker of a kernel before
    /// 6.4 (listed after the process's threads; its times are not in the process's).
    public var kernelThread = false

    /// A vhost worker (`vhost-PID`: virtio-net, -scsi or -vsock done in the host kernel), kernel thread or not.
    public var isVhost: Bool { comm.hasPrefix("vhost-") }

    public init(tid: Int32, comm: String, vcpu: UInt32?, gone: Bool = false, times: ThreadTimes = ThreadTimes()) {
        self.tid = tid
        self.comm = comm
        self.vcpu = vcpu
        self.gone = gone
        self.times = times
    }
}

/// One VM (a process holding an `anon_inode:kvm-vm` descriptor) in one sample.
public struct VMSample: Sendable, Equatable {
    /// The VMM's process id.
    public var pid: Int32
    /// The guest's name as kvm_stat finds it (QEMU `-name guest=NAME,…`, `,,` an escaped comma), else the
    /// process's comm.
    public var name: String
    /// True when the process ended (or its pid was reused) since the last sample: counters are the last read,
    /// deltas nil. The VM is not listed in later samples.
    public var gone = false
    /// `kvm` (the process holds a KVM VM descriptor) or `tcg` (a QEMU without one: emulated, no KVM).
    public var accel = "kvm"
    /// The libvirt domain this process runs (name, UUID, `virsh domstats`), when kvmscope reads libvirt and
    /// libvirt lists it; nil otherwise.
    public var libvirt: LibvirtDomain?
    /// The `-uuid` of the process's QEMU command line (lowercase), read once when the VM is found; nil without one.
    public var commandLineUUID: String?
    /// The VM's UUID: libvirt's domain UUID, else QEMU's `-uuid` (libvirt passes its own as `-uuid`, so where both
    /// exist they agree); nil when neither is known (firecracker, cloud-hypervisor, QEMU without `-uuid`).
    public var uuid: String? {
        if let u = libvirt?.uuid, !u.isEmpty { return u }
        return commandLineUUID
    }
    /// The process's CPU times, cumulative, from `/proc/PID/stat` (utime, stime, guest_time of the whole
    /// process, threads that ended included; schedstat fields are not used here).
    public var processTimes = ThreadTimes()
    /// Sum of the vCPU threads' counters (``ThreadSample/times``) now listed.
    public var vcpuTimes = ThreadTimes()
    /// Growth of ``processTimes`` since the previous sample (nil at first sight and when gone).
    public var processDelta: ThreadTimes?
    /// Sum of the vCPU threads' deltas (nil at first sight and when gone). Run-queue wait and switches are
    /// summed over every vCPU thread; the VM's other threads are in ``threads``.
    public var vcpuDelta: ThreadTimes?
    /// The vhost workers' times (virtio-net, -scsi, -vsock done in the kernel), summed: threads named
    /// `vhost-PID` — kernel threads before Linux 6.4 (outside ``processTimes``), threads of the VMM since
    /// (inside it). Cumulative over the workers alive now.
    public var vhostTimes = ThreadTimes()
    /// Their growth since the previous sample (workers born since count from 0); nil in a first sample.
    public var vhostDelta: ThreadTimes?
    /// Memory now.
    public var memory = MemoryUsage()
    /// I/O counters, cumulative; nil when `/proc/PID/io` is not readable (not root).
    public var io: IOCounters?
    /// Growth of ``io`` since the previous sample.
    public var ioDelta: IOCounters?
    /// The tap devices of its `/dev/net/tun` descriptors, cumulative, by fd.
    public var taps: [TapCounters] = []
    /// Growth of each tap's counters (same order; a tap first seen this sample has none).
    public var tapDeltas: [TapCounters] = []
    /// Every thread, vCPU threads first (by vCPU number), then the others by tid, then the kernel threads working
    /// for it (vhost workers before Linux 6.4, ``ThreadSample/kernelThread``).
    public var threads: [ThreadSample] = []
    /// What its QMP socket says, when `--qmp` named one whose QEMU is this process (matched by the socket's
    /// peer pid); nil otherwise.
    public var qmp: QMPSample?

    public init(pid: Int32, name: String, gone: Bool = false) {
        self.pid = pid
        self.name = name
        self.gone = gone
    }

    /// Where its vCPU threads' numbers come from (``ResourceSampler`` gives one source per VM); nil when it
    /// has none.
    public var vcpuSource: VCPUSource?

    /// vCPU threads now listed (gone ones excluded).
    public var vcpuCount: Int { threads.filter { $0.vcpu != nil && !$0.gone }.count }
}

/// How a VM's vCPU threads were found and numbered.
public enum VCPUSource: String, Sendable, Equatable, Codable {
    /// By their names (``VCPUThreadName``): QEMU's `CPU N/KVM` (`-name …,debug-threads=on`), firecracker's,
    /// cloud-hypervisor's. Exact.
    case threadName = "thread_name"
    /// By QMP's `query-cpus-fast` (thread-id ↔ cpu-index) on the VM's `--qmp` socket. Exact.
    case qmp
    /// Inferred: the threads that have run the guest (`/proc/PID/task/TID/stat` field 43, guest_time > 0),
    /// numbered 0, 1, … in tid order (QEMU creates vCPU threads in cpu-index order). Which threads are vCPUs is
    /// sure once they ran; their numbers are not (a vCPU that has not run yet shifts the ones after it).
    case guestTime = "guest_time"

    /// Whether the numbers are the VMM's own (names, QMP), not inferred.
    public var isExact: Bool { self != .guestTime }
}

/// One host CPU's time, cumulative, clock ticks (a `cpuN` line of /proc/stat). `user` includes `guest`.
public struct HostCPUTimes: Sendable, Equatable {
    public var cpu: Int
    public var user: UInt64 = 0, nice: UInt64 = 0, system: UInt64 = 0, idle: UInt64 = 0, iowait: UInt64 = 0
    public var irq: UInt64 = 0, softirq: UInt64 = 0, steal: UInt64 = 0, guest: UInt64 = 0, guestNice: UInt64 = 0

    public init(cpu: Int) { self.cpu = cpu }

    /// Every tick of the CPU (guest time is inside user and nice, so counted once).
    public var total: UInt64 { user &+ nice &+ system &+ idle &+ iowait &+ irq &+ softirq &+ steal }

    public func subtracting(_ e: HostCPUTimes) -> HostCPUTimes {
        var d = HostCPUTimes(cpu: cpu)
        d.user = user.saturatingMinus(e.user); d.nice = nice.saturatingMinus(e.nice)
        d.system = system.saturatingMinus(e.system); d.idle = idle.saturatingMinus(e.idle)
        d.iowait = iowait.saturatingMinus(e.iowait); d.irq = irq.saturatingMinus(e.irq)
        d.softirq = softirq.saturatingMinus(e.softirq); d.steal = steal.saturatingMinus(e.steal)
        d.guest = guest.saturatingMinus(e.guest); d.guestNice = guestNice.saturatingMinus(e.guestNice)
        return d
    }
}

/// One sample of every VM on the host.
public struct ResourceSample: Sendable, Equatable {
    /// CLOCK_MONOTONIC time of the sample, nanoseconds.
    public var timestamp: UInt64
    /// Seconds since the previous sample (0 for the first).
    public var intervalSeconds: Double
    /// Clock ticks per second of the tick counters (sysconf(_SC_CLK_TCK), 100 on Linux).
    public var ticksPerSecond: UInt64
    /// Online host CPUs (sysconf(_SC_NPROCESSORS_ONLN)): virt-top's %CPU divides by it.
    public var hostCPUs: Int
    /// Host memory, bytes (MemTotal in /proc/meminfo): %MEM divides by it.
    public var hostMemoryBytes: UInt64
    /// VMs by pid.
    public var vms: [VMSample]
    /// Each host CPU's growth since the previous sample (/proc/stat), by CPU number; empty at the first.
    public var hostCPUDeltas: [HostCPUTimes] = []

    public init(timestamp: UInt64, intervalSeconds: Double, ticksPerSecond: UInt64, hostCPUs: Int, hostMemoryBytes: UInt64,
                vms: [VMSample]) {
        self.timestamp = timestamp
        self.intervalSeconds = intervalSeconds
        self.ticksPerSecond = ticksPerSecond
        self.hostCPUs = hostCPUs
        self.hostMemoryBytes = hostMemoryBytes
        self.vms = vms
    }

    /// Ticks as seconds.
    public func seconds(_ ticks: UInt64) -> Double { Double(ticks) / Double(ticksPerSecond) }
}

extension UInt64 {
    /// `self - b`, or 0 when `b` is larger (a counter that went back).
    public func saturatingMinus(_ b: UInt64) -> UInt64 { self >= b ? self - b : 0 }
}

/// vCPU threads by their VMM's names for them.
public enum VCPUThreadName {
    /// The vCPU number of a thread name: QEMU's `CPU 3/KVM` (`-name …,debug-threads=on`, also kvmscope storm's;
    /// `CPU 3/TCG` under TCG),
    /// firecracker's `fc_vcpu 3`, cloud-hypervisor's `vcpu3`; nil for other names.
    public static func vcpu(_ name: String) -> UInt32? {
        if name.hasPrefix("CPU "), name.hasSuffix("/KVM") || name.hasSuffix("/TCG") { return UInt32(name.dropFirst(4).dropLast(4)) }
        if name.hasPrefix("fc_vcpu ") { return UInt32(name.dropFirst(8)) }
        if name.hasPrefix("vcpu") { return UInt32(name.dropFirst(4)) }
        return nil
    }
}
