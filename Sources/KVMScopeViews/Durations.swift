import KVMAnalysis
import KVMExits
/// Duration text without Foundation: perf-style microseconds, and adaptive units for axes and charts.
public enum Durations {
    /// True while rendering a trace whose timestamps are counter ticks (integer clock values without a
    /// frequency): durations then print as cycles ("2500cyc"), never as nanoseconds they are not.
    @TaskLocal public static var inCycles = false

    /// "12.34us": microseconds with two decimals, like `perf kvm stat report` (cycles: "12340cyc").
    public static func us(_ ns: Double) -> String { inCycles ? "\(Int64(saturating: ns.rounded()))cyc" : fixed2(ns / 1000) + "us" }

    /// "850ns", "12.34us", "5.67ms", "1.23s" (cycles: "2500cyc").
    public static func adaptive(_ ns: UInt64) -> String {
        if inCycles { return "\(ns)cyc" }
        if ns < 1000 { return "\(ns)ns" }
        if ns < 1_000_000 { return fixed2(Double(ns) / 1e3) + "us" }
        if ns < 1_000_000_000 { return fixed2(Double(ns) / 1e6) + "ms" }
        return fixed2(Double(ns) / 1e9) + "s"
    }

    /// Two decimals, rounded half away from zero. Values too large for hundredths in 64 bits (over ±9.2e16,
    /// e.g. the mean latency of a trace whose clock jumps by years) keep Swift's shortest form: "1.5e+17".
    public static func fixed2(_ v: Double) -> String {
        guard let hundredths = Int64(exactly: (v * 100).rounded()) else { return "\(v)" }
        let sign = hundredths < 0 ? "-" : ""
        let a = hundredths.magnitude
        let frac = a % 100
        return "\(sign)\(a / 100)." + (frac < 10 ? "0" : "") + "\(frac)"
    }

    /// "12.34%" of part in whole (two decimals).
    public static func percent(_ part: Double, of whole: Double) -> String {
        whole > 0 ? fixed2(part * 100 / whole) + "%" : "0.00%"
    }
}
