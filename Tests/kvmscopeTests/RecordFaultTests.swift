import Foundation
import KVMSources
import TestSupport
import Testing

/// `record` killed with SIGKILL, and `record` on a disk that fills: the pages recorded are not lost.
@Suite(.serialized, .enabled(if: KVMTest.canRun, "needs root, /dev/kvm and tracefs"))
struct RecordFaultTests {
    /// Size of a regular file (0 when missing).
    static func size(_ path: String) -> Int {
        ((try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? nil) ?? 0
    }

    /// Complete 4 KiB pages in the spool `dir`'s per-CPU files.
    static func spooledPages(_ dir: String) -> Int {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        return names.filter { $0.hasPrefix("cpu") }.reduce(0) { $0 + size("\(dir)/\($1)") / 4096 }
    }

    /// kvm_pio events in a trace.dat, as kvmscope's reader and as Debian's trace-cmd report count them.
    static func pioCounts(_ path: String) throws -> (ours: Int, traceCmd: Int) {
        let reader = try TraceDatReader(path: path)
        let pio = try #require(reader.catalog.index(of: "kvm_pio"))
        var ours = 0
        try reader.forEachEvent { if $0.event == pio { ours += 1 } }
        let tc = try Spawned.run(RecordTests.traceCmd, ["report", "-i", path])
        #expect(tc.status == 0, "trace-cmd report: \(tc.stderr)")
        return (ours, tc.stdout.split(separator: "\n").filter { $0.contains(" kvm_pio:") }.count)
    }

    /// Starts `record` of a 30 s storm and SIGKILLs it once at least 16 pages are spooled and the spool's header
    /// names the storm's vCPU thread.
    /// - Returns: the dead recording's pid, its spool directory and the pages it had spooled when it died
    ///   (counted at once: any later `stat` or `record`, another suite's too, drains the dead instance into it).
    static func killRecording(_ path: String, compression: String) throws -> (pid: Int32, spool: String, pages: Int) {
        // Small buffers: readers wake (and spool) at half of 64 KiB, not of 4 MiB — under load a slowed storm
        // took more than 30 s to fill half of the default buffer, and nothing was spooled to recover.
        let p = try Spawned(CLI.binary, ["record", "--compression", compression, "--buffer-kb", "64", "-o", path, "-e", "kvm_pio", "--",
                                         CLI.binary, "storm", "--kind", "io", "--vcpus", "1", "--exits", "1000000000",
                                         "--seconds", "30"], stdinNull: true)
        defer { p.stop() }
        let spool = (path as NSString).deletingLastPathComponent + "/\(RecordSession.spoolPrefix)\(p.pid)"
        let end = Date().addingTimeInterval(30)
        // ... and once the spool's header names the storm's vCPU thread (record rewrites it every second).
        func named() -> Bool {
            guard let child = (try? String(contentsOfFile: "/proc/\(p.pid)/task/\(p.pid)/children", encoding: .utf8))?
                    .split(separator: " ").first.flatMap({ Int32($0) }),
                  let header = try? Data(contentsOf: URL(fileURLWithPath: spool + "/header")) else { return false }
            let vcpus = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(child)/task")) ?? []).filter {
                (try? String(contentsOfFile: "/proc/\(child)/task/\($0)/comm", encoding: .utf8)) == "CPU 0/KVM\n"
            }
            return vcpus.count == 1 && header.range(of: Data("\n\(vcpus[0]) CPU 0/KVM\n".utf8)) != nil
        }
        while Date() < end && (spooledPages(spool) < 16 || !named()) && p.isRunning { usleep(50_000) }
        #expect(spooledPages(spool) >= 16, "record: \(p.stderr)")
        #expect(named(), "the spool's header names the vCPU thread")
        p.signal(SIGKILL)
        #expect(p.wait(timeout: 10) == 128 + SIGKILL)
        return (p.pid, spool, spooledPages(spool))
    }

