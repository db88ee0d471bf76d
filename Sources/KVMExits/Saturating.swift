extension UInt64 {
    /// `d` rounded toward zero, clamped to 0 ... `UInt64.max` (NaN: 0). For values computed from input
    /// (a file's, a VMM's QMP answers) that a view prints: a number out of range never traps.
    @inlinable
    public init(saturating d: Double) {
        if !(d > 0) {
            self = 0
        } else if d >= 18_446_744_073_709_551_615.0 {
            self = .max
        } else {
            self = UInt64(d)
        }
    }
}

extension Int64 {
    /// `d` rounded toward zero, clamped to `Int64.min` ... `Int64.max` (NaN: 0).
    @inlinable
    public init(saturating d: Double) {
        if d.isNaN {
            self = 0
        } else if d >= 9_223_372_036_854_775_807.0 {
            self = .max
        } else if d <= -9_223_372_036_854_775_808.0 {
            self = .min
        } else {
            self = Int64(d)
        }
    }
}
