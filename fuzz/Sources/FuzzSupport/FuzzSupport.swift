#if canImport(Glibc)
import Glibc
#endif
import CLibFuzzer
import KVMAnalysis
import KVMExits
import KVMScopeViews
import KVMSources

/// What the fuzz targets share: the checks beyond "no crash" (an error is one line naming the input; the
/// analysis of whatever was read holds its own sums) and the file a path-taking reader is given.
public enum Fuzz {
    /// A line on stderr that does not stop the run.
    public static func note(_ what: String) {
        let line = Array("fuzz: note: \(what)\n".utf8)
        _ = line.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
    }

    /// Stops the run (a finding) with a reason on stderr: libFuzzer saves the input that did it.
    public static func fail(_ why: String) -> Never {
        let line = Array("fuzz: \(why)\n".utf8)
        _ = line.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
        abort()
    }

    /// Runs libFuzzer (its command line is this program's) with `body` called on each input; exits with
    /// libFuzzer's status.
    public static func run(_ body: @escaping (UnsafePointer<UInt8>, Int) -> Void) -> Never {
        oneInput = body
        var argc = CommandLine.argc
        var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
        exit(LLVMFuzzerRunDriver(&argc, &argv) { data, size in
            Fuzz.oneInput(data ?? UnsafePointer(bitPattern: 1)!, size)
            return 0
        })
    }

    nonisolated(unsafe) static var oneInput: (UnsafePointer<UInt8>, Int) -> Void = { _, _ in }

    /// A bad input must give what `kvmscope` prints as its one error line: one line, naming the file.
    public static func checkError(_ error: any Error, naming name: String?) {
        let text = "\(error)"
        if text.isEmpty || text.contains("\n") { fail("error is not one line: \(text)") }
        if let name, !text.contains(name) { fail("error does not name \(name): \(text)") }
    }

    /// What `kvmscope report` does with a source: the analysis (with a timeline), the summary and every view
    /// of it. The summary's counts must add up to what the analysis kept.
    public static func analyse(_ source: TraceSource) throws {
        let a = try ReportAnalysis.run(source, timelineBins: 64)
        let filtered = try ReportAnalysis.run(source, from: 0.001, to: 0.5)
        if filtered.eventsKept > a.eventsKept { fail("a time window kept more events than the whole trace") }
        let s = try Summary(a.snapshot)
        let seconds = max(a.durationSeconds, 1e-9)
        _ = StatTable.render(s, previous: nil, seconds: seconds, children: false)
        _ = ReportTable.render(s, byVCPU: true, top: 5)
        _ = ReportTable.footer(s)
        _ = ReportTable.csvRows(s, file: "fuzz")
        _ = SummaryJSON.value(s, durationSeconds: a.durationSeconds).serialized(pretty: true)
        _ = PrometheusExposition.render(s, format: .openMetrics, extras: ExpositionExtras(version: "fuzz"))
        if let t = a.timeline {
            _ = HTMLReport.render(timeline: t, snapshot: a.snapshot, filter: SummaryFilter(), title: "fuzz")
        }
    }
}

/// An in-memory file (in /dev/shm, unlinked at once) that holds each input, for readers that take a path:
/// `path` (/proc/self/fd/N) names it.
public final class InputFile: @unchecked Sendable {
    public let fd: Int32
    public let path: String

    public init(name: String) {
        let file = "/dev/shm/kvmscope-fuzz-\(getpid())-\(name)"
        fd = open(file, O_RDWR | O_CREAT | O_TRUNC, 0o600)
        if fd < 0 { Fuzz.fail("\(file): \(String(cString: strerror(errno)))") }
        unlink(file)
        path = "/proc/self/fd/\(fd)"
    }

    /// Replaces the file's contents with the input.
    public func write(_ data: UnsafePointer<UInt8>, _ size: Int) {
        guard ftruncate(fd, 0) == 0 else { Fuzz.fail("ftruncate: \(String(cString: strerror(errno)))") }
        var done = 0
        while done < size {
            let n = pwrite(fd, data + done, size - done, off_t(done))
            if n <= 0 { Fuzz.fail("pwrite: \(String(cString: strerror(errno)))") }
            done += n
        }
    }
}
