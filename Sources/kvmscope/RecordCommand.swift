import ArgumentParser
import Foundation
import KVMTrace

struct RecordCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "record",
        abstract: "Record kvm events into a trace.dat that trace-cmd report and KernelShark open.",
        discussion: """
            Copies the kernel's raw ring-buffer pages of a private tracefs instance into FILE (trace.dat
            version 6): no decoding while recording. Ends on Ctrl-C, --duration, --max-size or when COMMAND exits.
              kvmscope record -o t.dat --duration 10
              kvmscope record -o t.dat -e kvm_exit -e kvm_entry -- ./my-vmm
              kvmscope report t.dat        (or: trace-cmd report -i t.dat)
            """)

    @Option(name: [.customShort("o"), .long], help: "The trace.dat file to write.")
    var output: String

    @Option(help: "Stop after this many seconds.")
    var duration: Double?

    @Option(name: .customLong("max-size"), help: "Stop when this much trace data is written (bytes; K, M, G suffixes).")
    var maxSize: String?

    @Option(name: [.customShort("e"), .customLong("event")], help: "A kvm event to record (repeatable; default: every kvm event).")
    var events: [String] = []

    @Option(name: .customLong("buffer-kb"), help: "Ring-buffer size per CPU, KiB.")
    var bufferKB: UInt32 = 4096

    @Argument(parsing: .postTerminator, help: "Record while this command runs, only its processes and threads.")
    var command: [String] = []

    func validate() throws {
        if let duration, duration <= 0 { throw ValidationError("--duration must be > 0") }
        if let maxSize, Self.bytes(maxSize) == nil { throw ValidationError("--max-size: bad size '\(maxSize)' (e.g. 500M, 2G)") }
        guard bufferKB >= 4 else { throw ValidationError("--buffer-kb must be at least 4") }
    }

    static func bytes(_ s: String) -> UInt64? {
        let units: [Character: UInt64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40]
        var t = s.uppercased()
        if t.hasSuffix("IB") { t.removeLast(2) } else if t.hasSuffix("B") { t.removeLast() }
        var mult: UInt64 = 1
        if let u = t.last, let m = units[u] { mult = m; t.removeLast() }
        guard let v = Double(t), v > 0 else { return nil }
        return UInt64(v * Double(mult))
    }

    func run() {
        let stop = StopSignal()
        var config = RecordConfig()
        config.events = events
        config.bufferKB = bufferKB
        config.maxBytes = maxSize.flatMap(Self.bytes)
        config.onlyPid = command.isEmpty ? nil : getpid()
        guard FileManager.default.createFile(atPath: output, contents: nil) else { fail("cannot write \(output)") }
        let session = reportingErrors { try RecordSession(config: config) }
        var child: Process?
        if !command.isEmpty {
            child = reportingErrors { try StatCommand().spawn(command) }
        }
        let tty = isatty(2) == 1
        let start = Date()
        let deadline = duration.map { start.addingTimeInterval($0) }
        var lastPrint = Date.distantPast
        while true {
            if stop.isRaised || session.isFull { break }
            if let deadline, Date() >= deadline { break }
            if let child {
                session.noteThreads(of: child.processIdentifier)
                if !child.isRunning { break }
            }
            if tty && Date().timeIntervalSince(lastPrint) >= 0.5 {
                lastPrint = Date()
                let p = session.progress()
                let secs = max(0.001, Date().timeIntervalSince(start))
                writeStderr(String(format: "\r  %.1fs  %llu events  %.1f MiB  %.0f events/s  lost %llu   ",
                                   secs, p.events, Double(session.bytesWritten) / 1048576,
                                   Double(p.events) / secs, p.lost))
            }
            usleep(20_000)
        }
        // Stop tracing first (--max-size, --duration or Ctrl-C end the recording, not the command).
        let p = session.progress()
        session.stop()
        if let child {
            if child.isRunning && stop.isRaised { child.interrupt() }
            child.waitUntilExit()
        }
        let result = reportingErrors { try session.write(to: output) }
        let lost = session.finalStats.values.reduce(UInt64(0)) { $0 + TraceFS.lost(inStats: $1) }
        if tty {
            writeStderr(String(format: "\r  wrote %@: %llu events, %.1f MiB, lost %llu, %d threads%@\n",
                               output, p.events, Double(session.bytesWritten) / 1048576, lost,
                               result.tids.count, session.isFull ? " (--max-size reached)" : ""))
        }
        if session.pagesDropped > 0 {
            writeStderr("kvmscope: --max-size reached: \(session.pagesDropped) pages not written\n")
        }
        if let child, child.terminationStatus != 0 {
            fail("command exited with status \(child.terminationStatus)", code: 3)
        }
    }
}
