import Foundation
import KVMExits
import KVMHost
import KVMSources
import Synchronization

/// The physical floor of a live consumer, for the live table's baseline row: one thread per CPU that sleeps
/// in poll() on its `trace_pipe_raw` at the watermark kvmscope uses (25 %), then `read()`s sub-buffers until
/// the buffer is empty and walks every event in them (header, length, type) — nothing else: no decoding into
/// records, no aggregation, no pairing. Runs as its own process (`kvmscope-bench --raw-consumer KIB`) so
/// that its CPU is measured from /proc as the tracers' is; SIGINT turns tracing off, drains, removes the
/// instance and prints `{"events":N,"lost":N}`.
enum RawConsumer {
    /// Written by the SIGINT handler, polled by every reader thread.
    nonisolated(unsafe) static var stopPipe: [Int32] = [-1, -1]

    /// Events one thread walked.
    final class Count: Sendable {
        let value = Atomic<UInt64>(0)
    }

    static func run(bufferKB: UInt32) -> Never {
        do {
            let root = try TraceFS.root()
            let instance = try TraceInstance(name: "kvmbench-raw-\(getpid())", bufferKB: bufferKB, root: root)
            try instance.wake(atPercent: 25)
            guard pipe(&stopPipe) == 0 else { throw KVMScopeError.io("pipe: \(String(cString: strerror(errno)))") }
            signal(SIGINT) { _ in
                var b: UInt8 = 1
                _ = write(RawConsumer.stopPipe[1], &b, 1)
            }
            let cpus = instance.cpus
            let counts = cpus.map { _ in Count() }
            var threads: [Thread] = []
            let done = DispatchSemaphore(value: 0)
            for (i, cpu) in cpus.enumerated() {
                let fd = open("\(root)/instances/\(instance.name)/per_cpu/cpu\(cpu)/trace_pipe_raw", O_RDONLY | O_NONBLOCK)
                guard fd >= 0 else { throw KVMScopeError.io("cannot open cpu\(cpu)/trace_pipe_raw: \(String(cString: strerror(errno)))") }
                let counter = counts[i]
                let t = Thread {
                    counter.value.store(consume(fd), ordering: .relaxed)
                    close(fd)
                    done.signal()
                }
                threads.append(t)
            }
            for t in threads { t.start() }
            try instance.tracing(true)
            for _ in threads { done.wait() }
            let lost = cpus.reduce(UInt64(0)) { $0 + instance.lost(cpu: $1) }
            _ = instance.remove()
            let events = counts.reduce(UInt64(0)) { $0 + $1.value.load(ordering: .relaxed) }
            print("{\"events\":\(events),\"lost\":\(lost)}")
            exit(0)
        } catch {
            FileHandle.standardError.write(Data("kvmscope-bench --raw-consumer: \(error)\n".utf8))
            exit(1)
        }
    }

    /// One CPU: wait at the watermark, read until empty, walk; at stop, read until empty once more.
    static func consume(_ fd: Int32) -> UInt64 {
        let size = 4096
        let page = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
        defer { page.deallocate() }
        var events: UInt64 = 0
        var stopping = false
        while true {
            if !stopping {
                var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0),
                           pollfd(fd: stopPipe[0], events: Int16(POLLIN), revents: 0)]
                _ = poll(&fds, 2, -1)
                stopping = fds[1].revents != 0
            }
            while true {
                let n = read(fd, page, size)
                if n <= 0 { break }
                events += walk(UnsafeRawPointer(page), n)
            }
            if stopping { return events }
        }
    }

    /// Data events in one sub-buffer (the ring buffer's event headers: type_len, time delta, length).
    static func walk(_ page: UnsafeRawPointer, _ bytes: Int) -> UInt64 {
        let commit = min(Int(page.loadUnaligned(fromByteOffset: 8, as: UInt64.self) & 0x0fff_ffff), bytes - 16)
        let data = page + 16
        var off = 0, events: UInt64 = 0
        while off + 4 <= commit {
            let h = data.loadUnaligned(fromByteOffset: off, as: UInt32.self)
            let typeLen = Int(h & 31)
            switch typeLen {
            case 0:
                guard off + 8 <= commit else { return events }
                events += 1
                off += 4 + Int(data.loadUnaligned(fromByteOffset: off + 4, as: UInt32.self))
            case 1...28:
                events += 1
                off += 4 + typeLen * 4
            case 29:
                // Padding: without a time delta it fills the rest of the page; else a discarded event.
                guard h >> 5 != 0, off + 8 <= commit else { return events }
                off += 4 + Int(data.loadUnaligned(fromByteOffset: off + 4, as: UInt32.self))
            default:
                off += 8
            }
        }
        return events
    }
}
