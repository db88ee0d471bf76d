/// The QMP replies kvmscope reads, as QEMU's schema (qapi/block-core.json, machine.json, stats.json) names
/// their members. Only the members used are declared; others are ignored.
public enum QMPReplies {
    /// One entry of `query-blockstats`: a block backend (a `-drive`, or a `-blockdev` attached to a device).
    public struct BlockStats: Decodable, Sendable, Equatable {
        /// The drive's id (`-drive id=…`, libvirt's `drive-virtio-disk0`); empty for a `-blockdev`.
        public var device: String?
        /// The block node (`#block107`, or libvirt's `libvirt-1-format`).
        public var nodeName: String?
        /// The QOM path of the device using it (`/machine/peripheral/virtio-disk0/virtio-backend`).
        public var qdev: String?
        public var stats: Counters

        /// The I/O counters of BlockDeviceStats, cumulative since QEMU started (times in ns).
        public struct Counters: Decodable, Sendable, Equatable {
            public var rdBytes: UInt64
            public var wrBytes: UInt64
            public var rdOperations: UInt64
            public var wrOperations: UInt64
            public var flushOperations: UInt64
            public var rdTotalTimeNs: UInt64
            public var wrTotalTimeNs: UInt64
            public var flushTotalTimeNs: UInt64

            enum CodingKeys: String, CodingKey {
                case rdBytes = "rd_bytes", wrBytes = "wr_bytes", rdOperations = "rd_operations", wrOperations = "wr_operations"
                case flushOperations = "flush_operations", rdTotalTimeNs = "rd_total_time_ns", wrTotalTimeNs = "wr_total_time_ns"
                case flushTotalTimeNs = "flush_total_time_ns"
            }
        }

        enum CodingKeys: String, CodingKey {
            case device, nodeName = "node-name", qdev, stats
        }

        /// The name a user knows the device by: the id of the device using it (`-device …,id=virtio-disk0`, the
        /// `/machine/peripheral/ID/` part of ``qdev``), else the drive's id, else the node name, else the QOM path.
        public var name: String {
            if let qdev {
                let parts = qdev.split(separator: "/")
                if parts.count >= 3, parts[0] == "machine", parts[1] == "peripheral" { return String(parts[2]) }
            }
            if let device, !device.isEmpty { return device }
            if let nodeName, !nodeName.isEmpty { return nodeName }
            return qdev ?? "?"
        }
    }

    /// `query-memory-size-summary`: the guest's RAM as configured (`-m`) and hot-plugged (DIMMs), bytes.
    public struct MemorySizeSummary: Decodable, Sendable, Equatable {
        public var baseMemory: UInt64
        public var pluggedMemory: UInt64?
        enum CodingKeys: String, CodingKey { case baseMemory = "base-memory", pluggedMemory = "plugged-memory" }
    }

    /// `query-status`: QEMU's run state (`running`, `paused`, `suspended`, `inmigrate`, `postmigrate`,
    /// `io-error`, `guest-panicked`, `shutdown`, …) and whether its vCPUs run.
    public struct Status: Decodable, Sendable, Equatable {
        public var status: String
        public var running: Bool
    }

    /// `query-balloon`: the memory the guest has now, after the balloon took its share, bytes.
    public struct Balloon: Decodable, Sendable, Equatable {
        public var actual: UInt64
    }

    /// One provider's statistics of `query-stats` (target `vm`: one; target `vcpu`: one per vCPU, with its QOM
    /// path). KVM's binary statistics file descriptors (KVM_GET_STATS_FD) are the source.
    public struct StatsResult: Decodable, Sendable, Equatable {
        public var provider: String
        public var qomPath: String?
        public var stats: [Stat]

        enum CodingKeys: String, CodingKey { case provider, qomPath = "qom-path", stats }

        public struct Stat: Decodable, Sendable, Equatable {
            public var name: String
            /// A number (a counter or a gauge); nil for booleans and histograms, which kvmscope does not use.
            public var value: UInt64?

            enum CodingKeys: String, CodingKey { case name, value }

            public init(from decoder: any Decoder) throws {
                let c = try decoder.container(keyedBy: CodingKeys.self)
                name = try c.decode(String.self, forKey: .name)
                value = try? c.decode(UInt64.self, forKey: .value)
            }
        }
    }

    /// One vCPU of `query-cpus-fast` (QEMU 2.12+; machine.json CpuInfoFast): its index and the host thread
    /// running it — the exact vCPU number of a thread whatever its name.
    public struct CPUInfoFast: Decodable, Sendable, Equatable {
        /// The vCPU's index (`-smp`'s numbering: 0 is the boot CPU), QEMU's `cpu-index`.
        public var cpuIndex: UInt32
        /// The host thread id (tid) running it, QEMU's `thread-id`. Under single-threaded TCG every vCPU has
        /// the same one.
        public var threadID: Int32
        /// The vCPU's QOM path (`/machine/unattached/device[0]`).
        public var qomPath: String?

        enum CodingKeys: String, CodingKey { case cpuIndex = "cpu-index", threadID = "thread-id", qomPath = "qom-path" }

        public init(cpuIndex: UInt32, threadID: Int32, qomPath: String? = nil) {
            self.cpuIndex = cpuIndex
            self.threadID = threadID
            self.qomPath = qomPath
        }
    }

    /// One PCI bus of `query-pci` (a bridge's devices are under the bridge's ``PCIDevice/pciBridge``).
    public struct PCIBus: Decodable, Sendable, Equatable {
        public var bus: Int
        public var devices: [PCIDevice]
    }

    /// One PCI function of `query-pci`: where it sits, what it is, and the regions its BARs map.
    public struct PCIDevice: Decodable, Sendable, Equatable {
        public var bus: Int
        public var slot: Int
        public var function: Int
        /// The device's id (`-device …,id=virtio-disk0`); empty for devices given none.
        public var qdevID: String
        public var classInfo: ClassInfo
        public var id: IDs
        public var regions: [Region]
        public var pciBridge: Bridge?

        enum CodingKeys: String, CodingKey {
            case bus, slot, function, qdevID = "qdev_id", classInfo = "class_info", id, regions, pciBridge = "pci_bridge"
        }

        public struct ClassInfo: Decodable, Sendable, Equatable {
            /// QEMU's name of the class (`SCSI controller`, `Ethernet controller`); absent for some classes.
            public var desc: String?
            public var `class`: Int
        }

        public struct IDs: Decodable, Sendable, Equatable {
            public var vendor: Int
            public var device: Int
        }

        /// One BAR's region: `type` `io` (a port range) or `memory` (guest-physical addresses, MMIO).
        public struct Region: Decodable, Sendable, Equatable {
            public var bar: Int
            public var type: String
            /// The first port or address; -1 while the guest has not mapped the BAR (firmware assigns them).
            public var address: Int64
            public var size: UInt64
        }

        public struct Bridge: Decodable, Sendable, Equatable {
            public var devices: [PCIDevice]?
        }
    }
}
