import Foundation
import Testing
import TestSupport

/// `serve` scraped by a real Prometheus server, `watch` on a real storm, and the one-line errors.
@Suite(.serialized, .enabled(if: KVMTest.canRun, "needs root, /dev/kvm and tracefs"))
struct ServeLiveTests {
    static let n = 20_000

    /// `sh -c 'read x; exec kvmscope storm …'`: its pid is known before the storm starts; release() starts it.
    static func heldStorm(_ args: String) throws -> Spawned {
        try Spawned("/bin/sh", ["-c", "read x; exec '\(CLI.binary)' storm \(args)"])
    }

    /// A Prometheus instant query's single value (nil: no sample yet, or Prometheus not up).
    static func query(_ prometheus: UInt16, _ promql: String) -> Double? {
        let q = promql.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? promql
        guard let r = httpGet("http://127.0.0.1:\(prometheus)/api/v1/query?query=\(q)"), r.status == 200,
              let json = try? JSONSerialization.jsonObject(with: Data(r.body.utf8)) as? [String: Any],
              let data = json["data"] as? [String: Any], let result = data["result"] as? [[String: Any]],
              result.count == 1, let value = result[0]["value"] as? [Any], value.count == 2,
              let text = value[1] as? String else { return nil }
        return Double(text)
    }

    /// Polls a query until it returns `expected` (true) or `timeout` s pass (false).
    static func poll(_ prometheus: UInt16, _ promql: String, equals expected: Double, timeout: Double = 60) -> Bool {
        let end = Date().addingTimeInterval(timeout)
        while Date() < end {
            if query(prometheus, promql) == expected { return true }
            usleep(250_000)
        }
        return false
    }

