import Foundation
import KVMExits
import KVMHost
import SystemPackage

/// What a trace.dat carries besides the per-CPU pages.
public struct TraceDatMetadata: Sendable {
    public struct System: Sendable {
        public var name: String
        public var formats: [String]
        public init(name: String, formats: [String]) {
            self.name = name
            self.formats = formats
        }
    }

    public var pageSize = 4096
    /// The traced kernel's long size (ring-buffer page header `commit`).
    public var longSize = 8
    /// events/header_page and events/header_event of the traced kernel.
    public var headerPage = TraceDatMetadata.defaultHeaderPage
    public var headerEvent = TraceDatMetadata.defaultHeaderEvent
    /// events/ftrace/*/format texts.
    public var ftraceFormats: [String] = []
    /// Event systems and the format texts of their recorded events.
    public var systems: [System] = []
    public var kallsyms = ""
    public var printkFormats = ""
    /// Comm per tid (saved cmdlines): `trace-cmd report` prints these names.
    public var cmdlines: [Int32: String] = [:]
    /// Thread group id (the VM's process) per tid, from the kernel's `saved_tgids` or /proc/TID/status:
    /// written as option 32 in `saved_tgids` text form ("TID TGID\n"), the id gpuvis' trace-cmd gives
    /// `TRACECMD_OPTION_SAVED_TGIDS` (upstream trace-cmd skips unknown options). `report` reads it back, so
    /// a recording reports per VM as the live run does.
    public var tgids: [Int32: Int32] = [:]
    /// The guest name per VM process (tgid), as kvm_stat finds it (QEMU `-name guest=NAME`, else the process's
    /// comm): written as kvmscope's option ``guestNamesOption`` ("TGID NAME" lines), so that `report` names
    /// each VM as the live run does even when the VM's main thread caused no traced event (its comm is then
    /// in no saved cmdlines). trace-cmd skips options it does not know.
    public var guestNames: [Int32: String] = [:]
    /// What each VM cost the host while it was recorded, as kvmscope's `record` sampled it: a JSON document
    /// (the executable's `RecordedResources`, Codable) written as option ``resourcesOption``; opaque here.
    public var resourcesJSON: String?
    /// The trace clock, e.g. "mono".
    public var traceClock = "mono"
    /// per_cpu/cpuN/stats texts, by CPU (CPUSTAT options).
    public var cpuStats: [Int: String] = [:]
    public var uname: String?

    public init() {}

    /// The option id of the tgid table (see ``tgids``).
    public static let savedTGIDsOption: UInt16 = 32

    /// The option id of the guest names (see ``guestNames``): kvmscope's own, far above trace-cmd's ids
    /// (1–25 in trace-cmd 3.4) and gpuvis' 32, so no trace-cmd reads it as one of its own.
    public static let guestNamesOption: UInt16 = 0x4b01

    /// The option id of ``resourcesJSON`` (kvmscope's own, beside ``guestNamesOption``).
    public static let resourcesOption: UInt16 = 0x4b02

    /// ``guestNames`` as "TGID NAME" lines (a name's line breaks become spaces).
    var guestNamesText: String {
        guestNames.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value.replacingOccurrences(of: "\n", with: " "))\n" }.joined()
    }

    /// ``tgids`` as the kernel's saved_tgids prints them.
    var savedTGIDsText: String { tgids.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)\n" }.joined() }

    /// A 64-bit kernel's header_page for 4 KiB sub-buffers (the kernel's text, for synthetic files).
    public static let defaultHeaderPage = """
        \tfield: u64 timestamp;\toffset:0;\tsize:8;\tsigned:0;
        \tfield: local_t commit;\toffset:8;\tsize:8;\tsigned:1;
        \tfield: int overwrite;\toffset:8;\tsize:1;\tsigned:1;
        \tfield: char data;\toffset:16;\tsize:4080;\tsigned:0;

        """
    /// The kernel's events/header_event (unchanged since 2.6.3x).
    public static let defaultHeaderEvent = """
        # compressed entry header
        \ttype_len    :    5 bits
        \ttime_delta  :   27 bits
        \tarray       :   32 bits

        \tpadding     : type == 29
        \ttime_extend : type == 30
        \ttime_stamp : type == 31
        \tdata max type_len  == 28

        """

    /// The metadata of the running kernel's tracefs for the given events of each system.
    public static func fromTracefs(root: String, events: [String: [String]]) throws -> TraceDatMetadata {
        var m = TraceDatMetadata()
        if let hp = TraceFS.text("\(root)/events/header_page") { m.headerPage = hp }
        if let he = TraceFS.text("\(root)/events/header_event") { m.headerEvent = he }
        for (system, names) in events.sorted(by: { $0.key < $1.key }) {
            m.systems.append(System(name: system, formats: try names.map { try TraceFS.format(system: system, event: $0, root: root) }))
        }
        if let ftrace = try? TraceFS.events(system: "ftrace", root: root) {
            m.ftraceFormats = ftrace.compactMap { try? TraceFS.format(system: "ftrace", event: $0, root: root) }
        }
        m.printkFormats = TraceFS.text("\(root)/printk_formats") ?? ""
        m.pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
        var u = utsname()
        Glibc.uname(&u)
        func field<T>(_ v: T) -> String {
            withUnsafeBytes(of: v) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        }
        m.uname = "\(field(u.sysname)) \(field(u.nodename)) \(field(u.release)) \(field(u.version)) \(field(u.machine))"
        return m
    }
}

