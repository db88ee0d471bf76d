#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// Why a QMP exchange failed, as one line: `cannot connect: Connection refused`, `no answer in 1.0 s`,
/// `connection closed by QEMU`, `not QMP: …`, `query-blockstats: CommandNotFound: …`.
public struct QMPError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// The socket could not be reached (connect, write): the system's reason.
        case unreachable
        /// No complete answer before the deadline.
        case timeout
        /// QEMU (or whatever listens) closed the connection.
        case closed
        /// The peer sent something that is not QMP (not JSON, not the expected shape, too long).
        case garbage
        /// QEMU answered the command with an `error` object (`class`: `CommandNotFound`, `DeviceNotActive`, …).
        case commandFailed(errorClass: String)
    }

    public var kind: Kind
    public var description: String

    public init(_ kind: Kind, _ description: String) {
        self.kind = kind
        self.description = description
    }

    /// Whether the connection can still be used after this error (only a command QEMU refused leaves it usable).
    public var connectionUsable: Bool {
        if case .commandFailed = kind { return true }
        return false
    }
}

/// One open connection to a QEMU monitor socket speaking QMP (the QEMU Machine Protocol: one JSON object per
/// line; a greeting, `qmp_capabilities`, then commands answered by `{"return": …}` or `{"error": …}`, with
/// asynchronous `{"event": …}` lines in between).
///
/// Every read and write is bounded by ``timeout`` (poll on a non-blocking socket): a QEMU that hangs, a socket
/// that accepts and never answers, costs at most `timeout` per command — never a hang. Each command carries an
/// `id`; answers to older commands (one that timed out) and events are skipped. Replies are decoded with
/// `JSONDecoder` into the `Decodable` type asked for. Not thread-safe: one caller.
public final class QMPConnection {
    /// The socket's path.
    public let path: String
    /// Seconds each command (and the greeting) may take.
    public let timeout: Double
    /// The process at the other end: its pid from the socket's peer credentials (SO_PEERCRED: the process that
    /// called listen(), i.e. the QEMU serving the socket). nil when the kernel does not say.
    public let peerPID: Int32?
    /// The QEMU version from the greeting (`7.2.22`).
    public private(set) var qemuVersion = "?"

    private let fd: Int32
    private var pending: [UInt8] = []
    private var nextID: UInt64 = 1
    private var closed = false

    /// The most a single reply line may hold (query-stats of a VM with many vCPUs is some hundred KiB).
    static let maxLine = 16 << 20

