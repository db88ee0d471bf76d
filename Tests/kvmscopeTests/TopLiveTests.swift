import Foundation
import Testing
import TestSupport

/// `kvmscope top` against real VMs: storm guests with named vCPU threads, their /proc numbers read by the test.
@Suite(.serialized, .enabled(if: KVMTest.canRun, "needs root, /dev/kvm and tracefs"))
struct TopLiveTests {
    /// A storm guest whose vCPU threads run until `seconds` pass; returns once both vCPU threads exist.
    func guest(name: String, vcpus: Int = 2, seconds: Double = 60) throws -> Spawned {
        let g = try Spawned(CLI.binary, ["storm", "--name", name, "--kind", "io", "--vcpus", "\(vcpus)", "--exits", "1000000000",
                                         "--seconds", "\(seconds)"], stdinNull: true, quiet: true)
        let end = Date().addingTimeInterval(30)
        func started() -> Int { Set(Self.threads(g.pid).compactMap { $0.comm.hasPrefix("CPU ") ? $0.comm : nil }).count }
        while Date() < end && started() < vcpus { usleep(20_000) }
        #expect(started() == vcpus, "the storm's vCPU threads did not start")
        return g
    }

    /// Each thread of `pid`: name, state, utime + stime in ticks (/proc/PID/task/TID/stat fields 14, 15).
    static func threads(_ pid: Int32) -> [(tid: Int32, comm: String, state: String, ticks: UInt64)] {
        let tids = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []).compactMap(Int32.init)
        return tids.sorted().compactMap { tid in
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/task/\(tid)/stat", encoding: .utf8),
                  let comm = try? String(contentsOfFile: "/proc/\(pid)/task/\(tid)/comm", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { return nil }
            let f = stat[stat.index(close, offsetBy: 2)...].split(separator: " ")
            guard f.count > 13, let u = UInt64(f[11]), let s = UInt64(f[12]) else { return nil }
            return (tid, comm.trimmingCharacters(in: .newlines), String(f[0]), u + s)
        }
    }

    /// `top --json`'s lines, parsed.
    func top(_ args: [String]) throws -> [[String: Any]] {
        let r = try CLI.run(["top", "--json"] + args, timeout: 60)
        #expect(r.status == 0, "stderr: \(r.stderr)")
        #expect(r.stderr == "")
        return try r.stdout.split(separator: "\n").map { line in
            try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        }
    }

    func vm(_ iteration: [String: Any], pid: Int32) -> [String: Any]? {
        (iteration["vms"] as? [[String: Any]])?.first { $0["pid"] as? Int == Int(pid) }
    }

    @Test func findsEachRunningVMByPidNameAndVCPUs() throws {
        let a = try guest(name: "top-a,,x-\(getpid())", vcpus: 2)
        defer { a.stop() }
        let b = try guest(name: "top-b-\(getpid())", vcpus: 1)
        defer { b.stop() }
        let lines = try top(["-n", "2", "-d", "0.5"])
        #expect(lines.map { $0["iteration"] as? Int } == [1, 2])
        for line in lines {
            let va = try #require(vm(line, pid: a.pid))
            let vb = try #require(vm(line, pid: b.pid))
            #expect(va["name"] as? String == "top-a,x-\(getpid())")
            #expect(vb["name"] as? String == "top-b-\(getpid())")
            #expect(va["vcpus"] as? Int == 2)
            #expect(vb["vcpus"] as? Int == 1)
            #expect(va["gone"] as? Bool == false)
            let ta = try #require(va["threads"] as? [[String: Any]])
            #expect(ta.compactMap { $0["vcpu"] as? Int } == [0, 1])
            #expect(ta.prefix(2).map { $0["comm"] as? String } == ["CPU 0/KVM", "CPU 1/KVM"])
            // The storm's io exits, counted by kvm_userspace_exit for this VM alone; per vCPU they add up.
            let interval = try #require(va["interval"] as? [String: Any])
            let exits = try #require(interval["exits"] as? Int)
            #expect(ta.compactMap { $0["exits"] as? Int }.reduce(0, +) == exits, "per-vCPU exits add up to the VM's")
            #expect(va["top_exit_reason"] as? String == (exits > 0 ? "KVM_EXIT_IO" : nil))
        }
        // On a loaded host a vCPU may not run for one interval, never for both.
        let exits = lines.compactMap { (vm($0, pid: a.pid)?["interval"] as? [String: Any])?["exits"] as? Int }
        #expect(exits.count == 2 && exits.reduce(0, +) > 0, "\(exits)")
        #expect(lines.last.flatMap { vm($0, pid: a.pid)?["exits_total"] as? Int } == exits.reduce(0, +))
        // kvmscope itself (no VM of its own) is never listed; the storms are.
        let pids = Set((lines[1]["vms"] as? [[String: Any]] ?? []).compactMap { $0["pid"] as? Int })
        #expect(pids.isSuperset(of: [Int(a.pid), Int(b.pid)]))
    }

