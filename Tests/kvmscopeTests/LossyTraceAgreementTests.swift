import Foundation
import KVMAnalysis
import KVMExits
import KVMScopeViews
import KVMSources
import Testing

/// One lossy trace.dat (ring-buffer pages with a missed-events count), analysed once: the report table, the
/// JSON, the CSV, the HTML timeline's data and the Prometheus exposition all show the same pairs, orphans,
/// invalidated pairs and per-reason counts — the timeline is fed by the pairer, not by a pairing of its own.
@Suite struct LossyTraceAgreementTests {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/formats/6.18-x86")
    static let msrWrite: UInt64 = 32, hlt: UInt64 = 12, eptMisconfig: UInt64 = 49, io: UInt64 = 30

    /// Two CPUs. CPU 0 loses 7 events between 6800 and 7000 (its page after the loss carries the count):
    /// the exits at 6000 (entry on CPU 0 at 7200) and 6800 (thread 106 migrates, entry on CPU 1 at 7300) are
    /// invalidated; the exit at 7000, the first event after the loss, pairs. Thread 102 migrates CPU 0 → 1
    /// and pairs; thread 104 exits twice (an orphan exit), thread 105 enters with no exit (an orphan entry),
    /// thread 101's last exit never enters (an orphan exit at the end).
    static func writeTrace(_ path: String) throws {
        let text = { (name: String) in try String(contentsOf: fixtures.appendingPathComponent(name), encoding: .utf8) }
        let formats = EventFormats()
        try formats.add(system: "kvm", format: text("kvm_exit.format"))
        try formats.add(system: "kvm", format: text("kvm_entry.format"))
        let exitB = try EventPayloadBuilder(formats: formats, event: "kvm_exit")
        let entryB = try EventPayloadBuilder(formats: formats, event: "kvm_entry")
        func exit(_ b: inout RingBufferPageBuilder, _ ts: UInt64, _ tid: Int32, _ reason: UInt64) {
            // vcpu_id as the thread's name gives it (`CPU n/KVM`: n = tid - 101), so no thread's numbers disagree.
            b.append(timestamp: ts, payload: exitB.payload(pid: tid, ["exit_reason": reason, "isa": 1, "vcpu_id": UInt64(tid - 101)]))
        }
        func entry(_ b: inout RingBufferPageBuilder, _ ts: UInt64, _ tid: Int32) {
            b.append(timestamp: ts, payload: entryB.payload(pid: tid, ["vcpu_id": UInt64(tid - 101)]))
        }
        var cpu0 = RingBufferPageBuilder(subbufSize: 4096)
        exit(&cpu0, 1_000, 101, msrWrite)
        entry(&cpu0, 1_500, 101)             // MSR_WRITE 500
        exit(&cpu0, 2_000, 101, hlt)
        exit(&cpu0, 2_100, 102, eptMisconfig)
        entry(&cpu0, 5_000, 101)             // HLT 3000 (blocking)
        exit(&cpu0, 6_000, 101, msrWrite)
        exit(&cpu0, 6_800, 106, msrWrite)
        cpu0.markLost(7)
        exit(&cpu0, 7_000, 103, io)
        entry(&cpu0, 7_200, 101)             // invalidated (loss on the exit's CPU)
        entry(&cpu0, 7_500, 103)             // IO_INSTRUCTION 500
        exit(&cpu0, 8_000, 101, msrWrite)    // orphan at the end
        var cpu1 = RingBufferPageBuilder(subbufSize: 4096)
        exit(&cpu1, 1_200, 104, io)          // orphan: followed by another exit
        exit(&cpu1, 1_300, 104, msrWrite)
        entry(&cpu1, 1_900, 104)             // MSR_WRITE 600
        entry(&cpu1, 2_600, 102)             // EPT_MISCONFIG 500 (migrated)
        entry(&cpu1, 3_000, 105)             // orphan entry
        exit(&cpu1, 6_500, 102, eptMisconfig)
        entry(&cpu1, 7_100, 102)             // EPT_MISCONFIG 600 (CPU 1 lost nothing)
        entry(&cpu1, 7_300, 106)             // invalidated (loss on the exit's CPU 0)
        var m = TraceDatMetadata()
        m.headerPage = try text("header_page")
        m.systems = [.init(name: "kvm", formats: [try text("kvm_exit.format"), try text("kvm_entry.format")])]
        m.cmdlines = [101: "CPU 0/KVM", 102: "CPU 1/KVM", 103: "CPU 2/KVM", 104: "CPU 3/KVM", 105: "CPU 4/KVM",
                      106: "CPU 5/KVM"]
        try TraceDatWriter.write(path: path, metadata: m, cpus: [.pages(cpu0.finish()), .pages(cpu1.finish())])
    }

    static let exitsByReason = ["MSR_WRITE": 5, "HLT": 1, "EPT_MISCONFIG": 2, "IO_INSTRUCTION": 2]
    static let pairsByReason = ["MSR_WRITE": 2, "HLT": 1, "EPT_MISCONFIG": 2, "IO_INSTRUCTION": 1]
    /// One of the three unpaired exits is followed by another exit of its thread (an orphan); the last one is
    /// still open when the trace ends (open_at_end, not an orphan).
    static let pairing = PairingStats(paired: 6, orphanExits: 1, orphanEntries: 1, invalidatedByLoss: 2, openAtEnd: 1)

