import KVMExits
import KVMResources

/// What each VM costs the host, as `/metrics` families (appended after the exit families when `serve` samples
/// resources). Counters are cumulative since the VMM started, as the kernel keeps them; VMs and threads that
/// ended are left out (their series stop).
///
/// | name | type | labels | source | prometheus-libvirt-exporter (Debian, 0.2) |
/// |---|---|---|---|---|
/// | `kvmscope_vm_cpu_seconds_total` | counter | `vm`, `vm_name` | /proc/PID/stat utime+stime | `libvirt_domain_info_cpu_time_seconds_total` |
/// | `kvmscope_vm_guest_seconds_total` | counter | `vm`, `vm_name` | stat guest_time | — |
/// | `kvmscope_vm_vcpus` | gauge | `vm`, `vm_name` | vCPU threads: by name, else QMP `query-cpus-fast`, else threads with guest_time > 0 | `libvirt_domain_info_virtual_cpus` |
/// | `kvmscope_vm_vcpus_inferred` | gauge | `vm`, `vm_name` | 1 when the vCPU threads were found by guest_time and numbered in tid order (the `vcpu` labels below are an inference), else 0 | — |
/// | `kvmscope_vm_paused` | gauge | `vm`, `vm_name` | 1 when paused: libvirt's paused/suspended state, QMP `query-status` not running, or every thread stopped (top's `P`) | `libvirt_domain_info_state` (3: paused) |
/// | `kvmscope_vm_resident_memory_bytes` | gauge | `vm`, `vm_name` | /proc/PID/status VmRSS | (`libvirt_domain_info_memory_usage_bytes` is the guest's memory, not host RSS) |
/// | `kvmscope_vm_swap_bytes` | gauge | `vm`, `vm_name` | VmSwap | — |
/// | `kvmscope_vm_disk_read_bytes_total` | counter | `vm`, `vm_name` | /proc/PID/io read_bytes | `libvirt_domain_block_stats_read_bytes_total` (summed over devices) |
/// | `kvmscope_vm_disk_written_bytes_total` | counter | `vm`, `vm_name` | write_bytes | `libvirt_domain_block_stats_write_bytes_total` |
/// | `kvmscope_vm_read_syscalls_total` | counter | `vm`, `vm_name` | syscr | (closest: `…_read_requests_total`) |
/// | `kvmscope_vm_write_syscalls_total` | counter | `vm`, `vm_name` | syscw | (closest: `…_write_requests_total`) |
/// | `kvmscope_vcpu_cpu_seconds_total` | counter | `vm`, `vm_name`, `vcpu` | /proc/PID/task/TID/stat | — |
/// | `kvmscope_vcpu_guest_seconds_total` | counter | `vm`, `vm_name`, `vcpu` | task stat guest_time | — |
/// | `kvmscope_vcpu_wait_seconds_total` | counter | `vm`, `vm_name`, `vcpu` | task schedstat run_delay | — |
/// | `kvmscope_vcpu_context_switches_total` | counter | `vm`, `vm_name`, `vcpu` | task schedstat pcount | — |
/// | `kvmscope_vm_network_receive_bytes_total` | counter | `vm`, `vm_name`, `device` | tap tx_bytes (the guest's receive) | `libvirt_domain_interface_stats_receive_bytes_total` |
/// | `kvmscope_vm_network_transmit_bytes_total` | counter | `vm`, `vm_name`, `device` | tap rx_bytes | `…_transmit_bytes_total` |
/// | `kvmscope_vm_network_receive_packets_total`, `…_transmit_packets_total`, `…_receive_drops_total`, `…_transmit_drops_total`, `…_receive_errors_total`, `…_transmit_errors_total` | counter | `vm`, `vm_name`, `device` | tap statistics, swapped | `libvirt_domain_interface_stats_…` of the same name |
/// | `kvmscope_vm_block_read_requests_total`, `…_write_requests_total`, `…_flush_requests_total` | counter | `vm`, `vm_name`, `device` | QMP `query-blockstats` rd/wr/flush_operations (`--qmp`) | `libvirt_domain_block_stats_read_requests_total`, `…_write_requests_total`, `…_flush_requests_total` |
/// | `kvmscope_vm_block_read_bytes_total`, `…_write_bytes_total` | counter | `vm`, `vm_name`, `device` | rd_bytes, wr_bytes | `libvirt_domain_block_stats_read_bytes_total`, `…_write_bytes_total` |
/// | `kvmscope_vm_block_read_time_seconds_total`, `…_write_time_seconds_total`, `…_flush_time_seconds_total` | counter | `vm`, `vm_name`, `device` | rd/wr/flush_total_time_ns / 1e9 | `libvirt_domain_block_stats_read_seconds_total`, `…_write_seconds_total`, `…_flush_seconds_total` |
/// | `kvmscope_vm_info` | gauge (OpenMetrics: info) | `vm`, `vm_name`, `uuid` | libvirt's domain UUID (`virDomainGetUUIDString`), else QEMU's `-uuid` in /proc/PID/cmdline; only VMs with one | (0.2 puts `uuid` on every `libvirt_domain_*` series) |
/// | `kvmscope_vm_memory_configured_bytes` | gauge | `vm`, `vm_name` | QMP `query-memory-size-summary` base + plugged | `libvirt_domain_info_maximum_memory_bytes` |
/// | `kvmscope_vm_balloon_actual_bytes` | gauge | `vm`, `vm_name` | QMP `query-balloon` actual | `libvirt_domain_info_memory_usage_bytes` |
/// | `kvmscope_vm_kvm_exits_total`, `…_halt_exits_total`, `…_halt_attempted_polls_total`, `…_halt_successful_polls_total`, `…_halt_wakeups_total`, `…_halt_wait_seconds_total`, `…_halt_poll_success_seconds_total`, `…_halt_poll_fail_seconds_total`, `…_instructions_emulated_total`, `…_instruction_emulation_failures_total`, `…_io_exits_total`, `…_mmio_exits_total`, `…_irq_exits_total`, `…_signal_exits_total` | counter | `vm`, `vm_name` | QMP `query-stats` target vcpu (KVM's binary statistics), summed over vCPUs | — (libvirt's `vcpu.N.*` domain stats, not exported by 0.2) |
/// | `kvmscope_vm_kvm_remote_tlb_flushes_total`, `…_remote_tlb_flush_requests_total`, `…_mmu_shadow_zapped_total`, `…_mmu_pte_writes_total`, `…_mmu_pde_zapped_total`, `…_mmu_flooded_total`, `…_mmu_recycled_total`, `…_mmu_cache_misses_total` | counter | `vm`, `vm_name` | QMP `query-stats` target vm (KVM's cumulative statistics of the VM) | — (libvirt's `vm.NAME.sum` domain stats, not exported by 0.2) |
/// | `kvmscope_vm_kvm_mmu_unsync_pages`, `…_nx_huge_page_splits`, `…_mmu_page_hash_collisions_max`, `…_mmu_rmap_size_max` | gauge | `vm`, `vm_name` | query-stats target vm: mmu_unsync, nx_lpage_splits (instant), max_mmu_page_hash_collisions, max_mmu_rmap_size (peak) | — (`vm.NAME.cur`, `vm.NAME.max`) |
/// | `kvmscope_vm_kvm_mapped_bytes` | gauge | `vm`, `vm_name`, `page_size` (`4k`, `2m`, `1g`) | query-stats target vm pages_4k, pages_2m, pages_1g × the page's size | — |
/// | `kvmscope_vm_pci_region_info` | gauge (OpenMetrics: info) | `vm`, `vm_name`, `device`, `pci_device`, `pci_address`, `bar`, `space`, `start`, `end` | QMP `query-pci` mapped BARs; `device` the BAR's name; joins the exits on `pci_address`, `bar` | — |
/// | `kvmscope_vm_qmp_up` | gauge | `vm`, `vm_name`, `socket` | 1 when the VM's QMP socket answered this scrape | (`libvirt_up`, for the daemon) |
///
/// The block families are per device (`device`: the guest device's id, `virtio-disk0`, else the drive's id),
/// apart from the per-process `kvmscope_vm_disk_*` families, which /proc/PID/io counts for the whole process:
/// one name for both would sum two views of the same I/O. Average latency per request is
/// `rate(…_read_time_seconds_total[1m]) / rate(…_read_requests_total[1m])`. The QMP families appear only
/// when `--qmp` gives a socket.
///
/// Seconds are clock ticks (1/100 s) / 100; no `--max-series` folding (one set per VM, vCPU number or tap:
/// bounded by the VMs sampled and their vCPUs, not by threads, since `serve` sums a vCPU's threads).
public enum ResourceExposition {
    /// Appends the families of `sample` to `w`; only `onlyPID`'s VM when given.
    static func write(_ sample: ResourceSample, onlyPID: Int32?, vcpuTotals: [Int32: [UInt32: ThreadTimes]]? = nil,
                      into w: inout PrometheusExposition.Writer) {
        let vms = sample.vms.filter { !$0.gone && (onlyPID == nil || $0.pid == onlyPID) }
        func labels(_ vm: VMSample) -> [(String, String)] { [("vm", String(vm.pid)), ("vm_name", vm.name)] }
        func seconds(_ ticks: UInt64) -> String { "\(sample.seconds(ticks))" }
        func perVM(_ name: String, _ type: String, _ help: String, _ value: (VMSample) -> String?) {
            w.family(String(name.dropLast(type == "counter" ? 6 : 0)), type, help)
            for vm in vms { if let v = value(vm) { w.sample(name, labels(vm), v) } }
        }
        perVM("kvmscope_vm_cpu_seconds_total", "counter", "Host CPU time of the VM's process, user and system (/proc/PID/stat).") {
            seconds($0.processTimes.cpuTicks)
        }
        perVM("kvmscope_vm_guest_seconds_total", "counter", "Time the VM's vCPUs ran the guest (/proc/PID/stat guest_time).") {
            seconds($0.processTimes.guestTicks)
        }
        perVM("kvmscope_vm_vcpus", "gauge", "vCPU threads of the VM: by thread name, else QMP query-cpus-fast, else those that ran the guest.") {
            String($0.vcpuCount)
        }
        perVM("kvmscope_vm_vcpus_inferred", "gauge",
              "1 when the VM's vCPU threads were found by guest time and numbered in thread-id order (unnamed threads, no QMP): its vcpu labels are inferred.") {
            $0.vcpuSource == .guestTime ? "1" : "0"
        }
        perVM("kvmscope_vm_paused", "gauge",
              "1 when the VM is paused: libvirt's paused or suspended state, QEMU's query-status not running (--qmp), or every thread stopped (SIGSTOP); top's state P.") {
            TopRow.state(of: $0) == "P" ? "1" : "0"
        }
        perVM("kvmscope_vm_resident_memory_bytes", "gauge", "Resident memory of the VM's process (/proc/PID/status VmRSS).") {
            String($0.memory.rssBytes)
        }
        perVM("kvmscope_vm_swap_bytes", "gauge", "Swapped-out memory of the VM's process (/proc/PID/status VmSwap).") {
            String($0.memory.swapBytes)
        }
        perVM("kvmscope_vm_disk_read_bytes_total", "counter", "Bytes the VM's process read from storage (/proc/PID/io read_bytes).") {
            $0.io.map { String($0.readBytes) }
        }
        perVM("kvmscope_vm_disk_written_bytes_total", "counter", "Bytes the VM's process wrote to storage (/proc/PID/io write_bytes).") {
            $0.io.map { String($0.writeBytes) }
        }
        perVM("kvmscope_vm_read_syscalls_total", "counter", "Read syscalls of the VM's process (/proc/PID/io syscr).") {
            $0.io.map { String($0.readSyscalls) }
        }
        perVM("kvmscope_vm_write_syscalls_total", "counter", "Write syscalls of the VM's process (/proc/PID/io syscw).") {
            $0.io.map { String($0.writeSyscalls) }
        }

        func perVCPU(_ name: String, _ help: String, _ value: (ThreadTimes) -> String) {
            w.family(String(name.dropLast(6)), "counter", help)
            for vm in vms {
                if let totals = vcpuTotals {
                    // One series per vCPU number, summed over the threads that were it: never going down.
                    for (vcpu, times) in (totals[vm.pid] ?? [:]).sorted(by: { $0.key < $1.key }) {
                        w.sample(name, labels(vm) + [("vcpu", String(vcpu))], value(times))
                    }
                    continue
                }
                for t in vm.threads where !t.gone {
                    guard let vcpu = t.vcpu else { continue }
                    w.sample(name, labels(vm) + [("vcpu", String(vcpu))], value(t.times))
                }
            }
        }
        perVCPU("kvmscope_vcpu_cpu_seconds_total", "Host CPU time of a vCPU thread (/proc/PID/task/TID/stat).") { seconds($0.cpuTicks) }
        perVCPU("kvmscope_vcpu_guest_seconds_total", "Time a vCPU thread ran the guest (task stat guest_time).") {
            seconds($0.guestTicks)
        }
        perVCPU("kvmscope_vcpu_wait_seconds_total",
                "Time a vCPU thread was runnable but waited for a host CPU: the host's view of steal (task schedstat).") {
            "\(Double($0.waitNanoseconds) / 1e9)"
        }
        perVCPU("kvmscope_vcpu_context_switches_total", "Times a vCPU thread was switched onto a host CPU (task schedstat).") {
            String($0.switches)
        }

        // The guest's view, as libvirt shows it: the host's tap transmit is the guest's receive.
        let net: [(String, String, (TapCounters) -> UInt64)] = [
            ("receive_bytes", "Bytes the guest received", { $0.txBytes }), ("transmit_bytes", "Bytes the guest sent", { $0.rxBytes }),
            ("receive_packets", "Packets the guest received", { $0.txPackets }),
            ("transmit_packets", "Packets the guest sent", { $0.rxPackets }),
            ("receive_drops", "Packets to the guest dropped", { $0.txDropped }),
            ("transmit_drops", "Packets from the guest dropped", { $0.rxDropped }),
            ("receive_errors", "Receive errors", { $0.txErrors }), ("transmit_errors", "Transmit errors", { $0.rxErrors }),
        ]
        for (suffix, help, value) in net {
            w.family("kvmscope_vm_network_\(suffix)", "counter", "\(help), per tap device (/sys/class/net/TAP/statistics).")
            for vm in vms {
                for tap in vm.taps where !tap.gone {
                    w.sample("kvmscope_vm_network_\(suffix)_total", labels(vm) + [("device", tap.device)], String(value(tap)))
                }
            }
        }
        // Who the VM is beyond its pid, where known without asking QEMU: one series per VM with a UUID.
        let identified = vms.filter { $0.uuid != nil }
        if !identified.isEmpty {
            w.family("kvmscope_vm", w.format == .openMetrics ? "info" : "gauge",
                     "The VM's UUID: libvirt's domain UUID, else QEMU's -uuid (only VMs with one).", suffix: "_info")
            for vm in identified { w.sample("kvmscope_vm_info", labels(vm) + [("uuid", vm.uuid!)], "1") }
        }
        writeQMP(vms, labels: labels, into: &w)
    }

