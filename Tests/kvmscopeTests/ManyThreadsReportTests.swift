import Foundation
import KVMExits
import KVMSources
import Testing
import TestSupport

/// `report` of a busy host's trace: far more vCPU threads than any fixed table used to hold.
@Suite struct ManyThreadsReportTests {
    /// 5,000 vCPU threads (625 VMs of 8 vCPUs, on 2 host CPUs) and 300,000 exits in the corpus's reason mix
    /// (SyntheticWorkload, written as a trace.dat): `report --json` pairs every pair a reference pairing of the
    /// same events finds (overflow 0), with the exact count and latency count of every VM × vCPU × reason.
    @Test(.timeLimit(.minutes(5))) func fiveThousandThreadsEveryPair() throws {
        let formats = EventFormats()
        for e in ["kvm_exit", "kvm_entry"] {
            let text = try String(contentsOf: CLI.packageRoot.appendingPathComponent("Tests/Fixtures/formats/6.18-x86/\(e).format"),
                                  encoding: .utf8)
            try formats.add(system: "kvm", format: text)
        }
        let w = SyntheticWorkload(threads: 5_000, hostCPUs: 2, vcpusPerVM: 8)
        let eventsPerCPU = 300_000
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kvmscope-many-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("many.dat").path
        try w.writeTraceDat(to: path, formats: formats, eventsPerCPU: eventsPerCPU)

        // Reference: the same pages decoded and paired per thread with a dictionary (an exit waits for its
        // thread's next entry).
        let vmOf = Dictionary(uniqueKeysWithValues: w.threadIDs.map { ($0.tid, ($0.vm, $0.vcpu)) })
        let exitIndex = formats.catalog.index(of: "kvm_exit")!
        var open: [Int32: UInt32] = [:]
        var exits: [String: Int] = [:]
        var pairs: [String: Int] = [:]
        var paired = 0
        var exitTotal = 0
        let decoder = formats.makeDecoder()
        for cpu in 0..<2 {
            try w.pages(formats: formats, cpu: cpu, events: eventsPerCPU) { page in
                for e in decoder.decodeAll(page, subbufSize: 4096, cpu: UInt16(cpu)) {
                    let (vm, vcpu) = vmOf[e.tid]!
                    if e.event == exitIndex {
                        exits["\(vm)/\(vcpu)/\(e.reason)", default: 0] += 1
                        exitTotal += 1
                        open[e.tid] = e.reason
                    } else if let reason = open.removeValue(forKey: e.tid) {
                        pairs["\(vm)/\(vcpu)/\(reason)", default: 0] += 1
                        paired += 1
                    }
                }
            }
        }
        #expect(exitTotal == 300_000)
        #expect(paired == 300_000)
        #expect(Set(exits.keys.map { $0.split(separator: "/").prefix(2).joined(separator: "/") }).count == 5_000)

        let r = try CLI.run(["report", "--json", path], timeout: 240)
        #expect(r.status == 0, "\(r.stderr)")
        let j = try CLI.json(r.stdout)
        let events = try #require(j["events"] as? [String: Any])
        #expect(events["kvm_exit"] as? Int == 300_000 && events["kvm_entry"] as? Int == 300_000)
        let pairing = try #require(j["pairing"] as? [String: Any])
        #expect(pairing["paired"] as? Int == paired)
        #expect(pairing["overflow"] == nil)  // printed only when non-zero
        #expect(pairing["orphan_exits"] as? Int == 0 && pairing["orphan_entries"] as? Int == 0
                && pairing["open_at_end"] as? Int == 0)
        #expect(j["overflow_events"] == nil)
        let rows = try #require(j["exits"] as? [[String: Any]])
        var gotExits: [String: Int] = [:]
        var gotPairs: [String: Int] = [:]
        for row in rows {
            let key = "\(row["vm"] as! Int)/\(row["vcpu"] as! Int)/\(row["code"] as! Int)"
            gotExits[key, default: 0] += row["count"] as! Int
            gotPairs[key, default: 0] += (row["latency_ns"] as? [String: Any])?["count"] as? Int ?? 0
        }
        #expect(rows.count == exits.count)
        #expect(gotExits == exits)
        #expect(gotPairs == pairs)
        // Per reason across all VMs, against the reference.
        var perReason: [String: Int] = [:]
        for (k, n) in exits { perReason[String(k.split(separator: "/")[2]), default: 0] += n }
        var gotPerReason: [String: Int] = [:]
        for row in rows { gotPerReason[String(row["code"] as! Int), default: 0] += row["count"] as! Int }
        #expect(gotPerReason == perReason)
    }
}
