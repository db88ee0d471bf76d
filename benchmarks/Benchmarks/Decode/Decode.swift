// Micro suites for `swift package benchmark` (ordo-one): the hot path, stage by stage, with malloc counts.
// One iteration is one pass over pre-built sub-buffers of a synthetic 64-vCPU workload; throughput is in
// events (scaled); mallocCountTotal stays at a few per pass (the pair stage makes its per-CPU streams and
// merge state each pass), none per event.
import Benchmark
import BenchSupport
import KVMExits
import KVMSources

nonisolated(unsafe) var workload: DecodeWorkload!
nonisolated(unsafe) var pipeline: DecodeWorkload.Run!

let eventsPerPass = 200_000

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .throughput, .cpuTotal, .mallocCountTotal],
        scalingFactor: .one, maxDuration: .seconds(3), maxIterations: 200)

    for stage in DecodeWorkload.Stage.allCases {
        Benchmark("\(stage.rawValue) \(eventsPerPass) events",
                  configuration: .init(metrics: [.wallClock, .throughput, .cpuTotal, .mallocCountTotal],
                                       warmupIterations: 2, maxDuration: .seconds(3), maxIterations: 200)) { benchmark in
            for _ in benchmark.scaledIterations {
                blackHole(pipeline.pass(stage))
            }
        } setup: {
            if workload == nil { workload = try DecodeWorkload(events: eventsPerPass) }
            pipeline = workload.makeRun()
        }
    }

    Benchmark("histogram record 1M values") { benchmark in
        let h = LatencyHistogram()
        var x: UInt64 = 0x1234_5678
        benchmark.startMeasurement()
        for _ in 0..<1_000_000 {
            x = x &* 6364136223846793005 &+ 1442695040888963407
            h.record(500 + (x >> 44))
        }
        benchmark.stopMeasurement()
        blackHole(h.count)
    }

    Benchmark("top RIPs record 1M values") { benchmark in
        let t = TopRIPs(capacity: 16)
        var x: UInt64 = 0x1234_5678
        benchmark.startMeasurement()
        for _ in 0..<1_000_000 {
            x = x &* 6364136223846793005 &+ 1442695040888963407
            t.record(0xffff_8000_0000 + (x >> 58) * 0x40)
        }
        benchmark.stopMeasurement()
        blackHole(t.snapshot().count)
    }
}
