import CKVMScope
import Foundation
import KVMExits

extension TraceDatReader {
    /// Option ids of trace-cmd (trace-cmd.dat.v7(5)).
    enum Option: UInt16 {
        case done = 0, date = 1, cpuStat = 2, buffer = 3, traceClock = 4, uname = 5, offset = 7, cpuCount = 8
        case version = 9, tsc2nsec = 14, strings = 15
        case headerInfo = 16, ftraceEvents = 17, eventFormats = 18, kallsyms = 19, printk = 20, cmdlines = 21
        /// kvmscope's tgid table (``TraceDatMetadata/tgids``), gpuvis' TRACECMD_OPTION_SAVED_TGIDS.
        case savedTGIDs = 32
        /// kvmscope's guest names per tgid (``TraceDatMetadata/guestNames``).
        case guestNames = 0x4b01
        /// kvmscope's per-VM resource samples, JSON (``TraceDatMetadata/resourcesJSON``).
        case resources = 0x4b02
    }

    /// What the header, sections and options say; gathered while reading, then frozen into the reader.
    struct Metadata {
        let path: String
        let bigEndian: Bool
        var file: ByteBlock?
        var algo: Int32 = 0
        var kernelLongSize: Int?
        var bufferPageSize: Int?
        var cpuCount: Int?
        var traceClock: String?
        var tsc2nsec: (mult: UInt32, shift: UInt32, offset: UInt64)?
        var timeOffset: Int64 = 0
        var cpuStats: [Int: String] = [:]
        var comms: [Int32: String] = [:]
        var tgids: [Int32: Int32] = [:]
        var guestNames: [Int32: String] = [:]
        var resourcesJSON: String?
        var uname: String?
        var kvmFormats: [String] = []
        var allEvents: [String] = []
        var cpuData: [CPUData] = []
        var dataCompressed = false
        var sections: [UInt16: UInt64] = [:]
        var sawHeader = false
        /// Version 6: instance buffers (BUFFER options), each a flyrecord block elsewhere in the file.
        var v6Buffers: [(name: String, offset: UInt64)] = []

        init(path: String, bigEndian: Bool) {
            self.path = path
            self.bigEndian = bigEndian
        }

        func bad(_ s: String) -> KVMScopeError { KVMScopeError.badFile("\(path): \(s)") }

        // MARK: version 6: one sequential header

        mutating func readV6(_ r: inout ByteReader) throws {
            file = r.block
            try readHeaderInfo(&r)
            try readFtrace(&r)
            try readEventFormats(&r)
            try r.skip(try r.size(UInt64(try r.u32()), of: "kallsyms"))
            try r.skip(try r.size(UInt64(try r.u32()), of: "printk formats"))
            try readCmdlines(&r)
            let cpus = try r.u32()
            guard UInt64(cpus) * 16 <= UInt64(r.remaining) else { throw bad("claims \(cpus) CPUs") }
            var kind = try r.text(10)
            if kind.hasPrefix("options") {
                while true {
                    let id = try r.u16()
                    if id == 0 { break }
                    let size = try r.size(UInt64(try r.u32()), of: "option \(id)")
                    var o = ByteReader(r.block, from: r.pos, to: r.pos + size, bigEndian: bigEndian, what: "option \(id)")
                    try r.skip(size)
                    try option(id, &o)
                }
                kind = try r.text(10)
            }
            if kind.hasPrefix("latency") { throw bad("latency traces are not supported (only flyrecord)") }
            guard kind.hasPrefix("flyrecord") else { throw bad("expected flyrecord, found '\(kind.prefix(10))'") }
            for cpu in 0..<Int(cpus) {
                let off = try r.u64(), size = try r.u64()
                try addCPU(cpu: cpu, offset: off, size: size)
            }
            if cpuCount == nil { cpuCount = Int(cpus) }
            // Recorded into instances only (trace-cmd record -B): the top buffer is empty; read the first instance.
            if cpuData.allSatisfy({ $0.size == 0 }), let buffer = v6Buffers.first {
                guard buffer.offset <= UInt64(r.block.count) else {
                    throw bad("buffer \(buffer.name.prefix(40)) offset \(buffer.offset) is beyond the end of the file")
                }
                var b = ByteReader(r.block, from: Int(buffer.offset), bigEndian: bigEndian, what: "buffer \(buffer.name.prefix(40))")
                guard try b.text(10).hasPrefix("flyrecord") else { throw bad("buffer \(buffer.name.prefix(40)) is not a flyrecord") }
                cpuData = []
                for cpu in 0..<Int(cpus) {
                    let off = try b.u64(), size = try b.u64()
                    try addCPU(cpu: cpu, offset: off, size: size)
                }
            }
        }

