import Foundation
import KVMAnalysis
import KVMExits
import KVMHost
import KVMSources
import Testing

/// Exit latency end to end from raw ring-buffer pages: sub-buffers built byte for byte from real kernels'
/// kvm_exit/kvm_entry formats, with known timestamps, decoded, merged across CPUs, paired, aggregated and
/// summarized; every count, latency statistic, percentile, reason name and top RIP checked against the values
/// the test put in.
@Suite struct PairingAcrossKernelsTests {
    struct Reason: Sendable {
        var code: UInt32
        var name: String
        var flags: [String] = []
        var blocking = false
    }

    struct KernelCase: Sendable, CustomTestStringConvertible {
        var label: String
        var dir: String
        /// Value written to kvm_exit's `isa` field; nil where the format has none (arm64).
        var isaField: UInt8?
        var isa: ISA
        var reasonField = "exit_reason"
        var exitRIPField = "guest_rip"
        var entryRIPField: String? = "rip"
        var reasons: [Reason]
        /// arm64: no vcpu_id anywhere, the vCPU number comes from the thread name.
        var vcpuFromThreadName = false
        var testDescription: String { label }
    }

    static let vmxReasons = [
        Reason(code: 12, name: "HLT", blocking: true),
        Reason(code: 30, name: "IO_INSTRUCTION"),
        Reason(code: 48, name: "EPT_VIOLATION"),
        Reason(code: 33, name: "INVALID_STATE"),
        Reason(code: 0x8000_0021, name: "INVALID_STATE", flags: ["FAILED_VMENTRY"]),
        Reason(code: 0x4242, name: "UNKNOWN(0x4242)"),
    ]

    static let cases: [KernelCase] = [
        KernelCase(label: "4.19-x86 (no vcpu_id in kvm_exit, no rip in kvm_entry)", dir: "4.19-x86", isaField: 1,
                   isa: .vmx, entryRIPField: nil, reasons: vmxReasons),
        KernelCase(label: "5.10-x86", dir: "5.10-x86", isaField: 1, isa: .vmx, reasons: vmxReasons),
        KernelCase(label: "6.8-x86", dir: "6.8-x86", isaField: 1, isa: .vmx, reasons: vmxReasons),
        KernelCase(label: "6.18-x86 (requests)", dir: "6.18-x86", isaField: 1, isa: .vmx, reasons: vmxReasons),
        KernelCase(label: "6.18-x86 SVM host", dir: "6.18-x86", isaField: 2, isa: .svm, reasons: [
            Reason(code: 0x400, name: "npf"),
            Reason(code: 0x7c, name: "msr"),
            Reason(code: 0x78, name: "hlt", blocking: true),
            Reason(code: 0x7b, name: "io"),
            Reason(code: 0xffff_ffff, name: "invalid_guest_state"),
            Reason(code: 0x3ff, name: "UNKNOWN(0x3ff)"),
        ]),
        KernelCase(label: "5.15-arm64 (esr_ec, vcpu_pc)", dir: "5.15-arm64", isaField: nil, isa: .arm64,
                   reasonField: "esr_ec", exitRIPField: "vcpu_pc", entryRIPField: "vcpu_pc", reasons: [
                       Reason(code: 0x01, name: "WFx", blocking: true),
                       Reason(code: 0x24, name: "DABT_LOW"),
                       Reason(code: 0x16, name: "HVC64"),
                       Reason(code: 0x18, name: "SYS64"),
                       Reason(code: 0x3f, name: "UNKNOWN(0x3f)"),
                   ], vcpuFromThreadName: true),
    ]

    /// Every kernel directory of the fixtures has a case here (a new fixture without one fails).
    @Test func everyFixtureKernelIsCovered() throws {
        let dirs = try FileManager.default.contentsOfDirectory(atPath: Fixtures.root.appendingPathComponent("formats").path)
            .filter { !$0.hasSuffix(".md") }
        #expect(Set(dirs) == Set(Self.cases.map(\.dir)))
        #expect(Set(Self.cases.map(\.isa)) == [.vmx, .svm, .arm64])
    }

    // MARK: - The known workload

    struct Thread {
        var tid: Int32
        var vm: Int32
        var vcpu: UInt32
    }

    static let threads = [Thread(tid: 1001, vm: 1000, vcpu: 0), Thread(tid: 1002, vm: 1000, vcpu: 1),
                          Thread(tid: 2001, vm: 2000, vcpu: 0)]

    struct RowKey: Hashable {
        var vm: Int32
        var vcpu: UInt32
        var reason: String
        var flags: [String]
    }

