import CKVMScope
import Foundation
import KVMExits

/// How the trace data of a version 7 file is compressed.
public enum TraceDatCompression: String, Sendable, CaseIterable {
    case none
    /// zstd, as trace-cmd 3.x records by default (sections and per-CPU data in page-aligned chunks).
    case zstd
}

extension TraceDatWriter {
    /// Writes a trace.dat of the given version: 6 (``write(path:metadata:cpus:)``, uncompressed) or 7
    /// (trace-cmd.dat.v7(5): sections found through options sections, optionally zstd-compressed), the
    /// layout trace-cmd 3.1.6 writes and Debian's `trace-cmd report` reads.
    ///
    /// - Parameters:
    ///   - version: 6 or 7.
    ///   - compression: `.none` or `.zstd` (version 7 only).
    /// - Throws: ``KVMScopeError/io(_:)`` on write errors, ``KVMScopeError/usage(_:)``-like `.io` for a
    ///   version 6 file asked to be compressed.
    public static func write(path: String, metadata m: TraceDatMetadata, cpus: [TraceDatCPUData], version: Int,
                             compression: TraceDatCompression) throws {
        switch version {
        case 6:
            guard compression == .none else { throw KVMScopeError.io("\(path): trace.dat version 6 cannot be compressed") }
            try write(path: path, metadata: m, cpus: cpus)
        case 7:
            try writeV7(path: path, metadata: m, cpus: cpus, compression: compression)
        default:
            throw KVMScopeError.io("\(path): cannot write trace.dat version \(version) (6 and 7 are written)")
        }
    }

    /// Uncompressed bytes per compressed chunk of CPU data (whole pages, as trace-cmd's chunks).
    static let chunkPages = 16

