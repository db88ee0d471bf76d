import Synchronization

/// Exit-handling time of one vCPU thread for one exit reason, with the guest RIPs that caused those exits.
public final class LatencySeries: Sendable {
    public let tid: Int32
    public let isa: UInt8
    public let reason: UInt32
    public let histogram = LatencyHistogram()
    public let topRIPs = TopRIPs(capacity: 16)

    public init(tid: Int32, isa: UInt8, reason: UInt32) {
        self.tid = tid
        self.isa = isa
        self.reason = reason
    }
}

/// Counters of the pairing of exits with entries. Written by the pairer only, read by anyone.
public final class PairingCounters: Sendable {
    let pairedCount = Atomic<UInt64>(0)
    let orphanExitCount = Atomic<UInt64>(0)
    let orphanEntryCount = Atomic<UInt64>(0)
    let invalidatedCount = Atomic<UInt64>(0)
    let negativeCount = Atomic<UInt64>(0)
    let overflowCount = Atomic<UInt64>(0)
    let openAtEndCount = Atomic<UInt64>(0)

    public init() {}

    public var snapshot: PairingStats {
        PairingStats(paired: pairedCount.load(ordering: .relaxed),
                     orphanExits: orphanExitCount.load(ordering: .relaxed),
                     orphanEntries: orphanEntryCount.load(ordering: .relaxed),
                     invalidatedByLoss: invalidatedCount.load(ordering: .relaxed),
                     negativeGaps: negativeCount.load(ordering: .relaxed),
                     overflow: overflowCount.load(ordering: .relaxed),
                     openAtEnd: openAtEndCount.load(ordering: .relaxed))
    }
}

/// How exits and entries paired up. Every exit and entry seen is in exactly one of these.
public struct PairingStats: Sendable, Equatable, Codable {
    /// Exit → entry pairs whose latency was recorded.
    public var paired: UInt64 = 0
    /// Exits followed by another exit of the same thread (the entry between them is missing).
    public var orphanExits: UInt64 = 0
    /// Entries with no exit before them (the first entry of a thread, or after a lost exit).
    public var orphanEntries: UInt64 = 0
    /// Pairs dropped because the kernel lost events on one of their CPUs between exit and entry.
    public var invalidatedByLoss: UInt64 = 0
    /// Pairs whose entry is older than their exit (unsynchronized clocks across CPUs).
    public var negativeGaps: UInt64 = 0
    /// Exits and entries the pairer could not keep (0: its tables grow with the threads; kept in the JSON
    /// and `/metrics` so that every exit and entry stays in exactly one of these).
    public var overflow: UInt64 = 0
    /// Exits still waiting for their entry when the trace ended (``Pairer/finish()``): not orphans, the
    /// trace stopped first (or the vCPU thread went to userspace and exited).
    public var openAtEnd: UInt64 = 0

    public init(paired: UInt64 = 0, orphanExits: UInt64 = 0, orphanEntries: UInt64 = 0, invalidatedByLoss: UInt64 = 0,
                negativeGaps: UInt64 = 0, overflow: UInt64 = 0, openAtEnd: UInt64 = 0) {
        self.openAtEnd = openAtEnd
        self.paired = paired
        self.orphanExits = orphanExits
        self.orphanEntries = orphanEntries
        self.invalidatedByLoss = invalidatedByLoss
        self.negativeGaps = negativeGaps
        self.overflow = overflow
    }

    public static func + (a: PairingStats, b: PairingStats) -> PairingStats {
        PairingStats(paired: a.paired + b.paired, orphanExits: a.orphanExits + b.orphanExits,
                     orphanEntries: a.orphanEntries + b.orphanEntries,
                     invalidatedByLoss: a.invalidatedByLoss + b.invalidatedByLoss,
                     negativeGaps: a.negativeGaps + b.negativeGaps, overflow: a.overflow + b.overflow,
                     openAtEnd: a.openAtEnd + b.openAtEnd)
    }
}
