import Foundation
import KVMSources
import Testing
import TestSupport

/// What each VM cost the host, kept in a recording: `record --qmp` of the boot-sector QEMU guest (virtio-blk
/// reads and writes), then `report --json` prints the VM's resources with `stat --json`'s fields and names
/// its MMIO exits by the PCI BARs QMP gave while recording.
@Suite(.serialized, .enabled(if: KVMTest.canRun && (QEMUGuest.available || KVMTest.required),
                              "needs root, /dev/kvm and qemu-system-x86 (make deps)"))
struct RecordResourcesTests {
    /// The keys of an object, and of the first object of each array in it, as "key" and "key.inner".
    static func keys(_ o: [String: Any]) -> Set<String> {
        var out = Set(o.keys)
        for (k, v) in o {
            if let a = v as? [[String: Any]], let first = a.first { out.formUnion(first.keys.map { "\(k).\($0)" }) }
            if let inner = v as? [String: Any] { out.formUnion(inner.keys.map { "\(k).\($0)" }) }
        }
        return out
    }

    @Test func recordKeepsEachVMsResourcesAndBARs() throws {
        let name = "rec-qemu-\(getpid())"
        let guest = try QEMUGuest(name: name)
        defer { guest.stop() }
        let qmp = try QMP(path: guest.qmpPath)
        defer { qmp.close() }
        try qmp.waitUntilBooted()
        let dir = try RecordTests.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/q.dat"

        let before = try qmp.blockstats()
        let r = try CLI.run(["record", "-o", path, "--duration", "2", "--qmp", guest.kvmscopeQMPPath,
                             "-e", "kvm_mmio", "-e", "kvm_pio"], timeout: 60)
        let after = try qmp.blockstats()
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stderr.isEmpty, "\(r.stderr)")

        // trace-cmd still reads the file (it skips kvmscope's options).
        let tc = try Spawned.run(RecordTests.traceCmd, ["report", "-i", path])
        #expect(tc.status == 0 && tc.stderr.isEmpty, "\(tc.stderr)")
        #expect(tc.stdout.contains(": kvm_mmio:"))

        let report = try CLI.run(["report", "--json", "-p", "\(guest.pid)", path])
        #expect(report.status == 0, "\(report.stderr)")
        let resources = try #require(try CLI.json(report.stdout)["resources"] as? [[String: Any]], "\(report.stdout)")
        #expect(resources.count == 1)
        let vm = try #require(resources.first)
        #expect((vm["vm"] as? NSNumber)?.int32Value == guest.pid)
        #expect(vm["vm_name"] as? String == name)
        #expect(vm["vcpus"] as? Int == 1)
        #expect(vm["seen_from_start"] as? Bool == true && vm["ended"] as? Bool == false)
        #expect((vm["qmp"] as? [String: Any])?["memory_configured_bytes"] as? Int == 16 << 20)
        // The disk's requests over the recording: QEMU's own counters, within what it did around it.
        let disks = try #require(vm["disks"] as? [[String: Any]])
        #expect(disks.map { $0["device"] as? String } == ["virtio-disk0"])
        let reads = try #require((disks.first?["read_requests"] as? NSNumber)?.uint64Value)
        let writes = try #require((disks.first?["write_requests"] as? NSNumber)?.uint64Value)
        #expect(reads > 0 && reads <= after.rdOperations - before.rdOperations, "\(reads) of \(after.rdOperations - before.rdOperations)")
        #expect(writes > 0 && writes <= after.wrOperations - before.wrOperations, "\(writes) of \(after.wrOperations - before.wrOperations)")
        let cpu = try #require(vm["cpu_seconds"] as? Double)
        #expect(cpu > 0)

        // The same fields as stat --json's resources for the same guest.
        let stat = try CLI.run(["stat", "--json", "--duration", "1", "-p", "\(guest.pid)", "--qmp", guest.kvmscopeQMPPath], timeout: 60)
        #expect(stat.status == 0, "\(stat.stderr)")
        let statVM = try #require((try CLI.json(stat.stdout)["resources"] as? [[String: Any]])?.first)
        #expect(Self.keys(vm) == Self.keys(statVM))

        // The MMIO table names the virtio-blk notifications by the memory tree and BARs recorded (QMP info mtree,
        // query-pci), in JSON and text; the port table its RTC and port 92 accesses by the tree.
        let notify = "virtio-disk0 notify (virtio-blk 00:02.0 BAR4)", isr = "virtio-disk0 isr (virtio-blk 00:02.0 BAR4)"
        let mmio = try CLI.run(["report", "--json", "--event", "mmio", "-p", "\(guest.pid)", path])
        #expect(mmio.status == 0, "\(mmio.stderr)")
        let rows = try #require((try CLI.json(mmio.stdout)["io_accesses"] as? [String: Any])?["mmio"] as? [[String: Any]])
        #expect(Set(rows.map { "\($0["device"] as? String ?? "?") \($0["direction"] as? String ?? "?")" }) == ["\(notify) write", "\(isr) read"],
                "\(rows)")
        #expect(rows.allSatisfy { ($0["count"] as? Int ?? 0) > 0 }, "\(rows)")
        for (event, starts) in [("mmio", ["0xfebf7000:W          \(notify)  ", "0xfebf5000:R          \(isr)  "]),
                                ("ioport", ["0x70:PIN              rtc-index   ", "0x92:PIN              port92   "])] {
            let text = try CLI.run(["report", "--event", event, "-p", "\(guest.pid)", path])
            #expect(text.status == 0, "\(text.stderr)")
            let lines = text.stdout.split(separator: "\n").map(String.init)
            for start in starts { #expect(lines.contains { $0.hasPrefix(start) }, "\(start): \(text.stdout)") }
            #expect(!lines.contains { $0.hasPrefix("0x") && $0.contains(" unknown ") }, "\(text.stdout)")
        }

        #expect(try TraceDatReader(path: path).resourcesJSON?.hasPrefix("{") == true)
    }
}
