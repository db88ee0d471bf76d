import KVMExits
import Testing

/// Doubles computed from input (a file's, a VMM's) become integers without trapping.
@Suite struct SaturatingTests {
    @Test func unsigned() {
        #expect(UInt64(saturating: 12.9) == 12)
        #expect(UInt64(saturating: -3) == 0)
        #expect(UInt64(saturating: .nan) == 0)
        #expect(UInt64(saturating: .infinity) == .max)
        #expect(UInt64(saturating: 18_446_744_073_709_551_615.0) == .max)
        #expect(UInt64(saturating: 9_007_199_254_740_992.0) == 9_007_199_254_740_992)
    }

    @Test func signed() {
        #expect(Int64(saturating: -12.9) == -12)
        #expect(Int64(saturating: .nan) == 0)
        #expect(Int64(saturating: -.infinity) == .min)
        #expect(Int64(saturating: 1e19) == .max)
        #expect(Int64(saturating: -1e19) == .min)
    }
}
