import Foundation
import Testing
import KVMSources

/// The kernel's saved tid → tgid and tid → comm tables, as a tracefs root holds them: parsed line by line,
/// a comm's spaces kept, malformed lines skipped, and `only` keeping just those threads and their processes.
@Suite struct SavedThreadsTests {
    static func root(tgids: String, cmdlines: String) throws -> String {
        let dir = NSTemporaryDirectory() + "kvmscope-saved-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try tgids.write(toFile: dir + "/saved_tgids", atomically: true, encoding: .utf8)
        try cmdlines.write(toFile: dir + "/saved_cmdlines", atomically: true, encoding: .utf8)
        return dir
    }

    @Test func everyWellFormedLine() throws {
        let dir = try Self.root(tgids: "1 1\n4242 4240\n4243 4240\nx 5\n77 0\n78\n2147483648 1\n12 13 14\n\n9 9",
                                cmdlines: "4240 qemu-system-x86\n4242 CPU 0/KVM\n4243 CPU 1/KVM\nbad line\n9 \n")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let all = TraceFS.savedThreads(root: dir)
        // tgid 0 (not recorded), a missing tgid, an overflowing tid and a third field are no entries.
        #expect(all.tgids == [1: 1, 4242: 4240, 4243: 4240, 9: 9])
        #expect(all.comms == [4240: "qemu-system-x86", 4242: "CPU 0/KVM", 4243: "CPU 1/KVM", 9: ""])
        let some = TraceFS.savedThreads(root: dir, only: [4243])
        #expect(some.tgids == [4243: 4240])
        #expect(some.comms == [4240: "qemu-system-x86", 4243: "CPU 1/KVM"])
    }

    @Test func missingFilesAreEmptyTables() {
        let none = TraceFS.savedThreads(root: "/nonexistent-kvmscope-root")
        #expect(none.tgids.isEmpty && none.comms.isEmpty)
    }

    /// The live kernel's own tables (copied once: they change under a busy host) parse whole, entry for entry
    /// as splitting their text gives them.
    @Test(.enabled(if: FileManager.default.isReadableFile(atPath: "/sys/kernel/tracing/saved_tgids"), "needs root and tracefs"))
    func theRunningKernelsTables() throws {
        // Read to the end (its size reads 0; String(contentsOfFile:) stops short on tracefs).
        func read(_ name: String) throws -> String {
            let file = try #require(FileHandle(forReadingAtPath: "/sys/kernel/tracing/" + name))
            return String(decoding: try #require(try file.readToEnd()), as: UTF8.self)
        }
        let tgidText = try read("saved_tgids"), cmdText = try read("saved_cmdlines")
        let dir = try Self.root(tgids: tgidText, cmdlines: cmdText)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var tgids: [Int32: Int32] = [:], comms: [Int32: String] = [:]
        for line in tgidText.split(separator: "\n") {
            let p = line.split(separator: " ")
            if p.count == 2, let t = Int32(p[0]), let g = Int32(p[1]), g > 0 { tgids[t] = g }
        }
        for line in cmdText.split(separator: "\n") {
            if let sp = line.firstIndex(of: " "), let t = Int32(line[..<sp]) { comms[t] = String(line[line.index(after: sp)...]) }
        }
        let parsed = TraceFS.savedThreads(root: dir)
        #expect(!tgids.isEmpty && parsed.tgids == tgids)
        #expect(!comms.isEmpty && parsed.comms == comms)
    }
}
