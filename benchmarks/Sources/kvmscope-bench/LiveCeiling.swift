import Foundation
import KVMExits
import KVMSources
import KVMHost

/// The live reader's ceiling: kvm_exit-shaped records pushed through trace_marker_raw into the tracer's
/// own instance at increasing rates; at each rate, are all of them counted (0 lost), and what CPU did the
/// tracer's process tree spend per event while they arrived.
///
/// The peer: `trace-cmd record -B <instance> -b <same KiB> -d --no-filter -e kvm:kvm_exit -e kvm:kvm_entry`,
/// fed by the same writers into its instance's trace_marker_raw (trace-cmd records raw_data events like any
/// other). Both tracers get a fresh process per rate; CPU is measured over the write window plus 0.5 s of
/// drain, from /proc (the tracer and its children), so trace-cmd's recorder children count and neither
/// tool's start-up does.
struct LiveCeiling {
    var kvmscope: String
    var rates: [Double?]
    var seconds: Double
    var writers: Int
    var bufferKB = 1024

    struct Step {
        var tool: String
        var targetRate: Double?
        var written: UInt64
        var counted: UInt64
        var lost: UInt64
        var seconds: Double
        var windowCPU: Double
        /// CPU of the tracer's whole life (wait4 rusage: every child it reaped included), start-up and exit too.
        var wholeCPU: Double
        var note = ""
        var achievedRate: Double { Double(written) / seconds }
        var nsPerEvent: Double { written > 0 ? windowCPU * 1e9 / Double(written) : 0 }
    }

    static func loadFormats() throws -> EventFormats {
        let root = try TraceFS.root()
        let f = EventFormats()
        for e in ["kvm_exit", "kvm_entry"] { try f.add(system: "kvm", format: try TraceFS.format(system: "kvm", event: e, root: root)) }
        return f
    }

    func runKVMScope(rate: Double?) throws -> Step {
        let root = try TraceFS.root()
        let t = try ChildProcess([kvmscope, "stat", "--json", "--event", "kvm_exit", "--event", "kvm_entry", "--buffer-kb", "\(bufferKB)"],
                                 environment: ProcessInfo.processInfo.environment.merging(["KVMSCOPE_INJECT": "kvm_exit"]) { $1 })
        let name = "\(TraceFS.instancePrefix)\(t.pid)"
        try Self.waitForInstance(name, of: t, root: root)
        let (written, secs, cpu) = try push(into: "\(root)/instances/\(name)", tracer: t, rate: rate)
        t.signal(SIGINT)
        let end = try t.wait()
        guard end.status == 0, let j = Self.json(t.stdout) else {
            throw KVMScopeError.usage("kvmscope stat failed (status \(end.status)): \(t.stderr.prefix(300))")
        }
        let counted = ((j["events"] as? [String: Any])?["kvm_exit"] as? NSNumber)?.uint64Value ?? 0
        let reported = (j["lost_events"] as? NSNumber)?.uint64Value ?? 0
        let lost = max(reported, written > counted ? written - counted : 0)
        return Step(tool: "kvmscope", targetRate: rate, written: written, counted: counted, lost: lost, seconds: secs,
                    windowCPU: cpu, wholeCPU: end.cpuSeconds, note: counted > written ? "counted \(counted - written) more than written" : "")
    }

    /// The baseline: ``RawConsumer`` (this harness run as `--raw-consumer`), read() and a walk of every event.
    func runRawConsumer(rate: Double?) throws -> Step {
        let root = try TraceFS.root()
        let me = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        let t = try ChildProcess([me, "--raw-consumer", "\(bufferKB)"])
        let name = "kvmbench-raw-\(t.pid)"
        defer { TraceFS.removeInstance(name, root: root) }
        try Self.waitForInstance(name, of: t, root: root)
        let (written, secs, cpu) = try push(into: "\(root)/instances/\(name)", tracer: t, rate: rate)
        t.signal(SIGINT)
        let end = try t.wait()
        guard end.status == 0, let j = Self.json(t.stdout) else {
            throw KVMScopeError.usage("raw consumer failed (status \(end.status)): \(t.stderr.prefix(300))")
        }
        let counted = (j["events"] as? NSNumber)?.uint64Value ?? 0
        let reported = (j["lost"] as? NSNumber)?.uint64Value ?? 0
        let lost = max(reported, written > counted ? written - counted : 0)
        return Step(tool: "read()+walk", targetRate: rate, written: written, counted: counted, lost: lost, seconds: secs,
                    windowCPU: cpu, wholeCPU: end.cpuSeconds, note: counted > written ? "counted \(counted - written) more than written" : "")
    }

