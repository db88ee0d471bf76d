import FlyingSocks
import Foundation
import KVMScopeViews
import Synchronization

/// `serve`'s HTTP/1.1 server: GET and HEAD of /metrics (gzip-compressed when the request's `Accept-Encoding`
/// allows it: ``ContentCoding``), /healthz and /, keep-alive, on one thread that
/// polls every connection — with the limits an exporter on an open port needs, which FlyingFox 0.27.1's
/// HTTPServer does not have (its request headers are parsed without a size limit, in time quadratic in
/// their length, and its `timeout` covers only the handler: an idle or unfinished request holds its
/// connection for ever; its connection type is internal, so no reader in front can hand it a checked one):
///
/// - a request head (request line and headers) of at most ``maxHeadBytes``, scanned once as it arrives;
///   a longer one is answered 431 Request Header Fields Too Large and the connection closed;
/// - a request head must be complete `headSeconds` after its first byte (else 408 and close), a
///   keep-alive connection without a request is closed after `idleSeconds`, a response not taken by the
///   client within ``writeSeconds`` is dropped;
/// - at most ``maxConnections`` connections: the longest-waiting idle or unfinished one makes room for a
///   new client, so a flood of idle connections never locks a scraper out.
///
/// Sockets and addresses come from FlyingSocks; a scrape renders on this thread (its cost depends on the
/// number of series, not on the event rate).
/// What `/metrics` shows: the exposition of the current aggregate in the negotiated format.
public protocol MetricsSource: AnyObject, Sendable {
    /// The whole exposition text, UTF-8 (sent as it is: no String is made of it). Throws when it cannot be
    /// built (answered 500 with the error's one line).
    func render(_ format: ExpositionFormat) throws -> [UInt8]
}

public final class MetricsServer: @unchecked Sendable {
    public static let maxHeadBytes = 16 * 1024
    static let writeSeconds = 10.0
    /// After a response that closes the connection, unread request bytes are discarded for this long
    /// (at most ``drainBytes``) before the close, so that the client reads the response instead of a reset.
    static let drainSeconds = 2.0
    static let drainBytes = 1 << 20

    let state: any MetricsSource
    /// Shown by `/`.
    let version: String
    let headSeconds: Double
    let idleSeconds: Double
    let listener: Socket
    let maxConnections: Int
    private let stopping = Atomic<Bool>(false)
    private let finished = DispatchSemaphore(value: 0)
    /// A pipe whose read end is in the loop's poll set: ``stop()`` writes to it, so the loop waits without a
    /// timeout while nothing is due (an idle server wakes for nothing).
    private let wakeRead: Int32
    private let wakeWrite: Int32

    /// Binds and listens on `address` (throws FlyingSocks' SocketError: "Address already in use").
    /// - Parameters:
    ///   - source: renders `/metrics`.
    ///   - version: shown by `/`.
    ///   - headSeconds: a request head must be complete this long after its first byte (else 408).
    ///   - idleSeconds: a keep-alive connection without a request is closed after this long.
    public init(address: some SocketAddress, source: any MetricsSource, version: String, headSeconds: Double = 10,
                idleSeconds: Double = 30) throws {
        self.state = source
        self.version = version
        self.headSeconds = headSeconds
        self.idleSeconds = idleSeconds
        listener = try Socket(domain: Int32(address.family), type: .stream)
        do {
            try listener.setValue(true, for: .localAddressReuse)
            if Int32(address.family) == AF_INET6 {
                // IPv4 too on [::], whatever net.ipv6.bindv6only says (Go's exporters do the same).
                var no: Int32 = 0
                guard setsockopt(listener.file.rawValue, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &no, socklen_t(MemoryLayout<Int32>.size)) == 0 else {
                    let e = errno
                    throw SocketError.failed(type: "setsockopt", errno: e, message: String(cString: strerror(e)))
                }
            }
            try listener.bind(to: address)
            try listener.listen()
        } catch {
            try? listener.close()
            throw error
        }
        _ = fcntl(listener.file.rawValue, F_SETFL, fcntl(listener.file.rawValue, F_GETFL) | O_NONBLOCK)
        // Room for many scrapers and idle connections: the soft descriptor limit up to the hard one.
        var limit = rlimit()
        let files = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
        getrlimit(files, &limit)
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max
            setrlimit(files, &limit)
            getrlimit(files, &limit)
        }
        maxConnections = max(16, min(4096, Int(limit.rlim_cur) - 128))
        var ends: [Int32] = [-1, -1]
        guard pipe(&ends) == 0 else {
            let e = errno
            try? listener.close()
            throw SocketError.failed(type: "pipe2", errno: e, message: String(cString: strerror(e)))
        }
        for fd in ends {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        wakeRead = ends[0]
        wakeWrite = ends[1]
    }

