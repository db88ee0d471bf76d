import Foundation
import KVMAnalysis
import KVMExits
import Synchronization
import Testing

/// Threads retire (exited, or their tid reused) without changing any total: their counts and latency
/// histograms fold into their VM × vCPU's retired row, and a reused tid starts afresh.
@Suite struct RetirementTests {
    /// kvm_exit (0), kvm_entry (1), kvm_pio (2), kvm_userspace_exit (3).
    static func catalog() -> EventCatalog {
        var c = EventCatalog()
        c.add(system: "kvm", name: "kvm_exit")
        c.add(system: "kvm", name: "kvm_entry")
        c.add(system: "kvm", name: "kvm_pio")
        c.add(system: "kvm", name: "kvm_userspace_exit")
        return c
    }

    /// A test host: who each tid is, changeable (a reused tid belongs to another VM).
    final class Host: Sendable {
        let who = Mutex<[Int32: ThreadIdentity]>([:])
        func set(_ tid: Int32, vm: Int32, vcpu: UInt32) {
            who.withLock { $0[tid] = ThreadIdentity(vm: vm, vmName: "vm\(vm)", vcpu: vcpu, comm: "CPU \(vcpu)/KVM") }
        }
    }

    /// Two shard writers and a pairer over one aggregate, fed like the live session feeds them.
    struct Rig {
        let agg: Aggregator
        var writers: [ShardWriter]
        var pairer: Pairer
        var t: UInt64 = 1_000

        /// `startTime` and `threadExits`: as ``Aggregator`` takes them (none: only ``Aggregator/retire(_:onExit:)``
        /// retires).
        init(host: Host, retiredVMCapacity: Int = 1024, startTime: ThreadStartTime? = nil, threadExits: Bool = false) {
            agg = Aggregator(catalog: RetirementTests.catalog(), shardCount: 2,
                             resolver: { tid in host.who.withLock { $0[tid] } }, retirement: true,
                             startTime: startTime, retiredVMCapacity: retiredVMCapacity, threadExits: threadExits)
            writers = [agg.writer(shard: 0), agg.writer(shard: 1)]
            pairer = agg.makePairer()
        }

        /// `n` exit → entry pairs of `tid` with `reason` (latencies 100, 200, ... ns), each followed by a
        /// kvm_pio and a kvm_userspace_exit (KVM_EXIT_IO = 2); events alternate between the two shards.
        mutating func run(_ tid: Int32, reason: UInt32, _ n: Int, rip: UInt64 = 0x1000) {
            for i in 0..<n {
                let latency = UInt64(i + 1) * 100
                let exit = TraceEvent(timestamp: t, rip: rip, tid: tid, event: 0, cpu: UInt16(i % 2), reason: reason, isa: 1)
                let entry = TraceEvent(timestamp: t + latency, tid: tid, event: 1, cpu: UInt16((i + 1) % 2))
                let pio = TraceEvent(timestamp: t + latency + 1, tid: tid, event: 2, cpu: UInt16(i % 2))
                let user = TraceEvent(timestamp: t + latency + 2, tid: tid, event: 3, cpu: UInt16(i % 2), reason: 2)
                writers[i % 2].add(exit, hasReason: true)
                writers[(i + 1) % 2].add(entry, hasReason: false)
                writers[i % 2].add(pio, hasReason: false)
                writers[i % 2].add(user, hasReason: true)
                pairer.exit(exit)
                pairer.entry(entry)
                t += latency + 10
            }
        }

        /// What the live session's threads do between batches.
        mutating func maintain() {
            for i in writers.indices { writers[i].maintain() }
            pairer.maintain()
        }

        func summary() throws -> Summary { try Summary(agg.snapshot(timestamp: t)) }
    }

    static func rows(_ s: Summary) -> [String] {
        s.exits.map { "exit \($0.vm)/\($0.vcpu.map(String.init) ?? "-")/\($0.reason)=\($0.count)" }
            + s.userspaceExits.map { "user \($0.vm)/\($0.vcpu.map(String.init) ?? "-")/\($0.reason)=\($0.count)" }
            + s.eventRows.map { "event \($0.vm)/\($0.vcpu.map(String.init) ?? "-")/\($0.event)=\($0.count)" }
    }

