import Foundation
import KVMAnalysis
import KVMExits
import KVMSources
import Testing
import TestSupport

/// Inputs the fuzzers (fuzz/, `make fuzz`) found to crash or to break a rule, kept under Tests/Fixtures/fuzz
/// and run as users meet them: each gives exactly what is asserted here.
@Suite struct FuzzRegressionTests {
    static func fixture(_ name: String) -> String {
        CLI.packageRoot.appendingPathComponent("Tests/Fixtures/fuzz/\(name)").path
    }

    /// A text trace whose entry comes 3 years after its exit: the mean latency in ns (1e17) overflowed the
    /// hundredths of Durations.fixed2 (a Swift trap) in `report --csv`; it is printed in Swift's shortest form.
    @Test func latencyOfYearsInCSV() throws {
        let file = Self.fixture("text-trace-latency-of-years.txt")
        let r = try CLI.run(["report", "--csv", file])
        #expect(r.status == 0 && r.stderr == "")
        #expect(r.stdout == """
            file,vm,vm_name,vcpu,reason,isa,blocking,count,paired,min_ns,mean_ns,stddev_ns,p50_ns,p90_ns,p99_ns,p999_ns,max_ns,total_ns
            \(file),5664,qemu,,UNKNOWN(0x0),,0,1,1,99999998650000000,9.999999865e+16,0.00,99999998650000000,99999998650000000,99999998650000000,99999998650000000,99999998650000000,99999998650000000

            """)
    }

    /// trace.dat errors raised deep in the byte reader lacked the file's name; an event format that did not
    /// parse was shown over several lines (its first 60 characters), without the file's name.
    @Test func traceDatErrorsNameTheFile() throws {
        let cases = [
            ("trace-dat-truncated-header.dat", "truncated trace.dat header: needs 1 bytes at offset 13, has 0"),
            ("trace-dat-format-size-past-end.dat",
             "trace.dat header: event format claims 12197720948 bytes at offset 5886 but only 6405 remain"),
            ("trace-dat-format-over-lines.dat", #"cannot parse the format of kvm event: name: kvm_NSNs549tPFsd"format:"#),
            // A version quoted from the file with a newline in it.
            ("trace-dat-version-over-lines.dat", #"unsupported trace.dat version '9\nx' (6 and 7 are)"#),
        ]
        for (name, message) in cases {
            let file = Self.fixture(name)
            let r = try CLI.run(["report", file])
            #expect(r.status == 1 && r.stdout == "")
            #expect(r.stderr == "kvmscope: \(file): \(message)\n")
        }
    }

    /// A kvm_exit format whose print fmt reads __print_symbolic(REC->re…) of a field it does not declare:
    /// libtraceevent 1.7 dereferenced NULL parsing it (SIGSEGV in `report`); such formats are refused.
    @Test func printSymbolicOfAnUndeclaredFieldIsRefused() throws {
        let file = Self.fixture("trace-dat-print-symbolic-unknown-field.dat")
        let r = try CLI.run(["report", file])
        #expect(r.status == 1 && r.stdout == "")
        #expect(r.stderr == "kvmscope: \(file): cannot parse the format of kvm event: name: kvm_exit\n")
    }

    /// A format whose print fmt is `"",4?"":_{` makes libtraceevent 1.7 dereference NULL. Formats from files
    /// are parsed in a child process first: this one is refused with one line, and this process lives on.
    @Test func formatThatCrashesLibtraceeventIsRefused() throws {
        let text = try String(contentsOfFile: Self.fixture("format-ternary-crashes-libtraceevent.format"), encoding: .utf8)
        /// Processes named swift-backtrace (the Swift runtime's crash reporter) now.
        func backtracers() -> Int {
            ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).filter { pid in
                Int(pid) != nil && (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8)) == "swift-backtrace\n"
            }.count
        }
        let before = backtracers()
        #expect(throws: KVMScopeError.badFormat("cannot parse the format of kvm event: name:t")) {
            try EventFormats(untrusted: true).add(system: "kvm", format: text)
        }
        // The child that crashed died of its signal: no crash reporter started (it printed a report on stderr and
        // held the test's pipe for half an hour).
        #expect(backtracers() <= before)
        // The kernel's own formats still parse when isolated.
        let exit = try String(contentsOfFile: CLI.packageRoot.appendingPathComponent("Tests/Fixtures/formats/6.18-x86/kvm_exit.format").path,
                              encoding: .utf8)
        #expect(try EventFormats(untrusted: true).add(system: "kvm", format: exit) == 0)
    }

    /// A rule with control characters (a newline among them) made a two-line error; they are escaped now.
    @Test func stormRuleErrorIsOneLine() throws {
        let text = try String(contentsOfFile: Self.fixture("storm-rule-control-characters.txt"), encoding: .utf8)
        #expect(throws: StormRuleError(description: #"bad rule '\u{0E}\n\u{1D}': expected 'rate', a percentile (p50, p90, p99, p999), 'cpu', 'wait' or 'disk_latency' at column 1"#)) {
            try StormRule(parsing: text)
        }
    }
}