    deinit {
        close(wakeRead)
        close(wakeWrite)
    }

    /// Serves on a thread of its own until ``stop()``.
    public func start() {
        let thread = Thread { [self] in
            var loop = Loop(server: self)
            loop.run()
            finished.signal()
        }
        thread.name = "kvmscope-http"
        thread.start()
    }

    /// Stops serving, closes every connection and the listener, and waits for the thread (at most 5 s).
    public func stop() {
        stopping.store(true, ordering: .relaxed)
        var byte: UInt8 = 1
        _ = write(wakeWrite, &byte, 1)
        _ = finished.wait(timeout: .now() + 5)
    }

    var isStopping: Bool { stopping.load(ordering: .relaxed) }

    /// Seconds on the monotonic clock.
    static func now() -> Double {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
    }

    struct Connection {
        enum Phase { case idle, head, writing, draining }
        let fd: Int32
        var phase = Phase.idle
        /// Bytes of requests not handled yet (the head being read, and pipelined requests after it).
        var input: [UInt8] = []
        /// How far `input` was searched for the end of the head.
        var scanned = 0
        var output: [UInt8] = []
        var written = 0
        var closeAfterWrite = false
        var drained = 0
        /// When the current phase times out.
        var deadline: Double
        /// When the connection started waiting (eviction picks the oldest).
        var since: Double
    }

    /// The poll loop; owned by the server thread alone.
    struct Loop {
        let server: MetricsServer
        var connections: [Int32: Connection] = [:]
        var scratch = [UInt8](repeating: 0, count: 16 * 1024)
        var acceptPausedUntil = 0.0

        init(server: MetricsServer) { self.server = server }

        mutating func run() {
            let listenFD = server.listener.file.rawValue
            var fds: [pollfd] = []
            while !server.isStopping {
                let now = MetricsServer.now()
                fds.removeAll(keepingCapacity: true)
                let accepting = now >= acceptPausedUntil
                fds.append(pollfd(fd: accepting ? listenFD : -1, events: Int16(POLLIN), revents: 0))
                // Woken by a connection, a deadline or stop() (the wake pipe, not serviced as a connection).
                fds.append(pollfd(fd: server.wakeRead, events: Int16(POLLIN), revents: 0))
                var nextDeadline = accepting ? Double.infinity : acceptPausedUntil
                for c in connections.values {
                    let events = c.phase == .writing ? POLLOUT : POLLIN
                    fds.append(pollfd(fd: c.fd, events: Int16(events), revents: 0))
                    nextDeadline = min(nextDeadline, c.deadline)
                }
                let wait = nextDeadline == .infinity ? -1
                    : Int32(max(0, min(60_000, ((nextDeadline - now) * 1000).rounded(.up))))
                let ready = poll(&fds, nfds_t(fds.count), wait)
                if ready < 0 && errno != EINTR { break }
                if ready > 0 {
                    if fds[0].revents & Int16(POLLIN) != 0 { acceptAll() }
                    for p in fds.dropFirst() where p.revents != 0 {
                        service(p.fd, writable: p.revents & Int16(POLLOUT) != 0)
                    }
                }
                expire(MetricsServer.now())
            }
            for fd in connections.keys { close(fd) }
            connections.removeAll()
            try? server.listener.close()
        }

        mutating func acceptAll() {
            while true {
                let fd = accept(server.listener.file.rawValue, nil, nil)
                if fd < 0 {
                    if errno == EINTR { continue }
                    if errno == EMFILE || errno == ENFILE {
                        // Out of descriptors: make room, and look again shortly rather than spin.
                        if !evictOldest() { acceptPausedUntil = MetricsServer.now() + 0.1 }
                        return
                    }
                    return  // EAGAIN, or an error of that one connection (ECONNABORTED)
                }
                _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
                _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
                if connections.count >= server.maxConnections { _ = evictOldest() }
                let now = MetricsServer.now()
                connections[fd] = Connection(fd: fd, deadline: now + server.idleSeconds, since: now)
            }
        }

        /// Closes the idle or unfinished connection that has waited longest. False when there is none.
        mutating func evictOldest() -> Bool {
            guard let oldest = connections.values.filter({ $0.phase == .idle || $0.phase == .head })
                .min(by: { $0.since < $1.since }) else { return false }
            drop(oldest.fd)
            return true
        }

        mutating func drop(_ fd: Int32) {
            connections[fd] = nil
            close(fd)
        }

