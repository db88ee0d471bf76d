import KVMExits
/// A small hash table keyed by byte strings, looked up straight from a buffer slice: no String and no
/// allocation on a hit. The text reader uses it to map event names and reason names it has seen before.
struct ByteKeyTable<Value> {
    struct Slot {
        var hash: UInt64
        var key: [UInt8]
        var value: Value
    }

    private var slots: [Slot?] = Array(repeating: nil, count: 64)
    private(set) var count = 0

    /// FNV-1a over the bytes.
    @inline(__always)
    static func hash(_ p: UnsafeBufferPointer<UInt8>, _ start: Int, _ end: Int) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        var i = start
        while i < end {
            h = (h ^ UInt64(p[i])) &* 0x100_0000_01b3
            i += 1
        }
        return h
    }

    @inline(__always)
    static func equal(_ key: [UInt8], _ p: UnsafeBufferPointer<UInt8>, _ start: Int, _ end: Int) -> Bool {
        guard key.count == end - start else { return false }
        var i = 0
        while i < key.count {
            if key[i] != p[start + i] { return false }
            i += 1
        }
        return true
    }

    func find(_ p: UnsafeBufferPointer<UInt8>, _ start: Int, _ end: Int) -> Value? {
        let h = Self.hash(p, start, end)
        let mask = slots.count - 1
        var i = Int(truncatingIfNeeded: h) & mask
        while let s = slots[i] {
            if s.hash == h && Self.equal(s.key, p, start, end) { return s.value }
            i = (i + 1) & mask
        }
        return nil
    }

    mutating func insert(_ p: UnsafeBufferPointer<UInt8>, _ start: Int, _ end: Int, _ value: Value) {
        if (count + 1) * 2 > slots.count { grow() }
        let h = Self.hash(p, start, end)
        let mask = slots.count - 1
        var i = Int(truncatingIfNeeded: h) & mask
        while slots[i] != nil { i = (i + 1) & mask }
        slots[i] = Slot(hash: h, key: Array(p[start..<end]), value: value)
        count += 1
    }

    private mutating func grow() {
        let old = slots
        slots = Array(repeating: nil, count: old.count * 2)
        let mask = slots.count - 1
        for s in old.compactMap({ $0 }) {
            var i = Int(truncatingIfNeeded: s.hash) & mask
            while slots[i] != nil { i = (i + 1) & mask }
            slots[i] = s
        }
    }
}
