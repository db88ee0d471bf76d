import Foundation
import KVMAnalysis
import KVMExits
import KVMSources
import Testing

/// Every text mode of the peers, as Debian's trace-cmd 3.1.6 and perf print it (Tests/Fixtures/text, made by
/// its make.sh): the same counts, pairs and latencies as the binary trace.dat they were printed from.
@Suite struct TextModesTests {
    static func path(_ name: String) -> String { Fixtures.root.appendingPathComponent("text/\(name)").path }

    /// What a report is made of, comparable across sources: event totals, pairing, and per thread × reason
    /// the count and the latency distribution (count, min, max, sum; exact, ns).
    struct Shape: Equatable, CustomStringConvertible {
        var events: [String: UInt64]
        var pairing: PairingStats
        var rows: [String: [UInt64]]
        var description: String { "\(events) \(pairing) \(rows.sorted { $0.key < $1.key })" }
    }

    static func shape(_ source: TraceSource) throws -> Shape {
        let s = try Summary(ReportAnalysis.run(source).snapshot)
        var rows: [String: [UInt64]] = [:]
        for r in s.exits {
            let h = r.histogram ?? HistogramSnapshot()
            rows["\(r.vm) \(r.vcpu.map(String.init) ?? "-") \(r.isa) \(r.reason)"] = [r.count, h.count, h.min, h.max, h.sum]
        }
        for r in s.userspaceExits { rows["\(r.vm) \(r.vcpu.map(String.init) ?? "-") \(r.reason)"] = [r.count] }
        return Shape(events: Dictionary(uniqueKeysWithValues: s.events.filter { $0.total > 0 }.map { ($0.name, $0.total) }),
                     pairing: s.pairing, rows: rows)
    }

    /// The binary's events with timestamps rounded to whole microseconds, as trace-cmd report prints them
    /// without -t; and only one CPU's, as `--cpu N` prints.
    struct Printed: TraceSource {
        var base: TraceDatReader
        var unit: UInt64 = 1
        var cpu: UInt16?
        var catalog: EventCatalog { base.catalog }
        var identities: [Int32: ThreadIdentity] { base.identities }
        var statistics: SourceStatistics { base.statistics }
        func streams() throws -> [any EventStream] {
            try base.streams().map { Rounded(inner: $0, unit: unit, cpu: cpu) }
        }
    }

    /// One CPU's stream of the binary, timestamps rounded as trace-cmd prints them (a monotone map: the
    /// stream stays in order), other CPUs' events left out with --cpu.
    final class Rounded: EventStream {
        let inner: any EventStream
        let unit: UInt64
        let cpu: UInt16?

        init(inner: any EventStream, unit: UInt64, cpu: UInt16?) {
            self.inner = inner
            self.unit = unit
            self.cpu = cpu
        }

        func next(_ batch: inout [TraceEvent]) throws -> Bool {
            while try inner.next(&batch) {
                if let cpu { batch.removeAll { $0.cpu != cpu } }
                for i in batch.indices { batch[i].timestamp = (batch[i].timestamp + unit / 2) / unit * unit }
                if !batch.isEmpty { return true }
            }
            return false
        }
    }

    struct Mode: Sendable, CustomTestStringConvertible {
        var dat = "synth-6.18-x86.dat"
        var text: String
        var style: TextTraceReader.Style
        var unit: UInt64 = 1
        var cpu: UInt16?
        var testDescription: String { text }
    }

    static let modes: [Mode] = [
        Mode(text: "synth-6.18-x86.report.txt", style: .traceCmd, unit: 1000),
        Mode(text: "synth-6.18-x86.report-t.txt", style: .traceCmd),
        Mode(text: "synth-6.18-x86.report-R.txt", style: .traceCmdRaw),
        Mode(text: "synth-6.18-x86.report-l.txt", style: .traceCmdLatency),
        Mode(text: "synth-6.18-x86.report-cpu1.txt", style: .traceCmd, cpu: 1),
        Mode(text: "synth-6.18-x86.report-ts-diff.txt", style: .traceCmd, unit: 1000),
        Mode(dat: "synth-host.dat", text: "synth-host.report.txt", style: .traceCmd, unit: 1000),
        Mode(dat: "synth-host.dat", text: "synth-host.report-l.txt", style: .traceCmdLatency, unit: 1000),
    ]

