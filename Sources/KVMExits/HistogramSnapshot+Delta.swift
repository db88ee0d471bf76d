extension HistogramSnapshot {
    /// The values recorded after `earlier` was taken: `self` minus `earlier`, bucket by bucket.
    ///
    /// `earlier` must be an older snapshot of the same histogram (or of the same sum of histograms), so that no
    /// bucket goes down; a bucket that would go negative (a snapshot from elsewhere) is taken as 0.
    /// Counts, `sum` and the sum of squares subtract exactly, so the delta's percentiles are those of the values
    /// recorded in between, as exact as any snapshot's. `min` and `max` of the values in between are not
    /// recoverable: the delta's `min` is the lower bound of its first non-empty bucket and its `max` the upper
    /// bound of its last one (clamped to `self.max`), which keeps percentiles inside the right buckets.
    public func subtracting(_ earlier: HistogramSnapshot) -> HistogramSnapshot {
        guard earlier.count > 0 else { return self }
        var counts = bucketCounts
        var first = -1
        var last = -1
        for i in 0..<counts.count {
            let before = earlier.bucketCounts[i]
            counts[i] = counts[i] >= before ? counts[i] - before : 0
            if counts[i] > 0 {
                if first < 0 { first = i }
                last = i
            }
        }
        guard first >= 0 else { return HistogramSnapshot() }
        let lo = Swift.max(Self.lowerBound(ofBucket: first), min)
        let hi = Swift.min(Self.upperBound(ofBucket: last), max)
        return HistogramSnapshot(bucketCounts: counts, sum: sum &- earlier.sum, min: Swift.min(lo, hi), max: hi,
                                 sumOfSquares: exactSumOfSquares &- earlier.exactSumOfSquares)
    }
}
