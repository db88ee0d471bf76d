import KVMExits

/// What `kvmscope report` computes from one recorded trace: the same aggregate as live
/// (``OfflineAnalysis``), the time span it covers, and optionally an ``ExitTimeline`` for pictures.
public struct ReportAnalysis: Sendable {
    public var snapshot: AggregateSnapshot
    public var timeline: ExitTimeline?
    /// Timestamps (ns) of the first and last event kept; 0 when none was.
    public var first: UInt64 = 0
    public var last: UInt64 = 0
    public var eventsKept: UInt64 = 0

    public var durationSeconds: Double { last > first ? Double(last - first) / 1e9 : 0 }

    /// Analyses a source.
    /// - Parameters:
    ///   - from, to: keep events with trace start + from ≤ timestamp < trace start + to (seconds from the
    ///     source's first event; nil: no bound).
    ///   - timeline: also collect an ``ExitTimeline`` of at most this many bins (nil: none).
    public static func run(_ source: TraceSource, from: Double? = nil, to: Double? = nil,
                           timelineBins: Int? = nil) throws -> ReportAnalysis {
        let identities = source.identities
        let aggregator = Aggregator(catalog: source.catalog, shardCount: 1) { identities[$0] }
        var writer = aggregator.writer(shard: 0)
        var pairer = aggregator.makePairer()
        let roles = source.catalog.entries.map(\.role)
        var timeline = timelineBins.map { ExitTimeline(maxBins: $0) }
        var traceStart: UInt64?
        var lo: UInt64 = 0
        var hi: UInt64 = .max
        var first: UInt64 = 0
        var last: UInt64 = 0
        var kept: UInt64 = 0
        try source.forEachEvent { e in
            if traceStart == nil {
                traceStart = e.timestamp
                if let from { lo = e.timestamp &+ UInt64(max(0, from) * 1e9) }
                if let to { hi = e.timestamp &+ UInt64(max(0, to) * 1e9) }
            }
            guard e.timestamp >= lo && e.timestamp < hi else { return }
            let role = roles[Int(e.event)]
            writer.add(e, hasReason: role.hasReasons)
            switch role {
            case .exit: pairer.exit(e)
            case .entry: pairer.entry(e)
            default: if e.flags & TraceEvent.afterLoss != 0 { pairer.noteLoss(cpu: e.cpu, at: e.timestamp) }
            }
            timeline?.add(e, role: role)
            if kept == 0 { first = e.timestamp }
            last = e.timestamp
            kept += 1
        }
        pairer.finish()
        writer.addLost(source.lostEvents, unknownSubbuffers: source.lostUnknown)
        var r = ReportAnalysis(snapshot: aggregator.snapshot(timestamp: last), timeline: timeline)
        r.first = first
        r.last = last
        r.eventsKept = kept
        return r
    }
}

/// The same analysis as live — counts per event, exits per VM/vCPU/reason, pairing, latency, top RIPs —
/// over a recorded trace: one shard, one pairer, events in order. ``ReportAnalysis`` adds the time window
/// and the timeline; this is its plain form.
public enum OfflineAnalysis {
    public static func run(_ source: TraceSource) throws -> AggregateSnapshot {
        try ReportAnalysis.run(source).snapshot
    }
}
