import KVMExits
/// Exits over time, for pictures: per thread × exit reason, the exit count of every time bin and the
/// exit→entry latencies of every (time bin, latency bucket). Offline analysis only (it pairs with a
/// dictionary); the live path never feeds it.
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
    var open: [Int32: (ts: UInt64, key: Key)] = [:]

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

    /// Feeds one event (in timestamp order) with its role in the catalog.
    public mutating func add(_ e: TraceEvent, role: EventRole) {
        if !started {
            started = true
            start = e.timestamp
        }
        guard role == .exit || role == .entry else { return }
        let bin = self.bin(of: e.timestamp)
        switch role {
        case .exit:
            let key = Key(tid: e.tid, isa: e.isa, reason: e.reason)
            exits[key, default: []].grow(to: binCount)
            exits[key]![bin] += 1
            open[e.tid] = (e.timestamp, key)
        case .entry:
            guard let x = open.removeValue(forKey: e.tid), e.timestamp >= x.ts else { return }
            let exitBin = x.ts >= start ? Int((x.ts - start) / binWidth) : 0
            let b = ExitTimeline.latencyBucket(e.timestamp - x.ts)
            latencies[x.key, default: []].grow(to: binCount * Self.latencyBuckets)
            latencies[x.key]![Swift.min(exitBin, binCount - 1) * Self.latencyBuckets + b] += 1
        default:
            break
        }
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