    struct Expected {
        var count: UInt64 = 0
        var latencies: [UInt64] = []
        var rips: [UInt64: UInt64] = [:]
        var blocking = false
    }

    /// One event as placed on a CPU: (time, generation order, payload).
    typealias Placed = (ts: UInt64, seq: Int, payload: [UInt8])

    /// Builds each CPU's sub-buffers from events placed on it, in time order (generation order on ties).
    static func pages(_ perCPU: [[Placed]], subbufSize: Int = 4096) -> [(cpu: UInt16, pages: [[UInt8]])] {
        perCPU.enumerated().map { cpu, events in
            var b = RingBufferPageBuilder(subbufSize: subbufSize)
            for e in events.sorted(by: { ($0.ts, $0.seq) < ($1.ts, $1.seq) }) {
                b.append(timestamp: e.ts, payload: e.payload)
            }
            return (UInt16(cpu), b.finish())
        }
    }

    @Test(arguments: cases)
    func everyLatencyCountAndNameExactly(_ k: KernelCase) throws {
        let formats = try Fixtures.formats(k.dir)
        let exitB = try EventPayloadBuilder(formats: formats, event: "kvm_exit")
        let entryB = try EventPayloadBuilder(formats: formats, event: "kvm_entry")
        #expect(exitB.has("vcpu_id") == (k.dir != "4.19-x86" && k.dir != "5.15-arm64"))
        #expect(exitB.has("requests") == (k.dir == "6.18-x86"))

        var rng = SplitMix64(seed: 0x5eed_0000 &+ UInt64(k.label.utf8.count))
        var perCPU: [[Placed]] = [[], []]
        var seq = 0
        var expected: [RowKey: Expected] = [:]
        var exits: UInt64 = 0
        var migrations = 0
        let perThread = 200

        for (ti, th) in Self.threads.enumerated() {
            var t: UInt64 = 1_000_000 + UInt64(ti) * 37
            var cpu = ti % 2
            for n in 0..<perThread {
                let ri = Int(rng.next() % UInt64(k.reasons.count))
                let reason = k.reasons[ri]
                let rip = 0xffff_ffff_8100_0000 + UInt64(ri) * 0x1000 + (rng.next() % 5) * 0x10
                var latency: UInt64
                if reason.blocking && n % 40 == 0 {
                    latency = 2_000_000_000 + rng.next() % 1000  // a 2 s halt: needs a time-extend event
                } else if n % 77 == 0 {
                    latency = 0
                } else {
                    let e = rng.next() % 23
                    latency = (1 << e) + rng.next() % (1 << e)  // 1 ns ... 8 ms, log-uniform
                }
                let migrate = rng.next() % 8 == 0
                if migrate {
                    latency = max(latency, 1)  // an equal time on two CPUs would have no order
                    migrations += 1
                }
                var exitFields: [String: UInt64] = [k.reasonField: UInt64(reason.code), k.exitRIPField: rip,
                                                    "vcpu_id": UInt64(th.vcpu), "info1": 0x77, "requests": 0x40]
                if let isa = k.isaField { exitFields["isa"] = UInt64(isa) }
                perCPU[cpu].append((t, seq, exitB.payload(pid: th.tid, exitFields)))
                seq += 1
                if migrate { cpu ^= 1 }
                var entryFields: [String: UInt64] = ["vcpu_id": UInt64(th.vcpu)]
                if let f = k.entryRIPField { entryFields[f] = rip + 2 }
                perCPU[cpu].append((t + latency, seq, entryB.payload(pid: th.tid, entryFields)))
                seq += 1

                let key = RowKey(vm: th.vm, vcpu: th.vcpu, reason: reason.name, flags: reason.flags)
                expected[key, default: Expected(blocking: reason.blocking)].count += 1
                expected[key]!.latencies.append(latency)
                expected[key]!.rips[rip, default: 0] += 1
                exits += 1
                t += latency + 50 + rng.next() % 20_000
            }
        }
        #expect(migrations > 20, "the workload must migrate threads between the CPUs")

        var identities: [Int32: ThreadIdentity] = [:]
        for th in Self.threads {
            // x86: the vCPU number comes from the events (kvm_exit's vcpu_id, or 4.19's kvm_entry's);
            // arm64: from the thread name, as ThreadDirectory reads it from /proc.
            identities[th.tid] = ThreadIdentity(vm: th.vm, vmName: "vm\(th.vm)",
                                                vcpu: k.vcpuFromThreadName
                                                    ? ThreadIdentity.vcpu(fromThreadName: "CPU \(th.vcpu)/KVM") : nil)
        }
        let pages = Self.pages(perCPU)
        #expect(pages.allSatisfy { $0.pages.count > 3 }, "events span several sub-buffers per CPU")
        let source = PagesTraceSource(formats: formats, pagesByCPU: pages, identities: identities)
        let snap = try OfflineAnalysis.run(source)
        let summary = try Summary(snap)

        #expect(snap.pairing == PairingStats(paired: exits))
        #expect(summary.total(of: "kvm_exit") == exits)
        #expect(summary.total(of: "kvm_entry") == exits)
        #expect(summary.lostEvents == 0)
        #expect(summary.exits.count == expected.count)
        for row in summary.exits {
            let key = RowKey(vm: row.vm, vcpu: row.vcpu ?? .max, reason: row.reason, flags: row.flags)
            guard let want = expected[key] else {
                Issue.record("unexpected row \(key)")
                continue
            }
            #expect(row.isa == k.isa)
            #expect(row.vmName == "vm\(row.vm)")
            #expect(row.count == want.count, "\(key)")
            #expect(row.blocking == want.blocking, "\(key)")
            Self.checkLatency(row.latency, want.latencies, "\(k.label) \(key)")
            let rips = want.rips.map { RIPCount(rip: $0.key, count: $0.value) }
                .sorted { $0.count != $1.count ? $0.count > $1.count : $0.rip < $1.rip }
            #expect(row.topRIPs == rips, "\(key)")
        }
        // Per reason across the whole trace (the kvm_stat-style children).
        for r in Set(k.reasons.map(\.name)) {
            let want = expected.filter { $0.key.reason == r }.reduce(0) { $0 + $1.value.count }
            #expect(summary.children.first { $0.event == "kvm_exit" && $0.reason == r }?.total ?? 0 == want, "\(r)")
        }
    }