    /// trace-cmd report, -t, -R, -l and --cpu 1 of synthetic 6.18 trace.dats (its kvm plugin prints
    /// `reason NAME rip … info …`; with this host's own formats trace-cmd 3.1.6 prints
    /// `[FAILED TO PARSE] exit_reason=… isa=1 …`): every number as in the binary.
    @Test(arguments: modes)
    func traceCmdModesMatchTheBinary(_ mode: Mode) throws {
        let dat = try TraceDatReader(path: Self.path(mode.dat))
        let text = try TextTraceReader(path: Self.path(mode.text))
        #expect(text.style == mode.style)
        let expected = try Self.shape(Printed(base: dat, unit: mode.unit, cpu: mode.cpu))
        let got = try Self.shape(text)
        #expect(got == expected)
        #expect(got.pairing.paired == (mode.cpu == nil ? 20 : 10))
        #expect(got.rows.keys.allSatisfy { $0.contains(" vmx ") })
    }

    /// libtraceevent's kvm plugin on older formats (4.19: `reason HLT rip … info …`) and arm64
    /// (`TRAP: HSR_EC: … (NAME)`), printed with -t.
    @Test(arguments: ["4.19-x86", "5.15-arm64"])
    func pluginTextOfOtherKernels(_ kernel: String) throws {
        let dat = try TraceDatReader(path: Self.path("synth-\(kernel).dat"))
        let text = try TextTraceReader(path: Self.path("synth-\(kernel).report-t.txt"))
        let expected = try Self.shape(dat)
        // 4.19's kvm_entry has no RIP and kvm_exit no vcpu_id: vCPUs come from the "CPU N/KVM" comms alike.
        #expect(try Self.shape(text) == expected)
        #expect(expected.pairing.paired == 20)
    }

    struct StormText: Sendable, CustomTestStringConvertible {
        var file: String
        var style: TextTraceReader.Style
        /// "tgid": one VM; "tid": one per thread; "comm": no thread ids (told apart by comm or not at all).
        var vmIs: String
        var vcpus: Int
        var unit: TextTraceReader.TimestampUnit = .nanoseconds
        var testDescription: String { file }
    }

    static let storms: [StormText] = [
        StormText(file: "storm-io.tracecmd.txt", style: .traceCmd, vmIs: "tid", vcpus: 0),
        StormText(file: "storm-io.tracecmd-R.txt", style: .traceCmdRaw, vmIs: "tid", vcpus: 0),
        StormText(file: "storm-io.tracecmd-l.txt", style: .traceCmdLatency, vmIs: "tid", vcpus: 0),
        StormText(file: "storm-io.kernel.txt", style: .kernel, vmIs: "tid", vcpus: 2),
        StormText(file: "storm-io.kernel-tgid.txt", style: .kernel, vmIs: "tgid", vcpus: 2),
        StormText(file: "storm-io.kernel-noirq.txt", style: .traceCmd, vmIs: "tid", vcpus: 2),
        StormText(file: "storm-io.kernel-tgid-noirq.txt", style: .kernel, vmIs: "tgid", vcpus: 2),
        StormText(file: "storm-io.kernel-counter.txt", style: .kernel, vmIs: "tid", vcpus: 2, unit: .counterTicks),
        StormText(file: "storm-io.perf.txt", style: .perf, vmIs: "tid", vcpus: 2),
        StormText(file: "storm-io.perf-pid-tid.txt", style: .perf, vmIs: "tgid", vcpus: 2),
        StormText(file: "storm-io.perf-no-cpu.txt", style: .perf, vmIs: "tid", vcpus: 2),
        StormText(file: "storm-io.perf-comm-only.txt", style: .perf, vmIs: "comm", vcpus: 2),
        StormText(file: "storm-io.perf-time-only-ns.txt", style: .perf, vmIs: "comm", vcpus: 0),
    ]

    /// The storm guest (2 vCPUs × 5 port writes) as each tool prints it: exactly 10 kvm_pio and 10
    /// KVM_EXIT_IO, 5 per vCPU thread, whatever columns the mode has.
    @Test(arguments: storms)
    func stormGuestInEveryMode(_ t: StormText) throws {
        let r = try TextTraceReader(path: Self.path(t.file))
        let s = try Summary(ReportAnalysis.run(r).snapshot)
        #expect(r.style == t.style)
        #expect(r.timestampUnit == t.unit)
        #expect(s.total(of: "kvm_pio") == 10 && s.total(of: "kvm_userspace_exit") == 10)
        #expect(s.userspaceExits.allSatisfy { $0.reason == "KVM_EXIT_IO" })
        #expect(r.malformedLines.isEmpty && r.joinedLines == 0 && r.proseLines == 0)
        let vms = Set(s.userspaceExits.map(\.vm))
        switch t.vmIs {
        case "tgid": #expect(r.hasTGIDs && vms.count == 1)
        case "tid": #expect(!r.hasTGIDs && !r.missingThreadIDs && vms.count == 2 && vms.allSatisfy { $0 > 0 })
        default: #expect(r.missingThreadIDs && vms.allSatisfy { $0 < 0 })
        }
        if t.vmIs == "comm" && t.vcpus == 0 {
            #expect(s.userspaceExits.map(\.count) == [10])
        } else {
            #expect(s.userspaceExits.map(\.count) == [5, 5])
        }
        #expect(Set(s.userspaceExits.compactMap(\.vcpu)).count == t.vcpus)
    }

