import KVMExits
import Testing

/// ``ThreadGrouping``: `ExitPipeline.run` regroups kept events by thread a window at a time when the pairer holds
/// many threads; the aggregate must be the one the same events give in time order, field for field.
@Suite struct ThreadGroupingTests {
    static let exitEvent: UInt16 = 0, entryEvent: UInt16 = 1, pioEvent: UInt16 = 2, mmioEvent: UInt16 = 3

    static func catalog() -> EventCatalog {
        var c = EventCatalog()
        c.add(system: "kvm", name: "kvm_exit")
        c.add(system: "kvm", name: "kvm_entry")
        c.add(system: "kvm", name: "kvm_pio")
        c.add(system: "kvm", name: "kvm_mmio")
        return c
    }

    /// A deterministic trace of `threads` vCPU threads on `cpus` host CPUs, per CPU in time order: exits (a mix of
    /// reasons and RIPs), entries, port and MMIO accesses between them; a thread migrates to another CPU now and
    /// then, between its exit and its entry too; an entry goes missing now and then (an orphan exit) and an exit
    /// (an orphan entry). Loss flags only in `lossAt` (event numbers), so that most windows have none. Until
    /// `ioFloodAt`, 16 threads make I/O accesses to 4 ports and 4 MMIO addresses (at most 256 keys, so that windows
    /// with hundreds of accesses but no new key are regrouped), then every thread, each access to a new address:
    /// past the I/O table's 512 keys.
    static func trace(seed: UInt64, cpus: Int, threads: Int, events: Int, lossAt: Set<Int>, ioFloodAt: Int) -> [[TraceEvent]] {
        var rng = SplitMix(seed)
        var perCPU = [[TraceEvent]](repeating: [], count: cpus)
        var open = [Bool](repeating: false, count: threads)
        var home = (0..<threads).map { $0 % cpus }
        var ts: UInt64 = 1_000_000
        for n in 0..<events {
            ts += rng.next() % 3  // 0: a tie with the previous event
            let t = Int(rng.next() % UInt64(threads))
            if rng.next() % 40 == 0 { home[t] = Int(rng.next() % UInt64(cpus)) }
            let r = rng.next() % 100
            let event: UInt16
            var detail: UInt64 = 0
            if r < 12 && (n >= ioFloodAt || t < 16) {
                event = r < 6 ? pioEvent : mmioEvent
                detail = n >= ioFloodAt ? UInt64(n) : (r < 6 ? 0x60 + rng.next() % 4 : 0xfee0_0000 + (rng.next() % 4) * 8)
            } else if r < 14 {
                event = open[t] ? exitEvent : entryEvent  // the odd one: an orphan
            } else {
                event = open[t] ? entryEvent : exitEvent
            }
            if event == exitEvent { open[t] = true } else if event == entryEvent { open[t] = false }
            let flags: UInt8 = lossAt.contains(n) ? TraceEvent.afterLoss : 0
            perCPU[home[t]].append(TraceEvent(timestamp: ts, rip: 0x1000 + rng.next() % 24, detail: detail,
                                              tid: Int32(5_000 + t), event: event, cpu: UInt16(home[t]),
                                              reason: UInt32(rng.next() % 6) * 7 + 1, aux: 4,
                                              aux2: UInt16(rng.next() % 2), isa: 1, flags: flags))
        }
        return perCPU
    }

    /// The aggregate, in an order that does not depend on which thread was seen first.
    struct Answer: Equatable {
        var kept: UInt64
        var first: UInt64, last: UInt64
        var window: [UInt64]
        var eventTotals: [UInt64]
        var counters: [CounterKey: UInt64]
        var series: [String: HistogramSnapshot]
        var topRIPs: [String: [RIPCount]]
        var pairing: PairingStats
        var io: [String: IOAccessRow]
        var ioOverflow: [UInt64]

        init(_ p: ExitPipeline, kept: UInt64, _ s: AggregateSnapshot) {
            self.kept = kept
            first = p.first
            last = p.last
            window = p.window.map { [$0.first, $0.last] } ?? []
            eventTotals = s.eventTotals
            counters = Dictionary(s.counters.map { ($0.key, $0.count) }, uniquingKeysWith: +)
            series = Dictionary(s.series.map { ("\($0.tid)/\($0.isa)/\($0.reason)", $0.histogram) }, uniquingKeysWith: { a, _ in a })
            topRIPs = Dictionary(s.series.map { ("\($0.tid)/\($0.isa)/\($0.reason)", $0.topRIPs) }, uniquingKeysWith: { a, _ in a })
            pairing = s.pairing
            io = Dictionary(s.ioAccesses.map { ("\($0.tid)/\($0.space)/\($0.address)/\($0.direction)", $0) }, uniquingKeysWith: { a, _ in a })
            ioOverflow = [s.ioOverflow.port, s.ioOverflow.mmio]
        }