    /// SIGKILL leaves the instance, a 0-byte output and the spool (header, manifest, pages). The next `record`
    /// in that directory removes the dead instance and assembles the spool into the output, saying so in one
    /// line; the file holds every complete page (kvmscope and trace-cmd agree on its events), and `report`
    /// says it was recovered.
    @Test func sigkilledRecordingIsRecoveredByTheNextRecord() throws {
        let dir = try RecordTests.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/k.dat"
        let (pid, spool, pages) = try Self.killRecording(path, compression: "none")
        #expect(Self.size(path) == 0)
        #expect(TraceFSInstances.exists("kvmscope-\(pid)"), "SIGKILL leaves the instance")

        let next = try CLI.run(["record", "-o", dir + "/next.dat", "--duration", "0.3", "-e", "kvm_pio"])
        #expect(next.status == 0)
        #expect(!TraceFSInstances.exists("kvmscope-\(pid)"), "the next run removes the dead instance")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).sorted() == ["k.dat", "next.dat"])

        // The file holds the spooled pages and what the dead instance still held (the storm outlives the
        // recording and keeps it filling): drained before it was removed.
        let reader = try TraceDatReader(path: path)
        #expect(reader.version == 6)
        #expect(reader.dataBytes > pages * 4096, "\(reader.dataBytes) bytes, \(pages) pages spooled")
        #expect(next.stderr == "kvmscope: recovered \(path) from the spool of killed recording pid \(pid): "
                + "\(reader.dataBytes / 4096) complete pages\n")
        let counts = try Self.pioCounts(path)
        #expect(counts.ours > 0 && counts.ours == counts.traceCmd)
        let report = try CLI.run(["report", path])
        #expect(report.status == 0, "\(report.stderr)")
        #expect(report.stdout.contains("\nnote: recovered: recording pid \(pid) was killed before it wrote this file; "
                                       + "it holds every complete page\n"), "\(report.stdout)")
        #expect(report.stdout.contains("kvm_pio"))
        // The VM is named as in a finished recording: the storm's process, its vCPU 0.
        #expect(report.stdout.contains(/\n +\d+  kvmscope +0 +\d+ +0 +0\n/), "\(report.stdout)")
    }

    /// `report` of the empty file a SIGKILLed recording left assembles the spool beside it first (one line),
    /// then reports every complete page (a version 6 file, whatever the recording's compression).
    @Test func reportOfAKilledRecordingRecoversItsSpool() throws {
        let dir = try RecordTests.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/r.dat"
        let (pid, spool, pages) = try Self.killRecording(path, compression: "zstd")
        #expect(TraceFSInstances.exists("kvmscope-\(pid)"), "SIGKILL leaves the instance")
        let report = try CLI.run(["report", "--json", path])
        #expect(report.status == 0)
        // `report` drains the dead instance into the spool (what the kernel still held) and removes it.
        let reader = try TraceDatReader(path: path)
        #expect(reader.dataBytes > pages * 4096, "\(reader.dataBytes) bytes, \(pages) pages spooled")
        #expect(report.stderr == "kvmscope: recovered \(path) from the spool of killed recording pid \(pid): "
                + "\(reader.dataBytes / 4096) complete pages\n")
        #expect(!TraceFSInstances.exists("kvmscope-\(pid)"), "report removes the dead instance")
        #expect(!FileManager.default.fileExists(atPath: spool))
        // The dead instance's per-CPU stats are the file's (taken once drained), the first CPU's followed by the
        // recovered note; report counts their losses.
        #expect(reader.cpuStats.count == ProcessInfo.processInfo.processorCount && reader.cpuStats.values.allSatisfy { $0.contains("overrun: ") },
                "\(reader.cpuStats)")
        #expect(reader.cpuStats.values.contains { $0.hasSuffix("kvmscope recovered: recording pid \(pid) was killed before it wrote this file;"
                                                               + " it holds every complete page\n") })
        let lost = reader.cpuStats.values.reduce(0) { $0 + Int(TraceFS.lost(inStats: $1)) }
        let counts = try Self.pioCounts(path)
        #expect(counts.ours == counts.traceCmd)
        let j = try CLI.json(report.stdout)
        #expect((j["events"] as? [String: Any])?["kvm_pio"] as? Int == counts.ours, "\(report.stdout.prefix(400))")
        #expect(j["lost_events"] as? Int == lost)
        // The storm's resources as sampled until the kill (the spool's header is rewritten every second).
        let resources = j["resources"] as? [[String: Any]]
        #expect(resources?.count == 1 && resources?.first?["vm_name"] as? String == "kvmscope", "\(j["resources"] ?? "none")")
        // Nothing is left to recover: the next report just reads the file.
        let again = try CLI.run(["report", path])
        #expect(again.status == 0 && again.stderr.isEmpty)
    }

    /// Another command that removes the dead recording's instance (`stat`, which removes every dead kvmscope
    /// instance) drains it into the recording's spool first (found through /run/kvmscope/record-PID): the
    /// `report` run after it still has what the kernel held at the kill.
    @Test func anotherCommandDrainsTheDeadInstanceIntoTheSpool() throws {
        let dir = try RecordTests.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/s.dat"
        let (pid, spool, pages) = try Self.killRecording(path, compression: "none")
        #expect(TraceFSInstances.exists("kvmscope-\(pid)"), "SIGKILL leaves the instance")
        #expect(FileManager.default.fileExists(atPath: "/run/kvmscope/record-\(pid)"))
        // A line in the dead instance's buffer after the pages were counted (the storm died with the recording,
        // and its last events may all have been read): whichever command drains the instance — this stat, or
        // another suite's run that removes dead instances — puts it into the spool.
        let marker = "/sys/kernel/tracing/instances/kvmscope-\(pid)/trace_marker"
        let marked = (try? "kvmscope drain test\n".write(toFile: marker, atomically: false, encoding: .utf8)) != nil
        #expect(marked, "no trace_marker in the dead instance")
        let st = try CLI.run(["stat", "--duration", "0.2", "--event", "kvm_pio"])
        #expect(st.status == 0, "\(st.stderr)")
        #expect(!TraceFSInstances.exists("kvmscope-\(pid)"), "stat removes the dead instance")
        #expect(!FileManager.default.fileExists(atPath: "/run/kvmscope/record-\(pid)"))
        let drained = Self.spooledPages(spool)
        #expect(drained > pages, "\(drained) pages in the spool after stat, \(pages) before")
        let report = try CLI.run(["report", path])
        #expect(report.status == 0)
        #expect(report.stderr == "kvmscope: recovered \(path) from the spool of killed recording pid \(pid): \(drained) complete pages\n")
        #expect(try TraceDatReader(path: path).dataBytes == drained * 4096)
        let counts = try Self.pioCounts(path)
        #expect(counts.ours > 0 && counts.ours == counts.traceCmd)
    }

    /// A 2 MiB file system fills under a storm: one line naming the file and "No space left on device", exit 1,
    /// the instance removed, no spool left, and the file valid up to its last complete page for kvmscope and
    /// Debian's trace-cmd, in both formats.
    @Test(arguments: ["zstd", "none"])
    func diskFullKeepsEveryCompletePage(compression: String) throws {
        let dir = try RecordTests.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let mount = dir + "/small"
        try FileManager.default.createDirectory(atPath: mount, withIntermediateDirectories: true)
        let m = try Spawned.run("/bin/mount", ["-t", "tmpfs", "-o", "size=2m,mode=0700", "kvmscope-test", mount])
        try #require(m.status == 0, "mount: \(m.stderr)")
        defer { _ = try? Spawned.run("/bin/umount", ["-l", mount]) }
        let path = mount + "/t.dat"
        let p = try Spawned(CLI.binary, ["record", "--compression", compression, "-o", path, "-e", "kvm_pio", "--",
                                         CLI.binary, "storm", "--kind", "io", "--vcpus", "2", "--exits", "1000000000",
                                         "--seconds", "40"], stdinNull: true)
        defer { p.stop() }
        #expect(p.wait(timeout: 60) == 1)
        let re = /kvmscope: cannot write (.+): No space left on device \(recording stopped; the file holds the (\d+) complete pages recorded before\)\n/
        let match = try #require(p.stderr.wholeMatch(of: re), "stderr: \(p.stderr)")
        #expect(String(match.1) == path)
        let pages = try #require(Int(match.2))
        #expect(pages > 100, "a 2 MiB disk holds hundreds of 4 KiB pages")
        #expect(!TraceFSInstances.exists("kvmscope-\(p.pid)"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: mount) == ["t.dat"], "no spool left")

        let reader = try TraceDatReader(path: path)
        #expect(reader.version == (compression == "zstd" ? 7 : 6))
        if compression == "none" { #expect(reader.dataBytes == pages * 4096) }
        let counts = try Self.pioCounts(path)
        #expect(counts.ours > 0 && counts.ours == counts.traceCmd)
        let report = try CLI.run(["report", path])
        #expect(report.status == 0, "\(report.stderr)")
        #expect(report.stdout.contains("\nnote: truncated: the disk was full: pages after the last complete one were not written\n"))
    }

    /// A spool another user made (owned by nobody here) is not trusted: the next `record` neither recovers it
    /// nor removes it, and writes nothing its manifest names.
    @Test func foreignSpoolIsLeftAlone() throws {
        let dir = try RecordTests.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let gone = try Spawned("/bin/true", [], stdinNull: true)
        #expect(gone.wait(timeout: 10) == 0)
        let spool = "\(dir)/\(RecordSession.spoolPrefix)\(gone.pid)"
        try FileManager.default.createDirectory(atPath: spool, withIntermediateDirectories: false)
        try Data("output \(dir)/planted.dat\npagesize 4096\ncpus 0\n".utf8).write(to: URL(fileURLWithPath: spool + "/manifest"))
        try Data("header".utf8).write(to: URL(fileURLWithPath: spool + "/header"))
        try Data(count: 4096).write(to: URL(fileURLWithPath: spool + "/cpu0"))
        #expect(chown(spool, 65534, 65534) == 0)
        let r = try CLI.run(["record", "-o", dir + "/n.dat", "--duration", "0.2", "-e", "kvm_pio"])
        #expect(r.status == 0 && r.stderr.isEmpty, "\(r.stderr)")
        #expect(FileManager.default.fileExists(atPath: spool + "/cpu0"))
        #expect(!FileManager.default.fileExists(atPath: dir + "/planted.dat"))
    }
}
