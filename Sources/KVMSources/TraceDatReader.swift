import CKVMScope
import Foundation
import KVMExits

/// A trace-cmd `trace.dat` file, version 6 or 7 (sections, options, zlib or zstd compression), as written
/// by trace-cmd ≥ 2.9 and by kvmscope: its metadata read at open, its events streamed in time order.
///
/// Metadata (formats, saved cmdlines, options) is read once in `init`. ``streams()`` walks each CPU's pages
/// (one page — or one decompressed chunk — per CPU in memory at a time) and decodes them with
/// ``SubbufferDecoder``; the pipeline merges the CPUs by timestamp. Every size in the file is checked against the
/// file before use; malformed input throws ``KVMScopeError/badFile(_:)`` with one line.
public final class TraceDatReader: TraceSource {
    public let path: String
    /// File version: 6 or 7.
    public let version: Int
    public let bigEndian: Bool
    /// The traced kernel's long size (from header_page's `commit` field), 4 or 8.
    public let longSize: Int
    /// The ring buffer's page (sub-buffer) size.
    public let pageSize: Int
    /// "zlib", "zstd", or nil when uncompressed.
    public let compression: String?
    /// CPUs of the traced machine (CPUCOUNT option, or the flyrecord's count).
    public let cpuCount: Int
    /// The trace clock ("mono", "x86-tsc", ...) when the file names it.
    public let traceClock: String?
    /// TSC2NSEC option: timestamps are converted as trace-cmd does, `(ts * mult) >> shift` (then offsets).
    public let tsc2nsec: (mult: UInt32, shift: UInt32, offset: UInt64)?
    /// Nanoseconds added to every timestamp (OFFSET and DATE options), as trace-cmd report does.
    public let timeOffset: Int64
    /// The kernel's per-CPU `stats` text saved in the file (CPUSTAT options), by CPU.
    public let cpuStats: [Int: String]
    /// Losses per CPU from those stats: `overrun` + `dropped events`.
    public let lostPerCPU: [Int: UInt64]
    /// Comm per tid (saved cmdlines).
    public let comms: [Int32: String]
    /// The formats of the file's kvm events (the catalog is the kvm events present).
    public let formats: EventFormats
    /// Names of every event the file has a format for, "system:name".
    public let allEvents: [String]
    /// Metadata strings of interest: uname, trace-cmd version.
    public let uname: String?

    public var catalog: EventCatalog { formats.catalog }
    public let identities: [Int32: ThreadIdentity]
    /// kvmscope's per-VM resource samples (``TraceDatMetadata/resourcesJSON``); nil in other files.
    public let resourcesJSON: String?
    /// Bytes of per-CPU trace data in the file (compressed sizes when compressed).
    public var dataBytes: Int { cpuData.reduce(0) { $0 + $1.size } }

    /// Where one CPU's trace data lies in the file (compressed when the file is).
    public struct CPUData: Sendable {
        public var cpu: Int
        public var offset: Int
        public var size: Int
    }
    /// Where each CPU's trace data lies in the file, in the file's CPU order.
    public let cpuData: [CPUData]
    let dataCompressed: Bool
    let algo: Int32
    let file: ByteBlock

    /// Opens and reads the metadata. Throws one-line ``KVMScopeError/badFile(_:)`` errors naming the file.
    public convenience init(path: String) throws {
        do { try self.init(opening: path) } catch { throw Self.naming(error, path) }
    }

    /// A bad-file error built deep in a byte reader (which knows the section, not the file), or an event format
    /// of the file that does not parse, with the file's name put in front; the file's own bytes that a message
    /// quotes (names, kinds, versions) have their control characters escaped, so it stays one line.
    static func naming(_ error: any Error, _ path: String) -> any Error {
        let message: String
        switch error {
        case KVMScopeError.badFile(let m), KVMScopeError.badFormat(let m): message = m
        default: return error
        }
        var line = message.hasPrefix(path) ? "" : "\(path): "
        for c in message.unicodeScalars {
            line += c.properties.generalCategory == .control ? c.escaped(asASCII: true) : String(c)
        }
        return KVMScopeError.badFile(line)
    }

