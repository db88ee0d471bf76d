#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Why a /proc or /sys file gave no value.
public enum ProcReadFailure: Error, Sendable, Equatable {
    /// The process or thread ended (ENOENT, ESRCH): a vanished entity, never a zero.
    case gone
    /// Anything else (EACCES, EIO, a malformed line): the errno, or 0 for a format that could not be parsed.
    case unreadable(Int32)
}

/// Reads small kernel files (/proc/PID/stat, schedstat, status, io, /sys/class/net/…/statistics) with one
/// open, read, close into a buffer reused for every file: no Foundation, no String for the whole file, no
/// allocation but the path. Not thread-safe: one per sampler.
final class ProcFile {
    private var buffer: [UInt8]
    /// The bytes of the last successful ``read(_:)``.
    private(set) var count = 0

    init(capacity: Int = 16 * 1024) { buffer = [UInt8](repeating: 0, count: capacity) }

    /// Reads `path` whole (up to the buffer's capacity, which every file read here fits); a relative path
    /// from the directory `directory` (openat: /proc/PID's lookup is done once per VM, not once per file).
    func read(_ path: String, in directory: Int32 = AT_FDCWD) -> Result<Void, ProcReadFailure> {
        let fd = openat(directory, path, O_RDONLY | O_CLOEXEC)
        if fd < 0 { return .failure(Self.failure(errno)) }
        defer { close(fd) }
        return read(descriptor: fd)
    }

    /// Reads an open procfs file whole again from offset 0 (`pread`: seq_file regenerates it), for a file read
    /// every sample — no open and close per read. Fails as ``read(_:in:)`` does (a thread that ended: `.gone`).
    func read(descriptor fd: Int32) -> Result<Void, ProcReadFailure> {
        var total = 0
        while total < buffer.count {
            let n = buffer.withUnsafeMutableBytes { raw in
                Glibc.pread(fd, raw.baseAddress! + total, raw.count - total, off_t(total))
            }
            if n < 0 {
                if errno == EINTR { continue }
                return .failure(Self.failure(errno))
            }
            if n == 0 { break }
            total += n
            // procfs and sysfs hand over a small file in one read: a read that did not fill the buffer is the
            // end (saves the read that would return 0, a quarter of the syscalls per file).
            if total < buffer.count { break }
        }
        count = total
        return .success(())
    }

    static func failure(_ e: Int32) -> ProcReadFailure { e == ENOENT || e == ESRCH ? .gone : .unreadable(e) }

    /// The unsigned decimal numbers of the space-separated fields after the last `)` (the comm's end) of a
    /// /proc stat line, as `(field number from man 5 proc) → value` for the `wanted` field numbers (≥ 3),
    /// plus the state letter (field 3). Nil when the line is malformed.
    func statFields(_ wanted: [Int]) -> (state: UInt8, values: [UInt64])? {
        var close = -1
        for i in 0..<count where buffer[i] == UInt8(ascii: ")") { close = i }
        guard close >= 0, close + 2 < count else { return nil }
        var values = [UInt64](repeating: 0, count: wanted.count)
        var field = 3
        var i = close + 2
        let state = buffer[i]
        var found = 0
        let last = wanted.max() ?? 3
        while i < count && field <= last {
            var v: UInt64 = 0
            var digits = false
            let negative = buffer[i] == UInt8(ascii: "-")
            if negative { i += 1 }
            while i < count, buffer[i] >= 48, buffer[i] <= 57 {
                v = v &* 10 &+ UInt64(buffer[i] - 48)
                digits = true
                i += 1
            }
            while i < count, buffer[i] != 32, buffer[i] != 10 { i += 1 }
            if let k = wanted.firstIndex(of: field) {
                values[k] = negative ? 0 : v
                if digits || field == 3 { found += 1 }
            }
            field += 1
            i += 1
        }
        return found == wanted.count ? (state, values) : nil
    }

