import Foundation

/// A value several threads read and write under a lock.
public final class Locked<T>: @unchecked Sendable {
    private var value: T
    private let lock = NSLock()
    public init(_ v: T) { value = v }
    public func get() -> T { lock.withLock { value } }
    public func set(_ v: T) { lock.withLock { value = v } }
    public func update<R>(_ body: (inout T) -> R) -> R { lock.withLock { body(&value) } }
}

/// Runs each body on its own OS thread, all at once, and returns their results in order; a body still
/// running after `timeout` seconds stops the test run.
///
/// Not tasks: Swift concurrency's pool has as many threads as cores (two here), and a body that spins
/// until another body has run would wait forever if the other never got a thread of that pool.
public func onThreads<T: Sendable>(_ bodies: [@Sendable () -> T], timeout: Double = 600) -> [T] {
    let results = Locked([T?](repeating: nil, count: bodies.count))
    let group = DispatchGroup()
    for (i, body) in bodies.enumerated() {
        group.enter()
        Thread {
            let r = body()
            results.update { $0[i] = r }
            group.leave()
        }.start()
    }
    // A deadlock here fails the run at once instead of holding CI until its time runs out.
    precondition(group.wait(timeout: .now() + timeout) == .success, "onThreads: a body did not finish within \(timeout) s")
    return results.get().map { $0! }
}
