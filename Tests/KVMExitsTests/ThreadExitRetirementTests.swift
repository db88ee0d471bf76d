import KVMAnalysis
import KVMExits
import Synchronization
import Testing

/// Threads retire on their exit records (`sched:sched_process_exit`, noted by the readers): no /proc start
/// time is read, every total stays what it was, and the tid's next thread is a new one.
@Suite struct ThreadExitRetirementTests {
    typealias Host = RetirementTests.Host

    /// Calls of the /proc start-time source.
    final class Calls: Sendable {
        let count = Atomic<Int>(0)
    }

    /// ``RetirementTests/Rig`` over an aggregate that retires on exit records, whose /proc start-time source
    /// counts its calls.
    static func rig(host: Host, startTimeCalls: Calls) -> RetirementTests.Rig {
        RetirementTests.Rig(host: host, startTime: { _, _ in
            startTimeCalls.count.add(1, ordering: .relaxed)
            return 1
        }, threadExits: true)
    }

    @Test func anExitRecordRetiresItsThreadWithoutProc() throws {
        let host = Host()
        host.set(101, vm: 100, vcpu: 0)
        host.set(102, vm: 100, vcpu: 1)
        let calls = Calls()
        var rig = Self.rig(host: host, startTimeCalls: calls)
        rig.run(101, reason: 30, 40)
        rig.run(102, reason: 30, 7)
        let before = try rig.summary()
        #expect(RetirementTests.rows(before) == [
            "exit 100/0/IO_INSTRUCTION=40", "exit 100/1/IO_INSTRUCTION=7",
            "user 100/0/KVM_EXIT_IO=40", "user 100/1/KVM_EXIT_IO=7",
            "event 100/0/kvm_entry=40", "event 100/0/kvm_exit=40", "event 100/0/kvm_pio=40",
            "event 100/0/kvm_userspace_exit=40",
            "event 100/1/kvm_entry=7", "event 100/1/kvm_exit=7", "event 100/1/kvm_pio=7",
            "event 100/1/kvm_userspace_exit=7",
        ])

        // 101 exits at `t`, 102 later; 555 is no vCPU thread (never seen). Caught up to `t`: 101 only.
        let t = rig.t
        rig.agg.noteThreadExit(101, timestamp: t)
        rig.agg.noteThreadExit(555, timestamp: t - 1)
        rig.agg.noteThreadExit(102, timestamp: t + 5_000)
        #expect(rig.agg.takeThreadExits(through: t) == [101])
        // 102's (later) and 555's (kept for the grace: its thread's events may still come) stay.
        #expect(rig.agg.pendingThreadExits == 2)
        rig.agg.retire([101], onExit: true)
        rig.maintain()

        let after = try rig.summary()
        #expect(RetirementTests.rows(after) == RetirementTests.rows(before))
        #expect(after.exitsByVM() == before.exitsByVM())
        #expect(after.pairing == before.pairing)
        let snap = rig.agg.snapshot(timestamp: t)
        #expect(snap.occupancy == Occupancy(liveThreads: 1, liveSeries: 1, retiredThreads: 1, retiredRows: 1,
                                            threadExits: 3, retiredOnExit: 1))
        #expect(rig.pairer.store.all.map(\.tid) == [102])

        // The tid's next thread (vCPU 3 of VM 300) is a new one: new identity, keys and series; VM 100 unchanged.
        host.set(101, vm: 300, vcpu: 3)
        rig.run(101, reason: 30, 2)
        let reused = try rig.summary()
        #expect(RetirementTests.rows(reused).filter { $0.contains(" 100/") } == RetirementTests.rows(before))
        #expect(RetirementTests.rows(reused).filter { $0.contains(" 300/") } == [
            "exit 300/3/IO_INSTRUCTION=2", "user 300/3/KVM_EXIT_IO=2", "event 300/3/kvm_entry=2",
            "event 300/3/kvm_exit=2", "event 300/3/kvm_pio=2", "event 300/3/kvm_userspace_exit=2",
        ])
        #expect(rig.pairer.store.all.map(\.tid).sorted() == [101, 102])

        // 102's record is taken once caught up to it; 555's is dropped once the grace has passed.
        #expect(rig.agg.takeThreadExits(through: t + 5_000) == [102])
        #expect(rig.agg.pendingThreadExits == 1)
        #expect(rig.agg.takeThreadExits(through: t - 1 + Aggregator.exitGrace) == [])
        #expect(rig.agg.pendingThreadExits == 0)
        // No /proc start time was read: not at first sight, not to retire.
        #expect(calls.count.load(ordering: .relaxed) == 0)
    }

    /// The /proc check stays as a safety net: with exit records it reads a live thread's start time on its
    /// first run (none at first sight) and only retires a thread found gone after the delay.
    @Test func theSafetyNetTakesStartTimesOnItsFirstRun() throws {
        let host = Host()
        host.set(101, vm: 100, vcpu: 0)
        let starts = Mutex<[Int32: UInt64]>([101: 7])
        let agg = Aggregator(catalog: RetirementTests.catalog(), shardCount: 1,
                             resolver: { tid in host.who.withLock { $0[tid] } }, retirement: true,
                             startTime: { tid, _ in starts.withLock { $0[tid] } }, retireDelay: .milliseconds(1),
                             threadExits: true)
        var w = agg.writer(shard: 0)
        w.add(TraceEvent(timestamp: 0, tid: 101, event: 2), hasReason: false)
        #expect(agg.retireExitedThreads() == [])  // start time 7 taken now
        #expect(agg.retireExitedThreads() == [])
        starts.withLock { $0[101] = 8 }  // the tid now names a thread started later: retired at once
        #expect(agg.retireExitedThreads() == [101])
        w.maintain()
        let snap = agg.snapshot(timestamp: 0)
        #expect(snap.occupancy == Occupancy(liveThreads: 0, liveSeries: 0, retiredThreads: 1, retiredRows: 1,
                                            threadExits: 0, retiredOnExit: 0))
    }
}
