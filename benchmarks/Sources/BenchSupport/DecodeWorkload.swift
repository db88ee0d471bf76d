import Foundation
import KVMExits
import KVMSources

/// Pre-built sub-buffers of a synthetic kvm_exit/kvm_entry workload, in one contiguous buffer, and the
/// three stages of kvmscope's hot path run over them on the calling thread:
/// decode (C decoder → records), count (→ ShardWriter.add), pair (→ Pairer: latency histograms, top RIPs).
public final class DecodeWorkload {
    public enum Stage: String, CaseIterable, Sendable {
        case decode, count, pair
    }

    public let formats: EventFormats
    public let formatSource: String
    public let subbufSize = 4096
    /// Every page, back to back.
    public let bytes: [UInt8]
    public let pageCPUs: [UInt16]
    public let eventsPerPass: Int
    public let workload: SyntheticWorkload

    /// - Parameters: events: events per pass (exit + entry each count one); threads: vCPU threads.
    public init(events: Int, threads: Int = 64, hostCPUs: Int = 2) throws {
        (formats, formatSource) = try Self.loadFormats()
        workload = SyntheticWorkload(threads: threads, hostCPUs: hostCPUs, vcpusPerVM: 8)
        let pages = try workload.allPages(formats: formats, events: events, subbufSize: subbufSize)
        var bytes: [UInt8] = []
        bytes.reserveCapacity(pages.count * subbufSize)
        for p in pages { bytes.append(contentsOf: p.page) }
        self.bytes = bytes
        pageCPUs = pages.map { UInt16($0.cpu) }
        eventsPerPass = events / hostCPUs / 2 * 2 * hostCPUs
    }

    /// The running kernel's kvm_exit/kvm_entry formats when tracefs has them, else the 6.18 x86 fixtures.
    static func loadFormats() throws -> (EventFormats, String) {
        let f = EventFormats()
        let live = "/sys/kernel/tracing/events/kvm"
        if let exit = try? String(contentsOfFile: "\(live)/kvm_exit/format", encoding: .utf8),
           let entry = try? String(contentsOfFile: "\(live)/kvm_entry/format", encoding: .utf8) {
            try f.add(system: "kvm", format: exit)
            try f.add(system: "kvm", format: entry)
            return (f, "running kernel")
        }
        let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../../../Tests/Fixtures/formats/6.18-x86").standardized
        for e in ["kvm_exit", "kvm_entry"] {
            try f.add(system: "kvm", format: String(contentsOf: dir.appendingPathComponent("\(e).format"), encoding: .utf8))
        }
        return (f, "Tests/Fixtures/formats/6.18-x86")
    }

    /// A fresh pipeline (decoder, aggregator, pairer) for one thread.
    public func makePipeline() -> Pipeline { Pipeline(workload: self) }

    /// The state of one run: reuse it across passes (steady state), make a new one to start cold.
    public struct Pipeline {
        let decoder: SubbufferDecoder
        public let aggregator: Aggregator
        var writer: ShardWriter
        var pairer: Pairer
        let hasReason: [Bool]
        let exitEvent: UInt16
        let entryEvent: UInt16
        unowned let workload: DecodeWorkload

        init(workload: DecodeWorkload) {
            self.workload = workload
            let catalog = workload.formats.catalog
            decoder = workload.formats.makeDecoder()
            aggregator = Aggregator(catalog: catalog, shardCount: 1)
            writer = aggregator.writer(shard: 0)
            pairer = aggregator.makePairer()
            hasReason = (0..<256).map { $0 < catalog.count ? catalog.entries[$0].role.hasReasons : false }
            exitEvent = catalog.index(of: "kvm_exit")!
            entryEvent = catalog.index(of: "kvm_entry")!
        }

        /// One pass over every page through the stages up to `stage`. Returns events seen.
        @inline(never)
        public mutating func pass(_ stage: Stage) -> Int {
            var seen = 0
            let size = workload.subbufSize
            let cpus = workload.pageCPUs
            let hasReason = self.hasReason
            let exitEvent = self.exitEvent
            workload.bytes.withUnsafeBytes { raw in
                for (i, cpu) in cpus.enumerated() {
                    let page = UnsafeRawBufferPointer(rebasing: raw[i * size..<(i + 1) * size])
                    switch stage {
                    case .decode:
                        decoder.decode(page, cpu: cpu) { e in seen &+= Int(e.vcpu & 1) | 1 }
                    case .count:
                        decoder.decode(page, cpu: cpu) { e in
                            writer.add(e, hasReason: hasReason[Int(e.event) & 255])
                            seen &+= 1
                        }
                    case .pair:
                        decoder.decode(page, cpu: cpu) { e in
                            writer.add(e, hasReason: hasReason[Int(e.event) & 255])
                            if e.event == exitEvent { pairer.exit(e) } else { pairer.entry(e) }
                            seen &+= 1
                        }
                    }
                }
            }
            return seen
        }

        /// Exit → entry pairs recorded so far (a check that the pass really paired).
        public var paired: UInt64 { aggregator.pairing.snapshot.paired }
    }
}
