import Glibc

/// The standard descriptors 0, 1 and 2.
public enum StandardDescriptors {
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
