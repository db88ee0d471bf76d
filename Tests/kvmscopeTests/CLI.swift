import Foundation
import Testing
import TestSupport

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

    /// Runs kvmscope with arguments, stdin /dev/null; waits at most `timeout` seconds (then kills it and
    /// records a failure).
    @discardableResult
    static func run(_ args: [String], timeout: Double = 120, environment: [String: String] = [:]) throws -> Result {
        let r = try Spawned.run(binary, args, timeout: timeout, environment: environment)
        return Result(status: r.status, stdout: r.stdout, stderr: r.stderr)
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

/// Whether tests that need root, /dev/kvm and tracefs can run. With KVMSCOPE_REQUIRE_KVM=1 (CI) they
/// always run, so a missing capability fails them instead of skipping them.
enum KVMTest {
    static var required: Bool { ProcessInfo.processInfo.environment["KVMSCOPE_REQUIRE_KVM"] == "1" }
    static var available: Bool {
        geteuid() == 0 && FileManager.default.fileExists(atPath: "/dev/kvm")
    }
    static var canRun: Bool { available || required }
}
