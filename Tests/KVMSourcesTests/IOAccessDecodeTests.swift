import KVMAnalysis
import KVMExits
import KVMSources
import Testing

/// kvm_pio's port and rw, kvm_mmio's type and 64-bit gpa, decoded from kernel-exact sub-buffers (offsets from
/// the 6.18 format files, by field name), counted per port and address and timed as perf does.
@Suite struct IOAccessDecodeTests {
    @Test func binaryPioAndMMIOPerPortAndAddress() throws {
        let formats = try Fixtures.formats("6.18-x86", events: ["kvm_exit", "kvm_entry", "kvm_pio", "kvm_mmio"])
        let exit = try EventPayloadBuilder(formats: formats, event: "kvm_exit")
        let entry = try EventPayloadBuilder(formats: formats, event: "kvm_entry")
        let pio = try EventPayloadBuilder(formats: formats, event: "kvm_pio")
        let mmio = try EventPayloadBuilder(formats: formats, event: "kvm_mmio")
        var b = RingBufferPageBuilder()
        var t: UInt64 = 1_000_000
        // 300 × out to 0xcf8 (PCI conf), handled in 700 ns each; 200 × in from 0xcfc, 1,300 ns.
        for i in 0..<500 {
            let port: UInt64 = i % 5 < 3 ? 0xcf8 : 0xcfc
            b.append(timestamp: t, payload: exit.payload(pid: 77, ["exit_reason": 30, "isa": 1, "vcpu_id": 0]))
            b.append(timestamp: t + 100, payload: pio.payload(pid: 77, ["port": port, "rw": port == 0xcf8 ? 1 : 0,
                                                                        "size": 4, "count": 1]))
            b.append(timestamp: t + (port == 0xcf8 ? 800 : 1_400), payload: entry.payload(pid: 77, ["vcpu_id": 0]))
            t += 10_000
        }
        // 50 × a write to a 64-bit BAR above 4 GiB (no standard device): 2,000 ns from kvm_mmio to the entry.
        for _ in 0..<50 {
            b.append(timestamp: t, payload: exit.payload(pid: 77, ["exit_reason": 49, "isa": 1, "vcpu_id": 0]))
            b.append(timestamp: t + 500, payload: mmio.payload(pid: 77, ["type": 2, "len": 2, "gpa": 0x8_0000_3000]))
            b.append(timestamp: t + 2_500, payload: entry.payload(pid: 77, ["vcpu_id": 0]))
            t += 10_000
        }
        // 10 × an IOAPIC read handed to the VMM: 9,000 ns from the exit to the completing read.
        for _ in 0..<10 {
            b.append(timestamp: t, payload: exit.payload(pid: 77, ["exit_reason": 49, "isa": 1, "vcpu_id": 0]))
            b.append(timestamp: t + 1_000, payload: mmio.payload(pid: 77, ["type": 0, "len": 4, "gpa": 0xfec0_0010]))
            b.append(timestamp: t + 9_000, payload: mmio.payload(pid: 77, ["type": 1, "len": 4, "gpa": 0xfec0_0010]))
            b.append(timestamp: t + 9_200, payload: entry.payload(pid: 77, ["vcpu_id": 0]))
            t += 10_000
        }
        let pages = b.finish()
        #expect(pages.count > 10, "the events span many sub-buffers")
        let source = PagesTraceSource(formats: formats, pagesByCPU: [(cpu: 0, pages: pages)],
                                      identities: [77: ThreadIdentity(vm: 70, vmName: "pci", vcpu: 0)])
        let s = try Summary(OfflineAnalysis.run(source))
        #expect(s.total(of: "kvm_pio") == 500 && s.total(of: "kvm_mmio") == 70)
        let rows = s.ioAccesses.rows.map {
            "\($0.vm) \($0.key) \($0.device ?? "unknown") n=\($0.count) vmm=\($0.toVMM) timed=\($0.timed) sum=\($0.sum) min=\($0.min) max=\($0.max)"
        }
        #expect(rows == [
            "70 0xcf8:POUT pci conf n=300 vmm=0 timed=300 sum=210000 min=700 max=700",
            "70 0xcfc:PIN pci conf n=200 vmm=0 timed=200 sum=260000 min=1300 max=1300",
            "70 0xfec00010:R ioapic n=10 vmm=10 timed=10 sum=90000 min=9000 max=9000",
            "70 0x800003000:W unknown n=50 vmm=0 timed=50 sum=100000 min=2000 max=2000",
        ])
        #expect(s.ioAccesses.overflow == (0, 0))
    }
}