    static func writeV7(path: String, metadata m: TraceDatMetadata, cpus: [TraceDatCPUData],
                        compression: TraceDatCompression) throws {
        let compress = compression == .zstd
        var strings: [UInt8] = []
        func string(_ s: String) -> UInt32 {
            let at = UInt32(strings.count)
            strings += Array(s.utf8) + [0]
            return at
        }
        var h = HeaderBytes()
        h.raw([0x17, 0x08, 0x44])
        h.string("tracing7")
        h.raw([0, UInt8(m.longSize)])
        h.u32(UInt32(m.pageSize))
        if compress {
            h.string("zstd")
            h.string(String(cString: ckvmscope_zstd_version()))
        } else {
            h.string("none")
            h.string("")
        }
        let optionsOffsetAt = h.bytes.count
        h.u64(0)  // patched below

        /// A section: header (id, flags, description, size) then the payload, compressed when asked.
        func section(_ id: UInt16, _ name: String, _ payload: [UInt8]) throws -> UInt64 {
            let at = UInt64(h.bytes.count)
            var body = payload
            var flags: UInt16 = 0
            if compress {
                body = try compressBlock(payload, path: path)
                flags = 1
            }
            h.u16(id)
            h.u16(flags)
            h.u32(string(name))
            h.u64(UInt64(body.count))
            h.raw(body)
            return at
        }
        var b = HeaderBytes()
        b.string("header_page")
        b.blob64(m.headerPage)
        b.string("header_event")
        b.blob64(m.headerEvent)
        let headerInfo = try section(16, "headers", b.bytes)
        b = HeaderBytes()
        b.u32(UInt32(m.ftraceFormats.count))
        for f in m.ftraceFormats { b.blob64(f) }
        let ftrace = try section(17, "ftrace events", b.bytes)
        b = HeaderBytes()
        b.u32(UInt32(m.systems.count))
        for sys in m.systems {
            b.string(sys.name)
            b.u32(UInt32(sys.formats.count))
            for f in sys.formats { b.blob64(f) }
        }
        let formats = try section(18, "events format", b.bytes)
        b = HeaderBytes()
        b.blob32(m.kallsyms)
        let kallsyms = try section(19, "kallsyms", b.bytes)
        b = HeaderBytes()
        b.blob32(m.printkFormats)
        let printk = try section(20, "printk", b.bytes)
        b = HeaderBytes()
        b.blob64(m.cmdlines.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)\n" }.joined())
        let cmdlines = try section(21, "command lines", b.bytes)

        // Per-CPU data: compressed chunks in memory, or the files as they are.
        var data: [[UInt8]] = []
        var sizes: [Int] = []
        for c in cpus {
            if compress {
                let raw: [UInt8]
                switch c {
                case .pages(let p): raw = p.flatMap { $0 }
                case .file(let f):
                    // Whole pages only: a page cut short by a full disk or a kill is left out.
                    let bytes = try FileBytes.read(f)
                    raw = Array(bytes.prefix(bytes.count / m.pageSize * m.pageSize))
                }
                var out = HeaderBytes()
                let chunk = chunkPages * m.pageSize
                let count = raw.isEmpty ? 0 : (raw.count + chunk - 1) / chunk
                out.u32(UInt32(count))
                for i in 0..<count {
                    out.raw(try compressBlock(Array(raw[(i * chunk)..<min(raw.count, (i + 1) * chunk)]), path: path))
                }
                data.append(out.bytes)
                // trace-cmd 3.1.6 records the size without the 4-byte chunk count.
                sizes.append(max(0, out.bytes.count - 4))
            } else {
                switch c {
                case .pages(let p): sizes.append(p.reduce(0) { $0 + $1.count })
                case .file(let f):
                    let s = (try? FileManager.default.attributesOfItem(atPath: f)[.size] as? Int) ?? nil
                    guard let s else { throw KVMScopeError.io("cannot read \(f)") }
                    sizes.append(s / m.pageSize * m.pageSize)
                }
                data.append([])
            }
        }

        // The options section, then the buffer section (header, then each CPU's data from a page boundary).
        let align = { (x: Int) in (x + m.pageSize - 1) / m.pageSize * m.pageSize }
        func options(bufferAt: UInt64, cpuOffsets: [Int]) -> [UInt8] {
            var o = HeaderBytes()
            for (id, at) in [(UInt16(16), headerInfo), (17, ftrace), (18, formats), (19, kallsyms), (20, printk),
                             (21, cmdlines)] {
                o.u16(id)
                o.u32(8)
                o.u64(at)
            }
            o.option(4, "[\(m.traceClock)]")
            if let uname = m.uname { o.option(5, uname) }
            for (cpu, stats) in m.cpuStats.sorted(by: { $0.key < $1.key }) { o.option(2, "CPU: \(cpu)\n\(stats)") }
            o.u16(8)
            o.u32(4)
            o.u32(UInt32(cpus.count))
            if !m.tgids.isEmpty { o.option(TraceDatMetadata.savedTGIDsOption, m.savedTGIDsText) }
            if !m.guestNames.isEmpty { o.option(TraceDatMetadata.guestNamesOption, m.guestNamesText) }
            if let r = m.resourcesJSON { o.option(TraceDatMetadata.resourcesOption, r) }
            var buf = HeaderBytes()
            buf.u64(bufferAt)
            buf.string("")
            buf.string(m.traceClock)
            buf.u32(UInt32(m.pageSize))
            buf.u32(UInt32(cpus.count))
            for i in cpus.indices {
                buf.u32(UInt32(i))
                buf.u64(UInt64(cpuOffsets[i]))
                buf.u64(UInt64(sizes[i]))
            }
            o.u16(3)
            o.u32(UInt32(buf.bytes.count))
            o.raw(buf.bytes)
            o.u16(15)
            o.u32(UInt32(strings.count))
            o.raw(strings)
            o.u16(0)
            o.u32(8)
            o.u64(0)
            return o.bytes
        }
        let optionsAt = h.bytes.count
        let optionsName = string("options")
        let bufferName = string("buffer flyrecord")
        var layout: (buffer: Int, offsets: [Int], end: Int) = (0, [], 0)
        func place(_ optionsSize: Int) {
            let buffer = optionsAt + 16 + optionsSize
            var at = align(buffer + 16)
            var offsets: [Int] = []
            for i in cpus.indices {
                offsets.append(at)
                at = compress ? align(at + data[i].count) : align(at + sizes[i])
            }
            layout = (buffer, offsets, at)
        }
        place(options(bufferAt: 0, cpuOffsets: Array(repeating: 0, count: cpus.count)).count)
        let opts = options(bufferAt: UInt64(layout.buffer), cpuOffsets: layout.offsets)
        h.u16(0)
        h.u16(0)
        h.u32(optionsName)
        h.u64(UInt64(opts.count))
        h.raw(opts)
        h.u16(3)
        h.u16(compress ? 1 : 0)
        h.u32(bufferName)
        h.u64(UInt64(layout.end - (layout.buffer + 16)))
        withUnsafeBytes(of: UInt64(optionsAt).littleEndian) { p in
            for k in 0..<8 { h.bytes[optionsOffsetAt + k] = p[k] }
        }

        let out = try OutputFile(path: path)
        try out.write(h.bytes)
        for (i, c) in cpus.enumerated() {
            try out.pad(to: layout.offsets[i])
            if compress {
                try out.write(data[i])
            } else {
                switch c {
                case .pages(let pages): for p in pages { try out.write(p) }
                case .file(let f): try out.copy(from: f, limit: sizes[i])
                }
            }
        }
        try out.pad(to: layout.end)
        try out.close()
    }

    /// `u32 compressed size, u32 uncompressed size, data` (trace-cmd.dat.v7(5)).
    static func compressBlock(_ src: [UInt8], path: String) throws -> [UInt8] {
        var dst = [UInt8](repeating: 0, count: ckvmscope_compress_bound(src.count))
        let n = src.withUnsafeBytes { s in
            dst.withUnsafeMutableBytes { d in
                ckvmscope_compress(Int32(CKVMSCOPE_COMPRESS_ZSTD), s.baseAddress, s.count, d.baseAddress, d.count)
            }
        }
        guard n >= 0 else { throw KVMScopeError.io("\(path): zstd compression failed") }
        var out = HeaderBytes()
        out.u32(UInt32(n))
        out.u32(UInt32(src.count))
        out.raw(Array(dst[0..<n]))
        return out.bytes
    }
}
