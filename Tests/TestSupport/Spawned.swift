import Foundation
import Testing

/// A process of a test: its output collected as it comes, every wait bounded, killed with its whole
/// process group and reaped by `stop()` or `wait()`.
///
/// Nothing here waits without a deadline, and nothing runs on Swift concurrency's pool: on a 2-core machine
/// that pool has two threads, and a test blocked on one must never be what the other is waiting for.
public final class Spawned: @unchecked Sendable {
    public let process = Process()
    private let stdinPipe: Pipe?
    private let out = Locked(Data())
    private let err = Locked(Data())
    private let drained = DispatchGroup()

    /// Starts `executable`. Its stdin is a pipe (`release()`, `send`), or /dev/null with `stdinNull`; its
    /// stdout and stderr are collected, unless `quiet` sends them to /dev/null.
    public init(_ executable: String, _ args: [String], stdinNull: Bool = false, quiet: Bool = false,
                environment: [String: String] = [:], inheritEnvironment: Bool = true) throws {
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = args
        var env = inheritEnvironment ? ProcessInfo.processInfo.environment : [:]
        env["SWIFT_BACKTRACE"] = "enable=no"
        for (k, v) in environment { env[k] = v }
        process.environment = env
        stdinPipe = stdinNull ? nil : Pipe()
        process.standardInput = stdinPipe ?? FileHandle.nullDevice
        var pipes: [(Pipe, Locked<Data>)] = []
        if quiet {
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
        } else {
            let o = Pipe(), e = Pipe()
            process.standardOutput = o
            process.standardError = e
            pipes = [(o, out), (e, err)]
        }
        // Foundation starts the child as the leader of its own process group: kill(-pid) reaches whatever
        // it started too.
        try process.run()
        for (pipe, sink) in pipes {
            drained.enter()
            Thread { [drained] in
                while true {
                    let chunk = pipe.fileHandleForReading.availableData
                    if chunk.isEmpty { break }
                    sink.update { $0.append(chunk) }
                }
                drained.leave()
            }.start()
        }
    }

    public var pid: Int32 { process.processIdentifier }
    public var stdout: String { String(decoding: out.get(), as: UTF8.self) }
    public var stderr: String { String(decoding: err.get(), as: UTF8.self) }
    public var isRunning: Bool { process.isRunning }
    private var what: String { ([process.executableURL?.lastPathComponent ?? "?"] + (process.arguments ?? [])).joined(separator: " ") }

    /// Waits until stderr contains `text` (or the process ends, or `timeout` s pass); true if it does.
    public func waitForStderr(_ text: String, timeout: Double = 60) -> Bool { waitFor(timeout: timeout) { $0.stderr.contains(text) } }

    /// Waits until stdout satisfies `condition` (or the process ends, or `timeout` s pass); true if it does.
    public func waitForStdout(timeout: Double = 60, _ condition: (String) -> Bool) -> Bool {
        waitFor(timeout: timeout) { condition($0.stdout) }
    }

    private func waitFor(timeout: Double, _ condition: (Spawned) -> Bool) -> Bool {
        let end = Date().addingTimeInterval(timeout)
        while Date() < end {
            if condition(self) { return true }
            if !process.isRunning { return condition(self) }
            usleep(20_000)
        }
        return false
    }

    /// Writes bytes to the process's stdin.
    public func send(_ data: Data) { stdinPipe?.fileHandleForWriting.write(data) }

    /// Closes the process's stdin (it reads end of file).
    public func closeStdin() { try? stdinPipe?.fileHandleForWriting.close() }

    /// Writes a line to the process's stdin (releases `sh -c 'read x; exec …'`).
    public func release() { send(Data("go\n".utf8)) }

    /// Sends a signal to the process alone.
    public func signal(_ sig: Int32) { if process.isRunning { kill(pid, sig) } }

