/// Counting from a baseline: the live view's `r` (reset) keeps the snapshot taken at the reset and
/// shows every later snapshot minus it, so the aggregator itself is never written by a reader.
extension AggregateSnapshot {
    /// This snapshot minus `base` (taken earlier from the same aggregator): counters, totals, losses and
    /// pairing counts exactly; latency histograms bucket by bucket (min and max then come from the
    /// remaining buckets' bounds); top RIPs by count.
    public func subtracting(_ base: AggregateSnapshot) -> AggregateSnapshot {
        var out = self
        out.eventTotals = eventTotals.indices.map { i in
            eventTotals[i] &- (i < base.eventTotals.count ? base.eventTotals[i] : 0)
        }
        var before: [CounterKey: UInt64] = [:]
        for row in base.counters { before[row.key] = row.count }
        out.counters = counters.compactMap { row in
            let n = row.count &- (before[row.key] ?? 0)
            return n == 0 ? nil : CounterRow(key: row.key, count: n)
        }
        struct SeriesKey: Hashable { var tid: Int32; var isa: UInt8; var reason: UInt32 }
        var baseSeries: [SeriesKey: SeriesSnapshot] = [:]
        for s in base.series { baseSeries[SeriesKey(tid: s.tid, isa: s.isa, reason: s.reason)] = s }
        out.series = series.map { s in
            guard let b = baseSeries[SeriesKey(tid: s.tid, isa: s.isa, reason: s.reason)] else { return s }
            var r = s
            r.histogram = s.histogram.subtracting(b.histogram)
            r.topRIPs = TopRIPs.subtract(s.topRIPs, b.topRIPs)
            return r
        }
        out.lostEvents = lostEvents &- base.lostEvents
        out.lostUnknownSubbuffers = lostUnknownSubbuffers &- base.lostUnknownSubbuffers
        out.corruptSubbuffers = corruptSubbuffers &- base.corruptSubbuffers
        out.readErrors = readErrors &- base.readErrors
        out.overflowEvents = overflowEvents &- base.overflowEvents
        out.pairing = PairingStats(paired: pairing.paired &- base.pairing.paired,
                                   orphanExits: pairing.orphanExits &- base.pairing.orphanExits,
                                   orphanEntries: pairing.orphanEntries &- base.pairing.orphanEntries,
                                   invalidatedByLoss: pairing.invalidatedByLoss &- base.pairing.invalidatedByLoss,
                                   negativeGaps: pairing.negativeGaps &- base.pairing.negativeGaps,
                                   overflow: pairing.overflow &- base.pairing.overflow,
                                   openAtEnd: pairing.openAtEnd &- base.pairing.openAtEnd)
        return out
    }
}

// HistogramSnapshot.subtracting(_:) is in HistogramSnapshot+Delta.swift.

extension TopRIPs {
    /// Counts of `now` minus those of `base`, dropping RIPs that did not recur, most frequent first.
    public static func subtract(_ now: [RIPCount], _ base: [RIPCount]) -> [RIPCount] {
        var before: [UInt64: UInt64] = [:]
        for r in base { before[r.rip] = r.count }
        return now.compactMap { r in
            let n = r.count &- Swift.min(r.count, before[r.rip] ?? 0)
            return n == 0 ? nil : RIPCount(rip: r.rip, count: n, error: r.error)
        }.sorted { ($0.count, $1.rip) > ($1.count, $0.rip) }
    }
}