        mutating func addCPU(cpu: Int, offset: UInt64, size: UInt64) throws {
            guard let file else { return }
            guard offset <= UInt64(file.count), size <= UInt64(file.count) - offset else {
                throw bad("data of cpu \(cpu) (\(size) bytes at offset \(offset)) lies beyond the end of the file (\(file.count) bytes)")
            }
            cpuData.append(CPUData(cpu: cpu, offset: Int(offset), size: Int(size)))
        }

        // MARK: version 7: options sections pointing at sections

        mutating func readV7(optionsAt: UInt64) throws {
            var next = optionsAt
            var visited = Set<UInt64>()
            var buffers: [(name: String, offset: UInt64, cpus: [(Int, UInt64, UInt64)], pageSize: Int)] = []
            var tail: UInt64 = 0
            while next != 0 {
                guard visited.insert(next).inserted, visited.count < 10_000 else { throw bad("options sections form a loop") }
                var (r, _) = try section(at: next, expecting: Option.done.rawValue, name: "options")
                tail = max(tail, try sectionEnd(at: next))
                next = 0
                while r.remaining > 0 {
                    let id = try r.u16()
                    let size = try r.size(UInt64(try r.u32()), of: "option \(id)")
                    var o = ByteReader(r.block, from: r.pos, to: r.pos + size, bigEndian: bigEndian, what: "option \(id)")
                    try r.skip(size)
                    if id == Option.done.rawValue {
                        next = try o.u64()
                        break
                    }
                    if id == Option.buffer.rawValue {
                        let off = try o.u64()
                        let name = try o.cString()
                        let clock = try o.cString()
                        let ps = Int(try o.u32())
                        let n = try o.u32()
                        guard UInt64(n) * 20 <= UInt64(o.remaining) else { throw bad("buffer option claims \(n) CPUs") }
                        var cpus: [(Int, UInt64, UInt64)] = []
                        for _ in 0..<n { cpus.append((Int(try o.u32()), try o.u64(), try o.u64())) }
                        if name.isEmpty && traceClock == nil { traceClock = clock }
                        buffers.append((name, off, cpus, ps))
                        continue
                    }
                    try option(id, &o)
                }
            }
            // trace-cmd writes its strings section (the sections' names, id 15) right after the last options
            // section, and no option points at it: read whole, it is where a file cut short shows (every other
            // section lies before it). Other writers (kvmscope's own) put other sections there, or nothing; fewer
            // bytes than a section header there are a cut file whoever wrote it.
            if let file, tail < UInt64(file.count) {
                let left = UInt64(file.count) - tail
                var peek = ByteReader(file, from: Int(tail), bigEndian: bigEndian, what: "strings section")
                if try left < 16 || peek.u16() == Option.strings.rawValue {
                    _ = try section(at: tail, expecting: Option.strings.rawValue, name: "strings")
                }
            }
            for id in [Option.headerInfo, .ftraceEvents, .eventFormats, .cmdlines] {
                guard let at = sections[id.rawValue] else {
                    if id == .headerInfo || id == .eventFormats { throw bad("no \(id) section") }
                    continue
                }
                var (r, _) = try section(at: at, expecting: id.rawValue, name: "\(id)")
                switch id {
                case .headerInfo: try readHeaderInfo(&r)
                case .ftraceEvents: try readFtrace(&r)
                case .eventFormats: try readEventFormats(&r)
                case .cmdlines: try readCmdlines(&r, inSection: true)
                default: break
                }
            }
            // The top instance's buffer when it has data; else the first instance with data (trace-cmd record -B).
            let withData = buffers.filter { $0.cpus.contains { $0.2 > 0 } }
            guard let buffer = withData.first(where: { $0.name.isEmpty }) ?? withData.first ?? buffers.first else { return }
            guard let file else { return }
            var h = ByteReader(file, from: 0, bigEndian: bigEndian, what: "buffer section")
            guard buffer.offset <= UInt64(file.count) else { throw bad("buffer section offset \(buffer.offset) is beyond the end of the file") }
            h.pos = Int(buffer.offset)
            _ = try h.u16()
            let flags = try h.u16()
            dataCompressed = flags & 1 != 0
            if dataCompressed && algo == 0 { throw bad("compressed data but no compression algorithm") }
            guard buffer.pageSize == 0 || (buffer.pageSize >= 64 && buffer.pageSize <= 1 << 24 && buffer.pageSize.nonzeroBitCount == 1) else {
                throw bad("bad buffer page size \(buffer.pageSize)")
            }
            if buffer.pageSize != 0 { bufferPageSize = buffer.pageSize }
            for (cpu, off, size) in buffer.cpus {
                guard cpu < 1 << 16 else { throw bad("bad cpu number \(cpu)") }
                try addCPU(cpu: cpu, offset: off, size: size)
            }
        }

