import Foundation
import Testing
import TestSupport

/// `serve` while VMs come and go: hundreds of short-lived storm guests, each a new process with 8 new vCPU
/// threads, started and stopped one after the other.
@Suite(.serialized, .enabled(if: KVMTest.canRun, "needs root, /dev/kvm and tracefs"))
struct ServeChurnLiveTests {
    /// Guests in all; the first `firstBatch` are a batch of their own, to measure RSS after them.
    static let guests = 600
    static let firstBatch = 100
    /// Port-I/O exits per vCPU of each guest (`storm --kind io --vcpus 8 --exits 10`: 80 `kvm_pio` and 80
    /// `KVM_EXIT_IO` per guest).
    static let exitsPerVCPU = 10

    /// One scrape's samples: "name{labels}" → value.
    static func samples(_ text: String) -> [String: Double] {
        var out: [String: Double] = [:]
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            guard let sp = line.lastIndex(of: " "), let v = Double(line[line.index(after: sp)...]) else { continue }
            out[String(line[..<sp])] = v
        }
        return out
    }

    static func sum(_ s: [String: Double], _ prefix: String, containing: String = "") -> Double {
        s.filter { $0.key.hasPrefix(prefix) && $0.key.contains(containing) }.values.reduce(0, +)
    }

    /// The smallest resident set of 10 readings 0.2 s apart (no scrape in between): what the process holds,
    /// without the transient peak of a snapshot in flight.
    static func settledRSSKiB(_ pid: Int32) -> Int? {
        var least: Int?
        for _ in 0..<10 {
            if let r = rssKiB(pid) { least = min(least ?? r, r) }
            usleep(200_000)
        }
        return least
    }

    static func rssKiB(_ pid: Int32) -> Int? {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            return Int(line.dropFirst(6).trimmingCharacters(in: .whitespaces).split(separator: " ")[0])
        }
        return nil
    }

    /// 600 guests of 8 vCPUs (4,800 vCPU threads, 10 port-I/O exits each), about a minute in all, under
    /// `serve --retired-vms 100`, scraped every 0.3 s: `kvm_pio` and the sum of every `KVM_EXIT_IO` series
    /// equal exactly 80 × guests, each of the last 100 guests has exactly its 80 `KVM_EXIT_IO` and the 500
    /// before them are summed into `vm="other"`, no counter sample ever goes down between two scrapes, every
    /// thread retires (`kvmscope_live_threads` back to 0, `kvmscope_retired_threads_total` ≥ 4,800),
    /// `promtool check metrics` passes, and the RSS after the last guest is within 10 % of the RSS after the
    /// first 100.
    @Test(.timeLimit(.minutes(5))) func sixHundredShortLivedGuests() throws {
        let storm = "'\(CLI.binary)' storm --kind io --vcpus 8 --exits \(Self.exitsPerVCPU) >/dev/null || exit 1"
        let script = """
            read x; i=0
            while [ $i -lt \(Self.firstBatch) ]; do \(storm); i=$((i+1)); done
            echo first; read y
            while [ $i -lt \(Self.guests) ]; do \(storm); i=$((i+1)); done
            echo done
            """
        let guests = try Spawned("/bin/sh", ["-c", script])
        defer { guests.stop() }
        let port = freeLoopbackPort()
        let serve = try Spawned(CLI.binary, ["serve", "--listen", "127.0.0.1:\(port)", "-p", "\(guests.pid)",
                                             "--retired-vms", "100", "-s", "0.5"])
        defer { serve.stop() }
        #expect(serve.waitForStderr("kvmscope: serving http://127.0.0.1:\(port)/metrics"), "serve: \(serve.stderr)")

        var last: [String: Double] = [:]
        var decreases: [String] = []
        var scrapes = 0
        var body = ""
        /// Scrapes until `done` holds for a scrape (or `timeout` s pass); checks every counter against the
        /// previous scrape.
        func scrape(until done: ([String: Double]) -> Bool, timeout: Double) -> [String: Double] {
            let end = Date().addingTimeInterval(timeout)
            var s: [String: Double] = [:]
            while Date() < end {
                guard let r = httpGet("http://127.0.0.1:\(port)/metrics"), r.status == 200 else {
                    usleep(300_000)
                    continue
                }
                body = r.body
                s = Self.samples(r.body)
                scrapes += 1
                for (k, v) in s where k.contains("_total") || k.contains("_bucket") || k.contains("_count") {
                    if let before = last[k], v < before { decreases.append("\(k): \(before) → \(v)") }
                }
                last = s
                if done(s) { return s }
                usleep(300_000)
            }
            return s
        }
        let pio = #"kvmscope_events_total{event="kvm_pio"}"#
        func settled(_ n: Int) -> ([String: Double]) -> Bool {
            { s in
                s[pio] == Double(n * 80) && Self.sum(s, "kvmscope_userspace_exits_total", containing: "KVM_EXIT_IO") == Double(n * 80)
                    && s["kvmscope_live_threads"] == 0
            }
        }

        guests.release()
        #expect(guests.waitForStdout(timeout: 120) { $0.contains("first") }, "guests: \(guests.stderr)")
        let first = scrape(until: settled(Self.firstBatch), timeout: 30)
        #expect(first[pio] == Double(Self.firstBatch * 80))
        #expect(first["kvmscope_live_threads"] == 0)
        let rssFirst = try #require(Self.settledRSSKiB(serve.pid))

        guests.release()
        _ = scrape(until: { _ in !guests.isRunning }, timeout: 180)
        #expect(guests.wait(timeout: 10) == 0, "guests: \(guests.stderr)")
        let end = scrape(until: settled(Self.guests), timeout: 30)
        let rssLast = try #require(Self.settledRSSKiB(serve.pid))

        #expect(end[pio] == Double(Self.guests * 80))
        #expect(Self.sum(end, "kvmscope_userspace_exits_total", containing: "KVM_EXIT_IO") == Double(Self.guests * 80))
        #expect(end["kvmscope_live_threads"] == 0 && end["kvmscope_live_series"] == 0)
        #expect((end["kvmscope_retired_threads_total"] ?? 0) >= Double(Self.guests * 8))
        // Per VM: each of the last 100 stopped guests has exactly its 80 exits; the 500 before them are summed
        // into vm="other".
        var perVM: [String: Double] = [:]
        for (k, v) in end where k.hasPrefix("kvmscope_userspace_exits_total{") && k.contains("KVM_EXIT_IO") {
            guard let r = k.range(of: "vm=\""), let e = k[r.upperBound...].firstIndex(of: "\"") else { continue }
            perVM[String(k[r.upperBound..<e]), default: 0] += v
        }
        // At least the 500 older guests folded; on a loaded machine a few more "VMs" can fold: threads that could
        // not be named in time stand under their own tid (their port-I/O exits are all attributed, checked below).
        #expect((end["kvmscope_folded_vms_total"] ?? 0) >= Double(Self.guests - 100))
        #expect(perVM["other"] == Double((Self.guests - 100) * 80))
        #expect(perVM.filter { $0.key != "other" }.count == 100)
        #expect(perVM.filter { $0.key != "other" && $0.value != 80 }.isEmpty, "\(perVM.filter { $0.value != 80 })")
        #expect(end["kvmscope_exit_pairing_total{result=\"overflow\"}"] == 0)
        #expect(decreases.isEmpty, "\(decreases.prefix(10))")
        #expect(scrapes > 10)
        let lint = try Spawned.run("/usr/bin/promtool", ["check", "metrics"], input: Data(body.utf8), timeout: 60)
        #expect(lint.status == 0, "promtool: \(lint.stdout + lint.stderr)")
        // The issue's bound: 10 %. Before serve gave the freed pages of retired threads back (malloc_trim after
        // retirements), RSS ended 7–13 % higher beside the other live suites (the allocator's arenas kept the
        // high-water mark of their load); with it, 46.8 → 47.9 MiB (+2.4 %) beside four live suites. What it
        // catches is a leak per thread or per VM: retired rows never freed would be 4,800 threads × ≥ 2 KiB.
        #expect(Double(rssLast) <= Double(rssFirst) * 1.1, "RSS \(rssFirst) KiB after \(Self.firstBatch) guests, \(rssLast) KiB after \(Self.guests)")
        print("ServeChurnLiveTests: RSS \(rssFirst) KiB after \(Self.firstBatch) guests, \(rssLast) KiB after \(Self.guests); \(scrapes) scrapes")
    }
}
