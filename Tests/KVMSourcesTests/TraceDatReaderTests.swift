import Foundation
import KVMAnalysis
import KVMExits
import KVMSources
import TestSupport
import Testing

/// trace.dat files: the real corpus file, synthetic round trips, and bad input.
@Suite struct TraceDatReaderTests {
    /// The corpus file (KVMSCOPE_CORPUS overrides /work/shared/corpus).
    static var corpusPath: String {
        let env = ProcessInfo.processInfo.environment["KVMSCOPE_CORPUS"] ?? "/work/shared/corpus"
        return env + "/real/hip24_host_trace_v7_zlib.dat"
    }

    @Test func corpusV7ZlibOpensWithExactCounts() throws {
        let r = try TraceDatReader(path: Self.corpusPath)
        #expect(r.version == 7)
        #expect(r.compression == "zlib")
        #expect(r.cpuCount == 20)
        #expect(r.traceClock == "x86-tsc")
        #expect(r.tsc2nsec?.mult == 735_842_807)
        #expect(r.tsc2nsec?.shift == 31)
        #expect(r.catalog.entries.map(\.name).sorted() == ["kvm_entry", "kvm_exit"])
        #expect(r.lostEvents == 0)
        let exit = try #require(r.catalog.index(of: "kvm_exit"))
        let entry = try #require(r.catalog.index(of: "kvm_entry"))
        var exits = 0, entries = 0, last: UInt64 = 0, ordered = true
        var reasons: [String: Int] = [:]
        try r.forEachEvent { e in
            if e.timestamp < last { ordered = false }
            last = e.timestamp
            if e.event == exit {
                exits += 1
                reasons[r.catalog.reasonName(event: e.event, reason: e.reason, isa: e.isa) ?? "?", default: 0] += 1
            } else if e.event == entry { entries += 1 }
        }
        #expect(ordered)
        print("corpus: exits \(exits) entries \(entries) reasons \(reasons.sorted { $0.value > $1.value })")
        #expect(exits == 5860)
        #expect(entries == 5861)
        #expect(reasons == ["APIC_WRITE": 3206, "HLT": 1665, "EPT_MISCONFIG": 431, "MSR_WRITE": 313,
                            "PREEMPTION_TIMER": 145, "EPT_VIOLATION": 40, "EXTERNAL_INTERRUPT": 18,
                            "EOI_INDUCED": 16, "CPUID": 10, "PAUSE_INSTRUCTION": 9, "MSR_READ": 7])
    }

    @Test func corpusPairing() throws {
        let r = try TraceDatReader(path: Self.corpusPath)
        var first: UInt64 = .max, last: UInt64 = 0
        var tids = Set<Int32>(), cpus = Set<UInt16>()
        try r.forEachEvent { e in
            first = min(first, e.timestamp); last = max(last, e.timestamp)
            tids.insert(e.tid); cpus.insert(e.cpu)
        }
        let summary = try Summary(try OfflineAnalysis.run(r))
        // Not the recording of hip24_sigmatek_test_host_report.txt (qemu pid 150750 on CPU 19, 16062–16067 s,
        // kernel 6.8.0-rt7): other threads, other CPUs, other times, kernel 6.5.0-21-generic.
        #expect(tids == [453_724, 453_725, 483_882])
        #expect(tids.sorted().map { r.comms[$0] } == ["CPU 0/KVM", "CPU 1/KVM", "qemu-system-x86"])
        #expect(cpus == [0, 2, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17])
        #expect(first == 22_149_949_585_938)
        #expect(last == 22_152_202_639_674)
        #expect(r.uname?.contains("6.5.0-21-generic") == true)
        // Two exits are still open when the recording stops: open at the end, not orphans.
        #expect(summary.pairing == PairingStats(paired: 5_858, orphanExits: 0, orphanEntries: 3, openAtEnd: 2))
    }
}

