import Foundation
import KVMExits
import KVMSources
import KVMHost

/// `kvmscope report` against `trace-cmd report > /dev/null` on a synthetic trace.dat of N events
/// (`kvmscope bench synth`) of one shape (vCPU threads × host CPUs), in the same run. Wall time and CPU
/// (rusage) of each, and kvmscope again held to one core (`taskset -c 0`) to show what the second core gives.
/// A kvmscope build without `bench synth` or `report` makes this section say "pending" and why.
struct OfflineReport {
    var kvmscope: String
    var events: Int
    /// vCPU threads and host CPUs of the synthetic file: the headline is the worst shape, not a lucky one.
    var threads = 16
    var cpus = 2

    /// The shapes `make bench` runs: the default (16 threads on 2 CPUs), many vCPUs on many CPUs, and many
    /// threads sharing few CPUs (larger series tables, more interleaving).
    static let shapes: [(threads: Int, cpus: Int)] = [(16, 2), (256, 8), (2048, 2)]

    struct Timing { var wall: Double; var cpu: Double; var status: Int32 }

    enum Outcome {
        case pending(String)
        case done(file: String, bytes: UInt64, kvmscope: Timing, oneCore: Timing?, traceCmd: Timing?, countedByKVMScope: UInt64?)
    }

    func run(progress: (String) -> Void) throws -> Outcome {
        let help = try ChildProcess([kvmscope, "report", "--help"])
        guard try help.wait().status == 0 else { return .pending("`kvmscope report` is not in this build") }
        let dir = NSTemporaryDirectory()
        let probe = "\(dir)kvmbench-probe-\(getpid()).dat"
        let p = try ChildProcess([kvmscope, "bench", "synth", "-o", probe, "--events", "1000"])
        let ps = try p.wait()
        unlink(probe)
        guard ps.status == 0 else {
            return .pending("`kvmscope bench synth` is not available: \(p.stderr.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
        let file = "\(dir)kvmbench-\(getpid()).dat"
        defer { unlink(file) }
        progress("report: writing \(events) events to \(file)")
        let s = try ChildProcess([kvmscope, "bench", "synth", "-o", file, "--events", "\(events)",
                                  "--threads", "\(threads)", "--cpus", "\(cpus)"])
        guard try s.wait().status == 0 else { return .pending("bench synth failed: \(s.stderr.prefix(300))") }
        let bytes = (try? FileManager.default.attributesOfItem(atPath: file)[.size] as? UInt64) ?? 0
        progress("report: kvmscope report (\(threads) threads, \(cpus) CPUs)")
        let ks = try time([kvmscope, "report", file])
        var oneCore: Timing?
        if ChildProcess.which("taskset") != nil {
            progress("report: taskset -c 0 kvmscope report")
            oneCore = try time(["taskset", "-c", "0", kvmscope, "report", file])
        }
        // Known answer: the JSON summary must count every event written (if report has --json).
        var counted: UInt64?
        let j = try ChildProcess([kvmscope, "report", "--json", file])
        if try j.wait().status == 0, let o = LiveCeiling.json(j.stdout), let ev = o["events"] as? [String: Any] {
            counted = ev.values.compactMap { ($0 as? NSNumber)?.uint64Value }.reduce(0, +)
        }
        var tc: Timing?
        if ChildProcess.which("trace-cmd") != nil {
            progress("report: trace-cmd report > /dev/null")
            tc = try time(["trace-cmd", "report", file])
        }
        return .done(file: file, bytes: bytes, kvmscope: ks, oneCore: oneCore, traceCmd: tc, countedByKVMScope: counted)
    }

    func time(_ argv: [String]) throws -> Timing {
        let t0 = MarkerWriter.now()
        let c = try ChildProcess(argv, stdoutTo: "/dev/null")
        let t = try c.wait()
        return Timing(wall: MarkerWriter.now() - t0, cpu: t.cpuSeconds, status: t.status)
    }
}
