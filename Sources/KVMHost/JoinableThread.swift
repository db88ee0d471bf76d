import Glibc
import Synchronization
import SystemPackage

/// A thread that can be joined: `join()` blocks until its body returned (pthread_join), so an owner that
/// stops its threads knows they are done without polling. Foundation's `Thread` cannot be joined.
public final class JoinableThread: @unchecked Sendable {
    private final class Box {
        let name: String
        let body: () -> Void
        init(_ name: String, _ body: @escaping () -> Void) {
            self.name = name
            self.body = body
        }
    }

    private let thread: pthread_t
    private let joined = Mutex<Bool>(false)

    /// Starts `body` on a new thread named `name` (at most 15 bytes are kept, the kernel's limit).
    /// - Throws: ``JoinableThreadError`` when pthread_create fails (the system's thread limit).
    public init(name: String, _ body: @escaping @Sendable () -> Void) throws {
        let box = Unmanaged.passRetained(Box(name, body))
        var t = pthread_t()
        let rc = pthread_create(&t, nil, { raw in
            let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
            JoinableThread.nameCurrentThread(box.name)
            box.body()
            return nil
        }, box.toOpaque())
        guard rc == 0 else {
            box.release()
            throw JoinableThreadError(code: rc)
        }
        thread = t
    }

    /// Names the calling thread (its comm, as top and ps -L show it): pthread_setname_np is not visible to
    /// Swift without _GNU_SOURCE, and this is what it does.
    static func nameCurrentThread(_ name: String) {
        let fd = open("/proc/thread-self/comm", O_WRONLY)
        guard fd >= 0 else { return }
        let bytes = Array(name.utf8.prefix(15))
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
    }

    /// Waits for the body to return. Idempotent; a second caller waits for the first join to end. Called from
    /// the thread itself (its body dropped the last reference to what owns it), the thread is detached instead:
    /// it ends when its body returns.
    public func join() {
        joined.withLock { done in
            guard !done else { return }
            done = true
            if pthread_equal(thread, pthread_self()) != 0 {
                pthread_detach(thread)
            } else {
                pthread_join(thread, nil)
            }
        }
    }

    deinit { join() }
}

/// pthread_create failed (EAGAIN: the system's thread limit).
public struct JoinableThreadError: Error, CustomStringConvertible {
    public let code: Int32
    public var description: String { "cannot start a thread: \(Errno(rawValue: code))" }
}
