import Synchronization

extension Atomic where Value == UInt64 {
    /// Adds `n` to a counter that only the calling thread ever writes (the single writer of a shard, of a
    /// histogram, of the pairer's counters): a relaxed load and a relaxed store, not a locked
    /// read-modify-write. Readers on other threads still load whole values, each at least as new as the
    /// last one they saw; the writer never races itself, so no increment is lost.
    @inlinable @inline(__always)
    public func singleWriterAdd(_ n: UInt64) {
        store(load(ordering: .relaxed) &+ n, ordering: .relaxed)
    }
}