    @Test func everyOutputAgreesOnALossyTrace() throws {
        let path = NSTemporaryDirectory() + "kvmscope-lossy-\(getpid()).dat"
        defer { unlink(path) }
        try Self.writeTrace(path)
        let reader = try TraceDatReader(path: path)
        let a = try ReportAnalysis.run(reader, timelineBins: 16)
        let s = try Summary(a.snapshot)

        // The source's statistics: page-flagged losses on CPU 0, in the snapshot's lost count.
        #expect(a.statistics == SourceStatistics(events: 19, losses: [0: LossCounts(flagged: 7)]))
        #expect(reader.decodedMissed == 7 && reader.lostEvents == 7)
        #expect(a.snapshot.lostEvents == 7 && s.pairing == Self.pairing)

        // Report table.
        #expect(ReportTable.footer(s) == [
            "pairing: paired 6, orphan exits 1, orphan entries 1, open at end 1, invalidated by loss 2, negative gaps 0",
            "lost events: 7",
        ])
        // CSV: count and paired columns, summed per reason.
        var csvExits: [String: Int] = [:], csvPairs: [String: Int] = [:]
        for row in ReportTable.csvRows(s, file: "t.dat") {
            let f = row.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            csvExits[f[4], default: 0] += Int(f[7])!
            csvPairs[f[4], default: 0] += Int(f[8])!
        }
        #expect(csvExits == Self.exitsByReason && csvPairs == Self.pairsByReason)

        // JSON.
        let json = try #require(try JSONSerialization.jsonObject(
            with: Data(SummaryJSON.value(s, durationSeconds: a.durationSeconds).serialized().utf8)) as? [String: Any])
        #expect(json["lost_events"] as? Int == 7)
        let p = try #require(json["pairing"] as? [String: Int])
        #expect(p == ["paired": 6, "orphan_exits": 1, "orphan_entries": 1, "open_at_end": 1, "invalidated_by_loss": 2,
                      "negative_gaps": 0])
        var jsonExits: [String: Int] = [:], jsonPairs: [String: Int] = [:]
        for row in try #require(json["exits"] as? [[String: Any]]) {
            let reason = try #require(row["reason"] as? String)
            jsonExits[reason, default: 0] += try #require(row["count"] as? Int)
            jsonPairs[reason, default: 0] += (row["latency_ns"] as? [String: Any])?["count"] as? Int ?? 0
        }
        #expect(jsonExits == Self.exitsByReason && jsonPairs == Self.pairsByReason)

        // The HTML timeline's data: exits per reason, and latencies only for the pairer's recorded pairs.
        let timeline = try #require(a.timeline)
        let view = ExitTimelineView(timeline, snapshot: a.snapshot)
        let data = try #require(try JSONSerialization.jsonObject(
            with: Data(HTMLReport.dataJSON(view, title: "t").serialized().utf8)) as? [String: Any])
        let all = try #require((data["groups"] as? [[String: Any]])?.first)
        #expect(all["label"] as? String == "All VMs")
        let series = try #require(all["series"] as? [String: [Int]])
        #expect(series.mapValues { $0.reduce(0, +) } == Self.exitsByReason)
        #expect((all["heat"] as? [Int])?.reduce(0, +) == 5, "recorded pairs, HLT (blocking) left out")
        var timelinePairs: [String: Int] = [:]
        for (key, counts) in timeline.latencies {
            let reason = try #require(a.snapshot.catalog.reasonName(event: 0, reason: key.reason, isa: key.isa))
            timelinePairs[reason, default: 0] += Int(counts.reduce(0, +))
        }
        #expect(timelinePairs == Self.pairsByReason)

        // Prometheus exposition.
        let text = PrometheusExposition.render(s, format: .prometheus,
                                               extras: ExpositionExtras(version: "t", lostPerCPU: a.statistics.lostByCPU))
        func sums(_ family: String) -> [String: Int] {
            var out: [String: Int] = [:]
            for line in text.split(separator: "\n") where line.hasPrefix(family + "{") {
                guard let r = line.firstRange(of: "reason=\"") else { continue }
                let reason = line[r.upperBound...].prefix { $0 != "\"" }
                out[String(reason), default: 0] += Int(line.split(separator: " ").last!)!
            }
            return out
        }
        #expect(sums("kvmscope_exits_total") == Self.exitsByReason)
        #expect(sums("kvmscope_exit_latency_seconds_count") == Self.pairsByReason)
        for line in ["kvmscope_exit_pairing_total{result=\"paired\"} 6",
                     "kvmscope_exit_pairing_total{result=\"orphan_exit\"} 1",
                     "kvmscope_exit_pairing_total{result=\"open_at_end\"} 1",
                     "kvmscope_exit_pairing_total{result=\"orphan_entry\"} 1",
                     "kvmscope_exit_pairing_total{result=\"invalidated_by_loss\"} 2",
                     "kvmscope_lost_events_total{cpu=\"0\"} 7"] {
            #expect(text.contains(line + "\n"), "\(line)")
        }
    }

    /// The kernel's per-CPU counters saved in the file and the pages' flags count the same lost events: per CPU
    /// the larger is taken, kinds are kept apart.
    @Test func kernelCountersAndPageFlagsPerCPU() throws {
        var stats = SourceStatistics(events: 10)
        stats.add(LossCounts(kernelStats: "entries: 5\noverrun: 3\ncommit overrun: 0\ndropped events: 2\n"), cpu: 0)
        stats.add(LossCounts(flagged: 7, unknownGaps: 1), cpu: 0)
        stats.add(LossCounts(flagged: 4), cpu: 1)
        stats.add(LossCounts(overrun: 9, corruptSubbuffers: 2), cpu: 1)
        #expect(stats.losses[0] == LossCounts(overrun: 3, dropped: 2, flagged: 7, unknownGaps: 1))
        #expect(stats.lostByCPU == [0: 7, 1: 9] && stats.lostEvents == 16 && stats.lostUnknown == 3)
        #expect(stats.total == LossCounts(overrun: 12, dropped: 2, flagged: 11, corruptSubbuffers: 2, unknownGaps: 1))
    }
}