    init(opening path: String) throws {
        self.path = path
        file = try ByteBlock(mapping: path)
        var r = ByteReader(file, what: "trace.dat header")
        let magic = try r.bytes(10)
        guard magic.elementsEqual([0x17, 0x08, 0x44] + Array("tracing".utf8)) else {
            throw KVMScopeError.badFile("\(path) is not a trace.dat file (bad magic)")
        }
        let versionText = try r.cString(max: 16)
        guard let v = Int(versionText), v == 6 || v == 7 else {
            throw KVMScopeError.badFile("\(path): unsupported trace.dat version '\(versionText.prefix(16))' (6 and 7 are)")
        }
        version = v
        let endian = try r.u8()
        guard endian <= 1 else { throw KVMScopeError.badFile("\(path): bad endianness byte \(endian)") }
        bigEndian = endian == 1
        let userLong = try r.u8()
        guard userLong == 4 || userLong == 8 else { throw KVMScopeError.badFile("\(path): bad long size \(userLong)") }
        r = ByteReader(file, from: r.pos, bigEndian: bigEndian, what: "trace.dat header")
        let ps = try r.u32()
        guard ps >= 64 && ps <= 1 << 24 && ps.nonzeroBitCount == 1 else {
            throw KVMScopeError.badFile("\(path): bad page size \(ps)")
        }

        var meta = Metadata(path: path, bigEndian: bigEndian)
        if v == 6 {
            try meta.readV6(&r)
            compression = nil
            algo = 0
            dataCompressed = false
        } else {
            let name = try r.cString(max: 64)
            _ = try r.cString(max: 64)
            switch name {
            case "none", "": compression = nil; algo = 0
            case "zlib": compression = name; algo = Int32(CKVMSCOPE_COMPRESS_ZLIB)
            case "zstd": compression = name; algo = Int32(CKVMSCOPE_COMPRESS_ZSTD)
            default: throw KVMScopeError.badFile("\(path): unsupported compression '\(name.prefix(32))'")
            }
            let optionsAt = try r.u64()
            meta.file = file
            meta.algo = algo
            try meta.readV7(optionsAt: optionsAt)
            dataCompressed = meta.dataCompressed
        }
        pageSize = meta.bufferPageSize ?? Int(ps)
        longSize = meta.kernelLongSize ?? Int(userLong)
        cpuCount = meta.cpuCount ?? meta.cpuData.count
        traceClock = meta.traceClock
        tsc2nsec = meta.tsc2nsec
        timeOffset = meta.timeOffset
        cpuStats = meta.cpuStats
        comms = meta.comms
        resourcesJSON = meta.resourcesJSON
        uname = meta.uname
        allEvents = meta.allEvents
        var lost: [Int: UInt64] = [:]
        for (cpu, text) in meta.cpuStats { lost[cpu] = TraceFS.lost(inStats: text) }
        lostPerCPU = lost
        cpuData = meta.cpuData
        let f = EventFormats(untrusted: true)
        for text in meta.kvmFormats { try f.add(system: "kvm", format: text) }
        formats = f
        var ids: [Int32: ThreadIdentity] = [:]
        for tid in Set(meta.comms.keys).union(meta.tgids.keys) {
            let comm = meta.comms[tid]
            let tgid = meta.tgids[tid] ?? tid
            // The VM is named by its guest name (kvmscope's option), else by its main thread's comm (a "CPU N/KVM"
            // thread names no VM) — also in a file without tgids (trace-cmd's), where each thread is its own VM and
            // is named by its own saved comm, as the text reader names the threads of `trace-cmd report` text.
            let name = meta.guestNames[tgid]
                ?? meta.comms[tgid].flatMap { ThreadIdentity.vcpu(fromThreadName: $0) == nil ? $0 : nil }
            ids[tid] = ThreadIdentity(vm: tgid, vmName: name,
                                      vcpu: comm.flatMap(ThreadIdentity.vcpu(fromThreadName:)), comm: comm)
        }
        identities = ids
        hasTGIDs = !meta.tgids.isEmpty
    }

    /// Whether the file maps threads to processes (kvmscope's recordings do; trace-cmd's do not): without it
    /// each vCPU thread counts as its own VM.
    public private(set) var hasTGIDs = false

    /// What `kvmscope record` noted in the file's statistics (lines `kvmscope …` of the CPU stats), without the
    /// prefix, e.g. "dropped pages: 14" (pages past --max-size or that could not be written: their events are
    /// not in the file), "recovered: …", "truncated: the disk was full: …"; empty for other files.
    public var recorderNotes: [String] {
        cpuStats.sorted { $0.key < $1.key }.flatMap { _, stats in
            stats.split(separator: "\n").filter { $0.hasPrefix("kvmscope ") }.map { String($0.dropFirst("kvmscope ".count)) }
        }
    }

