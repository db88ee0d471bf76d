import CKVMHost
import Foundation
import KVMExits
import SystemPackage

/// A child process started for measurement (a storm, a tracer, a peer tool) or for the demo, with what
/// Foundation's Process does not give: it dies with kvmscope (PR_SET_PDEATHSIG = SIGKILL, set between fork
/// and exec: start it from the main thread, whose end is the process's), the CPU time of the child and of
/// every descendant it waited for (wait4's rusage), and readings of its /proc files while it runs.
public final class ChildProcess {
    public let pid: pid_t
    public let argv: [String]
    /// Where the child's stdout and stderr went.
    public let stdoutPath: String
    public let stderrPath: String
    public private(set) var termination: Termination?

    /// How the child ended and what it (with its waited-for descendants) cost.
    public struct Termination: Sendable {
        /// Exit status, or 128 + signal.
        public var status: Int32
        public var userSeconds: Double
        public var systemSeconds: Double
        /// Peak resident set of the child or a descendant, KiB (ru_maxrss).
        public var maxRSSKB: Int
        public var cpuSeconds: Double { userSeconds + systemSeconds }
    }

    let ownsStdout: Bool
    let ownsStderr: Bool

    /// Starts argv[0] (searched in PATH) with stdout and stderr sent to temporary files, unless `stdoutTo` /
    /// `stderrTo` name a file (e.g. /dev/null) — or, with `inheritOutput`, with kvmscope's own standard input,
    /// output and error (the command the user put after `--`).
    /// `stdoutToStderr` (with `inheritOutput`): its standard output is kvmscope's standard error, as perf record
    /// does when its own output is stdout (`record -o -`: the trace stays the trace).
    /// - Throws: ``KVMScopeError/usage(_:)`` "cannot run NAME: REASON" (the system's words) when it cannot start.
    public init(_ argv: [String], stdoutTo: String? = nil, stderrTo: String? = nil, inheritOutput: Bool = false,
                stdoutToStderr: Bool = false, environment: [String: String]? = nil) throws {
        precondition(!argv.isEmpty)
        self.argv = argv
        let base = "\(NSTemporaryDirectory())kvmscope-child-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        stdoutPath = inheritOutput ? (stdoutToStderr ? "/dev/stderr" : "/dev/stdout") : stdoutTo ?? base + ".out"
        ownsStdout = !inheritOutput && stdoutTo == nil
        stderrPath = inheritOutput ? "/dev/stderr" : stderrTo ?? base + ".err"
        ownsStderr = !inheritOutput && stderrTo == nil
        guard let path = argv[0].contains("/") ? argv[0] : Self.which(argv[0]) else {
            throw KVMScopeError.usage("cannot run \(argv[0]): \(Errno(rawValue: ENOENT))")
        }
        let env = (environment ?? ProcessInfo.processInfo.environment).map { "\($0.key)=\($0.value)" }
        var cArgs = argv.map { strdup($0) } + [nil]
        var cEnv = env.map { strdup($0) } + [nil]
        defer {
            cArgs.forEach { free($0) }
            cEnv.forEach { free($0) }
        }
        var child: Int32 = 0
        var err = [CChar](repeating: 0, count: 512)
        let out = inheritOutput ? nil : stdoutPath
        let errPath = inheritOutput ? nil : stderrPath
        guard ckvmscope_spawn(path, &cArgs, &cEnv, nil, out, errPath, inheritOutput && stdoutToStderr ? 1 : 0, &child,
                              &err, err.count) == 0 else {
            throw KVMScopeError.usage("cannot run \(argv[0]): \(String(cMessage: err))")
        }
        pid = child
    }

    deinit {
        if termination == nil {
            kill(pid, SIGKILL)
            _ = try? wait()
        }
        if ownsStdout { unlink(stdoutPath) }
        if ownsStderr { unlink(stderrPath) }
    }

    public func signal(_ sig: Int32) { if termination == nil { kill(pid, sig) } }

    /// Waits for the child to end. Idempotent.
    @discardableResult
    public func wait() throws -> Termination {
        if let termination { return termination }
        var status: Int32 = 0
        var usage = rusage()
        while wait4(pid, &status, 0, &usage) < 0 {
            guard errno == EINTR else { throw KVMScopeError.io("wait for \(argv[0]): \(Errno(rawValue: errno))") }
        }
        let code: Int32 = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        let t = Termination(status: code,
                            userSeconds: Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6,
                            systemSeconds: Double(usage.ru_stime.tv_sec) + Double(usage.ru_stime.tv_usec) / 1e6,
                            maxRSSKB: usage.ru_maxrss)
        termination = t
        return t
    }

    /// Whether the child has ended (reaps it if so).
    public var isRunning: Bool {
        if termination != nil { return false }
        var status: Int32 = 0
        var usage = rusage()
        let r = wait4(pid, &status, WNOHANG, &usage)
        guard r == pid else { return r == 0 }
        let code: Int32 = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        termination = Termination(status: code,
                                  userSeconds: Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6,
                                  systemSeconds: Double(usage.ru_stime.tv_sec) + Double(usage.ru_stime.tv_usec) / 1e6,
                                  maxRSSKB: usage.ru_maxrss)
        return false
    }

    public var stdout: String { (try? String(contentsOfFile: stdoutPath, encoding: .utf8)) ?? "" }
    public var stderr: String { (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "" }

    /// CPU seconds (utime + stime) the running process has used so far, from /proc/<pid>/stat.
    public var cpuSecondsSoFar: Double? { Self.cpuSeconds(pid: pid) }

    /// A `Vm…:` line of /proc/<pid>/status in KiB (VmRSS, VmHWM), while the process runs.
    public func statusKB(_ key: String) -> Int? { Self.statusKB(pid: pid, key) }

    public static func cpuSeconds(pid: pid_t) -> Double? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")") else { return nil }
        // Fields after "(comm) ": state is field 3; utime and stime are fields 14 and 15.
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 13, let u = Double(fields[11]), let s = Double(fields[12]) else { return nil }
        return (u + s) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    public static func statusKB(pid: pid_t, _ key: String) -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix(key + ":") {
            // "VmHWM:\t   28376 kB"
            return Int(line.dropFirst(key.count + 1).split(whereSeparator: { $0 == " " || $0 == "\t" }).first ?? "")
        }
        return nil
    }

    /// The full path of a program in PATH, or nil.
    public static func which(_ name: String) -> String? {
        if name.contains("/") { return FileManager.default.isExecutableFile(atPath: name) ? name : nil }
        for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
            let p = "\(dir)/\(name)"
            if FileManager.default.isExecutableFile(atPath: p) { return p }
        }
        return nil
    }
}
