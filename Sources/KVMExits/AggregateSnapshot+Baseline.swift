/// Counting from a baseline: the live view's `r` (reset) keeps the snapshot taken at the reset and
/// shows every later snapshot minus it, so the aggregator itself is never written by a reader.
extension AggregateSnapshot {
    /// This snapshot minus `base` (taken earlier from the same aggregator): counters, totals, losses and
    /// pairing counts exactly; latency histograms bucket by bucket (min and max then come from the
    /// remaining buckets' bounds); top RIPs by count. A thread of `base` retired since counts in its VM × vCPU's
    /// retired row here (or in `other`): its part of `base` is subtracted from that row
    /// (``movingRetired(into:)``).
    public func subtracting(_ base: AggregateSnapshot) -> AggregateSnapshot {
        let base = base.movingRetired(into: self)
        var out = self
        out.eventTotals = eventTotals.indices.map { i in
            eventTotals[i] &- (i < base.eventTotals.count ? base.eventTotals[i] : 0)
        }
        var before: [CounterKey: UInt64] = [:]
        for row in base.counters { before[row.key] = row.count }
        out.counters = counters.compactMap { row in
            // Saturating, as the histograms' buckets: a key whose thread is not the baseline's (a tid reused by
            // the same VM × vCPU after a retirement) shows what it counted since, at most.
            let n = row.count - Swift.min(row.count, before[row.key] ?? 0)
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

extension AggregateSnapshot {
    /// This snapshot with the rows of its threads that `later` (a later snapshot of the same aggregator) no
    /// longer holds as live threads — retired since, their counts now in their VM × vCPU's retired row, or in
    /// `other` once their VM was folded — put under that row's tid in `later`, summed with what the row held
    /// here; so do retired rows of VMs folded into `other` since. A thread still live in `later` (same VM, or
    /// named since) keeps its rows; a thread whose row `later` does not have keeps its own (nothing there to
    /// subtract it from).
    func movingRetired(into later: AggregateSnapshot) -> AggregateSnapshot {
        struct Row: Hashable { var vm: Int32; var vcpu: UInt32? }
        var rows: [Row: Int32] = [:]
        for (tid, id) in later.threads where tid < 0 { rows[Row(vm: id.vm, vcpu: id.vcpu)] = tid }
        guard !rows.isEmpty else { return self }
        let other = later.threads[RetiredTotals.otherTid] != nil ? RetiredTotals.otherTid : nil
        var moved: [Int32: Int32] = [:]
        for (tid, id) in threads {
            if tid < 0 {
                // A retired row gone since: its VM folded into `other`.
                if later.threads[tid] == nil, let other, tid != other { moved[tid] = other }
                continue
            }
            // Live in both: the same VM, or a thread named since (its provisional VM was its tid).
            if let now = later.threads[tid], now.vm == id.vm || id.vm == tid { continue }
            if let row = rows[Row(vm: id.vm, vcpu: id.vcpu)] ?? (id.vm == tid ? nil : other) { moved[tid] = row }
        }
        guard !moved.isEmpty else { return self }
        var out = self
        var counts: [CounterKey: UInt64] = [:]
        var order: [CounterKey] = []
        for row in counters {
            var key = row.key
            if let to = moved[key.tid] { key.tid = to }
            if counts[key] == nil { order.append(key) }
            counts[key, default: 0] &+= row.count
        }
        out.counters = order.map { CounterRow(key: $0, count: counts[$0]!) }
        struct SeriesKey: Hashable { var tid: Int32; var isa: UInt8; var reason: UInt32 }
        var merged: [SeriesKey: Int] = [:]
        out.series = []
        for var s in series {
            if let to = moved[s.tid] { s.tid = to }
            let key = SeriesKey(tid: s.tid, isa: s.isa, reason: s.reason)
            if let i = merged[key] {
                out.series[i].histogram.merge(s.histogram)
                out.series[i].topRIPs = TopRIPs.merge(out.series[i].topRIPs, s.topRIPs, limit: 16)
            } else {
                merged[key] = out.series.count
                out.series.append(s)
            }
        }
        for (tid, to) in moved {
            out.threads[tid] = nil
            if out.threads[to] == nil { out.threads[to] = later.threads[to] }
        }
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
