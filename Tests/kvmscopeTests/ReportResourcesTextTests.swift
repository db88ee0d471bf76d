import Foundation
import KVMSources
import Testing

/// `report` of a recording prints, after the VM table, what `record` sampled of each VM (kvmscope's option
/// 0x4b02, `report --json`'s `resources`): host CPU seconds split vCPU/other, run-queue wait, RSS, storage
/// bytes, and with QMP each block device's requests, bytes and average latency. The recording is built by hand:
/// two VMs, one MSR_WRITE exit of VM 50 and one HLT exit of VM 60, and resources whose every number is known.
@Suite struct ReportResourcesTextTests {
    static let formats = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/formats/6.18-x86")

    /// The resources as `record` writes them (``RecordedResources``, JSONEncoder's names). VM 50 "web1": 1.80 s
    /// of CPU (user 150 + system 30 ticks at 100/s), 1.40 s of it its vCPUs', 12.5 ms run-queue wait, 256 MiB
    /// RSS, 4 KiB read and 1.5 MiB written, and one disk: 40 reads (160 KiB, 2 ms in all: 50 us each) and 10
    /// writes (40 KiB, 10 ms: 1 ms each). VM 60 "db": started during the recording and ended, 0.25 s (0.10 s
    /// vCPU), no /proc/PID/io, its QMP socket failed.
    static let resources = """
        {"layout":1,"vms":[
         {"vm":50,"name":"web1","ended":false,"seenFromStart":true,"bornDuringRun":false,"sampledSeconds":2.0,"vcpus":2,
          "ticksPerSecond":100,
          "process":{"userTicks":150,"systemTicks":30,"guestTicks":120,"waitNanoseconds":20000000,"switches":900},
          "vcpuTotal":{"userTicks":130,"systemTicks":10,"guestTicks":120,"waitNanoseconds":12500000,"switches":800},
          "io":{"readChars":9000,"writeChars":2000000,"readSyscalls":30,"writeSyscalls":40,"readBytes":4096,
                "writeBytes":1572864,"cancelledWriteBytes":0},
          "rssBytes":268435456,"swapBytes":0,
          "threads":[{"vcpu":0,"tid":101,"times":{"userTicks":130,"systemTicks":10,"guestTicks":120,"waitNanoseconds":12500000,"switches":800}}],
          "qmp":{"socket":"/run/web.qmp","memoryConfiguredBytes":1073741824},
          "disks":[{"device":"virtio-disk0","drive":"drive0","counts":{"readRequests":40,"writeRequests":10,"flushRequests":2,
                    "readBytes":163840,"writeBytes":40960,"readTimeNanoseconds":2000000,"writeTimeNanoseconds":10000000,
                    "flushTimeNanoseconds":0}}],
          "pciRegions":[]},
         {"vm":60,"name":"db","ended":true,"seenFromStart":false,"bornDuringRun":true,"sampledSeconds":0.5,"vcpus":1,
          "ticksPerSecond":100,
          "process":{"userTicks":20,"systemTicks":5,"guestTicks":8,"waitNanoseconds":0,"switches":10},
          "vcpuTotal":{"userTicks":10,"systemTicks":0,"guestTicks":8,"waitNanoseconds":0,"switches":5},
          "rssBytes":1000,"swapBytes":0,"threads":[],"qmp":{"socket":"/run/db.qmp","problem":"connection closed by the peer"},
          "disks":[],"pciRegions":[]}]}
        """

    /// Writes a recording of kvm_exit/kvm_entry records (this kernel's formats) that `events` appends to CPU 0's
    /// pages, with the metadata `metadata` fills in.
    static func write(_ path: String, metadata: (inout TraceDatMetadata) -> Void,
                      events: (_ exit: EventPayloadBuilder, _ entry: EventPayloadBuilder, inout RingBufferPageBuilder) throws -> Void) throws {
        let text = { (name: String) in try String(contentsOf: formats.appendingPathComponent(name), encoding: .utf8) }
        let f = EventFormats()
        try f.add(system: "kvm", format: text("kvm_exit.format"))
        try f.add(system: "kvm", format: text("kvm_entry.format"))
        var cpu0 = RingBufferPageBuilder(subbufSize: 4096)
        try events(try EventPayloadBuilder(formats: f, event: "kvm_exit"), try EventPayloadBuilder(formats: f, event: "kvm_entry"), &cpu0)
        var m = TraceDatMetadata()
        m.headerPage = try text("header_page")
        m.systems = [.init(name: "kvm", formats: [try text("kvm_exit.format"), try text("kvm_entry.format")])]
        metadata(&m)
        try TraceDatWriter.write(path: path, metadata: m, cpus: [.pages(cpu0.finish())])
    }

    static func writeRecording(_ path: String) throws {
        try write(path, metadata: { m in
            m.cmdlines = [101: "CPU 0/KVM", 102: "CPU 0/KVM"]
            m.tgids = [101: 50, 102: 60]
            m.guestNames = [50: "web1", 60: "db"]
            m.resourcesJSON = resources
        }, events: { exitB, entryB, cpu0 in
            cpu0.append(timestamp: 1_000, payload: exitB.payload(pid: 101, ["exit_reason": 32, "isa": 1]))   // MSR_WRITE
            cpu0.append(timestamp: 1_500, payload: entryB.payload(pid: 101, [:]))
            cpu0.append(timestamp: 2_000, payload: exitB.payload(pid: 102, ["exit_reason": 12, "isa": 1]))   // HLT
            cpu0.append(timestamp: 5_000, payload: entryB.payload(pid: 102, [:]))
        })
    }

