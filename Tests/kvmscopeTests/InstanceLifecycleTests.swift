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

    /// SIGHUP ends every tracing command as SIGTERM does (a closed terminal or ssh session must not leave a
    /// trace behind): the same exit status, the instance removed, record's file readable by `report`.
    @Test(arguments: [SIGTERM, SIGHUP])
    func everyCommandEndsCleanlyOn(signal: Int32) throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kvmscope-hup-\(getpid())-\(signal)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let dat = dir.appendingPathComponent("t.dat").path
        let commands: [(args: [String], status: Int32)] = [
            (["stat", "--duration", "60"], 0),
            (["stat", "--duration", "60", "--json"], 0),
            (["stat", "-l", "-s", "0.2", "--duration", "60"], 0),
            (["record", "-o", dat, "--duration", "60"], 0),
            (["serve", "--listen", "127.0.0.1:\(freeLoopbackPort())"], 0),
            (["watch", "--alert", "rate(kvm_pio) > 10000000/s", "-s", "0.2"], 0),
            // The command gets SIGINT and dies of it: status 3, "command exited with status 2".
            (["stat", "--json", "--", "/bin/sleep", "60"], 3),
        ]
        for (args, status) in commands {
            let p = try Spawned(CLI.binary, args, stdinNull: true)
            defer { p.stop() }
            let name = "kvmscope-\(p.pid)"
            let deadline = Date().addingTimeInterval(20)
            while !Self.exists(name) && Date() < deadline { usleep(20_000) }
            #expect(Self.exists(name), "\(args): instance \(name) never appeared")
            usleep(300_000)
            p.signal(signal)
            #expect(p.wait(timeout: 30) == status, "\(args) after signal \(signal): \(p.stderr)")
            #expect(!Self.exists(name), "\(args): instance \(name) left behind after signal \(signal)")
            if args[0] == "record" {
                let r = try CLI.run(["report", dat])
                #expect(r.status == 0, "report of the file record left after signal \(signal): \(r.stderr)")
            }
        }
    }

    /// `live --demo` SIGKILLed: its demo guests (storm children) die with it at once, and the next kvmscope
    /// run removes the instance it left.
    @Test func demoGuestsDieWithASIGKILLedView() throws {
        let view = try Spawned(CLI.binary, ["live", "--demo", "-s", "0.2", "--event", "kvm_pio"], stdinNull: true,
                               environment: ["KVMSCOPE_DEMO_ALWAYS": "1"])
        defer { view.stop() }
        let name = "kvmscope-\(view.pid)"
        var guests: [Int32] = []
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            let children = (try? String(contentsOfFile: "/proc/\(view.pid)/task/\(view.pid)/children", encoding: .utf8)) ?? ""
            guests = children.split(separator: " ").compactMap { Int32($0) }
            if guests.count == 3 && Self.exists(name) { break }
            usleep(20_000)
        }
        #expect(guests.count == 3, "the demo's three storm guests never ran")
        var names: [String] = []
        for g in guests {
            let cmdline = (try? String(contentsOfFile: "/proc/\(g)/cmdline", encoding: .utf8)) ?? ""
            let args = cmdline.split(separator: "\0").map(String.init)
            #expect(args.dropFirst().first == "storm", "child \(g): \(cmdline)")
            if let i = args.firstIndex(of: "--name"), i + 1 < args.count { names.append(args[i + 1]) }
        }
        // Each named by its kind, so that `b` and `g` tell them apart.
        #expect(names.sorted() == ["demo-hlt", "demo-io", "demo-mmio"])
        #expect(Self.exists(name))
        kill(view.pid, SIGKILL)
        #expect(view.wait(timeout: 10) == 128 + SIGKILL)
        let end = Date().addingTimeInterval(2)
        var alive = guests
        while !alive.isEmpty && Date() < end {
            alive = alive.filter { !Self.ended($0) }
            usleep(10_000)
        }
        #expect(alive.isEmpty, "demo guests \(alive) still run 2 s after their view was SIGKILLed")
        for g in alive { kill(g, SIGKILL) }
        #expect(Self.exists(name), "the SIGKILLed view's instance should still be there for the sweep")
        let r = try CLI.run(["stat", "--duration", "0.1", "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(!Self.exists(name), "the next run did not remove \(name)")
    }

    /// A kvmscope that died as an orphan nobody reaps is a zombie: kill(pid, 0) still answers, yet its
    /// instance is stale and the next run removes it.
    @Test func staleInstanceOfAZombieIsRemoved() throws {
        // `sleep 0` ends at once and its parent, now `sleep 30`, never reaps it.
        let parent = try Spawned("/bin/sh", ["-c", "sleep 0 & exec sleep 30"], stdinNull: true, quiet: true)
        defer {
            parent.signal(SIGKILL)  // it inherits the test's blocked signals: SIGTERM would wait
            parent.stop()
        }
        var zombie: Int32?
        let deadline = Date().addingTimeInterval(10)
        while zombie == nil && Date() < deadline {
            let children = (try? String(contentsOfFile: "/proc/\(parent.pid)/task/\(parent.pid)/children", encoding: .utf8)) ?? ""
            zombie = children.split(separator: " ").compactMap { Int32($0) }.first { Self.ended($0) && kill($0, 0) == 0 }
            if zombie == nil { usleep(20_000) }
        }
        let pid = try #require(zombie, "no zombie child appeared")
        let stale = "kvmscope-\(pid)"
        try FileManager.default.createDirectory(atPath: "\(Self.instances)/\(stale)", withIntermediateDirectories: false)
        defer { rmdir("\(Self.instances)/\(stale)") }
        let r = try CLI.run(["stat", "--duration", "0.1", "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(!Self.exists(stale), "the zombie's instance \(stale) was not removed")
    }

    /// `stat -l | head -n 2`: when the reader goes, the next line's write fails (EPIPE, not a SIGPIPE death)
    /// and the log ends as on SIGHUP: status 0, instance removed.
    @Test func logEndsWhenItsReaderGoes() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kvmscope-pipe-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        // bash's PIPESTATUS, not `wait`: a shell started by the test inherits blocked signals, and `wait` then
        // never sees SIGCHLD.
        let r = try Spawned.run("/bin/bash", ["-c", "(echo $BASHPID > \"$1/pid\"; exec \"$0\" stat -l -s 0.2 --event kvm_pio)"
                                              + " | head -n 2 > /dev/null; echo \"status ${PIPESTATUS[0]}\"", CLI.binary, dir.path],
                                timeout: 30)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout == "status 0\n", "stderr: \(r.stderr)")
        let pid = try #require(Int32((try String(contentsOf: dir.appendingPathComponent("pid"), encoding: .utf8))
            .trimmingCharacters(in: .whitespacesAndNewlines)))
        #expect(!Self.exists("kvmscope-\(pid)"))
    }

    /// The command after `stat --` dies with a SIGKILLed kvmscope too (PR_SET_PDEATHSIG): a VM under test
    /// is not left running untraced.
    @Test func tracedCommandDiesWithASIGKILLedStat() throws {
        let stat = try Spawned(CLI.binary, ["stat", "--duration", "60", "--", "/bin/sleep", "60"], stdinNull: true)
        defer { stat.stop() }
        var child: Int32?
        let deadline = Date().addingTimeInterval(20)
        while child == nil && Date() < deadline {
            let children = (try? String(contentsOfFile: "/proc/\(stat.pid)/task/\(stat.pid)/children", encoding: .utf8)) ?? ""
            child = children.split(separator: " ").compactMap { Int32($0) }.first {
                (try? String(contentsOfFile: "/proc/\($0)/comm", encoding: .utf8)) == "sleep\n"
            }
            if child == nil { usleep(20_000) }
        }
        let sleep = try #require(child, "the command never started")
        kill(stat.pid, SIGKILL)
        #expect(stat.wait(timeout: 10) == 128 + SIGKILL)
        let end = Date().addingTimeInterval(2)
        while !Self.ended(sleep) && Date() < end { usleep(10_000) }
        #expect(Self.ended(sleep), "the traced command \(sleep) outlived kvmscope by 2 s")
        if !Self.ended(sleep) { kill(sleep, SIGKILL) }
        _ = try CLI.run(["stat", "--duration", "0.1", "--json"])  // removes the dead stat's instance
    }

    /// Whether `pid` has ended (gone, or a zombie nobody reaped yet).
    static func ended(_ pid: Int32) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return true }
        return stat[stat.index(close, offsetBy: 2)] == "Z"
    }

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
