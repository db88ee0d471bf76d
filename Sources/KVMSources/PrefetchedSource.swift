import Foundation
import KVMExits
import KVMHost

/// A source whose per-CPU streams are decoded ahead of the merge on worker threads, so that `report` uses the
/// cores it has: the workers decode (walk sub-buffers, decompress, convert timestamps) while the calling
/// thread merges, pairs and aggregates. Events, order, statistics and errors are exactly the base source's.
///
/// Each stream keeps at most ``depth`` batches of about ``batchEvents`` events decoded ahead, or more when
/// `aheadEvents` asks for it (memory: streams × depth × batchEvents × 48 bytes, ~6 MiB for 16 CPUs; `aheadEvents`
/// × 48 bytes when that is more). A stream's error is thrown by its `next` at the point where the base stream
/// threw it.
public struct PrefetchedSource: TraceSource {
    public let base: any TraceSource
    /// Worker threads (at least 1).
    public let workers: Int
    /// Events the streams may hold decoded ahead, all together (at least ``depth`` batches a stream).
    public let aheadEvents: Int
    public static let depth = 4
    public static let batchEvents = 8192

    /// - Parameters:
    ///   - workers: decode threads; the default leaves one core for the merge.
    ///   - aheadEvents: events decoded ahead of the reader, all streams together: as many as the reader takes
    ///     at once (``ExitPipeline``'s windows with many threads, ``ThreadGrouping/Policy/maxWindowEvents``), so
    ///     that the workers decode the next window while the reader feeds this one. 0: ``depth`` batches a stream.
    public init(_ base: any TraceSource, workers: Int = max(1, ProcessInfo.processInfo.activeProcessorCount - 1),
                aheadEvents: Int = 0) {
        self.base = base
        self.workers = max(1, workers)
        self.aheadEvents = max(0, aheadEvents)
    }

    /// Batches each of `streams` streams may hold decoded ahead: ``depth``, or `aheadEvents` shared out when more.
    public static func depth(streams: Int, aheadEvents: Int) -> Int {
        Swift.max(depth, aheadEvents / (Swift.max(1, streams) * batchEvents))
    }

    /// Whether prefetching can pay here: more than one core.
    public static var pays: Bool { ProcessInfo.processInfo.activeProcessorCount > 1 }

    public var catalog: EventCatalog { base.catalog }
    public var identities: [Int32: ThreadIdentity] { base.identities }
    /// The base source's: complete once every stream was read to its end (the workers have then joined).
    public var statistics: SourceStatistics { base.statistics }

    /// - Throws: what the base source's `streams()` throws; ``JoinableThreadError`` when no thread can start.
    public func streams() throws -> [any EventStream] {
        let streams = try base.streams()
        let state = PrefetchState(streams, depth: Self.depth(streams: streams.count, aheadEvents: aheadEvents))
        do {
            try state.start(workers: min(workers, state.slots.count))
        } catch {
            for i in state.slots.indices { state.abandon(i) }
            throw error
        }
        return state.slots.indices.map { PrefetchedStream(state, $0) }
    }
}

/// The shared state of one `streams()` call: a slot per base stream, guarded by one condition.
final class PrefetchState: @unchecked Sendable {
    final class Slot {
        let stream: any EventStream
        /// Decoded batches not yet taken, oldest first.
        var ready: [[TraceEvent]] = []
        /// Emptied batches handed back by the reader (capacity kept).
        var spare: [[TraceEvent]] = []
        /// A worker is decoding this stream now.
        var busy = false
        /// The base stream returned false or threw (`error`).
        var ended = false
        var error: (any Error)?
        /// Its reader went away before the end.
        var abandoned = false
        init(_ stream: any EventStream) { self.stream = stream }
    }

    let slots: [Slot]
    let condition = NSCondition()
    var threads: [JoinableThread] = []
    var live: Int

    /// Batches a stream may hold decoded ahead.
    let depth: Int

    init(_ streams: [any EventStream], depth: Int = PrefetchedSource.depth) {
        slots = streams.map(Slot.init)
        live = streams.count
        self.depth = depth
    }

    func start(workers: Int) throws {
        for i in 0..<workers {
            threads.append(try JoinableThread(name: "kvmscope-dec\(i)") { [self] in work() })
        }
    }

    /// A worker: decodes the stream with the fewest batches ready, until every stream ended or was abandoned.
    func work() {
        var scratch: [TraceEvent] = []
        condition.lock()
        while true {
            var pick = -1
            var done = true
            for (i, s) in slots.enumerated() where !s.ended && !s.abandoned {
                done = false
                if !s.busy && s.ready.count < depth && (pick < 0 || s.ready.count < slots[pick].ready.count) {
                    pick = i
                }
            }
            if done { break }
            guard pick >= 0 else {
                condition.wait()
                continue
            }
            let slot = slots[pick]
            slot.busy = true
            var batch = slot.spare.popLast() ?? []
            condition.unlock()
            batch.removeAll(keepingCapacity: true)
            var ended = false
            var failure: (any Error)?
            do {
                while batch.count < PrefetchedSource.batchEvents {
                    guard try slot.stream.next(&scratch) else {
                        ended = true
                        break
                    }
                    batch.append(contentsOf: scratch)
                }
            } catch {
                failure = error
                ended = true
            }
            condition.lock()
            slot.busy = false
            if !batch.isEmpty { slot.ready.append(batch) }
            if ended {
                slot.ended = true
                slot.error = failure
            }
            condition.broadcast()
        }
        condition.unlock()
    }

    /// The reader's side: the next batch of slot `i` into `batch` (its old array becomes a spare).
    func next(_ i: Int, _ batch: inout [TraceEvent]) throws -> Bool {
        condition.lock()
        defer { condition.unlock() }
        let slot = slots[i]
        while slot.ready.isEmpty && !slot.ended { condition.wait() }
        if !slot.ready.isEmpty {
            var taken = slot.ready.removeFirst()
            swap(&taken, &batch)
            slot.spare.append(taken)
            condition.broadcast()
            return true
        }
        batch.removeAll(keepingCapacity: true)
        if let e = slot.error {
            slot.error = nil
            throw e
        }
        return false
    }

    /// A reader went away: its stream is no longer decoded; the last one joins the workers.
    func abandon(_ i: Int) {
        condition.lock()
        slots[i].abandoned = true
        live -= 1
        let last = live == 0
        condition.broadcast()
        condition.unlock()
        if last {
            for t in threads { t.join() }
        }
    }
}

/// One CPU's stream as the merge reads it: batches decoded ahead by ``PrefetchState``'s workers.
final class PrefetchedStream: EventStream {
    let state: PrefetchState
    let index: Int

    init(_ state: PrefetchState, _ index: Int) {
        self.state = state
        self.index = index
    }

    deinit { state.abandon(index) }

    func next(_ batch: inout [TraceEvent]) throws -> Bool {
        try state.next(index, &batch)
    }
}