    func withRecording<T>(_ body: (String) throws -> T) throws -> T {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("report-resources-\(getpid())-\(UUID().uuidString).dat").path
        defer { unlink(path) }
        try Self.writeRecording(path)
        return try body(path)
    }

    /// The lines from the VM table to the exit tables.
    func section(_ args: [String]) throws -> [String] {
        try withRecording { path in
            let r = try CLI.run(["report"] + args + [path])
            #expect(r.status == 0, "\(r.stderr)")
            let lines = r.stdout.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            guard let start = lines.firstIndex(where: { $0.hasPrefix("      VM  Name") }),
                  let end = lines.firstIndex(where: { $0.hasPrefix("VM ") }) else { return lines }
            return Array(lines[start..<end])
        }
    }

    @Test func resourcesFollowTheVMTable() throws {
        #expect(try section([]) == [
            "      VM  Name                    vCPUs             Events       Exits  Userspace exits",
            "      50  web1                    0                      2           1                0",
            "      60  db                      0                      2           1                0",
            "",
            "Resources while recorded (/proc: host CPU time, vCPU run-queue wait, RSS at the end, storage bytes)",
            "      VM  Name                     Sampled      CPU     vCPU    Other      Wait      RSS     Read  Written",
            "      50  web1                        2.0s    1.80s    1.40s    0.40s   12.50ms   256.0M     4.0K     1.5M",
            "      60  db                          0.5s    0.25s    0.10s    0.15s       0ns    1000B        -        -  started during the recording, ended",
            "",
            "Block devices while recorded (QEMU's query-blockstats: requests, bytes, average time per request)",
            "      VM  Device                      RDRQ    WRRQ     RDBY     WRBY     RDLAT     WRLAT",
            "      50  virtio-disk0                  40      10   160.0K    40.0K   50.00us    1.00ms",
            "      60  (QMP: connection closed by the peer)",
            "",
        ])
    }

    /// A kernel thread that caused kvm events (kdamond aging a guest's pages) is recorded named in brackets, as
    /// ps names kernel threads; report's VM table keeps its row (its counts are where the kernel put them) and
    /// says it is no VM.
    @Test func kernelThreadsAreSaidToBeNoVMs() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("report-kthread-\(getpid()).dat").path
        defer { unlink(path) }
        try Self.write(path, metadata: { m in
            m.cmdlines = [101: "CPU 0/KVM", 77: "kdamond.0"]
            m.tgids = [101: 50, 77: 77]
            m.guestNames = [50: "web1", 77: "[kdamond.0]"]
        }, events: { exitB, entryB, cpu0 in
            cpu0.append(timestamp: 1_000, payload: exitB.payload(pid: 101, ["exit_reason": 12, "isa": 1]))
            cpu0.append(timestamp: 1_500, payload: entryB.payload(pid: 101, [:]))
            cpu0.append(timestamp: 2_000, payload: entryB.payload(pid: 77, [:]))
        })
        let r = try CLI.run(["report", path])
        #expect(r.status == 0, "\(r.stderr)")
        let lines = r.stdout.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        let start = try #require(lines.firstIndex { $0.hasPrefix("      VM  Name") })
        #expect(Array(lines[start..<min(lines.count, start + 4)]) == [
            "      VM  Name                    vCPUs             Events       Exits  Userspace exits",
            "      50  web1                    0                      2           1                0",
            "      77  [kdamond.0]             0                      1           0                0",
            "note: kernel threads, not VMs: 77 [kdamond.0]",
        ])
    }

    /// `-p` keeps that VM's resources, as `--json` does: its failed QMP socket is its block-device row.
    @Test func pidKeepsItsVMsResources() throws {
        #expect(try section(["-p", "60"]) == [
            "      VM  Name                    vCPUs             Events       Exits  Userspace exits",
            "      60  db                      0                      2           1                0",
            "",
            "Resources while recorded (/proc: host CPU time, vCPU run-queue wait, RSS at the end, storage bytes)",
            "      VM  Name                     Sampled      CPU     vCPU    Other      Wait      RSS     Read  Written",
            "      60  db                          0.5s    0.25s    0.10s    0.15s       0ns    1000B        -        -  started during the recording, ended",
            "",
            "Block devices while recorded (QEMU's query-blockstats: requests, bytes, average time per request)",
            "      VM  Device                      RDRQ    WRRQ     RDBY     WRBY     RDLAT     WRLAT",
            "      60  (QMP: connection closed by the peer)",
            "",
        ])
        #expect(try !section(["-p", "50"]).contains { $0.contains("QMP:") })
        try withRecording { path in
            let j = try CLI.json(try CLI.run(["report", "--json", "-p", "60", path]).stdout)
            #expect((j["resources"] as? [[String: Any]])?.map { $0["vm"] as? Int } == [60])
        }
    }

    /// A trace without recorded resources (any text trace) has no such section.
    @Test func noResourcesNoSection() throws {
        let r = try CLI.run(["report", CLI.packageRoot.appendingPathComponent("Tests/Fixtures/text/storm-io.kernel-tgid.txt").path])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(!r.stdout.contains("Resources while recorded"))
    }
}
