import Foundation
import Glibc
import KVMAnalysis
import KVMExits
import KVMResources
import KVMScopeViews
import KVMSources
import TestSupport
import Testing

/// A vCPU thread's number from its name (QEMU's `CPU n/KVM`: the cpu-index) checked against the vcpu_id that
/// kvm_exit/kvm_entry carry (KVM's id: the APIC ID on x86, which differs on `-smp 6,sockets=2,cores=3`): a
/// mismatch is listed with a note, and the rows keep the name's number — never silently relabelled.
struct VCPUNumberTests {
    static let exitID: UInt16 = 0, entryID: UInt16 = 1

    /// The aggregate of hand-made events: 301 `CPU 3/KVM` traced as vcpu_id 4 (QEMU's APIC ID of cpu-index 3 with 3
    /// cores per socket), 302 `CPU 2/KVM` traced as 2, 303 a thread whose name gives no number, traced as 7.
    static func handMade() -> AggregateSnapshot {
        var c = EventCatalog()
        c.add(system: "kvm", name: "kvm_exit")
        c.add(system: "kvm", name: "kvm_entry")
        let names: [Int32: ThreadIdentity] = [
            301: ThreadIdentity(vm: 300, vmName: "web", vcpu: 3, comm: "CPU 3/KVM"),
            302: ThreadIdentity(vm: 300, vmName: "web", vcpu: 2, comm: "CPU 2/KVM"),
            303: ThreadIdentity(vm: 300, vmName: "web", vcpu: nil, comm: "vmm-worker"),
        ]
        let agg = Aggregator(catalog: c, shardCount: 1, resolver: { names[$0] })
        var w = agg.writer(shard: 0)
        var pairer = agg.makePairer()
        var ts: UInt64 = 1_000_000
        for (tid, vcpu, n) in [(Int32(301), UInt32(4), 5), (302, 2, 3), (303, 7, 2)] {
            for _ in 0..<n {
                let x = TraceEvent(timestamp: ts, rip: 0x1000, tid: tid, event: Self.exitID, reason: 30, vcpu: vcpu, isa: 1)
                w.add(x, hasReason: true)
                pairer.exit(x)
                let e = TraceEvent(timestamp: ts + 2000, rip: 0x1000, tid: tid, event: Self.entryID, vcpu: vcpu)
                w.add(e, hasReason: false)
                pairer.entry(e)
                ts += 10_000
            }
        }
        return agg.snapshot(timestamp: 1_000_000_000)
    }

