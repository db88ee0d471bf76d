import KVMExits

/// Events of raw ring-buffer sub-buffers held in memory, one list per CPU (as trace_pipe_raw or a trace.dat
/// gives them, or as ``RingBufferPageBuilder`` builds them): one stream per CPU, each decoding its pages one
/// at a time with its own decoder; the pipeline merges them (equal timestamps: the lower position in
/// `pagesByCPU` first; each CPU keeps its own order).
public final class PagesTraceSource: TraceSource {
    public let catalog: EventCatalog
    public let identities: [Int32: ThreadIdentity]

    let formats: EventFormats
    let cpus: [(cpu: UInt16, pages: [[UInt8]])]
    let longSize: Int
    var lastStreams: [PagesStream] = []

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

    public func streams() throws -> [any EventStream] {
        lastStreams = cpus.map { PagesStream(cpu: $0.cpu, pages: $0.pages, decoder: formats.makeDecoder(longSize: longSize)) }
        return lastStreams
    }

    /// Events decoded and, per CPU, what the pages' headers said (missed-events counts, sub-buffers flagged
    /// without a count, sub-buffers that did not decode); complete once the streams were read.
    public var statistics: SourceStatistics {
        var s = SourceStatistics()
        for st in lastStreams {
            s.events &+= st.decoded
            let d = st.decoder
            if d.missedEvents > 0 || d.missedUnknown > 0 || d.corruptSubbuffers > 0 {
                s.add(LossCounts(flagged: d.missedEvents, corruptSubbuffers: d.corruptSubbuffers,
                                 unknownGaps: d.missedUnknown), cpu: Int(st.cpu))
            }
        }
        return s
    }

    /// Events the pages' headers say were lost (RB_MISSED_STORED counts), in what was read so far.
    public var lostEvents: UInt64 { statistics.total.flagged }
    /// Sub-buffers flagged as following a loss of unknown size.
    public var lostUnknownSubbuffers: UInt64 { statistics.total.unknownGaps }
    /// Sub-buffers whose header did not fit.
    public var corruptSubbuffers: UInt64 { statistics.total.corruptSubbuffers }
}

/// One CPU's pages in memory, decoded one page per batch.
final class PagesStream: EventStream {
    let cpu: UInt16
    let pages: [[UInt8]]
    let decoder: SubbufferDecoder
    var page = 0
    var decoded: UInt64 = 0

    init(cpu: UInt16, pages: [[UInt8]], decoder: SubbufferDecoder) {
        self.cpu = cpu
        self.pages = pages
        self.decoder = decoder
    }

    func next(_ batch: inout [TraceEvent]) throws -> Bool {
        batch.removeAll(keepingCapacity: true)
        while batch.isEmpty {
            guard page < pages.count else { return false }
            pages[page].withUnsafeBytes { raw in
                _ = decoder.decode(raw, cpu: cpu, appendingTo: &batch)
            }
            page += 1
        }
        decoded &+= UInt64(batch.count)
        return true
    }
}
