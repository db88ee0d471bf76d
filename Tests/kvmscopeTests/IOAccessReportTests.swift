import Foundation
import KVMAnalysis
import KVMExits
import KVMScopeViews
import KVMSources
import Testing
import TestSupport

/// perf kvm stat's ioport and mmio analyses, each port and address named by its device: golden tables from a
/// kernel trace with known ports and times, the real corpus (its kvm_mmio lines), and JSON.
@Suite struct IOAccessReportTests {
    /// Times by construction: 0x3f8 out 3 µs and 5 µs, 0x3fd in 2 µs, 0x70 out 1 µs (vCPU 1), an MMIO write to
    /// the local APIC 2 µs (kvm_mmio → entry), an MMIO read of 0xfebf1000 handed to the VMM, 10 µs from its exit
    /// to the completing kvm_mmio read.
    static let known = """
               CPU 0/KVM-100     (     50) [001] d..1. 1.000000: kvm_exit: vcpu 0 reason IO_INSTRUCTION rip 0xa info1 0x3f80010 info2 0x0 intr_info 0x0 error_code 0x0
               CPU 0/KVM-100     (     50) [001] ..... 1.000001: kvm_pio: pio_write at 0x3f8 size 1 count 1 val 0x41
               CPU 0/KVM-100     (     50) [001] d..1. 1.000004: kvm_entry: vcpu 0, rip 0xa
               CPU 0/KVM-100     (     50) [001] d..1. 1.000010: kvm_exit: vcpu 0 reason IO_INSTRUCTION rip 0xa info1 0x3f80010 info2 0x0 intr_info 0x0 error_code 0x0
               CPU 0/KVM-100     (     50) [001] ..... 1.000011: kvm_pio: pio_write at 0x3f8 size 1 count 1 val 0x42
               CPU 0/KVM-100     (     50) [001] d..1. 1.000016: kvm_entry: vcpu 0, rip 0xa
               CPU 0/KVM-100     (     50) [001] d..1. 1.000020: kvm_exit: vcpu 0 reason IO_INSTRUCTION rip 0xb info1 0x3fd0018 info2 0x0 intr_info 0x0 error_code 0x0
               CPU 0/KVM-100     (     50) [001] ..... 1.000021: kvm_pio: pio_read at 0x3fd size 1 count 1 val 0x60
               CPU 0/KVM-100     (     50) [001] d..1. 1.000023: kvm_entry: vcpu 0, rip 0xb
               CPU 0/KVM-100     (     50) [001] d..1. 1.000030: kvm_exit: vcpu 0 reason EPT_MISCONFIG rip 0xc info1 0x0 info2 0x0 intr_info 0x0 error_code 0x0
               CPU 0/KVM-100     (     50) [001] ..... 1.000031: kvm_mmio: mmio write len 4 gpa 0xfee000b0 val 0x0
               CPU 0/KVM-100     (     50) [001] d..1. 1.000033: kvm_entry: vcpu 0, rip 0xc
               CPU 0/KVM-100     (     50) [001] d..1. 1.000040: kvm_exit: vcpu 0 reason EPT_MISCONFIG rip 0xd info1 0x0 info2 0x0 intr_info 0x0 error_code 0x0
               CPU 0/KVM-100     (     50) [001] ..... 1.000041: kvm_mmio: mmio unsatisfied-read len 4 gpa 0xfebf1000 val 0x0
               CPU 0/KVM-100     (     50) [001] ..... 1.000050: kvm_mmio: mmio read len 4 gpa 0xfebf1000 val 0x1
               CPU 0/KVM-100     (     50) [001] d..1. 1.000051: kvm_entry: vcpu 0, rip 0xd
               CPU 1/KVM-101     (     50) [002] d..1. 1.000100: kvm_exit: vcpu 1 reason IO_INSTRUCTION rip 0xe info1 0x700010 info2 0x0 intr_info 0x0 error_code 0x0
               CPU 1/KVM-101     (     50) [002] ..... 1.000101: kvm_pio: pio_write at 0x70 size 1 count 1 val 0x8f
               CPU 1/KVM-101     (     50) [002] d..1. 1.000102: kvm_entry: vcpu 1, rip 0xe

        """

