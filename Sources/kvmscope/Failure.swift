import Foundation
import KVMHost

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
