#if canImport(Glibc)
import Glibc
#endif
import KVMExits

/// Samples what each VM on the host costs it, from procfs and sysfs (no libvirt, no process spawned) and the
/// QMP sockets it is given (``qmp``): VMs are the processes holding an `anon_inode:kvm-vm` descriptor; per VM
/// and per thread it reads CPU times, run-queue wait, switches, memory, I/O and tap counters, and gives each
/// sample's growth since the previous one.
///
/// vCPU threads, and their numbers, come from the first of: the threads' names (``VCPUThreadName``: QEMU with
/// `-name …,debug-threads=on`, firecracker, cloud-hypervisor, kvmscope storm); the VM's QMP socket
/// (`query-cpus-fast`: thread-id ↔ cpu-index, exact, kept for each thread's life); else the threads that have
/// run the guest (stat field 43, guest_time > 0: only a thread in KVM_RUN accrues it), numbered 0, 1, … in tid
/// order — QEMU creates its vCPU threads in cpu-index order, and tids grow — an inference, marked
/// (``VMSample/vcpuSource`` `.guestTime`). A thread that has not run the guest yet is no vCPU by that rule, so
/// the first sample of a VM that has just started (QEMU with `-S`, a guest that has not started its other
/// CPUs yet, a vCPU that ran under one clock tick: guest_time counts ticks) may list fewer vCPUs than it has —
/// none at all before the guest ran — and its ``VMSample/vcpuTimes`` leave those threads out; a thread counts
/// from the sample in which it has run the guest (its delta then is its growth over that interval), and a vCPU
/// found later with a lower tid renumbers the ones after it. A kernel backend that emulates the guest's code
/// instead of running it (real mode without unrestricted-guest support) counts that time as system time: such
/// a vCPU is not found until its guest leaves real mode.
///
/// Cost per sample: one readdir of /proc; for each VM its stat, status, io and task list, and each thread's
/// stat and schedstat (comm once per thread; the two files kept open while the thread lives, read again from
/// offset 0: no open and close per sample); each tap's 8 statistics files. Processes that are not VMs have
/// their descriptors looked at while young (their first ``youngSamples`` samples, when a VMM creates its VM)
/// and then once every ``rescanEvery`` samples; known VMs' descriptors (for taps) and thread names are looked
/// at again every ``rescanEvery`` samples. Not thread-safe: one caller samples.
public final class ResourceSampler {
    /// Where procfs and sysfs are (tests use synthetic trees).
    public let procRoot: String
    public let sysRoot: String
    public let rescanEvery: Int
    public let youngSamples: Int
    /// Whether descriptors of /proc/PID and /proc/PID/task/TID stay open between samples (no path lookups:
    /// cheaper at a short interval). Without, nothing stays open between samples (`serve`, sampled per scrape).
    public let keepDescriptors: Bool
    /// Whether `procRoot` is the system's /proc, whose files are regenerated when read again from offset 0: then
    /// each thread's stat and schedstat stay open between samples. Elsewhere (a test's tree of plain files,
    /// which an open descriptor would keep reading after the file is gone) they are opened by name every sample.
    let procfsRereads: Bool
    /// Processes never reported (kvmscope itself, whose storm guest is its own VM).
    public var excluded: Set<Int32> = []
    /// When set, the only processes looked at (`serve -p PID`): no other process's descriptors are read, and
    /// the sample's cost and memory do not follow the other VMs of the host.
    public var only: Set<Int32>?
    /// QMP sockets (`--qmp PATH`), read at each sample; each one's QEMU is matched to its VM by the socket's
    /// peer pid, and its reading becomes that VM's ``VMSample/qmp``.
    public var qmp: [QMPMonitor] = []
    /// Warnings of the samples so far, one line each without the `kvmscope: ` prefix (a QMP socket that
    /// refuses, closes, times out, answers garbage, or whose QEMU is no VM sampled here); ``takeWarnings()``
    /// empties it.
    public private(set) var warnings: [String] = []