    /// The unsigned numbers of a line of space-separated numbers (schedstat, a sysfs counter).
    func numbers(max: Int = 8) -> [UInt64] {
        var out: [UInt64] = []
        var i = 0
        while i < count && out.count < max {
            while i < count, buffer[i] < 48 || buffer[i] > 57 { i += 1 }
            guard i < count else { break }
            var v: UInt64 = 0
            while i < count, buffer[i] >= 48, buffer[i] <= 57 {
                v = v &* 10 &+ UInt64(buffer[i] - 48)
                i += 1
            }
            out.append(v)
        }
        return out
    }

    /// The first number after each of `keys` at the start of a line ("VmRSS:\t  2140 kB", "rchar: 6976"),
    /// in the order of `keys`; nil for a key not found.
    func keyed(_ keys: [StaticString]) -> [UInt64?] {
        var out = [UInt64?](repeating: nil, count: keys.count)
        var lineStart = 0
        while lineStart < count {
            var end = lineStart
            while end < count, buffer[end] != 10 { end += 1 }
            for (k, key) in keys.enumerated() where out[k] == nil {
                let n = key.utf8CodeUnitCount
                guard end - lineStart > n else { continue }
                var same = true
                key.withUTF8Buffer { kb in
                    for j in 0..<n where kb[j] != buffer[lineStart + j] {
                        same = false
                        break
                    }
                }
                guard same else { continue }
                var i = lineStart + n
                while i < end, buffer[i] < 48 || buffer[i] > 57 { i += 1 }
                var v: UInt64 = 0
                var digits = false
                while i < end, buffer[i] >= 48, buffer[i] <= 57 {
                    v = v &* 10 &+ UInt64(buffer[i] - 48)
                    digits = true
                    i += 1
                }
                if digits { out[k] = v }
                break
            }
            lineStart = end + 1
        }
        return out
    }

    /// The text of the file, trailing newline dropped (comm, a tun descriptor's `iff:` value).
    var text: String {
        var n = count
        while n > 0, buffer[n - 1] == 10 { n -= 1 }
        return String(decoding: buffer[0..<n], as: UTF8.self)
    }

    /// The NUL-separated strings of the file (/proc/PID/cmdline).
    var nulSeparated: [String] {
        buffer[0..<count].split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
    }
}

/// Directory listing and symbolic links, through readdir and readlink.
enum ProcDirectory {
    /// The names of `path`'s entries that are decimal numbers (pids, tids, fds), or a failure; a relative
    /// path from the directory `directory`.
    static func numericEntries(_ path: String, in directory: Int32 = AT_FDCWD) -> Result<[Int32], ProcReadFailure> {
        let fd = openat(directory, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return .failure(ProcFile.failure(errno)) }
        guard let dir = fdopendir(fd) else {
            let e = errno
            close(fd)
            return .failure(ProcFile.failure(e))
        }
        defer { closedir(dir) }
        var out: [Int32] = []
        // d_name is read through a pointer, up to its NUL: a record is only as long as its name (d_reclen), so a
        // copy of the whole 256-byte field could read past the end of the directory buffer (a crash when that
        // buffer ends a mapping).
        let nameOffset = MemoryLayout<dirent>.offset(of: \dirent.d_name)!
        while let entry = readdir(dir) {
            let name = UnsafeRawPointer(entry).advanced(by: nameOffset).assumingMemoryBound(to: UInt8.self)
            var v: Int32 = 0
            var i = 0
            var numeric = true
            while name[i] != 0 {
                let b = name[i]
                guard b >= 48, b <= 57 else {
                    numeric = false
                    break
                }
                v = v &* 10 &+ Int32(b - 48)
                i += 1
            }
            if numeric && i > 0 { out.append(v) }
        }
        return .success(out)
    }

    /// The target of a symbolic link (`anon_inode:kvm-vm`, `/dev/net/tun`), or nil.
    static func link(_ path: String) -> String? {
        var buf = [CChar](repeating: 0, count: 256)
        let n = readlink(path, &buf, buf.count - 1)
        guard n > 0 else { return nil }
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
