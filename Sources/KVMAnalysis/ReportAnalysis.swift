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
    /// With `from`/`to`: the window asked for, cut to the trace (ns); nil without one.
    public var window: (first: UInt64, last: UInt64)?

    /// What rates divide by, seconds: the window asked for (cut to the trace), else first to last event kept.
    public var durationSeconds: Double {
        if let w = window { return w.last > w.first ? Double(w.last - w.first) / 1e9 : 0 }
        return last > first ? Double(last - first) / 1e9 : 0
    }

    /// What the source counted: events decoded, losses by CPU and kind.
    public var statistics = SourceStatistics()

    /// Analyses a source through ``ExitPipeline``: its CPUs merged, counted, paired; the timeline (when asked
    /// for) fed by the pairer's own exits and pairs.
    /// - Parameters:
    ///   - from, to: keep events with trace start + from ≤ timestamp < trace start + to (seconds from the
    ///     source's first event; nil: no bound).
    ///   - timeline: also collect an ``ExitTimeline`` of at most this many bins (nil: none).
    public static func run(_ source: TraceSource, from: Double? = nil, to: Double? = nil,
                           timelineBins: Int? = nil) throws -> ReportAnalysis {
        let identities = source.identities
        let recorder = timelineBins.map { ExitTimelineRecorder(maxBins: $0) }
        var pipeline = ExitPipeline(catalog: source.catalog, resolver: { identities[$0] }, observer: recorder)
        try pipeline.run(source.streams(), from: from.map { UInt64(saturating: $0 * 1e9) },
                         to: to.map { UInt64(saturating: $0 * 1e9) })
        let statistics = source.statistics
        var r = ReportAnalysis(snapshot: pipeline.finish(statistics: statistics), timeline: recorder?.timeline)
        r.first = pipeline.first
        r.last = pipeline.last
        r.eventsKept = pipeline.eventsKept
        r.window = pipeline.window
        r.statistics = statistics
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
