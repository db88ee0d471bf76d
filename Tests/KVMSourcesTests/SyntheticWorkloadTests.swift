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

    /// With `alive`, a CPU runs that many threads (over all CPUs) at a time, each making its share of pairs and
    /// never seen again: CPU 0 of 6 threads on 2 CPUs has threads 0, 2, 4; alive 4 is 2 at a time on it; 7 pairs
    /// are shares of 3, 2 and 2. Thread 4 takes thread 2's slot when 2 is done, and thread 0's slot closes.
    @Test func aliveThreadsComeAndGo() throws {
        let formats = try Fixtures.formats("6.18-x86")
        var w = SyntheticWorkload(threads: 6, hostCPUs: 2, vcpusPerVM: 2)
        w.alive = 4
        var pages: [[UInt8]] = []
        try w.pages(formats: formats, cpu: 0, events: 14) { pages.append($0) }
        let d = formats.makeDecoder()
        let events = pages.flatMap { d.decodeAll($0, subbufSize: 4096, cpu: 0) }
        #expect(events.count == 14)
        #expect(events.map { Int($0.tid - w.firstTid) } == [0, 0, 2, 2, 0, 0, 2, 2, 0, 0, 4, 4, 4, 4])
        // Shares that do not divide and a window of one: each thread's pairs in one run, in order.
        w = SyntheticWorkload(threads: 10, hostCPUs: 2, vcpusPerVM: 2)
        w.alive = 2
        let all = try w.allPages(formats: formats, events: 48)
        let tids = all.filter { $0.cpu == 1 }.flatMap { d.decodeAll($0.page, subbufSize: 4096, cpu: 1) }
            .enumerated().filter { $0.offset % 2 == 0 }.map { Int($0.element.tid - w.firstTid) }
        #expect(tids == [1, 1, 1, 3, 3, 3, 5, 5, 7, 7, 9, 9])
    }
}
