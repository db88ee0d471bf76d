import Foundation
import Testing
import TestSupport

/// `kvmscope report` as users run it: the real corpus, errors, and the HTML page rendered by headless Chromium.
@Suite struct ReportCommandTests {
    static let host = "/work/shared/corpus/real/hip24_sigmatek_test_host_report.txt"

    @Test func jsonOnHostReport() throws {
        let r = try CLI.run(["report", "--json", Self.host])
        #expect(r.status == 0)
        let j = try CLI.json(r.stdout)
        let events = try #require(j["events"] as? [String: Any])
        #expect(events["kvm_exit"] as? Int == 810 && events["kvm_entry"] as? Int == 806)
        let pairing = try #require(j["pairing"] as? [String: Any])
        #expect(pairing["paired"] as? Int == 802 && pairing["orphan_exits"] as? Int == 8
                && pairing["orphan_entries"] as? Int == 4)
        let exits = try #require(j["exits"] as? [[String: Any]])
        var reasons: [String: Int] = [:]
        for e in exits { reasons[e["reason"] as! String, default: 0] += e["count"] as! Int }
        #expect(reasons == ["MSR_WRITE": 506, "HLT": 217, "EPT_MISCONFIG": 66, "PREEMPTION_TIMER": 13,
                            "EXTERNAL_INTERRUPT": 5, "EOI_INDUCED": 3])
        let source = try #require(j["source"] as? [String: Any])
        #expect(source["format"] as? String == "trace-cmd report" && source["vm_is"] as? String == "tid")
    }

    static let exitOnly = "/work/shared/corpus/real/hip24_sigmatek_vapic_kvm_exit.txt"

    /// A trace of kvm_exit without kvm_entry (the corpus' kvm_exit-only file): the exits are counted, and the
    /// report says why no latency is shown — a note line, and `kvm_entry_traced: false` in the JSON's source.
    /// The host report, which has kvm_entry, gets neither.
    @Test func exitOnlyTraceSaysNoLatency() throws {
        let r = try CLI.run(["report", Self.exitOnly])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout == """
            \(Self.exitOnly): trace-cmd report, 1333 kvm events over 9.23s (8617.352955000 → 8626.585512000)
            note: no TGID column: each thread is its own VM
            note: kvm_entry not traced, no exit latency

            Event                                          Total  %Total   CurAvg/s
            kvm_exit                                        1333   100.0        144
              MSR_WRITE                                      820    61.5         89
              HLT                                            337    25.3         37
              EPT_MISCONFIG                                  108     8.1         12
              PREEMPTION_TIMER                                39     2.9          4
              EXTERNAL_INTERRUPT                              28     2.1          3
              MSR_READ                                         1     0.1          0
            Total                                           1333                144

                  VM  Name                    vCPUs             Events       Exits  Userspace exits
               86475  qemu-system-x86         -                   1333        1333                0

            VM 86475 (qemu-system-x86), all vCPUs
            Reason                    Samples  Samples%    Time%       Min         Max              Avg ± stddev       p50        p99       p99.9
            MSR_WRITE                     820    61.52%        -         -           -                         -         -          -           -
            HLT *                         337    25.28%        -         -           -                         -         -          -           -
            EPT_MISCONFIG                 108     8.10%        -         -           -                         -         -          -           -
            PREEMPTION_TIMER               39     2.93%        -         -           -                         -         -          -           -
            EXTERNAL_INTERRUPT             28     2.10%        -         -           -                         -         -          -           -
            MSR_READ                        1     0.08%        -         -           -                         -         -          -           -
            Total                        1333   100.00%        -
            handling time 0ns over 0 paired exits; * blocking (guest halted): 0ns over 0 paired exits, not in Time%

            pairing: not applicable, kvm_entry not traced (1333 exits, none paired)
            lost events: 0

            """)
        let j = try CLI.json(try CLI.run(["report", "--json", Self.exitOnly]).stdout)
        #expect((j["source"] as? [String: Any])?["kvm_entry_traced"] as? Bool == false)
        // Nothing can be paired: no count (every exit an "orphan", i.e. a trace gap, before), a flag; the counts
        // stay numbers.
        let pairing = try #require(j["pairing"] as? [String: Any])
        #expect(pairing.filter { $0.key != "applicable" }.mapValues { $0 as? Int } == [
            "paired": 0, "orphan_exits": 0, "orphan_entries": 0, "open_at_end": 0, "invalidated_by_loss": 0, "negative_gaps": 0])
        #expect(pairing["applicable"] as? Bool == false)
        #expect(try CLI.run(["report", "--json", Self.exitOnly]).stdout.contains(#""negative_gaps": 0,\#n    "applicable": false\#n"#))
        let hostPairing = try #require(CLI.json(try CLI.run(["report", "--json", Self.host]).stdout)["pairing"] as? [String: Any])
        #expect(hostPairing["applicable"] == nil && hostPairing["orphan_exits"] as? Int == 8)
        let host = try CLI.run(["report", Self.host])
        #expect(host.status == 0 && !host.stdout.contains("kvm_entry not traced"))
        let hj = try CLI.json(try CLI.run(["report", "--json", Self.host]).stdout)
        #expect((hj["source"] as? [String: Any])?["kvm_entry_traced"] as? Bool == true)
    }

    static let traceCmdDat = "/work/shared/corpus/real/hip24_host_trace_v7_zlib.dat"

    /// A trace-cmd trace.dat has no thread → process table: each thread is its own VM, named by its saved comm
    /// unless it is a "CPU N/KVM" thread — as the text reader names the threads of `trace-cmd report` text
    /// (`150750 qemu-system-x86` in the host report). Before, every vm_name was null. The file is complete:
    /// no dropped pages, not truncated, no recorder notes.
    @Test func traceCmdDatNamesThreadsByTheirSavedComm() throws {
        let r = try CLI.run(["report", "--json", Self.traceCmdDat])
        #expect(r.status == 0, "\(r.stderr)")
        let j = try CLI.json(r.stdout)
        let exits = try #require(j["exits"] as? [[String: Any]])
        var byVM: [Int: (name: String?, count: Int)] = [:]
        for e in exits {
            let vm = try #require(e["vm"] as? Int)
            byVM[vm, default: (e["vm_name"] as? String, 0)].count += e["count"] as? Int ?? 0
        }
        #expect(byVM.mapValues { $0.name ?? "-" } == [483882: "qemu-system-x86", 453724: "-", 453725: "-"])
        #expect(byVM.mapValues(\.count) == [483882: 5356, 453724: 265, 453725: 239])
        let source = try #require(j["source"] as? [String: Any])
        #expect(source["dropped_pages"] as? Int == 0 && source["truncated"] as? Bool == false)
        #expect(source["recorder_notes"] as? [String] == [])
        let text = try CLI.run(["report", Self.traceCmdDat])
        #expect(text.stdout.split(separator: "\n").contains { $0.hasPrefix("  483882  qemu-system-x86 ") }, "\(text.stdout)")
        #expect(text.stdout.contains("VM 483882 (qemu-system-x86), all vCPUs\n"), "\(text.stdout)")
    }

    /// kvm_userspace_exit's KVM_EXIT_* reasons are listed under it, as `stat`'s table does (and --json/--csv).
    @Test func eventTableHasUserspaceExitReasons() throws {
        let r = try CLI.run(["report", Self.fixtures + "storm-io.kernel-tgid.txt"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(Array(r.stdout.split(separator: "\n", omittingEmptySubsequences: false).dropFirst(2).prefix(6)) == [
            "Event                                          Total  %Total   CurAvg/s",
            "kvm_pio                                           10    50.0      11962",
            "kvm_userspace_exit                                10    50.0      11962",
            "  KVM_EXIT_IO                                     10   100.0      11962",
            "Total                                             20              23923",
            "",
        ])
    }

    /// Several files, one bad: like wc or grep, the good ones are reported in every mode, the bad one is one
    /// line on stderr, the status is 1. JSON stays an array for several files.
    @Test func aBadFileAmongGoodOnes() throws {
        let missing = "/nonexistent/kvmscope-\(getpid()).dat"
        let j = try CLI.run(["report", "--json", Self.host, missing])
        #expect(j.status == 1)
        #expect(j.stderr == "kvmscope: \(missing): No such file or directory\n")
        let array = try #require(try JSONSerialization.jsonObject(with: Data(j.stdout.utf8)) as? [[String: Any]])
        #expect(array.count == 1)
        #expect((array.first?["events"] as? [String: Any])?["kvm_exit"] as? Int == 810)
        let t = try CLI.run(["report", missing, Self.host])
        #expect(t.status == 1)
        #expect(t.stderr == "kvmscope: \(missing): No such file or directory\n")
        #expect(t.stdout.contains("kvm_exit") && t.stdout.contains("MSR_WRITE"))
        let c = try CLI.run(["report", "--csv", Self.host, missing])
        #expect(c.status == 1)
        #expect(c.stdout.split(separator: "\n").count == 8)  // the header, the host report's six reasons and KVM_EXIT_MMIO
    }

    @Test func errorsAreOneLine() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kvmscope-report-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let empty = dir.appendingPathComponent("empty.txt").path
        let binary = dir.appendingPathComponent("bin.dat").path
        let text = dir.appendingPathComponent("notes.txt").path
        #expect(FileManager.default.createFile(atPath: empty, contents: Data()))
        #expect(FileManager.default.createFile(atPath: binary, contents: Data([0x7f, 0x45, 0x4c, 0x46, 0, 1])))
        #expect(FileManager.default.createFile(atPath: text, contents: Data("hello\n".utf8)))
        let cases: [(String, String)] = [
            ("/nonexistent/x.txt", "kvmscope: /nonexistent/x.txt: No such file or directory\n"),
            (empty, "kvmscope: \(empty): empty file\n"),
            (binary, "kvmscope: \(binary): unknown format (binary, not trace.dat; expected trace.dat, kernel trace text, trace-cmd report or perf script output)\n"),
            (text, "kvmscope: \(text): unknown format (no trace records; looked for trace.dat, kernel trace text "
                + "(COMM-TID [CPU] SECONDS: EVENT: FIELDS), trace-cmd report (also -R, -l) or perf script "
                + "(COMM TID [CPU] SECONDS: EVENT: FIELDS, any -F)); line 1 is not one: \"hello\"\n"),
            (dir.path, "kvmscope: \(dir.path): not a regular file\n"),
        ]
        for (file, message) in cases {
            let r = try CLI.run(["report", file])
            #expect(r.status == 1)
            #expect(r.stderr == message)
            #expect(r.stdout == "")
        }
    }

    static let pasted = CLI.packageRoot.appendingPathComponent("../shared/corpus/pasted").standardized.path + "/"
    static let fixtures = CLI.packageRoot.appendingPathComponent("Tests/Fixtures/text").path + "/"

    /// `perf script | kvmscope report -` and `report <(…)`: a pipe is read whole, then reported as the file
    /// would be; its errors name standard input, not the private copy.
    @Test func standardInputAndPipes() throws {
        let file = Self.fixtures + "storm-io.kernel.txt"
        let direct = try CLI.run(["report", "--csv", file])
        let piped = try Spawned.run("/bin/sh", ["-c", "cat \"$1\" | \"$0\" report --csv -", CLI.binary, file])
        #expect(piped.status == 0, "\(piped.stderr)")
        #expect(piped.stdout == direct.stdout.replacingOccurrences(of: file + ",", with: "-,"))
        let fifo = try Spawned.run("/bin/bash", ["-c", "\"$0\" report --csv <(cat \"$1\")", CLI.binary, file])
        #expect(fifo.status == 0, "\(fifo.stderr)")
        #expect(fifo.stdout.split(separator: "\n").count == 3)
        let garbage = try Spawned.run("/bin/sh", ["-c", "echo garbage | \"$0\" report -", CLI.binary])
        #expect(garbage.status == 1)
        #expect(garbage.stderr.hasPrefix("kvmscope: standard input: unknown format"), "\(garbage.stderr)")
        #expect(garbage.stderr.filter { $0 == "\n" }.count == 1)
    }

    /// Times that are no times: one line, status 64 (a Swift trap before for inf and 1e300; NaN was ignored).
    @Test func fromAndToMustBeTimes() throws {
        let file = Self.fixtures + "storm-io.kernel.txt"
        for bad in ["inf", "1e300", "nan", "-1"] {
            let r = try CLI.run(["report", "--from", bad, file])
            #expect(r.status == 64, "\(bad)")
            #expect(r.stderr == "kvmscope: --from must be a number of seconds ≥ 0 (below 10^10)\n", "\(bad)")
            let t = try CLI.run(["report", "--to", bad, file])
            #expect(t.status == 64, "\(bad)")
            #expect(t.stderr == "kvmscope: --to must be a number of seconds greater than --from (below 10^10)\n", "\(bad)")
        }
    }

    /// `--csv` has the userspace exits too (a storm's port I/O: no kvm_exit on this backend, only KVM_EXIT_IO).
    @Test func csvHasUserspaceExits() throws {
        let file = Self.fixtures + "storm-io.kernel.txt"
        let r = try CLI.run(["report", "--csv", file])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout == "file,vm,vm_name,vcpu,reason,isa,blocking,count,paired,min_ns,mean_ns,stddev_ns,p50_ns,p90_ns,p99_ns,p999_ns,max_ns,total_ns\n"
                + "\(file),9818,,0,KVM_EXIT_IO,userspace,0,5,0,,,,,,,,,\n"
                + "\(file),9819,,1,KVM_EXIT_IO,userspace,0,5,0,,,,,,,,,\n")
    }

    /// `--reason` and `--histogram` take the names in the file (libtraceevent's EXIT_…), the kernel's, codes.
    @Test func reasonsInAnySpelling() throws {
        let amd = Self.pasted + "amd-vmware-gp-loop.txt"
        for spelling in ["EXIT_EXCP_GP", "gp excp", "0x4d", "77"] {
            let r = try CLI.run(["report", "--json", "--reason", spelling, amd])
            #expect(r.status == 0, "\(spelling): \(r.stderr)")
            let exits = try #require(CLI.json(r.stdout)["exits"] as? [[String: Any]])
            #expect(exits.map { "\($0["reason"]!) \($0["isa"]!) \($0["code"]!) \($0["count"]!)" }.sorted()
                    == ["GP excp svm 77 2", "GP excp svm 77 2"], "\(spelling)")
        }
        let h = try CLI.run(["report", "--histogram", "EXIT_MSR", amd])
        #expect(h.status == 0)
        #expect(h.stdout.contains("msr exit→entry latency\n"))
        #expect(h.stdout.contains("  2 exits; min 3.00us, p50 3.00us, p99 7.00us, max 7.00us\n"))
        // The HTML page's selection too.
        let html = FileManager.default.temporaryDirectory.appendingPathComponent("kvmscope-amd-\(getpid()).html").path
        defer { try? FileManager.default.removeItem(atPath: html) }
        #expect(try CLI.run(["report", "--html", html, "--reason", "EXIT_MSR", amd]).status == 0)
        let page = try String(contentsOfFile: html, encoding: .utf8)
        let start = try #require(page.range(of: #"<script id="kvmscope-data" type="application/json">"#))
        let end = try #require(page.range(of: "</script>", range: start.upperBound..<page.endIndex))
        let data = try #require(JSONSerialization.jsonObject(with: Data(page[start.upperBound..<end.lowerBound].utf8))
                                as? [String: Any])
        let groups = try #require(data["groups"] as? [[String: Any]])
        #expect((groups[0]["series"] as? [String: [Int]])?.mapValues { $0.reduce(0, +) } == ["msr": 2])
        // A name that matches nothing: one line, the closest names of the trace; never an empty table.
        let bad = try CLI.run(["report", "--reason", "EXIT_MRS", amd])
        #expect(bad.status == 1 && bad.stdout.isEmpty)
        // A typo is offered the trace's ISA's names (SVM: the kernel's lower-case ones), those in it marked.
        #expect(bad.stderr == "kvmscope: \(amd): --reason EXIT_MRS: unknown exit reason 'EXIT_MRS'; closest SVM reasons: "
                + "invalid_guest_state, msr (in the trace), rsm, hlt, iret\n")
        let absent = try CLI.run(["report", "--histogram", "hlt", amd])
        #expect(absent.stderr == "kvmscope: \(amd): --histogram hlt: no 'hlt' exits in the trace (hlt: SVM 0x78); "
                + "closest in the trace: msr, GP excp\n")
    }

    /// perf script -g's callchains under each sample: the report's note counts them apart from joined lines
    /// (they were "split lines joined" before), and --json's source says both.
    @Test func perfCallchainLinesAreCountedApart() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("kvmscope-callchain-\(getpid()).txt").path
        defer { unlink(path) }
        let frame = "\tffffffffc0a1b2c3 vmx_handle_exit+0x123 ([kvm_intel])\n\tffffffffc09a8b7c vcpu_enter_guest+0x45c ([kvm])\n\n"
        let text = "qemu-system-x86 7/8 [002]  1.000001: kvm:kvm_exit: reason HLT rip 0x10 info 0 0\n" + frame
            + "qemu-system-x86 7/8 [002]  1.000101: kvm:kvm_entry: vcpu 0, rip 0x11\n" + frame
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        let r = try CLI.run(["report", path])
        #expect(r.status == 0 && r.stderr.isEmpty, "stderr: \(r.stderr)")
        #expect(r.stdout.split(separator: "\n").prefix(2) == [
            "\(path): perf script, 2 kvm events over 100.00us (1.000001000 → 1.000101000)",
            "note: 4 callchain lines skipped",
        ])
        let j = try CLI.run(["report", "--json", path])
        let source = try #require(CLI.json(j.stdout)["source"] as? [String: Any])
        #expect(source["callchain_lines"] as? Int == 4)
        #expect(source["joined_lines"] as? Int == 0)
        #expect(source["records"] as? Int == 2)
    }

    /// A --reason that keeps nothing says why in the trace's terms: a KVM_EXIT_* reason by the userspace exits
    /// there are; a storm rule's `rate(…)` by the reason alone; a typo by the names of the trace's ISA (VMX
    /// here; arm64 names were offered before); another ISA's reason by its ISA; a code by its name.
    @Test func unmatchedReasonsAreSaidInTheTracesTerms() throws {
        func error(_ reason: String, _ file: String = Self.host) throws -> String {
            let r = try CLI.run(["report", "--reason", reason, file])
            #expect(r.status == 1 && r.stdout.isEmpty)
            return r.stderr
        }
        let noUser = "/work/shared/corpus/real/hip24_sigmatek_default_kvm_exit.txt"
        #expect(try error("KVM_EXIT_MMIO", noUser) == "kvmscope: \(noUser): --reason KVM_EXIT_MMIO: no KVM_EXIT_MMIO exits to "
                + "user space in the trace (it has no kvm_userspace_exit events)\n")
        #expect(try error("IO", noUser) == "kvmscope: \(noUser): --reason IO: no KVM_EXIT_IO exits to user space in the trace "
                + "(it has no kvm_userspace_exit events)\n")
        let h = Self.host
        #expect(try error("KVM_EXIT_IO") == "kvmscope: \(h): --reason KVM_EXIT_IO: no KVM_EXIT_IO exits to user space in the "
                + "trace (its kvm_userspace_exit reasons: KVM_EXIT_MMIO 7)\n")
        #expect(try error("rate(0x31)") == "kvmscope: \(h): --reason rate(0x31): 'rate(0x31)' is not a reason: --reason takes "
                + "one alone, as '0x31' (EPT_MISCONFIG in this trace)\n")
        #expect(try error("MSR_WRTE") == "kvmscope: \(h): --reason MSR_WRTE: unknown exit reason 'MSR_WRTE'; closest VMX "
                + "reasons: MSR_WRITE (in the trace), MSR_READ, APIC_WRITE, MSR_WRITE_IMM, VMWRITE\n")
        #expect(try error("SVC64") == "kvmscope: \(h): --reason SVC64: 'SVC64' names arm64 exit reasons only; the trace's "
                + "are VMX; closest in the trace: HLT, PREEMPTION_TIMER, EOI_INDUCED, EPT_MISCONFIG, EXTERNAL_INTERRUPT\n")
        #expect(try error("0x99") == "kvmscope: \(h): --reason 0x99: no exit reason with code 0x99 in the trace (no VMX "
                + "reason has code 0x99); closest in the trace: EOI_INDUCED, EPT_MISCONFIG, EXTERNAL_INTERRUPT, HLT, MSR_WRITE\n")
    }

    /// Out-of-range numbers: the lines are skipped, one warning names the first; the rest is reported.
    @Test func malformedLinesWarnOnce() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kvmscope-malformed-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("t.txt").path
        let lines = try String(contentsOfFile: Self.pasted + "malformed-huge-numbers.txt", encoding: .utf8)
        let good = " kvm-5664  [000] 1.000000: kvm_exit: reason HLT rip 0x1\n kvm-5664  [000] 1.000009: kvm_entry: vcpu 0\n"
        #expect(FileManager.default.createFile(atPath: file, contents: Data((good + lines).utf8)))
        let r = try CLI.run(["report", "--json", file])
        #expect(r.status == 0)
        #expect(r.stderr == "kvmscope: warning: \(file): 6 lines with out-of-range numbers skipped "
                + "(3 kvm_entry, 3 kvm_exit); first: line 3, timestamp out of range\n")
        let j = try CLI.json(r.stdout)
        #expect((j["events"] as? [String: Int]) == ["kvm_exit": 1, "kvm_entry": 1])
        #expect((j["source"] as? [String: Any])?["malformed_lines"] as? Int == 6)
        let all = try CLI.run(["report", Self.pasted + "malformed-huge-numbers.txt"])
        #expect(all.status == 1 && all.stderr == "kvmscope: \(Self.pasted)malformed-huge-numbers.txt: no kvm events among "
                + "its 0 trace records; 6 lines with out-of-range numbers skipped (3 kvm_entry, 3 kvm_exit); first: line 1, "
                + "timestamp out of range\n")
    }

    /// Integer counter timestamps are reported in cycles, and say so; --ts2secs turns them into time.
    @Test func counterTimestamps() throws {
        let file = Self.fixtures + "storm-io.kernel-counter.txt"
        let cycles = try CLI.run(["report", file])
        #expect(cycles.status == 0)
        let head = cycles.stdout.split(separator: "\n").prefix(2).map(String.init)
        #expect(head[0].hasPrefix("\(file): kernel trace text, 20 kvm events over ") && head[0].hasSuffix(" cycles)"))
        #expect(head[1].hasPrefix("note: timestamps are counter values: times are in cycles (give --ts2secs HZ for nanoseconds)"))
        let ns = try CLI.run(["report", "--json", "--ts2secs", "1000000000", file])
        let source = try #require(CLI.json(ns.stdout)["source"] as? [String: Any])
        #expect(source["time_unit"] as? String == "ns")
        let ticks = try #require(CLI.json(try CLI.run(["report", "--json", file]).stdout)["source"] as? [String: Any])
        #expect(ticks["time_unit"] as? String == "cycles")
        #expect(source["first_ns"] as? Int == ticks["first_ns"] as? Int)  // 1 GHz: one tick is one ns
        // --from/--to are seconds: without the counter's frequency they would be read as ticks, so they are refused.
        let window = try CLI.run(["report", "--from", "0.5", file])
        #expect(window.status == 1 && window.stdout == "")
        #expect(window.stderr == "kvmscope: \(file): --from/--to are seconds, and its timestamps are counter values: give --ts2secs HZ\n")
        #expect(try CLI.run(["report", "--from", "0", "--ts2secs", "1000000000", file]).status == 0)
    }

    /// A --from/--to window that holds an exit but no entry of a trace that has entries: the exit is open at the
    /// end, not "kvm_entry not traced" (whether entries are traced is the file's, not the window's).
    @Test func aWindowWithoutEntriesStillPairs() throws {
        let r = try CLI.run(["report", "--from", "0", "--to", "0.000001", Self.host])
        #expect(r.status == 0, "\(r.stderr)")
        let lines = r.stdout.split(separator: "\n").map(String.init)
        #expect(lines.first == "\(Self.host): trace-cmd report, 1 kvm events in the window of 1.00us (16062.943940000 → 16062.943941000)")
        #expect(!lines.contains { $0.contains("not traced") }, "\(r.stdout)")
        #expect(lines.contains("pairing: paired 0, orphan exits 0, orphan entries 0, open at end 1, invalidated by loss 0, negative gaps 0"))
        let j = try CLI.json(try CLI.run(["report", "--json", "--from", "0", "--to", "0.000001", Self.host]).stdout)
        let pairing = try #require(j["pairing"] as? [String: Any])
        #expect(pairing["applicable"] == nil && pairing["open_at_end"] as? Int == 1)
        #expect((j["source"] as? [String: Any])?["kvm_entry_traced"] as? Bool == true)
        // A 1 µs trace lasts 1 µs in JSON too (rounded to the ms it was 0, and rates divided by it).
        let short = try CLI.json(try CLI.run(["report", "--json", Self.pasted + "tracecmd-R-raw-min.txt"]).stdout)
        #expect(short["duration_s"] as? Double == 0.000001)
    }

    /// --top, -k and --histogram shape the text report only: with --json (and --histogram with --csv) they are
    /// said to do nothing, not silently dropped, and the output is the one without them. --csv sorts and cuts each
    /// VM × vCPU's rows by -k and --top, as the text tables.
    @Test func textOnlyOptionsAreSaidWithJSONAndCSV() throws {
        let plain = try CLI.run(["report", "--json", Self.host])
        let shaped = try CLI.run(["report", "--json", "--top", "2", "-k", "time", Self.host])
        #expect(shaped.status == 0 && shaped.stdout == plain.stdout)
        #expect(shaped.stderr == "kvmscope: warning: --top, -k/--key shape the text report; --json holds every row, in its own order\n")
        let csv = try CLI.run(["report", "--csv", "--histogram", "HLT", Self.host])
        let plainCSV = try CLI.run(["report", "--csv", Self.host])
        #expect(csv.status == 0 && csv.stdout == plainCSV.stdout)
        #expect(csv.stderr == "kvmscope: warning: --histogram shapes the text report; --csv holds every row, in its own order\n")
        #expect(plain.stderr == "")
        // The corpus host: one VM, one vCPU; its two exit reasons of most handling time, then the userspace rows.
        let rows = plainCSV.stdout.split(separator: "\n").dropFirst().map { $0.split(separator: ",", omittingEmptySubsequences: false).map(String.init) }
        let exits = rows.filter { $0[5] != "userspace" }
        #expect(Set(exits.map { "\($0[1])/\($0[3])" }).count == 1 && exits.count > 2)
        let byTime = exits.sorted { (Int($0[17]) ?? 0, $1[4]) > (Int($1[17]) ?? 0, $0[4]) }.prefix(2)
        let expected = [String(plainCSV.stdout.prefix { $0 != "\n" })] + (Array(byTime) + rows.filter { $0[5] == "userspace" }).map { $0.joined(separator: ",") }
        let cut = try CLI.run(["report", "--csv", "--top", "2", "-k", "time", Self.host])
        #expect(cut.status == 0 && cut.stderr == "", "\(cut.stderr)")
        #expect(cut.stdout.split(separator: "\n").map(String.init) == expected)
        #expect(byTime.map { $0[4] } == ["HLT", "MSR_WRITE"])
    }

    /// A UTF-8 byte order mark before the first line (a file saved by a Windows editor) changes nothing.
    @Test func aByteOrderMarkIsNotPartOfTheTrace() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("kvmscope-bom-\(getpid()).txt").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try Data([0xEF, 0xBB, 0xBF] + (try Data(contentsOf: URL(fileURLWithPath: Self.host)))).write(to: URL(fileURLWithPath: path))
        let bom = try CLI.run(["report", path])
        let plain = try CLI.run(["report", Self.host])
        #expect(bom.status == 0 && bom.stderr == "")
        #expect(bom.stdout.split(separator: "\n").dropFirst() == plain.stdout.split(separator: "\n").dropFirst())
    }

    /// The page holds the corpus counts exactly and renders: a headless Chromium screenshot of it.
    @Test func htmlRendersInChromium() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kvmscope-html-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let html = dir.appendingPathComponent("host.html").path
        let r = try CLI.run(["report", "--html", html, Self.host])
        #expect(r.status == 0)
        let page = try String(contentsOfFile: html, encoding: .utf8)
        let start = try #require(page.range(of: #"<script id="kvmscope-data" type="application/json">"#))
        let end = try #require(page.range(of: "</script>", range: start.upperBound..<page.endIndex))
        let data = try #require(JSONSerialization.jsonObject(with: Data(page[start.upperBound..<end.lowerBound].utf8))
                                as? [String: Any])
        let groups = try #require(data["groups"] as? [[String: Any]])
        #expect(groups.map { $0["label"] as? String } == ["All VMs", "VM 150750 (qemu-system-x86), all vCPUs",
                                                          "VM 150750 (qemu-system-x86), vCPU 0"])
        let series = try #require(groups[0]["series"] as? [String: [Int]])
        #expect(series.mapValues { $0.reduce(0, +) } == ["MSR_WRITE": 506, "HLT": 217, "EPT_MISCONFIG": 66,
                                                         "PREEMPTION_TIMER": 13, "EXTERNAL_INTERRUPT": 5, "EOI_INDUCED": 3])
        // Heatmap: every paired non-blocking exit once (802 paired − 211 HLT pairs).
        let heat = try #require(groups[0]["heat"] as? [Int])
        #expect(heat.reduce(0, +) == 591)

        guard let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].first(where: {
            FileManager.default.isExecutableFile(atPath: $0)
        }) else {
            Issue.record("chromium is not installed (Debian package chromium)")
            return
        }
        let png = dir.appendingPathComponent("host.png").path
        let shot = try Spawned.run(chromium, ["--headless", "--no-sandbox", "--disable-gpu",
                                           "--user-data-dir=" + dir.appendingPathComponent("profile").path,
                                           "--screenshot=" + png, "--window-size=1200,900", "file://" + html],
                                timeout: 120)
        #expect(shot.status == 0, "chromium: \(shot.stderr.suffix(1000))")
        let bytes = try Data(contentsOf: URL(fileURLWithPath: png))
        #expect(bytes.prefix(8) == Data([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))
        // A blank 1200×900 page compresses to a few KB; the charts make it tens of KB.
        #expect(bytes.count > 30_000)
    }

    /// perf kvm stat report's `-k/--key`: the rows sorted by samples (the default), total time, max, min or
    /// mean, largest first; any other key is one line and status 64.
    @Test func sortKeysArePerfKvmStats() throws {
        func order(_ args: [String]) throws -> [String] {
            let r = try CLI.run(["report", "-p", "150750"] + args + [Self.host])
            #expect(r.status == 0, "\(r.stderr)")
            let lines = r.stdout.split(separator: "\n").map(String.init)
            let start = try #require(lines.firstIndex { $0.hasPrefix("Reason ") })
            return lines[(start + 1)...].prefix { !$0.hasPrefix("Total") }.map { String($0.prefix(24)).trimmingCharacters(in: .whitespaces) }
        }
        let bySamples = ["MSR_WRITE", "HLT *", "EPT_MISCONFIG", "PREEMPTION_TIMER", "EXTERNAL_INTERRUPT", "EOI_INDUCED"]
        #expect(try order([]) == bySamples)
        #expect(try order(["-k", "sample"]) == bySamples)
        #expect(try order(["--key", "max"]) == ["MSR_WRITE", "HLT *", "EXTERNAL_INTERRUPT", "EPT_MISCONFIG", "PREEMPTION_TIMER", "EOI_INDUCED"])
        #expect(try order(["-k", "mean"]) == ["HLT *", "MSR_WRITE", "EXTERNAL_INTERRUPT", "EPT_MISCONFIG", "PREEMPTION_TIMER", "EOI_INDUCED"])
        #expect(try order(["-k", "min"]).prefix(2) == ["EXTERNAL_INTERRUPT", "HLT *"])
        let bad = try CLI.run(["report", "-k", "bogus", Self.host])
        #expect(bad.status == 64 && bad.stdout.isEmpty
                && bad.stderr == "kvmscope: The value 'bogus' is invalid for '-k <key>'. Please provide one of 'sample', 'time', "
                   + "'max', 'min' or 'mean'.\n")
    }

    /// `--vcpu N`'s table is titled with that vCPU (as perf's "VCPU 1"), not "all vCPUs".
    @Test func vcpuFilterTitlesItsTable() throws {
        let r = try CLI.run(["report", "--vcpu", "0", Self.host])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.split(separator: "\n").filter { $0.hasPrefix("VM ") } == ["VM 150750 (qemu-system-x86), vCPU 0"])
    }

    /// A pasted trace is someone else's text: a reason name that is markup stays text in the page (the legend
    /// builds its entries with text nodes), so opening the report runs nothing from the trace.
    @Test func htmlKeepsMarkupFromTheTraceAsText() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kvmscope-xss-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let reason = #"<img src=x onerror="document.title='PWNED'">"#
        let trace = dir.appendingPathComponent("pasted.txt").path
        try """
              CPU 0/KVM-1235  [001] d..1. 100.000021: kvm_exit: vcpu 0 reason \(reason) rip 0xffffffff81000000 info1 0x0 info2 0x0 intr_info 0x00000000 error_code 0x00000000
              CPU 0/KVM-1235  [001] d..1. 100.000031: kvm_entry: vcpu 0, rip 0xffffffff81000000

            """.write(toFile: trace, atomically: true, encoding: .utf8)
        let html = dir.appendingPathComponent("pasted.html").path
        let r = try CLI.run(["report", "--html", html, trace])
        #expect(r.status == 0, "\(r.stderr)")
        guard let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].first(where: {
            FileManager.default.isExecutableFile(atPath: $0)
        }) else {
            Issue.record("chromium is not installed (Debian package chromium)")
            return
        }
        let dom = try Spawned.run(chromium, ["--headless", "--no-sandbox", "--disable-gpu",
                                          "--user-data-dir=" + dir.appendingPathComponent("profile").path,
                                          "--virtual-time-budget=3000", "--dump-dom", "file://" + html],
                               timeout: 120)
        #expect(dom.status == 0, "chromium: \(dom.stderr.suffix(1000))")
        #expect(dom.stdout.contains("<title>kvmscope: "), "\(dom.stdout.prefix(300))")
        #expect(!dom.stdout.contains("PWNED</title>"))
        #expect(!dom.stdout.contains("<img"))
        // The legend shows the name as the trace spelled it, escaped.
        #expect(dom.stdout.contains("&lt;img src=x onerror=\"document.title='PWNED'\"&gt; (1)"))
    }

    /// The page's time axes (rate and heatmap) have one unit each, by the span: seconds for the 4.76 s of the
    /// host trace (they read 0.00ms, 952.0ms, 1.90s … before), µs for the 100 µs of a pasted one; one number of
    /// decimals by the step. Read from the DOM headless Chromium draws.
    @Test func htmlTimeAxisHasOneUnit() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kvmscope-axis-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        guard let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].first(where: {
            FileManager.default.isExecutableFile(atPath: $0)
        }) else {
            Issue.record("chromium is not installed (Debian package chromium)")
            return
        }
        func ticks(_ trace: String) throws -> [String] {
            let html = dir.appendingPathComponent("axis.html").path
            let r = try CLI.run(["report", "--html", html, trace])
            #expect(r.status == 0, "\(r.stderr)")
            let dom = try Spawned.run(chromium, ["--headless", "--no-sandbox", "--disable-gpu",
                                              "--user-data-dir=" + dir.appendingPathComponent("profile").path,
                                              "--virtual-time-budget=3000", "--dump-dom", "file://" + html],
                                   timeout: 120)
            #expect(dom.status == 0, "chromium: \(dom.stderr.suffix(1000))")
            return dom.stdout.matches(of: /<text [^>]*text-anchor="middle"[^>]*>([^<]*)<\/text>/).map { String($0.1) }
        }
        let seconds = ["0.00s", "0.95s", "1.90s", "2.86s", "3.81s", "4.76s"]
        #expect(try ticks(Self.host) == seconds + seconds)
        let micro = ["0µs", "20µs", "40µs", "60µs", "80µs", "100µs"]
        #expect(try ticks(Self.pasted + "tracecmd-l-latency-min.txt") == micro + micro)
    }
}
