// `make bench`: kvmscope measured against its targets and its peers in one run. Prints markdown tables
// and writes results/<date>.json. See benchmarks/README.md for what each section measures.
import Foundation
import KVMScopeViews
import KVMExits
import KVMSources
import KVMHost

// The live table's baseline consumer runs as a child of the harness (see RawConsumer).
if CommandLine.arguments.count == 3 && CommandLine.arguments[1] == "--raw-consumer" {
    RawConsumer.run(bufferKB: UInt32(CommandLine.arguments[2]) ?? 1024)
}
let options = HarnessOptions.parse(Array(CommandLine.arguments.dropFirst()))
let machine = Machine.current()
var summary: [String] = []
var sections: [(String, JSONValue)] = []

func say(_ s: String) { FileHandle.standardError.write(Data("kvmscope-bench: \(s)\n".utf8)) }
func out(_ s: String = "") { FileHandle.standardOutput.write(Data((s + "\n").utf8)) }
func f(_ v: Double, _ digits: Int = 1) -> String { String(format: "%.\(digits)f", v) }
func mega(_ v: Double) -> String { String(format: "%.2f M", v / 1e6) }
func met(_ ok: Bool?) -> String { ok.map { $0 ? "yes" : "**no**" } ?? "pending" }

out("# kvmscope benchmarks")
out()
out("\(machine.date) · \(machine.cpu) · \(machine.cores) cores · Linux \(machine.kernel) · load average at start \(machine.load)")
out()

// MARK: decode + aggregate
if options.wants("decode") {
    say("decode: building \(options.decodeEvents) events of pages")
    do {
        let interposer = DecodeBench.interposerWorks()
        let (source, threads, results) = try DecodeBench(events: options.decodeEvents, seconds: options.decodeSeconds).run()
        out("## decode + aggregate, one core")
        out()
        out("Synthetic pages (\(options.decodeEvents) events per pass, \(threads) vCPU threads, corpus reason mix, formats: \(source)); rates per CPU-second of the benchmark thread.")
        out()
        out("| stage | events | events/s | ns/event | wall events/s | allocations/event |")
        out("|---|---:|---:|---:|---:|---:|")
        for r in results {
            let name = switch r.stage {
            case .decode: "decode (C decoder → records)"
            case .count: "+ count (ShardWriter.add)"
            case .pair: "decode + merge CPUs + count + pair (ExitPipeline, as shipped)"
            }
            out("| \(name) | \(r.events) | \(mega(r.eventsPerCPUSecond)) | \(f(r.nsPerEvent, 2)) | \(mega(Double(r.events) / r.wallSeconds)) | \(interposer ? String(format: "%.6f", r.mallocsPerEvent) : "n/a") |")
        }
        out()
        if let full = results.last {
            summary.append("| decode + aggregate + pair, 1 core | \(mega(full.eventsPerCPUSecond)) events/s | — | — | ≥ 50 M events/s | \(met(full.eventsPerCPUSecond >= 50e6)) |")
            // A pass makes its streams and merge state (a few dozen allocations); none may come per event.
            let perPass = Double(full.mallocs) / Double(max(1, full.passes))
            summary.append("| allocations per event (hot path) | \(interposer ? String(full.mallocs) + " in " + String(full.events) + String(format: " (%.0f per pass)", perPass) : "n/a") | — | — | 0 per event | \(interposer ? met(perPass <= 64) : "pending") |")
        }
        sections.append(("decode", .object([
            ("format_source", .string(source)), ("threads", .uint(UInt64(threads))),
            ("events_per_pass", .uint(UInt64(options.decodeEvents))), ("malloc_counting", .bool(interposer)),
            ("stages", .array(results.map { r in .object([
                ("stage", .string(r.stage.rawValue)), ("events", .uint(r.events)),
                ("cpu_s", .double(r.cpuSeconds)), ("wall_s", .double(r.wallSeconds)),
                ("events_per_cpu_second", .double(r.eventsPerCPUSecond.rounded())),
                ("ns_per_event", .double((r.nsPerEvent * 100).rounded() / 100)),
                ("mallocs", .uint(UInt64(r.mallocs))), ("paired", .uint(r.paired)),
            ]) })),
        ])))
    } catch {
        out("decode: failed: \(error)")
    }
}