    /// A stopped VM holds still: top's CPU seconds are the threads' own /proc times.
    @Test func cpuSecondsAreTheThreadsProcTimes() throws {
        let g = try guest(name: "top-cpu-\(getpid())", vcpus: 2)
        defer {
            kill(g.pid, SIGCONT)
            g.stop()
        }
        // Enough CPU time that the ticks each thread's time is truncated to (one per thread at most: the
        // process's total is truncated once) stay well inside 2 %.
        let ran = Date().addingTimeInterval(30)
        while Date() < ran && Self.threads(g.pid).reduce(0, { $0 + $1.ticks }) < 300 { usleep(50_000) }
        kill(g.pid, SIGSTOP)
        let end = Date().addingTimeInterval(10)
        while Date() < end && !Self.threads(g.pid).allSatisfy({ $0.state == "T" }) { usleep(10_000) }
        let threads = Self.threads(g.pid)
        #expect(threads.allSatisfy { $0.state == "T" })
        let sum = threads.reduce(0) { $0 + $1.ticks }
        #expect(sum >= 300, "the storm ran for too little CPU time to compare (\(sum) ticks)")

        let lines = try top(["-n", "2", "-d", "0.3"])
        for line in lines {
            let v = try #require(vm(line, pid: g.pid))
            #expect(v["state"] as? String == "P", "a stopped VM is virt-top's paused")
            let cpu = try #require(v["cpu_seconds"] as? Double)
            #expect(abs(cpu - Double(sum) / 100) <= Double(sum) / 100 * 0.02, "top \(cpu) s, threads \(Double(sum) / 100) s")
            let rows = try #require(v["threads"] as? [[String: Any]])
            // vCPU threads first, by number; then the others by tid.
            let order = [threads.first { $0.comm == "CPU 0/KVM" }!.tid, threads.first { $0.comm == "CPU 1/KVM" }!.tid]
                + threads.filter { !$0.comm.hasPrefix("CPU ") }.map(\.tid).sorted()
            #expect(rows.map { $0["tid"] as? Int } == order.map { Int($0) })
            for row in rows {
                let tid = try #require(row["tid"] as? Int)
                let mine = try #require(threads.first { Int($0.tid) == tid })
                #expect(row["cpu_seconds"] as? Double == Double(mine.ticks) / 100, "thread \(tid)")
                #expect(row["state"] as? String == "T")
                #expect(row["cpu_percent"] as? Double == 0)
            }
            let vcpuCPU = try #require(v["vcpu_cpu_seconds"] as? Double)
            let mineVCPU = threads.filter { $0.comm.hasPrefix("CPU ") }.reduce(0) { $0 + $1.ticks }
            #expect(vcpuCPU == Double(mineVCPU) / 100)
            #expect(v["cpu_percent"] as? Double == 0)
            #expect(v["exits_per_second"] as? Double == 0)
            #expect(v["exits_total"] as? Int == 0)
        }
    }

