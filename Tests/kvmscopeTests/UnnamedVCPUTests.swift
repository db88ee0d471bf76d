import Foundation
import KVMResources
import Testing
import TestSupport

/// A QEMU started without `-name …,debug-threads=on` (every thread named `qemu-system-x86`), `-smp 2`, both vCPUs
/// spinning in the guest: its vCPU threads are found by QMP's `query-cpus-fast` (exact) with `--qmp`, and by
/// guest_time (inferred, marked) without — in the sampler, `top --json` and `serve`'s /metrics.
@Suite(.serialized, .enabled(if: KVMTest.canRun && (QEMUGuest.available || KVMTest.required),
                              "needs root, /dev/kvm and qemu-system-x86 (make deps)"))
struct UnnamedVCPUTests {
    /// A boot sector (GNU as, `as --64` + `ld -Ttext 0x7c00 --oformat binary`) that takes both CPUs to 64-bit
    /// CPL 3 and spins there — guest time on either (a real-mode loop is emulated by some KVM backends, such as
    /// this machine's, and then counts as system time, not guest time):
    ///     .code16
    ///     cli; xor %ax,%ax; mov %ax,%ds; mov %ax,%es; mov %ax,%ss; mov $0x7c00,%esp
    ///     mov $0x1000,%di; mov $0x1800,%cx; rep stosw              # page tables at 0x1000-0x3fff zeroed
    ///     movw $0x2007,0x1000; movw $0x3007,0x2000; movw $0x0087,0x3000   # identity 2 MiB page, user
    ///     movb $0xea,0x8000; movw $ap,0x8001; movw $0,0x8003      # the AP's first instruction: ljmp $0,$ap
    ///     mov $0x1b,%ecx; rdmsr; or $0xc00,%eax; wrmsr              # x2APIC on
    ///     mov $0x830,%ecx; mov $1,%edx; mov $0x4500,%eax; wrmsr    # INIT to APIC ID 1
    ///     mov $0x4608,%eax; wrmsr; wrmsr                            # STARTUP at 0000:8000, twice
    ///     jmp enter
    /// ap: mov $0x6000,%esp                                          # the AP's own stack
    /// enter: cli; xor %ax,%ax; mov %ax,%ds; lgdtl gdtr
    ///     mov $0x20,%eax; mov %eax,%cr4; mov $0x1000,%eax; mov %eax,%cr3   # PAE, PML4
    ///     mov $0xc0000080,%ecx; rdmsr; or $0x100,%eax; wrmsr        # EFER.LME
    ///     mov $0x80000011,%eax; mov %eax,%cr0; ljmpl $0x08,$long   # paging on, 64-bit code
    ///     .code64
    /// long: pushq $0x23; pushq $0x7000; pushq $0x2; pushq $0x1b; pushq $user; iretq   # to CPL 3
    /// user: 1: jmp 1b
    ///     .balign 8
    /// gdt: .quad 0, 0x00209a0000000000, 0x0000920000000000, 0x0020fa0000000000, 0x0000f20000000000
    /// gdtr: .word gdtr - gdt - 1; .long gdt
    ///     .org 510; .word 0xaa55
    static let spinningSMPBootSector: [UInt8] = {
        var b: [UInt8] = [
            0xfa, 0x31, 0xc0, 0x8e, 0xd8, 0x8e, 0xc0, 0x8e, 0xd0, 0x66, 0xbc, 0x00, 0x7c, 0x00, 0x00, 0xbf,
            0x00, 0x10, 0xb9, 0x00, 0x18, 0xf3, 0xab, 0xc7, 0x06, 0x00, 0x10, 0x07, 0x20, 0xc7, 0x06, 0x00,
            0x20, 0x07, 0x30, 0xc7, 0x06, 0x00, 0x30, 0x87, 0x00, 0xc6, 0x06, 0x00, 0x80, 0xea, 0xc7, 0x06,
            0x01, 0x80, 0x6a, 0x7c, 0xc7, 0x06, 0x03, 0x80, 0x00, 0x00, 0x66, 0xb9, 0x1b, 0x00, 0x00, 0x00,
            0x0f, 0x32, 0x66, 0x0d, 0x00, 0x0c, 0x00, 0x00, 0x0f, 0x30, 0x66, 0xb9, 0x30, 0x08, 0x00, 0x00,
            0x66, 0xba, 0x01, 0x00, 0x00, 0x00, 0x66, 0xb8, 0x00, 0x45, 0x00, 0x00, 0x0f, 0x30, 0x66, 0xb8,
            0x08, 0x46, 0x00, 0x00, 0x0f, 0x30, 0x0f, 0x30, 0xeb, 0x06, 0x66, 0xbc, 0x00, 0x60, 0x00, 0x00,
            0xfa, 0x31, 0xc0, 0x8e, 0xd8, 0x66, 0x0f, 0x01, 0x16, 0xf0, 0x7c, 0x66, 0xb8, 0x20, 0x00, 0x00,
            0x00, 0x0f, 0x22, 0xe0, 0x66, 0xb8, 0x00, 0x10, 0x00, 0x00, 0x0f, 0x22, 0xd8, 0x66, 0xb9, 0x80,
            0x00, 0x00, 0xc0, 0x0f, 0x32, 0x66, 0x0d, 0x00, 0x01, 0x00, 0x00, 0x0f, 0x30, 0x66, 0xb8, 0x11,
            0x00, 0x00, 0x80, 0x0f, 0x22, 0xc0, 0x66, 0xea, 0xae, 0x7c, 0x00, 0x00, 0x08, 0x00, 0x6a, 0x23,
            0x68, 0x00, 0x70, 0x00, 0x00, 0x6a, 0x02, 0x6a, 0x1b, 0x68, 0xc0, 0x7c, 0x00, 0x00, 0x48, 0xcf,
            0xeb, 0xfe, 0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x9a, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x92, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0xfa, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xf2, 0x00, 0x00,
            0x27, 0x00, 0xc8, 0x7c,
        ]
        b += [UInt8](repeating: 0, count: 510 - b.count)
        return b + [0x55, 0xaa]
    }()

