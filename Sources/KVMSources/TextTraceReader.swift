import KVMExits

/// A text trace as a ``TraceSource``: the kernel's own text (`/sys/kernel/tracing/trace`, `trace_pipe`),
/// `trace-cmd report` output (libtraceevent's kvm plugin) and `perf script` output.
///
/// The whole file is parsed once, in `init`, from bytes (no regular expressions, no String per event): every
/// `kvm_*` event becomes a ``TraceEvent`` (48 bytes each, kept in memory), other events are counted and
/// dropped. Lines split by mail clients are joined back (a line that does not start a record, a comment or a
/// loss note continues the record before it); CRLF endings are accepted.
///
/// Thread identity: the VM is the thread group id when the trace has it (the kernel's `record-tgid` column
/// `(  1234)`, perf's `pid/tid`); otherwise each thread is its own VM (vm = tid), named after its comm.
/// The vCPU number comes from a "CPU N/KVM" comm, else from the first kvm_exit/kvm_entry `vcpu` field.
public final class TextTraceReader: TraceSource {
    /// Which program wrote the text (informational; one parser reads them all).
    public enum Style: String, Sendable {
        case kernel = "kernel trace text"
        case traceCmd = "trace-cmd report"
        case perf = "perf script"
    }

    public let catalog: EventCatalog
    public let identities: [Int32: ThreadIdentity]
    /// Events the trace says were lost (`CPU:N [LOST n EVENTS]`, `CPU:N [n EVENTS DROPPED]`).
    public let lostEvents: UInt64
    /// Loss notes without a count (`CPU:N [EVENTS DROPPED]`).
    public let lostUnknown: UInt64
    /// Every kvm event, in timestamp order.
    public let events: [TraceEvent]
    public let style: Style
    /// Trace records of any event (kvm or not).
    public let records: Int
    /// Continuation lines joined to the record before them.
    public let joinedLines: Int
    /// Lines that were neither records, comments, loss notes nor continuations (headers like `cpus=20`).
    public let skippedLines: Int
    /// Whether thread group ids were in the trace (else vm = tid).
    public let hasTGIDs: Bool
    /// Whether the records were out of timestamp order (and were sorted).
    public let reordered: Bool
    /// Exit reason spellings no table knows (counted as `UNKNOWN(0x…)` of an unknown ISA).
    public let unknownReasonNames: [String]

    /// Reads and parses a text trace file.
    public convenience init(path: String) throws {
        try self.init(bytes: FileBytes.read(path), name: path)
    }

    /// Parses a text trace held in memory. `name` is used in error messages.
    public init(bytes: [UInt8], name: String) throws {
        guard !bytes.isEmpty else { throw KVMScopeError.badFile("\(name): empty file") }
        var parser = TextTraceParser()
        bytes.withUnsafeBufferPointer { parser.parse($0) }
        guard parser.records > 0 else {
            throw KVMScopeError.badFile(
                "\(name): unknown format (no trace records; expected trace.dat, kernel trace text, trace-cmd report or perf script output)")
        }
        guard !parser.events.isEmpty else {
            throw KVMScopeError.badFile("\(name): no kvm events among its \(parser.records) trace records")
        }
        var events = parser.events
        if parser.unordered {
            // Stable: equal timestamps keep file order.
            events = events.enumerated().sorted { ($0.element.timestamp, $0.offset) < ($1.element.timestamp, $1.offset) }
                .map(\.element)
        }
        self.events = events
        catalog = parser.catalog
        identities = parser.identities()
        lostEvents = parser.lost
        lostUnknown = parser.lostUnknown
        style = parser.sawPerf ? .perf : parser.sawKernelText ? .kernel : .traceCmd
        records = parser.records
        joinedLines = parser.joined
        skippedLines = parser.skipped
        hasTGIDs = parser.sawTGID
        reordered = parser.unordered
        unknownReasonNames = parser.unknownReasons
    }

    /// One stream: the events are already in timestamp order across CPUs.
    public func streams() throws -> [any EventStream] { [ArrayEventStream(events)] }

    /// Events and the trace's loss notes (their CPU is not kept: ``SourceStatistics/unknownCPU``).
    public var statistics: SourceStatistics {
        var s = SourceStatistics(events: UInt64(events.count))
        if lostEvents > 0 || lostUnknown > 0 {
            s.add(LossCounts(flagged: lostEvents, unknownGaps: lostUnknown), cpu: SourceStatistics.unknownCPU)
        }
        return s
    }
}
