import Foundation
import Testing
import TestSupport

/// `report --by-vcpu` and `--reason` on a trace without kvm_exit events (what hosts whose KVM never fires it
/// record: kvm_pio, kvm_mmio, kvm_userspace_exit). Before, both printed the output of a run without them and
/// said nothing; now `--by-vcpu` tables count each vCPU's kvm events and each option says in one warning line
/// what it acts on.
@Suite struct ReportWithoutExitsTests {
    /// Kernel trace text with tgids: VM 1200, vCPU 0 two port writes, vCPU 1 an MMIO write and a port write,
    /// and an interrupt from the VMM's main thread (no vCPU).
    static let trace = """
         CPU 0/KVM-1201 (   1200) [000] ..... 100.000001: kvm_pio: pio_write at 0x10 size 1 count 1 val 0x0
         CPU 0/KVM-1201 (   1200) [000] ..... 100.000002: kvm_userspace_exit: reason KVM_EXIT_IO (2)
         CPU 0/KVM-1201 (   1200) [000] ..... 100.000003: kvm_pio: pio_write at 0x10 size 1 count 1 val 0x0
         CPU 0/KVM-1201 (   1200) [000] ..... 100.000004: kvm_userspace_exit: reason KVM_EXIT_IO (2)
         CPU 1/KVM-1202 (   1200) [001] ..... 100.000005: kvm_mmio: mmio write len 4 gpa 0xd0000000 val 0x1
         CPU 1/KVM-1202 (   1200) [001] ..... 100.000006: kvm_userspace_exit: reason KVM_EXIT_MMIO (6)
         CPU 1/KVM-1202 (   1200) [001] ..... 100.000007: kvm_pio: pio_write at 0x10 size 1 count 1 val 0x0
         CPU 1/KVM-1202 (   1200) [001] ..... 100.000008: kvm_userspace_exit: reason KVM_EXIT_IO (2)
         qemu-system-x86-1200 (   1200) [001] ..... 100.000009: kvm_set_irq: gsi 4 level 1 source 0

        """