    private let file = ProcFile()
    private let ticksPerSecond: UInt64
    private let hostCPUs: Int
    private let hostMemoryBytes: UInt64
    private var sampleIndex = 0
    private var lastTimestamp: UInt64?

    private struct ThreadState {
        var comm: String
        /// The vCPU number its name gives (``VCPUThreadName``).
        var nameVCPU: UInt32?
        /// The cpu-index QMP's `query-cpus-fast` gave its tid (kept while the thread lives).
        var qmpVCPU: UInt32?
        /// The vCPU number it was given last, and from what (its row when gone).
        var vcpu: UInt32?
        var vcpuSource: VCPUSource?
        var times: ThreadTimes
        /// /proc/PID/task/TID, open while the thread is known (its files are opened relative to it: no path
        /// lookup per file); -1 when descriptors ran out (then paths from /proc/PID).
        var dir: Int32 = -1
        /// Its stat and schedstat, open while the thread is known (read again from offset 0 every sample); -1
        /// until first read, or when descriptors ran out (then opened by name each time).
        var statFD: Int32 = -1
        var schedstatFD: Int32 = -1

        /// Closes its descriptors.
        func close() {
            for fd in [dir, statFD, schedstatFD] where fd >= 0 { Glibc.close(fd) }
        }
    }
    private struct VMState {
        var name: String
        /// QEMU's `-uuid`, from the command line read when the VM was found.
        var uuid: String?
        var startTime: UInt64
        /// /proc/PID, open while the VM is known (with `keepDescriptors`; else -1): every file of the VM is
        /// opened relative to it.
        var directory: Int32
        var tunFDs: [Int32: String] = [:]
        var threads: [Int32: ThreadState] = [:]
        var process = ThreadTimes()
        var io: IOCounters?
        var taps: [Int32: TapCounters] = [:]
        var sampled = false
        var accel = "kvm"
        /// vhost kernel threads working for it (kernels before 6.4): their last times, by pid.
        var vhostWorkers: [Int32: ThreadTimes] = [:]
    }
    private var vms: [Int32: VMState] = [:]
    private var hostCPUTimes: [HostCPUTimes] = []
    /// pid → the sample it was first seen in, for processes that are not VMs.
    private var notVMs: [Int32: Int] = [:]
    /// QMP sockets already warned about for a peer that is not a VM.
    private var unmatchedWarned: Set<String> = []
    /// vhost kernel threads (`vhost-PID`, kernels before 6.4) → the VMM process they work for.
    private var vhostOwners: [Int32: Int32] = [:]

    /// - Parameters:
    ///   - procRoot: procfs (`/proc`).
    ///   - sysRoot: sysfs (`/sys`), for `/sys/class/net/TAP/statistics`.
    ///   - rescanEvery: every this many samples, every process's descriptors are looked at again.
    ///   - youngSamples: a process not (yet) a VM is looked at again in this many samples after it appears.
    ///   - keepDescriptors: keep a descriptor per VM and per VM thread open between samples.
    public init(procRoot: String = "/proc", sysRoot: String = "/sys", rescanEvery: Int = 10, youngSamples: Int = 3,
                keepDescriptors: Bool = true) {
        self.keepDescriptors = keepDescriptors
        procfsRereads = keepDescriptors && procRoot == "/proc"
        self.procRoot = procRoot
        self.sysRoot = sysRoot
        self.rescanEvery = max(1, rescanEvery)
        self.youngSamples = youngSamples
        let tck = sysconf(Int32(_SC_CLK_TCK))
        ticksPerSecond = tck > 0 ? UInt64(tck) : 100
        hostCPUs = max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        var mem: UInt64 = 0
        if case .success = file.read("\(procRoot)/meminfo"), let kb = file.keyed(["MemTotal:"])[0] { mem = kb * 1024 }
        hostMemoryBytes = mem
        if keepDescriptors { Self.raiseDescriptorLimit() }
    }