    /// Waits for the process to end by itself (at most `timeout` s; then its group is killed and, when
    /// `recordTimeout`, an issue recorded). Returns its exit status (or 128 + the signal that ended it; a
    /// killed process gives 128 + SIGKILL).
    @discardableResult
    public func wait(timeout: Double = 120, recordTimeout: Bool = true) -> Int32 {
        if !reap(within: timeout) {
            if recordTimeout { Issue.record("\(what) did not end within \(timeout) s") }
            killGroup()
        }
        return finish()
    }

    /// SIGTERM, then SIGKILL to its process group after 10 s; reaps (idempotent).
    public func stop() {
        signal(SIGTERM)
        if !reap(within: 10) { killGroup() }
        _ = finish()
    }

    private func reap(within seconds: Double) -> Bool {
        let end = Date().addingTimeInterval(seconds)
        while process.isRunning && Date() < end { usleep(20_000) }
        return !process.isRunning
    }

    private func killGroup() {
        kill(-pid, SIGKILL)
        kill(pid, SIGKILL)
    }

    private func finish() -> Int32 {
        if !reap(within: 10) { Issue.record("\(what) survived SIGKILL for 10 s") }
        // Something it started may still hold the output pipes: its output so far is what there is.
        if drained.wait(timeout: .now() + 5) == .timedOut {
            kill(-pid, SIGKILL)
            _ = drained.wait(timeout: .now() + 5)
        }
        closeStdin()
        guard !process.isRunning else { return -1 }
        return process.terminationReason == .uncaughtSignal ? 128 + process.terminationStatus : process.terminationStatus
    }

    /// Runs a command to its end: stdin from `input` (or /dev/null), output collected, at most `timeout` s
    /// (then killed; an issue is recorded unless `recordTimeout` is false, for a caller that polls again).
    public static func run(_ executable: String, _ args: [String], input: Data? = nil, timeout: Double = 120,
                           recordTimeout: Bool = true,
                           environment: [String: String] = [:], inheritEnvironment: Bool = true)
        throws -> (status: Int32, stdout: String, stderr: String) {
        let p = try Spawned(executable, args, stdinNull: input == nil, environment: environment,
                            inheritEnvironment: inheritEnvironment)
        if let input {
            // A writer thread: a child that does not read must not block the test.
            Thread {
                p.send(input)
                p.closeStdin()
            }.start()
        }
        let status = p.wait(timeout: timeout, recordTimeout: recordTimeout)
        return (status, p.stdout, p.stderr)
    }
}

