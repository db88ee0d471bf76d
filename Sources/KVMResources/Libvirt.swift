import CLibvirt
import Foundation
import KVMExits

/// A libvirt error: the library's own message ("Failed to connect socket to '/run/libvirt/libvirt-sock-ro': No
/// such file or directory"), prefixed with what kvmscope was doing.
public struct LibvirtError: Error, CustomStringConvertible, Sendable {
    public let description: String
}

/// One running libvirt domain as `virConnectGetAllDomainStats` reports it (the numbers `virsh domstats` prints,
/// same names, same units). Counters are cumulative since the domain started.
public struct LibvirtDomain: Sendable, Equatable {
    public var name: String
    /// `virDomainGetUUIDString`: the UUID QEMU also gets as `-uuid`.
    public var uuid: String
    /// libvirt's domain ID (`virsh list`'s Id), -1 for an inactive domain.
    public var id: Int32
    /// The QEMU process, from libvirt's pid file (`/run/libvirt/qemu/NAME.pid`); nil when unreadable.
    public var pid: Int32?
    /// `state.state`: 1 running, 2 blocked, 3 paused, 4 shutting down, 5 shut off, 6 crashed, 7 suspended.
    public var state: Int32 = 0
    /// `cpu.time`, `cpu.user`, `cpu.system`: nanoseconds of host CPU.
    public var cpuTimeNanoseconds: UInt64?
    public var cpuUserNanoseconds: UInt64?
    public var cpuSystemNanoseconds: UInt64?
    /// `balloon.current` and `balloon.maximum`: KiB (the balloon's size and the configured memory).
    public var balloonCurrentKiB: UInt64?
    public var balloonMaximumKiB: UInt64?
    /// `vcpu.N.*`, by vCPU number.
    public var vcpus: [VCPU] = []
    /// `block.N.*`, in libvirt's order.
    public var blocks: [Block] = []
    /// `net.N.*`, in libvirt's order.
    public var interfaces: [Interface] = []
    /// The devices of the domain's XML (`virDomainGetXMLDesc`, read once per started domain): aliases,
    /// targets, PCI and ISA addresses, which name the VM's I/O exits.
    public var devices: [LibvirtDevice] = []
    /// Every numeric field as reported (`vcpu.0.exits.sum`, `vm.mmu_shadow_zapped.sum`: KVM's binary statistics
    /// where the kernel and QEMU give them), for what the typed fields above leave out.
    public var fields: [String: Double] = [:]

    /// A domain with its identity only (its statistics are filled in by ``LibvirtConnection/domains()``).
    public init(name: String, uuid: String, id: Int32, pid: Int32? = nil) {
        self.name = name
        self.uuid = uuid
        self.id = id
        self.pid = pid
    }

    public struct VCPU: Sendable, Equatable {
        public var number: Int
        /// `vcpu.N.state`: 0 offline, 1 running, 2 blocked.
        public var state: Int32?
        /// `vcpu.N.time`: nanoseconds the vCPU ran; `vcpu.N.wait`: waiting for I/O; `vcpu.N.delay`: runnable
        /// but waiting for a host CPU (schedstat's run-queue wait: the host's view of steal).
        public var timeNanoseconds: UInt64?
        public var waitNanoseconds: UInt64?
        public var delayNanoseconds: UInt64?
    }

    public struct Block: Sendable, Equatable {
        /// `block.N.name` (the target: `vda`) and `block.N.path` (the source file or device).
        public var name: String
        public var path: String?
        public var readRequests: UInt64 = 0
        public var readBytes: UInt64 = 0
        /// `block.N.rd.times`: nanoseconds spent in read requests (÷ requests: mean latency).
        public var readNanoseconds: UInt64 = 0
        public var writeRequests: UInt64 = 0
        public var writeBytes: UInt64 = 0
        public var writeNanoseconds: UInt64 = 0
        public var flushRequests: UInt64 = 0
        public var flushNanoseconds: UInt64 = 0
    }

    public struct Interface: Sendable, Equatable {
        /// `net.N.name`: the host-side device (the tap: `vnet0`).
        public var name: String
        public var rxBytes: UInt64 = 0
        public var rxPackets: UInt64 = 0
        public var rxErrors: UInt64 = 0
        public var rxDrops: UInt64 = 0
        public var txBytes: UInt64 = 0
        public var txPackets: UInt64 = 0
        public var txErrors: UInt64 = 0
        public var txDrops: UInt64 = 0
    }
}

/// A read-only connection to libvirt, kept open across samples (no process per sample, as `virsh` would be).
/// Not thread-safe: one owner samples through it.
public final class LibvirtConnection {
    public let uri: String
    private var connection: virConnectPtr?

