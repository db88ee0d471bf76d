/// Events lost on one CPU's stream, by kind (or, for ``SourceStatistics/total``, summed over CPUs).
///
/// The kernel's counters (`overrun`, `dropped events` in `per_cpu/cpuN/stats`) and the sub-buffer headers'
/// missed-events counts describe the same overwritten events from two sides: ``events`` takes the larger.
public struct LossCounts: Sendable, Equatable, Codable {
    /// Events the kernel overwrote before they were read (the CPU's `overrun` counter).
    public var overrun: UInt64 = 0
    /// Events the kernel could not write at all (the CPU's `dropped events` counter).
    public var dropped: UInt64 = 0
    /// Events the sub-buffer headers say were lost just before them (RB_MISSED_STORED counts; a text trace's
    /// `[LOST n EVENTS]` / `[n EVENTS DROPPED]` notes).
    public var flagged: UInt64 = 0
    /// Sub-buffers that did not decode (their events are gone, how many is unknown).
    public var corruptSubbuffers: UInt64 = 0
    /// Places where events were lost without a count (sub-buffers flagged RB_MISSED_EVENTS without a stored
    /// count; a text trace's `[EVENTS DROPPED]`).
    public var unknownGaps: UInt64 = 0
    /// Reads of the CPU's buffer that failed (what was in it then is unknown).
    public var readErrors: UInt64 = 0

    public init(overrun: UInt64 = 0, dropped: UInt64 = 0, flagged: UInt64 = 0, corruptSubbuffers: UInt64 = 0,
                unknownGaps: UInt64 = 0, readErrors: UInt64 = 0) {
        self.overrun = overrun
        self.dropped = dropped
        self.flagged = flagged
        self.corruptSubbuffers = corruptSubbuffers
        self.unknownGaps = unknownGaps
        self.readErrors = readErrors
    }

    /// The kernel's counters of a `per_cpu/cpuN/stats` text (live, or saved in a trace.dat's CPUSTAT
    /// option): `overrun` and `dropped events`; the other kinds are 0.
    public init(kernelStats text: String) {
        self.init()
        for line in text.split(separator: "\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let key = line[..<colon].trimmingSpaces
            let value = UInt64(line[line.index(after: colon)...].trimmingSpaces) ?? 0
            if key == "overrun" { overrun = value } else if key == "dropped events" { dropped = value }
        }
    }

    /// Events lost, counted: the larger of the kernel's counters (`overrun + dropped`) and the flagged count.
    public var events: UInt64 { Swift.max(overrun &+ dropped, flagged) }
    /// Places where an unknown number of events was lost: unknown-size gaps, corrupt sub-buffers, read errors.
    public var unknownPlaces: UInt64 { unknownGaps &+ corruptSubbuffers &+ readErrors }

    public static func + (a: LossCounts, b: LossCounts) -> LossCounts {
        LossCounts(overrun: a.overrun &+ b.overrun, dropped: a.dropped &+ b.dropped, flagged: a.flagged &+ b.flagged,
                   corruptSubbuffers: a.corruptSubbuffers &+ b.corruptSubbuffers,
                   unknownGaps: a.unknownGaps &+ b.unknownGaps, readErrors: a.readErrors &+ b.readErrors)
    }
}

/// What a source counted while it was read: events decoded, and losses per CPU by kind. Every source — live
/// per-CPU readers, trace.dat files, text traces, synthetic pages — fills the same fields, so the JSON, the
/// tables and `/metrics` can show them alike.
public struct SourceStatistics: Sendable, Equatable {
    /// The CPU key of losses whose CPU the source does not say (a text trace's notes).
    public static let unknownCPU = -1

    /// Events decoded (every event the source yielded, before any time window).
    public var events: UInt64 = 0
    /// Losses by host CPU (``unknownCPU`` when not known). A CPU with no loss may be absent.
    public var losses: [Int: LossCounts] = [:]

    public init(events: UInt64 = 0, losses: [Int: LossCounts] = [:]) {
        self.events = events
        self.losses = losses
    }

    /// Every CPU's losses summed, kind by kind.
    public var total: LossCounts { losses.values.reduce(LossCounts(), +) }
    /// Events lost: per CPU the larger of the kernel's counters and the flagged count, summed.
    public var lostEvents: UInt64 { losses.values.reduce(0) { $0 &+ $1.events } }
    /// Places where an unknown number of events was lost, over every CPU (the snapshot's
    /// ``AggregateSnapshot/lostUnknownSubbuffers``).
    public var lostUnknown: UInt64 { losses.values.reduce(0) { $0 &+ $1.unknownPlaces } }
    /// Events lost per CPU (``LossCounts/events``), for `lost_by_cpu`.
    public var lostByCPU: [Int: UInt64] { losses.mapValues(\.events) }

    /// Adds one CPU's losses to what is known of it.
    public mutating func add(_ l: LossCounts, cpu: Int) {
        losses[cpu, default: LossCounts()] = losses[cpu, default: LossCounts()] + l
    }
}

extension Substring {
    var trimmingSpaces: Substring {
        var s = self
        while let c = s.first, c == " " || c == "\t" || c == "\r" { s = s.dropFirst() }
        while let c = s.last, c == " " || c == "\t" || c == "\r" { s = s.dropLast() }
        return s
    }
}
