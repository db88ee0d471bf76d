import Testing

/// The help users read first, pinned.
@Suite struct HelpTests {
    @Test func rootHelp() throws {
        let r = try CLI.run(["--help"], environment: ["COLUMNS": "80"])
        #expect(r.status == 0)
        let lines = r.stdout.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        #expect(Array(lines.prefix(18)) == [
            "OVERVIEW: What KVM virtual machines cost their host, exit by exit.",
            "",
            "Reads the kernel's kvm:* tracepoints from a private tracefs instance and shows,",
            "per VM and per vCPU, the count of every exit reason and the distribution of",
            "exit latencies.",
            "",
            "Examples:",
            "  kvmscope                          the live view, kvm_stat's keys",
            "  kvmscope live --demo              the same, with a demo guest",
            "  kvmscope stat -1                  one kvm_stat-style snapshot",
            "  kvmscope stat --json -- ./vmm     trace while a command runs",
            "  kvmscope top -b -n 3              virt-top's view: CPU, memory, I/O per VM",
            "  kvmscope record -o t.dat          a trace.dat for trace-cmd",
            "  kvmscope report t.dat             perf kvm stat-style report",
            "  kvmscope serve                    Prometheus on 127.0.0.1:9477",
            "  kvmscope watch --alert 'rate(EPT_MISCONFIG) > 50000/s for 5s'",
            "  kvmscope storm --kind io --vcpus 2 --exits 100000",
            "",
        ])
        let subcommands = lines.drop { $0 != "SUBCOMMANDS:" }.dropFirst().prefix { !$0.isEmpty }
            .compactMap { $0.hasPrefix("  ") && !$0.hasPrefix("    ") ? $0.split(separator: " ").first.map(String.init) : nil }
        #expect(subcommands == ["live", "stat", "top", "record", "report", "serve", "watch", "storm", "bench"])
    }

    @Test func statOptionsAreKVMStats() throws {
        let r = try CLI.run(["stat", "--help"])
        for option in ["-1, --once, --batch", "-l, --log", "-L, --log-to-file", "-c, --csv", "-z, --skip-zero-records",
                       "-s, --set-delay", "-p, --pid", "-g, --guest", "-f, --fields", "-t, --tracepoints", "-d, --debugfs",
                       "-i, --debugfs-include-past"] {
            #expect(r.stdout.contains(option), "stat --help lacks \(option)")
        }
    }

    /// `help NAME` with a name that is no command is a usage error, as `kvmscope NAME` is (ArgumentParser alone
    /// printed the root help and exited 0); a known name still prints that command's help.
    @Test func helpOfAnUnknownCommandFails() throws {
        let cases: [([String], String)] = [
            (["help", "nosuch"], "kvmscope: help: no command 'nosuch'; the commands are live, stat, top, record, report, serve, watch, storm, bench\n"),
            (["help", "stat", "nosuch"], "kvmscope: help: no command 'stat nosuch'; stat has no subcommands\n"),
            (["help", "bench", "nosuch"], "kvmscope: help: no command 'bench nosuch'; the subcommands of bench are overhead, synth, resources\n"),
        ]
        for (args, stderr) in cases {
            let r = try CLI.run(args)
            #expect(r.status == 64, "\(args)")
            #expect(r.stdout == "", "\(args)")
            #expect(r.stderr == stderr)
        }
        let unknown = try CLI.run(["nosuch"])
        #expect(unknown.status == 64)
        #expect(unknown.stderr == "kvmscope: Unexpected argument 'nosuch'\n")
        for (help, direct) in [(["help", "stat"], ["stat", "--help"]), (["help", "bench", "synth"], ["bench", "synth", "--help"]),
                               (["help"], ["--help"])] {
            let h = try CLI.run(help, environment: ["COLUMNS": "80"])
            let d = try CLI.run(direct, environment: ["COLUMNS": "80"])
            #expect(h.status == 0 && h.stderr == "", "\(help)")
            #expect(h.stdout == d.stdout, "\(help)")
            #expect(h.stdout.hasPrefix("OVERVIEW: "), "\(help)")
        }
    }
}
