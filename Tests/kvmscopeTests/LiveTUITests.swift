import Foundation
import Testing
import TestSupport

/// The real binary in a real terminal (tmux), driven by keys while a storm guest runs.
@Suite(.serialized, .enabled(if: KVMTest.canRun, "needs root, /dev/kvm, tracefs and tmux"))
struct LiveTUITests {
    /// Runs tmux and returns its stdout; a failing tmux command is recorded (a key that never reached the
    /// pane must not pass for a view that ignored it). bash closes every descriptor above 2 before running
    /// tmux: the server it may start daemonizes and would otherwise keep Foundation's descriptors open.
    /// `timeout` is how long tmux may take; a poll passes a short one and `check: false`, and polls again.
    @discardableResult
    static func tmux(_ args: [String], check: Bool = true, timeout: Double = 30) throws -> String {
        let r = try Spawned.run("/bin/bash", ["-c", """
            for f in /proc/$$/fd/*; do n=${f##*/}; if [ "$n" -gt 2 ]; then eval "exec $n>&-"; fi; done 2>/dev/null
            exec tmux "$@"
            """, "tmux"] + args, timeout: timeout, recordTimeout: check)
        if check && r.status != 0 {
            Issue.record("tmux \(args.joined(separator: " ")) exited with \(r.status): \(r.stderr)")
        }
        return r.stdout
    }

    struct Pane {
        let name: String

        func keys(_ keys: String...) throws { try tmux(["send-keys", "-t", name] + keys) }
        func type(_ text: String) throws { try tmux(["send-keys", "-t", name, "-l", text]) }
        /// The pane's screen, or nil when tmux did not answer within `timeout` s.
        func capture(timeout: Double = 30) throws -> [String]? {
            try LiveTUITests.capture(["-t", name], timeout: timeout)
        }

        /// Polls the screen until `condition` holds; records the last screen when the deadline passes.
        @discardableResult
        func wait(_ what: String, timeout: Double = 30, _ condition: ([String]) -> Bool) throws -> [String] {
            try LiveTUITests.poll(what, timeout: timeout, interval: 0.1, capture: capture, condition)
        }
    }

    /// `tmux [prefix] capture-pane -p [target]`: the screen's lines, or nil when tmux did not answer within
    /// `timeout` s (a starved server on a loaded machine; the caller polls again until its own deadline).
    static func capture(_ target: [String], prefix: [String] = [], timeout: Double) throws -> [String]? {
        let out = try tmux(prefix + ["capture-pane", "-p"] + target, check: false, timeout: timeout)
        return out.isEmpty ? nil : out.components(separatedBy: "\n")
    }

    /// Captures every `interval` s until `condition` holds of a screen; records the last screen and throws
    /// `Timeout` when `timeout` s pass. A capture gets what is left of the deadline (1–10 s).
    static func poll(_ what: String, timeout: Double, interval: Double,
                     capture: (Double) throws -> [String]?, _ condition: ([String]) -> Bool) throws -> [String] {
        let deadline = Date().addingTimeInterval(timeout)
        var screen: [String] = []
        while Date() < deadline {
            if let s = try capture(max(1, min(10, deadline.timeIntervalSinceNow))) {
                screen = s
                if condition(screen) { return screen }
            }
            usleep(useconds_t(interval * 1_000_000))
        }
        Issue.record("timed out waiting for \(what); screen:\n\(screen.joined(separator: "\n"))")
        throw Timeout()
    }

    struct Timeout: Error {}

    /// The body rows: (name, Total) of the lines between the column titles and the Total row.
    static func rows(_ screen: [String]) -> [(name: String, total: Int)] {
        guard let titles = screen.firstIndex(where: { $0.hasPrefix(" Event ") }) else { return [] }
        var out: [(String, Int)] = []
        for line in screen[(titles + 1)...] {
            let parts = line.dropFirst().split(separator: " ")
            guard parts.count >= 2, let total = Int(parts[1]) else { break }
            if parts[0] == "Total" { break }
            out.append((String(parts[0]), total))
        }
        return out
    }

    static func total(_ screen: [String], _ name: String) -> Int? { rows(screen).first { $0.name == name }?.total }

    /// A row's CurAvg/s (the fourth column: name, Total, %Total, CurAvg/s).
    static func curAvg(_ screen: [String], _ name: String) -> Int? {
        guard let line = screen.first(where: { $0.dropFirst().split(separator: " ").first.map(String.init) == name }) else { return nil }
        let parts = line.dropFirst().split(separator: " ")
        return parts.count >= 4 ? Int(parts[3]) : nil
    }

