import Foundation
import KVMAnalysis
import KVMExits
import KVMResources
import KVMScopeViews
import Testing

/// virt-top's screen, CSV and JSON lines of `kvmscope top`, from a sample whose every number is known.
@Suite struct TopViewTests {
    static func frame() -> TopFrame {
        var web = VMSample(pid: 4242, name: "web")
        web.processTimes.userTicks = 9_000
        web.processTimes.systemTicks = 3_345
        var d = ThreadTimes()
        d.userTicks = 120
        d.systemTicks = 30
        web.processDelta = d
        var v = ThreadTimes()
        v.userTicks = 100
        v.systemTicks = 20
        v.waitNanoseconds = 500_000_000
        web.vcpuDelta = v
        web.memory.rssBytes = 1 << 30
        var io = IOCounters()
        io.readSyscalls = 12_345
        io.writeSyscalls = 7
        web.ioDelta = io
        web.io = io
        var tap = TapCounters(device: "tap0", fd: 20)
        tap.rxBytes = 1_500
        tap.txBytes = 64_000
        web.taps = [tap]
        web.tapDeltas = [tap]
        var t0 = ThreadSample(tid: 4243, comm: "CPU 0/KVM", vcpu: 0)
        t0.state = "R"
        t0.processor = 1
        t0.times.userTicks = 500
        t0.delta = v
        var t1 = ThreadSample(tid: 4244, comm: "CPU 1/KVM", vcpu: 1)
        t1.state = "S"
        t1.delta = ThreadTimes()
        web.threads = [t0, t1, ThreadSample(tid: 4242, comm: "qemu-system-x86", vcpu: nil, gone: true)]

        var db = VMSample(pid: 99, name: "db,1")
        db.processTimes.userTicks = 100
        db.processDelta = ThreadTimes()
        db.memory.rssBytes = 1 << 29
        var gone = VMSample(pid: 7, name: "old", gone: true)
        gone.processTimes.systemTicks = 6_000

        var sample = ResourceSample(timestamp: 0, intervalSeconds: 2, ticksPerSecond: 100, hostCPUs: 4,
                                    hostMemoryBytes: 8 << 30, vms: [gone, db, web])
        var cpu0 = HostCPUTimes(cpu: 0)
        cpu0.user = 100
        cpu0.guest = 40
        cpu0.system = 10
        cpu0.softirq = 10
        cpu0.idle = 70
        cpu0.steal = 10
        var cpu1 = HostCPUTimes(cpu: 1)
        cpu1.idle = 200
        sample.hostCPUDeltas = [cpu0, cpu1]
        return TopFrame(sample: sample, iteration: 3, time: "2026-11-30T09:40:12Z",
                        exits: [4242: TopExits(total: 90_000, interval: 30_000, intervalByVCPU: [0: 30_000],
                                                  topReason: "EPT_MISCONFIG", topReasonP99Nanoseconds: 1_500, p99ByVCPU: [0: 1_500])])
    }

