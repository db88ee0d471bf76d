import ArgumentParser
import Foundation
import KVMAnalysis
import KVMExits
import KVMGuest
import KVMHost
import KVMScopeViews
import KVMSources

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure what tracing costs a guest on this host, against perf and trace-cmd.",
        discussion: """
            The user-facing part of kvmscope's benchmark harness (the full one is `make bench`).

              kvmscope bench                                 overhead of tracing a storm
              kvmscope bench overhead --kind io --repeat 5   another exit kind, more runs
              kvmscope bench synth -o big.dat                a trace.dat for report
              kvmscope bench resources --vms 100 --vcpus 8   a resource sample's CPU cost
            """,
        subcommands: [BenchOverheadCommand.self, BenchSynthCommand.self, BenchResourcesCommand.self],
        defaultSubcommand: BenchOverheadCommand.self)
}

struct BenchOverheadCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "overhead",
        abstract: "Storm exit throughput untraced, under kvmscope stat, perf stat and trace-cmd record.",
        usage: "kvmscope bench overhead [<options>]",
        discussion: """
            Each tracer traces every kvm event system-wide, is started before the storm and stopped with SIGINT \
            after it. Tracer CPU is its whole process tree (children included) from start to exit. Tools that are \
            not installed are shown as such. Medians of --repeat runs, interleaved.
            """)

    @Option(help: "Kind of exit: io, mmio or hlt.")
    var kind: String = "hlt"

    @Option(help: "Number of vCPU threads.")
    var vcpus: UInt32 = 2

    @Option(help: "Exits per vCPU per run.")
    var exits: UInt64 = 200_000

    @Option(name: .customLong("repeat"), help: "Runs of each configuration (the median is shown).")
    var repeats: Int = 3

    @Option(name: .customLong("tracer"), help: "A tracer to compare: kvmscope, perf, trace-cmd (repeatable; default all).")
    var tracers: [String] = []

    @Option(name: .customLong("buffer-kb"),
            help: "Ring-buffer size per CPU, KiB, for kvmscope stat (--buffer-kb) and trace-cmd record (-b) alike (default: each its own, kvmscope's 1024 and the kernel's for trace-cmd's instance).")
    var bufferKB: UInt32?

    @Flag(help: "Print JSON instead of tables.")
    var json = false

    func validate() throws {
        if let kb = bufferKB, kb < 4 { throw ValidationError("--buffer-kb must be at least 4") }
        guard Storm.Kind(rawValue: kind) != nil else { throw ValidationError("--kind must be io, mmio or hlt (got '\(kind)')") }
        guard (1...256).contains(vcpus) else { throw ValidationError("--vcpus must be 1 to 256") }
        guard exits > 0 else { throw ValidationError("--exits must be > 0") }
        guard (1...100).contains(repeats) else { throw ValidationError("--repeat must be 1 to 100") }
        for t in tracers where GuestOverhead.Tracer(rawValue: t) == nil || t == "none" {
            throw ValidationError("--tracer must be kvmscope, perf or trace-cmd (got '\(t)')")
        }
    }

    func run() throws {
        let chosen = tracers.isEmpty ? [.kvmscope, .perf, .traceCmd] : tracers.compactMap(GuestOverhead.Tracer.init(rawValue:))
        let bench = GuestOverhead(kind: kind, vcpus: vcpus, exits: exits, repeats: repeats, tracers: chosen, bufferKB: bufferKB)
        let rows = try {
            try bench.run { FileHandle.standardError.write(Data("kvmscope bench: \($0)\n".utf8)) }
        }()
        if json {
            writeStdout(bench.json(rows).serialized(pretty: true) + "\n")
            return
        }
        let uname = Self.uname()
        writeStdout("""
            Guest overhead: storm --kind \(kind) --vcpus \(vcpus) --exits \(exits), median of \(repeats) runs
            host: \(uname), \(ProcessInfo.processInfo.activeProcessorCount) CPUs

            \(bench.markdown(rows).joined(separator: "\n"))
            \(bench.spreadNote(rows).map { "\n" + $0 + "\n" } ?? "")
            | benchmark | kvmscope | peer | ratio | target | met? |
            |---|---:|---:|---:|---|---|
            \(bench.verdict(rows))

            """)
    }

    /// "Linux 6.18.44 x86_64", from /proc (no C structures here).
    static func uname() -> String {
        func read(_ path: String) -> String {
            ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "?").trimmingCharacters(in: .whitespacesAndNewlines)
        }
        #if arch(x86_64)
        let machine = "x86_64"
        #elseif arch(arm64)
        let machine = "aarch64"
        #else
        let machine = "unknown"
        #endif
        return "\(read("/proc/sys/kernel/ostype")) \(read("/proc/sys/kernel/osrelease")) \(machine)"
    }
}

struct BenchSynthCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "synth",
        abstract: "Write a synthetic trace.dat of kvm_exit/kvm_entry pairs (a real reason mix, many vCPUs).",
        usage: "kvmscope bench synth -o <output> [<options>]",
        discussion: """
            Pages are built byte for byte as the kernel writes them, from this kernel's kvm_exit and kvm_entry \
            formats (or --formats DIR with kvm_exit.format and kvm_entry.format). trace-cmd opens the file.
            """)

    @Option(name: [.customShort("o"), .long], help: "The trace.dat to write.")
    var output: String

    @Option(help: "Events in all (each exit and each entry counts one).")
    var events: Int = 20_000_000

    @Option(help: "vCPU threads.")
    var threads: Int = 16

    @Option(help: "vCPU threads alive at a time (VM churn): each makes its share of the pairs, then never appears again (default: all, interleaved event by event).")
    var alive: Int?

    @Option(help: "Host CPUs (per-CPU buffers in the file).")
    var cpus: Int = 2

    @Option(help: "A directory with kvm_exit.format and kvm_entry.format (default: this kernel's tracefs).")
    var formats: String?

    func validate() throws {
        guard events >= 2 else { throw ValidationError("--events must be at least 2") }
        guard (1...1_000_000).contains(threads) else { throw ValidationError("--threads must be 1 to 1000000") }
        guard (1...1024).contains(cpus) else { throw ValidationError("--cpus must be 1 to 1024") }
        if let alive, alive < 1 { throw ValidationError("--alive must be at least 1") }
    }

    func run() throws {
        let f = try { () throws -> EventFormats in
            let f = EventFormats()
            for e in ["kvm_exit", "kvm_entry"] {
                let text: String
                if let dir = formats {
                    guard let t = try? String(contentsOfFile: "\(dir)/\(e).format", encoding: .utf8) else {
                        throw KVMScopeError.usage("cannot read \(dir)/\(e).format")
                    }
                    text = t
                } else {
                    text = try TraceFS.format(system: "kvm", event: e, root: try TraceFS.root())
                }
                try f.add(system: "kvm", format: text)
            }
            return f
        }()
        var workload = SyntheticWorkload(threads: threads, hostCPUs: cpus, vcpusPerVM: min(threads, 4))
        workload.alive = alive
        try {
            try workload.writeTraceDat(to: output, formats: f, eventsPerCPU: events / cpus)
        }()
    }
}
