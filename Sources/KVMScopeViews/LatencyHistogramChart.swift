import KVMAnalysis
import KVMExits

/// A terminal histogram of a latency distribution: one row per power-of-two range of nanoseconds (log
/// buckets), a bar of █ (with eighth blocks) scaled to the fullest row, the count and its share.
public enum LatencyHistogramChart {
    static let eighths = ["", "▏", "▎", "▍", "▌", "▋", "▊", "▉"]

    /// Counts per octave: index k holds values in [2^k, 2^(k+1)) ns (k = 0 also holds 0).
    public static func octaves(_ h: HistogramSnapshot) -> [UInt64] {
        var out = [UInt64](repeating: 0, count: 64)
        for (i, c) in zip(h.bucketIndices, h.counts) {
            let lo = HistogramSnapshot.lowerBound(ofBucket: Int(i))
            out[lo == 0 ? 0 : 63 - lo.leadingZeroBitCount] += c
        }
        return out
    }

    public static func render(_ h: HistogramSnapshot, title: String, width: Int = 40) -> [String] {
        var lines = [title]
        guard h.count > 0 else {
            lines.append("  no paired exits: no latencies")
            return lines
        }
        let counts = octaves(h)
        let first = counts.firstIndex { $0 > 0 }!
        let last = counts.lastIndex { $0 > 0 }!
        let fullest = counts.max()!
        for k in first...last {
            let lo: UInt64 = k == 0 ? 0 : 1 << UInt64(k)
            let hi: UInt64 = k == 63 ? .max : (1 << UInt64(k + 1))
            let c = counts[k]
            let units = Int((Double(c) / Double(fullest) * Double(width * 8)).rounded())
            let bar = String(repeating: "█", count: units / 8) + eighths[units % 8]
            lines.append(StatTable.lpad(Durations.adaptive(lo), 9) + " - " + StatTable.lpad(Durations.adaptive(hi), 9)
                         + " │" + bar + String(repeating: " ", count: max(0, width - bar.count)) + " "
                         + StatTable.lpad(String(c), 8) + StatTable.lpad(Durations.percent(Double(c), of: Double(h.count)), 9))
        }
        lines.append("  \(h.count) exits; min \(Durations.us(Double(h.min))), p50 \(Durations.us(Double(h.percentile(50)))), "
                     + "p99 \(Durations.us(Double(h.percentile(99)))), max \(Durations.us(Double(h.max)))")
        return lines
    }
}