    /// QEMU's own map, tid → cpu-index, from the test's QMP socket.
    static func cpusFast(_ qmp: QMP) throws -> [Int32: UInt32] {
        let cpus = try #require(try qmp.execute("query-cpus-fast") as? [[String: Any]])
        var map: [Int32: UInt32] = [:]
        for c in cpus {
            map[Int32(try #require(c["thread-id"] as? Int))] = UInt32(try #require(c["cpu-index"] as? Int))
        }
        return map
    }

    /// The last JSON line of `top --json`, and its row of `pid`.
    static func topRow(_ args: [String], pid: Int32) throws -> [String: Any] {
        let r = try CLI.run(["top", "--json", "-n", "2", "-d", "0.3", "--no-exits", "-c", "none"] + args, timeout: 60)
        #expect(r.status == 0, "\(r.stderr)")
        let last = try #require(r.stdout.split(separator: "\n").last)
        let j = try #require(try JSONSerialization.jsonObject(with: Data(last.utf8)) as? [String: Any])
        return try #require((j["vms"] as? [[String: Any]])?.first { $0["pid"] as? Int == Int(pid) })
    }

    /// The (tid, vcpu) of a top --json row's vCPU threads, by vCPU.
    static func vcpuThreads(_ row: [String: Any]) -> [String] {
        (row["threads"] as? [[String: Any]] ?? []).compactMap { t in
            (t["vcpu"] as? Int).map { "\($0)=\(t["tid"] as? Int ?? -1) \(t["vcpu_numbered_by"] as? String ?? "-")" }
        }.sorted()
    }

    /// With its QMP socket: exactly QEMU's two vCPU threads, numbered as query-cpus-fast numbers them.
    @Test func qmpGivesTheExactVCPUThreads() throws {
        let guest = try QEMUGuest(name: "unnamed-qmp-\(getpid())", smp: 2, debugThreads: false, bootSector: Self.spinningSMPBootSector)
        defer { guest.stop() }
        let qmp = try QMP(path: guest.qmpPath)
        defer { qmp.close() }
        let expected = try Self.cpusFast(qmp)
        #expect(expected.values.sorted() == [0, 1])

        let sampler = ResourceSampler()
        let monitor = QMPMonitor(path: guest.kvmscopeQMPPath, timeout: 5)
        sampler.qmp = [monitor]
        let vm = try #require(sampler.sample().vms.first { $0.pid == guest.pid })
        monitor.close()
        #expect(sampler.takeWarnings() == [])
        #expect(vm.qmp?.vcpuThreads == expected)
        #expect(vm.vcpuSource == .qmp)
        #expect(vm.vcpuCount == 2)
        let vcpus = vm.threads.filter { $0.vcpu != nil }
        #expect(vcpus.map(\.vcpu) == [0, 1])
        #expect(vcpus.map(\.comm) == ["qemu-system-x86", "qemu-system-x86"], "no thread names to go by")
        #expect(vcpus.map(\.vcpuSource) == [.qmp, .qmp])
        #expect(Dictionary(uniqueKeysWithValues: vcpus.map { ($0.tid, $0.vcpu!) }) == expected)

        // Through top --json --qmp.
        let row = try Self.topRow(["--qmp", guest.kvmscopeQMPPath], pid: guest.pid)
        #expect(row["vcpus"] as? Int == 2)
        #expect(row["vcpus_numbered_by"] as? String == "qmp")
        #expect(Self.vcpuThreads(row) == expected.sorted { $0.value < $1.value }.map { "\($0.value)=\($0.key) qmp" })
    }

    /// Without QMP: the threads that ran the guest, exactly QEMU's two vCPU threads once both have, numbered in
    /// tid order — which is QEMU's cpu-index order here — and marked inferred; in top --json and /metrics too.
    @Test func guestTimeFindsTheVCPUThreadsMarkedInferred() throws {
        let name = "unnamed-gt-\(getpid())"
        let guest = try QEMUGuest(name: name, smp: 2, debugThreads: false, bootSector: Self.spinningSMPBootSector)
        defer { guest.stop() }
        let qmp = try QMP(path: guest.qmpPath)
        defer { qmp.close() }
        let expected = try Self.cpusFast(qmp)

        // SeaBIOS first (seconds here), then both vCPUs spin in the guest: wait until both have guest time.
        let sampler = ResourceSampler()
        var vm: VMSample?
        let end = Date().addingTimeInterval(60)
        repeat {
            vm = sampler.sample().vms.first { $0.pid == guest.pid }
            if vm?.vcpuCount == 2 { break }
            usleep(200_000)
        } while Date() < end
        let v = try #require(vm)
        #expect(v.vcpuCount == 2, "guest_time of the threads: \(v.threads.map { "\($0.tid):\($0.times.guestTicks)" })")
        #expect(v.vcpuSource == .guestTime)
        let vcpus = v.threads.filter { $0.vcpu != nil }
        #expect(vcpus.map(\.vcpu) == [0, 1])
        #expect(vcpus.map(\.vcpuSource) == [.guestTime, .guestTime])
        #expect(vcpus.allSatisfy { $0.times.guestTicks > 0 })
        #expect(Dictionary(uniqueKeysWithValues: vcpus.map { ($0.tid, $0.vcpu!) }) == expected)
        #expect(v.vcpuTimes.guestTicks == vcpus.reduce(0) { $0 + $1.times.guestTicks })

        // top --json without --qmp.
        let row = try Self.topRow([], pid: guest.pid)
        #expect(row["vcpus"] as? Int == 2)
        #expect(row["vcpus_numbered_by"] as? String == "guest_time")
        #expect(Self.vcpuThreads(row) == expected.sorted { $0.value < $1.value }.map { "\($0.value)=\($0.key) guest_time" })

        // serve's /metrics: two vCPU series, marked inferred.
        let port = freeLoopbackPort()
        let serve = try Spawned(CLI.binary, ["serve", "--listen", "127.0.0.1:\(port)", "--connect", "none"])
        defer { serve.stop() }
        #expect(serve.waitForStderr("kvmscope: serving http://127.0.0.1:\(port)/metrics"), "serve: \(serve.stderr)")
        let scrape = try #require(httpGet("http://127.0.0.1:\(port)/metrics"))
        let lines = scrape.body.split(separator: "\n").map(String.init)
        let labels = "vm=\"\(guest.pid)\",vm_name=\"\(name)\""
        #expect(lines.contains("kvmscope_vm_vcpus{\(labels)} 2"))
        #expect(lines.contains("kvmscope_vm_vcpus_inferred{\(labels)} 1"))
        #expect(lines.filter { $0.hasPrefix("kvmscope_vcpu_guest_seconds_total{\(labels),") }.map { $0.split(separator: " ")[0] }
            == ["kvmscope_vcpu_guest_seconds_total{\(labels),vcpu=\"0\"}", "kvmscope_vcpu_guest_seconds_total{\(labels),vcpu=\"1\"}"])
    }
}
