import ArgumentParser
import Foundation

@main
struct KVMScope: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kvmscope",
        abstract: "What KVM virtual machines cost their host, exit by exit.",
        discussion: """
            Reads the kernel's kvm:* tracepoints from a private tracefs instance and shows, per VM and per
            vCPU, the count of every exit reason and the distribution of exit latencies.

            Examples:
              kvmscope                              the live view (kvm_stat's keys), every VM
              kvmscope live --demo                  the same, with a demo guest if no VM runs
              kvmscope stat -1                      one kvm_stat-style snapshot of all VMs
              kvmscope stat --json -- ./my-vmm      trace while a command runs, JSON summary
              kvmscope record -o t.dat -- ./my-vmm  a trace.dat that trace-cmd and KernelShark open
              kvmscope report t.dat                 perf kvm stat-style report with latency percentiles
              kvmscope serve                        Prometheus /metrics on 127.0.0.1:9477
              kvmscope watch --alert 'rate(EPT_MISCONFIG) > 50000/s for 5s'
              kvmscope storm --kind io --vcpus 2 --exits 100000
            """,
        subcommands: [LiveCommand.self, StatCommand.self, RecordCommand.self, ReportCommand.self, ServeCommand.self,
                      WatchCommand.self, StormCommand.self, BenchCommand.self],
        defaultSubcommand: LiveCommand.self
    )

    /// Like ArgumentParser's main, but a bad argument is one line on stderr (no usage dump), and
    /// `--help` still prints help.
    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            let code = exitCode(for: error)
            if code == .success { exit(withError: error) }
            let message = Self.message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
            FileHandle.standardError.write(Data("kvmscope: \(message)\n".utf8))
            Foundation.exit(code.rawValue)
        }
    }
}
