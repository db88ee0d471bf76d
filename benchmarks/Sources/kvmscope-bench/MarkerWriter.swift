import Foundation
import KVMExits
import KVMSources
import KVMHost
import Synchronization

/// Writer threads pushing kvm_exit-shaped records into an instance's trace_marker_raw: each write is one
/// ftrace:raw_data event whose payload (after the 8-byte common header) is a kvm_exit payload from this
/// kernel's format, so a tracer aliasing raw_data as kvm_exit decodes it like a real exit.
final class MarkerWriter: @unchecked Sendable {
    let path: String
    let writers: Int
    let stopFlag = Atomic<Bool>(false)
    let written = Atomic<UInt64>(0)
    let failed = Atomic<UInt64>(0)
    let payloads: [[UInt8]]
    var threads: [Thread] = []
    let done = Atomic<Int>(0)

    /// - Parameters: instanceDir: the instance's directory; writers: threads.
    init(instanceDir: String, writers: Int, formats: EventFormats) throws {
        path = "\(instanceDir)/trace_marker_raw"
        self.writers = writers
        let b = try EventPayloadBuilder(formats: formats, event: "kvm_exit")
        // Reasons from the corpus mix, one per writer; everything after the common header.
        payloads = (0..<writers).map { i in
            let r = SyntheticWorkload.corpusMix[i % SyntheticWorkload.corpusMix.count]
            return Array(b.payload(pid: 0, ["exit_reason": UInt64(r.code), "isa": 1, "vcpu_id": UInt64(i),
                                             "guest_rip": 0xffff_ffff_8100_0000 + UInt64(i) * 0x40])[8...])
        }
    }

    /// Starts writing at `rate` events/s in all (nil: as fast as the writers can).
    func start(rate: Double?) throws {
        let fds = try (0..<writers).map { _ -> Int32 in
            let fd = open(path, O_WRONLY)
            guard fd >= 0 else { throw KVMScopeError.io("cannot open \(path): \(String(cString: strerror(errno)))") }
            return fd
        }
        for i in 0..<writers {
            let fd = fds[i]
            let payload = payloads[i]
            let perWriter = rate.map { $0 / Double(writers) }
            let t = Thread { [self] in
                payload.withUnsafeBytes { buf in
                    let t0 = Self.now()
                    var mine: UInt64 = 0
                    while !stopFlag.load(ordering: .relaxed) {
                        if let perWriter {
                            let due = UInt64((Self.now() - t0) * perWriter)
                            if mine >= due { usleep(100); continue }
                        }
                        // Bursts of 64 writes between checks of the clock and the stop flag.
                        var ok: UInt64 = 0
                        for _ in 0..<64 where Glibc.write(fd, buf.baseAddress, buf.count) == buf.count { ok += 1 }
                        if ok < 64 { failed.wrappingAdd(64 - ok, ordering: .relaxed) }
                        mine += ok
                        written.wrappingAdd(ok, ordering: .relaxed)
                    }
                    close(fd)
                    done.wrappingAdd(1, ordering: .releasing)
                }
            }
            t.name = "marker-writer-\(i)"
            threads.append(t)
            t.start()
        }
    }

    /// Events written so far.
    var count: UInt64 { written.load(ordering: .relaxed) }

    /// Stops the writers and returns how many events they wrote.
    func stop() -> UInt64 {
        stopFlag.store(true, ordering: .relaxed)
        while done.load(ordering: .acquiring) < threads.count { usleep(1000) }
        return written.load(ordering: .relaxed)
    }

    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}

/// CPU time of a process and all its descendants still running (from /proc: utime + stime of every
/// task, children found through /proc/<pid>/task/<tid>/children).
enum ProcessTree {
    static func cpuSeconds(_ pid: pid_t) -> Double {
        var total = ChildProcess.cpuSeconds(pid: pid) ?? 0
        for child in children(pid) { total += cpuSeconds(child) }
        return total
    }

    static func children(_ pid: pid_t) -> [pid_t] {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        var out: [pid_t] = []
        for t in tasks {
            let text = (try? String(contentsOfFile: "/proc/\(pid)/task/\(t)/children", encoding: .utf8)) ?? ""
            out += text.split(separator: " ").compactMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        }
        return out
    }
}