/// One CPU's raw ring-buffer pages for a trace.dat: a file of whole pages, or pages in memory.
public enum TraceDatCPUData {
    case file(String)
    case pages([[UInt8]])
}

/// Writes trace-cmd `trace.dat` files, version 6, uncompressed: what Debian's `trace-cmd report` 3.1.6 and
/// KernelShark open. Pages are copied as the kernel wrote them; nothing is decoded.
public enum TraceDatWriter {
    /// Writes `path`: header, formats, cmdlines, options (trace clock, uname, per-CPU stats), then each
    /// CPU's pages (CPU i = cpus[i]) page-aligned. Throws one-line io errors.
    public static func write(path: String, metadata m: TraceDatMetadata, cpus: [TraceDatCPUData]) throws {
        try write(path: path, header: header(m, cpuCount: cpus.count), pageSize: m.pageSize, cpus: cpus)
    }

    /// A version 6 file's bytes up to its per-CPU data: magic, formats, cmdlines, CPU count, options and
    /// the `flyrecord` mark. The offset/size table of the CPUs' data follows it (``write(path:header:pageSize:cpus:)``).
    static func header(_ m: TraceDatMetadata, cpuCount: Int) -> [UInt8] {
        var h = HeaderBytes()
        h.raw([0x17, 0x08, 0x44])
        h.string("tracing6")
        h.raw([0, UInt8(m.longSize)])
        h.u32(UInt32(m.pageSize))
        h.string("header_page")
        h.blob64(m.headerPage)
        h.string("header_event")
        h.blob64(m.headerEvent)
        h.u32(UInt32(m.ftraceFormats.count))
        for f in m.ftraceFormats { h.blob64(f) }
        h.u32(UInt32(m.systems.count))
        for s in m.systems {
            h.string(s.name)
            h.u32(UInt32(s.formats.count))
            for f in s.formats { h.blob64(f) }
        }
        h.blob32(m.kallsyms)
        h.blob32(m.printkFormats)
        h.blob64(m.cmdlines.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)\n" }.joined())
        h.u32(UInt32(cpuCount))
        h.raw(Array("options  ".utf8) + [0])
        h.option(4, "[\(m.traceClock)]")
        if let uname = m.uname { h.option(5, uname) }
        for (cpu, stats) in m.cpuStats.sorted(by: { $0.key < $1.key }) { h.option(2, "CPU: \(cpu)\n\(stats)") }
        if !m.tgids.isEmpty { h.option(TraceDatMetadata.savedTGIDsOption, m.savedTGIDsText) }
        if !m.guestNames.isEmpty { h.option(TraceDatMetadata.guestNamesOption, m.guestNamesText) }
        if let r = m.resourcesJSON { h.option(TraceDatMetadata.resourcesOption, r) }
        h.u16(0)
        h.raw(Array("flyrecord".utf8) + [0])
        return h.bytes
    }

    /// A ``header(_:cpuCount:)`` with each CPU's statistics option (2) given `stats` first, followed by what
    /// the option held before (a recovered file's note): how a recovered recording gets its dead instance's
    /// per-CPU stats (events lost, overrun). The other options are kept as they are; a header whose options
    /// cannot be walked is returned unchanged.
    static func header(_ header: [UInt8], withCPUStats stats: [Int: String]) -> [UInt8] {
        let mark = Array("options  ".utf8) + [0]
        guard let start = (0...(header.count - mark.count)).first(where: { header[$0..<$0 + mark.count].elementsEqual(mark) })
        else { return header }
        func u16(_ i: Int) -> Int { Int(header[i]) | Int(header[i + 1]) << 8 }
        func u32(_ i: Int) -> Int { (0..<4).reduce(0) { $0 | Int(header[i + $1]) << (8 * $1) } }
        var i = start + mark.count
        var kept: [UInt8] = []
        var before: [Int: String] = [:]
        while true {
            guard i + 2 <= header.count else { return header }
            let id = u16(i)
            if id == 0 { break }
            guard i + 6 <= header.count else { return header }
            let size = u32(i + 2)
            guard i + 6 + size <= header.count else { return header }
            let data = header[(i + 6)..<(i + 6 + size)]
            let text = String(decoding: data.prefix { $0 != 0 }, as: UTF8.self)
            if id == 2, text.hasPrefix("CPU: "), let nl = text.firstIndex(of: "\n"),
               let cpu = Int(text[text.index(text.startIndex, offsetBy: 5)..<nl]) {
                before[cpu] = String(text[text.index(after: nl)...])
            } else {
                kept += header[i..<(i + 6 + size)]
            }
            i += 6 + size
        }
        var h = HeaderBytes()
        h.bytes = Array(header[..<(start + mark.count)]) + kept
        for cpu in Set(stats.keys).union(before.keys).sorted() {
            h.option(2, "CPU: \(cpu)\n" + (stats[cpu] ?? "") + (before[cpu] ?? ""))
        }
        h.bytes += header[i...]
        return h.bytes
    }