    /// KVM's vCPU statistics exported, each as `kvmscope_vm_kvm_SUFFIX_total`: its name in KVM, the suffix,
    /// help, and the scale to the unit in the name (ns → seconds).
    static let kvmStats: [(String, String, String, Double)] = [
        ("exits", "exits", "Exits of the vCPUs to KVM, every reason", 1),
        ("halt_exits", "halt_exits", "Exits for HLT", 1),
        ("halt_attempted_poll", "halt_attempted_polls", "Halts that polled before sleeping", 1),
        ("halt_successful_poll", "halt_successful_polls", "Halts ended by a wake-up while polling", 1),
        ("halt_wakeup", "halt_wakeups", "Wake-ups of halted vCPUs", 1),
        ("halt_wait_ns", "halt_wait_seconds", "Time halted vCPUs slept", 1e-9),
        ("halt_poll_success_ns", "halt_poll_success_seconds", "Time spent polling in halts that then woke", 1e-9),
        ("halt_poll_fail_ns", "halt_poll_fail_seconds", "Time spent polling in halts that then slept", 1e-9),
        ("insn_emulation", "instructions_emulated", "Instructions KVM emulated", 1),
        ("insn_emulation_fail", "instruction_emulation_failures", "Instructions KVM failed to emulate", 1),
        ("io_exits", "io_exits", "Exits for port I/O", 1),
        ("mmio_exits", "mmio_exits", "Exits for MMIO", 1),
        ("irq_exits", "irq_exits", "Exits for host interrupts", 1),
        ("signal_exits", "signal_exits", "Exits for pending signals", 1),
    ]