    /// The URI kvmscope uses by default, as virt-top does without `-c`.
    public static let defaultURI = "qemu:///system"

    /// Whether a libvirt daemon listens on one of its read-only sockets: a `connect()` that is accepted, or
    /// refused for want of rights (the daemon is there; opening it then says why). A socket file left by a
    /// daemon that died, or one that is still starting (bound, not yet listening), is no daemon.
    public static var daemonListening: Bool {
        ["/run/libvirt/libvirt-sock-ro", "/run/libvirt/virtqemud-sock-ro"].contains { path in
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { return false }
            defer { Glibc.close(fd) }
            var addr = sockaddr_un()
            addr.sun_family = sa_family_t(AF_UNIX)
            let bytes = Array(path.utf8)
            guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { return false }
            withUnsafeMutableBytes(of: &addr.sun_path) { raw in
                for (i, b) in bytes.enumerated() { raw[i] = b }
            }
            let r = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
            return r == 0 || errno == EACCES || errno == EPERM
        }
    }

    /// Opens `uri` read-only. libvirt's own printing of errors to stderr is turned off: kvmscope says what
    /// went wrong once, in its own line.
    /// - Throws: ``LibvirtError`` with libvirt's message when the daemon cannot be reached.
    public init(uri: String = LibvirtConnection.defaultURI) throws {
        self.uri = uri
        Self.silence()
        guard let c = virConnectOpenReadOnly(uri) else { throw Self.lastError("cannot connect to libvirt at \(uri)") }
        connection = c
    }

    deinit { close() }

    public func close() {
        if let connection { virConnectClose(connection) }
        connection = nil
    }

    /// The statistics of every running domain (`virsh domstats`): state, CPU, balloon, vCPUs, interfaces, block
    /// devices. A connection that was lost (libvirtd restarted) is opened again once per call.
    /// - Throws: ``LibvirtError`` when libvirt cannot answer.
    public func domains() throws -> [LibvirtDomain] {
        do { return try query() } catch {
            // libvirtd restarted, or the connection dropped: one new connection, one more try.
            close()
            Self.silence()
            guard let c = virConnectOpenReadOnly(uri) else { throw Self.lastError("cannot connect to libvirt at \(uri)") }
            connection = c
            return try query()
        }
    }

    private func query() throws -> [LibvirtDomain] {
        guard let connection else { throw LibvirtError(description: "libvirt at \(uri): not connected") }
        let stats = VIR_DOMAIN_STATS_STATE.rawValue | VIR_DOMAIN_STATS_CPU_TOTAL.rawValue | VIR_DOMAIN_STATS_BALLOON.rawValue
            | VIR_DOMAIN_STATS_VCPU.rawValue | VIR_DOMAIN_STATS_INTERFACE.rawValue | VIR_DOMAIN_STATS_BLOCK.rawValue
            // KVM's VM-level statistics (`vm.NAME.sum`…, libvirt 8.9): a daemon that lacks the group omits it.
            | VIR_DOMAIN_STATS_VM.rawValue
        var records: UnsafeMutablePointer<virDomainStatsRecordPtr?>?
        let n = virConnectGetAllDomainStats(connection, UInt32(stats), &records,
                                            UInt32(VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE.rawValue))
        guard n >= 0, let records else { throw Self.lastError("libvirt at \(uri): cannot read domain statistics") }
        defer { virDomainStatsRecordListFree(records) }
        var result: [LibvirtDomain] = []
        var seen: [String: [LibvirtDevice]] = [:]
        for i in 0..<Int(n) {
            guard let record = records[i]?.pointee, let dom = record.dom else { continue }
            var d = Self.domain(dom, params: record.params, count: Int(record.nparams))
            let key = "\(d.uuid) \(d.id)"
            let devices = deviceCache[key] ?? Self.devices(of: dom)
            d.devices = devices ?? []
            if let devices { seen[key] = devices }
            result.append(d)
        }
        deviceCache = seen
        return result.sorted { $0.id < $1.id }
    }

    /// Each running domain's devices by `UUID ID`: its XML is read once per start (a domain started again
    /// has another ID), not at every sample.
    private var deviceCache: [String: [LibvirtDevice]] = [:]

    /// The devices of a domain's live XML; nil when libvirt does not give it.
    static func devices(of dom: virDomainPtr) -> [LibvirtDevice]? {
        guard let xml = virDomainGetXMLDesc(dom, 0) else { return nil }
        defer { free(xml) }
        return LibvirtDevice.devices(xml: String(cString: xml))
    }

