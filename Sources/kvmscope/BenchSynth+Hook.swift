import Foundation
import KVMAnalysis
import KVMExits
import KVMHost
import KVMSources

/// `kvmscope bench synth`: the benchmark workload's pages (corpus reason mix, many vCPU threads) in a
/// trace.dat that trace-cmd opens. Pages stream into per-CPU temporary files, then into the file.
enum SyntheticTraceDat {
    static func write(to path: String, formats: EventFormats, workload: SyntheticWorkload, eventsPerCPU: Int) throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kvmscope-synth-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        var cpus: [TraceDatCPUData] = []
        for cpu in 0..<workload.hostCPUs {
            let file = dir.appendingPathComponent("cpu\(cpu)").path
            guard FileManager.default.createFile(atPath: file, contents: nil),
                  let handle = FileHandle(forWritingAtPath: file) else {
                throw KVMScopeError.io("cannot write \(file)")
            }
            try workload.pages(formats: formats, cpu: cpu, events: eventsPerCPU) { try handle.write(contentsOf: $0) }
            try handle.close()
            cpus.append(.file(file))
        }
        var m = TraceDatMetadata()
        m.systems = [.init(name: "kvm", formats: ["kvm_exit", "kvm_entry"].compactMap { formats.formatTexts[$0] })]
        for t in workload.threadIDs { m.cmdlines[t.tid] = "CPU \(t.vcpu)/KVM" }
        for cpu in 0..<workload.hostCPUs {
            m.cpuStats[cpu] = "entries: 0\noverrun: 0\ncommit overrun: 0\nbytes: 0\ndropped events: 0\n"
        }
        try TraceDatWriter.write(path: path, metadata: m, cpus: cpus)
    }
}