// MARK: /metrics scrape
if options.wants("scrape") {
    let bench = ScrapeBench(repeats: options.scrapeRepeats)
    say("scrape: \(bench.threads) threads × \(bench.reasons) reasons")
    do {
        let r = try bench.run()
        func ms(_ v: Double) -> String { f(v * 1e3, 1) }
        out("## /metrics scrape, \(bench.threads) live vCPU threads × \(bench.reasons) reasons, one thread")
        out()
        out("\(r.series) latency series; the Prometheus text is \(r.lines) lines, \(r.bytes / 1024) KiB. Wall ms per scrape, \(r.timings.count) scrapes after a warm-up.")
        out()
        out("| stage | median ms | best ms |")
        out("|---|---:|---:|")
        out("| snapshot (Aggregator.snapshot) | \(ms(r.median(\.snapshot))) | \(ms(r.best(\.snapshot))) |")
        out("| summary (Summary.init) | \(ms(r.median(\.summary))) | \(ms(r.best(\.summary))) |")
        out("| text (PrometheusExposition.renderUTF8) | \(ms(r.median(\.render))) | \(ms(r.best(\.render))) |")
        out("| **scrape \(bench.threads) threads × \(bench.reasons) reasons** | **\(ms(r.median(\.total)))** | \(ms(r.best(\.total))) |")
        out("| scrape, CPU time of the thread | \(ms(r.median(\.cpu))) | \(ms(r.best(\.cpu))) |")
        out()
        summary.append("| scrape \(bench.threads) threads × \(bench.reasons) reasons (snapshot + summary + text) | \(ms(r.median(\.total))) ms wall, \(ms(r.median(\.cpu))) ms CPU | — | — | well under 100 ms | \(met(r.median(\.total) < 0.1)) |")
        sections.append(("scrape", .object([
            ("threads", .uint(UInt64(bench.threads))), ("reasons", .uint(UInt64(bench.reasons))),
            ("series", .uint(UInt64(r.series))), ("lines", .uint(UInt64(r.lines))), ("bytes", .uint(UInt64(r.bytes))),
            ("scrapes", .array(r.timings.map { t in .object([
                ("snapshot_s", .double(t.snapshot)), ("summary_s", .double(t.summary)), ("render_s", .double(t.render)), ("cpu_s", .double(t.cpu)),
            ]) })),
        ])))
    } catch {
        out("scrape: failed: \(error)")
        out()
    }
}