    static func analysis() throws -> ReportAnalysis {
        try ReportAnalysis.run(try TextTraceReader(bytes: Array(known.utf8), name: "known"))
    }

    static func summary() throws -> (Summary, Double) {
        let a = try analysis()
        return (try Summary(a.snapshot), a.durationSeconds)
    }

    @Test func portTableGolden() throws {
        let (s, seconds) = try Self.summary()
        #expect(IOAccessTableView.render(s, space: .port, seconds: seconds) == [
            "VM 50, all vCPUs: IO Port Access",
            "IO Port Access        Device                        Samples  Samples%    Time%   Min Time   Max Time                Avg time    Rate/s",
            "0x3f8:POUT            serial COM1                         2    50.00%   72.73%     3.00us     5.00us   4.00us ( +-  25.00% )     19608",
            "0x70:POUT             rtc0 cmos                           1    25.00%    9.09%     1.00us     1.00us   1.00us ( +-   0.00% )      9804",
            "0x3fd:PIN             serial COM1                         1    25.00%   18.18%     2.00us     2.00us   2.00us ( +-   0.00% )      9804",
            "Total                                                     4   100.00%  100.00%                                                   39216",
            "time: kvm_pio to the vCPU's next kvm_entry, 4 of 4 accesses timed (11.00us)",
        ])
        // --top 1: the rest summed on one line.
        #expect(IOAccessTableView.render(s, space: .port, seconds: seconds, top: 1)[3]
                == "(2 more)                                                  2    50.00%")
    }

    @Test func mmioTableGolden() throws {
        let (s, seconds) = try Self.summary()
        #expect(IOAccessTableView.render(s, space: .mmio, seconds: seconds) == [
            "VM 50, all vCPUs: MMIO Access",
            "MMIO Access           Device                        Samples  Samples%    Time%   Min Time   Max Time                Avg time    Rate/s   To VMM",
            "0xfebf1000:R          unknown                             1    50.00%   83.33%    10.00us    10.00us  10.00us ( +-   0.00% )      9804        1",
            "0xfee000b0:W          local apic                          1    50.00%   16.67%     2.00us     2.00us   2.00us ( +-   0.00% )      9804        0",
            "Total                                                     2   100.00%  100.00%                                                   19608        1",
            "time: writes from kvm_mmio to the next kvm_entry, reads from kvm_exit to kvm_mmio read; 2 of 2 accesses timed (12.00us)",
        ])
    }

    /// Overflowed events are shown under the table, never dropped silently.
    @Test func overflowIsShown() throws {
        var (s, _) = try Self.summary()
        s.ioAccesses.overflow = (port: 7, mmio: 0)
        let lines = IOAccessTableView.render(s, space: .port, seconds: 0)
        #expect(lines.last == "7 kvm_pio events beyond the per-address table (counted in the event totals, not attributed to a port)")
        let j = IOAccessTableView.json(s.ioAccesses).serialized(pretty: false)
        #expect(j.hasSuffix("\"overflow\":{\"port\":7,\"mmio\":0}}"), "\(j)")
    }

    /// The corpus' kvm_mmio lines (27: 14 writes, 8 reads, 5 unsatisfied reads), timed as perf does; the
    /// expected times were computed from the file with awk (writes: kvm_mmio → kvm_entry, reads: kvm_exit → kvm_mmio read).
    @Test func corpusMMIOTableGolden() throws {
        let r = try CLI.run(["report", "--event", "mmio", ReportCommandTests.host])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        #expect(r.stdout == """
            \(ReportCommandTests.host): trace-cmd report, 4463 kvm events over 4.74s (16062.943940000 → 16067.681086000)
            note: no TGID column: each thread is its own VM

            VM 150750 (qemu-system-x86), all vCPUs: MMIO Access
            MMIO Access           Device                        Samples  Samples%    Time%   Min Time   Max Time                Avg time    Rate/s   To VMM
            0xfec00000:W          ioapic                              5    22.73%    9.09%     1.00us     2.00us   1.60us ( +-  15.31% )         1        0
            0xfec00010:W          ioapic                              5    22.73%   15.91%     2.00us     4.00us   2.80us ( +-  13.36% )         1        0
            0x81080008:R          unknown                             3    13.64%   19.32%     5.00us     6.00us   5.67us ( +-   5.88% )         1        3
            0xfec00010:R          ioapic                              3    13.64%    9.09%     2.00us     3.00us   2.67us ( +-  12.50% )         1        0
            0x810800c0:R          unknown                             2     9.09%   32.95%    14.00us    15.00us  14.50us ( +-   3.45% )         0        2
            0x810800d8:W          unknown                             2     9.09%   12.50%     5.00us     6.00us   5.50us ( +-   9.09% )         0        0
            0x81082818:W          unknown                             2     9.09%    1.14%     0.00us     1.00us   0.50us ( +- 100.00% )         0        0
            Total                                                    22   100.00%  100.00%                                                       5        5
            time: writes from kvm_mmio to the next kvm_entry, reads from kvm_exit to kvm_mmio read; 22 of 22 accesses timed (88.00us)

            pairing: paired 802, orphan exits 8, orphan entries 4, open at end 0, invalidated by loss 0, negative gaps 0
            lost events: 0

            """)
        let p = try CLI.run(["report", "--event", "ioport", ReportCommandTests.host])
        #expect(p.status == 0 && p.stdout.contains("\nNo kvm_pio events.\n"), "\(p.stdout)")
    }

    @Test func jsonFieldsOfTheKnownTrace() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("io-known-\(getpid()).txt").path
        defer { unlink(path) }
        try Self.known.write(toFile: path, atomically: true, encoding: .utf8)
        let r = try CLI.run(["report", "--json", path])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        let io = try #require(try CLI.json(r.stdout)["io_accesses"] as? [String: Any])
        let ports = try #require(io["ports"] as? [[String: Any]])
        #expect(ports.map { $0["key"] as? String } == ["0x70:POUT", "0x3f8:POUT", "0x3fd:PIN"])
        #expect(ports.map { $0["device"] as? String } == ["rtc0 cmos", "serial COM1", "serial COM1"])
        #expect(ports.map { $0["count"] as? Int } == [1, 2, 1])
        #expect(ports.map { $0["address"] as? Int } == [0x70, 0x3f8, 0x3fd])
        #expect(ports.map { $0["direction"] as? String } == ["write", "write", "read"])
        let t = try #require(ports[1]["time_ns"] as? [String: Any])
        #expect(t["count"] as? Int == 2 && t["sum"] as? Int == 8000 && t["min"] as? Int == 3000
                && t["max"] as? Int == 5000 && t["mean"] as? Double == 4000 && t["rel_stderr_pct"] as? Double == 25)
        let mmio = try #require(io["mmio"] as? [[String: Any]])
        #expect(mmio.map { $0["key"] as? String } == ["0xfebf1000:R", "0xfee000b0:W"])
        #expect(mmio.map { $0["device"] as? String } == ["unknown", "local apic"])
        #expect(mmio.map { $0["to_vmm"] as? Int } == [1, 0])
        #expect((io["overflow"] as? [String: Int]) == ["port": 0, "mmio": 0])
    }

    @Test func badAnalysisIsOneLine() throws {
        let r = try CLI.run(["report", "--event", "msr", ReportCommandTests.host])
        #expect(r.status != 0)
        #expect(r.stderr.contains("--event must be vmexit, ioport or mmio (perf kvm stat's analyses), not 'msr'"), "\(r.stderr)")
    }
}

/// The real storm guest (`kvmscope storm`): its port (0x10, `out 0x10,al`) and MMIO addresses (0x10000000 + vCPU × 8,
/// stores to a GPA without a memory slot) counted exactly per port and address by `stat`, each named.
@Suite(.serialized, .enabled(if: KVMTest.canRun, "needs root, /dev/kvm and tracefs"))
struct IOAccessLiveTests {
    static let n = 20_000

    @Test func ioStormPortCountedAndNamed() throws {
        let r = try CLI.run(["stat", "--json", "--event", "ioport", "--", CLI.binary, "storm", "--kind", "io",
                             "--vcpus", "2", "--exits", "\(Self.n)"])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        let j = try CLI.json(r.stdout)
        #expect((j["events"] as? [String: Int])?["kvm_pio"] == 2 * Self.n)
        let io = try #require(j["io_accesses"] as? [String: Any])
        let ports = try #require(io["ports"] as? [[String: Any]])
        #expect(ports.count == 1)
        #expect(ports.first?["key"] as? String == "0x10:POUT")
        #expect(ports.first?["device"] as? String == "dma1")
        #expect(ports.first?["count"] as? Int == 2 * Self.n)
        #expect(ports.first?["vm_name"] as? String == "kvmscope")
        #expect(ports.first.map { $0["time_ns"] is NSNull } == true)
        #expect((io["mmio"] as? [Any])?.isEmpty == true)
        #expect((io["overflow"] as? [String: Int]) == ["port": 0, "mmio": 0])
    }

    /// Other events named: the analysis adds the events it reads (kvm_pio), and only those are traced.
    @Test func namedEventsGainTheAnalysisEvents() throws {
        let r = try CLI.run(["stat", "--json", "--event", "kvm_fpu", "--event", "ioport", "--", CLI.binary, "storm",
                             "--kind", "io", "--exits", "3000"])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        let j = try CLI.json(r.stdout)
        #expect((j["events"] as? [String: Int]) == ["kvm_fpu": 6000, "kvm_pio": 3000])
        let ports = try #require((j["io_accesses"] as? [String: Any])?["ports"] as? [[String: Any]])
        #expect(ports.map { "\($0["key"] ?? "") \($0["device"] ?? "") \($0["count"] ?? "")" } == ["0x10:POUT dma1 3000"])
    }

    /// Recorded to a trace.dat (kvm_pio's port and rw decoded from the file's own format, by field name), then
    /// `report --event ioport`: the same exact count, named.
    @Test func recordedStormReportsItsPort() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("io-storm-\(getpid()).dat").path
        defer { unlink(path) }
        let rec = try CLI.run(["record", "-o", path, "-e", "kvm_pio", "-e", "kvm_mmio", "--", CLI.binary, "storm",
                               "--kind", "io", "--vcpus", "2", "--exits", "5000"])
        #expect(rec.status == 0, "stderr: \(rec.stderr)")
        let r = try CLI.run(["report", "--event", "ioport", path])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        let lines = r.stdout.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        let title = try #require(lines.firstIndex { $0.hasSuffix(", all vCPUs: IO Port Access") }, "\(r.stdout)")
        #expect(lines[title + 2].hasPrefix(
            "0x10:POUT             dma1                            10000   100.00%        -          -          -                       -"),
                "\(lines[title + 2])")
        #expect(lines[title + 4] == "time: kvm_pio to the vCPU's next kvm_entry, 0 of 10000 accesses timed (0ns)")
        #expect(r.stdout.hasSuffix("\nlost events: 0\n"), "\(r.stdout)")
    }

    @Test func mmioStormAddressCountedAsUnknown() throws {
        let r = try CLI.run(["stat", "--event", "mmio", "--", CLI.binary, "storm", "--kind", "mmio",
                             "--vcpus", "2", "--exits", "\(Self.n)"])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        let lines = r.stdout.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        let title = try #require(lines.firstIndex { $0.hasSuffix(", all vCPUs: MMIO Access") }, "\(r.stdout)")
        #expect(lines[title + 1] == IOAccessTableView.header(.mmio))
        // Each vCPU stores to its own address (rbx = 0x10000000 + vCPU × 8). Rate/s depends on the run's
        // duration: everything before it is exact.
        for (i, address) in ["0x10000000", "0x10000008"].enumerated() {
            #expect(lines[title + 2 + i].hasPrefix(
                "\(address):W          unknown                         20000    50.00%        -          -          -                       -"),
                    "\(lines[title + 2 + i])")
            #expect(lines[title + 2 + i].hasSuffix("        0"), "no read was handed to the VMM: \(lines[title + 2 + i])")
        }
        #expect(lines[title + 4].hasPrefix("Total                                                 40000   100.00%        -"))
        #expect(lines[title + 5] == "time: writes from kvm_mmio to the next kvm_entry, reads from kvm_exit to kvm_mmio read; 0 of 40000 accesses timed (0ns)")
        #expect(!r.stdout.contains("IO Port Access"), "only the mmio analysis was asked for")
    }
}

/// The live view's `i` screen: rows per port/address and device, from the same summary.
@Suite struct IOAccessLiveViewTests {
    @Test func ioScreenGolden() throws {
        let (s, _) = try IOAccessReportTests.summary()
        var state = LiveViewState(delay: 1)
        state.mode = .io
        var before = s
        before.ioAccesses.rows = before.ioAccesses.rows.map { var r = $0; r.count = r.count > 1 ? 1 : 0; return r }
        let frame = LiveFrame(current: s, previous: before, seconds: 1)
        let screen = LiveView.render(frame, state: state, width: 100, height: 14)
        #expect(screen.text == [
            "kvm statistics - summary - I/O by device",
            "                                                                 sort: CurAvg/s  delay: 1.0s  lost 0",
            " Port/Address  Device                                                      Total %Total CurAvg/s",
            ">0x3f8:POUT    serial COM1                                                     2   33.3        1",
            " 0x3fd:PIN     serial COM1                                                     1   16.7        1",
            " 0x70:POUT     rtc0 cmos                                                       1   16.7        1",
            " 0xfebf1000:R  unknown                                                         1   16.7        1",
            " 0xfee000b0:W  local apic                                                      1   16.7        1",
            " Total                                                                         6               5",
            "", "", "", "",
            LiveView.keyBar(width: 100),
        ])
        // -p of another VM: nothing; f narrows by the row's text.
        state.pid = 1
        #expect(LiveView.rows(LiveFrame(current: try Summary(IOAccessReportTests.analysis().snapshot, filter: state.filter),
                                        previous: nil, seconds: 1), state: state, width: 100).isEmpty)
        state.pid = nil
        state.fields = "serial"
        #expect(LiveView.rows(frame, state: state, width: 100).map(\.total) == [2, 1])
        // A memory tree's long device name fits at 100 columns: no latency columns here to make room for.
        state.fields = nil
        var long = s
        long.ioAccesses.rows = long.ioAccesses.rows.map { var r = $0; r.device = "virtio-disk0 vda notify (virtio-blk 00:02.0 BAR4)"; return r }
        let wide = LiveView.render(LiveFrame(current: long, previous: nil, seconds: 1), state: state, width: 100, height: 14)
        #expect(wide.text[3] == ">0x3f8:POUT    virtio-disk0 vda notify (virtio-blk 00:02.0 BAR4)               2   33.3",
                "\(wide.text)")
    }
}

/// `live --event ioport` (perf kvm stat live's option) opens on the I/O rows; `i` toggles them, in a real
/// terminal (tmux) while the storm guest runs.
@Suite(.serialized, .enabled(if: KVMTest.canRun, "needs root, /dev/kvm, tracefs and tmux"))
struct IOAccessTUITests {
    @Test func liveOpensOnThePortRowsAndIToggles() throws {
        let storm = try Spawned(CLI.binary, ["storm", "--kind", "io", "--vcpus", "1", "--exits", "50000000", "--seconds", "60"],
                                stdinNull: true, quiet: true)
        defer { storm.stop() }
        let pid = storm.pid
        let name = "kvmscope-io-\(getpid())"
        try LiveTUITests.tmux(["new-session", "-d", "-s", name, "-x", "100", "-y", "24",
                               "env PS1='kvmscope-test$ ' TERM=xterm-256color bash --norc --noprofile"])
        defer { _ = try? LiveTUITests.tmux(["kill-session", "-t", name], check: false) }
        let pane = LiveTUITests.Pane(name: name)
        try pane.wait("the shell prompt") { $0.contains { $0.hasPrefix("kvmscope-test$") } }
        try pane.type("clear; \(CLI.binary) live -s 0.5 -p \(pid) --event ioport")
        try pane.keys("Enter")
        func portTotal(_ s: [String]) -> Int? {
            guard let line = s.first(where: { $0.hasPrefix(" 0x10:POUT     dma1 ") || $0.hasPrefix(">0x10:POUT     dma1 ") })
            else { return nil }
            return Int(line.dropFirst(20).split(separator: " ").first ?? "")
        }
        let first = try pane.wait("the port rows") { s in
            s.first == "kvm statistics - pid \(pid) (kvmscope) - I/O by device" && (portTotal(s) ?? 0) > 0
        }
        #expect(first[2].hasPrefix(" Port/Address  Device "), "\(first[2])")
        // Only the storm's one port: its row is 100 % of the accesses.
        #expect(first[3].hasPrefix(">0x10:POUT     dma1 "), "\(first[3])")
        #expect(first[3].dropFirst().split(separator: " ").dropFirst(3).first == "100.0", "\(first[3])")
        #expect(first[4].hasPrefix(" Total "), "\(first[4])")
        try pane.keys("i")
        try pane.wait("the event rows") { s in
            s.first == "kvm statistics - pid \(pid) (kvmscope)" && s.contains { $0.hasPrefix(" Event ") }
        }
        try pane.keys("i")
        let again = try pane.wait("the port rows again") { s in s.first?.hasSuffix(" - I/O by device") == true }
        #expect(portTotal(again).map { $0 >= portTotal(first)! } == true, "counts only grow")
        try pane.keys("q")
        try pane.wait("the shell prompt after q") { $0.contains { $0.hasPrefix("kvmscope-test$") && !$0.contains("live") } }
    }
}

/// The live view's `i` screen with `--qmp`: a real QEMU guest's virtio-blk notifications (a write to the notify
/// region of memory BAR 4 of the modern virtio device) named by QEMU's memory tree and the VM's own PCI BARs, as
/// `stat --qmp` names them.
@Suite(.serialized, .enabled(if: KVMTest.canRun && (QEMUGuest.available || KVMTest.required),
                              "needs root, /dev/kvm, tracefs, tmux and qemu-system-x86"))
struct IOAccessQMPTUITests {
    @Test func mmioRowsAreNamedByPCIDevice() throws {
        let guest = try QEMUGuest(name: "qemu-live-io-\(getpid())")
        defer { guest.stop() }
        let name = "kvmscope-qmpio-\(getpid())"
        try LiveTUITests.tmux(["new-session", "-d", "-s", name, "-x", "120", "-y", "30",
                               "env PS1='kvmscope-test$ ' TERM=xterm-256color bash --norc --noprofile"])
        defer { _ = try? LiveTUITests.tmux(["kill-session", "-t", name], check: false) }
        let pane = LiveTUITests.Pane(name: name)
        try pane.wait("the shell prompt") { $0.contains { $0.hasPrefix("kvmscope-test$") } }
        try pane.type("clear; \(CLI.binary) live -s 0.5 -p \(guest.pid) --event mmio --qmp \(guest.kvmscopeQMPPath)")
        try pane.keys("Enter")
        // The boot sector loops disk requests: the notify writes come within the guest's boot (~6 s).
        let screen = try pane.wait("the virtio-blk notify row", timeout: 60) { s in
            s.first?.hasSuffix(" - I/O by device") == true && s.contains { $0.contains(":W ") && $0.contains(" virtio-disk0 notify (virt") }  // the screen cuts long names
        }
        let rows = screen.drop { !$0.hasPrefix(" Port/Address  Device ") }.dropFirst().prefix { !$0.hasPrefix(" Total ") }
        // `--event mmio`: MMIO rows only (perf kvm stat live --event=mmio), none of the BIOS's port I/O.
        #expect(!rows.isEmpty && !rows.contains { $0.contains(":POUT ") || $0.contains(":PIN ") }, "\(screen.joined(separator: "\n"))")
        #expect(!rows.contains { $0.contains(" unknown ") }, "\(screen.joined(separator: "\n"))")
        try pane.keys("q")
        try pane.wait("the shell prompt after q") { $0.contains { $0.hasPrefix("kvmscope-test$") && !$0.contains("live") } }
    }
}
