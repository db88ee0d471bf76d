import ArgumentParser
import Foundation
import KVMHost
import KVMResources

/// `--qmp PATH` (repeatable), shared by `top`, `stat`, `serve` and `watch`: QEMU's own numbers for the VM
/// serving each socket.
struct QMPOptions: ParsableArguments {
    @Option(name: .customLong("qmp"),
            help: ArgumentHelp("A QEMU QMP socket (-qmp unix:PATH,server=on,wait=off; repeatable): per-device disk requests, bytes and latency, configured memory, balloon and KVM's statistics of the VM serving it (matched by the socket's peer pid).",
                               valueName: "path"))
    var sockets: [String] = []

    @Option(name: .customLong("qmp-timeout"), parsing: .unconditional, help: "Seconds each QMP command may take before the socket counts as hung.")
    var timeout: Double = 1

    func validate() throws {
        if sockets.contains(where: \.isEmpty) { throw ValidationError("--qmp needs a socket path") }
        // A path that is there and is no socket (a disk image, a directory) is a mistake, said at once; a path
        // not there yet may be a QEMU still starting: warned about at each try, as a socket that goes away is.
        for path in sockets {
            var st = stat()
            if stat(path, &st) == 0 && (st.st_mode & S_IFMT) != S_IFSOCK {
                throw ValidationError("--qmp \(path): not a socket (QEMU's -qmp unix:PATH,server=on,wait=off makes one)")
            }
        }
        guard timeout > 0 && timeout <= 60 else { throw ValidationError("--qmp-timeout must be more than 0 and at most 60 seconds") }
    }

    /// One monitor per socket (connected at the first sample), each socket once (``unique(_:)``).
    func monitors() -> [QMPMonitor] { Self.unique(sockets).map { QMPMonitor(path: $0, timeout: timeout) } }

    /// The sockets without repeats: a socket named twice (the same path, or two paths to one file) is one.
    /// QEMU serves one client at a time on a socket: a second connection would only wait in its backlog and
    /// time out.
    static func unique(_ sockets: [String]) -> [String] {
        var seen = Set<String>()
        return sockets.filter { seen.insert(URL(fileURLWithPath: $0).resolvingSymlinksInPath().standardizedFileURL.path).inserted }
    }
}

extension ResourceSampler {
    /// Prints the warnings of the samples so far, one `kvmscope: …` line each, on stderr.
    func printWarnings() {
        for w in takeWarnings() { writeStderr("kvmscope: \(w)\n") }
    }
}
