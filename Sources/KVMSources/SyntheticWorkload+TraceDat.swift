import Foundation
import KVMExits

extension SyntheticWorkload {
    /// Writes the workload as a trace.dat that trace-cmd opens (`kvmscope bench synth`, and the tests' files):
    /// `eventsPerCPU` events on each host CPU, pages streamed into per-CPU spool files beside `path`, then into
    /// the file. Every vCPU thread is named `CPU n/KVM` and belongs to its VM (the first thread of its group).
    /// - Parameter headerPage: the header_page text to store (default: the writer's, the running kernel's layout).
    /// - Throws: ``KVMScopeError/io(_:)`` with the file and the system's reason.
    public func writeTraceDat(to path: String, formats: EventFormats, eventsPerCPU: Int,
                              headerPage: String? = nil) throws {
        let spool = "\(PathComponents.directory(of: path))/.kvmscope-synth-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: spool, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: spool) }
        var cpus: [TraceDatCPUData] = []
        for cpu in 0..<hostCPUs {
            let file = "\(spool)/cpu\(cpu)"
            let out = try OutputFile(path: file)
            try pages(formats: formats, cpu: cpu, events: eventsPerCPU) { try out.write($0) }
            try out.close()
            cpus.append(.file(file))
        }
        var m = TraceDatMetadata()
        if let headerPage { m.headerPage = headerPage }
        m.systems = [.init(name: "kvm", formats: ["kvm_exit", "kvm_entry"].compactMap { formats.formatTexts[$0] })]
        for t in threadIDs {
            m.cmdlines[t.tid] = "CPU \(t.vcpu)/KVM"
            m.tgids[t.tid] = t.vm
        }
        for cpu in 0..<hostCPUs {
            m.cpuStats[cpu] = "entries: 0\noverrun: 0\ncommit overrun: 0\nbytes: 0\ndropped events: 0\n"
        }
        try TraceDatWriter.write(path: path, metadata: m, cpus: cpus)
    }
}