    /// Writes a version 6 file from a ``header(_:cpuCount:)`` and the CPUs' pages: the offset/size table,
    /// then each CPU's data from a page boundary. A file's data is taken in whole pages (a page cut short by
    /// a full disk or a kill is left out).
    static func write(path: String, header: [UInt8], pageSize: Int, cpus: [TraceDatCPUData]) throws {
        var h = HeaderBytes()
        h.bytes = header
        var sizes: [Int] = []
        for c in cpus {
            switch c {
            case .pages(let p): sizes.append(p.reduce(0) { $0 + $1.count })
            case .file(let f):
                let s = (try? FileManager.default.attributesOfItem(atPath: f)[.size] as? Int) ?? nil
                guard let s else { throw KVMScopeError.io("cannot read \(f)") }
                sizes.append(s / pageSize * pageSize)
            }
        }
        let align = { (x: Int) in (x + pageSize - 1) / pageSize * pageSize }
        var offset = align(h.bytes.count + 16 * cpus.count)
        var offsets: [Int] = []
        for s in sizes {
            offsets.append(offset)
            h.u64(UInt64(offset))
            h.u64(UInt64(s))
            offset = align(offset + s)
        }

        let out = try OutputFile(path: path)
        try out.write(h.bytes)
        for (i, c) in cpus.enumerated() {
            try out.pad(to: offsets[i])
            switch c {
            case .pages(let pages): for p in pages { try out.write(p) }
            case .file(let f): try out.copy(from: f, limit: sizes[i])
            }
        }
        try out.pad(to: offset)
        try out.close()
    }
}

/// The header of a file being written, in the file's byte order (little-endian).
struct HeaderBytes {
    var bytes: [UInt8] = []
    mutating func raw(_ b: [UInt8]) { bytes += b }
    mutating func string(_ s: String) { bytes += Array(s.utf8) + [0] }
    mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func blob64(_ s: String) {
        u64(UInt64(s.utf8.count))
        bytes += Array(s.utf8)
    }
    mutating func blob32(_ s: String) {
        u32(UInt32(s.utf8.count))
        bytes += Array(s.utf8)
    }
    /// A v6 option: id, size, NUL-terminated text.
    mutating func option(_ id: UInt16, _ text: String) {
        u16(id)
        u32(UInt32(text.utf8.count + 1))
        string(text)
    }
}

/// A file written sequentially with plain write(2) calls; errors are one line.
final class OutputFile: @unchecked Sendable {  // used by one thread at a time
    let fd: Int32
    let path: String
    var offset = 0

    init(path: String) throws {
        self.path = path
        switch OutputFiles.open(path) {
        case .success(let d): fd = d
        case .failure(let e): throw KVMScopeError.io("cannot create \(path): \(e)")
        }
    }

    var closed = false

    deinit { if !closed { Glibc.close(fd) } }

    func write(_ b: UnsafeRawBufferPointer) throws {
        var done = 0
        while done < b.count {
            let n = Glibc.write(fd, b.baseAddress! + done, b.count - done)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw KVMScopeError.io("cannot write \(path): \(Errno(rawValue: errno))") }
            done += n
        }
        offset += b.count
    }

    func write(_ b: [UInt8]) throws {
        try b.withUnsafeBytes { try write($0) }
    }

    func pad(to target: Int) throws {
        if target > offset { try write([UInt8](repeating: 0, count: target - offset)) }
    }

    /// Appends `source`'s first `limit` bytes (all of it by default).
    func copy(from source: String, limit: Int = .max) throws {
        let src = open(source, O_RDONLY | O_CLOEXEC)
        guard src >= 0 else { throw KVMScopeError.io("cannot open \(source): \(Errno(rawValue: errno))") }
        defer { Glibc.close(src) }
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { buf.deallocate() }
        var left = limit
        while left > 0 {
            let n = read(src, buf.baseAddress, min(buf.count, left))
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw KVMScopeError.io("cannot read \(source): \(Errno(rawValue: errno))") }
            if n == 0 { break }
            try write(UnsafeRawBufferPointer(rebasing: buf[0..<n]))
            left -= n
        }
    }

    func close() throws {
        closed = true
        guard Glibc.close(fd) == 0 else {
            throw KVMScopeError.io("cannot write \(path): \(Errno(rawValue: errno))")
        }
    }
}
