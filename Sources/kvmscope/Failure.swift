import Foundation

func writeStdout(_ s: String) {
    FileHandle.standardOutput.write(Data(s.utf8))
}

func writeStderr(_ s: String) {
    FileHandle.standardError.write(Data(s.utf8))
}

/// Prints a warning as one line on stderr (`kvmscope: warning: …`); the run goes on.
func warn(_ message: String) {
    writeStderr("kvmscope: warning: \(message)\n")
}
