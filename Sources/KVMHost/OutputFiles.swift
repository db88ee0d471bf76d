import Glibc

/// Files kvmscope writes (`-o`, `--csv`, `--html`, a recording): opened so that no path can hang the command.
public enum OutputFiles {
    /// Opens `path` for writing, created 0640 and truncated (appended to with `append`), close-on-exec, in
    /// blocking mode for the writes.
    /// A FIFO is never waited for: one that no process reads is refused at once (open(2)'s ENXIO with
    /// O_NONBLOCK), where a plain open would sleep until a reader came, deaf to SIGINT and SIGTERM.
    /// - Returns: the descriptor, or the errno of the failure (`ENXIO`: a FIFO without a reader; ``OpenError``
    ///   words it).
    public static func open(_ path: String, append: Bool = false) -> Result<Int32, OpenError> {
        let fd = Glibc.open(path, O_WRONLY | O_CREAT | (append ? O_APPEND : O_TRUNC) | O_CLOEXEC | O_NONBLOCK, 0o640)
        guard fd >= 0 else { return .failure(OpenError(code: errno)) }
        let flags = fcntl(fd, F_GETFL)
        if flags >= 0 { _ = fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) }
        return .success(fd)
    }

    /// Why ``open(_:)`` failed: the errno, and the words for it (`No such file or directory`; for ENXIO, which
    /// strerror words "No such device or address", that no process reads the FIFO).
    public struct OpenError: Error, Sendable, CustomStringConvertible {
        public let code: Int32
        public var description: String {
            code == ENXIO ? "no process reads this FIFO (start its reader first)" : String(cString: strerror(code))
        }
    }
}
