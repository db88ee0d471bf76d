import Foundation
import KVMExits
import KVMHost
import SystemPackage

/// Writes to stdout; a stdout that went away (EIO, EPIPE) loses the text instead of crashing.
func writeStdout(_ s: String) {
    StandardDescriptors.write(STDOUT_FILENO, s)
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
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o640)
    guard fd >= 0 else { throw KVMScopeError.io("cannot write \(path): \(Errno(rawValue: errno))") }
    return fd
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
