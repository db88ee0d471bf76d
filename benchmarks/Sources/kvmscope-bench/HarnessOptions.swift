import Foundation

/// Command line of the harness (kept dependency-free: `make bench ARGS='--quick --only decode'`).
struct HarnessOptions {
    var kvmscope = "../.build/release/kvmscope"
    var quick = false
    var only: Set<String> = []
    var resultsDir: String? = "results"
    var decodeEvents = 500_000
    var decodeSeconds = 3.0
    var reportEvents = 20_000_000
    var liveSeconds = 3.0
    var rates: [Double?] = [100_000, 250_000, 500_000, 1_000_000, 1_500_000, nil]
    var writers = 2
    var overheadExits = 200_000
    var overheadRepeat = 5
    var memoryCheckpoints: [UInt64] = [10_000_000, 50_000_000, 100_000_000]
    var memoryRate = 1_000_000.0
    var scrapeRepeats = 10
    var churnThreads = [64, 5_000, 50_000]
    var churnEvents = 2_000_000
    /// Threads alive at a time in the churn files (`bench synth --alive`); nil: all of them.
    var churnAlive: Int?
    /// Churn rows with more threads than this skip `report --json` (the pipeline in process still runs).
    var churnReportMax = Int.max
    /// serve under churn (``ServeChurn``): distinct writer threads at each sample, alive at a time, pairs each.
    var soakThreads = [10_000, 100_000, 1_000_000]
    var soakAlive = 64
    var soakPairs = 10
    var soakRate: Double?

    static let usage = """
        usage: kvmscope-bench [--quick] [--only decode,scrape,churn,serve-churn,report,live,overhead,memory] [--kvmscope PATH]
                              [--results DIR | --no-results] [--report-events N] [--live-seconds S]
                              [--rates 100000,500000,max] [--writers N] [--overhead-exits N] [--overhead-repeat N]
                              [--memory-rate EVENTS_PER_S] [--churn-threads 64,5000,50000] [--churn-events N]
                              [--churn-alive N|all] [--churn-report-max N] [--soak-threads 10000,100000,1000000] [--soak-alive N]
                              [--soak-pairs N] [--soak-rate THREADS_PER_S]
        """

    func wants(_ section: String) -> Bool { only.isEmpty || only.contains(section) }

    static func parse(_ args: [String]) -> HarnessOptions {
        var o = HarnessOptions()
        var i = 0
        func value() -> String {
            i += 1
            guard i < args.count else { fail("\(args[i - 1]) needs a value") }
            return args[i]
        }
        func number(_ s: String) -> Int {
            guard let n = Int(s.replacingOccurrences(of: "_", with: "")) else { fail("not a number: \(s)") }
            return n
        }
        while i < args.count {
            switch args[i] {
            case "--quick":
                o.quick = true
                o.decodeEvents = 200_000
                o.decodeSeconds = 1
                o.reportEvents = 1_000_000
                o.liveSeconds = 1
                o.rates = [100_000, nil]
                o.overheadExits = 50_000
                o.overheadRepeat = 1
                o.memoryCheckpoints = [1_000_000, 3_000_000, 5_000_000]
                o.scrapeRepeats = 3
                o.churnThreads = [64, 5_000]
                o.churnEvents = 500_000
                o.soakThreads = [10_000, 50_000]
            case "--only": o.only = Set(value().split(separator: ",").map(String.init))
            case "--kvmscope": o.kvmscope = value()
            case "--results": o.resultsDir = value()
            case "--no-results": o.resultsDir = nil
            case "--report-events": o.reportEvents = number(value())
            case "--live-seconds": o.liveSeconds = Double(value()) ?? o.liveSeconds
            case "--rates": o.rates = value().split(separator: ",").map { $0 == "max" ? nil : Double(number(String($0))) }
            case "--writers": o.writers = max(1, number(value()))
            case "--churn-threads": o.churnThreads = value().split(separator: ",").map { number(String($0)) }
            case "--churn-events": o.churnEvents = number(value())
            case "--churn-report-max": o.churnReportMax = number(value())
            case "--churn-alive":
                let v = value()
                o.churnAlive = v == "all" ? nil : number(v)
            case "--soak-threads": o.soakThreads = value().split(separator: ",").map { number(String($0)) }
            case "--soak-alive": o.soakAlive = max(1, number(value()))
            case "--soak-pairs": o.soakPairs = max(1, number(value()))
            case "--soak-rate": o.soakRate = Double(number(value()))
            case "--memory-rate": o.memoryRate = Double(number(value()))
            case "--overhead-exits": o.overheadExits = number(value())
            case "--overhead-repeat": o.overheadRepeat = number(value())
            case "-h", "--help":
                print(usage)
                exit(0)
            default: fail("unknown option \(args[i])\n\(usage)")
            }
            i += 1
        }
        o.kvmscope = URL(fileURLWithPath: o.kvmscope).standardizedFileURL.path
        guard FileManager.default.isExecutableFile(atPath: o.kvmscope) else {
            fail("no kvmscope binary at \(o.kvmscope) (build it: swift build -c release --product kvmscope in ..)")
        }
        return o
    }
}

func fail(_ s: String) -> Never {
    FileHandle.standardError.write(Data("kvmscope-bench: \(s)\n".utf8))
    exit(2)
}

/// The machine the numbers come from.
struct Machine {
    var date: String
    var cpu: String
    var cores: Int
    var kernel: String
    var load: String

    static func current() -> Machine {
        let cpuinfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        let model = cpuinfo.split(separator: "\n").first { $0.hasPrefix("model name") }?
            .split(separator: ":", maxSplits: 1).last.map { $0.trimmingCharacters(in: .whitespaces) } ?? "unknown CPU"
        let kernel = ((try? String(contentsOfFile: "/proc/sys/kernel/osrelease", encoding: .utf8)) ?? "?")
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let load = ((try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8)) ?? "")
            .split(separator: " ").prefix(3).joined(separator: " ")
        let df = ISO8601DateFormatter()
        df.formatOptions = [.withInternetDateTime]
        return Machine(date: df.string(from: Date()), cpu: model, cores: ProcessInfo.processInfo.activeProcessorCount,
                       kernel: kernel, load: load)
    }
}
