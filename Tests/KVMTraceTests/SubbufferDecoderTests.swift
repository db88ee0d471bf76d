import KVMExits
import KVMTrace
import Testing

@Suite struct SubbufferDecoderTests {
    @Test func decodesExitAndEntryAtKernelOffsets() throws {
        let formats = try Fixtures.formats("6.18-x86")
        let exit = try EventPayloadBuilder(formats: formats, event: "kvm_exit")
        let entry = try EventPayloadBuilder(formats: formats, event: "kvm_entry")
        var b = RingBufferPageBuilder()
        b.append(timestamp: 1_000, payload: exit.payload(pid: 42, ["exit_reason": 12, "isa": 1, "guest_rip": 0xffff_1234,
                                                                   "info1": 7, "vcpu_id": 3]))
        b.append(timestamp: 1_500, payload: entry.payload(pid: 42, ["vcpu_id": 3, "rip": 0xffff_1236]))
        b.append(timestamp: 1_000_000_000, payload: exit.payload(pid: 43, ["exit_reason": 0x8000_0021, "isa": 1]))
        let pages = b.finish()
        #expect(pages.count == 1)
        let d = formats.makeDecoder()
        let events = d.decodeAll(pages.flatMap { $0 }, subbufSize: 4096, cpu: 1)
        #expect(events == [
            TraceEvent(timestamp: 1_000, rip: 0xffff_1234, detail: 7, tid: 42, event: 0, cpu: 1, reason: 12, vcpu: 3, isa: 1),
            TraceEvent(timestamp: 1_500, rip: 0xffff_1236, tid: 42, event: 1, cpu: 1, vcpu: 3),
            TraceEvent(timestamp: 1_000_000_000, tid: 43, event: 0, cpu: 1, reason: 0x8000_0021, vcpu: 0, isa: 1),
        ])
        #expect(formats.catalog.exitReasons.name(isa: .vmx, rawReason: 12) == "HLT")
    }
}
