import Foundation
import Testing
import TestSupport

/// Bad input: one line on stderr, a non-zero status, nothing on stdout, never a stack trace.
@Suite struct ErrorTests {
    func expectOneLineError(_ args: [String], _ expected: String, status: Int32, runAs user: String? = nil) throws {
        let r: CLI.Result
        if let user {
            r = try CLI.Result.runuser(user, [CLI.binary] + args)
        } else {
            r = try CLI.run(args)
        }
        #expect(r.status == status)
        #expect(r.stderr == "kvmscope: \(expected)\n")
        #expect(r.stdout.isEmpty)
    }

    /// Paths of one character and paths that name a directory: one line each, never a trap (Foundation's
    /// NSString path methods trapped on one-character paths: `report q` died with SIGILL).
    @Test func shortPathsAreOneLine() throws {
        let dir = try RecordTests.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        FileManager.default.createFile(atPath: dir + "/e", contents: Data())
        func run(_ args: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
            try Spawned.run("/bin/sh", ["-c", "cd \"$0\" && exec \"$@\"", dir, CLI.binary] + args)
        }
        for (args, line) in [(["report", "q"], "q: No such file or directory"), (["report", "e"], "e: empty file"),
                             (["report", "x/"], "x/: No such file or directory"),
                             (["report", "--html", "h", "q"], "q: No such file or directory")] {
            let r = try run(args)
            #expect(r.status == 1 && r.stdout.isEmpty && r.stderr == "kvmscope: \(line)\n", "\(args): \(r.stderr)")
        }
    }

    /// `--version` as every tool has it; `report` with no file reads trace.dat and takes `-i FILE` (trace-cmd's and
    /// perf's habits).
    @Test func versionAndReportsDefaults() throws {
        let v = try CLI.run(["--version"])
        #expect(v.status == 0 && v.stdout == "0.1.0\n" && v.stderr.isEmpty)
        let dir = try RecordTests.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func run(_ args: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
            try Spawned.run("/bin/sh", ["-c", "cd \"$0\" && exec \"$@\"", dir, CLI.binary] + args)
        }
        let none = try run(["report"])
        #expect(none.status == 1 && none.stderr == "kvmscope: trace.dat: No such file or directory\n", "\(none.stderr)")
        let text = "CPU 0/KVM-101 [000] .... 10.000000: kvm_pio: pio_write at 0x10 size 1 count 1 val 0x0\n"
        FileManager.default.createFile(atPath: dir + "/t.txt", contents: Data(text.utf8))
        let i = try run(["report", "--json", "-i", "t.txt"])
        #expect(i.status == 0, "\(i.stderr)")
        #expect((try CLI.json(i.stdout)["events"] as? [String: Any])?["kvm_pio"] as? Int == 1, "\(i.stdout.prefix(300))")
    }

    @Test func badRegex() throws {
        try expectOneLineError(["stat", "-f", "("], "bad regular expression for -f/--fields: '('", status: 64)
    }

    @Test func badStormKind() throws {
        try expectOneLineError(["storm", "--kind", "foo"], "--kind must be io, mmio or hlt (got 'foo')", status: 64)
    }

    @Test func badDelay() throws {
        try expectOneLineError(["stat", "-s", "30"], "-s/--set-delay must be between 0.1 and 25.5", status: 64)
    }