        /// The fields that differ, named (an empty list: the same answer).
        func differences(_ o: Answer) -> [String] {
            var d: [String] = []
            if kept != o.kept { d.append("kept \(kept) vs \(o.kept)") }
            if first != o.first || last != o.last { d.append("first/last") }
            if window != o.window { d.append("window \(window) vs \(o.window)") }
            if eventTotals != o.eventTotals { d.append("eventTotals \(eventTotals) vs \(o.eventTotals)") }
            if counters != o.counters { d.append("counters") }
            if series.count != o.series.count { d.append("series \(series.count) vs \(o.series.count)") }
            let histograms = series.filter { o.series[$0.key] != $0.value }.count
            if histograms > 0 { d.append("\(histograms) histograms") }
            let rips = topRIPs.filter { o.topRIPs[$0.key] != $0.value }.count
            if rips > 0 { d.append("\(rips) top-RIP lists") }
            if pairing != o.pairing { d.append("pairing \(pairing) vs \(o.pairing)") }
            if io != o.io { d.append("io: \(io.count) vs \(o.io.count) keys") }
            if ioOverflow != o.ioOverflow { d.append("ioOverflow \(ioOverflow) vs \(o.ioOverflow)") }
            return d
        }
    }

    static func run(_ perCPU: [[TraceEvent]], regrouping: ThreadGrouping.Policy?, from: UInt64? = nil,
                    to: UInt64? = nil) throws -> (Answer, ExitPipeline) {
        var p = ExitPipeline(catalog: catalog())
        p.regrouping = regrouping
        let kept = try p.run(perCPU.enumerated().map { ArrayEventStream($1, batchSize: 500 + 37 * $0) }, from: from, to: to)
        let s = p.finish(statistics: SourceStatistics())
        return (Answer(p, kept: kept, s), p)
    }

    /// 1,500 threads on 4 CPUs, windows of 4,096 events: the answer is the time-ordered one, with windows
    /// regrouped and windows in time order (a loss in them, or the I/O table filling up).
    @Test func regroupedAnswerIsTheTimeOrderedOne() throws {
        let events = 120_000
        let perCPU = Self.trace(seed: 11, cpus: 4, threads: 1_500, events: events, lossAt: [30_001, 30_400, 77_777],
                                ioFloodAt: 90_000)
        let policy = ThreadGrouping.Policy(minThreads: 128, windowEvents: 4_096, maxWindowEvents: 4_096)
        let (grouped, p) = try Self.run(perCPU, regrouping: policy)
        let (ordered, q) = try Self.run(perCPU, regrouping: nil)
        #expect(grouped.differences(ordered) == [])
        #expect(q.grouping == nil)
        // Exact counts of the trace, so that the comparison is not of two empty answers.
        #expect(grouped.kept == UInt64(events))
        #expect(grouped.pairing.paired > 40_000 && grouped.pairing.orphanExits > 0 && grouped.pairing.invalidatedByLoss > 0)
        #expect(grouped.ioOverflow[0] + grouped.ioOverflow[1] > 0 && grouped.io.count == 512)
        let g = try #require(p.grouping)
        // Every event after the first window (fed at once, before the first check found 1,500 threads) went by a window.
        #expect(g.regrouped + g.inOrder == UInt64(events - policy.windowEvents))
        // The windows with a loss, and those up to the I/O table's filling, went in time order; most did not.
        // (Windows take slices until three quarters full.)
        #expect(g.inOrder >= 9 * UInt64(policy.windowEvents) / 4 && g.regrouped > 20 * UInt64(policy.windowEvents))
        // Threads migrate: groups where one came from two CPUs in a window were sorted by time.
        #expect(g.resorted > 0 && g.resorted < g.regrouped)
    }

