import KVMExits
import KVMSources
import Testing
import TestSupport

/// Decoding ahead on worker threads changes nothing but who decodes: same events in the same order, same
/// statistics, the same error at the same point; a reader that stops early lets the workers go.
@Suite struct PrefetchedSourceTests {
    /// Three CPUs of synthetic exits and entries, one with losses flagged between pages.
    static func source() throws -> PagesTraceSource {
        let formats = try Fixtures.formats("6.18-x86")
        let w = SyntheticWorkload(threads: 7, hostCPUs: 3, vcpusPerVM: 2)
        var cpus: [(cpu: UInt16, pages: [[UInt8]])] = []
        for cpu in 0..<3 {
            var pages: [[UInt8]] = []
            try w.pages(formats: formats, cpu: cpu, events: 30_000 + cpu * 5_000) { pages.append($0) }
            if cpu == 1 {
                // Flag a loss of 9 events before every 10th page that has room for the count after its data
                // (RB_MISSED_EVENTS and RB_MISSED_STORED, bits 31 and 30 of the commit word).
                for i in stride(from: 5, to: pages.count, by: 10) {
                    let size = Int(pages[i][8]) | Int(pages[i][9]) << 8 | Int(pages[i][10]) << 16
                    guard 16 + size + 8 <= pages[i].count else { continue }
                    pages[i][11] |= 0xc0
                    pages[i][16 + size] = 9
                }
            }
            cpus.append((UInt16(cpu), pages))
        }
        return PagesTraceSource(formats: formats, pagesByCPU: cpus)
    }

    static func events(_ s: any TraceSource) throws -> [TraceEvent] {
        var out: [TraceEvent] = []
        try s.forEachEvent { out.append($0) }
        return out
    }

    @Test func sameEventsAndStatistics() throws {
        let results = onThreads([{ @Sendable () -> Bool in
            do {
                let base = try Self.source()
                let expected = try Self.events(base)
                let stats = base.statistics
                #expect(expected.count == 30_000 + 35_000 + 40_000)
                #expect(stats.lostEvents > 0)
                for (workers, ahead) in [(1, 0), (2, 0), (5, 0), (1, 200_000), (2, 1_000_000)] {
                    let fresh = try Self.source()
                    let p = PrefetchedSource(fresh, workers: workers, aheadEvents: ahead)
                    #expect(try Self.events(p) == expected, "workers \(workers), ahead \(ahead)")
                    #expect(p.statistics == stats, "workers \(workers), ahead \(ahead)")
                }
                return true
            } catch {
                Issue.record(error)
                return false
            }
        }], timeout: 120)
        #expect(results == [true])
    }

    /// A source whose second stream throws after its third batch.
    final class Failing: TraceSource {
        struct Broken: Error, Equatable {}
        final class Stream: EventStream {
            let base: any EventStream
            let failAfter: Int?
            var batches = 0
            init(_ base: any EventStream, failAfter: Int?) {
                self.base = base
                self.failAfter = failAfter
            }
            func next(_ batch: inout [TraceEvent]) throws -> Bool {
                if let failAfter, batches == failAfter { throw Broken() }
                batches += 1
                return try base.next(&batch)
            }
        }
        let base: PagesTraceSource
        init(_ base: PagesTraceSource) { self.base = base }
        var catalog: EventCatalog { base.catalog }
        var identities: [Int32: ThreadIdentity] { base.identities }
        var statistics: SourceStatistics { base.statistics }
        func streams() throws -> [any EventStream] {
            try base.streams().enumerated().map { Stream($0.element, failAfter: $0.offset == 1 ? 3 : nil) }
        }
    }

    /// Four batches a stream ahead, or a window shared out (report: 1 Mi events, the regrouping's largest window).
    @Test func depthSharesOutTheEventsAhead() {
        #expect(PrefetchedSource.depth(streams: 3, aheadEvents: 0) == 4)
        #expect(PrefetchedSource.depth(streams: 3, aheadEvents: 200_000) == 8)
        #expect(PrefetchedSource.depth(streams: 2, aheadEvents: 1 << 20) == 64)
        #expect(PrefetchedSource.depth(streams: 8, aheadEvents: 1 << 20) == 16)
        #expect(PrefetchedSource.depth(streams: 256, aheadEvents: 1 << 20) == 4)
        #expect(PrefetchedSource.depth(streams: 0, aheadEvents: 1 << 20) == 128)
    }

    @Test func anErrorComesWhereTheStreamThrewIt() throws {
        let results = onThreads([{ @Sendable () -> Bool in
            func run(_ s: any TraceSource) -> (Int, Bool) {
                var n = 0
                do {
                    try s.forEachEvent { _ in n += 1 }
                } catch is Failing.Broken {
                    return (n, true)
                } catch {
                    return (n, false)
                }
                return (n, false)
            }
            do {
                let expected = run(Failing(try Self.source()))
                #expect(expected.1 && expected.0 > 0)
                // The prefetching stream hands over the three batches its base gave, then throws: the merge
                // has delivered exactly the same events when the error reaches it.
                let got = run(PrefetchedSource(Failing(try Self.source()), workers: 2))
                #expect(got.1)
                #expect(got.0 == expected.0)
                return true
            } catch {
                Issue.record(error)
                return false
            }
        }], timeout: 120)
        #expect(results == [true])
    }

    /// A reader that takes one batch of each stream and goes: the workers stop and are joined.
    @Test func aReaderThatStopsEarlyLetsTheWorkersGo() throws {
        let results = onThreads([{ @Sendable () -> Bool in
            do {
                for _ in 0..<20 {
                    var streams = try PrefetchedSource(try Self.source(), workers: 2).streams()
                    var batch: [TraceEvent] = []
                    for s in streams { #expect(try s.next(&batch) && !batch.isEmpty) }
                    streams.removeAll()
                }
                return true
            } catch {
                Issue.record(error)
                return false
            }
        }], timeout: 120)
        #expect(results == [true])
    }
}
