import Foundation
import Testing
import KVMResources

/// A synthetic /proc and /sys tree with one VM: every number the sampler reports is known.
final class FakeHost {
    let root: URL
    var proc: String { root.appendingPathComponent("proc").path }
    var sys: String { root.appendingPathComponent("sys").path }

    init() throws {
        root = FileManager.default.temporaryDirectory.appendingPathComponent("kvmscope-res-\(getpid())-\(UUID().uuidString)")
        try FileManager.default.createDirectory(atPath: root.appendingPathComponent("proc").path, withIntermediateDirectories: true)
        try write("proc/meminfo", "MemTotal:        4000000 kB\nMemFree:  1 kB\n")
    }

    deinit { try? FileManager.default.removeItem(at: root) }

    func write(_ path: String, _ text: String) throws {
        let url = root.appendingPathComponent(path)
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try text.write(to: url, atomically: false, encoding: .utf8)
    }

    func link(_ path: String, to target: String) throws {
        let url = root.appendingPathComponent(path)
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: url.path, withDestinationPath: target)
    }

    func remove(_ path: String) throws { try FileManager.default.removeItem(at: root.appendingPathComponent(path)) }

    /// A stat line as the kernel writes it: fields 1…52, with the ones the sampler reads set.
    static func stat(_ id: Int32, _ comm: String, state: String = "S", utime: UInt64, stime: UInt64, start: UInt64 = 500,
                     cpu: Int = 1, guest: UInt64 = 0) -> String {
        var f = [String](repeating: "0", count: 53)
        f[1] = "\(id)"; f[2] = "(\(comm))"; f[3] = state; f[14] = "\(utime)"; f[15] = "\(stime)"; f[22] = "\(start)"
        f[39] = "\(cpu)"; f[43] = "\(guest)"; f[16] = "-5"
        return f[1...].joined(separator: " ") + "\n"
    }

    func process(_ pid: Int32, cmdline: [String], comm: String, utime: UInt64, stime: UInt64, guest: UInt64 = 0,
                 start: UInt64 = 500, rssKB: UInt64 = 2048, io: (rchar: UInt64, syscr: UInt64, rb: UInt64, wb: UInt64)) throws {
        try write("proc/\(pid)/cmdline", cmdline.joined(separator: "\0") + "\0")
        try write("proc/\(pid)/comm", comm + "\n")
        try write("proc/\(pid)/stat", Self.stat(pid, comm, utime: utime, stime: stime, start: start, guest: guest))
        try write("proc/\(pid)/status", """
            Name:\t\(comm)
            Tgid:\t\(pid)
            VmRSS:\t    \(rssKB) kB
            RssAnon:\t    \(rssKB - 48) kB
            RssFile:\t      40 kB
            RssShmem:\t       8 kB
            VmSwap:\t      12 kB
            voluntary_ctxt_switches:\t3

            """)
        try write("proc/\(pid)/io", """
            rchar: \(io.rchar)
            wchar: 70
            syscr: \(io.syscr)
            syscw: 7
            read_bytes: \(io.rb)
            write_bytes: \(io.wb)
            cancelled_write_bytes: 0

            """)
    }

    func thread(_ pid: Int32, _ tid: Int32, comm: String, utime: UInt64, stime: UInt64, guest: UInt64 = 0, state: String = "S",
                run: UInt64, wait: UInt64, slices: UInt64) throws {
        try write("proc/\(pid)/task/\(tid)/comm", comm + "\n")
        try write("proc/\(pid)/task/\(tid)/stat", Self.stat(tid, comm, state: state, utime: utime, stime: stime, cpu: Int(tid % 2),
                                                           guest: guest))
        try write("proc/\(pid)/task/\(tid)/schedstat", "\(run) \(wait) \(slices)\n")
    }

    func tap(_ name: String, rxBytes: UInt64, txBytes: UInt64) throws {
        let values = ["rx_bytes": rxBytes, "tx_bytes": txBytes, "rx_packets": rxBytes / 100, "tx_packets": txBytes / 100,
                      "rx_dropped": 1, "tx_dropped": 2, "rx_errors": 3, "tx_errors": 4]
        for (k, v) in values { try write("sys/class/net/\(name)/statistics/\(k)", "\(v)\n") }
    }
}