/// Writer → reader round trips and what trace-cmd makes of our files.
@Suite struct TraceDatWriterTests {
    static func tempPath(_ name: String) -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("kvmscope-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))-\(name)").path
    }

    /// Version 6, and version 7 uncompressed and zstd-compressed as trace-cmd 3.x writes it: every event back
    /// exactly, the tgids kept (one VM), and Debian's trace-cmd reads the file.
    @Test(arguments: ["6 none", "7 none", "7 zstd"])
    func knownEventsRoundTripExactly(_ form: String) throws {
        let version = Int(form.prefix(1))!
        let compression = TraceDatCompression(rawValue: String(form.dropFirst(2)))!
        let f = try Fixtures.formats("6.18-x86")
        let exitB = try EventPayloadBuilder(formats: f, event: "kvm_exit")
        let entryB = try EventPayloadBuilder(formats: f, event: "kvm_entry")
        let exitIdx = try #require(f.catalog.index(of: "kvm_exit"))
        let entryIdx = try #require(f.catalog.index(of: "kvm_entry"))
        var expected: [TraceEvent] = []
        var cpus: [[[UInt8]]] = []
        for cpu in 0..<2 {
            var b = RingBufferPageBuilder()
            var t = UInt64(5_000_000 + cpu * 777)
            // 300 exits per CPU, with gaps long enough for time extends, across several pages.
            for i in 0..<300 {
                t += i % 7 == 0 ? 300_000_000 : 3_000
                let tid = Int32(100 + cpu)
                let reason: UInt32 = [12, 32, 49, 30][i % 4]
                let rip = UInt64(0xffff_0000 + i)
                b.append(timestamp: t, payload: exitB.payload(pid: tid, ["exit_reason": UInt64(reason), "guest_rip": rip, "isa": 1,
                                                                         "info1": UInt64(i), "vcpu_id": UInt64(cpu)]))
                expected.append(TraceEvent(timestamp: t, rip: rip, detail: UInt64(i), tid: tid, event: exitIdx, cpu: UInt16(cpu),
                                           reason: reason, vcpu: UInt32(cpu), isa: 1))
                b.append(timestamp: t + 700, payload: entryB.payload(pid: tid, ["vcpu_id": UInt64(cpu), "rip": rip + 1]))
                expected.append(TraceEvent(timestamp: t + 700, rip: rip + 1, tid: tid, event: entryIdx, cpu: UInt16(cpu),
                                           vcpu: UInt32(cpu)))
            }
            cpus.append(b.finish())
        }
        #expect(cpus[0].count > 3)
        var m = TraceDatMetadata()
        m.headerPage = try Fixtures.text("formats/6.18-x86/header_page")
        m.systems = [.init(name: "kvm", formats: [try Fixtures.text("formats/6.18-x86/kvm_exit.format"),
                                                  try Fixtures.text("formats/6.18-x86/kvm_entry.format")])]
        m.cmdlines = [100: "CPU 0/KVM", 101: "CPU 1/KVM", 99: "qemu-system-x86"]
        m.tgids = [100: 99, 101: 99]
        m.cpuStats = [0: "entries: 0\noverrun: 3\ndropped events: 4\n", 1: "overrun: 0\ndropped events: 0\n"]
        let path = Self.tempPath("known-\(version)-\(compression).dat")
        defer { unlink(path) }
        try TraceDatWriter.write(path: path, metadata: m, cpus: cpus.map { .pages($0) }, version: version,
                                 compression: compression)
        let r = try TraceDatReader(path: path)
        #expect(r.version == version)
        #expect(r.compression == (compression == .zstd ? "zstd" : nil))
        #expect(r.cpuCount == 2)
        #expect(r.traceClock == "mono")
        #expect(r.lostPerCPU == [0: 7, 1: 0])
        #expect(r.lostEvents == 7)
        #expect(r.identities[100] == ThreadIdentity(vm: 99, vmName: "qemu-system-x86", vcpu: 0, comm: "CPU 0/KVM"))
        #expect(r.identities[101]?.vm == 99)
        var got: [TraceEvent] = []
        try r.forEachEvent { got.append($0) }
        // Catalog order is the file's (exit, entry), as the fixture's.
        #expect(r.catalog.entries.map(\.name) == ["kvm_exit", "kvm_entry"])
        let sorted = expected.enumerated().sorted { ($0.element.timestamp, $0.element.cpu) < ($1.element.timestamp, $1.element.cpu) }
            .map(\.element)
        #expect(got.count == 1200)
        let firstDifference = got.indices.first { $0 >= sorted.count || got[$0] != sorted[$0] }
        #expect(firstDifference == nil, "first difference at \(firstDifference ?? -1)")
        #expect(Set(try Summary(try OfflineAnalysis.run(r)).exits.map(\.vm)) == [99])

        guard let tc = TraceCmd.path else { return }
        let out = try Spawned.run(tc, ["report", "-i", path])
        #expect(out.status == 0 && out.stderr.isEmpty, "\(out.stderr)")
        let lines = out.stdout.split(separator: "\n")
        #expect(lines.filter { $0.contains(" kvm_exit:") }.count == 600 && lines.filter { $0.contains(" kvm_entry:") }.count == 600)
        #expect(lines.filter { $0.contains("CPU 1/KVM-101 ") }.count == 600)
    }

    /// A recording with the `counter` clock: trace-cmd report prints integer timestamps; read back as
    /// counter ticks, every event where the binary has it.
    @Test func counterClockPrintedByTraceCmdReadsBackAsTicks() throws {
        guard let tc = TraceCmd.path else { return }
        let f = try Fixtures.formats("6.18-x86", events: ["kvm_pio"])
        let pio = try EventPayloadBuilder(formats: f, event: "kvm_pio")
        var b = RingBufferPageBuilder()
        var expected: [UInt64] = []
        for i in 0..<50 {
            let t = UInt64(1000 + i * 7)
            b.append(timestamp: t, payload: pio.payload(pid: 300, ["rw": 1, "port": UInt64(0x10 + i), "size": 1, "count": 1]))
            expected.append(t)
        }
        var m = TraceDatMetadata()
        m.headerPage = try Fixtures.text("formats/6.18-x86/header_page")
        m.systems = [.init(name: "kvm", formats: [try Fixtures.text("formats/6.18-x86/kvm_pio.format")])]
        m.cmdlines = [300: "CPU 0/KVM"]
        m.traceClock = "counter"
        let path = Self.tempPath("counter.dat")
        defer { unlink(path) }
        try TraceDatWriter.write(path: path, metadata: m, cpus: [.pages(b.finish())], version: 7, compression: .zstd)
        let out = try Spawned.run(tc, ["report", "-i", path])
        #expect(out.status == 0, "\(out.stderr)")
        #expect(out.stdout.contains("CPU 0/KVM-300   [000]        1000: kvm_pio:"), "\(out.stdout.prefix(300))")
        let text = try TextTraceReader(bytes: Array(out.stdout.utf8), name: "trace-cmd report")
        #expect(text.timestampUnit == .counterTicks)
        #expect(text.events.map(\.timestamp) == expected)
        #expect(text.events.map(\.detail) == (0..<50).map { UInt64(0x10 + $0) })
    }

    @Test func synthesizedFileReadsBackAndTraceCmdReportsIt() throws {
        let f = try Fixtures.formats("6.18-x86")
        let path = Self.tempPath("synth.dat")
        defer { unlink(path) }
        // Three vCPU threads of one VM, each alone on its host CPU: 3,000 exits and 3,000 entries each.
        let workload = SyntheticWorkload(threads: 3, hostCPUs: 3, vcpusPerVM: 3)
        try workload.writeTraceDat(to: path, formats: f, eventsPerCPU: 6_000,
                                   headerPage: try Fixtures.text("formats/6.18-x86/header_page"))
        // The reference: the same pages decoded in memory, exits counted by reason name.
        var expected: [String: Int] = [:]
        let decoder = f.makeDecoder()
        let exit = try #require(f.catalog.index(of: "kvm_exit"))
        for (cpu, page) in try workload.allPages(formats: f, events: 18_000) {
            for e in decoder.decodeAll(page, subbufSize: page.count, cpu: UInt16(cpu)) where e.event == exit {
                expected[f.catalog.reasonName(event: exit, reason: e.reason, isa: e.isa) ?? "?", default: 0] += 1
            }
        }
        #expect(expected.values.reduce(0, +) == 9_000)

        let r = try TraceDatReader(path: path)
        let summary = try Summary(try OfflineAnalysis.run(r))
        var perReason: [String: Int] = [:]
        var perVCPU: [UInt32: Int] = [:]
        for row in summary.exits {
            perReason[row.reason, default: 0] += Int(row.count)
            if let v = row.vcpu { perVCPU[v, default: 0] += Int(row.count) }
        }
        #expect(perReason == expected)
        #expect(perVCPU == [0: 3_000, 1: 3_000, 2: 3_000])
        #expect(Set(summary.exits.map(\.vm)) == [workload.firstTid])
        #expect(summary.pairing.paired == 9_000)

        guard let tc = TraceCmd.path else { return }
        let out = try Spawned.run(tc, ["report", "-i", path])
        #expect(out.status == 0, "\(out.stderr)")
        let lines = out.stdout.split(separator: "\n")
        #expect(lines.filter { $0.contains(" kvm_exit:") }.count == 9_000)
        #expect(lines.filter { $0.contains(" kvm_entry:") }.count == 9_000)
        #expect(lines.filter { $0.contains("CPU 1/KVM") }.count == 6_000)
    }
}

/// The system's trace-cmd (run with `Spawned.run`).
enum TraceCmd {
    static var path: String? {
        ["/usr/bin/trace-cmd", "/usr/local/bin/trace-cmd"].first { FileManager.default.isExecutableFile(atPath: $0) }
    }
}
