import Foundation
import KVMExits
import KVMHost
import KVMSources
import Synchronization

/// `serve` under VM churn at a rate real guests cannot reach: `kvmscope serve` (KVMSCOPE_INJECT=kvm_exit,kvm_entry,
/// `--event kvm_exit --event kvm_entry`) while this harness starts writer threads in waves — `alive` at a time,
/// each named `CPU n/KVM`, each writing `pairs` kvm_exit/kvm_entry-shaped records to serve's trace_marker_raw and
/// exiting. An injected record is the writing thread's (the kernel stamps its tid), so each writer is one vCPU
/// thread of this process's "VM" that exits, never to return: a million of them are a million distinct vCPU
/// threads (tids are reused once the kernel's pid_max wraps, as on a real host).
///
/// First a baseline phase: `alive` threads that each write `pairs × checkpoints[0] / alive` pairs at once (the
/// 64-thread case, in the same serve). Then churn until each checkpoint of distinct threads; at each one, the
/// writers stop, the harness waits until serve has counted every record (or the kernel counted it lost) and
/// every thread has retired, then reads serve's RSS (least of 5 readings) and VmHWM, times 3 scrapes (curl)
/// and checks the counts: `kvmscope_events_total` of each event = records written − lost, paired = pairs, and the
/// per-VM `kvmscope_exits_total` series sum to the exits counted.
struct ServeChurn {
    var kvmscope: String
    var checkpoints: [Int]
    var alive: Int
    var pairs: Int
    /// Distinct threads started per second at most (nil: as fast as the waves go).
    var rate: Double?
    var bufferKB = 8192

    struct Sample {
        /// Distinct writer threads so far (the baseline's `alive` included).
        var threads: Int
        var phase: String
        var written: UInt64
        /// Events written and the wall seconds of the writes since the last sample; serve's CPU over them.
        var phaseEvents: UInt64
        var phaseSeconds: Double
        var phaseServeCPU: Double
        var rssAtEndKB: Int
        /// The most live threads and the highest RSS seen while writing (a scrape every second).
        var peakLiveThreads: Int
        var peakRSSKB: Int
        var rssKB: Int
        var hwmKB: Int
        var scrapeMS: [Double]
        var metrics: [String: Double]
        var exact: Bool
        var note: String
        var eventsPerSecond: Double { Double(phaseEvents) / phaseSeconds }
        var serveNSPerEvent: Double { phaseServeCPU * 1e9 / Double(max(1, phaseEvents)) }
        func m(_ k: String) -> UInt64 { UInt64(max(0, metrics[k] ?? 0)) }
    }

