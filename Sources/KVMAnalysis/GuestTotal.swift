import KVMExits

/// The total of every event counted for one VM (the live view's `b` list).
public struct GuestTotal: Sendable, Equatable {
    public var pid: Int32
    public var name: String?
    public var total: UInt64

    public init(pid: Int32, name: String?, total: UInt64) {
        self.pid = pid
        self.name = name
        self.total = total
    }

    /// Per-VM totals of a snapshot, by VM pid. With `filter`'s fields (kvm_stat's `-f` regex, as kvm_stat's
    /// guest view honours it, matched as ``SummaryFilter/keeps(event:reason:)`` matches) only events whose name,
    /// or child name such as `kvm_exit(HLT)` or `kvm_userspace_exit(IO)`, matches are counted; its VM and thread
    /// choices are not applied (every guest is listed).
    public static func of(_ snap: AggregateSnapshot, filter: SummaryFilter = SummaryFilter()) throws -> [GuestTotal] {
        let regex = try filter.fields.map { try Regex($0) }
        var eventMatches: [UInt16: Bool] = [:]
        var totals: [Int32: GuestTotal] = [:]
        for row in snap.counters {
            if let regex {
                let event = snap.catalog[row.key.event]
                var keep: Bool
                if let known = eventMatches[row.key.event] {
                    keep = known
                } else {
                    keep = filter.matches(event.name, regex)
                    eventMatches[row.key.event] = keep
                }
                if !keep, event.role.hasReasons,
                   let reason = snap.catalog.reasonName(event: row.key.event, reason: row.key.reason, isa: row.key.isa) {
                    keep = filter.keeps(event: event.name, reason: reason, regex: regex)
                }
                guard keep else { continue }
            }
            let id = snap.identity(of: row.key.tid)
            totals[id.vm, default: GuestTotal(pid: id.vm, name: id.vmName, total: 0)].total += row.count
        }
        return totals.values.sorted { $0.pid < $1.pid }
    }
}
