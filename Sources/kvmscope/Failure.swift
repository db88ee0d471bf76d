import Foundation
import KVMTrace

/// Prints an error as one line on stderr and exits non-zero: never a stack trace.
func fail(_ message: String, code: Int32 = 1) -> Never {
    FileHandle.standardError.write(Data("kvmscope: \(message)\n".utf8))
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

func writeStdout(_ s: String) {
    FileHandle.standardOutput.write(Data(s.utf8))
}

/// Prints a warning as one line on stderr (`kvmscope: warning: …`); the run goes on.
func warn(_ message: String) {
    FileHandle.standardError.write(Data("kvmscope: warning: \(message)\n".utf8))
}
