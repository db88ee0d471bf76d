import Foundation
import KVMExits
import Synchronization
import Testing

/// The namer's wake-up (``Aggregator/newThreadWake``): a writer's first sight of a thread signals it, once per
/// burst, and a resolution then names the thread while its /proc entry is there.
@Suite struct NewThreadWakeTests {
    static func catalog() -> EventCatalog {
        var c = EventCatalog()
        c.add(system: "kvm", name: "kvm_pio")
        return c
    }

    @Test func firstSightSignalsOncePerBurstAndResolvesAtOnce() throws {
        let asked = Mutex<[Int32]>([])
        let agg = Aggregator(catalog: Self.catalog(), shardCount: 1, resolver: { tid in
            asked.withLock { $0.append(tid) }
            return ThreadIdentity(vm: 7, vmName: "guest", vcpu: UInt32(tid - 100), comm: "CPU \(tid - 100)/KVM")
        }, wakeOnNewThreads: true)
        let wake = try #require(agg.newThreadWake)
        var w = agg.writer(shard: 0)
        // Three new threads in a burst: one signal outstanding, not three.
        for tid: Int32 in [100, 101, 102] { w.add(TraceEvent(timestamp: 1, tid: tid, event: 0, cpu: 0), hasReason: false) }
        #expect(wake.wait(timeout: .now()) == .success)
        #expect(wake.wait(timeout: .now()) == .timedOut)
        agg.takeNewThreadSignal()
        agg.resolveNewThreads()
        #expect(asked.withLock { $0 } == [100, 101, 102])
        // Known threads' events signal nothing; a new one signals again once re-armed.
        for tid: Int32 in [100, 101, 102] { w.add(TraceEvent(timestamp: 2, tid: tid, event: 0, cpu: 0), hasReason: false) }
        #expect(wake.wait(timeout: .now()) == .timedOut)
        w.add(TraceEvent(timestamp: 3, tid: 103, event: 0, cpu: 0), hasReason: false)
        #expect(wake.wait(timeout: .now()) == .success)
        let snap = agg.snapshot(timestamp: 0)
        #expect(asked.withLock { $0 } == [100, 101, 102, 103])
        #expect(snap.threads.keys.sorted() == [100, 101, 102, 103])
        #expect(snap.threads.values.map(\.vcpu).compactMap { $0 }.sorted() == [0, 1, 2, 3])
    }

    /// Without `wakeOnNewThreads` (report, tests) there is no semaphore and no signal.
    @Test func offByDefault() {
        let agg = Aggregator(catalog: Self.catalog(), shardCount: 1)
        #expect(agg.newThreadWake == nil)
    }
}
