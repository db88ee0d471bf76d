import Foundation
import KVMAnalysis
import KVMExits
import KVMResources
import KVMScopeViews
import Testing
import TestSupport

/// KVM's statistics of the VM as a whole (QMP `query-stats` target vm) in `/metrics`: one family each, counters
/// for KVM's cumulative statistics, gauges for its instant and peak ones, the page counts as bytes by page size.
@Suite struct ResourceKVMStatsTests {
    /// ``TopViewTests/qmpFrame()`` with the statistics a KVM guest on a 6.x x86 host gives (every one of them).
    static func frame() -> TopFrame {
        var f = TopViewTests.qmpFrame()
        let web = f.sample.vms.firstIndex { $0.pid == 4242 }!
        f.sample.vms[web].qmp!.kvmVMStats = [
            "remote_tlb_flush": 17, "remote_tlb_flush_requests": 19, "mmu_shadow_zapped": 3, "mmu_pte_write": 5,
            "mmu_pde_zapped": 2, "mmu_flooded": 1, "mmu_recycled": 0, "mmu_cache_miss": 11, "mmu_unsync": 4,
            "nx_lpage_splits": 6, "max_mmu_page_hash_collisions": 7, "max_mmu_rmap_size": 9,
            "pages_4k": 1000, "pages_2m": 3, "pages_1g": 1,
        ]
        return f
    }