    @Test func prometheusSeesExactlyTheStormsEvents() throws {
        let storm = try Self.heldStorm("--kind io --vcpus 2 --exits \(Self.n)")
        defer { storm.stop() }
        let port = freeLoopbackPort()
        // 8 MiB a CPU: the exact counts must not depend on the reader keeping up while other suites (and, under
        // `make sanitize`, an instrumented build) load the host; a dry run lost 12,720 events at the 1 MiB default (37,456 of 40,000 exits counted).
        let serve = try Spawned(CLI.binary, ["serve", "--listen", "127.0.0.1:\(port)", "-p", "\(storm.pid)", "--buffer-kb", "8192"])
        defer { serve.stop() }
        #expect(serve.waitForStderr("kvmscope: serving http://127.0.0.1:\(port)/metrics"), "serve: \(serve.stderr)")

        // A live scrape is valid exposition text, by Prometheus' own linter.
        let scrape = try #require(httpGet("http://127.0.0.1:\(port)/metrics"))
        #expect(scrape.status == 200)
        #expect(scrape.contentType == "text/plain; version=0.0.4; charset=utf-8")
        let lint = try Self.promtool(["check", "metrics"], stdin: scrape.body)
        #expect(lint.status == 0, "promtool: \(lint.output)")
        let om = try #require(httpGet("http://127.0.0.1:\(port)/metrics", accept: "application/openmetrics-text; version=1.0.0"))
        #expect(om.contentType == "application/openmetrics-text; version=1.0.0; charset=utf-8")
        #expect(om.body.hasSuffix("# EOF\n"))
        #expect(httpGet("http://127.0.0.1:\(port)/healthz")?.body == "ok\n")
        #expect(httpGet("http://127.0.0.1:\(port)/nope")?.status == 404)
        // Asked as Prometheus asks (2.42 sends `Accept-Encoding: gzip` on every scrape, so what it ingests below
        // is the compressed body): gzip, which gunzips to text the linter passes.
        let z = try #require(httpRequest("http://127.0.0.1:\(port)/metrics", headers: [("Accept-Encoding", "gzip")]))
        #expect(z.status == 200 && z.headers["content-encoding"] == "gzip" && z.headers["vary"] == "Accept, Accept-Encoding")
        let gunzipped = try MetricsGzipTests.gunzip(z.body)
        #expect(gunzipped.contains("kvmscope_events_total{event=\"kvm_pio\"} 0\n"), "\(gunzipped.prefix(2000))")
        let zlint = try Self.promtool(["check", "metrics"], stdin: gunzipped)
        #expect(zlint.status == 0, "promtool: \(zlint.output)")

        // Prometheus, on loopback, scraping every second.
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kvmscope-prom-\(getpid())-\(port)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let config = dir.appendingPathComponent("prometheus.yml")
        try """
            global:
              scrape_interval: 1s
              evaluation_interval: 1s
            scrape_configs:
              - job_name: kvmscope
                static_configs:
                  - targets: ['127.0.0.1:\(port)']
            """.write(to: config, atomically: true, encoding: .utf8)
        let promPort = freeLoopbackPort()
        let prometheus = try Spawned("/usr/bin/prometheus", [
            "--config.file=\(config.path)", "--storage.tsdb.path=\(dir.appendingPathComponent("data").path)",
            "--web.listen-address=127.0.0.1:\(promPort)", "--log.level=warn",
        ])
        defer { prometheus.stop() }

        let series = #"kvmscope_events_total{event="kvm_pio",job="kvmscope"}"#
        #expect(Self.poll(promPort, series, equals: 0), "no baseline scrape; prometheus: \(prometheus.stderr.suffix(500))")
        storm.release()
        #expect(storm.wait() == 0)
        #expect(Self.poll(promPort, series, equals: Double(2 * Self.n)),
                "last value: \(String(describing: Self.query(promPort, series)))")
        // The whole increase Prometheus stored, from its first to its last sample.
        #expect(Self.query(promPort, "max_over_time(\(series)[5m]) - min_over_time(\(series)[5m])") == Double(2 * Self.n))
        #expect(Self.query(promPort, #"sum(kvmscope_userspace_exits_total{reason="KVM_EXIT_IO"})"#) == Double(2 * Self.n))
        #expect(Self.query(promPort, #"count(kvmscope_userspace_exits_total{reason="KVM_EXIT_IO"})"#) == 2)
        #expect(Self.query(promPort, #"sum(kvmscope_lost_events_total)"#) == 0)
        #expect(Self.query(promPort, #"up{job="kvmscope"}"#) == 1)
    }

    /// `-p` of a VM that is already running: its vCPU threads exist before tracing starts, and the kernel
    /// filters events by thread id, so every thread of the process is listed (before: only the main thread
    /// was, and serve counted 0 of a running VM's exits).
    @Test func pidOfARunningVMCountsItsVCPUThreads() throws {
        let storm = try Spawned(CLI.binary, ["storm", "--kind", "io", "--vcpus", "2", "--exits", "2000", "--seconds", "20"])
        defer { storm.stop() }
        // Until both vCPU threads run.
        let deadline = Date().addingTimeInterval(30)
        func vcpuThreads() -> Int {
            let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(storm.pid)/task")) ?? []
            return tasks.filter { (try? String(contentsOfFile: "/proc/\(storm.pid)/task/\($0)/comm", encoding: .utf8))?
                .hasPrefix("CPU ") ?? false }.count
        }
        while vcpuThreads() < 2 && Date() < deadline { usleep(50_000) }
        #expect(vcpuThreads() == 2)
        let port = freeLoopbackPort()
        // 8 MiB a CPU: the exact counts must not depend on the reader keeping up while other suites (and, under
        // `make sanitize`, an instrumented build) load the host; a dry run lost 12,720 events at the 1 MiB default (37,456 of 40,000 exits counted).
        let serve = try Spawned(CLI.binary, ["serve", "--listen", "127.0.0.1:\(port)", "-p", "\(storm.pid)", "--buffer-kb", "8192"])
        defer { serve.stop() }
        #expect(serve.waitForStderr("kvmscope: serving http://127.0.0.1:\(port)/metrics"), "serve: \(serve.stderr)")
        // Before the fix both stayed 0 however long serve ran; how fast they grow depends on the machine's load.
        var body = ""
        func value(_ prefix: String) -> Double {
            body.split(separator: "\n").filter { $0.hasPrefix(prefix) }
                .compactMap { $0.split(separator: " ").last.flatMap { Double($0) } }.reduce(0, +)
        }
        let pio = "kvmscope_events_total{event=\"kvm_pio\"}"
        let mine = "kvmscope_userspace_exits_total{vm=\"\(storm.pid)\""
        let until = Date().addingTimeInterval(15)
        repeat {
            usleep(250_000)
            body = httpGet("http://127.0.0.1:\(port)/metrics")?.body ?? ""
        } while (value(pio) == 0 || value(mine) == 0) && Date() < until
        #expect(value(pio) > 0, "\(body.prefix(2000))")
        #expect(value(mine) > 0)
    }

    /// `kvmscope_io_exits_total` of a real storm guest: the row of its port 0x10 (`dma1` by the standard PC map)
    /// equals the storm's exits, the only I/O row of the VM; it keeps that value after the storm's threads exit
    /// and retire; the scrape passes promtool.
    @Test func ioExitsByDeviceCountTheStormsPort() throws {
        let storm = try Self.heldStorm("--kind io --vcpus 2 --exits \(Self.n)")
        defer { storm.stop() }
        let port = freeLoopbackPort()
        // 8 MiB a CPU: the exact counts must not depend on the reader keeping up while other suites (and, under
        // `make sanitize`, an instrumented build) load the host; a dry run lost 12,720 events at the 1 MiB default (37,456 of 40,000 exits counted).
        let serve = try Spawned(CLI.binary, ["serve", "--listen", "127.0.0.1:\(port)", "-p", "\(storm.pid)", "--buffer-kb", "8192"])
        defer { serve.stop() }
        #expect(serve.waitForStderr("kvmscope: serving http://127.0.0.1:\(port)/metrics"), "serve: \(serve.stderr)")
        storm.release()
        #expect(storm.wait() == 0)
        let mine = "kvmscope_io_exits_total{vm=\"\(storm.pid)\","
        func rows(_ body: String) -> [String] { body.split(separator: "\n").map(String.init).filter { $0.hasPrefix(mine) } }
        func scrape(until done: (String) -> Bool) -> String { scrapeMetrics(port: port, until: done) }
        let expected = ",space=\"port\",device=\"dma1\"} \(2 * Self.n)"
        let counted = scrape { rows($0).count == 1 && rows($0)[0].hasSuffix(expected) }
        #expect(rows(counted).count == 1 && rows(counted).first?.hasSuffix(expected) == true,
                "\(rows(counted)); \(counted.split(separator: "\n").filter { $0.hasPrefix("kvmscope_lost") })")
        // The storm's two vCPU threads (and its main thread) have exited: once serve retired them, the same row.
        let retired = scrape { body in
            body.split(separator: "\n").first { $0.hasPrefix("kvmscope_retired_threads_total ") }
                .flatMap { $0.split(separator: " ").last.flatMap { Int($0) } }.map { $0 >= 2 } ?? false
        }
        #expect(retired.contains { $0 == "\n" } && !retired.contains("kvmscope_retired_threads_total 0\n")
                && !retired.contains("kvmscope_retired_threads_total 1\n"), "\(retired.prefix(3000))")
        #expect(rows(retired) == rows(counted))
        #expect(retired.contains("kvmscope_io_unattributed_events_total{space=\"port\"} 0\n"))
        let lint = try Self.promtool(["check", "metrics"], stdin: retired)
        #expect(lint.status == 0, "promtool: \(lint.output)")
    }

    static func promtool(_ args: [String], stdin: String) throws -> (status: Int32, output: String) {
        let r = try Spawned.run("/usr/bin/promtool", args, input: Data(stdin.utf8), timeout: 60)
        return (r.status, r.stdout + r.stderr)
    }

    /// `watch --alert RULE -s INTERVAL -p PID` over a held storm's whole run: the storm is released once watch
    /// says it is watching; both must end with status 0. Returns watch's stdout (its alert lines).
    static func watchWholeStorm(_ storm: Spawned, rule: String, interval: String) throws -> String {
        let watch = try Spawned(CLI.binary, ["watch", "--alert", rule, "-s", interval, "-p", "\(storm.pid)"])
        defer { watch.stop() }
        #expect(watch.waitForStderr("kvmscope: watching process \(storm.pid) for 1 rule(s)"), "watch: \(watch.stderr)")
        storm.release()
        #expect(storm.wait() == 0)
        #expect(watch.wait() == 0, "watch: \(watch.stderr)")
        return watch.stdout
    }

    static func alertLines(_ stdout: String) throws -> [[String: Any]] {
        try stdout.split(separator: "\n").map {
            try #require(JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])
        }
    }

    @Test func watchFiresOnceAndResolvesAfterTheStorm() throws {
        // 2 vCPUs of io exits, repeated for 3 s: far above 1000/s while it runs.
        let storm = try Self.heldStorm("--kind io --vcpus 2 --exits \(Self.n) --seconds 3")
        defer { storm.stop() }
        let rule = "rate(kvm_pio) > 1000/s for 1s"
        let stdout = try Self.watchWholeStorm(storm, rule: rule, interval: "0.5")
        let lines = try Self.alertLines(stdout)
        #expect(lines.map { $0["state"] as? String } == ["firing", "resolved"], "stdout: \(stdout)")
        for l in lines {
            #expect(l["rule"] as? String == rule)
            #expect(l["vm"] as? Int == Int(storm.pid))
            #expect(l["reason"] as? String == "kvm_pio")
            #expect(l["threshold"] as? Double == 1000)
            #expect(l["unit"] as? String == "/s")
            #expect(l["vcpu"] is NSNull)
        }
        #expect((lines.first?["value"] as? Double ?? 0) > 1000)
        // Resolved in the first interval back under the threshold: often 0, but on a loaded machine the
        // storm's last exits can share that interval.
        #expect((lines.last?["value"] as? Double ?? .infinity) <= 1000, "stdout: \(stdout)")
    }

    /// A storm of 1000 exits per run, repeated: each run's vCPU thread is gone within milliseconds, before
    /// kvmscope looks it up, and is named from the kernel's saved tgids later. Rules see it in its VM, as stat
    /// does: one firing and one resolve for the storm's process, never a VM per thread (`vm` = a tid, no name).
    @Test func watchCountsShortLivedVCPUThreadsInTheirVM() throws {
        let storm = try Self.heldStorm("--kind io --exits 1000 --seconds 4 --name churny")
        defer { storm.stop() }
        let stdout = try Self.watchWholeStorm(storm, rule: "rate(kvm_pio) > 10/s", interval: "1")
        let lines = try Self.alertLines(stdout)
        #expect(lines.map { $0["state"] as? String } == ["firing", "resolved"], "stdout: \(stdout)")
        #expect(lines.map { $0["vm"] as? Int } == [Int(storm.pid), Int(storm.pid)], "stdout: \(stdout)")
        #expect(lines.map { $0["vm_name"] as? String } == ["churny", "churny"], "stdout: \(stdout)")
    }

    /// The same storm under `serve --alert`: one `kvmscope_storm_active` series, the storm's process, resolved
    /// once the storm ends; never one per short-lived thread (`vm="<tid>",vm_name=""`).
    @Test func serveAlertsCountShortLivedVCPUThreadsInTheirVM() throws {
        let storm = try Self.heldStorm("--kind io --exits 1000 --seconds 4 --name churny")
        defer { storm.stop() }
        let port = freeLoopbackPort()
        let rule = "rate(kvm_pio) > 10/s"
        let serve = try Spawned(CLI.binary, ["serve", "--listen", "127.0.0.1:\(port)", "--alert", rule, "-s", "1",
                                             "-p", "\(storm.pid)"])
        defer { serve.stop() }
        #expect(serve.waitForStderr("kvmscope: serving http://127.0.0.1:\(port)/metrics"), "serve: \(serve.stderr)")
        storm.release()
        #expect(storm.wait() == 0)
        func active(_ body: String) -> [String] {
            body.split(separator: "\n").map(String.init).filter { $0.hasPrefix("kvmscope_storm_active{") }
        }
        let resolved = "kvmscope_storm_active{vm=\"\(storm.pid)\",vm_name=\"churny\",reason=\"kvm_pio\",rule=\"\(rule)\"} 0"
        // 60 s: under TSan (make sanitize) a loaded serve once took longer than 30 s to name the gone threads.
        let end = Date().addingTimeInterval(60)
        var body = ""
        repeat {
            body = httpGet("http://127.0.0.1:\(port)/metrics")?.body ?? ""
            if active(body).contains(resolved) { break }
            usleep(250_000)
        } while Date() < end
        #expect(active(body) == [resolved], "\(active(body))")
    }

    @Test func watchBelowThresholdPrintsNothing() throws {
        let storm = try Self.heldStorm("--kind io --vcpus 2 --exits \(Self.n) --seconds 2")
        defer { storm.stop() }
        #expect(try Self.watchWholeStorm(storm, rule: "rate(kvm_pio) > 10000000/s", interval: "0.5") == "")
    }

    @Test func exitOnAlertExitsWithStatus2AfterTheFirstFiring() throws {
        let storm = try Self.heldStorm("--kind io --vcpus 1 --exits \(Self.n) --seconds 5")
        defer { storm.stop() }
        let watch = try Spawned(CLI.binary, ["watch", "--alert", "rate(KVM_EXIT_IO) > 1000/s", "-s", "0.5",
                                             "--exit-on-alert", "-p", "\(storm.pid)"])
        defer { watch.stop() }
        #expect(watch.waitForStderr("kvmscope: watching process"), "watch: \(watch.stderr)")
        storm.release()
        #expect(watch.wait() == 2)
        let lines = try Self.alertLines(watch.stdout)
        #expect(lines.map { $0["state"] as? String } == ["firing"])
        #expect(lines.first?["reason"] as? String == "KVM_EXIT_IO")
    }

    /// --exit-on-alert with a COMMAND ends it as every other end does (SIGINT first): the storm shuts down and
    /// prints its summary, which a SIGKILL had cut; watch's status is still 2.
    @Test func exitOnAlertEndsTheCommandWithSIGINT() throws {
        let r = try CLI.run(["watch", "--alert", "rate(KVM_EXIT_IO) > 1000/s", "-s", "0.5", "--exit-on-alert", "--",
                             CLI.binary, "storm", "--kind", "io", "--vcpus", "1", "--exits", "1000000000", "--seconds", "60"],
                            timeout: 90)
        #expect(r.status == 2, "stderr: \(r.stderr)")
        let lines = try Self.alertLines(r.stdout)
        #expect(lines.filter { $0["state"] as? String == "firing" }.count == 1)
        let summary = try #require(lines.first { $0["kind"] as? String == "io" }, "the storm's summary: \(r.stdout)")
        #expect((summary["exits"] as? Int ?? 0) > 0)
    }

    @Test func malformedRuleIsOneLineAndNonZero() throws {
        let r = try CLI.run(["watch", "--alert", "rate(HLT) >> 5"])
        #expect(r.status == 64)
        #expect(r.stderr == "kvmscope: bad rule 'rate(HLT) >> 5': expected a comparison '>' or '<' at column 11\n")
        let s = try CLI.run(["serve", "--alert", "p99(MSR_WRITE) > 20 parsecs"])
        #expect(s.status == 64)
        #expect(s.stderr == "kvmscope: bad rule 'p99(MSR_WRITE) > 20 parsecs': expected a latency unit (ns, us, µs, ms, s) at column 21\n")
        let a = try CLI.run(["serve", "--listen", "example.invalid:80"])
        #expect(a.status == 64)
        #expect(a.stderr == "kvmscope: bad --listen address 'example.invalid:80': 'example.invalid' is neither an IPv4 address "
                + "nor a host name that resolves (IPv6: [ADDRESS]:PORT)\n")
    }

    /// `--listen :PORT`, as Prometheus exporters' `--web.listen-address=:9100`: every address, IPv6 and IPv4 on one
    /// socket. The log line names what it bound.
    @Test func emptyHostListensOnEveryAddress() throws {
        let port = freeLoopbackPort()
        let serve = try Spawned(CLI.binary, ["serve", "--listen", ":\(port)", "--connect", "none"])
        defer { serve.stop() }
        #expect(serve.waitForStderr("kvmscope: serving"), "serve: \(serve.stderr)")
        #expect(serve.stderr == "kvmscope: serving http://[::]:\(port)/metrics\n")
        #expect(httpGet("http://127.0.0.1:\(port)/healthz")?.body == "ok\n")
        #expect(httpGet("http://[::1]:\(port)/healthz")?.body == "ok\n")
        let bad = try CLI.run(["serve", "--listen", "9477"])
        #expect(bad.status == 64)
        #expect(bad.stderr == "kvmscope: bad --listen address '9477': expected HOST:PORT or :PORT\n")
    }

    /// A host name, as exporters' --web.listen-address takes one: its first address (this host's own name, which
    /// /etc/hosts names here), said in the log line.
    @Test func aHostNameListensOnItsAddress() throws {
        var name = [CChar](repeating: 0, count: 256)
        #expect(gethostname(&name, name.count) == 0)
        let host = String(cString: name)
        let lookup = try Spawned.run("/usr/bin/getent", ["ahostsv4", host])
        let ip = try #require(lookup.stdout.split(separator: " ").first.map(String.init), "\(host) does not resolve: \(lookup.stderr)")
        let port = freeLoopbackPort()
        let serve = try Spawned(CLI.binary, ["serve", "--listen", "\(host):\(port)", "--connect", "none"])
        defer { serve.stop() }
        #expect(serve.waitForStderr("kvmscope: serving"), "serve: \(serve.stderr)")
        #expect(serve.stderr == "kvmscope: serving http://\(host):\(port)/metrics (\(ip))\n")
        if ip == "127.0.0.1" { #expect(httpGet("http://127.0.0.1:\(port)/healthz")?.body == "ok\n") }
        let bad = try CLI.run(["serve", "--listen", "nowhere.invalid:9477"])
        #expect(bad.status == 64)
        #expect(bad.stderr == "kvmscope: bad --listen address 'nowhere.invalid:9477': 'nowhere.invalid' is neither an IPv4 "
                + "address nor a host name that resolves (IPv6: [ADDRESS]:PORT)\n")
    }

    @Test func portInUseIsAClearError() throws {
        let port = freeLoopbackPort()
        let first = try Spawned(CLI.binary, ["serve", "--listen", "127.0.0.1:\(port)"])
        defer { first.stop() }
        #expect(first.waitForStderr("kvmscope: serving"), "first serve: \(first.stderr)")
        let r = try CLI.run(["serve", "--listen", "127.0.0.1:\(port)"])
        #expect(r.status == 1)
        #expect(r.stderr == "kvmscope: cannot listen on 127.0.0.1:\(port): Address already in use\n")
    }
}