    /// Checks a latency summary against the sorted known latencies: count, min, max, sum exactly; mean as
    /// sum / count; stddev to 1e-9; each percentile equal to the documented bucket representative (the
    /// midpoint of the bucket holding the exact nearest-rank sample, clamped into [min, max]) and within 1/128
    /// of that exact sample.
    static func checkLatency(_ l: LatencySummary?, _ values: [UInt64], _ what: String,
                             sourceLocation: SourceLocation = #_sourceLocation) {
        guard let l else {
            #expect(values.isEmpty, "no latency for \(what)", sourceLocation: sourceLocation)
            return
        }
        let sorted = values.sorted()
        let sum = sorted.reduce(0, +)
        #expect(l.count == UInt64(sorted.count), "\(what)", sourceLocation: sourceLocation)
        #expect(l.min == sorted.first, "\(what)", sourceLocation: sourceLocation)
        #expect(l.max == sorted.last, "\(what)", sourceLocation: sourceLocation)
        #expect(l.sum == sum, "\(what)", sourceLocation: sourceLocation)
        #expect(l.mean == Double(sum) / Double(sorted.count), "\(what)", sourceLocation: sourceLocation)
        let mean = Double(sum) / Double(sorted.count)
        let variance = sorted.reduce(0.0) { $0 + (Double($1) - mean) * (Double($1) - mean) } / Double(sorted.count)
        #expect(abs(l.stddev - variance.squareRoot()) <= 1e-9 * max(1, variance.squareRoot()), "\(what)",
                sourceLocation: sourceLocation)
        for (p, got) in [(50.0, l.p50), (90, l.p90), (99, l.p99), (99.9, l.p999)] {
            let rank = HistogramSnapshot.rank(forPercentile: p, count: UInt64(sorted.count))
            let exact = sorted[Int(rank) - 1]
            let b = HistogramSnapshot.bucketIndex(for: exact)
            let lo = HistogramSnapshot.lowerBound(ofBucket: b)
            let hi = HistogramSnapshot.upperBound(ofBucket: b)
            let representative = min(max(lo + (hi - lo) / 2, sorted.first!), sorted.last!)
            #expect(got == representative, "p\(p) of \(what)", sourceLocation: sourceLocation)
            let err = got > exact ? got - exact : exact - got
            #expect(err * 128 <= exact, "p\(p) of \(what): \(got) vs exact \(exact)", sourceLocation: sourceLocation)
        }
    }

    // MARK: - Hand-written cases (6.18 VMX layouts)

    struct Writer {
        let exitB: EventPayloadBuilder
        let entryB: EventPayloadBuilder
        var perCPU: [[Placed]] = [[], []]
        var seq = 0

        init(_ formats: EventFormats) throws {
            exitB = try EventPayloadBuilder(formats: formats, event: "kvm_exit")
            entryB = try EventPayloadBuilder(formats: formats, event: "kvm_entry")
        }

        mutating func exit(cpu: Int, _ ts: UInt64, tid: Int32, reason: UInt32, rip: UInt64 = 0x1000) {
            perCPU[cpu].append((ts, seq, exitB.payload(pid: tid, ["exit_reason": UInt64(reason), "isa": 1,
                                                                  "guest_rip": rip, "vcpu_id": 0])))
            seq += 1
        }

        mutating func entry(cpu: Int, _ ts: UInt64, tid: Int32) {
            perCPU[cpu].append((ts, seq, entryB.payload(pid: tid, ["vcpu_id": 0, "rip": 0x1002])))
            seq += 1
        }
    }

    static func run(_ formats: EventFormats, _ pages: [(cpu: UInt16, pages: [[UInt8]])]) throws -> Summary {
        let ids = Dictionary(uniqueKeysWithValues: [1001, 1002, 1003, 1004, 1005, 2001, 3001].map {
            (Int32($0), ThreadIdentity(vm: Int32($0)))
        })
        return try Summary(OfflineAnalysis.run(PagesTraceSource(formats: formats, pagesByCPU: pages, identities: ids)))
    }

    static func latencies(_ s: Summary) -> [Int32: [UInt64]] {
        var out: [Int32: [UInt64]] = [:]
        for r in s.exits {
            if let l = r.latency { out[r.vm] = [l.min, l.max, l.count] }
        }
        return out
    }

    /// The vCPU thread exits on CPU 0 and enters on CPU 1 (it migrated), interleaved with other threads on
    /// both CPUs; several sub-buffers per CPU.
    @Test func migrationAcrossCPUsPairs() throws {
        let formats = try Fixtures.formats("6.18-x86")
        var w = try Writer(formats)
        var t: UInt64 = 10_000
        var expectedPairs: UInt64 = 0
        for _ in 0..<100 {
            w.exit(cpu: 0, t, tid: 1001, reason: 30)        // migrates: exit on CPU 0 ...
            w.exit(cpu: 1, t + 50, tid: 3001, reason: 48)   // (stays on CPU 1)
            w.exit(cpu: 0, t + 100, tid: 2001, reason: 12)  // (stays on CPU 0)
            w.entry(cpu: 1, t + 200, tid: 3001)
            w.entry(cpu: 1, t + 230, tid: 1001)             // ... entry on CPU 1
            w.entry(cpu: 0, t + 310, tid: 2001)
            w.exit(cpu: 1, t + 400, tid: 1001, reason: 30)  // and back: exit on CPU 1 ...
            w.entry(cpu: 0, t + 1_400, tid: 1001)           // ... entry on CPU 0
            t += 5_000
            expectedPairs += 4
        }
        let pages = Self.pages(w.perCPU, subbufSize: 1024)
        #expect(pages.allSatisfy { $0.pages.count > 5 }, "pairs straddle sub-buffer boundaries")
        let s = try Self.run(formats, pages)
        #expect(s.pairing == PairingStats(paired: expectedPairs))
        let io = try #require(s.exits.first { $0.vm == 1001 })
        #expect(io.reason == "IO_INSTRUCTION")
        #expect(io.count == 200)
        Self.checkLatency(io.latency, Array(repeating: 230, count: 100) + Array(repeating: 1_000, count: 100), "1001")
        #expect(Self.latencies(s) == [1001: [230, 1_000, 200], 2001: [210, 210, 100], 3001: [150, 150, 100]])
    }

    /// exit, exit, entry: one orphan exit and one pair (with the second exit's reason); an entry without exit
    /// is an orphan entry; an exit never entered is an orphan exit at the end of the trace.
    @Test func orphansAreCountedNotPaired() throws {
        let formats = try Fixtures.formats("6.18-x86")
        var w = try Writer(formats)
        w.exit(cpu: 0, 100, tid: 1001, reason: 12, rip: 0xaaa0)
        w.exit(cpu: 0, 200, tid: 1001, reason: 30, rip: 0xbbb0)
        w.entry(cpu: 0, 260, tid: 1001)
        w.entry(cpu: 1, 300, tid: 1002)
        w.exit(cpu: 1, 400, tid: 1003, reason: 48)
        let s = try Self.run(formats, Self.pages(w.perCPU))
        // 1001's HLT is followed by another exit (orphan); 1003's EPT_VIOLATION is still open when the trace ends.
        #expect(s.pairing == PairingStats(paired: 1, orphanExits: 1, orphanEntries: 1, openAtEnd: 1))
        #expect(s.exits.map { "\($0.vm) \($0.reason) \($0.count) \($0.latency.map { "\($0.min)/\($0.count)" } ?? "-")" }
            == ["1001 HLT 1 -", "1001 IO_INSTRUCTION 1 60/1", "1003 EPT_VIOLATION 1 -"])
        // Top RIPs count exits, paired or not.
        #expect(s.exits[0].topRIPs == [RIPCount(rip: 0xaaa0, count: 1)])
    }

    /// Events lost on a CPU between an exit and its entry invalidate that pair (on the exit's CPU or the
    /// entry's); the lost count is reported; pairs on other CPUs, or after the loss, stand.
    @Test func lostEventsInvalidatePairsAcrossThem() throws {
        let formats = try Fixtures.formats("6.18-x86", events: ["kvm_exit", "kvm_entry", "kvm_pio"])
        let exitB = try EventPayloadBuilder(formats: formats, event: "kvm_exit")
        let entryB = try EventPayloadBuilder(formats: formats, event: "kvm_entry")
        let pio = try EventPayloadBuilder(formats: formats, event: "kvm_pio")
        func exit(_ tid: Int32) -> [UInt8] { exitB.payload(pid: tid, ["exit_reason": 30, "isa": 1]) }
        func entry(_ tid: Int32) -> [UInt8] { entryB.payload(pid: tid, [:]) }

        var cpu0 = RingBufferPageBuilder()
        cpu0.append(timestamp: 1_000, payload: exit(1001))   // entry after the loss: invalidated
        cpu0.append(timestamp: 1_200, payload: exit(1004))   // migrates, entry on CPU 1: invalidated (exit's CPU)
        cpu0.markLost(5)
        cpu0.append(timestamp: 1_990, payload: pio.payload(pid: 9, ["port": 0x70]))  // first after the loss
        cpu0.append(timestamp: 2_000, payload: entry(1001))
        cpu0.append(timestamp: 2_100, payload: exit(1005))   // after the loss: paired
        cpu0.append(timestamp: 2_150, payload: entry(1005))
        cpu0.append(timestamp: 2_600, payload: entry(1003))  // exit on CPU 1 before the loss: invalidated
        var cpu1 = RingBufferPageBuilder()
        cpu1.append(timestamp: 1_500, payload: exit(1002))   // CPU 1 lost nothing: paired
        cpu1.append(timestamp: 1_600, payload: exit(1003))
        cpu1.append(timestamp: 2_500, payload: entry(1002))
        cpu1.append(timestamp: 2_700, payload: entry(1004))
        let pages = [(cpu: UInt16(0), pages: cpu0.finish()), (cpu: UInt16(1), pages: cpu1.finish())]
        #expect(pages[0].pages.count == 2)

        let s = try Self.run(formats, pages)
        #expect(s.lostEvents == 5)
        #expect(s.pairing == PairingStats(paired: 2, invalidatedByLoss: 3))
        #expect(Self.latencies(s) == [1002: [1_000, 1_000, 1], 1005: [50, 50, 1]])
        #expect(s.exits.map(\.count) == [1, 1, 1, 1, 1])
    }

    /// Ordered sources cannot produce a negative gap; a source out of order can, and the pairer counts it.
    @Test func negativeGapIsCounted() {
        var p = Pairer()
        p.exit(TraceEvent(timestamp: 500, tid: 7, event: 0, reason: 30, isa: 1))
        p.entry(TraceEvent(timestamp: 400, tid: 7, event: 1))
        p.finish()
        #expect(p.counters.snapshot == PairingStats(negativeGaps: 1))
        #expect(p.store.all.map { $0.histogram.count } == [0])
    }

    /// Series of one thread whose (isa, reason) mix to the same hash key stay apart.
    @Test func seriesKeysDoNotCollide() {
        var p = Pairer()
        // tid << 32 ^ reason ^ isa << 24 is the same for (reason 0x0100_0001, isa 0) and (reason 1, isa 1).
        p.exit(TraceEvent(timestamp: 100, tid: 7, event: 0, reason: 0x0100_0001, isa: 0))
        p.entry(TraceEvent(timestamp: 110, tid: 7, event: 1))
        p.exit(TraceEvent(timestamp: 200, tid: 7, event: 0, reason: 1, isa: 1))
        p.entry(TraceEvent(timestamp: 230, tid: 7, event: 1))
        let series = p.store.all.map { "\($0.reason)/\($0.isa): \($0.histogram.snapshot().sum)" }
        #expect(series == ["16777217/0: 10", "1/1: 30"])
    }
}
