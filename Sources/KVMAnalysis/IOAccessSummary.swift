import KVMExits

/// One row of perf kvm stat's `ioport` or `mmio` analysis, for one VM: a port or MMIO address, one direction,
/// the device that owns it, its accesses and their handling time.
public struct IOAccessSummaryRow: Sendable, Equatable {
    public var vm: Int32
    public var vmName: String?
    public var space: DeviceMap.Space
    /// The port or guest-physical address.
    public var address: UInt64
    /// ``IODirection/read`` or ``IODirection/write`` (an MMIO read handed to the VMM counts in ``toVMM``).
    public var direction: IODirection
    /// The owner by the VM's ``DeviceMap``; nil: no range holds the address ("unknown").
    public var device: String?
    /// Accesses: `kvm_pio` events; for MMIO, `kvm_mmio` writes, or reads completed (type read).
    public var count: UInt64
    /// MMIO reads the kernel handed to the VMM (`kvm_mmio` unsatisfied-read), of this address; 0 for ports.
    public var toVMM: UInt64 = 0
    /// Handling times (``IOTimer``: perf's begin/end events), ns.
    public var timed: UInt64 = 0
    public var sum: UInt64 = 0
    public var sumOfSquares: Double = 0
    public var min: UInt64 = .max
    public var max: UInt64 = 0

    /// perf's key: `0x3f8:POUT`/`0x3f8:PIN` for ports, `0xfee000b0:W`/`:R` for MMIO.
    public var key: String {
        let hex = "0x" + String(address, radix: 16)
        if space == .port { return hex + (direction == .write ? ":POUT" : ":PIN") }
        return hex + (direction == .write ? ":W" : ":R")
    }

    /// Mean handling time, ns (nil: none measured).
    public var mean: Double? { timed > 0 ? Double(sum) / Double(timed) : nil }

    /// perf's "( +- x% )" after the average: the standard error of the mean relative to it, percent
    /// (sample variance over n, as perf's `rel_stddev_stats`). 0 with fewer than two times.
    public var relativeStandardError: Double {
        guard timed > 1, let mean, mean > 0 else { return 0 }
        let n = Double(timed)
        let variance = Swift.max(0, (sumOfSquares - n * mean * mean) / (n - 1))
        return (variance / n).squareRoot() / mean * 100
    }
}

/// perf kvm stat's `ioport` and `mmio` tables, per VM, with each port and address named by its device.
public struct IOAccessSummary: Sendable {
    /// Rows sorted by VM, space, address, direction.
    public var rows: [IOAccessSummaryRow] = []
    /// Events that found no room in the bounded per-address tables (counted, not attributed), unfiltered.
    public var overflow: (port: UInt64, mmio: UInt64) = (0, 0)

    public init() {}

    /// The rows of a snapshot's threads that `filter` keeps, merged per VM, named with `devices` (per VM;
    /// VMs without a map use `fallback`).
    public init(_ snap: AggregateSnapshot, filter: SummaryFilter = SummaryFilter(), devices: [Int32: DeviceMap] = [:],
                fallback: DeviceMap = .standardPC) {
        overflow = snap.ioOverflow
        struct Key: Hashable { var vm: Int32; var space: UInt8; var address: UInt64; var direction: UInt8 }
        var merged: [Key: IOAccessSummaryRow] = [:]
        for r in snap.ioAccesses {
            let id = snap.ioIdentity(of: r.tid)
            guard filter.keeps(tid: r.tid, identity: id) else { continue }
            // An MMIO read handed to the VMM belongs to the read row of its address.
            let direction: IODirection = r.direction == .readToVMM ? .read : r.direction
            let k = Key(vm: id.vm, space: r.space.rawValue, address: r.address, direction: direction.rawValue)
            if merged[k] == nil {
                merged[k] = IOAccessSummaryRow(vm: id.vm, vmName: id.vmName, space: r.space, address: r.address,
                                               direction: direction, device: nil, count: 0)
            }
            if r.direction == .readToVMM { merged[k]!.toVMM += r.count } else { merged[k]!.count += r.count }
            merged[k]!.timed += r.timed
            merged[k]!.sum &+= r.sum
            merged[k]!.sumOfSquares += r.sumOfSquares
            merged[k]!.min = Swift.min(merged[k]!.min, r.min)
            merged[k]!.max = Swift.max(merged[k]!.max, r.max)
        }
        rows = merged.values.sorted {
            ($0.vm, $0.space.rawValue, $0.address, $0.direction.rawValue)
                < ($1.vm, $1.space.rawValue, $1.address, $1.direction.rawValue)
        }
        name(devices: devices, fallback: fallback)
    }

    /// Names every row's device again: with a VM's own map (QMP, libvirt) laid over `fallback`, else `fallback`.
    public mutating func name(devices: [Int32: DeviceMap], fallback: DeviceMap = .standardPC) {
        var maps: [Int32: DeviceMap] = [:]
        for i in rows.indices {
            let vm = rows[i].vm
            if maps[vm] == nil { maps[vm] = devices[vm].map { $0.merged(over: fallback) } ?? fallback }
            rows[i].device = maps[vm]!.device(rows[i].space, rows[i].address)
        }
    }

    /// The rows of one space.
    public func rows(_ space: DeviceMap.Space) -> [IOAccessSummaryRow] { rows.filter { $0.space == space } }

    /// Overflowed events of one space.
    public func overflow(_ space: DeviceMap.Space) -> UInt64 { space == .port ? overflow.port : overflow.mmio }

    /// One VM's I/O exits to one device: what `/metrics`' `kvmscope_io_exits_total` exports.
    public struct DeviceTotal: Sendable, Equatable {
        public var vm: Int32
        public var vmName: String?
        public var space: DeviceMap.Space
        /// The device as ``IOAccessSummaryRow/device`` names it; `unknown` for addresses no range holds.
        public var device: String
        /// ``IOAccessSummaryRow/count`` summed over the device's addresses and both directions (an MMIO read
        /// handed to the VMM and completed later counts once, as its completion).
        public var count: UInt64
    }

    /// The rows summed per VM, space and device, sorted by VM, space (ports first) and device name: as many
    /// totals as devices, whatever the number of addresses.
    public func byDevice() -> [DeviceTotal] {
        struct Key: Hashable { var vm: Int32; var space: UInt8; var device: String }
        var index: [Key: Int] = [:]
        var out: [DeviceTotal] = []
        for r in rows {
            let device = r.device ?? "unknown"
            let k = Key(vm: r.vm, space: r.space.rawValue, device: device)
            if let i = index[k] {
                out[i].count += r.count
                if out[i].vmName == nil { out[i].vmName = r.vmName }
            } else {
                index[k] = out.count
                out.append(DeviceTotal(vm: r.vm, vmName: r.vmName, space: r.space, device: device, count: r.count))
            }
        }
        return out.sorted { ($0.vm, $0.space.rawValue, $0.device) < ($1.vm, $1.space.rawValue, $1.device) }
    }
}
