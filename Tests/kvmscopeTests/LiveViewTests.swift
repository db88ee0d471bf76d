import Foundation
import KVMAnalysis
import KVMExits
import KVMScopeViews
import Testing

/// Golden screens of the live view, from an aggregate fed hand-made events.
///
/// Two VMs: "web" (pid 100; vCPU 0 = tid 101 does port I/O, vCPU 1 = tid 102 halts and faults) and
/// "db" (pid 200; vCPU 0 = tid 201 does port I/O). Every exit is paired with an entry a known time later.
/// The same batch is fed twice: the previous summary is taken after the first, so every delta is half
/// the total, over 2 s.
struct LiveViewTests {
    static let exitID: UInt16 = 0, entryID: UInt16 = 1, pioID: UInt16 = 2, userID: UInt16 = 3

    static func catalog() -> EventCatalog {
        var c = EventCatalog()
        c.add(system: "kvm", name: "kvm_exit")
        c.add(system: "kvm", name: "kvm_entry")
        c.add(system: "kvm", name: "kvm_pio")
        c.add(system: "kvm", name: "kvm_userspace_exit")
        return c
    }

    static let identities: [Int32: ThreadIdentity] = [
        101: ThreadIdentity(vm: 100, vmName: "web", vcpu: 0, comm: "CPU 0/KVM"),
        102: ThreadIdentity(vm: 100, vmName: "web", vcpu: 1, comm: "CPU 1/KVM"),
        201: ThreadIdentity(vm: 200, vmName: "db", vcpu: 0, comm: "CPU 0/KVM"),
    ]

    /// (previous, current) snapshots.
    static func snapshots(lost: UInt64 = 0, earlyPIO: Int = 0) -> (AggregateSnapshot, AggregateSnapshot) {
        let agg = Aggregator(catalog: catalog(), shardCount: 1, resolver: { identities[$0] })
        var w = agg.writer(shard: 0)
        var pairer = agg.makePairer()
        var ts: UInt64 = 1_000_000
        func exit(_ tid: Int32, reason: UInt32, latency: UInt64, rip: UInt64) {
            let x = TraceEvent(timestamp: ts, rip: rip, tid: tid, event: exitID, reason: reason, vcpu: identities[tid]!.vcpu!, isa: 1)
            w.add(x, hasReason: true)
            pairer.exit(x)
            let e = TraceEvent(timestamp: ts + latency, rip: rip, tid: tid, event: entryID, vcpu: identities[tid]!.vcpu!)
            w.add(e, hasReason: false)
            pairer.entry(e)
            ts += latency + 1000
        }
        func io(_ tid: Int32) {
            w.add(TraceEvent(timestamp: ts, tid: tid, event: pioID), hasReason: false)
            w.add(TraceEvent(timestamp: ts, tid: tid, event: userID, reason: 2), hasReason: true)
        }
        func batch() {
            for _ in 0..<10 { exit(101, reason: 30, latency: 2000, rip: 0x1000); io(101) }
            for _ in 0..<4 { exit(102, reason: 12, latency: 1_000_000, rip: 0x2000) }
            for i in 0..<6 { exit(102, reason: 48, latency: 5000, rip: i < 4 ? 0x3000 : 0x3008) }
            for _ in 0..<5 { exit(201, reason: 30, latency: 3000, rip: 0x1000); io(201) }
        }
        batch()
        for _ in 0..<earlyPIO { w.add(TraceEvent(timestamp: ts, tid: 201, event: pioID), hasReason: false) }
        let previous = agg.snapshot(timestamp: 1_000_000_000)
        batch()
        w.addLost(lost)
        return (previous, agg.snapshot(timestamp: 3_000_000_000))
    }

    static func frame(_ state: LiveViewState, lost: UInt64 = 0, earlyPIO: Int = 0) throws -> LiveFrame {
        let (p, c) = snapshots(lost: lost, earlyPIO: earlyPIO)
        return LiveFrame(current: try Summary(c, filter: state.filter), previous: try Summary(p, filter: state.filter),
                         seconds: 2, guests: try GuestTotal.of(c, filter: state.filter),
                         previousGuests: try GuestTotal.of(p, filter: state.filter))
    }

    static func screen(_ state: LiveViewState, width: Int = 120, height: Int = 40, lost: UInt64 = 0) throws -> LiveScreen {
        LiveView.render(try frame(state, lost: lost), state: state, width: width, height: height)
    }

