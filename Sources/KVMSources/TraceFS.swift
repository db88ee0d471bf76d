import CKVMScope
import Foundation
import KVMExits
import SystemPackage

/// The tracefs file system: where it is, which kvm events it has, their formats, per-CPU statistics,
/// and the clean-up of instances left behind by dead kvmscope processes.
public enum TraceFS {
    public static let instancePrefix = "kvmscope-"

    /// The tracefs mount point, mounting it when needed. Throws the errors users see: tracefs missing and not
    /// mountable (``KVMScopeError/noTracefs(_:)``), or not accessible to this user (``KVMScopeError/noAccess(_:)``).
    /// Root is not required: a user who may read and write tracefs (e.g. with CAP_DAC_OVERRIDE) may trace.
    public static func root() throws -> String {
        guard let dir = ckvmscope_tracing_dir() else {
            let e = Errno(rawValue: errno)
            // Only root (CAP_SYS_ADMIN) mounts file systems.
            if geteuid() != 0 && (e == .permissionDenied || e == .notPermitted) { throw KVMScopeError.notRoot }
            throw KVMScopeError.noTracefs("\(e)")
        }
        let path = String(cString: dir)
        // The effective ids and capabilities (AT_EACCESS): access(2) would check the real uid without them.
        guard faccessat(AT_FDCWD, path + "/events", R_OK | X_OK, AT_EACCESS) == 0 else {
            let e = Errno(rawValue: errno)
            if e == .permissionDenied || e == .notPermitted { throw KVMScopeError.noAccess("\(path): \(e)") }
            throw KVMScopeError.noTracefs("\(path)/events is missing")
        }
        return path
    }

    /// Every event of a system, sorted by name.
    public static func events(system: String, root: String) throws -> [String] {
        let dir = "\(root)/events/\(system)"
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else {
            if system == "kvm" { throw KVMScopeError.noKVMEvents(dir) }
            throw KVMScopeError.unknownEvent("no event system \(system) in \(root)/events")
        }
        return names.filter { FileManager.default.fileExists(atPath: "\(dir)/\($0)/format") }.sorted()
    }

    /// The text of an event's `format` file, read to its end.
    ///
    /// tracefs files report size 0 and hand their text out in several reads: `String(contentsOfFile:)` returns
    /// only the first (752 of kvm_exit's 5385 bytes on 6.18, cut before `print fmt:`), so this reads until EOF.
    public static func format(system: String, event: String, root: String) throws -> String {
        let path = "\(root)/events/\(system)/\(event)/format"
        guard let text = text(path) else {
            throw KVMScopeError.unknownEvent("no event \(system):\(event) (\(path) unreadable)")
        }
        return text
    }

    /// A tracefs (or procfs) file's whole text, read until EOF; nil when it cannot be read. Every tracefs read
    /// goes through here: such files report size 0 and hand their text out in several reads.
    public static func text(_ path: String) -> String? {
        bytes(path).map { String(decoding: $0, as: UTF8.self) }
    }

    /// A tracefs file's bytes, read to its end (its size reads 0: read until EOF), or nil.
    static func bytes(_ path: String) -> Data? {
        guard let file = FileHandle(forReadingAtPath: path), let data = try? file.readToEnd() else { return nil }
        return data
    }

    /// The CPUs that have a buffer in the instance.
    public static func cpus(instance: String, root: String) -> [Int] {
        let dir = "\(root)/instances/\(instance)/per_cpu"
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        return names.compactMap { $0.hasPrefix("cpu") ? Int($0.dropFirst(3)) : nil }.sorted()
    }

    /// Events the kernel lost on a CPU: `overrun` (overwritten) plus `dropped events` (buffer full).
    public static func lostEvents(instance: String, cpu: Int, root: String) -> UInt64 {
        let path = "\(root)/instances/\(instance)/per_cpu/cpu\(cpu)/stats"
        guard let text = text(path) else { return 0 }
        return lost(inStats: text)
    }