    /// Connects, reads the greeting and negotiates capabilities (`qmp_capabilities`).
    /// - Throws: ``QMPError``: `.unreachable` with the system's reason (`No such file or directory`,
    ///   `Connection refused`, `Resource temporarily unavailable` for a full backlog), `.timeout`, `.closed`,
    ///   `.garbage` when the greeting is not QMP's.
    public init(path: String, timeout: Double = 1) throws(QMPError) {
        self.path = path
        self.timeout = timeout
        let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard s >= 0 else { throw QMPError(.unreachable, "cannot create a socket: \(Self.reason(errno))") }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard bytes.count < capacity else {
            Glibc.close(s)
            throw QMPError(.unreachable, "cannot connect: the path is longer than \(capacity - 1) bytes")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
            raw[bytes.count] = 0
        }
        // A unix socket connects at once or not at all (EAGAIN: the listener's backlog is full).
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(s, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else {
            let e = errno
            Glibc.close(s)
            throw QMPError(.unreachable, "cannot connect: \(Self.reason(e))")
        }
        fd = s
        // struct ucred { pid_t pid; uid_t uid; gid_t gid; }
        var cred: (Int32, UInt32, UInt32) = (0, 0, 0)
        var len = socklen_t(MemoryLayout.size(ofValue: cred))
        peerPID = getsockopt(s, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 && cred.0 > 0 ? cred.0 : nil
        do {
            let deadline = Self.now() + timeout
            let greeting = try QMPConnection.decode(Greeting.self, try line(deadline: deadline), what: "greeting")
            qemuVersion = greeting.QMP.version.map { "\($0.qemu.major).\($0.qemu.minor).\($0.qemu.micro)" } ?? "?"
            let _: Empty = try execute("qmp_capabilities")
        } catch {
            Glibc.close(s)
            closed = true
            throw error
        }
    }

    deinit { close() }

    /// Closes the socket (idempotent).
    public func close() {
        guard !closed else { return }
        closed = true
        Glibc.close(fd)
    }

    /// Runs `command` with `arguments` (a JSON object's members, already encoded) and decodes its `return`
    /// value as `T`.
    /// - Throws: ``QMPError``; after any kind but `.commandFailed` the connection is unusable (close it).
    public func execute<T: Decodable>(_ command: String, arguments: String? = nil) throws(QMPError) -> T {
        let deadline = self.deadline()
        return try receive(try send(command, arguments: arguments, deadline: deadline), command: command, deadline: deadline)
    }

    /// The deadline of a command sent now (or of several sent together), in ``QMPConnection``'s clock.
    public func deadline() -> Double { Self.now() + timeout }

    /// Sends `command` without waiting for its answer: several commands sent one after another are answered
    /// in order (QMP runs them one at a time), so their answers cost one wait, not one each.
    /// - Returns: the command's `id`, for ``receive(_:command:deadline:)``.
    public func send(_ command: String, arguments: String? = nil, deadline: Double) throws(QMPError) -> UInt64 {
        let id = nextID
        nextID += 1
        let text = "{\"execute\":\"\(command)\"" + (arguments.map { ",\"arguments\":\($0)" } ?? "") + ",\"id\":\(id)}\n"
        try send(Array(text.utf8), deadline: deadline)
        return id
    }

    /// Reads until the answer to the command sent with `id` and decodes its `return` value as `T`. Receive
    /// answers in the order the commands were sent.
    public func receive<T: Decodable>(_ id: UInt64, command: String, deadline: Double) throws(QMPError) -> T {
        while true {
            let line = try line(deadline: deadline)
            let envelope = try Self.decode(Envelope.self, line, what: "reply to \(command)")
            // Events, and answers to a command that timed out before, are not this answer.
            guard envelope.event == nil, envelope.id == id else { continue }
            if let e = envelope.error {
                throw QMPError(.commandFailed(errorClass: e.class), "\(command): \(e.class): \(e.desc)")
            }
            guard envelope.hasReturn else { throw QMPError(.garbage, "not QMP: a reply to \(command) without 'return' or 'error'") }
            return try Self.decode(Return<T>.self, line, what: "reply to \(command)").value
        }
    }

    // MARK: Lines

    private func send(_ bytes: [UInt8], deadline: Double) throws(QMPError) {
        var offset = 0
        while offset < bytes.count {
            // MSG_NOSIGNAL: a peer that closed gives EPIPE, not a SIGPIPE that would end kvmscope.
            let n = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n > 0 {
                offset += n
                continue
            }
            let e = errno
            if n < 0 && e == EINTR { continue }
            if n < 0 && (e == EPIPE || e == ECONNRESET) { throw QMPError(.closed, "connection closed by the peer") }
            guard n < 0 && e == EAGAIN else { throw QMPError(.unreachable, "cannot send: \(Self.reason(e))") }
            try wait(POLLOUT, deadline: deadline)
        }
    }

    /// The next line (without its `\r\n`), read until `deadline`.
    private func line(deadline: Double) throws(QMPError) -> ArraySlice<UInt8> {
        var scanned = 0
        while true {
            if let nl = pending[scanned...].firstIndex(of: 10) {
                var line = pending[..<nl]
                if line.last == 13 { line = line.dropLast() }
                let out = ArraySlice(Array(line))
                pending.removeSubrange(...nl)
                if out.allSatisfy({ $0 == 32 || $0 == 9 }) { scanned = 0; continue }
                return out
            }
            scanned = pending.count
            guard pending.count <= Self.maxLine else {
                throw QMPError(.garbage, "not QMP: a line longer than \(Self.maxLine >> 20) MiB")
            }
            var buf = [UInt8](repeating: 0, count: 65536)
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n > 0 {
                pending += buf[..<n]
                continue
            }
            if n == 0 { throw QMPError(.closed, "connection closed by the peer") }
            let e = errno
            if e == EINTR { continue }
            if e == ECONNRESET { throw QMPError(.closed, "connection closed by the peer") }
            guard e == EAGAIN else { throw QMPError(.closed, "cannot read: \(Self.reason(e))") }
            try wait(POLLIN, deadline: deadline)
        }
    }

    private func wait(_ events: Int32, deadline: Double) throws(QMPError) {
        while true {
            let left = deadline - Self.now()
            guard left > 0 else { throw QMPError(.timeout, "no answer in \(String(format: "%.1f", timeout)) s") }
            var p = pollfd(fd: fd, events: Int16(events), revents: 0)
            let rc = poll(&p, 1, Int32(min(left * 1000, 60_000).rounded(.up)))
            if rc > 0 { return }
            if rc < 0 && errno != EINTR { throw QMPError(.closed, "poll: \(Self.reason(errno))") }
        }
    }

    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    static func reason(_ e: Int32) -> String { String(cString: strerror(e)) }

    // MARK: JSON

    /// Decodes one line; anything that is not the expected JSON is `.garbage` naming what was expected and the
    /// line's start (control characters escaped: the warning stays one line).
    static func decode<T: Decodable>(_ type: T.Type, _ line: ArraySlice<UInt8>, what: String) throws(QMPError) -> T {
        do { return try JSONDecoder().decode(T.self, from: Data(line)) } catch {
            var shown = ""
            for s in String(decoding: line.prefix(40), as: UTF8.self).unicodeScalars {
                shown += s.properties.generalCategory == .control ? s.escaped(asASCII: true) : String(s)
            }
            throw QMPError(.garbage, "not QMP: expected a \(what), got '\(shown)\(line.count > 40 ? "…" : "")'")
        }
    }

    struct Greeting: Decodable {
        struct Inner: Decodable {
            struct Version: Decodable {
                struct Triple: Decodable { var major: Int, minor: Int, micro: Int }
                var qemu: Triple
            }
            var version: Version?
        }
        var QMP: Inner
    }

    /// What every line is, before its `return` is decoded as the caller's type.
    struct Envelope: Decodable {
        struct ErrorBody: Decodable {
            var `class`: String
            var desc: String
        }
        var id: UInt64?
        var event: String?
        var error: ErrorBody?
        var hasReturn: Bool

        enum CodingKeys: String, CodingKey { case id, event, error, `return` }

        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            id = try? c.decodeIfPresent(UInt64.self, forKey: .id)
            event = try c.decodeIfPresent(String.self, forKey: .event)
            error = try c.decodeIfPresent(ErrorBody.self, forKey: .error)
            hasReturn = c.contains(.return)
        }
    }

    struct Return<T: Decodable>: Decodable {
        var value: T
        enum CodingKeys: String, CodingKey { case value = "return" }
    }

    /// `{}`: the return of commands without a value.
    public struct Empty: Decodable {}
}