    static func domain(_ dom: virDomainPtr, params: virTypedParameterPtr?, count: Int) -> LibvirtDomain {
        let name = virDomainGetName(dom).map { String(cString: $0) } ?? ""
        var uuid = [CChar](repeating: 0, count: Int(VIR_UUID_STRING_BUFLEN))
        _ = virDomainGetUUIDString(dom, &uuid)
        let id = virDomainGetID(dom)
        var d = LibvirtDomain(name: name, uuid: String(cMessage: uuid), id: id == UInt32.max ? -1 : Int32(bitPattern: id))
        d.pid = (try? String(contentsOfFile: "/run/libvirt/qemu/\(name).pid", encoding: .utf8))
            .flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        var strings: [String: String] = [:]
        for j in 0..<count {
            guard let p = params?[j] else { continue }
            let field = withUnsafeBytes(of: p.field) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            switch UInt32(bitPattern: p.type) {
            case VIR_TYPED_PARAM_INT.rawValue: d.fields[field] = Double(p.value.i)
            case VIR_TYPED_PARAM_UINT.rawValue: d.fields[field] = Double(p.value.ui)
            case VIR_TYPED_PARAM_LLONG.rawValue: d.fields[field] = Double(p.value.l)
            case VIR_TYPED_PARAM_ULLONG.rawValue: d.fields[field] = Double(p.value.ul)
            case VIR_TYPED_PARAM_DOUBLE.rawValue: d.fields[field] = p.value.d
            case VIR_TYPED_PARAM_BOOLEAN.rawValue: d.fields[field] = p.value.b != 0 ? 1 : 0
            case VIR_TYPED_PARAM_STRING.rawValue: strings[field] = p.value.s.map { String(cString: $0) } ?? ""
            default: continue
            }
        }
        return assemble(d, strings: strings)
    }

    /// Turns `virsh domstats` fields into the typed ones. Counters are whole numbers below 2^53 (libvirt's
    /// ULLONG read through a Double here): nanosecond totals of 104 days, byte totals of 9 PB.
    static func assemble(_ domain: LibvirtDomain, strings: [String: String]) -> LibvirtDomain {
        var d = domain
        let f = d.fields
        func u(_ key: String) -> UInt64? { f[key].map { UInt64(max(0, $0)) } }
        d.state = f["state.state"].map { Int32($0) } ?? 0
        d.cpuTimeNanoseconds = u("cpu.time")
        d.cpuUserNanoseconds = u("cpu.user")
        d.cpuSystemNanoseconds = u("cpu.system")
        d.balloonCurrentKiB = u("balloon.current")
        d.balloonMaximumKiB = u("balloon.maximum")
        let vcpuCount = Int(f["vcpu.maximum"] ?? f["vcpu.current"] ?? 0)
        d.vcpus = (0..<vcpuCount).compactMap { n in
            let p = "vcpu.\(n)."
            guard f[p + "state"] != nil || f[p + "time"] != nil else { return nil }
            return .init(number: n, state: f[p + "state"].map { Int32($0) }, timeNanoseconds: u(p + "time"),
                         waitNanoseconds: u(p + "wait"), delayNanoseconds: u(p + "delay"))
        }
        d.blocks = (0..<Int(f["block.count"] ?? 0)).map { n in
            let p = "block.\(n)."
            return .init(name: strings[p + "name"] ?? "block\(n)", path: strings[p + "path"],
                         readRequests: u(p + "rd.reqs") ?? 0, readBytes: u(p + "rd.bytes") ?? 0,
                         readNanoseconds: u(p + "rd.times") ?? 0, writeRequests: u(p + "wr.reqs") ?? 0,
                         writeBytes: u(p + "wr.bytes") ?? 0, writeNanoseconds: u(p + "wr.times") ?? 0,
                         flushRequests: u(p + "fl.reqs") ?? 0, flushNanoseconds: u(p + "fl.times") ?? 0)
        }
        d.interfaces = (0..<Int(f["net.count"] ?? 0)).map { n in
            let p = "net.\(n)."
            return .init(name: strings[p + "name"] ?? "net\(n)",
                         rxBytes: u(p + "rx.bytes") ?? 0, rxPackets: u(p + "rx.pkts") ?? 0,
                         rxErrors: u(p + "rx.errs") ?? 0, rxDrops: u(p + "rx.drop") ?? 0,
                         txBytes: u(p + "tx.bytes") ?? 0, txPackets: u(p + "tx.pkts") ?? 0,
                         txErrors: u(p + "tx.errs") ?? 0, txDrops: u(p + "tx.drop") ?? 0)
        }
        return d
    }

    /// libvirt prints every error to stderr unless an error function is set; kvmscope reports them itself.
    private static func silence() {
        virSetErrorFunc(nil) { _, _ in }
    }

    private static func lastError(_ doing: String) -> LibvirtError {
        let message = virGetLastErrorMessage().map { String(cString: $0) } ?? "unknown error"
        return LibvirtError(description: "\(doing): \(message)")
    }
}