    /// A VM that ends while top runs is one marked row, then gone from the list: never a zero row or a crash.
    @Test func aVMEndingIsAMarkedRowThenLeaves() throws {
        let g = try guest(name: "top-end-\(getpid())", vcpus: 1)
        defer { g.stop() }
        let top = try Spawned(CLI.binary, ["top", "--json", "-n", "8", "-d", "0.4", "--no-exits"], stdinNull: true)
        defer { top.stop() }
        // The guest ends once top has shown it alive.
        #expect(top.waitForStdout(timeout: 60) { $0.contains("\"pid\":\(g.pid),") }, "top: \(top.stderr)")
        g.stop()
        #expect(top.wait(timeout: 60) == 0)
        let lines = try top.stdout.split(separator: "\n").map { line in
            try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        }
        #expect(lines.count == 8)
        let rows = lines.map { vm($0, pid: g.pid) }
        let seen = rows.map { r -> String in
            guard let r else { return "absent" }
            return r["gone"] as? Bool == true ? "gone" : "live"
        }
        // live…live, gone once, absent…
        let firstGone = try #require(seen.firstIndex(of: "gone"), "\(seen)")
        #expect(firstGone > 0, "\(seen)")
        #expect(seen[..<firstGone].allSatisfy { $0 == "live" }, "\(seen)")
        #expect(seen[(firstGone + 1)...].allSatisfy { $0 == "absent" }, "\(seen)")
        let goneRow = try #require(rows[firstGone])
        #expect(goneRow["interval"] is NSNull)
        #expect(goneRow["cpu_percent"] is NSNull)
        #expect((goneRow["cpu_seconds"] as? Double ?? 0) > 0, "a gone row keeps the last numbers read")
        #expect(lines.allSatisfy { $0["exits_traced"] as? Bool == false })
        #expect(lines.allSatisfy { $0["lost_events"] is NSNull })
    }

    /// htop's `-p PID[,PID…]`: only those VMs are sampled, and only their threads traced (set_event_pid).
    @Test func pidOptionShowsOnlyThoseVMs() throws {
        let a = try guest(name: "top-p-a-\(getpid())", vcpus: 1)
        defer { a.stop() }
        let b = try guest(name: "top-p-b-\(getpid())", vcpus: 1)
        defer { b.stop() }
        let lines = try top(["-n", "2", "-d", "0.5", "-p", "\(a.pid)"])
        #expect(lines.count == 2)
        for line in lines {
            #expect((line["vms"] as? [[String: Any]])?.map { $0["pid"] as? Int } == [Int(a.pid)])
        }
        #expect(lines.allSatisfy { $0["lost_events"] is Int }, "a traced top says what it lost")
        let second = try #require(vm(lines[1], pid: a.pid))
        #expect((second["exits_per_second"] as? Double ?? 0) > 0, "the storm's exits are traced")
        let both = try top(["-n", "1", "-d", "0.3", "--no-exits", "-p", "\(b.pid),\(a.pid)"])
        #expect(Set(((both.first?["vms"] as? [[String: Any]]) ?? []).compactMap { $0["pid"] as? Int }) == [Int(a.pid), Int(b.pid)])

        let zero = try CLI.run(["top", "-b", "-p", "0"])
        #expect(zero.status == 64)
        #expect(zero.stderr == "kvmscope: -p/--pid takes PID[,PID…] with each pid > 0 (got '0')\n")
        let gone = try CLI.run(["top", "-b", "-n", "1", "--no-exits", "-p", "\(a.pid),999999"])
        #expect(gone.status == 1)
        #expect(gone.stderr == "kvmscope: no process with pid 999999\n")
    }

