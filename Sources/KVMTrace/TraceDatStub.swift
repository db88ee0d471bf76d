/// The hook through which ``TraceFiles`` opens trace.dat files. The trace.dat reader lives on another branch;
/// at merge, set `TraceDatOpener.open = { try TraceDatReader(path: $0) }` (or replace this file).
public enum TraceDatOpener {
    /// Opens a trace.dat file; nil when this build has no trace.dat support.
    nonisolated(unsafe) public static var open: ((String) throws -> TraceSource)?
}
