import CKVMHost

/// The C library's free memory, given back to the kernel.
public enum FreeMemory {
    /// glibc's `malloc_trim(0)`: the free pages of every malloc arena go back to the kernel, so a daemon's RSS
    /// follows what it holds now rather than the most it ever held (threads of every arena free blocks that
    /// glibc would otherwise keep for reuse). Costs a walk of the arenas' free lists: call it rarely.
    /// - Returns: whether any memory was released.
    @discardableResult
    public static func release() -> Bool { ckvmscope_release_free_memory() == 1 }
}
