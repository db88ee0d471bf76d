import KVMExits
import KVMSources
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

@Suite struct SubbufferDecoderEdgeTests {
    @Test func missedEventsAreCountedAndFlagged() throws {
        let formats = try Fixtures.formats("6.18-x86")
        let entry = try EventPayloadBuilder(formats: formats, event: "kvm_entry")
        var b = RingBufferPageBuilder()
        b.append(timestamp: 10, payload: entry.payload(pid: 1, ["vcpu_id": 0]))
        b.markLost(37)
        b.append(timestamp: 20, payload: entry.payload(pid: 1, ["vcpu_id": 0]))
        b.append(timestamp: 30, payload: entry.payload(pid: 1, ["vcpu_id": 0]))
        let pages = b.finish()
        #expect(pages.count == 2)
        let d = formats.makeDecoder()
        let events = d.decodeAll(pages.flatMap { $0 }, subbufSize: 4096, cpu: 0)
        #expect(events.map(\.timestamp) == [10, 20, 30])
        #expect(events.map(\.flags) == [0, TraceEvent.afterLoss, 0])
        #expect(d.missedEvents == 37)
    }

    @Test func lossBeforeASubbufferWithoutOurEventsMarksTheNextRecord() throws {
        let all = try Fixtures.formats("6.18-x86", events: ["kvm_exit", "kvm_entry", "kvm_pio"])
        let pio = try EventPayloadBuilder(formats: all, event: "kvm_pio")
        let entry = try EventPayloadBuilder(formats: all, event: "kvm_entry")
        var b = RingBufferPageBuilder()
        b.markLost(5)
        b.append(timestamp: 10, payload: pio.payload(pid: 1, ["port": 0x10]))
        b.breakPage()
        b.append(timestamp: 20, payload: entry.payload(pid: 1, ["vcpu_id": 0]))
        let pages = b.finish()
        #expect(pages.count == 2)
        // This decoder knows only exits and entries: the pio carrying the loss is not one of its events.
        let exitsOnly = try Fixtures.formats("6.18-x86")
        let d = exitsOnly.makeDecoder()
        let events = d.decodeAll(pages.flatMap { $0 }, subbufSize: 4096, cpu: 0)
        #expect(events.map(\.timestamp) == [20])
        #expect(events.map(\.flags) == [TraceEvent.afterLoss])
        #expect(d.missedEvents == 5)
        #expect(d.ignoredEvents == 1)
    }

    @Test func olderLayoutWithoutVCPUField() throws {
        let formats = try Fixtures.formats("4.19-x86")
        let exit = try EventPayloadBuilder(formats: formats, event: "kvm_exit")
        #expect(!exit.has("vcpu_id"))
        var b = RingBufferPageBuilder()
        b.append(timestamp: 5, payload: exit.payload(pid: 9, ["exit_reason": 48, "isa": 1, "guest_rip": 0x1000]))
        let events = formats.makeDecoder().decodeAll(b.finish().flatMap { $0 }, subbufSize: 4096, cpu: 2)
        #expect(events == [TraceEvent(timestamp: 5, rip: 0x1000, tid: 9, event: 0, cpu: 2, reason: 48, isa: 1)])
        #expect(events[0].vcpu == TraceEvent.noVCPU)
    }

    @Test func malformedSubbufferIsRejectedNotRead() throws {
        let formats = try Fixtures.formats("6.18-x86")
        var page = [UInt8](repeating: 0, count: 4096)
        // commit claims more data than the page holds.
        page[8] = 0xff; page[9] = 0xff; page[10] = 0x01
        let d = formats.makeDecoder()
        var seen = 0
        let ok = page.withUnsafeBytes { d.decode($0, cpu: 0) { _ in seen += 1 } }
        #expect(!ok)
        #expect(seen == 0)
        #expect(d.corruptSubbuffers == 1)
        // Too short to hold a header.
        let short = [UInt8](repeating: 0, count: 8)
        #expect(!short.withUnsafeBytes { d.decode($0, cpu: 0) { _ in } })
    }

    @Test func largeEventsUseTheLengthWord() throws {
        // Payloads over 112 bytes carry their length in a second word (type_len 0).
        let formats = try Fixtures.formats("6.18-x86", events: ["kvm_exit", "kvm_entry", "kvm_emulate_insn"])
        let exit = try EventPayloadBuilder(formats: formats, event: "kvm_exit")
        var b = RingBufferPageBuilder()
        var big = exit.payload(pid: 3, ["exit_reason": 1, "isa": 1])
        big.append(contentsOf: [UInt8](repeating: 0xab, count: 120))
        b.append(timestamp: 100, payload: big)
        b.append(timestamp: 200, payload: exit.payload(pid: 3, ["exit_reason": 2, "isa": 1]))
        let events = formats.makeDecoder().decodeAll(b.finish().flatMap { $0 }, subbufSize: 4096, cpu: 0)
        #expect(events.map(\.reason) == [1, 2])
        #expect(events.map(\.timestamp) == [100, 200])
    }
}