    /// The screen without the blank filler lines.
    static func shown(_ s: LiveScreen) -> [String] { s.text.filter { !$0.isEmpty } }

    static let hint = "b guests  v vCPUs  f filter  p pid  g guest  x children  o sort  r reset  s delay  h help  q quit"

    @Test func summaryScreen() throws {
        let s = try Self.screen(LiveViewState(delay: 2))
        #expect(s.lines.count == 40)
        #expect(Self.shown(s) == [
            "kvm statistics - summary",
            "                                                                                     sort: CurAvg/s  delay: 2.0s  lost 0",
            " Event                                         Total %Total CurAvg/s      Avg      p99      Max  Rate 60s",
            ">kvm_entry                                        50   31.3       13",
            " kvm_exit                                         50   31.3       13    3.1us    5.0us    5.0us",
            "   kvm_exit(IO_INSTRUCTION)                       30   60.0        8    2.3us    3.0us    3.0us",
            "   kvm_exit(EPT_VIOLATION)                        12   24.0        3    5.0us    5.0us    5.0us",
            "   kvm_exit(HLT) (blocked)                         8   16.0        2    1.0ms    1.0ms    1.0ms",
            " kvm_pio                                          30   18.8        8",
            " kvm_userspace_exit                               30   18.8        8",
            "   kvm_userspace_exit(IO)                         30  100.0        8",
            " Total                                           160              40",
            Self.hint,
        ])
        // kvm_stat's styles: bold header and Total, reverse column titles; nothing lost, nothing red.
        #expect(s.lines[0].spans.map(\.style) == [.bold])
        #expect(s.lines[2].spans.map(\.style) == [.reverse])
        #expect(s.lines[2].spans[0].text.count == 120)
        #expect(s.lines[11].text.hasPrefix(" Total"))
        #expect(s.lines[11].spans.map(\.style) == [.bold])
        #expect(s.lines[1].spans.isEmpty)
    }

    /// The handling summary of kvm_exit leaves the halts out: (20 × 2 µs + 10 × 3 µs + 12 × 5 µs) / 42 = 3.1 µs.
    @Test func blockedTimeIsNotMixedIntoHandlingTime() throws {
        let f = try Self.frame(LiveViewState())
        let rows = LiveView.rows(f, state: LiveViewState(), width: 120)
        let exit = try #require(rows.first { $0.id == "e:kvm_exit" })
        #expect(exit.latency?.count == 42)
        #expect(exit.latency?.max == 5000)
        let hlt = try #require(rows.first { $0.id == "c:kvm_exit(HLT)" })
        #expect(hlt.blocked)
        #expect(hlt.latency?.count == 8)
    }

    @Test func filteredByRegex() throws {
        var state = LiveViewState(delay: 2)
        // Matched at the start of the name, as kvm_stat's re.match: `pio` alone would keep nothing.
        #expect(state.setRegex("kvm_pio|kvm_userspace") == nil)
        let shown = Self.shown(try Self.screen(state))
        #expect(shown == [
            "kvm statistics - summary",
            "                 regex filter: kvm_pio|kvm_userspace                                 sort: CurAvg/s  delay: 2.0s  lost 0",
            " Event                                         Total %Total CurAvg/s      Avg      p99      Max  Rate 60s",
            ">kvm_pio                                          30   50.0        8",
            " kvm_userspace_exit                               30   50.0        8",
            "   kvm_userspace_exit(IO)                         30  100.0        8",
            " Total                                            60              15",
            Self.hint,
        ])
        #expect(state.setRegex("(") == "\"(\": Not a valid regular expression")
        #expect(state.fields == "kvm_pio|kvm_userspace")
        #expect(state.setRegex("pio") == nil)
        #expect(Self.shown(try Self.screen(state))[3] == " No matching events reported yet")
    }

    @Test func perGuest() throws {
        var state = LiveViewState(delay: 2)
        state.mode = .guests
        let shown = Self.shown(try Self.screen(state))
        #expect(shown == [
            "kvm statistics - summary - by guest",
            "                                                                                     sort: CurAvg/s  delay: 2.0s  lost 0",
            " Guest Name                                    Total %Total CurAvg/s     CPU%    Wait%           Rate 60s",
            ">web (pid 100)                                   120   75.0       30",
            " db (pid 200)                                     40   25.0       10",
            " Total                                           160              40",
            "Enter show guest  " + Self.hint,
        ])
    }

    /// kvm_stat's guest view honours -f: only matching events (or children) count towards each guest.
    @Test func perGuestHonoursTheFilter() throws {
        var state = LiveViewState(delay: 2)
        state.mode = .guests
        state.fields = #"kvm_pio|kvm_exit\(HLT"#
        let shown = Self.shown(try Self.screen(state))
        // web: 10 kvm_pio + 4 kvm_exit(HLT) per batch; db: 5 kvm_pio per batch; two batches, 2 s apart.
        #expect(shown == [
            "kvm statistics - summary - by guest",
            "                 regex filter: kvm_pio|kvm_exit\\(HLT                                 sort: CurAvg/s  delay: 2.0s  lost 0",
            " Guest Name                                    Total %Total CurAvg/s     CPU%    Wait%           Rate 60s",
            ">web (pid 100)                                    28   73.7        7",
            " db (pid 200)                                     10   26.3        3",
            " Total                                            38              10",
            "Enter show guest  " + Self.hint,
        ])
    }

    @Test func perVCPUOfTheSelectedGuest() throws {
        var state = LiveViewState(pid: 100, guestName: "web", delay: 2)
        state.mode = .vcpus
        state.selected = 4
        let shown = Self.shown(try Self.screen(state))
        #expect(shown == [
            "kvm statistics - pid 100 (web) - per vCPU",
            "                                                                                     sort: CurAvg/s  delay: 2.0s  lost 0",
            " vCPU / Event                                  Total %Total CurAvg/s      Avg      p99      Max  Rate 60s",
            " vCPU 0                                           40   66.7       10    2.0us    2.0us    2.0us",
            "   kvm_exit(IO_INSTRUCTION)                       20   50.0        5    2.0us    2.0us    2.0us",
            "   kvm_userspace_exit(IO)                         20   50.0        5",
            " vCPU 1                                           20   33.3        5    5.0us    5.0us    5.0us",
            ">  kvm_exit(EPT_VIOLATION)                        12   60.0        3    5.0us    5.0us    5.0us",
            "   kvm_exit(HLT) (blocked)                         8   40.0        2    1.0ms    1.0ms    1.0ms",
            " Total                                            60              15",
            "Top guest RIPs of kvm_exit(EPT_VIOLATION):  0x3000 66.7%  0x3008 33.3%",
            Self.hint,
        ])
    }

    /// The per-vCPU rows filter as stat -f and the event rows do: the regex is matched at the start of `event(reason)`
    /// with the reason in any printer's spelling (`halt` is HLT in 2.6-era kernels), not in the event alone.
    @Test func perVCPUFiltersLikeStat() throws {
        var state = LiveViewState(pid: 100, guestName: "web", delay: 2)
        state.mode = .vcpus
        state.fields = ".*halt|kvm_userspace_exit$"
        let shown = Self.shown(try Self.screen(state))
        // Before: HLT hidden (`kvm_exit(HLT)` has no "halt") and KVM_EXIT_IO kept (its event matched).
        #expect(shown == [
            "kvm statistics - pid 100 (web) - per vCPU",
            "                 regex filter: .*halt|kvm_userspace_exit$                            sort: CurAvg/s  delay: 2.0s  lost 0",
            " vCPU / Event                                  Total %Total CurAvg/s      Avg      p99      Max  Rate 60s",
            ">vCPU 1                                            8  100.0        2",
            "   kvm_exit(HLT) (blocked)                         8  100.0        2    1.0ms    1.0ms    1.0ms",
            " Total                                             8               2",
            Self.hint,
        ])
    }

    /// kvm_stat names userspace-exit children without the `KVM_EXIT_` prefix (its USERSPACE_EXIT_REASONS table):
    /// `-f 'kvm_userspace_exit\(IO\)'` keeps KVM_EXIT_IO's row, not KVM_EXIT_MMIO's.
    @Test func userspaceExitChildrenInKvmStatsSpelling() throws {
        let f = SummaryFilter(vms: nil, fields: #"kvm_userspace_exit\(IO\)"#)
        #expect(try f.keeps(event: "kvm_userspace_exit", reason: "KVM_EXIT_IO"))
        #expect(try !f.keeps(event: "kvm_userspace_exit", reason: "KVM_EXIT_MMIO"))
        #expect(try SummaryFilter(vms: nil, fields: #"kvm_userspace_exit\(KVM_EXIT_IO\)"#).keeps(event: "kvm_userspace_exit", reason: "KVM_EXIT_IO"))
    }

    @Test func childrenHidden() throws {
        var state = LiveViewState(delay: 2)
        state.showChildren = false
        let shown = Array(Self.shown(try Self.screen(state)).dropFirst(3))
        #expect(shown == [
            ">kvm_entry                                        50   31.3       13",
            " kvm_exit                                         50   31.3       13    3.1us    5.0us    5.0us",
            " kvm_pio                                          30   18.8        8",
            " kvm_userspace_exit                               30   18.8        8",
            " Total                                           160              40",
            Self.hint,
        ])
    }

    /// More VMs stopped than the retired-VM history keeps (the view retires exited threads): the status line
    /// says how many count as `other`, in bold (an answer changed shape, not an error, which is red); nothing
    /// when none do.
    @Test func foldedVMsOnTheStatusLine() throws {
        let state = LiveViewState(delay: 2)
        var frame = try Self.frame(state)
        #expect(LiveView.render(frame, state: state, width: 120, height: 40).text[1].hasSuffix("     sort: CurAvg/s  delay: 2.0s  lost 0"))
        frame.current.occupancy.foldedVMs = 3
        let three = LiveView.render(frame, state: state, width: 120, height: 40).lines[1]
        #expect(three.text.hasSuffix(" 3 stopped VMs in other  sort: CurAvg/s  delay: 2.0s  lost 0"))
        #expect(three.spans.map(\.text) == ["3 stopped VMs in other"])
        #expect(three.spans.map(\.style) == [.bold])
        #expect(three.spans.map(\.column) == [120 - "3 stopped VMs in other  sort: CurAvg/s  delay: 2.0s  lost 0".count])
        frame.current.occupancy.foldedVMs = 1
        #expect(LiveView.render(frame, state: state, width: 60, height: 20).text[1]
            == StatTable.lpad("1 stopped VM in other  sort: CurAvg/s  delay: 2.0s  lost 0", 60))
    }

    /// 40 kvm_pio before the previous snapshot: kvm_pio has the largest Total (70) but a small CurAvg/s (8).
    @Test func sortedByTotal() throws {
        var state = LiveViewState(delay: 2)
        state.showChildren = false
        let byRate = LiveView.render(try Self.frame(state, earlyPIO: 40), state: state, width: 120, height: 40)
        #expect(byRate.text[1].hasSuffix("sort: CurAvg/s  delay: 2.0s  lost 0"))
        #expect(byRate.text[3...6].map { String($0.prefix(24)) } == [
            ">kvm_entry", " kvm_exit", " kvm_pio", " kvm_userspace_exit",
        ].map { $0.padding(toLength: 24, withPad: " ", startingAt: 0) })
        state.sortByTotal = true
        let byTotal = LiveView.render(try Self.frame(state, earlyPIO: 40), state: state, width: 120, height: 40)
        #expect(byTotal.text[1].hasSuffix("sort: Total  delay: 2.0s  lost 0"))
        #expect(Array(byTotal.text[3...7]) == [
            ">kvm_pio                                          70   35.0        8",
            " kvm_entry                                        50   25.0       13",
            " kvm_exit                                         50   25.0       13    3.1us    5.0us    5.0us",
            " kvm_userspace_exit                               30   15.0        8",
            " Total                                           200              40",
        ])
    }

    @Test func lostEventsTurnRed() throws {
        let s = try Self.screen(LiveViewState(delay: 2), lost: 123)
        #expect(s.lines[1].text.hasSuffix("sort: CurAvg/s  delay: 2.0s  lost 123"))
        #expect(s.lines[1].spans == [ScreenLine.Span(column: 120 - 8, text: "lost 123", style: [.red, .bold])])
    }

    @Test func narrow80x24() throws {
        var state = LiveViewState(delay: 2)
        state.selected = 3
        state.history.record(["c:kvm_exit(HLT)": 1])
        state.history.record(["c:kvm_exit(HLT)": 4])
        state.history.record(["c:kvm_exit(HLT)": 8])
        let s = try Self.screen(state, width: 80, height: 24)
        #expect(s.lines.count == 24)
        #expect(s.text.allSatisfy { $0.count <= 80 })
        #expect(Self.shown(s) == [
            "kvm statistics - summary",
            "                                             sort: CurAvg/s  delay: 2.0s  lost 0",
            " Event                         Total %Total CurAvg/s      Avg      p99 Rate 60s",
            " kvm_entry                        50   31.3       13",
            " kvm_exit                         50   31.3       13    3.1us    5.0us",
            "   IO_INSTRUCTION                 30   60.0        8    2.3us    3.0us",
            ">  EPT_VIOLATION                  12   24.0        3    5.0us    5.0us",
            "   HLT (blocked)                   8   16.0        2    1.0ms    1.0ms      ▁▄█",
            " kvm_pio                          30   18.8        8",
            " kvm_userspace_exit               30   18.8        8",
            "   IO                             30  100.0        8",
            " Total                           160              40",
            "Top guest RIPs of EPT_VIOLATION:  0x3000 66.7%  0x3008 33.3%",
            "b guests  v vCPUs  f filter  p pid  g guest  x children  o sort  h help  q quit",
        ])
    }

    /// The key bar keeps h and q at any width; other keys go first (h lists them all).
    @Test func keyBarKeepsHelpAndQuit() {
        #expect(LiveView.keyBar(width: 60) == "b guests  v vCPUs  f filter  p pid  g guest  h help  q quit")
        #expect(LiveView.keyBar(width: 60, first: "Enter show guest") == "Enter show guest  b guests  v vCPUs  p pid  h help  q quit")
        #expect(LiveView.keyBar(width: 200) == Self.hint)
    }

    /// Kernel threads that cause kvm events (kdamond.0, kvm-pit/PID) are no guests: not in b's list nor in
    /// its Total; VMs that exited stay in b's totals but are not offered by the p prompt.
    @Test func kernelThreadsAndExitedVMs() throws {
        var state = LiveViewState(delay: 2)
        state.mode = .guests
        state.kernelThreads = [200]
        #expect(Self.shown(try Self.screen(state)) == [
            "kvm statistics - summary - by guest",
            "                                                                                     sort: CurAvg/s  delay: 2.0s  lost 0",
            " Guest Name                                    Total %Total CurAvg/s     CPU%    Wait%           Rate 60s",
            ">web (pid 100)                                   120  100.0       30",
            " Total                                           120              30",
            "Enter show guest  " + Self.hint,
        ])
        var prompt = LiveViewState(delay: 2)
        prompt.prompt = .init(kind: .pid)
        prompt.exited = [100]
        #expect(Self.shown(try Self.screen(prompt)) == ["Show statistics for specific pid.", "Pid [0 or pid]:", "       Pid  Guest Name",
                                                          "       200  db"])
        prompt.kernelThreads = [200]
        #expect(Self.shown(try Self.screen(prompt)) == ["Show statistics for specific pid.", "Pid [0 or pid]:", "       Pid  Guest Name"])
    }

    /// The sparklines record every row of every mode, whatever the regex, `x` and the mode show: a row that
    /// was hidden has its history, not a gap.
    @Test func sparklinesRecordEveryRowWhateverIsShown() throws {
        var state = LiveViewState(fields: "pio", delay: 2)
        state.mode = .guests
        state.showChildren = false
        let rates = LiveView.historyRates(try Self.frame(LiveViewState(delay: 2)), state: state)
        #expect(rates.keys.sorted() == ["c:kvm_exit(EPT_VIOLATION)", "c:kvm_exit(HLT)", "c:kvm_exit(IO_INSTRUCTION)",
                                        "c:kvm_userspace_exit(KVM_EXIT_IO)", "e:kvm_entry", "e:kvm_exit", "e:kvm_pio",
                                        "e:kvm_userspace_exit", "g:100", "g:200",
                                        // `i`'s row: this trace's kvm_pio events carry port 0, rw 0.
                                        "io:0x0:PIN:dma1"])
        // Half of each total in the last 2 s.
        #expect(rates["e:kvm_pio"] == 7.5)
        #expect(rates["c:kvm_exit(HLT)"] == 2)
        #expect(rates["g:100"] == 30)
        #expect(rates["g:200"] == 10)
    }

    /// The help says what `lost N` and `lost N+` mean.
    @Test func helpExplainsLost() {
        let help = LiveView.render(LiveFrame(current: Summary(), previous: nil, seconds: 1),
                                   state: { var s = LiveViewState(); s.showingHelp = true; return s }(), width: 100, height: 30)
        #expect(Array(help.text.suffix(2)) == [
            "lost N: events dropped, the kernel's ring buffer full (raise --buffer-kb);",
            "lost N+: at least N, as some buffers said events were lost but not how many.",
        ])
        // At 80×24 nothing is cut: every line fits, the last one shows.
        let small = LiveView.render(LiveFrame(current: Summary(), previous: nil, seconds: 1),
                                    state: { var s = LiveViewState(); s.showingHelp = true; return s }(), width: 80, height: 24)
        #expect(small.text.allSatisfy { $0.count < 80 && !$0.contains("…") }, "\(small.text)")
        #expect(small.text.count <= 24)
        #expect(small.text.last == "lost N+: at least N, as some buffers said events were lost but not how many.")
    }

    @Test func sparklineScalesToTheRowMaximum() {
        var h = RateHistory()
        h.capacity = 4
        for r in [0.0, 1, 2, 4, 8] { h.record(["a": r]) }
        #expect(h.samples["a"] == [1, 2, 4, 8])
        #expect(h.sparkline("a", width: 6) == "  ▁▂▄█")
        #expect(h.sparkline("a", width: 2) == "▂█")
        #expect(h.sparkline("none", width: 3) == "   ")
    }

    /// A guest chosen (`g`, `p`, Enter in `b`) shows its own sparklines, never the whole host's (a host's burst
    /// drawn on a steady guest's row); the choice cleared shows the host's again, which went on meanwhile, and
    /// choosing the guest again shows its own, which went on too; the least recently chosen beyond 8 are dropped.
    @Test func eachChoiceKeepsItsSparklines() {
        var state = LiveViewState(delay: 2)
        for r in [1.0, 9, 9] { state.record(["e:kvm_userspace_exit": r], vm: nil) }
        state.pid = nil
        #expect(state.history.samples["e:kvm_userspace_exit"] == [1, 9, 9], "no change, no reset")
        state.pid = 42
        #expect(state.history.samples.isEmpty, "the guest's own: none yet")
        #expect(state.history.capacity == 30)
        // A refresh records both: the host's and the kept guest's.
        state.record(["e:kvm_userspace_exit": 10], vm: nil)
        state.record(["e:kvm_userspace_exit": 2], vm: 42)
        state.record(["e:kvm_userspace_exit": 3], vm: 7)
        state.pid = 42
        #expect(state.history.samples["e:kvm_userspace_exit"] == [2])
        state.clearFilters()
        #expect(state.history.samples["e:kvm_userspace_exit"] == [1, 9, 9, 10])
        state.record(["e:kvm_userspace_exit": 11], vm: nil)
        state.record(["e:kvm_userspace_exit": 4], vm: 42)
        state.pid = 42
        #expect(state.history.samples["e:kvm_userspace_exit"] == [2, 4])
        #expect(state.vmHistories.keys.sorted() == [42])
        // Nine more VMs chosen: 42 is the least recently chosen and goes; chosen again, it starts anew.
        for p in Int32(1)...8 { state.pid = p }
        #expect(state.vmHistories.keys.sorted() == Array(Int32(1)...8))
        state.pid = 42
        #expect(state.history.samples.isEmpty)
        #expect(state.vmHistories.keys.sorted() == Array(Int32(2)...8) + [42])
        // -p PID on the command line keeps that VM's from the start.
        let given = LiveViewState(pid: 5, delay: 3)
        #expect(given.vmHistories.keys.sorted() == [5])
        #expect(given.history.capacity == 20)
    }

    @Test func resetSubtractsTheBaseline() throws {
        let (p, c) = Self.snapshots()
        let s = try Summary(c.subtracting(p))
        #expect(s.events.map(\.total) == [25, 25, 15, 15])
        let hlt = try #require(s.exitsByVM().first { $0.reason == "HLT" })
        #expect(hlt.histogram?.count == 4)
        #expect(hlt.latency?.sum == 4_000_000)
        let zero = try Summary(c.subtracting(c))
        #expect(zero.events.map(\.total) == [0, 0, 0, 0])
    }

    @Test func promptsFollowKvmStat() throws {
        var state = LiveViewState(delay: 2)
        #expect(state.setDelay("0.05") == "\"0.05\": Value must be >=0.1")
        #expect(state.setDelay("30") == "\"30\": Value must be <=25.5")
        #expect(state.setDelay("x") == "\"x\": Invalid value")
        #expect(state.setDelay("0.5") == nil)
        #expect(state.delay == 0.5)
        #expect(state.history.capacity == 120)
        state.prompt = .init(kind: .pid)
        state.prompt?.input = "12"
        let s = try Self.screen(state)
        #expect(Self.shown(s) == ["Show statistics for specific pid.", "Pid [0 or pid]: 12", "       Pid  Guest Name",
                                  "       100  web", "       200  db"])
        #expect(s.cursor == LiveScreen.Cursor(row: 3, column: 18))
    }
}
