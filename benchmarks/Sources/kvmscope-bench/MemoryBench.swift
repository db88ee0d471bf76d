import Foundation
import KVMExits
import KVMSources
import KVMHost

/// Memory of `kvmscope stat` over a long trace: a marker writer pushes kvm_exit-shaped records at a rate the
/// reader sustains on this machine (unpaced writers starve the reader of CPU on 2 cores)
/// (through the pairing lanes: kvm_exit and kvm_entry are both traced), and VmRSS / VmHWM of the tracer
/// are read from /proc when the count of events written passes each checkpoint.
struct MemoryBench {
    var kvmscope: String
    var checkpoints: [UInt64]
    var rate: Double

    struct Sample { var events: UInt64; var rssKB: Int; var hwmKB: Int; var seconds: Double }

    func run(progress: (String) -> Void) throws -> (samples: [Sample], counted: UInt64, lost: UInt64, written: UInt64) {
        let root = try TraceFS.root()
        let t = try ChildProcess([kvmscope, "stat", "--json", "--event", "kvm_exit", "--event", "kvm_entry"],
                                 environment: ProcessInfo.processInfo.environment.merging(["KVMSCOPE_INJECT": "kvm_exit"]) { $1 })
        let name = "\(TraceFS.instancePrefix)\(t.pid)"
        try LiveCeiling.waitForInstance(name, of: t, root: root)
        let w = try MarkerWriter(instanceDir: "\(root)/instances/\(name)", writers: 1, formats: try LiveCeiling.loadFormats())
        var samples: [Sample] = []
        let t0 = MarkerWriter.now()
        try w.start(rate: rate)
        for c in checkpoints {
            while w.count < c {
                guard t.isRunning else { _ = w.stop(); throw KVMScopeError.usage("kvmscope stat ended: \(t.stderr.prefix(300))") }
                usleep(20_000)
            }
            samples.append(Sample(events: w.count, rssKB: t.statusKB("VmRSS") ?? 0, hwmKB: t.statusKB("VmHWM") ?? 0,
                                  seconds: MarkerWriter.now() - t0))
            progress("memory: \(w.count / 1_000_000) M events, VmHWM \(samples.last!.hwmKB) KiB")
        }
        let written = w.stop()
        usleep(500_000)
        t.signal(SIGINT)
        _ = try t.wait()
        let j = LiveCeiling.json(t.stdout) ?? [:]
        let counted = ((j["events"] as? [String: Any])?["kvm_exit"] as? NSNumber)?.uint64Value ?? 0
        let lost = (j["lost_events"] as? NSNumber)?.uint64Value ?? 0
        return (samples, counted, lost, written)
    }
}
