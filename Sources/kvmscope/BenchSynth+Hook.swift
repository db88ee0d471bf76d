import KVMTrace

/// Where `kvmscope bench synth` hands its pages to the trace.dat writer.
///
/// TODO(tracedat, merge): the trace.dat writer lives on branch tracedat. Wire it here, e.g.:
///
///     let writer = try TraceDatWriter(path: path, formats: formats, cpus: workload.hostCPUs,
///                                     cmdlines: workload.threadIDs.map { ($0.tid, "CPU \($0.vcpu)/KVM") },
///                                     tgids: workload.threadIDs.map { ($0.tid, $0.vm) })
///     for cpu in 0..<workload.hostCPUs {
///         try workload.pages(formats: formats, cpu: cpu, events: eventsPerCPU) { try writer.append(page: $0, cpu: cpu) }
///     }
///     try writer.finish()
///
/// and set `available` to true. Until then `bench synth` fails with one clear line.
enum SyntheticTraceDat {
    static let available = false

    static func write(to path: String, formats: EventFormats, workload: SyntheticWorkload, eventsPerCPU: Int) throws {
        throw KVMScopeError.usage("bench synth: not available in this build (needs the trace.dat writer)")
    }
}