    func run(progress: (String) -> Void) throws -> [Sample] {
        let root = try TraceFS.root()
        let formats = try LiveCeiling.loadFormats()
        let exitB = try EventPayloadBuilder(formats: formats, event: "kvm_exit")
        let entryB = try EventPayloadBuilder(formats: formats, event: "kvm_entry")
        let mix = SyntheticWorkload.corpusMix
        // Record bytes 8..< (after the common header the kernel writes), one exit per vCPU slot.
        let exits = (0..<alive).map { i in
            Array(exitB.payload(pid: 0, ["exit_reason": UInt64(mix[i % mix.count].code), "isa": 1, "vcpu_id": UInt64(i),
                                         "guest_rip": 0xffff_ffff_8100_0000 + UInt64(i) * 0x40])[8...])
        }
        let entries = (0..<alive).map { i in Array(entryB.payload(pid: 0, ["vcpu_id": UInt64(i), "rip": 0x1000])[8...]) }

        let port = 20_000 + Int(getpid()) % 20_000
        let url = "http://127.0.0.1:\(port)/metrics"
        let serve = try ChildProcess([kvmscope, "serve", "--listen", "127.0.0.1:\(port)", "--event", "kvm_exit",
                                      "--event", "kvm_entry", "--buffer-kb", "\(bufferKB)"],
                                     environment: ProcessInfo.processInfo.environment.merging(["KVMSCOPE_INJECT": "kvm_exit,kvm_entry"]) { $1 })
        defer {
            serve.signal(SIGTERM)
            _ = try? serve.wait()
        }
        let instance = "\(TraceFS.instancePrefix)\(serve.pid)"
        try LiveCeiling.waitForInstance(instance, of: serve, root: root)
        for _ in 0..<100 where !serve.stderr.contains("serving") { usleep(50_000) }
        let marker = "\(root)/instances/\(instance)/trace_marker_raw"
        let fd = open(marker, O_WRONLY)
        guard fd >= 0 else { throw KVMScopeError.io("cannot open \(marker): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let waves = WaveWriter(fd: fd, exits: exits, entries: entries)

        var samples: [Sample] = []
        var threads = 0
        var written: UInt64 = 0
        // Writes, then the sample: counts settled, threads retired.
        func phase(_ name: String, _ body: () -> Void) throws {
            let before = waves.written.load(ordering: .relaxed)
            let cpu0 = ProcessTree.cpuSeconds(serve.pid)
            let t0 = MarkerWriter.now()
            let watch = Watcher()
            let servePID = serve.pid
            let watcher = Thread { [url] in
                while !watch.stop.load(ordering: .relaxed) {
                    if let m = try? Self.scrape(url).metrics, let live = m["kvmscope_live_threads"] {
                        watch.live.store(max(watch.live.load(ordering: .relaxed), Int(live)), ordering: .relaxed)
                    }
                    watch.rss.store(max(watch.rss.load(ordering: .relaxed), ChildProcess.statusKB(pid: servePID, "VmRSS") ?? 0),
                                    ordering: .relaxed)
                    usleep(1_000_000)
                }
                watch.done.store(true, ordering: .releasing)
            }
            watcher.start()
            body()
            let seconds = MarkerWriter.now() - t0
            watch.stop.store(true, ordering: .relaxed)
            while !watch.done.load(ordering: .acquiring) { usleep(10_000) }
            let rssAtEnd = serve.statusKB("VmRSS") ?? 0
            written = waves.written.load(ordering: .relaxed)
            progress("serve churn: \(name): \(threads) threads, \(written) records in \(String(format: "%.1f", seconds)) s; waiting for serve to count and retire")
            // serve's CPU from the first write until it has counted the last (a scrape every 0.25 s meanwhile).
            var metrics: [String: Double] = [:]
            var cpu: Double?
            let deadline = MarkerWriter.now() + 60
            while MarkerWriter.now() < deadline {
                metrics = try Self.scrape(url).metrics
                let counted = UInt64(metrics["kvmscope_events_total{event=\"kvm_exit\"}"] ?? 0)
                    + UInt64(metrics["kvmscope_events_total{event=\"kvm_entry\"}"] ?? 0)
                let lost = UInt64(Self.sum(metrics, "kvmscope_lost_events_total"))
                if cpu == nil && counted + lost >= written { cpu = ProcessTree.cpuSeconds(serve.pid) - cpu0 }
                if cpu != nil && metrics["kvmscope_live_threads"] == 0 { break }
                guard serve.isRunning else { throw KVMScopeError.usage("serve ended: \(serve.stderr.suffix(300))") }
                usleep(250_000)
            }
            var rss = Int.max
            for _ in 0..<5 {
                rss = min(rss, serve.statusKB("VmRSS") ?? 0)
                usleep(200_000)
            }
            var times: [Double] = []
            for _ in 0..<3 {
                let s = try Self.scrape(url)
                times.append(s.ms)
                metrics = s.metrics
            }
            let lost = UInt64(Self.sum(metrics, "kvmscope_lost_events_total"))
            let exitsCounted = UInt64(metrics["kvmscope_events_total{event=\"kvm_exit\"}"] ?? 0)
            let entriesCounted = UInt64(metrics["kvmscope_events_total{event=\"kvm_entry\"}"] ?? 0)
            let paired = UInt64(metrics["kvmscope_exit_pairing_total{result=\"paired\"}"] ?? 0)
            let perVM = UInt64(Self.sum(metrics, "kvmscope_exits_total"))
            let half = written / 2
            var note: [String] = []
            let exact: Bool
            if lost == 0 {
                exact = exitsCounted == half && entriesCounted == half && paired == half && perVM == half
                if !exact {
                    let open = UInt64(metrics["kvmscope_exit_pairing_total{result=\"open_at_end\"}"] ?? 0)
                    let orphans = UInt64(metrics["kvmscope_exit_pairing_total{result=\"orphan_entry\"}"] ?? 0)
                    note.append("exits \(exitsCounted), entries \(entriesCounted), paired \(paired) (open at end \(open), orphan entries \(orphans)), per-VM exits \(perVM) of \(half)")
                }
            } else {
                exact = exitsCounted + entriesCounted + lost == written && perVM == exitsCounted
                note.append("\(lost) lost")
            }
            let failed = waves.failed.load(ordering: .relaxed)
            if failed > 0 { note.append("\(failed) writes failed") }
            // Every writer is a thread of this process: exits under any other VM were misnamed (or folded).
            let vms = Set(metrics.filter { $0.key.hasPrefix("kvmscope_exits_total{") && $0.value > 0 }.keys.compactMap { key in
                key.range(of: "vm=\"").map { r in String(key[r.upperBound...].prefix { $0 != "\"" }) }
            })
            let misnamed = vms.subtracting(["\(getpid())"])
            if !misnamed.isEmpty {
                let other = metrics.filter { $0.key.hasPrefix("kvmscope_exits_total{") && !$0.key.contains("vm=\"\(getpid())\"") }
                note.append("exits under \(misnamed.count) other VM(s): \(UInt64(other.values.reduce(0, +)))")
            }
            samples.append(Sample(threads: threads, phase: name, written: written, phaseEvents: written - before,
                                  phaseSeconds: seconds, phaseServeCPU: cpu ?? .nan, rssAtEndKB: rssAtEnd,
                                  peakLiveThreads: watch.live.load(ordering: .relaxed), peakRSSKB: watch.rss.load(ordering: .relaxed), rssKB: rss,
                                  hwmKB: serve.statusKB("VmHWM") ?? 0, scrapeMS: times, metrics: metrics, exact: exact,
                                  note: note.joined(separator: "; ")))
        }

        let first = checkpoints.first ?? 10_000
        try phase("baseline") {
            waves.wave(alive, pairs: pairs * first / alive)
            threads += alive
        }
        for target in checkpoints {
            try phase("churn") {
                let (start, t0) = (threads, MarkerWriter.now())
                while threads < target {
                    let n = min(alive, target - threads)
                    waves.wave(n, pairs: pairs)
                    threads += n
                    if let rate {
                        let ahead = Double(threads - start) / rate - (MarkerWriter.now() - t0)
                        if ahead > 0 { usleep(UInt32(ahead * 1e6)) }
                    }
                }
            }
            progress("serve churn: \(threads) distinct threads: RSS \(samples.last!.rssKB) KiB")
        }
        return samples
    }

    /// One scrape with curl: its time (ms) and the samples by their full name (`name{labels}`).
    static func scrape(_ url: String) throws -> (ms: Double, metrics: [String: Double]) {
        let file = "\(NSTemporaryDirectory())kvmbench-scrape-\(getpid())"
        defer { unlink(file) }
        let c = try ChildProcess(["curl", "-s", "-o", file, "-w", "%{time_total}", url])
        guard try c.wait().status == 0 else { throw KVMScopeError.usage("scrape of \(url) failed: \(c.stderr.prefix(200))") }
        let ms = (Double(c.stdout.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0) * 1e3
        var metrics: [String: Double] = [:]
        let text = (try? String(contentsOfFile: file, encoding: .utf8)) ?? ""
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " "), let v = Double(line[line.index(after: space)...]) else { continue }
            metrics[String(line[..<space])] = v
        }
        return (ms, metrics)
    }

    /// The sum of every sample of a metric (all label sets).
    static func sum(_ metrics: [String: Double], _ name: String) -> Double {
        metrics.reduce(0) { $0 + ($1.key == name || $1.key.hasPrefix(name + "{") ? $1.value : 0) }
    }
}

final class Watcher: Sendable {
    let stop = Atomic<Bool>(false)
    let done = Atomic<Bool>(false)
    let live = Atomic<Int>(0)
    let rss = Atomic<Int>(0)
}

/// Waves of short-lived writer threads on one trace_marker_raw descriptor: slot i (its name `CPU i/KVM`) writes
/// exit i and entry i, `pairs` times, then exits.
final class WaveWriter: @unchecked Sendable {
    let fd: Int32
    let exits: [[UInt8]]
    let entries: [[UInt8]]
    let written = Atomic<UInt64>(0)
    let failed = Atomic<UInt64>(0)

