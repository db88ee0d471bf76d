import CKVMHost
import Glibc

/// The standard descriptors 0, 1 and 2.
public enum StandardDescriptors {
    /// Writes all of `text` to `fd` with write(2), retrying after EINTR. Returns nil, or the errno that
    /// stopped it (EIO for a terminal that went away, EPIPE, ENOSPC). Never traps, unlike FileHandle.write.
    @discardableResult
    public static func write(_ fd: Int32, _ text: String) -> Int32? {
        var bytes = Array(text.utf8)
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeMutableBytes { Glibc.write(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0 {
                if errno == EINTR { continue }
                return errno
            }
            done += n
        }
        return nil
    }

    /// Writes to a pipe whose reader went away fail with EPIPE instead of killing the process with SIGPIPE (a
    /// handler that does nothing, which execve resets for the commands kvmscope starts).
    public static func quietBrokenPipes() {
        _ = ckvmscope_pipe_quiet()
    }

    /// Opens /dev/null on whichever of 0, 1 and 2 is closed (a service manager or CI may start us with no
    /// stdin). Otherwise the first file kvmscope opens — a ring buffer, a pipe — would take that number and
    /// be read as input, written as output, or handed to a child as its stdin.
    public static func ensureOpen() {
        for fd in Int32(0)...2 where fcntl(fd, F_GETFD) == -1 {
            let null = open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY)
            if null >= 0 && null != fd {
                dup2(null, fd)
                close(null)
            }
        }
    }
}
