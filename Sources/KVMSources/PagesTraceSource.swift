import KVMExits

/// Events of raw ring-buffer sub-buffers held in memory, one list per CPU (as trace_pipe_raw or a trace.dat
/// gives them, or as ``RingBufferPageBuilder`` builds them), merged across CPUs by timestamp.
///
/// Each CPU's pages are decoded one at a time into a reused buffer; the merge picks the CPU whose next event is
/// oldest, the lower position in `pagesByCPU` first on equal timestamps, and keeps each CPU's own order. Cost
/// per event: a scan of the CPUs' heads (fine for tests and benchmarks with tens of CPUs).
public final class PagesTraceSource: TraceSource {
    public let catalog: EventCatalog
    public let identities: [Int32: ThreadIdentity]
    /// Events the pages' headers say were lost (RB_MISSED_STORED counts); complete once ``forEachEvent(_:)``
    /// has run.
    public private(set) var lostEvents: UInt64 = 0
    /// Sub-buffers flagged as following a loss of unknown size.
    public private(set) var lostUnknownSubbuffers: UInt64 = 0
    /// Sub-buffers whose header did not fit.
    public private(set) var corruptSubbuffers: UInt64 = 0

    let formats: EventFormats
    let cpus: [(cpu: UInt16, pages: [[UInt8]])]
    let longSize: Int

    /// - Parameters:
    ///   - formats: the formats the pages' events were written with (their layouts decode them).
    ///   - pagesByCPU: per CPU, its sub-buffers in the order the kernel filled them.
    public init(formats: EventFormats, pagesByCPU: [(cpu: UInt16, pages: [[UInt8]])],
                identities: [Int32: ThreadIdentity] = [:], longSize: Int = 8) {
        self.formats = formats
        self.catalog = formats.catalog
        self.cpus = pagesByCPU
        self.identities = identities
        self.longSize = longSize
    }

    public func forEachEvent(_ body: (TraceEvent) throws -> Void) throws {
        struct Cursor {
            var page = 0
            var events: [TraceEvent] = []
            var next = 0
        }
        let decoders = cpus.map { _ in formats.makeDecoder(longSize: longSize) }
        var cursors = cpus.map { _ in Cursor() }

        /// Decodes pages of CPU i until one yields events; false when its pages are exhausted.
        func refill(_ i: Int) -> Bool {
            while cursors[i].next >= cursors[i].events.count {
                guard cursors[i].page < cpus[i].pages.count else { return false }
                cursors[i].events.removeAll(keepingCapacity: true)
                cursors[i].next = 0
                let page = cpus[i].pages[cursors[i].page]
                cursors[i].page += 1
                page.withUnsafeBytes { raw in
                    _ = decoders[i].decode(raw, cpu: cpus[i].cpu) { cursors[i].events.append($0) }
                }
            }
            return true
        }

        var live = Array(cpus.indices).filter { refill($0) }
        while !live.isEmpty {
            var best = 0
            var bestTS = cursors[live[0]].events[cursors[live[0]].next].timestamp
            for j in 1..<live.count {
                let c = cursors[live[j]]
                if c.events[c.next].timestamp < bestTS {
                    best = j
                    bestTS = c.events[c.next].timestamp
                }
            }
            let i = live[best]
            try body(cursors[i].events[cursors[i].next])
            cursors[i].next += 1
            if !refill(i) { live.remove(at: best) }
        }
        lostEvents = decoders.reduce(0) { $0 + $1.missedEvents }
        lostUnknownSubbuffers = decoders.reduce(0) { $0 + $1.missedUnknown }
        corruptSubbuffers = decoders.reduce(0) { $0 + $1.corruptSubbuffers }
    }
}
