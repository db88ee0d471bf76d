import KVMExits

/// Anything that yields events in timestamp order with the catalog they index: a trace.dat file,
/// a text trace, synthetic pages. Offline analysis consumes these.
public protocol TraceSource {
    /// The events the source decodes (indices of ``TraceEvent/event``).
    var catalog: EventCatalog { get }
    /// Thread identities known from the source itself (saved cmdlines and tgids), by tid.
    var identities: [Int32: ThreadIdentity] { get }
    /// Events the source says were lost (per-CPU stats of a trace.dat, missed-events flags).
    var lostEvents: UInt64 { get }
    /// Calls body for every event, in timestamp order. Throws on malformed input (one-line errors).
    func forEachEvent(_ body: (TraceEvent) throws -> Void) throws
}

/// The same analysis as live — counts per event, exits per VM/vCPU/reason, pairing, latency, top RIPs —
/// over a recorded trace: one shard, one pairer, events in order.
public enum OfflineAnalysis {
    /// - Parameters:
    ///   - from/to: keep events with from ≤ timestamp < to (ns, the source's clock).
    public static func run(_ source: TraceSource, from: UInt64 = 0, to: UInt64 = .max) throws -> AggregateSnapshot {
        let identities = source.identities
        let aggregator = Aggregator(catalog: source.catalog, shardCount: 1) { identities[$0] }
        var writer = aggregator.writer(shard: 0)
        var pairer = aggregator.makePairer()
        let roles = source.catalog.entries.map(\.role)
        var last: UInt64 = 0
        try source.forEachEvent { e in
            guard e.timestamp >= from && e.timestamp < to else { return }
            let role = roles[Int(e.event)]
            writer.add(e, hasReason: role.hasReasons)
            switch role {
            case .exit: pairer.exit(e)
            case .entry: pairer.entry(e)
            default: if e.flags & TraceEvent.afterLoss != 0 { pairer.noteLoss(cpu: e.cpu, at: e.timestamp) }
            }
            last = e.timestamp
        }
        pairer.finish()
        writer.addLost(source.lostEvents)
        return aggregator.snapshot(timestamp: last)
    }
}
