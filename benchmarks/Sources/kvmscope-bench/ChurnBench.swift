import Foundation
import KVMExits
import KVMHost
import KVMSources

/// Many distinct vCPU threads through the report pipeline: for each thread count, `kvmscope bench synth`
/// writes a trace.dat of `events` events (the corpus's reason mix, VMs of 4 vCPUs, 2 host CPUs), then
/// - `kvmscope report --json FILE` as shipped: wall and CPU time, peak RSS (wait4's ru_maxrss), pairs;
/// - the same file through ``ExitPipeline`` on this thread (decode, merge CPUs, count, pair, what `report`
///   runs without the prefetching thread): events per CPU-second, the aggregate's live threads and series;
/// - then one `/metrics` scrape of that aggregate (snapshot, ``Summary``, Prometheus text), as ``ScrapeBench``
///   times it.
/// The first row (64 threads) is the baseline the others are compared with.
///
/// Two shapes of file: with `alive` nil every thread exits in turn from the first event to the last (each host
/// CPU's next pair is the next thread's: every pair touches a cold thread); with `alive`, at most that many
/// threads run at a time and each makes its share of the pairs, then never appears again (`bench synth --alive`:
/// VM churn, each VM start making new vCPU threads).
struct ChurnBench {
    var kvmscope: String
    var threads: [Int]
    var events: Int
    var alive: Int?
    /// Rows with more threads than this skip `report --json` (its JSON of every thread takes minutes and GBs).
    var reportMax = Int.max
    var scrapeRepeats = 3

    struct Row {
        var threads: Int
        /// Threads alive at a time (nil: all of them).
        var alive: Int?
        var events: Int
        var reportWall: Double
        var reportCPU: Double
        var reportRSSKB: Int
        var paired: UInt64?
        var pipelineCPU: Double
        /// This process's RSS once the pipeline has run (its aggregate of the file's threads held), KiB.
        var pipelineRSSKB: Int
        var liveThreads: Int
        var series: Int
        var scrape: ScrapeBench.Result
        var eventsPerCPUSecond: Double { Double(events) / pipelineCPU }
    }

    func run(progress: (String) -> Void) throws -> [Row] {
        var rows: [Row] = []
        for n in threads {
            let file = "\(NSTemporaryDirectory())kvmbench-churn-\(getpid())-\(n).dat"
            defer { unlink(file) }
            progress("churn: writing \(events) events of \(n) threads to \(file)")
            let shape = alive.map { ["--alive", "\($0)"] } ?? []
            let s = try ChildProcess([kvmscope, "bench", "synth", "-o", file, "--events", "\(events)", "--threads", "\(n)",
                                      "--cpus", "2"] + shape)
            guard try s.wait().status == 0 else {
                throw KVMScopeError.usage("bench synth failed: \(s.stderr.prefix(300))")
            }
            var wall = Double.nan
            var rt: (cpuSeconds: Double, maxRSSKB: Int) = (.nan, 0)
            var paired: UInt64?
            if n <= reportMax {
                progress("churn: kvmscope report --json (\(n) threads)")
                let t0 = MarkerWriter.now()
                let r = try ChildProcess([kvmscope, "report", "--json", file])
                let end = try r.wait()
                rt = (end.cpuSeconds, end.maxRSSKB)
                wall = MarkerWriter.now() - t0
                guard end.status == 0 else { throw KVMScopeError.usage("report failed: \(r.stderr.prefix(300))") }
                paired = ((LiveCeiling.json(r.stdout)?["pairing"] as? [String: Any])?["paired"] as? NSNumber)?.uint64Value
            }

            progress("churn: the pipeline in process, then a scrape (\(n) threads)")
            let source = try TraceFiles.open(file)
            let identities = source.identities
            var pipeline = ExitPipeline(catalog: source.catalog, resolver: { identities[$0] })
            let cpu0 = DecodeBench.threadCPU()
            _ = try pipeline.run(try source.streams())
            let cpu = DecodeBench.threadCPU() - cpu0
            let finished = pipeline.finish(statistics: source.statistics)
            if paired == nil { paired = finished.pairing.paired }
            let rss = ChildProcess.statusKB(pid: getpid(), "VmRSS") ?? 0
            let scrape = try ScrapeBench.measure(pipeline.aggregator, repeats: scrapeRepeats)
            let snap = pipeline.aggregator.snapshot(timestamp: 1)
            rows.append(Row(threads: n, alive: alive.map { min($0, n) }, events: events, reportWall: wall, reportCPU: rt.cpuSeconds,
                            reportRSSKB: rt.maxRSSKB, paired: paired, pipelineCPU: cpu, pipelineRSSKB: rss,
                            liveThreads: snap.occupancy.liveThreads, series: snap.occupancy.liveSeries, scrape: scrape))
            let row = rows.last!
            progress(String(format: "churn row: %d threads: report %.2f s wall, %.2f s CPU, %.1f MiB; pipeline %.2f s CPU = %.2f M events/s, process RSS %.1f MiB; %d series; scrape %.1f ms CPU",
                            n, row.reportWall, row.reportCPU, Double(row.reportRSSKB) / 1024, cpu, row.eventsPerCPUSecond / 1e6,
                            Double(rss) / 1024, row.series, row.scrape.median(\.cpu) * 1e3) + "; paired \(paired.map(String.init) ?? "n/a")")
        }
        return rows
    }
}
