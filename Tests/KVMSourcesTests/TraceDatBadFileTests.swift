import Foundation
import KVMExits
import Testing
import KVMSources

/// Bad trace.dat input: always one-line badFile errors, never a trap, never an unbounded allocation.
@Suite struct TraceDatBadFileTests {
    /// Opens and reads the whole file; returns the badFile message, or nil when it read fine.
    static func badFileMessage(_ path: String) -> String? {
        do {
            let r = try TraceDatReader(path: path)
            try r.forEachEvent { _ in }
            return nil
        } catch let KVMScopeError.badFile(message) {
            return message
        } catch {
            return "not badFile: \(error)"
        }
    }

    static func write(_ bytes: [UInt8], _ name: String) -> String {
        let path = TraceDatWriterTests.tempPath(name)
        #expect(FileManager.default.createFile(atPath: path, contents: Data(bytes)))
        return path
    }

    static func smallFile() throws -> [UInt8] {
        let path = TraceDatWriterTests.tempPath("small-\(UUID().uuidString).dat")
        defer { unlink(path) }
        try SyntheticWorkload(threads: 2, hostCPUs: 2, vcpusPerVM: 2)
            .writeTraceDat(to: path, formats: try Fixtures.formats("6.18-x86"), eventsPerCPU: 200,
                           headerPage: try Fixtures.text("formats/6.18-x86/header_page"))
        return Array(try Data(contentsOf: URL(fileURLWithPath: path)))
    }

    /// trace-cmd's last section, its strings (id 15, zlib), is pointed at by no option: a file cut inside it
    /// once read as if whole. Cut anywhere in it, the file is refused with what is missing; whole, it reads.
    @Test(arguments: [1, 30, 100, 111]) func traceCmdFileCutInItsStringsSection(cut: Int) throws {
        let whole = Array(try Data(contentsOf: URL(fileURLWithPath: TraceDatReaderTests.corpusPath)))
        #expect(Self.badFileMessage(TraceDatReaderTests.corpusPath) == nil)
        let path = Self.write(Array(whole.dropLast(cut)), "cut-strings-\(cut).dat")
        defer { unlink(path) }
        // The strings section's header starts 112 bytes before the end (16 + 96 compressed bytes).
        let expected = cut <= 96
            ? "\(path): strings section: strings section claims 96 bytes at offset \(whole.count - 96) but only \(96 - cut) remain"
            : "\(path): truncated strings section: needs \(cut <= 104 ? 8 : 2) bytes at offset \(cut <= 104 ? whole.count - 104 : whole.count - 112), has \(112 - cut - (cut <= 104 ? 8 : 0))"
        #expect(Self.badFileMessage(path) == expected)
    }

    @Test func emptyAndWrongMagic() throws {
        let empty = Self.write([], "empty.dat")
        defer { unlink(empty) }
        #expect(Self.badFileMessage(empty) == "\(empty) is empty")
        var bytes = try Self.smallFile()
        bytes[1] = 0x09
        let magic = Self.write(bytes, "magic.dat")
        defer { unlink(magic) }
        #expect(Self.badFileMessage(magic) == "\(magic) is not a trace.dat file (bad magic)")
        let text = Self.write(Array("hello world, this is not a trace\n".utf8), "text.dat")
        defer { unlink(text) }
        #expect(Self.badFileMessage(text) == "\(text) is not a trace.dat file (bad magic)")
    }

