import Foundation
import Testing
import TestSupport

/// Idle costs nothing: `serve` on a host where nothing it traces runs wakes at most twice a second per reader,
/// counting every thread of the process (readers, pairing, HTTP, main loop). The readers sleep until their
/// CPU's buffer crosses the watermark or a scrape asks them to catch up; nothing wakes on a per-CPU timer.
@Suite(.serialized, .enabled(if: KVMTest.canRun, "needs root, /dev/kvm and tracefs"))
struct IdleWakeupTests {
    /// Context switches (voluntary + nonvoluntary) per thread of `pid`, by tid, with the thread's name.
    static func switches(_ pid: Int32) -> [Int32: (name: String, count: Int)] {
        var out: [Int32: (name: String, count: Int)] = [:]
        let dir = "/proc/\(pid)/task"
        for t in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] {
            guard let tid = Int32(t), let status = try? String(contentsOfFile: "\(dir)/\(t)/status", encoding: .utf8)
            else { continue }
            var name = "", count = 0
            for line in status.split(separator: "\n") {
                let parts = line.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
                guard parts.count == 2 else { continue }
                if parts[0] == "Name" { name = parts[1] }
                if parts[0] == "voluntary_ctxt_switches" || parts[0] == "nonvoluntary_ctxt_switches" {
                    count += Int(parts[1]) ?? 0
                }
            }
            out[tid] = (name, count)
        }
        return out
    }

    @Test func idleServeWakesAtMostTwiceASecondPerReader() throws {
        // Nothing kvmscope traces runs: it follows only an idle process (set_event_pid), so other VMs on this
        // host (other test runs' storms) write nothing into its buffers.
        let idle = try Spawned("/bin/sleep", ["300"])
        defer { idle.stop() }
        let port = freeLoopbackPort()
        let serve = try Spawned(CLI.binary, ["serve", "--listen", "127.0.0.1:\(port)", "-p", "\(idle.pid)"], stdinNull: true)
        defer { serve.stop() }
        try #require(serve.waitForStderr("kvmscope: serving http://127.0.0.1:\(port)/metrics", timeout: 30), "\(serve.stderr)")
        usleep(1_000_000)  // start-up done
        let window = 10
        let before = Self.switches(serve.pid)
        sleep(UInt32(window))
        let after = Self.switches(serve.pid)
        let readers = after.filter { $0.value.name.hasPrefix("kvmscope-cpu") }
        #expect(readers.count >= 1, "reader threads: \(after.values.map(\.name))")
        let delta = after.map { tid, t in (name: t.name, count: t.count - (before[tid]?.count ?? 0)) }
        let total = delta.reduce(0) { $0 + $1.count }
        for d in delta where d.name.hasPrefix("kvmscope-cpu") {
            #expect(d.count <= 2 * window, "\(d.name) woke \(d.count) times in \(window) s")
        }
        #expect(total <= 2 * readers.count * window, "\(total) wake-ups in \(window) s with \(readers.count) readers: \(delta)")
        // And a scrape still answers (the readers catch up for it).
        #expect(httpGet("http://127.0.0.1:\(port)/metrics")?.status == 200)
    }
}