    @Test func screenIsVirtTops() {
        #expect(TopView.render(Self.frame()) == [
            "kvmscope top - 09:40:12 - 2 VMs, 1 running, 1 sleeping, 0 paused",
            "Host: 4 CPUs, 8.0 GiB memory; interval 2.00 s",
            "CPU: 18.8% of all host CPUs (virt-top's %CPU), 75.0% of one CPU (htop's); sorted by cpu",
            "RDRQ/WRRQ: read/write syscalls, RXBY/TXBY: guest's tap bytes, per interval; %MEM: RSS of host memory",
            "",
            "    ID S RDRQ WRRQ RXBY TXBY %CPU %MEM    TIME  EXITS/s TOP EXIT           P99 NAME",
            "  4242 R  12K    7  64K 1500 18.8 12.5 2:03.45    15.0k EPT_MISCONFIG   1.50us web",
            "    99 S    -    -    0    0  0.0  6.3 0:01.00      0.0 -                    - db,1",
            "     7 -    -    -    -    -    -  0.0 1:00.00        - -                    - old (gone)",
        ])
    }

    /// A VM whose QEMU says (through --qmp) its vCPUs are stopped is P whatever its threads do, as libvirt's
    /// paused is; a running QEMU, an unread state or a failed read leave the letter to the threads.
    @Test func qemuNotRunningIsPaused() throws {
        var f = Self.frame()
        var q = QMPSample(socket: "/run/db.qmp")
        q.runState = "paused"
        q.running = false
        f.sample.vms[1].qmp = q
        #expect(TopView.render(f)[0] == "kvmscope top - 09:40:12 - 2 VMs, 1 running, 0 sleeping, 1 paused")
        // QEMU named no disk: no block request.
        #expect(TopView.render(f)[7] == "    99 P    0    0    0    0  0.0  6.3 0:01.00      0.0 -                    - db,1")
        let db = try #require(TopView.rows(f).first { $0.vm.pid == 99 })
        #expect(TopView.vmJSON(db, sample: f.sample).serialized().contains(#""socket":"/run/db.qmp","problem":null,"run_state":"paused""#))
        f.sample.vms[1].qmp?.runState = "postmigrate"
        #expect(TopView.rows(f).first { $0.vm.pid == 99 }?.state == "P")
        f.sample.vms[1].qmp?.runState = "running"
        f.sample.vms[1].qmp?.running = true
        #expect(TopView.rows(f).first { $0.vm.pid == 99 }?.state == "S")
        f.sample.vms[1].qmp = QMPSample(socket: "/run/db.qmp", problem: "connection closed by the peer")
        #expect(TopView.rows(f).first { $0.vm.pid == 99 }?.state == "S")
    }

    /// Events top's trace lost: said on the Host line (EXITS/s is short by them) and in every JSON line; a trace
    /// that lost none says nothing on the screen and 0 in the JSON; without a trace the JSON has null.
    @Test func lostEventsAreShown() throws {
        var frame = Self.frame()
        frame.lostEvents = 1234
        #expect(TopView.render(frame)[1] == "Host: 4 CPUs, 8.0 GiB memory; interval 2.00 s; lost 1234 events: EXITS/s short")
        func lost(_ f: TopFrame) throws -> Any? {
            try #require(JSONSerialization.jsonObject(with: Data(TopView.json(f).serialized().utf8)) as? [String: Any])["lost_events"]
        }
        #expect(try lost(frame) as? Int == 1234)
        frame.lostEvents = 0
        #expect(TopView.render(frame)[1] == "Host: 4 CPUs, 8.0 GiB memory; interval 2.00 s")
        #expect(try lost(frame) as? Int == 0)
        frame.lostEvents = nil
        #expect(try lost(frame) is NSNull)
    }

    /// RDRQ/WRRQ are virt-top's block requests where QMP or libvirt gave the VM's disks (summed over them),
    /// else the VMM's syscalls; the legend says which, naming the VMs counted by syscalls when rows differ.
    @Test func requestsAreBlockRequestsWhereQMPGivesThem() throws {
        var f = Self.frame()
        var q = QMPSample(socket: "/run/web.qmp")
        var d0 = DiskCounts(), d1 = DiskCounts()
        d0.readRequests = 40
        d0.writeRequests = 3
        d1.readRequests = 2
        q.disks = [DiskSample(device: "virtio-disk0", drive: "d0", qdev: nil, total: d0, delta: d0),
                   DiskSample(device: "virtio-disk1", drive: "d1", qdev: nil, total: d1, delta: d1)]
        f.sample.vms[2].qmp = q
        let screen = TopView.render(f)
        #expect(screen[3] == "RDRQ/WRRQ: block device requests (QMP/libvirt), read/write syscalls for 99, RXBY/TXBY: "
                + "guest's tap bytes, per interval; %MEM: RSS of host memory")
        #expect(screen[6] == "  4242 R   42    3  64K 1500 18.8 12.5 2:03.45    15.0k EPT_MISCONFIG   1.50us web")
        let web = try #require(TopView.rows(f).first { $0.vm.pid == 4242 })
        #expect(TopView.vmJSON(web, sample: f.sample).serialized().contains(#""read_requests":42,"write_requests":3,"requests_source":"block""#))
        // Only the VMs with QMP on screen: the legend names no pid.
        f.sample.vms.removeAll { $0.pid == 99 }
        #expect(TopView.render(f)[3].hasPrefix("RDRQ/WRRQ: block device requests (QMP/libvirt), RXBY/TXBY"))
        // No disk, as QMP or libvirt says: no block request (virt-top's 0), not the VMM's syscalls (which count
        // kvmscope's own queries of a paused, disk-less guest); at first sight (no interval yet) nothing.
        var noDisk = f
        noDisk.sample.vms[1].qmp?.disks = []
        #expect(TopView.render(noDisk)[6].hasPrefix("  4242 R    0    0  64K 1500"), "\(TopView.render(noDisk)[6])")
        #expect(TopView.render(noDisk)[3].hasPrefix("RDRQ/WRRQ: block device requests (QMP/libvirt), RXBY/TXBY"))
        noDisk.sample.vms[1].processDelta = nil
        noDisk.sample.vms[1].ioDelta = nil
        #expect(TopView.rows(noDisk).first { $0.vm.pid == 4242 }?.readRequests == nil)
        // A disk first seen this sample (no delta yet): the VM's requests are its syscalls, and the legend says so.
        f.sample.vms[1].qmp?.disks[1].delta = nil
        #expect(TopView.render(f)[3].hasPrefix("RDRQ/WRRQ: read/write syscalls, RXBY/TXBY"))
        #expect(TopView.render(f)[6].hasPrefix("  4242 R  12K    7"))
    }

    /// On an 80-column terminal the NAME keeps room: TOP EXIT and P99 are left out (virt-top's columns and EXITS/s
    /// stay); from 100 columns on, every column.
    @Test func narrowTerminalsKeepTheName() {
        let narrow = TopView.render(Self.frame(), width: 80)
        #expect(narrow[5] == TopView.compactHeader)
        #expect(narrow[6] == "  4242 R  12K    7  64K 1500 18.8 12.5 2:03.45    15.0k web")
        #expect(narrow.dropFirst(5).allSatisfy { $0.count <= 80 })
        #expect(TopView.render(Self.frame(), width: 100)[5] == TopView.header)
    }

    /// A VM's name is whatever its command line says: on a screen, control characters become `?` (as ps and
    /// htop show them) so a name cannot retitle or clear the operator's terminal; JSON keeps it whole, escaped.
    @Test func controlCharactersInNamesNeverReachTheTerminal() throws {
        var f = Self.frame()
        f.sample.vms[1].name = "\u{1B}]0;pwned\u{07}\u{1B}[2Jweb\nX"
        let screen = TopView.render(f)
        #expect(screen.contains("    99 S    -    -    0    0  0.0  6.3 0:01.00      0.0 -                    - ?]0;pwned??[2Jweb?X"))
        #expect(!screen.joined().unicodeScalars.contains { $0.properties.generalCategory == .control })
        #expect(TopView.json(f, sort: .cpu).serialized().contains(#""name":"\u001b]0;pwned\u0007\u001b[2Jweb\nX""#))
    }

    @Test func virtTopsOtherScreens() {
        let f = Self.frame()
        #expect(TopView.renderHostCPUs(f) == [
            "   CPU  %USR  %SYS %GUEST %STEAL %IDLE VCPUS (last ran here)",
            "     0  30.0  10.0   20.0    5.0  35.0 ",
            "     1   0.0   0.0    0.0    0.0 100.0 web/0",
        ])
        #expect(TopView.renderNetwork(f) == [
            "    ID DEVICE          RXBY   TXBY  RXPK  TXPK RXDROP TXDROP RXERR TXERR NAME",
            "  4242 tap0             64K   1500     0     0      0      0     0     0 web",
        ])
        #expect(TopView.renderBlock(f) == [
            "    ID   RDBY   WRBY  RDSC  WRSC   RDCH   WRCH NAME",
            "  4242      0      0   12K     7      0      0 web",
            "    99      -      -     -     -      -      - db,1",
        ])
    }

    /// `--qmp`: the block view's device rows (virt-top's `3`), a marked row for a socket that failed, and the
    /// block families of /metrics.
    /// ``frame()`` with QMP readings: web's socket gives two devices, memory and balloon; db's failed.
    static func qmpFrame() -> TopFrame {
        var f = frame()
        var c = DiskCounts()
        c.readRequests = 400
        c.writeRequests = 30
        c.readBytes = 1_638_400
        c.writeBytes = 122_880
        c.readTimeNanoseconds = 2_000_000_000
        c.writeTimeNanoseconds = 135_000_000
        var d = DiskCounts()
        d.readRequests = 200
        d.writeRequests = 0
        d.readBytes = 819_200
        d.readTimeNanoseconds = 300_000_000  // 1.5 ms per read
        var q = QMPSample(socket: "/run/web.qmp")
        q.disks = [DiskSample(device: "virtio-disk0", drive: "drive-virtio-disk0", qdev: "/machine/peripheral/virtio-disk0/virtio-backend",
                              total: c, delta: d),
                   DiskSample(device: "ide0-cd0", drive: "ide0-cd0", qdev: nil, total: DiskCounts())]
        q.configuredMemoryBytes = 2 << 30
        q.kvmVCPUStats = ["exits": 52_000, "halt_wait_ns": 1_500_000_000, "guest_mode": 1]
        q.balloonActualBytes = 1 << 30
        let web = f.sample.vms.firstIndex { $0.pid == 4242 }!
        f.sample.vms[web].qmp = q
        let db = f.sample.vms.firstIndex { $0.pid == 99 }!
        f.sample.vms[db].qmp = QMPSample(socket: "/run/db.qmp", problem: "connection closed by the peer")
        return f
    }

    /// A VMM's QMP answer is input: a read time of 2^64 − 1 ns over one request (a counter gone wrong) prints
    /// as the largest duration, never traps converting it (it did, leaving the terminal raw).
    @Test func blockLatencyBeyondUInt64Prints() {
        var f = Self.qmpFrame()
        let web = f.sample.vms.firstIndex { $0.pid == 4242 }!
        f.sample.vms[web].qmp?.disks[0].delta?.readRequests = 1
        f.sample.vms[web].qmp?.disks[0].delta?.readTimeNanoseconds = .max
        let row = TopView.renderBlock(f).first { $0.contains("virtio-disk0") }
        #expect(row == "  4242 virtio-disk0        1     0   819K      0 18446744073.71s        - web")
    }

    @Test func qmpDevicesInBlockViewAndMetrics() {
        let f = Self.qmpFrame()
        #expect(TopView.renderBlock(f) == [
            "    ID   RDBY   WRBY  RDSC  WRSC   RDCH   WRCH NAME",
            "  4242      0      0   12K     7      0      0 web",
            "    99      -      -     -     -      -      - db,1",
            "",
            "    ID DEVICE           RDRQ  WRRQ   RDBY   WRBY    RDLAT    WRLAT NAME",
            "  4242 virtio-disk0      200     0   819K      0   1.50ms        - web",
            "  4242 ide0-cd0            -     -      -      -        -        - web",
            "    99 (QMP: connection closed by the peer)                        db,1",
        ])
        let text = PrometheusExposition.render(Summary(), format: .prometheus,
                                               extras: ExpositionExtras(version: "t", resources: f.sample))
        let lines = text.split(separator: "\n").map(String.init)
        let start = lines.firstIndex { $0.hasPrefix("# HELP kvmscope_vm_block_read_requests") }!
        let labels = "vm=\"4242\",vm_name=\"web\""
        #expect(Array(lines[start...].filter { !$0.hasPrefix("#") }) == [
            "kvmscope_vm_block_read_requests_total{\(labels),device=\"virtio-disk0\"} 400",
            "kvmscope_vm_block_read_requests_total{\(labels),device=\"ide0-cd0\"} 0",
            "kvmscope_vm_block_write_requests_total{\(labels),device=\"virtio-disk0\"} 30",
            "kvmscope_vm_block_write_requests_total{\(labels),device=\"ide0-cd0\"} 0",
            "kvmscope_vm_block_flush_requests_total{\(labels),device=\"virtio-disk0\"} 0",
            "kvmscope_vm_block_flush_requests_total{\(labels),device=\"ide0-cd0\"} 0",
            "kvmscope_vm_block_read_bytes_total{\(labels),device=\"virtio-disk0\"} 1638400",
            "kvmscope_vm_block_read_bytes_total{\(labels),device=\"ide0-cd0\"} 0",
            "kvmscope_vm_block_write_bytes_total{\(labels),device=\"virtio-disk0\"} 122880",
            "kvmscope_vm_block_write_bytes_total{\(labels),device=\"ide0-cd0\"} 0",
            "kvmscope_vm_block_read_time_seconds_total{\(labels),device=\"virtio-disk0\"} 2.0",
            "kvmscope_vm_block_read_time_seconds_total{\(labels),device=\"ide0-cd0\"} 0.0",
            "kvmscope_vm_block_write_time_seconds_total{\(labels),device=\"virtio-disk0\"} 0.135",
            "kvmscope_vm_block_write_time_seconds_total{\(labels),device=\"ide0-cd0\"} 0.0",
            "kvmscope_vm_block_flush_time_seconds_total{\(labels),device=\"virtio-disk0\"} 0.0",
            "kvmscope_vm_block_flush_time_seconds_total{\(labels),device=\"ide0-cd0\"} 0.0",
            "kvmscope_vm_memory_configured_bytes{\(labels)} 2147483648",
            "kvmscope_vm_balloon_actual_bytes{\(labels)} 1073741824",
            "kvmscope_vm_kvm_exits_total{\(labels)} 52000",
            "kvmscope_vm_kvm_halt_wait_seconds_total{\(labels)} 1.5",
            "kvmscope_vm_qmp_up{vm=\"99\",vm_name=\"db,1\",socket=\"/run/db.qmp\"} 0",
            "kvmscope_vm_qmp_up{\(labels),socket=\"/run/web.qmp\"} 1",
        ])
        #expect(lines.contains("# TYPE kvmscope_vm_block_read_time_seconds_total counter"))
        // JSON: the device with its interval, a null latency without requests.
        let j = TopView.vmJSON(TopView.rows(f).first { $0.vm.pid == 4242 }!, sample: f.sample).serialized()
        #expect(j.contains(#""disks":[{"device":"virtio-disk0","drive":"drive-virtio-disk0","qdev":"/machine/peripheral/virtio-disk0/virtio-backend","read_requests":400,"#))
        #expect(j.contains(#""interval":{"read_requests":200,"write_requests":0,"flush_requests":0,"read_bytes":819200,"write_bytes":0,"read_time_seconds":0.3,"write_time_seconds":0.0,"flush_time_seconds":0.0,"read_latency_seconds":0.0015,"write_latency_seconds":null}"#))
    }

    @Test func sortOrdersAreVirtTops() {
        let f = Self.frame()
        #expect(TopView.rows(f, sort: .cpu).map(\.vm.pid) == [4242, 99, 7])
        #expect(TopView.rows(f, sort: .mem).map(\.vm.pid) == [4242, 99, 7])
        #expect(TopView.rows(f, sort: .time).map(\.vm.pid) == [4242, 7, 99])
        #expect(TopView.rows(f, sort: .id).map(\.vm.pid) == [7, 99, 4242])
        #expect(TopView.rows(f, sort: .name).map(\.vm.pid) == [99, 7, 4242])
    }

    @Test func threadTableIsHtops() {
        let f = Self.frame()
        let row = TopView.rows(f).first { $0.vm.pid == 4242 }!
        #expect(TopView.renderThreads(row, sample: f.sample) == [
            "   TID VCPU S CPU  CPU%  WAIT%    TIME  EXITS/s     P99 COMMAND",
            "  4243    0 R   1  60.0   25.0 0:05.00    15.0k  1.50us CPU 0/KVM",
            "  4244    1 S   -   0.0    0.0 0:00.00      0.0       - CPU 1/KVM",
            "  4242      -   -     -      - 0:00.00                  qemu-system-x86 (gone)",
        ])
    }

    /// vCPU numbers inferred from guest time (a QEMU without debug-threads, no QMP): `~` in the VCPU cell, a note
    /// line, `vcpus_numbered_by` in JSON; exact ones (names) are not marked.
    @Test func inferredVCPUNumbersAreMarked() throws {
        var f = Self.frame()
        f.sample.vms[2].vcpuSource = .guestTime
        for i in 0..<2 {
            f.sample.vms[2].threads[i].comm = "qemu-system-x86"
            f.sample.vms[2].threads[i].vcpuSource = .guestTime
        }
        let row = try #require(TopView.rows(f).first { $0.vm.pid == 4242 })
        #expect(TopView.renderThreads(row, sample: f.sample) == [
            "   TID VCPU S CPU  CPU%  WAIT%    TIME  EXITS/s     P99 COMMAND",
            "  4243   ~0 R   1  60.0   25.0 0:05.00    15.0k  1.50us qemu-system-x86",
            "  4244   ~1 S   -   0.0    0.0 0:00.00      0.0       - qemu-system-x86",
            "  4242      -   -     -      - 0:00.00                  qemu-system-x86 (gone)",
            "~ vCPU numbers inferred: unnamed threads that ran the guest (guest_time), in thread-id order; exact with -name …,debug-threads=on or --qmp",
        ])
        let json = try #require(try JSONSerialization.jsonObject(with: Data(TopView.json(f).serialized().utf8)) as? [String: Any])
        let vms = try #require(json["vms"] as? [[String: Any]])
        #expect(vms.map { $0["pid"] as? Int } == [4242, 99, 7])
        #expect(vms.map { $0["vcpus_numbered_by"] as? String } == ["guest_time", nil, nil])
        let threads = try #require(vms[0]["threads"] as? [[String: Any]])
        #expect(threads.map { $0["vcpu_numbered_by"] as? String } == ["guest_time", "guest_time", nil])
        #expect(PrometheusExposition.render(Summary(), format: .prometheus, extras: ExpositionExtras(version: "t", resources: f.sample))
            .split(separator: "\n").filter { $0.hasPrefix("kvmscope_vm_vcpus_inferred{") }
            == ["kvmscope_vm_vcpus_inferred{vm=\"99\",vm_name=\"db,1\"} 0", "kvmscope_vm_vcpus_inferred{vm=\"4242\",vm_name=\"web\"} 1"])
    }

    /// Enter's view of a VM lists its devices under its threads: block devices (QMP/libvirt) and taps, as the
    /// `3` and `2` screens show them.
    @Test func threadViewListsTheVMsDevices() throws {
        var f = Self.frame()
        var q = QMPSample(socket: "/run/web.qmp")
        var d = DiskCounts()
        d.readRequests = 40
        d.readBytes = 163_840
        d.readTimeNanoseconds = 2_000_000
        q.disks = [DiskSample(device: "virtio-disk0", drive: "d0", qdev: nil, total: d, delta: d)]
        f.sample.vms[2].qmp = q
        let row = try #require(TopView.rows(f).first { $0.vm.pid == 4242 })
        #expect(TopView.renderVMDevices(row) == [
            "  DEVICE           RDRQ  WRRQ   RDBY   WRBY    RDLAT    WRLAT  (block: /run/web.qmp)",
            "  virtio-disk0       40     0   163K      0  50.00us        -",
            "",
            "  DEVICE          RXBY   TXBY  RXPK  TXPK RXDROP TXDROP RXERR TXERR  (taps)",
            "  tap0             64K   1500     0     0      0      0     0     0",
        ])
        // The 2 and 3 screens' rows are the same cells, with the VM's ID and NAME.
        #expect(TopView.renderNetwork(f).contains("  4242 tap0             64K   1500     0     0      0      0     0     0 web"))
        #expect(TopView.renderDevices(f).contains("  4242 virtio-disk0       40     0   163K      0  50.00us        - web"))
        let db = try #require(TopView.rows(f).first { $0.vm.pid == 99 })
        #expect(TopView.renderVMDevices(db).isEmpty)
    }

    @Test func csvHasOneRowPerVM() {
        #expect(TopView.csvLines(Self.frame()) == [
            "2026-11-30T09:40:12Z,3,4242,web,R,false,2,123.45,18.75,75.00,25.00,12.50,1073741824,0,12345,7,0,0,64000,1500,15000.00",
            "2026-11-30T09:40:12Z,3,99,\"db,1\",S,false,0,1.00,0.00,0.00,,6.25,536870912,0,,,,,0,0,0.00",
            "2026-11-30T09:40:12Z,3,7,old,-,true,0,60.00,,,,0.00,0,0,,,,,,,",
        ])
    }

    @Test func jsonIsOneLinePerIteration() throws {
        let line = TopView.json(Self.frame()).serialized()
        #expect(!line.contains("\n"))
        let j = try #require(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        #expect(j["iteration"] as? Int == 3)
        #expect(j["host_cpus"] as? Int == 4)
        let vms = try #require(j["vms"] as? [[String: Any]])
        #expect(vms.map { $0["pid"] as? Int } == [4242, 99, 7])
        #expect(vms.map { $0["gone"] as? Bool } == [false, false, true])
        let web = vms[0]
        #expect(web["cpu_seconds"] as? Double == 123.45)
        #expect(web["cpu_percent"] as? Double == 18.75)
        #expect(web["cpu_percent_one_cpu"] as? Double == 75)
        #expect(web["vcpu_wait_percent"] as? Double == 25)
        #expect(web["exits_per_second"] as? Double == 15_000)
        #expect(web["top_exit_reason"] as? String == "EPT_MISCONFIG")
        #expect(web["top_exit_reason_p99_ns"] as? Int == 1_500)
        let interval = try #require(web["interval"] as? [String: Any])
        #expect(interval["cpu_seconds"] as? Double == 1.5)
        #expect(interval["vcpu_cpu_seconds"] as? Double == 1.2)
        #expect(interval["other_cpu_seconds"] as? Double == 0.3)
        #expect(interval["rx_bytes"] as? Int == 64_000)
        #expect(interval["tx_bytes"] as? Int == 1_500)
        let threads = try #require(web["threads"] as? [[String: Any]])
        #expect(threads.map { $0["vcpu"] as? Int } == [0, 1, nil])
        #expect(threads.map { $0["exits"] as? Int } == [30_000, 0, nil])
        #expect(vms[2]["interval"] is NSNull)
        #expect(vms[2]["cpu_percent"] is NSNull)
    }
}