    /// Every exit and its entry at the same timestamp on two CPUs, a thread moving at every exit: only the merge's
    /// tie rule (the lower CPU first) orders them, in the slices' cut and in the sort of a group by time. Some CPUs
    /// idle: one has 10 events, one none, one stops a third of the way.
    @Test func tiesAcrossCPUsKeepTheMergeOrder() throws {
        let cpus = 6
        var rng = SplitMix(21)
        var perCPU = [[TraceEvent]](repeating: [], count: cpus)
        var ts: UInt64 = 1_000
        for n in 0..<40_000 {
            if rng.next() % 3 == 0 { ts += 1 }
            let t = Int32(7_000 + Int(rng.next() % 400))
            let busy = n < 13_000 ? 4 : 3
            let a = Int(rng.next() % UInt64(busy)), b = Int(rng.next() % UInt64(busy))
            let reason = UInt32(rng.next() % 4) * 9 + 1
            perCPU[a].append(TraceEvent(timestamp: ts, rip: 0x2000 + UInt64(reason), tid: t, event: Self.exitEvent,
                                        cpu: UInt16(a), reason: reason, isa: 1))
            perCPU[b].append(TraceEvent(timestamp: ts, rip: 0x2002, tid: t, event: Self.entryEvent, cpu: UInt16(b), isa: 1))
            if n % 4_000 == 0 {
                perCPU[5].append(TraceEvent(timestamp: ts, rip: 0x3000, tid: t, event: Self.exitEvent, cpu: 5, reason: 1, isa: 1))
            }
        }
        let policy = ThreadGrouping.Policy(minThreads: 128, windowEvents: 600, maxWindowEvents: 600)
        let (grouped, p) = try Self.run(perCPU, regrouping: policy)
        let (ordered, _) = try Self.run(perCPU, regrouping: nil)
        #expect(grouped.differences(ordered) == [])
        #expect(grouped.kept == 80_010)
        // An exit before its entry (on a lower CPU) pairs at 0 ns; the others make orphans.
        #expect(grouped.pairing.paired > 20_000 && grouped.pairing.orphanEntries > 5_000 && grouped.pairing.orphanExits > 5_000)
        let g = try #require(p.grouping)
        #expect(g.regrouped == 80_010 - 600 && g.resorted > 40_000)
    }

    /// A from/to window of the trace: the same events kept and the same answer.
    @Test func regroupedAnswerInsideAWindow() throws {
        let perCPU = Self.trace(seed: 5, cpus: 3, threads: 700, events: 60_000, lossAt: [], ioFloodAt: .max)
        let policy = ThreadGrouping.Policy(minThreads: 64, windowEvents: 2_048, maxWindowEvents: 2_048)
        let (grouped, p) = try Self.run(perCPU, regrouping: policy, from: 3_000, to: 50_000)
        let (ordered, _) = try Self.run(perCPU, regrouping: nil, from: 3_000, to: 50_000)
        #expect(grouped.differences(ordered) == [])
        #expect(grouped.kept > 40_000 && grouped.kept < 50_000 && grouped.window == [1_003_002, 1_050_002])
        // No loss, no I/O: every window after the first regrouped.
        let g = try #require(p.grouping)
        #expect(g.regrouped == grouped.kept - UInt64(policy.windowEvents) && g.inOrder == 0)
    }

    /// Below the policy's threads, nothing is regrouped.
    @Test func fewThreadsAreNotRegrouped() throws {
        let perCPU = Self.trace(seed: 3, cpus: 2, threads: 100, events: 20_000, lossAt: [], ioFloodAt: .max)
        let (grouped, p) = try Self.run(perCPU, regrouping: ThreadGrouping.Policy(minThreads: 128, windowEvents: 1_024, maxWindowEvents: 1_024))
        let (ordered, _) = try Self.run(perCPU, regrouping: nil)
        #expect(grouped.differences(ordered) == [])
        #expect(p.grouping == nil)
    }

    /// Windows of 512 events per thread, from 256 Ki to 1 Mi events; a window sized by the threads gives the
    /// same answer as a fixed one.
    @Test func windowsFollowTheThreads() throws {
        let policy = ThreadGrouping.Policy()
        #expect(policy.window(threads: 128) == 262_144)
        #expect(policy.window(threads: 512) == 262_144)
        #expect(policy.window(threads: 1_000) == 512_000)
        #expect(policy.window(threads: 2_048) == 1_048_576)
        #expect(policy.window(threads: .max) == 1_048_576)
        let perCPU = Self.trace(seed: 9, cpus: 2, threads: 300, events: 50_000, lossAt: [], ioFloodAt: .max)
        let sized = ThreadGrouping.Policy(minThreads: 128, windowEvents: 5_000, maxWindowEvents: 100_000, eventsPerThread: 20)
        let (grouped, p) = try Self.run(perCPU, regrouping: sized)
        let (ordered, _) = try Self.run(perCPU, regrouping: nil)
        #expect(grouped.differences(ordered) == [])
        let g = try #require(p.grouping)
        #expect(g.capacity == 6_000 && g.regrouped == 45_000)  // 300 threads × 20; all but the first 5,000 events
    }

    /// About eight threads a group, from 16 to 4,096 groups.
    @Test func groupsFollowTheThreads() {
        #expect(ThreadGrouping.groupBits(threads: 0) == 4)
        #expect(ThreadGrouping.groupBits(threads: 128) == 4)
        #expect(ThreadGrouping.groupBits(threads: 129) == 5)
        #expect(ThreadGrouping.groupBits(threads: 2_048) == 8)
        #expect(ThreadGrouping.groupBits(threads: 32_768) == 12)
        #expect(ThreadGrouping.groupBits(threads: 1_000_000) == 12)
    }
}