        mutating func service(_ fd: Int32, writable: Bool) {
            guard var c = connections[fd] else { return }
            if c.phase == .writing {
                flush(&c)
            } else {
                // While a head is read, never more than the limit (plus its terminator) is held.
                let room = c.phase == .draining ? scratch.count
                    : min(scratch.count, MetricsServer.maxHeadBytes + 4 - c.input.count)
                let n = room <= 0 ? 0 : scratch.withUnsafeMutableBytes { recv(fd, $0.baseAddress, room, 0) }
                if n < 0 && (errno == EAGAIN || errno == EINTR) { return }
                if n <= 0 {
                    drop(fd)  // end of file, or a reset
                    return
                }
                if c.phase == .draining {
                    c.drained += n
                    if c.drained > MetricsServer.drainBytes {
                        drop(fd)
                        return
                    }
                } else {
                    if c.phase == .idle {
                        let now = MetricsServer.now()
                        c.phase = .head
                        c.deadline = now + server.headSeconds
                        c.since = now
                    }
                    c.input.append(contentsOf: scratch[0..<n])
                    handleInput(&c)
                }
            }
            if c.phase == .writing && c.written == c.output.count { finishWrite(&c) }
            if connections[fd] != nil { connections[fd] = c }
        }

        /// Finds the end of the request head in the bytes read so far (each byte is looked at once).
        mutating func handleInput(_ c: inout Connection) {
            guard c.phase == .head || (c.phase == .idle && !c.input.isEmpty) else { return }
            var end: Int?
            var i = max(0, c.scanned - 3)
            while i < c.input.count {
                if c.input[i] == 10 {  // "\n\n" or "\n\r\n"
                    if i + 1 < c.input.count && c.input[i + 1] == 10 { end = i + 2; break }
                    if i + 2 < c.input.count && c.input[i + 1] == 13 && c.input[i + 2] == 10 { end = i + 3; break }
                }
                i += 1
            }
            if let end, end <= MetricsServer.maxHeadBytes {
                let head = Array(c.input[0..<end])
                c.input.removeFirst(end)
                c.scanned = 0
                respond(&c, to: head)
            } else if end != nil || c.input.count >= MetricsServer.maxHeadBytes {
                c.input.removeAll()
                reply(&c, Response(status: 431, body: "request header fields larger than \(MetricsServer.maxHeadBytes) bytes\n"), close: true)
            } else {
                c.scanned = c.input.count
            }
        }

        struct Response {
            var status: Int
            var contentType = "text/plain; charset=utf-8"
            /// UTF-8.
            var body: [UInt8]
            var extraHeaders = ""

            init(status: Int, contentType: String = "text/plain; charset=utf-8", body: String, extraHeaders: String = "") {
                self.init(status: status, contentType: contentType, bytes: Array(body.utf8), extraHeaders: extraHeaders)
            }

            init(status: Int, contentType: String = "text/plain; charset=utf-8", bytes: [UInt8], extraHeaders: String = "") {
                self.status = status
                self.contentType = contentType
                self.body = bytes
                self.extraHeaders = extraHeaders
            }
        }

        /// The path of a request target without its query: origin-form (`/metrics?x`), or absolute-form
        /// (`http://host:9477/metrics`, which a server must accept, RFC 9112 §3.2.2: what a client sends through
        /// a proxy) with its scheme and authority dropped.
        static func path(of target: Substring) -> String {
            var t = target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
            if let scheme = t.range(of: "://"), t[..<scheme.lowerBound].lowercased() == "http" || t[..<scheme.lowerBound].lowercased() == "https" {
                let rest = t[scheme.upperBound...]
                t = rest.firstIndex(of: "/").map { rest[$0...] } ?? "/"
            }
            return String(t)
        }

