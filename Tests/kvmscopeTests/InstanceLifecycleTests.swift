import Foundation
import Testing
import TestSupport

/// The private tracefs instance is removed on every way out, and stale ones of dead processes are cleaned.
@Suite(.serialized, .enabled(if: KVMTest.canRun, "needs root and tracefs"))
struct InstanceLifecycleTests {
    static let instances = "/sys/kernel/tracing/instances"

    static func exists(_ name: String) -> Bool { FileManager.default.fileExists(atPath: "\(instances)/\(name)") }

    /// Starts `kvmscope stat --duration 60`, waits until its instance exists, sends `signal`, and checks the end.
    func endWith(signal: Int32) throws {
        let p = try Spawned(CLI.binary, ["stat", "--duration", "60", "--json"], stdinNull: true)
        defer { p.stop() }
        let name = "kvmscope-\(p.pid)"
        let deadline = Date().addingTimeInterval(20)
        while !Self.exists(name) && Date() < deadline { usleep(20_000) }
        #expect(Self.exists(name), "instance \(name) never appeared")
        usleep(200_000)
        p.signal(signal)
        #expect(p.wait(timeout: 30) == 0, "\(p.stderr)")
        #expect(!Self.exists(name), "instance \(name) left behind after signal \(signal)")
        // It still printed its summary.
        let j = try CLI.json(p.stdout)
        #expect(j["lost_events"] as? Int == 0)
    }

    @Test func removedAfterSIGINT() throws { try endWith(signal: SIGINT) }

    @Test func removedAfterSIGTERM() throws { try endWith(signal: SIGTERM) }

    @Test func removedAfterNormalEnd() throws {
        let p = try Spawned(CLI.binary, ["stat", "--duration", "0.3", "--json"], stdinNull: true)
        #expect(p.wait(timeout: 60) == 0, "\(p.stderr)")
        #expect(!Self.exists("kvmscope-\(p.pid)"))
    }

    @Test func staleInstanceOfDeadProcessIsRemoved() throws {
        // A pid that is certainly dead: a process that has been reaped.
        let t = try Spawned("/bin/true", [], stdinNull: true, quiet: true)
        #expect(t.wait(timeout: 30) == 0)
        let stale = "kvmscope-\(t.pid)"
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