/// The resource families of `/metrics`, from the same known sample.
@Suite struct ResourceExpositionTests {
    @Test func familiesAndValues() {
        let frame = TopViewTests.frame()
        let text = PrometheusExposition.render(Summary(), format: .prometheus,
                                               extras: ExpositionExtras(version: "t", resources: frame.sample))
        let lines = text.split(separator: "\n").map(String.init)
        let start = lines.firstIndex { $0.hasPrefix("# HELP kvmscope_vm_cpu_seconds_total") }!
        #expect(Array(lines[start...].filter { !$0.hasPrefix("#") }) == [
            "kvmscope_vm_cpu_seconds_total{vm=\"99\",vm_name=\"db,1\"} 1.0",
            "kvmscope_vm_cpu_seconds_total{vm=\"4242\",vm_name=\"web\"} 123.45",
            "kvmscope_vm_guest_seconds_total{vm=\"99\",vm_name=\"db,1\"} 0.0",
            "kvmscope_vm_guest_seconds_total{vm=\"4242\",vm_name=\"web\"} 0.0",
            "kvmscope_vm_vcpus{vm=\"99\",vm_name=\"db,1\"} 0",
            "kvmscope_vm_vcpus{vm=\"4242\",vm_name=\"web\"} 2",
            "kvmscope_vm_vcpus_inferred{vm=\"99\",vm_name=\"db,1\"} 0",
            "kvmscope_vm_vcpus_inferred{vm=\"4242\",vm_name=\"web\"} 0",
            "kvmscope_vm_paused{vm=\"99\",vm_name=\"db,1\"} 0",
            "kvmscope_vm_paused{vm=\"4242\",vm_name=\"web\"} 0",
            "kvmscope_vm_resident_memory_bytes{vm=\"99\",vm_name=\"db,1\"} 536870912",
            "kvmscope_vm_resident_memory_bytes{vm=\"4242\",vm_name=\"web\"} 1073741824",
            "kvmscope_vm_swap_bytes{vm=\"99\",vm_name=\"db,1\"} 0",
            "kvmscope_vm_swap_bytes{vm=\"4242\",vm_name=\"web\"} 0",
            "kvmscope_vm_disk_read_bytes_total{vm=\"4242\",vm_name=\"web\"} 0",
            "kvmscope_vm_disk_written_bytes_total{vm=\"4242\",vm_name=\"web\"} 0",
            "kvmscope_vm_read_syscalls_total{vm=\"4242\",vm_name=\"web\"} 12345",
            "kvmscope_vm_write_syscalls_total{vm=\"4242\",vm_name=\"web\"} 7",
            "kvmscope_vcpu_cpu_seconds_total{vm=\"4242\",vm_name=\"web\",vcpu=\"0\"} 5.0",
            "kvmscope_vcpu_cpu_seconds_total{vm=\"4242\",vm_name=\"web\",vcpu=\"1\"} 0.0",
            "kvmscope_vcpu_guest_seconds_total{vm=\"4242\",vm_name=\"web\",vcpu=\"0\"} 0.0",
            "kvmscope_vcpu_guest_seconds_total{vm=\"4242\",vm_name=\"web\",vcpu=\"1\"} 0.0",
            "kvmscope_vcpu_wait_seconds_total{vm=\"4242\",vm_name=\"web\",vcpu=\"0\"} 0.0",
            "kvmscope_vcpu_wait_seconds_total{vm=\"4242\",vm_name=\"web\",vcpu=\"1\"} 0.0",
            "kvmscope_vcpu_context_switches_total{vm=\"4242\",vm_name=\"web\",vcpu=\"0\"} 0",
            "kvmscope_vcpu_context_switches_total{vm=\"4242\",vm_name=\"web\",vcpu=\"1\"} 0",
            "kvmscope_vm_network_receive_bytes_total{vm=\"4242\",vm_name=\"web\",device=\"tap0\"} 64000",
            "kvmscope_vm_network_transmit_bytes_total{vm=\"4242\",vm_name=\"web\",device=\"tap0\"} 1500",
            "kvmscope_vm_network_receive_packets_total{vm=\"4242\",vm_name=\"web\",device=\"tap0\"} 0",
            "kvmscope_vm_network_transmit_packets_total{vm=\"4242\",vm_name=\"web\",device=\"tap0\"} 0",
            "kvmscope_vm_network_receive_drops_total{vm=\"4242\",vm_name=\"web\",device=\"tap0\"} 0",
            "kvmscope_vm_network_transmit_drops_total{vm=\"4242\",vm_name=\"web\",device=\"tap0\"} 0",
            "kvmscope_vm_network_receive_errors_total{vm=\"4242\",vm_name=\"web\",device=\"tap0\"} 0",
            "kvmscope_vm_network_transmit_errors_total{vm=\"4242\",vm_name=\"web\",device=\"tap0\"} 0",
        ])
        #expect(lines.contains("# HELP kvmscope_vm_vcpus vCPU threads of the VM: by thread name, else QMP query-cpus-fast, else those that ran the guest."))
        #expect(lines.contains("# TYPE kvmscope_vcpu_wait_seconds_total counter"))
        // Without a sample (the exposition goldens), no resource family.
        #expect(!PrometheusExposition.render(Summary(), format: .prometheus, extras: ExpositionExtras(version: "t"))
            .contains("kvmscope_vm_"))
        // OpenMetrics: counters named without _total in TYPE, # EOF last.
        let om = PrometheusExposition.render(Summary(), format: .openMetrics,
                                             extras: ExpositionExtras(version: "t", resources: frame.sample, resourcesPID: 99))
        #expect(om.contains("# TYPE kvmscope_vm_cpu_seconds counter\n"))
        #expect(om.contains("kvmscope_vm_cpu_seconds_total{vm=\"99\",vm_name=\"db,1\"} 1.0\n"))
        #expect(!om.contains("vm=\"4242\""))
        #expect(om.hasSuffix("# EOF\n"))
        // Paused (here by QEMU's word through --qmp): 1, as top's P.
        var paused = frame.sample
        var q = QMPSample(socket: "/run/db.qmp")
        q.running = false
        q.runState = "paused"
        paused.vms[1].qmp = q
        #expect(PrometheusExposition.render(Summary(), format: .prometheus, extras: ExpositionExtras(version: "t", resources: paused))
            .contains("\nkvmscope_vm_paused{vm=\"99\",vm_name=\"db,1\"} 1\n"))
    }

    /// kvmscope itself under the names of every Prometheus client's process collector, from a known reading.
    @Test func processFamilies() throws {
        let p = ProcessSelf(cpuSeconds: 1.5, residentBytes: 42 << 20, virtualBytes: 1 << 30, openFDs: 17, maxFDs: 1024,
                            startTimeSeconds: 1_764_568_800.25)
        let text = PrometheusExposition.render(Summary(), format: .prometheus, extras: ExpositionExtras(version: "t", process: p))
        let lines = text.split(separator: "\n").map(String.init)
        let start = try #require(lines.firstIndex { $0 == "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds." })
        #expect(Array(lines[start...].prefix(18)) == [
            "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.",
            "# TYPE process_cpu_seconds_total counter",
            "process_cpu_seconds_total 1.5",
            "# HELP process_resident_memory_bytes Resident memory size in bytes.",
            "# TYPE process_resident_memory_bytes gauge",
            "process_resident_memory_bytes 44040192",
            "# HELP process_virtual_memory_bytes Virtual memory size in bytes.",
            "# TYPE process_virtual_memory_bytes gauge",
            "process_virtual_memory_bytes 1073741824",
            "# HELP process_open_fds Number of open file descriptors.",
            "# TYPE process_open_fds gauge",
            "process_open_fds 17",
            "# HELP process_max_fds Maximum number of open file descriptors.",
            "# TYPE process_max_fds gauge",
            "process_max_fds 1024",
            "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.",
            "# TYPE process_start_time_seconds gauge",
            "process_start_time_seconds 1764568800.25",
        ])
        // This process, read: its own descriptors and memory, started before now.
        let me = try #require(ProcessSelf.read())
        #expect(me.openFDs > 2 && me.residentBytes > 1 << 20 && me.virtualBytes > me.residentBytes)
        #expect(me.startTimeSeconds > 1_700_000_000 && me.startTimeSeconds <= Date().timeIntervalSince1970 + 1)
    }
}

