import Foundation
import TestSupport
import Testing

/// Loss is counted, not hidden: with a tiny buffer, counted events plus lost events equal the events the
/// guest caused, and the loss equals the kernel's per-CPU overrun counters.
@Suite(.serialized, .enabled(if: KVMTest.canRun, "needs root, /dev/kvm and tracefs"))
struct LossTests {
    @Test func tinyBufferLosesAndCountsEveryLoss() throws {
        // 2 vCPUs × 200,000 port-I/O exits: a few seconds of storm here. Loss must not depend on scheduling (a
        // reader that keeps up makes none), so kvmscope is frozen (SIGSTOP) for one second mid-storm: with 8 KiB
        // per CPU, the buffers overflow on any machine, and every loss must still be counted.
        let exits = 200_000
        let p = try Spawned(CLI.binary, ["stat", "--json", "--buffer-kb", "8", "--event", "kvm_pio", "--",
                                         CLI.binary, "storm", "--kind", "io", "--vcpus", "2", "--exits", "\(exits)"],
                            stdinNull: true)
        defer { p.stop() }
        // The storm is a child of kvmscope; freeze kvmscope once the storm's vCPUs run.
        let deadline = Date().addingTimeInterval(30)
        var running = false
        while !running && Date() < deadline && p.isRunning {
            let children = (try? String(contentsOfFile: "/proc/\(p.pid)/task/\(p.pid)/children", encoding: .utf8)) ?? ""
            running = children.split(separator: " ").contains { pid in
                let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
                return tasks.contains { (try? String(contentsOfFile: "/proc/\(pid)/task/\($0)/comm", encoding: .utf8)) == "CPU 1/KVM\n" }
            }
            if !running { usleep(10_000) }
        }
        #expect(running, "the storm's vCPUs never ran")
        p.signal(SIGSTOP)
        usleep(1_000_000)
        p.signal(SIGCONT)
        #expect(p.wait(timeout: 120) == 0, "\(p.stderr)")
        let j = try CLI.json(p.stdout)
        let lost = try #require(j["lost_events"] as? Int)
        let counted = (j["events"] as? [String: Int])?["kvm_pio"] ?? 0
        let perCPU = try #require(j["lost_by_cpu"] as? [String: Int])
        #expect(counted + lost == 2 * exits)
        #expect(perCPU.values.reduce(0, +) == lost)
        #expect(lost > 0, "an 8 KiB buffer never overflowed while kvmscope was frozen for 1 s in a storm")
    }

    /// Resident set of a process, KiB (0 once it is gone).
    static func rssKB(_ pid: Int32) -> Int {
        let text = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        let line = text.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
        return Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
    }

    /// The sum of a family's samples whose line starts with `prefix` (e.g. `kvmscope_lost_events_total{`).
    static func sum(_ exposition: String, _ prefix: String) -> Int {
        exposition.split(separator: "\n").filter { $0.hasPrefix(prefix) }
            .reduce(0) { $0 + (Int($1.split(separator: " ").last ?? "") ?? 0) }
    }

    /// Overload under `serve`, bounded to 20 s (the soak, `make soak`, runs for longer): a 2-vCPU io storm far
    /// above what a 4 KiB buffer per CPU lets the reader keep. Every scrape still answers (within 5 s), serve's
    /// memory stays flat (RSS sampled twice a second), and once the storm has ended the kvm_pio events counted
    /// plus the events lost equal the storm's exits exactly (the kernel counts losses per CPU, not per event:
    /// one event is traced, so the loss is all kvm_pio). A reader that keeps up anyway (a quiet machine) is
    /// frozen for one second (SIGSTOP) 5 s in, so that the buffers overflow on any machine; no scrape is made
    /// while it is frozen.
    @Test func overloadUnderServeCountsEveryLossAndStillAnswers() throws {
        let storm = try Spawned("/bin/sh", ["-c", "read x; exec \"$0\" storm --kind io --vcpus 2 --exits 1000000000 --seconds 20",
                                            CLI.binary])
        defer { storm.stop() }
        let port = freeLoopbackPort()
        let serve = try Spawned(CLI.binary, ["serve", "--listen", "127.0.0.1:\(port)", "-p", "\(storm.pid)",
                                             "--buffer-kb", "4", "--event", "kvm_pio"], stdinNull: true)
        defer { serve.stop() }
        try #require(serve.waitForStderr("kvmscope: serving http://127.0.0.1:\(port)/metrics", timeout: 30), "\(serve.stderr)")
        storm.release()
        let start = Date()
        var rss: [(seconds: Double, kb: Int)] = []
        var slowest = 0.0, scrapes = 0, failed = 0, frozen = false
        while storm.isRunning && Date().timeIntervalSince(start) < 40 {
            if !frozen && Date().timeIntervalSince(start) >= 5 {
                frozen = true
                serve.signal(SIGSTOP)
                usleep(1_000_000)
                serve.signal(SIGCONT)
            }
            let t0 = Date()
            let r = httpGet("http://127.0.0.1:\(port)/metrics")
            slowest = max(slowest, Date().timeIntervalSince(t0))
            scrapes += 1
            if r?.status != 200 { failed += 1 }
            rss.append((Date().timeIntervalSince(start), Self.rssKB(serve.pid)))
            usleep(500_000)
        }
        #expect(storm.wait(timeout: 30) == 0)
        let exits = try #require(storm.stdout.firstMatch(of: /"exits":(\d+)/).flatMap { Int($0.1) }, "\(storm.stdout)")
        #expect(scrapes >= 20 && failed == 0, "\(failed) of \(scrapes) scrapes failed")
        // Answers, not speed (speed is the soak's and the benchmarks' to show): each scrape ends with the readers
        // caught up, and on a host this overloaded (the storm's two vCPUs spin on both cores, beside the other
        // suites) that has taken 1.4 s in a clean-clone run; 5 s is half Prometheus' default scrape timeout.
        #expect(slowest < 5.0, "slowest scrape \(slowest) s")
        // Flat: after the first 5 s (buffers, tables and the server warmed up), growth stays under 8 MiB.
        let warm = rss.filter { $0.seconds >= 5 }.map(\.kb)
        if let first = warm.first, let peak = warm.max() { #expect(peak - first < 8192, "RSS KiB: \(rss.map(\.kb))") }

        // The reader drains what the buffers still hold: read until two scrapes a second apart agree.
        var counted = -1, lost = -1
        let end = Date().addingTimeInterval(15)
        while Date() < end {
            let body = httpGet("http://127.0.0.1:\(port)/metrics")?.body ?? ""
            let c = Self.sum(body, "kvmscope_events_total{event=\"kvm_pio\"}")
            let l = Self.sum(body, "kvmscope_lost_events_total{")
            if c == counted && l == lost { break }
            (counted, lost) = (c, l)
            usleep(1_000_000)
        }
        #expect(lost > 0, "a 4 KiB buffer never overflowed under the storm")
        #expect(counted + lost == exits, "counted \(counted) + lost \(lost) vs \(exits) exits")
    }
}
