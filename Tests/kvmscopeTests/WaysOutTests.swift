import Foundation
import Testing
import TestSupport

/// Every way out of a tracing command removes its tracefs instance before the process exits, and says what
/// went wrong in one line with the system's words: a command after `--` that cannot start, an address that
/// cannot be listened on. (Signals are covered by InstanceLifecycleTests and the terminal tests.)
@Suite(.serialized, .enabled(if: KVMTest.canRun, "needs root and tracefs"))
struct WaysOutTests {
    /// The instance a run of kvmscope with that pid would have made.
    static func instanceLeft(by pid: Int32) -> Bool {
        FileManager.default.fileExists(atPath: "/sys/kernel/tracing/instances/kvmscope-\(pid)")
    }

    /// Runs kvmscope, and checks the one error line, the status and that its instance is gone.
    func expectCleanFailure(_ args: [String], _ expected: String, status: Int32 = 1) throws {
        let p = try Spawned(CLI.binary, args, stdinNull: true)
        #expect(p.wait(timeout: 60) == status)
        #expect(p.stderr == "kvmscope: \(expected)\n")
        #expect(!Self.instanceLeft(by: p.pid), "instance kvmscope-\(p.pid) left behind")
    }

    @Test func statWithACommandThatDoesNotExist() throws {
        try expectCleanFailure(["stat", "-1", "--", "/nonexistent/cmd"],
                               "cannot run /nonexistent/cmd: No such file or directory")
    }