/// The live view's guest list (`b`) shows each guest's CPU and vCPU wait beside its exits, in columns of their
/// own: a long guest name is cut to its column, never the numbers.
@Suite struct LiveGuestResourcesTests {
    @Test func guestRowsCarryCPUAndWait() {
        var frame = LiveFrame(current: Summary(), previous: Summary(), seconds: 1,
                              guests: [GuestTotal(pid: 100, name: "web", total: 30), GuestTotal(pid: 200, name: "db", total: 10)],
                              previousGuests: [GuestTotal(pid: 100, name: "web", total: 0), GuestTotal(pid: 200, name: "db", total: 0)])
        frame.guestResources = [100: GuestResourceUse(cpuPercent: 45, waitPercent: 3.14)]
        var state = LiveViewState()
        state.mode = .guests
        let lines = LiveView.render(frame, state: state, width: 120, height: 30).text
        #expect(lines.contains(" Guest Name                                    Total %Total CurAvg/s     CPU%    Wait%           Rate 60s"))
        #expect(lines.contains(">web (pid 100)                                    30   75.0       30     45.0      3.1"))
        #expect(lines.contains(" db (pid 200)                                     10   25.0       10"))
        frame.guests.append(GuestTotal(pid: 300, name: nil, total: 5))
        let unnamed = LiveView.render(frame, state: state, width: 120, height: 30).text
        #expect(unnamed.contains { $0.hasPrefix(" unnamed VM (pid 300) ") }, "\(unnamed)")
    }