// MARK: many distinct threads
if options.wants("churn") {
    let shape = options.churnAlive.map { "at most \($0) alive at a time, each making its share of the pairs and never seen again" }
        ?? "all alive at once, interleaved event by event"
    out("## many distinct vCPU threads (\(shape)): \(options.churnEvents) events through the report pipeline")
    out()
    do {
        let rows = try ChurnBench(kvmscope: options.kvmscope, threads: options.churnThreads, events: options.churnEvents,
                                  alive: options.churnAlive, reportMax: options.churnReportMax)
            .run(progress: say)
        out("`kvmscope bench synth` files (VMs of 4 vCPUs, 2 host CPUs, corpus reason mix); `report --json` as shipped (wall, peak RSS), the same file through ExitPipeline on one thread (events per CPU-second), then one scrape of that aggregate (median of 3). First sight: the pipeline's CPU beyond the first row's per-event cost, per thread beyond the first row's.")
        out()
        out("| distinct vCPU threads | alive | pairs per thread | report wall s | report CPU s | report peak RSS MiB | pairs | pipeline events/s, 1 core | harness RSS MiB after the pipeline | vs first row | first sight µs/thread | live series | scrape wall ms | scrape CPU ms | scrape lines |")
        out("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        let first = rows.first
        let base = first?.eventsPerCPUSecond ?? 1
        for r in rows {
            let extra = first.map { r.pipelineCPU - $0.pipelineCPU / Double($0.events) * Double(r.events) } ?? 0
            let newThreads = r.threads - (first?.threads ?? 0)
            let sight = newThreads > 0 ? f(extra / Double(newThreads) * 1e6, 2) : "—"
            out("| \(r.threads) | \(r.alive.map(String.init) ?? "all") | \(f(Double(r.events / 2) / Double(r.threads), 0)) | \(f(r.reportWall, 2)) | \(f(r.reportCPU, 2)) | \(f(Double(r.reportRSSKB) / 1024)) | \(r.paired.map(String.init) ?? "n/a") | \(mega(r.eventsPerCPUSecond)) | \(f(Double(r.pipelineRSSKB) / 1024)) | \(f(r.eventsPerCPUSecond / base, 2)) | \(sight) | \(r.series) | \(f(r.scrape.median(\.total) * 1e3)) | \(f(r.scrape.median(\.cpu) * 1e3)) | \(r.scrape.lines) |")
        }
        out()
        if let first = rows.first, let last = rows.last, rows.count > 1 {
            let ratio = last.eventsPerCPUSecond / first.eventsPerCPUSecond
            summary.append("| pipeline events/s, \(last.threads) vs \(first.threads) distinct threads (\(last.alive.map { "\($0) alive" } ?? "all alive")) | \(mega(last.eventsPerCPUSecond)) | \(mega(first.eventsPerCPUSecond)) (\(first.threads) threads) | \(f(ratio, 2)) | within 10 % | \(met(ratio >= 0.9)) |")
        }
        let churnRows: [JSONValue] = rows.map { r in
            var o: [(String, JSONValue)] = [("threads", .uint(UInt64(r.threads))), ("events", .uint(UInt64(r.events)))]
            if let a = r.alive { o.append(("alive", .uint(UInt64(a)))) }
            o += [("report_wall_s", .double(r.reportWall)), ("report_cpu_s", .double(r.reportCPU))]
            o += [("report_max_rss_kb", .uint(UInt64(r.reportRSSKB)))]
            if let p = r.paired { o.append(("paired", .uint(p))) }
            o += [("pipeline_cpu_s", .double(r.pipelineCPU)), ("pipeline_rss_kb", .uint(UInt64(r.pipelineRSSKB)))]
            o += [("live_threads", .uint(UInt64(r.liveThreads)))]
            o += [("live_series", .uint(UInt64(r.series))), ("scrape_median_s", .double(r.scrape.median(\.total)))]
            o += [("scrape_cpu_median_s", .double(r.scrape.median(\.cpu))), ("scrape_lines", .uint(UInt64(r.scrape.lines)))]
            return .object(o)
        }
        sections.append(("churn", .array(churnRows)))
    } catch {
        out("churn: failed: \(error)")
        out()
    }
}

// MARK: serve under churn
if options.wants("serve-churn") {
    out("## serve under churn: \(options.soakThreads.last ?? 0) distinct vCPU threads, \(options.soakAlive) alive at a time, \(options.soakPairs) exit/entry pairs each, \(options.soakRate.map { "at most \(Int($0)) threads/s" } ?? "unpaced")")
    out()
    do {
        let samples = try ServeChurn(kvmscope: options.kvmscope, checkpoints: options.soakThreads, alive: options.soakAlive,
                                     pairs: options.soakPairs, rate: options.soakRate).run(progress: say)
        out("`kvmscope serve` (KVMSCOPE_INJECT=kvm_exit,kvm_entry) while writer threads named `CPU n/KVM` write kvm_exit/kvm_entry records to its trace_marker_raw and exit, in waves. Baseline: \(options.soakAlive) threads writing as many events at once. Each row after its writes: serve counted every record and retired every thread; RSS least of 5 readings; scrape ms of 3 (curl); serve CPU per event over the writes; \"exact\": kvm_exit and kvm_entry = written (or + lost), paired = pairs, per-VM exits sum = exits.")
        out()
        out("| distinct threads | phase | events written | events/s written | serve CPU ns/event | vs baseline | peak live threads while writing | peak serve RSS MiB while writing | serve RSS MiB settled | VmHWM MiB | scrape ms (3) | live threads | live series | retired threads | retired rows | exact |")
        out("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|:---|")
        let base = samples.first?.serveNSPerEvent ?? 1
        for s in samples {
            out("| \(s.threads) | \(s.phase) | \(s.written) | \(mega(s.eventsPerSecond)) | \(f(s.serveNSPerEvent, 0)) | \(f(s.serveNSPerEvent / base, 2)) | \(s.peakLiveThreads) | \(f(Double(max(s.peakRSSKB, s.rssAtEndKB)) / 1024)) | \(f(Double(s.rssKB) / 1024)) | \(f(Double(s.hwmKB) / 1024)) | \(s.scrapeMS.map { f($0, 1) }.joined(separator: ", ")) | \(s.m("kvmscope_live_threads")) | \(s.m("kvmscope_live_series")) | \(s.m("kvmscope_retired_threads_total")) | \(s.m("kvmscope_retired_rows")) | \(s.exact ? "yes" : "**no**")\(s.note.isEmpty ? "" : " (" + s.note + ")") |")
        }
        out()
        let churn = samples.filter { $0.phase == "churn" }
        if let first = churn.first, let last = churn.last, churn.count > 1 {
            let ratio = Double(last.rssKB) / Double(max(1, first.rssKB))
            summary.append("| serve RSS, \(first.threads) → \(last.threads) distinct threads (\(options.soakAlive) alive) | \(f(Double(first.rssKB) / 1024)) → \(f(Double(last.rssKB) / 1024)) MiB | — | \(f(ratio, 2)) | flat within 10 % | \(met(ratio <= 1.1 && ratio >= 0.9)) |")
            let cpu = last.serveNSPerEvent / base
            summary.append("| serve CPU per event, churn to \(last.threads) threads vs \(options.soakAlive) long-lived | \(f(last.serveNSPerEvent, 0)) ns | \(f(base, 0)) ns | \(f(cpu, 2)) | within 10 % | \(met(cpu <= 1.1)) |")
        }
        sections.append(("serve_churn", .array(samples.map { s in .object([
            ("threads", .uint(UInt64(s.threads))), ("phase", .string(s.phase)), ("written", .uint(s.written)),
            ("phase_events", .uint(s.phaseEvents)), ("phase_s", .double(s.phaseSeconds)), ("serve_cpu_s", .double(s.phaseServeCPU)),
            ("rss_end_kb", .uint(UInt64(s.rssAtEndKB))), ("peak_live_threads", .uint(UInt64(s.peakLiveThreads))),
            ("peak_rss_kb", .uint(UInt64(s.peakRSSKB))), ("rss_kb", .uint(UInt64(s.rssKB))), ("hwm_kb", .uint(UInt64(s.hwmKB))),
            ("scrape_ms", .array(s.scrapeMS.map { .double($0) })), ("exact", .bool(s.exact)), ("note", .string(s.note)),
            ("occupancy", .object(["kvmscope_live_threads", "kvmscope_live_series", "kvmscope_retired_threads_total",
                                   "kvmscope_retired_rows", "kvmscope_folded_vms_total", "kvmscope_retired_on_exit_total",
                                   "kvmscope_thread_exits_total"].map { ($0, .uint(s.m($0))) })),
        ]) })))
    } catch {
        out("serve churn: failed: \(error)")
        out()
    }
}

// MARK: offline report
if options.wants("report") {
    out("## offline report")
    out()
    var shapes: [JSONValue] = []
    for shape in OfflineReport.shapes {
        let label = "\(shape.threads) threads × \(shape.cpus) CPUs"
        out("### \(label)")
        out()
        do {
            let bench = OfflineReport(kvmscope: options.kvmscope, events: options.reportEvents, threads: shape.threads, cpus: shape.cpus)
            switch try bench.run(progress: say) {
            case .pending(let why):
                out("pending: \(why)")
                summary.append("| report \(options.reportEvents / 1_000_000) M-event trace.dat, \(label) | pending | pending | — | ≥ 30× trace-cmd | pending |")
                shapes.append(.object([("threads", .uint(UInt64(shape.threads))), ("cpus", .uint(UInt64(shape.cpus))),
                                       ("pending", .string(why))]))
            case let .done(_, bytes, ks, one, tc, counted):
                let n = Double(options.reportEvents)
                out("| tool | wall s | CPU s | events/s | exit status |")
                out("|---|---:|---:|---:|---:|")
                out("| kvmscope report | \(f(ks.wall, 2)) | \(f(ks.cpu, 2)) | \(mega(n / ks.wall)) | \(ks.status) |")
                if let one { out("| taskset -c 0 kvmscope report | \(f(one.wall, 2)) | \(f(one.cpu, 2)) | \(mega(n / one.wall)) | \(one.status) |") }
                if let tc { out("| trace-cmd report > /dev/null | \(f(tc.wall, 2)) | \(f(tc.cpu, 2)) | \(mega(n / tc.wall)) | \(tc.status) |") }
                out()
                out("File: \(options.reportEvents) events, \(bytes / 1_048_576) MiB. kvmscope counted \(counted.map(String.init) ?? "n/a (no --json)").")
                out()
                let ratio = tc.map { $0.wall / ks.wall }
                summary.append("| report \(options.reportEvents / 1_000_000) M-event trace.dat, \(label) | \(mega(n / ks.wall)) events/s | \(tc.map { mega(n / $0.wall) + " events/s" } ?? "n/a") | \(ratio.map { f($0) + "×" } ?? "—") | ≥ 30× trace-cmd, same counts | \(met(ratio.map { $0 >= 30 && (counted == nil || counted == UInt64(n)) })) |")
                var o: [(String, JSONValue)] = [("threads", .uint(UInt64(shape.threads))), ("cpus", .uint(UInt64(shape.cpus))),
                                                ("events", .uint(UInt64(n))), ("bytes", .uint(bytes)),
                                                ("kvmscope_wall_s", .double(ks.wall)), ("kvmscope_cpu_s", .double(ks.cpu))]
                if let one { o += [("one_core_wall_s", .double(one.wall)), ("one_core_cpu_s", .double(one.cpu))] }
                if let counted { o.append(("kvmscope_counted", .uint(counted))) }
                if let tc { o += [("trace_cmd_wall_s", .double(tc.wall)), ("trace_cmd_cpu_s", .double(tc.cpu))] }
                if let ratio { o.append(("ratio", .double(ratio))) }
                shapes.append(.object(o))
            }
        } catch {
            out("report: failed: \(error)")
        }
    }
    sections.append(("report", .array(shapes)))
    out()
}

// MARK: live reader ceiling
if options.wants("live") {
    out("## live reader ceiling (trace_marker_raw, \(options.writers) writer threads, \(f(options.liveSeconds)) s per rate, 1024 KiB per CPU)")
    out()
    let bench = LiveCeiling(kvmscope: options.kvmscope, rates: options.rates, seconds: options.liveSeconds, writers: options.writers)
    var steps: [LiveCeiling.Step] = []
    let tools = ["read()+walk", "kvmscope"] + (ChildProcess.which("trace-cmd") != nil ? ["trace-cmd"] : [])
    for rate in options.rates {
        for tool in tools {
            say("live: \(tool) at \(rate.map { mega($0) } ?? "max") events/s")
            do {
                switch tool {
                case "kvmscope": steps.append(try bench.runKVMScope(rate: rate))
                case "trace-cmd": steps.append(try bench.runTraceCmd(rate: rate))
                default: steps.append(try bench.runRawConsumer(rate: rate))
                }
            } catch {
                out("live: \(tool) at \(rate.map { mega($0) } ?? "max"): failed: \(error)")
            }
        }
    }
    out("| tracer | target/s | written/s | written | counted | lost | tracer CPU s (window) | CPU ns/event | CPU s (whole run) |")
    out("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in steps {
        out("| \(s.tool) | \(s.targetRate.map { mega($0) } ?? "max") | \(mega(s.achievedRate)) | \(s.written) | \(s.counted) | \(s.lost) | \(f(s.windowCPU, 2)) | \(f(s.nsPerEvent, 0)) | \(f(s.wholeCPU, 2)) |\(s.note.isEmpty ? "" : " " + s.note)")
    }
    out()
    func ceiling(_ tool: String) -> LiveCeiling.Step? {
        steps.filter { $0.tool == tool && $0.lost == 0 }.max { $0.achievedRate < $1.achievedRate }
    }
    let ks = ceiling("kvmscope")
    let tc = ceiling("trace-cmd")
    let allClean = steps.filter { $0.tool == "kvmscope" }.allSatisfy { $0.lost == 0 }
    summary.append("| live: highest rate with 0 lost | \(ks.map { mega($0.achievedRate) + "/s" } ?? "none") | \(tc.map { mega($0.achievedRate) + "/s (trace-cmd)" } ?? "n/a") | \(ks.flatMap { k in tc.map { f(k.achievedRate / $0.achievedRate, 2) } } ?? "—") | 0 lost at every rate | \(met(steps.isEmpty ? nil : allClean)) |")
    summary.append("| live: tracer CPU per event at that rate | \(ks.map { f($0.nsPerEvent, 0) + " ns" } ?? "—") | \(tc.map { f($0.nsPerEvent, 0) + " ns (trace-cmd)" } ?? "n/a") | \(ks.flatMap { k in tc.map { f(k.nsPerEvent / $0.nsPerEvent, 2) } } ?? "—") | ≤ 50 ns/event | \(met(ks.map { $0.nsPerEvent <= 50 })) |")
    // The floor: the plain read()+walk consumer at the same rate as kvmscope's best clean step.
    let floor = ks.flatMap { k in steps.first { $0.tool == "read()+walk" && $0.targetRate == k.targetRate && $0.lost == 0 } }
    summary.append("| live: tracer CPU per event vs read()+walk at that rate | \(ks.map { f($0.nsPerEvent, 0) + " ns" } ?? "—") | \(floor.map { f($0.nsPerEvent, 0) + " ns (read()+walk)" } ?? "n/a") | \(ks.flatMap { k in floor.map { f(k.nsPerEvent / max(1, $0.nsPerEvent), 2) } } ?? "—") | ≤ 1.5× | \(met(ks.flatMap { k in floor.map { k.nsPerEvent <= 1.5 * $0.nsPerEvent } })) |")
    sections.append(("live", .array(steps.map { s in .object([
        ("tool", .string(s.tool)), ("target_rate", s.targetRate.map { .double($0) } ?? .string("max")),
        ("written", .uint(s.written)), ("counted", .uint(s.counted)), ("lost", .uint(s.lost)),
        ("seconds", .double(s.seconds)), ("tracer_cpu_s", .double(s.windowCPU)), ("whole_run_cpu_s", .double(s.wholeCPU)),
        ("ns_per_event", .double((s.nsPerEvent * 10).rounded() / 10)),
    ]) })))
}

// MARK: guest overhead
if options.wants("overhead") {
    out("## guest overhead (storm --kind hlt --vcpus 2 --exits \(options.overheadExits), median of \(options.overheadRepeat))")
    out()
    do {
        let c = try ChildProcess([options.kvmscope, "bench", "overhead", "--json", "--kind", "hlt", "--vcpus", "2",
                                  "--exits", "\(options.overheadExits)", "--repeat", "\(options.overheadRepeat)"])
        let st = try c.wait()
        guard st.status == 0, let j = LiveCeiling.json(c.stdout), let results = j["results"] as? [[String: Any]] else {
            throw KVMScopeError.usage("kvmscope bench overhead failed: \(c.stderr.suffix(300))")
        }
        out("| tracer | exits/s | vs untraced | tracer CPU s | events traced | lost |")
        out("|---|---:|---:|---:|---:|---:|")
        var ratios: [String: Double] = [:]
        for r in results {
            let tracer = r["tracer"] as? String ?? "?"
            let num = { (k: String) in (r[k] as? NSNumber)?.doubleValue }
            if let ratio = num("ratio_to_untraced") { ratios[tracer] = ratio }
            out("| \(r["command"] as? String ?? tracer) | \(num("exits_per_second").map { String(Int($0)) } ?? "—") | \(num("ratio_to_untraced").map { f($0, 2) + "×" } ?? "—") | \(num("tracer_cpu_s").map { f($0, 2) } ?? "—") | \(num("events").map { String(Int($0)) } ?? "—") | \(num("lost").map { String(Int($0)) } ?? (r["note"] as? String ?? "—")) |")
        }
        out()
        out("Every tracer traces all kvm events system-wide (other guests on the host are traced too).")
        out()
        let k = ratios["kvmscope"], t = ratios["trace-cmd"]
        summary.append("| guest overhead (exits/s vs untraced) | \(k.map { f($0, 2) + "×" } ?? "—") | \(t.map { f($0, 2) + "× (trace-cmd)" } ?? "n/a") | \(k.flatMap { k in t.map { f(k / $0, 2) } } ?? "—") | no worse than trace-cmd | \(met(k.flatMap { k in t.map { k >= $0 * 0.98 } })) |")
        sections.append(("overhead", .string(c.stdout)))
    } catch {
        out("overhead: failed: \(error)")
        out()
    }
}

// MARK: memory
if options.wants("memory") {
    out("## memory of kvmscope stat over a long trace (1 marker writer at \(mega(options.memoryRate))/s)")
    out()
    do {
        let r = try MemoryBench(kvmscope: options.kvmscope, checkpoints: options.memoryCheckpoints, rate: options.memoryRate).run(progress: say)
        out("| events written | elapsed s | VmRSS KiB | VmHWM KiB |")
        out("|---:|---:|---:|---:|")
        for s in r.samples { out("| \(s.events) | \(f(s.seconds)) | \(s.rssKB) | \(s.hwmKB) |") }
        out()
        out("Written \(r.written), counted \(r.counted), lost \(r.lost).")
        out()
        if let first = r.samples.first, let last = r.samples.last {
            let flat = Double(last.hwmKB) <= Double(first.hwmKB) * 1.05 + 1024
            summary.append("| memory: VmHWM at \(first.events / 1_000_000) M → \(last.events / 1_000_000) M events | \(first.hwmKB / 1024) → \(last.hwmKB / 1024) MiB | — | \(f(Double(last.hwmKB) / Double(max(1, first.hwmKB)), 2)) | flat (≤ +5 % + 1 MiB) | \(met(flat)) |")
        }
        sections.append(("memory", .object([
            ("written", .uint(r.written)), ("counted", .uint(r.counted)), ("lost", .uint(r.lost)),
            ("samples", .array(r.samples.map { .object([("events", .uint($0.events)), ("rss_kb", .int(Int64($0.rssKB))),
                                                        ("hwm_kb", .int(Int64($0.hwmKB))), ("seconds", .double($0.seconds))]) })),
        ])))
    } catch {
        out("memory: failed: \(error)")
        out()
    }
}

// MARK: summary and results file
out("## summary")
out()
out("| benchmark | kvmscope | peer | ratio | target | met? |")
out("|---|---:|---:|---:|---|---|")
summary.forEach { out($0) }
out()

let result = JSONValue.object([
    ("date", .string(machine.date)), ("cpu", .string(machine.cpu)), ("cores", .uint(UInt64(machine.cores))),
    ("kernel", .string(machine.kernel)), ("load_average_at_start", .string(machine.load)),
    ("quick", .bool(options.quick)), ("summary", .array(summary.map { .string($0) })),
] + sections)
if let dir = options.resultsDir {
    try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    let path = "\(dir)/\(machine.date.prefix(10))\(options.quick ? "-quick" : "").json"
    if !FileManager.default.createFile(atPath: path, contents: Data((result.serialized(pretty: true) + "\n").utf8)) { out("cannot write \(path)") }
    out("Results written to \(path).")
}
