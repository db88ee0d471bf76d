import KVMExits
import SystemPackage

/// Reading whole files (or their first bytes) with one-line errors.
enum FileBytes {
    /// The file's contents (at most `limit` bytes). Refuses directories and anything that is not a regular file.
    ///
    /// - Throws: `KVMScopeError.badFile("<path>: <the system's reason>")`, e.g. "No such file or directory".
    static func read(_ path: String, limit: Int = .max) throws -> [UInt8] {
        do {
            let fd = try FileDescriptor.open(FilePath(path), .readOnly, options: .closeOnExec)
            return try fd.closeAfter {
                let st = try fd.stat()
                guard st.type == .regular else { throw KVMScopeError.badFile("\(path): not a regular file") }
                let size = min(Int(st.size), limit)
                var out = [UInt8](repeating: 0, count: size)
                var done = 0
                while done < size {
                    // read(2), retried on EINTR by swift-system.
                    let n = try out.withUnsafeMutableBytes { try fd.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[done...])) }
                    if n == 0 { break }
                    done += n
                }
                if done < size { out.removeLast(size - done) }
                return out
            }
        } catch let e as Errno {
            throw KVMScopeError.badFile("\(path): \(e)")
        }
    }
}