    static func withTrace(_ body: (String) throws -> Void) throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("kvmscope-noexits-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).txt").path
        try Self.trace.write(toFile: path, atomically: true, encoding: .utf8)
        defer { unlink(path) }
        try body(path)
    }

    static let head = """
        kernel trace text, 9 kvm events over 8.00us (100.000001000 → 100.000009000)

        Event                                          Total  %Total   CurAvg/s
        kvm_userspace_exit                                 4    44.4     500000
          KVM_EXIT_IO                                      3    75.0     375000
          KVM_EXIT_MMIO                                    1    25.0     125000
        kvm_pio                                            3    33.3     375000
        kvm_mmio                                           1    11.1     125000
        kvm_set_irq                                        1    11.1     125000
        Total                                              9            1125000

              VM  Name                    vCPUs             Events       Exits  Userspace exits
            1200  qemu-system-x86         0,1                    9           0                4


        """

    @Test func byVCPUCountsEachVCPUsEvents() throws {
        try Self.withTrace { path in
            let r = try CLI.run(["report", "--by-vcpu", path])
            #expect(r.status == 0)
            #expect(r.stdout == "\(path): " + Self.head + """
                No kvm_exit events: the kvm events of each vCPU.

                VM 1200 (qemu-system-x86), vCPU 0
                Event                                          Total  %Total
                kvm_pio                                            2    50.0
                kvm_userspace_exit                                 2    50.0
                  KVM_EXIT_IO                                      2   100.0
                Total                                              4

                VM 1200 (qemu-system-x86), vCPU 1
                Event                                          Total  %Total
                kvm_userspace_exit                                 2    50.0
                  KVM_EXIT_IO                                      1    50.0
                  KVM_EXIT_MMIO                                    1    50.0
                kvm_mmio                                           1    25.0
                kvm_pio                                            1    25.0
                Total                                              4

                VM 1200 (qemu-system-x86), vCPU unknown
                Event                                          Total  %Total
                kvm_set_irq                                        1   100.0
                Total                                              1

                pairing: paired 0, orphan exits 0, orphan entries 0, open at end 0, invalidated by loss 0, negative gaps 0
                lost events: 0

                """)
            #expect(r.stderr == "kvmscope: warning: --by-vcpu: \(path) has no kvm_exit events (9 kvm events: kvm_userspace_exit 4, "
                    + "kvm_pio 3, kvm_mmio 1, …); its tables count each vCPU's kvm events instead of exits\n")
            // Without the option: the one line saying there are no exits, no warning.
            let plain = try CLI.run(["report", path])
            #expect(plain.stdout == "\(path): " + Self.head + """
                No kvm_exit events.

                pairing: paired 0, orphan exits 0, orphan entries 0, open at end 0, invalidated by loss 0, negative gaps 0
                lost events: 0

                """)
            #expect(plain.stderr == "")
            // JSON and CSV rows are per vCPU whatever --by-vcpu says: nothing to warn about.
            #expect(try CLI.run(["report", "--by-vcpu", "--csv", path]).stderr == "")
        }
    }

    @Test func reasonSaysItKeepsUserspaceExits() throws {
        try Self.withTrace { path in
            for mode in [[], ["--csv"]] {
                let r = try CLI.run(["report", "--reason", "mmio"] + mode + [path])
                #expect(r.status == 0)
                #expect(r.stderr == "kvmscope: warning: --reason mmio: \(path) has no kvm_exit events (9 kvm events: kvm_userspace_exit 4, "
                        + "kvm_pio 3, kvm_mmio 1, …); it keeps only kvm_userspace_exit's KVM_EXIT_MMIO\n", "\(mode)")
                if mode == ["--csv"] {
                    #expect(r.stdout == """
                        file,vm,vm_name,vcpu,reason,isa,blocking,count,paired,min_ns,mean_ns,stddev_ns,p50_ns,p90_ns,p99_ns,p999_ns,max_ns,total_ns
                        \(path),1200,qemu-system-x86,1,KVM_EXIT_MMIO,userspace,0,1,0,,,,,,,,,

                        """)
                }
            }
            // A reason of kvm_exit's is still an error naming what the trace has.
            let hlt = try CLI.run(["report", "--reason", "HLT", path])
            #expect(hlt.status == 1)
            #expect(hlt.stderr == "kvmscope: \(path): --reason HLT: the trace has no kvm_exit events, and no KVM_EXIT_HLT exits "
                    + "to user space (its kvm_userspace_exit reasons: KVM_EXIT_IO 3, KVM_EXIT_MMIO 1)\n")
        }
    }
}

/// `report --html` of a trace without kvm_exit: the page charts the rate of its userspace exit reasons
/// (kvm_userspace_exit's KVM_EXIT_*) and says why there is no exit rate or latency and what the trace has
/// (before, a blank page with an empty selector and empty charts); Chromium shows that box.
@Suite struct ReportWithoutExitsHTMLTests {
    static let note = "No kvm_exit events in this trace (kvm_exit may not fire on the host where it was recorded): no exit "
        + "rate or exit→entry latency to chart; the rate chart shows its userspace exits. Its kvm events: "
        + "kvm_userspace_exit 4, kvm_pio 3, kvm_mmio 1, kvm_set_irq 1; "
        + "userspace exits (kvm_userspace_exit): KVM_EXIT_IO 3, KVM_EXIT_MMIO 1."

    @Test func pageSaysWhyItHasNoExitCharts() throws {
        try ReportWithoutExitsTests.withTrace { path in
            let html = path + ".html"
            defer { unlink(html) }
            let r = try CLI.run(["report", "--html", html, path])
            #expect(r.status == 0, "\(r.stderr)")
            let page = try String(contentsOfFile: html, encoding: .utf8)
            let start = try #require(page.range(of: #"<script id="kvmscope-data" type="application/json">"#))
            let end = try #require(page.range(of: "</script>", range: start.upperBound..<page.endIndex))
            let data = try #require(JSONSerialization.jsonObject(with: Data(page[start.upperBound..<end.lowerBound].utf8))
                                    as? [String: Any])
            #expect(data["note"] as? String == Self.note)
            // The rate chart: kvm_userspace_exit's reasons per VM and vCPU; no latencies.
            let groups = try #require(data["groups"] as? [[String: Any]])
            #expect(groups.map { $0["label"] as? String } == ["All VMs", "VM 1200 (qemu-system-x86), all vCPUs",
                                                              "VM 1200 (qemu-system-x86), vCPU 0", "VM 1200 (qemu-system-x86), vCPU 1"])
            #expect(groups.map { ($0["series"] as? [String: [Int]])?.mapValues { $0.reduce(0, +) } ?? [:] }
                    == [["KVM_EXIT_IO": 3, "KVM_EXIT_MMIO": 1], ["KVM_EXIT_IO": 3, "KVM_EXIT_MMIO": 1],
                        ["KVM_EXIT_IO": 2], ["KVM_EXIT_IO": 1, "KVM_EXIT_MMIO": 1]])
            #expect(groups.allSatisfy { ($0["heat"] as? [Int])?.reduce(0, +) == 0 })
            // A trace with exits has no note.
            let host = path + ".host.html"
            defer { unlink(host) }
            #expect(try CLI.run(["report", "--html", host, ReportCommandTests.host]).status == 0)
            #expect(!(try String(contentsOfFile: host, encoding: .utf8)).contains(#""note":"#))

            guard let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].first(where: {
                FileManager.default.isExecutableFile(atPath: $0)
            }) else {
                Issue.record("chromium is not installed (Debian package chromium)")
                return
            }
            let profile = path + ".profile"
            defer { try? FileManager.default.removeItem(atPath: profile) }
            let dom = try Spawned.run(chromium, ["--headless", "--no-sandbox", "--disable-gpu", "--user-data-dir=" + profile,
                                                 "--dump-dom", "file://" + html], timeout: 120)
            #expect(dom.status == 0, "chromium: \(dom.stderr.suffix(1000))")
            #expect(dom.stdout.contains(#"<div id="message" style="display: block;">"# + Self.note + "</div>"),
                    "\(dom.stdout.prefix(2000))")
        }
    }
}

/// The same on a trace `kvmscope record` wrote of a storm guest on this host (where kvm_exit never fires).
@Suite(.serialized, .enabled(if: KVMTest.canRun, "needs root, /dev/kvm and tracefs"))
struct ReportWithoutExitsLiveTests {
    /// A kvmscope recording in which no kvm event fired (only `true`'s threads traced): its report says so —
    /// it blamed trace-cmd for a missing thread table before.
    @Test func emptyRecordingSaysItHoldsNoEvents() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("kvmscope-empty-\(getpid()).dat").path
        defer { unlink(path) }
        let rec = try CLI.run(["record", "-o", path, "--duration", "0.3", "--", "true"])
        #expect(rec.status == 0, "stderr: \(rec.stderr)")
        let r = try CLI.run(["report", path])
        #expect(r.status == 0 && r.stderr.isEmpty, "stderr: \(r.stderr)")
        #expect(Array(r.stdout.split(separator: "\n", omittingEmptySubsequences: false).prefix(3)) == [
            "\(path): trace.dat, 0 kvm events over 0ns (0.000000000 → 0.000000000)",
            "note: the recording holds no kvm events: none fired in the threads it traced while it ran",
            "",
        ])
    }

    @Test func recordedStormByVCPU() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("kvmscope-noexits-\(getpid()).dat").path
        defer { unlink(path) }
        let n = 20_000
        let rec = try CLI.run(["record", "-o", path, "--", CLI.binary, "storm", "--kind", "io", "--vcpus", "2", "--exits", "\(n)"])
        #expect(rec.status == 0, "\(rec.stderr)")
        let r = try CLI.run(["report", "--by-vcpu", path])
        #expect(r.status == 0)
        let lines = r.stdout.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        let tables = lines.drop { $0 != "No kvm_exit events: the kvm events of each vCPU." }
        for vcpu in 0..<2 {
            let table = tables.drop { !$0.hasSuffix(", vCPU \(vcpu)") }.dropFirst().prefix { !$0.isEmpty }
            #expect(table.contains { $0.hasPrefix("kvm_pio                                        20000") },
                    "vCPU \(vcpu): \(table)")
            #expect(table.contains { $0.hasPrefix("  KVM_EXIT_IO                                  20000   100.0") }, "vCPU \(vcpu): \(table)")
        }
        #expect(r.stderr.hasPrefix("kvmscope: warning: --by-vcpu: \(path) has no kvm_exit events ("), "\(r.stderr)")
        #expect(r.stderr.hasSuffix("); its tables count each vCPU's kvm events instead of exits\n"), "\(r.stderr)")
        #expect(r.stderr.split(separator: "\n").count == 1, "\(r.stderr)")
    }
}
