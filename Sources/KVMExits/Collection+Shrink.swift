/// Swift's dictionaries, sets and arrays never give memory back when entries are removed: one burst of
/// threads would hold their peak capacity for the rest of a daemon's life. The tables whose size follows the
/// live threads shrink with these in their retirement step (never on a hot path): once fewer than an eighth of
/// the capacity is used, they are rebuilt with room for four times their entries (at least `floor`).

/// The rule every shrinking table follows: shrink once `count` uses less than an eighth of `capacity`, to room
/// for `4 × count` entries (at least `floor`). Returns the room to ask for, nil: keep the table.
func shrunkRoom(count: Int, capacity: Int, floor: Int) -> Int? {
    guard capacity > floor, count * 8 < capacity else { return nil }
    return Swift.max(floor, count * 4)
}

extension Dictionary {
    /// Rebuilt with room for `4 × count` entries (at least `floor`) once it uses less than an eighth of its
    /// capacity. Returns whether it was rebuilt. Cost O(capacity) when it is.
    @discardableResult
    mutating func shrinkIfSparse(floor: Int = 64) -> Bool {
        guard let room = shrunkRoom(count: count, capacity: capacity, floor: floor) else { return false }
        var d = Self(minimumCapacity: room)
        for (k, v) in self { d[k] = v }
        self = d
        return true
    }
}

extension Set {
    /// Rebuilt with room for `4 × count` members (at least `floor`) once it uses less than an eighth of its
    /// capacity. Returns whether it was rebuilt.
    @discardableResult
    mutating func shrinkIfSparse(floor: Int = 64) -> Bool {
        guard let room = shrunkRoom(count: count, capacity: capacity, floor: floor) else { return false }
        var s = Self(minimumCapacity: room)
        for m in self { s.insert(m) }
        self = s
        return true
    }
}

extension Array {
    /// Copied into storage of `4 × count` elements (at least `floor`) once it uses less than an eighth of its
    /// capacity. Returns whether it was copied.
    @discardableResult
    mutating func shrinkIfSparse(floor: Int = 64) -> Bool {
        guard let room = shrunkRoom(count: count, capacity: capacity, floor: floor) else { return false }
        var a: [Element] = []
        a.reserveCapacity(room)
        a.append(contentsOf: self)
        self = a
        return true
    }
}
