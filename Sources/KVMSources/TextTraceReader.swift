import KVMExits

/// A text trace as a ``TraceSource``: the kernel's own text (`/sys/kernel/tracing/trace`, `trace_pipe`),
/// `trace-cmd report` output (libtraceevent's kvm plugin) and `perf script` output.
///
/// The whole file is parsed once, in `init`, from bytes (no regular expressions, no String per event): every
/// `kvm_*` event becomes a ``TraceEvent`` (48 bytes each, kept in memory), other events are counted and
/// dropped. Lines split by mail clients are joined back when every word of the continuation is something a
/// record's fields hold (numbers, `key=value`, names): prose between pasted records is skipped and counted,
/// never glued on. CRLF endings are accepted. The README's table lists every mode read.
///
/// Thread identity: the VM is the thread group id when the trace has it (the kernel's `record-tgid` column
/// `(  1234)`, perf's `pid/tid`); otherwise each thread is its own VM (vm = tid), named after its comm. Records
/// without a tid (perf script -F without `tid`) are told apart by comm, else by CPU, under negative ids.
/// The vCPU number comes from a "CPU N/KVM" comm, else from the first kvm_exit/kvm_entry `vcpu` field.
public final class TextTraceReader: TraceSource {
    /// Which program (and mode) wrote the text (informational; one parser reads them all).
    public enum Style: String, Sendable {
        case kernel = "kernel trace text"
        case traceCmd = "trace-cmd report"
        case traceCmdRaw = "trace-cmd report -R"
        case traceCmdLatency = "trace-cmd report -l"
        case perf = "perf script"
    }

    /// The unit of ``TraceEvent/timestamp`` in ``events``.
    public enum TimestampUnit: String, Sendable {
        /// Seconds with a fraction in the text, or counter values converted with the given frequency.
        case nanoseconds = "ns"
        /// Integer counter values (`-C x86-tsc`, `counter`, `global` …) without a frequency: ticks.
        case counterTicks = "cycles"
    }

    /// What kvmscope reads, said when a file is none of it.
    public static let expected = "trace.dat, kernel trace text (COMM-TID [CPU] SECONDS: EVENT: FIELDS), "
        + "trace-cmd report (also -R, -l) or perf script (COMM TID [CPU] SECONDS: EVENT: FIELDS, any -F)"

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
    /// Continuation lines joined to the record before them (a mail client broke the line).
    public let joinedLines: Int
    /// Callchain lines (perf script -g, perf kvm stat record: `ADDRESS SYMBOL (DSO)` under a sample), skipped.
    public let callchainLines: Int
    /// Lines that were neither records, loss notes nor continuations (comments, headers like `cpus=20`, prose).
    public let skippedLines: Int
    /// Of ``skippedLines``, those that were not comments: prose between pasted records, headers.
    public let proseLines: Int
    /// Record lines skipped because a number in them does not fit (never wrapped), by event name.
    public let malformedLines: [String: Int]
    /// The first such line: its number (1-based) and what was out of range.
    public let firstMalformed: (line: Int, why: String)?
    /// Whether thread group ids were in the trace (else vm = tid).
    public let hasTGIDs: Bool
    /// Whether some records had no thread id (perf script without `tid`): threads are then told apart by
    /// comm (or CPU), under negative ids.
    public let missingThreadIDs: Bool
    /// Whether some records had no CPU column (perf script without `cpu`, `-F` field sets).
    public let missingCPUs: Bool
    /// Whether the records were out of timestamp order (and were sorted).
    public let reordered: Bool
    /// Exit reason spellings no table knows (kept as spelled, ISA unknown).
    public let unknownReasonNames: [String]
    public let timestampUnit: TimestampUnit

    /// Reads and parses a text trace file.
    /// - Parameter counterHz: ticks per second of integer counter timestamps (trace-cmd's `--ts2secs`);
    ///   nil leaves them as ticks (``timestampUnit`` `.counterTicks`).
    public convenience init(path: String, counterHz: UInt64? = nil) throws {
        try self.init(bytes: FileBytes.read(path), name: path, counterHz: counterHz)
    }

    /// Parses a text trace held in memory. `name` is used in error messages.
    public init(bytes: [UInt8], name: String, counterHz: UInt64? = nil) throws {
        guard !bytes.isEmpty else { throw KVMScopeError.badFile("\(name): empty file") }
        var parser = TextTraceParser()
        parser.counterHz = counterHz
        bytes.withUnsafeBufferPointer { b in
            // A UTF-8 byte order mark (a file saved by a Windows editor) is not part of the first line's comm.
            let bom = b.count >= 3 && b[0] == 0xEF && b[1] == 0xBB && b[2] == 0xBF ? 3 : 0
            parser.parse(UnsafeBufferPointer(rebasing: b[bom...]))
        }
        guard parser.records > 0 || parser.malformed > 0 else {
            var why = "\(name): unknown format (no trace records; looked for \(Self.expected))"
            if let (line, text) = parser.firstUnreadable {
                why += "; line \(line) is not one: \"\(Self.truncated(text))\""
            }
            throw KVMScopeError.badFile(why)
        }
        guard !parser.events.isEmpty else {
            var why = "\(name): no kvm events among its \(parser.records) trace records"
            if let m = parser.firstMalformed {
                why += "; " + Self.malformedText(parser.malformedByEvent, first: m)
            }
            throw KVMScopeError.badFile(why)
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
        style = parser.sawPerf ? .perf : parser.sawLatency ? .traceCmdLatency : parser.sawKernelText ? .kernel
            : parser.sawRaw ? .traceCmdRaw : .traceCmd
        records = parser.records
        joinedLines = parser.joined
        callchainLines = parser.callchain
        skippedLines = parser.skipped
        proseLines = parser.prose
        malformedLines = parser.malformedByEvent
        firstMalformed = parser.firstMalformed
        hasTGIDs = parser.sawTGID
        missingThreadIDs = parser.missingTID
        missingCPUs = parser.missingCPU
        reordered = parser.unordered
        unknownReasonNames = parser.unknownReasons
        timestampUnit = parser.sawCounter && counterHz == nil ? .counterTicks : .nanoseconds
    }

    /// At most 60 characters of a line, for error messages.
    static func truncated(_ text: String) -> String {
        text.count > 60 ? String(text.prefix(60)) + "…" : text
    }

    /// The one-line warning for skipped lines with out-of-range numbers, or nil when there were none.
    public var malformedWarning: String? {
        firstMalformed.map { Self.malformedText(malformedLines, first: $0) }
    }

    static func malformedText(_ byEvent: [String: Int], first m: (line: Int, why: String)) -> String {
        let n = byEvent.values.reduce(0, +)
        let which = byEvent.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }.joined(separator: ", ")
        return "\(n) lines with out-of-range numbers skipped (\(which)); first: line \(m.line), \(m.why)"
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
