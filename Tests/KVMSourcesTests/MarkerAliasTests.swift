import KVMExits
import KVMSources
import Testing

/// The test-only marker mapping: ftrace:raw_data records carrying kvm_exit's and kvm_entry's bytes 8..< decode
/// as those events, told apart by size, at the events' own field offsets.
@Suite struct MarkerAliasTests {
    @Test func rawDataDecodesAsExitOrEntryBySize() throws {
        let formats = try Fixtures.formats("6.18-x86")
        let raw = try Fixtures.text("formats/6.18-x86/raw_data.format")
        let rawID = try #require(raw.split(separator: "\n").first { $0.hasPrefix("ID:") }.flatMap { Int32($0.dropFirst(3).trimmingCharacters(in: .whitespaces)) })
        #expect(formats.markerSize(of: "kvm_exit") == 72)
        #expect(formats.markerSize(of: "kvm_entry") == 36)
        try formats.alias(kernelID: rawID, as: "kvm_exit", matchSize: 72)
        try formats.alias(kernelID: rawID, as: "kvm_entry", matchSize: 36)

        let exit = try EventPayloadBuilder(formats: formats, event: "kvm_exit")
        let entry = try EventPayloadBuilder(formats: formats, event: "kvm_entry")
        /// What trace_marker_raw makes of a write of bytes 8..<size: a raw_data record (common_type = its id).
        func marker(_ payload: [UInt8]) -> [UInt8] {
            var p = payload
            p[0] = UInt8(truncatingIfNeeded: rawID)
            p[1] = UInt8(truncatingIfNeeded: rawID >> 8)
            return p
        }
        var b = RingBufferPageBuilder()
        b.append(timestamp: 100, payload: marker(exit.payload(pid: 5, ["exit_reason": 30, "isa": 1, "guest_rip": 0xfeed,
                                                                       "vcpu_id": 2])))
        b.append(timestamp: 170, payload: marker(entry.payload(pid: 5, ["vcpu_id": 2, "rip": 0xfeef])))
        b.append(timestamp: 200, payload: marker(Array(repeating: 0, count: 20)))  // another size: not ours
        let events = formats.makeDecoder().decodeAll(b.finish().flatMap { $0 }, subbufSize: 4096, cpu: 0)
        #expect(events == [
            TraceEvent(timestamp: 100, rip: 0xfeed, tid: 5, event: 0, reason: 30, vcpu: 2, isa: 1),
            TraceEvent(timestamp: 170, rip: 0xfeef, tid: 5, event: 1, vcpu: 2),
        ])
    }
}
