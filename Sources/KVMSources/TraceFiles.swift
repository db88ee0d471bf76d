import KVMExits
/// Opens a recorded trace, whatever its kind, by sniffing its first bytes.
public enum TraceFiles {
    /// trace.dat files start with 0x17 0x08 0x44 "tracing".
    public static let traceDatMagic: [UInt8] = [0x17, 0x08, 0x44] + Array("tracing".utf8)

    public enum Kind: Equatable, Sendable {
        case traceDat
        case text
    }

    /// What a file's first bytes say it is: trace.dat by its magic; text if the start holds no NUL byte.
    public static func kind(of head: [UInt8], path: String) throws -> Kind {
        guard !head.isEmpty else {
            // A recording writes its file when it ends: until then the file is empty, and that is what to say.
            if let pid = RecordSession.recorder(of: path) {
                throw KVMScopeError.badFile("\(path): empty file: kvmscope record (pid \(pid)) is recording it and writes it when it ends")
            }
            throw KVMScopeError.badFile("\(path): empty file")
        }
        if head.starts(with: traceDatMagic) { return .traceDat }
        if head.contains(0) {
            throw KVMScopeError.badFile(
                "\(path): unknown format (binary, not trace.dat; expected trace.dat, kernel trace text, trace-cmd report or perf script output)")
        }
        return .text
    }

    /// A trace source for the file: ``TextTraceReader`` for text, the trace.dat reader for trace.dat.
    /// - Parameter counterHz: for text with integer counter timestamps, ticks per second (`--ts2secs`).
    public static func open(_ path: String, counterHz: UInt64? = nil) throws -> TraceSource {
        switch try kind(of: FileBytes.read(path, limit: 4096), path: path) {
        case .traceDat:
            return try TraceDatReader(path: path)
        case .text:
            return try TextTraceReader(path: path, counterHz: counterHz)
        }
    }
}
