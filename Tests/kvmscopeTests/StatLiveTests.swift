import Foundation
import Testing
import TestSupport
import KVMHost

/// Known answers from a real guest: the storm generator's exits, counted by the kernel's tracepoints.
@Suite(.serialized, .enabled(if: KVMTest.canRun, "needs root, /dev/kvm and tracefs"))
struct StatLiveTests {
    static let n = 20_000

    func stat(kind: String, vcpus: Int = 2, extra: [String] = []) throws -> [String: Any] {
        let r = try CLI.run(["stat", "--json"] + extra + ["--", CLI.binary, "storm", "--kind", kind, "--vcpus", "\(vcpus)",
                                                         "--exits", "\(Self.n)"])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        return try CLI.json(r.stdout)
    }

    @Test func ioStormCountsExactly() throws {
        let j = try stat(kind: "io")
        let events = try #require(j["events"] as? [String: Int])
        #expect(events["kvm_pio"] == 2 * Self.n)
        #expect(events["kvm_userspace_exit"] == 2 * Self.n)
        #expect(events["kvm_mmio"] == nil)
        #expect(j["lost_events"] as? Int == 0)
        let rows = try #require(j["userspace_exits"] as? [[String: Any]])
        #expect(rows.count == 2)
        #expect(rows.map { $0["reason"] as? String } == ["KVM_EXIT_IO", "KVM_EXIT_IO"])
        #expect(rows.map { $0["count"] as? Int } == [Self.n, Self.n])
        #expect(rows.map { $0["vcpu"] as? Int } == [0, 1])
    }

