import KVMAnalysis
import KVMExits
import Testing

/// Latency histograms and top RIPs merged across shards and vCPU threads in a Summary equal one histogram of
/// all the values.
@Suite struct SummaryMergeTests {
    @Test func perVMRowsMergeShardsAndThreadsExactly() throws {
        var catalog = EventCatalog()
        let exit = catalog.add(system: "kvm", name: "kvm_exit")
        let entry = catalog.add(system: "kvm", name: "kvm_entry")
        let agg = Aggregator(catalog: catalog, shardCount: 2) { ThreadIdentity(vm: 100, vmName: "guest", vcpu: UInt32($0 - 101)) }
        var shards = [agg.writer(shard: 0), agg.writer(shard: 1)]
        var pairer = agg.makePairer()
        var all: [UInt64] = []
        var rips: [UInt64: UInt64] = [:]
        var t: UInt64 = 1_000
        var x: UInt64 = 12345
        for i in 0..<3_000 {
            x = x &* 6364136223846793005 &+ 1442695040888963407
            let tid: Int32 = i % 3 == 0 ? 101 : 102
            let latency = 10 + (x >> 33) % 5_000_000
            let rip: UInt64 = 0x4000 + (x >> 60) * 8
            // A thread's events are read by either CPU's reader (it migrates): shard by i, not by thread.
            let e = TraceEvent(timestamp: t, rip: rip, tid: tid, event: exit, cpu: UInt16(i % 2), reason: 30, isa: 1)
            let n = TraceEvent(timestamp: t + latency, tid: tid, event: entry, cpu: UInt16((i / 2) % 2))
            shards[i % 2].add(e, hasReason: true)
            shards[(i / 2) % 2].add(n, hasReason: false)
            pairer.exit(e)
            pairer.entry(n)
            all.append(latency)
            rips[rip, default: 0] += 1
            t += latency + 100
        }
        pairer.finish()
        let summary = try Summary(agg.snapshot(timestamp: t))
        #expect(summary.exits.map(\.count) == [1_000, 2_000])
        #expect(summary.exits.map { $0.vcpu } == [0, 1])
        let vm = summary.exitsByVM()
        #expect(vm.count == 1)
        #expect(vm[0].count == 3_000)
        #expect(vm[0].vcpu == nil)
        #expect(vm[0].histogram == HistogramSnapshot(recording: all))
        #expect(vm[0].latency == LatencySummary(HistogramSnapshot(recording: all)))
        // 16 RIPs (x >> 60), each thread's TopRIPs holds all of them: merged counts are exact.
        let want = rips.map { RIPCount(rip: $0.key, count: $0.value) }
            .sorted { $0.count != $1.count ? $0.count > $1.count : $0.rip < $1.rip }
        #expect(vm[0].topRIPs == want)
    }
}

@Suite struct PairerCapacityTests {
    /// 30,000 threads, each pairing once: the thread table and the series index grow, every pair is recorded
    /// in its own series, nothing overflows.
    @Test func manyThreadsEveryPairRecorded() {
        var pairer = Pairer()
        let threads = 30_000
        for t in 0..<threads {
            let tid = Int32(100_000 + t)
            pairer.exit(TraceEvent(timestamp: UInt64(t) * 10, tid: tid, event: 0, reason: 30, isa: 1))
            pairer.entry(TraceEvent(timestamp: UInt64(t) * 10 + 5, tid: tid, event: 1))
        }
        pairer.finish()
        let s = pairer.counters.snapshot
        #expect(s.paired == UInt64(threads))
        #expect(s.overflow == 0)
        #expect(s.orphanExits == 0)
        #expect(s.orphanEntries == 0)
        #expect(pairer.store.all.count == threads)
        #expect(pairer.store.all.allSatisfy { $0.histogram.count == 1 })
    }

    /// A thread whose exit waits while thousands of others come and go (the table grows under it) keeps it.
    @Test func growthKeepsOpenExits() {
        var pairer = Pairer()
        pairer.exit(TraceEvent(timestamp: 1, tid: 7, event: 0, reason: 12, isa: 1))
        for t in 0..<(Pairer.initialThreadCapacity * 8) {
            let tid = Int32(200_000 + t)
            pairer.exit(TraceEvent(timestamp: 2, tid: tid, event: 0, reason: 30, isa: 1))
            pairer.entry(TraceEvent(timestamp: 3, tid: tid, event: 1))
        }
        pairer.entry(TraceEvent(timestamp: 1_000, tid: 7, event: 1))
        let s = pairer.counters.snapshot
        #expect(s.paired == UInt64(Pairer.initialThreadCapacity * 8 + 1))
        #expect(s.orphanEntries == 0)
        #expect(s.orphanExits == 0)
        let seven = pairer.store.all.first { $0.tid == 7 }
        #expect(seven?.histogram.snapshot().max == 999)
    }
}