    /// KVM's statistics of the VM as a whole (x86; `query-stats` target `vm`, libvirt's `vm.NAME.sum|cur|max`)
    /// exported one family each: its name in KVM, the family's sample name, type and help. KVM's `cumulative`
    /// statistics are counters; its `instant` and `peak` ones gauges (a peak is the largest value since the VM
    /// started, hence `_max`). No units: they count pages, flushes and list entries. `pages_4k|2m|1g` are
    /// ``kvmPageStats``.
    static let kvmVMStats: [(String, String, String, String)] = [
        ("remote_tlb_flush", "kvmscope_vm_kvm_remote_tlb_flushes_total", "counter",
         "TLB flushes KVM did on every vCPU of the VM at once"),
        ("remote_tlb_flush_requests", "kvmscope_vm_kvm_remote_tlb_flush_requests_total", "counter",
         "Requests for a TLB flush on every vCPU of the VM"),
        ("mmu_shadow_zapped", "kvmscope_vm_kvm_mmu_shadow_zapped_total", "counter", "Shadow page-table pages KVM zapped"),
        ("mmu_pte_write", "kvmscope_vm_kvm_mmu_pte_writes_total", "counter", "Guest writes to shadowed page tables KVM emulated"),
        ("mmu_pde_zapped", "kvmscope_vm_kvm_mmu_pde_zapped_total", "counter", "Shadow page directory entries KVM zapped"),
        ("mmu_flooded", "kvmscope_vm_kvm_mmu_flooded_total", "counter",
         "Shadow pages unshadowed because the guest wrote to them often (write flooding)"),
        ("mmu_recycled", "kvmscope_vm_kvm_mmu_recycled_total", "counter", "Shadow pages reused to stay under KVM's limit"),
        ("mmu_cache_miss", "kvmscope_vm_kvm_mmu_cache_misses_total", "counter", "Shadow pages KVM had to allocate (cache misses)"),
        ("mmu_unsync", "kvmscope_vm_kvm_mmu_unsync_pages", "gauge", "Shadow pages out of sync with the guest's page tables now"),
        ("nx_lpage_splits", "kvmscope_vm_kvm_nx_huge_page_splits", "gauge",
         "Huge pages split now by the NX huge page mitigation (iTLB multihit)"),
        ("max_mmu_page_hash_collisions", "kvmscope_vm_kvm_mmu_page_hash_collisions_max", "gauge",
         "Largest number of collisions in one bucket of KVM's shadow page hash since the VM started"),
        ("max_mmu_rmap_size", "kvmscope_vm_kvm_mmu_rmap_size_max", "gauge",
         "Largest reverse-map list of one guest page since the VM started"),
    ]

