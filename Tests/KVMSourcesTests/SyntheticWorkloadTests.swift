import KVMExits
import KVMSources
import Testing

@Suite struct SyntheticWorkloadTests {
    /// Every page decodes; exits and entries alternate per CPU, each entry closing its own thread's exit;
    /// threads sit on the CPU the workload says; every reason is one of the mix.
    @Test func pagesDecodeToAlternatingPairsOnTheirCPUs() throws {
        let formats = try Fixtures.formats("6.18-x86")
        let w = SyntheticWorkload(threads: 5, hostCPUs: 2, vcpusPerVM: 2)
        let pages = try w.allPages(formats: formats, events: 10_000)
        let d = formats.makeDecoder()
        var events: [TraceEvent] = []
        for p in pages { events += d.decodeAll(p.page, subbufSize: 4096, cpu: UInt16(p.cpu)) }
        #expect(events.count == 10_000)
        #expect(d.corruptSubbuffers == 0)
        let exit = formats.catalog.index(of: "kvm_exit")!
        let codes = Set(SyntheticWorkload.corpusMix.map(\.code))
        for cpu in 0..<2 {
            let mine = events.filter { $0.cpu == cpu }
            #expect(mine.count == 5_000)
            for i in stride(from: 0, to: mine.count, by: 2) {
                let x = mine[i], e = mine[i + 1]
                #expect(x.event == exit && e.event != exit)
                #expect(x.tid == e.tid && x.vcpu == e.vcpu && e.timestamp > x.timestamp)
                #expect(Int(x.tid - w.firstTid) % 2 == cpu)
                #expect(x.vcpu == UInt32(Int(x.tid - w.firstTid) % 2))
                #expect(codes.contains(x.reason) && x.isa == 1)
            }
        }
        #expect(Set(events.map(\.tid)) == Set((0..<5).map { w.firstTid + Int32($0) }))
    }

    /// Streaming hands over the same bytes as building everything at once.
    @Test func streamedPagesEqualAllPages() throws {
        let formats = try Fixtures.formats("6.18-x86")
        let w = SyntheticWorkload(threads: 3, hostCPUs: 1, vcpusPerVM: 3)
        var streamed: [[UInt8]] = []
        try w.pages(formats: formats, cpu: 0, events: 3_000) { streamed.append($0) }
        #expect(streamed == (try w.allPages(formats: formats, events: 3_000)).map(\.page))
        #expect(streamed.allSatisfy { $0.count == 4096 })
    }
}