    /// A negative number is the option's value, not an unknown short option ("Missing value" before).
    @Test func negativeNumbersAreValuesTheValidatorRefuses() throws {
        try expectOneLineError(["stat", "--duration", "-1"], "--duration must be a number of seconds > 0", status: 64)
        try expectOneLineError(["record", "--duration", "-2", "-o", "/dev/null"], "--duration must be a number of seconds > 0", status: 64)
        try expectOneLineError(["top", "-d", "-2"], "-d/--delay must be between 0.1 and 3600 seconds", status: 64)
        try expectOneLineError(["top", "-n", "-1"], "-n/--iterations must be at least 1", status: 64)
        try expectOneLineError(["serve", "-s", "-1"], "-s/--interval must be between 0.1 and 60", status: 64)
        try expectOneLineError(["storm", "--vcpus", "-1"], "The value '-1' is invalid for '--vcpus <vcpus>'", status: 64)
        try expectOneLineError(["stat", "--buffer-kb", "-5"], "The value '-5' is invalid for '--buffer-kb <buffer-kb>'", status: 64)
        try expectOneLineError(["live", "--buffer-kb", "-5"], "The value '-5' is invalid for '--buffer-kb <buffer-kb>'", status: 64)
        try expectOneLineError(["record", "--buffer-kb", "-1"], "The value '-1' is invalid for '--buffer-kb <buffer-kb>'", status: 64)
        try expectOneLineError(["serve", "--retired-vms", "-1"], "--retired-vms must be at least 1", status: 64)
        try expectOneLineError(["report", "--vcpu", "-1", "x.dat"], "The value '-1' is invalid for '--vcpu <vcpu>'", status: 64)
        try expectOneLineError(["stat", "-1", "-p", "-1"], "no process with pid -1", status: 1)
        try expectOneLineError(["watch", "--alert", "rate(kvm_pio) > 1/s", "-p", "-1"], "no process with pid -1", status: 1)
        try expectOneLineError(["serve", "--request-timeout", "-1"], "--request-timeout and --idle-timeout must be > 0", status: 64)
        try expectOneLineError(["report", "--ts2secs", "-1", "x.dat"], "The value '-1' is invalid for '--ts2secs <HZ>'", status: 64)
        try expectOneLineError(["record", "--max-size", "-5", "-o", "/dev/null"], "--max-size: bad size '-5' (e.g. 500M, 2G)", status: 64)
        try expectOneLineError(["stat", "--qmp-timeout", "-1", "-1"], "--qmp-timeout must be more than 0 and at most 60 seconds", status: 64)
    }

    /// A stream of binary that is not trace.dat is refused from its first bytes (it was copied to a temporary
    /// file without end: `report /dev/zero` never finished).
    @Test func binaryStreamsAreRefusedAtOnce() throws {
        for device in ["/dev/zero", "/dev/urandom"] {
            try expectOneLineError(["report", device], "\(device): unknown format (binary, not trace.dat; expected trace.dat, "
                                   + "kernel trace text, trace-cmd report or perf script output)", status: 1)
        }
        // A trace.dat whose magic comes through the pipe in pieces (5 bytes, then the rest) is told by its first
        // 4 KiB, however many reads they take.
        let file = ReportCommandTests.traceCmdDat
        let r = try Spawned.run("/bin/sh", ["-c", "(head -c 5 \"$1\"; sleep 0.2; tail -c +6 \"$1\") | \"$0\" report --json -",
                                            CLI.binary, file])
        #expect(r.status == 0, "\(r.stderr)")
        let whole = try CLI.run(["report", "--json", file])
        #expect(try CLI.json(r.stdout)["events"] as? [String: Int] == CLI.json(whole.stdout)["events"] as? [String: Int])
    }