@Suite struct ResourceSamplerTests {
    /// One QEMU-like VM (main loop, two vCPU threads, an I/O thread), a tap, and a process that is no VM.
    func host() throws -> FakeHost {
        let h = try FakeHost()
        try h.process(100, cmdline: ["qemu-system-x86_64", "-name", "guest=web,,1,debug-threads=on", "-m", "512"],
                      comm: "qemu-system-x86", utime: 300, stime: 100, guest: 250, io: (1000, 10, 4096, 8192))
        try h.link("proc/100/fd/0", to: "/dev/null")
        try h.link("proc/100/fd/11", to: "anon_inode:kvm-vm")
        try h.link("proc/100/fd/12", to: "/dev/net/tun")
        try h.write("proc/100/fdinfo/12", "pos:\t0\nflags:\t0104002\nmnt_id:\t25\nino:\t1047\niff:\ttap7\n")
        try h.thread(100, 100, comm: "qemu-system-x86", utime: 20, stime: 30, run: 5, wait: 1_000, slices: 10)
        try h.thread(100, 101, comm: "CPU 0/KVM", utime: 150, stime: 40, guest: 140, state: "R", run: 7, wait: 2_000_000, slices: 100)
        try h.thread(100, 102, comm: "CPU 1/KVM", utime: 100, stime: 20, guest: 90, run: 7, wait: 3_000_000, slices: 200)
        try h.thread(100, 103, comm: "IO iothread1", utime: 30, stime: 10, run: 1, wait: 0, slices: 5)
        try h.tap("tap7", rxBytes: 5000, txBytes: 9000)
        try h.process(200, cmdline: ["bash"], comm: "bash", utime: 1, stime: 1, io: (0, 0, 0, 0))
        try h.link("proc/200/fd/0", to: "/dev/pts/0")
        try h.thread(200, 200, comm: "bash", utime: 1, stime: 1, run: 1, wait: 1, slices: 1)
        return h
    }