        /// Where the section at `offset` ends (its 16-byte header and payload), checked against the file.
        func sectionEnd(at offset: UInt64) throws -> UInt64 {
            guard let file else { throw bad("no file") }
            var r = ByteReader(file, from: Int(offset), bigEndian: bigEndian, what: "section")
            try r.skip(8)
            let size = try r.size(try r.u64(), of: "section")
            return UInt64(r.pos + size)
        }

        /// A section's payload (decompressed when flagged). Checks id and size against the file.
        func section(at offset: UInt64, expecting id: UInt16, name: String) throws -> (ByteReader, Bool) {
            guard let file else { throw bad("no file") }
            guard offset <= UInt64(file.count) else { throw bad("\(name) section offset \(offset) is beyond the end of the file") }
            var r = ByteReader(file, from: Int(offset), bigEndian: bigEndian, what: "\(name) section")
            let got = try r.u16()
            let flags = try r.u16()
            _ = try r.u32()
            let size = try r.size(try r.u64(), of: "\(name) section")
            guard got == id else { throw bad("expected a \(name) section (id \(id)) at offset \(offset), found id \(got)") }
            if flags & 1 != 0 {
                guard algo != 0 else { throw bad("compressed \(name) section but no compression algorithm") }
                var c = ByteReader(file, from: r.pos, to: r.pos + size, bigEndian: bigEndian, what: "\(name) section")
                let (block, _) = try Decompression.block(&c, algo: algo, path: path)
                return (ByteReader(block, bigEndian: bigEndian, what: "\(name) section"), true)
            }
            return (ByteReader(file, from: r.pos, to: r.pos + size, bigEndian: bigEndian, what: "\(name) section"), false)
        }

