import Foundation
import Testing
import TestSupport

/// `serve` retires a real guest's threads on their `sched:sched_process_exit` records, traced in its own
/// instance under the same `-p` as the kvm events.
@Suite(.serialized, .enabled(if: KVMTest.canRun, "needs root, /dev/kvm and tracefs"))
struct ThreadExitLiveTests {
    static let vcpus = 4
    /// Enough for the vCPU threads to live past serve's first 1 s round, which names them while they run: named
    /// only after they exit, a thread's vCPU number comes from the kernel's saved cmdlines (128 entries), which
    /// other processes overwrite on a busy machine (a clean-clone run at 5,000 exits lost two vCPUs' numbers).
    static let exitsPerVCPU = 25_000

    /// A held storm of 4 vCPUs under `serve -p`: once it has exited, serve has seen exactly its 5 threads'
    /// exit records (4 vCPU threads and the main thread, which created the VM and its vCPUs and so has kvm
    /// events of its own), and retired exactly those 5 threads, every one on its exit record (none found gone
    /// from /proc: `kvmscope_retired_on_exit_total` = `kvmscope_retired_threads_total`), within seconds of the
    /// storm's end; every vCPU's 25,000 `KVM_EXIT_IO` are counted exactly, in its own retired row.
    @Test(.timeLimit(.minutes(2))) func aStormsThreadsRetireOnTheirExitRecords() throws {
        let storm = try ServeLiveTests.heldStorm("--kind io --vcpus \(Self.vcpus) --exits \(Self.exitsPerVCPU)")
        defer { storm.stop() }
        let port = freeLoopbackPort()
        let serve = try Spawned(CLI.binary, ["serve", "--listen", "127.0.0.1:\(port)", "-p", "\(storm.pid)"])
        defer { serve.stop() }
        #expect(serve.waitForStderr("kvmscope: serving http://127.0.0.1:\(port)/metrics"), "serve: \(serve.stderr)")
        let before = ServeChurnLiveTests.samples(httpGet("http://127.0.0.1:\(port)/metrics")?.body ?? "")
        #expect(before["kvmscope_thread_exits_total"] == 0 && before["kvmscope_retired_on_exit_total"] == 0,
                "\(before.filter { $0.key.contains("retired") || $0.key.contains("exits_total") })")
        storm.release()
        #expect(storm.wait() == 0)
        let ended = Date()
        let threads = Double(Self.vcpus + 1)
        let body = scrapeMetrics(port: port) { text in
            let s = ServeChurnLiveTests.samples(text)
            return s["kvmscope_retired_threads_total"] == threads && s["kvmscope_live_threads"] == 0
        }
        let waited = Date().timeIntervalSince(ended)
        let s = ServeChurnLiveTests.samples(body)
        let occupancy = s.filter { $0.key.hasPrefix("kvmscope_retired") || $0.key.hasPrefix("kvmscope_live_")
                                   || $0.key.hasPrefix("kvmscope_thread_exits") }
        #expect(s["kvmscope_retired_threads_total"] == threads, "\(occupancy)")
        #expect(s["kvmscope_retired_on_exit_total"] == threads, "\(occupancy)")
        #expect(s["kvmscope_thread_exits_total"] == threads, "\(occupancy)")
        #expect(s["kvmscope_live_threads"] == 0 && s["kvmscope_live_series"] == 0, "\(occupancy)")
        #expect(s["kvmscope_retired_rows"] == threads, "\(occupancy)")
        // serve retires at each 1 s evaluation: an exit is retired at the first one after it (a loaded machine
        // stretches that; /proc's safety net would take 30 s).
        #expect(waited < 10, "retired \(waited) s after the storm ended")
        for v in 0..<Self.vcpus {
            let row = "kvmscope_userspace_exits_total{vm=\"\(storm.pid)\",vm_name=\"kvmscope\",vcpu=\"\(v)\",reason=\"KVM_EXIT_IO\"}"
            #expect(s[row] == Double(Self.exitsPerVCPU), "\(row): \(String(describing: s[row]))")
        }
        #expect(s["kvmscope_events_total{event=\"kvm_pio\"}"] == Double(Self.vcpus * Self.exitsPerVCPU))
        #expect(ServeChurnLiveTests.sum(s, "kvmscope_lost_events_total") == 0)
    }
}
