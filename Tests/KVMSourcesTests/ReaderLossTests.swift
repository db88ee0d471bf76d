import Foundation
import KVMExits
import KVMSources
import Testing

/// The live reader counts every loss it meets: a sub-buffer it must reject (corrupt) and a read that fails.
/// Driven through the reader's descriptor path (``CPUReader/init(fd:subbufSize:cpu:decoder:maxSubbufs:)``),
/// the loop the live session runs on each CPU.
@Suite struct ReaderLossTests {
    static let subbufSize = 4096

    /// Three sub-buffers of kvm_pio events: 10, then a corrupt one (its commit claims more data than the page
    /// holds), then 7.
    static func dump(formats: EventFormats) throws -> [UInt8] {
        let pio = try EventPayloadBuilder(formats: formats, event: "kvm_pio")
        var pages: [[UInt8]] = []
        for count in [10, 5, 7] {
            var b = RingBufferPageBuilder(subbufSize: subbufSize)
            for i in 0..<count {
                b.append(timestamp: UInt64(1_000 + i * 100), payload: pio.payload(pid: 42, ["port": 0x10, "size": 1, "rw": 1]))
            }
            pages += b.finish()
        }
        #expect(pages.count == 3)
        // The middle page's commit word (offset 8, 8 bytes) claims a whole page of data: past its end.
        pages[1].withUnsafeMutableBytes { $0.storeBytes(of: UInt64(subbufSize), toByteOffset: 8, as: UInt64.self) }
        return pages.flatMap { $0 }
    }

    @Test func corruptSubbufferIsCounted() throws {
        let formats = try Fixtures.formats("6.18-x86", events: ["kvm_pio"])
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("reader-loss-\(getpid()).raw").path
        #expect(FileManager.default.createFile(atPath: path, contents: Data(try Self.dump(formats: formats))))
        defer { unlink(path) }
        let fd = open(path, O_RDONLY | O_NONBLOCK)
        #expect(fd >= 0)
        let reader = try CPUReader(fd: fd, subbufSize: Self.subbufSize, cpu: 0, decoder: formats.makeDecoder())
        let aggregator = Aggregator(catalog: formats.catalog, shardCount: 1)
        // At the end of the dump the loop waits for more, as it does on an idle CPU: stop it once all is in.
        let stopper = Thread {
            let deadline = Date().addingTimeInterval(20)
            while Date() < deadline, aggregator.snapshot(timestamp: 0).eventTotals.reduce(0, +) < 17 { usleep(1000) }
            reader.stop()
        }
        stopper.start()
        LiveSession.count(reader, into: aggregator, shard: 0)
        let snap = aggregator.snapshot(timestamp: 0)
        #expect(snap.eventTotals == [17])
        #expect(snap.corruptSubbuffers == 1)
        #expect(snap.readErrors == 0)
    }

    @Test func readErrorIsCounted() throws {
        let formats = try Fixtures.formats("6.18-x86", events: ["kvm_pio"])
        // read() of a directory fails with EISDIR: the reader counts it and ends, without a word lost.
        let fd = open("/", O_RDONLY | O_NONBLOCK | O_DIRECTORY)
        #expect(fd >= 0)
        let reader = try CPUReader(fd: fd, subbufSize: Self.subbufSize, cpu: 0, decoder: formats.makeDecoder())
        let aggregator = Aggregator(catalog: formats.catalog, shardCount: 1)
        LiveSession.count(reader, into: aggregator, shard: 0)
        let snap = aggregator.snapshot(timestamp: 0)
        #expect(snap.readErrors == 1)
        #expect(snap.eventTotals == [0])
    }
}