/// A TCP port on loopback nobody listens on now (the kernel's choice for port 0).
public func freeLoopbackPort() -> UInt16 {
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

/// The body of `http://127.0.0.1:PORT/metrics`, scraped every 0.25 s until `done` holds of it or `timeout`
/// seconds pass: the last body ("" when nothing answered).
public func scrapeMetrics(port: UInt16, timeout: Double = 30, until done: (String) -> Bool) -> String {
    let end = Date().addingTimeInterval(timeout)
    var body = ""
    repeat {
        body = httpGet("http://127.0.0.1:\(port)/metrics")?.body ?? ""
        if done(body) { break }
        usleep(250_000)
    } while Date() < end
    return body
}

/// GETs `http://127.0.0.1:PORT/...` (or `http://[::1]:PORT/...`) over a plain blocking socket with 10 s send and receive timeouts
/// (HTTP/1.1, `Connection: close`, plain or chunked body). Nil on any failure. URLSession is not used: its
/// completion never came in one run, and a test waiting for it waited forever.
public func httpGet(_ url: String, accept: String? = nil) -> (status: Int, body: String, contentType: String?)? {
    guard let r = httpRequest(url, headers: accept.map { [("Accept", $0)] } ?? []) else { return nil }
    return (r.status, String(decoding: r.body, as: UTF8.self), r.headers["content-type"])
}

/// A request as ``httpGet(_:accept:)`` makes it (`HEAD` or `GET`, these extra header lines), the response's
/// status, headers (lowercased names; a repeated one keeps its last value) and raw body bytes (de-chunked,
/// never decoded: a gzip body stays gzip). Nil on any failure.
public func httpRequest(_ url: String, method: String = "GET", headers extra: [(String, String)] = [])
    -> (status: Int, headers: [String: String], body: [UInt8])? {
    guard let u = URLComponents(string: url), u.scheme == "http", let port = u.port,
          let host = u.host.map({ $0.trimmingCharacters(in: CharacterSet(charactersIn: "[]")) }),
          host == "127.0.0.1" || host == "::1" else {
        Issue.record("httpGet takes http://127.0.0.1:PORT/… or http://[::1]:PORT/… URLs, not \(url)")
        return nil
    }
    let target = (u.percentEncodedPath.isEmpty ? "/" : u.percentEncodedPath)
        + (u.percentEncodedQuery.map { "?" + $0 } ?? "")
    let v6 = host == "::1"
    let fd = socket(v6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var timeout = timeval(tv_sec: 10, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    let connected: Int32
    if v6 {
        var addr = sockaddr_in6()
        addr.sin6_family = sa_family_t(AF_INET6)
        addr.sin6_addr = in6addr_loopback
        addr.sin6_port = UInt16(port).bigEndian
        connected = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
        }
    } else {
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = UInt16(port).bigEndian
        connected = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
    }
    guard connected == 0 else { return nil }
    let hostHeader = v6 ? "[::1]:\(port)" : "127.0.0.1:\(port)"
    var request = "\(method) \(target) HTTP/1.1\r\nHost: \(hostHeader)\r\nConnection: close\r\n"
    for (name, value) in extra { request += "\(name): \(value)\r\n" }
    request += "\r\n"
    let sent = request.utf8CString.withUnsafeBufferPointer { send(fd, $0.baseAddress, $0.count - 1, Int32(MSG_NOSIGNAL)) }
    guard sent == request.utf8.count else { return nil }
    var response = [UInt8]()
    var buffer = [UInt8](repeating: 0, count: 65_536)
    while true {
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n == 0 { break }
        guard n > 0 else { return nil }  // a timeout or a reset
        response += buffer[0..<n]
    }
    return HTTPResponse.parseRaw(response)
}

public enum HTTPResponse {
    /// Status, body (de-chunked) and Content-Type of a whole HTTP/1.1 response.
    public static func parse(_ bytes: [UInt8]) -> (status: Int, body: String, contentType: String?)? {
        parseRaw(bytes).map { ($0.status, String(decoding: $0.body, as: UTF8.self), $0.headers["content-type"]) }
    }

    /// Status, headers (lowercased names) and body bytes (de-chunked) of a whole HTTP/1.1 response.
    public static func parseRaw(_ bytes: [UInt8]) -> (status: Int, headers: [String: String], body: [UInt8])? {
        let crlf: [UInt8] = [13, 10]
        guard let headerEnd = bytes.firstRange(of: crlf + crlf)?.lowerBound else { return nil }
        let head = String(decoding: bytes[0..<headerEnd], as: UTF8.self).components(separatedBy: "\r\n")
        let statusParts = head[0].split(separator: " ")
        guard statusParts.count >= 2, let status = Int(statusParts[1]) else { return nil }
        var headers: [String: String] = [:]
        for line in head.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        var body = Array(bytes[(headerEnd + 4)...])
        if headers["transfer-encoding"]?.lowercased() == "chunked" {
            var plain: [UInt8] = []
            var i = 0
            while i < body.count, let lineEnd = body[i...].firstRange(of: crlf)?.lowerBound,
                  let sizeText = String(decoding: body[i..<lineEnd], as: UTF8.self).split(separator: ";").first,
                  let size = Int(sizeText.trimmingCharacters(in: .whitespaces), radix: 16),
                  size > 0, lineEnd + 2 + size <= body.count {
                plain += body[(lineEnd + 2)..<(lineEnd + 2 + size)]
                i = lineEnd + 2 + size + 2
            }
            body = plain
        }
        return (status, headers, body)
    }
}
