#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// Fixed-size blocks for the storage every new latency series needs (``LatencyHistogram``'s bucket ranges,
/// ``TopRIPs``' slots), carved from large chunks instead of one `malloc` each, and recycled when their owner
/// is freed (a retired series under `serve`), so a thread's first sight costs a lock and a pointer bump, not a
/// `malloc` or `posix_memalign` (with their headers and alignment padding).
///
/// - Chunks: ``chunkBytes`` (8 MiB) of anonymous memory each, faulted in a page at a time as blocks are
///   used. (Transparent huge pages were tried: on this Firecracker guest a 2 MiB fault costs more than the 512
///   small ones, its memory cold in the host.) Freed blocks are reused; the chunks go back to the system when
///   every block has come back (a report's aggregate released before its JSON is built).
/// - Blocks: `blockBytes` each (a multiple of 64, 64-byte aligned), handed out zeroed.
/// - Threads: any thread may allocate and free (one uncontended lock each: cold paths, once per series or range).
final class BlockPool: Sendable {
    /// Bytes of each chunk taken from the system.
    static let chunkBytes = 8 << 20

    /// 512-byte blocks: a histogram's range of 64 bucket counters.
    static let histogramRanges = BlockPool(blockBytes: 64 * MemoryLayout<UInt64>.stride)
    /// 448-byte blocks: the slots of a 16-slot ``TopRIPs`` and its owner line.
    static let topRIPs16 = BlockPool(blockBytes: 64 + 3 * 16 * MemoryLayout<UInt64>.stride)

    /// Addresses (plain integers, so the state is Sendable).
    struct State {
        /// Freed blocks, linked through their first word (0: none).
        var free: UInt = 0
        /// The unused rest of the current chunk.
        var next: UInt = 0
        var end: UInt = 0
        /// Every chunk taken, and the blocks handed out and not freed: when the last one comes back (a report's
        /// aggregate released before its JSON is built), the chunks go back to the system.
        var chunks: [UInt] = []
        var live = 0
    }

    let blockBytes: Int
    let state = Mutex<State>(State())

    init(blockBytes: Int) {
        precondition(blockBytes > 0 && blockBytes % 64 == 0 && blockBytes <= Self.chunkBytes, "block size")
        self.blockBytes = blockBytes
    }

    /// A zeroed block of ``blockBytes``, 64-byte aligned.
    func allocate() -> UnsafeMutableRawPointer {
        let (address, recycled) = state.withLock { st -> (UInt, Bool) in
            if st.free != 0 {
                let f = st.free
                st.free = UnsafeRawPointer(bitPattern: f).unsafelyUnwrapped.load(as: UInt.self)
                st.live += 1
                return (f, true)
            }
            if st.end - st.next < UInt(blockBytes) {
                let chunk = UInt(bitPattern: Self.allocateChunk())
                st.chunks.append(chunk)
                st.next = chunk
                st.end = chunk + UInt(Self.chunkBytes)
            }
            let p = st.next
            st.next = p + UInt(blockBytes)
            st.live += 1
            return (p, false)
        }
        let p = UnsafeMutableRawPointer(bitPattern: address).unsafelyUnwrapped
        // A fresh chunk is zero already (and untouched until its owner writes it); a recycled block is not.
        if recycled { p.initializeMemory(as: UInt8.self, repeating: 0, count: blockBytes) }
        return p
    }

    /// Gives a block back (its contents need not be deinitialized: only trivial values live in blocks).
    func free(_ p: UnsafeMutableRawPointer) {
        let address = UInt(bitPattern: p)
        state.withLock { st in
            st.live -= 1
            if st.live == 0 {
                // Nothing handed out: the chunks go back (memory for whatever comes next, as malloc's would).
                for c in st.chunks { Self.freeChunk(UnsafeMutableRawPointer(bitPattern: c).unsafelyUnwrapped) }
                st = State()
                return
            }
            UnsafeMutableRawPointer(bitPattern: address).unsafelyUnwrapped.storeBytes(of: st.free, as: UInt.self)
            st.free = address
        }
    }

    /// One chunk of zeroed memory: anonymous pages, faulted in as blocks are first written. Out of memory is a
    /// trap, as a failed `malloc` is in Swift.
    static func allocateChunk() -> UnsafeMutableRawPointer {
        #if canImport(Glibc)
        guard let m = mmap(nil, chunkBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              m != MAP_FAILED else { fatalError("kvmscope: out of memory (mmap of \(chunkBytes) bytes)") }
        return m
        #else
        let p = UnsafeMutableRawPointer.allocate(byteCount: chunkBytes, alignment: 64)
        p.initializeMemory(as: UInt8.self, repeating: 0, count: chunkBytes)
        return p
        #endif
    }

    /// Gives back a chunk of ``allocateChunk()``.
    static func freeChunk(_ p: UnsafeMutableRawPointer) {
        #if canImport(Glibc)
        _ = munmap(p, chunkBytes)
        #else
        p.deallocate()
        #endif
    }
}