    @Test func kvmStatKeysDriveTheRealBinary() throws {
        // One vCPU: on two host CPUs shared with other suites, two spinning vCPUs starved the view's reader
        // (the header said "lost 15559") and tmux itself.
        let storm = try Spawned(CLI.binary, ["storm", "--kind", "io", "--vcpus", "1", "--exits", "50000000", "--seconds", "60"],
                                stdinNull: true, quiet: true)
        defer { storm.stop() }
        let pid = storm.pid
        let name = "kvmscope-live-\(getpid())"
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent(name)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try Self.tmux(["new-session", "-d", "-s", name, "-x", "120", "-y", "40",
                       "env PS1='kvmscope-test$ ' TERM=xterm-256color bash --norc --noprofile"])
        defer { _ = try? Self.tmux(["kill-session", "-t", name], check: false) }
        let pane = Pane(name: name)
        try pane.wait("the shell prompt") { $0.contains { $0.hasPrefix("kvmscope-test$") } }
        try pane.type("stty -g > \(dir.path)/before; clear; \(CLI.binary) live -s 0.5 -p \(pid)")
        try pane.keys("Enter")

        // The first screen: header, kvm_pio counting, the IO child under kvm_userspace_exit (kvm_stat's name).
        let first = try pane.wait("the storm's rows") { s in
            s.first == "kvm statistics - pid \(pid) (kvmscope)" && (Self.total(s, "kvm_pio") ?? 0) > 0
                && Self.rows(s).map(\.name).contains("kvm_userspace_exit(IO)")
        }
        let names = Self.rows(first).map(\.name)
        let parent = try #require(names.firstIndex(of: "kvm_userspace_exit"))
        #expect(names[parent + 1] == "kvm_userspace_exit(IO)")
        // The loss count is whatever a starved reader lost on a loaded machine; that it is shown is asserted.
        #expect(first[1].contains(/sort: CurAvg\/s  delay: 0\.5s  lost \d+$/))
        #expect(first[2].hasPrefix(" Event                                         Total %Total CurAvg/s      Avg      p99      Max  Rate 60s"))

        // f: kvm_stat's regex mask, then only matching events.
        try pane.keys("f")
        try pane.wait("the regex prompt") { $0.first == "Show statistics for events matching a regex." }
        try pane.type("kvm_pio")
        try pane.keys("Enter")
        try pane.wait("the filtered rows") { s in
            s[1].hasPrefix("                 regex filter: kvm_pio ") && Self.rows(s).map(\.name) == ["kvm_pio"]
        }
        try pane.keys("f")
        try pane.wait("the regex prompt") { $0.first == "Show statistics for events matching a regex." }
        try pane.keys("Enter")
        try pane.wait("the unfiltered rows") { s in
            !s[1].contains("regex filter") && Self.rows(s).map(\.name).contains("kvm_userspace_exit(IO)")
        }

        // p: 0 shows every VM (summary), a pid shows that VM again.
        try pane.keys("p")
        try pane.wait("the pid prompt") { $0.contains { $0.hasPrefix("Pid [0 or pid]:") } }
        try pane.type("0")
        try pane.keys("Enter")
        try pane.wait("the summary header") { $0.first == "kvm statistics - summary" }
        try pane.keys("p")
        try pane.wait("the pid prompt") { $0.contains { $0.hasPrefix("Pid [0 or pid]:") } }
        try pane.type("\(pid)")
        try pane.keys("Enter")
        try pane.wait("the pid header") { $0.first == "kvm statistics - pid \(pid) (kvmscope)" }

        // x: no child rows; x again brings them back.
        try pane.keys("x")
        try pane.wait("rows without children") { s in
            let n = Self.rows(s).map(\.name)
            return n.contains("kvm_userspace_exit") && !n.contains { $0.contains("(") }
        }
        try pane.keys("x")
        try pane.wait("the child rows again") { Self.rows($0).map(\.name).contains("kvm_userspace_exit(IO)") }

        // o: the sort label changes.
        try pane.keys("o")
        try pane.wait("sorting by Total") { $0[1].contains(/sort: Total  delay: 0\.5s  lost \d+$/) }

        // r: totals restart below what they had reached. First let kvm_pio count for 4 s at its current rate
        // (choosing a pid above restarted the counts): the first refresh after the reset is far below that.
        let counting = try pane.wait("kvm_pio counting for 4 s") { s in
            guard let t = Self.total(s, "kvm_pio"), let r = Self.curAvg(s, "kvm_pio"), r > 0 else { return false }
            return t >= 4 * r
        }
        let before = try #require(Self.total(counting, "kvm_pio"))
        try pane.keys("r")
        try pane.wait("kvm_pio's total counted from the reset, below \(before)") { s in
            guard let t = Self.total(s, "kvm_pio") else { return false }
            return t > 0 && t < before
        }

        // q: the shell prompt is back, the screen no longer shows the view, and the tty modes are restored.
        try pane.keys("q")
        try pane.wait("the shell prompt after q") { s in
            !s.contains { $0.contains("kvm statistics") } && s.contains { $0.hasPrefix("kvmscope-test$") }
        }
        try pane.type("stty -g > \(dir.path)/after; echo restored-$((6*7))")
        try pane.keys("Enter")
        try pane.wait("the shell answering") { $0.contains("restored-42") }
        let a = try String(contentsOf: dir.appendingPathComponent("before"), encoding: .utf8)
        let b = try String(contentsOf: dir.appendingPathComponent("after"), encoding: .utf8)
        #expect(!a.isEmpty)
        #expect(a == b)
    }

