import Foundation
import Testing
import TestSupport

/// `bench overhead` with trace-cmd beside kvmscope: every run is kept, and kvmscope's exits/s are compared with
/// trace-cmd's of the same round (interleaved runs), so the spread is shown beside the medians.
@Suite(.serialized, .enabled(if: KVMTest.canRun && (KVMTest.required || FileManager.default.isExecutableFile(atPath: "/usr/bin/trace-cmd")),
                              "needs root, /dev/kvm, tracefs and trace-cmd"))
struct GuestOverheadBenchTests {
    /// 8 MiB per CPU for both tracers: the storm's 100,000 events a run fit whole, so that a reader starved by the
    /// tests running beside it (and a host's steal time) loses nothing, and `lost` stays an exact 0.
    static let args = ["bench", "overhead", "--kind", "io", "--vcpus", "1", "--exits", "20000", "--repeat", "3",
                       "--tracer", "kvmscope", "--tracer", "trace-cmd", "--buffer-kb", "8192"]

    @Test func roundByRoundRatiosAreTheRunsOwn() throws {
        let r = try CLI.run(Self.args + ["--json"], timeout: 300)
        #expect(r.status == 0, "\(r.stderr)")
        let j = try CLI.json(r.stdout)
        let results = try #require(j["results"] as? [[String: Any]])
        func runs(_ tracer: String) throws -> [Double] {
            let row = try #require(results.first { $0["tracer"] as? String == tracer }, "\(results)")
            return try #require((row["runs_exits_per_second"] as? [NSNumber])?.map(\.doubleValue), "\(row)")
        }
        let ours = try runs("kvmscope"), peer = try runs("trace-cmd"), none = try runs("none")
        #expect(ours.count == 3 && peer.count == 3 && none.count == 3)
        let row = try #require(results.first { $0["tracer"] as? String == "kvmscope" })
        let ratios = try #require((row["runs_ratio_to_trace_cmd"] as? [NSNumber])?.map(\.doubleValue), "\(row)")
        // Each ratio is a round's two runs (as printed, to the exit/s), sorted, to 3 decimals.
        let expected = zip(ours, peer).map { ($0 / $1 * 1000).rounded() / 1000 }.sorted()
        #expect(ratios.count == 3)
        for (a, b) in zip(ratios, expected) { #expect(abs(a - b) <= 0.0011, "\(ratios) vs \(expected)") }
        #expect(row["lost"] as? Int == 0)
        #expect(row["command"] as? String == "kvmscope stat --buffer-kb 8192")
        let peerRow = try #require(results.first { $0["tracer"] as? String == "trace-cmd" })
        #expect(peerRow["command"] as? String == "trace-cmd record -d --no-filter -b 8192 -e kvm")
    }

    @Test func tableShowsEveryRunsRangeAndTheRoundRatio() throws {
        let r = try CLI.run(Self.args, timeout: 300)
        #expect(r.status == 0, "\(r.stderr)")
        let lines = r.stdout.split(separator: "\n").map(String.init)
        #expect(lines.contains("| tracer | exits/s | runs: slowest–fastest | vs untraced | tracer CPU s | tracer CPU ns/event | events traced | lost |"),
                "\(r.stdout)")
        // Each row's median lies within its runs' range.
        for label in ["untraced", "kvmscope stat --buffer-kb 8192", "trace-cmd record -d --no-filter -b 8192 -e kvm"] {
            let row = try #require(lines.first { $0.hasPrefix("| \(label) |") }, "\(r.stdout)")
            let cells = row.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            let median = try #require(Int(cells[1]), "\(row)")
            let range = cells[2].split(separator: "–").compactMap { Int($0) }
            #expect(range.count == 2 && range[0] <= median && median <= range[1], "\(row)")
        }
        let note = try #require(lines.first { $0.hasPrefix("kvmscope ÷ trace-cmd, round by round (3 rounds): median ") }, "\(r.stdout)")
        #expect(note.contains("; untraced runs ") && note.hasSuffix("."), "\(note)")
        let verdict = try #require(lines.first { $0.hasPrefix("| guest overhead (exits/s vs untraced) |") })
        #expect(verdict.hasSuffix("| yes |") || verdict.hasSuffix("| no |") || verdict.hasSuffix("| not settled (within the spread) |"), "\(verdict)")
    }
}