    /// `-o FILE` (perf stat's): the summary goes to the file, so stdout is exactly what the command printed.
    @Test func summaryToAFileKeepsTheCommandsOutputApart() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("stat-o-\(getpid()).json").path
        defer { unlink(path) }
        let r = try CLI.run(["stat", "--json", "-o", path, "--", CLI.binary, "storm", "--kind", "io", "--vcpus", "1",
                             "--exits", "\(Self.n)"])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        let storm = try CLI.json(r.stdout)
        #expect(storm["kind"] as? String == "io" && storm["exits"] as? Int == Self.n)
        #expect(r.stdout.filter { $0 == "\n" }.count == 1, "stdout: \(r.stdout)")
        let j = try CLI.json(String(decoding: try Data(contentsOf: URL(fileURLWithPath: path)), as: UTF8.self))
        #expect((j["events"] as? [String: Int])?["kvm_pio"] == Self.n)
    }

    /// A guest that the COMMAND starts and that lives less than a second: sampled ten times a second and counted
    /// from its birth (once a second from its first sight, it was missed or lost its first part).
    @Test func aShortGuestOfTheCommandIsCountedFromItsBirth() throws {
        let name = "stat-short-\(getpid())"
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("stat-short-\(getpid()).json").path
        defer { unlink(path) }
        let r = try CLI.run(["stat", "--json", "-o", path, "--", CLI.binary, "storm", "--kind", "io", "--vcpus", "1",
                             "--exits", "1000000000", "--seconds", "0.6", "--name", name])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        let j = try CLI.json(String(decoding: try Data(contentsOf: URL(fileURLWithPath: path)), as: UTF8.self))
        let res = try #require(j["resources"] as? [[String: Any]])
        let vm = try #require(res.first { $0["vm_name"] as? String == name }, "\(res)")
        #expect(vm["born_during_run"] as? Bool == true)
        #expect(vm["seen_from_start"] as? Bool == false)
        #expect(vm["ended"] as? Bool == true)
        #expect(vm["vcpus"] as? Int == 1)
        let vcpu = try #require(vm["vcpu_cpu_seconds"] as? Double)
        #expect(vcpu > 0)
        #expect(try #require(vm["cpu_seconds"] as? Double) >= vcpu)
    }

    /// trace-cmd's and perf's spellings: `kvm:kvm_pio`, a glob, `kvm` for every kvm event.
    @Test func eventsInTraceCmdSpelling() throws {
        let j = try stat(kind: "io", vcpus: 1, extra: ["--event", "kvm:kvm_pio", "--event", "kvm_userspace*"])
        #expect(j["events"] as? [String: Int] == ["kvm_pio": Self.n, "kvm_userspace_exit": Self.n])
        let all = try stat(kind: "io", vcpus: 1, extra: ["--event", "kvm"])
        #expect((all["events"] as? [String: Int])?["kvm_pio"] == Self.n)
        #expect((all["events"] as? [String: Int])?["kvm_fpu"] != nil, "every kvm event, as without --event")
    }

    /// Started with stdin closed (as CI and some service managers do), kvmscope puts /dev/null there first:
    /// its ring buffers and pipes never become the traced command's stdin.
    @Test func closedStdinBecomesDevNull() throws {
        let r = try Spawned.run("/bin/sh", ["-c", "exec \"$0\" stat --duration 0.2 --json -- readlink /proc/self/fd/0 <&-",
                                            CLI.binary])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        #expect(r.stdout.hasPrefix("/dev/null\n"), "stdout: \(r.stdout)")
    }

    @Test func mmioStormCountsExactly() throws {
        let j = try stat(kind: "mmio")
        let events = try #require(j["events"] as? [String: Int])
        #expect(events["kvm_mmio"] == 2 * Self.n)
        #expect(events["kvm_userspace_exit"] == 2 * Self.n)
        #expect(events["kvm_pio"] == nil)
        #expect(j["lost_events"] as? Int == 0)
        let rows = try #require(j["userspace_exits"] as? [[String: Any]])
        #expect(rows.map { $0["reason"] as? String } == ["KVM_EXIT_MMIO", "KVM_EXIT_MMIO"])
        #expect(rows.map { $0["count"] as? Int } == [Self.n, Self.n])
    }

    /// stat -l -c -L (kvm_stat's log to a file): the columns -f keeps, fixed before the first event (a child
    /// pulls in its event, its siblings stay out), one header, and every exit of the storm in one of the lines
    /// (the last written after the ring buffers were drained).
    @Test func logColumnsAreFixedAtStartAndCountEveryExit() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("stat-log-\(getpid()).csv").path
        defer { unlink(path) }
        let fields = #"kvm_(pio|mmio)$|kvm_userspace_exit\((IO|MMIO)\)"#
        let r = try CLI.run(["stat", "-l", "-c", "-s", "0.2", "-f", fields, "-L", path, "--", CLI.binary, "storm", "--kind", "io",
                             "--vcpus", "2", "--exits", "\(Self.n)"])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        #expect(r.stderr.isEmpty)
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map(String.init)
        #expect(lines.first == "timestamp,kvm_mmio,kvm_pio,kvm_userspace_exit,kvm_userspace_exit(IO),"
                + "kvm_userspace_exit(MMIO)")
        let rows = lines.dropFirst().map { $0.split(separator: ",").map(String.init) }
        #expect(rows.count >= 2, "\(lines)")
        #expect(rows.allSatisfy { $0.count == 6 }, "one table: \(lines)")
        var sums = [Int](repeating: 0, count: 5)
        for row in rows { for i in 0..<5 { sums[i] += Int(row[i + 1]) ?? -1_000_000_000 } }
        #expect(sums == [0, 2 * Self.n, 2 * Self.n, 2 * Self.n, 0], "\(lines)")

        // The same table appends; another one is refused before the command starts, the file untouched.
        let again = try CLI.run(["stat", "-l", "-c", "-s", "0.2", "--duration", "0.3", "-f", fields, "-L", path])
        #expect(again.status == 0, "stderr: \(again.stderr)")
        let appended = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n")
        #expect(appended.count >= lines.count + 1 && appended.filter { $0.hasPrefix("timestamp") }.count == 1)
        let other = try CLI.run(["stat", "-l", "-c", "-f", "kvm_pio", "-L", path, "--", "/bin/sh", "-c", "echo started"])
        #expect(other.status == 1)
        #expect(other.stdout.isEmpty)
        #expect(other.stderr == "kvmscope: \(path) starts with another header than this run's (1 column): "
                + "-L -c appends only to a log of the same columns; give another file\n")
        #expect(try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n") == appended)
    }

    /// stat -1 prints kvm_stat's batch lines (`%-42s%10d%10d`: field, count, count of the interval), every field
    /// -f keeps, sorted, zeros included, and nothing else on stdout; here the interval (-s 30) ends with the COMMAND.
    @Test func onceIsKvmStatsBatchLines() throws {
        let fields = #"kvm_(pio|mmio)$|kvm_userspace_exit\((IO|MMIO)\)"#
        let r = try CLI.run(["stat", "-1", "-s", "25", "-f", fields, "--", CLI.binary, "storm", "--kind", "io",
                             "--vcpus", "2", "--exits", "\(Self.n)"])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        func line(_ f: String, _ v: Int) -> String {
            f.padding(toLength: 42, withPad: " ", startingAt: 0) + String(repeating: " ", count: 10 - "\(v)".count) + "\(v)"
                + String(repeating: " ", count: 10 - "\(v)".count) + "\(v)"
        }
        // The storm's own JSON line first (COMMAND's stdout), then the batch lines.
        let out = r.stdout.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        #expect(out.first?.hasPrefix("{\"pid\":") == true)
        #expect(Array(out.dropFirst()) == [
            line("kvm_mmio", 0),
            line("kvm_pio", 2 * Self.n),
            line("kvm_userspace_exit", 2 * Self.n),
            line("kvm_userspace_exit(IO)", 2 * Self.n),
            line("kvm_userspace_exit(MMIO)", 0),
            "",
        ])
    }

    /// stat -L under logrotate (kvm_stat's habit): the file is moved, SIGHUP reopens the name, the next lines go
    /// to a new file that starts with the header; the run goes on until SIGTERM (status 0). A CSV log that
    /// already holds lines gets no second header.
    @Test(arguments: [false, true]) func hangupReopensTheLogFile(csv: Bool) throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("stat-rotate-\(getpid())-\(csv).log").path
        let rotated = path + ".1"
        defer { unlink(path); unlink(rotated) }
        unlink(path); unlink(rotated)
        let stat = try Spawned(CLI.binary, ["stat", "-s", "0.1", "-f", "kvm_pio"] + (csv ? ["-c"] : []) + ["-L", path],
                               stdinNull: true)
        defer { stat.stop() }
        func lines(_ p: String) -> [String] {
            ((try? String(contentsOfFile: p, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
        }
        func waitFor(_ p: String, lines n: Int) -> Bool {
            let end = Date().addingTimeInterval(30)
            while Date() < end { if lines(p).count >= n { return true }; usleep(20_000) }
            return false
        }
        #expect(waitFor(path, lines: 3), "stderr: \(stat.stderr)")
        try #require(rename(path, rotated) == 0)
        stat.signal(SIGHUP)
        #expect(waitFor(path, lines: 2), "stderr: \(stat.stderr)")
        #expect(stat.isRunning, "SIGHUP with -L does not stop the run")
        stat.signal(SIGTERM)
        #expect(stat.wait(timeout: 30) == 0, "stderr: \(stat.stderr)")
        #expect(stat.stderr.isEmpty)
        let header = csv ? "timestamp,kvm_pio" : lines(rotated).first ?? "?"
        #expect(header.contains("kvm_pio"))
        let old = lines(rotated), new = lines(path)
        #expect(old.first == header && new.first == header, "\(old.prefix(2)) \(new.prefix(2))")
        #expect(old.filter { $0 == header }.count == 1 && new.filter { $0 == header }.count == 1)
        #expect(old.count >= 3 && new.count >= 2)
        if csv {
            // A second rotation into a file that already holds this table appends without a header.
            let again = try Spawned(CLI.binary, ["stat", "-s", "0.1", "-f", "kvm_pio", "-c", "-L", path], stdinNull: true)
            defer { again.stop() }
            let before = lines(path).count
            #expect(waitFor(path, lines: before + 1))
            again.signal(SIGHUP)
            #expect(waitFor(path, lines: before + 3))
            again.signal(SIGTERM)
            #expect(again.wait(timeout: 30) == 0, "stderr: \(again.stderr)")
            #expect(lines(path).filter { $0 == header }.count == 1, "\(lines(path))")
        }
    }

    /// `live` with no terminal falls back to `stat -l`, and both log the same columns, fixed at start: every kvm
    /// event of this kernel and each KVM_EXIT_* name of kvm_userspace_exit's print fmt (as kvm_stat names it,
    /// without the prefix), whether they fire or not.
    @Test func liveFallbackAndStatLogHaveTheSameColumns() throws {
        let stat = try CLI.run(["stat", "-l", "-s", "0.2", "--duration", "0.3"])
        #expect(stat.status == 0, "stderr: \(stat.stderr)")
        let header = try #require(stat.stdout.split(separator: "\n").first.map(String.init))
        let live = try Spawned(CLI.binary, ["live", "-s", "0.2"], stdinNull: true)
        defer { live.stop() }
        #expect(live.waitForStdout(timeout: 30) { $0.split(separator: "\n").count >= 2 }, "stdout: \(live.stdout)")
        live.signal(SIGINT)
        #expect(live.wait(timeout: 30) == 0)
        #expect(live.stdout.split(separator: "\n").first.map(String.init) == header)

        let dir = "/sys/kernel/tracing/events/kvm"
        let events = try FileManager.default.contentsOfDirectory(atPath: dir)
            .filter { FileManager.default.fileExists(atPath: "\(dir)/\($0)/format") }
        let format = try String(contentsOfFile: "\(dir)/kvm_userspace_exit/format", encoding: .utf8)
        let reasons = format.matches(of: /"KVM_EXIT_" "(\w+)"/).map { "kvm_userspace_exit(\($0.1))" }
        #expect(reasons.count > 20)
        let columns = header.split(separator: " ").map(String.init)
        #expect(columns.first == "timestamp")
        let cpuFlags = (try String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)).split(separator: "\n")
            .first { $0.hasPrefix("flags") }?.split(separator: " ") ?? []
        // kvm_exit's children come from its table for the host's ISA: none where the CPU has neither vmx nor svm.
        let exitChildren = columns.filter { $0.hasPrefix("kvm_exit(") }
        if !cpuFlags.contains("vmx") && !cpuFlags.contains("svm") { #expect(exitChildren.isEmpty) }
        #expect(Array(columns.dropFirst()).filter { !$0.hasPrefix("kvm_exit(") } == (events + reasons).sorted())
    }

    @Test func stormOutsideTheCommandIsNotCounted() throws {
        // A second storm runs during the traced one, outside the traced command.
        let outside = try Spawned(CLI.binary, ["storm", "--kind", "mmio", "--vcpus", "1", "--exits", "5000", "--seconds", "60"],
                                  stdinNull: true, quiet: true)
        defer { outside.stop() }
        let j = try stat(kind: "io")
        let events = try #require(j["events"] as? [String: Int])
        #expect(events["kvm_pio"] == 2 * Self.n)
        #expect(events["kvm_userspace_exit"] == 2 * Self.n)
        #expect(events["kvm_mmio"] == nil)
        #expect(outside.isRunning, "the outside storm must overlap the traced one")
    }
}

/// kvm_stat's -g: a guest found by its name (`--name` on the command line, like QEMU's -name).
@Suite(.serialized, .enabled(if: KVMTest.canRun, "needs root, /dev/kvm and tracefs"))
struct GuestFilterLiveTests {
    /// `stat -p PID` traces only that VM in the kernel, as watch -p does: the instance's set_event_pid lists the
    /// VM's threads while it runs (its vCPU thread added by event-fork), so another VM's flood at the same time
    /// neither fills the buffers nor counts as lost, and the watched storm's exits are counted exactly.
    @Test func pidFilterTracesOnlyThatVMInTheKernel() throws {
        let watched = try Spawned("/bin/sh", ["-c", "read x; exec \"$0\" storm --kind io --vcpus 1 --exits 1000000000 --seconds 2",
                                              CLI.binary])
        defer { watched.stop() }
        let flood = try Spawned(CLI.binary, ["storm", "--kind", "io", "--vcpus", "1", "--exits", "1000000000", "--seconds", "30"],
                                stdinNull: true, quiet: true)
        defer { flood.stop() }
        let stat = try Spawned(CLI.binary, ["stat", "--json", "--duration", "6", "-p", "\(watched.pid)"], stdinNull: true)
        defer { stat.stop() }
        let instance = "/sys/kernel/tracing/instances/kvmscope-\(stat.pid)"
        func listed() -> Set<Int32> {
            Set((try? String(contentsOfFile: instance + "/set_event_pid", encoding: .utf8))?
                .split(whereSeparator: \.isWhitespace).compactMap { Int32($0) } ?? [])
        }
        func tracing() -> Bool { (try? String(contentsOfFile: instance + "/tracing_on", encoding: .utf8)) == "1\n" }
        var end = Date().addingTimeInterval(30)
        while Date() < end && !(tracing() && listed().contains(watched.pid)) { usleep(20_000) }
        #expect(listed() == [watched.pid], "set_event_pid before the storm starts")
        watched.release()
        // While it runs: its vCPU thread ("CPU 0/KVM") is listed too, and no thread of the flood.
        func tids(_ pid: Int32) -> Set<Int32> {
            Set(((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []).compactMap { Int32($0) })
        }
        func vcpu() -> Bool {
            tids(watched.pid).contains { (try? String(contentsOfFile: "/proc/\(watched.pid)/task/\($0)/comm", encoding: .utf8)) == "CPU 0/KVM\n" }
        }
        end = Date().addingTimeInterval(10)
        while Date() < end && !vcpu() { usleep(10_000) }
        // Its user threads: KVM's own worker (kvm-nx-lpage-recovery, a vhost task the kernel starts without a
        // fork event) is left out, and causes no kvm event.
        let running = tids(watched.pid).filter {
            (try? String(contentsOfFile: "/proc/\(watched.pid)/task/\($0)/comm", encoding: .utf8))?.hasPrefix("kvm-nx-") == false
        }
        #expect(running.count == 2 && running.isSubset(of: listed()), "threads \(running), set_event_pid \(listed())")
        #expect(listed().isDisjoint(with: tids(flood.pid)))
        #expect(watched.wait(timeout: 30) == 0)
        let exits = try #require(watched.stdout.firstMatch(of: /"exits":(\d+)/).flatMap { Int($0.1) }, "\(watched.stdout)")
        #expect(stat.wait(timeout: 30) == 0, "\(stat.stderr)")
        #expect(flood.isRunning, "the flood must overlap the whole trace")
        let j = try CLI.json(stat.stdout)
        #expect((j["events"] as? [String: Int])?["kvm_pio"] == exits, "\(stat.stdout.prefix(400))")
        #expect(j["lost_events"] as? Int == 0)
    }

    /// `stat -p PID` ends when that VM does, as `perf stat -p` and `watch -p` end, with every exit counted (it
    /// had gone on tracing nothing until Ctrl-C, its rates diluted).
    @Test func pidFilterEndsWithTheVM() throws {
        let watched = try Spawned("/bin/sh", ["-c", "read x; exec \"$0\" storm --kind io --vcpus 1 --exits 20000", CLI.binary])
        defer { watched.stop() }
        // kvm_pio alone: every event in the buffers is one of the storm's exits, so a loss (a reader starved on a
        // loaded machine) counts exactly the exits it took.
        let stat = try Spawned(CLI.binary, ["stat", "--json", "--event", "kvm_pio", "--buffer-kb", "8192", "-p", "\(watched.pid)"],
                               stdinNull: true)
        defer { stat.stop() }
        // Not tracing_on alone: a new instance has it on from its mkdir until stat turns it off to set up (the storm
        // released in that moment lost its first exits, uncounted); kvm_pio is enabled after that and tracing
        // turned on last (as RecordTests.waitUntilTracing waits for record).
        let instance = "/sys/kernel/tracing/instances/kvmscope-\(stat.pid)"
        func read(_ file: String) -> String? { try? String(contentsOfFile: instance + "/" + file, encoding: .utf8) }
        let end = Date().addingTimeInterval(30)
        while Date() < end && !(read("tracing_on") == "1\n" && read("events/kvm/kvm_pio/enable") == "1\n"
                                && read("set_event_pid")?.split(whereSeparator: \.isWhitespace).contains("\(watched.pid)") == true) {
            usleep(20_000)
        }
        watched.release()
        #expect(watched.wait(timeout: 30) == 0)
        #expect(stat.wait(timeout: 10) == 0, "stat -p did not end with its VM: \(stat.stderr)")
        let j = try CLI.json(stat.stdout)
        let counted = try #require((j["events"] as? [String: Int])?["kvm_pio"], "\(stat.stdout.prefix(400))")
        let lost = try #require(j["lost_events"] as? Int)
        #expect(counted + lost == 20000 && counted > 0, "counted \(counted), lost \(lost)")
    }

    @Test func guestByNameKeepsOnlyThatGuest() throws {
        let name = "kvmscope-test-guest-\(getpid())"
        let guest = try Spawned(CLI.binary, ["storm", "--name", name, "--kind", "io", "--vcpus", "2", "--exits", "5000",
                                             "--seconds", "60"], stdinNull: true, quiet: true)
        defer { guest.stop() }
        // Another guest at the same time, which -g must leave out.
        let other = try Spawned(CLI.binary, ["storm", "--kind", "mmio", "--vcpus", "1", "--exits", "5000", "--seconds", "60"],
                                stdinNull: true, quiet: true)
        defer { other.stop() }

        let r = try CLI.run(["stat", "--json", "--duration", "1.5", "-g", name])
        #expect(r.status == 0, "\(r.stderr)")
        let j = try CLI.json(r.stdout)
        let rows = try #require(j["userspace_exits"] as? [[String: Any]])
        #expect(Set(rows.compactMap { $0["vm"] as? Int }) == [Int(guest.pid)])
        #expect(Set(rows.compactMap { $0["vm_name"] as? String }) == [name])
        #expect(Set(rows.compactMap { $0["reason"] as? String }) == ["KVM_EXIT_IO"])
        #expect(Set(rows.compactMap { $0["vcpu"] as? Int }) == [0, 1])
        let events = try #require(j["events"] as? [String: Int])
        #expect((events["kvm_pio"] ?? 0) > 0)
        #expect(events["kvm_mmio"] == nil, "the other guest leaked in")
    }

    /// A VMM under a wrapper that stays its parent (`timeout`) has the guest name in the wrapper's arguments
    /// too: -g means the VM (the process holding KVM open), not the wrapper; two VMs of one name are refused, as
    /// kvm_stat refuses them ("Multiple processes found").
    @Test func guestByNameIsTheVMNotItsWrapperAndNeverTwo() throws {
        let name = "kvmscope-wrapped-\(getpid())"
        let wrapper = try Spawned("/usr/bin/timeout", ["90", CLI.binary, "storm", "--name", name, "--kind", "io", "--vcpus", "1",
                                                       "--exits", "5000", "--seconds", "60"], stdinNull: true, quiet: true)
        defer { wrapper.stop() }
        // The VM: timeout's child, once it holds /dev/kvm.
        var vm: Int32?
        let end = Date().addingTimeInterval(30)
        while vm == nil && Date() < end {
            let children = (try? String(contentsOfFile: "/proc/\(wrapper.pid)/task/\(wrapper.pid)/children", encoding: .utf8)) ?? ""
            vm = children.split(separator: " ").first.flatMap { Int32($0) }.flatMap { KVMProcesses.holdsKVM($0) ? $0 : nil }
            if vm == nil { usleep(20_000) }
        }
        let child = try #require(vm, "the storm under timeout never opened /dev/kvm")
        #expect(ThreadDirectory.pids(ofGuest: name) == [child])
        let r = try CLI.run(["stat", "--json", "--duration", "1", "-g", name])
        #expect(r.status == 0, "\(r.stderr)")
        let rows = try #require(try CLI.json(r.stdout)["userspace_exits"] as? [[String: Any]])
        #expect(Set(rows.compactMap { $0["vm"] as? Int }) == [Int(child)])

        let twin = try Spawned(CLI.binary, ["storm", "--name", name, "--kind", "mmio", "--vcpus", "1", "--exits", "5000",
                                            "--seconds", "60"], stdinNull: true, quiet: true)
        defer { twin.stop() }
        let twinEnd = Date().addingTimeInterval(30)
        while ThreadDirectory.pids(ofGuest: name).count < 2 && Date() < twinEnd { usleep(20_000) }
        let pids = [child, twin.pid].sorted()
        #expect(ThreadDirectory.pids(ofGuest: name) == pids)
        let both = try CLI.run(["stat", "-1", "-g", name])
        #expect(both.status == 1)
        #expect(both.stderr == "kvmscope: several guests are named '\(name)' (pids \(pids[0]), \(pids[1])): choose one with -p\n")
    }
}