    @Test func retiringKeepsEveryTotalAndHistogram() throws {
        let host = Host()
        host.set(101, vm: 100, vcpu: 0)
        host.set(102, vm: 100, vcpu: 1)
        host.set(201, vm: 200, vcpu: 0)
        var rig = Rig(host: host)
        rig.run(101, reason: 30, 40)
        rig.run(101, reason: 12, 5, rip: 0x2000)
        rig.run(102, reason: 30, 7)
        rig.run(201, reason: 30, 3)
        // Thread 101 leaves an exit waiting for its entry when it exits.
        let open = TraceEvent(timestamp: rig.t, tid: 101, event: 0, reason: 30, isa: 1)
        rig.writers[0].add(open, hasReason: true)
        rig.pairer.exit(open)

        let before = try rig.summary()
        #expect(Self.rows(before) == [
            "exit 100/0/HLT=5", "exit 100/0/IO_INSTRUCTION=41", "exit 100/1/IO_INSTRUCTION=7",
            "exit 200/0/IO_INSTRUCTION=3",
            "user 100/0/KVM_EXIT_IO=45", "user 100/1/KVM_EXIT_IO=7", "user 200/0/KVM_EXIT_IO=3",
            "event 100/0/kvm_entry=45", "event 100/0/kvm_exit=46", "event 100/0/kvm_pio=45",
            "event 100/0/kvm_userspace_exit=45",
            "event 100/1/kvm_entry=7", "event 100/1/kvm_exit=7", "event 100/1/kvm_pio=7",
            "event 100/1/kvm_userspace_exit=7",
            "event 200/0/kvm_entry=3", "event 200/0/kvm_exit=3", "event 200/0/kvm_pio=3",
            "event 200/0/kvm_userspace_exit=3",
        ])
        let snapBefore = rig.agg.snapshot(timestamp: rig.t)
        #expect(snapBefore.occupancy == Occupancy(liveThreads: 3, liveSeries: 4, retiredThreads: 0, retiredRows: 0))

        rig.agg.retire([101])
        rig.maintain()
        let after = try rig.summary()
        // Every row, histogram and top-RIP list is what it was; the waiting exit is open at end now.
        #expect(Self.rows(after) == Self.rows(before))
        #expect(after.exits == before.exits)
        #expect(after.exitsByVM() == before.exitsByVM())
        #expect(after.events.map(\.total) == before.events.map(\.total))
        var pairing = before.pairing
        pairing.openAtEnd += 1
        #expect(after.pairing == pairing)
        #expect(after.exits[1].histogram == HistogramSnapshot(recording: (1...40).map { UInt64($0) * 100 }))
        let snapAfter = rig.agg.snapshot(timestamp: rig.t)
        #expect(snapAfter.occupancy == Occupancy(liveThreads: 2, liveSeries: 2, retiredThreads: 1, retiredRows: 1))
        #expect(rig.pairer.store.all.map(\.tid).sorted() == [102, 201])
        #expect(rig.agg.shards.map { $0.occupancy.keys }.reduce(0, +) == 16)  // 4 keys of 102 and of 201 in each shard
        #expect(rig.agg.board?.pending == 0)

        // The tid comes back as vCPU 2 of another VM: a new identity, new keys, a new series; VM 100 unchanged.
        host.set(101, vm: 300, vcpu: 2)
        rig.run(101, reason: 30, 4)
        let reused = try rig.summary()
        #expect(Self.rows(reused).filter { $0.contains(" 100/") } == Self.rows(before).filter { $0.contains(" 100/") })
        #expect(Self.rows(reused).filter { $0.contains(" 300/") } == [
            "exit 300/2/IO_INSTRUCTION=4", "user 300/2/KVM_EXIT_IO=4", "event 300/2/kvm_entry=4",
            "event 300/2/kvm_exit=4", "event 300/2/kvm_pio=4", "event 300/2/kvm_userspace_exit=4",
        ])
        let fresh = rig.pairer.store.all.filter { $0.tid == 101 }
        #expect(fresh.map { $0.histogram.snapshot() } == [HistogramSnapshot(recording: [100, 200, 300, 400])])
        #expect(reused.exits.first { $0.vm == 300 }?.histogram == HistogramSnapshot(recording: [100, 200, 300, 400]))
    }

    /// A writer that has not yet carried out a retirement keeps counting the old thread: those counts still
    /// go to the retired row, whenever the writer hands them over.
    @Test func lateWriterHandsOverToTheRetiredRow() throws {
        let host = Host()
        host.set(101, vm: 100, vcpu: 0)
        var rig = Rig(host: host)
        rig.run(101, reason: 30, 6)
        rig.agg.retire([101])
        rig.writers[0].maintain()
        let mid = try rig.summary()
        #expect(mid.exits.map(\.count) == [6])
        // Shard 1 counts two more events of the old thread before it looks at the board.
        rig.writers[1].add(TraceEvent(timestamp: rig.t, tid: 101, event: 2), hasReason: false)
        rig.writers[1].add(TraceEvent(timestamp: rig.t, tid: 101, event: 2), hasReason: false)
        rig.writers[1].maintain()
        rig.pairer.maintain()
        let end = try rig.summary()
        #expect(end.eventRows.map { "\($0.vm)/\($0.vcpu!)/\($0.event)=\($0.count)" }
                == ["100/0/kvm_entry=6", "100/0/kvm_exit=6", "100/0/kvm_pio=8", "100/0/kvm_userspace_exit=6"])
        #expect(rig.agg.snapshot(timestamp: 0).occupancy.liveThreads == 0)
    }

    /// Beyond the retired-VM history, the oldest stopped VM's rows fold into VM -1 ("other"): the host totals
    /// do not change and nothing is dropped.
    @Test func historyBeyondCapacityFoldsIntoOther() throws {
        let host = Host()
        for vm in Int32(1)...3 { host.set(vm * 100 + 1, vm: vm * 100, vcpu: 0) }
        var rig = Rig(host: host, retiredVMCapacity: 2)
        rig.run(101, reason: 30, 2)
        rig.run(201, reason: 30, 3)
        rig.run(301, reason: 12, 4)
        let before = try rig.summary()
        for tid: Int32 in [101, 201, 301] {
            rig.agg.retire([tid])
            rig.maintain()
        }
        let after = try rig.summary()
        #expect(after.exits.map { "\($0.vm)/\($0.vmName ?? "")/\($0.reason)=\($0.count)" }
                == ["-1/other/IO_INSTRUCTION=2", "200/vm200/IO_INSTRUCTION=3", "300/vm300/HLT=4"])
        #expect(after.events.map(\.total) == before.events.map(\.total))
        #expect(after.exits.first?.histogram == HistogramSnapshot(recording: [100, 200]))
        let snap = rig.agg.snapshot(timestamp: 0)
        #expect(snap.occupancy == Occupancy(liveThreads: 0, liveSeries: 0, retiredThreads: 3, retiredRows: 3,
                                            foldedVMs: 1))
    }

    /// The live view's reset (`r`: later snapshots minus the one taken at the reset) across retirements: a
    /// thread retired after the reset has its pre-reset counts and latencies subtracted from the retired row
    /// they went to (its VM × vCPU's, or `other` once its VM folded), so the view shows exactly what came
    /// after the reset; a reused tid's new thread counts from zero.
    @Test func resetBaselineFollowsRetiredThreads() throws {
        let host = Host()
        host.set(101, vm: 100, vcpu: 0)
        host.set(102, vm: 100, vcpu: 1)
        host.set(201, vm: 200, vcpu: 0)
        host.set(301, vm: 300, vcpu: 0)
        var rig = Rig(host: host, retiredVMCapacity: 2)
        rig.run(101, reason: 30, 40)
        rig.run(102, reason: 30, 7)
        rig.run(201, reason: 12, 5)
        rig.run(301, reason: 30, 3)
        rig.agg.retire([102])  // retired before the reset: its row is in the baseline too
        rig.maintain()
        let reset = rig.agg.snapshot(timestamp: rig.t)

        rig.run(101, reason: 30, 2)
        rig.agg.retire([101, 201])
        rig.maintain()
        rig.agg.retire([301])  // a third stopped VM: the oldest (100) folds into other
        rig.maintain()
        host.set(201, vm: 400, vcpu: 3)  // 201 reused by another VM's vCPU
        rig.run(201, reason: 30, 4)
        let now = rig.agg.snapshot(timestamp: rig.t)
        let since = try Summary(now.subtracting(reset))
        #expect(since.exits.filter { $0.count > 0 }.map { "\($0.vm)/\($0.vcpu.map(String.init) ?? "-")/\($0.reason)=\($0.count)" }
                == ["-1/-/IO_INSTRUCTION=2", "400/3/IO_INSTRUCTION=4"])
        // The two exits after the reset, latencies 100 and 200 ns: every earlier bucket subtracted (min and max
        // then come from the buckets' bounds).
        let h = try #require(since.exits.first { $0.vm == -1 }?.histogram)
        let want = HistogramSnapshot(recording: [100, 200])
        #expect(h.bucketIndices == want.bucketIndices && h.counts == want.counts)
        #expect(h.count == 2 && h.sum == 300)
        #expect(since.events.map(\.total) == [6, 6, 6, 6])
        #expect(since.exits.map(\.count).reduce(0, +) == 6)
    }

    /// A writer thread counts while the snapshot side retires threads and snapshots: no row ever goes down,
    /// and the end totals are exact.
    @Test func countersNeverDecreaseWhileRetiring() throws {
        let host = Host()
        for i in 0..<64 { host.set(Int32(1_000 + i), vm: Int32(10 + i % 4), vcpu: UInt32(i / 4)) }
        let agg = Aggregator(catalog: Self.catalog(), shardCount: 1,
                             resolver: { tid in host.who.withLock { $0[tid] } }, retirement: true)
        let writer = Mutex<ShardWriter?>(agg.writer(shard: 0))
        let done = Atomic<Bool>(false)
        let checked = Atomic<Int>(0)
        let perThread = 2_000
        let t = Thread {
            var w = writer.withLock { $0.take()! }
            for round in 0..<perThread {
                // Halfway, until the snapshot side has checked twice (a deadline of 60 s): on a loaded machine the
                // writer once finished before the first snapshot did, and nothing was checked while it counted.
                if round == perThread / 2 {
                    let end = ContinuousClock.now + .seconds(60)
                    while checked.load(ordering: .acquiring) < 2 && ContinuousClock.now < end { usleep(1_000) }
                }
                for i in 0..<64 {
                    w.add(TraceEvent(timestamp: 0, tid: Int32(1_000 + i), event: 2), hasReason: false)
                }
                if round % 50 == 0 { w.maintain() }
            }
            w.maintain()
            done.store(true, ordering: .releasing)
        }
        t.start()
        var last: [String: UInt64] = [:]
        var retiredSoFar = 0
        var checks = 0
        while true {
            let finished = done.load(ordering: .acquiring)
            if retiredSoFar < 60 {
                agg.retire([Int32(1_000 + retiredSoFar)])
                retiredSoFar += 1
            }
            let s = try Summary(agg.snapshot(timestamp: 0))
            for r in s.eventRows {
                let k = "\(r.vm)/\(r.vcpu!)"
                #expect(r.count >= last[k] ?? 0, "row \(k) went down")
                last[k] = r.count
            }
            checks += 1
            checked.store(checks, ordering: .releasing)
            if finished { break }
        }
        let end = try Summary(agg.snapshot(timestamp: 0))
        #expect(end.total(of: "kvm_pio") == UInt64(64 * perThread))
        #expect(end.eventRows.count == 64)
        // A retired thread that kept counting (retired too early, as a reused tid would be) restarts as new keys
        // of the same identity: its row sums both.
        #expect(end.eventRows.allSatisfy { $0.count == UInt64(perThread) })
        #expect(checks > 1)
    }

    /// retireExitedThreads: a vanished thread retires once it has been gone for the delay (twice that without a
    /// name), a reused tid (another start time) at once; live threads stay.
    @Test func exitedThreadsRetireAfterTheDelay() throws {
        let host = Host()
        host.set(101, vm: 100, vcpu: 0)
        host.set(102, vm: 100, vcpu: 1)
        host.set(103, vm: 100, vcpu: 2)
        // Start times: 101 and 102 alive (1), 103 alive; 104 is never known to the resolver (nameless).
        let starts = Mutex<[Int32: UInt64]>([101: 1, 102: 1, 103: 1])
        let agg = Aggregator(catalog: Self.catalog(), shardCount: 1, resolver: { tid in host.who.withLock { $0[tid] } },
                             retirement: true, startTime: { tid, _ in starts.withLock { $0[tid] } },
                             retireDelay: .seconds(1))
        var w = agg.writer(shard: 0)
        for tid: Int32 in [101, 102, 103, 104] { w.add(TraceEvent(timestamp: 0, tid: tid, event: 2), hasReason: false) }
        #expect(agg.retireExitedThreads() == [])  // 104 (nameless, no start time) is gone from now on
        starts.withLock {
            $0[101] = nil  // exited
            $0[102] = 2  // tid reused by a thread started later
        }
        #expect(agg.retireExitedThreads() == [102])
        #expect(agg.retireExitedThreads() == [])
        // Delays of a second: on a loaded machine (CI's two CPUs) a stall of 0.8 s between the checks would be needed
        // for 104 to be due with 101 (with 200 ms it was, once).
        usleep(1_200_000)
        #expect(agg.retireExitedThreads() == [101])
        usleep(1_000_000)
        #expect(agg.retireExitedThreads() == [104])
        w.maintain()
        let snap = agg.snapshot(timestamp: 0)
        #expect(snap.occupancy.liveThreads == 1)
        #expect(snap.occupancy.retiredThreads == 3)
        #expect(try Summary(snap).eventRows.map { "\($0.vm)/\($0.vcpu.map(String.init) ?? "-")=\($0.count)" }
                == ["100/0=1", "100/1=1", "100/2=1", "104/-=1"])
    }

    /// A thread gone before its first lookup is its own VM only provisionally: the snapshot says so, serve's
    /// summary holds its rows back, and once named (saved tgids) it shows under its real VM and vCPU — never
    /// first as `vm=<tid>` and then as its VM.
    @Test func unnamedThreadsAreHeldBackUntilNamed() throws {
        let host = Host()
        host.set(201, vm: 200, vcpu: 0)
        let agg = Aggregator(catalog: Self.catalog(), shardCount: 1, resolver: { tid in host.who.withLock { $0[tid] } })
        var w = agg.writer(shard: 0)
        for tid: Int32 in [201, 202, 202] { w.add(TraceEvent(timestamp: 0, tid: tid, event: 2), hasReason: false) }
        let snap = agg.snapshot(timestamp: 0)
        #expect(snap.unnamedThreads == [202])
        let held = try Summary(snap, filter: SummaryFilter(excludedTids: snap.unnamedThreads))
        #expect(held.eventRows.map { "\($0.vm)/\($0.vcpu.map(String.init) ?? "-")=\($0.count)" } == ["200/0=1"])
        // The host's event total still counts the held-back thread's events.
        #expect(held.events.first { $0.name == "kvm_pio" }?.total == 3)
        agg.resolveUnresolved { $0 == 202 ? ThreadIdentity(vm: 200, vmName: "web", vcpu: 1) : nil }
        let named = agg.snapshot(timestamp: 1)
        #expect(named.unnamedThreads.isEmpty)
        #expect(try Summary(named, filter: SummaryFilter(excludedTids: named.unnamedThreads)).eventRows
                    .map { "\($0.vm)/\($0.vcpu.map(String.init) ?? "-")=\($0.count)" } == ["200/0=1", "200/1=2"])
    }
}