extension ResourceSample {
    /// Gives each VM its libvirt domain: the domain whose QEMU pid (libvirt's pid file) is the VM's process,
    /// else the one of the same name (QEMU's `-name guest=NAME` is libvirt's domain name). A VM libvirt does
    /// not list keeps `libvirt` nil.
    public mutating func attach(libvirt domains: [LibvirtDomain]) {
        var byPID: [Int32: LibvirtDomain] = [:]
        var byName: [String: LibvirtDomain] = [:]
        for d in domains {
            if let pid = d.pid { byPID[pid] = d }
            byName[d.name] = d
        }
        for i in vms.indices where !vms[i].gone {
            vms[i].libvirt = byPID[vms[i].pid] ?? byName[vms[i].name].flatMap { $0.pid == nil ? $0 : nil }
        }
    }
}

extension LibvirtDomain {
    /// The domain's numbers in the shape `--qmp` gives (libvirt reads them from QEMU's QMP itself, and a
    /// domain's monitor socket is libvirt's alone): per-device block counters (`block.N.*`, the device named by
    /// its target, `vda`), with their growth since `previous` (the same domain's last reading; a device first
    /// seen has none); configured memory (`balloon.maximum`) and the balloon's size (`balloon.current`), in
    /// bytes; KVM's vCPU statistics (`vcpu.N.NAME.sum`, summed over vCPUs) and VM statistics (`vm.NAME.sum`,
    /// `vm.NAME.cur`).
    public func qmpSample(uri: String, previous: QMPSample?) -> QMPSample {
        var q = QMPSample(socket: "libvirt:\(uri)")
        q.disks = blocks.map { b in
            var c = DiskCounts()
            c.readRequests = b.readRequests
            c.writeRequests = b.writeRequests
            c.flushRequests = b.flushRequests
            c.readBytes = b.readBytes
            c.writeBytes = b.writeBytes
            c.readTimeNanoseconds = b.readNanoseconds
            c.writeTimeNanoseconds = b.writeNanoseconds
            c.flushTimeNanoseconds = b.flushNanoseconds
            let old = previous?.disks.first { $0.device == b.name }
            return DiskSample(device: b.name, drive: "", qdev: nil, total: c, delta: old.map { c.subtracting($0.total) })
        }
        q.configuredMemoryBytes = balloonMaximumKiB.map { $0 * 1024 }
        q.balloonActualBytes = balloonCurrentKiB.map { $0 * 1024 }
        for (key, value) in fields where value >= 0 {
            let parts = key.split(separator: ".")
            if parts.count == 4, parts[0] == "vcpu", Int(parts[1]) != nil, parts[3] == "sum" {
                q.kvmVCPUStats[String(parts[2]), default: 0] += UInt64(value)
            } else if parts.count == 3, parts[0] == "vm", parts[2] == "sum" || parts[2] == "cur" || parts[2] == "max" {
                q.kvmVMStats[String(parts[1])] = UInt64(value)
            }
        }
        return q
    }
}

extension ResourceSample {
    /// Gives each VM libvirt runs (``VMSample/libvirt``) that has no `--qmp` reading libvirt's numbers in that
    /// shape (``LibvirtDomain/qmpSample(uri:previous:)``), so its block devices, memory, balloon and KVM
    /// statistics show as `--qmp`'s do. `previous`: the last sample's readings by pid, for the deltas.
    public mutating func fillQMP(fromLibvirt uri: String, previous: [Int32: QMPSample]) {
        for i in vms.indices where vms[i].qmp == nil {
            guard let d = vms[i].libvirt else { continue }
            vms[i].qmp = d.qmpSample(uri: uri, previous: previous[vms[i].pid])
        }
    }
}

extension DeviceMap {
    /// A VM's own device map from its mapped PCI BARs (QMP `query-pci`): each I/O BAR's ports and each memory
    /// BAR's guest-physical range named `DEVICE BARn (BB:SS.F)` — `virtio-disk0 BAR4 (00:04.0)`, where a modern
    /// virtio device's notify area lies. Laid over the standard PC map (``merged(over:)``) when tables are named.
    public init(pciRegions: [PCIRegion]) {
        self.init()
        for r in pciRegions where r.size > 0 && r.start <= UInt64.max - (r.size - 1) {
            add(r.isIO ? .port : .mmio, r.start...(r.start + r.size - 1), Self.name(of: r))
        }
    }

    /// The name ``init(pciRegions:)`` gives a BAR's range: `virtio-disk0 BAR4 (00:04.0)`.
    public static func name(of r: PCIRegion) -> String { "\(r.device) BAR\(r.bar) (\(r.address))" }
}