    // glibc declares pthread_setname_np only under _GNU_SOURCE, which Swift's Glibc module does not define.
    typealias SetName = @convention(c) (pthread_t, UnsafePointer<CChar>) -> Int32
    nonisolated(unsafe) static let setName = unsafeBitCast(dlsym(UnsafeMutableRawPointer(bitPattern: 0), "pthread_setname_np"),
                                                           to: SetName.self)

    init(fd: Int32, exits: [[UInt8]], entries: [[UInt8]]) {
        self.fd = fd
        self.exits = exits
        self.entries = entries
    }

    final class Job {
        let writer: WaveWriter
        let slot: Int
        let pairs: Int
        init(writer: WaveWriter, slot: Int, pairs: Int) {
            self.writer = writer
            self.slot = slot
            self.pairs = pairs
        }
    }

    /// Starts `count` threads (slots 0..<count) and waits for all of them to end.
    func wave(_ count: Int, pairs: Int) {
        var ids: [pthread_t] = []
        ids.reserveCapacity(count)
        for slot in 0..<count {
            let job = Unmanaged.passRetained(Job(writer: self, slot: slot, pairs: pairs)).toOpaque()
            var t = pthread_t()
            let rc = pthread_create(&t, nil, { arg in
                let job = Unmanaged<Job>.fromOpaque(arg!).takeRetainedValue()
                job.writer.run(slot: job.slot, pairs: job.pairs)
                return nil
            }, job)
            if rc == 0 { ids.append(t) } else { Unmanaged<Job>.fromOpaque(job).release() }
        }
        for t in ids { pthread_join(t, nil) }
    }

    func run(slot: Int, pairs: Int) {
        _ = Self.setName(pthread_self(), "CPU \(slot)/KVM")
        var ok: UInt64 = 0
        var bad: UInt64 = 0
        exits[slot].withUnsafeBytes { x in
            entries[slot].withUnsafeBytes { e in
                for _ in 0..<pairs {
                    if Glibc.write(fd, x.baseAddress, x.count) == x.count { ok += 1 } else { bad += 1 }
                    if Glibc.write(fd, e.baseAddress, e.count) == e.count { ok += 1 } else { bad += 1 }
                }
            }
        }
        written.wrappingAdd(ok, ordering: .relaxed)
        if bad > 0 { failed.wrappingAdd(bad, ordering: .relaxed) }
    }
}
