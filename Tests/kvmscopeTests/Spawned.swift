import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Testing

/// A background process of a live test: its output collected as it comes, killed and reaped by `stop()`.
final class Spawned: @unchecked Sendable {
    let process = Process()
    let stdin = Pipe()
    private let out = Locked(Data())
    private let err = Locked(Data())
    private let group = DispatchGroup()

    init(_ executable: String, _ args: [String]) throws {
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = args
        var env = ProcessInfo.processInfo.environment
        env["SWIFT_BACKTRACE"] = "enable=no"
        process.environment = env
        let o = Pipe(), e = Pipe()
        process.standardOutput = o
        process.standardError = e
        process.standardInput = stdin
        try process.run()
        for (pipe, sink) in [(o, out), (e, err)] {
            group.enter()
            DispatchQueue.global().async { [group] in
                while true {
                    let chunk = pipe.fileHandleForReading.availableData
                    if chunk.isEmpty { break }
                    sink.set(sink.get() + chunk)
                }
                group.leave()
            }
        }
    }

    var pid: Int32 { process.processIdentifier }
    var stdout: String { String(decoding: out.get(), as: UTF8.self) }
    var stderr: String { String(decoding: err.get(), as: UTF8.self) }

    /// Waits until stderr contains `text` (or the process ends, or `timeout` s pass); true if it does.
    func waitForStderr(_ text: String, timeout: Double = 60) -> Bool {
        let end = Date().addingTimeInterval(timeout)
        while Date() < end {
            if stderr.contains(text) { return true }
            if !process.isRunning { return stderr.contains(text) }
            usleep(20_000)
        }
        return false
    }

    /// Writes a line to the process's stdin (releases `sh -c 'read x; exec …'`).
    func release() { stdin.fileHandleForWriting.write(Data("go\n".utf8)) }

    /// Waits for the process to end by itself (at most `timeout` s, then it is killed and an issue recorded).
    @discardableResult
    func wait(timeout: Double = 120) -> Int32 {
        let end = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < end { usleep(20_000) }
        if process.isRunning {
            Issue.record("\(process.arguments ?? []) did not end within \(timeout) s")
            kill(pid, SIGKILL)
        }
        process.waitUntilExit()
        group.wait()
        return process.terminationStatus
    }

    /// SIGTERM, then reap (idempotent).
    func stop() {
        if process.isRunning { kill(pid, SIGTERM) }
        let end = Date().addingTimeInterval(10)
        while process.isRunning && Date() < end { usleep(20_000) }
        if process.isRunning { kill(pid, SIGKILL) }
        process.waitUntilExit()
        group.wait()
    }
}

/// A TCP port on loopback nobody listens on now (the kernel's choice for port 0).
func freeLoopbackPort() -> UInt16 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = 0
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) }
    }
    _ = withUnsafeMutablePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
    }
    return UInt16(bigEndian: addr.sin_port)
}

/// GETs a URL on loopback (nil on any failure).
func httpGet(_ url: String, accept: String? = nil) -> (status: Int, body: String, contentType: String?)? {
    var request = URLRequest(url: URL(string: url)!)
    request.timeoutInterval = 10
    if let accept { request.setValue(accept, forHTTPHeaderField: "Accept") }
    let result = Locked<(Int, String, String?)?>(nil)
    let done = DispatchSemaphore(value: 0)
    URLSession.shared.dataTask(with: request) { data, response, _ in
        if let http = response as? HTTPURLResponse {
            result.set((http.statusCode, String(decoding: data ?? Data(), as: UTF8.self),
                        http.value(forHTTPHeaderField: "Content-Type")))
        }
        done.signal()
    }.resume()
    done.wait()
    return result.get().map { (status: $0.0, body: $0.1, contentType: $0.2) }
}
