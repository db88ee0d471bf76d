import Foundation
import Glibc
import KVMAnalysis
import KVMExits
import KVMSources
import TestSupport
import Testing

/// The real-kernel path of exit latency: kvm_exit/kvm_entry-shaped records written to the instance's
/// trace_marker_raw (ftrace:raw_data, decoded as kvm_exit or kvm_entry by size through TraceConfig.injected)
/// go through the real per-CPU ring buffers, readers, cross-CPU merge and pairer. Timestamps are the kernel's,
/// so counts are exact and latencies only checked for count and order.
@Suite(.serialized, .enabled(if: KVMTest.canRun, "needs root and tracefs"))
struct MarkerLiveTests {
    /// kvm_exit/kvm_entry record bytes 8..< built from the running kernel's formats.
    struct Records {
        let exitB: EventPayloadBuilder
        let entryB: EventPayloadBuilder

        init() throws {
            let root = try TraceFS.root()
            let f = EventFormats()
            for e in ["kvm_exit", "kvm_entry"] { try f.add(system: "kvm", format: TraceFS.format(system: "kvm", event: e, root: root)) }
            exitB = try EventPayloadBuilder(formats: f, event: "kvm_exit")
            entryB = try EventPayloadBuilder(formats: f, event: "kvm_entry")
        }

        func exit(reason: UInt32, vcpu: UInt32, rip: UInt64) -> [UInt8] {
            Array(exitB.payload(pid: 0, ["exit_reason": UInt64(reason), "isa": 1, "guest_rip": rip,
                                         "vcpu_id": UInt64(vcpu)]).dropFirst(8))
        }

        func entry(vcpu: UInt32) -> [UInt8] {
            Array(entryB.payload(pid: 0, ["vcpu_id": UInt64(vcpu), "rip": 0x1000]).dropFirst(8))
        }
    }

    static func session(bufferKB: UInt32 = 4096) throws -> LiveSession {
        var c = TraceConfig()
        c.events = ["kvm_exit", "kvm_entry"]
        c.injected = ["kvm_exit", "kvm_entry"]
        c.bufferKB = bufferKB
        c.onlyPid = getpid()  // real kvm events of other VMs (on hosts where they fire) stay out
        return try LiveSession(config: c)
    }

    // glibc's sched_setaffinity and gettid are declared only under _GNU_SOURCE, which Swift's Glibc module
    // does not define: look them up by name.
    typealias SetAffinity = @convention(c) (pid_t, Int, UnsafeRawPointer) -> Int32
    typealias GetTID = @convention(c) () -> pid_t
    nonisolated(unsafe) static let setAffinity = unsafeBitCast(dlsym(UnsafeMutableRawPointer(bitPattern: 0), "sched_setaffinity"),
                                                                to: SetAffinity.self)
    nonisolated(unsafe) static let getTID = unsafeBitCast(dlsym(UnsafeMutableRawPointer(bitPattern: 0), "gettid"),
                                                           to: GetTID.self)

    /// Pins the calling thread to one CPU.
    static func pin(_ cpu: Int) -> Bool {
        var set = cpu_set_t()
        withUnsafeMutableBytes(of: &set) { $0.storeBytes(of: UInt64(1) << UInt64(cpu), toByteOffset: 0, as: UInt64.self) }
        return setAffinity(0, MemoryLayout<cpu_set_t>.size, &set) == 0
    }

    /// Runs body on a new thread and waits for it; returns the thread's tid and body's result.
    static func onThread<T: Sendable>(_ body: @escaping @Sendable () -> T) -> (tid: Int32, result: T) {
        let (tid, result) = onThreads([{ @Sendable in (Self.getTID(), body()) }], timeout: 300)[0]
        return (tid, result)
    }

    static func markerPath(_ s: LiveSession) -> String { "\(s.root)/instances/\(s.instance)/trace_marker_raw" }

    /// Writes records to trace_marker_raw; returns how many writes succeeded.
    static func write(_ path: String, _ records: [[UInt8]]) -> Int {
        let fd = open(path, O_WRONLY)
        guard fd >= 0 else { return 0 }
        defer { close(fd) }
        var ok = 0
        for r in records where r.withUnsafeBytes({ Glibc.write(fd, $0.baseAddress, $0.count) }) == r.count { ok += 1 }
        return ok
    }

