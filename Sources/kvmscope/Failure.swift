import Foundation

func writeStdout(_ s: String) {
    FileHandle.standardOutput.write(Data(s.utf8))
}

func writeStderr(_ s: String) {
    FileHandle.standardError.write(Data(s.utf8))
}
