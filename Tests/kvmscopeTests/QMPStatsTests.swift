import Foundation
import KVMResources
import Testing
import TestSupport

/// KVM's statistics of a real guest's VM as a whole (QMP `query-stats` target vm): kvmscope's `/metrics` equal
/// QEMU's answer to the test's own QMP client, the guest paused so that both read the same numbers.
@Suite(.serialized, .enabled(if: KVMTest.canRun && (QEMUGuest.available || KVMTest.required),
                              "needs root, /dev/kvm and qemu-system-x86 (make deps)"))
struct QMPStatsTests {
    @Test func vmWideKVMStatisticsAreQueryStats() throws {
        let guest = try QEMUGuest(name: "qemu-vmstats-\(getpid())")
        defer { guest.stop() }
        let qmp = try QMP(path: guest.qmpPath)
        defer { qmp.close() }
        // Booted (the boot sector's reads come).
        try qmp.waitUntilBooted()
        _ = try qmp.execute("stop")
        let results = try #require(try qmp.execute("query-stats", arguments: #"{"target":"vm","providers":[{"provider":"kvm"}]}"#)
            as? [[String: Any]])
        var theirs: [String: UInt64] = [:]
        for r in results where r["provider"] as? String == "kvm" {
            for s in r["stats"] as? [[String: Any]] ?? [] {
                if let name = s["name"] as? String, let v = s["value"] as? NSNumber { theirs[name] = v.uint64Value }
            }
        }
        // A 6.x x86 host's statistics of the VM, every one of which kvmscope exports.
        #expect(Set(theirs.keys).isSuperset(of: ["remote_tlb_flush", "mmu_cache_miss", "mmu_unsync", "pages_4k", "max_mmu_rmap_size"]))
        // The guest ran: KVM built page tables for it (this backend maps through shadow pages: pages_4k stays 0).
        #expect((theirs["mmu_cache_miss"] ?? 0) > 0, "KVM allocated no MMU page: \(theirs)")

        let port = freeLoopbackPort()
        let serve = try Spawned(CLI.binary, ["serve", "--listen", "127.0.0.1:\(port)", "-p", "\(guest.pid)", "--connect", "none",
                                             "--qmp", guest.kvmscopeQMPPath])
        defer { serve.stop() }
        #expect(serve.waitForStderr("kvmscope: serving http://127.0.0.1:\(port)/metrics"), "serve: \(serve.stderr)")
        let metrics = try #require(httpGet("http://127.0.0.1:\(port)/metrics")).body
        let labels = "vm=\"\(guest.pid)\",vm_name=\"qemu-vmstats-\(getpid())\""
        let lines = Set(metrics.split(separator: "\n").map(String.init))
        var expected = [
            "kvmscope_vm_kvm_remote_tlb_flushes_total{\(labels)} \(theirs["remote_tlb_flush"] ?? 0)",
            "kvmscope_vm_kvm_remote_tlb_flush_requests_total{\(labels)} \(theirs["remote_tlb_flush_requests"] ?? 0)",
            "kvmscope_vm_kvm_mmu_cache_misses_total{\(labels)} \(theirs["mmu_cache_miss"] ?? 0)",
            "kvmscope_vm_kvm_mmu_shadow_zapped_total{\(labels)} \(theirs["mmu_shadow_zapped"] ?? 0)",
            "kvmscope_vm_kvm_mmu_unsync_pages{\(labels)} \(theirs["mmu_unsync"] ?? 0)",
            "kvmscope_vm_kvm_mmu_rmap_size_max{\(labels)} \(theirs["max_mmu_rmap_size"] ?? 0)",
        ]
        for (stat, size, bytes) in [("pages_4k", "4k", UInt64(4096)), ("pages_2m", "2m", 2 << 20), ("pages_1g", "1g", 1 << 30)] {
            if let n = theirs[stat] { expected.append("kvmscope_vm_kvm_mapped_bytes{\(labels),page_size=\"\(size)\"} \(n * bytes)") }
        }
        for line in expected {
            #expect(lines.contains(line), "no line '\(line)' in \(metrics.split(separator: "\n").filter { $0.hasPrefix("kvmscope_vm_kvm_") })")
        }
        let lint = try Spawned.run("/usr/bin/promtool", ["check", "metrics"], input: Data(metrics.utf8), timeout: 60)
        #expect(lint.status == 0, "promtool: \(lint.stdout + lint.stderr)")
    }
}