    /// What cannot be opened or mapped says so with the system's words.
    @Test func missingFileAndDirectory() throws {
        #expect(throws: KVMScopeError.io("cannot open /nonexistent/t.dat: No such file or directory")) {
            try TraceDatReader(path: "/nonexistent/t.dat")
        }
        let dir = TraceDatWriterTests.tempPath("dir-\(UUID().uuidString)")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false)
        defer { rmdir(dir) }
        #expect(Self.badFileMessage(dir) == "\(dir) is not a regular file")
    }

    @Test func everyTruncationOfASmallFileIsABadFile() throws {
        let bytes = try Self.smallFile()
        #expect(bytes.count > 8192)
        let path = Self.write(bytes, "trunc.dat")
        defer { unlink(path) }
        #expect(Self.badFileMessage(path) == nil)
        var checked = 0
        for n in stride(from: 0, to: bytes.count, by: 97) {
            #expect(FileManager.default.createFile(atPath: path, contents: Data(bytes[..<n])))
            let m = Self.badFileMessage(path)
            #expect(m != nil && !m!.contains("\n") && !m!.hasPrefix("not badFile"), "truncated at \(n): \(m ?? "read fine")")
            checked += 1
        }
        #expect(checked == (bytes.count + 96) / 97)
    }

    @Test func everyTruncationOfTheCorpusHeaderIsABadFile() throws {
        let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: TraceDatReaderTests.corpusPath)))
        let path = TraceDatWriterTests.tempPath("trunc7.dat")
        defer { unlink(path) }
        for n in stride(from: 0, to: 65_536, by: 97) {
            #expect(FileManager.default.createFile(atPath: path, contents: Data(bytes[..<n])))
            let m = Self.badFileMessage(path)
            #expect(m != nil && !m!.contains("\n") && !m!.hasPrefix("not badFile"), "truncated at \(n): \(m ?? "read fine")")
        }
    }

    @Test func absurdSectionSize() throws {
        var bytes = Array(try Data(contentsOf: URL(fileURLWithPath: TraceDatReaderTests.corpusPath)))
        // The header: magic(10) "7\0" endian long pagesize(4) "zlib\0" version\0, then the options offset.
        var p = 10 + 2 + 2 + 4
        while bytes[p] != 0 { p += 1 }
        p += 1
        while bytes[p] != 0 { p += 1 }
        p += 1
        let options = bytes[p..<p + 8].enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
        // The options section's size (u64 after id, flags, string id): 2^60.
        for i in 0..<8 { bytes[options + 8 + i] = UInt8(truncatingIfNeeded: (UInt64(1) << 60) >> (8 * UInt64(i))) }
        let path = Self.write(bytes, "absurd.dat")
        defer { unlink(path) }
        #expect(Self.badFileMessage(path) == "\(path): options section: options section claims 1152921504606846976 bytes at offset \(options + 16) but only \(bytes.count - options - 16) remain")

        // A compressed chunk claiming 4 GiB - 1 uncompressed bytes: refused before any allocation.
        var corpus = Array(try Data(contentsOf: URL(fileURLWithPath: TraceDatReaderTests.corpusPath)))
        let cpu = try #require(try TraceDatReader(path: TraceDatReaderTests.corpusPath).cpuData.first { $0.size > 0 })
        let zsize = corpus[cpu.offset + 4..<cpu.offset + 8].enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
        corpus.replaceSubrange(cpu.offset + 8..<cpu.offset + 12, with: [0xff, 0xff, 0xff, 0xff])
        let p2 = Self.write(corpus, "absurd-chunk.dat")
        defer { unlink(p2) }
        #expect(Self.badFileMessage(p2) == "\(p2): compressed block of \(zsize) bytes claims 4294967295 uncompressed bytes")
    }

    @Test func corruptPage() throws {
        var bytes = try Self.smallFile()
        let ok = Self.write(bytes, "ok.dat")
        defer { unlink(ok) }
        let r = try TraceDatReader(path: ok)
        let first = try #require(r.cpuData.first)
        // commit of the first page of cpu 0: data size far beyond the page.
        for i in 0..<8 { bytes[first.offset + 8 + i] = [0xff, 0xff, 0xff, 0x0f, 0, 0, 0, 0][i] }
        let path = Self.write(bytes, "corrupt.dat")
        defer { unlink(path) }
        #expect(Self.badFileMessage(path) == "\(path): corrupt ring-buffer page of cpu 0 at file offset \(first.offset)")
        // An event whose length runs past its page.
        var bytes2 = try Self.smallFile()
        // First event header after the 16-byte page header: type_len 0 means a length word follows.
        bytes2.replaceSubrange(first.offset + 16..<first.offset + 24, with: [0, 0, 0, 0, 0xf0, 0x0f, 0, 0])
        let path2 = Self.write(bytes2, "corrupt2.dat")
        defer { unlink(path2) }
        #expect(Self.badFileMessage(path2) == "\(path2): corrupt ring-buffer page of cpu 0 at file offset \(first.offset)")
    }
}
