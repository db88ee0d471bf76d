import Foundation
import Testing

/// `report -p/--vcpu/--reason` select rows; the pairing line counts every thread of the trace, and says so.
@Suite struct ReportPairingScopeTests {
    /// Two vCPUs of VM 50: vCPU 0 pairs 3 exits, vCPU 1 pairs 1 and leaves 1 open at the end (ReportTableTests'
    /// golden trace).
    static let trace = ReportTableTests.golden

    func footer(_ args: [String]) throws -> [String] {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("pairing-scope-\(getpid())-\(UUID().uuidString).txt").path
        defer { unlink(path) }
        try Self.trace.write(toFile: path, atomically: true, encoding: .utf8)
        let r = try CLI.run(["report"] + args + [path])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        return Array(r.stdout.split(separator: "\n").map(String.init).suffix(2))
    }

    @Test func unfilteredPairingLineIsPlain() throws {
        #expect(try footer([]) == [
            "pairing: paired 4, orphan exits 0, orphan entries 0, open at end 1, invalidated by loss 0, negative gaps 0",
            "lost events: 0",
        ])
    }

    @Test func filteredReportSaysThePairingIsEveryThreads() throws {
        #expect(try footer(["--vcpu", "1"]) == [
            "pairing (all threads, not only --vcpu 1): paired 4, orphan exits 0, orphan entries 0, open at end 1, "
                + "invalidated by loss 0, negative gaps 0",
            "lost events: 0",
        ])
        #expect(try footer(["-p", "50", "--reason", "hlt", "--event", "ioport"]).first
                == "pairing (all threads, not only -p 50 --reason hlt): paired 4, orphan exits 0, orphan entries 0, "
                + "open at end 1, invalidated by loss 0, negative gaps 0")
    }

    /// `--json`'s `pairing` says the same: `"scope": "all threads"` when -p/--vcpu/--reason select rows; no
    /// `scope` without them (the pairing and the rows then count the same threads).
    @Test func jsonPairingSaysItsScope() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("pairing-scope-json-\(getpid()).txt").path
        defer { unlink(path) }
        try Self.trace.write(toFile: path, atomically: true, encoding: .utf8)
        func pairing(_ args: [String]) throws -> [String: Any] {
            let r = try CLI.run(["report", "--json"] + args + [path])
            #expect(r.status == 0, "stderr: \(r.stderr)")
            return try #require(try CLI.json(r.stdout)["pairing"] as? [String: Any], "\(r.stdout)")
        }
        let all = try pairing([])
        #expect(all["scope"] == nil)
        #expect(all["paired"] as? Int == 4 && all["open_at_end"] as? Int == 1)
        for args in [["--vcpu", "1"], ["-p", "50"], ["--reason", "hlt"]] {
            let p = try pairing(args)
            #expect(p["scope"] as? String == "all threads", "\(args)")
            #expect(p["paired"] as? Int == 4 && p["open_at_end"] as? Int == 1, "\(args)")
        }
    }
}