    @Test func vmWideKVMStatisticsAreFamiliesWithTheirTypes() {
        let text = PrometheusExposition.render(Summary(), format: .prometheus,
                                               extras: ExpositionExtras(version: "t", resources: Self.frame().sample))
        let lines = text.split(separator: "\n").map(String.init)
        let start = lines.firstIndex { $0.hasPrefix("# HELP kvmscope_vm_kvm_remote_tlb_flushes_total ") }!
        let end = lines.firstIndex { $0.hasPrefix("# HELP kvmscope_vm_qmp_up ") }!
        let labels = "vm=\"4242\",vm_name=\"web\""
        #expect(Array(lines[start..<end]) == [
            "# HELP kvmscope_vm_kvm_remote_tlb_flushes_total TLB flushes KVM did on every vCPU of the VM at once (KVM's statistics of the VM, QMP query-stats: remote_tlb_flush).",
            "# TYPE kvmscope_vm_kvm_remote_tlb_flushes_total counter",
            "kvmscope_vm_kvm_remote_tlb_flushes_total{\(labels)} 17",
            "# HELP kvmscope_vm_kvm_remote_tlb_flush_requests_total Requests for a TLB flush on every vCPU of the VM (KVM's statistics of the VM, QMP query-stats: remote_tlb_flush_requests).",
            "# TYPE kvmscope_vm_kvm_remote_tlb_flush_requests_total counter",
            "kvmscope_vm_kvm_remote_tlb_flush_requests_total{\(labels)} 19",
            "# HELP kvmscope_vm_kvm_mmu_shadow_zapped_total Shadow page-table pages KVM zapped (KVM's statistics of the VM, QMP query-stats: mmu_shadow_zapped).",
            "# TYPE kvmscope_vm_kvm_mmu_shadow_zapped_total counter",
            "kvmscope_vm_kvm_mmu_shadow_zapped_total{\(labels)} 3",
            "# HELP kvmscope_vm_kvm_mmu_pte_writes_total Guest writes to shadowed page tables KVM emulated (KVM's statistics of the VM, QMP query-stats: mmu_pte_write).",
            "# TYPE kvmscope_vm_kvm_mmu_pte_writes_total counter",
            "kvmscope_vm_kvm_mmu_pte_writes_total{\(labels)} 5",
            "# HELP kvmscope_vm_kvm_mmu_pde_zapped_total Shadow page directory entries KVM zapped (KVM's statistics of the VM, QMP query-stats: mmu_pde_zapped).",
            "# TYPE kvmscope_vm_kvm_mmu_pde_zapped_total counter",
            "kvmscope_vm_kvm_mmu_pde_zapped_total{\(labels)} 2",
            "# HELP kvmscope_vm_kvm_mmu_flooded_total Shadow pages unshadowed because the guest wrote to them often (write flooding) (KVM's statistics of the VM, QMP query-stats: mmu_flooded).",
            "# TYPE kvmscope_vm_kvm_mmu_flooded_total counter",
            "kvmscope_vm_kvm_mmu_flooded_total{\(labels)} 1",
            "# HELP kvmscope_vm_kvm_mmu_recycled_total Shadow pages reused to stay under KVM's limit (KVM's statistics of the VM, QMP query-stats: mmu_recycled).",
            "# TYPE kvmscope_vm_kvm_mmu_recycled_total counter",
            "kvmscope_vm_kvm_mmu_recycled_total{\(labels)} 0",
            "# HELP kvmscope_vm_kvm_mmu_cache_misses_total Shadow pages KVM had to allocate (cache misses) (KVM's statistics of the VM, QMP query-stats: mmu_cache_miss).",
            "# TYPE kvmscope_vm_kvm_mmu_cache_misses_total counter",
            "kvmscope_vm_kvm_mmu_cache_misses_total{\(labels)} 11",
            "# HELP kvmscope_vm_kvm_mmu_unsync_pages Shadow pages out of sync with the guest's page tables now (KVM's statistics of the VM, QMP query-stats: mmu_unsync).",
            "# TYPE kvmscope_vm_kvm_mmu_unsync_pages gauge",
            "kvmscope_vm_kvm_mmu_unsync_pages{\(labels)} 4",
            "# HELP kvmscope_vm_kvm_nx_huge_page_splits Huge pages split now by the NX huge page mitigation (iTLB multihit) (KVM's statistics of the VM, QMP query-stats: nx_lpage_splits).",
            "# TYPE kvmscope_vm_kvm_nx_huge_page_splits gauge",
            "kvmscope_vm_kvm_nx_huge_page_splits{\(labels)} 6",
            "# HELP kvmscope_vm_kvm_mmu_page_hash_collisions_max Largest number of collisions in one bucket of KVM's shadow page hash since the VM started (KVM's statistics of the VM, QMP query-stats: max_mmu_page_hash_collisions).",
            "# TYPE kvmscope_vm_kvm_mmu_page_hash_collisions_max gauge",
            "kvmscope_vm_kvm_mmu_page_hash_collisions_max{\(labels)} 7",
            "# HELP kvmscope_vm_kvm_mmu_rmap_size_max Largest reverse-map list of one guest page since the VM started (KVM's statistics of the VM, QMP query-stats: max_mmu_rmap_size).",
            "# TYPE kvmscope_vm_kvm_mmu_rmap_size_max gauge",
            "kvmscope_vm_kvm_mmu_rmap_size_max{\(labels)} 9",
            "# HELP kvmscope_vm_kvm_mapped_bytes Guest memory KVM's MMU maps now, by the size of the host page that maps it (KVM's statistics of the VM, QMP query-stats: pages_4k, pages_2m, pages_1g × page size).",
            "# TYPE kvmscope_vm_kvm_mapped_bytes gauge",
            "kvmscope_vm_kvm_mapped_bytes{\(labels),page_size=\"4k\"} 4096000",
            "kvmscope_vm_kvm_mapped_bytes{\(labels),page_size=\"2m\"} 6291456",
            "kvmscope_vm_kvm_mapped_bytes{\(labels),page_size=\"1g\"} 1073741824",
        ])
        // OpenMetrics names a counter's family without `_total`, its samples with it.
        let om = PrometheusExposition.render(Summary(), format: .openMetrics,
                                             extras: ExpositionExtras(version: "t", resources: Self.frame().sample))
        #expect(om.contains("# TYPE kvmscope_vm_kvm_mmu_cache_misses counter\nkvmscope_vm_kvm_mmu_cache_misses_total{\(labels)} 11\n"))
        #expect(om.contains("# TYPE kvmscope_vm_kvm_mmu_rmap_size_max gauge\nkvmscope_vm_kvm_mmu_rmap_size_max{\(labels)} 9\n"))
    }

    /// Prometheus' own linter finds nothing to say about the resource families, KVM's VM statistics included.
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/promtool"), "needs promtool (make deps)"))
    func promtoolChecksTheResourceFamiliesClean() throws {
        let text = PrometheusExposition.render(Summary(), format: .prometheus,
                                               extras: ExpositionExtras(version: "t", resources: Self.frame().sample))
        let lint = try Spawned.run("/usr/bin/promtool", ["check", "metrics"], input: Data(text.utf8), timeout: 60)
        #expect(lint.status == 0 && lint.stdout.isEmpty && lint.stderr.isEmpty, "promtool: \(lint.stdout + lint.stderr)")
    }
}
