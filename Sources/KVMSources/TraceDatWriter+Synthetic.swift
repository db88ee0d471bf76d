import Foundation
import KVMExits

/// What ``TraceDatWriter/synthesize(path:events:vcpus:formats:seed:)`` wrote: the known answers.
public struct SyntheticTrace: Sendable, Equatable {
    public var exits = 0
    public var entries = 0
    /// Exits per reason name (VMX names, as the catalog names them).
    public var exitsPerReason: [String: Int] = [:]
    /// Exits per vCPU thread id.
    public var exitsPerThread: [Int32: Int] = [:]
    public var bytes = 0
    /// Thread ids of the vCPUs: `firstTID + v` is "CPU v/KVM".
    public static let firstTID: Int32 = 40_000
    public static let vmPID: Int32 = 39_999
}

extension TraceDatWriter {
    /// VMX exit reasons with weights (out of 100), roughly a busy Linux guest's mix.
    static let reasonMix: [(reason: UInt32, weight: UInt64)] = [
        (32, 35), (12, 20), (56, 15), (49, 10), (1, 6), (52, 5), (48, 4), (30, 2), (45, 1), (10, 1), (40, 1),
    ]

    /// Writes a synthetic trace.dat of `events` kvm_exit/kvm_entry events (half each, exit then entry on each
    /// vCPU thread, vCPU v on host CPU v) built with the kernel's own page layout from `formats` (which must
    /// hold kvm_exit and kvm_entry). Deterministic for a seed. `trace-cmd report` opens it.
    @discardableResult
    public static func synthesize(path: String, events: Int, vcpus: Int = 4, formats: EventFormats, seed: UInt64 = 1,
                                  headerPage: String? = nil) throws -> SyntheticTrace {
        guard vcpus >= 1, vcpus <= 1024, events >= 0 else { throw KVMScopeError.usage("synthesize: bad vcpus or events") }
        guard let exitText = formats.formatTexts["kvm_exit"], let entryText = formats.formatTexts["kvm_entry"] else {
            throw KVMScopeError.unknownEvent("synthesize needs the kvm_exit and kvm_entry formats")
        }
        let exitB = try EventPayloadBuilder(formats: formats, event: "kvm_exit")
        let entryB = try EventPayloadBuilder(formats: formats, event: "kvm_entry")
        let exitIndex = formats.catalog.index(of: "kvm_exit")!
        var result = SyntheticTrace()
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kvmscope-synth-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        var cpuFiles: [TraceDatCPUData] = []
        let pairs = events / 2
        let totalWeight = reasonMix.reduce(0) { $0 + $1.weight }
        for v in 0..<vcpus {
            let tid = SyntheticTrace.firstTID + Int32(v)
            let myPairs = pairs / vcpus + (v < pairs % vcpus ? 1 : 0)
            var rng = seed &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(v) &* 0xBF58_476D_1CE4_E5B9 | 1
            func next() -> UInt64 {
                rng ^= rng << 13
                rng ^= rng >> 7
                rng ^= rng << 17
                return rng
            }
            var exitTemplate = exitB.payload(pid: tid, ["isa": 1, "vcpu_id": UInt64(v)])
            var entryTemplate = entryB.payload(pid: tid, ["vcpu_id": UInt64(v)])
            let ef = formats.fieldTable(kernelID: exitB.kernelID)
            let nf = formats.fieldTable(kernelID: entryB.kernelID)
            func put(_ b: inout [UInt8], _ f: (offset: Int, size: Int)?, _ value: UInt64) {
                guard let f else { return }
                for i in 0..<min(f.size, 8) { b[f.offset + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
            }
            let file = dir.appendingPathComponent("cpu\(v)").path
            let out = try OutputFile(path: file)
            var builder = RingBufferPageBuilder(subbufSize: 4096)
            var t: UInt64 = 1_000_000_000 + UInt64(v) * 1_000
            for k in 0..<myPairs {
                let x = next()
                var pick = x % totalWeight
                var reason: UInt32 = 32
                for (r, w) in reasonMix {
                    if pick < w { reason = r; break }
                    pick -= w
                }
                let rip = 0xffff_ffff_8100_0000 &+ (x >> 20) % 64 &* 0x40
                put(&exitTemplate, ef["exit_reason"], UInt64(reason))
                put(&exitTemplate, ef["guest_rip"], rip)
                put(&exitTemplate, ef["info1"], x & 0xffff)
                builder.append(timestamp: t, payload: exitTemplate)
                let latency: UInt64 = reason == 12 ? 2_000 + (x >> 8) % 400_000 : 300 + (x >> 8) % 8_000
                t += latency
                put(&entryTemplate, nf["rip"], rip &+ 2)
                builder.append(timestamp: t, payload: entryTemplate)
                t += 200 + (x >> 32) % 3_000
                result.exits += 1
                result.entries += 1
                result.exitsPerReason[formats.catalog.reasonName(event: exitIndex, reason: reason, isa: 1) ?? "?", default: 0] += 1
                result.exitsPerThread[tid, default: 0] += 1
                if k % 2048 == 2047 {
                    for p in builder.finish() { try out.write(p) }
                    builder = RingBufferPageBuilder(subbufSize: 4096)
                }
            }
            for p in builder.finish() { try out.write(p) }
            try out.close()
            cpuFiles.append(.file(file))
        }
        var m = TraceDatMetadata()
        if let headerPage { m.headerPage = headerPage }
        m.systems = [.init(name: "kvm", formats: [exitText, entryText])]
        m.cmdlines[SyntheticTrace.vmPID] = "qemu-system-x86"
        for v in 0..<vcpus { m.cmdlines[SyntheticTrace.firstTID + Int32(v)] = "CPU \(v)/KVM" }
        for v in 0..<vcpus { m.cpuStats[v] = "entries: 0\noverrun: 0\ncommit overrun: 0\nbytes: 0\ndropped events: 0\n" }
        try write(path: path, metadata: m, cpus: cpuFiles)
        result.bytes = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
        return result
    }
}
