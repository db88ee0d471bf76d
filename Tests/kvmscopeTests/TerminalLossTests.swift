import Foundation
import Testing
import TestSupport

/// The live view in a real terminal (tmux, on a private server socket so that killing the server touches
/// nobody else) that goes away: the server SIGKILLed, the pane closed, SIGHUP, SIGINT, SIGTERM, Ctrl-C and
/// q, in every state of the view and in its log fallback. Each time the view ends promptly (about 0.1 s on
/// an idle machine; a deadline of 5 s for a loaded one), with status 0 and no crash, and its tracefs
/// instance is gone.
@Suite(.serialized, .enabled(if: KVMTest.canRun, "needs root, /dev/kvm, tracefs and tmux"))
struct TerminalLossTests {
    /// What the view shows when the terminal goes.
    enum State: String, CaseIterable, CustomTestStringConvertible {
        case events, prompt, help, guestDead, logFallback
        var testDescription: String { rawValue }
    }

    /// How the terminal goes.
    enum Loss: String, CaseIterable, CustomTestStringConvertible {
        /// `kill -9` of the tmux server: the pty's master closes, nobody sends a signal.
        case serverKilled
        /// `tmux kill-pane`.
        case paneClosed
        case sighup, sigint, sigterm
        var testDescription: String { rawValue }
    }

    /// One view in one tmux server: `sh` runs it (started by `setsid -w` for a view without a controlling
    /// terminal) and records its exit status; it traps SIGHUP and SIGINT to outlive the pane and Ctrl-C
    /// (a trap, unlike ignoring, leaves kvmscope the default dispositions).
    final class View {
        let socket: String
        let dir: URL
        let pane: String
        var guest: Spawned?

        init(state: State, setsid: Bool) throws {
            socket = "kvmscope-loss-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            dir = FileManager.default.temporaryDirectory.appendingPathComponent(socket)
            pane = "view"
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            // The log fallback: a pane smaller than the view's 60×12 minimum.
            let (w, h) = state == .logFallback ? (50, 10) : (120, 40)
            var args = ["live", "-s", "0.3"]
            // One narrow column: the log's lines fit the small pane.
            if state == .logFallback { args += ["--event", "kvm_pio"] }
            var guest: Spawned?
            if state == .guestDead {
                // A guest that ends soon: the view shows it DEAD. 5 s: the view must have started first (a loaded
                // clean-clone run started it after a 2 s guest had ended: `-p` of a gone pid is an error).
                guest = try Spawned("/bin/sleep", ["5"], stdinNull: true, quiet: true)
                args += ["-p", "\(guest!.pid)"]
            }
            // tmux runs the command with sh -c: the script's own $$ and $? are escaped from that shell.
            let script = "trap : HUP INT; echo \\$\\$ > \(dir.path)/sh; \(CLI.binary) \(args.joined(separator: " ")) 2> \(dir.path)/err; "
                + "echo \\$? > \(dir.path)/status"
            let command = (setsid ? "setsid -w " : "") + "sh -c \"\(script)\""
            try tmux(["new-session", "-d", "-s", pane, "-x", "\(w)", "-y", "\(h)", "env TERM=xterm-256color \(command)"])
            self.guest = guest
        }

        deinit {
            guest?.stop()
            _ = try? tmux(["kill-server"], check: false)
            if let pid = viewPid { kill(pid, SIGKILL) }
            try? FileManager.default.removeItem(at: dir)
            // A server killed with SIGKILL cannot remove its socket.
            let tmpdir = ProcessInfo.processInfo.environment["TMUX_TMPDIR"] ?? "/tmp"
            unlink("\(tmpdir)/tmux-\(getuid())/\(socket)")
        }

        @discardableResult
        func tmux(_ args: [String], check: Bool = true) throws -> String {
            try LiveTUITests.tmux(["-L", socket] + args, check: check)
        }

        func keys(_ keys: String...) throws { try tmux(["send-keys", "-t", pane] + keys) }
        func capture(timeout: Double = 30) throws -> [String]? {
            try LiveTUITests.capture(["-t", pane], prefix: ["-L", socket], timeout: timeout)
        }

        func file(_ name: String) -> String? { try? String(contentsOf: dir.appendingPathComponent(name), encoding: .utf8) }

        /// kvmscope's pid: the child of the recording `sh`.
        var viewPid: Int32? {
            guard let sh = file("sh").flatMap({ Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }),
                  let children = try? String(contentsOfFile: "/proc/\(sh)/task/\(sh)/children", encoding: .utf8)
            else { return nil }
            return children.split(separator: " ").first.flatMap { Int32($0) }
        }

        /// Polls until `condition` holds; records the last screen and throws when `timeout` s pass.
        @discardableResult
        func wait(_ what: String, timeout: Double = 30, _ condition: ([String]) -> Bool) throws -> [String] {
            try LiveTUITests.poll(what, timeout: timeout, interval: 0.05, capture: capture, condition)
        }

