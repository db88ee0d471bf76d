import CKVMScope
import Foundation
import KVMExits
import SystemPackage

/// Bytes that stay put for the life of the object: a read-only mapping of a file, or a block decompressed
/// from one. Readers of trace.dat files hold these and look at them through ``ByteReader``.
final class ByteBlock: @unchecked Sendable {
    let bytes: UnsafeRawBufferPointer
    private let unmap: Bool

    /// Maps `path` read-only. Throws a one-line badFile/io error with the system's reason, e.g.
    /// "cannot open X: No such file or directory" (empty files are bad files).
    init(mapping path: String) throws {
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor.open(FilePath(path), .readOnly, options: .closeOnExec)
        } catch let e as Errno {
            throw KVMScopeError.io("cannot open \(path): \(e)")
        }
        bytes = try fd.closeAfter {
            let st: Stat
            do { st = try fd.stat() } catch { throw KVMScopeError.io("cannot stat \(path): \(error)") }
            guard st.type == .regular else { throw KVMScopeError.badFile("\(path) is not a regular file") }
            guard st.size > 0 else { throw KVMScopeError.badFile("\(path) is empty") }
            let size = Int(st.size)
            // swift-system has no mmap: the call is Glibc's, its errno read once through Errno.
            guard let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd.rawValue, 0), p != MAP_FAILED else {
                throw KVMScopeError.io("cannot map \(path): \(Errno(rawValue: errno))")
            }
            return UnsafeRawBufferPointer(start: p, count: size)
        }
        unmap = true
    }

    /// An owned block of `count` zeroed bytes, to be filled by the creator.
    init(capacity count: Int) {
        let p = UnsafeMutableRawBufferPointer.allocate(byteCount: max(count, 1), alignment: 16)
        p.initializeMemory(as: UInt8.self, repeating: 0)
        bytes = UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(p)[0..<count])
        unmap = false
    }

    var mutableBytes: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(mutating: bytes) }
    var count: Int { bytes.count }

    deinit {
        if unmap {
            munmap(UnsafeMutableRawPointer(mutating: bytes.baseAddress), bytes.count)
        } else {
            bytes.baseAddress.map { UnsafeMutableRawPointer(mutating: $0).deallocate() }
        }
    }
}

/// A bounds-checked cursor over a ``ByteBlock``: every read past the end throws one line naming `what`.
struct ByteReader {
    let block: ByteBlock
    let base: Int
    let end: Int
    var pos: Int
    let bigEndian: Bool
    let what: String

    init(_ block: ByteBlock, from: Int = 0, to: Int? = nil, bigEndian: Bool = false, what: String) {
        self.block = block
        base = from
        end = to ?? block.count
        pos = from
        self.bigEndian = bigEndian
        self.what = what
    }

    var remaining: Int { end - pos }

    func truncated(_ need: Int) -> KVMScopeError {
        KVMScopeError.badFile("truncated \(what): needs \(need) bytes at offset \(pos), has \(max(0, remaining))")
    }

    mutating func need(_ n: Int) throws {
        guard n >= 0, n <= remaining else { throw truncated(n) }
    }

    mutating func u8() throws -> UInt8 {
        try need(1)
        defer { pos += 1 }
        return block.bytes[pos]
    }

    mutating func u16() throws -> UInt16 {
        try need(2)
        let v = block.bytes.loadUnaligned(fromByteOffset: pos, as: UInt16.self)
        pos += 2
        return bigEndian ? UInt16(bigEndian: v) : UInt16(littleEndian: v)
    }

    mutating func u32() throws -> UInt32 {
        try need(4)
        let v = block.bytes.loadUnaligned(fromByteOffset: pos, as: UInt32.self)
        pos += 4
        return bigEndian ? UInt32(bigEndian: v) : UInt32(littleEndian: v)
    }

    mutating func u64() throws -> UInt64 {
        try need(8)
        let v = block.bytes.loadUnaligned(fromByteOffset: pos, as: UInt64.self)
        pos += 8
        return bigEndian ? UInt64(bigEndian: v) : UInt64(littleEndian: v)
    }

    /// A size read from the file, checked against what is left before it is used.
    mutating func size(_ raw: UInt64, of thing: String) throws -> Int {
        guard raw <= UInt64(remaining) else {
            throw KVMScopeError.badFile("\(what): \(thing) claims \(raw) bytes at offset \(pos) but only \(remaining) remain")
        }
        return Int(raw)
    }

    /// A NUL-terminated string (the NUL consumed).
    mutating func cString(max: Int = 4096) throws -> String {
        let limit = min(end, pos + max)
        var i = pos
        while i < limit && block.bytes[i] != 0 { i += 1 }
        guard i < limit else {
            throw KVMScopeError.badFile("\(what): unterminated string at offset \(pos)")
        }
        let s = String(decoding: UnsafeRawBufferPointer(rebasing: block.bytes[pos..<i]), as: UTF8.self)
        pos = i + 1
        return s
    }

    mutating func bytes(_ n: Int) throws -> UnsafeRawBufferPointer {
        try need(n)
        defer { pos += n }
        return UnsafeRawBufferPointer(rebasing: block.bytes[pos..<pos + n])
    }

    mutating func text(_ n: Int) throws -> String {
        String(decoding: try bytes(n), as: UTF8.self)
    }

    mutating func skip(_ n: Int) throws {
        try need(n)
        pos += n
    }
}