    @Test func pairsExactlyAcrossCPUsWithOrphansAndMigration() throws {
        let cpus = ProcessInfo.processInfo.activeProcessorCount
        try #require(cpus >= 2, "needs two CPUs")
        let rec = try Records()
        let k = 20_000
        let m = 2_000
        let s = try Self.session()
        defer { s.stop() }
        let path = Self.markerPath(s)

        let ioExits = (0..<3).map { rec.exit(reason: 30, vcpu: 0, rip: 0x100 + UInt64($0)) }
        let eptExit = rec.exit(reason: 48, vcpu: 1, rip: 0x200)
        let hltExit = rec.exit(reason: 12, vcpu: 2, rip: 0x300)
        let entries = (0..<3).map { rec.entry(vcpu: UInt32($0)) }
        // CPU 0: k plain IO_INSTRUCTION exits, each entered.
        let a = Self.onThread { () -> Int in
            guard Self.pin(0) else { return -1 }
            var recs: [[UInt8]] = []
            for i in 0..<k { recs += [ioExits[i % 3], entries[0]] }
            return Self.write(path, recs)
        }
        // CPU 1: an entry without exit (orphan entry), k EPT_VIOLATION pairs, then exit, exit, entry (one
        // orphan exit, one pair).
        let b = Self.onThread { () -> Int in
            guard Self.pin(1) else { return -1 }
            var recs: [[UInt8]] = [entries[1]]
            for _ in 0..<k { recs += [eptExit, entries[1]] }
            recs += [eptExit, eptExit, entries[1]]
            return Self.write(path, recs)
        }
        // Migrating vCPU: each HLT exit written on one CPU, its entry after re-pinning to the other.
        let c = Self.onThread { () -> Int in
            var ok = 0
            for i in 0..<m {
                guard Self.pin(i % 2) else { return -1 }
                ok += Self.write(path, [hltExit])
                guard Self.pin(1 - i % 2) else { return -1 }
                ok += Self.write(path, [entries[2]])
            }
            return ok
        }
        #expect(a.result == 2 * k)
        #expect(b.result == 2 * k + 4)
        #expect(c.result == 2 * m)
        s.stop()
        let snap = s.snapshot()
        #expect(snap.lostEvents == 0)
        #expect(snap.pairing == PairingStats(paired: UInt64(k + k + 1 + m), orphanExits: 1, orphanEntries: 1))
        let summary = try Summary(snap, filter: SummaryFilter(tids: [a.tid, b.tid, c.tid]))
        #expect(summary.total(of: "kvm_exit") == UInt64(k + k + 2 + m))
        #expect(summary.total(of: "kvm_entry") == UInt64(k + k + 2 + m))
        let rows = summary.exits.map { "\($0.vcpu.map(String.init) ?? "-") \($0.reason) \($0.count) \($0.latency?.count ?? 0)" }
        #expect(rows == ["0 IO_INSTRUCTION \(k) \(k)", "1 EPT_VIOLATION \(k + 2) \(k + 1)", "2 HLT \(m) \(m)"])
        #expect(summary.exits.allSatisfy { $0.vm == getpid() })
        #expect(summary.exits.first?.topRIPs.map(\.rip) == [0x100, 0x101, 0x102])
        #expect(summary.exits.first?.topRIPs.map(\.count).reduce(0, +) == UInt64(k))
        for r in summary.exits {
            let l = try #require(r.latency)
            #expect(l.min <= l.p50 && l.p50 <= l.p99 && l.p99 <= l.max)
        }
    }

    /// Informational: how many kvm_exit-shaped records per second one writer pushes through the live path, and
    /// that every one is either decoded or counted lost.
    @Test func markerThroughput() throws {
        let rec = try Records()
        let n = 1_000_000
        let s = try Self.session()
        defer { s.stop() }
        let path = Self.markerPath(s)
        let one = rec.exit(reason: 30, vcpu: 0, rip: 0x100)
        let start = Date()
        let w = Self.onThread { () -> Int in
            _ = Self.pin(0)
            let fd = open(path, O_WRONLY)
            guard fd >= 0 else { return 0 }
            defer { close(fd) }
            var ok = 0
            one.withUnsafeBytes { p in
                for _ in 0..<n where Glibc.write(fd, p.baseAddress, p.count) == p.count { ok += 1 }
            }
            return ok
        }
        let seconds = Date().timeIntervalSince(start)
        s.stop()
        let snap = s.snapshot()
        #expect(w.result == n)
        let decoded = snap.eventTotals[Int(snap.catalog.index(of: "kvm_exit")!)]
        #expect(decoded + snap.lostEvents == UInt64(n), "every record decoded or counted lost")
        print(String(format: "marker path: %d kvm_exit records in %.3f s = %.2f M records/s, %llu lost",
                     n, seconds, Double(n) / seconds / 1e6, snap.lostEvents))
    }
}
