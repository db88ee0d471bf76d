import BenchSupport
import Foundation
import KVMScopeViews
import MallocInterposerSwift

/// decode + aggregate on one core: pre-built pages through the C decoder, the shard writer, and the shipped
/// pipeline (per-CPU streams merged, counted, paired: ``ExitPipeline``), on this thread. Rates are per second of this thread's CPU time (what one core does, whatever else the
/// machine runs) and per wall second. Allocations are counted by the malloc interposer around the
/// measured passes, after one warm-up pass (first sight of each thread and reason allocates, once).
struct DecodeBench {
    var events: Int
    var seconds: Double

    struct Result {
        var stage: DecodeWorkload.Stage
        var events: UInt64
        var cpuSeconds: Double
        var wallSeconds: Double
        var mallocs: Int
        var paired: UInt64
        var passes: Int
        var eventsPerCPUSecond: Double { Double(events) / cpuSeconds }
        var nsPerEvent: Double { cpuSeconds * 1e9 / Double(events) }
        var mallocsPerEvent: Double { Double(mallocs) / Double(events) }
    }

    func run() throws -> (source: String, threads: Int, results: [Result]) {
        let w = try DecodeWorkload(events: events)
        var out: [Result] = []
        for stage in DecodeWorkload.Stage.allCases {
            var p = w.makeRun()
            _ = p.pass(stage)  // warm-up: caches, first keys, series
            var n: UInt64 = 0
            var passes = 0
            MallocInterposerSwift.initialize()
            let cpu0 = Self.threadCPU()
            let wall0 = Self.monotonic()
            MallocInterposerSwift.hook()
            repeat {
                n += UInt64(p.pass(stage))
                passes += 1
            } while Self.threadCPU() - cpu0 < seconds
            MallocInterposerSwift.unhook()
            let cpu = Self.threadCPU() - cpu0
            let wall = Self.monotonic() - wall0
            let stats = MallocInterposerSwift.getStatistics()
            out.append(Result(stage: stage, events: n, cpuSeconds: cpu, wallSeconds: wall,
                              mallocs: stats.mallocCount, paired: p.paired, passes: passes))
        }
        return (w.formatSource, w.workload.threads, out)
    }

    /// A known allocation is seen: the interposer is really counting in this process.
    static func interposerWorks() -> Bool {
        MallocInterposerSwift.initialize()
        MallocInterposerSwift.hook()
        let a = [UInt8](repeating: 1, count: 64 + Int(getpid() % 64))  // a heap buffer the optimizer keeps
        MallocInterposerSwift.unhook()
        return MallocInterposerSwift.getStatistics().mallocCount >= 1 && a.count >= 64
    }

    static func threadCPU() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    static func monotonic() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}