    /// Pages `kvmscope record` did not write (``recorderNotes``' "dropped pages: N"): past --max-size, or a
    /// write failed. Their events are in no count of the file (neither its events nor the kernel's losses).
    public var droppedPages: UInt64 {
        recorderNotes.reduce(0) { n, note in
            guard note.hasPrefix("dropped pages: ") else { return n }
            return n + (UInt64(note.dropFirst("dropped pages: ".count).trimmingCharacters(in: .whitespaces)) ?? 0)
        }
    }

    /// Whether `kvmscope record` noted that the disk filled and pages after the last complete one were lost.
    public var truncatedByFullDisk: Bool { recorderNotes.contains { $0.hasPrefix("truncated:") } }

    /// A raw timestamp of the file converted to nanoseconds as `trace-cmd report` does.
    @inlinable
    public func nanoseconds(_ ts: UInt64) -> UInt64 {
        var t = ts
        if let c = tsc2nsec, c.mult != 0 {
            let lo = t & 0xffff_ffff, hi = t >> 32
            var n = (lo &* UInt64(c.mult)) >> UInt64(c.shift)
            if hi != 0 { n &+= (hi &* UInt64(c.mult)) &<< (32 &- UInt64(c.shift)) }
            t = n
        }
        return UInt64(bitPattern: Int64(bitPattern: t) &+ timeOffset)
    }

    /// One stream per CPU with data, in the file's CPU order: each decodes its CPU's pages one at a time (one
    /// page — or one decompressed chunk — in memory), with its own decoder (its losses are that CPU's).
    public func streams() throws -> [any EventStream] {
        let made = cpuData.filter { $0.size > 0 }.map {
            CPUStream(data: $0, reader: self, decoder: formats.makeDecoder(longSize: longSize, bigEndian: bigEndian))
        }
        lastStreams = made
        return made
    }

    var lastStreams: [CPUStream] = []

    /// Events and losses: per CPU, the kernel's counters saved in the file (CPUSTAT: `overrun`, `dropped
    /// events`), and what the pages of the last ``streams()`` said as they were decoded (missed-events
    /// counts, sub-buffers flagged without a count, events decoded).
    public var statistics: SourceStatistics {
        var s = SourceStatistics()
        for (cpu, text) in cpuStats {
            s.add(LossCounts(kernelStats: text), cpu: cpu)
        }
        for st in lastStreams {
            let d = st.decoder
            s.events &+= st.decoded
            if d.missedEvents > 0 || d.missedUnknown > 0 || d.corruptSubbuffers > 0 {
                s.add(LossCounts(flagged: d.missedEvents, corruptSubbuffers: d.corruptSubbuffers,
                                 unknownGaps: d.missedUnknown), cpu: st.data.cpu)
            }
        }
        return s
    }

    /// Events the pages themselves flagged as lost (missed-events counts) in what was read so far.
    public var decodedMissed: UInt64 { lastStreams.reduce(0) { $0 &+ $1.decoder.missedEvents } }
}

/// One CPU's pages, decoded a page at a time.
final class CPUStream: EventStream {
    let data: TraceDatReader.CPUData
    unowned let reader: TraceDatReader
    let decoder: SubbufferDecoder
    /// Events decoded so far.
    var decoded: UInt64 = 0
    /// Next byte of the CPU's (uncompressed) data to decode, relative to the current block.
    var pos: Int
    var blockEnd: Int
    var block: ByteBlock
    /// Compressed data: the next chunk header's offset, chunks left.
    var nextChunk = 0
    var chunksLeft = 0
    let scratch: ByteBlock

    init(data: TraceDatReader.CPUData, reader: TraceDatReader, decoder: SubbufferDecoder) {
        self.data = data
        self.reader = reader
        self.decoder = decoder
        block = reader.file
        // Compressed data starts with no block: the first refill decompresses the first chunk.
        pos = reader.dataCompressed ? 0 : data.offset
        blockEnd = reader.dataCompressed ? 0 : data.offset + data.size
        scratch = ByteBlock(capacity: reader.pageSize + 64)
    }