    /// Output that did not all land (a full disk: /dev/full) is an error, as for `-o` files and `top -b`: one
    /// line and status 1, never a silent success. (A reader that went away, `| head`, is not an error.)
    @Test func stdoutThatCannotTakeTheOutputIsAnError() throws {
        for args in [["report", ReportCommandTests.host], ["report", "--json", ReportCommandTests.host], ["--help"], ["--version"],
                     ["help", "report"], ["report", "--help"]] {
            let r = try Spawned.run("/bin/sh", ["-c", "exec \"$0\" \"$@\" > /dev/full", CLI.binary] + args)
            #expect(r.status == 1 && r.stderr == "kvmscope: cannot write standard output: No space left on device\n",
                    "\(args): \(r.status) \(r.stderr)")
        }
        // A reader that goes away after one line ends no mode by SIGPIPE (status 141 under pipefail): --csv wrote
        // row by row and died of it.
        for mode in ["--csv", "--json", "--html=/dev/null"] {
            let r = try Spawned.run("/bin/bash", ["-c", "set -o pipefail; \"$0\" report \(mode) \"$1\" | head -c 1 > /dev/null",
                                                  CLI.binary, ReportCommandTests.host])
            #expect(r.status == 0 && r.stderr == "", "\(mode): \(r.status) \(r.stderr)")
        }
    }

    /// No file named and no trace.dat, with a pipe on stdin: the pipe is read, as perf report reads one
    /// (`trace-cmd report | kvmscope report`); with a trace.dat here, the trace.dat.
    @Test func aPipeWithoutDashIsRead() throws {
        let dash = try Spawned.run("/bin/sh", ["-c", "cd / && \"$0\" report - < \"$1\"", CLI.binary, ReportCommandTests.host])
        #expect(dash.status == 0 && dash.stdout.hasPrefix("-: trace-cmd report, 4463 kvm events over 4.74s"), "\(dash.stderr)")
        let r = try Spawned.run("/bin/sh", ["-c", "cd / && cat \"$1\" | \"$0\" report", CLI.binary, ReportCommandTests.host])
        #expect(r.status == 0 && r.stderr == "", "\(r.stderr)")
        #expect(r.stdout == dash.stdout)
        let x = try Spawned.run("/bin/sh", ["-c", "cd / && echo x | \"$0\" report", CLI.binary])
        #expect(x.status == 1 && x.stdout == "")
        #expect(x.stderr.hasPrefix("kvmscope: standard input: "), "\(x.stderr)")
    }

    /// A FIFO that no process reads, as any file kvmscope writes (stat -L, top --csv, report --html): one line at
    /// once, never a wait in open(2) that Ctrl-C could not end.
    @Test func aFIFOWithoutAReaderIsOneLine() throws {
        let fifo = FileManager.default.temporaryDirectory.appendingPathComponent("kvmscope-fifo-\(getpid())").path
        #expect(mkfifo(fifo, 0o600) == 0)
        defer { unlink(fifo) }
        let line = "cannot write \(fifo): no process reads this FIFO (start its reader first)"
        try expectOneLineError(["stat", "-l", "-L", fifo], line, status: 1)
        try expectOneLineError(["top", "-b", "-n", "1", "-d", "0.1", "--no-exits", "--csv", fifo], line, status: 1)
        try expectOneLineError(["report", "--html", fifo, ReportCommandTests.host], line, status: 1)
    }

    /// A size no file can hold, or not a number at all, is a bad size: one line, never a trap (these trapped
    /// converting the Double to UInt64).
    @Test func maxSizeBeyondAnyFileIsABadSize() throws {
        for size in ["99999999999999999999", "18446744073709551615", "20000000000000000G", "inf", "Infinity", "1e400", "nan"] {
            try expectOneLineError(["record", "--max-size", size, "-o", "/dev/null"], "--max-size: bad size '\(size)' (e.g. 500M, 2G)",
                                   status: 64)
        }
    }

    /// `storm --name` is read back as QEMU's -name is: an unescaped comma would cut the name, so it is refused.
    @Test func stormNameWithACommaNeedsQEMUsEscape() throws {
        try expectOneLineError(["storm", "--name", "web,1"], "--name 'web,1': a comma in a guest name is written ',,' "
                               + "(as in QEMU's -name), and the name cannot be empty or start with 'key='", status: 64)
    }

    /// Options that cannot go together are refused, not half-honoured.
    @Test func conflictingOptions() throws {
        try expectOneLineError(["top", "--json", "--csv", "-"], "--json and --csv - both write standard output: give --csv a file", status: 64)
        try expectOneLineError(["stat", "-p", "1", "--", "true"], "-p/--pid and a COMMAND cannot be used together", status: 64)
        let fixture = CLI.packageRoot.appendingPathComponent("Tests/Fixtures/text/storm-io.kernel.txt").path
        // The HTML page's path is checked before the report is printed (stdout stays empty); a directory too.
        let dir = try CLI.run(["report", "--html", "/tmp", fixture])
        #expect(dir.status == 1 && dir.stdout == "" && dir.stderr == "kvmscope: cannot write /tmp: Is a directory\n", "\(dir)")
        try expectOneLineError(["report", "--html", "/nonexistent/x.html", fixture],
                               "cannot write /nonexistent/x.html: No such file or directory", status: 1)
        try expectOneLineError(["report", "--html", "", fixture], "--html needs a file name", status: 64)
    }

    /// A name's control characters are shown as `?` in the error, never sent to the terminal raw.
    @Test func stormNameInAnErrorIsTerminalSafe() throws {
        try expectOneLineError(["storm", "--name", "a\u{1b}[2Jb,c\nd"], "--name 'a?[2Jb,c?d': a comma in a guest name is written "
                               + "',,' (as in QEMU's -name), and the name cannot be empty or start with 'key='", status: 64)
    }

    @Test func unknownOption() throws {
        try expectOneLineError(["stat", "--frobnicate"], "Unknown option '--frobnicate'", status: 64)
    }

    @Test(.enabled(if: KVMTest.canRun)) func unknownPid() throws {
        try expectOneLineError(["stat", "-1", "-p", "999999"], "no process with pid 999999", status: 1)
    }

    @Test(.enabled(if: KVMTest.canRun)) func unknownGuest() throws {
        try expectOneLineError(["stat", "-1", "-g", "no-such-guest"], "no guest named 'no-such-guest' is running", status: 1)
    }

    @Test(.enabled(if: KVMTest.canRun)) func unknownEvent() throws {
        try expectOneLineError(["stat", "-1", "--event", "kvm_nonsense"], "no event kvm:kvm_nonsense on this kernel", status: 1)
        try expectOneLineError(["stat", "-1", "--event", "sched_switch"],
                               "only kvm events are traced: sched_switch is sched:sched_switch, not a kvm event", status: 1)
    }

    @Test(.enabled(if: KVMTest.canRun)) func notRoot() throws {
        try expectOneLineError(["stat", "-1"], "cannot use tracefs: /sys/kernel/tracing: Permission denied (run kvmscope "
                               + "with sudo, or grant access: see \"Running without root\" in the README)", status: 1, runAs: "nobody")
    }

    @Test(.enabled(if: KVMTest.canRun)) func stormWithoutKVMDevice() throws {
        // As nobody, /dev/kvm (mode 0600 root) cannot be opened: the same path as a host without KVM.
        let r = try CLI.Result.runuser("nobody", [CLI.binary, "storm", "--exits", "1"])
        #expect(r.status == 1)
        #expect(r.stderr.hasPrefix("kvmscope: /dev/kvm: Permission denied"))
        #expect(r.stderr.filter { $0 == "\n" }.count == 1)
    }
}