    @Test func aLongGuestNameKeepsItsNumbers() {
        let long = "debian-12-bookworm-amd64-build-worker-17"
        var frame = LiveFrame(current: Summary(), previous: Summary(), seconds: 1,
                              guests: [GuestTotal(pid: 123456, name: long, total: 30)],
                              previousGuests: [GuestTotal(pid: 123456, name: long, total: 0)])
        frame.guestResources = [123456: GuestResourceUse(cpuPercent: 145, waitPercent: 13.14)]
        var state = LiveViewState()
        state.mode = .guests
        let lines = LiveView.render(frame, state: state, width: 120, height: 30).text
        #expect(lines.contains(">debian-12-bookworm-amd64-b… (pid 123456)         30  100.0       30    145.0     13.1"))
    }
}

/// top's exits per VM between summaries: kvm_exit rows where the VM has them, else userspace exits; the
/// interval's top reason and its p99 from the histogram delta.
@Suite struct TopExitTallyTests {
    static func summary(_ rows: [(vcpu: UInt32, reason: String, values: [UInt64])], userspace: UInt64 = 0) -> Summary {
        var s = Summary()
        s.exits = rows.map { r in
            ExitRow(vm: 5, vmName: "web", vcpu: r.vcpu, reason: r.reason, isa: .vmx, count: UInt64(r.values.count),
                    blocking: r.reason == "HLT", histogram: HistogramSnapshot(recording: r.values), topRIPs: [])
        }
        if userspace > 0 { s.userspaceExits = [UserspaceExitRow(vm: 9, vmName: "db", vcpu: 1, reason: "KVM_EXIT_IO", count: userspace)] }
        return s
    }

