import Foundation
import Testing

/// The private tracefs instance is removed on every way out, and stale ones of dead processes are cleaned.
@Suite(.serialized, .enabled(if: KVMTest.canRun, "needs root and tracefs"))
struct InstanceLifecycleTests {
    static let instances = "/sys/kernel/tracing/instances"

    static func exists(_ name: String) -> Bool { FileManager.default.fileExists(atPath: "\(instances)/\(name)") }

    /// Starts `kvmscope stat --duration 60`, waits until its instance exists, sends `signal`, and checks the end.
    func endWith(signal: Int32) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: CLI.binary)
        p.arguments = ["stat", "--duration", "60", "--json"]
        p.environment = ["SWIFT_BACKTRACE": "enable=no"]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        try p.run()
        let name = "kvmscope-\(p.processIdentifier)"
        let deadline = Date().addingTimeInterval(20)
        while !Self.exists(name) && Date() < deadline { usleep(20_000) }
        #expect(Self.exists(name), "instance \(name) never appeared")
        usleep(200_000)
        kill(p.processIdentifier, signal)
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        #expect(p.terminationReason == .exit)
        #expect(p.terminationStatus == 0)
        #expect(!Self.exists(name), "instance \(name) left behind after signal \(signal)")
        // It still printed its summary.
        let j = try CLI.json(String(decoding: data, as: UTF8.self))
        #expect(j["lost_events"] as? Int == 0)
    }

    @Test func removedAfterSIGINT() throws { try endWith(signal: SIGINT) }

    @Test func removedAfterSIGTERM() throws { try endWith(signal: SIGTERM) }

    @Test func removedAfterNormalEnd() throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: CLI.binary)
        p.arguments = ["stat", "--duration", "0.3", "--json"]
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        let pid = p.processIdentifier
        p.waitUntilExit()
        #expect(p.terminationStatus == 0)
        #expect(!Self.exists("kvmscope-\(pid)"))
    }

    @Test func staleInstanceOfDeadProcessIsRemoved() throws {
        // A pid that is certainly dead: a process that has been reaped.
        let t = Process()
        t.executableURL = URL(fileURLWithPath: "/bin/true")
        try t.run()
        t.waitUntilExit()
        let stale = "kvmscope-\(t.processIdentifier)"
        try FileManager.default.createDirectory(atPath: "\(Self.instances)/\(stale)", withIntermediateDirectories: false)
        #expect(Self.exists(stale))
        // A live process's instance must survive: use this test process's pid.
        let live = "kvmscope-\(getpid())"
        try FileManager.default.createDirectory(atPath: "\(Self.instances)/\(live)", withIntermediateDirectories: false)
        defer { rmdir("\(Self.instances)/\(live)") }
        let r = try CLI.run(["stat", "--duration", "0.2", "--json"])
        #expect(r.status == 0)
        #expect(!Self.exists(stale), "stale instance \(stale) not removed")
        #expect(Self.exists(live), "a live process's instance was removed")
    }
}
