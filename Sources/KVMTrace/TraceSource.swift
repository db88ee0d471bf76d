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
/// over a recorded trace: one shard, one pairer, events in order. ``ReportAnalysis`` adds the time window
/// and the timeline; this is its plain form.
public enum OfflineAnalysis {
    public static func run(_ source: TraceSource) throws -> AggregateSnapshot {
        try ReportAnalysis.run(source).snapshot
    }
}
