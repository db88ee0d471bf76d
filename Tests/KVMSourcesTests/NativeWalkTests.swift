import KVMExits
import KVMSources
import Testing

/// The inline sub-buffer walk gives exactly what libtraceevent's kbuffer walk gives: same records, same
/// counters, same verdict on damaged sub-buffers.
@Suite struct NativeWalkTests {
    struct Outcome: Equatable {
        var events: [TraceEvent]
        var ok: [Bool]
        var missed: UInt64
        var unknown: UInt64
        var ignored: UInt64
        var corrupt: UInt64
    }

    static func decode(_ pages: [[UInt8]], formats: EventFormats, kbuffer: Bool) -> Outcome {
        let d = formats.makeDecoder()
        d.useKbuffer(kbuffer)
        var events: [TraceEvent] = []
        var ok: [Bool] = []
        for page in pages {
            ok.append(page.withUnsafeBytes { d.decode($0, cpu: 1) { events.append($0) } })
        }
        return Outcome(events: events, ok: ok, missed: d.missedEvents, unknown: d.missedUnknown,
                       ignored: d.ignoredEvents, corrupt: d.corruptSubbuffers)
    }

    /// Pages with every kind of header: small and large events, time extends, losses, events not in the table.
    static func pages(formats: EventFormats) throws -> [[UInt8]] {
        let exit = try EventPayloadBuilder(formats: formats, event: "kvm_exit")
        let entry = try EventPayloadBuilder(formats: formats, event: "kvm_entry")
        let pio = try EventPayloadBuilder(formats: formats, event: "kvm_pio")
        var b = RingBufferPageBuilder()
        var rng: UInt64 = 0x1234_5678
        var ts: UInt64 = 5_000
        for i in 0..<5_000 {
            rng = rng &* 6364136223846793005 &+ 1442695040888963407
            ts += (rng >> 33) % (i % 97 == 0 ? 3_000_000_000 : 20_000)
            let tid = Int32(100 + (rng >> 20) % 7)
            switch (rng >> 40) % 5 {
            case 0: b.append(timestamp: ts, payload: entry.payload(pid: tid, ["vcpu_id": UInt64(tid - 100), "rip": rng]))
            case 1: b.append(timestamp: ts, payload: pio.payload(pid: tid, ["port": 0x10, "size": 1, "rw": 1]))
            case 2:
                var big = exit.payload(pid: tid, ["exit_reason": 48, "isa": 1])
                big.append(contentsOf: [UInt8](repeating: UInt8(i & 0xff), count: Int(rng >> 58) * 8 + 60))
                b.append(timestamp: ts, payload: big)
            default:
                b.append(timestamp: ts, payload: exit.payload(pid: tid, ["exit_reason": UInt64((rng >> 8) % 70), "isa": 1,
                                                                       "guest_rip": rng, "info1": rng >> 3,
                                                                       "vcpu_id": UInt64(tid - 100)]))
            }
            if i % 701 == 700 { b.markLost(UInt64(i)) }
        }
        return b.finish()
    }

    @Test func sameRecordsAsKbuffer() throws {
        // The decoder knows exits and entries only: kvm_pio events are walked over and counted as ignored.
        let builder = try Fixtures.formats("6.18-x86", events: ["kvm_exit", "kvm_entry", "kvm_pio"])
        let pages = try Self.pages(formats: builder)
        let formats = try Fixtures.formats("6.18-x86")
        let native = Self.decode(pages, formats: formats, kbuffer: false)
        let reference = Self.decode(pages, formats: formats, kbuffer: true)
        #expect(native == reference)
        #expect(native.events.count > 2_500)
        #expect(native.ignored > 500)
        let lossMarks: [UInt64] = [700, 1401, 2102, 2803, 3504, 4205, 4906]  // i where i % 701 == 700
        #expect(native.missed == lossMarks.reduce(0, +))
    }

    @Test func sameVerdictOnDamagedSubbuffers() throws {
        let builder = try Fixtures.formats("6.18-x86", events: ["kvm_exit", "kvm_entry", "kvm_pio"])
        let good = try Self.pages(formats: builder)
        let formats = try Fixtures.formats("6.18-x86")
        // Flip bytes in the data of each page (event headers, lengths, payloads) and compare both walks.
        var damaged: [[UInt8]] = []
        var rng: UInt64 = 99
        for page in good.prefix(40) {
            for _ in 0..<25 {
                var p = page
                rng = rng &* 6364136223846793005 &+ 1442695040888963407
                let at = 16 + Int((rng >> 33) % 400)
                p[at] ^= UInt8(truncatingIfNeeded: rng >> 56) | 1
                damaged.append(p)
            }
        }
        let native = Self.decode(damaged, formats: formats, kbuffer: false)
        let reference = Self.decode(damaged, formats: formats, kbuffer: true)
        #expect(native.ok == reference.ok)
        #expect(native == reference)
        #expect(native.corrupt > 0)
    }

    /// Discarded events (paddings of whole words) are walked over by both walks, their time delta counted; a padding length that is not
    /// a whole number of words (never written by a kernel: found by the fuzzer) makes the inline walk reject
    /// the sub-buffer instead of reading between event headers.
    @Test func paddingsOfWholeWordsOnly() throws {
        let builder = try Fixtures.formats("6.18-x86", events: ["kvm_exit", "kvm_entry"])
        let exit = try EventPayloadBuilder(formats: builder, event: "kvm_exit")
        var b = RingBufferPageBuilder()
        b.append(timestamp: 1_000, payload: exit.payload(pid: 7, ["exit_reason": 30, "isa": 1]))
        b.appendDiscarded(dataLength: 12, timestamp: 1_200)
        b.append(timestamp: 1_500, payload: exit.payload(pid: 7, ["exit_reason": 12, "isa": 1]))
        let page = b.finish()[0]
        let formats = try Fixtures.formats("6.18-x86")
        let native = Self.decode([page], formats: formats, kbuffer: false)
        #expect(native == Self.decode([page], formats: formats, kbuffer: true))
        #expect(native.events.map(\.reason) == [30, 12])
        // The discarded event's delta (200 ns) counts, as in kbuffer: the next event's delta (300) is from it.
        #expect(native.events.map(\.timestamp) == [1_000, 1_500])
        #expect(native.ok == [true])

        // The padding's length word sits right after its header: make it 13.
        var odd = page
        let exitSize = (exit.payload(pid: 7, ["exit_reason": 30, "isa": 1]).count + 3) & ~3
        let lengthWord = 16 + 4 + exitSize + 4
        #expect(odd[lengthWord] == 12)
        odd[lengthWord] = 13
        let rejected = Self.decode([odd], formats: formats, kbuffer: false)
        #expect(rejected.ok == [false])
        #expect(rejected.corrupt == 1)
        #expect(rejected.events.isEmpty)

        // A padding length of 2^31 or more: kbuffer would read it as a negative int and walk back to itself
        // forever (found by the fuzzer); both walks refuse or end the sub-buffer, and return.
        var negative = page
        withUnsafeBytes(of: UInt32(0xffff_fffc).littleEndian) { negative.replaceSubrange(lengthWord..<lengthWord + 4, with: $0) }
        #expect(Self.decode([negative], formats: formats, kbuffer: true).ok == [false])
        #expect(Self.decode([negative], formats: formats, kbuffer: false).events.map(\.reason) == [30])
    }
}