    @Test func batchScreensAndCSV() throws {
        let g = try guest(name: "top-csv-\(getpid())", vcpus: 1)
        defer { g.stop() }
        let csv = FileManager.default.temporaryDirectory.appendingPathComponent("kvmscope-top-\(getpid()).csv").path
        defer { try? FileManager.default.removeItem(atPath: csv) }
        let r = try CLI.run(["top", "-b", "-n", "2", "-d", "0.3", "--no-exits", "-o", "id", "--csv", csv], timeout: 60)
        #expect(r.status == 0, "stderr: \(r.stderr)")
        let screens = r.stdout.components(separatedBy: "\n\n    ID S")
        #expect(r.stdout.components(separatedBy: "    ID S RDRQ WRRQ RXBY TXBY %CPU %MEM    TIME  EXITS/s TOP EXIT           P99 NAME\n").count == 3)
        #expect(screens.count == 3)
        let row = r.stdout.split(separator: "\n").filter { $0.hasSuffix(" top-csv-\(getpid())") }
        #expect(row.count == 2)
        #expect(row.allSatisfy { $0.hasPrefix(String(repeating: " ", count: max(0, 6 - "\(g.pid)".count)) + "\(g.pid) R") })
        let lines = try String(contentsOfFile: csv, encoding: .utf8).split(separator: "\n")
        #expect(lines.first.map(String.init) == "time,iteration,pid,name,state,gone,vcpus,cpu_seconds,cpu_percent,cpu_percent_one_cpu,"
                + "vcpu_wait_percent,mem_percent,rss_bytes,swap_bytes,rdrq,wrrq,read_bytes,write_bytes,rxby,txby,exits_per_second")
        let mine = lines.filter { $0.contains(",\(g.pid),top-csv-\(getpid()),") }
        #expect(mine.count == 2)
        #expect(mine.map { $0.split(separator: ",", omittingEmptySubsequences: false)[1] } == ["1", "2"])
        #expect(mine.allSatisfy { $0.split(separator: ",", omittingEmptySubsequences: false)[6] == "1" })
    }

    /// virt-top's -1, -2 and -3: batch screens of the host CPUs, the network and the block devices, each under
    /// the VM list's header lines; a VM's vCPU thread shows on the CPU it last ran on.
    @Test func otherScreensInBatchMode() throws {
        let g = try guest(name: "top-screens-\(getpid())", vcpus: 1)
        defer { g.stop() }
        for (flag, header) in [("-1", "   CPU  %USR  %SYS %GUEST %STEAL %IDLE VCPUS (last ran here)"),
                               ("-2", "    ID DEVICE          RXBY   TXBY  RXPK  TXPK RXDROP TXDROP RXERR TXERR NAME"),
                               ("-3", "    ID   RDBY   WRBY  RDSC  WRSC   RDCH   WRCH NAME")] {
            let r = try CLI.run(["top", "-b", flag, "-n", "2", "-d", "0.3", "--no-exits"], timeout: 60)
            #expect(r.status == 0, "\(flag): \(r.stderr)")
            let lines = r.stdout.split(separator: "\n", omittingEmptySubsequences: false)
            #expect(lines.filter { $0 == header }.count == 2, "\(flag): \(r.stdout)")
            #expect(lines.filter { $0.hasPrefix("kvmscope top - ") }.count == 2, "\(flag)")
            #expect(lines.count > 5 && lines[4] == "" && lines[5] == header, "\(flag): \(r.stdout)")
            #expect(!r.stdout.contains("    ID S RDRQ"), "\(flag): the VM list is not printed")
            if flag == "-1" { #expect(r.stdout.contains(" top-screens-\(getpid())/0"), "\(r.stdout)") }
            if flag == "-3" { #expect(lines.contains { $0.hasPrefix(String(repeating: " ", count: max(0, 6 - "\(g.pid)".count)) + "\(g.pid) ") && $0.hasSuffix(" top-screens-\(getpid())") }) }
        }
        let two = try CLI.run(["top", "-b", "-1", "-3"])
        #expect(two.status != 0)
        #expect(two.stderr == "kvmscope: -1, -2 and -3 each choose the screen shown: give one\n")
        let json = try CLI.run(["top", "--json", "-2"])
        #expect(json.status != 0)
        #expect(json.stderr == "kvmscope: -1, -2 and -3 choose a screen; --json and --csv - print every VM's numbers instead of screens\n")
    }

    @Test func badOptionsAreOneLine() throws {
        let r = try CLI.run(["top", "-b", "-o", "bogus"])
        #expect(r.status != 0)
        #expect(r.stderr == "kvmscope: -o/--sort must be one of cpu, mem, time, id, name, exits (got 'bogus')\n")
        let d = try CLI.run(["top", "-b", "-d", "0"])
        #expect(d.stderr == "kvmscope: -d/--delay must be between 0.1 and 3600 seconds\n")
        let c = try CLI.run(["top", "-b", "-n", "1", "-d", "0.1", "--no-exits", "--csv", "/nonexistent/x.csv"])
        #expect(c.status == 1)
        #expect(c.stderr == "kvmscope: cannot write /nonexistent/x.csv: No such file or directory\n")
        // A stdout that cannot take the screen (a full disk) is an error, not a silent exit 0.
        let full = try Spawned.run("/bin/sh", ["-c", "exec \"$0\" top -b -n 1 -d 0.1 --no-exits > /dev/full", CLI.binary])
        #expect(full.status == 1)
        #expect(full.stderr == "kvmscope: cannot write standard output: No space left on device\n")
    }

    /// `--csv -`: the CSV rows are stdout (no screens between them).
    @Test func csvToStdout() throws {
        let g = try guest(name: "top-csv-out-\(getpid())", vcpus: 1)
        defer { g.stop() }
        let r = try CLI.run(["top", "-b", "-n", "2", "-d", "0.3", "--no-exits", "--csv", "-"], timeout: 60)
        #expect(r.status == 0, "stderr: \(r.stderr)")
        let lines = r.stdout.split(separator: "\n")
        #expect(lines.first?.hasPrefix("time,iteration,pid,name,") == true)
        #expect(lines.filter { $0.contains(",\(g.pid),top-csv-out-\(getpid()),") }.count == 2)
        #expect(!r.stdout.contains("    ID S"))
    }
}

/// `kvmscope top`'s full screen in a real terminal (tmux): virt-top's sort keys, a VM's threads, q.
@Suite(.serialized, .enabled(if: KVMTest.canRun, "needs root, /dev/kvm, tracefs and tmux"))
struct TopScreenTests {
    @Test func sortKeysThreadsAndQuit() throws {
        let guestName = "top-tui-\(getpid())"
        let g = try TopLiveTests().guest(name: guestName, vcpus: 2)
        defer { g.stop() }
        let name = "kvmscope-top-\(getpid())"
        try LiveTUITests.tmux(["new-session", "-d", "-s", name, "-x", "130", "-y", "40",
                               "env PS1='kvmscope-test$ ' TERM=xterm-256color bash --norc --noprofile"])
        defer { _ = try? LiveTUITests.tmux(["kill-session", "-t", name], check: false) }
        let pane = LiveTUITests.Pane(name: name)
        try pane.wait("the shell prompt") { $0.contains { $0.hasPrefix("kvmscope-test$") } }
        try pane.type("clear; \(CLI.binary) top -d 0.5; echo top-ended-$?")
        try pane.keys("Enter")
        let header = "    ID S RDRQ WRRQ RXBY TXBY %CPU %MEM    TIME  EXITS/s TOP EXIT           P99 NAME"
        try pane.wait("the guest's row") { s in
            s.first?.hasPrefix("kvmscope top - ") == true && s.contains(header) && s.contains { $0.hasSuffix(" \(guestName)") }
                && s[2].hasSuffix("sorted by cpu")
        }
        // h: the keys, as virt-top's help lists them; any key back.
        try pane.keys("h")
        try pane.wait("the help") { $0.contains("kvmscope top keys (virt-top's, plus htop's thread view)") }
        try pane.keys("Escape")
        try pane.wait("the VM list after help") { $0.contains(header) }
        // d: virt-top's delay prompt; a bad answer is refused in one line, a good one takes effect.
        try pane.keys("d")
        try pane.wait("the delay prompt") { $0.contains { $0.hasPrefix("Change delay from 0.5 to:") } }
        try pane.type("99999")
        try pane.keys("Enter")
        try pane.wait("the refusal") { $0.contains("\"99999\": the delay must be between 0.1 and 3600 seconds") }
        try pane.keys("s")
        try pane.type("1.5")
        try pane.keys("Enter")
        try pane.wait("samples 1.5 s apart") { s in s.contains { $0.hasPrefix("Host: ") && $0.contains("interval 1.5") } }
        // N: by ID, rows in pid order.
        try pane.keys("N")
        let byID = try pane.wait("sorted by id") { $0.count > 2 && $0[2].hasSuffix("sorted by id") }
        let rows = byID.drop { $0 != header }.dropFirst().prefix { !$0.isEmpty }
        let pids = rows.compactMap { Int32($0.split(separator: " ").first ?? "") }
        #expect(pids == pids.sorted())
        let index = try #require(pids.firstIndex(of: g.pid))
        try pane.keys("M")
        try pane.wait("sorted by mem") { $0.count > 2 && $0[2].hasSuffix("sorted by mem") }
        try pane.keys("N")
        try pane.wait("sorted by id") { $0.count > 2 && $0[2].hasSuffix("sorted by id") }
        // ↓ to the guest (htop's cursor starts on the first row), Enter: its threads, vCPUs first.
        for _ in 0..<index { try pane.keys("Down") }
        try pane.keys("Enter")
        let threads = try pane.wait("the guest's threads") { s in
            s.contains("VM \(g.pid) \(guestName): 2 vCPU threads (CPU% and WAIT% of one CPU, like htop; P99 exit handling)")
        }
        let table = threads.drop { !$0.hasPrefix("   TID VCPU S CPU") }.dropFirst().prefix { !$0.isEmpty }
        #expect(table.prefix(2).map { $0.hasSuffix(" CPU 0/KVM") || $0.hasSuffix(" CPU 1/KVM") } == [true, true])
        #expect(table.prefix(2).map { $0.split(separator: " ")[1] } == ["0", "1"])
        // 0 (virt-top's "the VMs") leaves the thread view too, as Esc does.
        try pane.keys("0")
        try pane.wait("the VM list again") { $0.contains(header) }
        // 1, 2, 3: virt-top's host CPU, network and block screens; 0 back to the VMs.
        try pane.keys("1")
        try pane.wait("the host CPUs") { s in
            s.contains("   CPU  %USR  %SYS %GUEST %STEAL %IDLE VCPUS (last ran here)") && s.contains { $0.hasPrefix("     1 ") }
        }
        try pane.keys("2")
        try pane.wait("the network screen") { $0.contains { $0.hasPrefix("    ID DEVICE          RXBY") } }
        try pane.keys("3")
        try pane.wait("the block screen") { s in
            s.contains("    ID   RDBY   WRBY  RDSC  WRSC   RDCH   WRCH NAME") && s.contains { $0.hasSuffix(" \(guestName)") }
        }
        try pane.keys("0")
        try pane.wait("the VM list again") { $0.contains(header) }
        try pane.keys("q")
        try pane.wait("top's end") { $0.contains("top-ended-0") }
    }
}

/// `serve`'s resource families for a real VM, read against the threads' own /proc numbers.
@Suite(.serialized, .enabled(if: KVMTest.canRun, "needs root, /dev/kvm and tracefs"))
struct ResourceMetricsLiveTests {
    @Test func vcpuSecondsAreTheThreadsProcTimes() throws {
        let name = "top-metrics-\(getpid())"
        let g = try TopLiveTests().guest(name: name, vcpus: 2)
        defer {
            kill(g.pid, SIGCONT)
            g.stop()
        }
        usleep(300_000)
        kill(g.pid, SIGSTOP)
        let end = Date().addingTimeInterval(10)
        while Date() < end && !TopLiveTests.threads(g.pid).allSatisfy({ $0.state == "T" }) { usleep(10_000) }
        let threads = TopLiveTests.threads(g.pid)

        let port = freeLoopbackPort()
        let serve = try Spawned(CLI.binary, ["serve", "--listen", "127.0.0.1:\(port)"])
        defer { serve.stop() }
        #expect(serve.waitForStderr("kvmscope: serving http://127.0.0.1:\(port)/metrics"), "serve: \(serve.stderr)")
        let scrape = try #require(httpGet("http://127.0.0.1:\(port)/metrics"))
        let lines = scrape.body.split(separator: "\n").map(String.init)
        let vm = "vm=\"\(g.pid)\",vm_name=\"\(name)\""
        #expect(lines.contains("kvmscope_vm_vcpus{\(vm)} 2"))
        for v in 0..<2 {
            let t = try #require(threads.first { $0.comm == "CPU \(v)/KVM" })
            #expect(lines.contains("kvmscope_vcpu_cpu_seconds_total{\(vm),vcpu=\"\(v)\"} \(Double(t.ticks) / 100)"),
                    "\(lines.filter { $0.contains("vcpu_cpu") })")
        }
        #expect(lines.filter { $0.hasPrefix("kvmscope_vcpu_wait_seconds_total{\(vm),") }.count == 2)
        // serve -p: only that VM's resource series.
        let port2 = freeLoopbackPort()
        let only = try Spawned(CLI.binary, ["serve", "--listen", "127.0.0.1:\(port2)", "-p", "1"])
        defer { only.stop() }
        #expect(only.waitForStderr("kvmscope: serving http://127.0.0.1:\(port2)/metrics"), "serve: \(only.stderr)")
        let none = try #require(httpGet("http://127.0.0.1:\(port2)/metrics"))
        #expect(!none.body.contains("kvmscope_vm_vcpus{"))
        #expect(none.body.contains("# TYPE kvmscope_vm_vcpus gauge"))
    }
}