        mutating func option(_ id: UInt16, _ o: inout ByteReader) throws {
            let text = { (o: inout ByteReader) -> String in
                let s = try o.text(o.remaining)
                return s.split(separator: "\0", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
            }
            switch Option(rawValue: id) {
            case .date:
                // Microseconds, as "0x..." or decimal; trace-cmd adds them (×1000) to every timestamp.
                if let us = Self.integer(try text(&o)) { timeOffset &+= us &* 1000 }
            case .offset:
                if let ns = Self.integer(try text(&o)) { timeOffset &+= ns }
            case .cpuStat:
                let s = try text(&o)
                // "CPU: N\n" then the kernel's per_cpu/cpuN/stats.
                var cpu = cpuStats.count
                if let first = s.split(separator: "\n").first, first.hasPrefix("CPU:"),
                   let n = Int(first.dropFirst(4).trimmingCharacters(in: .whitespaces)) { cpu = n }
                cpuStats[cpu, default: ""] += s
            case .traceClock:
                let s = try text(&o)
                if let open = s.firstIndex(of: "["), let close = s[open...].firstIndex(of: "]") {
                    traceClock = String(s[s.index(after: open)..<close])
                }
            case .uname: uname = try text(&o)
            case .buffer:
                let off = try o.u64()
                v6Buffers.append((try o.cString(), off))
            case .cpuCount: cpuCount = Int(try o.u32())
            case .tsc2nsec:
                guard o.remaining >= 16 else { return }
                tsc2nsec = (try o.u32(), try o.u32(), try o.u64())
            case .headerInfo, .ftraceEvents, .eventFormats, .kallsyms, .printk, .cmdlines:
                sections[id] = try o.u64()
            case .savedTGIDs:
                // "TID TGID" per line, as the kernel's saved_tgids.
                for line in try text(&o).split(separator: "\n") {
                    let p = line.split(separator: " ")
                    if p.count == 2, let t = Int32(p[0]), let g = Int32(p[1]), g > 0 { tgids[t] = g }
                }
            case .resources: resourcesJSON = try text(&o)
            case .guestNames:
                // "TGID NAME" per line; the name is the rest of the line.
                for line in try text(&o).split(separator: "\n") {
                    guard let sp = line.firstIndex(of: " "), let g = Int32(line[..<sp]), g > 0 else { continue }
                    let name = String(line[line.index(after: sp)...])
                    if !name.isEmpty { guestNames[g] = name }
                }
            default: break
            }
        }

        static func integer(_ s: String) -> Int64? {
            let t = s.trimmingCharacters(in: .whitespacesAndNewlines)
            if t.hasPrefix("0x") || t.hasPrefix("0X") { return UInt64(t.dropFirst(2), radix: 16).map { Int64(bitPattern: $0) } }
            return Int64(t)
        }

        // MARK: sections shared by both versions

        mutating func readHeaderInfo(_ r: inout ByteReader) throws {
            guard try r.cString(max: 16) == "header_page" else { throw bad("no header_page where expected") }
            let page = try r.text(try r.size(try r.u64(), of: "header_page"))
            guard try r.cString(max: 16) == "header_event" else { throw bad("no header_event where expected") }
            try r.skip(try r.size(try r.u64(), of: "header_event"))
            // "field: local_t commit;	offset:8;	size:8;	signed:1;" gives the kernel's long size.
            for line in page.split(separator: "\n") where line.contains("commit;") {
                if let s = line.split(separator: ";").first(where: { $0.contains("size:") }),
                   let n = Int(s.split(separator: ":").last ?? ""), n == 4 || n == 8 {
                    kernelLongSize = n
                }
            }
            sawHeader = true
        }

        mutating func readFtrace(_ r: inout ByteReader) throws {
            let count = try r.u32()
            guard UInt64(count) * 8 <= UInt64(r.remaining) else { throw bad("claims \(count) ftrace formats") }
            for _ in 0..<count {
                let text = try r.text(try r.size(try r.u64(), of: "ftrace format"))
                if let name = EventFormats.value(of: "name:", in: text) { allEvents.append("ftrace:\(name)") }
            }
        }

        mutating func readEventFormats(_ r: inout ByteReader) throws {
            let systems = try r.u32()
            guard UInt64(systems) * 5 <= UInt64(r.remaining) else { throw bad("claims \(systems) event systems") }
            for _ in 0..<systems {
                let system = try r.cString(max: 256)
                let count = try r.u32()
                guard UInt64(count) * 8 <= UInt64(r.remaining) else { throw bad("claims \(count) events in system \(system.prefix(40))") }
                for _ in 0..<count {
                    let text = try r.text(try r.size(try r.u64(), of: "event format"))
                    let name = EventFormats.value(of: "name:", in: text) ?? "?"
                    allEvents.append("\(system):\(name)")
                    if system == "kvm" { kvmFormats.append(text) }
                }
            }
        }

        /// The saved cmdlines. In a v7 section a size past the section's end is taken as the section's end:
        /// trace-cmd sizes the kernel's saved_cmdlines, then copies it, and the file can shrink in between
        /// (seen with other tracers running); trace-cmd reads such files, and so do we.
        mutating func readCmdlines(_ r: inout ByteReader, inSection: Bool = false) throws {
            let claimed = try r.u64()
            let size = inSection ? Int(min(claimed, UInt64(r.remaining))) : try r.size(claimed, of: "saved cmdlines")
            let text = try r.text(size)
            for line in text.split(separator: "\n") {
                let s = line.drop { $0 == " " }
                guard let space = s.firstIndex(of: " "), let pid = Int32(s[..<space]) else { continue }
                comms[pid] = String(s[s.index(after: space)...])
            }
        }
    }
}