    /// Decodes pages until at least one event is ready. Returns false when the CPU's data is exhausted.
    func next(_ events: inout [TraceEvent]) throws -> Bool {
        events.removeAll(keepingCapacity: true)
        let ps = reader.pageSize
        while events.isEmpty {
            if pos >= blockEnd {
                // A bad chunk's error, built by a byte reader that knows the section, names the file.
                let more: Bool
                do { more = try nextBlock() } catch { throw TraceDatReader.naming(error, reader.path) }
                guard more else { return false }
                continue
            }
            let n = min(ps, blockEnd - pos)
            let at = pos
            pos += n
            let ok: Bool
            if n == ps {
                // A whole page: decoded where it lies (the mapped file or the decompressed block).
                ok = decoder.decode(UnsafeRawBufferPointer(rebasing: block.bytes[at..<at + ps]),
                                    cpu: UInt16(truncatingIfNeeded: data.cpu), appendingTo: &events)
            } else {
                // The CPU's last, short page: copied and padded with zeros to a whole page.
                let page = scratch.mutableBytes
                page.copyMemory(from: UnsafeRawBufferPointer(rebasing: block.bytes[at..<at + n]))
                UnsafeMutableRawBufferPointer(rebasing: page[n..<ps]).initializeMemory(as: UInt8.self, repeating: 0)
                ok = decoder.decode(UnsafeRawBufferPointer(rebasing: scratch.bytes[0..<ps]),
                                    cpu: UInt16(truncatingIfNeeded: data.cpu), appendingTo: &events)
            }
            guard ok else {
                let whereText = reader.dataCompressed ? "byte \(at) of a decompressed chunk" : "file offset \(at)"
                throw KVMScopeError.badFile("\(reader.path): corrupt ring-buffer page of cpu \(data.cpu) at \(whereText)")
            }
        }
        if reader.tsc2nsec != nil || reader.timeOffset != 0 {
            for i in events.indices { events[i].timestamp = reader.nanoseconds(events[i].timestamp) }
        }
        decoded &+= UInt64(events.count)
        return true
    }

    /// Compressed data: decompresses the next chunk. Uncompressed: nothing more.
    func nextBlock() throws -> Bool {
        guard reader.dataCompressed else { return false }
        // Chunks are bounded by the file, not by the CPU's size: trace-cmd 3.1.6 records that size without the
        // 4-byte chunk count (3.2 with it).
        var r = ByteReader(reader.file, from: data.offset, to: reader.file.count, bigEndian: reader.bigEndian,
                           what: "compressed data of cpu \(data.cpu)")
        if nextChunk == 0 {
            let count = try r.u32()
            guard UInt64(count) * 8 <= UInt64(r.remaining) else {
                throw KVMScopeError.badFile("\(reader.path): cpu \(data.cpu) claims \(count) compressed chunks in \(r.remaining) bytes")
            }
            chunksLeft = Int(count)
            nextChunk = r.pos
        }
        guard chunksLeft > 0 else { return false }
        r.pos = nextChunk
        let (b, _) = try Decompression.block(&r, algo: reader.algo, path: reader.path)
        chunksLeft -= 1
        nextChunk = r.pos
        block = b
        pos = 0
        blockEnd = b.count
        return true
    }
}

/// Compressed blocks of a v7 file: `u32 compressed size, u32 uncompressed size, data`.
enum Decompression {
    /// Uncompressed sizes above this need a matching compressed size (no unbounded allocation).
    static let freeLimit = 16 << 20
    static let maxRatio = 4096

    static func block(_ r: inout ByteReader, algo: Int32, path: String) throws -> (ByteBlock, Int) {
        let zsize = try r.size(UInt64(try r.u32()), of: "compressed block")
        let usize = Int(try r.u32())
        guard usize <= max(freeLimit, zsize * maxRatio) else {
            throw KVMScopeError.badFile("\(path): compressed block of \(zsize) bytes claims \(usize) uncompressed bytes")
        }
        let src = try r.bytes(zsize)
        let out = ByteBlock(capacity: usize)
        let n = ckvmscope_decompress(algo, src.baseAddress, src.count, out.mutableBytes.baseAddress, usize)
        guard n == usize else {
            throw KVMScopeError.badFile("\(path): corrupt compressed block at offset \(r.pos - zsize - 8) (\(n < 0 ? "does not decompress" : "decompresses to \(n) bytes, not \(usize)"))")
        }
        return (out, zsize)
    }
}