    /// `overrun` + `dropped events` of a per_cpu/cpuN/stats text (live, or saved in a trace.dat).
    public static func lost(inStats text: String) -> UInt64 {
        var lost: UInt64 = 0
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1)
            guard parts.count == 2 else { continue }
            let key = parts[0].trimmingCharacters(in: .whitespaces)
            if key == "overrun" || key == "dropped events" {
                lost += UInt64(parts[1].trimmingCharacters(in: .whitespaces)) ?? 0
            }
        }
        return lost
    }

    /// The formats of the chosen kvm events (all of them when `events` is empty), checked against the kernel.
    public static func kvmFormats(events: [String], root: String) throws -> (events: [String], formats: EventFormats) {
        let available = try Self.events(system: "kvm", root: root)
        guard !available.isEmpty else { throw KVMScopeError.noKVMEvents("\(root)/events/kvm") }
        let wanted = events.isEmpty ? available : events
        for name in wanted where !available.contains(name) {
            // Another system's event (sched:sched_switch): kvmscope traces the kvm system only.
            if let colon = name.firstIndex(of: ":") {
                throw KVMScopeError.unknownEvent("only kvm events are traced: \(name[..<colon]):\(name[name.index(after: colon)...]) "
                                                 + "is in the \(name[..<colon]) system")
            }
            // A name of another system's event without its system (`--event sched_switch`): say whose it is.
            let systems = ((try? FileManager.default.contentsOfDirectory(atPath: "\(root)/events")) ?? []).sorted()
            if let other = systems.first(where: { FileManager.default.fileExists(atPath: "\(root)/events/\($0)/\(name)/format") }) {
                throw KVMScopeError.unknownEvent("only kvm events are traced: \(name) is \(other):\(name), not a kvm event")
            }
            throw KVMScopeError.unknownEvent("no event kvm:\(name) on this kernel")
        }
        let formats = EventFormats()
        for name in wanted { try formats.add(system: "kvm", format: try format(system: "kvm", event: name, root: root)) }
        return (wanted, formats)
    }

    /// Removes `kvmscope-<pid>` instances whose process is gone (a killed recording's drained into its spool
    /// first). Returns the names removed.
    @discardableResult
    public static func removeStaleInstances(root: String) -> [String] {
        let dir = "\(root)/instances"
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        var removed: [String] = []
        for name in names where name.hasPrefix(instancePrefix) {
            guard let pid = Int32(name.dropFirst(instancePrefix.count)), pid != getpid() else { continue }
            if (kill(pid, 0) == 0 || errno == EPERM) && !isZombie(pid) { continue }
            // A killed recording's events still in the buffers go into its spool first.
            RecordSession.drainIntoSpool(ofDeadRecording: pid)
            if ckvmscope_instance_remove(name) == 0 { removed.append(name) }
        }
        RecordSession.removeDeadSpoolLinks()
        return removed
    }

    /// Whether `pid` has ended and waits to be reaped (state Z in /proc/PID/stat): an orphan whose new
    /// parent does not reap it still answers kill(pid, 0).
    static func isZombie(_ pid: Int32) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")"), stat.distance(from: close, to: stat.endIndex) > 2 else { return false }
        return stat[stat.index(close, offsetBy: 2)] == "Z"
    }

    /// The kernel's saved tid → tgid (with record-tgid) and tid → comm maps.
    public static func savedThreads(root: String, only: Set<Int32>? = nil) -> (tgids: [Int32: Int32], comms: [Int32: String]) {
        // With `only`, just those threads and their processes are kept: saved_tgids lists every tgid the
        // kernel has recorded (tens of thousands on a busy host), and a daemon asks for a few threads at a time.
        // Parsed as bytes: a retiring daemon reads these files every round, and String's Character walk cost
        // milliseconds per read of a full table.
        var tgids: [Int32: Int32] = [:]
        var comms: [Int32: String] = [:]
        if let data = bytes("\(root)/saved_tgids") {
            forEachLine(data) { line in
                // "TID TGID"
                guard let (t, rest) = leadingNumber(line), only?.contains(t) ?? true,
                      let (g, tail) = leadingNumber(rest), tail.isEmpty, g > 0 else { return }
                tgids[t] = g
            }
        }
        let wanted = only.map { $0.union(tgids.values) }
        if let data = bytes("\(root)/saved_cmdlines") {
            forEachLine(data) { line in
                // "TID COMM" (the comm may hold spaces)
                guard let (t, rest) = leadingNumber(line), rest.first == UInt8(ascii: " "), wanted?.contains(t) ?? true
                else { return }
                comms[t] = String(decoding: rest.dropFirst(), as: UTF8.self)
            }
        }
        return (tgids, comms)
    }

    /// Calls body for each non-empty line of `data` (without its newline), without an array of every line.
    static func forEachLine(_ data: Data, _ body: (Slice<UnsafeRawBufferPointer>) -> Void) {
        data.withUnsafeBytes { raw in
            var start = 0
            while start < raw.count {
                var end = start
                while end < raw.count && raw[end] != UInt8(ascii: "\n") { end += 1 }
                if end > start { body(raw[start..<end]) }
                start = end + 1
            }
        }
    }

    /// The decimal number at the start of `bytes` after any spaces (an Int32), and what follows it; nil when
    /// there is none or it overflows.
    static func leadingNumber(_ bytes: Slice<UnsafeRawBufferPointer>) -> (Int32, Slice<UnsafeRawBufferPointer>)? {
        var i = bytes.startIndex
        while i < bytes.endIndex && bytes[i] == UInt8(ascii: " ") { i += 1 }
        let first = i
        var n: Int64 = 0
        while i < bytes.endIndex, bytes[i] >= UInt8(ascii: "0"), bytes[i] <= UInt8(ascii: "9") {
            n = n * 10 + Int64(bytes[i] - UInt8(ascii: "0"))
            if n > Int64(Int32.max) { return nil }
            i += 1
        }
        guard i > first else { return nil }
        return (Int32(n), bytes[i...])
    }

    /// Removes an instance that another tool left behind (trace-cmd record -B keeps its instance): tracing
    /// off, events disabled, directory removed. True if it is gone.
    @discardableResult
    public static func removeInstance(_ name: String, root: String) -> Bool {
        guard instanceExists(name, root: root) else { return true }
        return ckvmscope_instance_remove(name) == 0
    }

    public static func instanceExists(_ name: String, root: String) -> Bool {
        FileManager.default.fileExists(atPath: "\(root)/instances/\(name)")
    }
}
