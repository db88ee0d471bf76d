import Foundation
import Synchronization
import KVMAnalysis
import KVMExits
import Testing

@Suite struct AggregatorTests {
    static func catalog() -> EventCatalog {
        var c = EventCatalog()
        c.add(system: "kvm", name: "kvm_exit")
        c.add(system: "kvm", name: "kvm_entry")
        c.add(system: "kvm", name: "kvm_pio")
        c.add(system: "kvm", name: "kvm_userspace_exit")
        return c
    }

    /// Four writers, each the single writer of its shard, while a reader snapshots: totals exact.
    @Test func severalWritersTotalsExact() throws {
        let agg = Aggregator(catalog: Self.catalog(), shardCount: 4) { ThreadIdentity(vm: $0 / 100, vcpu: UInt32($0 % 100)) }
        let perWriter = 200_000
        let done = DispatchGroup()
        for w in 0..<4 {
            done.enter()
            let writer = Box(agg.writer(shard: w))
            Thread {
                for i in 0..<perWriter {
                    // tids 100..103 (VM 1), reasons 12 (HLT) and 30 (IO_INSTRUCTION) for exits, pio otherwise.
                    let tid = Int32(100 + (i % 4))
                    if i % 3 == 0 {
                        writer.value.add(TraceEvent(timestamp: UInt64(i), tid: tid, event: 2, cpu: UInt16(w)), hasReason: false)
                    } else {
                        writer.value.add(TraceEvent(timestamp: UInt64(i), tid: tid, event: 0, cpu: UInt16(w),
                                                    reason: i % 3 == 1 ? 12 : 30, isa: 1), hasReason: true)
                    }
                }
                done.leave()
            }.start()
        }
        var last: UInt64 = 0
        while done.wait(timeout: .now() + 0.001) == .timedOut {
            let s = agg.snapshot(timestamp: 0)
            let total = s.eventTotals.reduce(0, +)
            #expect(total >= last, "snapshots never go backwards")
            last = total
        }
        let snap = agg.snapshot(timestamp: 0)
        let pio = (0..<perWriter).filter { $0 % 3 == 0 }.count * 4
        let hlt = (0..<perWriter).filter { $0 % 3 == 1 }.count * 4
        let io = (0..<perWriter).filter { $0 % 3 == 2 }.count * 4
        #expect(snap.eventTotals == [UInt64(hlt + io), 0, UInt64(pio), 0])
        let summary = try Summary(snap)
        #expect(summary.children.map { "\($0.event)(\($0.reason))=\($0.total)" }
                == ["kvm_exit(HLT)=\(hlt)", "kvm_exit(IO_INSTRUCTION)=\(io)"])
        // Per vCPU rows: each tid got exactly a quarter of each writer's events of each kind.
        let rows = summary.exits.map { "\($0.vm)/\($0.vcpu!)/\($0.reason)=\($0.count)" }
        #expect(rows == (0..<4).flatMap { v in
            ["1/\(v)/HLT=\(Self.count(perWriter, mod3: 1, tid: v) * 4)",
             "1/\(v)/IO_INSTRUCTION=\(Self.count(perWriter, mod3: 2, tid: v) * 4)"]
        })
        #expect(snap.overflowEvents == 0)
    }

    static func count(_ n: Int, mod3: Int, tid: Int) -> Int {
        (0..<n).filter { $0 % 3 == mod3 && $0 % 4 == tid }.count
    }

    /// Ten times more distinct keys than a new shard's table: the table grows, every key keeps its own count,
    /// nothing is unattributed.
    @Test func tableGrowsEveryKeyCounted() throws {
        let agg = Aggregator(catalog: Self.catalog(), shardCount: 1)
        var w = agg.writer(shard: 0)
        let keys = AggregateShard.initialCapacity * 10
        for round in 0..<3 {
            for tid in 0..<keys where tid % 3 >= round {
                w.add(TraceEvent(timestamp: 0, tid: Int32(tid), event: 2), hasReason: false)
            }
        }
        let snap = agg.snapshot(timestamp: 0)
        // tid % 3 == 0: once, 1: twice, 2: three times.
        #expect(snap.eventTotals[2] == UInt64((0..<keys).reduce(0) { $0 + $1 % 3 + 1 }))
        #expect(snap.counters.count == keys)
        #expect(snap.counters.allSatisfy { $0.count == UInt64($0.key.tid % 3 + 1) })
        #expect(snap.overflowEvents == 0)
        let (used, capacity) = agg.shards[0].occupancy
        #expect(used == keys)
        #expect(capacity == 32_768)  // the first power of two at least twice the keys
    }

    /// Writers only queue new tids: the resolver (/proc reads, live) runs on the snapshot side, once per thread,
    /// and the vCPU number a writer saw is kept.
    @Test func identityIsResolvedOffTheWriter() throws {
        let calls = Mutex<[Int32]>([])
        let agg = Aggregator(catalog: Self.catalog(), shardCount: 2) { tid in
            calls.withLock { $0.append(tid) }
            return ThreadIdentity(vm: 7, vmName: "g")
        }
        var writers = [agg.writer(shard: 0), agg.writer(shard: 1)]
        for tid: Int32 in [31, 32, 33] {
            for w in writers.indices {
                writers[w].add(TraceEvent(timestamp: 0, tid: tid, event: 2), hasReason: false)
                writers[w].add(TraceEvent(timestamp: 0, tid: tid, event: 0, reason: 12, vcpu: UInt32(tid - 30), isa: 1),
                               hasReason: true)
            }
        }
        #expect(calls.withLock { $0 }.isEmpty)
        let snap = agg.snapshot(timestamp: 0)
        #expect(calls.withLock { $0 } == [31, 32, 33])
        #expect(snap.threads.keys.sorted() == [31, 32, 33])
        #expect(snap.threads.values.map(\.vcpu).sorted { ($0 ?? 0) < ($1 ?? 0) } == [1, 2, 3])
        #expect(try Summary(snap).exits.map { "\($0.vm)/\($0.vcpu!)/\($0.reason)=\($0.count)" }
                == ["7/1/HLT=2", "7/2/HLT=2", "7/3/HLT=2"])
        _ = agg.snapshot(timestamp: 0)
        #expect(calls.withLock { $0.count } == 3)
    }

    @Test func vcpuFromThreadName() {
        #expect(ThreadIdentity.vcpu(fromThreadName: "CPU 3/KVM") == 3)
        #expect(ThreadIdentity.vcpu(fromThreadName: "CPU 12/KVM") == 12)
        #expect(ThreadIdentity.vcpu(fromThreadName: "qemu-system-x86") == nil)
        #expect(ThreadIdentity.vcpu(fromThreadName: "CPU x/KVM") == nil)
    }

    @Test func guestNamesLikeKVMStat() {
        #expect(GuestName.fromQEMUArguments(["qemu", "-name", "guest=web1,debug-threads=on"]) == "web1")
        #expect(GuestName.fromQEMUArguments(["qemu", "-name", "db,,prod,process=x"]) == "db,prod")
        #expect(GuestName.fromQEMUArguments(["qemu", "-name", "plain"]) == "plain")
        #expect(GuestName.fromQEMUArguments(["qemu", "-m", "1G"]) == nil)
    }

    /// QEMU's `-uuid` (as libvirt passes its domain's), in each spelling QEMU takes, lowercased; no UUID otherwise.
    @Test func uuidFromTheQEMUCommandLine() {
        let u = "5d1e8a3c-6f0b-4b7e-9c1a-0123456789ab"
        #expect(GuestName.uuidFromQEMUArguments(["qemu", "-name", "guest=web", "-uuid", u, "-m", "1G"]) == u)
        #expect(GuestName.uuidFromQEMUArguments(["qemu", "--uuid", u.uppercased()]) == u)
        #expect(GuestName.uuidFromQEMUArguments(["qemu", "-uuid=\(u)"]) == u)
        #expect(GuestName.uuidFromQEMUArguments(["qemu", "--uuid=\(u)"]) == u)
        #expect(GuestName.uuidFromQEMUArguments(["qemu", "-m", "1G"]) == nil)
        #expect(GuestName.uuidFromQEMUArguments(["qemu", "-uuid"]) == nil)
        #expect(GuestName.uuidFromQEMUArguments(["qemu", "-uuid", "5d1e8a3c6f0b4b7e9c1a0123456789ab"]) == nil)
        #expect(GuestName.uuidFromQEMUArguments(["qemu", "-uuid", "5d1e8a3c-6f0b-4b7e-9c1a-0123456789ag"]) == nil)
    }
}

final class Box<T>: @unchecked Sendable {
    var value: T
    init(_ v: T) { value = v }
}