    @Test func recordWithACommandThatDoesNotExist() throws {
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("ways-out-\(getpid()).dat").path
        defer { unlink(out) }
        try expectCleanFailure(["record", "-o", out, "--", "/nonexistent/cmd"],
                               "cannot run /nonexistent/cmd: No such file or directory")
        // No 0-byte trace.dat and no spool left beside it.
        #expect(!FileManager.default.fileExists(atPath: out))
        let dir = (out as NSString).deletingLastPathComponent
        let spools = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix(".kvmscope-record-") }
        #expect(spools.isEmpty, "spool left: \(spools)")
    }

    /// As stat and record: the watched command's failure is status 3.
    @Test func watchOfACommandThatFails() throws {
        let p = try Spawned(CLI.binary, ["watch", "--alert", "rate(kvm_pio) > 1000000/s", "-s", "0.1", "--", "/bin/sh", "-c", "exit 7"],
                            stdinNull: true)
        #expect(p.wait(timeout: 60) == 3)
        #expect(p.stderr.hasSuffix("\nkvmscope: command exited with status 7\n"), "\(p.stderr)")
        #expect(!Self.instanceLeft(by: p.pid))
    }

    @Test func watchWithACommandThatDoesNotExist() throws {
        try expectCleanFailure(["watch", "--alert", "rate(kvm_pio) > 5/s for 1s", "--", "/nonexistent"],
                               "cannot run /nonexistent: No such file or directory")
    }

    /// A rule on a misspelt reason would never fire: watch and serve refuse it, naming the closest names.
    @Test func ruleOnAReasonThatDoesNotExist() throws {
        try expectCleanFailure(["watch", "--alert", "rate(EPT_MISCONFG) > 10/s", "--", "/bin/true"],
                               "--alert 'rate(EPT_MISCONFG) > 10/s': unknown reason 'EPT_MISCONFG' (not an exit reason, "
                               + "a KVM_EXIT_* reason or a traced kvm event); closest: EPT_MISCONFIG, EPT_VIOLATION, "
                               + "EXTERNAL_INTERRUPT, icebp, init", status: 64)
        // An event that is not traced is refused too; every spelling of real reasons is accepted.
        let p = try Spawned(CLI.binary, ["serve", "--listen", "127.0.0.1:19999", "--event", "kvm_pio",
                                         "--alert", "rate(kvm_mmio) > 10/s"], stdinNull: true)
        #expect(p.wait(timeout: 60) == 64)
        #expect(p.stderr == "kvmscope: --alert 'rate(kvm_mmio) > 10/s' needs kvm_mmio, which --event leaves out: it could never fire\n")
        #expect(!Self.instanceLeft(by: p.pid))
        // Rules on events --event leaves out could never fire either.
        let noUserspace = try Spawned(CLI.binary, ["watch", "--event", "kvm_mmio", "--alert", "rate(KVM_EXIT_IO) > 5/s",
                                                   "--", "/bin/true"], stdinNull: true)
        #expect(noUserspace.wait(timeout: 60) == 64)
        #expect(noUserspace.stderr == "kvmscope: --alert 'rate(KVM_EXIT_IO) > 5/s' needs kvm_userspace_exit, which --event "
                + "leaves out: it could never fire\n")
        let noPairs = try Spawned(CLI.binary, ["watch", "--event", "kvm_pio", "--event", "kvm_exit",
                                               "--alert", "p99(EPT_MISCONFIG) > 5us", "--", "/bin/true"], stdinNull: true)
        #expect(noPairs.wait(timeout: 60) == 64)
        #expect(noPairs.stderr == "kvmscope: --alert 'p99(EPT_MISCONFIG) > 5us' needs kvm_entry, which --event leaves out: "
                + "it could never fire\n")
        let ok = try Spawned(CLI.binary, ["watch", "--alert", "rate(io) > 1/s", "--alert", "p99(EXIT_MSR) > 1ms",
                                          "--alert", "rate(KVM_EXIT_IO) > 1/s", "--alert", "rate(hlt) > 1/s",
                                          "--alert", "rate(kvm_pio) > 1/s", "--", "/bin/true"], stdinNull: true)
        #expect(ok.wait(timeout: 60) == 0)
        #expect(ok.stderr == "kvmscope: watching the command for 5 rule(s)\n")
    }

    @Test func commandThatIsNotExecutable() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("not-exec-\(getpid())").path
        #expect(FileManager.default.createFile(atPath: file, contents: Data("#!/bin/sh\n".utf8),
                                               attributes: [.posixPermissions: 0o644]))
        defer { unlink(file) }
        try expectCleanFailure(["stat", "-1", "--", file], "cannot run \(file): Permission denied")
    }

    @Test func commandThatFails() throws {
        // The trace is printed, then the command's failure: status 3, as before.
        let p = try Spawned(CLI.binary, ["stat", "--json", "--", "/bin/sh", "-c", "exit 7"], stdinNull: true)
        #expect(p.wait(timeout: 60) == 3)
        #expect(p.stderr == "kvmscope: command exited with status 7\n")
        #expect(p.stdout.contains("\"lost_events\""))
        #expect(!Self.instanceLeft(by: p.pid))
    }

    /// --duration ends the trace before the command: the command is interrupted (as perf stat interrupts its
    /// workload) and kvmscope ends with the summary and status 0, not when the command would have.
    @Test func durationEndsTheCommandToo() throws {
        let p = try Spawned(CLI.binary, ["stat", "--duration", "1", "--json", "--event", "kvm_pio", "--", "sleep", "100"],
                            stdinNull: true)
        let start = Date()
        #expect(p.wait(timeout: 30) == 0, "stderr: \(p.stderr)")
        #expect(Date().timeIntervalSince(start) < 20, "stat --duration 1 -- sleep 100 ran on")
        let duration = try CLI.json(p.stdout)["duration_s"] as? Double ?? 0
        #expect(duration >= 1 && duration < 10, "duration_s \(duration)")
        #expect(!Self.instanceLeft(by: p.pid))
    }

    /// A command that ignores SIGINT is ended all the same (SIGTERM after 5 s).
    @Test func aCommandThatIgnoresSIGINTIsEndedToo() throws {
        let p = try Spawned(CLI.binary, ["stat", "--duration", "1", "--event", "kvm_pio", "--",
                                         "/bin/sh", "-c", "trap '' INT; exec sleep 100"], stdinNull: true)
        let start = Date()
        #expect(p.wait(timeout: 60) == 0, "stderr: \(p.stderr)")
        #expect(Date().timeIntervalSince(start) < 30, "the command outlived the trace")
    }

    @Test func serveOnAnAddressInUse() throws {
        // Hold a loopback port, then ask serve for it.
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        #expect(fd >= 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        #expect(bound == 0)
        #expect(listen(fd, 1) == 0)
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        let port = UInt16(bigEndian: addr.sin_port)
        try expectCleanFailure(["serve", "--listen", "127.0.0.1:\(port)"],
                               "cannot listen on 127.0.0.1:\(port): Address already in use")
    }

    @Test func serveOnABadAddress() throws {
        let p = try Spawned(CLI.binary, ["serve", "--listen", "nowhere:99999"], stdinNull: true)
        #expect(p.wait(timeout: 60) == 64, "a bad argument: EX_USAGE, as ArgumentParser exits")
        #expect(p.stderr.hasPrefix("kvmscope: "))
        #expect(p.stderr.filter { $0 == "\n" }.count == 1)
        #expect(!Self.instanceLeft(by: p.pid))
    }
}
