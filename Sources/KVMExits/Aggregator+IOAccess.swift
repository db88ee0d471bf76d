extension Aggregator {
    /// Every shard's ``IOAccessTable`` rows, merged by key (a thread that moved between CPUs has rows in
    /// several shards), sorted by thread, space, address and direction; and the events that overflowed.
    /// Also the identities of the retired threads those rows name (the rest are forgotten). Cost ∝ the tables' slots.
    func ioAccesses() -> (rows: [IOAccessRow], overflow: (port: UInt64, mmio: UInt64), retired: [Int32: ThreadIdentity]) {
        struct Key: Hashable { var tid: Int32; var space: UInt8; var address: UInt64; var direction: UInt8 }
        var merged: [Key: IOAccessRow] = [:]
        var overflow: (port: UInt64, mmio: UInt64) = (0, 0)
        for shard in shards {
            guard let io = shard.io else { continue }
            overflow.port += io.overflow(.port)
            overflow.mmio += io.overflow(.mmio)
            for r in io.rows() {
                let k = Key(tid: r.tid, space: r.space.rawValue, address: r.address, direction: r.direction.rawValue)
                if merged[k] == nil { merged[k] = r } else { merged[k]!.merge(r) }
            }
        }
        let rows = merged.values.sorted {
            ($0.tid, $0.space.rawValue, $0.address, $0.direction.rawValue)
                < ($1.tid, $1.space.rawValue, $1.address, $1.direction.rawValue)
        }
        let tids = Set(rows.map(\.tid))
        let retired = ioRetired.withLock { r -> [Int32: ThreadIdentity] in
            if r.isEmpty { return [:] }
            r = r.filter { tids.contains($0.key) }
            return r
        }
        return (rows, overflow, retired)
    }
}
