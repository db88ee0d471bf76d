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
        var indices: [UInt16] = []
        var left: [UInt64] = []
        var b = 0
        for (a, i) in bucketIndices.enumerated() {
            while b < earlier.bucketIndices.count && earlier.bucketIndices[b] < i { b += 1 }
            let before = b < earlier.bucketIndices.count && earlier.bucketIndices[b] == i ? earlier.counts[b] : 0
            let c = counts[a] >= before ? counts[a] - before : 0
            if c > 0 {
                indices.append(i)
                left.append(c)
            }
        }
        guard let first = indices.first, let last = indices.last else { return HistogramSnapshot() }
        let lo = Swift.max(Self.lowerBound(ofBucket: Int(first)), min)
        let hi = Swift.min(Self.upperBound(ofBucket: Int(last)), max)
        return HistogramSnapshot(indices: indices, counts: left, sum: sum &- earlier.sum, min: Swift.min(lo, hi), max: hi,
                                 sumOfSquares: exactSumOfSquares &- earlier.exactSumOfSquares)
    }
}