    @Test func firstSampleFindsTheVMWithoutDeltas() throws {
        let h = try host()
        let sampler = ResourceSampler(procRoot: h.proc, sysRoot: h.sys)
        let s = sampler.sample()
        #expect(s.hostMemoryBytes == 4_000_000 * 1024)
        #expect(s.intervalSeconds == 0)
        #expect(s.vms.map(\.pid) == [100])
        let vm = try #require(s.vms.first)
        #expect(vm.name == "web,1")
        #expect(!vm.gone)
        #expect(vm.processTimes.cpuTicks == 400)
        #expect(vm.processTimes.guestTicks == 250)
        #expect(vm.processDelta == nil && vm.vcpuDelta == nil && vm.ioDelta == nil)
        #expect(vm.threads.map(\.tid) == [101, 102, 100, 103])
        #expect(vm.threads.map(\.vcpu) == [0, 1, nil, nil])
        #expect(vm.threads.map(\.state) == ["R", "S", "S", "S"])
        #expect(vm.threads.map(\.processor) == [1, 0, 0, 1])
        #expect(vm.vcpuCount == 2)
        #expect(vm.vcpuTimes.cpuTicks == 310)
        #expect(vm.vcpuTimes.guestTicks == 230)
        #expect(vm.vcpuTimes.waitNanoseconds == 5_000_000)
        #expect(vm.vcpuTimes.switches == 300)
        #expect(vm.processTimes.waitNanoseconds == 5_001_000)
        #expect(vm.processTimes.switches == 315)
        #expect(vm.memory == { var m = MemoryUsage(); m.rssBytes = 2048 * 1024; m.anonBytes = 2000 * 1024
            m.fileBytes = 40 * 1024; m.shmemBytes = 8 * 1024; m.swapBytes = 12 * 1024; return m }())
        #expect(vm.io?.readChars == 1000 && vm.io?.readSyscalls == 10 && vm.io?.readBytes == 4096 && vm.io?.writeBytes == 8192)
        #expect(vm.io?.writeChars == 70 && vm.io?.writeSyscalls == 7)
        #expect(vm.taps.map(\.device) == ["tap7"])
        #expect(vm.taps.first?.fd == 12)
        #expect(vm.taps.first?.rxBytes == 5000 && vm.taps.first?.txPackets == 90 && vm.taps.first?.txErrors == 4)
    }

    /// With descriptors kept between samples, and without (serve).
    @Test(arguments: [true, false]) func secondSampleGivesExactDeltas(keep: Bool) throws {
        let h = try host()
        let sampler = ResourceSampler(procRoot: h.proc, sysRoot: h.sys, keepDescriptors: keep)
        _ = sampler.sample()
        try h.process(100, cmdline: ["qemu-system-x86_64", "-name", "guest=web,,1,debug-threads=on"], comm: "qemu-system-x86",
                      utime: 380, stime: 130, guest: 320, rssKB: 4096, io: (1500, 25, 4096 * 3, 8192))
        try h.thread(100, 101, comm: "CPU 0/KVM", utime: 200, stime: 45, guest: 185, run: 9, wait: 2_500_000, slices: 160)
        try h.thread(100, 102, comm: "CPU 1/KVM", utime: 120, stime: 30, guest: 110, run: 9, wait: 4_000_000, slices: 230)
        // A vCPU hot-added during the interval counts from 0.
        try h.thread(100, 104, comm: "CPU 2/KVM", utime: 3, stime: 1, guest: 2, run: 1, wait: 7, slices: 4)
        try h.tap("tap7", rxBytes: 5600, txBytes: 9900)
        usleep(10_000)
        let s = sampler.sample()
        #expect(s.intervalSeconds > 0.009)
        let vm = try #require(s.vms.first)
        let pd = try #require(vm.processDelta)
        #expect(pd.cpuTicks == 110)
        #expect(pd.guestTicks == 70)
        let vd = try #require(vm.vcpuDelta)
        #expect(vd.userTicks == 73 && vd.systemTicks == 16 && vd.guestTicks == 67)
        #expect(vd.waitNanoseconds == 1_500_007)
        #expect(vd.switches == 94)
        #expect(vm.vcpuCount == 3)
        #expect(vm.threads.map(\.tid) == [101, 102, 104, 100, 103])
        #expect(vm.threads.map { $0.delta?.cpuTicks } == [55, 30, 4, 0, 0])
        #expect(vm.memory.rssBytes == 4096 * 1024)
        let io = try #require(vm.ioDelta)
        #expect(io.readChars == 500 && io.readSyscalls == 15 && io.readBytes == 8192 && io.writeBytes == 0)
        #expect(vm.tapDeltas.map(\.rxBytes) == [600])
        #expect(vm.tapDeltas.map(\.txBytes) == [900])
        #expect(vm.tapDeltas.map(\.rxDropped) == [0])
    }

    /// Before Linux 6.4 a vhost device's worker is a kernel thread `vhost-PID`: its row follows the VM's threads,
    /// its times are the VM's vhost times but not its process's; a same-named user process is no worker. Since
    /// 6.4 the worker is a thread of the VMM: counted in both.
    @Test(arguments: [true, false]) func vhostWorkersCountForTheirVM(keep: Bool) throws {
        let h = try host()
        func kthread(_ pid: Int32, _ comm: String, utime: UInt64, stime: UInt64, flags: UInt64, wait: UInt64) throws {
            var f = FakeHost.stat(pid, comm, utime: utime, stime: stime).split(separator: " ").map(String.init)
            f[8] = "\(flags)"  // field 9
            try h.write("proc/\(pid)/stat", f.joined(separator: " "))
            try h.write("proc/\(pid)/comm", comm + "\n")
            try h.write("proc/\(pid)/schedstat", "1 \(wait) 3\n")
        }
        try kthread(300, "vhost-100", utime: 0, stime: 40, flags: 0x0020_8040, wait: 500)
        try kthread(301, "vhost-100", utime: 1, stime: 1, flags: 0x0040_0000, wait: 9)  // no PF_KTHREAD: not a worker
        try h.thread(100, 105, comm: "vhost-100", utime: 2, stime: 8, run: 1, wait: 70, slices: 2)  // a 6.4+ worker
        let sampler = ResourceSampler(procRoot: h.proc, sysRoot: h.sys, keepDescriptors: keep)
        let first = try #require(sampler.sample().vms.first)
        #expect(first.threads.map(\.tid) == [101, 102, 100, 103, 105, 300])
        #expect(first.threads.map(\.kernelThread) == [false, false, false, false, false, true])
        #expect(first.vhostTimes.cpuTicks == 50)
        #expect(first.vhostDelta == nil)
        #expect(first.processTimes.cpuTicks == 400, "the kernel worker is not the process's")
        #expect(first.processTimes.waitNanoseconds == 1_000 + 2_000_000 + 3_000_000 + 0 + 70)

        try kthread(300, "vhost-100", utime: 0, stime: 65, flags: 0x0020_8040, wait: 800)
        try h.thread(100, 105, comm: "vhost-100", utime: 4, stime: 9, run: 1, wait: 70, slices: 2)
        let vm = try #require(sampler.sample().vms.first)
        #expect(vm.vhostTimes.cpuTicks == 78)
        #expect(vm.vhostDelta?.cpuTicks == 28)
        #expect(vm.threads.last?.delta?.systemTicks == 25)
        #expect(vm.threads.last?.delta?.waitNanoseconds == 300)
        #expect(vm.threads.last?.comm == "vhost-100")
    }

    @Test func hostCPUsFromProcStat() throws {
        let h = try host()
        try h.write("proc/stat", "cpu  9 9 9 9 9 9 9 9 9 9\ncpu0 100 5 20 300 4 1 2 3 40 1\ncpu1 1 0 0 9 0 0 0 0 0 0\nintr 1 2\n")
        let sampler = ResourceSampler(procRoot: h.proc, sysRoot: h.sys)
        #expect(sampler.sample().hostCPUDeltas.isEmpty)
        try h.write("proc/stat", "cpu  9 9 9 9 9 9 9 9 9 9\ncpu0 150 5 30 340 4 1 2 8 70 1\ncpu1 1 0 0 109 0 0 0 0 0 0\nintr 1 2\n")
        let d = sampler.sample().hostCPUDeltas
        #expect(d.map(\.cpu) == [0, 1])
        #expect(d.map(\.user) == [50, 0])
        #expect(d.map(\.system) == [10, 0])
        #expect(d.map(\.idle) == [40, 100])
        #expect(d.map(\.steal) == [5, 0])
        #expect(d.map(\.guest) == [30, 0])
        #expect(d.map(\.total) == [105, 100])
    }

    /// With descriptors kept between samples, and without (serve).
    @Test(arguments: [true, false]) func aThreadEndingMidSampleIsAMarkedRow(keep: Bool) throws {
        let h = try host()
        let sampler = ResourceSampler(procRoot: h.proc, sysRoot: h.sys, keepDescriptors: keep)
        _ = sampler.sample()
        // Thread 102 is listed but its files are gone (it ended between readdir and read); 103 is not listed.
        try h.remove("proc/100/task/102/stat")
        try h.remove("proc/100/task/103")
        let s = sampler.sample()
        let vm = try #require(s.vms.first)
        #expect(!vm.gone)
        #expect(vm.threads.map(\.tid) == [101, 102, 100, 103])
        #expect(vm.threads.map(\.gone) == [false, true, false, true])
        #expect(vm.threads.map { $0.delta == nil } == [false, true, false, true])
        #expect(vm.threads[1].times.cpuTicks == 120, "a gone row keeps the last numbers read")
        #expect(vm.vcpuCount == 1)
        #expect(vm.vcpuDelta?.cpuTicks == 0)
        // The next sample no longer lists them.
        let next = sampler.sample()
        #expect(next.vms.first?.threads.map(\.tid) == [101, 100])
    }

    /// With descriptors kept between samples, and without (serve).
    @Test(arguments: [true, false]) func aVMEndingMidSampleIsAMarkedRowThenLeaves(keep: Bool) throws {
        let h = try host()
        let sampler = ResourceSampler(procRoot: h.proc, sysRoot: h.sys, keepDescriptors: keep)
        _ = sampler.sample()
        // Listed in /proc, but its io file vanished under the sampler: the whole row is gone, no zeros.
        try h.remove("proc/100/io")
        let s = sampler.sample()
        let vm = try #require(s.vms.first)
        #expect(vm.gone)
        #expect(vm.processDelta == nil && vm.vcpuDelta == nil && vm.ioDelta == nil)
        #expect(vm.processTimes.cpuTicks == 400)
        #expect(vm.threads.map(\.gone) == [true, true, true, true])
        try h.remove("proc/100")
        #expect(sampler.sample().vms.isEmpty)
    }

    @Test func aZombieIsGone() throws {
        let h = try host()
        let sampler = ResourceSampler(procRoot: h.proc, sysRoot: h.sys)
        _ = sampler.sample()
        try h.write("proc/100/stat", FakeHost.stat(100, "qemu-system-x86", state: "Z", utime: 300, stime: 100))
        #expect(sampler.sample().vms.map(\.gone) == [true])
    }

    /// With descriptors kept between samples, and without (serve).
    @Test(arguments: [true, false]) func aReusedPidIsANewVM(keep: Bool) throws {
        let h = try host()
        let sampler = ResourceSampler(procRoot: h.proc, sysRoot: h.sys, keepDescriptors: keep)
        _ = sampler.sample()
        try h.process(100, cmdline: ["firecracker", "--id", "x"], comm: "firecracker", utime: 1, stime: 1, start: 9000,
                      io: (0, 0, 0, 0))
        let s = sampler.sample()
        #expect(s.vms.map(\.gone) == [true])
        #expect(s.vms.map(\.name) == ["web,1"])
        let again = sampler.sample()
        #expect(again.vms.map(\.name) == ["firecracker"])
        #expect(again.vms.map(\.gone) == [false])
        #expect(again.vms.first?.processDelta == nil)
    }

    @Test func aProcessBecomingAVMWhileYoungIsFound() throws {
        let h = try host()
        let sampler = ResourceSampler(procRoot: h.proc, sysRoot: h.sys, rescanEvery: 100, youngSamples: 3)
        _ = sampler.sample()
        try h.link("proc/200/fd/9", to: "anon_inode:kvm-vm")
        #expect(sampler.sample().vms.map(\.pid) == [100, 200])
    }

    /// A QEMU without a KVM VM descriptor, 2 s after it started, is a TCG guest; a younger one not yet.
    @Test func qemuUnderTCG() throws {
        let h = try host()
        try h.write("proc/uptime", "100.00 50.00\n")
        for (pid, start) in [(Int32(300), UInt64(500)), (Int32(301), UInt64(9_900))] {
            try h.process(pid, cmdline: ["qemu-system-x86_64", "-accel", "tcg", "-name", "guest=t\(pid)"], comm: "qemu-system-x86",
                          utime: 10, stime: 5, start: start, io: (0, 0, 0, 0))
            try h.link("proc/\(pid)/exe", to: "/usr/bin/qemu-system-x86_64")
            try h.link("proc/\(pid)/fd/0", to: "/dev/null")
            try h.thread(pid, pid, comm: "qemu-system-x86", utime: 1, stime: 1, run: 1, wait: 1, slices: 1)
            try h.thread(pid, pid + 1000, comm: "CPU 0/TCG", utime: 9, stime: 4, run: 1, wait: 1, slices: 1)
        }
        let s = ResourceSampler(procRoot: h.proc, sysRoot: h.sys).sample()
        #expect(s.vms.map(\.pid) == [100, 300])
        #expect(s.vms.map(\.accel) == ["kvm", "tcg"])
        #expect(s.vms.last?.name == "t300")
        #expect(s.vms.last?.vcpuCount == 1)
    }

    /// A QEMU without `debug-threads=on` (every thread named `qemu-system-x86`) and without QMP: its vCPU threads
    /// are the ones that ran the guest (stat guest_time > 0), numbered in tid order and marked inferred; a vCPU
    /// that has not run yet is none until it does. Names win where a VMM gives them.
    @Test(arguments: [true, false]) func unnamedVCPUsFoundByGuestTime(keep: Bool) throws {
        let h = try FakeHost()
        try h.process(400, cmdline: ["qemu-system-x86_64", "-enable-kvm", "-smp", "2"], comm: "qemu-system-x86", utime: 90,
                      stime: 30, guest: 60, io: (0, 0, 0, 0))
        try h.link("proc/400/fd/11", to: "anon_inode:kvm-vm")
        try h.thread(400, 400, comm: "qemu-system-x86", utime: 20, stime: 10, run: 1, wait: 100, slices: 3)
        try h.thread(400, 401, comm: "qemu-system-x86", utime: 3, stime: 1, run: 1, wait: 5, slices: 2)  // call_rcu
        try h.thread(400, 402, comm: "qemu-system-x86", utime: 70, stime: 19, guest: 60, run: 1, wait: 2_000, slices: 50)
        try h.thread(400, 403, comm: "qemu-system-x86", utime: 0, stime: 1, run: 1, wait: 30, slices: 4)  // AP, not started
        try h.thread(400, 404, comm: "kvm-nx-lpage-re", utime: 0, stime: 0, run: 1, wait: 0, slices: 1)
        let sampler = ResourceSampler(procRoot: h.proc, sysRoot: h.sys, keepDescriptors: keep)
        let first = try #require(sampler.sample().vms.first)
        #expect(first.name == "qemu-system-x86")
        #expect(first.vcpuCount == 1)
        #expect(first.vcpuSource == .guestTime)
        #expect(first.threads.map(\.tid) == [402, 400, 401, 403, 404])
        #expect(first.threads.map(\.vcpu) == [0, nil, nil, nil, nil])
        #expect(first.threads.map(\.vcpuSource) == [.guestTime, nil, nil, nil, nil])
        #expect(first.vcpuTimes.cpuTicks == 89 && first.vcpuTimes.guestTicks == 60 && first.vcpuTimes.waitNanoseconds == 2_000)
        #expect(first.vcpuDelta == nil)

        // The AP ran the guest: two vCPUs, in tid order.
        try h.thread(400, 402, comm: "qemu-system-x86", utime: 100, stime: 25, guest: 85, run: 1, wait: 2_500, slices: 80)
        try h.thread(400, 403, comm: "qemu-system-x86", utime: 12, stime: 3, guest: 9, run: 1, wait: 130, slices: 24)
        let second = try #require(sampler.sample().vms.first)
        #expect(second.vcpuCount == 2)
        #expect(second.vcpuSource == .guestTime)
        #expect(second.vcpuSource?.isExact == false)
        #expect(second.threads.map(\.tid) == [402, 403, 400, 401, 404])
        #expect(second.threads.map(\.vcpu) == [0, 1, nil, nil, nil])
        #expect(second.vcpuTimes.cpuTicks == 140 && second.vcpuTimes.guestTicks == 94)
        let d = try #require(second.vcpuDelta)
        #expect(d.cpuTicks == 36 + 14 && d.guestTicks == 25 + 9 && d.waitNanoseconds == 500 + 100 && d.switches == 30 + 20)

        // A vCPU thread that ends keeps its number on its gone row, and leaves the count.
        try h.remove("proc/400/task/403")
        let third = try #require(sampler.sample().vms.first)
        #expect(third.threads.map(\.tid) == [402, 403, 400, 401, 404])
        #expect(third.threads.map(\.gone) == [false, true, false, false, false])
        #expect(third.threads.map(\.vcpu) == [0, 1, nil, nil, nil])
        #expect(third.vcpuCount == 1)

        // Names win: with QEMU's names, a thread of another name that ran the guest is no vCPU.
        let named = try host()
        try named.thread(100, 103, comm: "IO iothread1", utime: 30, stime: 10, guest: 5, run: 1, wait: 0, slices: 5)
        let vm = try #require(ResourceSampler(procRoot: named.proc, sysRoot: named.sys, keepDescriptors: keep).sample().vms.first)
        #expect(vm.vcpuSource == .threadName)
        #expect(vm.threads.map(\.tid) == [101, 102, 100, 103])
        #expect(vm.threads.map(\.vcpu) == [0, 1, nil, nil])
        #expect(vm.threads.map(\.vcpuSource) == [.threadName, .threadName, nil, nil])
    }

    @Test func vcpuThreadNamesOfEachVMM() {
        #expect(VCPUThreadName.vcpu("CPU 3/KVM") == 3)
        #expect(VCPUThreadName.vcpu("CPU 12/KVM") == 12)
        #expect(VCPUThreadName.vcpu("CPU 1/TCG") == 1)
        #expect(VCPUThreadName.vcpu("fc_vcpu 5") == 5)
        #expect(VCPUThreadName.vcpu("vcpu7") == 7)
        #expect(VCPUThreadName.vcpu("vcpu") == nil)
        #expect(VCPUThreadName.vcpu("CPU x/KVM") == nil)
        #expect(VCPUThreadName.vcpu("qemu-system-x86") == nil)
        #expect(VCPUThreadName.vcpu("fc_vmm") == nil)
    }
}
