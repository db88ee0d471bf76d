import KVMExits
/// Exits over time, for pictures: per thread × exit reason, the exit count of every time bin and the
/// exit→entry latencies of every (time bin, latency bucket). Fed by the pairer (``ExitTimelineRecorder`` is
/// its ``PairObserver``): the exits it counts and the pairs it records, so the pictures and the tables agree
/// on every trace, lossy or not (no pair the tables invalidated, no orphan, shows as a latency).
///
/// Bins start ``initialBinWidth`` wide from the first event; whenever the trace outgrows ``maxBins`` bins,
/// neighbouring bins are summed pairwise and the width doubles, so any trace fits in at most `maxBins` bins
/// of a power-of-two multiple of the initial width. A latency lands in the bin of its exit.
public struct ExitTimeline: Sendable {
    /// Latency buckets: 0 is below 256 ns, k ≥ 1 is [2^(k+7), 2^(k+8)) ns, the last one everything from 2^30 ns.
    public static let latencyBuckets = 24
    public static let initialBinWidth: UInt64 = 100_000

    public struct Key: Hashable, Sendable, Comparable {
        public var tid: Int32
        public var isa: UInt8
        public var reason: UInt32
        public init(tid: Int32, isa: UInt8, reason: UInt32) {
            self.tid = tid
            self.isa = isa
            self.reason = reason
        }
        public static func < (a: Key, b: Key) -> Bool { (a.tid, a.isa, a.reason) < (b.tid, b.isa, b.reason) }
    }

    public let maxBins: Int
    /// Timestamp (ns) where bin 0 starts; the first event's.
    public private(set) var start: UInt64 = 0
    public private(set) var binWidth: UInt64 = ExitTimeline.initialBinWidth
    /// Bins in use (the last event's bin + 1).
    public private(set) var binCount = 0
    /// Exits per bin, per key.
    public private(set) var exits: [Key: [UInt32]] = [:]
    /// Paired latencies per key: `binCount × latencyBuckets` counts, bin-major.
    public private(set) var latencies: [Key: [UInt32]] = [:]
    var started = false

    public init(maxBins: Int = 256) {
        precondition(maxBins >= 2 && maxBins % 2 == 0, "maxBins must be even and ≥ 2")
        self.maxBins = maxBins
    }

    /// The latency bucket of a value in ns.
    public static func latencyBucket(_ ns: UInt64) -> Int {
        guard ns >= 256 else { return 0 }
        return Swift.min(latencyBuckets - 1, 63 - ns.leadingZeroBitCount - 7)
    }

    /// The inclusive lower bound of a latency bucket, ns.
    public static func latencyLowerBound(_ bucket: Int) -> UInt64 { bucket == 0 ? 0 : 1 << UInt64(bucket + 7) }

    /// Sets where bin 0 starts (the first event's timestamp), unless an event already did.
    public mutating func begin(at ts: UInt64) {
        if !started {
            started = true
            start = ts
        }
    }

    /// Counts an exit in its bin (exits in timestamp order).
    public mutating func exit(_ key: Key, at ts: UInt64) {
        begin(at: ts)
        let bin = self.bin(of: ts)
        exits[key, default: []].grow(to: binCount)
        exits[key]![bin] += 1
    }

    /// Counts a recorded pair's latency in the bin of its exit (the entry's time extends the bins).
    public mutating func pair(_ key: Key, exitAt ts: UInt64, latency: UInt64) {
        begin(at: ts)
        _ = bin(of: ts &+ latency)
        let exitBin = ts >= start ? Int((ts - start) / binWidth) : 0
        let b = ExitTimeline.latencyBucket(latency)
        latencies[key, default: []].grow(to: binCount * Self.latencyBuckets)
        latencies[key]![Swift.min(exitBin, binCount - 1) * Self.latencyBuckets + b] += 1
    }

    /// Feeds one event (in timestamp order) with its role in the catalog: starts the bins, counts exits.
    /// Latencies come only from a pairer (``pair(_:exitAt:latency:)``); entries are ignored here.
    public mutating func add(_ e: TraceEvent, role: EventRole) {
        begin(at: e.timestamp)
        if role == .exit { exit(Key(tid: e.tid, isa: e.isa, reason: e.reason), at: e.timestamp) }
    }

    /// The bin of a timestamp, coalescing bins while it lies beyond the last one.
    mutating func bin(of ts: UInt64) -> Int {
        let offset = ts >= start ? ts - start : 0
        while offset / binWidth >= UInt64(maxBins) { coalesce() }
        let b = Int(offset / binWidth)
        if b >= binCount { binCount = b + 1 }
        return b
    }

    mutating func coalesce() {
        binWidth *= 2
        let lb = Self.latencyBuckets
        for k in exits.keys {
            let old = exits[k]!
            var new = [UInt32](repeating: 0, count: (old.count + 1) / 2)
            for (i, c) in old.enumerated() { new[i / 2] += c }
            exits[k] = new
        }
        for k in latencies.keys {
            let old = latencies[k]!
            let bins = old.count / lb
            var new = [UInt32](repeating: 0, count: (bins + 1) / 2 * lb)
            for i in 0..<old.count { new[(i / lb) / 2 * lb + i % lb] += old[i] }
            latencies[k] = new
        }
        binCount = (binCount + 1) / 2
        // Pending exits keep their timestamps; their bin is recomputed at entry.
    }

    /// Exit counts of a key, `binCount` long.
    public func exitCounts(_ key: Key) -> [UInt32] {
        var a = exits[key] ?? []
        a.grow(to: binCount)
        return a
    }

    /// Latency counts of a key, `binCount × latencyBuckets` long, bin-major.
    public func latencyCounts(_ key: Key) -> [UInt32] {
        var a = latencies[key] ?? []
        a.grow(to: binCount * Self.latencyBuckets)
        return a
    }
}

extension Array where Element == UInt32 {
    mutating func grow(to n: Int) {
        if count < n { append(contentsOf: repeatElement(0, count: n - count)) }
    }
}

/// The pairer's observer that builds an ``ExitTimeline``: set it on ``ExitPipeline`` (or a ``Pairer``), read
/// ``timeline`` after the run.
public final class ExitTimelineRecorder: PairObserver {
    public private(set) var timeline: ExitTimeline

    public init(maxBins: Int = 256) { timeline = ExitTimeline(maxBins: maxBins) }

    public func start(at timestamp: UInt64) { timeline.begin(at: timestamp) }

    public func exit(tid: Int32, isa: UInt8, reason: UInt32, at timestamp: UInt64) {
        timeline.exit(ExitTimeline.Key(tid: tid, isa: isa, reason: reason), at: timestamp)
    }

    public func pair(tid: Int32, isa: UInt8, reason: UInt32, exitAt timestamp: UInt64, latency: UInt64) {
        timeline.pair(ExitTimeline.Key(tid: tid, isa: isa, reason: reason), exitAt: timestamp, latency: latency)
    }
}