        mutating func respond(_ c: inout Connection, to head: [UInt8]) {
            // Lines split as bytes: as a String, "\r\n" is one Character and "\n" would not split it.
            let lines = head.split(separator: 10, omittingEmptySubsequences: false)
                .map { String(decoding: $0.last == 13 ? $0.dropLast() : $0, as: UTF8.self) }
            let request = lines[0].split(separator: " ", omittingEmptySubsequences: true)
            guard request.count == 3, request[2].hasPrefix("HTTP/1.") else {
                reply(&c, Response(status: 400, body: "bad request line\n"), close: true)
                return
            }
            var accept: String?
            var acceptEncoding: String?
            var connection = ""
            var hasBody = false
            for line in lines.dropFirst() where !line.isEmpty {
                guard let colon = line.firstIndex(of: ":") else {
                    reply(&c, Response(status: 400, body: "bad header line\n"), close: true)
                    return
                }
                let value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
                switch line[..<colon].lowercased() {
                case "accept": accept = value
                // Repeated headers are one list (RFC 9110 §5.3).
                case "accept-encoding": acceptEncoding = acceptEncoding.map { $0 + ", " + value } ?? value
                case "connection": connection = value.lowercased()
                case "content-length": hasBody = hasBody || value != "0"
                case "transfer-encoding": hasBody = true
                default: break
                }
            }
            let method = request[0]
            let keepAlive = request[2] == "HTTP/1.1" ? !connection.contains("close") : connection.contains("keep-alive")
            // Request bodies are not read: a request with one is answered, then the connection closed.
            let close = !keepAlive || hasBody
            guard method == "GET" || method == "HEAD" else {
                reply(&c, Response(status: 405, body: "only GET and HEAD\n", extraHeaders: "Allow: GET, HEAD\r\n"), close: true)
                return
            }
            let path = Self.path(of: request[1])
            var response: Response
            switch path {
            case "/metrics":
                let format = ExpositionFormat.negotiate(accept: accept)
                do {
                    let body = try server.state.render(format)
                    // The body depends on both headers; gzip only when asked (and when zlib manages).
                    var headers = "Vary: Accept, Accept-Encoding\r\n"
                    var bytes = body
                    if ContentCoding.negotiate(acceptEncoding: acceptEncoding) == .gzip, let gzipped = ContentCoding.gzip(body) {
                        bytes = gzipped
                        headers += "Content-Encoding: gzip\r\n"
                    }
                    response = Response(status: 200, contentType: format.contentType, bytes: bytes, extraHeaders: headers)
                } catch {
                    response = Response(status: 500, body: "kvmscope: \(error)\n")
                }
            case "/healthz": response = Response(status: 200, body: "ok\n")
            case "/": response = Response(status: 200, body: "kvmscope \(server.version): /metrics, /healthz\n")
            default: response = Response(status: 404, body: "not found\n")
            }
            reply(&c, response, close: close, headOnly: method == "HEAD")
        }

        static func reason(_ status: Int) -> String {
            switch status {
            case 200: "OK"
            case 400: "Bad Request"
            case 404: "Not Found"
            case 405: "Method Not Allowed"
            case 408: "Request Timeout"
            case 431: "Request Header Fields Too Large"
            default: "Internal Server Error"
            }
        }

        static func encode(_ r: Response, close: Bool, headOnly: Bool = false) -> [UInt8] {
            var text = "HTTP/1.1 \(r.status) \(reason(r.status))\r\nContent-Type: \(r.contentType)\r\n"
                + "Content-Length: \(r.body.count)\r\n" + r.extraHeaders
            if close { text += "Connection: close\r\n" }
            text += "\r\n"
            var out: [UInt8] = []
            out.reserveCapacity(text.utf8.count + (headOnly ? 0 : r.body.count))
            out.append(contentsOf: text.utf8)
            if !headOnly { out.append(contentsOf: r.body) }
            return out
        }

        mutating func reply(_ c: inout Connection, _ r: Response, close: Bool, headOnly: Bool = false) {
            c.output = Self.encode(r, close: close, headOnly: headOnly)
            c.written = 0
            c.closeAfterWrite = close
            c.phase = .writing
            c.deadline = MetricsServer.now() + MetricsServer.writeSeconds
            flush(&c)
        }

        /// Sends what the socket takes now.
        mutating func flush(_ c: inout Connection) {
            while c.written < c.output.count {
                let n = c.output.withUnsafeBytes {
                    send(c.fd, $0.baseAddress! + c.written, $0.count - c.written, Int32(MSG_NOSIGNAL))
                }
                if n > 0 {
                    c.written += n
                } else if n < 0 && errno == EINTR {
                    continue
                } else if n < 0 && errno == EAGAIN {
                    return
                } else {
                    c.closeAfterWrite = true
                    c.written = c.output.count
                    c.phase = .draining
                    c.deadline = 0  // expires at once
                    return
                }
            }
        }

        /// A response went out: close (after draining), or wait for the next request.
        mutating func finishWrite(_ c: inout Connection) {
            c.output = []
            c.written = 0
            let now = MetricsServer.now()
            if c.closeAfterWrite {
                shutdown(c.fd, Int32(SHUT_WR))
                c.phase = .draining
                c.deadline = now + MetricsServer.drainSeconds
                return
            }
            c.phase = .idle
            c.deadline = now + server.idleSeconds
            c.since = now
            if !c.input.isEmpty {
                c.phase = .head
                c.deadline = now + server.headSeconds
                handleInput(&c)
                if c.phase == .writing && c.written == c.output.count { finishWrite(&c) }
            }
        }

        mutating func expire(_ now: Double) {
            for c in connections.values where c.deadline <= now {
                if c.phase == .head {
                    // One try at saying why; the connection closes either way.
                    let bytes = Self.encode(Response(status: 408, body: "request head not complete within \(Int(server.headSeconds)) s\n"), close: true)
                    _ = bytes.withUnsafeBytes { send(c.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
                }
                drop(c.fd)
            }
        }
    }
}
