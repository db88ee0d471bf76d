extension Aggregator {
    /// Every shard's ``IOAccessTable`` rows, merged by key (a thread that moved between CPUs has rows in
    /// several shards); only `tids` when given.
    func mergedIORows(only tids: [Int32: ThreadIdentity]? = nil) -> [RetiredTotals.IOKey: IOAccessRow] {
        var merged: [RetiredTotals.IOKey: IOAccessRow] = [:]
        for shard in shards {
            guard let io = shard.io else { continue }
            for r in io.rows() where tids == nil || tids![r.tid] != nil {
                let k = RetiredTotals.IOKey(r)
                if merged[k] == nil { merged[k] = r } else { merged[k]!.merge(r) }
            }
        }
        return merged
    }

    /// The I/O rows a snapshot shows, sorted by thread, space, address and direction: the tables' rows less
    /// what retired threads left frozen under their retired rows (``RetiredTotals/ioFrozen``), and those frozen
    /// rows; and the events that overflowed. Also the identities of the retired threads the tables' rows name
    /// (the rest are forgotten). Cost ∝ the tables' slots.
    func ioAccesses(_ r: RetiredTotals) -> (rows: [IOAccessRow], overflow: (port: UInt64, mmio: UInt64), retired: [Int32: ThreadIdentity]) {
        var overflow: (port: UInt64, mmio: UInt64) = (0, 0)
        for shard in shards {
            guard let io = shard.io else { continue }
            overflow.port += io.overflow(.port)
            overflow.mmio += io.overflow(.mmio)
        }
        let merged = mergedIORows()
        // A retired tid keeps its identity while the tables hold its rows, frozen or not (a late event of it).
        let tids = Set(merged.keys.map(\.tid))
        var out: [IOAccessRow] = []
        out.reserveCapacity(merged.count + r.ioFrozen.count)
        for (k, row) in merged {
            let rest = r.ioBaseline[k].map { row.minus($0) } ?? row
            if rest.count > 0 || rest.timed > 0 { out.append(rest) }
        }
        out += r.ioFrozen.values
        let rows = out.sorted {
            ($0.tid, $0.space.rawValue, $0.address, $0.direction.rawValue)
                < ($1.tid, $1.space.rawValue, $1.address, $1.direction.rawValue)
        }
        let retired = ioRetired.withLock { r -> [Int32: ThreadIdentity] in
            if r.isEmpty { return [:] }
            r = r.filter { tids.contains($0.key) }
            return r
        }
        return (rows, overflow, retired)
    }
}