    /// Integer counter timestamps: ticks, said so; with the counter's frequency (`--ts2secs`), nanoseconds.
    @Test func counterClock() throws {
        let ticks = try TextTraceReader(path: Self.path("storm-io.kernel-counter.txt"))
        let ns = try TextTraceReader(path: Self.path("storm-io.kernel-counter.txt"), counterHz: 1000)
        #expect(ticks.timestampUnit == .counterTicks && ns.timestampUnit == .nanoseconds)
        #expect(ns.events.map(\.timestamp) == ticks.events.map { $0.timestamp * 1_000_000 })
        // An integer "timestamp" needs a CPU column to be one: prose with "12: x:" is not a record.
        #expect(throws: KVMScopeError.self) { try TextTraceReader(bytes: Array("see 12: kvm_exit: reason HLT\n".utf8), name: "x") }
    }
}

/// The README's table of text modes, pinned: each mode it says is read has a sample here that is read.
@Suite struct ReadmeFormatTableTests {
    static let readme = Fixtures.root.deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("README.md")

    /// (first column, last column, a sample of that mode: a fixture or a corpus file; nil for "no").
    static let rows: [(String, String, String?)] = [
        ("kernel `trace`, `trace_pipe`", "yes", "text/storm-io.kernel.txt"),
        ("kernel, `options/irq-info` off", "yes", "text/storm-io.kernel-noirq.txt"),
        ("kernel, `options/record-tgid`", "yes", "text/storm-io.kernel-tgid.txt"),
        ("kernel, `trace_clock` counter / x86-tsc", "yes, in cycles (`--ts2secs HZ`: ns)", "text/storm-io.kernel-counter.txt"),
        ("`trace-cmd report`", "yes", "text/synth-6.18-x86.report.txt"),
        ("`trace-cmd report -t`", "yes", "text/synth-6.18-x86.report-t.txt"),
        ("`trace-cmd report` of 6.x kvm_exit (3.1.6)", "yes (decoded with `isa`)", "text/synth-host.report.txt"),
        ("`trace-cmd report -R`", "yes", "text/synth-6.18-x86.report-R.txt"),
        ("`trace-cmd report -l`", "yes", "text/synth-6.18-x86.report-l.txt"),
        ("`trace-cmd report --cpu N`", "yes", "text/synth-6.18-x86.report-cpu1.txt"),
        ("`trace-cmd report -C counter` recordings", "yes, in cycles (`--ts2secs HZ`: ns; `--from`/`--to` need it)", nil),
        ("`perf script`", "yes", "text/storm-io.perf.txt"),
        ("`perf script -F comm,pid,tid,cpu,…`", "yes", "text/storm-io.perf-pid-tid.txt"),
        ("`perf script -F` without `cpu`", "yes", "text/storm-io.perf-no-cpu.txt"),
        ("`perf script -F` without `tid` (`comm,time,event,trace`, as mailed)", "yes: threads told apart by comm, a `note:` says so",
         "text/storm-io.perf-comm-only.txt"),
        ("`perf script -F time,event,trace [--ns]`, with or without `kvm:`", "yes: one thread", "text/storm-io.perf-time-only-ns.txt"),
        ("`perf script` sample period before the event", "yes", nil),
        ("`trace-cmd report --ts-diff`", "yes", "text/synth-6.18-x86.report-ts-diff.txt"),
        ("`trace-cmd report` with `-i` of several files, `--profile`, `-w`, `--stat`", "no", nil),
        ("kernel `options/latency-format`", "no", nil),
    ]

    @Test func tableIsPinnedAndEveryReadModeIsRead() throws {
        let text = try String(contentsOf: Self.readme, encoding: .utf8)
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        let start = try #require(lines.firstIndex(of: "| mode | what a record looks like | read |"))
        var got: [(String, String)] = []
        for line in lines[(start + 2)...] {
            guard line.hasPrefix("|") else { break }
            let cols = line.dropFirst().dropLast().split(separator: "|", omittingEmptySubsequences: false)
                .map { $0.trimmingCharacters(in: .whitespaces) }
            got.append((cols.first ?? "", cols.last ?? ""))
        }
        #expect(got.map { "\($0.0) => \($0.1)" } == Self.rows.map { "\($0.0) => \($0.1)" })
        for (mode, _, sample) in Self.rows {
            guard let sample else { continue }
            let r = try TextTraceReader(path: Fixtures.root.appendingPathComponent(sample).path)
            #expect(r.records > 0 && r.malformedLines.isEmpty && r.proseLines == 0, "\(mode)")
        }
    }
}
