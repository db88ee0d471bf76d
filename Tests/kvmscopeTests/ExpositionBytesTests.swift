import Foundation
import KVMAnalysis
import KVMExits
import KVMScopeViews
import Testing
import TestSupport

/// `/metrics` byte for byte on a trace that touches every corner of the renderer: unknown vCPUs and VM names,
/// escaped names, VMX flag rows, SVM and VMX side by side, retired threads and the `other` VM, userspace
/// exits of unknown codes, latencies beyond the last bound and beyond 100 s, orphans, and `--max-series`
/// folding in all three per-VM families. The golden files were written by the renderer that built its lines
/// from label tuples and String appends (before the byte-buffer writer), so they pin its output exactly.
@Suite struct ExpositionBytesTests {
    static let catalog: EventCatalog = {
        var c = EventCatalog()
        for e in ["kvm_exit", "kvm_entry", "kvm_userspace_exit", "kvm_pio"] { c.add(system: "kvm", name: e) }
        return c
    }()

    static let identities: [Int32: ThreadIdentity] = [
        101: ThreadIdentity(vm: 4242, vmName: "web \"01\"", vcpu: 0),
        102: ThreadIdentity(vm: 4242, vmName: "web \"01\"", vcpu: 1),
        103: ThreadIdentity(vm: 4242, vmName: "web \"01\"", vcpu: 10),
        104: ThreadIdentity(vm: 4242, vmName: "web \"01\"", vcpu: nil),
        201: ThreadIdentity(vm: 5000, vmName: "db\\prod\nX µ", vcpu: 0),
        301: ThreadIdentity(vm: 6000, vmName: nil, vcpu: 0),
        302: ThreadIdentity(vm: 6000, vmName: nil, vcpu: 1),
        501: ThreadIdentity(vm: 7000, vmName: "old", vcpu: 0),
        601: ThreadIdentity(vm: 8000, vmName: "older", vcpu: 2),
        // 401: the resolver does not know it (its own VM, no name, no vCPU).
    ]

    /// The aggregate after the trace, with VMs 8000 then 7000 stopped (history of 1: 8000 folds into `other`).
    static func summary() throws -> Summary {
        let ids = identities
        let agg = Aggregator(catalog: catalog, shardCount: 2, resolver: { ids[$0] }, retirement: true,
                             retiredVMCapacity: 1)
        var writers = [agg.writer(shard: 0), agg.writer(shard: 1)]
        var pairer = agg.makePairer()
        var ts: UInt64 = 1_000_000
        let vmx = ISA.vmx.rawValue, svm = ISA.svm.rawValue
        // (tid, isa, raw reason, latency ns; 0: no entry follows)
        let exits: [(Int32, UInt8, UInt32, UInt64)] = [
            (101, vmx, 32, 1_500), (101, vmx, 32, 2_500), (101, vmx, 32, 900), (101, vmx, 49, 12_000),
            (101, vmx, 12, 3_000_000), (101, vmx, 0x8000_0021, 40), (101, vmx, 0x8000_0021, 60),
            (102, vmx, 32, 700), (102, vmx, 12, 15_000_000_000), (102, vmx, 48, 130),
            (103, vmx, 30, 5_000), (103, vmx, 30, 99), (104, vmx, 1, 200_000_000_000), (104, vmx, 32, 1_000),
            (201, vmx, 30, 4_000), (201, vmx, 30, 250_000), (201, vmx, 77, 333),
            (301, svm, 0x7c, 800), (301, svm, 0x78, 2_000_000), (302, svm, 0x7c, 1_000_001), (302, svm, 0x400, 0),
            (401, vmx, 10, 100), (401, vmx, 10, 200), (401, vmx, 10, 500),
            (501, vmx, 30, 10_000), (601, vmx, 30, 20_000), (601, vmx, 28, 0),
        ]
        for (n, (tid, isa, reason, latency)) in exits.enumerated() {
            let vcpu = ids[tid]?.vcpu ?? TraceEvent.noVCPU
            let exit = TraceEvent(timestamp: ts, rip: 0xffff_ffff_8100_0000 + UInt64(reason % 64), tid: tid, event: 0,
                                  reason: reason, vcpu: vcpu, isa: isa)
            writers[n % 2].add(exit, hasReason: true)
            pairer.exit(exit)
            if latency > 0 {
                let entry = TraceEvent(timestamp: ts + latency, tid: tid, event: 1, vcpu: vcpu)
                writers[n % 2].add(entry, hasReason: false)
                pairer.entry(entry)
            }
            ts += latency + 10_000
        }
        pairer.entry(TraceEvent(timestamp: ts, tid: 999, event: 1))  // an orphan entry
        writers[0].add(TraceEvent(timestamp: ts, tid: 999, event: 1), hasReason: false)
        for (tid, code, n) in [(201, 2, 3), (201, 6, 1), (101, 2, 2), (301, 99, 1), (601, 2, 4)] as [(Int32, UInt32, Int)] {
            for _ in 0..<n {
                writers[1].add(TraceEvent(timestamp: ts, detail: 0x10, tid: tid, event: 3, aux: 1), hasReason: false)
                writers[1].add(TraceEvent(timestamp: ts + 1, tid: tid, event: 2, reason: code), hasReason: true)
                ts += 100
            }
        }
        _ = agg.snapshot(timestamp: ts)
        for tid: Int32 in [601, 501] {
            agg.retire([tid])
            for i in writers.indices { writers[i].maintain() }
            pairer.maintain()
            _ = agg.snapshot(timestamp: ts)
        }
        pairer.finish()
        return try Summary(agg.snapshot(timestamp: ts))
    }

    static let extras = ExpositionExtras(
        version: "0.1.0", lostPerCPU: [1: 7, 0: 0, 12: 3],
        storms: [StormActivity(rule: "p99(MSR_WRITE) > 1us", vm: 4242, vmName: "web \"01\"", reason: "MSR_WRITE",
                               active: true),
                 StormActivity(rule: "rate(IO_INSTRUCTION) > 10/s", vm: 5000, vmName: nil, reason: "IO_INSTRUCTION",
                               active: false)])

    @Test(arguments: [("mixed.prom", ExpositionFormat.prometheus, 10_000), ("mixed.openmetrics", .openMetrics, 10_000),
                      ("mixed-capped.prom", .prometheus, 4), ("mixed-capped.openmetrics", .openMetrics, 4)])
    func sameBytes(file: String, format: ExpositionFormat, maxSeries: Int) throws {
        var extras = Self.extras
        extras.maxSeries = maxSeries
        let text = PrometheusExposition.render(try Self.summary(), format: format, extras: extras)
        try PrometheusExpositionTests.expectGolden(text, file)
        #expect(PrometheusExposition.renderUTF8(try Self.summary(), format: format, extras: extras) == Array(text.utf8))
        if format == .prometheus {
            let lint = try Spawned.run("/usr/bin/promtool", ["check", "metrics"], input: Data(text.utf8), timeout: 60)
            #expect(lint.status == 0 && lint.stdout.isEmpty && lint.stderr.isEmpty, "promtool: \(lint.stdout + lint.stderr)")
        }
    }

    /// FNV-1a (64 bit) of a text's UTF-8 bytes: pins a large exposition without a large golden file.
    static func fnv1a(_ s: String) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in s.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return h
    }
}
