import KVMResources

/// A VM's libvirt domain in `top --json` (and `stat --json`): libvirt's own cumulative counters, named as
/// `virsh domstats` names them, units in the key (`_ns`, `_bytes`, `_kib`).
public enum LibvirtJSON {
    /// `null` for a VM libvirt does not list (or when libvirt is not read).
    public static func value(_ d: LibvirtDomain?) -> JSONValue {
        guard let d else { return .null }
        func u(_ v: UInt64?) -> JSONValue { v.map { .uint($0) } ?? .null }
        return .object([
            ("name", .string(d.name)), ("uuid", .string(d.uuid)), ("id", .int(Int64(d.id))),
            ("state", .int(Int64(d.state))),
            ("cpu_time_ns", u(d.cpuTimeNanoseconds)), ("cpu_user_ns", u(d.cpuUserNanoseconds)),
            ("cpu_system_ns", u(d.cpuSystemNanoseconds)),
            ("balloon_current_kib", u(d.balloonCurrentKiB)), ("balloon_maximum_kib", u(d.balloonMaximumKiB)),
            ("vcpus", .array(d.vcpus.map { v in
                .object([("vcpu", .int(Int64(v.number))), ("state", v.state.map { .int(Int64($0)) } ?? .null),
                         ("time_ns", u(v.timeNanoseconds)), ("wait_ns", u(v.waitNanoseconds)),
                         ("delay_ns", u(v.delayNanoseconds))])
            })),
            ("blocks", .array(d.blocks.map { b in
                .object([("name", .string(b.name)), ("path", .optional(b.path)),
                         ("rd_reqs", .uint(b.readRequests)), ("rd_bytes", .uint(b.readBytes)), ("rd_times_ns", .uint(b.readNanoseconds)),
                         ("wr_reqs", .uint(b.writeRequests)), ("wr_bytes", .uint(b.writeBytes)), ("wr_times_ns", .uint(b.writeNanoseconds)),
                         ("fl_reqs", .uint(b.flushRequests)), ("fl_times_ns", .uint(b.flushNanoseconds))])
            })),
            ("interfaces", .array(d.interfaces.map { n in
                .object([("name", .string(n.name)),
                         ("rx_bytes", .uint(n.rxBytes)), ("rx_pkts", .uint(n.rxPackets)), ("rx_errs", .uint(n.rxErrors)),
                         ("rx_drop", .uint(n.rxDrops)), ("tx_bytes", .uint(n.txBytes)), ("tx_pkts", .uint(n.txPackets)),
                         ("tx_errs", .uint(n.txErrors)), ("tx_drop", .uint(n.txDrops))])
            })),
        ])
    }
}
