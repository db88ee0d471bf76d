/// Anything that yields events in timestamp order with the catalog they index: a trace.dat file,
/// a text trace, synthetic pages. Offline analysis consumes these.
public protocol TraceSource {
    /// The events the source decodes (indices of ``TraceEvent/event``).
    var catalog: EventCatalog { get }
    /// Thread identities known from the source itself (saved cmdlines and tgids), by tid.
    var identities: [Int32: ThreadIdentity] { get }
    /// Events the source says were lost (per-CPU stats of a trace.dat, missed-events flags).
    var lostEvents: UInt64 { get }
    /// Places where the source says events were lost without saying how many (sub-buffers flagged by the
    /// kernel, gaps in a text trace).
    var lostUnknown: UInt64 { get }
    /// Calls body for every event, in timestamp order. Throws on malformed input (one-line errors).
    func forEachEvent(_ body: (TraceEvent) throws -> Void) throws
}

extension TraceSource {
    public var lostUnknown: UInt64 { 0 }
}
