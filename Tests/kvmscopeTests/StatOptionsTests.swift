import Foundation
import Testing
import TestSupport

/// kvm_stat's options on `kvmscope stat`: those kvmscope takes, those it refuses with one line saying what to use.
@Suite struct StatOptionsTests {
    func expectRefused(_ args: [String], _ expected: String) throws {
        let r = try CLI.run(["stat"] + args)
        #expect(r.status == 64)
        #expect(r.stderr == "kvmscope: \(expected)\n")
        #expect(r.stdout.isEmpty)
    }

    /// kvm_stat -d/-i read debugfs's kvm/ counters: kvmscope does not, and says where those numbers are.
    @Test func debugfsSourcesAreRefusedWithWhatToUse() throws {
        try expectRefused(["-d"], "-d/--debugfs: kvmscope counts the kvm:* tracepoints (-t, its only source), not "
                          + "debugfs's kvm/ counters; KVM's own statistics per VM: kvmscope top --qmp SOCKET, or kvm_stat -d")
        try expectRefused(["--debugfs-include-past"], "-i/--debugfs-include-past: kvmscope counts the kvm:* tracepoints "
                          + "from its start; counts from before it are only in debugfs's kvm/ counters (kvm_stat -d -i)")
    }

    /// kvm_stat refuses -c and -z outside its log modes; so does kvmscope (they changed nothing before).
    @Test func logOnlyOptionsNeedALog() throws {
        try expectRefused(["-c"], "-c/--csv requires -l/--log or -L/--log-to-file")
        try expectRefused(["-1", "-z"], "-z/--skip-zero-records requires -l/--log or -L/--log-to-file")
    }

    /// -1 is one interval (-s, else kvm_stat's one second): a --duration beside it was ignored before.
    @Test func onceTakesNoDuration() throws {
        try expectRefused(["-1", "--duration", "5"],
                          "-1/--once counts over one interval (-s, default 1 s): it does not combine with --duration")
        try expectRefused(["-1", "-s", "26"], "-s/--set-delay must be between 0.1 and 25.5")
    }
}

/// What `stat` divides by: the reading window, from tracing on to tracing off — not the instance's set-up, the
/// drain, nor a COMMAND's slow end.
@Suite(.serialized, .enabled(if: KVMTest.canRun, "needs root, /dev/kvm and tracefs"))
struct StatWindowTests {
    func duration(_ args: [String]) throws -> Double {
        let r = try CLI.run(["stat", "--json", "--event", "kvm_pio"] + args, timeout: 60)
        #expect(r.status == 0, "stderr: \(r.stderr)")
        return try #require(CLI.json(r.stdout)["duration_s"] as? Double)
    }

    /// `-1` counts over one second, `-1 -s 2` over two (-s was ignored before); -t is accepted (kvm_stat's
    /// tracepoint source, kvmscope's only one).
    @Test func onceIsOneIntervalOfSetDelay() throws {
        let one = try duration(["-1", "-t"])
        #expect(one >= 1 && one < 1.5, "duration_s \(one)")
        let two = try duration(["-1", "-s", "2"])
        #expect(two >= 2 && two < 2.5, "duration_s \(two)")
    }

    /// A COMMAND that ignores SIGINT is ended 5 s later with SIGTERM: those 5 s were in duration_s (and divided
    /// every CurAvg/s) before; tracing now stops at --duration, before the COMMAND is ended.
    @Test func aSlowCommandEndIsOutsideTheWindow() throws {
        let d = try duration(["--duration", "1", "--", "/bin/sh", "-c", "trap '' INT; exec sleep 30"])
        #expect(d >= 1 && d < 2, "duration_s \(d)")
    }

