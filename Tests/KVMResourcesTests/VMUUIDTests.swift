import Foundation
import KVMResources
import Testing

/// A VM's UUID: QEMU's `-uuid` read from its command line when the VM is found, libvirt's domain UUID first.
@Suite struct VMUUIDTests {
    @Test func commandLineUUIDOfEachVM() throws {
        let h = try FakeHost()
        try h.process(100, cmdline: ["qemu-system-x86_64", "-name", "guest=web,debug-threads=on", "-uuid",
                                     "5D1E8A3C-6F0B-4B7E-9C1A-0123456789AB", "-m", "512"],
                      comm: "qemu-system-x86", utime: 3, stime: 1, io: (0, 0, 0, 0))
        try h.link("proc/100/fd/11", to: "anon_inode:kvm-vm")
        try h.thread(100, 101, comm: "CPU 0/KVM", utime: 1, stime: 1, run: 1, wait: 1, slices: 1)
        try h.process(200, cmdline: ["firecracker", "--id", "x"], comm: "firecracker", utime: 1, stime: 1, io: (0, 0, 0, 0))
        try h.link("proc/200/fd/11", to: "anon_inode:kvm-vm")
        try h.thread(200, 201, comm: "fc_vcpu 0", utime: 1, stime: 1, run: 1, wait: 1, slices: 1)
        let sampler = ResourceSampler(procRoot: h.proc, sysRoot: h.sys)
        var s = sampler.sample()
        #expect(s.vms.map(\.pid) == [100, 200])
        #expect(s.vms.map(\.commandLineUUID) == ["5d1e8a3c-6f0b-4b7e-9c1a-0123456789ab", nil])
        #expect(s.vms.map(\.uuid) == ["5d1e8a3c-6f0b-4b7e-9c1a-0123456789ab", nil])
        // libvirt's domain UUID wins (the same one where libvirt runs the QEMU; different here to tell them apart).
        s.attach(libvirt: [LibvirtDomain(name: "web", uuid: "11111111-2222-3333-4444-555555555555", id: 1, pid: 100),
                           LibvirtDomain(name: "other", uuid: "66666666-7777-8888-9999-000000000000", id: 2, pid: 999)])
        #expect(s.vms.map(\.uuid) == ["11111111-2222-3333-4444-555555555555", nil])
        // Kept in later samples, and in the sample that finds the VM gone.
        #expect(sampler.sample().vms.map(\.commandLineUUID) == ["5d1e8a3c-6f0b-4b7e-9c1a-0123456789ab", nil])
        try h.remove("proc/100")
        let last = sampler.sample().vms.first { $0.pid == 100 }
        #expect(last?.gone == true && last?.commandLineUUID == "5d1e8a3c-6f0b-4b7e-9c1a-0123456789ab")
    }
}
