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

    /// Per-VM totals of a snapshot, by VM pid. With `fields` (kvm_stat's `-f` regex, as kvm_stat's guest
    /// view honours it) only events whose name, or child name such as `kvm_exit(HLT)`, matches are counted.
    public static func of(_ snap: AggregateSnapshot, fields: String? = nil) throws -> [GuestTotal] {
        let regex = try fields.map { try Regex($0) }
        var eventMatches: [UInt16: Bool] = [:]
        var totals: [Int32: GuestTotal] = [:]
        for row in snap.counters {
            if let regex {
                let event = snap.catalog[row.key.event]
                var keep: Bool
                if let known = eventMatches[row.key.event] {
                    keep = known
                } else {
                    keep = event.name.firstMatch(of: regex) != nil
                    eventMatches[row.key.event] = keep
                }
                if !keep, event.role.hasReasons,
                   let reason = snap.catalog.reasonName(event: row.key.event, reason: row.key.reason, isa: row.key.isa) {
                    keep = ReasonResolver.builtin.spellings(ofOutputName: reason).contains {
                        "\(event.name)(\($0))".firstMatch(of: regex) != nil
                    }
                }
                guard keep else { continue }
            }
            let id = snap.identity(of: row.key.tid)
            totals[id.vm, default: GuestTotal(pid: id.vm, name: id.vmName, total: 0)].total += row.count
        }
        return totals.values.sorted { $0.pid < $1.pid }
    }
}
