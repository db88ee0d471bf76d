import CKVMHost

/// The C library's free memory, given back to the kernel.
public enum FreeMemory {
    /// glibc's `malloc_trim(0)`: the free pages of every malloc arena go back to the kernel, so a daemon's RSS
    /// follows what it holds now rather than the most it ever held (threads of every arena free blocks that
    /// glibc would otherwise keep for reuse). Costs a walk of the arenas' free lists: call it rarely.
    /// - Returns: whether any memory was released.
    @discardableResult
    public static func release() -> Bool { ckvmscope_release_free_memory() == 1 }

    /// Blocks of at least this many bytes get their own mapping under ``followLiveMemory()``.
    public static let blockThreshold: Int32 = 128 * 1024

    /// For a daemon whose tables grow and shrink with bursts of threads (glibc's `mallopt`): blocks of
    /// ``blockThreshold`` bytes or more (tables, snapshots, a backlog's buffers) get their own mapping, unmapped
    /// when freed, and the heap's free top beyond that goes back to the kernel when freed (`M_MMAP_THRESHOLD`,
    /// `M_TRIM_THRESHOLD`; left to itself glibc raises both each time a large block is freed, up to 32 and
    /// 64 MiB, after which a burst's freed tables stay resident); and every thread allocates from one heap
    /// (`M_ARENA_MAX` 1), which ``release()`` trims whole: with an arena per thread, each kept free pages around
    /// its few blocks still live (serve churning 1,000,000 threads settled 4.8 MiB above its RSS after 10,000
    /// with six arenas, 0.3 MiB with one). The hot paths allocate nothing, so they do not contend for it.
    /// Call once, on the main thread, before other threads allocate.
    /// - Returns: whether every setting was taken.
    @discardableResult
    public static func followLiveMemory() -> Bool { ckvmscope_malloc_for_daemon(blockThreshold) == 1 }
}
