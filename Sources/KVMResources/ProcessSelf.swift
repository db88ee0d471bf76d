#if canImport(Glibc)
import Glibc
#endif

/// kvmscope's own process, as Prometheus clients export themselves (`process_*`: client_golang's and
/// client_python's process collector): what `serve` costs the host it watches.
public struct ProcessSelf: Sendable, Equatable {
    /// User + system CPU time, seconds (/proc/self/stat utime + stime ÷ clock ticks).
    public var cpuSeconds: Double
    /// Resident memory, bytes (/proc/self/stat rss × page size).
    public var residentBytes: UInt64
    /// Virtual memory, bytes (/proc/self/stat vsize).
    public var virtualBytes: UInt64
    /// Open file descriptors (/proc/self/fd entries).
    public var openFDs: Int
    /// The soft limit of open file descriptors (getrlimit RLIMIT_NOFILE); nil when unlimited.
    public var maxFDs: UInt64?
    /// When the process started, seconds since the epoch (/proc/stat btime + /proc/self/stat starttime ÷ ticks).
    public var startTimeSeconds: Double

    public init(cpuSeconds: Double, residentBytes: UInt64, virtualBytes: UInt64, openFDs: Int, maxFDs: UInt64?,
                startTimeSeconds: Double) {
        self.cpuSeconds = cpuSeconds
        self.residentBytes = residentBytes
        self.virtualBytes = virtualBytes
        self.openFDs = openFDs
        self.maxFDs = maxFDs
        self.startTimeSeconds = startTimeSeconds
    }

    /// Reads it now; nil when /proc cannot be read.
    public static func read() -> ProcessSelf? {
        let file = ProcFile()
        // man 5 proc: 14 utime, 15 stime, 22 starttime, 23 vsize, 24 rss.
        guard case .success = file.read("/proc/self/stat"), let stat = file.statFields([14, 15, 22, 23, 24]) else { return nil }
        guard case .success = file.read("/proc/stat"), let btime = file.keyed(["btime "])[0] else { return nil }
        guard case .success(let fds) = ProcDirectory.numericEntries("/proc/self/fd") else { return nil }
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        let page = UInt64(sysconf(Int32(_SC_PAGESIZE)))
        var limit = rlimit()
        let maxFDs = getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 && limit.rlim_cur != rlim_t.max ? UInt64(limit.rlim_cur) : nil
        let v = stat.values
        return ProcessSelf(cpuSeconds: Double(v[0] &+ v[1]) / ticks, residentBytes: v[4] &* page, virtualBytes: v[3],
                           // The directory's own descriptor, open while it was listed, is not one of ours.
                           openFDs: max(0, fds.count - 1), maxFDs: maxFDs,
                           startTimeSeconds: Double(btime) + Double(v[2]) / ticks)
    }
}