    /// top's vCPU thread rows (`top --json` threads): the traced number and a note on the thread that disagrees,
    /// nulls on the others.
    @Test func topsThreadRowsShowTheMismatch() throws {
        var tally = TopExitTally()
        let exits = tally.update(try Summary(Self.handMade()))
        #expect(exits[300]?.vcpuMismatches == [301: 4])
        var vm = VMSample(pid: 300, name: "web")
        vm.threads = [ThreadSample(tid: 302, comm: "CPU 2/KVM", vcpu: 2), ThreadSample(tid: 301, comm: "CPU 3/KVM", vcpu: 3),
                      ThreadSample(tid: 303, comm: "vmm-worker", vcpu: nil)]
        let sample = ResourceSample(timestamp: 0, intervalSeconds: 1, ticksPerSecond: 100, hostCPUs: 2, hostMemoryBytes: 1 << 30,
                                    vms: [vm])
        let frame = TopFrame(sample: sample, iteration: 1, time: "t", exits: exits)
        let row = try #require(TopView.rows(frame).first)
        let json = try #require(try JSONSerialization.jsonObject(with: Data(TopView.vmJSON(row, sample: sample).serialized().utf8))
            as? [String: Any])
        let threads = try #require(json["threads"] as? [[String: Any]])
        #expect(threads.map { $0["tid"] as? Int } == [302, 301, 303])
        #expect(threads.map { $0["traced_vcpu"] as? Int } == [nil, 4, nil])
        #expect(threads.map { $0["note"] as? String } == [nil, "thread 'CPU 3/KVM' is vCPU 3 by its name but kvm_exit/kvm_entry carry "
            + "vcpu_id 4; rows use the name's number (QEMU's cpu-index; KVM's vcpu_id is the APIC ID on x86)", nil])
    }

    /// top's thread screen (Enter on a VM): the thread's VCPU cell is the name's number marked `*` (drawn red), and
    /// a note line under the table gives the traced number; the other threads are unmarked.
    @Test func topsThreadScreenMarksTheMismatch() throws {
        var tally = TopExitTally()
        let exits = tally.update(try Summary(Self.handMade()))
        var vm = VMSample(pid: 300, name: "web")
        vm.threads = [ThreadSample(tid: 302, comm: "CPU 2/KVM", vcpu: 2), ThreadSample(tid: 301, comm: "CPU 3/KVM", vcpu: 3),
                      ThreadSample(tid: 303, comm: "vmm-worker", vcpu: nil)]
        let sample = ResourceSample(timestamp: 0, intervalSeconds: 1, ticksPerSecond: 100, hostCPUs: 2, hostMemoryBytes: 1 << 30,
                                    vms: [vm])
        let row = try #require(TopView.rows(TopFrame(sample: sample, iteration: 1, time: "t", exits: exits)).first)
        #expect(TopView.renderThreads(row, sample: sample) == [
            "   TID VCPU S CPU  CPU%  WAIT%    TIME  EXITS/s     P99 COMMAND",
            "   302    2 ?   -     -      - 0:00.00      3.0  2.00us CPU 2/KVM",
            "   301   3* ?   -     -      - 0:00.00      5.0  2.00us CPU 3/KVM",
            "   303      ?   -     -      - 0:00.00                  vmm-worker",
            "* tid 301: thread 'CPU 3/KVM' is vCPU 3 by its name but kvm_exit/kvm_entry carry vcpu_id 4; rows use the name's "
                + "number (QEMU's cpu-index; KVM's vcpu_id is the APIC ID on x86)",
        ])
        let marked = TopView.markedThreadCells(row)
        #expect(marked.lines == [2])
        #expect(TopView.renderThreads(row, sample: sample)[2].dropFirst(6).prefix(5) == "   3*")
        // Without exits traced, nothing is marked.
        let untraced = try #require(TopView.rows(TopFrame(sample: sample, iteration: 1, time: "t", exits: nil)).first)
        #expect(TopView.renderThreads(untraced, sample: sample).count == 4)
        #expect(TopView.markedThreadCells(untraced).lines.isEmpty)
    }

    /// The live view's per-vCPU screen (`v`): the vCPU row says both numbers and is drawn red; every screen has
    /// one note line above the keys while the VMs shown have such a thread.
    @Test func liveViewMarksTheMismatch() throws {
        let summary = try Summary(Self.handMade())
        var state = LiveViewState(pid: 300)
        state.mode = .vcpus
        state.showChildren = false
        let frame = LiveFrame(current: summary, previous: nil, seconds: 1)
        let screen = LiveView.render(frame, state: state, width: 80, height: 12)
        #expect(screen.text == [
            "kvm statistics - pid 300 (web) - per vCPU",
            "                                             sort: CurAvg/s  delay: 3.0s  lost 0",
            " vCPU / Event                  Total %Total CurAvg/s      Avg      p99 Rate 60s",
            ">vCPU 2                            3   30.0             2.0us    2.0us",
            " vCPU 3 \u{2260} vcpu_id 4                5   50.0             2.0us    2.0us",
            " vCPU 7                            2   20.0             2.0us    2.0us",
            " Total                            10",
            "",
            "",
            "",
            "note: VM 300 tid 301 'CPU 3/KVM': kvm_exit says vcpu_id 4, rows use the name's 3",
            "b guests  v vCPUs  f filter  p pid  g guest  x children  o sort  h help  q quit",
        ])
        #expect(screen.lines[4].spans == [ScreenLine.Span(column: 1, text: "vCPU 3 \u{2260} vcpu_id 4", style: [.red, .bold])])
        #expect(screen.lines[3].spans.isEmpty)
        // The event screen has the note too; a filter that leaves the thread out has none.
        state.mode = .events
        #expect(LiveView.render(frame, state: state, width: 80, height: 12).text[10].hasPrefix("note: VM 300 tid 301"))
        let other = LiveFrame(current: try Summary(Self.handMade(), filter: SummaryFilter(tids: [302])), previous: nil, seconds: 1)
        #expect(!LiveView.render(other, state: state, width: 80, height: 12).text.contains { $0.hasPrefix("note:") })
    }

    /// The real binary in a real terminal: `kvmscope live -p <this process>` (injection on), a thread of this
    /// process named `CPU 3/KVM` writes 50 kvm_exit/kvm_entry pairs carrying vcpu_id 4 into live's instance's
    /// trace_marker_raw; `v` shows the row as `vCPU 3 ≠ vcpu_id 4` with its 50 exits, and the note line.
    @Test(.enabled(if: KVMTest.canRun, "needs root, tracefs and tmux"))
    func liveScreenShowsTheMismatchOfARealThread() throws {
        let rec = try MarkerLiveTests.Records()
        let name = "kvmscope-vcpu-\(getpid())"
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent(name)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try LiveTUITests.tmux(["new-session", "-d", "-s", name, "-x", "120", "-y", "40",
                               "env PS1='kvmscope-test$ ' TERM=xterm-256color bash --norc --noprofile"])
        defer { _ = try? LiveTUITests.tmux(["kill-session", "-t", name], check: false) }
        let pane = LiveTUITests.Pane(name: name)
        try pane.wait("the shell prompt") { $0.contains { $0.hasPrefix("kvmscope-test$") } }
        // The shell's pid becomes live's (exec): its instance is kvmscope-<that pid>.
        try pane.type("clear; echo $$ > \(dir.path)/pid; exec env KVMSCOPE_INJECT=kvm_exit,kvm_entry \(CLI.binary) live -s 0.5 -p \(getpid())")
        try pane.keys("Enter")
        try pane.wait("live's first screen") { $0.first?.hasPrefix("kvm statistics - pid \(getpid())") == true }
        let livePID = try #require(Int32((try String(contentsOfFile: dir.appendingPathComponent("pid").path, encoding: .utf8))
            .trimmingCharacters(in: .whitespacesAndNewlines)))
        let marker = "/sys/kernel/tracing/instances/kvmscope-\(livePID)/trace_marker_raw"
        let n = 50
        var records: [[UInt8]] = []
        for _ in 0..<n { records += [rec.exit(reason: 30, vcpu: 4, rip: 0x1000), rec.entry(vcpu: 4)] }
        let recs = records
        let written = DispatchSemaphore(value: 0), checked = DispatchSemaphore(value: 0)
        let writer = Locked<(tid: Int32, ok: Int)>((0, 0))
        let screen = Locked<[String]?>(nil)
        _ = onThreads([
            { @Sendable in
                try? "CPU 3/KVM".write(toFile: "/proc/self/task/\(MarkerLiveTests.getTID())/comm", atomically: false, encoding: .utf8)
                writer.set((MarkerLiveTests.getTID(), MarkerLiveTests.write(marker, recs)))
                written.signal()
                // Alive until the screen is read: live names the thread from /proc.
                _ = checked.wait(timeout: .now() + 120)
            },
            { @Sendable in
                defer { checked.signal() }
                guard written.wait(timeout: .now() + 120) == .success else { return }
                _ = try? pane.keys("v")
                let tid = writer.get().tid
                screen.set(try? pane.wait("the per-vCPU row of the thread") { s in
                    s.contains { $0.hasPrefix(">vCPU 3 \u{2260} vcpu_id 4 ") } && s.contains { $0.hasPrefix("note: VM \(getpid()) tid \(tid) ") }
                })
            },
        ], timeout: 300)
        let (tid, ok) = writer.get()
        #expect(ok == 2 * n)
        let s = try #require(screen.get())
        // The name in 40 columns, Total in 10, %Total in 7 (the wide layout).
        let label = "vCPU 3 \u{2260} vcpu_id 4"
        #expect(s.contains { $0.hasPrefix(">" + label + String(repeating: " ", count: 40 - label.count) + "         \(n)  100.0") },
                "\(s)")
        #expect(s.contains("note: VM \(getpid()) tid \(tid) 'CPU 3/KVM': kvm_exit says vcpu_id 4, rows use the name's 3"), "\(s)")
        #expect(!s.contains { $0.hasPrefix(" vCPU 4") || $0.hasPrefix(">vCPU 4") })
        try pane.keys("q")
    }

    /// The identities keep both numbers; the summary's rows use the name's, and its JSON lists the mismatch.
    @Test func nameAndTracedNumberDisagreeingIsShown() throws {
        let snap = Self.handMade()
        #expect(snap.threads[301] == ThreadIdentity(vm: 300, vmName: "web", vcpu: 3, comm: "CPU 3/KVM", tracedVCPU: 4))
        #expect(snap.threads[302]?.tracedVCPU == 2)
        #expect(snap.threads[302]?.vcpuMismatch == false)
        #expect(snap.threads[303]?.vcpu == 7)
        #expect(snap.threads[303]?.vcpuMismatch == false)

        let summary = try Summary(snap)
        // The rows keep the names' numbers (3, not 4); the thread without one is the traced 7.
        #expect(summary.exits.map { "\($0.vcpu.map(String.init) ?? "-") \($0.count)" } == ["2 3", "3 5", "7 2"])
        #expect(summary.vcpuMismatches.map(\.tid) == [301])
        let json = SummaryJSON.render(summary, durationSeconds: 1, pretty: false)
        #expect(json.contains(#""vcpu_mismatches":[{"vm":300,"vm_name":"web","tid":301,"comm":"CPU 3/KVM","vcpu":3,"traced_vcpu":4,"#
            + #""note":"thread 'CPU 3/KVM' is vCPU 3 by its name but kvm_exit/kvm_entry carry vcpu_id 4; rows use the name's number "#
            + #"(QEMU's cpu-index; KVM's vcpu_id is the APIC ID on x86)"}],"pairing""#), "\(json)")
        // A filter that leaves the thread out leaves its mismatch out; none at all: no field.
        #expect(try Summary(snap, filter: SummaryFilter(tids: [302])).vcpuMismatches.isEmpty)
        #expect(!SummaryJSON.render(try Summary(snap, filter: SummaryFilter(tids: [302])), durationSeconds: 1).contains("vcpu_mismatches"))
    }

    /// The real path: a thread of this process named `CPU 3/KVM` writes kvm_exit/kvm_entry records carrying
    /// vcpu_id 4 into the instance's trace_marker_raw; they go through the kernel's ring buffers, the readers and
    /// the pairer, and /proc names the thread (it lives until the snapshot is taken).
    @Test(.enabled(if: KVMTest.canRun, "needs root and tracefs"))
    func liveThreadNamedOneVCPUTracedAsAnother() throws {
        let rec = try MarkerLiveTests.Records()
        let s = try MarkerLiveTests.session()
        defer { s.stop() }
        let path = MarkerLiveTests.markerPath(s)
        let written = DispatchSemaphore(value: 0), taken = DispatchSemaphore(value: 0)
        let writer = Locked<(tid: Int32, ok: Int)>((0, 0))
        let snapshot = Locked<AggregateSnapshot?>(nil)
        let n = 50
        var records: [[UInt8]] = []
        for _ in 0..<n { records += [rec.exit(reason: 30, vcpu: 4, rip: 0x1000), rec.entry(vcpu: 4)] }
        let recs = records
        _ = onThreads([
            { @Sendable in
                // (pthread_setname_np is declared only under _GNU_SOURCE: the thread's comm file does the same.)
                try? "CPU 3/KVM".write(toFile: "/proc/self/task/\(MarkerLiveTests.getTID())/comm", atomically: false, encoding: .utf8)
                writer.set((MarkerLiveTests.getTID(), MarkerLiveTests.write(path, recs)))
                written.signal()
                _ = taken.wait(timeout: .now() + 120)
            },
            { @Sendable in
                guard written.wait(timeout: .now() + 120) == .success else { return }
                let tid = writer.get().tid
                let end = Date().addingTimeInterval(60)
                while Date() < end {
                    let snap = s.snapshot()
                    if snap.threads[tid]?.tracedVCPU != nil && snap.counters.contains(where: { $0.key.tid == tid && $0.count > 0 }) {
                        snapshot.set(snap)
                        break
                    }
                    usleep(50_000)
                }
                taken.signal()
            },
        ], timeout: 300)
        let (tid, ok) = writer.get()
        #expect(ok == 2 * n)
        let snap = try #require(snapshot.get(), "the records never reached the aggregate")
        let id = try #require(snap.threads[tid])
        #expect(id.vm == getpid())
        #expect(id.comm == "CPU 3/KVM")
        #expect(id.vcpu == 3)
        #expect(id.tracedVCPU == 4)
        s.stop()
        let summary = try Summary(s.snapshot(), filter: SummaryFilter(tids: [tid]))
        #expect(summary.exits.map { "\($0.vcpu.map(String.init) ?? "-") \($0.count)" } == ["3 \(n)"])
        #expect(summary.vcpuMismatches.map(\.tid) == [tid])
        #expect(summary.vcpuMismatches.first?.identity.tracedVCPU == 4)
    }
}
