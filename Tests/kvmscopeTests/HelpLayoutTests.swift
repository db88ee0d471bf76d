import Testing

/// Help reads well at 80 columns and at any other width: swift-argument-parser wraps each line of an overview or
/// discussion at the terminal's width, so a paragraph must be one line in the source (a hard break inside it
/// leaves a stub line wherever the width differs from the author's), and examples must fit 80 columns.
@Suite struct HelpLayoutTests {
    static let commands: [[String]] = [[], ["live"], ["stat"], ["top"], ["record"], ["report"], ["serve"], ["watch"],
                                       ["storm"], ["bench"], ["bench", "overhead"], ["bench", "synth"],
                                       ["bench", "resources"]]

    static func help(_ command: [String], columns: Int) throws -> [String] {
        let r = try CLI.run(command + ["--help"], environment: ["COLUMNS": "\(columns)"])
        #expect(r.status == 0, "\(command): \(r.stderr)")
        return r.stdout.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
    }

    /// The lines of the overview and discussion (what comes before USAGE) that end before the width although the
    /// next line goes on with the same paragraph: a break the author made, not the wrapping.
    static func stubs(_ lines: [String], columns: Int) -> [String] {
        let head = Array(lines.prefix { !$0.hasPrefix("USAGE:") })
        return zip(head, head.dropFirst()).compactMap { a, b in
            guard !a.isEmpty, !b.isEmpty, !a.hasPrefix(" "), !b.hasPrefix(" ") else { return nil }
            let next = b.prefix { $0 != " " }.count
            // The parser keeps each line below the width (79 characters at 80 columns).
            return a.count + 1 + next < columns ? "'\(a)' / '\(b)'" : nil
        }
    }

    @Test(arguments: commands)
    func fitsEightyColumns(_ command: [String]) throws {
        let lines = try Self.help(command, columns: 80)
        #expect(lines.filter { $0.count > 80 } == [], "\(command)")
        #expect(Self.stubs(lines, columns: 80) == [], "\(command)")
    }

    @Test(arguments: commands)
    func paragraphsReflowAtOtherWidths(_ command: [String]) throws {
        for columns in [60, 132] {
            #expect(Self.stubs(try Self.help(command, columns: columns), columns: columns) == [], "\(command) at \(columns)")
        }
    }

    @Test func helpSubcommandPrintsTheSameText() throws {
        let r = try CLI.run(["help", "stat"], environment: ["COLUMNS": "80"])
        #expect(r.status == 0)
        #expect(r.stdout.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
                == (try Self.help(["stat"], columns: 80)))
    }

    /// stat's overview, as an 80-column terminal shows it.
    @Test func statOverviewAtEightyColumns() throws {
        let lines = try Self.help(["stat"], columns: 80)
        #expect(Array(lines.prefix { !$0.hasPrefix("USAGE:") }) == [
            "OVERVIEW: kvm_stat's non-interactive modes, with exit latencies and per-vCPU",
            "rows.",
            "",
            "Without a mode, traces until --duration ends, COMMAND exits or Ctrl-C, then",
            "prints the summary. -1 is kvm_stat's once mode (one interval: 1 s, or -s; its",
            "batch lines, every field sorted, zeros included; --json gives the summary), -l",
            "its log mode. CurAvg/s and duration_s divide by the reading window, from",
            "tracing on to tracing off: kvmscope's own start-up and end stay out.",
            "",
            "--event also takes perf kvm stat's analyses: ioport and mmio print the per-port",
            "and per-MMIO-address tables after the summary.",
            "",
            "-f is kvm_stat's: a regular expression matched at the start of each field name",
            "(Python's re.match), not searched in it: -f kvm_pio keeps kvm_pio, -f pio keeps",
            "nothing, -f '.*pio' keeps kvm_pio. Fields are the kvm events (-f help lists",
            "them) and their reasons' children, named as kvm_stat names them: kvm_exit(HLT),",
            "kvm_userspace_exit(IO); -f also takes kvm_userspace_exit(KVM_EXIT_IO), the",
            "kernel's spelling, and a kvm_exit reason in any printer's spelling.",
            "",
            "  kvmscope stat -1                  counts over one second, like kvm_stat -1",
            "  kvmscope stat -1 -f '.*pio'       kvm_pio alone (-f pio keeps nothing)",
            "  kvmscope stat -1 -s 5             counts over five seconds",
            "  kvmscope stat -l -s 1             one line per second (kvm_stat --log)",
            "  kvmscope stat -l -c -L exits.csv  a CSV log appended to a file",
            "  kvmscope stat --json -o s.json -- kvmscope storm --kind io --exits 10000",
            "",
        ])
    }
}