    /// SIGTERM ends the view and restores the terminal too.
    @Test func sigtermRestoresTheTerminal() throws {
        let name = "kvmscope-live-term-\(getpid())"
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent(name)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try Self.tmux(["new-session", "-d", "-s", name, "-x", "100", "-y", "30",
                       "env PS1='kvmscope-test$ ' TERM=xterm-256color bash --norc --noprofile"])
        defer { _ = try? Self.tmux(["kill-session", "-t", name], check: false) }
        let pane = Pane(name: name)
        try pane.wait("the shell prompt") { $0.contains { $0.hasPrefix("kvmscope-test$") } }
        try pane.type("stty -g > \(dir.path)/before; clear; \(CLI.binary) live -s 0.5 & echo $! > \(dir.path)/pid; fg")
        try pane.keys("Enter")
        try pane.wait("the live view") { $0.first == "kvm statistics - summary" }
        let pidText = try String(contentsOf: dir.appendingPathComponent("pid"), encoding: .utf8)
        let pid = try #require(Int32(pidText.trimmingCharacters(in: .whitespacesAndNewlines)))
        kill(pid, SIGTERM)
        try pane.wait("the shell prompt after SIGTERM") { s in
            !s.contains { $0.contains("kvm statistics") } && s.contains { $0.hasPrefix("kvmscope-test$") }
        }
        try pane.type("stty -g > \(dir.path)/after; echo restored-$((6*7))")
        try pane.keys("Enter")
        try pane.wait("the shell answering") { $0.contains("restored-42") }
        let a = try String(contentsOf: dir.appendingPathComponent("before"), encoding: .utf8)
        let b = try String(contentsOf: dir.appendingPathComponent("after"), encoding: .utf8)
        #expect(a == b)
    }

    /// At 80×24 the key bar still ends in "h help  q quit"; `--demo` with another VM running says why it
    /// started nothing.
    @Test func demoBesideAnotherVMAt80x24() throws {
        let storm = try Spawned(CLI.binary, ["storm", "--kind", "io", "--vcpus", "1", "--exits", "50000000", "--seconds", "60"],
                                stdinNull: true, quiet: true)
        defer { storm.stop() }
        let name = "kvmscope-live-demo-\(getpid())"
        try Self.tmux(["new-session", "-d", "-s", name, "-x", "80", "-y", "24",
                       "env PS1='kvmscope-test$ ' TERM=xterm-256color bash --norc --noprofile"])
        defer { _ = try? Self.tmux(["kill-session", "-t", name], check: false) }
        let pane = Pane(name: name)
        try pane.wait("the shell prompt") { $0.contains { $0.hasPrefix("kvmscope-test$") } }
        // The storm must hold /dev/kvm before the view looks for other VMs.
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline,
              !((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(storm.pid)/fd")) ?? []).contains(where: {
                  (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(storm.pid)/fd/\($0)")) == "/dev/kvm" }) {
            usleep(20_000)
        }
        try pane.type("clear; \(CLI.binary) live --demo -s 0.5")
        try pane.keys("Enter")
        let screen = try pane.wait("the view with its notice") { s in
            s.first == "kvm statistics - summary" && s.contains { $0.hasPrefix("--demo: no demo guest started: another VM was running at start (pid ") }
        }
        #expect(screen.count >= 24)
        #expect(screen[23] == "b guests  v vCPUs  f filter  p pid  g guest  x children  o sort  h help  q quit")
        try pane.keys("q")
        try pane.wait("the shell prompt after q") { s in
            !s.contains { $0.contains("kvm statistics") } && s.contains { $0.hasPrefix("kvmscope-test$") }
        }
    }

    /// Not a terminal: the log instead, with one line saying so.
    @Test func notATerminalFallsBackToTheLog() throws {
        let p = try Spawned(CLI.binary, ["live", "-s", "0.2", "--event", "kvm_pio"], stdinNull: true)
        defer { p.stop() }
        #expect(p.waitForStdout(timeout: 30) { $0.split(separator: "\n").count >= 2 }, "stdout: \(p.stdout)")
        p.signal(SIGINT)
        #expect(p.wait(timeout: 30) == 0)
        let lines = p.stdout.split(separator: "\n").map(String.init)
        #expect(p.stderr == "kvmscope: not a terminal: showing the log (kvmscope stat -l) instead of the full screen\n")
        #expect(lines.first == "timestamp                kvm_pio")
        #expect(lines.count >= 2)
        // A trace that cannot start is its one error line: no notice of a log that never comes.
        let bad = try CLI.run(["live", "--event", "bogus"])
        #expect(bad.status == 1)
        #expect(bad.stderr == "kvmscope: no event kvm:bogus on this kernel\n")
        #expect(bad.stdout == "")
    }
}
