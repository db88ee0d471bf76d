#if canImport(Glibc)
import Glibc
#endif
import Foundation
import FlyingSocks
import FuzzSupport
import KVMAnalysis
import KVMExits
import KVMScopeViews
import KVMServe

// Request bytes → `serve`'s HTTP path: KVMServe's MetricsServer, the very server `kvmscope serve` runs (request
// line and head scanned as they arrive, the 16 KiB head limit, keep-alive, HEAD, routes, Accept negotiation),
// with a metrics source that renders the exposition of an empty summary. Each input is written to a fresh
// connection on a Unix socket (kvmscope-fuzz-http-PID.sock), the write side shut; every answer (or the close)
// must come within 10 s and start with a status line, and the server must still answer the next connection.

/// The exposition of an empty aggregate, as serve renders it.
final class EmptyMetrics: MetricsSource {
    let summary = try! Summary(AggregateSnapshot(catalog: EventCatalog(), timestamp: 0))
    func render(_ format: ExpositionFormat) throws -> [UInt8] {
        PrometheusExposition.renderUTF8(summary, format: format, extras: ExpositionExtras(version: "fuzz"))
    }
}

/// In KVMSCOPE_FUZZ_SOCKET_DIR (`make fuzz`: .build/fuzz) or /tmp; removed at a normal exit only (libFuzzer
/// ends a run that found something with _exit).
let socketPath = "\(ProcessInfo.processInfo.environment["KVMSCOPE_FUZZ_SOCKET_DIR"] ?? "/tmp")/kvmscope-fuzz-http-\(getpid()).sock"

/// Started on first use: the server on its own thread, then a wait (≤ 10 s) until it accepts.
let serverStarted: Bool = {
    unlink(socketPath)
    atexit { unlink(socketPath) }
    do {
        let server = try MetricsServer(address: .unix(path: socketPath), source: EmptyMetrics(), version: "fuzz",
                                       headSeconds: 5, idleSeconds: 5)
        server.start()
    } catch {
        Fuzz.fail("the HTTP server cannot listen on \(socketPath): \(error)")
    }
    let deadline = Date().addingTimeInterval(10)
    while Date() < deadline {
        let fd = connectToServer()
        if fd >= 0 {
            close(fd)
            return true
        }
        usleep(10_000)
    }
    Fuzz.fail("the HTTP server did not listen within 10 s")
}()

func connectToServer() -> Int32 {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { Fuzz.fail("socket: \(String(cString: strerror(errno)))") }
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &addr.sun_path) { p in
        for (i, b) in socketPath.utf8.enumerated() { p[i] = b }
    }
    let len = socklen_t(MemoryLayout<sockaddr_un>.size)
    let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, len) } }
    if rc != 0 {
        close(fd)
        return -1
    }
    var tv = timeval(tv_sec: 10, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    return fd
}

nonisolated(unsafe) var connections = 0
nonisolated(unsafe) var lostConnections = 0

/// Sends the bytes, shuts the write side and reads the whole answer. nil when nothing came within 10 s.
func exchange(_ data: UnsafePointer<UInt8>, _ size: Int) -> [UInt8]? {
    connections += 1
    let fd = connectToServer()
    guard fd >= 0 else { Fuzz.fail("the server stopped accepting: \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    var sent = 0
    while sent < size {
        let n = send(fd, data + sent, size - sent, Int32(MSG_NOSIGNAL))
        if n <= 0 { break }  // the server may close early on a bad request
        sent += n
    }
    shutdown(fd, Int32(SHUT_WR))
    var answer: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = recv(fd, &buf, buf.count, 0)
        if n > 0 {
            answer += buf[0..<n]
        } else if n == 0 || errno == ECONNRESET {
            return answer
        } else {
            return nil
        }
    }
}

Fuzz.run { data, size in
    _ = serverStarted
    let start = Date()
    guard let answer = exchange(data, size) else {
        // A connection left unanswered. Is the server still serving others? Then it is one lost connection
        // (noted), else the server hangs (a failure).
        let probe = Array("GET /healthz HTTP/1.1\r\n\r\n".utf8)
        guard let ok = probe.withUnsafeBufferPointer({ exchange($0.baseAddress!, $0.count) }), ok.starts(with: Array("HTTP/1.1 200".utf8)) else {
            Fuzz.fail("no answer and no close within 10 s, and the server answers no one any more")
        }
        lostConnections += 1
        Fuzz.note("connection \(connections) unanswered for 10 s while the server answers others (\(lostConnections) so far)")
        return
    }
    let took = Date().timeIntervalSince(start)
    if took > 1 { Fuzz.note("slow exchange: \(Int(took * 1000)) ms") }
    if !answer.isEmpty && !answer.starts(with: Array("HTTP/".utf8)) {
        Fuzz.fail("the answer does not start with a status line: \(String(decoding: answer.prefix(80), as: UTF8.self))")
    }
}