    /// `-f help` (kvm_stat's) of stat and of the live view: the kvm events of this kernel, one a line, indented as
    /// kvm_stat prints them.
    @Test func fieldsHelpListsTheKernelsEvents() throws {
        let dir = "/sys/kernel/tracing/events/kvm"
        let names = try FileManager.default.contentsOfDirectory(atPath: dir)
            .filter { FileManager.default.fileExists(atPath: "\(dir)/\($0)/format") }.sorted()
        #expect(names.contains("kvm_pio"))
        for command in ["stat", "live"] {
            let r = try CLI.run([command, "-f", "help"])
            #expect(r.status == 0, "\(command) stderr: \(r.stderr)")
            #expect(r.stdout == names.map { "  \($0)\n" }.joined(), "\(command)")
        }
    }

    /// `-1 -f` with a regular expression that keeps no field: no line on stdout (kvm_stat -1 prints none either;
    /// a blank line came before), and one line on stderr saying why — matched at the start of the name, as
    /// kvm_stat's -f (`pio` keeps nothing; `.*pio` keeps kvm_pio).
    @Test func onceWithAFilterMatchingNothingPrintsNoLine() throws {
        for regex in ["nomatch", "pio"] {
            let r = try CLI.run(["stat", "-1", "-s", "0.1", "-f", regex], timeout: 60)
            #expect(r.status == 0, "stderr: \(r.stderr)")
            #expect(r.stdout == "")
            #expect(r.stderr == "kvmscope: -f '\(regex)' matches no kvm event or reason of this kernel (matched at the start "
                    + "of each name, as kvm_stat's -f: 'kvm_pio', '.*pio'; -f help lists the events)\n")
        }
        // Only `true`'s threads are traced (other tests' storms run meanwhile): kvm_pio counts 0.
        let r = try CLI.run(["stat", "-1", "-s", "0.1", "-f", ".*pio", "--", "true"], timeout: 60)
        #expect(r.status == 0, "stderr: \(r.stderr)")
        #expect(r.stdout == "kvm_pio" + String(repeating: " ", count: 35) + "         0         0\n")
        #expect(r.stderr == "")
    }

    /// `-p PID` of a process that runs no VM (pid 1): traced as kvm_stat -p traces it (its zeros printed, status
    /// 0), with one line on stderr saying that it will count nothing — silent before.
    @Test func pidOfAProcessWithoutAVMIsSaid() throws {
        let comm = try String(contentsOfFile: "/proc/1/comm", encoding: .utf8).trimmingCharacters(in: .newlines)
        let r = try CLI.run(["stat", "-1", "-s", "0.1", "-p", "1", "-f", "kvm_pio$"], timeout: 60)
        #expect(r.status == 0, "stderr: \(r.stderr)")
        #expect(r.stdout == "kvm_pio" + String(repeating: " ", count: 35) + "         0         0\n")
        #expect(r.stderr == "kvmscope: pid 1 (\(comm)) runs no KVM VM (neither /dev/kvm nor a kvm-vm file is open): "
                + "its threads are traced, as kvm_stat -p traces them, but will count nothing\n")
    }

    /// -L appends, as kvm_stat's does, and a CSV file that starts with the same header does not get it again.
    @Test func logToFileAppends() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("stat-L-\(getpid()).csv").path
        defer { unlink(path) }
        // Only `sleep`'s threads are traced: every interval counts 0 kvm_pio.
        let args = ["stat", "-l", "-c", "-s", "0.2", "--duration", "0.5", "--event", "kvm_pio", "-L", path, "--", "sleep", "5"]
        for _ in 0..<2 {
            let r = try CLI.run(args, timeout: 60)
            #expect(r.status == 0, "stderr: \(r.stderr)")
            #expect(r.stdout.isEmpty)
        }
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map(String.init)
        #expect(lines.first == "timestamp,kvm_pio")
        #expect(lines.filter { $0.hasPrefix("timestamp") }.count == 1, "\(lines)")
        let rows = lines.dropFirst()
        #expect(rows.count >= 4, "two runs of at least two lines: \(lines)")
        #expect(rows.allSatisfy { $0.wholeMatch(of: /\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,0/) != nil }, "\(lines)")
    }
}
