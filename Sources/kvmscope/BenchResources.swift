import ArgumentParser
import Foundation
import KVMExits
import KVMHost
import KVMResources

/// What sampling resources costs: many real storm guests, stopped once their vCPU threads exist (real /proc
/// entries, no CPU used), sampled in this process; the CPU time of each sample (user + system of the sampling
/// thread) as a table.
struct BenchResourcesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "resources",
        abstract: "CPU cost of one resource sample (top, serve, stat --json) with many VMs.",
        usage: "kvmscope bench resources [<options>]",
        discussion: """
            Starts --vms storm guests of --vcpus vCPUs each (stopped with SIGSTOP once their threads exist, killed \
            at the end), then takes --samples samples and prints the CPU time each cost.

              kvmscope bench resources --vms 100 --vcpus 8
            """)

    @Option(help: "Storm guests to start.")
    var vms: Int = 100

    @Option(help: "vCPU threads per guest.")
    var vcpus: Int = 8

    @Option(help: "Samples to measure (after a first one, which has no deltas).")
    var samples: Int = 30

    func validate() throws {
        guard (1...1000).contains(vms) else { throw ValidationError("--vms must be 1 to 1000") }
        guard (1...64).contains(vcpus) else { throw ValidationError("--vcpus must be 1 to 64") }
        guard (1...10_000).contains(samples) else { throw ValidationError("--samples must be 1 to 10000") }
    }

    func run() throws {
        let stop = StopSignal()
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        var guests: [ChildProcess] = []
        defer {
            for g in guests {
                g.signal(SIGKILL)
                g.signal(SIGCONT)
            }
            for g in guests { _ = try? g.wait() }
        }
        for i in 0..<vms where !stop.isRaised {
            let g = try ChildProcess([exe, "storm", "--name", "bench-\(i)", "--vcpus", "\(vcpus)", "--exits", "1000000000",
                                      "--seconds", "3600"], stdoutTo: "/dev/null", stderrTo: "/dev/null")
            guests.append(g)
            let end = Date().addingTimeInterval(30)
            while Date() < end && Self.vcpuThreads(g.pid) < vcpus && g.isRunning { usleep(10_000) }
            guard Self.vcpuThreads(g.pid) == vcpus else {
                throw KVMScopeError.noKVM("storm guest \(i) did not start its \(vcpus) vCPU threads: \(g.stderr)")
            }
            g.signal(SIGSTOP)
        }
        let sampler = ResourceSampler()
        sampler.excluded = [getpid()]
        _ = sampler.sample()
        var costs: [Double] = []
        var threads = 0
        var found = 0
        for _ in 0..<samples where !stop.isRaised {
            let before = Self.threadCPU()
            let s = sampler.sample()
            costs.append(Self.threadCPU() - before)
            found = s.vms.count
            threads = s.vms.reduce(0) { $0 + $1.threads.count }
        }
        costs.sort()
        let median = costs.isEmpty ? 0 : costs[costs.count / 2]
        let mean = costs.isEmpty ? 0 : costs.reduce(0, +) / Double(costs.count)
        func ms(_ s: Double) -> String { String(format: "%.2f", s * 1000) }
        writeStdout("""
            | VMs sampled | VM threads | samples | CPU per sample, median | mean | max | % of one CPU at 1 s |
            |---:|---:|---:|---:|---:|---:|---:|
            | \(found) | \(threads) | \(costs.count) | \(ms(median)) ms | \(ms(mean)) ms | \(ms(costs.last ?? 0)) ms | \(String(format: "%.2f", mean * 100)) % |

            """)
    }

    static func vcpuThreads(_ pid: Int32) -> Int {
        let tids = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        return tids.filter { tid in
            ((try? String(contentsOfFile: "/proc/\(pid)/task/\(tid)/comm", encoding: .utf8)) ?? "").hasPrefix("CPU ")
        }.count
    }

    /// User + system time of the calling thread, seconds (CLOCK_THREAD_CPUTIME_ID).
    static func threadCPU() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}
