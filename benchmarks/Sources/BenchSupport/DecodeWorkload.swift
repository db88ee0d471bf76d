import Foundation
import KVMExits
import KVMSources

/// Pre-built sub-buffers of a synthetic kvm_exit/kvm_entry workload, in one contiguous buffer, and
/// kvmscope's hot path run over them on the calling thread: decode (C decoder → records), count (→
/// ShardWriter.add), and the shipped pipeline (``ExitPipeline``: per-CPU streams merged, counted, paired).
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

    /// The pages as a source: one stream per host CPU, as a trace.dat or the live readers give them.
    public func source() -> PagesTraceSource {
        var byCPU: [UInt16: [[UInt8]]] = [:]
        for (i, cpu) in pageCPUs.enumerated() {
            byCPU[cpu, default: []].append(Array(bytes[i * subbufSize..<(i + 1) * subbufSize]))
        }
        return PagesTraceSource(formats: formats, pagesByCPU: byCPU.keys.sorted().map { ($0, byCPU[$0]!) })
    }

    /// A fresh run (decoder, shard writer, and the shipped ``ExitPipeline``) for one thread.
    public func makeRun() -> Run { Run(workload: self) }

    /// The state of one run: reuse it across passes (steady state), make a new one to start cold.
    ///
    /// `decode` and `count` time the first stages alone (the C decoder; the decoder and the shard writer);
    /// `pair` runs what users run: the pages as per-CPU streams through ``ExitPipeline`` (decode, merge of the
    /// CPUs by timestamp, count, pair).
    public struct Run {
        let decoder: SubbufferDecoder
        let counting: Aggregator
        var writer: ShardWriter
        public var pipeline: ExitPipeline
        let source: PagesTraceSource
        let hasReason: [Bool]
        unowned let workload: DecodeWorkload

        init(workload: DecodeWorkload) {
            self.workload = workload
            let catalog = workload.formats.catalog
            decoder = workload.formats.makeDecoder()
            counting = Aggregator(catalog: catalog, shardCount: 1)
            writer = counting.writer(shard: 0)
            pipeline = ExitPipeline(catalog: catalog)
            source = workload.source()
            hasReason = (0..<256).map { $0 < catalog.count ? catalog.entries[$0].role.hasReasons : false }
        }

        /// One pass over every page through the stages up to `stage`. Returns events seen.
        @inline(never)
        public mutating func pass(_ stage: Stage) -> Int {
            if stage == .pair {
                // Streams are made per pass (a few allocations per pass, none per event).
                return Int((try? pipeline.run(source.streams())) ?? 0)
            }
            var seen = 0
            let size = workload.subbufSize
            let cpus = workload.pageCPUs
            let hasReason = self.hasReason
            workload.bytes.withUnsafeBytes { raw in
                for (i, cpu) in cpus.enumerated() {
                    let page = UnsafeRawBufferPointer(rebasing: raw[i * size..<(i + 1) * size])
                    switch stage {
                    case .decode:
                        decoder.decode(page, cpu: cpu) { e in seen &+= Int(e.vcpu & 1) | 1 }
                    case .count, .pair:
                        decoder.decode(page, cpu: cpu) { e in
                            writer.add(e, hasReason: hasReason[Int(e.event) & 255])
                            seen &+= 1
                        }
                    }
                }
            }
            return seen
        }

        /// Exit → entry pairs recorded so far (a check that the pass really paired).
        public var paired: UInt64 { pipeline.aggregator.pairing.snapshot.paired }
    }
}
