/// One CPU's events in timestamp order, a batch at a time (a decoded sub-buffer, a chunk of a text trace).
///
/// A stream is read by one thread, to its end or until the reader gives up; ``ExitPipeline`` merges several.
public protocol EventStream: AnyObject {
    /// Replaces `batch`'s contents (its capacity is kept) with the next events, in timestamp order and all at
    /// or after the previous batch's. Returns false, with `batch` empty, when the stream has ended. Throws on
    /// malformed input (one-line errors).
    func next(_ batch: inout [TraceEvent]) throws -> Bool
}

/// Anything that yields events with the catalog they index — a trace.dat file, a text trace, synthetic pages:
/// one ``EventStream`` per CPU (each in timestamp order; the merge across CPUs is ``ExitPipeline``'s), and
/// the same ``SourceStatistics`` every source fills. Offline analysis consumes these.
public protocol TraceSource {
    /// The events the source decodes (indices of ``TraceEvent/event``).
    var catalog: EventCatalog { get }
    /// Thread identities known from the source itself (saved cmdlines and tgids), by tid.
    var identities: [Int32: ThreadIdentity] { get }
    /// Fresh streams from the start of the source, one per CPU (a source already in time order may give one).
    func streams() throws -> [any EventStream]
    /// Events and losses: what the source knows at open (a trace.dat's per-CPU stats) plus what the streams of
    /// the last ``streams()`` call counted so far (complete once they were read to the end).
    var statistics: SourceStatistics { get }
}

extension TraceSource {
    /// Events the source says were lost (``SourceStatistics/lostEvents``).
    public var lostEvents: UInt64 { statistics.lostEvents }
    /// Places where the source says events were lost without saying how many.
    public var lostUnknown: UInt64 { statistics.lostUnknown }

    /// Calls body for every event, CPUs merged in timestamp order (ties: the earlier stream first), through
    /// the pipeline's merge (``EventMerge``). Throws what the streams throw.
    public func forEachEvent(_ body: (TraceEvent) throws -> Void) throws {
        var merge = try EventMerge(streams: streams())
        try merge.run(body)
    }
}

/// Events held in memory, in timestamp order, as one stream (a text trace; tests).
public final class ArrayEventStream: EventStream {
    let events: [TraceEvent]
    var position = 0
    /// Events per batch.
    let batchSize: Int

    public init(_ events: [TraceEvent], batchSize: Int = 4096) {
        self.events = events
        self.batchSize = max(1, batchSize)
    }

    public func next(_ batch: inout [TraceEvent]) throws -> Bool {
        batch.removeAll(keepingCapacity: true)
        guard position < events.count else { return false }
        let end = min(events.count, position + batchSize)
        batch.append(contentsOf: events[position..<end])
        position = end
        return true
    }
}
