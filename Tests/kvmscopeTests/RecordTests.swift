import Foundation
import KVMAnalysis
import KVMExits
import KVMSources
import TestSupport
import Testing

/// `kvmscope record` on the real kernel, and trace.dat files written by trace-cmd on this machine.
@Suite(.serialized, .enabled(if: KVMTest.canRun, "needs root, /dev/kvm and tracefs"))
struct RecordTests {
    /// Exits per vCPU. Enough that each vCPU thread lives for tens of milliseconds: record names threads
    /// from /proc while they live (polled every 20 ms), else from the kernel's saved_cmdlines, which can
    /// hold a thread's comm from before it was renamed "CPU N/KVM".
    static let n = 20_000
    /// Exits per vCPU under `trace-cmd record` (whose report of the file is slow: kept small).
    static let traceCmdExits = 5_000

    static func tempDir() throws -> String {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("kvmscope-rec-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }

    static let traceCmd = "/usr/bin/trace-cmd"

    /// kvm_pio lines of `trace-cmd report` per thread id ("CPU 0/KVM-1234 [001] ...").
    static func traceCmdPioPerTID(_ path: String) throws -> [Int32: Int] {
        let r = try Spawned.run(traceCmd, ["report", "-i", path])
        #expect(r.status == 0, "trace-cmd report: \(r.stderr)")
        var out: [Int32: Int] = [:]
        let re = /-(\d+) +\[\d+\] +[0-9.]+: kvm_pio:/
        for line in r.stdout.split(separator: "\n") {
            if let m = line.firstMatch(of: re), let tid = Int32(m.1) { out[tid, default: 0] += 1 }
        }
        return out
    }

    /// kvm_pio events per thread id as TraceDatReader reads them.
    static func readerPioPerTID(_ path: String) throws -> [Int32: Int] {
        let reader = try TraceDatReader(path: path)
        guard let pio = reader.catalog.index(of: "kvm_pio") else { return [:] }
        var out: [Int32: Int] = [:]
        try reader.forEachEvent { e in if e.event == pio { out[e.tid, default: 0] += 1 } }
        return out
    }

    /// zstd: trace.dat version 7 compressed as trace-cmd 3.x writes it (the default); none: version 6. Debian's
    /// trace-cmd reads both; every text mode it prints of the file gives the binary's counts; the file keeps
    /// each thread's process, so it reports one VM, as the live run does.
    @Test(arguments: ["zstd", "none"])
    func recordStormThenTraceCmdAndOfflineAnalysisAgree(compression: String) throws {
        let dir = try Self.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/t.dat"
        let r = try CLI.run(["record", "--compression", compression, "-o", path, "--", CLI.binary, "storm", "--kind", "io",
                             "--vcpus", "2", "--exits", "\(Self.n)"])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        #expect(r.stderr.isEmpty, "quiet when not a terminal: \(r.stderr)")

        let tc = try Spawned.run(Self.traceCmd, ["report", "-i", path])
        #expect(tc.status == 0, "\(tc.stderr)")
        let pioLines = tc.stdout.split(separator: "\n").filter { $0.contains("kvm_pio") }
        #expect(pioLines.count == 2 * Self.n)
        // Who trace-cmd says ran them ("comm-tid" before the CPU column), for the failure message.
        let who = Set(pioLines.compactMap { $0.split(separator: "[").first?.trimmingCharacters(in: .whitespaces) })
        #expect(pioLines.filter { $0.contains("CPU 0/KVM-") }.count == Self.n, "kvm_pio threads: \(who.sorted())")
        #expect(pioLines.filter { $0.contains("CPU 1/KVM-") }.count == Self.n, "kvm_pio threads: \(who.sorted())")
        // trace-cmd report --stat prints the per-CPU stats the file saved: taken once the buffers were drained,
        // as trace-cmd saves them, so nothing is left unread and "read events" add up to the events in the file.
        let stat = try Spawned.run(Self.traceCmd, ["report", "--stat", "-i", path])
        #expect(stat.status == 0, "\(stat.stderr)")
        let statLines = stat.stdout.split(separator: "\n")
        let entries = statLines.filter { $0.hasPrefix("entries:") }
        let read = statLines.filter { $0.hasPrefix("read events:") }.compactMap { UInt64($0.split(separator: " ").last ?? "") }
        let fileEvents = tc.stdout.split(separator: "\n").count - 1  // after the "cpus=N" line
        #expect(entries.count >= 1 && entries.allSatisfy { $0 == "entries: 0" }, "\(stat.stdout)")
        #expect(read.count == entries.count && read.reduce(0, +) == UInt64(fileEvents), "\(stat.stdout)")

        let reader = try TraceDatReader(path: path)
        #expect(reader.version == (compression == "zstd" ? 7 : 6))
        #expect(reader.compression == (compression == "zstd" ? "zstd" : nil))
        #expect(reader.lostEvents == 0)
        #expect(reader.lostPerCPU.count == reader.cpuCount)
        #expect(reader.lostPerCPU.values.allSatisfy { $0 == 0 })
        let summary = try Summary(try OfflineAnalysis.run(reader))
        let events = Dictionary(uniqueKeysWithValues: summary.events.map { ($0.name, $0.total) })
        #expect(events["kvm_pio"] == UInt64(2 * Self.n))
        #expect(events["kvm_userspace_exit"] == UInt64(2 * Self.n))
        #expect((events["kvm_mmio"] ?? 0) == 0)
        let rows = summary.userspaceExits.sorted { ($0.vcpu ?? 99) < ($1.vcpu ?? 99) }
        #expect(rows.map(\.reason) == ["KVM_EXIT_IO", "KVM_EXIT_IO"])
        #expect(rows.map(\.count) == [UInt64(Self.n), UInt64(Self.n)])
        #expect(rows.map(\.vcpu) == [0, 1])
        // One VM: the storm's process (its pid is in the JSON line it printed).
        let pid = try #require(r.stdout.firstMatch(of: /"pid":(\d+)/).flatMap { Int32($0.1) })
        #expect(rows.map(\.vm) == [pid, pid], "tgids kept")

        // trace-cmd's text of the same file, in each mode, read back: the binary's counts.
        for mode in [[], ["-t"], ["-R"], ["-l"]] {
            let t = try Spawned.run(Self.traceCmd, ["report"] + mode + ["-i", path])
            #expect(t.status == 0, "trace-cmd report \(mode): \(t.stderr)")
            let text = try TextTraceReader(bytes: Array(t.stdout.utf8), name: "trace-cmd report \(mode)")
            let s = try Summary(try OfflineAnalysis.run(text))
            #expect(s.total(of: "kvm_pio") == UInt64(2 * Self.n) && s.total(of: "kvm_userspace_exit") == UInt64(2 * Self.n))
            #expect(s.userspaceExits.map(\.count).sorted() == [UInt64(Self.n), UInt64(Self.n)], "\(mode)")
            #expect(s.userspaceExits.compactMap(\.vcpu).sorted() == [0, 1], "\(mode)")
        }
    }

    /// Waits until `record`'s tracefs instance (kvmscope-PID) traces every kvm event, or `seconds` pass. Not
    /// `tracing_on` alone: a new instance has it on from its mkdir, before record enables the events one by
    /// one (a guest started then lost its first exits: the file was short of them, with no loss counted).
    static func waitUntilTracing(_ p: Spawned, seconds: Double = 30) -> Bool {
        let dir = "/sys/kernel/tracing/instances/kvmscope-\(p.pid)"
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if (try? String(contentsOfFile: dir + "/tracing_on", encoding: .utf8))?.hasPrefix("1") == true,
               (try? String(contentsOfFile: dir + "/events/kvm/enable", encoding: .utf8)) == "1\n" { return true }
            usleep(20_000)
        }
        return false
    }

    /// A system-wide recording (no COMMAND) of a storm guest named with `--name` (QEMU's `-name`) names the VM
    /// as the live run does: the guest name in every `report` output, for the guest's pid, with its vCPUs' exact
    /// counts; the VM process's comm is in the saved cmdlines that trace-cmd prints, and trace-cmd still reads
    /// the file (it skips kvmscope's option).
    /// `-o FIFO`: without a reader, one line at once (a plain open would sleep until a reader came, deaf to
    /// SIGINT and SIGTERM); with one, the reader gets the whole file (the FIFO held open from the start, so the
    /// reader sees no end before the trace).
    @Test func fifoOutputNeverWaitsForAReader() throws {
        let dir = try Self.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let fifo = dir + "/fifo"
        #expect(mkfifo(fifo, 0o600) == 0)
        let alone = try CLI.run(["record", "-o", fifo, "--duration", "0.2"], timeout: 30)
        #expect(alone.status == 1)
        #expect(alone.stderr == "kvmscope: cannot write \(fifo): no process reads this FIFO (start its reader first)\n")
        let out = onThreads([
            { @Sendable () -> String in
                // The reader: the whole stream, to its end.
                guard let h = FileHandle(forReadingAtPath: fifo) else { return "no reader" }
                let data = h.readDataToEndOfFile()
                try? h.close()
                return "\(data.count) \(data.prefix(10).map { String($0) }.joined(separator: ","))"
            },
            { @Sendable () -> String in
                // The reader opens first (FileHandle's open waits for a writer): give it a moment.
                usleep(300_000)
                guard let r = try? CLI.run(["record", "-o", fifo, "--", CLI.binary, "storm", "--kind", "io", "--vcpus", "1",
                                            "--exits", "2000"], timeout: 60) else { return "no run" }
                return "\(r.status) \(r.stderr)"
            },
        ], timeout: 90)
        #expect(out[1] == "0 ", "record: \(out[1])")
        // trace.dat's magic: 0x17 0x08 0x44 "tracing".
        #expect(out[0].hasSuffix(" 23,8,68,116,114,97,99,105,110,103"), "\(out[0])")
        #expect((Int(out[0].split(separator: " ")[0]) ?? 0) > 4096, "\(out[0])")
    }

    /// `-o -` writes the file to standard output, as perf record's `-o -`; `-o ''` is no file; a file whose
    /// directory takes no spool is named in the error, not the spool.
    @Test func oddOutputs() throws {
        let dir = try Self.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/stdout.dat"
        let r = try Spawned.run("/bin/sh", ["-c", "\"$0\" record -o - -- \"$0\" storm --kind io --vcpus 1 --exits 1000 > \"$1\"",
                                            CLI.binary, path], timeout: 60)
        #expect(r.status == 0, "\(r.stderr)")
        let reader = try TraceDatReader(path: path)
        let pio = reader.catalog.index(of: "kvm_pio")
        var pios = 0
        try reader.forEachEvent { e in if e.event == pio { pios += 1 } }
        #expect(pios == 1000)
        // Through a pipe too, and COMMAND's own output (storm's JSON line) goes to standard error, as perf record -o -
        // sends its workload's: in the stream it made a file no reader opens.
        let piped = dir + "/piped.dat"
        let p = try Spawned.run("/bin/sh", ["-c", "\"$0\" record -o - -- \"$0\" storm --kind io --vcpus 1 --exits 1000 | cat > \"$1\"",
                                            CLI.binary, piped], timeout: 60)
        #expect(p.status == 0)
        #expect(p.stderr.hasPrefix("{\"pid\":") && p.stderr.contains("\"exits\":1000"), "\(p.stderr)")
        var piped1000 = 0
        let pipedReader = try TraceDatReader(path: piped)
        let pipedPio = pipedReader.catalog.index(of: "kvm_pio")
        try pipedReader.forEachEvent { e in if e.event == pipedPio { piped1000 += 1 } }
        #expect(piped1000 == 1000)
        let empty = try CLI.run(["record", "-o", ""])
        #expect(empty.status == 64 && empty.stderr == "kvmscope: -o/--output needs a file name\n", "\(empty.stderr)")
        let proc = try CLI.run(["record", "-o", "/proc/version", "--duration", "0.1"])
        #expect(proc.status == 1)
        #expect(proc.stderr.hasPrefix("kvmscope: cannot write /proc/version: its spool /proc/.kvmscope-record-"), "\(proc.stderr)")
    }

    /// `report` of the file a recording is still making (empty until it ends) names that recording.
    @Test func reportOfAFileBeingRecordedSaysSo() throws {
        let dir = try Self.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/live.dat"
        let rec = try Spawned(CLI.binary, ["record", "-o", path, "--duration", "30"], stdinNull: true)
        defer { rec.stop() }
        let end = Date().addingTimeInterval(30)
        while Date() < end && !FileManager.default.fileExists(atPath: "\(dir)/.kvmscope-record-\(rec.pid)/manifest") { usleep(20_000) }
        let r = try CLI.run(["report", path])
        #expect(r.status == 1)
        #expect(r.stderr == "kvmscope: \(path): empty file: kvmscope record (pid \(rec.pid)) is recording it and writes it when it ends\n")
        rec.signal(SIGINT)
        #expect(rec.wait(timeout: 30) == 0, "\(rec.stderr)")
        #expect(try CLI.run(["report", path]).status == 0)
    }

    @Test func systemWideRecordingNamesTheVM() throws {
        let dir = try Self.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/sw.dat"
        // System-wide: every other suite's guests are in the buffers too; 32 MiB per CPU rides out a reader
        // that a loaded host does not schedule for a while.
        let rec = try Spawned(CLI.binary, ["record", "-o", path, "--duration", "120", "--buffer-kb", "32768"], stdinNull: true)
        defer { rec.stop() }
        #expect(Self.waitUntilTracing(rec), "record did not start tracing: \(rec.stderr)")
        let name = "rec-sw-\(getpid())"
        let exits = 5_000
        let storm = try CLI.run(["storm", "--kind", "io", "--vcpus", "2", "--exits", "\(exits)", "--name", name])
        #expect(storm.status == 0, "\(storm.stderr)")
        let pid = try #require(storm.stdout.firstMatch(of: /"pid":(\d+)/).flatMap { Int32($0.1) })
        rec.signal(SIGINT)
        #expect(rec.wait(timeout: 60) == 0, "\(rec.stderr)")

        // Exact counts where the kernel lost nothing; a loss (other suites' storms filling the buffers on a
        // loaded host) is counted in the file, and then only the names are checked.
        let lost = try CLI.json(try CLI.run(["report", "--json", path]).stdout)["lost_events"] as? Int
        let exact = lost == 0
        if !exact { print("systemWideRecordingNamesTheVM: \(lost.map(String.init) ?? "?") events lost: names checked, counts not") }
        let csv = try CLI.run(["report", "--csv", path])
        #expect(csv.status == 0, "\(csv.stderr)")
        let rows = csv.stdout.split(separator: "\n").filter { $0.hasPrefix("\(path),\(pid),") }
        #expect(rows.map { $0.split(separator: ",", omittingEmptySubsequences: false).prefix(6).joined(separator: ",") }
                == ["\(path),\(pid),\(name),0,KVM_EXIT_IO,userspace", "\(path),\(pid),\(name),1,KVM_EXIT_IO,userspace"], "\(csv.stdout)")
        #expect(!exact || rows == ["\(path),\(pid),\(name),0,KVM_EXIT_IO,userspace,0,\(exits),0,,,,,,,,,",
                         "\(path),\(pid),\(name),1,KVM_EXIT_IO,userspace,0,\(exits),0,,,,,,,,,"], "\(csv.stdout)")

        let json = try CLI.run(["report", "--json", "-p", "\(pid)", path])
        #expect(json.status == 0, "\(json.stderr)")
        let doc = try CLI.json(json.stdout)
        let userspace = try #require(doc["userspace_exits"] as? [[String: Any]], "\(json.stdout)")
        #expect(userspace.map { $0["vm_name"] as? String } == [name, name])
        #expect(userspace.map { ($0["vm"] as? NSNumber)?.int32Value } == [pid, pid])
        #expect(!exact || userspace.map { ($0["count"] as? NSNumber)?.intValue } == [exits, exits])

        let text = try CLI.run(["report", "-p", "\(pid)", path])
        #expect(text.status == 0, "\(text.stderr)")
        // The VM table: pid, name, vCPUs, events (5 per exit, and the VM's set-up), exits, userspace exits.
        let vmRow = text.stdout.split(separator: "\n").map { $0.split(separator: " ") }.first { $0.first == "\(pid)" }
        let cells = try #require(vmRow, "\(text.stdout)").map(String.init)
        #expect(cells.count == 6 && cells[1] == name && cells[2] == "0,1" && cells[4] == "0", "\(text.stdout)")
        #expect(!exact || (cells.count == 6 && cells[5] == "\(2 * exits)" && (UInt64(cells[3]) ?? 0) >= UInt64(10 * exits)),
                "\(text.stdout)")

        let cmdlines = try Spawned.run(Self.traceCmd, ["dump", "--cmd-lines", "-i", path])
        #expect(cmdlines.status == 0, "\(cmdlines.stderr)")
        #expect(cmdlines.stdout.split(separator: "\n").contains("\(pid) kvmscope"), "\(cmdlines.stdout)")
        let tc = try Spawned.run(Self.traceCmd, ["report", "-i", path])
        #expect(tc.status == 0 && tc.stderr.isEmpty, "\(tc.stderr)")
        let vcpuThreads = try TraceDatReader(path: path).identities.filter { $0.value.vm == pid && $0.key != pid }
        #expect(Set(vcpuThreads.values.compactMap(\.vcpu)) == [0, 1])
        #expect(Set(vcpuThreads.values.compactMap(\.vmName)) == [name])
        #expect(try !exact || Self.traceCmdPioPerTID(path).filter { vcpuThreads[$0.key] != nil }.values.sorted() == [exits, exits])
    }

    /// A recording of kvm_exit without kvm_entry: report says no exit latency can be measured (the file's
    /// formats tell what was traced, whether or not kvm_exit fired); with kvm_entry recorded it does not.
    @Test func exitWithoutEntryRecordedIsNoted() throws {
        let dir = try Self.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for (events, traced) in [(["kvm_exit", "kvm_pio"], false), (["kvm_exit", "kvm_entry", "kvm_pio"], true)] {
            let path = dir + "/e\(events.count).dat"
            let r = try CLI.run(["record", "-o", path] + events.flatMap { ["-e", $0] }
                                + ["--", CLI.binary, "storm", "--kind", "io", "--exits", "1000"])
            #expect(r.status == 0, "\(r.stderr)")
            let text = try CLI.run(["report", path])
            #expect(text.status == 0, "\(text.stderr)")
            #expect(text.stdout.split(separator: "\n").filter { $0 == "note: kvm_entry not traced, no exit latency" }.count
                    == (traced ? 0 : 1), "\(text.stdout)")
            let json = try CLI.json(try CLI.run(["report", "--json", path]).stdout)
            let source = try #require(json["source"] as? [String: Any])
            #expect(source["kvm_entry_traced"] as? Bool == traced)
            #expect((json["events"] as? [String: Any])?["kvm_pio"] as? Int == 1000)
        }
    }

    /// Bytes of the ring-buffer records in a trace.dat's pages, page headers included: 16 + commit per page.
    static func recordBytes(_ reader: TraceDatReader) throws -> (records: Int, pages: Int) {
        let bytes = try Data(contentsOf: URL(fileURLWithPath: reader.path), options: .alwaysMapped)
        var records = 0, pages = 0
        for c in reader.cpuData {
            var at = c.offset
            while at + reader.pageSize <= c.offset + c.size {
                let commit = bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: at + 8, as: UInt64.self) } & 0x3fff_ffff
                records += 16 + Int(commit)
                pages += 1
                at += reader.pageSize
            }
        }
        return (records, pages)
    }

    /// `record` costs the events' bytes, not pages: a storm of 2 × 100,000 port-I/O exits recorded uncompressed
    /// is at most 1.2 × the bytes of the records it holds (the reader takes only the sub-buffers the writer
    /// has left, so every page but the last of each CPU is full), every kvm_pio is in it, and trace-cmd reads
    /// back every event the file holds.
    @Test func recordedFileIsTheRecordsBytes() throws {
        let dir = try Self.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/big.dat"
        let exits = 100_000
        let r = try CLI.run(["record", "--compression", "none", "-o", path, "--", CLI.binary, "storm", "--kind", "io",
                             "--vcpus", "2", "--exits", "\(exits)"])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        let reader = try TraceDatReader(path: path)
        #expect(reader.lostEvents == 0)
        var total = 0, pio = 0
        let pioIndex = try #require(reader.catalog.index(of: "kvm_pio"))
        try reader.forEachEvent { e in
            total += 1
            if e.event == pioIndex { pio += 1 }
        }
        #expect(pio == 2 * exits)
        let (records, pages) = try Self.recordBytes(reader)
        let size = try #require(try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int)
        #expect(Double(size) <= 1.2 * Double(records), "file \(size) bytes, records \(records) bytes in \(pages) pages")
        let tc = try Spawned.run(Self.traceCmd, ["report", "-i", path])
        #expect(tc.status == 0, "\(tc.stderr)")
        let lines = tc.stdout.split(separator: "\n")
        #expect(lines.first == "cpus=\(reader.cpuCount)")
        #expect(lines.count - 1 == total, "trace-cmd report: \(lines.count - 1) events, TraceDatReader: \(total)")
        #expect(lines.filter { $0.contains(": kvm_pio:") }.count == 2 * exits)
    }

    /// The kernel's own `trace` file, read in place: tracefs says size 0 for it, as procfs does for its files, so
    /// report reads it to its end (it had said "empty file"). Counts exact: one storm vCPU's port exits.
    @Test(.enabled(if: KVMTest.canRun, "needs root, /dev/kvm and tracefs")) func theKernelsTraceFileInPlace() throws {
        let instance = "/sys/kernel/tracing/instances/kvmscopetrace\(getpid())"
        try FileManager.default.createDirectory(atPath: instance, withIntermediateDirectories: false)
        defer { rmdir(instance) }
        func put(_ file: String, _ value: String) throws { try value.write(toFile: instance + "/" + file, atomically: false, encoding: .utf8) }
        // Off until the storm's pid is the filter: a clean-clone run counted 3,439 port exits, other tests'
        // storms traced between the events' enable and set_event_pid.
        try put("tracing_on", "0")
        try put("buffer_size_kb", "2048")
        try put("events/kvm/kvm_pio/enable", "1")
        try put("events/kvm/kvm_userspace_exit/enable", "1")
        try put("options/event-fork", "1")
        // Only the storm: it lists itself in set_event_pid before it starts (its vCPU thread is followed).
        let storm = try Spawned.run("/bin/sh", ["-c", "echo $$ > \"$1/set_event_pid\" && echo 1 > \"$1/tracing_on\" "
                                                + "&& exec \"$0\" storm --kind io --vcpus 1 --exits 3000",
                                                CLI.binary, instance], timeout: 60)
        #expect(storm.status == 0, "\(storm.stderr)")
        try put("tracing_on", "0")
        let r = try CLI.run(["report", "--json", instance + "/trace"])
        #expect(r.status == 0, "\(r.stderr)")
        let j = try CLI.json(r.stdout)
        let events = try #require(j["events"] as? [String: Int], "\(r.stdout.prefix(300))")
        #expect(events["kvm_pio"] == 3000 && events["kvm_userspace_exit"] == 3000, "\(events)")
    }

    @Test(arguments: [6, 7]) func traceCmdRecordedFilesReadLikeTraceCmd(version: Int) throws {
        let dir = try Self.tempDir()
        let instance = "kvmscopetc\(getpid())v\(version)"
        defer {
            try? FileManager.default.removeItem(atPath: dir)
            rmdir("/sys/kernel/tracing/instances/\(instance)")
        }
        let path = dir + "/x.dat"
        // Not -F: with it, trace-cmd 3.1.6 waits forever once the command has exited (ptrace_wait).
        // It exits 1 after writing the file (it cannot write the instance's set_ftrace_filter here).
        // env --default-signal: the test runner's signal dispositions must not reach trace-cmd.
        var args = ["--default-signal", "/usr/bin/timeout", "-k", "5", "60", Self.traceCmd, "record", "--file-version", "\(version)"]
        if version == 7 { args += ["--compression", "zstd"] }
        args += ["-B", instance, "-d", "--no-filter", "-e", "kvm", "-o", path,
                 CLI.binary, "storm", "--kind", "io", "--vcpus", "2", "--exits", "\(Self.traceCmdExits)"]
        var rec = try Spawned.run("/usr/bin/env", args)
        #expect(rec.status != 124, "trace-cmd record timed out")
        // Once in a clean-clone run trace-cmd wrote a file whose header no reader could take ("claims 1886322688
        // CPUs": text where the CPU count belongs), while other suites started libvirtd and guests (modules
        // loading as trace-cmd saved kallsyms, we think). When trace-cmd cannot read its own file either, the
        // recording is bad, not our reader: it is made once more.
        if (try? TraceDatReader(path: path)) == nil, (try? Spawned.run(Self.traceCmd, ["report", "-i", path]))?.status != 0 {
            rec = try Spawned.run("/usr/bin/env", args)
            #expect(rec.status != 124, "trace-cmd record timed out")
        }
        let reader = try TraceDatReader(path: path)
        #expect(reader.version == version)
        #expect(reader.compression == (version == 7 ? "zstd" : nil))
        let ours = try Self.readerPioPerTID(path)
        let theirs = try Self.traceCmdPioPerTID(path)
        #expect(ours == theirs)
        // The storm's two vCPU threads are in it (other suites' storms may be too). Not "exactly n each": that is
        // trace-cmd's own completeness, not our reader's, and trace-cmd 3.1.6 drops some events at stop when the
        // host is busy (README, "Before the rework": a few thousand at every rate; seen here while a whole suite
        // and other builds ran). Our reader's exactness is `ours == theirs`, on every thread.
        #expect(ours.values.filter { $0 > Self.traceCmdExits / 2 && $0 <= Self.traceCmdExits }.count >= 2, "\(ours)")
    }

    /// `record -o a` (a one-character name in the working directory) records into `a`; `-o .` is one line.
    @Test func oneCharacterOutputPath() throws {
        let dir = try Self.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func run(_ args: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
            try Spawned.run("/bin/sh", ["-c", "cd \"$0\" && exec \"$@\"", dir, CLI.binary] + args)
        }
        let r = try run(["record", "-o", "a", "--duration", "0.2", "-e", "kvm_pio"])
        #expect(r.status == 0 && r.stderr.isEmpty, "\(r.stderr)")
        #expect(try TraceDatReader(path: dir + "/a").version >= 6)
        let d = try run(["record", "-o", ".", "--duration", "0.2", "-e", "kvm_pio"])
        #expect(d.status == 1 && d.stderr == "kvmscope: cannot write .: Is a directory\n", "\(d.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["a"])
        // Without -o, trace.dat (trace-cmd record's default); `kvm:` is every kvm event, another system's event
        // is one line.
        let t = try run(["record", "--duration", "0.2", "-e", "kvm:"])
        #expect(t.status == 0 && t.stderr.isEmpty, "\(t.stderr)")
        #expect(try TraceDatReader(path: dir + "/trace.dat").catalog.index(of: "kvm_pio") != nil)
        let sched = try run(["record", "-o", "s.dat", "--duration", "0.2", "-e", "sched:sched_switch"])
        #expect(sched.status == 1 && sched.stderr == "kvmscope: only kvm events are traced: sched:sched_switch is in the sched system\n",
                "\(sched.stderr)")
    }

    /// On a terminal, record's closing line counts the events in the file, the end-of-run drain included: a storm
    /// of 5000 exits never fills half a ring buffer, so its reader never woke before the end and the line said "0
    /// events". With a COMMAND no progress line is drawn (the command's output would be glued onto it): the
    /// storm's line and the closing line are each a line of their own. Its MiB are the file's.
    @Test func closingLineCountsTheEventsInTheFile() throws {
        let dir = try Self.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/c.dat"
        let command = [CLI.binary, "record", "-o", path, "--", CLI.binary, "storm", "--kind", "io", "--vcpus", "1",
                       "--exits", "5000"].map { "'\($0)'" }.joined(separator: " ")
        // script(1) (util-linux, essential in Debian) runs it on a terminal of its own.
        let r = try Spawned.run("/usr/bin/script", ["-qefc", command, "/dev/null"], timeout: 120)
        #expect(r.status == 0, "\(r.stdout) \(r.stderr)")
        let out = r.stdout.replacingOccurrences(of: "\r\n", with: "\n")
        let reader = try TraceDatReader(path: path)
        let pio = reader.catalog.index(of: "kvm_pio")
        var events = 0, pios = 0
        try reader.forEachEvent { e in
            events += 1
            if e.event == pio { pios += 1 }
        }
        #expect(pios == 5000)
        let lines = out.split(separator: "\n", omittingEmptySubsequences: false)
        #expect(lines.count == 3 && lines[2].isEmpty, "\(out)")
        #expect(lines.first?.hasPrefix("{\"pid\":") == true, "\(out)")
        let closing = try #require(lines.dropFirst().first.flatMap { $0.wholeMatch(of: #/  wrote (.+): (\d+) events, ([0-9.]+) MiB, lost 0, \d+ threads/#) },
                                   "\(out)")
        #expect(closing.1 == path)
        #expect(Int(closing.2) == events, "\(out)")
        // The file's size, as perf record's "wrote X MB" (zstd: the spooled pages' bytes were several times more).
        let size = try #require(try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int)
        #expect(String(closing.3) == String(format: "%.1f", Double(size) / 1_048_576), "\(out), file \(size) bytes")
        #expect(!out.contains("\r") && !out.contains("events/s"), "\(out)")
    }

    @Test func maxSizeIsHonoured() throws {
        let dir = try Self.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/m.dat"
        // --max-size counts the pages as the kernel wrote them; uncompressed, the file holds exactly those.
        let r = try CLI.run(["record", "--compression", "none", "-o", path, "--max-size", "64K", "--", CLI.binary, "storm", "--kind", "io",
                             "--vcpus", "2", "--exits", "20000"])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        let dropped = try #require(r.stderr.wholeMatch(of: /kvmscope: --max-size reached: (\d+) pages not written\n/).flatMap { Int($0.1) },
                                   "\(r.stderr)")
        #expect(dropped > 0)
        let reader = try TraceDatReader(path: path)
        let data = reader.dataBytes
        #expect(data > 0 && data <= 65_536)
        #expect(data % reader.pageSize == 0)
        // The pages not written are in report's text and JSON (their events are in no count, lost_events
        // included): a script can tell the file is short.
        let text = try CLI.run(["report", path])
        #expect(text.stdout.split(separator: "\n").filter { $0.hasPrefix("note: dropped pages:") }
                == ["note: dropped pages: \(dropped) (not written: --max-size reached or a write failed; their events are in no count here)"])
        let json = try CLI.json(try CLI.run(["report", "--json", path]).stdout)
        let source = try #require(json["source"] as? [String: Any])
        #expect(source["dropped_pages"] as? Int == dropped)
        #expect(source["truncated"] as? Bool == true)
        #expect(source["recorder_notes"] as? [String] == ["dropped pages: \(dropped)"])
        // Every page past --max-size: the file holds no event, and report does not say that none fired.
        let none = dir + "/none.dat"
        let n = try CLI.run(["record", "-o", none, "--max-size", "1", "--", CLI.binary, "storm", "--kind", "io",
                             "--vcpus", "1", "--exits", "2000"])
        #expect(n.status == 0, "stderr: \(n.stderr)")
        let notes = try CLI.run(["report", none]).stdout.split(separator: "\n").filter { $0.hasPrefix("note: ") }
        #expect(notes.first == "note: the recording holds no kvm events: the pages that held them were not written (below)", "\(notes)")
        #expect(notes.dropFirst().first?.hasPrefix("note: dropped pages: ") == true, "\(notes)")
    }

    /// A slow trace reaches --max-size while its events still wait in the ring buffers (readers wake at the
    /// watermark): the recording ends there, and the command with it, not when the command ends by itself.
    @Test func maxSizeEndsASlowRecording() throws {
        let dir = try Self.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/slow.dat"
        let r = try CLI.run(["record", "--compression", "none", "-o", path, "--max-size", "200K", "-e", "kvm_pio", "--",
                             CLI.binary, "storm", "--kind", "io", "--exits", "1000000000", "--seconds", "30"], timeout: 90)
        #expect(r.status == 0, "stderr: \(r.stderr)")
        // The storm's own line: stopped by the recording's SIGINT, well before its 30 s.
        let storm = try CLI.json(String(r.stdout.split(separator: "\n").first ?? ""))
        #expect(try #require(storm["seconds"] as? Double) < 25, "\(r.stdout)")
        let reader = try TraceDatReader(path: path)
        #expect(reader.dataBytes > 0 && reader.dataBytes <= 200 * 1024)
    }

    @Test func sigintEndsWithAValidFile() throws {
        let dir = try Self.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/s.dat"
        let p = try Spawned(CLI.binary, ["record", "-o", path, "--duration", "60", "-e", "kvm_pio"], stdinNull: true)
        defer { p.stop() }
        usleep(1_500_000)
        p.signal(SIGINT)
        #expect(p.wait(timeout: 30) == 0, "\(p.stderr)")
        let reader = try TraceDatReader(path: path)
        #expect(reader.catalog.entries.map(\.name) == ["kvm_pio"])
        try reader.forEachEvent { _ in }
        #expect(!TraceFSInstances.exists("kvmscope-\(p.pid)"))
    }
}

enum TraceFSInstances {
    static func exists(_ name: String) -> Bool { FileManager.default.fileExists(atPath: "/sys/kernel/tracing/instances/\(name)") }
}