/// `stat --json`'s `resources` section: each VM's cost over the trace, beside its exits.
@Suite(.serialized, .enabled(if: KVMTest.canRun, "needs root, /dev/kvm and tracefs"))
struct StatResourcesLiveTests {
    /// The storm runs 2.5 s: resources are sampled about once a second, so a VM that lives less may be missed.
    @Test func theTracedCommandsVM() throws {
        let name = "stat-res-\(getpid())"
        let r = try CLI.run(["stat", "--json", "--event", "kvm_userspace_exit", "--", CLI.binary, "storm", "--name", name,
                             "--vcpus", "2", "--exits", "1000000000", "--seconds", "2.5"])
        #expect(r.status == 0, "\(r.stderr)")
        let j = try CLI.json(r.stdout)
        let pids = Set(try #require(j["userspace_exits"] as? [[String: Any]]).compactMap { $0["vm"] as? Int })
        #expect(pids.count == 1)
        let res = try #require(j["resources"] as? [[String: Any]])
        #expect(res.map { $0["vm"] as? Int } == Array(pids))
        let vm = try #require(res.first)
        #expect(vm["vm_name"] as? String == name)
        #expect(vm["ended"] as? Bool == true)
        #expect(vm["vcpus"] as? Int == 2)
        let threads = try #require(vm["vcpu_threads"] as? [[String: Any]])
        #expect(threads.map { $0["vcpu"] as? Int } == [0, 1])
        let ticks = { (v: Any?) in Int(((v as? Double) ?? -1) * 100 + 0.5) }
        #expect(threads.map { ticks($0["cpu_seconds"]) }.reduce(0, +) == ticks(vm["vcpu_cpu_seconds"]))
        #expect(ticks(vm["vcpu_cpu_seconds"]) > 0)
    }

    @Test func aStoppedVMCostsNothing() throws {
        let name = "stat-stop-\(getpid())"
        let g = try TopLiveTests().guest(name: name, vcpus: 2)
        defer {
            kill(g.pid, SIGCONT)
            g.stop()
        }
        kill(g.pid, SIGSTOP)
        let end = Date().addingTimeInterval(10)
        while Date() < end && !TopLiveTests.threads(g.pid).allSatisfy({ $0.state == "T" }) { usleep(10_000) }
        let r = try CLI.run(["stat", "--json", "--duration", "1.5", "-p", "\(g.pid)"])
        #expect(r.status == 0, "\(r.stderr)")
        let status = try String(contentsOfFile: "/proc/\(g.pid)/status", encoding: .utf8)
        let rssKB = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") }
            .flatMap { Int($0.dropFirst(6).trimmingCharacters(in: .whitespaces).dropLast(3)) }
        let res = try #require(try CLI.json(r.stdout)["resources"] as? [[String: Any]])
        #expect(res.count == 1)
        let vm = try #require(res.first)
        #expect(vm["vm"] as? Int == Int(g.pid))
        #expect(vm["vm_name"] as? String == name)
        #expect(vm["ended"] as? Bool == false)
        #expect(vm["seen_from_start"] as? Bool == true)
        #expect(vm["vcpus"] as? Int == 2)
        #expect(vm["cpu_seconds"] as? Double == 0)
        #expect(vm["vcpu_cpu_seconds"] as? Double == 0)
        #expect(vm["vcpu_switches"] as? Int == 0)
        #expect(vm["rss_bytes"] as? Int == rssKB.map { $0 * 1024 })
        #expect((vm["sampled_seconds"] as? Double ?? 0) >= 1.4)
    }
}

/// `watch`'s resource rules on real storm guests.
@Suite(.serialized, .enabled(if: KVMTest.canRun, "needs root, /dev/kvm and tracefs"))
struct ResourceRuleLiveTests {
    func firing(_ rule: String, pid: Int32) throws -> [String: Any] {
        let r = try CLI.run(["watch", "--alert", rule, "--exit-on-alert", "-s", "0.3", "-p", "\(pid)"], timeout: 60)
        #expect(r.status == 2, "stderr: \(r.stderr)")
        let line = try #require(r.stdout.split(separator: "\n").first)
        return try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
    }