        /// Brings the view into `state` and returns kvmscope's pid once its instance exists.
        func enter(_ state: State) throws -> Int32 {
            switch state {
            case .logFallback:
                // Its first line may have scrolled away already (other tests' guests widen the log).
                try wait("the log") { _ in (self.file("err") ?? "").contains("showing the log") }
            case .events:
                try wait("the view") { $0.first == "kvm statistics - summary" }
            case .prompt:
                try wait("the view") { $0.first == "kvm statistics - summary" }
                try keys("f")
                try wait("the regex prompt") { $0.first == "Show statistics for events matching a regex." }
            case .help:
                try wait("the view") { $0.first == "kvm statistics - summary" }
                try keys("h")
                try wait("the help") { $0.first == "Interactive commands reference" }
            case .guestDead:
                try wait("the guest DEAD") { $0.contains { $0.hasPrefix("Guest is DEAD") } }
            }
            let deadline = Date().addingTimeInterval(10)
            while Date() < deadline {
                if let pid = viewPid, InstanceLifecycleTests.exists("kvmscope-\(pid)") { return pid }
                usleep(20_000)
            }
            Issue.record("the view's pid or instance never appeared")
            throw LiveTUITests.Timeout()
        }

        func lose(_ loss: Loss, pid: Int32) throws {
            switch loss {
            case .serverKilled:
                let server = try #require(Int32(try tmux(["display-message", "-p", "#{pid}"]).trimmingCharacters(in: .whitespacesAndNewlines)))
                kill(server, SIGKILL)
            case .paneClosed: try tmux(["kill-pane", "-t", pane])
            case .sighup: kill(pid, SIGHUP)
            case .sigint: kill(pid, SIGINT)
            case .sigterm: kill(pid, SIGTERM)
            }
        }

        /// Whether `pid` has ended (gone, or a zombie nobody reaped yet).
        static func ended(_ pid: Int32) -> Bool {
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { return true }
            return stat[stat.index(close, offsetBy: 2)] == "Z"
        }

        /// The view ends within `within` s of the loss, exits 0 and leaves no instance. On an idle machine it
        /// takes 0.08–0.1 s. Under strace on this host at a load average of 10, the terminal was restored and
        /// tracing off 1 ms after SIGTERM, but the kernel took 1.3 s to disable the instance's events (RCU grace
        /// periods) before it could be removed: the deadline of 5 s is for that, and still catches a view that
        /// spins or ignores the loss.
        func expectEnds(after loss: Loss, state: State, pid: Int32, within: Double = 5) throws {
            let start = Date()
            try lose(loss, pid: pid)
            while !Self.ended(pid) && Date().timeIntervalSince(start) < within { usleep(10_000) }
            let took = Date().timeIntervalSince(start)
            #expect(Self.ended(pid), "\(state) / \(loss): the view still runs \(took) s after the loss")
            if !Self.ended(pid) {
                kill(pid, SIGKILL)
                return
            }
            let deadline = Date().addingTimeInterval(10)
            // The shell creates the file before it writes the status: wait for the whole line.
            while file("status")?.hasSuffix("\n") != true && Date() < deadline { usleep(20_000) }
            #expect(file("status") == "0\n", "\(state) / \(loss): status \(file("status") ?? "none"), stderr: \(file("err") ?? "")")
            let err = file("err") ?? ""
            let expectedErr = state == .logFallback
                ? "kvmscope: terminal is 50x10, smaller than 60x12: showing the log (kvmscope stat -l) instead of the full screen\n" : ""
            #expect(err == expectedErr, "\(state) / \(loss)")
            #expect(!InstanceLifecycleTests.exists("kvmscope-\(pid)"), "\(state) / \(loss): instance left behind")
        }
    }

    @Test(arguments: State.allCases, Loss.allCases)
    func viewEndsWhenItsTerminalGoes(state: State, loss: Loss) throws {
        for setsid in loss == .serverKilled || loss == .paneClosed ? [true, false] : [false] {
            let view = try View(state: state, setsid: setsid)
            let pid = try view.enter(state)
            try view.expectEnds(after: loss, state: state, pid: pid)
        }
    }

    /// Ctrl-C and q end the log fallback as they end the full screen.
    @Test(arguments: ["C-c", "q"])
    func logFallbackEndsOnKey(key: String) throws {
        let view = try View(state: .logFallback, setsid: false)
        let pid = try view.enter(.logFallback)
        let start = Date()
        try view.keys(key)
        while !View.ended(pid) && Date().timeIntervalSince(start) < 5 { usleep(10_000) }
        #expect(View.ended(pid), "the log fallback still runs after \(key)")
        if !View.ended(pid) { kill(pid, SIGKILL) }
        let deadline = Date().addingTimeInterval(10)
        while view.file("status")?.hasSuffix("\n") != true && Date() < deadline { usleep(20_000) }
        #expect(view.file("status") == "0\n")
        #expect(!InstanceLifecycleTests.exists("kvmscope-\(pid)"))
    }
}
