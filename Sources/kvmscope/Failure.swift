import Foundation
import KVMTrace

/// Prints an error as one line on stderr and exits non-zero: never a stack trace.
func fail(_ message: String, code: Int32 = 1) -> Never {
    writeStderr("kvmscope: \(message)\n")
    exit(code)
}

/// Runs a body and turns kvmscope's errors into one clear line.
func reportingErrors<T>(_ body: () throws -> T) -> T {
    do {
        return try body()
    } catch let e as KVMScopeError {
        fail(e.description)
    } catch {
        fail("\(error)")
    }
}

/// Writes to stdout; a stdout that went away (EIO, EPIPE) loses the text instead of crashing.
func writeStdout(_ s: String) {
    StandardDescriptors.write(STDOUT_FILENO, s)
}

/// Writes to stderr; never crashes (a terminal that went away answers EIO).
func writeStderr(_ s: String) {
    StandardDescriptors.write(STDERR_FILENO, s)
}
