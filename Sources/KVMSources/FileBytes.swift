#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import KVMExits
import SystemPackage

/// Reading whole files (or their first bytes) with one-line errors.
enum FileBytes {
    /// The file's contents. Refuses directories and anything that is not a regular file.
    static func read(_ path: String, limit: Int = .max) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw KVMScopeError.badFile("\(path): \(Errno(rawValue: errno))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw KVMScopeError.badFile("\(path): \(Errno(rawValue: errno))") }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw KVMScopeError.badFile("\(path): not a regular file") }
        let size = min(Int(st.st_size), limit)
        var out = [UInt8](repeating: 0, count: size)
        var done = 0
        while done < size {
            let n = out.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + done, size - done) }
            if n < 0 {
                if errno == EINTR { continue }
                throw KVMScopeError.badFile("\(path): \(Errno(rawValue: errno))")
            }
            if n == 0 { break }
            done += n
        }
        if done < size { out.removeLast(size - done) }
        return out
    }
}
