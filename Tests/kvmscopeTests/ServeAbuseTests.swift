import Foundation
import Testing
import TestSupport

/// `serve` on an open port, abused: oversized request heads, slowloris and idle connections by the hundred.
/// It refuses what is too big, drops what is too slow, and a new client's scrape still answers.
@Suite(.serialized, .enabled(if: KVMTest.canRun, "needs root and tracefs"))
struct ServeAbuseTests {
    /// A blocking TCP client socket on loopback with `timeout` s send and receive timeouts, or nil.
    static func connect(_ port: UInt16, timeout: Int = 5) -> Int32? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        var t = timeval(tv_sec: timeout, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &t, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &t, socklen_t(MemoryLayout<timeval>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = port.bigEndian
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard r == 0 else {
            close(fd)
            return nil
        }
        return fd
    }

    /// Sends all of `bytes` (false on an error, e.g. the server closed and reset).
    @discardableResult
    static func send(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + done, $0.count - done, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { return false }
            done += n
        }
        return true
    }

    /// Everything the server sends until it closes (or the receive timeout).
    static func receiveAll(_ fd: Int32) -> String {
        var out = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            out += buffer[0..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func openFiles(_ pid: Int32) -> Int {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []).count
    }

    static func serve(_ extra: [String] = []) throws -> (Spawned, UInt16) {
        let port = freeLoopbackPort()
        let serve = try Spawned(CLI.binary, ["serve", "--listen", "127.0.0.1:\(port)", "--event", "kvm_pio"] + extra)
        #expect(serve.waitForStderr("kvmscope: serving http://127.0.0.1:\(port)/metrics"), "serve: \(serve.stderr)")
        return (serve, port)
    }

    /// A 100 KB header: 431 at once (a deadline of 1 s), the connection closed, the server unharmed.
    @Test func oversizedHeaderIsRefusedAtOnce() throws {
        let (serve, port) = try Self.serve()
        defer { serve.stop() }
        let fd = try #require(Self.connect(port))
        defer { close(fd) }
        let start = Date()
        let request = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + String(repeating: "a", count: 100_000) + "\r\n\r\n"
        Self.send(fd, Array(request.utf8))  // the server may close before taking it all
        let response = Self.receiveAll(fd)
        let took = Date().timeIntervalSince(start)
        #expect(response == "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain; charset=utf-8\r\n"
                + "Content-Length: 46\r\nConnection: close\r\n\r\nrequest header fields larger than 16384 bytes\n")
        #expect(took < 1, "431 after \(took) s")
        // Just under the limit is served.
        let fits = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nX-Padding: " + String(repeating: "a", count: 16_000) + "\r\n\r\n"
        let ok = try #require(Self.connect(port))
        defer { close(ok) }
        #expect(Self.send(ok, Array(fits.utf8)))
        #expect(Self.receiveAll(ok).hasSuffix("\r\n\r\nok\n"))
        #expect(httpGet("http://127.0.0.1:\(port)/healthz")?.body == "ok\n")
        // An absolute-form target (what a client sends through a proxy; RFC 9112 §3.2.2: a server must take it).
        let absolute = try #require(Self.connect(port))
        defer { close(absolute) }
        #expect(Self.send(absolute, Array("GET http://127.0.0.1:\(port)/healthz?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".utf8)))
        let answer = Self.receiveAll(absolute)
        #expect(answer.hasPrefix("HTTP/1.1 200 ") && answer.hasSuffix("\r\n\r\nok\n"), "\(answer)")
    }

    /// 200 idle connections and 200 that send half a request head: a new client's scrape answers within a
    /// deadline of 1 s; when they close, the server holds no more descriptors than before.
    @Test func slowlorisDoesNotBlockAScrape() throws {
        let (serve, port) = try Self.serve()
        defer { serve.stop() }
        #expect(httpGet("http://127.0.0.1:\(port)/metrics")?.status == 200)
        usleep(200_000)
        let before = Self.openFiles(serve.pid)
        var held: [Int32] = []
        defer { held.forEach { close($0) } }
        for i in 0..<400 {
            guard let fd = Self.connect(port) else {
                Issue.record("connection \(i) refused")
                break
            }
            if i % 2 == 1 { Self.send(fd, Array("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".utf8)) }
            held.append(fd)
        }
        #expect(held.count == 400)
        let start = Date()
        let scrape = httpGet("http://127.0.0.1:\(port)/metrics")
        let took = Date().timeIntervalSince(start)
        #expect(scrape?.status == 200)
        #expect(scrape?.body.contains("kvmscope_build_info{version=") == true)
        #expect(took < 1, "the scrape took \(took) s beside 400 idle connections")
        #expect(Self.openFiles(serve.pid) >= before + 400, "the server did not hold the idle connections")
        held.forEach { close($0) }
        held = []
        let deadline = Date().addingTimeInterval(5)
        while Self.openFiles(serve.pid) > before && Date() < deadline { usleep(20_000) }
        #expect(Self.openFiles(serve.pid) == before, "descriptors: \(before) before, \(Self.openFiles(serve.pid)) after")
    }

    /// An unfinished request head is answered 408 and closed at --request-timeout; an idle connection is
    /// closed at --idle-timeout; keep-alive serves several requests on one connection before that.
    @Test func unfinishedAndIdleConnectionsTimeOut() throws {
        let (serve, port) = try Self.serve(["--request-timeout", "1", "--idle-timeout", "2"])
        defer { serve.stop() }
        let slow = try #require(Self.connect(port))
        defer { close(slow) }
        let start = Date()
        #expect(Self.send(slow, Array("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n".utf8)))
        let response = Self.receiveAll(slow)
        let took = Date().timeIntervalSince(start)
        #expect(response == "HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 37\r\n"
                + "Connection: close\r\n\r\nrequest head not complete within 1 s\n", "\(response)")
        #expect(took >= 0.9 && took < 3, "408 after \(took) s")

        let idle = try #require(Self.connect(port))
        defer { close(idle) }
        let get = Array("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".utf8)
        let answer = "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 3\r\n\r\nok\n"
        var buffer = [UInt8](repeating: 0, count: 4096)
        for _ in 0..<3 {
            #expect(Self.send(idle, get))
            let n = buffer.withUnsafeMutableBytes { recv(idle, $0.baseAddress, $0.count, 0) }
            #expect(String(decoding: buffer[0..<max(0, n)], as: UTF8.self) == answer)
        }
        let idleStart = Date()
        #expect(Self.receiveAll(idle) == "", "an idle connection is closed without a word")
        let idleTook = Date().timeIntervalSince(idleStart)
        #expect(idleTook >= 1.9 && idleTook < 4, "idle connection closed after \(idleTook) s")
    }
}