    /// KVM's counts of the pages mapping guest memory (`pages_4k`, `pages_2m`, `pages_1g`: instant), as
    /// `kvmscope_vm_kvm_mapped_bytes{page_size}`: the label value and the page's bytes.
    static let kvmPageStats: [(String, String, UInt64)] = [("pages_4k", "4k", 4096), ("pages_2m", "2m", 2 << 20), ("pages_1g", "1g", 1 << 30)]

    /// The families QEMU's QMP sockets give (`--qmp`); none without a socket.
    static func writeQMP(_ vms: [VMSample], labels: (VMSample) -> [(String, String)],
                         into w: inout PrometheusExposition.Writer) {
        let withQMP = vms.filter { $0.qmp != nil }
        guard !withQMP.isEmpty else { return }
        let read = withQMP.filter { $0.qmp?.problem == nil }
        let block: [(String, String, (DiskCounts) -> String)] = [
            ("read_requests", "Read requests completed", { String($0.readRequests) }),
            ("write_requests", "Write requests completed", { String($0.writeRequests) }),
            ("flush_requests", "Flush requests completed", { String($0.flushRequests) }),
            ("read_bytes", "Bytes read", { String($0.readBytes) }),
            ("write_bytes", "Bytes written", { String($0.writeBytes) }),
            ("read_time_seconds", "Total time of read requests, submission to completion", {
                "\(Double($0.readTimeNanoseconds) / 1e9)"
            }),
            ("write_time_seconds", "Total time of write requests", { "\(Double($0.writeTimeNanoseconds) / 1e9)" }),
            ("flush_time_seconds", "Total time of flush requests", { "\(Double($0.flushTimeNanoseconds) / 1e9)" }),
        ]
        for (suffix, help, value) in block {
            w.family("kvmscope_vm_block_\(suffix)", "counter", "\(help), per block device (QMP query-blockstats).")
            for vm in read {
                for d in vm.qmp!.disks {
                    w.sample("kvmscope_vm_block_\(suffix)_total", labels(vm) + [("device", d.device)], value(d.total))
                }
            }
        }
        w.family("kvmscope_vm_memory_configured_bytes", "gauge",
                 "The guest's configured RAM (QMP query-memory-size-summary: base and plugged memory).")
        for vm in read { if let b = vm.qmp!.configuredMemoryBytes { w.sample("kvmscope_vm_memory_configured_bytes", labels(vm), String(b)) } }
        w.family("kvmscope_vm_balloon_actual_bytes", "gauge", "The guest's RAM after its balloon (QMP query-balloon actual).")
        for vm in read { if let b = vm.qmp!.balloonActualBytes { w.sample("kvmscope_vm_balloon_actual_bytes", labels(vm), String(b)) } }
        // KVM's own counters of the vCPUs (binary statistics through QMP query-stats), summed over the vCPUs.
        for (stat, suffix, help, scale) in kvmStats {
            let name = "kvmscope_vm_kvm_\(suffix)_total"
            w.family(String(name.dropLast(6)), "counter", "\(help) (KVM's statistics of the vCPUs, QMP query-stats: \(stat)).")
            for vm in read {
                guard let v = vm.qmp!.kvmVCPUStats[stat] else { continue }
                w.sample(name, labels(vm), scale == 1 ? String(v) : "\(Double(v) * scale)")
            }
        }
        // KVM's counters of the VM as a whole (its MMU, remote TLB flushes): query-stats target vm.
        for (stat, name, type, help) in kvmVMStats {
            w.family(type == "counter" ? String(name.dropLast(6)) : name, type,
                     "\(help) (KVM's statistics of the VM, QMP query-stats: \(stat)).")
            for vm in read {
                if let v = vm.qmp!.kvmVMStats[stat] { w.sample(name, labels(vm), String(v)) }
            }
        }
        w.family("kvmscope_vm_kvm_mapped_bytes", "gauge",
                 "Guest memory KVM's MMU maps now, by the size of the host page that maps it (KVM's statistics of the VM, "
                 + "QMP query-stats: pages_4k, pages_2m, pages_1g × page size).")
        for vm in read {
            for (stat, size, bytes) in kvmPageStats {
                if let v = vm.qmp!.kvmVMStats[stat] { w.sample("kvmscope_vm_kvm_mapped_bytes", labels(vm) + [("page_size", size)], String(v &* bytes)) }
            }
        }
        w.family("kvmscope_vm_qmp_up", "gauge", "1 when the VM's QMP socket answered at this scrape, 0 when it did not.")
        for vm in withQMP {
            w.sample("kvmscope_vm_qmp_up", labels(vm) + [("socket", vm.qmp!.socket)], vm.qmp!.problem == nil ? "1" : "0")
        }
        // The mapped PCI BARs (query-pci): `device` is the name kvmscope_io_exits_total gives the BAR's ports or
        // addresses, so the two join on (vm, device).
        w.family("kvmscope_vm_pci_region", w.format == .openMetrics ? "info" : "gauge",
                 "A PCI BAR mapped in the guest's port or memory space (QMP query-pci), as kvmscope_io_exits_total names it.",
                 suffix: "_info")
        for vm in read {
            for r in vm.qmp!.pciRegions where r.size > 0 && r.start <= UInt64.max - (r.size - 1) {
                w.sample("kvmscope_vm_pci_region_info", labels(vm) + [
                    ("device", DeviceMap.name(of: r)), ("pci_device", r.device), ("pci_address", r.address), ("bar", String(r.bar)),
                    ("space", r.isIO ? "port" : "mmio"), ("start", "0x" + String(r.start, radix: 16)),
                    ("end", "0x" + String(r.start + r.size - 1, radix: 16)),
                ], "1")
            }
        }
    }
}