    @Test func aBusyVMsCPUFiresAndAStoppedOnesIsZero() throws {
        let name = "rule-\(getpid())"
        let g = try TopLiveTests().guest(name: name, vcpus: 2)
        defer {
            kill(g.pid, SIGCONT)
            g.stop()
        }
        let busy = try firing("cpu(vm) > 5%", pid: g.pid)
        #expect(busy["state"] as? String == "firing")
        #expect(busy["vm"] as? Int == Int(g.pid))
        #expect(busy["vm_name"] as? String == name)
        #expect(busy["reason"] as? String == "cpu")
        #expect(busy["unit"] as? String == "%")
        #expect(busy["vcpu"] is NSNull)
        #expect((busy["value"] as? Double ?? 0) > 5)

        kill(g.pid, SIGSTOP)
        let end = Date().addingTimeInterval(10)
        while Date() < end && !TopLiveTests.threads(g.pid).allSatisfy({ $0.state == "T" }) { usleep(10_000) }
        let stopped = try firing("cpu(vcpu) < 1%", pid: g.pid)
        #expect(stopped["vm"] as? Int == Int(g.pid))
        #expect(stopped["value"] as? Double == 0)
        #expect([0, 1].contains(stopped["vcpu"] as? Int ?? -1))
    }
}

/// `top` without tracefs: one line saying so and how to see the resources anyway; `--no-exits` works.
@Suite(.serialized, .enabled(if: KVMTest.canRun, "needs root, /dev/kvm and tracefs"))
struct TopWithoutTracefsTests {
    @Test func oneLineThenNoExitsWorks() throws {
        let setup = "umount /sys/kernel/tracing && { ! mountpoint -q /sys/kernel/debug || umount -l /sys/kernel/debug; }"
        let drop = ["/usr/bin/setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin", CLI.binary]
        let r = try PrivilegeTests.inMountNamespace(setup, drop + ["top", "-b", "-n", "1", "-d", "0.1"])
        PrivilegeTests.expectOneLine(r, "tracefs is not mounted and could not be mounted: Operation not permitted "
                                     + "(as root: mount -t tracefs nodev /sys/kernel/tracing); "
                                     + "`kvmscope top --no-exits` shows the resources without exits")
        let ok = try PrivilegeTests.inMountNamespace(setup, drop + ["top", "--json", "-n", "1", "-d", "0.1", "--no-exits"])
        #expect(ok.status == 0, "\(ok.stderr)")
        let j = try #require(try JSONSerialization.jsonObject(with: Data(ok.stdout.utf8)) as? [String: Any])
        #expect(j["exits_traced"] as? Bool == false)
        #expect(j["iteration"] as? Int == 1)
    }

    /// libvirt's read-only sockets left behind by a daemon that died (files nobody listens on): `top` without
    /// `-c` reads /proc only and says nothing of libvirt (it once warned "Connection refused" on every start).
    @Test func staleLibvirtSocketsAreNoDaemon() throws {
        let dir = try RecordTests.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for name in ["libvirt-sock-ro", "virtqemud-sock-ro"] {
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            try #require(fd >= 0)
            var addr = sockaddr_un()
            addr.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &addr.sun_path) { raw in
                for (i, b) in Array((dir + "/" + name).utf8).enumerated() { raw[i] = b }
            }
            let bound = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            close(fd)
            try #require(bound == 0, "bind \(name): \(String(cString: strerror(errno)))")
        }
        let r = try PrivilegeTests.inMountNamespace("mkdir -p /run/libvirt && mount --bind '\(dir)' /run/libvirt",
                                                    [CLI.binary, "top", "--json", "-n", "1", "-d", "0.1", "--no-exits"])
        #expect(r.status == 0)
        #expect(r.stderr == "")
        let j = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        #expect(j["iteration"] as? Int == 1)
    }
}
