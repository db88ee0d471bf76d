import KVMAnalysis
import KVMExits
import Testing

/// Every table whose size follows the live threads shrinks back once a burst of them has retired (a daemon's
/// memory follows the threads alive, not the most it ever saw), and the retired threads' hand-overs are taken
/// between snapshots (``Aggregator/collectRetired()``) without changing any total.
@Suite struct TableShrinkTests {
    static let burst = 5_000

    /// `burst` threads of VM 100 (tids 1000 ..., vCPU tid % 8), one pair each, plus 3 that stay.
    static func grown() throws -> (RetirementTests.Rig, before: [String]) {
        let host = RetirementTests.Host()
        for t in 0..<(burst + 3) { host.set(Int32(1_000 + t), vm: 100, vcpu: UInt32(t % 8)) }
        var rig = RetirementTests.Rig(host: host, threadExits: true)
        for t in 0..<(burst + 3) { rig.run(Int32(1_000 + t), reason: 30, 1) }
        return (rig, RetirementTests.rows(try rig.summary()))
    }

    @Test func aBurstGrowsEveryTableAndItsRetirementShrinksThem() throws {
        var (rig, before) = try Self.grown()
        // Grown: 5,003 threads and series; shard 0 holds 3 keys per thread (exit, pio, userspace exit), shard 1
        // one (entry).
        #expect(rig.pairer.threadCapacity == 8_192)
        #expect(rig.pairer.threadIndexSlots == 16_384)
        #expect(rig.pairer.seriesIndexSlots == 16_384)
        #expect(rig.writers.map(\.knownThreadsCapacity) == [6_144, 6_144])
        #expect(rig.agg.capacities == AggregatorCapacities(threads: 6_144, unresolved: 0, exitNotes: 0,
                                                           retirementRequests: 0, counterSlots: [32_768, 16_384]))
        // Every thread but the last 3 exits.
        let gone = (0..<Self.burst).map { Int32(1_000 + $0) }
        for (i, tid) in gone.enumerated() { rig.agg.noteThreadExit(tid, timestamp: UInt64(i)) }
        let notes = rig.agg.capacities.exitNotes
        #expect(notes >= Self.burst)
        #expect(rig.agg.takeThreadExits(through: UInt64(Self.burst)) == gone)
        rig.agg.retire(gone, onExit: true)
        // Identities go at once, and the exit notes with them; the writers' tables at their next batch.
        #expect(rig.agg.capacities == AggregatorCapacities(threads: 96, unresolved: 0, exitNotes: 64,
                                                           retirementRequests: notes, counterSlots: [32_768, 16_384]))
        rig.maintain()
        #expect(rig.pairer.threadCapacity == Pairer.initialThreadCapacity)
        #expect(rig.pairer.threadIndexSlots == 2 * Pairer.initialThreadCapacity)
        #expect(rig.pairer.seriesIndexSlots == 1_024)
        #expect(rig.writers.map(\.knownThreadsCapacity) == [96, 96])
        // Taken between snapshots: the requests are forgotten, the series and counts are in the retired rows.
        let collections = rig.agg.retiredCollections
        #expect(rig.agg.collectRetired())
        #expect(rig.agg.retiredCollections == collections + 1)
        #expect(!rig.agg.collectRetired())
        #expect(rig.agg.board?.pending == 0)
        #expect(rig.agg.capacities == AggregatorCapacities(threads: 96, unresolved: 0, exitNotes: 64,
                                                           retirementRequests: 64, counterSlots: [1_024, 1_024]))
        // Every total is what it was: the retired threads' rows are in their VM × vCPU's retired rows.
        #expect(RetirementTests.rows(try rig.summary()) == before)
        let snap = rig.agg.snapshot(timestamp: rig.t)
        #expect(snap.occupancy.liveThreads == 3)
        #expect(snap.occupancy.liveSeries == 3)
        #expect(snap.occupancy.retiredThreads == UInt64(Self.burst))
        #expect(snap.occupancy.retiredRows == 8)
        #expect(snap.pairing.paired == UInt64(Self.burst + 3))
        #expect(snap.series.reduce(0) { $0 + $1.histogram.count } == UInt64(Self.burst + 3))
    }

    /// A table shrinks only once an eighth of it or less is used: 1,000 of 5,003 threads retiring leaves
    /// every table as it was.
    @Test func aPartialRetirementKeepsTheTables() throws {
        var (rig, before) = try Self.grown()
        let gone = (0..<1_000).map { Int32(1_000 + $0) }
        rig.agg.retire(gone)
        rig.maintain()
        #expect(rig.agg.collectRetired())
        #expect(rig.pairer.threadCapacity == 8_192)
        #expect(rig.writers.map(\.knownThreadsCapacity) == [6_144, 6_144])
        #expect(rig.agg.capacities.threads == 6_144)
        // Shard 0 keeps 12,009 keys of 32,768 slots, shard 1 4,003 of 16,384: more than an eighth.
        #expect(rig.agg.capacities.counterSlots == [32_768, 16_384])
        #expect(RetirementTests.rows(try rig.summary()) == before)
    }
}