    func runTraceCmd(rate: Double?) throws -> Step {
        let root = try TraceFS.root()
        let tag = "kvmbench-live-\(getpid())"
        let dat = "\(NSTemporaryDirectory())\(tag).dat"
        defer { unlink(dat) }
        let t = try ChildProcess(["trace-cmd", "record", "-B", tag, "-b", "\(bufferKB)", "-d", "--no-filter",
                                  "-e", "kvm:kvm_exit", "-e", "kvm:kvm_entry", "-o", dat])
        defer { TraceFS.removeInstance(tag, root: root) }
        try Self.waitForInstance(tag, of: t, root: root, settle: 1.5)
        let (written, secs, cpu) = try push(into: "\(root)/instances/\(tag)", tracer: t, rate: rate)
        t.signal(SIGINT)
        let end = try t.wait()
        let stat = try ChildProcess(["trace-cmd", "report", "--stat", dat])
        _ = try stat.wait()
        var read: UInt64 = 0
        var overrun: UInt64 = 0
        for line in stat.stdout.split(separator: "\n") {
            let v = UInt64(line.split(separator: " ").last ?? "") ?? 0
            if line.hasPrefix("read events:") { read += v }
            if line.hasPrefix("overrun:") || line.hasPrefix("dropped events:") { overrun += v }
        }
        let lost = max(overrun, written > read ? written - read : 0)
        return Step(tool: "trace-cmd", targetRate: rate, written: written, counted: read, lost: lost, seconds: secs,
                    windowCPU: cpu, wholeCPU: end.cpuSeconds,
                    note: lost > 0 ? "kernel-reported overrun/dropped: \(overrun)" : "")
    }

    /// Writes for `seconds` at `rate`, then lets the tracer drain 0.5 s. Returns (written, seconds, tracer CPU).
    func push(into dir: String, tracer: ChildProcess, rate: Double?) throws -> (UInt64, Double, Double) {
        let w = try MarkerWriter(instanceDir: dir, writers: writers, formats: try Self.loadFormats())
        let cpu0 = ProcessTree.cpuSeconds(tracer.pid)
        let t0 = MarkerWriter.now()
        try w.start(rate: rate)
        usleep(UInt32(seconds * 1e6))
        let written = w.stop()
        let secs = MarkerWriter.now() - t0
        usleep(500_000)
        let cpu = ProcessTree.cpuSeconds(tracer.pid) - cpu0
        return (written, secs, cpu)
    }

    /// Waits until the instance is tracing, then `settle` seconds more (trace-cmd clears its buffers and
    /// starts its recorders after switching tracing on; kvmscope switches it on last).
    static func waitForInstance(_ name: String, of t: ChildProcess, root: String, settle: Double = 0.3) throws {
        let path = "\(root)/instances/\(name)/tracing_on"
        for _ in 0..<1000 {
            if let on = try? String(contentsOfFile: path, encoding: .utf8), on.hasPrefix("1") {
                usleep(UInt32(settle * 1e6))
                return
            }
            guard t.isRunning else { throw KVMScopeError.usage("\(t.argv[0]) ended: \(t.stderr.prefix(300))") }
            usleep(10_000)
        }
        t.signal(SIGKILL)
        throw KVMScopeError.usage("\(t.argv[0]) did not start tracing within 10 s")
    }

    static func json(_ text: String) -> [String: Any]? {
        guard let d = text.data(using: .utf8) else { return nil }
        return (try? JSONSerialization.jsonObject(with: d)) as? [String: Any]
    }
}
