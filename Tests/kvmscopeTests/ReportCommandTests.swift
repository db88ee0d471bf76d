import Foundation
import Testing
import TestSupport

/// `kvmscope report` as users run it: the real corpus, errors, and the HTML page rendered by headless Chromium.
@Suite struct ReportCommandTests {
    static let host = "/work/shared/corpus/real/hip24_sigmatek_test_host_report.txt"

    @Test func jsonOnHostReport() throws {
        let r = try CLI.run(["report", "--json", Self.host])
        #expect(r.status == 0)
        let j = try CLI.json(r.stdout)
        let events = try #require(j["events"] as? [String: Any])
        #expect(events["kvm_exit"] as? Int == 810 && events["kvm_entry"] as? Int == 806)
        let pairing = try #require(j["pairing"] as? [String: Any])
        #expect(pairing["paired"] as? Int == 802 && pairing["orphan_exits"] as? Int == 8
                && pairing["orphan_entries"] as? Int == 4)
        let exits = try #require(j["exits"] as? [[String: Any]])
        var reasons: [String: Int] = [:]
        for e in exits { reasons[e["reason"] as! String, default: 0] += e["count"] as! Int }
        #expect(reasons == ["MSR_WRITE": 506, "HLT": 217, "EPT_MISCONFIG": 66, "PREEMPTION_TIMER": 13,
                            "EXTERNAL_INTERRUPT": 5, "EOI_INDUCED": 3])
        let source = try #require(j["source"] as? [String: Any])
        #expect(source["format"] as? String == "trace-cmd report" && source["vm_is"] as? String == "tid")
    }

    @Test func errorsAreOneLine() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kvmscope-report-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let empty = dir.appendingPathComponent("empty.txt").path
        let binary = dir.appendingPathComponent("bin.dat").path
        let text = dir.appendingPathComponent("notes.txt").path
        #expect(FileManager.default.createFile(atPath: empty, contents: Data()))
        #expect(FileManager.default.createFile(atPath: binary, contents: Data([0x7f, 0x45, 0x4c, 0x46, 0, 1])))
        #expect(FileManager.default.createFile(atPath: text, contents: Data("hello\n".utf8)))
        let cases: [(String, String)] = [
            ("/nonexistent/x.txt", "kvmscope: /nonexistent/x.txt: No such file or directory\n"),
            (empty, "kvmscope: \(empty): empty file\n"),
            (binary, "kvmscope: \(binary): unknown format (binary, not trace.dat; expected trace.dat, kernel trace text, trace-cmd report or perf script output)\n"),
            (text, "kvmscope: \(text): unknown format (no trace records; looked for trace.dat, kernel trace text "
                + "(COMM-TID [CPU] SECONDS: EVENT: FIELDS), trace-cmd report (also -R, -l) or perf script "
                + "(COMM TID [CPU] SECONDS: EVENT: FIELDS, any -F)); line 1 is not one: \"hello\"\n"),
            (dir.path, "kvmscope: \(dir.path): not a regular file\n"),
        ]
        for (file, message) in cases {
            let r = try CLI.run(["report", file])
            #expect(r.status == 1)
            #expect(r.stderr == message)
            #expect(r.stdout == "")
        }
    }

    /// The page holds the corpus counts exactly and renders: a headless Chromium screenshot of it.
    @Test func htmlRendersInChromium() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kvmscope-html-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let html = dir.appendingPathComponent("host.html").path
        let r = try CLI.run(["report", "--html", html, Self.host])
        #expect(r.status == 0)
        let page = try String(contentsOfFile: html, encoding: .utf8)
        let start = try #require(page.range(of: #"<script id="kvmscope-data" type="application/json">"#))
        let end = try #require(page.range(of: "</script>", range: start.upperBound..<page.endIndex))
        let data = try #require(JSONSerialization.jsonObject(with: Data(page[start.upperBound..<end.lowerBound].utf8))
                                as? [String: Any])
        let groups = try #require(data["groups"] as? [[String: Any]])
        #expect(groups.map { $0["label"] as? String } == ["All VMs", "VM 150750 (qemu-system-x86), all vCPUs",
                                                          "VM 150750 (qemu-system-x86), vCPU 0"])
        let series = try #require(groups[0]["series"] as? [String: [Int]])
        #expect(series.mapValues { $0.reduce(0, +) } == ["MSR_WRITE": 506, "HLT": 217, "EPT_MISCONFIG": 66,
                                                         "PREEMPTION_TIMER": 13, "EXTERNAL_INTERRUPT": 5, "EOI_INDUCED": 3])
        // Heatmap: every paired non-blocking exit once (802 paired − 211 HLT pairs).
        let heat = try #require(groups[0]["heat"] as? [Int])
        #expect(heat.reduce(0, +) == 591)

        guard let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].first(where: {
            FileManager.default.isExecutableFile(atPath: $0)
        }) else {
            Issue.record("chromium is not installed (Debian package chromium)")
            return
        }
        let png = dir.appendingPathComponent("host.png").path
        let shot = try Spawned.run(chromium, ["--headless", "--no-sandbox", "--disable-gpu",
                                           "--user-data-dir=" + dir.appendingPathComponent("profile").path,
                                           "--screenshot=" + png, "--window-size=1200,900", "file://" + html],
                                timeout: 120)
        #expect(shot.status == 0, "chromium: \(shot.stderr.suffix(1000))")
        let bytes = try Data(contentsOf: URL(fileURLWithPath: png))
        #expect(bytes.prefix(8) == Data([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))
        // A blank 1200×900 page compresses to a few KB; the charts make it tens of KB.
        #expect(bytes.count > 30_000)
    }
}
