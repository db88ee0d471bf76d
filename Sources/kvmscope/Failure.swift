import Foundation
import KVMExits
import KVMHost
import SystemPackage
import Synchronization

/// Writes to stdout; a stdout that went away (EIO, EPIPE) loses the text instead of crashing. Any other failure
/// (ENOSPC: a full disk, /dev/full) is kept: the command's end reports it (``StdoutFailure``).
func writeStdout(_ s: String) {
    guard let e = StandardDescriptors.write(STDOUT_FILENO, s) else { return }
    StdoutFailure.note(e)
}

/// The first failure to write standard output other than its going away (EPIPE, EIO: `| head`, a closed
/// terminal): a run whose output did not all land ends with `cannot write standard output: …` and status 1,
/// as `top -b` already did, never a silent success.
enum StdoutFailure {
    private static let first = Mutex<Int32?>(nil)

    static func note(_ errno: Int32) {
        guard errno != EPIPE && errno != EIO else { return }
        first.withLock { if $0 == nil { $0 = errno } }
    }

    /// The error to end with, if a write to stdout failed.
    static var error: KVMScopeError? {
        first.withLock { $0 }.map { KVMScopeError.io("cannot write standard output: \(Errno(rawValue: $0))") }
    }
}

/// Writes to stderr; never crashes (a terminal that went away answers EIO).
func writeStderr(_ s: String) {
    StandardDescriptors.write(STDERR_FILENO, s)
}

/// Prints a warning as one line on stderr (`kvmscope: warning: …`); the run goes on.
func warn(_ message: String) {
    writeStderr("kvmscope: warning: \(message)\n")
}

/// Creates (or truncates) a file kvmscope writes — `stat -L`'s log, `report --html`'s page — with mode 0640
/// (less what the umask takes away): the traces of a host's VMs are not for every local user.
/// - Returns: the open descriptor (close-on-exec).
/// - Throws: `KVMScopeError.io("cannot write PATH: <the system's reason>")`.
func createOutputFile(_ path: String) throws -> Int32 {
    switch OutputFiles.open(path) {
    case .success(let fd): return fd
    case .failure(let e): throw KVMScopeError.io("cannot write \(path): \(e)")
    }
}

/// Writes a whole file with ``createOutputFile(_:)``. Throws one-line io errors (e.g. "No space left on device").
func writeOutputFile(_ path: String, _ text: String) throws {
    let fd = try createOutputFile(path)
    defer { close(fd) }
    let bytes = Array(text.utf8)
    var done = 0
    while done < bytes.count {
        let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, bytes.count - done) }
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { throw KVMScopeError.io("cannot write \(path): \(Errno(rawValue: errno))") }
        done += n
    }
}