    /// Raises the soft limit on open descriptors to the hard one (as Go's runtime does at start): the sampler
    /// keeps one per VM and three per VM thread (its directory, stat and schedstat). Where it stays too low, threads are read by path instead.
    static func raiseDescriptorLimit() {
        var r = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &r) == 0, r.rlim_cur < r.rlim_max else { return }
        r.rlim_cur = r.rlim_max
        _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &r)
    }

    deinit {
        for vm in vms.values { closeDescriptors(of: vm) }
    }

    private func closeDescriptors(of vm: VMState) {
        if vm.directory >= 0 { close(vm.directory) }
        for t in vm.threads.values { t.close() }
    }

    /// Reads every VM once. The first sample has no deltas; each later one has the growth since the one before.
    public func sample() -> ResourceSample {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        let now = UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
        let interval = lastTimestamp.map { Double(now &- $0) / 1e9 } ?? 0
        lastTimestamp = now
        let rescan = sampleIndex % rescanEvery == 0
        discover(rescan: rescan)
        var out: [VMSample] = []
        for pid in vms.keys.sorted() {
            let s = sampleVM(pid, rescan: rescan)
            out.append(s)
            if s.gone {
                closeDescriptors(of: vms[pid]!)
                vms[pid] = nil
            }
        }
        readQMP(into: &out)
        for i in out.indices { numberVCPUs(&out[i]) }
        sampleIndex += 1
        var result = ResourceSample(timestamp: now, intervalSeconds: interval, ticksPerSecond: ticksPerSecond, hostCPUs: hostCPUs,
                                    hostMemoryBytes: hostMemoryBytes, vms: out)
        let cpus = readHostCPUs()
        if cpus.count == hostCPUTimes.count {
            result.hostCPUDeltas = zip(cpus, hostCPUTimes).map { $0.cpu == $1.cpu ? $0.subtracting($1) : HostCPUTimes(cpu: $0.cpu) }
        }
        hostCPUTimes = cpus
        return result
    }

    /// The warnings since the last call (see ``warnings``).
    public func takeWarnings() -> [String] {
        defer { warnings = [] }
        return warnings
    }

    /// Reads every QMP socket and gives each reading to the VM whose pid is the socket's peer. A socket whose
    /// QEMU was never reached gives its warning only; one whose QEMU is known but down marks that VM's row.
    private func readQMP(into vms: inout [VMSample]) {
        guard !qmp.isEmpty else { return }
        var threads: [Int32: Set<Int32>] = [:]
        for vm in vms where !vm.gone { threads[vm.pid] = Set(vm.threads.lazy.filter { !$0.gone && !$0.kernelThread }.map(\.tid)) }
        for m in qmp {
            let (pid, reading, warning) = m.read { threads[$0] }
            if let warning { warnings.append(warning) }
            guard let pid else { continue }
            if let i = vms.firstIndex(where: { $0.pid == pid }) {
                if !vms[i].gone { vms[i].qmp = reading }
            } else if reading.problem == nil, !(only.map { !$0.contains(pid) } ?? false), !excluded.contains(pid) {
                let w = "QMP \(m.path): its QEMU (pid \(pid)) is not a KVM or QEMU VM seen in /proc"
                if !unmatchedWarned.contains(m.path) { warnings.append(w) }
                unmatchedWarned.insert(m.path)
                continue
            }
            unmatchedWarned.remove(m.path)
        }
    }

    /// The `cpuN` lines of /proc/stat (an unreadable file: none).
    private func readHostCPUs() -> [HostCPUTimes] {
        guard case .success = file.read("\(procRoot)/stat") else { return [] }
        var out: [HostCPUTimes] = []
        for line in file.text.split(separator: "\n") where line.hasPrefix("cpu") && !line.hasPrefix("cpu ") {
            let f = line.split(separator: " ")
            guard f.count >= 11, let n = Int(f[0].dropFirst(3)) else { continue }
            let v = f[1...10].map { UInt64($0) ?? 0 }
            var c = HostCPUTimes(cpu: n)
            c.user = v[0]; c.nice = v[1]; c.system = v[2]; c.idle = v[3]; c.iowait = v[4]
            c.irq = v[5]; c.softirq = v[6]; c.steal = v[7]; c.guest = v[8]; c.guestNice = v[9]
            out.append(c)
        }
        return out
    }

    // MARK: Finding VMs

    private func discover(rescan: Bool) {
        guard case .success(let pids) = ProcDirectory.numericEntries(procRoot) else { return }
        var listed = Set<Int32>()
        listed.reserveCapacity(pids.count)
        for pid in pids {
            listed.insert(pid)
            if excluded.contains(pid) { continue }
            if let only, !only.contains(pid) { continue }
            if vms[pid] != nil {
                if rescan, let fds = descriptors(pid) {
                    vms[pid]!.tunFDs = fds.tun
                    if fds.isVM { vms[pid]!.accel = "kvm" }
                }
                continue
            }
            if let first = notVMs[pid], !rescan, sampleIndex - first >= youngSamples { continue }
            guard let fds = descriptors(pid), fds.isVM || isTCGQEMU(pid) else {
                if notVMs[pid] == nil { notVMs[pid] = sampleIndex }
                if vhostOwners[pid] == nil, let owner = vhostOwner(pid) { vhostOwners[pid] = owner }
                continue
            }
            let dir = open("\(procRoot)/\(pid)", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            guard dir >= 0 else { continue }
            guard case .success = file.read("stat", in: dir), let f = file.statFields([22]) else {
                close(dir)
                continue
            }
            notVMs[pid] = nil
            if !keepDescriptors { close(dir) }
            let (name, uuid) = guestIdentity(pid)
            vms[pid] = VMState(name: name, uuid: uuid, startTime: f.values[0], directory: keepDescriptors ? dir : -1, tunFDs: fds.tun,
                               accel: fds.isVM ? "kvm" : "tcg")
        }
        notVMs = notVMs.filter { listed.contains($0.key) }
        vhostOwners = vhostOwners.filter { listed.contains($0.key) }
    }

    /// The VMM a vhost kernel thread works for: before Linux 6.4 vhost-net, vhost-scsi and vhost-vsock run a
    /// kernel thread (PF_KTHREAD, 0x00200000 in field 9 of its stat) named `vhost-PID` per device, PID being
    /// the process that opened it; since 6.4 they are threads of that process, counted with its own. Nil for
    /// any other process.
    private func vhostOwner(_ pid: Int32) -> Int32? {
        guard case .success = file.read("\(procRoot)/\(pid)/comm"), file.text.hasPrefix("vhost-"),
              let owner = Int32(file.text.dropFirst(6)), owner > 0,
              case .success = file.read("\(procRoot)/\(pid)/stat"), let f = file.statFields([9]),
              f.values[0] & 0x0020_0000 != 0 else { return nil }
        return owner
    }

    /// A QEMU (`/proc/PID/exe` named `qemu-system-*`) without a KVM VM descriptor at least 2 s after it started
    /// (QEMU creates its KVM VM while it starts): a guest under TCG, shown as virt-top shows libvirt's.
    private func isTCGQEMU(_ pid: Int32) -> Bool {
        guard let exe = ProcDirectory.link("\(procRoot)/\(pid)/exe"),
              exe.split(separator: "/").last?.hasPrefix("qemu-system-") == true,
              case .success = file.read("\(procRoot)/\(pid)/stat"), let f = file.statFields([22]),
              case .success = file.read("\(procRoot)/uptime"), let up = Double(file.text.split(separator: " ").first ?? "")
        else { return false }
        return up - Double(f.values[0]) / Double(ticksPerSecond) >= 2
    }

    /// Whether the process holds a KVM VM descriptor, and its tun descriptors with their interface names.
    private func descriptors(_ pid: Int32) -> (isVM: Bool, tun: [Int32: String])? {
        guard case .success(let fds) = ProcDirectory.numericEntries("\(procRoot)/\(pid)/fd") else { return nil }
        var isVM = false
        var tun: [Int32: String] = [:]
        for fd in fds {
            guard let target = ProcDirectory.link("\(procRoot)/\(pid)/fd/\(fd)") else { continue }
            if target.hasPrefix("anon_inode:kvm-vm") {
                isVM = true
            } else if target == "/dev/net/tun", case .success = file.read("\(procRoot)/\(pid)/fdinfo/\(fd)") {
                for line in file.text.split(separator: "\n") where line.hasPrefix("iff:") {
                    tun[fd] = String(line.dropFirst(4).drop { $0 == " " || $0 == "\t" })
                }
            }
        }
        return (isVM, tun)
    }

    /// The guest's name (QEMU's `-name`, else the comm, else `?`) and QEMU's `-uuid`, from one read of the cmdline.
    private func guestIdentity(_ pid: Int32) -> (name: String, uuid: String?) {
        var uuid: String?
        if case .success = file.read("\(procRoot)/\(pid)/cmdline") {
            let args = file.nulSeparated
            uuid = GuestName.uuidFromQEMUArguments(args)
            if let name = GuestName.fromQEMUArguments(args) { return (name, uuid) }
        }
        if case .success = file.read("\(procRoot)/\(pid)/comm") { return (file.text, uuid) }
        return ("?", uuid)
    }

    // MARK: Sampling one VM

    private func sampleVM(_ pid: Int32, rescan: Bool) -> VMSample {
        var st = vms[pid]!
        var s = VMSample(pid: pid, name: st.name)
        s.commandLineUUID = st.uuid
        s.accel = st.accel
        // Without kept descriptors, /proc/PID is opened for this sample only.
        let vmDir = st.directory >= 0 ? st.directory : open("\(procRoot)/\(pid)", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        defer { if st.directory < 0 && vmDir >= 0 { close(vmDir) } }
        func gone() -> VMSample {
            var g = VMSample(pid: pid, name: st.name, gone: true)
            g.commandLineUUID = st.uuid
            g.accel = st.accel
            g.processTimes = st.process
            g.io = st.io
            g.taps = st.taps.keys.sorted().map { st.taps[$0]! }
            g.threads = st.threads.keys.sorted().map { tid in
                let t = st.threads[tid]!
                var row = ThreadSample(tid: tid, comm: t.comm, vcpu: t.vcpu, gone: true, times: t.times)
                row.vcpuSource = t.vcpuSource
                return row
            }
            g.vcpuTimes = g.threads.filter { $0.vcpu != nil }.reduce(ThreadTimes()) { $0 + $1.times }
            g.vcpuSource = g.threads.lazy.compactMap(\.vcpuSource).first
            return g
        }
        // /proc/PID/stat: a pid reused by another process is the old VM gone.
        // A zombie (state Z, X: ended, not yet reaped) is gone too.
        guard vmDir >= 0, case .success = file.read("stat", in: vmDir), let f = file.statFields([14, 15, 22, 43]),
              f.values[2] == st.startTime, f.state != UInt8(ascii: "Z"), f.state != UInt8(ascii: "X") else { return gone() }
        var process = ThreadTimes()
        process.userTicks = f.values[0]
        process.systemTicks = f.values[1]
        process.guestTicks = f.values[3]
        switch file.read("status", in: vmDir) {
        case .failure(.gone): return gone()
        case .failure: break
        case .success:
            let kb = file.keyed(["VmRSS:", "RssAnon:", "RssFile:", "RssShmem:", "VmSwap:"])
            s.memory.rssBytes = (kb[0] ?? 0) * 1024
            s.memory.anonBytes = (kb[1] ?? 0) * 1024
            s.memory.fileBytes = (kb[2] ?? 0) * 1024
            s.memory.shmemBytes = (kb[3] ?? 0) * 1024
            s.memory.swapBytes = (kb[4] ?? 0) * 1024
        }
        var io: IOCounters?
        switch file.read("io", in: vmDir) {
        case .failure(.gone): return gone()
        case .failure: break
        case .success:
            let v = file.keyed(["rchar:", "wchar:", "syscr:", "syscw:", "read_bytes:", "write_bytes:", "cancelled_write_bytes:"])
            if v.allSatisfy({ $0 != nil }) {
                var c = IOCounters()
                c.readChars = v[0]!
                c.writeChars = v[1]!
                c.readSyscalls = v[2]!
                c.writeSyscalls = v[3]!
                c.readBytes = v[4]!
                c.writeBytes = v[5]!
                c.cancelledWriteBytes = v[6]!
                io = c
            }
        }
        guard case .success(let tids) = ProcDirectory.numericEntries("task", in: vmDir) else { return gone() }

        // Threads.
        let first = !st.sampled
        var threads: [ThreadSample] = []
        var seen = Set<Int32>()
        for tid in tids {
            var known = st.threads[tid] ?? ThreadState(comm: "", times: ThreadTimes(),
                                                       dir: keepDescriptors
                                                           ? openat(vmDir, "task/\(tid)", O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1)
            let isNew = st.threads[tid] == nil
            let (dir, prefix) = known.dir >= 0 ? (known.dir, "") : (vmDir, "task/\(tid)/")
            /// A listed thread whose files are gone ended mid-sample: a marked row if it was known.
            func ended() {
                if isNew {
                    known.close()
                } else {
                    // Kept with the descriptors opened now, so that the gone thread's close() closes them too.
                    st.threads[tid] = known
                    seen.insert(tid)
                    threads.append(goneThread(tid, known))
                }
            }
            if isNew || rescan {
                guard case .success = file.read(prefix + "comm", in: dir) else {
                    ended()
                    continue
                }
                known.comm = file.text
                known.nameVCPU = VCPUThreadName.vcpu(known.comm)
            }
            // stat and schedstat stay open while the thread lives (the thread's directory is kept): read again from
            // offset 0, no open and close per sample.
            if procfsRereads && known.dir >= 0 && known.statFD < 0 { known.statFD = openat(known.dir, "stat", O_RDONLY | O_CLOEXEC) }
            if procfsRereads && known.dir >= 0 && known.schedstatFD < 0 {
                known.schedstatFD = openat(known.dir, "schedstat", O_RDONLY | O_CLOEXEC)
            }
            let statRead = known.statFD >= 0 ? file.read(descriptor: known.statFD) : file.read(prefix + "stat", in: dir)
            guard case .success = statRead, let tf = file.statFields([3, 14, 15, 39, 43]) else {
                ended()
                continue
            }
            let schedstatRead = known.schedstatFD >= 0 ? file.read(descriptor: known.schedstatFD)
                : file.read(prefix + "schedstat", in: dir)
            guard case .success = schedstatRead else {
                ended()
                continue
            }
            // Its vCPU number is given after the QMP sockets are read (``numberVCPUs(_:)``).
            var t = Self.threadSample(tid: tid, comm: known.comm, vcpu: nil, stat: tf, schedstat: file.numbers(max: 3))
            if !first {
                // A thread born since the previous sample grew from 0.
                t.delta = t.times.subtracting(st.threads[tid]?.times ?? ThreadTimes())
            }
            seen.insert(tid)
            known.times = t.times
            st.threads[tid] = known
            threads.append(t)
        }
        for (tid, t) in st.threads where !seen.contains(tid) { threads.append(goneThread(tid, t)) }
        for t in threads where t.gone {
            st.threads[t.tid]?.close()
            st.threads[t.tid] = nil
        }
        threads.sort { $0.tid < $1.tid }

        // Taps.
        var taps: [TapCounters] = []
        var tapDeltas: [TapCounters] = []
        var newTaps: [Int32: TapCounters] = [:]
        for fd in st.tunFDs.keys.sorted() {
            let dev = st.tunFDs[fd]!
            var c = TapCounters(device: dev, fd: fd)
            let dir = "\(sysRoot)/class/net/\(dev)/statistics"
            var values: [UInt64] = []
            for name in ["rx_bytes", "tx_bytes", "rx_packets", "tx_packets", "rx_dropped", "tx_dropped", "rx_errors", "tx_errors"] {
                guard case .success = file.read("\(dir)/\(name)"), let v = file.numbers(max: 1).first else { break }
                values.append(v)
            }
            if values.count == 8 {
                c.rxBytes = values[0]; c.txBytes = values[1]; c.rxPackets = values[2]; c.txPackets = values[3]
                c.rxDropped = values[4]; c.txDropped = values[5]; c.rxErrors = values[6]; c.txErrors = values[7]
                if let old = st.taps[fd], old.device == dev, !old.gone, !first { tapDeltas.append(c.subtracting(old)) }
                newTaps[fd] = c
            } else {
                c = st.taps[fd] ?? c
                c.gone = true
            }
            taps.append(c)
        }

        // vhost kernel threads working for it (before 6.4): their own rows, outside the process's times.
        var workers: [Int32: ThreadTimes] = [:]
        var vhostDelta = ThreadTimes()
        for (w, owner) in vhostOwners where owner == pid {
            guard case .success = file.read("\(procRoot)/\(w)/stat"), let wf = file.statFields([3, 14, 15, 39, 43]),
                  case .success = file.read("\(procRoot)/\(w)/schedstat") else { continue }
            var t = Self.threadSample(tid: w, comm: "vhost-\(pid)", vcpu: nil, stat: wf, schedstat: file.numbers(max: 3))
            t.kernelThread = true
            if !first {
                // A worker born since the previous sample grew from 0.
                t.delta = t.times.subtracting(st.vhostWorkers[w] ?? ThreadTimes())
                vhostDelta = vhostDelta + t.delta!
            }
            workers[w] = t.times
            threads.append(t)
        }
        st.vhostWorkers = workers
        s.vhostTimes = threads.filter { $0.isVhost && !$0.gone }.reduce(ThreadTimes()) { $0 + $1.times }
        if !first {
            s.vhostDelta = threads.filter { $0.isVhost && !$0.kernelThread }.compactMap(\.delta).reduce(vhostDelta) { $0 + $1 }
        }

        s.processTimes = process
        s.io = io
        s.taps = taps
        s.threads = threads
        if !first {
            var pd = process.subtracting(st.process)
            // Waits and switches are per thread only (schedstat): the process line sums the live threads'.
            let live = threads.filter { !$0.gone && !$0.kernelThread }
            pd.waitNanoseconds = live.compactMap(\.delta).reduce(0) { $0 &+ $1.waitNanoseconds }
            pd.switches = live.compactMap(\.delta).reduce(0) { $0 &+ $1.switches }
            s.processDelta = pd
            if let io, let old = st.io { s.ioDelta = io.subtracting(old) }
            s.tapDeltas = tapDeltas
        }
        // Process-wide waits and switches: the sum over live threads (ended threads' are not kept by schedstat).
        s.processTimes.waitNanoseconds = threads.filter { !$0.gone && !$0.kernelThread }.reduce(0) { $0 &+ $1.times.waitNanoseconds }
        s.processTimes.switches = threads.filter { !$0.gone && !$0.kernelThread }.reduce(0) { $0 &+ $1.times.switches }
        st.process = process
        st.io = io
        st.taps = newTaps
        st.sampled = true
        vms[pid] = st
        return s
    }

    /// A thread's row from its stat fields 3, 14, 15, 39 and 43 (state, utime, stime, processor, guest_time, as
    /// ``ProcFile/statFields(_:)`` gives them) and its schedstat (run ns, run-queue wait ns, timeslices).
    private static func threadSample(tid: Int32, comm: String, vcpu: UInt32?, stat: (state: UInt8, values: [UInt64]),
                                     schedstat sched: [UInt64]) -> ThreadSample {
        var t = ThreadSample(tid: tid, comm: comm, vcpu: vcpu)
        t.state = Character(UnicodeScalar(stat.state))
        t.processor = Int32(truncatingIfNeeded: stat.values[3])
        t.times.userTicks = stat.values[1]
        t.times.systemTicks = stat.values[2]
        t.times.guestTicks = stat.values[4]
        if sched.count == 3 {
            t.times.waitNanoseconds = sched[1]
            t.times.switches = sched[2]
        }
        return t
    }

    private func goneThread(_ tid: Int32, _ t: ThreadState) -> ThreadSample {
        var row = ThreadSample(tid: tid, comm: t.comm, vcpu: t.vcpu, gone: true, times: t.times)
        row.vcpuSource = t.vcpuSource
        return row
    }

    // MARK: vCPU numbers

    /// Gives a live VM's threads their vCPU numbers (names, else QMP's cpu-index, else guest time: see the
    /// type's summary), sorts its threads (vCPUs by number, the others by tid, kernel threads last) and sums
    /// its vCPU threads' times and deltas. A thread that ended keeps the number it had.
    private func numberVCPUs(_ s: inout VMSample) {
        // Taken out while changed (no copy of its thread table), put back at the end.
        guard !s.gone, var st = vms.removeValue(forKey: s.pid) else { return }
        let live = s.threads.indices.filter { !s.threads[$0].gone && !s.threads[$0].kernelThread }
        if let map = s.qmp?.vcpuThreads {
            // A fresh map: a thread it does not list runs no vCPU.
            for i in live { st.threads[s.threads[i].tid]?.qmpVCPU = map[s.threads[i].tid] }
        }
        let source: VCPUSource
        var numbers: [Int32: UInt32] = [:]
        if live.contains(where: { st.threads[s.threads[$0].tid]?.nameVCPU != nil }) {
            source = .threadName
            for i in live { numbers[s.threads[i].tid] = st.threads[s.threads[i].tid]?.nameVCPU }
        } else if live.contains(where: { st.threads[s.threads[$0].tid]?.qmpVCPU != nil }) {
            source = .qmp
            for i in live { numbers[s.threads[i].tid] = st.threads[s.threads[i].tid]?.qmpVCPU }
        } else {
            source = .guestTime
            // `live` is in tid order (threads were sorted by tid).
            var next: UInt32 = 0
            for i in live where s.threads[i].times.guestTicks > 0 {
                numbers[s.threads[i].tid] = next
                next += 1
            }
        }
        var vcpuTimes = ThreadTimes(), vcpuDelta = ThreadTimes()
        for i in live {
            let tid = s.threads[i].tid
            let n = numbers[tid]
            s.threads[i].vcpu = n
            s.threads[i].vcpuSource = n == nil ? nil : source
            st.threads[tid]?.vcpu = n
            st.threads[tid]?.vcpuSource = s.threads[i].vcpuSource
            if n != nil {
                vcpuTimes = vcpuTimes + s.threads[i].times
                if let d = s.threads[i].delta { vcpuDelta = vcpuDelta + d }
            }
        }
        s.vcpuSource = numbers.isEmpty ? nil : source
        s.vcpuTimes = vcpuTimes
        if s.processDelta != nil { s.vcpuDelta = vcpuDelta }
        s.threads.sort { a, b in
            if a.kernelThread != b.kernelThread { return !a.kernelThread }
            switch (a.vcpu, b.vcpu) {
            case let (x?, y?): return x != y ? x < y : a.tid < b.tid
            case (_?, nil): return true
            case (nil, _?): return false
            case (nil, nil): return a.tid < b.tid
            }
        }
        vms[s.pid] = st
    }
}