    @Test func intervalsTopReasonAndItsP99() {
        var t = TopExitTally()
        let small = Array(UInt64(1)...100)
        let big = [UInt64](repeating: 5_000, count: 200)
        #expect(t.update(Self.summary([(0, "EPT_MISCONFIG", [7])], userspace: 4))[5]?.interval == 1)
        let a = t.update(Self.summary([(0, "EPT_MISCONFIG", [7] + small), (1, "HLT", [9, 9, 9])], userspace: 10))
        #expect(a[5]?.interval == 103)
        #expect(a[5]?.total == 103)
        #expect(a[5]?.intervalByVCPU == [0: 100, 1: 3])
        #expect(a[5]?.topReason == "EPT_MISCONFIG")
        #expect(a[5]?.topReasonP99Nanoseconds == HistogramSnapshot(recording: small).percentile(99))
        // Each vCPU's p99 over the interval's paired exits; halts are no handling time.
        #expect(a[5]?.p99ByVCPU == [0: HistogramSnapshot(recording: small).percentile(99)])
        #expect(a[9]?.interval == 6)
        #expect(a[9]?.p99ByVCPU == [:])
        #expect(a[9]?.topReason == "KVM_EXIT_IO")
        #expect(a[9]?.topReasonP99Nanoseconds == nil)
        let b = t.update(Self.summary([(0, "EPT_MISCONFIG", [7] + small), (1, "HLT", [9, 9, 9]), (1, "MSR_WRITE", big)],
                                      userspace: 10))
        #expect(b[5]?.interval == 200)
        #expect(b[5]?.total == 303)
        #expect(b[5]?.topReason == "MSR_WRITE")
        #expect(b[5]?.topReasonP99Nanoseconds == HistogramSnapshot(recording: big).percentile(99))
        #expect(b[5]?.p99ByVCPU == [1: HistogramSnapshot(recording: big).percentile(99)])
        #expect(b[9]?.interval == 0)
        #expect(b[9]?.topReason == nil)
    }
}