extension CLI.Result {
    /// Runs a command as another user (runuser), for the errors of unprivileged users.
    /// The binary is copied to a world-readable directory first: CI's clone may live where others can't enter.
    static func runuser(_ user: String, _ argv: [String]) throws -> CLI.Result {
        var argv = argv
        if argv.first == CLI.binary { argv[0] = try sharedBinary() }
        let r = try Spawned.run("/usr/sbin/runuser", ["-u", user, "--"] + argv, timeout: 60,
                                environment: ["PATH": "/usr/bin:/bin"], inheritEnvironment: false)
        return CLI.Result(status: r.status, stdout: r.stdout, stderr: r.stderr)
    }

    /// A copy of the binary in a world-readable directory, for runs as other users: CI's clone may live where
    /// others can't enter.
    static func sharedBinary() throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kvmscope-runuser-\(getpid())")
        if (try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: false,
                                                     attributes: [.posixPermissions: 0o755])) != nil {
            // The copy (16 MB) goes with the test process.
            atexit {
                let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kvmscope-runuser-\(getpid())")
                try? FileManager.default.removeItem(at: dir)
            }
        }
        let copy = dir.appendingPathComponent("kvmscope")
        if !FileManager.default.fileExists(atPath: copy.path) {
            // Copied by cp, not in this process: a file this process had open for writing would be inherited
            // by the children other tests fork meanwhile, and executing it would fail with "Text file busy".
            let partial = copy.path + ".\(UInt32.random(in: 0...UInt32.max))"
            let cp = try Spawned.run("/bin/cp", [CLI.binary, partial], timeout: 60)
            #expect(cp.status == 0, "cp: \(cp.stderr)")
            try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: partial)
            #expect(rename(partial, copy.path) == 0)
        }
        return copy.path
    }
}
