import Foundation
import Testing

/// Runs the real kvmscope binary, as users do.
enum CLI {
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    /// `KVMSCOPE_BIN` (set by `make test`), else the debug build of this package.
    static var binary: String {
        ProcessInfo.processInfo.environment["KVMSCOPE_BIN"]
            ?? packageRoot.appendingPathComponent(".build/debug/kvmscope").path
    }

    struct Result {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    /// Runs kvmscope with arguments; waits at most `timeout` seconds (then kills it and records a failure).
    @discardableResult
    static func run(_ args: [String], timeout: Double = 120, environment: [String: String] = [:]) throws -> Result {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = args
        var env = ProcessInfo.processInfo.environment
        env["SWIFT_BACKTRACE"] = "enable=no"
        for (k, v) in environment { env[k] = v }
        p.environment = env
        let out = Pipe()
        let err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        // Read both pipes concurrently so a full pipe never blocks the child.
        let outData = Locked(Data())
        let errData = Locked(Data())
        let group = DispatchGroup()
        for (pipe, sink) in [(out, outData), (err, errData)] {
            group.enter()
            DispatchQueue.global().async {
                sink.set(pipe.fileHandleForReading.readDataToEndOfFile())
                group.leave()
            }
        }
        if group.wait(timeout: .now() + timeout) == .timedOut {
            p.terminate()
            Issue.record("kvmscope \(args.joined(separator: " ")) timed out after \(timeout) s")
            group.wait()
        }
        p.waitUntilExit()
        return Result(status: p.terminationStatus, stdout: String(decoding: outData.get(), as: UTF8.self),
                      stderr: String(decoding: errData.get(), as: UTF8.self))
    }

    /// Parses a JSON document printed by kvmscope (the last JSON object in the output).
    static func json(_ text: String) throws -> [String: Any] {
        guard let start = text.range(of: "\n{\n")?.lowerBound ?? (text.hasPrefix("{") ? text.startIndex : nil) else {
            throw CLIError.noJSON(text)
        }
        let data = Data(text[start...].utf8)
        guard let obj = try JSONSerialization.jsonObject(with: data) as? [String: Any] else { throw CLIError.noJSON(text) }
        return obj
    }

    enum CLIError: Error { case noJSON(String) }
}

final class Locked<T>: @unchecked Sendable {
    private var value: T
    private let lock = NSLock()
    init(_ v: T) { value = v }
    func get() -> T { lock.withLock { value } }
    func set(_ v: T) { lock.withLock { value = v } }
}

/// Whether tests that need root, /dev/kvm and tracefs can run. With KVMSCOPE_REQUIRE_KVM=1 (CI) they
/// always run, so a missing capability fails them instead of skipping them.
enum KVMTest {
    static var required: Bool { ProcessInfo.processInfo.environment["KVMSCOPE_REQUIRE_KVM"] == "1" }
    static var available: Bool {
        geteuid() == 0 && FileManager.default.fileExists(atPath: "/dev/kvm")
    }
    static var canRun: Bool { available || required }
}
